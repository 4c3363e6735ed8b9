//! One description of a reconstruction, shared by the CLI and flow steps:
//! the files, the engine and its settings, and what to write.

use std::path::{Path, PathBuf};

use rustfft::num_complex::Complex32;
use serde::{Deserialize, Serialize};

use super::io;
use super::metrics::Error;
use super::model::{Field, Probe};
use super::recon::{reconstruct, Options, Truth};

/// A reconstruction of one dataset, as `beamflow kernel ptycho
/// reconstruct` takes it (flags of the same names) and a
/// `ptycho.reconstruct` step (`params`). (Unknown keys cannot be refused
/// here — serde does not combine that with the flattened engine options —
/// so flow validation checks parameter names against this struct's.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
// No argument group: two flattened `Config`s would share its name.
#[group(skip)]
#[serde(default)]
pub struct Config {
    /// The dataset file (/data/intensities + /positions/…), or a Ptychodus
    /// diffraction file (`/dp`) with `meta`.
    #[arg(long)]
    pub data: PathBuf,
    /// The Ptychodus product file (probe, object geometry, positions in metres).
    #[arg(long)]
    pub meta: Option<PathBuf>,
    /// Output directory.
    #[arg(long, short = 'o', default_value = ".")]
    pub out: PathBuf,
    /// Base name of the outputs (default: the data file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an earlier run's outputs instead of numbering new ones
    /// (NAME_1_recon.h5, …).
    #[arg(long, short = 'w')]
    pub overwrite: bool,
    /// Where the starting probe comes from: `init` (the file's `/init/probe`
    /// or the product file's probe), `truth` (`/truth/probe`, for tests with
    /// a known probe), or a path to an HDF5 file with a complex `/probe`.
    #[arg(long, default_value = "init")]
    pub probe: String,
    /// Incoherent probe modes to retrieve (extra modes are started from the
    /// first at 10 % of its amplitude).
    #[arg(long, default_value_t = 1)]
    pub modes: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub options: Options,
    /// Write amplitude and phase PNGs (`--plot false`: not).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub plot: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::new(),
            meta: None,
            out: PathBuf::from("."),
            name: None,
            overwrite: false,
            probe: "init".into(),
            modes: 1,
            options: Options::default(),
            plot: true,
        }
    }
}

/// A simulated dataset with known object and probe (`beamflow kernel
/// ptycho synthetic`, the `ptycho.synthetic` step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticParams {
    /// Directory to write into (default: the current directory; in a flow,
    /// the attempt's directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Base name of the files.
    #[arg(long, default_value = "ptycho")]
    pub name: String,
    /// tiny, small, medium (256 positions, 128² probe) or large (1024).
    #[arg(long, default_value = "medium")]
    pub size: String,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Poisson counts (`--noise false`: exact intensities).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub noise: bool,
    /// Also write the Ptychodus pair (NAME_dp.hdf5 + NAME_meta.hdf5).
    #[arg(long)]
    pub ptychodus: bool,
}

impl Default for SyntheticParams {
    fn default() -> Self {
        SyntheticParams {
            dir: None,
            name: "ptycho".into(),
            size: "medium".into(),
            seed: 7,
            noise: true,
            ptychodus: false,
        }
    }
}

impl SyntheticParams {
    /// The scene to simulate.
    pub fn scene(&self) -> Result<crate::synthetic::ptycho::Scene, String> {
        let mut scene = crate::synthetic::ptycho::Scene::preset(&self.size)
            .map_err(|e| format!("size: {e}"))?;
        scene.seed = self.seed;
        scene.noise = self.noise;
        Ok(scene)
    }
}

/// What a reconstruction produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub engine: String,
    /// Where it ran (`cpu`, `torch:cuda:0`, …), and why not where asked.
    pub device: String,
    pub device_note: Option<String>,
    pub iterations: usize,
    pub positions: usize,
    pub n: usize,
    pub object_shape: (usize, usize),
    pub final_loss: f64,
    /// Against `/truth/object`, when the file has one.
    pub final_error: Option<Error>,
    /// How far position correction moved the positions from where the file
    /// put them (rounded to pixels): largest and mean, px.
    pub positions_moved_max_px: Option<f64>,
    pub positions_moved_mean_px: Option<f64>,
    pub seconds: f64,
    pub seconds_per_iteration: f64,
    pub positions_per_s: f64,
    pub result: PathBuf,
    pub amplitude_png: Option<PathBuf>,
    pub phase_png: Option<PathBuf>,
    pub summary_json: PathBuf,
}

impl Config {
    fn starting_probe(&self, loaded: &io::Loaded) -> Result<Probe, String> {
        let probe = match self.probe.as_str() {
            "init" => loaded.init_probe.clone().ok_or_else(|| {
                format!(
                    "{}: no initial probe (/init/probe); say probe = \"truth\" or a file",
                    self.data.display()
                )
            })?,
            "truth" => loaded
                .truth_probe
                .clone()
                .ok_or_else(|| format!("{}: no /truth/probe", self.data.display()))?,
            path => io::read_probe_file(Path::new(path)).map_err(|e| format!("probe: {e}"))?,
        };
        let probe = Probe {
            modes: 1,
            data: probe.mode(0).to_vec(),
            ..probe
        };
        Ok(if self.modes > 1 {
            probe.with_modes(self.modes - 1, 0.1)
        } else {
            probe
        })
    }

