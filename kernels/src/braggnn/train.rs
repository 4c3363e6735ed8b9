//! Training BraggNN the way upstream does: MSE on (x, y), Adam (lr 3e-4,
//! no weight decay), minibatches of 512 reshuffled every epoch (the last
//! partial batch dropped), training crops shifted by U{−aug..aug} and
//! validation crops unshifted, the first 80 % of the patches for training
//! and the rest for validation. The weights of the epoch with the lowest
//! mean validation error are kept (upstream checkpoints every epoch and
//! picks by validation error: with a constant learning rate the error
//! jumps ±50 % between epochs); training stops early after `patience`
//! epochs without a better one.
//!
//! Data parallel over ranks ([`train_shared`], `beamflow kernel braggnn
//! train --mpi`): every rank draws the same order and shifts as one
//! process would, crops and runs its contiguous slice of each minibatch,
//! and the gradients are summed so that every rank takes the step of the
//! whole minibatch's mean loss — the same training as one process, up to
//! rounding.

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
use crate::ranks::{share_of, Collective};
use crate::synthetic::braggnn::PatchSet;

/// How to train (also a flow step's parameters, but `threads`: a step
/// trains on the cores its pilot granted).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Passes over the training patches at most.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Patches per optimiser step.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Stop after this many epochs without a lower validation error.
    #[arg(long, default_value_t = 20)]
    pub patience: usize,
    /// Fraction of the patches (the last ones) held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub validation: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (falls back to the CPU with a note).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch's intra-op threads (a process-wide setting); 0 leaves it.
    #[arg(skip)]
    #[serde(skip)]
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
    train_shared(set, shape, o, checkpoint, progress, None)
}

