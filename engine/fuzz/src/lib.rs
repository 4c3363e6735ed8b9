//! The entry points the fuzz targets drive. `tests/fuzz_corpus.rs`
//! includes this file, so every committed corpus file goes through exactly
//! the code the fuzzer ran.
//!
//! Each entry point takes the bytes of one input, runs it through the
//! readers a user's file meets (and what the engine does next with what
//! they return), and reports each reader's outcome: `Ok` with a short
//! description of what was read, or `Err` with the reader's message. A
//! panic anywhere is a bug; so is an allocation sized by the input rather
//! than by what it holds, or a loop that the input can make endless.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use beamflow::flow::FlowSpec;
use beamflow::protocol::{FromPilot, ToPilot};
use beamflow::resources::capacity::Capacity;
use beamflow::resources::{ResourceRequest, Resources};
use beamflow::site::SiteConfig;

/// What each reader made of one input, by reader.
pub type Report = Vec<(&'static str, Result<String, String>)>;

/// An entry point: the bytes of one input to what each reader made of it.
pub type Entry = fn(&[u8]) -> Report;

/// The targets, by name: the folder of their corpus and their entry point.
pub const TARGETS: [(&str, Entry); 6] = [
    ("flow", flow),
    ("site", site),
    ("protocol", protocol),
    ("h5_xpcs", h5_xpcs),
    ("h5_ptycho", h5_ptycho),
    ("h5_hedm", h5_hedm),
];

/// A site with limits, so that flows are also checked against targets.
const SITE: &str = r#"name = "fuzz"
scheduler = "slurm"
[vars]
data = "/data"
[targets.cpu]
walltime = "1h"
cpus_per_node = 64
memory_per_node = "256GB"
[targets.gpu]
walltime = "1h"
cpus_per_node = 32
gpus_per_node = 4
pilot_per = "job"
nodes = 4
[targets.edge]
manual = true
cpus_per_node = 8
"#;

fn utf8(data: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(data).map_err(|e| format!("not UTF-8: {e}"))
}

/// A flow file: validated alone and against [`SITE`]; a valid flow goes
/// through the store's JSON and its durations become `Duration`s, as the
/// server makes them.
pub fn flow(data: &[u8]) -> Report {
    let src = match utf8(data) {
        Ok(s) => s,
        Err(e) => return vec![("flow", Err(e))],
    };
    let site = SiteConfig::parse(SITE, "fuzz-site.toml").expect("the fuzz site is valid");
    let mut out = Vec::new();
    for (label, site) in [("flow", None), ("flow@site", Some(&site))] {
        let r = beamflow::flow::parse(src, "fuzz.toml", site)
            .map(|spec| {
                use_flow(&spec);
                format!(
                    "{} v{}: {} steps",
                    spec.name,
                    spec.version,
                    spec.steps.len()
                )
            })
            .map_err(|e| e.to_string());
        out.push((label, r));
    }
    out
}

fn use_flow(spec: &FlowSpec) {
    let json = serde_json::to_string(spec).expect("a flow serialises");
    let back: FlowSpec = serde_json::from_str(&json).expect("a stored flow reads back");
    assert_eq!(&back, spec, "the store changes the flow");
    let _ = beamflow::flow::coerce_inputs(spec, &serde_json::Value::Null);
    let secs = Duration::from_secs_f64;
    let mut all = Vec::new();
    for s in &spec.steps {
        all.extend(s.timeout_s);
        all.extend((1..=s.retry.count.min(40)).map(|n| s.retry.delay_s(n)));
        let _ = s.output_keys();
    }
    all.extend(spec.deadline_s);
    for t in &spec.triggers {
        all.extend(
            [Some(t.settle_s), t.flush_after_s, t.poll_s]
                .into_iter()
                .flatten(),
        );
    }
    let _: Vec<Duration> = all.into_iter().map(secs).collect();
}

/// A site config; each of its targets resolved, its job script rendered,
/// and a small flow validated against it.
pub fn site(data: &[u8]) -> Report {
    let src = match utf8(data) {
        Ok(s) => s,
        Err(e) => return vec![("site", Err(e))],
    };
    let site = match SiteConfig::parse(src, "fuzz-site.toml") {
        Ok(s) => s,
        Err(e) => return vec![("site", Err(e.to_string()))],
    };
    let mut out = vec![(
        "site",
        Ok(format!(
            "site {} ({} targets)",
            site.name,
            site.targets.len()
        )),
    )];
    let _ = site.template_vars();
    let _ = site.transfer.roots();
    let names: Vec<String> = if site.targets.is_empty() {
        beamflow::site::STANDARD_TARGETS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        site.targets.keys().cloned().collect()
    };
    for name in names {
        let t = match site.effective(&name) {
            Ok(t) => t,
            Err(e) => {
                out.push(("target", Err(e.to_string())));
                continue;
            }
        };
        let pilot = beamflow::batch::script::PilotCommand::for_target(
            &t,
            "/opt/beamflow/bin/beamflow",
            "http://127.0.0.1:8000",
            PathBuf::from("/home/u/.beamflow/token"),
            vec![name.clone()],
            600,
        );
        let job = beamflow::batch::script::JobRequest {
            name: format!("beamflow-{name}"),
            nodes: t.nodes,
            walltime_s: t.walltime_s,
            reservation: None,
            dir: PathBuf::from("/tmp/beamflow-fuzz"),
            pilot,
            target: t,
        };
        let script = job
            .render()
            .map(|s| format!("script of {} lines", s.lines().count()))
            .map_err(|e| e.to_string());
        out.push(("script", script));
        let flow = format!(
            "name = \"f\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"kernel\"\nkernel = \"noop\"\non = \"{name}\"\nresources = {{ cpus = 1, memory = \"256MB\" }}\n"
        );
        let r = beamflow::flow::parse(&flow, "f.toml", Some(&site))
            .map(|f| format!("flow {} fits", f.name))
            .map_err(|e| e.to_string());
        out.push(("flow", r));
    }
    out
}

/// One WebSocket text frame, decoded as the server decodes a pilot's and
/// as a pilot decodes the server's; what decodes encodes back to a frame
/// that decodes the same, and its numbers become `Duration`s and capacity
/// as the pilot and server use them.
pub fn protocol(data: &[u8]) -> Report {
    let text = match utf8(data) {
        Ok(s) => s,
        Err(e) => return vec![("frame", Err(e))],
    };
    let from = beamflow::protocol::decode_from_pilot(text).map(|msgs| {
        let again = serde_json::to_string(&msgs).expect("a decoded frame encodes");
        let back = beamflow::protocol::decode_from_pilot(&again)
            .unwrap_or_else(|e| panic!("a re-encoded frame is refused: {e}"));
        assert_eq!(json(&back), json(&msgs), "a frame changes when re-encoded");
        for m in &msgs {
            if let FromPilot::Hello { info, .. } = m {
                use_capacity(info.resources, &ResourceRequest::default());
            }
        }
        format!("{} messages from a pilot", msgs.len())
    });
    let to = beamflow::protocol::decode_to_pilot(text).map(|msgs| {
        let again = serde_json::to_string(&msgs).expect("a decoded frame encodes");
        let back = beamflow::protocol::decode_to_pilot(&again)
            .unwrap_or_else(|e| panic!("a re-encoded frame is refused: {e}"));
        assert_eq!(json(&back), json(&msgs), "a frame changes when re-encoded");
        let node = Resources {
            cpus: 8,
            gpus: 2,
            memory_mb: 65536,
            nodes: 4,
            ranks_per_node: 1,
        };
        for m in &msgs {
            match m {
                ToPilot::Welcome { heartbeat_s, .. } => {
                    let _ = Duration::from_secs_f64(heartbeat_s.max(0.1));
                }
                ToPilot::Tasks { tasks } => {
                    for t in tasks {
                        let _ = t.timeout_s.map(Duration::from_secs_f64);
                        use_capacity(node, &t.resources);
                    }
                }
                _ => {}
            }
        }
        format!("{} messages to a pilot", msgs.len())
    });
    vec![("from_pilot", from), ("to_pilot", to)]
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("messages serialise")
}

fn use_capacity(per_node: Resources, req: &ResourceRequest) {
    let mut cap = Capacity::new(per_node);
    let _ = cap.could_ever_run(req);
    if let Some(c) = cap.place(req) {
        cap.take(&c);
        let _ = cap.place(req);
        cap.give(&c);
    }
}

/// Writes `data` to a file of its own (the readers take paths), runs `f`
/// on it and removes it.
fn with_file<T>(data: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("beamflow-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("the temporary directory is writable");
        d
    });
    let path = dir.join(format!("input-{}.h5", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, data).expect("the temporary directory is writable");
    let out = f(&path);
    let _ = std::fs::remove_file(&path);
    out
}

/// The XPCS inputs: raw frames (HDF5 or IMM, the first two frames read),
/// the qmap, and the metadata's frame time.
pub fn h5_xpcs(data: &[u8]) -> Report {
    use beamflow_kernels::xpcs::io::{self, Frames};
    with_file(data, |p| {
        let frames = io::open_frames(p).and_then(|src| {
            let (n, h, w) = src.shape();
            let count = n.min(2);
            let len = match src.read_frames(0, count)? {
                Frames::U8(v) => v.len(),
                Frames::U16(v) => v.len(),
                Frames::U32(v) => v.len(),
            };
            let want = count.checked_mul(h).and_then(|x| x.checked_mul(w));
            assert_eq!(Some(len), want, "frames of {h}x{w} read as {len} values");
            Ok(format!("{n} frames of {h}x{w}"))
        });
        let qmap = io::read_qmap(p).map(|q| {
            let valid = q.valid_pixels().len();
            format!(
                "qmap {}x{}: {valid} valid pixels, {} static and {} dynamic bins",
                q.height,
                q.width,
                q.n_sq(),
                q.n_dq()
            )
        });
        let time = io::read_frame_time(p).map(|t| format!("frame time {t} s"));
        vec![("frames", frames), ("qmap", qmap), ("frame_time", time)]
    })
}

/// The ptychography inputs: the self-describing dataset, the same file
/// as a Ptychodus pair (diffraction and product in one), and a probe file.
pub fn h5_ptycho(data: &[u8]) -> Report {
    use beamflow_kernels::ptycho::io;
    with_file(data, |p| {
        let describe = |l: io::Loaded| {
            for probe in [&l.init_probe, &l.truth_probe].into_iter().flatten() {
                assert_eq!(probe.mode(0).len(), probe.n * probe.n);
            }
            let d = &l.data;
            format!(
                "{} patterns of {}x{} on a {}x{} object",
                d.corners.len(),
                d.n,
                d.n,
                d.shape.0,
                d.shape.1
            )
        };
        let dataset = io::read(p, None).map(describe);
        let pair = io::read(p, Some(p)).map(describe);
        let probe = io::read_probe_file(p).map(|probe| {
            assert_eq!(probe.data.len(), probe.modes * probe.n * probe.n);
            format!("probe of {} modes of {}x{}", probe.modes, probe.n, probe.n)
        });
        vec![("dataset", dataset), ("ptychodus", pair), ("probe", probe)]
    })
}

/// The HEDM inputs: the frame stack (first frame read), a dark or flood
/// image (the mean of its frames), and a peak table.
pub fn h5_hedm(data: &[u8]) -> Report {
    use beamflow_kernels::hedm::{config, io};
    with_file(data, |p| {
        let stack = io::Stack::open(p, None).and_then(|s| {
            if s.frames > 0 {
                let f = s.frame(0)?;
                assert_eq!(f.len(), s.rows * s.cols);
            }
            Ok(format!("{} frames of {}x{}", s.frames, s.rows, s.cols))
        });
        let image = config::image(p, "dark").map(|v| format!("image of {} pixels", v.len()));
        let peaks = io::read_peaks_h5(p).map(|rows| format!("{} peaks", rows.len()));
        vec![("stack", stack), ("image", image), ("peaks", peaks)]
    })
}
