use beamflow_kernels::xpcs::Multitau;
use rand::{Rng, SeedableRng};
use std::time::Instant;
fn main() {
    let side: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(512);
    let frames: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    let pixels = side * side;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<u16> = (0..pixels * 32)
        .map(|_| {
            if rng.random_bool(0.4) {
                rng.random_range(1..4)
            } else {
                0
            }
        })
        .collect();
    let t0 = Instant::now();
    let mut mt = Multitau::new(frames as u64, pixels);
    let t1 = Instant::now();
    let mut left = frames;
    while left > 0 {
        let n = left.min(32);
        mt.push(&data[..n * pixels]).unwrap();
        left -= n;
    }
    let t2 = Instant::now();
    let s = mt.finish().unwrap();
    let t3 = Instant::now();
    let pf = (pixels * frames) as f64;
    println!(
        "new {:?} push {:?} ({:.0} M/s) finish {:?} total {:.0} M/s {}",
        t1 - t0,
        t2 - t1,
        pf / (t2 - t1).as_secs_f64() / 1e6,
        t3 - t2,
        pf / (t3 - t0).as_secs_f64() / 1e6,
        s.g2[[0, 0]]
    );
}
