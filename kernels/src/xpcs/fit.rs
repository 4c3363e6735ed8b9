//! Single-exponential fit g2(τ) = b + β·exp(−2Γτ): the relaxation rate Γ and
//! contrast β a beamline scientist reads off each q bin.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpFit {
    pub baseline: f64,
    pub beta: f64,
    /// Per unit of τ (per second when τ is in seconds).
    pub gamma: f64,
    pub chi2: f64,
}

/// For fixed Γ the model is linear in (b, β): weighted least squares.
fn linear(tau: &[f64], g2: &[f64], w: &[f64], gamma: f64) -> (f64, f64, f64) {
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..tau.len() {
        let x = (-2.0 * gamma * tau[i]).exp();
        sw += w[i];
        sx += w[i] * x;
        sy += w[i] * g2[i];
        sxx += w[i] * x * x;
        sxy += w[i] * x * g2[i];
    }
    let det = sw * sxx - sx * sx;
    if det.abs() < 1e-300 {
        return (f64::NAN, f64::NAN, f64::INFINITY);
    }
    let beta = (sw * sxy - sx * sy) / det;
    let b = (sy - beta * sx) / sw;
    let chi2: f64 = (0..tau.len())
        .map(|i| w[i] * (g2[i] - b - beta * (-2.0 * gamma * tau[i]).exp()).powi(2))
        .sum();
    (b, beta, chi2)
}

/// Fits b, β, Γ to points weighted by 1/err² (points with err ≤ 0 weigh 1).
/// Γ is searched on a log grid spanning the delays, then refined by
/// golden-section search; `None` with fewer than 4 points.
pub fn fit_g2(tau: &[f64], g2: &[f64], err: &[f64]) -> Option<ExpFit> {
    if tau.len() < 4 || tau.len() != g2.len() || tau.len() != err.len() {
        return None;
    }
    let w: Vec<f64> = err
        .iter()
        .map(|&e| {
            if e > 0.0 && e.is_finite() {
                1.0 / (e * e)
            } else {
                1.0
            }
        })
        .collect();
    let tmin = tau
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(f64::MIN_POSITIVE);
    let tmax = tau.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = ((0.01 / tmax).ln(), (100.0 / tmin).ln());
    let chi = |lg: f64| linear(tau, g2, &w, lg.exp()).2;
    let steps = 400;
    let (mut best, mut best_c) = (lo, f64::INFINITY);
    for i in 0..=steps {
        let lg = lo + (hi - lo) * i as f64 / steps as f64;
        let c = chi(lg);
        if c < best_c {
            best = lg;
            best_c = c;
        }
    }
    let step = (hi - lo) / steps as f64;
    let (mut a, mut b) = (best - step, best + step);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let c1 = b - phi * (b - a);
        let c2 = a + phi * (b - a);
        if chi(c1) < chi(c2) {
            b = c2;
        } else {
            a = c1;
        }
    }
    let gamma = ((a + b) / 2.0).exp();
    let (baseline, beta, chi2) = linear(tau, g2, &w, gamma);
    Some(ExpFit {
        baseline,
        beta,
        gamma,
        chi2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_exponential() {
        let tau: Vec<f64> = (0..40).map(|i| 1e-3 * 1.25f64.powi(i)).collect();
        let g2: Vec<f64> = tau
            .iter()
            .map(|t| 1.0 + 0.3 * (-2.0 * 42.0 * t).exp())
            .collect();
        let f = fit_g2(&tau, &g2, &vec![1e-3; tau.len()]).unwrap();
        assert!((f.gamma - 42.0).abs() < 1e-6 * 42.0, "{f:?}");
        assert!(
            (f.beta - 0.3).abs() < 1e-8 && (f.baseline - 1.0).abs() < 1e-8,
            "{f:?}"
        );
    }
}
