//! The suite's kernels at the standard sizes, on every backend they have
//! here. Inputs come from the synthetic generators and are made before the
//! timing; each case's `run` is one repeat of the kernel.
//!
//! What each case counts (the same for every backend of a kernel: the
//! algorithm's work and its compulsory memory traffic, not one
//! implementation's):
//!
//! | kernel | unit | FLOPs per unit | bytes per unit |
//! |---|---|---|---|
//! | xpcs.multitau | valid pixel-frame | 27 (8 level-0 and 4 per coarser level delays, ≈ 12 multiply-adds + 3 adds) | 2 (the u16 count; the correlator state stays in cache) |
//! | xpcs.twotime | pixel-frame | (N+1)·… : N(N+1)·P in all, the upper triangle of N×N per pixel | 4 per pixel-frame (f32 store) + 4·N² per q bin (the map) |
//! | ptycho.* | position (one per iteration) | two n×n 2-D FFTs, 5·n²·log₂(n²) each | 20·n² (amplitudes 4, object patch read 8 and written 8) |
//! | hedm.fit | peak | the LM fit's model + Jacobian evaluations (≈ 60 per pixel per peak) and normal equations (m·n(n+3) per iteration), counted while fitting; the time includes the region search, whose work is not counted | 4 per frame pixel (f32) |
//! | braggnn.infer | patch | 4.18 M (2.09 M multiply-adds, forward at psz 11) | 492 (121 f32 in, 2 out) |
//! | braggnn.train | sample | 12.5 M (forward + backward ≈ 3× forward) | 492 |
//! | engine.noop | task | – | – |

use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;

use super::suite::{Case, Size, Skipped};

/// The cases that can run here, and those that cannot with the reason.
pub fn all(size: Size, tmp: &Path) -> anyhow::Result<(Vec<Case>, Vec<Skipped>)> {
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    let threads = rayon::current_num_threads();
    beamflow_kernels::backend::set_torch_threads(threads);
    xpcs(size, &mut cases)?;
    ptycho(size, &mut cases)?;
    cases.push(hedm(size)?);
    braggnn(size, tmp, &mut cases, &mut skipped)?;
    cases.push(engine(size));
    Ok((cases, skipped))
}

fn e(s: String) -> anyhow::Error {
    anyhow::Error::msg(s)
}

/// libtorch's devices here, each with the backend name results carry
/// (`torch:cpu`, `torch:cuda:0`, …).
fn torch_devices() -> anyhow::Result<Vec<(beamflow_kernels::backend::TorchDevice, String)>> {
    beamflow_kernels::backend::torch_devices()
        .iter()
        .map(|d| {
            let (dev, _) = beamflow_kernels::backend::device(d).map_err(e)?;
            Ok((dev, beamflow_kernels::backend::device_name(dev)))
        })
        .collect()
}

// ---- XPCS -----------------------------------------------------------------

