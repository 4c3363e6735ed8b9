//! `beamflow kernel ptycho …`: reconstruction and synthetic datasets,
//! outside any flow, with a progress bar. The flags are the
//! `ptycho.reconstruct` and `ptycho.synthetic` steps' parameters
//! ([`Config`], [`SyntheticParams`]).

use std::path::PathBuf;

use beamflow_kernels::ptycho::config::{Config, Report, SyntheticParams};
use beamflow_kernels::synthetic::ptycho::write_dataset;
use clap::Subcommand;

use crate::cli::render::{bar, figures, Out};

#[derive(Subcommand)]
pub enum PtychoCmd {
    /// Reconstruct object (and probe): result HDF5, amplitude/phase PNGs, summary JSON.
    Reconstruct(Box<Config>),
    /// Simulate a dataset with known object and probe.
    Synthetic(SyntheticParams),
}

pub(crate) fn reconstruct_with_bar(cfg: &Config, quiet: bool) -> anyhow::Result<Report> {
    let b = bar(cfg.options.iterations as u64, "iterations", quiet);
    let r = cfg.run(&mut |it, _, loss| {
        b.set_position(it as u64);
        b.set_message(format!("loss {loss:.4e}"));
        true
    });
    b.finish_and_clear();
    r.map_err(|e| anyhow::anyhow!(e))
}

pub fn run(cmd: PtychoCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        PtychoCmd::Reconstruct(cfg) => {
            let r = reconstruct_with_bar(&cfg, out.quiet())?;
            if let Some(why) = &r.device_note {
                eprintln!("note: {why}");
            }
            out.show(&r, |r| {
                let mut rows = vec![
                    ("engine", r.engine.clone()),
                    ("device", r.device.clone()),
                    ("iterations", r.iterations.to_string()),
                    ("positions", format!("{} of {}²", r.positions, r.n)),
                    (
                        "object",
                        format!("{}×{}", r.object_shape.0, r.object_shape.1),
                    ),
                    ("final loss", format!("{:.4e}", r.final_loss)),
                    ("s/iteration", format!("{:.4}", r.seconds_per_iteration)),
                    ("positions/s", format!("{:.0}", r.positions_per_s)),
                ];
                if let Some(e) = r.final_error {
                    rows.push(("object NRMSE", format!("{:.4}", e.nrmse)));
                    rows.push(("phase RMS, rad", format!("{:.4}", e.phase_rms)));
                }
                if let (Some(max), Some(mean)) =
                    (r.positions_moved_max_px, r.positions_moved_mean_px)
                {
                    rows.push((
                        "positions moved, px",
                        format!("mean {mean:.2}, max {max:.2}"),
                    ));
                }
                let mut text = format!("{}\nresult: {}", figures(rows), r.result.display());
                if let (Some(a), Some(p)) = (&r.amplitude_png, &r.phase_png) {
                    text += &format!("\nimages: {}\n        {}", a.display(), p.display());
                }
                text
            });
            Ok(())
        }
        PtychoCmd::Synthetic(a) => {
            let scene = a.scene().map_err(anyhow::Error::msg)?;
            let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let f = write_dataset(&scene, &dir, &a.name, a.ptychodus)
                .map_err(|e| anyhow::anyhow!(e))?;
            out.show(&f, |f| {
                let mut text = format!(
                    "{} positions of {}², object {}×{}: {}",
                    f.positions,
                    f.n,
                    f.object_shape.0,
                    f.object_shape.1,
                    f.data.display()
                );
                if let (Some(dp), Some(meta)) = (&f.dp, &f.meta) {
                    text += &format!(
                        "\nptychodus: {}\n           {}",
                        dp.display(),
                        meta.display()
                    );
                }
                text
            });
            Ok(())
        }
    }
}
