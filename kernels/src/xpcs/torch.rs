//! The multi-tau correlator on libtorch tensors (the `torch` backend): the
//! same levels, delays and closed form as [`super::multitau`], expressed as
//! whole-tensor operations so it runs on any libtorch device (CUDA, ROCm,
//! XPU, CPU). Products are formed in f32 (exact for photon counts) and
//! summed in f64, so results agree with the `cpu` backend.
//!
//! Per level it keeps the last 8 frames, the running sum, partial sums of
//! the first 8 frames and the accumulated products for each delay; a chunk
//! of n frames is correlated with 8 − k + n rows of [history; chunk] per
//! delay k, and its frame pairs (with an odd frame carried over) feed the
//! next level.

use ndarray::Array2;
use tch::{Device, Kind, Tensor};

use super::delays::{delay_grid, levels, Delay};
use super::multitau::{all_frames_pushed, frames_in_chunk, PixelSums};

const HISTORY: i64 = 8;

pub use crate::backend::{device, device_name};

struct Level {
    /// Last 8 frames at this level, oldest first (zeros before the start).
    hist: Tensor,
    count: u64,
    /// Σ_t I(t) per pixel, f64.
    sum: Tensor,
    /// first[k − 1] = Σ_{t<k} I(t) per pixel for k = 1..=8, f64.
    first: Tensor,
    kmin: i64,
    /// acc[k − kmin] = Σ_t I(t − k)·I(t) per pixel, f64.
    acc: Tensor,
    /// The odd frame waiting for its pair (next level's input).
    pending: Option<Tensor>,
}

/// A multi-tau correlator on tensors over `pixels` values per frame.
pub struct TorchMultitau {
    grid: Vec<Delay>,
    frames: u64,
    pixels: i64,
    device: Device,
    levels: Vec<Level>,
    seen: u64,
    intensity: Vec<f64>,
}

impl TorchMultitau {
    pub fn new(frames: u64, pixels: usize, device: Device) -> Self {
        let grid = delay_grid(frames);
        let p = pixels as i64;
        let levels = (0..levels(&grid))
            .map(|l| {
                let kmin = if l == 0 { 1 } else { 5 };
                Level {
                    hist: Tensor::zeros([HISTORY, p], (Kind::Float, device)),
                    count: 0,
                    sum: Tensor::zeros([p], (Kind::Double, device)),
                    first: Tensor::zeros([HISTORY, p], (Kind::Double, device)),
                    kmin,
                    acc: Tensor::zeros([HISTORY + 1 - kmin, p], (Kind::Double, device)),
                    pending: None,
                }
            })
            .collect();
        TorchMultitau {
            grid,
            frames,
            pixels: p,
            device,
            levels,
            seen: 0,
            intensity: Vec::with_capacity(frames as usize),
        }
    }

    /// Correlates `values`: whole frames of `pixels` f32 values, in time order.
    pub fn push(&mut self, values: &[f32]) -> Result<(), String> {
        let n = frames_in_chunk(values.len(), self.pixels as usize, self.seen, self.frames)?;
        if n == 0 {
            return Ok(());
        }
        let x = Tensor::from_slice(values)
            .view([n as i64, self.pixels])
            .to_device(self.device);
        let per_frame = x.sum_dim_intlist(1i64, false, Kind::Double) / self.pixels as f64;
        let per_frame = Vec::<f64>::try_from(per_frame.to_device(Device::Cpu))
            .map_err(|e| format!("torch: {e}"))?;
        self.intensity.extend(per_frame);
        let mut input = Some(x);
        for level in self.levels.iter_mut() {
            let Some(b) = input.take() else { break };
            input = level.push(&b);
        }
        self.seen += n;
        Ok(())
    }

    /// The closed-form G2, IP, IF once every frame has been pushed.
    pub fn finish(self) -> Result<PixelSums, String> {
        all_frames_pushed(self.seen, self.frames)?;
        let p = self.pixels as usize;
        let t = self.grid.len();
        let mut g2 = Array2::<f64>::zeros((t, p));
        let mut ip = Array2::<f64>::zeros((t, p));
        let mut if_ = Array2::<f64>::zeros((t, p));
        let host = |x: Tensor| -> Result<Vec<f64>, String> {
            Vec::<f64>::try_from(x.to_device(Device::Cpu).to_kind(Kind::Double).contiguous())
                .map_err(|e| format!("torch: {e}"))
        };
        for (tid, d) in self.grid.iter().enumerate() {
            let lv = &self.levels[d.level as usize];
            let k = i64::from(d.k);
            let n_l = lv.count as i64;
            if n_l <= k {
                continue;
            }
            let eff = (n_l - k) as f64;
            let g2_norm = eff * 4f64.powi(d.level as i32);
            let i_norm = eff * 2f64.powi(d.level as i32);
            let last_k =
                lv.hist
                    .narrow(0, HISTORY - k, k)
                    .sum_dim_intlist(0i64, false, Kind::Double);
            let rows = [
                (&mut g2, lv.acc.get(k - lv.kmin) / g2_norm),
                (&mut ip, (&lv.sum - lv.first.get(k - 1)) / i_norm),
                (&mut if_, (&lv.sum - last_k) / i_norm),
            ];
            for (dst, v) in rows {
                let v = host(v)?;
                dst.row_mut(tid)
                    .as_slice_mut()
                    .expect("row-major")
                    .copy_from_slice(&v);
            }
        }
        let mean = host(&self.levels[0].sum / self.frames as f64)?;
        Ok(PixelSums {
            delays: self.grid,
            g2,
            ip,
            if_,
            frames: self.frames,
            mean,
            intensity_vs_time: self.intensity,
        })
    }
}

