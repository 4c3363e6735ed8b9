//! One rule for every kernel's outputs: a run never replaces an earlier
//! run's files unless asked to (`--overwrite`, `overwrite = true`). When a
//! run's files exist, the new run's are numbered — the first free `_1`,
//! `_2`, … — and all of one run's files carry the same number, so a results
//! file and its summary and figures stay together.

use std::path::PathBuf;

/// The tag ("" or "_N") whose paths are all free. `paths` gives a run's
/// files for a tag; with `overwrite` the untagged names are used as they are.
pub fn fresh_tag(overwrite: bool, paths: impl Fn(&str) -> Vec<PathBuf>) -> String {
    let free = |tag: &str| paths(tag).iter().all(|p| !p.exists());
    if overwrite || free("") {
        return String::new();
    }
    (1..)
        .map(|i| format!("_{i}"))
        .find(|t| free(t))
        .expect("some number is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_takes_the_first_number_none_of_whose_files_exist() {
        let d = tempfile::tempdir().unwrap();
        let files = |tag: &str| {
            vec![
                d.path().join(format!("scan{tag}_peaks.h5")),
                d.path().join(format!("scan{tag}_summary.json")),
            ]
        };
        assert_eq!(fresh_tag(false, files), "");
        std::fs::write(d.path().join("scan_summary.json"), "{}").unwrap();
        assert_eq!(fresh_tag(false, files), "_1");
        assert_eq!(fresh_tag(true, files), "");
        std::fs::write(d.path().join("scan_1_peaks.h5"), "").unwrap();
        assert_eq!(fresh_tag(false, files), "_2");
    }
}
