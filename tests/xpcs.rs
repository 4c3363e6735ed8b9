//! XPCS from files to files: a synthetic measurement written as a beamline
//! leaves it, analysed by the pipeline, and the results file opened by
//! pyXPCSViewer (the venv from scripts/setup.sh) with the values checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use beamflow_kernels::synthetic::xpcs::{write_dataset, DatasetFiles, SpeckleConfig};
use beamflow_kernels::xpcs::io::{read_qmap, RawFile};
use beamflow_kernels::xpcs::pipeline::{run, Mode, Options, PipelineError};
use serde_json::json;

fn dataset(dir: &Path, size: usize, frames: usize) -> DatasetFiles {
    let cfg = SpeckleConfig {
        size,
        frames,
        mean_count: 2.0,
        ..Default::default()
    };
    write_dataset(&cfg, dir, "S01_sample", |_| {}).unwrap()
}

fn python() -> PathBuf {
    let venv = std::env::var("BEAMFLOW_VENV")
        .expect("BEAMFLOW_VENV is not set: run the tests through `make test` (scripts/setup.sh)");
    Path::new(&venv).join("bin/python")
}

fn viewer_check(results: &Path, expected: &serde_json::Value, dir: &Path) {
    let exp = dir.join("expected.json");
    std::fs::write(&exp, serde_json::to_vec(expected).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/xpcs/check_viewer.py");
    let mut cmd = Command::new(python());
    // Other tests' open HDF5 files must not leak into the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            beamflow_kernels::inherit::close_fds_on_exec()
        });
    }
    let out = cmd
        .arg(script)
        .arg(results)
        .arg(&exp)
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .expect("run check_viewer.py");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "viewer check failed:\n{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

/// Per-frame mean over the valid pixels and the summed SAXS image, computed
/// straight from the raw file.
fn direct_averages(files: &DatasetFiles) -> (Vec<f64>, f64) {
    let raw = RawFile::open(&files.raw).unwrap();
    let q = read_qmap(&files.qmap).unwrap();
    let px = q.valid_pixels();
    let vals = raw.read(0, raw.frames, &px).unwrap();
    let n = px.len();
    let int_t: Vec<f64> = vals
        .chunks(n)
        .map(|f| f.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64)
        .collect();
    let total: f64 = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / raw.frames as f64;
    (int_t, total)
}

/// Two-time by its definition (reference/xpcs.md §2), in f64: per frame,
/// each pixel over its static bin's mean; C = J Jᵀ · P_d / (S(t1) S(t2)).
/// Returns row 0 of C for dynamic bin 1 and g2 by lag, (N, n_dq).
fn twotime_by_definition(files: &DatasetFiles) -> (Vec<f64>, Vec<Vec<f64>>) {
    let q = read_qmap(&files.qmap).unwrap();
    let raw = RawFile::open(&files.raw).unwrap();
    let n = raw.frames;
    let all: Vec<usize> = (0..q.mask.len()).collect();
    let vals = raw.read(0, n, &all).unwrap();
    let px = all.len();
    let (n_sq, n_dq) = (q.n_sq(), q.n_dq());
    let valid = |p: usize| q.mask[p] == 1 && q.sqmap[p] > 0 && q.dqmap[p] > 0;
    // J(t, p) for the valid pixels.
    let mut j = vec![0f64; n * px];
    for t in 0..n {
        let f = &vals[t * px..(t + 1) * px];
        let mut sum = vec![0f64; n_sq + 1];
        let mut cnt = vec![0f64; n_sq + 1];
        for p in (0..px).filter(|&p| valid(p)) {
            sum[q.sqmap[p] as usize] += f64::from(f[p]);
            cnt[q.sqmap[p] as usize] += 1.0;
        }
        for p in (0..px).filter(|&p| valid(p)) {
            let m = sum[q.sqmap[p] as usize] / cnt[q.sqmap[p] as usize];
            j[t * px + p] = f64::from(f[p]) / if m <= 0.0 { 1.0 } else { m };
        }
    }
    let mut row0 = Vec::new();
    let mut g2 = vec![vec![0f64; n_dq]; n];
    for d in 1..=n_dq as u32 {
        let members: Vec<usize> = (0..px).filter(|&p| valid(p) && q.dqmap[p] == d).collect();
        let s: Vec<f64> = (0..n)
            .map(|t| {
                let v: f64 = members.iter().map(|&p| j[t * px + p]).sum();
                if v <= 0.0 {
                    1.0
                } else {
                    v
                }
            })
            .collect();
        let c = |a: usize, b: usize| -> f64 {
            let dot: f64 = members.iter().map(|&p| j[a * px + p] * j[b * px + p]).sum();
            dot * members.len() as f64 / (s[a] * s[b])
        };
        if d == 1 {
            row0 = (0..n).map(|b| c(0, b)).collect();
        }
        for (lag, row) in g2.iter_mut().enumerate() {
            let m: f64 = (0..n - lag).map(|a| c(a, a + lag)).sum::<f64>() / (n - lag) as f64;
            row[d as usize - 1] = m;
        }
    }
    (row0, g2)
}

