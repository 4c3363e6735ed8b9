//! Runs the kernel cases: warm-up, then timed repeats; the median and
//! quartiles of the time, the kernel's useful work rate, and where it sits
//! under the machine's roofline.
//!
//! The JSON document (`schema: "beamflow.bench/1"`) is stable: fields are
//! only ever added. `results[]` has one object per kernel × backend, with
//! `work` units of `unit` per repeat, `flops` and `bytes` per repeat as each
//! case counts them (see `cases`), the times in seconds, and
//! `roofline_fraction` = achieved FLOP/s ÷ min(peak, bandwidth × intensity).

use std::time::Instant;

use comfy_table::{Cell, CellAlignment, Table};
use serde::Serialize;

use super::machine::Machine;
use crate::report::flow::Spread;
use crate::util::fmt_secs;

pub const SCHEMA: &str = "beamflow.bench/1";

/// The standard sizes: small finishes in about a minute on a laptop, large
/// is what a facility node is sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    /// The value of three that stands for this size.
    pub fn pick<T>(self, small: T, medium: T, large: T) -> T {
        match self {
            Size::Small => small,
            Size::Medium => medium,
            Size::Large => large,
        }
    }
}

/// One kernel on one backend, ready to run.
pub struct Case {
    /// `xpcs.multitau`, `ptycho.rpie`, …
    pub kernel: String,
    /// `cpu`, `torch:cpu`, `ort:cpu`, `torch:cuda:0`, `engine`.
    pub backend: String,
    /// The problem, in words: "512² px × 2000 frames".
    pub problem: String,
    /// What `work` counts: "pixel-frames", "positions", "peaks", "samples", "tasks".
    pub unit: String,
    /// Units of work per repeat.
    pub work: f64,
    /// Floating-point operations per repeat (0 when not meaningful).
    pub flops: f64,
    /// Bytes moved to and from memory per repeat, as the case counts them.
    pub bytes: f64,
    /// One repeat. A case may measure its own time (the engine's burst does):
    /// `Some(seconds)` replaces the wall time of the call.
    pub run: Box<dyn FnMut() -> anyhow::Result<Option<f64>>>,
}

/// A case measured.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub kernel: String,
    pub backend: String,
    pub problem: String,
    pub unit: String,
    pub work: f64,
    pub flops: f64,
    pub bytes: f64,
    pub repeats: usize,
    pub seconds: Spread,
    /// Units of work per second at the median time.
    pub rate: f64,
    pub gflops: f64,
    pub gbs: f64,
    /// FLOPs per byte; 0 when either is not counted.
    pub intensity: f64,
    /// min(peak, bandwidth × intensity), GFLOP/s.
    pub attainable_gflops: f64,
    /// Achieved ÷ attainable; `None` when the case counts no FLOPs.
    pub roofline_fraction: Option<f64>,
}

/// A case that could not run here, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub kernel: String,
    pub backend: String,
    pub why: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub size: Size,
    pub warmup: usize,
    pub repeats: usize,
}

/// The whole result: what `--json` prints and `bench compare` reads.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub created: String,
    pub config: Config,
    pub machine: Machine,
    pub results: Vec<Measured>,
    pub skipped: Vec<Skipped>,
}

/// Times one case: `warmup` untimed calls, then `repeats` timed ones.
pub fn measure(
    mut c: Case,
    m: &Machine,
    warmup: usize,
    repeats: usize,
) -> anyhow::Result<Measured> {
    for _ in 0..warmup {
        (c.run)()?;
    }
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let own = (c.run)()?;
        times.push(own.unwrap_or_else(|| t.elapsed().as_secs_f64()));
    }
    Ok(place(c, m, Spread::of(&times), times.len()))
}

