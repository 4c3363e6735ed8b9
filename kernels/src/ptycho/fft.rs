//! Square 2D FFTs for the far-field model, planned once per size.
//!
//! A 2D transform is n row transforms, a transpose, and n more row
//! transforms. Leaving out the transpose back saves a pass over the data:
//! [`Fft2::forward`] returns the spectrum *transposed*, which is harmless
//! because everything done in Fourier space (the modulus constraint) is
//! elementwise against data stored in the same transposed layout, and
//! [`Fft2::inverse`] takes a transposed spectrum and returns the field in
//! its natural layout. The forward transform is unnormalised (as pty-chi's
//! `FourierPropagator(norm=None)`); the inverse leaves out its 1/n² too, so
//! callers fold it into their own elementwise pass.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Plans and scratch for n×n transforms.
pub struct Fft2 {
    n: usize,
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
    scratch: Vec<Complex32>,
}

impl Clone for Fft2 {
    fn clone(&self) -> Self {
        Fft2 {
            n: self.n,
            fwd: self.fwd.clone(),
            inv: self.inv.clone(),
            scratch: vec![Complex32::default(); self.scratch.len()],
        }
    }
}

impl Fft2 {
    pub fn new(n: usize) -> Self {
        let mut planner = FftPlanner::new();
        let fwd = planner.plan_fft_forward(n);
        let inv = planner.plan_fft_inverse(n);
        let len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        Fft2 {
            n,
            fwd,
            inv,
            scratch: vec![Complex32::default(); len],
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `dst = (F src)ᵀ`, unnormalised; `src` is overwritten.
    pub fn forward(&mut self, src: &mut [Complex32], dst: &mut [Complex32]) {
        self.fwd.process_with_scratch(src, &mut self.scratch);
        transpose(src, dst, self.n);
        self.fwd.process_with_scratch(dst, &mut self.scratch);
    }

    /// `dst = n²·F⁻¹(srcᵀ)`: the inverse of a transposed spectrum without
    /// its 1/n²; `src` is overwritten.
    pub fn inverse(&mut self, src: &mut [Complex32], dst: &mut [Complex32]) {
        self.inv.process_with_scratch(src, &mut self.scratch);
        transpose(src, dst, self.n);
        self.inv.process_with_scratch(dst, &mut self.scratch);
    }
}

/// `dst = srcᵀ` for n×n row-major arrays, in cache-sized tiles.
pub fn transpose<T: Copy>(src: &[T], dst: &mut [T], n: usize) {
    const TILE: usize = 16;
    for r0 in (0..n).step_by(TILE) {
        for c0 in (0..n).step_by(TILE) {
            for r in r0..(r0 + TILE).min(n) {
                for c in c0..(c0 + TILE).min(n) {
                    dst[c * n + r] = src[r * n + c];
                }
            }
        }
    }
}

/// Moves the zero frequency between the centre and the corner of an n×n
/// array (its own inverse for even n): detectors record DC-centred patterns,
/// the FFT wants DC at [0, 0].
pub fn fftshift<T: Copy>(a: &mut [T], n: usize) {
    let h = n / 2;
    let mut row = Vec::with_capacity(n);
    for r in 0..n {
        row.clear();
        row.extend_from_slice(&a[r * n..(r + 1) * n]);
        for c in 0..n {
            a[r * n + (c + h) % n] = row[c];
        }
    }
    for c in 0..n {
        let col: Vec<T> = (0..n).map(|r| a[r * n + c]).collect();
        for r in 0..n {
            a[((r + h) % n) * n + c] = col[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_then_inverse_is_n_squared_times_identity() {
        let n = 8;
        let x: Vec<Complex32> = (0..n * n)
            .map(|i| Complex32::new((i as f32 * 0.37).sin(), (i as f32 * 0.11).cos()))
            .collect();
        let mut f = Fft2::new(n);
        let (mut a, mut b) = (x.clone(), vec![Complex32::default(); n * n]);
        f.forward(&mut a, &mut b);
        // DC term: the sum of all samples.
        let sum: Complex32 = x.iter().sum();
        assert!((b[0] - sum).norm() < 1e-4);
        // A pure row frequency (along columns) lands transposed.
        let mut e: Vec<Complex32> = (0..n * n)
            .map(|i| {
                let c = (i % n) as f32;
                Complex32::from_polar(1.0, 2.0 * std::f32::consts::PI * c / n as f32)
            })
            .collect();
        let mut s = vec![Complex32::default(); n * n];
        f.forward(&mut e, &mut s);
        // Frequency (row 0, col 1) is at index [1][0] of the transposed spectrum.
        assert!((s[n].re - (n * n) as f32).abs() < 1e-3, "{:?}", s[n]);
        f.inverse(&mut b, &mut a);
        for (u, v) in a.iter().zip(&x) {
            assert!((u / (n * n) as f32 - v).norm() < 1e-5);
        }
    }

    #[test]
    fn fftshift_moves_the_centre_to_the_corner_and_back() {
        let n = 4;
        let mut a: Vec<u32> = (0..16).collect();
        fftshift(&mut a, n);
        assert_eq!(a[0], 10); // old [2][2]
        fftshift(&mut a, n);
        assert_eq!(a, (0..16).collect::<Vec<_>>());
    }
}
