//! The kernels in flows: HEDM, ptychography, BraggNN, and a pilot benchmarking its node.

use super::*;

#[test]
fn the_hedm_flow_finds_the_peaks_of_a_synthetic_stack() {
    let env = Env::new();
    let bf = |args: &[&str]| env.beamflow_ok(args);
    let data = env.home.join("beamline");
    let dest = env.home.join("back");
    bf(&[
        "kernel",
        "hedm",
        "synthetic",
        "--dir",
        data.to_str().unwrap(),
        "--name",
        "scan",
        "--frames",
        "2",
        "--size",
        "384",
        "--peaks",
        "25",
    ]);
    let frames = data.join("scan.h5");
    env.run_job(
        "hedm",
        &[
            format!("frames={}", frames.display()),
            format!("dest={}", dest.display()),
            "dark_value=10".to_string(),
            "sample=ruby".to_string(),
        ],
    );
    // The products came back: a CSV with a row per peak (50 true peaks,
    // a few extra maxima from noise as in MIDAS), the HDF5 table, the overlay.
    let csv = std::fs::read_to_string(dest.join("results/scan_peaks.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    assert!((50..=70).contains(&rows), "{rows} peaks:\n{csv}");
    assert!(csv.starts_with("SpotID,IntegratedIntensity,Omega,YCen,ZCen,IMax"));
    assert!(dest.join("results/scan_peaks.h5").exists());
    assert!(dest.join("results/scan_overlay.png").exists());
}

#[test]
fn the_ptycho_flow_reconstructs_a_ptychodus_scan() {
    let env = Env::new();
    let bf = |args: &[&str]| env.beamflow_ok(args);
    let data = env.home.join("beamline");
    let dest = env.home.join("back");
    bf(&[
        "kernel",
        "ptycho",
        "synthetic",
        "--dir",
        data.to_str().unwrap(),
        "--name",
        "scan",
        "--size",
        "tiny",
        "--ptychodus",
    ]);
    env.run_job(
        "ptycho",
        &[
            format!("data={}", data.join("scan_dp.hdf5").display()),
            format!("meta={}", data.join("scan_meta.hdf5").display()),
            format!("dest={}", dest.display()),
            "iterations=20".to_string(),
            "engine=lsqml".to_string(),
            "sample=siemens-star".to_string(),
        ],
    );
    // The reconstruction came back with its history and images.
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dest.join("results/scan_dp_summary.json")).unwrap(),
    )
    .unwrap();
    let loss: Vec<f64> = serde_json::from_value(summary["history"]["loss"].clone()).unwrap();
    assert_eq!(loss.len(), 20);
    assert!(loss[19] < loss[0], "{loss:?}");
    assert_eq!(summary["report"]["engine"], "lsqml");
    assert!(dest.join("results/scan_dp_recon.h5").exists());
    assert!(dest.join("results/scan_dp_phase.png").exists());
}

