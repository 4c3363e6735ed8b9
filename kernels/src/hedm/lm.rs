//! Bounded Levenberg–Marquardt for one region's joint peak fit.
//!
//! Bounds are kept by the change of variables `x = lo + (hi − lo)·σ(u)` with σ
//! the logistic function, as in MIDAS's PyTorch port: the solver works on the
//! unbounded `u`.
//!
//! The iteration is Moré's trust-region form of Levenberg–Marquardt ("The
//! Levenberg–Marquardt algorithm: implementation and theory", 1978) — the
//! algorithm of MINPACK's `lmder` and so of SciPy's `least_squares(method=
//! "lm")` — with the variables scaled by the Jacobian's column norms, an
//! initial trust radius of 100·‖D·u‖, the Levenberg parameter found for each
//! radius by Moré's safeguarded Newton iteration, and the radius adapted from
//! the ratio of actual to predicted reduction. It is chosen over the simpler
//! "multiply λ by 10 on failure" scheme of MIDAS's port because regions with
//! two or more peaks have several minima, and which one a fit lands in depends
//! on the path: following Moré's path, the fits land where the reference's
//! SciPy fits land (every golden region, two-peak ones included, within
//! 1e-4 px), so results compare with theirs peak by peak.
//!
//! MINPACK solves each damped system through a pivoted QR of the Jacobian
//! and Givens rotations; here the same systems are solved through the normal
//! equations `(JᵀJ + par·D²) p = −Jᵀr` by Cholesky, which is the same
//! mathematics at a quarter of the arithmetic (`JᵀJ` once per Jacobian, an
//! n³/3 factorisation per trial `par`). The squared condition number is
//! harmless at these sizes in f64, and regions with fewer pixels than
//! parameters get prior rows (below) that keep `JᵀJ` definite.
//!
//! Problems are tiny (9–25 parameters, tens to hundreds of pixels), so the
//! linear algebra is written out here: a LAPACK call per iteration would cost
//! more in set-up than the arithmetic. All buffers live in a [`Workspace`]
//! reused across regions, so the inner loop does not allocate.

use super::model;

/// Stopping rules.
#[derive(Clone, Copy, Debug)]
pub struct LmOptions {
    /// Most trial steps (each one model evaluation) before giving up.
    pub max_iter: u32,
    /// Relative tolerance on the cost reduction, on the step (relative to the
    /// scaled parameters) and on the gradient's cosine with the residuals —
    /// MINPACK's `ftol`, `xtol` and `gtol`, all set to this.
    pub tol: f64,
}

impl Default for LmOptions {
    /// The reference's SciPy fits use 1e-6 for all three tolerances.
    fn default() -> Self {
        LmOptions {
            max_iter: 200,
            tol: 1e-5,
        }
    }
}

/// How a fit ended (the return-code column of the peak table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rc {
    /// A tolerance was met.
    Converged = 0,
    /// `max_iter` trial steps were taken.
    MaxIter = 1,
    /// No further reduction is possible at machine precision, before the
    /// tolerances were met.
    Stalled = 2,
}

/// A finished fit.
#[derive(Clone, Copy, Debug)]
pub struct Fit {
    pub rc: Rc,
    /// Accepted steps (Jacobian evaluations after the first).
    pub iterations: u32,
    /// Model evaluations.
    pub evaluations: u32,
    /// Sum of squared residuals at the solution.
    pub sse: f64,
}

/// Keeps σ(u) away from exactly 0 or 1, where `u` would be infinite.
const EDGE: f64 = 1e-12;
/// The initial trust radius relative to ‖D·u‖ (MINPACK's `factor`).
const FACTOR: f64 = 100.0;

/// Scratch space for fits; grows to the largest region seen, never shrinks.
#[derive(Default)]
pub struct Workspace {
    f: Vec<f64>,
    r: Vec<f64>,
    r_trial: Vec<f64>,
    jac: Vec<f64>,
    jac_trial: Vec<f64>,
    /// Two n×n matrices: JᵀJ and a Cholesky factor.
    nn: Vec<f64>,
    n_bufs: Vec<f64>,
}

