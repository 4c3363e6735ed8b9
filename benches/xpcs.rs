//! Criterion benchmarks of the XPCS kernels. Throughput is in pixel-frames:
//! one pixel of one frame correlated at every delay.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use beamflow_kernels::xpcs::Multitau;

fn multitau(c: &mut Criterion) {
    let mut g = c.benchmark_group("xpcs_multitau");
    g.sample_size(10);
    for (side, frames) in [(512usize, 200usize), (1024, 50)] {
        let pixels = side * side;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Sparse low counts, like a speckle pattern at ~1 photon/pixel/frame.
        let data: Vec<f32> = (0..pixels * frames)
            .map(|_| {
                if rng.random_bool(0.4) {
                    rng.random_range(1..4) as f32
                } else {
                    0.0
                }
            })
            .collect();
        g.throughput(Throughput::Elements((pixels * frames) as u64));
        g.bench_function(format!("{side}x{side}_{frames}_frames"), |b| {
            b.iter(|| {
                let mut mt = Multitau::new(frames as u64, pixels);
                for chunk in data.chunks(64 * pixels) {
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
