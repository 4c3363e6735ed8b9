//! The system OpenBLAS: which kernels it chose for this CPU, and its thread
//! count.
//!
//! OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its kernels from the
//! CPU model when the library loads. A model newer than the library — an
//! Emerald Rapids node under Debian 12's OpenBLAS 0.3.21, say — falls back
//! to the SSE3 "Prescott" kernels, five times slower on SGEMM than the
//! AVX-512 ones the CPU runs fine. libtorch's GEMM calls resolve to the same
//! library in our processes, so torch slows down with it. The choice can
//! only be overridden by `OPENBLAS_CORETYPE` before the library loads, which
//! is why the `beamflow` binary re-executes itself with [`suited_core`]
//! (see `beamflow::cli::main`).

use std::ffi::{c_char, c_int, CStr};

unsafe extern "C" {
    fn openblas_get_corename() -> *const c_char;
    fn openblas_set_num_threads(n: c_int);
}

/// The kernel set OpenBLAS chose, as it names it ("SkylakeX", "Haswell",
/// "Prescott", …).
pub fn core() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let name = unsafe { openblas_get_corename() };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// Core sets without AVX2/FMA: what OpenBLAS falls back to for a CPU model
/// it does not know.
const GENERIC: [&str; 7] = [
    "Prescott",
    "Core2",
    "Penryn",
    "Dunnington",
    "Nehalem",
    "Atom",
    "Sandybridge",
];

/// The `OPENBLAS_CORETYPE` this CPU should use when OpenBLAS fell back to
/// kernels below what the CPU supports; `None` when its choice is fine (or
/// the machine is not x86-64).
pub fn suited_core() -> Option<&'static str> {
    let chosen = core();
    if !GENERIC.iter().any(|g| chosen.eq_ignore_ascii_case(g)) {
        return None;
    }
    best_for_cpu().filter(|best| !best.eq_ignore_ascii_case(&chosen))
}

#[cfg(target_arch = "x86_64")]
fn best_for_cpu() -> Option<&'static str> {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
        Some("SkylakeX")
    } else if has!("avx2") && has!("fma") {
        Some("Haswell")
    } else if has!("avx") {
        Some("Sandybridge")
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn best_for_cpu() -> Option<&'static str> {
    None
}

/// OpenBLAS's own thread pool deadlocks when several threads call it at
/// once (two kernels in one pilot, or rayon strips), so kernels that call
/// it from parallel code make it run on the calling thread.
pub fn single_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain setter of the library's thread count.
    ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_core_is_named_and_a_suggestion_is_never_generic() {
        assert!(!core().is_empty());
        if let Some(s) = suited_core() {
            assert!(!GENERIC[..6].contains(&s), "{s}");
            assert_ne!(s, core());
        }
    }
}
