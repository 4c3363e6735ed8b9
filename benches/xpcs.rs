//! Criterion micro-benchmarks of the XPCS correlator. Throughput is in
//! pixel-frames: one valid pixel of one frame correlated at every delay.
//! Whole-pipeline numbers (file to results) come from `beamflow bench xpcs`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use beamflow_kernels::xpcs::Multitau;

fn multitau(c: &mut Criterion) {
    let mut g = c.benchmark_group("xpcs_multitau");
    g.sample_size(10);
    for (side, frames) in [(512usize, 256usize), (1024, 64)] {
        let len = side * side;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Sparse low uint16 counts, like speckle at ~1 photon/pixel/frame.
        let data: Vec<u16> = (0..len * frames)
            .map(|_| {
                if rng.random_bool(0.4) {
                    rng.random_range(1..4)
                } else {
                    0
                }
            })
            .collect();
        // An annular mask like the synthetic detector's: 3/4 of the pixels.
        let c0 = (side as f64 - 1.0) / 2.0;
        let index: Vec<usize> = (0..len)
            .filter(|&p| {
                let (y, x) = ((p / side) as f64 - c0, (p % side) as f64 - c0);
                let r = (x * x + y * y).sqrt();
                r >= side as f64 / 25.0 && r < 0.49 * side as f64
            })
            .collect();
        g.throughput(Throughput::Elements((index.len() * frames) as u64));
        g.bench_function(format!("{side}x{side}_u16_{frames}_frames"), |b| {
            b.iter(|| {
                let mut mt = Multitau::masked(frames as u64, len, index.clone());
                for chunk in data.chunks(128 * len) {
                    mt.push(chunk).unwrap();
                }
                mt.finish().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, multitau);
criterion_main!(benches);
