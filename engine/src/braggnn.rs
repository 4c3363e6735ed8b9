//! `beamflow kernel braggnn …`: synthetic training patches and training
//! BraggNN outside any flow, with a progress bar that shows the validation
//! error.

use std::path::PathBuf;

use beamflow_kernels::braggnn::{self, io, Shape, TrainOptions};
use beamflow_kernels::synthetic::braggnn::patches;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::xpcs::bar;

#[derive(Subcommand)]
pub enum BraggnnCmd {
    /// Single-peak patches with known centres (HDF5: /patches, /centres).
    Synthetic(SyntheticArgs),
    /// Train from scratch: best checkpoint, history JSON, learning-curve PNG.
    Train(TrainArgs),
}

#[derive(Args)]
pub struct SyntheticArgs {
    /// Output patch file.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Number of patches.
    #[arg(long, default_value_t = 50_000)]
    count: usize,
    /// The network's patch side (odd).
    #[arg(long, default_value_t = 11)]
    psz: usize,
    /// Extra pixels per side for shifted training crops.
    #[arg(long, default_value_t = 1)]
    aug: usize,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Patch file (`beamflow kernel braggnn synthetic`, or cut from frames).
    #[arg(long)]
    patches: PathBuf,
    /// Output directory: best.safetensors, history.json, learning_curve.png.
    #[arg(long, short = 'o', default_value = ".")]
    out: PathBuf,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Stop after this many epochs without a lower validation error.
    #[arg(long, default_value_t = 20)]
    patience: usize,
    /// Fraction of the patches (the last ones) held out for validation.
    #[arg(long, default_value_t = 0.2)]
    validation: f64,
    /// Widths of the hidden dense layers, e.g. 16,8,4,2.
    #[arg(long, value_delimiter = ',', default_value = "16,8,4,2")]
    fcsz: Vec<i64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(cmd: BraggnnCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        BraggnnCmd::Synthetic(a) => {
            if a.psz < 7 || a.psz % 2 == 0 {
                anyhow::bail!("--psz {} must be odd and at least 7", a.psz);
            }
            let set = patches(a.count, a.psz, a.aug, a.seed);
            io::write(&a.out, &set).map_err(|e| anyhow::anyhow!(e))?;
            if json_out {
                println!(
                    "{}",
                    json!({"patches": a.out, "count": set.len(), "psz": a.psz, "aug": a.aug})
                );
            } else {
                println!(
                    "{} patches of {}² (+{} px margin): {}",
                    set.len(),
                    a.psz,
                    a.aug,
                    a.out.display()
                );
            }
            Ok(())
        }
        BraggnnCmd::Train(a) => {
            let set = io::read(&a.patches).map_err(|e| anyhow::anyhow!(e))?;
            std::fs::create_dir_all(&a.out)?;
            let shape = Shape {
                psz: set.psz as i64,
                fcsz: a.fcsz.clone(),
            };
            let o = TrainOptions {
                epochs: a.epochs,
                batch: a.batch,
                lr: a.lr,
                patience: a.patience,
                validation: a.validation,
                seed: a.seed,
                device: a.device.clone(),
            };
            let ck = a.out.join("best.safetensors");
            let b = bar(a.epochs as u64, "epochs");
            if json_out {
                b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut best = f64::INFINITY;
            let tr = braggnn::train(&set, shape, &o, Some(&ck), &mut |e| {
                best = best.min(e.val_mean_px);
                b.set_position(e.epoch as u64 + 1);
                b.set_message(format!(
                    "validation {:.4} px (best {best:.4}), {:.0} samples/s",
                    e.val_mean_px, e.samples_per_s
                ));
                true
            });
            b.finish_and_clear();
            let tr = tr.map_err(|e| anyhow::anyhow!("{}: {e}", a.patches.display()))?;
            if let Some(why) = &tr.device_note {
                eprintln!("note: {why}");
            }
            let history = a.out.join("history.json");
            let curve = a.out.join("learning_curve.png");
            let kept = tr.history[tr.best];
            let summary = json!({
                "patches": a.patches,
                "count": set.len(),
                "psz": set.psz,
                "fcsz": a.fcsz,
                "device": tr.device,
                "epochs_run": tr.history.len(),
                "best_epoch": kept.epoch,
                "best": kept,
                "checkpoint": ck,
                "learning_curve": curve,
                "history": tr.history,
            });
            std::fs::write(&history, serde_json::to_string_pretty(&summary)?)?;
            braggnn::plot::learning_curve(&curve, &tr.history, tr.best)
                .map_err(|e| anyhow::anyhow!(e))?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(());
            }
            let mut t = crate::cli::table(&["figure", "value"]);
            let mut rates: Vec<f64> = tr.history.iter().map(|e| e.samples_per_s).collect();
            let median_rate = crate::util::median(&mut rates);
            for (k, v) in [
                ("device", tr.device.clone()),
                ("patches", format!("{} of {}²", set.len(), set.psz)),
                ("epochs run", tr.history.len().to_string()),
                ("kept epoch", kept.epoch.to_string()),
                (
                    "validation error, px",
                    format!(
                        "mean {:.4}, median {:.4}, p95 {:.4}",
                        kept.val_mean_px, kept.val_p50_px, kept.val_p95_px
                    ),
                ),
                ("samples/s (median)", format!("{median_rate:.0}")),
            ] {
                t.add_row(vec![k.to_string(), v]);
            }
            println!("{t}");
            println!("checkpoint: {}", ck.display());
            println!("history:    {}", history.display());
            println!("curve:      {}", curve.display());
            Ok(())
        }
    }
}
