//! The multi-tau inner loop: one level's pass over a block of rows, for a
//! group of pixels at a time, with the delay products accumulated in vector
//! registers.
//!
//! It is written once against the small [`Lanes`] trait and instantiated for
//! AVX2+FMA (8 × f32, chosen at run time when the CPU has it) and for a
//! portable 4-lane version; the last `w % lanes` pixels of a tile go through
//! a 1-lane instance. Accumulators are f32 for one pass (a block of at most a
//! few hundred rows) and are added to the caller's f64 totals at its end.

use std::ops::Range;

/// Rows of frames: row r, column c at `buf[r * stride + c]`.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub buf: &'a [f32],
    pub stride: usize,
}

/// One level's pass over `rows` of `src`, for the tile's columns
/// `col..col + w`. Row r is correlated with rows r − k for k in kmin..=8,
/// so `rows.start` must be at least 8.
pub(super) struct Pass<'a> {
    pub src: Rows<'a>,
    pub rows: Range<usize>,
    pub col: usize,
    pub w: usize,
    pub kmin: usize,
    /// Index at this level of row `rows.start` (for pairing).
    pub index0: u64,
    /// Where the pair sums go: row e of `next` (stride w) receives the pair
    /// whose second frame has index c (odd), with e = (c − 1)/2 − `next_base`.
    pub next: Option<&'a mut [f32]>,
    pub next_base: u64,
}

/// Runs `pass`, adding Σ x(r)·x(r−k) to `g2[(k − kmin)·w + p]` and Σ x(r) to
/// `sum[p]`.
pub(super) fn run(pass: &mut Pass, g2: &mut [f64], sum: &mut [f64]) {
    let w = pass.w;
    assert!(pass.rows.start >= 8, "rows must have 8 rows of history");
    if !pass.rows.is_empty() {
        let last = (pass.rows.end - 1) * pass.src.stride + pass.col + w;
        assert!(last <= pass.src.buf.len(), "pass reads past its rows");
    }
    assert!(pass.kmin >= 1 && pass.kmin <= 8);
    assert!(g2.len() >= (9 - pass.kmin) * w && sum.len() >= w);
    if let Some(next) = &pass.next {
        let pairs = (pass.index0 + pass.rows.len() as u64) / 2;
        let rows = pairs.saturating_sub(pass.next_base) as usize;
        assert!(next.len() >= rows * w, "pair buffer too small");
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { run_avx2(pass, g2, sum) };
            return;
        }
    }
    run_with::<Portable>(pass, g2, sum);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(pass: &mut Pass, g2: &mut [f64], sum: &mut [f64]) {
    run_with::<Avx2>(pass, g2, sum);
}

#[inline(always)]
fn run_with<V: Lanes>(pass: &mut Pass, g2: &mut [f64], sum: &mut [f64]) {
    let full = pass.w / V::N * V::N;
    for p in (0..full).step_by(V::N) {
        if pass.kmin == 1 {
            group::<V, 1>(pass, g2, sum, p);
        } else {
            group::<V, 5>(pass, g2, sum, p);
        }
    }
    for p in full..pass.w {
        group::<One, 1>(pass, g2, sum, p);
    }
}

/// Lanes p..p + V::N over the pass's rows.
#[inline(always)]
fn group<V: Lanes, const KMIN_HINT: usize>(
    pass: &mut Pass,
    g2: &mut [f64],
    sum: &mut [f64],
    p: usize,
) {
    // KMIN_HINT lets the compiler unroll the delay loop for the two real
    // cases; the 1-lane tail passes 1 and uses pass.kmin at run time.
    let kmin = if V::N == 1 { pass.kmin } else { KMIN_HINT };
    let nk = 9 - kmin;
    let w = pass.w;
    let stride = pass.src.stride;
    let base = pass.src.buf.as_ptr();
    let col = pass.col + p;
    let next = pass.next.as_deref_mut().map(|n| n.as_mut_ptr());
    // SAFETY: `run` asserted that every row in rows.start − 8..rows.end is
    // inside `buf` for columns col..col + w, that the pair buffer holds
    // every pair this pass emits, and p + V::N ≤ w.
    unsafe {
        let mut acc = [V::zero(); 8];
        let mut tot = V::zero();
        for (i, r) in pass.rows.clone().enumerate() {
            let x = V::load(base.add(r * stride + col));
            for (j, a) in acc.iter_mut().enumerate().take(nk) {
                let y = V::load(base.add((r - kmin - j) * stride + col));
                *a = V::fma(x, y, *a);
            }
            tot = V::add(tot, x);
            let c = pass.index0 + i as u64;
            if let Some(next) = next {
                if c % 2 == 1 {
                    let e = ((c - 1) / 2 - pass.next_base) as usize;
                    let y = V::load(base.add((r - 1) * stride + col));
                    V::store(next.add(e * w + p), V::add(x, y));
                }
            }
        }
        let mut out = [0f32; 16];
        for (j, a) in acc.iter().enumerate().take(nk) {
            V::store(out.as_mut_ptr(), *a);
            let g = &mut g2[j * w + p..j * w + p + V::N];
            for (gi, &o) in g.iter_mut().zip(&out) {
                *gi += f64::from(o);
            }
        }
        V::store(out.as_mut_ptr(), tot);
        for (s, &o) in sum[p..p + V::N].iter_mut().zip(&out) {
            *s += f64::from(o);
        }
    }
}

/// The few vector operations the loop needs.
trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(p: *mut f32, v: Self);
    /// a·b + c
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
}

#[derive(Clone, Copy)]
struct One(f32);

impl Lanes for One {
    const N: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        One(0.0)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        One(unsafe { *p })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { *p = v.0 }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        One(a.0 * b.0 + c.0)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        One(a.0 + b.0)
    }
}

/// Four lanes in plain arrays, which any target vectorises.
#[derive(Clone, Copy)]
struct Portable([f32; 4]);

impl Lanes for Portable {
    const N: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 4])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(unsafe { std::ptr::read_unaligned(p as *const [f32; 4]) })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 4], v.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|i| a.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|i| a.0[i] + b.0[i]))
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx2(unsafe { std::arch::x86_64::_mm256_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Avx2(unsafe { std::arch::x86_64::_mm256_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { std::arch::x86_64::_mm256_storeu_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Avx2(unsafe { std::arch::x86_64::_mm256_fmadd_ps(a.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Avx2(unsafe { std::arch::x86_64::_mm256_add_ps(a.0, b.0) })
    }
}