/// Rates and the roofline for a case that took `s`.
fn place(c: Case, m: &Machine, s: Spread, repeats: usize) -> Measured {
    let t = s.median.max(1e-12);
    let gflops = c.flops / t / 1e9;
    let gbs = c.bytes / t / 1e9;
    let intensity = if c.flops > 0.0 && c.bytes > 0.0 {
        c.flops / c.bytes
    } else {
        0.0
    };
    let attainable = if intensity > 0.0 {
        m.sgemm_gflops.min(m.triad_gbs * intensity)
    } else {
        m.sgemm_gflops
    };
    Measured {
        rate: c.work / t,
        roofline_fraction: (c.flops > 0.0).then(|| gflops / attainable),
        attainable_gflops: attainable,
        gflops,
        gbs,
        intensity,
        repeats,
        seconds: s,
        kernel: c.kernel,
        backend: c.backend,
        problem: c.problem,
        unit: c.unit,
        work: c.work,
        flops: c.flops,
        bytes: c.bytes,
    }
}

/// A rate with a unit prefix: 3.2 M pixel-frames/s.
pub fn rate(x: f64, unit: &str) -> String {
    let (v, p) = if x >= 1e9 {
        (x / 1e9, " G")
    } else if x >= 1e6 {
        (x / 1e6, " M")
    } else if x >= 1e3 {
        (x / 1e3, " k")
    } else {
        (x, " ")
    };
    format!("{v:.3}{p}{unit}/s")
}

pub fn table(r: &Report) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "kernel",
        "backend",
        "problem",
        "median",
        "q1 – q3",
        "rate",
        "GFLOP/s",
        "GB/s",
        "FLOP/B",
        "of roof",
    ]);
    for x in &r.results {
        let num = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        let pos = |v: f64, d: usize| {
            if v > 0.0 {
                format!("{v:.d$}")
            } else {
                "-".into()
            }
        };
        t.add_row(vec![
            Cell::new(&x.kernel),
            Cell::new(&x.backend),
            Cell::new(&x.problem),
            num(fmt_secs(x.seconds.median)),
            num(format!(
                "{} – {}",
                fmt_secs(x.seconds.q1),
                fmt_secs(x.seconds.q3)
            )),
            num(rate(x.rate, &x.unit)),
            num(pos(x.gflops, 2)),
            num(pos(x.gbs, 2)),
            num(pos(x.intensity, 2)),
            num(x
                .roofline_fraction
                .map(|f| format!("{:.1} %", 100.0 * f))
                .unwrap_or_else(|| "-".into())),
        ]);
    }
    t
}

