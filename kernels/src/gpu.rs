//! GPUs as the CUDA driver sees them, without the CUDA toolkit: cudarc loads
//! `libcuda` at run time. cudarc panics when the library is missing, so its
//! presence is checked first (with `dlopen`), and a machine without a driver
//! simply has no GPUs.

use serde::Serialize;

/// One CUDA device.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
    /// Compute capability, e.g. "8.0" (A100), "9.0" (H100).
    pub compute_capability: String,
    pub multiprocessors: u32,
}

/// The driver's shared object names, newest convention first.
const DRIVER: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Whether a CUDA driver library can be loaded in this process.
pub fn driver_present() -> bool {
    DRIVER.iter().any(|name| {
        let c = std::ffi::CString::new(*name).expect("no NUL in a literal");
        // SAFETY: dlopen with a valid C string; the handle is closed at once.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if h.is_null() {
                false
            } else {
                libc::dlclose(h);
                true
            }
        }
    })
}

/// The CUDA devices, or why there are none ("no CUDA driver …").
pub fn cuda_devices() -> Result<Vec<GpuInfo>, String> {
    if !driver_present() {
        return Err("no CUDA driver (libcuda.so.1 not found)".into());
    }
    std::panic::catch_unwind(query).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("the CUDA driver could not be loaded: {why}"))
    })
}

fn query() -> Result<Vec<GpuInfo>, String> {
    use cudarc::driver::result::{device, init};
    use cudarc::driver::sys::CUdevice_attribute as A;
    fn e(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
        move |err| format!("CUDA {what}: {err:?}")
    }
    match init() {
        Ok(()) => {}
        // A driver without a device (a login node, a container): no GPUs.
        Err(err) if err.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE => {
            return Ok(Vec::new())
        }
        Err(err) => return Err(e("init")(err)),
    }
    let n = device::get_count().map_err(e("device count"))?;
    (0..n)
        .map(|i| {
            let dev = device::get(i).map_err(e("device"))?;
            // SAFETY: `dev` comes from cuDeviceGet above.
            let attr = |a| unsafe { device::get_attribute(dev, a) }.map_err(e("attribute"));
            Ok(GpuInfo {
                index: i as u32,
                name: device::get_name(dev).map_err(e("name"))?,
                // SAFETY: as above.
                memory_bytes: unsafe { device::total_mem(dev) }.map_err(e("memory"))? as u64,
                compute_capability: format!(
                    "{}.{}",
                    attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?
                ),
                multiprocessors: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_means_no_gpus_and_no_panic() {
        // This machine kind has no GPU; where a driver exists the devices
        // must come back with names.
        match cuda_devices() {
            Err(why) if !driver_present() => assert!(why.contains("no CUDA driver"), "{why}"),
            // A driver that cannot serve: said, not a panic.
            Err(why) => assert!(why.contains("CUDA"), "{why}"),
            Ok(gpus) => assert!(gpus.iter().all(|g| !g.name.is_empty())),
        }
    }
}
