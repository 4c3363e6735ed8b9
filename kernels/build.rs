//! Finds where libtorch lives and records it as an rpath in this crate's
//! tests and benches, and as `DEP_BEAMFLOW_TORCH_RPATH` for the engine's
//! binaries, so they start without LD_LIBRARY_PATH. With
//! LIBTORCH_USE_PYTORCH=1 (what scripts/setup.sh sets) libtorch is the one
//! inside the Python `torch` package that tch linked against; LIBTORCH
//! names it otherwise.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON_SYS_EXECUTABLE");
    let dir = if let Ok(root) = std::env::var("LIBTORCH") {
        Some(PathBuf::from(root).join("lib"))
    } else if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
        Command::new(python)
            .args([
                "-c",
                "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    } else {
        None
    };
    if let Some(dir) = dir.filter(|d| d.is_dir()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        println!("cargo:rpath={}", dir.display());
    }
}
