//! Records where libtorch lives in the binaries (an rpath), so `beamflow`
//! starts without LD_LIBRARY_PATH. The directory comes from the kernels
//! crate's build script, which found the libtorch that tch linked against.
//!
//! Also records the git commit (HEAD) the binary is built from, which benchmark
//! results carry (BEAMFLOW_GIT_REV; "unknown" outside a git checkout).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_BEAMFLOW_TORCH_RPATH");
    if let Ok(dir) = std::env::var("DEP_BEAMFLOW_TORCH_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BEAMFLOW_GIT_REV={rev}");
    // A checkout changes HEAD; a commit changes the branch's ref, loose or
    // packed. Paths as git resolves them (worktrees keep them elsewhere).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for w in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &w]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
