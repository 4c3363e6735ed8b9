//! The BraggNN commands' and steps' parameters, declared once:
//! `beamflow kernel braggnn synthetic|prepare|train|infer` read them as
//! flags, the `braggnn.*` flow steps as `params`, with the same names and
//! defaults. `prepare` and `infer` search frames as `hedm.peaks` does and
//! take its parameters too ([`Search`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::train::TrainOptions;
use crate::hedm::config::Config as Search;

/// Single-peak patches with known centres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SyntheticParams {
    /// The patch file (`.h5`), or a directory to write `patches.h5` into
    /// (made if missing; in a flow, the attempt's directory by default).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Number of patches.
    #[arg(long, default_value_t = 50_000)]
    #[serde(default = "count")]
    pub count: usize,
    /// The network's patch side (odd).
    #[arg(long, default_value_t = 11)]
    #[serde(default = "psz")]
    pub psz: usize,
    /// Extra pixels per side for shifted training crops.
    #[arg(long, default_value_t = 1)]
    #[serde(default = "aug")]
    pub aug: usize,
    #[arg(long, default_value_t = 1234)]
    #[serde(default = "seed")]
    pub seed: u64,
}

fn count() -> usize {
    50_000
}
fn psz() -> usize {
    11
}
fn aug() -> usize {
    1
}
fn seed() -> u64 {
    1234
}

impl SyntheticParams {
    /// The file to write, its directory made; the patch side checked.
    pub fn file(&self) -> Result<PathBuf, String> {
        super::model::check_psz(self.psz).map_err(|e| format!("psz: {e}"))?;
        let (dir, file) = if self.out.extension().is_some_and(|e| e == "h5") {
            let dir = self.out.parent().map(PathBuf::from).unwrap_or_default();
            (dir, self.out.clone())
        } else {
            (self.out.clone(), self.out.join("patches.h5"))
        };
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("out: {}: cannot create: {e}", dir.display()))?;
        }
        Ok(file)
    }
}

/// Training patches cut from frames around the peaks of a `hedm.peaks` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct PrepareParams {
    /// Peak table from `beamflow kernel hedm peaks` (NAME_peaks.h5) for these frames.
    #[arg(long)]
    pub peaks: PathBuf,
    /// The network's patch side (odd).
    #[arg(long, default_value_t = 11)]
    #[serde(default = "psz")]
    pub psz: usize,
    /// Extra pixels per side for shifted training crops.
    #[arg(long, default_value_t = 1)]
    #[serde(default = "aug")]
    pub aug: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub search: Search,
}

/// Training from scratch on a patch file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainParams {
    /// Patch file (`braggnn synthetic`, or cut from frames by `prepare`).
    #[arg(long)]
    pub patches: PathBuf,
    /// Output directory: best.safetensors, braggnn.onnx, history.json,
    /// learning_curve.png (in a flow, the attempt's directory by default).
    #[arg(long, short = 'o', default_value = ".")]
    #[serde(default = "here")]
    pub out: PathBuf,
    /// Widths of the hidden dense layers, e.g. 16,8,4,2.
    #[arg(long, value_delimiter = ',', default_value = "16,8,4,2")]
    #[serde(default = "fcsz")]
    pub fcsz: Vec<i64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainOptions,
}

fn here() -> PathBuf {
    PathBuf::from(".")
}
fn fcsz() -> Vec<i64> {
    super::Shape::default().fcsz
}

/// Peak positions on raw frames with a peak model.
pub use super::infer::Config as InferParams;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_line_and_a_flow_step_default_alike() {
        use crate::params::same_defaults;
        same_defaults::<SyntheticParams>(&["-o", "p.h5"], json!({ "out": "p.h5" }));
        same_defaults::<PrepareParams>(
            &["--peaks", "p.h5", "--frames", "f.h5"],
            json!({ "peaks": "p.h5", "frames": "f.h5", "out": "." }),
        );
        same_defaults::<TrainParams>(&["--patches", "p.h5"], json!({ "patches": "p.h5" }));
        same_defaults::<InferParams>(
            &["--model", "m.onnx", "--frames", "f.h5"],
            json!({ "model": "m.onnx", "frames": "f.h5", "out": "." }),
        );
    }

    #[test]
    fn a_bad_value_in_a_flattened_search_names_its_parameter() {
        let e = crate::params::from_json::<PrepareParams>(
            json!({ "peaks": "p.h5", "frames": "f.h5", "threshold": "high" }),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("parameter `threshold`: `high` is not a number"),
            "{e}"
        );
        let p = crate::params::from_json::<PrepareParams>(
            json!({ "peaks": "p.h5", "frames": "f.h5", "threshold": "45", "psz": "13" }),
        )
        .unwrap();
        assert_eq!((p.search.threshold, p.psz), (45.0, 13));
    }
}