#[test]
fn both_analyses_open_in_the_viewer_with_the_computed_values() {
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 64, 120);
    let out = t.path().join("out");
    let opts = Options::new(&files.raw, &files.qmap, &out, Mode::Both);
    let mut last = (0, 0);
    let res = run(&opts, &mut |p| {
        assert!(p.done <= p.total && p.done > last.0);
        last = (p.done, p.total);
        true
    })
    .unwrap();
    assert_eq!(last, (120, 120), "progress reached the end");
    let s = &res.summary;
    assert_eq!(s.results, out.join("S01_sample_results.hdf"));
    assert_eq!(s.frames, 120);
    assert!((s.t0 - 1e-3).abs() < 1e-12);
    for p in &s.plots {
        assert!(
            std::fs::metadata(p).unwrap().len() > 1000,
            "{}",
            p.display()
        );
    }
    let g = res.multitau.as_ref().unwrap();
    let (int_t, saxs_sum) = direct_averages(&files);
    let tau_s: Vec<f64> = g.tau.iter().map(|&x| x as f64 * 1e-3).collect();
    let rows = |a: &ndarray::Array2<f32>| -> Vec<Vec<f64>> {
        a.rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect()
    };
    let (c2_row0, c2_g2) = twotime_by_definition(&files);
    let expected = json!({
        "atype": "Both",
        "tau_s": tau_s,
        "g2": rows(&g.g2),
        "g2_err": rows(&g.g2_err),
        "saxs_2d_shape": [64, 64],
        "saxs_2d_sum": saxs_sum,
        "int_t": int_t,
        "c2_g2": c2_g2,
        "c2_first": {"index": 1, "values_row0": c2_row0},
        "rtol": 1e-5,
        "atol": 1e-5,
    });
    viewer_check(&s.results, &expected, t.path());
    assert_eq!(s.twotime_bins.len(), 20);
    assert!(s.frames_note.is_none(), "{:?}", s.frames_note);
    // A second run does not overwrite the first.
    let again = run(&opts, &mut |_| true).unwrap();
    assert_eq!(again.summary.results, out.join("S01_sample_results_1.hdf"));
}

#[test]
fn twotime_only_files_open_in_the_viewer() {
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 48, 200);
    let out = t.path().join("out");
    let mut opts = Options::new(&files.raw, &files.qmap, &out, Mode::Twotime);
    opts.dq_selection = Some(vec![3, 4, 9]);
    // Room for about one bin's frames at a time: several passes over the file.
    opts.max_memory = 200 * 300 * 4;
    // An end past the file's last frame uses what there is, and says so.
    opts.end = Some(1000);
    let res = run(&opts, &mut |_| true).unwrap();
    assert_eq!(res.summary.twotime_bins, vec![3, 4, 9]);
    assert_eq!(res.summary.frames, 200);
    let note = res.summary.frames_note.as_deref().unwrap_or_default();
    assert!(
        note.ends_with("end 1000 is past the file's 200 frames; frames 0..200 were used"),
        "{note:?}"
    );
    let (int_t, saxs_sum) = direct_averages(&files);
    viewer_check(
        &res.summary.results,
        &json!({
            "atype": "Twotime",
            "saxs_2d_shape": [48, 48],
            "saxs_2d_sum": saxs_sum,
            "int_t": int_t,
            "rtol": 1e-5,
            "atol": 1e-6,
        }),
        t.path(),
    );
}

