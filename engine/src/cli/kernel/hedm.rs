//! `beamflow kernel hedm …`: Bragg-peak search and fit on HDF5 frame
//! stacks, outside any flow, with a progress bar. The flags are the
//! `hedm.peaks` and `hedm.synthetic` steps' parameters
//! ([`Config`], [`SyntheticParams`]).

use std::path::PathBuf;

use beamflow_kernels::hedm::config::{Config, Report, SyntheticParams};
use beamflow_kernels::synthetic::hedm::write_dataset;
use clap::Subcommand;

use crate::cli::render::{bar, figures, Out};

#[derive(Subcommand)]
pub enum HedmCmd {
    /// Find and fit Bragg peaks: peak table (HDF5 + CSV), overlay PNG, summary JSON.
    Peaks(Box<Config>),
    /// Write frames with known pseudo-Voigt peaks.
    Synthetic(SyntheticParams),
}

/// Runs a search with a progress bar.
pub(crate) fn search(cfg: &Config, quiet: bool) -> anyhow::Result<Report> {
    let b = bar(0, "peaks", quiet);
    let r = cfg.run(&mut |done, total| {
        b.set_length(total as u64);
        b.set_position(done as u64);
    });
    b.finish_and_clear();
    r.map_err(|e| anyhow::anyhow!(e))
}

pub fn run(cmd: HedmCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        HedmCmd::Peaks(cfg) => {
            let r = search(&cfg, out.quiet())?;
            out.show(&r, |r| {
                let s = &r.summary;
                let t = figures([
                    ("frames", s.frames.to_string()),
                    ("regions", s.regions.to_string()),
                    ("peaks", s.peaks.to_string()),
                    (
                        "converged / max-iter / stalled",
                        format!("{} / {} / {}", s.converged, s.max_iter, s.stalled),
                    ),
                    ("search ms/frame", format!("{:.1}", s.find_ms_per_frame)),
                    ("peaks/s fitted", format!("{:.0}", s.peaks_per_s_fit)),
                    ("frames/s", format!("{:.2}", s.frames_per_s)),
                ]);
                let mut text = format!(
                    "{t}\npeaks: {}\n       {}",
                    r.peaks_h5.display(),
                    r.peaks_csv.display()
                );
                if let Some(o) = &r.overlay {
                    text += &format!("\noverlay: {}", o.display());
                }
                text
            });
            Ok(())
        }
        HedmCmd::Synthetic(a) => {
            let scene = a.scene().map_err(anyhow::Error::msg)?;
            let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let b = bar(a.frames as u64, "synthetic", out.quiet());
            let f = write_dataset(&scene, a.frames, &dir, &a.name, &mut |i| {
                b.set_position(i as u64)
            })
            .map_err(|e| anyhow::anyhow!(e))?;
            b.finish_and_clear();
            out.show(&f, |f| {
                format!(
                    "{} frames of {}² with {} peaks: {}\ntruth: {}",
                    a.frames,
                    a.size,
                    f.peaks,
                    f.frames.display(),
                    f.truth.display()
                )
            });
            Ok(())
        }
    }
}
