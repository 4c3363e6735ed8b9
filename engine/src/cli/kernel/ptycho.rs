//! `beamflow kernel ptycho …` and `beamflow bench ptycho`: ptychographic
//! reconstruction of HDF5 datasets outside any flow, with a progress bar
//! that shows the loss.

use std::path::PathBuf;

use beamflow_kernels::ptycho::config::{Config, Report};
use beamflow_kernels::ptycho::{Engine, Options};
use beamflow_kernels::synthetic::ptycho::{write_dataset, Scene};
use clap::{Args, Subcommand};

use crate::cli::render::{bar, Out};

#[derive(Subcommand)]
pub enum PtychoCmd {
    /// Reconstruct object (and probe): result HDF5, amplitude/phase PNGs, summary JSON.
    Reconstruct(Box<ReconArgs>),
    /// Simulate a dataset with known object and probe.
    Synthetic(SyntheticArgs),
}

#[derive(Args)]
pub struct ReconArgs {
    /// Dataset HDF5 (/data/intensities + /positions/…), or a Ptychodus
    /// diffraction file (/dp) with --meta.
    #[arg(long)]
    data: PathBuf,
    /// Ptychodus product file (probe, object geometry, positions in metres).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// Output directory.
    #[arg(long, short = 'o', default_value = ".")]
    out: PathBuf,
    /// Base name of the outputs (default: the data file's stem).
    #[arg(long)]
    name: Option<String>,
    /// epie, rpie, dm or lsqml.
    #[arg(long, default_value = "rpie")]
    engine: Engine,
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Starting probe: init (the file's /init/probe or the product file's
    /// probe), truth (/truth/probe) or an HDF5 file with /probe.
    #[arg(long, default_value = "init")]
    probe: String,
    /// Retrieve the probe too.
    #[arg(long)]
    update_probe: bool,
    /// First iteration of probe updates.
    #[arg(long, default_value_t = 5)]
    probe_start: usize,
    /// Incoherent probe modes.
    #[arg(long, default_value_t = 1)]
    modes: usize,
    /// rPIE's α (object weight).
    #[arg(long, default_value_t = 0.1)]
    alpha: f32,
    /// rPIE's β (probe weight).
    #[arg(long, default_value_t = 0.1)]
    beta: f32,
    /// Visit positions in a fixed order instead of a random one.
    #[arg(long)]
    fixed_order: bool,
    /// Seed of the position order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// DM: exit-wave relaxation β.
    #[arg(long, default_value_t = 1.0)]
    dm_beta: f32,
    /// DM: Fourier relaxation (0 = exact modulus projection).
    #[arg(long, default_value_t = 0.05)]
    dm_relax: f32,
    /// DM: probe/object alternations per iteration.
    #[arg(long, default_value_t = 1)]
    dm_inner: usize,
    /// cpu, or torch[:DEVICE] (lsqml on libtorch: torch:cuda, torch:cuda:N,
    /// torch:cpu; falls back to the CPU with a message where there is no GPU).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// LSQ-ML: positions per minibatch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Refine the scan positions (epie, rpie, lsqml): the refined corners go
    /// to the result file's /positions/px_corner_yx.
    #[arg(long)]
    correct_positions: bool,
    /// First iteration of position correction.
    #[arg(long, default_value_t = 5)]
    position_start: usize,
    /// Fraction of each position's least-squares shift applied per iteration.
    #[arg(long, default_value_t = 0.3)]
    position_step: f64,
    /// Largest move of a position per iteration, px.
    #[arg(long, default_value_t = 0.1)]
    position_limit: f64,
    /// Skip the PNGs.
    #[arg(long)]
    no_plot: bool,
}

impl ReconArgs {
    fn config(&self) -> Config {
        Config {
            data: self.data.clone(),
            meta: self.meta.clone(),
            out: self.out.clone(),
            name: self.name.clone(),
            probe: self.probe.clone(),
            modes: self.modes,
            options: Options {
                engine: self.engine,
                iterations: self.iterations,
                alpha: self.alpha,
                beta: self.beta,
                update_probe: self.update_probe,
                probe_start: self.probe_start,
                shuffle: !self.fixed_order,
                seed: self.seed,
                dm_beta: self.dm_beta,
                dm_inner: self.dm_inner,
                dm_relax: self.dm_relax,
                batch: self.batch,
                backend: self.backend.clone(),
                correct_positions: self.correct_positions,
                position_start: self.position_start,
                position_step: self.position_step,
                position_limit: self.position_limit,
                ..Options::default()
            },
            plot: !self.no_plot,
        }
    }
}

#[derive(Args)]
pub struct SyntheticArgs {
    /// Output directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value = "ptycho")]
    name: String,
    /// tiny, small, medium (256 positions, 128² probe) or large (1024).
    #[arg(long, default_value = "medium")]
    size: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Exact intensities instead of Poisson counts.
    #[arg(long)]
    no_noise: bool,
    /// Also write the Ptychodus pair (NAME_dp.hdf5 + NAME_meta.hdf5).
    #[arg(long)]
    ptychodus: bool,
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
    let json_out = out.is_json();
    match cmd {
        PtychoCmd::Reconstruct(a) => {
            let r = reconstruct_with_bar(&a.config(), json_out)?;
            if let Some(why) = &r.device_note {
                eprintln!("note: {why}");
            }
            if json_out {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
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
            if let (Some(max), Some(mean)) = (r.positions_moved_max_px, r.positions_moved_mean_px) {
                rows.push((
                    "positions moved, px",
                    format!("mean {mean:.2}, max {max:.2}"),
                ));
            }
            println!("{}", crate::cli::render::figures(rows));
            println!("result: {}", r.result.display());
            if let (Some(a), Some(p)) = (&r.amplitude_png, &r.phase_png) {
                println!("images: {}\n        {}", a.display(), p.display());
            }
            Ok(())
        }
        PtychoCmd::Synthetic(a) => {
            let mut scene = Scene::preset(&a.size).map_err(|e| anyhow::anyhow!(e))?;
            scene.seed = a.seed;
            scene.noise = !a.no_noise;
            let f = write_dataset(&scene, &a.dir, &a.name, a.ptychodus)
                .map_err(|e| anyhow::anyhow!(e))?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                println!(
                    "{} positions of {}², object {}×{}: {}",
                    f.positions,
                    f.n,
                    f.object_shape.0,
                    f.object_shape.1,
                    f.data.display()
                );
                if let (Some(dp), Some(meta)) = (&f.dp, &f.meta) {
                    println!("ptychodus: {}\n           {}", dp.display(), meta.display());
                }
            }
            Ok(())
        }
    }
}
