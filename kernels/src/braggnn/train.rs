//! Training BraggNN the way upstream does: MSE on (x, y), Adam (lr 3e-4,
//! no weight decay), minibatches of 512 reshuffled every epoch (the last
//! partial batch dropped), training crops shifted by U{−aug..aug} and
//! validation crops unshifted, the first 80 % of the patches for training
//! and the rest for validation. The weights of the epoch with the lowest
//! mean validation error are kept (upstream checkpoints every epoch and
//! picks by validation error: with a constant learning rate the error
//! jumps ±50 % between epochs); training stops early after `patience`
//! epochs without a better one.

use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Reduction, Tensor};

use super::data::{crops, errors_px, push_crop};
use super::model::{BraggNN, Shape};
use super::weights;
use crate::synthetic::braggnn::PatchSet;

/// How to train (also a flow step's parameters).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Stop after this many epochs without a lower validation error.
    pub patience: usize,
    /// Fraction of the patches (the last ones) held out for validation.
    pub validation: f64,
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (falls back to the CPU with a note).
    pub device: String,
    /// libtorch's intra-op threads (a process-wide setting); 0 leaves it.
    pub threads: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 100,
            batch: 512,
            lr: 3e-4,
            patience: 20,
            validation: 0.2,
            seed: 0,
            device: "auto".into(),
            threads: 0,
        }
    }
}

/// One epoch's numbers; errors are ‖predicted − true centre‖ in px on the
/// validation patches.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Epoch {
    pub epoch: usize,
    pub loss: f64,
    pub val_mean_px: f64,
    pub val_p50_px: f64,
    pub val_p75_px: f64,
    pub val_p95_px: f64,
    pub val_p995_px: f64,
    pub seconds: f64,
    pub samples_per_s: f64,
}

/// A trained network (holding the best epoch's weights) and its history.
pub struct Trained {
    pub vs: nn::VarStore,
    pub net: BraggNN,
    pub history: Vec<Epoch>,
    /// Index in `history` of the epoch whose weights were kept.
    pub best: usize,
    /// Where it trained (`torch:cpu`, `torch:cuda:0`, …), and why not
    /// where asked.
    pub device: String,
    pub device_note: Option<String>,
}

impl Trained {
    /// The median training throughput over the epochs run.
    pub fn median_samples_per_s(&self) -> f64 {
        let mut r: Vec<f64> = self.history.iter().map(|e| e.samples_per_s).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }
}

/// Trains a new `shape` network on `set`. The best weights so far are
/// written to `checkpoint` (safetensors) after every improvement;
/// `progress` sees each epoch and stops training by returning `false`.
pub fn train(
    set: &PatchSet,
    shape: Shape,
    o: &TrainOptions,
    checkpoint: Option<&Path>,
    progress: &mut dyn FnMut(&Epoch) -> bool,
) -> Result<Trained, String> {
    if set.psz as i64 != shape.psz {
        return Err(format!(
            "the patches are for psz {} but the network is psz {}",
            set.psz, shape.psz
        ));
    }
    let n_val = ((set.len() as f64) * o.validation).round() as usize;
    let n_train = set.len() - n_val;
    if n_train < o.batch.max(1) || n_val == 0 {
        return Err(format!(
            "{} patches: need at least one batch ({}) to train on and one to validate",
            set.len(),
            o.batch
        ));
    }
    let (device, device_note) = crate::backend::device(&o.device)?;
    if o.threads > 0 {
        tch::set_num_threads(o.threads as i32);
    }
    tch::manual_seed(o.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let net = BraggNN::new(&vs.root(), shape.clone())?;
    let mut best_vs = nn::VarStore::new(device);
    let _best_net = BraggNN::new(&best_vs.root(), shape)?;
    let mut opt = nn::Adam::default()
        .build(&vs, o.lr)
        .map_err(|e| format!("optimiser: {e}"))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let mut order: Vec<usize> = (0..n_train).collect();
    let val: Vec<usize> = (n_train..set.len()).collect();
    let psz = set.psz as i64;
    let aug = set.aug as i64;
    let (mut history, mut best) = (Vec::new(), 0usize);
    let mut best_err = f64::INFINITY;
    for epoch in 0..o.epochs {
        let t = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for chunk in order.chunks_exact(o.batch) {
            x.clear();
            y.clear();
            for &i in chunk {
                let shift = (rng.random_range(-aug..=aug), rng.random_range(-aug..=aug));
                push_crop(set, i, shift, &mut x, &mut y);
            }
            let b = chunk.len() as i64;
            let xt = Tensor::from_slice(&x)
                .view([b, 1, psz, psz])
                .to_device(device);
            let yt = Tensor::from_slice(&y).view([b, 2]).to_device(device);
            let loss = net.forward(&xt).mse_loss(&yt, Reduction::Mean);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            batches += 1;
        }
        let seconds = t.elapsed().as_secs_f64();
        let mut err = errors(&net, set, &val, device)?;
        err.sort_by(f64::total_cmp);
        let q = |f: f64| err[((err.len() - 1) as f64 * f).round() as usize];
        let e = Epoch {
            epoch,
            loss: loss_sum / batches as f64,
            val_mean_px: err.iter().sum::<f64>() / err.len() as f64,
            val_p50_px: q(0.5),
            val_p75_px: q(0.75),
            val_p95_px: q(0.95),
            val_p995_px: q(0.995),
            seconds,
            samples_per_s: (batches * o.batch) as f64 / seconds.max(1e-9),
        };
        if !e.val_mean_px.is_finite() {
            return Err(format!(
                "training diverged at epoch {epoch}: validation error {}",
                e.val_mean_px
            ));
        }
        history.push(e);
        if e.val_mean_px < best_err {
            best_err = e.val_mean_px;
            best = history.len() - 1;
            best_vs.copy(&vs).map_err(|e| e.to_string())?;
            if let Some(p) = checkpoint {
                weights::save(&vs, p)?;
            }
        }
        if !progress(&e) || history.len() - 1 - best >= o.patience {
            break;
        }
    }
    vs.copy(&best_vs).map_err(|e| e.to_string())?;
    Ok(Trained {
        vs,
        net,
        history,
        best,
        device: crate::backend::device_name(device),
        device_note,
    })
}

/// Centre errors, px, of `net` on patches `idx` of `set` (unshifted crops).
pub fn errors(
    net: &BraggNN,
    set: &PatchSet,
    idx: &[usize],
    device: Device,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(2048) {
        let (x, y) = crops(set, chunk.iter().copied());
        out.extend(errors_px(&net.predict(&x, device)?, &y, set.psz));
    }
    Ok(out)
}