fn xpcs(size: Size, cases: &mut Vec<Case>) -> anyhow::Result<()> {
    use beamflow_kernels::synthetic::xpcs::{generate, SpeckleConfig};
    use beamflow_kernels::xpcs::twotime::{Collector, TwotimePlan};
    use beamflow_kernels::xpcs::Multitau;
    use std::sync::Arc;

    let (side, frames, tt_frames) =
        size.pick((256, 1000, 500), (512, 2000, 1000), (1024, 2000, 2000));
    let cfg = SpeckleConfig {
        size: side,
        frames,
        ..Default::default()
    };
    let data = generate(&cfg);
    let px = side * side;
    let pixels = data.scene.qmap().valid_pixels();
    let plan = TwotimePlan::new(data.scene.qmap(), None).map_err(e)?;
    let frames_u16 = Arc::new(data.frames);
    let pf = (pixels.len() * frames) as f64;
    let problem = format!("{side}² px × {frames} frames, {} valid", pixels.len());

    let (f, idx) = (frames_u16.clone(), pixels.clone());
    cases.push(Case {
        kernel: "xpcs.multitau".into(),
        backend: "cpu".into(),
        problem: problem.clone(),
        unit: "pixel-frames".into(),
        work: pf,
        flops: 27.0 * pf,
        bytes: 2.0 * pf,
        run: Box::new(move || {
            let mut mt = Multitau::masked(frames as u64, px, idx.clone());
            for chunk in f.chunks(128 * px) {
                mt.push(chunk).map_err(e)?;
            }
            mt.finish().map_err(e)?;
            Ok(None)
        }),
    });

    // The torch correlator takes the valid pixels, gathered, as f32.
    let p = pixels.len();
    let gathered: Arc<Vec<f32>> = Arc::new(
        frames_u16
            .par_chunks(px)
            .flat_map_iter(|fr| pixels.iter().map(move |&i| f32::from(fr[i])))
            .collect(),
    );
    for (dev, name) in torch_devices()? {
        let gathered = gathered.clone();
        cases.push(Case {
            kernel: "xpcs.multitau".into(),
            backend: name,
            problem: problem.clone(),
            unit: "pixel-frames".into(),
            work: pf,
            flops: 27.0 * pf,
            bytes: 2.0 * pf,
            run: Box::new(move || {
                let mut tm =
                    beamflow_kernels::xpcs::torch::TorchMultitau::new(frames as u64, p, dev);
                for c in gathered.chunks(128 * p) {
                    tm.push(c).map_err(e)?;
                }
                tm.finish().map_err(e)?;
                Ok(None)
            }),
        });
    }

    let bins = plan.bins.len() as f64;
    let (n, pp) = (tt_frames as f64, p as f64);
    let f = frames_u16;
    cases.push(Case {
        kernel: "xpcs.twotime".into(),
        backend: "cpu".into(),
        problem: format!(
            "{side}² px × {tt_frames} frames, {} q bins",
            plan.bins.len()
        ),
        unit: "pixel-frames".into(),
        work: pp * n,
        flops: n * (n + 1.0) * pp,
        bytes: 4.0 * pp * n + 4.0 * n * n * bins,
        run: Box::new(move || {
            let mut col = Collector::new(plan.bins.clone(), tt_frames);
            for t in 0..tt_frames {
                let fr = &f[t * px..(t + 1) * px];
                col.push(|i| f32::from(fr[i])).map_err(e)?;
            }
            let mut g0 = 0f64;
            col.correlate(|r| {
                g0 += f64::from(r.g2[0]);
                Ok(())
            })
            .map_err(e)?;
            anyhow::ensure!(g0.is_finite(), "two-time: g2 is not finite");
            Ok(None)
        }),
    });
    Ok(())
}

// ---- Ptychography ---------------------------------------------------------

fn ptycho(size: Size, cases: &mut Vec<Case>) -> anyhow::Result<()> {
    use beamflow_kernels::ptycho::lsqml::{Lsqml, LsqmlOptions};
    use beamflow_kernels::ptycho::pie::{Pie, PieOptions};
    use beamflow_kernels::ptycho::{Complex32, Field};
    use beamflow_kernels::synthetic::ptycho::{simulate, Scene};

    let preset = size.pick("small", "medium", "large");
    let sim = simulate(&Scene::preset(preset).map_err(e)?).map_err(e)?;
    let data = std::sync::Arc::new(sim.data().map_err(e)?);
    let n = data.n as f64;
    let positions = data.positions() as f64;
    let flops = positions * 2.0 * 5.0 * n * n * (n * n).log2();
    let bytes = positions * 20.0 * n * n;
    let problem = format!(
        "{preset}: {} positions, {}² px patterns, object {}×{}",
        data.positions(),
        data.n,
        data.shape.0,
        data.shape.1
    );
    let fresh = {
        let shape = data.shape;
        move || Field::filled(shape.0, shape.1, Complex32::new(1.0, 0.0))
    };
    let case =
        |kernel: &str, backend: &str, run: Box<dyn FnMut() -> anyhow::Result<Option<f64>>>| Case {
            kernel: kernel.into(),
            backend: backend.into(),
            problem: problem.clone(),
            unit: "positions".into(),
            work: positions,
            flops,
            bytes,
            run,
        };

    // rPIE's parameters as `reconstruct` sets them.
    let (d, mut obj, mut probe) = (data.clone(), fresh(), sim.probe.clone());
    let mut pie = Pie::new(&data, &probe, 0);
    let po = PieOptions {
        alpha: 0.1,
        beta: 0.1,
        object_step: 1.0,
        probe_step: 1.0,
    };
    cases.push(case(
        "ptycho.rpie",
        "cpu",
        Box::new(move || {
            let loss = pie.epoch(&d, &mut obj, &mut probe, &po, false, true, None);
            anyhow::ensure!(loss.is_finite(), "rPIE: loss is not finite");
            Ok(None)
        }),
    ));
    let (d, mut obj, mut probe) = (data.clone(), fresh(), sim.probe.clone());
    let mut lsq = Lsqml::new(&data, &probe, 0);
    cases.push(case(
        "ptycho.lsqml",
        "cpu",
        Box::new(move || {
            let loss = lsq.epoch(
                &d,
                &mut obj,
                &mut probe,
                &LsqmlOptions { batch: 100 },
                false,
                true,
                None,
            );
            anyhow::ensure!(loss.is_finite(), "LSQ-ML: loss is not finite");
            Ok(None)
        }),
    ));
    for (dev, name) in torch_devices()? {
        let (d, mut obj, mut probe) = (data.clone(), fresh(), sim.probe.clone());
        let mut tl = beamflow_kernels::ptycho::torch::TorchLsqml::new(&data, 0, dev);
        cases.push(case(
            "ptycho.lsqml",
            &name,
            Box::new(move || {
                let loss = tl
                    .epoch(
                        &d,
                        &mut obj,
                        &mut probe,
                        &LsqmlOptions { batch: 100 },
                        false,
                        true,
                    )
                    .map_err(e)?;
                anyhow::ensure!(loss.is_finite(), "LSQ-ML (torch): loss is not finite");
                Ok(None)
            }),
        ));
    }
    Ok(())
}

