//! `beamflow bench braggnn`: inference and training throughput in libtorch,
//! ONNX Runtime and (where installed) PyTorch, and frames end to end.

use beamflow_kernels::braggnn::data::crops;
use beamflow_kernels::braggnn::{self, io, onnx, Predictor, Shape, TrainOptions};
use beamflow_kernels::synthetic::braggnn::patches;
use serde_json::json;
use std::path::PathBuf;

/// `beamflow bench braggnn`.
#[derive(clap::Args)]
pub struct BenchBraggnn {
    /// Thread counts to measure with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Inference batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,64,512,4096")]
    pub batches: Vec<usize>,
    /// Patches per inference measurement.
    #[arg(long, default_value_t = 8192)]
    pub patches: usize,
    /// Training patches (80 % trained on).
    #[arg(long, default_value_t = 20_000)]
    pub train_patches: usize,
    /// Epochs per training measurement.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Frames of 2048² (300 peaks each) for the end-to-end inference.
    #[arg(long, default_value_t = 4)]
    pub frames: usize,
}

/// The venv's Python with torch (scripts/setup.sh), if there is one.
fn pytorch() -> Option<PathBuf> {
    let py = PathBuf::from(std::env::var_os("BEAMFLOW_VENV")?).join("bin/python");
    py.exists().then_some(py)
}

/// Runs `benches/braggnn_pytorch.py ARGS` and returns its JSON lines.
fn run_pytorch(py: &std::path::Path, args: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/braggnn_pytorch.py");
    let o = std::process::Command::new(py)
        .arg(&script)
        .args(args)
        .output()?;
    if !o.status.success() {
        anyhow::bail!(
            "{} {}: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Inference patches/s of libtorch and ONNX Runtime per batch size and
/// thread count, training samples/s, and the same network in PyTorch
/// measured in the same run; then BraggNN on 2048² frames end to end.
impl BenchBraggnn {
    pub fn run(self) -> anyhow::Result<serde_json::Value> {
        bench(self)
    }
}

fn bench(b: BenchBraggnn) -> anyhow::Result<serde_json::Value> {
    use beamflow_kernels::braggnn::infer;
    use beamflow_kernels::synthetic::hedm::{write_dataset, Scene};
    let err = |e: String| anyhow::anyhow!(e);
    let tmp = tempfile::Builder::new()
        .prefix("beamflow-braggnn-")
        .tempdir()?;
    let py = pytorch();
    // A network with upstream's initialisation: the speed does not depend
    // on the weights. One epoch on a few patches writes them.
    let tiny = patches(1_200, 11, 1, 1);
    let o = TrainOptions {
        epochs: 1,
        batch: 64,
        device: "cpu".into(),
        ..TrainOptions::default()
    };
    let weights = tmp.path().join("net.safetensors");
    let tr =
        braggnn::train(&tiny, Shape::default(), &o, Some(&weights), &mut |_| true).map_err(err)?;
    let model = tmp.path().join("net.onnx");
    onnx::export(&tr.vs, &tr.net.shape, None, &model).map_err(err)?;
    let set = patches(b.patches, 11, 0, 2);
    let (x, _) = crops(&set, 0..set.len());
    let mut inference = Vec::new();
    for &t in &b.threads {
        for (runtime, path) in [("tch", &weights), ("ort", &model)] {
            let mut net = Predictor::open(path, "cpu", t).map_err(err)?;
            for &batch in &b.batches {
                net.predict(
                    &x[..batch.min(set.len()) * 121],
                    batch.min(set.len()),
                    batch,
                )
                .map_err(err)?;
                let mut rates = Vec::new();
                for _ in 0..3 {
                    let t0 = std::time::Instant::now();
                    net.predict(&x, set.len(), batch).map_err(err)?;
                    rates.push(set.len() as f64 / t0.elapsed().as_secs_f64());
                }
                let best = rates.iter().copied().fold(0.0, f64::max);
                inference.push(json!({
                    "runtime": runtime, "threads": t, "batch": batch,
                    "patches_per_s": best, "patches_per_s_per_core": best / t as f64,
                }));
            }
        }
        if let Some(py) = &py {
            let batches: Vec<String> = b.batches.iter().map(|v| v.to_string()).collect();
            for r in run_pytorch(
                py,
                &[
                    "infer".into(),
                    "--threads".into(),
                    t.to_string(),
                    "--batches".into(),
                    batches.join(","),
                    "--patches".into(),
                    b.patches.to_string(),
                ],
            )? {
                inference.push(json!({
                    "runtime": "pytorch", "threads": t, "batch": r["batch"],
                    "patches_per_s": r["patches_per_s"],
                    "patches_per_s_per_core": r["patches_per_s"].as_f64().unwrap_or(0.0) / t as f64,
                }));
            }
        }
    }
    let train_set = patches(b.train_patches, 11, 1, 3);
    let file = tmp.path().join("patches.h5");
    io::write(&file, &train_set).map_err(err)?;
    let mut training = Vec::new();
    for &t in &b.threads {
        let o = TrainOptions {
            epochs: b.epochs,
            patience: b.epochs,
            device: "cpu".into(),
            threads: t,
            ..TrainOptions::default()
        };
        let tr =
            braggnn::train(&train_set, Shape::default(), &o, None, &mut |_| true).map_err(err)?;
        let tch = tr.median_samples_per_s();
        let torch = match &py {
            Some(py) => Some(crate::util::median(
                &mut run_pytorch(
                    py,
                    &[
                        "train".into(),
                        file.display().to_string(),
                        "--epochs".into(),
                        b.epochs.to_string(),
                        "--threads".into(),
                        t.to_string(),
                    ],
                )?
                .iter()
                .filter_map(|r| r["samples_per_s"].as_f64())
                .collect::<Vec<f64>>(),
            )),
            None => None,
        };
        training.push(json!({
            "threads": t,
            "samples_per_s_tch": tch,
            "samples_per_s_pytorch": torch,
            "tch_over_pytorch": torch.map(|p| tch / p),
        }));
    }
    // End to end on frames: search, cut, ONNX Runtime.
    let scene = Scene::default();
    let f =
        write_dataset(&scene, b.frames.max(1), tmp.path(), "frames", &mut |_| {}).map_err(err)?;
    let cfg = infer::Config {
        model: model.clone(),
        device: "cpu".into(),
        batch: 512,
        search: beamflow_kernels::hedm::config::Config {
            frames: f.frames,
            out: tmp.path().join("out"),
            dark_value: Some(scene.background),
            ..Default::default()
        },
    };
    let (_, s) = cfg.locate(&mut |_, _| {}).map_err(err)?;
    Ok(json!({
        "machine_threads": rayon::current_num_threads(),
        "cpu_piece": beamflow_kernels::braggnn::net::CPU_PIECE,
        "pytorch": py.is_some(),
        "inference": inference,
        "training": training,
        "frames": {
            "frames": s.frames, "size": scene.rows, "peaks": s.peaks, "runtime": s.device,
            "search_ms_per_frame": s.find_ms_per_frame,
            "cut_ms_per_frame": 1e3 * s.cut_s / s.frames as f64,
            "network_patches_per_s": s.patches_per_s,
            "frames_per_s": s.frames_per_s,
        },
    }))
}
