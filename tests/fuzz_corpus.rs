//! The fuzzers' corpora as regression tests: every file committed under
//! engine/fuzz/corpus/TARGET goes through the entry point the fuzz target
//! TARGET drives (engine/fuzz/src/lib.rs, included here), which must not
//! panic; the seeds taken from real files must be read, and the inputs that
//! once crashed a reader must now be refused with a message naming the
//! file and the field at fault.
//!
//! engine/fuzz/known-libhdf5-crashers holds inputs that crash libhdf5
//! itself, below anything beamflow can check: they are not run here.

use std::path::{Path, PathBuf};

#[path = "../engine/fuzz/src/lib.rs"]
mod entry;

use entry::Report;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn corpus(target: &str) -> PathBuf {
    root().join("engine/fuzz/corpus").join(target)
}

fn entry_point(target: &str) -> entry::Entry {
    entry::TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"))
        .1
}

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Runs one corpus file, naming it if the entry point panics.
fn run(target: &str, path: &Path) -> Report {
    let data = std::fs::read(path).unwrap();
    let f = entry_point(target);
    std::panic::catch_unwind(|| f(&data))
        .unwrap_or_else(|_| panic!("{target}: {} panicked", path.display()))
}

fn outcome<'a>(report: &'a Report, reader: &str, file: &str) -> &'a Result<String, String> {
    &report
        .iter()
        .find(|(r, _)| *r == reader)
        .unwrap_or_else(|| panic!("{file}: no outcome for reader {reader}: {report:?}"))
        .1
}

/// Every file of the target's corpus runs without a panic; returns how
/// many ran.
fn corpus_runs_clean(target: &str, at_least: usize) {
    let all = files(target);
    for path in &all {
        run(target, path);
    }
    assert!(
        all.len() >= at_least,
        "{target}: only {} corpus files",
        all.len()
    );
}

#[test]
fn flow_corpus_runs_clean() {
    corpus_runs_clean("flow", 10);
}

#[test]
fn site_corpus_runs_clean() {
    corpus_runs_clean("site", 6);
}

#[test]
fn protocol_corpus_runs_clean() {
    corpus_runs_clean("protocol", 4);
}

#[test]
fn h5_xpcs_corpus_runs_clean() {
    corpus_runs_clean("h5_xpcs", 4);
}

#[test]
fn h5_ptycho_corpus_runs_clean() {
    corpus_runs_clean("h5_ptycho", 2);
}

#[test]
fn h5_hedm_corpus_runs_clean() {
    corpus_runs_clean("h5_hedm", 2);
}

/// The flows shipped in jobs/ (seeds of the flow corpus) validate through
/// the flow entry point, alone and against the fuzz site.
#[test]
fn shipped_flows_validate_through_the_flow_entry_point() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("jobs")).unwrap() {
        let job = e.unwrap().path();
        let name = job.file_name().unwrap().to_str().unwrap();
        let report = run("flow", &job);
        let flow_name = name.trim_end_matches(".toml");
        for reader in ["flow", "flow@site"] {
            let got = outcome(&report, reader, name)
                .as_ref()
                .unwrap_or_else(|e| panic!("{name} ({reader}): {e}"));
            assert!(got.starts_with(&format!("{flow_name} v1: ")), "{got}");
        }
        n += 1;
    }
    assert!(n >= 5, "only {n} flows in jobs/");
}

/// The bad flows of tests/flows (seeds too) are refused through the flow
/// entry point with the message their first line promises.
#[test]
fn bad_flows_are_refused_through_the_flow_entry_point() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("tests/flows/bad")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let src = std::fs::read_to_string(&path).unwrap();
        let expect = src
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(&format!("# expect: {name}:")))
            .unwrap_or_else(|| panic!("{name}: no `# expect: {name}:LINE: …` line"));
        let expect = format!("fuzz.toml:{expect}");
        let report = run("flow", &path);
        match outcome(&report, "flow", name) {
            Err(got) => assert!(got.contains(&expect), "{name}: {got}\nnot: {expect}"),
            Ok(got) => panic!("{name} validated: {got}"),
        }
        n += 1;
    }
    assert!(n >= 15, "only {n} bad flows");
}