// ---- HEDM -----------------------------------------------------------------

fn hedm(size: Size) -> anyhow::Result<Case> {
    use beamflow_kernels::hedm::config::Config;
    use beamflow_kernels::hedm::regions::Scratch;
    use beamflow_kernels::hedm::{fit_region, Workspace};
    use beamflow_kernels::synthetic::hedm::Scene;

    let (side, frames, peaks) = size.pick((1024, 2, 150), (2048, 4, 300), (2048, 16, 300));
    let scene = Scene {
        rows: side,
        cols: side,
        peaks_per_frame: peaks,
        ..Scene::default()
    };
    let stack: Vec<Vec<f32>> = (0..frames)
        .map(|i| scene.frame(i as u32).0.into_iter().map(f32::from).collect())
        .collect();
    let cfg = Config {
        dark_value: Some(scene.background),
        geometry: "cartesian".into(),
        plot: false,
        ..Config::default()
    };
    let o = cfg.options(side, side).map_err(e)?;
    // The work is counted on a first pass: peaks fitted and the FLOPs of
    // the fits (the same every repeat: the fit is deterministic).
    let fit_all = move |count: bool| -> (usize, f64) {
        let mut scratch = Scratch::default();
        let (mut peaks, mut flops) = (0usize, 0f64);
        for (i, raw) in stack.iter().enumerate() {
            let (regions, _) = o.regions(raw, side, side, &mut scratch);
            let omega = o.omega_start + o.omega_step * i as f64;
            let per: Vec<(usize, f64)> = regions
                .par_iter()
                .map_init(Workspace::default, |ws, r| {
                    let (p, f) = fit_region(r, &o.fit, omega, i as u32, ws);
                    let (m, np) = (r.z.len() as f64, r.maxima.len() as f64);
                    let n = 1.0 + 8.0 * np;
                    let fl = if count {
                        f.evaluations as f64 * m * np * 60.0
                            + (f.iterations as f64 + 1.0) * m * n * (n + 3.0)
                    } else {
                        0.0
                    };
                    (p.len(), fl)
                })
                .collect();
            peaks += per.iter().map(|x| x.0).sum::<usize>();
            flops += per.iter().map(|x| x.1).sum::<f64>();
        }
        (peaks, flops)
    };
    let (found, flops) = fit_all(true);
    anyhow::ensure!(found > 0, "HEDM: no peak fitted on the synthetic frames");
    Ok(Case {
        kernel: "hedm.fit".into(),
        backend: "cpu".into(),
        problem: format!("{side}² px × {frames} frames, {peaks} peaks a frame (search + fit)"),
        unit: "peaks".into(),
        work: found as f64,
        flops,
        bytes: 4.0 * (side * side * frames) as f64,
        run: Box::new(move || {
            let (p, _) = fit_all(false);
            anyhow::ensure!(p == found, "HEDM: {p} peaks this time, {found} before");
            Ok(None)
        }),
    })
}

// ---- BraggNN --------------------------------------------------------------

/// Forward FLOPs of one patch at the default shape (psz 11): conv 46,656 +
/// θ/φ/g 497,664 + θᵀφ 209,952 + A·g 209,952 + out 165,888 + conv 903,168 +
/// conv 57,600 + dense 3,372 multiply-adds.
const BRAGGNN_FORWARD_FLOPS: f64 = 2.0 * 2_094_252.0;
const BRAGGNN_BYTES: f64 = 4.0 * (121.0 + 2.0);

