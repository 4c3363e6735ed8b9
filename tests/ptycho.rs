//! Ptychography kernel against simulated data with known object and probe:
//! the reference's `medium` recipe (Fermat scan, 256 positions, 128² probe,
//! 70 % overlap, 1e6 photons per pattern, Poisson noise).

use std::sync::OnceLock;

use beamflow_kernels::ptycho::config::Config;
use beamflow_kernels::ptycho::{reconstruct, Complex32, Engine, Field, Options, Truth};
use beamflow_kernels::synthetic::ptycho::{simulate, write_dataset, Scene, Simulated};

fn medium() -> &'static Simulated {
    static SIM: OnceLock<Simulated> = OnceLock::new();
    SIM.get_or_init(|| simulate(&Scene::preset("medium").unwrap()).unwrap())
}

/// Object NRMSE after `iterations` of `o` from a flat object.
fn error_after(sim: &Simulated, o: Options, probe_known: bool) -> f64 {
    let data = sim.data().unwrap();
    let obj = Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0));
    let probe = if probe_known {
        sim.probe.clone()
    } else {
        sim.init_probe.clone()
    };
    let truth = Truth {
        object: &sim.object,
        mask: &sim.mask,
    };
    let out = reconstruct(&data, obj, probe, &o, Some(truth), &mut |_, _, _| true).unwrap();
    assert_eq!(out.history.loss.len(), o.iterations);
    // The loss falls.
    assert!(
        out.history.loss.last() < out.history.loss.first(),
        "{:?}",
        out.history.loss
    );
    out.history.error.last().unwrap().nrmse
}

#[test]
fn rpie_reaches_the_reference_error_with_a_known_probe() {
    let e = error_after(medium(), Options::default(), true);
    eprintln!("rPIE, 100 epochs: NRMSE {e:.4}");
    assert!(e <= 0.06, "{e}");
}

#[test]
fn lsqml_converges_with_a_known_probe() {
    let o = Options {
        engine: Engine::Lsqml,
        ..Options::default()
    };
    let e = error_after(medium(), o, true);
    eprintln!("LSQ-ML, 100 epochs: NRMSE {e:.4}");
    assert!(e <= 0.10, "{e}");
}

#[test]
fn relaxed_dm_converges_where_the_exact_projection_drifts() {
    let o = Options {
        engine: Engine::Dm,
        ..Options::default()
    };
    let relaxed = error_after(medium(), o.clone(), true);
    let exact = error_after(medium(), Options { dm_relax: 0.0, ..o }, true);
    eprintln!("DM, 100 iterations: NRMSE {relaxed:.4} relaxed, {exact:.4} exact");
    assert!(relaxed <= 0.08, "{relaxed}");
    assert!(exact > 2.0 * relaxed, "{exact} vs {relaxed}");
}

#[test]
fn joint_probe_retrieval_converges_from_the_reference_start() {
    let o = Options {
        update_probe: true,
        ..Options::default()
    };
    let e = error_after(medium(), o, false);
    eprintln!("rPIE with probe retrieval, 100 epochs: NRMSE {e:.4}");
    assert!(e <= 0.06, "{e}");
}

/// Position correction on `medium` whose positions were given with errors:
/// every patch corner off by an integer in −2..=2 px per axis (RMS 1.4 px
/// per axis, seeded). The refined positions must come back within 0.5 px
/// RMS of the truth (after the common shift, which no reconstruction can
/// see, is removed) and the object must beat the uncorrected one.
#[test]
fn position_correction_recovers_perturbed_positions() {
    use rand::{Rng, SeedableRng};
    let sim = medium();
    let truth = sim.data().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let limit = |len: usize| (len - truth.n) as f64;
    let given: Vec<[f64; 2]> = truth
        .corners
        .iter()
        .map(|&(r, c)| {
            let d = [rng.random_range(-2i32..=2), rng.random_range(-2i32..=2)];
            [
                (r as f64 + f64::from(d[0])).clamp(0.0, limit(truth.shape.0)),
                (c as f64 + f64::from(d[1])).clamp(0.0, limit(truth.shape.1)),
            ]
        })
        .collect();
    let data = beamflow_kernels::ptycho::Data::from_corners(
        &sim.intensities,
        truth.n,
        &given,
        truth.shape,
    )
    .unwrap();
    let rms_error = |p: &[[f64; 2]]| {
        let err: Vec<[f64; 2]> = p
            .iter()
            .zip(&truth.corners)
            .map(|(a, b)| [a[0] - b.0 as f64, a[1] - b.1 as f64])
            .collect();
        let len = err.len() as f64;
        let mean = [0, 1].map(|k| err.iter().map(|e| e[k]).sum::<f64>() / len);
        (err.iter()
            .map(|e| (e[0] - mean[0]).powi(2) + (e[1] - mean[1]).powi(2))
            .sum::<f64>()
            / len)
            .sqrt()
    };
    let before = rms_error(&given);
    let run = |engine: Engine, correct: bool| {
        let o = Options {
            engine,
            correct_positions: correct,
            ..Options::default()
        };
        let obj = Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0));
        let t = Truth {
            object: &sim.object,
            mask: &sim.mask,
        };
        let out = reconstruct(
            &data,
            obj,
            sim.probe.clone(),
            &o,
            Some(t),
            &mut |_, _, _| true,
        )
        .unwrap();
        (out.history.error.last().unwrap().nrmse, out.positions)
    };
    for engine in [Engine::Rpie, Engine::Lsqml] {
        let (e_fixed, none) = run(engine, false);
        assert!(none.is_none());
        let (e_corrected, refined) = run(engine, true);
        let refined = refined.unwrap();
        let after = rms_error(&refined);
        let on_pixel = refined
            .iter()
            .zip(&truth.corners)
            .filter(|(a, b)| a[0].round() == b.0 as f64 && a[1].round() == b.1 as f64)
            .count();
        eprintln!(
            "{}: positions RMS error {before:.2} → {after:.2} px, {on_pixel}/{} on the true pixel; NRMSE {e_fixed:.4} uncorrected, {e_corrected:.4} corrected",
            engine.name(),
            refined.len()
        );
        assert!(before > 1.5, "{before}");
        match engine {
            // rPIE: 0.34 px, 241/256, NRMSE 0.059 → 0.031 (the error with
            // exact positions) when this was written.
            Engine::Rpie => {
                assert!(after < 0.45 && on_pixel >= 220, "{after} {on_pixel}");
                assert!(e_corrected < 0.6 * e_fixed, "{e_corrected} vs {e_fixed}");
            }
            // LSQ-ML converges more slowly (0.085 after 100 epochs with
            // exact positions), and so do its positions.
            _ => {
                assert!(after < 0.4 * before, "{after}");
                assert!(e_corrected < e_fixed, "{e_corrected} vs {e_fixed}");
            }
        }
    }
}