    /// Runs the reconstruction and writes `NAME_recon.h5`,
    /// `NAME_summary.json` and (with `plot`) `NAME_amplitude.png` and
    /// `NAME_phase.png`. `progress(iteration, total, loss)` after each
    /// iteration; returning `false` cancels.
    pub fn run(
        &self,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<Report, String> {
        if self.options.iterations == 0 {
            return Err("iterations must be at least 1".into());
        }
        if self.modes == 0 {
            return Err("modes must be at least 1".into());
        }
        let loaded = io::read(&self.data, self.meta.as_deref())?;
        let probe = self.starting_probe(&loaded)?;
        let data = &loaded.data;
        let object = Field::filled(data.shape.0, data.shape.1, Complex32::new(1.0, 0.0));
        let truth = match (&loaded.truth_object, &loaded.truth_mask) {
            (Some(o), Some(m)) => Some(Truth { object: o, mask: m }),
            _ => None,
        };
        let total = self.options.iterations;
        let mut cancelled = false;
        let out = reconstruct(
            data,
            object,
            probe,
            &self.options,
            truth,
            &mut |it, loss, _| {
                let go = progress(it, total, loss);
                cancelled = !go;
                go
            },
        )
        .map_err(|e| format!("{}: {e}", self.data.display()))?;
        if cancelled {
            return Err("cancelled".into());
        }
        std::fs::create_dir_all(&self.out)
            .map_err(|e| format!("{}: cannot create: {e}", self.out.display()))?;
        let name = self.name.clone().unwrap_or_else(|| {
            self.data
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "ptycho".into())
        });
        // An earlier run's files stay ([`crate::output`]).
        let tag = crate::output::fresh_tag(self.overwrite, |tag| {
            ["recon.h5", "amplitude.png", "phase.png", "summary.json"]
                .map(|s| self.out.join(format!("{name}{tag}_{s}")))
                .to_vec()
        });
        let at = |suffix: &str| self.out.join(format!("{name}{tag}_{suffix}"));
        let result = at("recon.h5");
        io::write_result(
            &result,
            &out.object,
            &out.probe,
            &out.history,
            out.positions.as_deref(),
            &[
                ("source", self.data.display().to_string()),
                ("settings", serde_json::to_string(self).unwrap_or_default()),
                ("loss", self.options.engine.loss_name().to_string()),
                (
                    "creator",
                    format!("beamflow-kernels {}", env!("CARGO_PKG_VERSION")),
                ),
            ],
        )?;
        let (amplitude_png, phase_png) = if self.plot {
            let (a, p) = (at("amplitude.png"), at("phase.png"));
            let file = self
                .data
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            let file = file.unwrap_or_else(|| self.data.display().to_string());
            super::plot::object(&a, &p, &out.object, &file)?;
            (Some(a), Some(p))
        } else {
            (None, None)
        };
        let seconds: f64 = out.history.seconds.iter().sum();
        let moved: Option<Vec<f64>> = out.positions.as_ref().map(|p| {
            p.iter()
                .zip(&data.corners)
                .map(|(a, b)| (a[0] - b.0 as f64).hypot(a[1] - b.1 as f64))
                .collect()
        });
        let iters = out.history.seconds.len().max(1);
        let report = Report {
            engine: self.options.engine.name().into(),
            device: out.device.clone(),
            device_note: out.device_note.clone(),
            iterations: out.history.loss.len(),
            positions: data.positions(),
            n: data.n,
            object_shape: data.shape,
            final_loss: out.history.loss.last().copied().unwrap_or(f64::NAN),
            final_error: out.history.error.last().copied(),
            positions_moved_max_px: moved
                .as_ref()
                .map(|m| m.iter().copied().fold(0.0, f64::max)),
            positions_moved_mean_px: moved
                .as_ref()
                .map(|m| m.iter().sum::<f64>() / m.len().max(1) as f64),
            seconds,
            seconds_per_iteration: seconds / iters as f64,
            positions_per_s: (data.positions() * iters) as f64 / seconds.max(1e-9),
            result,
            amplitude_png,
            phase_png,
            summary_json: at("summary.json"),
        };
        std::fs::write(
            &report.summary_json,
            serde_json::to_string_pretty(&serde_json::json!({
                "report": &report,
                "history": &out.history,
            }))
            .unwrap_or_default(),
        )
        .map_err(|e| format!("{}: cannot write: {e}", report.summary_json.display()))?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_and_a_flow_step_default_alike() {
        crate::params::same_defaults::<Config>(
            &["--data", "d.h5"],
            serde_json::json!({ "data": "d.h5" }),
        );
        crate::params::same_defaults::<SyntheticParams>(&[], serde_json::json!({}));
    }
}