/// The site configs shipped in site-configs/ (seeds of the site corpus)
/// load through the site entry point; each target renders a job script
/// (or, without a scheduler, says why not) and fits a small flow.
#[test]
fn shipped_sites_load_through_the_site_entry_point() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("site-configs")).unwrap() {
        let cfg = e.unwrap().path();
        let name = cfg.file_name().unwrap().to_str().unwrap();
        let report = run("site", &cfg);
        let site = outcome(&report, "site", name).as_ref().unwrap();
        assert!(
            site.starts_with(&format!("site {} (", name.trim_end_matches(".toml"))),
            "{site}"
        );
        let mut scripts = 0;
        for (reader, r) in &report {
            match (*reader, r) {
                ("script", Ok(s)) => {
                    assert!(s.starts_with("script of "), "{s}");
                    scripts += 1;
                }
                ("script", Err(e)) => assert!(
                    e.contains("no batch scheduler") || e.contains("started by hand"),
                    "{name}: {e}"
                ),
                ("flow", r) => assert_eq!(r.as_deref(), Ok("flow f fits"), "{name}"),
                ("site", _) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
        if name != "local.toml" {
            assert!(scripts > 0, "{name}: no target rendered a job script");
        }
        n += 1;
    }
    assert!(n >= 4, "only {n} site configs");
}

/// What a named corpus file must yield from one reader.
enum Want {
    /// Read, with a description containing this.
    Read(&'static str),
    /// Refused, with a message containing this.
    Refused(&'static str),
}
use Want::{Read, Refused};

/// Seeds written from beamflow's own types and writers, and inputs that
/// crashed a reader before it was fixed, with what they give now.
const EXPECT: &[(&str, &str, &str, Want)] = &[
    // Flows: a duration beyond any real one used to pass validation and
    // panic where the server makes a `Duration` of it; memory beyond any
    // node's overflowed the sums of requests.
    (
        "flow",
        "crash-timeout-1e300.toml",
        "flow",
        Refused("fuzz.toml:7: steps.a.timeout: `1e300` is longer than a year"),
    ),
    (
        "flow",
        "bad-memory-huge.toml",
        "flow",
        Refused("fuzz.toml:6: steps.a.resources.memory: `99999999999999999999TB` is more than 1073741824 MB (1 PiB)"),
    ),
    // Sites: a walltime overflowing u64 seconds, and a node with four
    // billion GPUs whose indices the job script would list.
    (
        "site",
        "crash-walltime-overflow.toml",
        "site",
        Refused("fuzz-site.toml:5: targets.cpu.walltime: `99999999999999999:00:00` is not a walltime"),
    ),
    (
        "site",
        "oom-gpus-per-node-huge.toml",
        "site",
        Refused("fuzz-site.toml:6: targets.gpu.gpus_per_node: 4000000000 is more than 1024"),
    ),
    // Protocol frames as beamflow writes them.
    ("protocol", "seed-hello.json", "from_pilot", Read("1 messages from a pilot")),
    ("protocol", "seed-pilot-batch.json", "from_pilot", Read("6 messages from a pilot")),
    ("protocol", "seed-welcome.json", "to_pilot", Read("1 messages to a pilot")),
    ("protocol", "seed-server-batch.json", "to_pilot", Read("4 messages to a pilot")),
    // A heartbeat or timeout no `Duration` holds ended the pilot; a task
    // without a resource variant sat at the head of its queue for ever.
    (
        "protocol",
        "crash-heartbeat-1e300.json",
        "to_pilot",
        Refused("message 0: welcome.heartbeat_s: 1e300 is not a number of seconds"),
    ),
    (
        "protocol",
        "crash-timeout-negative.json",
        "to_pilot",
        Refused("message 0: tasks[0] (attempt 7).timeout_s: -1.0 is not a number of seconds"),
    ),
    (
        "protocol",
        "hang-no-variant.json",
        "to_pilot",
        Refused("message 0: tasks[0] (attempt 7).resources: no variant"),
    ),
    // HDF5 (and IMM) inputs as beamflow writes them.
    ("h5_xpcs", "seed-raw.h5", "frames", Read("3 frames of 4x5")),
    ("h5_xpcs", "seed-raw.imm", "frames", Read("3 frames of 4x5")),
    ("h5_xpcs", "seed-qmap.h5", "qmap", Read("qmap 4x5: 19 valid pixels, 2 static and 1 dynamic bins")),
    ("h5_xpcs", "seed-metadata.h5", "frame_time", Read("frame time 0.002 s")),
    // One dynamic bin of 0xFFFFFFFF: the correlator sized its tables by
    // it and asked for 100 GB, which killed the process (and the pilot).
    (
        "h5_xpcs",
        "oom-qmap-bin-huge.h5",
        "qmap",
        Refused("/qmap/dynamic_roi_map: bin 4294967295 exceeds dynamic_num_pts (1)"),
    ),
    // A superblock whose driver information block claims 4 GiB: libhdf5
    // read (zeros past the end of the file) 4 GiB before checking it.
    (
        "h5_xpcs",
        "oom-driver-info-4gib.h5",
        "frames",
        Refused("cannot open as HDF5: damaged superblock: its driver information block at byte 27 runs past the end of the file (7127 bytes)"),
    ),
    // A qmap map whose layout message overstates its storage: the check
    // trusted it, and 17 TB were allocated for the map.
    (
        "h5_xpcs",
        "crash-storage-size-overstated.h5",
        "qmap",
        Refused("/qmap/mask: shape [4, 1099511627781] needs 17592186044496 bytes but its storage holds 14985: the file is damaged"),
    ),
    // A sparse IMM frame of a few events declaring 4 × 744751621 pixels,
    // read into a dense frame of that shape.
    (
        "h5_xpcs",
        "oom-imm-sparse-frame-huge.imm",
        "frames",
        Refused("frame 0 at byte 0: rows*cols = 4*744751621 is more than 67108864 pixels"),
    ),
    ("h5_ptycho", "seed-dataset.h5", "dataset", Read("4 patterns of 8x8 on a 12x12 object")),
    // Damaged complex types that libhdf5 1.10 converted out of bounds
    // (SIGSEGV in H5T__conv_struct_opt) or sized a conversion buffer by
    // (3 GB).
    (
        "h5_ptycho",
        "crash-compound-conversion.h5",
        "dataset",
        Refused("is not a complex {r, i} of two floats"),
    ),
    (
        "h5_ptycho",
        "oom-compound-conversion.h5",
        "dataset",
        Refused("truth/object: shape [12, 12] needs 618474923136 bytes but its storage holds 18688"),
    ),
    // A datatype of size 0: libhdf5 1.10 opened the dataset and divided
    // by zero (SIGFPE in H5D__fill_init) when reading it.
    (
        "h5_ptycho",
        "crash-datatype-size-0.h5",
        "dataset",
        Refused("data/intensities: shape [4, 8, 8]: its datatype has a size of 0 bytes"),
    ),
    ("h5_ptycho", "seed-result.h5", "probe", Read("probe of 1 modes of 8x8")),
    ("h5_hedm", "seed-stack.h5", "stack", Read("2 frames of 4x6")),
    ("h5_hedm", "seed-stack.h5", "image", Read("image of 24 pixels")),
    ("h5_hedm", "seed-peaks.h5", "peaks", Read("2 peaks")),
];

#[test]
fn seeds_are_read_and_crashers_refused_with_their_message() {
    for (target, file, reader, want) in EXPECT {
        let path = corpus(target).join(file);
        assert!(path.is_file(), "{} is missing", path.display());
        let report = run(target, &path);
        match (want, outcome(&report, reader, file)) {
            (Read(s), Ok(got)) => assert!(got.contains(s), "{file}: read as {got:?}, not {s:?}"),
            (Refused(s), Err(got)) => {
                assert!(got.contains(s), "{file}: refused with {got:?}, not {s:?}");
                if target.starts_with("h5_") {
                    assert!(got.contains("input-"), "{file}: names no file: {got}");
                }
            }
            (_, got) => panic!("{target}/{file} ({reader}): {got:?}"),
        }
    }
}

/// Rewrites the seeds made from beamflow's own types and writers:
/// `cargo test --release --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    seeds::write(&root().join("engine/fuzz/corpus"));
}

mod seeds {
    use std::path::Path;

    use beamflow::protocol::*;
    use beamflow::resources::Resources;
    use beamflow::site::TransferPolicy;
    use beamflow_kernels::ptycho::{self, Complex32, Field, History, Probe};
    use beamflow_kernels::xpcs::io::{Geometry, Metadata, QMapFile};
    use beamflow_kernels::xpcs::{imm, io as xio, QMap};
    use serde_json::json;

    pub fn write(dir: &Path) {
        for t in super::entry::TARGETS.map(|(t, _)| t) {
            std::fs::create_dir_all(dir.join(t)).unwrap();
        }
        let put = |target: &str, name: &str, text: String| {
            std::fs::write(dir.join(target).join(name), text).unwrap();
        };
        for (src, target, prefix) in [
            ("jobs", "flow", "seed-job-"),
            ("tests/flows/bad", "flow", "seed-bad-"),
            ("site-configs", "site", "seed-"),
        ] {
            for e in std::fs::read_dir(super::root().join(src)).unwrap() {
                let p = e.unwrap().path();
                let name = format!("{prefix}{}", p.file_name().unwrap().to_str().unwrap());
                std::fs::copy(&p, dir.join(target).join(name)).unwrap();
            }
        }
        let frame = |msgs: serde_json::Value| serde_json::to_string(&msgs).unwrap();
        let res = Resources {
            cpus: 8,
            gpus: 1,
            memory_mb: 16384,
            nodes: 1,
            ranks_per_node: 1,
        };
        let hello = FromPilot::Hello {
            protocol: PROTOCOL_VERSION,
            pilot_id: Some(3),
            info: PilotInfo {
                name: "pilot-3".into(),
                host: "nid001".into(),
                resources: res,
                gpu_ids: vec![0],
                targets: vec!["cpu".into(), "gpu".into()],
                walltime_end_us: Some(1_780_000_000_000_000),
                batch_job: Some("4242".into()),
                reservation: None,
                site: None,
                preemptable: false,
                prefetch: 1,
                version: "0.1.0".into(),
            },
            held: vec![11, 12],
        };
        put("protocol", "seed-hello.json", frame(json!([hello])));
        let result = TaskResult {
            attempt: 11,
            outcome: Outcome::Succeeded,
            outputs: json!({"exit_code": 0, "stdout": "ok\n"}),
            error: None,
            exit_code: Some(0),
            started_us: 1_770_000_000_000_000,
            finished_us: 1_770_000_001_500_000,
        };
        let batch = vec![
            FromPilot::Started {
                attempt: 12,
                at_us: 1_770_000_000_100_000,
            },
            FromPilot::Finished(result),
            FromPilot::Heartbeat,
            FromPilot::Returned { attempts: vec![13] },
            FromPilot::Draining {
                reason: "walltime ending".into(),
            },
            FromPilot::Bye {
                reason: "walltime reached".into(),
            },
        ];
        put("protocol", "seed-pilot-batch.json", frame(json!(batch)));
        let welcome = ToPilot::Welcome {
            pilot_id: 3,
            server_uid: String::new(),
            heartbeat_s: 2.0,
            transfer: TransferPolicy {
                allowed_roots: vec!["/data".into(), "~/scratch".into()],
                ..Default::default()
            },
        };
        put("protocol", "seed-welcome.json", frame(json!([welcome])));
        // Tasks as JSON: the frame a server of this version sends.
        let variant = |gpus: u32, nodes: u32, ranks: u32| {
            serde_json::to_value(Resources {
                gpus,
                nodes,
                ranks_per_node: ranks,
                ..res
            })
            .unwrap()
        };
        let task = |attempt: u64, action: &str, kernel: Option<&str>| {
            json!({
                "attempt": attempt,
                "run": 5,
                "flow": "xpcs",
                "step": "correlate",
                "action": action,
                "kernel": kernel,
                "params": {"raw": "/data/a.h5", "qmap": "/data/q.h5", "frames": [0, 100]},
                "run_dir": "/scratch/runs/5",
                "task_dir": format!("/scratch/runs/5/{attempt}"),
                "timeout_s": 600.0,
                "resources": {"variants": [variant(1, 1, 1), variant(0, 2, 2)]},
            })
        };
        let server = json!([
            {"t": "tasks", "tasks": [task(14, "kernel", Some("xpcs.multitau")), task(15, "shell", None)]},
            ToPilot::Cancel { attempts: vec![12] },
            ToPilot::Ack { attempts: vec![11] },
            ToPilot::Refused {
                reason: "declared lost".into(),
            },
        ]);
        let server = serde_json::to_string(&server).unwrap();
        assert_eq!(decode_to_pilot(&server).unwrap().len(), 4);
        put("protocol", "seed-server-batch.json", server);

        // XPCS: 3 frames of 4 × 5, as HDF5 and as IMM; a qmap; metadata.
        let x = dir.join("h5_xpcs");
        let (h, w) = (4, 5);
        let frames: Vec<u16> = (0..3 * h * w).map(|i| (i * 7 % 11) as u16).collect();
        xio::write_raw(&x.join("seed-raw.h5"), &frames, 3, h, w).unwrap();
        imm::write_imm(&x.join("seed-raw.imm"), &frames, h, w, true, 0.002).unwrap();
        let px = h * w;
        let qmap = QMap {
            width: w,
            height: h,
            mask: (0..px).map(|i| u8::from(i != 0)).collect(),
            sqmap: (0..px).map(|i| 1 + (i % 2) as u32).collect(),
            dqmap: vec![1; px],
            sq_values: vec![0.001, 0.002],
            dq_values: vec![0.0015],
        };
        let geometry = Geometry {
            beam_center_x: 2.0,
            beam_center_y: 1.5,
            pixel_size: 75e-6,
            detector_distance: 5.0,
            energy_kev: 10.0,
        };
        let q = QMapFile {
            qmap,
            geometry: geometry.clone(),
            static_centres: vec![0.001, 0.002],
            static_mapping: vec![0, 1],
            dynamic_centres: vec![0.0015],
            dynamic_mapping: vec![0],
        };
        xio::write_qmap(&x.join("seed-qmap.h5"), &q).unwrap();
        let meta = Metadata {
            frame_time: 0.002,
            count_time: 0.001,
            geometry,
            detector: "fuzz".into(),
        };
        xio::write_metadata(&x.join("seed-metadata.h5"), &meta).unwrap();

        // Ptychography: 4 patterns of 8 × 8 on a 12 × 12 object; a result.
        let p = dir.join("h5_ptycho");
        let n = 8;
        let probe = Probe {
            n,
            modes: 1,
            data: (0..n * n)
                .map(|i| Complex32::new(1.0 + i as f32 / 64.0, 0.5))
                .collect(),
        };
        let object = Field::filled(12, 12, Complex32::new(1.0, 0.0));
        let corners = [(0usize, 0usize), (0, 4), (4, 0), (4, 4)];
        let centres: Vec<[f64; 2]> = corners
            .iter()
            .map(|&(r, c)| [r as f64 - 2.0, c as f64 - 2.0])
            .collect();
        let intensities: Vec<f32> = (0..4 * n * n).map(|i| (i % 13) as f32).collect();
        let mask = vec![true; 144];
        ptycho::io::write_dataset(
            &p.join("seed-dataset.h5"),
            &intensities,
            n,
            &centres,
            &corners,
            Some((&object, &probe, mask.as_slice())),
            Some(&probe),
            &[("source", "fuzz seed".into())],
        )
        .unwrap();
        let history = History {
            loss: vec![1.0, 0.5],
            error: vec![],
            seconds: vec![0.1, 0.2],
        };
        ptycho::io::write_result(
            &p.join("seed-result.h5"),
            &object,
            &probe,
            &history,
            None,
            &[],
        )
        .unwrap();

        // HEDM: 2 frames of 4 × 6; a table of 2 peaks.
        let hd = dir.join("h5_hedm");
        let stack: Vec<Vec<u16>> = (0..2)
            .map(|f| (0..24).map(|i| (f * 24 + i) as u16).collect())
            .collect();
        beamflow_kernels::hedm::io::write_stack(&hd.join("seed-stack.h5"), &stack, 4, 6).unwrap();
        let cols = &beamflow_kernels::hedm::COLUMNS;
        let flat: Vec<f64> = (0..2 * cols.len()).map(|i| i as f64).collect();
        beamflow_kernels::hedm::io::write_table_h5(&hd.join("seed-peaks.h5"), cols, flat, &[])
            .unwrap();
    }
}