#[test]
fn bad_inputs_fail_with_the_file_named_and_leave_no_results() {
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 32, 40);
    let out = t.path().join("out");
    let fail = |opts: &Options| match run(opts, &mut |_| true) {
        Err(PipelineError::Failed(e)) => e,
        Err(PipelineError::Cancelled) => panic!("cancelled"),
        Ok(_) => panic!("succeeded"),
    };
    // A qmap of another detector size.
    let other = dataset(&t.path().join("other"), 48, 20);
    let e = fail(&Options::new(&files.raw, &other.qmap, &out, Mode::Multitau));
    assert!(
        e.contains("S01_sample_qmap.hdf") && e.contains("48x48"),
        "{e}"
    );
    // A truncated raw file.
    let cut = t.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let bytes = std::fs::read(&files.raw).unwrap();
    std::fs::write(cut.join("S01_sample.h5"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::copy(&files.metadata, cut.join("S01_sample_metadata.hdf")).unwrap();
    let e = fail(&Options::new(
        &cut.join("S01_sample.h5"),
        &files.qmap,
        &out,
        Mode::Multitau,
    ));
    assert!(e.contains("cut/S01_sample.h5"), "{e}");
    // No metadata next to the raw file.
    let lone = t.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(&files.raw, lone.join("S01_sample.h5")).unwrap();
    let e = fail(&Options::new(
        &lone.join("S01_sample.h5"),
        &files.qmap,
        &out,
        Mode::Multitau,
    ));
    assert!(e.contains("no *_metadata.hdf"), "{e}");
    assert!(e.contains("--meta FILE"), "{e}");
    // One dynamic bin far past the qmap's bins (4294967295): refused, not
    // an allocation of 100 GB that kills the process.
    let huge = t.path().join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    let bad_qmap = huge.join("S01_sample_qmap.hdf");
    std::fs::copy(&files.qmap, &bad_qmap).unwrap();
    {
        let f = hdf5::File::open_rw(&bad_qmap).unwrap();
        let ds = f.dataset("/qmap/dynamic_roi_map").unwrap();
        let mut m = ds.read_2d::<u32>().unwrap();
        m[[3, 5]] = u32::MAX;
        ds.write(&m).unwrap();
    }
    let e = read_qmap(&bad_qmap).unwrap_err();
    assert!(
        e.ends_with("huge/S01_sample_qmap.hdf: /qmap/dynamic_roi_map: bin 4294967295 exceeds dynamic_num_pts (20)"),
        "{e}"
    );
    let e = fail(&Options::new(&files.raw, &bad_qmap, &out, Mode::Multitau));
    assert!(e.contains("bin 4294967295 exceeds dynamic_num_pts"), "{e}");
    // Too few frames for the range.
    let mut o = Options::new(&files.raw, &files.qmap, &out, Mode::Multitau);
    o.begin = 35;
    let e = fail(&o);
    assert!(e.contains("5 frames") && e.contains("at least 10"), "{e}");
    // A two-time map that does not fit the memory budget fails before any work.
    let mut o = Options::new(&files.raw, &files.qmap, &out, Mode::Twotime);
    o.max_memory = 1000;
    let e = fail(&o);
    assert!(e.contains("a two-time map of 40 frames needs"), "{e}");
    // Cancelling stops the run.
    let o = Options::new(&files.raw, &files.qmap, &out, Mode::Multitau);
    assert!(matches!(
        run(&o, &mut |_| false),
        Err(PipelineError::Cancelled)
    ));
    // Nothing half-written was left behind.
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn imm_input_gives_the_same_g2_as_hdf5() {
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 32, 120);
    let raw = RawFile::open(&files.raw).unwrap();
    let frames = match raw.read_frames(0, raw.frames).unwrap() {
        beamflow_kernels::xpcs::io::Frames::U16(v) => v,
        _ => panic!("synthetic data are uint16"),
    };
    let imm_dir = t.path().join("imm");
    std::fs::create_dir_all(&imm_dir).unwrap();
    let imm = imm_dir.join("S01_sample.imm");
    beamflow_kernels::xpcs::imm::write_imm(&imm, &frames, 32, 32, true, 1e-3).unwrap();
    std::fs::copy(&files.metadata, imm_dir.join("S01_sample_metadata.hdf")).unwrap();
    let mut a = Options::new(&files.raw, &files.qmap, &t.path().join("a"), Mode::Multitau);
    a.plots = false;
    let mut b = Options::new(&imm, &files.qmap, &t.path().join("b"), Mode::Multitau);
    b.plots = false;
    let ga = run(&a, &mut |_| true).unwrap().multitau.unwrap();
    let gb = run(&b, &mut |_| true).unwrap().multitau.unwrap();
    assert_eq!(ga.tau, gb.tau);
    assert_eq!(ga.g2, gb.g2);
    assert!(
        ga.g2.iter().any(|&v| v > 1.05),
        "some correlation is visible"
    );
}

/// The acceptance case: 512×512 pixels, 2000 frames, β = 0.5. D (from Γ =
/// D q² over the resolved bins) and the mean β come back within 2 %.
#[test]
fn fits_recover_the_generated_dynamics_at_512x512x2000() {
    let t = tempfile::tempdir().unwrap();
    let cfg = SpeckleConfig {
        size: 512,
        frames: 2000,
        ..Default::default()
    };
    let files = write_dataset(&cfg, t.path(), "S512", |_| {}).unwrap();
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.truth).unwrap()).unwrap();
    let mut opts = Options::new(
        &files.raw,
        &files.qmap,
        &t.path().join("out"),
        Mode::Multitau,
    );
    opts.plots = false;
    let s = run(&opts, &mut |_| true).unwrap().summary;
    let d_true = truth["diffusion"].as_f64().unwrap();
    let d = s.diffusion.unwrap();
    let beta = s.beta.unwrap();
    let resolved = s.fits.iter().filter(|f| f.resolved).count();
    eprintln!(
        "D {d:.5e} vs {d_true:.5e} ({:+.3} %), beta {beta:.4}, {resolved} resolved bins",
        100.0 * (d - d_true) / d_true
    );
    assert!(resolved >= 15, "{resolved} resolved bins");
    assert!((d - d_true).abs() < 0.02 * d_true, "D {d} vs {d_true}");
    assert!((beta - 0.5).abs() < 0.02 * 0.5, "beta {beta}");
    // Every bin's Γ, resolved or not, within 5 % of its own truth.
    for f in s.fits.iter().filter(|f| f.resolved) {
        let g = truth["bins"][f.dq as usize - 1]["gamma"].as_f64().unwrap();
        assert!(
            (f.gamma - g).abs() < 0.05 * g,
            "dq {}: {} vs {g}",
            f.dq,
            f.gamma
        );
    }
}