/// The whole suite: the machine, then every case; the JSON and the roofline
/// PNG go to `out` when given. Progress goes to stderr unless `quiet`.
pub fn run(
    size: Size,
    warmup: usize,
    repeats: usize,
    out: Option<&std::path::Path>,
    quiet: bool,
) -> anyhow::Result<Report> {
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    say(format!("bench: measuring the machine ({size:?})"));
    // Before any kernel: the two-time correlation pins OpenBLAS to one
    // thread for the rest of the process, and SGEMM must have them all.
    let machine = super::machine::measure(size);
    say(format!(
        "bench: {} ({} threads): {:.1} GB/s triad, {:.0} GFLOP/s SGEMM ({}, OpenBLAS {}); GPUs: {}",
        machine.cpu_model,
        machine.threads,
        machine.triad_gbs,
        machine.sgemm_gflops,
        machine.sgemm_by,
        machine.blas_core,
        if machine.gpus.is_empty() {
            machine.gpu_note.clone().unwrap_or_default()
        } else {
            machine
                .gpus
                .iter()
                .map(|g| g.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    let tmp = tempfile::tempdir()?;
    say("bench: preparing the inputs".into());
    let (cases, skipped) = super::cases::all(size, tmp.path())?;
    for s in &skipped {
        say(format!(
            "bench: skipping {} on {}: {}",
            s.kernel, s.backend, s.why
        ));
    }
    let mut results = Vec::with_capacity(cases.len());
    for c in cases {
        say(format!(
            "bench: {} on {} ({})",
            c.kernel, c.backend, c.problem
        ));
        let (k, b) = (c.kernel.clone(), c.backend.clone());
        let m =
            measure(c, &machine, warmup, repeats).map_err(|e| e.context(format!("{k} on {b}")))?;
        say(format!(
            "bench:   median {} → {}",
            fmt_secs(m.seconds.median),
            rate(m.rate, &m.unit)
        ));
        results.push(m);
    }
    let report = Report {
        schema: SCHEMA,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        config: Config {
            size,
            warmup,
            repeats,
        },
        machine,
        results,
        skipped,
    };
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        let json = dir.join("bench.json");
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", json.display()))?;
        let png = dir.join("roofline.png");
        super::roofline::plot(&report, &png)?;
        // Flat, for a flow step's outputs (jobs/bench.toml).
        let summary = dir.join("summary.json");
        let rates: serde_json::Map<String, serde_json::Value> = report
            .results
            .iter()
            .map(|m| {
                (
                    format!("{} {}", m.kernel, m.backend),
                    serde_json::json!(m.rate),
                )
            })
            .collect();
        let flat = serde_json::json!({
            "json": json,
            "roofline": png,
            "host": report.machine.host,
            "cpu_model": report.machine.cpu_model,
            "threads": report.machine.threads,
            "gpus": report.machine.gpus.len(),
            "triad_gbs": report.machine.triad_gbs,
            "sgemm_gflops": report.machine.sgemm_gflops,
            "git": report.machine.git,
            "rates": rates,
        });
        std::fs::write(&summary, serde_json::to_string_pretty(&flat)?)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", summary.display()))?;
        say(format!(
            "bench: wrote {}, roofline.png and summary.json",
            json.display()
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            host: "h".into(),
            cpu_model: "c".into(),
            cpus: 2,
            threads: 2,
            memory_mb: 1,
            os: "linux".into(),
            arch: "x86_64".into(),
            triad_gbs: 10.0,
            sgemm_gflops: 100.0,
            sgemm_by: "blas".into(),
            blas_core: "SkylakeX".into(),
            triad_n: 1,
            sgemm_n: 1,
            gpus: vec![],
            gpu_note: None,
            torch_devices: vec!["cpu".into()],
            beamflow: "0".into(),
            git: "g".into(),
        }
    }

    fn case(flops: f64, bytes: f64, seconds: f64) -> Case {
        Case {
            kernel: "k".into(),
            backend: "cpu".into(),
            problem: "p".into(),
            unit: "things".into(),
            work: 1000.0,
            flops,
            bytes,
            run: Box::new(move || Ok(Some(seconds))),
        }
    }

    #[test]
    fn a_case_is_placed_under_the_right_roof() {
        let m = machine();
        // 1 FLOP/B: bandwidth-bound, the roof is 10 GFLOP/s; 5 GFLOP/s is half.
        let x = measure(case(5e9, 5e9, 1.0), &m, 1, 3).unwrap();
        assert_eq!(x.rate, 1000.0);
        assert_eq!(x.intensity, 1.0);
        assert_eq!(x.attainable_gflops, 10.0);
        assert_eq!(x.roofline_fraction, Some(0.5));
        // 100 FLOP/B: compute-bound under the 100 GFLOP/s peak.
        let y = measure(case(50e9, 0.5e9, 1.0), &m, 0, 1).unwrap();
        assert_eq!(y.attainable_gflops, 100.0);
        assert_eq!(y.roofline_fraction, Some(0.5));
        // No FLOPs counted: no place on the roofline, the rate still counts.
        let z = measure(case(0.0, 0.0, 0.5), &m, 0, 2).unwrap();
        assert_eq!(z.roofline_fraction, None);
        assert_eq!(z.rate, 2000.0);
        assert_eq!(rate(3.2e6, "px"), "3.200 Mpx/s");
        assert_eq!(rate(12.0, "runs"), "12.000 runs/s");
    }
}
