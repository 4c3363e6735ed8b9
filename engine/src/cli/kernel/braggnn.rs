//! `beamflow kernel braggnn …`: training patches (synthetic or cut from
//! frames around fitted peaks), training with a progress bar that shows
//! the validation error, ONNX export checked against libtorch, and peak
//! positions on raw frames — outside any flow. `synthetic`, `prepare`,
//! `train` and `infer` take the `braggnn.*` steps' parameters as flags
//! (`beamflow_kernels::braggnn::params`).

use std::path::PathBuf;

use beamflow_kernels::braggnn::data::crops;
use beamflow_kernels::braggnn::params::{InferParams, PrepareParams, SyntheticParams, TrainParams};
use beamflow_kernels::braggnn::{self, io, onnx, prepare, Predictor, Shape};
use beamflow_kernels::ranks::Collective;
use beamflow_kernels::synthetic::braggnn::patches;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::render::{bar, figures, Out};
use crate::ranks::Ranks;

#[derive(Subcommand)]
pub enum BraggnnCmd {
    /// Single-peak patches with known centres (HDF5: /patches, /centres).
    Synthetic(SyntheticParams),
    /// Training patches cut from frames around the peaks of a `hedm peaks`
    /// table (lone, converged peaks; the fitted centre is the label).
    Prepare(Box<PrepareParams>),
    /// Train from scratch: best checkpoint, ONNX model, history JSON,
    /// learning-curve PNG.
    Train(TrainArgs),
    /// Centre errors of a peak model on a patch file (held-out or fresh
    /// patches), beside the pseudo-Voigt fit of the same patches.
    Evaluate(EvaluateArgs),
    /// Write trained weights as an ONNX model, checked against libtorch.
    Export(ExportArgs),
    /// Peak positions on raw frames with a peak model (.onnx through ONNX
    /// Runtime, .safetensors/.npz weights through libtorch).
    Infer(Box<InferParams>),
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// Peak model: .onnx, or BraggNN weights (.safetensors, .npz).
    #[arg(long)]
    model: PathBuf,
    /// Patch file with true (or fitted) centres.
    #[arg(long)]
    patches: PathBuf,
    /// Also fit every patch with the pseudo-Voigt (about 2 ms a patch per core).
    #[arg(long)]
    fit: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Trained weights (.safetensors from `train`, or .npz with PyTorch names).
    #[arg(long)]
    weights: PathBuf,
    /// The ONNX file to write.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// A fixed batch size (some accelerator compilers want one); symbolic
    /// by default.
    #[arg(long)]
    batch: Option<i64>,
    /// Synthetic patches run through both runtimes to check the export.
    #[arg(long, default_value_t = 512)]
    check: usize,
}

/// Training: a `braggnn.train` step's parameters, and how this process
/// runs it (a step trains on the cores its pilot granted, and spans nodes
/// by its `nodes`).
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    params: TrainParams,
    /// libtorch threads (0: its default, one per core; with --mpi, the
    /// node's cores shared among its ranks).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Train data parallel over the MPI ranks this process is one of
    /// (`mpiexec -n K beamflow kernel braggnn train --mpi …`): each runs
    /// its slice of every minibatch and the gradients are summed; rank 0
    /// writes the outputs.
    #[arg(long)]
    mpi: bool,
}