/// `-nf 1`: multi-tau sees each frame divided by its mean over the valid
/// pixels; intensity vs time stays the raw mean.
#[test]
fn frame_normalisation_correlates_the_normalised_frames() {
    use beamflow_kernels::xpcs::{qbin::normalize, Multitau};
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 32, 150);
    let mut o = Options::new(
        &files.raw,
        &files.qmap,
        &t.path().join("out"),
        Mode::Multitau,
    );
    o.plots = false;
    o.normalize_frame = true;
    let res = run(&o, &mut |_| true).unwrap();
    let got = res.multitau.unwrap();
    // The same by hand: normalise, correlate, bin.
    let q = read_qmap(&files.qmap).unwrap();
    let px = q.valid_pixels();
    let raw = RawFile::open(&files.raw).unwrap();
    let vals = raw.read(0, raw.frames, &px).unwrap();
    let mut normed = Vec::with_capacity(vals.len());
    for f in vals.chunks(px.len()) {
        let mean = f.iter().map(|&v| f64::from(v)).sum::<f64>() / px.len() as f64;
        normed.extend(f.iter().map(|&v| v * (1.0 / mean) as f32));
    }
    let mut mt = Multitau::new(150, px.len());
    mt.push(&normed).unwrap();
    let want = normalize(&mt.finish().unwrap(), &q, &px);
    for (a, b) in got.g2.iter().zip(want.g2.iter()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    // Normalised frames have mean 1, so g2 is not scaled by the intensity.
    assert!(got.g2.iter().any(|&v| v > 1.05));
    let f = hdf5::File::open(&res.summary.results).unwrap();
    let it: ndarray::Array2<f32> = f
        .dataset("/xpcs/spatial_mean/intensity_vs_time")
        .unwrap()
        .read_2d()
        .unwrap();
    let (int_t, _) = direct_averages(&files);
    for (i, w) in int_t.iter().enumerate() {
        assert!(
            (f64::from(it[[1, i]]) - w).abs() < 1e-5 * w.max(1.0),
            "frame {i}"
        );
    }
    let nf: i64 = f
        .dataset("/xpcs/multitau/config/normalize_frame")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(nf, 1);
}

