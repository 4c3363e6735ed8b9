//! Records where libtorch lives in the binaries (an rpath), so `beamflow`
//! starts without LD_LIBRARY_PATH. The directory comes from the kernels
//! crate's build script, which found the libtorch that tch linked against.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_BEAMFLOW_TORCH_RPATH");
    if let Ok(dir) = std::env::var("DEP_BEAMFLOW_TORCH_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