fn braggnn(
    size: Size,
    tmp: &Path,
    cases: &mut Vec<Case>,
    skipped: &mut Vec<Skipped>,
) -> anyhow::Result<()> {
    use beamflow_kernels::braggnn::{self, data::crops, onnx, Predictor, Shape, TrainOptions};
    use beamflow_kernels::synthetic::braggnn::patches;

    let (train_n, infer_n) = size.pick((4_000, 8_192), (20_000, 32_768), (100_000, 131_072));
    let threads = rayon::current_num_threads();
    let set = std::sync::Arc::new(patches(train_n, 11, 1, 3));
    let trained_n = (train_n as f64 * 0.8).floor();
    for (_, name) in torch_devices()? {
        let device = name.trim_start_matches("torch:").to_string();
        let s = set.clone();
        cases.push(Case {
            kernel: "braggnn.train".into(),
            backend: name,
            problem: format!("{train_n} patches of 11², batch 512, one epoch a repeat"),
            unit: "samples".into(),
            work: trained_n,
            flops: 3.0 * BRAGGNN_FORWARD_FLOPS * trained_n,
            bytes: BRAGGNN_BYTES * trained_n,
            run: Box::new(move || {
                let o = TrainOptions {
                    epochs: 1,
                    patience: 1,
                    device: device.clone(),
                    threads,
                    ..TrainOptions::default()
                };
                let tr =
                    braggnn::train(&s, Shape::default(), &o, None, &mut |_| true).map_err(e)?;
                // The epoch's own training time: validation is not training work.
                let sps = tr.median_samples_per_s();
                anyhow::ensure!(sps > 0.0, "BraggNN training reported no speed");
                Ok(Some(trained_n / sps))
            }),
        });
    }

    // A model to run: one short epoch, checkpointed and exported.
    let weights = tmp.join("braggnn.safetensors");
    let model = tmp.join("braggnn.onnx");
    let small = patches(1_200, 11, 1, 1);
    let o = TrainOptions {
        epochs: 1,
        batch: 64,
        device: "cpu".into(),
        threads,
        ..TrainOptions::default()
    };
    let tr =
        braggnn::train(&small, Shape::default(), &o, Some(&weights), &mut |_| true).map_err(e)?;
    onnx::export(&tr.vs, &tr.net.shape, None, &model).map_err(e)?;
    let test = patches(infer_n, 11, 0, 2);
    let (x, _) = crops(&test, 0..test.len());
    let x = std::sync::Arc::new(x);
    let mut runs: Vec<(String, &Path)> = Vec::new();
    for (_, name) in torch_devices()? {
        let device = name.trim_start_matches("torch:").to_string();
        runs.push((device.clone(), &weights));
        runs.push((device, &model));
    }
    for (device, file) in runs {
        let mut net = match Predictor::open(file, &device, threads) {
            // A device the runtime could not use falls back to the CPU:
            // that is the CPU case again, not this device's.
            Ok(n) if n.device_note.is_some() => continue,
            Ok(n) => n,
            Err(why) if why.starts_with("ONNX Runtime") => {
                skipped.push(Skipped {
                    kernel: "braggnn.infer".into(),
                    backend: format!("ort:{device}"),
                    why,
                });
                continue;
            }
            Err(why) => return Err(e(why)).with_context(|| file.display().to_string()),
        };
        let backend = net.device.clone();
        let x = x.clone();
        cases.push(Case {
            kernel: "braggnn.infer".into(),
            backend,
            problem: format!("{infer_n} patches of 11², batch 512"),
            unit: "patches".into(),
            work: infer_n as f64,
            flops: BRAGGNN_FORWARD_FLOPS * infer_n as f64,
            bytes: BRAGGNN_BYTES * infer_n as f64,
            run: Box::new(move || {
                let out = net.predict(&x, infer_n, 512).map_err(e)?;
                anyhow::ensure!(
                    out.len() == infer_n,
                    "BraggNN: {} of {infer_n} centres",
                    out.len()
                );
                Ok(None)
            }),
        });
    }
    Ok(())
}

// ---- The engine -----------------------------------------------------------

/// One-step `noop` runs through a real server and pilot on loopback: what
/// the engine itself costs per task.
fn engine(size: Size) -> Case {
    let tasks = size.pick(2_000, 10_000, 50_000);
    Case {
        kernel: "engine.noop".into(),
        backend: "engine".into(),
        problem: format!("{tasks} one-step runs at once, one pilot"),
        unit: "tasks".into(),
        work: tasks as f64,
        flops: 0.0,
        bytes: 0.0,
        run: Box::new(move || {
            let out = tokio::runtime::Handle::current().block_on(super::engine::engine(
                super::engine::EngineBench {
                    noop_tasks: tasks,
                    // The engine bench's other phases, as small as they go.
                    shell_tasks: 1,
                    latency_runs: 1,
                    pilots: 1,
                    prefetch: None,
                    durability: crate::store::Durability::Normal,
                },
            ))?;
            let rate = out["noop_tasks_per_s"]
                .as_f64()
                .context("engine bench: no noop_tasks_per_s")?;
            Ok(Some(tasks as f64 / rate))
        }),
    }
}