pub fn run(cmd: BraggnnCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        BraggnnCmd::Synthetic(a) => {
            let file = a.file().map_err(anyhow::Error::msg)?;
            let set = patches(a.count, a.psz, a.aug, a.seed);
            io::write(&file, &set).map_err(|e| anyhow::anyhow!(e))?;
            let v = json!({"patches": file, "count": set.len(), "psz": a.psz, "aug": a.aug});
            out.show(&v, |_| {
                format!(
                    "{} patches of {}² (+{} px margin): {}",
                    set.len(),
                    a.psz,
                    a.aug,
                    file.display()
                )
            });
            Ok(())
        }
        BraggnnCmd::Train(a) => {
            if !a.mpi {
                return train(&a, out, None);
            }
            let ranks = crate::ranks::Ranks::init()?;
            match train(&a, out, Some(&ranks)) {
                // The other ranks would wait for this one's next step.
                Err(e) if ranks.size() > 1 => {
                    eprintln!("error (rank {}): {e:#}", ranks.rank());
                    ranks.abort(2)
                }
                r => r,
            }
        }
        BraggnnCmd::Prepare(a) => {
            let b = bar(0, "frames", out.quiet());
            let r = prepare::run(&a.search, &a.peaks, a.psz, a.aug, &mut |done, total| {
                b.set_length(total as u64);
                b.set_position(done as u64);
            });
            b.finish_and_clear();
            let (file, st) = r.map_err(|e| anyhow::anyhow!(e))?;
            out.show(&json!({"patches": file, "stats": st}), |_| {
                format!(
                    "{} patches of {}² (+{} px margin) from {} peaks ({} crowded, {} not converged, {} masked, {} at the edge, {} off centre): {}",
                    st.kept,
                    a.psz,
                    a.aug,
                    st.peaks,
                    st.crowded,
                    st.not_converged,
                    st.masked,
                    st.edge,
                    st.off_centre,
                    file.display()
                )
            });
            Ok(())
        }
        BraggnnCmd::Evaluate(a) => {
            let set = io::read(&a.patches).map_err(|e| anyhow::anyhow!(e))?;
            let mut net =
                Predictor::open(&a.model, &a.device, 0).map_err(|e| anyhow::anyhow!(e))?;
            let model = ErrorStats::of(net.errors(&set, 512).map_err(|e| anyhow::anyhow!(e))?);
            let fit = a
                .fit
                .then(|| ErrorStats::of(braggnn::baseline::errors(&set)));
            let ratio = fit.as_ref().map(|f| model.mean_px / f.mean_px);
            let v = json!({"model": a.model, "device": net.device, "patches": set.len(), "errors": model, "pseudo_voigt_fit": fit, "model_over_fit": ratio});
            out.show(&v, |_| {
                let row = |s: &ErrorStats| {
                    format!(
                        "mean {:.4}, median {:.4}, p95 {:.4}",
                        s.mean_px, s.median_px, s.p95_px
                    )
                };
                let mut rows = vec![
                    ("model", format!("{} ({})", a.model.display(), net.device)),
                    ("patches", set.len().to_string()),
                    ("centre error, px", row(&model)),
                ];
                if let (Some(f), Some(r)) = (&fit, ratio) {
                    rows.push(("pseudo-Voigt fit, px", row(f)));
                    rows.push(("model / fit (mean)", format!("{r:.2}")));
                }
                figures(rows)
            });
            Ok(())
        }
        BraggnnCmd::Export(a) => {
            let shape = onnx::export_weights(&a.weights, a.batch, &a.out)
                .map_err(|e| anyhow::anyhow!(e))?;
            let diff = if a.check > 0 {
                Some(export_difference(
                    &a.weights,
                    &a.out,
                    shape.psz as usize,
                    a.check,
                )?)
            } else {
                None
            };
            let v = json!({"onnx": a.out, "psz": shape.psz, "fcsz": shape.fcsz, "parameters": shape.parameters(), "checked_patches": a.check, "max_abs_difference": diff});
            out.show(&v, |_| {
                format!(
                    "{}: BraggNN psz {}, fcsz {:?}, {} parameters{}",
                    a.out.display(),
                    shape.psz,
                    shape.fcsz,
                    shape.parameters(),
                    diff.map(|d| format!(
                        "; ONNX Runtime vs libtorch on {} patches: max |difference| {d:.1e}",
                        a.check
                    ))
                    .unwrap_or_else(String::new)
                )
            });
            Ok(())
        }
        BraggnnCmd::Infer(cfg) => {
            let b = bar(0, "frames", out.quiet());
            let r = cfg.run(&mut |done, total| {
                b.set_length(total as u64);
                b.set_position(done as u64);
            });
            b.finish_and_clear();
            let r = r.map_err(|e| anyhow::anyhow!(e))?;
            if let Some(why) = &r.summary.device_note {
                eprintln!("note: {why}");
            }
            out.show(&r, |r| {
                let s = &r.summary;
                let t = figures([
                    (
                        "model",
                        format!("{} ({}, psz {})", s.model.display(), s.device, s.psz),
                    ),
                    ("frames", s.frames.to_string()),
                    ("regions", s.regions.to_string()),
                    ("peaks", s.peaks.to_string()),
                    (
                        "lone / crowded / at the edge",
                        format!("{} / {} / {}", s.lone, s.crowded, s.edge),
                    ),
                    ("search ms/frame", format!("{:.1}", s.find_ms_per_frame)),
                    ("patches/s (network)", format!("{:.0}", s.patches_per_s)),
                    ("frames/s", format!("{:.2}", s.frames_per_s)),
                ]);
                format!(
                    "{t}\npeaks: {}\n       {}",
                    r.peaks_h5.display(),
                    r.peaks_csv.display()
                )
            });
            Ok(())
        }
    }
}

/// Centre errors of a model (or the fit) over a patch file, px.
#[derive(serde::Serialize)]
struct ErrorStats {
    mean_px: f64,
    median_px: f64,
    p95_px: f64,
    p995_px: f64,
}

