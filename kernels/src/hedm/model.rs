//! MIDAS's 2D pseudo-Voigt peak model and its analytic Jacobian.
//!
//! Parameters, in MIDAS's slot order: `x[0]` = background, then per peak
//! `[IMax, U, V, Mu, SigmaGU, GammaLU, SigmaGV, GammaLV]`. (U, V) are the
//! fitting coordinates: (R px, Eta deg) in polar mode, (row, col) px in
//! cartesian mode. The Gaussian and the Lorentzian are each separable in
//! (U, V) — the Lorentzian is the product of two 1D Lorentzians, not a radial
//! one — and IMax is the peak height (no normalisation):
//!
//! ```text
//! G = exp(-½ (du²/σu² + dv²/σv²))      L = 1 / ((1 + du²/γu²)(1 + dv²/γv²))
//! I = BG + Σ IMax (Mu L + (1 − Mu) G)
//! ```

/// Parameters per peak.
pub const SLOTS: usize = 8;

/// Number of parameters for `n` peaks.
pub fn n_params(n_peaks: usize) -> usize {
    1 + SLOTS * n_peaks
}

/// One peak's profile without background at (u, v).
#[inline]
pub fn peak(p: &[f64], u: f64, v: f64) -> f64 {
    let du = u - p[1];
    let dv = v - p[2];
    let g = (-0.5 * (du * du / (p[4] * p[4]) + dv * dv / (p[6] * p[6]))).exp();
    let l = 1.0 / ((1.0 + du * du / (p[5] * p[5])) * (1.0 + dv * dv / (p[7] * p[7])));
    p[0] * (p[3] * l + (1.0 - p[3]) * g)
}

/// The model at each pixel.
pub fn eval(x: &[f64], u: &[f64], v: &[f64], out: &mut [f64]) {
    let n = (x.len() - 1) / SLOTS;
    for i in 0..u.len() {
        let mut s = x[0];
        for j in 0..n {
            s += peak(&x[1 + SLOTS * j..1 + SLOTS * (j + 1)], u[i], v[i]);
        }
        out[i] = s;
    }
}

/// The model and its Jacobian, column-major: the derivatives by parameter
/// `k` at every pixel are `jac[k * m..(k + 1) * m]` (m pixels), so that the
/// normal equations are dot products of contiguous columns.
///
/// Peaks are the outer loop and pixels the inner one, with each peak's
/// reciprocal widths computed once: the inner loop is straight-line
/// arithmetic and one `exp`, writing each column contiguously.
pub fn eval_jac(x: &[f64], u: &[f64], v: &[f64], out: &mut [f64], jac: &mut [f64]) {
    let np = x.len();
    let m = u.len();
    let n = (np - 1) / SLOTS;
    out[..m].fill(x[0]);
    jac[..m].fill(1.0);
    for j in 0..n {
        let p = &x[1 + SLOTS * j..1 + SLOTS * (j + 1)];
        let (a, pu, pv, mu) = (p[0], p[1], p[2], p[3]);
        // Reciprocals of the widths and of their squares.
        let (isgu2, iglu2) = (1.0 / (p[4] * p[4]), 1.0 / (p[5] * p[5]));
        let (isgv2, iglv2) = (1.0 / (p[6] * p[6]), 1.0 / (p[7] * p[7]));
        let (isgu, iglu, isgv, iglv) = (1.0 / p[4], 1.0 / p[5], 1.0 / p[6], 1.0 / p[7]);
        let base = (1 + SLOTS * j) * m;
        let cols = &mut jac[base..base + SLOTS * m];
        let (c0, rest) = cols.split_at_mut(m);
        let (c1, rest) = rest.split_at_mut(m);
        let (c2, rest) = rest.split_at_mut(m);
        let (c3, rest) = rest.split_at_mut(m);
        let (c4, rest) = rest.split_at_mut(m);
        let (c5, rest) = rest.split_at_mut(m);
        let (c6, c7) = rest.split_at_mut(m);
        for i in 0..m {
            let du = u[i] - pu;
            let dv = v[i] - pv;
            let (du2, dv2) = (du * du, dv * dv);
            let g = (-0.5 * (du2 * isgu2 + dv2 * isgv2)).exp();
            let lu = 1.0 / (1.0 + du2 * iglu2);
            let lv = 1.0 / (1.0 + dv2 * iglv2);
            let l = lu * lv;
            let prof = mu * l + (1.0 - mu) * g;
            out[i] += a * prof;
            let am = a * mu * l;
            let ag = a * (1.0 - mu) * g;
            c0[i] = prof;
            c1[i] = 2.0 * am * du * lu * iglu2 + ag * du * isgu2;
            c2[i] = 2.0 * am * dv * lv * iglv2 + ag * dv * isgv2;
            c3[i] = a * (l - g);
            c4[i] = ag * du2 * isgu2 * isgu;
            c5[i] = 2.0 * am * du2 * lu * iglu2 * iglu;
            c6[i] = ag * dv2 * isgv2 * isgv;
            c7[i] = 2.0 * am * dv2 * lv * iglv2 * iglv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobian_matches_finite_differences() {
        let x = [
            12.0, 400.0, 49.1, 327.7, 0.3, 0.8, 1.2, 1.0, 1.3, 150.0, 51.0, 329.0, 0.7, 1.1, 0.6,
            0.9, 0.4,
        ];
        let u: Vec<f64> = (0..25).map(|k| 47.0 + (k / 5) as f64).collect();
        let v: Vec<f64> = (0..25).map(|k| 325.0 + (k % 5) as f64).collect();
        let mut f = vec![0.0; 25];
        let mut jac = vec![0.0; 25 * x.len()];
        eval_jac(&x, &u, &v, &mut f, &mut jac);
        let mut f2 = vec![0.0; 25];
        eval(&x, &u, &v, &mut f2);
        for (a, b) in f.iter().zip(&f2) {
            assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}");
        }
        for k in 0..x.len() {
            let h = 1e-6 * x[k].abs().max(1.0);
            let (mut xp, mut xm) = (x, x);
            xp[k] += h;
            xm[k] -= h;
            let (mut fp, mut fm) = (vec![0.0; 25], vec![0.0; 25]);
            eval(&xp, &u, &v, &mut fp);
            eval(&xm, &u, &v, &mut fm);
            for i in 0..25 {
                let fd = (fp[i] - fm[i]) / (2.0 * h);
                let an = jac[k * 25 + i];
                assert!(
                    (fd - an).abs() <= 1e-5 * an.abs().max(1e-2),
                    "param {k} pixel {i}: analytic {an} vs fd {fd}"
                );
            }
        }
    }
}
