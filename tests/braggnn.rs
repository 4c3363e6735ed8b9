//! BraggNN against the reference's golden weights (trained on its synthetic
//! peaks, PyTorch names and layouts) and the outputs PyTorch gives with them
//! for 32 normalised test patches.
#![cfg(feature = "torch")]

use std::path::PathBuf;

use beamflow_kernels::braggnn::{weights, BraggNN, Shape};
use tch::{nn, Device, Tensor};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/braggnn")
        .join(name)
}

fn golden_io() -> (Tensor, Tensor) {
    let io: std::collections::HashMap<String, Tensor> = Tensor::read_npz(data("braggnn_io.npz"))
        .unwrap()
        .into_iter()
        .collect();
    (io["X"].shallow_clone(), io["Y"].shallow_clone())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn golden_weights_reproduce_the_golden_outputs() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = BraggNN::new(&vs.root(), Shape::default()).unwrap();
    let count: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(count, 33_172);
    assert_eq!(Shape::default().parameters(), 33_172);
    weights::load(&mut vs, &data("braggnn_weights.npz")).unwrap();
    let (x, y) = golden_io();
    assert_eq!(x.size(), [32, 1, 11, 11]);
    let out = tch::no_grad(|| net.forward(&x));
    let d = max_abs_diff(&out, &y);
    eprintln!("max |tch − PyTorch| = {d:.2e}");
    assert!(d <= 1e-5, "{d}");
    // The outputs are positions in the patch, not all alike.
    assert!(y.std(true).double_value(&[]) > 0.01);
}

#[test]
fn weights_for_another_shape_are_refused_by_name() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let shape = Shape {
        psz: 11,
        fcsz: vec![32, 16, 8, 4],
    };
    let _net = BraggNN::new(&vs.root(), shape).unwrap();
    let e = weights::load(&mut vs, &data("braggnn_weights.npz")).unwrap_err();
    assert!(
        e.contains("braggnn_weights.npz") && e.contains("dense_layers.0.") && e.contains("[32]"),
        "{e}"
    );
    let e = BraggNN::new(
        &nn::VarStore::new(Device::Cpu).root(),
        Shape {
            psz: 10,
            ..Shape::default()
        },
    )
    .unwrap_err();
    assert!(e.contains("odd"), "{e}");
}

#[test]
fn a_checkpoint_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = BraggNN::new(&vs.root(), Shape::default()).unwrap();
    weights::load(&mut vs, &data("braggnn_weights.npz")).unwrap();
    let ck = t.path().join("best.safetensors");
    weights::save(&vs, &ck).unwrap();
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let net2 = BraggNN::new(&vs2.root(), Shape::default()).unwrap();
    weights::load(&mut vs2, &ck).unwrap();
    let (x, _) = golden_io();
    let d = tch::no_grad(|| max_abs_diff(&net.forward(&x), &net2.forward(&x)));
    assert_eq!(d, 0.0);
    assert!(weights::save(&vs, &t.path().join("best.pt")).is_err());
}

/// A short training run from scratch on synthetic patches (6,000, batches
/// of 64 so that 8 epochs are 600 steps): the validation error falls from
/// pixels to a fraction of one (3.2 → 0.30 px when this was written), and
/// the network returned and the checkpoint hold the best epoch's weights.
#[test]
fn training_on_synthetic_patches_learns_the_centres() {
    use beamflow_kernels::braggnn::{train, TrainOptions};
    use beamflow_kernels::synthetic::braggnn::patches;
    let set = patches(6_000, 11, 1, 3);
    let o = TrainOptions {
        epochs: 8,
        batch: 64,
        device: "cpu".into(),
        ..TrainOptions::default()
    };
    let t = tempfile::tempdir().unwrap();
    let ck = t.path().join("best.safetensors");
    let mut seen = 0;
    let tr = train(&set, Shape::default(), &o, Some(&ck), &mut |_| {
        seen += 1;
        true
    })
    .unwrap();
    assert_eq!(seen, tr.history.len());
    for e in &tr.history {
        eprintln!(
            "epoch {}: loss {:.2e}, validation {:.3} px (p95 {:.3}), {:.0} samples/s",
            e.epoch, e.loss, e.val_mean_px, e.val_p95_px, e.samples_per_s
        );
    }
    let first = tr.history[0].val_mean_px;
    let best = tr.history[tr.best].val_mean_px;
    assert!(best < 0.2 * first, "{first} → {best}");
    assert!(best < 0.45, "{best}");
    // The returned network and the checkpoint hold the best epoch.
    let val: Vec<usize> = (4_800..6_000).collect();
    let e = beamflow_kernels::braggnn::train::errors(&tr.net, &set, &val, Device::Cpu);
    let mean = e.iter().sum::<f64>() / e.len() as f64;
    assert!((mean - best).abs() < 1e-9, "{mean} vs {best}");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = BraggNN::new(&vs.root(), Shape::default()).unwrap();
    weights::load(&mut vs, &ck).unwrap();
    let e2 = beamflow_kernels::braggnn::train::errors(&net, &set, &val, Device::Cpu);
    assert_eq!(e, e2);
}

/// On 2,000 fresh synthetic patches: the pseudo-Voigt fit of the whole
/// patch is as good as the reference's (0.0386 px here, 0.0376 there), and
/// the golden network — trained by the reference on its own patches of the
/// same peak distribution, used here zero-shot — stays within 2× of it
/// (0.070 px, 1.8×; a network trained on this generator's patches gets
/// 0.053 px, 1.38×, on the same 2,000).
#[test]
fn the_golden_network_is_within_reach_of_the_pseudo_voigt_fit() {
    use beamflow_kernels::braggnn::baseline::fit_centre;
    use beamflow_kernels::synthetic::braggnn::patches;
    let set = patches(2_000, 11, 0, 77);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = BraggNN::new(&vs.root(), Shape::default()).unwrap();
    weights::load(&mut vs, &data("braggnn_weights.npz")).unwrap();
    let idx: Vec<usize> = (0..set.len()).collect();
    let nn_err = beamflow_kernels::braggnn::train::errors(&net, &set, &idx, Device::Cpu);
    let mut ws = beamflow_kernels::hedm::Workspace::default();
    let fit_err: Vec<f64> = idx
        .iter()
        .map(|&i| {
            let c = fit_centre(set.patch(i), 11, &mut ws).unwrap();
            (c[0] - set.centres[i][0]).hypot(c[1] - set.centres[i][1])
        })
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (mean(&nn_err), mean(&fit_err));
    eprintln!(
        "mean centre error: BraggNN {a:.4} px, pseudo-Voigt fit {b:.4} px ({:.2}×)",
        a / b
    );
    assert!(b < 0.045, "{b}");
    assert!(a < 0.08 && a <= 2.0 * b, "{a} vs {b}");
}
