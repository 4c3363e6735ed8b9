//! `beamflow bench ptycho`: each engine's time per iteration and its error
//! against the known object, at each thread count.

use beamflow_kernels::ptycho::{reconstruct, Complex32, Engine, Field, Options, Truth};
use beamflow_kernels::synthetic::ptycho::{simulate, Scene};
use serde_json::{json, Value};

/// `beamflow bench ptycho`.
#[derive(clap::Args)]
pub struct BenchPtycho {
    /// Dataset preset (tiny, small, medium, large).
    #[arg(long, default_value = "medium")]
    pub dataset: String,
    /// Iterations per engine.
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Engines to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "rpie,epie,dm,lsqml")]
    pub engines: Vec<Engine>,
    /// Thread counts to run each engine with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
}

/// Seconds per iteration and positions per second of each engine, with each
/// thread count, on a simulated dataset with a known probe; and the object
/// error reached.
impl BenchPtycho {
    pub fn run(self) -> anyhow::Result<Value> {
        bench(self)
    }
}

fn bench(b: BenchPtycho) -> anyhow::Result<Value> {
    let scene = Scene::preset(&b.dataset).map_err(|e| anyhow::anyhow!(e))?;
    let sim = simulate(&scene).map_err(|e| anyhow::anyhow!(e))?;
    let data = sim.data().map_err(|e| anyhow::anyhow!(e))?;
    let mut runs = Vec::new();
    for &engine in &b.engines {
        for &threads in &b.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let o = Options {
                engine,
                iterations: b.iterations,
                ..Options::default()
            };
            let obj = Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0));
            let out = pool
                .install(|| {
                    reconstruct(
                        &data,
                        obj,
                        sim.probe.clone(),
                        &o,
                        Some(Truth {
                            object: &sim.object,
                            mask: &sim.mask,
                        }),
                        &mut |_, _, _| true,
                    )
                })
                .map_err(|e| anyhow::anyhow!(e))?;
            let mut secs = out.history.seconds.clone();
            let (lo, hi) = secs
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(a, c), &s| (a.min(s), c.max(s)));
            let med = crate::util::median(&mut secs);
            let e = out.history.error.last().copied().unwrap_or_default();
            runs.push(json!({
                "engine": engine.name(),
                "threads": threads,
                "s_per_iteration": med,
                "s_per_iteration_min": lo,
                "s_per_iteration_max": hi,
                "positions_per_s": data.positions() as f64 / med,
                "final_loss": out.history.loss.last(),
                "nrmse": e.nrmse,
                "phase_rms": e.phase_rms,
            }));
        }
    }
    Ok(json!({
        "dataset": b.dataset,
        "positions": data.positions(),
        "n": data.n,
        "object_shape": [data.shape.0, data.shape.1],
        "iterations": b.iterations,
        "probe": "known",
        "runs": runs,
    }))
}
