//! The parameters of an XPCS analysis, declared once: `beamflow kernel xpcs
//! multitau|twotime|both` reads them as flags (`--max-memory-gb`), an
//! `xpcs.multitau` / `xpcs.twotime` flow step as `params` (`max_memory_gb`),
//! with the same defaults and checks ([`AnalysisParams::options`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::pipeline::{Backend, Mode, Options};
use crate::registry::KernelError;
use crate::synthetic::xpcs::SpeckleConfig;

/// What to analyse and how (the reference CLI's options).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AnalysisParams {
    /// Raw frames: HDF5 (/entry/data/data) or IMM.
    #[arg(long, short = 'r')]
    pub raw: PathBuf,
    /// Partition file (/qmap group).
    #[arg(long, short = 'q')]
    pub qmap: PathBuf,
    /// Metadata file (default: *_metadata.hdf next to the raw file).
    #[arg(long)]
    #[serde(default)]
    pub meta: Option<PathBuf>,
    /// Output directory (default: the current directory; in a flow, the
    /// attempt's directory).
    #[arg(long, short = 'o')]
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// First frame (inclusive).
    #[arg(long, short = 'b', default_value_t = 0)]
    #[serde(default)]
    pub begin: usize,
    /// Last frame (exclusive; default: all).
    #[arg(long, short = 'e')]
    #[serde(default)]
    pub end: Option<usize>,
    /// Take every STRIDE-th frame.
    #[arg(long, short = 'f', default_value_t = 1)]
    #[serde(default = "one")]
    pub stride: usize,
    /// Average AVG consecutive (strided) frames.
    #[arg(long, short = 'a', default_value_t = 1)]
    #[serde(default = "one")]
    pub avg: usize,
    /// Two-time q bins, e.g. "1,2,5-7" (default: every non-empty bin).
    #[arg(long, short = 'd')]
    #[serde(default)]
    pub dq: Option<String>,
    /// Memory for the two-time frame store, GB.
    #[arg(long, visible_alias = "max-memory", default_value_t = MAX_MEMORY_GB)]
    #[serde(default = "max_memory_gb")]
    pub max_memory_gb: f64,
    /// Replace an existing results file instead of numbering a new one.
    #[arg(long, short = 'w')]
    #[serde(default)]
    pub overwrite: bool,
    /// Skip the PNG figures.
    #[arg(long)]
    #[serde(default)]
    pub no_plots: bool,
    /// Divide each frame by its mean before multi-tau (the reference's -nf 1).
    #[arg(long, visible_alias = "nf")]
    #[serde(default)]
    pub normalize_frame: bool,
    /// Multi-tau backend: `auto` (torch on the first GPU this process may
    /// use, else the native CPU kernel), cpu, torch (libtorch, best
    /// device) or torch:DEVICE (cpu, cuda, cuda:N); without that device,
    /// torch runs on the CPU and says so.
    #[arg(long, default_value = "auto")]
    #[serde(default = "auto")]
    pub backend: String,
}

const MAX_MEMORY_GB: f64 = 4.0;

fn one() -> usize {
    1
}

fn max_memory_gb() -> f64 {
    MAX_MEMORY_GB
}

fn auto() -> String {
    "auto".into()
}

impl AnalysisParams {
    /// The pipeline's options for `mode`, checked; `gpus` are the GPUs this
    /// process may use (what `backend = "auto"` picks from).
    pub fn options(&self, mode: Mode, gpus: &[u32]) -> Result<Options, KernelError> {
        let out = self.out.clone().unwrap_or_else(|| PathBuf::from("."));
        let mut o = Options::new(&self.raw, &self.qmap, &out, mode);
        o.meta = self.meta.clone();
        o.begin = self.begin;
        o.end = self.end;
        for (name, v) in [("stride", self.stride), ("avg", self.avg)] {
            if v == 0 {
                return Err(KernelError::param(name, "must be at least 1"));
            }
        }
        o.stride = self.stride;
        o.avg = self.avg;
        o.overwrite = self.overwrite;
        o.plots = !self.no_plots;
        o.normalize_frame = self.normalize_frame;
        o.backend = match self.backend.as_str() {
            "auto" => match crate::backend::granted_device("auto", gpus).as_str() {
                "cpu" => Backend::Cpu,
                gpu => Backend::Torch { device: gpu.into() },
            },
            b => Backend::parse(b).map_err(|e| KernelError::param("backend", e))?,
        };
        if let Some(sel) = &self.dq {
            o.dq_selection = Some(parse_selection(sel).map_err(|e| KernelError::param("dq", e))?);
        }
        if !(self.max_memory_gb.is_finite() && self.max_memory_gb > 0.0) {
            return Err(KernelError::param(
                "max_memory_gb",
                format!(
                    "expected a number of GB above 0, got {}",
                    self.max_memory_gb
                ),
            ));
        }
        o.max_memory = (self.max_memory_gb * (1u64 << 30) as f64) as usize;
        Ok(o)
    }
}