#[test]
fn epie_is_rpie_with_alpha_one() {
    let sim = simulate(&Scene::preset("small").unwrap()).unwrap();
    let run = |o: Options| {
        let data = sim.data().unwrap();
        let obj = Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0));
        reconstruct(&data, obj, sim.probe.clone(), &o, None, &mut |_, _, _| true)
            .unwrap()
            .object
    };
    let base = Options {
        iterations: 3,
        ..Options::default()
    };
    let a = run(Options {
        engine: Engine::Epie,
        ..base.clone()
    });
    let b = run(Options {
        alpha: 1.0,
        beta: 1.0,
        ..base
    });
    assert_eq!(a, b);
}

#[test]
fn ptychodus_pair_and_dataset_file_give_the_same_reconstruction() {
    let t = tempfile::tempdir().unwrap();
    let mut scene = Scene::preset("tiny").unwrap();
    scene.seed = 3;
    let f = write_dataset(&scene, t.path(), "tiny", true).unwrap();
    let run = |data, meta: Option<std::path::PathBuf>, out: &str| {
        let cfg = Config {
            data,
            meta,
            out: t.path().join(out),
            options: Options {
                iterations: 4,
                ..Options::default()
            },
            ..Config::default()
        };
        cfg.run(&mut |_, _, _| true).unwrap()
    };
    let a = run(f.data.clone(), None, "a");
    let b = run(f.dp.clone().unwrap(), f.meta.clone(), "b");
    assert_eq!(a.object_shape, b.object_shape);
    assert_eq!(a.final_loss, b.final_loss);
    // The dataset file carries the truth, the pair does not.
    assert!(a.final_error.is_some() && b.final_error.is_none());
    // The result file.
    let h = hdf5::File::open(&a.result).unwrap();
    let obj = h.dataset("object").unwrap();
    assert_eq!(obj.shape(), vec![a.object_shape.0, a.object_shape.1]);
    let probe = h.dataset("probe").unwrap();
    assert_eq!(probe.shape(), vec![1, 64, 64]);
    let loss = h
        .dataset("history/loss")
        .unwrap()
        .read_raw::<f64>()
        .unwrap();
    assert_eq!(loss.len(), 4);
    assert_eq!(*loss.last().unwrap(), a.final_loss);
    let nrmse = h
        .dataset("history/nrmse")
        .unwrap()
        .read_raw::<f64>()
        .unwrap();
    assert_eq!(nrmse[3], a.final_error.unwrap().nrmse);
    for p in [&a.amplitude_png, &a.phase_png] {
        let bytes = std::fs::read(p.as_ref().unwrap()).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let cfg = |data: std::path::PathBuf| Config {
        data,
        out: t.path().join("out"),
        ..Config::default()
    };
    // Not HDF5.
    let p = t.path().join("notes.h5");
    std::fs::write(&p, "hello").unwrap();
    let e = cfg(p.clone()).run(&mut |_, _, _| true).unwrap_err();
    assert!(e.contains("notes.h5") && e.contains("HDF5"), "{e}");
    // A NaN in a pattern.
    let scene = Scene::preset("tiny").unwrap();
    let sim = simulate(&scene).unwrap();
    let d = sim.data().unwrap();
    let mut bad = sim.intensities.clone();
    bad[64 * 64 * 2 + 65] = f32::NAN;
    let p = t.path().join("nan.h5");
    beamflow_kernels::ptycho::io::write_dataset(
        &p,
        &bad,
        64,
        &sim.centres,
        &d.corners,
        None,
        Some(&sim.init_probe),
        &[],
    )
    .unwrap();
    let e = cfg(p).run(&mut |_, _, _| true).unwrap_err();
    assert!(
        e.contains("nan.h5") && e.contains("pattern 2 pixel (1, 1)"),
        "{e}"
    );
    // Position correction with an engine that has none.
    let e = refusal(
        &sim,
        &d,
        Options {
            engine: Engine::Dm,
            correct_positions: true,
            ..Options::default()
        },
    );
    assert!(e.contains("position correction") && e.contains("dm"), "{e}");
    // A Ptychodus diffraction file without its product file.
    let f = write_dataset(&scene, t.path(), "pair", true).unwrap();
    let e = cfg(f.dp.unwrap()).run(&mut |_, _, _| true).unwrap_err();
    assert!(e.contains("--meta"), "{e}");
    // No initial probe in the file and none named.
    let p = t.path().join("noprobe.h5");
    beamflow_kernels::ptycho::io::write_dataset(
        &p,
        &sim.intensities,
        64,
        &sim.centres,
        &d.corners,
        None,
        None,
        &[],
    )
    .unwrap();
    let e = cfg(p).run(&mut |_, _, _| true).unwrap_err();
    assert!(
        e.contains("noprobe.h5") && e.contains("initial probe"),
        "{e}"
    );
}

/// The torch backend (here on libtorch's CPU device) runs the same LSQ-ML:
/// the same batches, directions and step sizes. Not to the bit: where the
/// model predicts (almost) no intensity but the data have counts, the
/// modulus constraint scales FFT rounding noise up to the measured
/// amplitude, so two FFT libraries part at the 1e-4 level in the first
/// update; the runs then stay within 2e-3 of each other in loss and object
/// error (the objects themselves within 2 %, mostly where the data say little).
#[cfg(feature = "torch")]
#[test]
fn torch_lsqml_agrees_with_cpu_lsqml() {
    let mut scene = Scene::preset("tiny").unwrap();
    scene.seed = 5;
    let sim = simulate(&scene).unwrap();
    let data = sim.data().unwrap();
    let run = |backend: &str| {
        let o = Options {
            engine: Engine::Lsqml,
            iterations: 6,
            update_probe: true,
            probe_start: 2,
            batch: 10,
            backend: backend.into(),
            ..Options::default()
        };
        let obj = Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0));
        let truth = Truth {
            object: &sim.object,
            mask: &sim.mask,
        };
        reconstruct(
            &data,
            obj,
            sim.init_probe.clone(),
            &o,
            Some(truth),
            &mut |_, _, _| true,
        )
        .unwrap()
    };
    let (cpu, torch) = (run("cpu"), run("torch:cpu"));
    assert_eq!(cpu.device, "cpu");
    assert_eq!(torch.device, "torch:cpu");
    assert!(torch.device_note.is_none());
    // float32 tensors against the f64 native engine: the loss drifts apart
    // by up to ~2e-3 relative over the iterations, depending on the CPU's
    // BLAS kernels (2.1e-3 on one machine, below 2e-3 on another).
    for (a, b) in cpu.history.loss.iter().zip(&torch.history.loss) {
        assert!((a - b).abs() <= 5e-3 * a.abs(), "loss {a} vs {b}");
    }
    for (a, b) in cpu.history.error.iter().zip(&torch.history.error) {
        assert!((a.nrmse - b.nrmse).abs() <= 2e-3, "NRMSE {a:?} vs {b:?}");
    }
    let object = relative_difference(&cpu.object.data, &torch.object.data);
    assert!(object < 2e-2, "object differs by {object}");
    let probe = relative_difference(&cpu.probe.data, &torch.probe.data);
    assert!(probe < 2e-2, "probe differs by {probe}");
    // Other engines are refused on torch, by name.
    let e = refusal(
        &sim,
        &data,
        Options {
            engine: Engine::Rpie,
            backend: "torch".into(),
            ..Options::default()
        },
    );
    assert!(e.contains("rpie") && e.contains("cpu backend"), "{e}");
}

/// The error `reconstruct` refuses `o` with, from a flat object.
fn refusal(sim: &Simulated, data: &beamflow_kernels::ptycho::Data, o: Options) -> String {
    let obj = Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0));
    reconstruct(data, obj, sim.probe.clone(), &o, None, &mut |_, _, _| true)
        .err()
        .expect("refused")
}

/// `‖a − b‖ / ‖a‖` over complex values.
#[cfg(feature = "torch")]
fn relative_difference(a: &[Complex32], b: &[Complex32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).norm_sqr()).sum();
    let norm: f32 = a.iter().map(|x| x.norm_sqr()).sum();
    (diff / norm).sqrt()
}
