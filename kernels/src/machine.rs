//! The machine's two roofs, measured rather than looked up: memory bandwidth
//! (a STREAM triad over all cores) and the floating-point peak a tuned
//! library reaches (a large SGEMM through BLAS). `beamflow bench` places
//! every kernel under them (the roofline model): a kernel's arithmetic
//! intensity (FLOPs per byte moved) decides which roof bounds it.

use std::time::Instant;

use rayon::prelude::*;

/// STREAM's triad `a = b + s·c` over `n` doubles per array on the rayon
/// pool, best of `repeats`, in GB/s (10⁹ bytes). Counted as STREAM does:
/// 24 bytes an element (two reads, one write), not the write-allocate read
/// a cache may add, so the figure is comparable with published STREAM runs.
pub fn triad_gbs(n: usize, repeats: usize) -> f64 {
    let chunk = (n / (rayon::current_num_threads() * 8)).max(4096);
    // First touch by the threads that will use the pages (NUMA placement).
    let mut a = vec![0f64; n];
    let mut b = vec![0f64; n];
    let mut c = vec![0f64; n];
    a.par_chunks_mut(chunk)
        .zip(b.par_chunks_mut(chunk))
        .zip(c.par_chunks_mut(chunk))
        .for_each(|((a, b), c)| {
            a.fill(0.0);
            b.fill(1.0);
            c.fill(2.0);
        });
    let s = 3.0;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk))
            .zip(c.par_chunks(chunk))
            .for_each(|((a, b), c)| {
                for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                    *a = b + s * c;
                }
            });
        best = best.min(t.elapsed().as_secs_f64());
    }
    // The result is used, so the loop is not optimised away.
    assert!(
        (a[n / 2] - 7.0).abs() < 1e-12,
        "triad computed {}",
        a[n / 2]
    );
    24.0 * n as f64 / best / 1e9
}

/// `C = A·B` for n×n single-precision matrices through BLAS (OpenBLAS, its
/// own threads), best of `repeats`, in GFLOP/s counting 2n³ operations.
pub fn sgemm_gflops(n: usize, repeats: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32) * 0.25).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 5) as f32) * 0.5).collect();
    let mut c = vec![0f32; n * n];
    let ni = n as i32;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) + 1 {
        let t = Instant::now();
        // SAFETY: all three buffers hold n*n floats, row-major, leading dimension n.
        unsafe {
            cblas_sys::cblas_sgemm(
                cblas_sys::CBLAS_LAYOUT::CblasRowMajor,
                cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                ni,
                ni,
                ni,
                1.0,
                a.as_ptr(),
                ni,
                b.as_ptr(),
                ni,
                0.0,
                c.as_mut_ptr(),
                ni,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    // Row 0 of A times column 0 of B, computed directly.
    let want: f32 = (0..n).map(|k| a[k] * b[k * n]).sum();
    assert!(
        (c[0] - want).abs() <= 1e-3 * want.abs().max(1.0),
        "sgemm computed {} for {want}",
        c[0]
    );
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// SGEMM through libtorch on the CPU, GFLOP/s, best of `repeats`. libtorch
/// brings its own GEMM (oneDNN/MKL), which can beat the system BLAS; the
/// machine's roof is the best either reaches, or a torch kernel would sit
/// above it.
#[cfg(feature = "torch")]
pub fn torch_sgemm_gflops(n: usize, repeats: usize) -> f64 {
    let shape = [n as i64, n as i64];
    let a = tch::Tensor::rand(shape, (tch::Kind::Float, tch::Device::Cpu));
    let b = tch::Tensor::rand(shape, (tch::Kind::Float, tch::Device::Cpu));
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) + 1 {
        let t = Instant::now();
        let c = a.matmul(&b);
        // Reading one element waits for the product.
        let _ = c.double_value(&[0, 0]);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofs_are_measured_and_plausible() {
        // Small sizes: this checks the arithmetic and the units, not speed.
        let bw = triad_gbs(1 << 20, 3);
        assert!(bw > 0.1 && bw < 10_000.0, "{bw} GB/s");
        let gf = sgemm_gflops(256, 2);
        assert!(gf > 0.1 && gf < 1_000_000.0, "{gf} GFLOP/s");
    }
}