/// The torch backend (libtorch on the CPU device here) gives the cpu
/// backend's g2, and asking for a GPU that is not there falls back with a note.
#[test]
fn torch_backend_agrees_with_cpu() {
    use beamflow_kernels::xpcs::pipeline::Backend;
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 48, 300);
    let mut a = Options::new(
        &files.raw,
        &files.qmap,
        &t.path().join("cpu"),
        Mode::Multitau,
    );
    a.plots = false;
    let mut b = Options::new(
        &files.raw,
        &files.qmap,
        &t.path().join("torch"),
        Mode::Multitau,
    );
    b.plots = false;
    b.backend = Backend::parse("torch:cuda").unwrap();
    let ra = run(&a, &mut |_| true).unwrap();
    let rb = run(&b, &mut |_| true).unwrap();
    assert_eq!(ra.summary.device, "cpu");
    if rb.summary.device == "torch:cpu" {
        assert!(rb
            .summary
            .device_note
            .as_deref()
            .unwrap()
            .contains("no CUDA device"));
    }
    let (ga, gb) = (ra.multitau.unwrap(), rb.multitau.unwrap());
    assert_eq!(ga.tau, gb.tau);
    for (x, y) in ga.g2.iter().zip(gb.g2.iter()) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
    }
    for (x, y) in ga.g2_err.iter().zip(gb.g2_err.iter()) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{x} vs {y}");
    }
    assert!(Backend::parse("jax")
        .unwrap_err()
        .contains("unknown backend"));
}

/// begin/stride/avg pick and average the raw frames as the reference does
/// (N = (end − begin) / (stride · avg)), and the segment profiles are the
/// static-bin means of 2^L-frame segments (N / 2^L ≤ 16).
#[test]
fn stride_avg_and_segments_follow_their_definitions() {
    let t = tempfile::tempdir().unwrap();
    let files = dataset(t.path(), 32, 200);
    let mut o = Options::new(
        &files.raw,
        &files.qmap,
        &t.path().join("out"),
        Mode::Multitau,
    );
    o.plots = false;
    o.begin = 3;
    o.stride = 2;
    o.avg = 3;
    let res = run(&o, &mut |_| true).unwrap();
    let n = 32; // (200 − 3) / 6
    assert_eq!(res.summary.frames, n);
    let q = read_qmap(&files.qmap).unwrap();
    let px = q.valid_pixels();
    let raw = RawFile::open(&files.raw).unwrap();
    let vals = raw.read(0, raw.frames, &px).unwrap();
    let np = px.len();
    // Correlated frame j: mean of raw frames 3 + (3j + a)·2, a = 0..3.
    let frame = |j: usize| -> Vec<f64> {
        (0..np)
            .map(|i| {
                (0..3)
                    .map(|a| f64::from(vals[(3 + (3 * j + a) * 2) * np + i]))
                    .sum::<f64>()
                    / 3.0
            })
            .collect()
    };
    let f = hdf5::File::open(&res.summary.results).unwrap();
    let it: ndarray::Array2<f32> = f
        .dataset("/xpcs/spatial_mean/intensity_vs_time")
        .unwrap()
        .read_2d()
        .unwrap();
    assert_eq!(it.dim(), (2, n));
    for j in [0, 7, n - 1] {
        let want = frame(j).iter().sum::<f64>() / np as f64;
        assert!((f64::from(it[[1, j]]) - want).abs() < 1e-5, "frame {j}");
    }
    // 32 frames → 16 segments of 2; segment 5 = frames 10 and 11.
    let seg: ndarray::Array2<f32> = f
        .dataset("/xpcs/temporal_mean/scattering_1d_segments")
        .unwrap()
        .read_2d()
        .unwrap();
    let n_sq = q.n_sq();
    assert_eq!(seg.dim(), (16, n_sq));
    let (a, b) = (frame(10), frame(11));
    let mut sum = vec![0f64; n_sq + 1];
    let mut count = vec![0f64; n_sq + 1];
    for (i, &p) in px.iter().enumerate() {
        sum[q.sqmap[p] as usize] += (a[i] + b[i]) / 2.0;
    }
    for &s in &q.sqmap {
        count[s as usize] += 1.0;
    }
    for s in 1..=n_sq {
        let want = sum[s] / count[s];
        assert!(
            (f64::from(seg[[5, s - 1]]) - want).abs() < 1e-5 * want.max(1.0),
            "bin {s}: {} vs {want}",
            seg[[5, s - 1]]
        );
    }
}