impl ErrorStats {
    fn of(mut e: Vec<f64>) -> ErrorStats {
        e.sort_by(f64::total_cmp);
        let q = |f: f64| e[((e.len() - 1) as f64 * f).round() as usize];
        ErrorStats {
            mean_px: e.iter().sum::<f64>() / e.len() as f64,
            median_px: q(0.5),
            p95_px: q(0.95),
            p995_px: q(0.995),
        }
    }
}

/// `beamflow kernel braggnn train`, alone or as one of `ranks` (only rank 0
/// shows progress and writes the outputs).
fn train(args: &TrainArgs, out: Out, ranks: Option<&Ranks>) -> anyhow::Result<()> {
    let a = &args.params;
    let leader = ranks.is_none_or(|r| r.rank() == 0);
    let size = ranks.map_or(1, |r| r.size());
    let threads = match ranks {
        Some(r) if args.threads == 0 => r.threads_each(),
        _ => args.threads,
    };
    let set = io::read(&a.patches).map_err(|e| anyhow::anyhow!(e))?;
    if leader {
        std::fs::create_dir_all(&a.out)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", a.out.display()))?;
    }
    let shape = Shape {
        psz: set.psz as i64,
        fcsz: a.fcsz.clone(),
    };
    let o = braggnn::TrainOptions {
        threads,
        ..a.train.clone()
    };
    let ck = a.out.join("best.safetensors");
    let model = a.out.join("braggnn.onnx");
    let b = bar(o.epochs as u64, "epochs", out.quiet() || !leader);
    let mut best = f64::INFINITY;
    let tr = braggnn::train::train_shared(
        &set,
        shape,
        &o,
        Some(&ck),
        &mut |e| {
            best = best.min(e.val_mean_px);
            b.set_position(e.epoch as u64 + 1);
            b.set_message(format!(
                "validation {:.4} px (best {best:.4}), {:.0} samples/s",
                e.val_mean_px, e.samples_per_s
            ));
            true
        },
        ranks.map(|r| r as &dyn Collective),
    );
    b.finish_and_clear();
    let tr = tr.map_err(|e| anyhow::anyhow!("{}: {e}", a.patches.display()))?;
    if !leader {
        // Rank 0 holds the same network and writes it.
        return Ok(());
    }
    if let Some(why) = &tr.device_note {
        eprintln!("note: {why}");
    }
    onnx::export(&tr.vs, &tr.net.shape, None, &model).map_err(|e| anyhow::anyhow!(e))?;
    let history = a.out.join("history.json");
    let curve = a.out.join("learning_curve.png");
    let kept = tr.history[tr.best];
    let summary = json!({
        "patches": a.patches,
        "count": set.len(),
        "psz": set.psz,
        "fcsz": a.fcsz,
        "device": tr.device,
        "ranks": size,
        "threads": threads,
        "epochs_run": tr.history.len(),
        "best_epoch": kept.epoch,
        "best": kept,
        "checkpoint": ck,
        "onnx": model,
        "learning_curve": curve,
        "history": tr.history,
    });
    std::fs::write(&history, serde_json::to_string_pretty(&summary)?)?;
    braggnn::plot::learning_curve(&curve, &tr.history, tr.best).map_err(|e| anyhow::anyhow!(e))?;
    out.show(&summary, |_| {
        let median_rate = tr.median_samples_per_s();
        let mut rows = vec![("device", tr.device.clone())];
        if ranks.is_some() {
            let each = if threads > 0 {
                format!(
                    "{threads} thread{} each",
                    if threads == 1 { "" } else { "s" }
                )
            } else {
                "libtorch's threads each".to_string()
            };
            rows.push(("ranks", format!("{size} ({each})")));
        }
        rows.extend([
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
        ]);
        format!(
            "{}\ncheckpoint: {}\nonnx:       {}\nhistory:    {}\ncurve:      {}",
            figures(rows),
            ck.display(),
            model.display(),
            history.display(),
            curve.display()
        )
    });
    Ok(())
}

/// The largest difference between libtorch with `weights` and ONNX
/// Runtime with the exported `model` on `n` synthetic patches.
pub(crate) fn export_difference(
    weights: &std::path::Path,
    model: &std::path::Path,
    psz: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let set = patches(n, psz, 0, 7);
    let (x, _) = crops(&set, 0..n);
    let run = |path: &std::path::Path| -> anyhow::Result<Vec<[f32; 2]>> {
        let mut net = Predictor::open(path, "cpu", 0).map_err(|e| anyhow::anyhow!(e))?;
        net.predict(&x, n, 512).map_err(|e| anyhow::anyhow!(e))
    };
    let (a, b) = (run(weights)?, run(model)?);
    Ok(a.iter()
        .zip(&b)
        .flat_map(|(p, q)| [(p[0] - q[0]).abs(), (p[1] - q[1]).abs()])
        .fold(0f32, f32::max) as f64)
}