/// Number of length-n buffers in [`Workspace::n_bufs`].
const N_BUFS: usize = 16;

impl Workspace {
    fn ensure(&mut self, m: usize, n: usize) {
        let grow = |v: &mut Vec<f64>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        for v in [&mut self.f, &mut self.r, &mut self.r_trial] {
            grow(v, m);
        }
        grow(&mut self.jac, m * n);
        grow(&mut self.jac_trial, m * n);
        grow(&mut self.nn, 2 * n * n);
        grow(&mut self.n_bufs, N_BUFS * n);
    }
}

#[inline]
fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// `x(u)`, keeping σ(u) for the chain rule.
fn to_x(u: &[f64], lo: &[f64], hi: &[f64], x: &mut [f64], sig: &mut [f64]) {
    for k in 0..u.len() {
        sig[k] = sigmoid(u[k]);
        x[k] = lo[k] + (hi[k] - lo[k]) * sig[k];
    }
}

#[inline]
fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Weak pull of each parameter towards its start, for regions with fewer
/// pixels than parameters: without it those fits are underdetermined, and
/// a trust-region step along a direction the pixels cannot see may take
/// a width or Mu to a bound and the centre a pixel away. The residual of
/// parameter k is `PRIOR·(x_k − x0_k)/(hi_k − lo_k)`: one count per full
/// bound range, well below the pixels' Poisson noise, so it only decides
/// what the data leave open. (MINPACK, and so SciPy's "lm", refuse such
/// problems outright.)
const PRIOR: f64 = 1.0;

/// Where the residual rows come from: the pixels, then, for regions with
/// fewer pixels than parameters, one prior row per parameter.
struct Rows<'a> {
    pu: &'a [f64],
    pv: &'a [f64],
    z: &'a [f64],
    /// Start values and bound ranges when the prior rows are present.
    prior: Option<(&'a [f64], &'a [f64], &'a [f64])>,
}

impl Rows<'_> {
    /// Model, residuals `f − z` and Jacobian (x-space, column stride
    /// `m`) at `x`.
    #[inline]
    fn evaluate(&self, x: &[f64], f: &mut [f64], r: &mut [f64], jac: &mut [f64], m: usize) {
        let md = self.z.len();
        let n = x.len();
        model::eval_jac(x, self.pu, self.pv, f, jac);
        for i in 0..md {
            r[i] = f[i] - self.z[i];
        }
        if let Some((x0, lo, hi)) = self.prior {
            // eval_jac wrote columns of length md; spread them to length m.
            for k in (0..n).rev() {
                jac.copy_within(k * md..(k + 1) * md, k * m);
                jac[k * m + md..(k + 1) * m].fill(0.0);
            }
            for k in 0..n {
                let w = if hi[k] > lo[k] {
                    PRIOR / (hi[k] - lo[k])
                } else {
                    0.0
                };
                r[md + k] = w * (x[k] - x0[k]);
                jac[k * m + md + k] = w;
            }
        }
    }
}