impl Level {
    /// Correlates the frames `b` (n, P) at this level; returns the pair sums
    /// for the next level, if any.
    fn push(&mut self, b: &Tensor) -> Option<Tensor> {
        let n = b.size()[0];
        let count = self.count as i64;
        // Running sums of the first 8 frames, for IP.
        for t in count..(count + n).min(HISTORY) {
            let row = b.get(t - count).to_kind(Kind::Double);
            let v = if t == 0 {
                row
            } else {
                self.first.get(t - 1) + row
            };
            self.first.get(t).copy_(&v);
        }
        let x = Tensor::cat(&[&self.hist, b], 0);
        for k in self.kmin..=HISTORY {
            let prod = (x.narrow(0, HISTORY - k, n) * b).sum_dim_intlist(0i64, false, Kind::Double);
            let mut acc = self.acc.get(k - self.kmin);
            acc += prod;
        }
        self.sum += b.sum_dim_intlist(0i64, false, Kind::Double);
        self.hist = x.narrow(0, n, HISTORY).copy();
        self.count += n as u64;
        let y = match self.pending.take() {
            Some(odd) => Tensor::cat(&[&odd, b], 0),
            None => b.shallow_clone(),
        };
        let rows = y.size()[0];
        let pairs = rows / 2;
        if rows % 2 == 1 {
            self.pending = Some(y.narrow(0, rows - 1, 1).copy());
        }
        (pairs > 0).then(|| {
            y.narrow(0, 0, 2 * pairs)
                .view([pairs, 2, -1])
                .sum_dim_intlist(1i64, false, Kind::Float)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xpcs::Multitau;
    use rand::{Rng, SeedableRng};

    /// Same counts, same chunking quirks: the torch backend equals the cpu
    /// backend (which the cpu tests check against the float64 closed form).
    #[test]
    fn equals_the_cpu_backend() {
        for (n, p, chunk) in [(300usize, 37usize, 7usize), (1000, 16, 128), (64, 5, 1)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
            let frames: Vec<f32> = (0..n * p)
                .map(|_| rng.random_range(0..5u8) as f32)
                .collect();
            let mut cpu = Multitau::new(n as u64, p);
            let mut gpu = TorchMultitau::new(n as u64, p, Device::Cpu);
            for c in frames.chunks(chunk * p) {
                cpu.push(c).unwrap();
                gpu.push(c).unwrap();
            }
            let (a, b) = (cpu.finish().unwrap(), gpu.finish().unwrap());
            assert_eq!(a.delays, b.delays);
            for (name, x, y) in [
                ("g2", &a.g2, &b.g2),
                ("ip", &a.ip, &b.ip),
                ("if", &a.if_, &b.if_),
            ] {
                for ((i, j), &v) in x.indexed_iter() {
                    let w = y[[i, j]];
                    assert!(
                        (v - w).abs() <= 1e-9 * v.abs().max(1.0),
                        "{name}[{i},{j}] cpu {v} torch {w} (n {n}, chunk {chunk})"
                    );
                }
            }
            for (v, w) in a.intensity_vs_time.iter().zip(&b.intensity_vs_time) {
                assert!((v - w).abs() < 1e-9);
            }
            for (v, w) in a.mean.iter().zip(&b.mean) {
                assert!((v - w).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn devices_fall_back_to_the_cpu_with_a_reason() {
        assert_eq!(device("cpu").unwrap(), (Device::Cpu, None));
        if !tch::Cuda::is_available() {
            let (d, why) = device("cuda").unwrap();
            assert_eq!(d, Device::Cpu);
            assert!(why.unwrap().contains("no CUDA device"));
            assert_eq!(device("auto").unwrap().0, Device::Cpu);
        }
        assert!(device("tpu").unwrap_err().contains("unknown device"));
    }
}