/// A synthetic measurement with known dynamics (`beamflow kernel xpcs
/// synthetic`, the `xpcs.synthetic` step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SyntheticParams {
    /// Directory to write NAME/ into (default: the current directory; in a
    /// flow, the attempt's directory).
    #[arg(long)]
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The dataset's name: NAME/NAME.h5, NAME_qmap.hdf, NAME_metadata.hdf.
    #[arg(long, default_value = "S001_synthetic")]
    #[serde(default = "synthetic_name")]
    pub name: String,
    /// Detector side, pixels (at least 16).
    #[arg(long, default_value_t = 512)]
    #[serde(default = "synthetic_size")]
    pub size: usize,
    /// Frames (at least 10).
    #[arg(long, default_value_t = 2000)]
    #[serde(default = "synthetic_frames")]
    pub frames: usize,
    /// Seconds between frames.
    #[arg(long, default_value_t = 1e-3)]
    #[serde(default = "synthetic_frame_time")]
    pub frame_time: f64,
    /// Speckle modes (contrast β = 1/modes).
    #[arg(long, default_value_t = 2)]
    #[serde(default = "synthetic_modes")]
    pub modes: usize,
    /// Mean photons per pixel and frame.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "synthetic_mean_count")]
    pub mean_count: f64,
    #[arg(long, default_value_t = 1)]
    #[serde(default = "synthetic_seed")]
    pub seed: u64,
}

fn synthetic_name() -> String {
    "S001_synthetic".into()
}
fn synthetic_size() -> usize {
    512
}
fn synthetic_frames() -> usize {
    2000
}
fn synthetic_frame_time() -> f64 {
    1e-3
}
fn synthetic_modes() -> usize {
    2
}
fn synthetic_mean_count() -> f64 {
    1.0
}
fn synthetic_seed() -> u64 {
    1
}

impl SyntheticParams {
    /// The generator's configuration, checked.
    pub fn config(&self) -> Result<SpeckleConfig, KernelError> {
        if self.size < 16 {
            return Err(KernelError::param(
                "size",
                format!("{} is below 16 pixels", self.size),
            ));
        }
        if self.frames < 10 {
            return Err(KernelError::param(
                "frames",
                format!("{} is below 10", self.frames),
            ));
        }
        if self.modes == 0 {
            return Err(KernelError::param("modes", "must be at least 1"));
        }
        for (name, v) in [
            ("frame_time", self.frame_time),
            ("mean_count", self.mean_count),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(KernelError::param(
                    name,
                    format!("expected a number above 0, got {v}"),
                ));
            }
        }
        Ok(SpeckleConfig {
            size: self.size,
            frames: self.frames,
            dt: self.frame_time,
            modes: self.modes,
            mean_count: self.mean_count,
            seed: self.seed,
            ..SpeckleConfig::default()
        })
    }
}

/// Parses a bin selection like `1,2,5-7`.
pub fn parse_selection(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("bad bin {x:?} in selection {s:?} (bins count from 1)"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return Err(format!("empty range {part:?} in selection {s:?}"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(format!("selection {s:?} names no bins"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_line_and_a_flow_step_default_alike() {
        crate::params::same_defaults::<AnalysisParams>(
            &["--raw", "r.h5", "--qmap", "q.h5"],
            json!({ "raw": "r.h5", "qmap": "q.h5" }),
        );
    }

    #[test]
    fn synthetic_defaults_alike() {
        crate::params::same_defaults::<SyntheticParams>(&[], json!({}));
    }

    #[test]
    fn one_check_for_both() {
        let p: AnalysisParams =
            crate::params::from_json(json!({ "raw": "r.h5", "qmap": "q.h5", "stride": "0" }))
                .unwrap();
        let e = p.options(Mode::Multitau, &[]).unwrap_err().to_string();
        assert_eq!(e, "parameter `stride`: must be at least 1");
        let e = crate::params::from_json::<AnalysisParams>(
            json!({ "raw": "r.h5", "qmap": "q.h5", "avg": "two" }),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("parameter `avg`: `two` is not a number"),
            "{e}"
        );
        let e = crate::params::from_json::<AnalysisParams>(json!({ "qmap": "q.h5" }))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "parameter `raw`: required");
        let auto = p.options(Mode::Multitau, &[1]).err();
        assert!(auto.is_some(), "stride 0 is refused whatever the device");
    }
}