/// Fits `x` (initial values, clamped into `[lo, hi]`; the solution on
/// return) to the intensities `z` at pixels (`u`, `v`).
#[allow(clippy::too_many_arguments)]
pub fn fit(
    x: &mut [f64],
    lo: &[f64],
    hi: &[f64],
    pu: &[f64],
    pv: &[f64],
    z: &[f64],
    opts: &LmOptions,
    ws: &mut Workspace,
) -> Fit {
    let n = x.len();
    let m = if z.len() < n { z.len() + n } else { z.len() };
    ws.ensure(m, n);
    let Workspace {
        f,
        r,
        r_trial,
        jac,
        jac_trial,
        nn,
        n_bufs,
    } = ws;
    let (f, r, r_trial) = (&mut f[..m], &mut r[..m], &mut r_trial[..m]);
    let (mut jac, mut jac_trial) = (&mut jac[..m * n], &mut jac_trial[..m * n]);
    let (a, chol) = nn[..2 * n * n].split_at_mut(n * n);
    let mut bufs = n_bufs[..N_BUFS * n].chunks_exact_mut(n);
    let mut next = || bufs.next().unwrap();
    let (u, u_trial, x_trial, x0) = (next(), next(), next(), next());
    let (mut sig, mut sig_trial) = (next(), next());
    let (g, diag, acnorm, step, wa) = (next(), next(), next(), next(), next());
    let (w1, w2, w3, w4, gn_x) = (next(), next(), next(), next(), next());
    let eps = f64::EPSILON;
    let (ftol, xtol, gtol) = (opts.tol, opts.tol, opts.tol);

    for k in 0..n {
        let w = hi[k] - lo[k];
        let t = if w > 0.0 {
            ((x[k] - lo[k]) / w).clamp(EDGE, 1.0 - EDGE)
        } else {
            0.5
        };
        u[k] = (t / (1.0 - t)).ln();
    }
    to_x(u, lo, hi, x, sig);
    x0.copy_from_slice(x);
    let rows = Rows {
        pu,
        pv,
        z,
        prior: (m > z.len()).then_some((&*x0, lo, hi)),
    };
    rows.evaluate(x, f, r, jac, m);
    let mut evaluations = 1u32;
    let mut fnorm = norm(r);
    let (mut iterations, mut par, mut delta, mut xnorm) = (0u32, 0.0f64, 0.0f64, 0.0f64);
    let rc = 'outer: loop {
        // Chain rule for x(u), then JᵀJ (lower triangle) and Jᵀr.
        for k in 0..n {
            let sc = (hi[k] - lo[k]) * sig[k] * (1.0 - sig[k]);
            for v in &mut jac[k * m..(k + 1) * m] {
                *v *= sc;
            }
        }
        for k in 0..n {
            let ck = &jac[k * m..(k + 1) * m];
            g[k] = dot(ck, r);
            for l in 0..=k {
                a[k * n + l] = dot(ck, &jac[l * m..(l + 1) * m]);
            }
            acnorm[k] = a[k * n + k].sqrt();
        }
        if iterations == 0 {
            // Scale by the column norms; the first trust radius follows.
            for k in 0..n {
                diag[k] = if acnorm[k] == 0.0 { 1.0 } else { acnorm[k] };
                wa[k] = diag[k] * u[k];
            }
            xnorm = norm(wa);
            delta = if xnorm == 0.0 { FACTOR } else { FACTOR * xnorm };
        }
        // Converged if the residuals are orthogonal to the Jacobian's columns.
        let mut gnorm = 0.0f64;
        if fnorm != 0.0 {
            for k in 0..n {
                if acnorm[k] != 0.0 {
                    gnorm = gnorm.max((g[k] / fnorm / acnorm[k]).abs());
                }
            }
        }
        if gnorm <= gtol {
            break Rc::Converged;
        }
        for k in 0..n {
            diag[k] = diag[k].max(acnorm[k]);
        }
        let mut gn = GaussNewton::default();
        loop {
            let gn = (&mut gn, &mut *gn_x);
            let bufs = (&mut *w1, &mut *w2, &mut *w3, &mut *w4);
            let p = if n == model::n_params(1) {
                // One peak, most regions: the linear algebra's loop bounds
                // become constants, which the compiler unrolls.
                lm_parameter(9, a, g, diag, delta, par, step, chol, gn, bufs)
            } else {
                lm_parameter(n, a, g, diag, delta, par, step, chol, gn, bufs)
            };
            par = match p {
                Some(p) => p,
                None => break 'outer Rc::Stalled,
            };
            for k in 0..n {
                step[k] = -step[k];
                u_trial[k] = u[k] + step[k];
                wa[k] = diag[k] * step[k];
            }
            let pnorm = norm(wa);
            if iterations == 0 {
                delta = delta.min(pnorm);
            }
            to_x(u_trial, lo, hi, x_trial, sig_trial);
            rows.evaluate(x_trial, f, r_trial, jac_trial, m);
            evaluations += 1;
            let fnorm1 = norm(r_trial);
            let actred = if 0.1 * fnorm1 < fnorm {
                1.0 - (fnorm1 / fnorm).powi(2)
            } else {
                -1.0
            };
            // Predicted reduction of the linear model: ‖J·step‖² = stepᵀJᵀJ step.
            let t1 = quad_form(a, n, step).max(0.0).sqrt() / fnorm;
            let t2 = par.sqrt() * pnorm / fnorm;
            let prered = t1 * t1 + t2 * t2 / 0.5;
            let dirder = -(t1 * t1 + t2 * t2);
            let ratio = if prered != 0.0 { actred / prered } else { 0.0 };
            if ratio <= 0.25 {
                let mut t = if actred >= 0.0 {
                    0.5
                } else {
                    0.5 * dirder / (dirder + 0.5 * actred)
                };
                if 0.1 * fnorm1 >= fnorm || t < 0.1 {
                    t = 0.1;
                }
                delta = t * delta.min(pnorm / 0.1);
                par /= t;
            } else if par == 0.0 || ratio >= 0.75 {
                delta = pnorm / 0.5;
                par *= 0.5;
            }
            let accepted = ratio >= 1e-4;
            if accepted {
                u.copy_from_slice(u_trial);
                x.copy_from_slice(x_trial);
                r.copy_from_slice(r_trial);
                std::mem::swap(&mut jac, &mut jac_trial);
                std::mem::swap(&mut sig, &mut sig_trial);
                for k in 0..n {
                    wa[k] = diag[k] * u[k];
                }
                xnorm = norm(wa);
                fnorm = fnorm1;
                iterations += 1;
            }
            if (actred.abs() <= ftol && prered <= ftol && 0.5 * ratio <= 1.0)
                || delta <= xtol * xnorm
            {
                break 'outer Rc::Converged;
            }
            if evaluations > opts.max_iter {
                break 'outer Rc::MaxIter;
            }
            if (actred.abs() <= eps && prered <= eps && 0.5 * ratio <= 1.0)
                || delta <= eps * xnorm
                || gnorm <= eps
            {
                break 'outer Rc::Stalled;
            }
            if accepted {
                break;
            }
        }
    };
    Fit {
        rc,
        iterations,
        evaluations,
        // The pixels' share only, without the prior rows.
        sse: dot(&r[..z.len()], &r[..z.len()]),
    }
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four accumulators: independent chains the compiler can vectorise.
    let mut acc = [0.0f64; 4];
    let (ca, ra) = a.split_at(a.len() / 4 * 4);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(4).zip(cb.chunks_exact(4)) {
        for j in 0..4 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `pᵀ A p` for symmetric `A` given by its lower triangle.
fn quad_form(a: &[f64], n: usize, p: &[f64]) -> f64 {
    let mut s = 0.0;
    for k in 0..n {
        let row = &a[k * n..k * n + k];
        s += p[k] * (a[k * n + k] * p[k] + 2.0 * dot(row, &p[..k]));
    }
    s
}

/// Cholesky factor `L` (lower triangle of `l`; the reciprocals of its
/// diagonal in `inv`) of `A + par·D²`, `A` given by its lower triangle.
/// `false` if the matrix is not numerically positive definite.
#[inline(always)]
fn cholesky(a: &[f64], n: usize, par: f64, diag: &[f64], l: &mut [f64], inv: &mut [f64]) -> bool {
    for k in 0..n {
        let (done, rest) = l.split_at_mut(k * n);
        let lk = &mut rest[..n];
        for j in 0..k {
            let lj = &done[j * n..j * n + j];
            let s = a[k * n + j] - lk[..j].iter().zip(lj).map(|(x, y)| x * y).sum::<f64>();
            lk[j] = s * inv[j];
        }
        let s = a[k * n + k] + par * diag[k] * diag[k] - lk[..k].iter().map(|x| x * x).sum::<f64>();
        if !(s > 0.0 && s.is_finite()) {
            return false;
        }
        lk[k] = s.sqrt();
        inv[k] = 1.0 / lk[k];
    }
    true
}

/// Solves `L y = b` in place.
#[inline(always)]
fn forward(l: &[f64], inv: &[f64], n: usize, y: &mut [f64]) {
    for i in 0..n {
        let li = &l[i * n..i * n + i];
        let s = y[i] - li.iter().zip(&y[..i]).map(|(a, b)| a * b).sum::<f64>();
        y[i] = s * inv[i];
    }
}

/// Solves `Lᵀ y = b` in place.
#[inline(always)]
fn backward(l: &[f64], inv: &[f64], n: usize, y: &mut [f64]) {
    for i in (0..n).rev() {
        y[i] *= inv[i];
        let (yi, li) = (y[i], &l[i * n..i * n + i]);
        for (yp, lp) in y[..i].iter_mut().zip(li) {
            *yp -= lp * yi;
        }
    }
}

/// The Gauss–Newton step's norms for the current `JᵀJ` (its step is kept
/// beside it).
#[derive(Default)]
struct GaussNewton {
    /// Worked out for the current `JᵀJ`.
    known: bool,
    /// `JᵀJ` is numerically positive definite: the step exists.
    definite: bool,
    /// `‖D x‖` of the step.
    dxnorm: f64,
    /// `‖L⁻¹ D²x/‖Dx‖‖`, for the Newton bound on par.
    newton: f64,
}

/// The Levenberg parameter for trust radius `delta` and the step it gives.
///
/// Finds `par ≥ 0` such that the solution `x` of `(A + par·D²) x = g`
/// (`A = JᵀJ`, `g = Jᵀr`, `D = diag`) has `‖D·x‖` within 10 % of `delta`, or
/// `par = 0` if the Gauss–Newton step is already inside (Moré's safeguarded
/// Newton iteration on `par`, at most 10 solves, started from the previous
/// `par_in`). The step is `−x`; `None` if no step can be computed (a
/// Jacobian or residual that is not finite).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lm_parameter(
    n: usize,
    a: &[f64],
    g: &[f64],
    diag: &[f64],
    delta: f64,
    par_in: f64,
    x: &mut [f64],
    l: &mut [f64],
    (gn, gn_x): (&mut GaussNewton, &mut [f64]),
    (dx, q, w, inv): (&mut [f64], &mut [f64], &mut [f64], &mut [f64]),
) -> Option<f64> {
    let dwarf = f64::MIN_POSITIVE;
    // ‖D x‖ − delta for the solution x with the factor in `l`, and the
    // Newton correction's ‖L⁻¹ D²x/‖Dx‖‖.
    let solve = |l: &[f64], inv: &[f64], x: &mut [f64], dx: &mut [f64]| {
        x.copy_from_slice(g);
        forward(l, inv, n, x);
        backward(l, inv, n, x);
        for k in 0..n {
            dx[k] = diag[k] * x[k];
        }
        norm(dx)
    };
    let newton = |l: &[f64], inv: &[f64], dx: &[f64], dxnorm: f64, q: &mut [f64]| {
        for k in 0..n {
            q[k] = diag[k] * (dx[k] / dxnorm);
        }
        forward(l, inv, n, q);
        norm(q)
    };
    // Gauss–Newton step, and its lower bound on par if A is definite: the
    // same for every radius tried with this A, so worked out once.
    if !gn.known {
        gn.known = true;
        gn.definite = cholesky(a, n, 0.0, diag, l, inv);
        if gn.definite {
            gn.dxnorm = solve(l, inv, gn_x, dx);
            gn.newton = newton(l, inv, dx, gn.dxnorm, q);
        }
    }
    let (mut fp, mut parl, mut dxnorm) = (f64::INFINITY, 0.0, 0.0);
    if gn.definite {
        dxnorm = gn.dxnorm;
        fp = dxnorm - delta;
        if fp <= 0.1 * delta {
            x.copy_from_slice(gn_x);
            return Some(0.0);
        }
        parl = ((fp / delta) / gn.newton) / gn.newton;
    }
    // Upper bound from the scaled gradient.
    for k in 0..n {
        w[k] = g[k] / diag[k];
    }
    let gnorm = norm(w);
    let mut paru = gnorm / delta;
    if paru == 0.0 {
        paru = dwarf / delta.min(0.1);
    }
    let mut par = par_in.max(parl).min(paru);
    if par == 0.0 && dxnorm > 0.0 {
        par = gnorm / dxnorm;
    }
    let (mut iter, mut failures) = (0, 0);
    loop {
        if par == 0.0 {
            par = dwarf.max(0.001 * paru);
        }
        if !cholesky(a, n, par, diag, l, inv) {
            // Rounding defeats D² > 0 when JᵀJ is singular and par tiny
            // (more damping helps; par is relative to the column norms), or
            // the system is not finite (nothing does).
            failures += 1;
            par = (10.0 * par).max(1e-12);
            if failures > 30 || !par.is_finite() {
                return None;
            }
            continue;
        }
        iter += 1;
        dxnorm = solve(l, inv, x, dx);
        let prev = fp;
        fp = dxnorm - delta;
        if fp.abs() <= 0.1 * delta || (parl == 0.0 && fp <= prev && prev < 0.0) || iter == 10 {
            break;
        }
        let t = newton(l, inv, dx, dxnorm, q);
        let parc = ((fp / delta) / t) / t;
        if fp > 0.0 {
            parl = parl.max(par);
        }
        if fp < 0.0 {
            paru = paru.min(par);
        }
        par = parl.max(par + parc);
    }
    Some(par)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: std::ops::Range<i32>, cols: std::ops::Range<i32>) -> (Vec<f64>, Vec<f64>) {
        let (mut pu, mut pv) = (Vec::new(), Vec::new());
        for r in rows {
            for c in cols.clone() {
                pu.push(r as f64);
                pv.push(c as f64);
            }
        }
        (pu, pv)
    }

    #[test]
    fn cholesky_solves_a_damped_system() {
        // A = [[4,2],[2,3]], D = diag(1, 2), par = 0.5:
        // (A + par·D²) = [[4.5,2],[2,5]], b = [6.5, 7] → x = [1, 1].
        let a = [4.0, 0.0, 2.0, 3.0];
        let (mut l, mut inv) = ([0.0; 4], [0.0; 2]);
        assert!(cholesky(&a, 2, 0.5, &[1.0, 2.0], &mut l, &mut inv));
        let mut y = [6.5, 7.0];
        forward(&l, &inv, 2, &mut y);
        backward(&l, &inv, 2, &mut y);
        assert!(
            (y[0] - 1.0).abs() < 1e-12 && (y[1] - 1.0).abs() < 1e-12,
            "{y:?}"
        );
        assert!((quad_form(&a, 2, &[1.0, -1.0]) - 3.0).abs() < 1e-12);
        // Indefinite: refused.
        assert!(!cholesky(
            &[1.0, 0.0, 2.0, 1.0],
            2,
            0.0,
            &[1.0, 1.0],
            &mut l,
            &mut inv
        ));
    }

    #[test]
    fn the_step_fills_the_trust_region() {
        // A = I·4, g = [8, 0], D = I: the Gauss–Newton step has length 2;
        // inside a radius of 3 par is 0, for a radius of 1 par ≈ 4.
        let a = [4.0, 0.0, 0.0, 4.0];
        let (mut x, mut l) = ([0.0; 2], [0.0; 4]);
        let mut b = [[0.0; 2]; 4];
        let [b1, b2, b3, b4] = &mut b;
        let bufs = (&mut b1[..], &mut b2[..], &mut b3[..], &mut b4[..]);
        let (mut gn, mut gn_x) = (GaussNewton::default(), [0.0; 2]);
        let par = lm_parameter(
            2,
            &a,
            &[8.0, 0.0],
            &[1.0, 1.0],
            3.0,
            0.0,
            &mut x,
            &mut l,
            (&mut gn, &mut gn_x),
            bufs,
        );
        assert_eq!(par, Some(0.0));
        assert!((x[0] - 2.0).abs() < 1e-12);
        let bufs = (&mut b1[..], &mut b2[..], &mut b3[..], &mut b4[..]);
        // The same A: the Gauss–Newton step is reused.
        let par = lm_parameter(
            2,
            &a,
            &[8.0, 0.0],
            &[1.0, 1.0],
            1.0,
            0.0,
            &mut x,
            &mut l,
            (&mut gn, &mut gn_x),
            bufs,
        )
        .unwrap();
        assert!((x[0] - 1.0).abs() <= 0.1, "{x:?}");
        assert!((par - 4.0).abs() <= 0.5, "{par}");
    }

    #[test]
    fn recovers_a_noise_free_peak() {
        let truth = [5.0, 300.0, 10.3, 20.6, 0.4, 1.1, 0.9, 1.3, 0.8];
        let (pu, pv) = grid(6..15, 16..25);
        let mut z = vec![0.0; pu.len()];
        model::eval(&truth, &pu, &pv, &mut z);
        let mut x = [2.5, 280.0, 10.0, 21.0, 0.5, 1.0, 1.0, 1.0, 1.0];
        let lo = [0.0, 100.0, 9.0, 20.0, 0.0, 0.01, 0.01, 0.005, 0.005];
        let hi = [10.0, 1000.0, 11.0, 22.0, 1.0, 5.0, 5.0, 5.0, 5.0];
        let mut ws = Workspace::default();
        let opts = LmOptions {
            max_iter: 500,
            tol: 1e-12,
        };
        let f = fit(&mut x, &lo, &hi, &pu, &pv, &z, &opts, &mut ws);
        assert_eq!(f.rc, Rc::Converged, "{f:?}");
        assert!(f.sse < 1e-12, "{f:?} {x:?}");
        for k in 0..9 {
            assert!(
                (x[k] - truth[k]).abs() < 1e-5,
                "param {k}: {} vs {}",
                x[k],
                truth[k]
            );
        }
    }

    #[test]
    fn fewer_pixels_than_parameters_stay_finite() {
        // 6 pixels, 9 parameters: the problem is underdetermined; the fit
        // must still end with a finite solution inside the bounds and a cost
        // no higher than at the start.
        let truth = [1.0, 50.0, 1.2, 1.4, 0.3, 0.8, 0.9, 0.8, 0.9];
        let (pu, pv) = grid(0..2, 0..3);
        let mut z = vec![0.0; pu.len()];
        model::eval(&truth, &pu, &pv, &mut z);
        let lo = [0.0, 1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1];
        let hi = [5.0, 200.0, 2.0, 2.0, 1.0, 3.0, 3.0, 3.0, 3.0];
        let mut x = [0.5, 40.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0];
        let mut start = vec![0.0; pu.len()];
        model::eval(&x, &pu, &pv, &mut start);
        let sse0: f64 = start.iter().zip(&z).map(|(a, b)| (a - b) * (a - b)).sum();
        let mut ws = Workspace::default();
        let f = fit(
            &mut x,
            &lo,
            &hi,
            &pu,
            &pv,
            &z,
            &LmOptions::default(),
            &mut ws,
        );
        assert!(
            f.sse.is_finite() && f.sse < sse0 * 1e-3,
            "{f:?} from {sse0}"
        );
        for k in 0..9 {
            assert!(x[k].is_finite() && x[k] >= lo[k] && x[k] <= hi[k], "{x:?}");
        }
    }
}
