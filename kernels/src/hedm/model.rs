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

/// Per-pixel pieces of one peak's profile, shared by the model and the Jacobian.
#[derive(Clone, Copy)]
struct Terms {
    du: f64,
    dv: f64,
    g: f64,
    lu: f64,
    lv: f64,
    l: f64,
}

#[inline(always)]
fn terms(p: &[f64], u: f64, v: f64) -> Terms {
    let du = u - p[1];
    let dv = v - p[2];
    let (sgu, glu, sgv, glv) = (p[4], p[5], p[6], p[7]);
    let g = (-0.5 * (du * du / (sgu * sgu) + dv * dv / (sgv * sgv))).exp();
    let lu = 1.0 / (1.0 + du * du / (glu * glu));
    let lv = 1.0 / (1.0 + dv * dv / (glv * glv));
    Terms {
        du,
        dv,
        g,
        lu,
        lv,
        l: lu * lv,
    }
}

/// One peak's profile without background at (u, v).
#[inline]
pub fn peak(p: &[f64], u: f64, v: f64) -> f64 {
    let t = terms(p, u, v);
    p[0] * (p[3] * t.l + (1.0 - p[3]) * t.g)
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
pub fn eval_jac(x: &[f64], u: &[f64], v: &[f64], out: &mut [f64], jac: &mut [f64]) {
    let np = x.len();
    let m = u.len();
    let n = (np - 1) / SLOTS;
    jac[..m].fill(1.0);
    for i in 0..m {
        let mut s = x[0];
        for j in 0..n {
            let p = &x[1 + SLOTS * j..1 + SLOTS * (j + 1)];
            let t = terms(p, u[i], v[i]);
            let (a, mu) = (p[0], p[3]);
            let (sgu, glu, sgv, glv) = (p[4], p[5], p[6], p[7]);
            let prof = mu * t.l + (1.0 - mu) * t.g;
            s += a * prof;
            let am = a * mu * t.l;
            let ag = a * (1.0 - mu) * t.g;
            let c = (1 + SLOTS * j) * m + i;
            jac[c] = prof;
            jac[c + m] = am * 2.0 * t.du * t.lu / (glu * glu) + ag * t.du / (sgu * sgu);
            jac[c + 2 * m] = am * 2.0 * t.dv * t.lv / (glv * glv) + ag * t.dv / (sgv * sgv);
            jac[c + 3 * m] = a * (t.l - t.g);
            jac[c + 4 * m] = ag * t.du * t.du / (sgu * sgu * sgu);
            jac[c + 5 * m] = am * 2.0 * t.du * t.du * t.lu / (glu * glu * glu);
            jac[c + 6 * m] = ag * t.dv * t.dv / (sgv * sgv * sgv);
            jac[c + 7 * m] = am * 2.0 * t.dv * t.dv * t.lv / (glv * glv * glv);
        }
        out[i] = s;
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
        assert_eq!(f, f2);
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
