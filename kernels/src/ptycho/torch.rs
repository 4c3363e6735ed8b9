//! LSQ-ML on libtorch tensors (the `torch` backend, for GPUs): the same
//! minibatches, directions, preconditioner and step sizes as
//! [`super::lsqml`], with each minibatch as whole-tensor operations —
//! patches gathered with `take`, batched 2D FFTs, the object direction
//! scattered back with `index_add_`. The per-position step-size sums come
//! back to the host (six numbers a position) and go through the same
//! [`step_sizes`] as the CPU engine, so the two agree to float rounding.
//! Object and probe live on the device for an epoch and are copied back
//! after it, where the history and the error are computed.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use super::lsqml::{step_sizes, update_illumination, LsqmlOptions};
use super::model::{Data, Field, Probe};
use super::Complex32;

/// Complex values to a complex64 tensor of `shape` on `device`.
fn upload(v: &[Complex32], shape: &[i64], device: Device) -> Tensor {
    let flat: Vec<f32> = v.iter().flat_map(|c| [c.re, c.im]).collect();
    let mut s = shape.to_vec();
    s.push(2);
    Tensor::from_slice(&flat)
        .view(s.as_slice())
        .to_device(device)
        .view_as_complex()
}

/// A complex64 tensor back to the host.
fn download(t: &Tensor) -> Result<Vec<Complex32>, String> {
    let flat = Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .view_as_real()
            .contiguous()
            .flatten(0, -1),
    )
    .map_err(|e| format!("torch: {e}"))?;
    Ok(flat
        .chunks_exact(2)
        .map(|p| Complex32::new(p[0], p[1]))
        .collect())
}

pub struct TorchLsqml {
    device: Device,
    /// Measured amplitudes `[N, n, n]`, zero frequency at [0, 0].
    amp: Tensor,
    order: Vec<usize>,
    rng: rand::rngs::StdRng,
    illum: Vec<f32>,
}