/// [`train`] as one of the processes of `ranks`, data parallel, with the
/// minibatch of one process (`o.batch` patches a step in all). Every rank
/// starts from rank 0's weights, draws the order and the shifts of every
/// minibatch as one process does, and crops and runs forward and backward
/// on its contiguous slice of it (sizes differ by at most one), its loss
/// weighted by its share; the gradients are summed over the ranks (the
/// same bits on each), so each rank takes the step of the minibatch's mean
/// loss and the ranks stay identical. Each validates a contiguous slice of
/// the validation patches and all see all the errors, so they keep the
/// same epoch and stop together. Only rank 0 writes `checkpoint`; every
/// rank returns the trained network and the same history (the loss is the
/// minibatches' mean over all ranks, samples/s counts all ranks' samples).
/// `progress` is called on every rank; training stops when it returns
/// `false` on any.
pub fn train_shared(
    set: &PatchSet,
    shape: Shape,
    o: &TrainOptions,
    checkpoint: Option<&Path>,
    progress: &mut dyn FnMut(&Epoch) -> bool,
    ranks: Option<&dyn Collective>,
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
    let (rank, size) = ranks.map_or((0, 1), |c| (c.rank(), c.size()));
    if o.batch < size {
        return Err(format!(
            "a minibatch of {} patches cannot be shared by {size} ranks",
            o.batch
        ));
    }
    let checkpoint = checkpoint.filter(|_| rank == 0);
    let (device, device_note) = crate::backend::device(&o.device)?;
    if o.threads > 0 {
        tch::set_num_threads(o.threads as i32);
    }
    tch::manual_seed(o.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let net = BraggNN::new(&vs.root(), shape.clone())?;
    let mut best_vs = nn::VarStore::new(device);
    let _best_net = BraggNN::new(&best_vs.root(), shape)?;
    let params = vs.trainable_variables();
    if let Some(c) = ranks {
        // Rank 0's initial weights everywhere (they are the same after the
        // same seed, but nothing is lost by making sure): a sum of rank 0's
        // and zeros.
        let mut w = flat(&params)?;
        if rank != 0 {
            w.iter_mut().for_each(|v| *v = 0.0);
        }
        c.sum_f32(&mut w)?;
        tch::no_grad(|| unflatten_into(&w, &params, device));
    }
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
        let (mut x, mut y, mut shifts) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in order.chunks_exact(o.batch) {
            // The shifts of the whole minibatch, in one process's order.
            shifts.clear();
            shifts.extend(
                chunk
                    .iter()
                    .map(|_| (rng.random_range(-aug..=aug), rng.random_range(-aug..=aug))),
            );
            let mine = share_of(chunk.len(), rank, size);
            x.clear();
            y.clear();
            for (&i, &shift) in chunk[mine.clone()].iter().zip(&shifts[mine.clone()]) {
                push_crop(set, i, shift, &mut x, &mut y);
            }
            let b = mine.len() as i64;
            let xt = Tensor::from_slice(&x)
                .view([b, 1, psz, psz])
                .to_device(device);
            let yt = Tensor::from_slice(&y).view([b, 2]).to_device(device);
            let loss = net.forward(&xt).mse_loss(&yt, Reduction::Mean);
            opt.zero_grad();
            loss_sum += match ranks {
                None => {
                    loss.backward();
                    loss.double_value(&[])
                }
                Some(c) => {
                    // This slice's part of the minibatch's mean loss; the
                    // parts' gradients (and values) add up to the whole's.
                    let part = loss * (b as f64 / chunk.len() as f64);
                    part.backward();
                    let g = grads(&params)?;
                    let mut sum = flat(&g)?;
                    sum.push(part.double_value(&[]) as f32);
                    c.sum_f32(&mut sum)?;
                    let whole = sum.pop().unwrap_or(f32::NAN);
                    tch::no_grad(|| unflatten_into(&sum, &g, device));
                    f64::from(whole)
                }
            };
            opt.step();
            batches += 1;
        }
        let seconds = t.elapsed().as_secs_f64();
        let mut err = match ranks {
            None => errors(&net, set, &val, device)?,
            Some(c) => {
                let mine = &val[share_of(val.len(), rank, size)];
                c.all_gather_f64(&errors(&net, set, mine, device)?)?
            }
        };
        if err.len() != val.len() {
            return Err(format!(
                "{} validation errors gathered for {} patches",
                err.len(),
                val.len()
            ));
        }
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
        let mut stop = !progress(&e);
        if let Some(c) = ranks {
            // Stop on every rank if one's caller says so.
            let mut votes = [f32::from(u8::from(stop))];
            c.sum_f32(&mut votes)?;
            stop = votes[0] > 0.0;
        }
        if stop || history.len() - 1 - best >= o.patience {
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

/// The gradients of `params` (every parameter takes part in the loss, so
/// backward gives each one).
fn grads(params: &[Tensor]) -> Result<Vec<Tensor>, String> {
    params
        .iter()
        .map(|p| {
            let g = p.grad();
            g.defined()
                .then_some(g)
                .ok_or_else(|| "a parameter without a gradient".to_string())
        })
        .collect()
}

/// `ts` concatenated into one f32 buffer on the host.
fn flat(ts: &[Tensor]) -> Result<Vec<f32>, String> {
    let parts: Vec<Tensor> = ts.iter().map(|t| t.detach().reshape([-1])).collect();
    Vec::<f32>::try_from(Tensor::cat(&parts, 0).to_device(Device::Cpu))
        .map_err(|e| format!("flattening the parameters: {e}"))
}

/// Writes `flat` (as [`flat`] made it) back into `ts`, in place.
fn unflatten_into(flat: &[f32], ts: &[Tensor], device: Device) {
    let all = Tensor::from_slice(flat).to_device(device);
    let mut at = 0;
    for t in ts {
        let n = t.numel() as i64;
        t.shallow_clone().copy_(&all.narrow(0, at, n).view_as(t));
        at += n;
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Condvar, Mutex};

    use super::*;
    use crate::ranks::Solo;
    use crate::synthetic::braggnn::patches;

    /// Ranks as threads of this process: each posts its part, all wait,
    /// each reads every part (in rank order, so all get the same sums).
    struct Threads {
        rank: usize,
        size: usize,
        barrier: Arc<Barrier>,
        parts: Arc<Mutex<Vec<Vec<f64>>>>,
        /// Opened by rank 0's first collective: the others start then.
        /// libtorch's generator is global, and the weights rank 0 draws
        /// after seeding must be one process's.
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Threads {
        fn world(size: usize) -> Vec<Threads> {
            let barrier = Arc::new(Barrier::new(size));
            let parts = Arc::new(Mutex::new(vec![Vec::new(); size]));
            let gate = Arc::new((Mutex::new(false), Condvar::new()));
            (0..size)
                .map(|rank| Threads {
                    rank,
                    size,
                    barrier: barrier.clone(),
                    parts: parts.clone(),
                    gate: gate.clone(),
                })
                .collect()
        }

        /// Waits (ranks other than 0) until rank 0 has drawn its weights.
        fn start(&self) {
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while self.rank != 0 && !*open {
                open = cv.wait(open).unwrap();
            }
        }

        /// Every rank's `mine`, in rank order.
        fn exchange(&self, mine: Vec<f64>) -> Vec<Vec<f64>> {
            if self.rank == 0 {
                let (open, cv) = &*self.gate;
                *open.lock().unwrap() = true;
                cv.notify_all();
            }
            self.parts.lock().unwrap()[self.rank] = mine;
            self.barrier.wait();
            let all = self.parts.lock().unwrap().clone();
            self.barrier.wait();
            all
        }
    }

    impl Collective for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn sum_f32(&self, buf: &mut [f32]) -> Result<(), String> {
            let all = self.exchange(buf.iter().map(|&v| f64::from(v)).collect());
            for (i, v) in buf.iter_mut().enumerate() {
                *v = all.iter().fold(0f32, |acc, p| acc + p[i] as f32);
            }
            Ok(())
        }
        fn all_gather_f64(&self, mine: &[f64]) -> Result<Vec<f64>, String> {
            Ok(self.exchange(mine.to_vec()).concat())
        }
        fn gather_f64(&self, mine: &[f64]) -> Result<Option<Vec<Vec<f64>>>, String> {
            let all = self.exchange(mine.to_vec());
            Ok((self.rank == 0).then_some(all))
        }
    }

    fn options() -> TrainOptions {
        TrainOptions {
            epochs: 3,
            batch: 40,
            device: "cpu".into(),
            // One libtorch thread: quick on a busy machine, and the same
            // arithmetic in every run here.
            threads: 1,
            ..TrainOptions::default()
        }
    }

    /// What training decides: everything but the clock.
    fn numbers(h: &[Epoch]) -> Vec<[u64; 6]> {
        h.iter()
            .map(|e| {
                [
                    e.epoch as u64,
                    e.loss.to_bits(),
                    e.val_mean_px.to_bits(),
                    e.val_p50_px.to_bits(),
                    e.val_p95_px.to_bits(),
                    e.val_p995_px.to_bits(),
                ]
            })
            .collect()
    }

    fn weights_of(t: &Trained) -> Vec<f32> {
        flat(&t.vs.trainable_variables()).unwrap()
    }

    // Both tests in one: each run seeds libtorch's global generator and
    // draws the initial weights from it, so no other run may draw at the
    // same time (no other test of this crate uses it).
    #[test]
    fn shared_training_is_one_process_training() {
        // libtorch's GEMM lands in OpenBLAS here, whose thread count other
        // tests of this process set to one at some moment: one from the
        // start, so every run below sums in the same order.
        crate::blas::single_threaded();
        let set = patches(1_000, 11, 1, 5);
        let o = options();
        let alone = train(&set, Shape::default(), &o, None, &mut |_| true).unwrap();
        assert_eq!(alone.history.len(), 3);

        // A world of one goes through the gradient buffer and the gathered
        // validation errors, and changes no bit.
        let solo =
            train_shared(&set, Shape::default(), &o, None, &mut |_| true, Some(&Solo)).unwrap();
        assert_eq!(numbers(&solo.history), numbers(&alone.history));
        assert_eq!(solo.best, alone.best);
        assert_eq!(weights_of(&solo), weights_of(&alone));

        // Two ranks (threads here), 20 patches each a step: the same
        // training up to rounding, and the ranks identical to the bit.
        let runs: Vec<Trained> = std::thread::scope(|s| {
            let handles: Vec<_> = Threads::world(2)
                .into_iter()
                .map(|r| {
                    let (set, o) = (&set, &o);
                    s.spawn(move || {
                        r.start();
                        train_shared(set, Shape::default(), o, None, &mut |_| true, Some(&r))
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(numbers(&runs[0].history), numbers(&runs[1].history));
        assert_eq!(weights_of(&runs[0]), weights_of(&runs[1]));
        for (a, b) in alone.history.iter().zip(&runs[0].history) {
            eprintln!(
                "epoch {}: loss {:.6e} / {:.6e}, validation {:.5} / {:.5} px",
                a.epoch, a.loss, b.loss, a.val_mean_px, b.val_mean_px
            );
        }
        // Rounding apart (6e-7 of the loss, 4e-6 of the error by the third
        // epoch when this was written), one process's numbers: a slice run
        // twice or left out, or a part not weighted by its size, is off by
        // far more.
        assert_eq!(runs[0].history.len(), alone.history.len());
        for (a, b) in alone.history.iter().zip(&runs[0].history) {
            let close = |x: f64, y: f64, rel: f64| (x - y).abs() <= rel * x.abs();
            assert!(close(a.loss, b.loss, 1e-4), "{a:?}\n{b:?}");
            assert!(close(a.val_mean_px, b.val_mean_px, 1e-3), "{a:?}\n{b:?}");
        }
    }
}