/// The two BraggNN flows back to back, as a beamline would use them: train
/// on a stack (labels from the pseudo-Voigt fit, a few epochs here), the
/// model comes back to the "edge" folder, and the inference flow locates
/// the peaks of another stack with it through ONNX Runtime.
#[test]
fn the_braggnn_flows_train_a_model_and_locate_peaks_with_it() {
    let env = Env::new();
    let bf = |args: &[&str]| env.beamflow_ok(args);
    let data = env.home.join("beamline");
    let edge = env.home.join("edge");
    for (name, seed) in [("train", "5"), ("scan", "6")] {
        bf(&[
            "kernel",
            "hedm",
            "synthetic",
            "--dir",
            data.to_str().unwrap(),
            "--name",
            name,
            "--frames",
            "2",
            "--size",
            "512",
            "--peaks",
            "40",
            "--seed",
            seed,
        ]);
    }
    let out = env.run_job(
        "braggnn",
        &[
            format!("frames={}", data.join("train.h5").display()),
            format!("dest={}", edge.display()),
            "dark_value=10".to_string(),
            "epochs=3".to_string(),
            "batch=16".to_string(),
            "sample=ruby".to_string(),
        ],
    );
    let model = edge.join("model");
    for f in [
        "best.safetensors",
        "braggnn.onnx",
        "history.json",
        "learning_curve.png",
    ] {
        assert!(model.join(f).exists(), "{f} did not come back:\n{out}");
    }
    let history: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("history.json")).unwrap())
            .unwrap();
    assert_eq!(history["history"].as_array().unwrap().len(), 3);
    assert_eq!(history["psz"], 11);
    let back = env.home.join("back");
    env.run_job(
        "braggnn-infer",
        &[
            format!("frames={}", data.join("scan.h5").display()),
            format!("model={}", model.join("braggnn.onnx").display()),
            format!("dest={}", back.display()),
            "dark_value=10".to_string(),
        ],
    );
    // A row per seeded peak (80 true peaks and MIDAS's noise maxima).
    let csv = std::fs::read_to_string(back.join("results/scan_braggnn.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    assert!((80..=130).contains(&rows), "{rows} peaks:\n{csv}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(back.join("results/scan_braggnn_summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["summary"]["device"], "ort:cpu");
    assert_eq!(summary["summary"]["peaks"], rows);
}

/// What a user gets wrong with `kernel braggnn infer`: a missing model, a
/// frame file that is not HDF5, no ONNX Runtime library — each a clear
/// error naming the culprit and a non-zero exit.
#[test]
fn braggnn_infer_errors_name_the_culprit() {
    let env = Env::new();
    let dir = env.home.join("d");
    env.beamflow_ok(&[
        "kernel",
        "hedm",
        "synthetic",
        "--dir",
        dir.to_str().unwrap(),
        "--name",
        "f",
        "--frames",
        "1",
        "--size",
        "256",
        "--peaks",
        "5",
    ]);
    let model = dir.join("m.onnx");
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/braggnn/braggnn_weights.npz");
    env.beamflow_ok(&[
        "kernel",
        "braggnn",
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    let junk = dir.join("junk.h5");
    std::fs::write(&junk, "not hdf5").unwrap();
    let frames = dir.join("f.h5");
    let fail = |frames: &Path, model: &Path, ort: Option<&str>| {
        let mut c = Command::new(bin());
        c.env("BEAMFLOW_HOME", &env.home).args([
            "kernel",
            "braggnn",
            "infer",
            "--frames",
            frames.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "-o",
            dir.join("out").to_str().unwrap(),
        ]);
        if let Some(lib) = ort {
            c.env("ORT_DYLIB_PATH", lib);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = fail(&frames, &dir.join("nope.onnx"), None);
    assert!(e.contains("nope.onnx"), "{e}");
    let e = fail(&junk, &model, None);
    assert!(e.contains("junk.h5"), "{e}");
    let e = fail(&frames, &model, Some("/nonexistent/libonnxruntime.so"));
    assert!(
        e.contains("/nonexistent/libonnxruntime.so") && e.contains("ORT_DYLIB_PATH"),
        "{e}"
    );
    // The same frames and model work.
    let out = env.beamflow_ok(&[
        "kernel",
        "braggnn",
        "infer",
        "--frames",
        frames.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--dark-value",
        "10",
        "-o",
        dir.join("out").to_str().unwrap(),
    ]);
    assert!(out.contains("ort:cpu"), "{out}");
}

// ---- File triggers (`beamflow watch`) -----------------------------------------

#[test]
fn a_pilot_benchmarks_its_node_and_bench_compare_reads_the_result() {
    let env = Env::new();
    let dest = env.home.join("results");
    env.run_job(
        "bench",
        &[
            "size=small".to_string(),
            "repeats=1".to_string(),
            format!("dest={}", dest.display()),
        ],
    );
    let json = dest.join("bench/bench.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["schema"], "beamflow.bench/1");
    assert_eq!(v["config"]["size"], "small");
    let m = &v["machine"];
    assert!(m["triad_gbs"].as_f64().unwrap() > 0.5, "{m}");
    assert!(m["sgemm_gflops"].as_f64().unwrap() > 1.0, "{m}");
    assert!(m["cpus"].as_u64().unwrap() >= 1 && m["threads"].as_u64().unwrap() >= 1);
    assert_eq!(m["git"].as_str().unwrap().len(), 12, "{m}");
    // No GPU on this machine kind: none found, the reason said, no panic.
    assert_eq!(m["gpus"], json!([]));
    assert!(
        m["gpu_note"].as_str().unwrap().contains("no CUDA driver"),
        "{m}"
    );
    assert_eq!(m["torch_devices"], json!(["cpu"]));
    let results = v["results"].as_array().unwrap();
    let got: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["kernel"].as_str().unwrap(),
                r["backend"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "xpcs.multitau cpu",
            "xpcs.multitau torch:cpu",
            "xpcs.twotime cpu",
            "ptycho.rpie cpu",
            "ptycho.lsqml cpu",
            "ptycho.lsqml torch:cpu",
            "hedm.fit cpu",
            "braggnn.train torch:cpu",
            "braggnn.infer torch:cpu",
            "braggnn.infer ort:cpu",
            "engine.noop engine",
        ]
    );
    for r in results {
        assert!(r["rate"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["seconds"]["median"].as_f64().unwrap() > 0.0, "{r}");
        // Under the roof: a fraction above 1 would mean a miscounted kernel.
        if let Some(f) = r["roofline_fraction"].as_f64() {
            assert!(f > 0.0 && f < 1.2, "{r}");
        }
    }
    let png = std::fs::read(dest.join("bench/roofline.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    // A result compared with itself: every ratio is one.
    let j = json.to_str().unwrap();
    let out = env.beamflow_ok(&["bench", "compare", j, j, "--json"]);
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["triad_ratio"], 1.0);
    let kernels = c["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), results.len());
    assert!(kernels.iter().all(|k| k["ratio"] == 1.0), "{c}");
}