impl TorchLsqml {
    pub fn new(data: &Data, seed: u64, device: Device) -> TorchLsqml {
        let (n, count) = (data.n as i64, data.positions() as i64);
        // The CPU layout is transposed (see `fft.rs`); torch's FFT is not.
        let amp = Tensor::from_slice(&data.amp)
            .view([count, n, n])
            .transpose(1, 2)
            .contiguous()
            .to_device(device);
        TorchLsqml {
            device,
            amp,
            order: (0..data.positions()).collect(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            illum: Vec::new(),
        }
    }

    /// Flat object indices of the patches of `batch`, `[B, n·n]`.
    fn indices(&self, data: &Data, cols: usize, batch: &[usize]) -> Tensor {
        let n = data.n;
        let mut idx = Vec::with_capacity(batch.len() * n * n);
        for &j in batch {
            let c = data.corners[j];
            for r in 0..n {
                let base = ((c.0 + r) * cols + c.1) as i64;
                idx.extend((0..n as i64).map(|k| base + k));
            }
        }
        Tensor::from_slice(&idx)
            .view([batch.len() as i64, (n * n) as i64])
            .to_device(self.device)
    }

    /// One epoch; returns the mean MSE-of-square-roots loss.
    pub fn epoch(
        &mut self,
        data: &Data,
        obj: &mut Field,
        probe: &mut Probe,
        o: &LsqmlOptions,
        update_probe: bool,
        shuffle: bool,
    ) -> Result<f64, String> {
        let (n, nn, modes) = (data.n as i64, data.n * data.n, probe.modes as i64);
        let (rows, cols) = (obj.rows, obj.cols);
        let floor = f64::from(update_illumination(
            &mut self.illum,
            data,
            probe,
            (rows, cols),
        ));
        let precond = (Tensor::from_slice(&self.illum)
            .to_device(self.device)
            .square()
            + floor)
            .sqrt()
            .clamp_min(f64::from(f32::MIN_POSITIVE));
        if shuffle {
            self.order.shuffle(&mut self.rng);
        }
        let mut o_t = upload(&obj.data, &[(rows * cols) as i64], self.device);
        let mut p_t = upload(&probe.data, &[modes, n, n], self.device);
        let mut loss = 0.0;
        let order = self.order.clone();
        for batch in order.chunks(o.batch.max(1)) {
            let b = batch.len() as i64;
            let idx = self.indices(data, cols, batch);
            let sel = Tensor::from_slice(&batch.iter().map(|&j| j as i64).collect::<Vec<_>>())
                .to_device(self.device);
            let amp = self.amp.index_select(0, &sel).unsqueeze(1);
            let oj = o_t.take(&idx).view([b, 1, n, n]);
            let psi = &p_t.unsqueeze(0) * &oj;
            let spec = psi.fft_fft2(None::<Vec<i64>>, [-2i64, -1], "backward");
            let modulus = spec
                .abs()
                .square()
                .sum_dim_intlist(&[1i64][..], true, Kind::Float)
                .sqrt();
            loss += f64::try_from((&modulus - &amp).square().sum(Kind::Double))
                .map_err(|e| format!("torch: {e}"))?;
            let scale = &amp / (&modulus + f64::from(super::model::EPS));
            let chi = (spec * scale).fft_ifft2(None::<Vec<i64>>, [-2i64, -1], "backward") - &psi;
            // Object direction: Σ_m χ conj(P_m), scattered and preconditioned.
            let d_oj =
                (&chi * p_t.conj().unsqueeze(0)).sum_dim_intlist(&[1i64][..], false, None::<Kind>);
            let d_obj = Tensor::zeros([(rows * cols) as i64], (Kind::ComplexFloat, self.device))
                .index_add(0, &idx.flatten(0, -1), &d_oj.flatten(0, -1))
                / &precond;
            // Probe direction: the batch mean of χ conj(O_j).
            let d_probe = (&chi * oj.conj()).mean_dim(&[0i64][..], false, None::<Kind>);
            // Per-position sums for the step sizes.
            let u = d_obj.take(&idx).view([b, 1, n, n]) * p_t.unsqueeze(0);
            let dims = &[1i64, 2, 3][..];
            let re = |t: Tensor| t.real().sum_dim_intlist(dims, false, Kind::Double);
            let mut cols6 = [
                u.abs().square().sum_dim_intlist(dims, false, Kind::Double),
                Tensor::zeros([b], (Kind::Double, self.device)),
                Tensor::zeros([b], (Kind::Double, self.device)),
                Tensor::zeros([b], (Kind::Double, self.device)),
                re(u.conj() * &chi),
                Tensor::zeros([b], (Kind::Double, self.device)),
            ];
            if update_probe {
                let v = d_probe.unsqueeze(0) * &oj;
                let x = (&u * v.conj()).sum_dim_intlist(dims, false, None::<Kind>);
                cols6[1] = v.abs().square().sum_dim_intlist(dims, false, Kind::Double);
                cols6[2] = x.real().to_kind(Kind::Double);
                cols6[3] = x.imag().to_kind(Kind::Double);
                cols6[5] = re(v.conj() * &chi);
            }
            let host: Vec<Vec<f64>> = cols6
                .iter()
                .map(|t| {
                    Vec::<f64>::try_from(t.to_device(Device::Cpu))
                        .map_err(|e| format!("torch: {e}"))
                })
                .collect::<Result<_, _>>()?;
            let sums: Vec<[f64; 6]> = (0..batch.len())
                .map(|i| std::array::from_fn(|k| host[k][i]))
                .collect();
            let (ao, ap) = step_sizes(&sums, nn, probe.modes, update_probe);
            o_t += d_obj * f64::from(ao);
            if update_probe {
                p_t += d_probe * f64::from(ap);
            }
        }
        obj.data = download(&o_t)?;
        probe.data = download(&p_t)?;
        Ok(loss / (data.positions() * nn) as f64)
    }
}
