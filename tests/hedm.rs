//! The HEDM peak fit against the reference's golden regions: starting values
//! and bounds, the model and Jacobian at the start, and the converged fit.

use std::path::Path;

use beamflow_kernels::hedm::{init, lm, model, Geometry, LmOptions, Workspace};
use serde_json::Value;

fn golden() -> Vec<Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/hedm/pv_regions.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["regions"].as_array().unwrap().clone()
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

struct Case {
    u: Vec<f64>,
    v: Vec<f64>,
    z: Vec<f64>,
    maxima: Vec<usize>,
    thresh: f64,
    r: Value,
}

fn cases() -> Vec<Case> {
    golden()
        .into_iter()
        .map(|r| {
            let u = nums(&r["rows"]);
            let v = nums(&r["cols"]);
            let maxima = nums(&r["maxima_rows"])
                .iter()
                .zip(nums(&r["maxima_cols"]))
                .map(|(&mr, mc)| (0..u.len()).find(|&i| u[i] == mr && v[i] == mc).unwrap())
                .collect();
            Case {
                z: nums(&r["z"]),
                thresh: r["thresh"].as_f64().unwrap(),
                u,
                v,
                maxima,
                r,
            }
        })
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

#[test]
fn starting_values_and_bounds_are_midas_s() {
    for (k, c) in cases().iter().enumerate() {
        let s = init::start(Geometry::Cartesian, &c.u, &c.v, &c.z, &c.maxima, c.thresh);
        for (name, ours, theirs) in [("x0", &s.x, "x0"), ("lo", &s.lo, "lo"), ("hi", &s.hi, "hi")] {
            let want = nums(&c.r[theirs]);
            assert_eq!(ours.len(), want.len());
            for i in 0..want.len() {
                assert!(
                    close(ours[i], want[i], 1e-9),
                    "region {k} {name}[{i}]: {} vs {}",
                    ours[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn model_and_jacobian_at_the_start_match() {
    for (k, c) in cases().iter().enumerate() {
        let x0 = nums(&c.r["x0"]);
        let m = c.z.len();
        let mut f = vec![0.0; m];
        let mut jac = vec![0.0; m * x0.len()];
        model::eval_jac(&x0, &c.u, &c.v, &mut f, &mut jac);
        for (i, want) in nums(&c.r["model_x0"]).iter().enumerate() {
            assert!(
                close(f[i], *want, 1e-9),
                "region {k} model[{i}]: {} vs {want}",
                f[i]
            );
        }
        for (i, row) in c.r["jac_x0_first3rows"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            for (j, want) in nums(row).iter().enumerate() {
                let ours = jac[j * m + i];
                assert!(
                    (ours - want).abs() <= 1e-9 * want.abs().max(1e-9),
                    "region {k} J[{i},{j}]: {ours} vs {want}"
                );
            }
        }
    }
}

/// Centres (row, col) of every peak of `x`.
fn centres(x: &[f64]) -> Vec<(f64, f64)> {
    (0..(x.len() - 1) / 8)
        .map(|j| (x[2 + 8 * j], x[3 + 8 * j]))
        .collect()
}

#[test]
fn converged_fits_match_the_golden_solutions() {
    let mut ws = Workspace::default();
    // The reference's tolerances; region 2 has a width crawling towards its
    // bound, which takes SciPy ~35,000 evaluations too.
    let opts = LmOptions {
        max_iter: 50_000,
        tol: 1e-10,
    };
    for (k, c) in cases().iter().enumerate() {
        let (lo, hi) = (nums(&c.r["lo"]), nums(&c.r["hi"]));
        let want = nums(&c.r["x_fit_lm"]);
        let sse = c.r["sse_fit"].as_f64().unwrap();
        // The golden solution is a minimum of our objective too: started
        // there, the solver stays (centres within 1e-4 px, SSE no higher).
        let mut x = want.clone();
        let f = lm::fit(&mut x, &lo, &hi, &c.u, &c.v, &c.z, &opts, &mut ws);
        assert!(
            f.sse <= sse * (1.0 + 1e-7),
            "region {k}: {} vs {sse}",
            f.sse
        );
        for (a, b) in centres(&x).iter().zip(centres(&want)) {
            assert!(
                (a.0 - b.0).abs() <= 1e-4 && (a.1 - b.1).abs() <= 1e-4,
                "region {k}: from the golden solution, centre moved {a:?} vs {b:?}"
            );
        }
        // From MIDAS's starting values: the same minimum, also for the
        // two-peak regions, whose joint fits have several (the solver follows
        // the path of the reference's MINPACK fits).
        let mut x = nums(&c.r["x0"]);
        let f = lm::fit(&mut x, &lo, &hi, &c.u, &c.v, &c.z, &opts, &mut ws);
        // (Region 2's golden fit stopped short of the bound: SSE 1.3e-5
        // higher than where its crawl ends.)
        assert!(
            f.sse <= sse * (1.0 + 1e-7) && f.sse >= sse * (1.0 - 1e-4),
            "region {k}: SSE {} vs {sse} ({f:?})",
            f.sse
        );
        for (a, b) in centres(&x).iter().zip(centres(&want)) {
            assert!(
                (a.0 - b.0).abs() <= 1e-4 && (a.1 - b.1).abs() <= 1e-4,
                "region {k}: centre {a:?} vs {b:?} ({f:?})"
            );
        }
    }
}

/// Search and fit on synthetic frames with known peaks (the reference's
/// distribution and settings: background 10 taken as dark, threshold 30).
fn accuracy(polar: bool) -> (f64, f64, usize) {
    use beamflow_kernels::hedm::pipeline::{self, Dark, Options};
    use beamflow_kernels::hedm::{FindOptions, FitOptions, Threshold};
    use beamflow_kernels::synthetic::hedm::Scene;
    let scene = Scene {
        polar,
        ..Scene::default()
    };
    let o = Options {
        find: FindOptions {
            threshold: Threshold::Global(30.0),
            ..FindOptions::default()
        },
        fit: FitOptions {
            geometry: scene.geometry(),
            centre: (1023.5, 1023.5),
            lm: LmOptions::default(),
        },
        dark: Dark::Value(scene.background as f32),
        flood: None,
        mask: None,
        omega_start: 0.0,
        omega_step: 0.25,
        frames: None,
    };
    let (mut fitted, mut truth, mut single) = (Vec::new(), Vec::new(), Vec::new());
    let mut scratch = beamflow_kernels::hedm::regions::Scratch::default();
    for f in 0..2u32 {
        let (counts, peaks) = scene.frame(f);
        let raw: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        let (found, _) =
            pipeline::frame(&raw, scene.rows, scene.cols, f as usize, &o, &mut scratch);
        for p in &found {
            fitted.push((f, p.y_cen, p.z_cen));
            if p.n_peaks == 1 {
                single.push((f, p.y_cen, p.z_cen));
            }
        }
        truth.extend(peaks.iter().map(|p| (f, p.row, p.col)));
    }
    let (recall, _) = pipeline::match_truth(&fitted, &truth, 2.0);
    // Centre error of true peaks found by single-peak regions.
    let (_, errs) = pipeline::match_truth(&single, &truth, 2.0);
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    (recall, mean, errs.len())
}

#[test]
fn finds_and_fits_synthetic_cartesian_peaks() {
    let (recall, mean, n) = accuracy(false);
    eprintln!("cartesian: recall {recall:.4}, single-peak centre error {mean:.4} px over {n}");
    assert!(recall >= 0.99, "recall {recall}");
    assert!(n >= 450, "only {n} single-peak matches");
    assert!(mean <= 0.06, "mean centre error {mean} px");
}

#[test]
fn finds_and_fits_synthetic_polar_peaks() {
    let (recall, mean, n) = accuracy(true);
    eprintln!("polar: recall {recall:.4}, single-peak centre error {mean:.4} px over {n}");
    assert!(recall >= 0.99, "recall {recall}");
    assert!(mean <= 0.06, "mean centre error {mean} px");
}

#[test]
fn bad_inputs_are_clear_errors() {
    use beamflow_kernels::hedm::config::Config;
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("frames.h5");
    std::fs::write(&junk, b"not an HDF5 file").unwrap();
    let cfg = Config {
        frames: junk.clone(),
        out: t.path().join("out"),
        ..Config::default()
    };
    let e = cfg.run(&mut |_, _| {}).unwrap_err();
    assert!(
        e.contains(&junk.display().to_string()) && e.contains("cannot open as HDF5"),
        "{e}"
    );

    // A stack whose dataset is not where it is said to be, and one with a bad dark.
    let good = t.path().join("stack.h5");
    beamflow_kernels::hedm::io::write_stack(&good, &[vec![0u16; 64 * 64]], 64, 64).unwrap();
    let e = Config {
        frames: good.clone(),
        dataset: Some("/entry/missing".into()),
        out: t.path().join("out"),
        ..Config::default()
    }
    .run(&mut |_, _| {})
    .unwrap_err();
    assert!(e.contains("/entry/missing"), "{e}");
    let e = Config {
        frames: good.clone(),
        dark: Some(junk.clone()),
        out: t.path().join("out"),
        ..Config::default()
    }
    .run(&mut |_, _| {})
    .unwrap_err();
    assert!(e.starts_with("dark: ") && e.contains("frames.h5"), "{e}");
    let e = Config {
        frames: good,
        geometry: "spherical".into(),
        out: t.path().join("out"),
        ..Config::default()
    }
    .run(&mut |_, _| {})
    .unwrap_err();
    assert!(e.contains("geometry"), "{e}");
}

#[test]
fn peak_tables_round_trip_through_hdf5_and_csv() {
    use beamflow_kernels::hedm::config::Config;
    use beamflow_kernels::hedm::io::read_peaks_h5;
    use beamflow_kernels::synthetic::hedm::{write_dataset, Scene};
    let t = tempfile::tempdir().unwrap();
    let scene = Scene {
        rows: 256,
        cols: 256,
        peaks_per_frame: 12,
        ..Scene::default()
    };
    let files = write_dataset(&scene, 2, t.path(), "s", &mut |_| {}).unwrap();
    let cfg = Config {
        frames: files.frames,
        out: t.path().join("out"),
        dark_value: Some(10.0),
        omega_start: 5.0,
        omega_step: 0.25,
        ..Config::default()
    };
    let r = cfg.run(&mut |_, _| {}).unwrap();
    assert_eq!(r.peaks_h5, t.path().join("out/s_peaks.h5"));
    // A second run keeps the first's files and numbers its own, as XPCS
    // does; with overwrite it replaces them.
    let again = cfg.run(&mut |_, _| {}).unwrap();
    assert_eq!(again.peaks_h5, t.path().join("out/s_1_peaks.h5"));
    assert_eq!(again.summary_json, t.path().join("out/s_1_summary.json"));
    assert!(r.peaks_h5.exists() && r.summary_json.exists());
    let replaced = Config {
        overwrite: true,
        ..cfg.clone()
    }
    .run(&mut |_, _| {})
    .unwrap();
    assert_eq!(replaced.peaks_h5, r.peaks_h5);
    let rows = read_peaks_h5(&r.peaks_h5).unwrap();
    assert_eq!(rows.len(), r.summary.peaks);
    assert!(r.summary.peaks >= 24, "{:?}", r.summary);
    // Spot ids from 1; omega from the frame index (column 2, frame column 29).
    for (k, p) in rows.iter().enumerate() {
        assert_eq!(p[0], (k + 1) as f64);
        assert_eq!(p[2], 5.0 + 0.25 * p[29]);
    }
    let csv = std::fs::read_to_string(&r.peaks_csv).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
    let first: Vec<f64> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    for (a, b) in first.iter().zip(rows[0].iter()) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert!(r.overlay.unwrap().exists());
}
