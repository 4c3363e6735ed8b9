//! `beamflow report --flow NAME`: where many runs of a flow spent their
//! time — per step the median and quartiles of the action's runtime and of
//! the engine's overhead (Table 1 of the Patterns paper, over runs), the
//! distribution of step runtimes as box plots (its Figure 6) and the number
//! of runs in flight over time (its Figure 5), as PNGs.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::api::{AttemptRow, RunDetail, RunRow};
use crate::report::{timing, RunTiming};

/// Median and quartiles of a sample.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Spread {
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Quartiles by linear interpolation between order statistics.
    pub fn of(v: &[f64]) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let x = p * (s.len() - 1) as f64;
            let (i, f) = (x.floor() as usize, x.fract());
            s[i] + f * (s[(i + 1).min(s.len() - 1)] - s[i])
        };
        Spread {
            q1: q(0.25),
            median: q(0.5),
            q3: q(0.75),
            min: s[0],
            max: s[s.len() - 1],
        }
    }
}

/// One step over the runs that reached it.
#[derive(Clone, Debug, Serialize)]
pub struct StepSummary {
    pub step: String,
    pub category: String,
    pub runs: usize,
    pub runtime_s: Spread,
    /// The engine's overhead, apart from queue wait and back-off
    /// ([`super`]'s split).
    pub overhead_s: Spread,
    pub queued_s: Spread,
    pub backoff_s: Spread,
    /// Every run's runtime, for the box plot.
    #[serde(skip)]
    pub runtimes: Vec<f64>,
}

/// A flow over many runs.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub flow: String,
    pub runs: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub steps: Vec<StepSummary>,
    pub total_s: Spread,
    pub queued_s: Spread,
    pub backoff_s: Spread,
    pub overhead_s: Spread,
    pub overhead_pct: Spread,
    /// Most runs in flight at once.
    pub max_concurrent: usize,
    /// (created, finished) of every finished run, µs since the epoch.
    #[serde(skip)]
    pub spans: Vec<(i64, i64)>,
}

/// One step's times over the runs, seconds.
#[derive(Default)]
struct Samples {
    runtime: Vec<f64>,
    overhead: Vec<f64>,
    queued: Vec<f64>,
    backoff: Vec<f64>,
}

/// The report over `runs` (with their `attempts`) created at or after
/// `since_us`; only finished runs count.
pub fn summarise(
    flow: &str,
    runs: Vec<RunRow>,
    attempts: Vec<AttemptRow>,
    since_us: i64,
) -> FlowReport {
    let mut by_run: BTreeMap<u64, Vec<AttemptRow>> = BTreeMap::new();
    for a in attempts {
        by_run.entry(a.run_id).or_default().push(a);
    }
    let finished: Vec<RunRow> = runs
        .into_iter()
        .filter(|r| r.created_us >= since_us && r.finished_us.is_some())
        .collect();
    let timings: Vec<RunTiming> = finished
        .iter()
        .map(|r| {
            timing(&RunDetail {
                run: r.clone(),
                attempts: by_run.remove(&r.id).unwrap_or_default(),
                events: Vec::new(),
            })
        })
        .collect();
    // Steps in the order the runs have them.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut per: BTreeMap<String, Samples> = BTreeMap::new();
    for t in timings.iter().filter(|t| t.state == "succeeded") {
        for s in &t.steps {
            if s.state != "succeeded" {
                continue;
            }
            if !order.iter().any(|(n, _)| n == &s.step) {
                order.push((s.step.clone(), s.category.clone()));
            }
            let e = per.entry(s.step.clone()).or_default();
            e.runtime.push(s.action_s);
            e.overhead.push(s.overhead_s);
            e.queued.push(s.queued_s);
            e.backoff.push(s.backoff_s);
        }
    }
    let steps = order
        .into_iter()
        .map(|(step, category)| {
            let x = per.remove(&step).unwrap_or_default();
            StepSummary {
                runs: x.runtime.len(),
                runtime_s: Spread::of(&x.runtime),
                overhead_s: Spread::of(&x.overhead),
                queued_s: Spread::of(&x.queued),
                backoff_s: Spread::of(&x.backoff),
                runtimes: x.runtime,
                step,
                category,
            }
        })
        .collect();
    let ok: Vec<&RunTiming> = timings.iter().filter(|t| t.state == "succeeded").collect();
    let col = |f: fn(&RunTiming) -> f64| ok.iter().map(|t| f(t)).collect::<Vec<f64>>();
    let spans: Vec<(i64, i64)> = finished
        .iter()
        .filter_map(|r| Some((r.created_us, r.finished_us?)))
        .collect();
    FlowReport {
        flow: flow.to_string(),
        runs: finished.len(),
        succeeded: ok.len(),
        failed: finished.iter().filter(|r| r.state == "failed").count(),
        steps,
        total_s: Spread::of(&col(|t| t.total_s)),
        queued_s: Spread::of(&col(|t| t.queued_s)),
        backoff_s: Spread::of(&col(|t| t.backoff_s)),
        overhead_s: Spread::of(&col(|t| t.overhead_s)),
        overhead_pct: Spread::of(&col(|t| t.overhead_pct)),
        max_concurrent: concurrency(&spans).iter().map(|p| p.1).max().unwrap_or(0),
        spans,
    }
}

/// Runs in flight after each start or end: (time µs, count).
pub fn concurrency(spans: &[(i64, i64)]) -> Vec<(i64, usize)> {
    // A run takes at least a microsecond: one that ends as it starts must
    // not end before it began.
    let mut ev: Vec<(i64, i32)> = spans
        .iter()
        .flat_map(|&(a, b)| [(a, 1), (b.max(a + 1), -1)])
        .collect();
    // Ends before starts at the same instant: a run handing over to the
    // next is not two at once.
    ev.sort();
    let mut n = 0i32;
    ev.into_iter()
        .map(|(t, d)| {
            n += d;
            (t, n.max(0) as usize)
        })
        .collect()
}

/// Columns of the runs-in-flight plot.
const BINS: usize = 800;

/// The most runs in flight in each of `bins` equal stretches of the time
/// `steps` (from [`concurrency`]) cover.
fn column_peaks(steps: &[(i64, usize)], bins: usize) -> Vec<usize> {
    let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
        return vec![];
    };
    let span = (last.0 - first.0).max(1) as f64;
    let col = |t: i64| (((t - first.0) as f64 / span * bins as f64) as usize).min(bins - 1);
    let mut peaks = vec![0usize; bins];
    let mut now = 0;
    let mut at = 0;
    for &(t, n) in steps {
        let c = col(t);
        // Until this event the count held at `now`.
        for p in &mut peaks[at..c] {
            *p = (*p).max(now);
        }
        peaks[c] = peaks[c].max(now).max(n);
        now = n;
        at = c;
    }
    peaks
}

fn fail(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: cannot draw: {e}", path.display())
}

/// Box plots of each step's runtime over the runs (log scale: steps span
/// milliseconds to minutes).
pub fn boxplots(r: &FlowReport, path: &Path) -> anyhow::Result<()> {
    beamflow_kernels::figure::font().map_err(|e| anyhow::anyhow!(e))?;
    // The first step on top.
    let steps: Vec<&StepSummary> = r
        .steps
        .iter()
        .rev()
        .filter(|s| !s.runtimes.is_empty())
        .collect();
    anyhow::ensure!(
        !steps.is_empty(),
        "flow {}: no finished step to plot",
        r.flow
    );
    let lo = steps
        .iter()
        .flat_map(|s| s.runtimes.iter().copied())
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    // Runtimes of 0 (below the clock's µs) sit at the axis' left end.
    let lo = if lo.is_finite() { lo } else { 1e-6 };
    let hi = steps
        .iter()
        .flat_map(|s| s.runtimes.iter().copied())
        .fold(lo * 10.0, f64::max);
    let names: Vec<String> = steps.iter().map(|s| s.step.clone()).collect();
    let root = BitMapBackend::new(path, (900, 120 + 60 * steps.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: step runtimes over {} runs", r.flow, r.succeeded),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(140)
        .build_cartesian_2d(
            ((lo / 2.0) as f32..(hi * 2.0) as f32).log_scale(),
            names.as_slice().into_segmented(),
        )
        .map_err(|e| fail(path, e))?;
    chart
        .configure_mesh()
        .x_desc("runtime, s")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(n) | SegmentValue::Exact(n) => n.to_string(),
            SegmentValue::Last => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| fail(path, e))?;
    chart
        .draw_series(steps.iter().zip(&names).map(|(s, n)| {
            let q = Spread::of(&s.runtimes);
            let quart = Quartiles::new(&[q.min.max(lo / 2.0), q.q1, q.median, q.q3, q.max]);
            Boxplot::new_horizontal(SegmentValue::CenterOf(n), &quart)
                .width(24)
                .whisker_width(0.5)
                .style(BLUE)
        }))
        .map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))?;
    Ok(())
}

/// Runs in flight over time, from the first run's creation.
pub fn concurrency_plot(r: &FlowReport, path: &Path) -> anyhow::Result<()> {
    beamflow_kernels::figure::font().map_err(|e| anyhow::anyhow!(e))?;
    let steps = concurrency(&r.spans);
    anyhow::ensure!(
        !steps.is_empty(),
        "flow {}: no finished run to plot",
        r.flow
    );
    let t0 = steps[0].0;
    let xs = |t: i64| (t - t0) as f64 / 1e6;
    let t_end = xs(steps[steps.len() - 1].0).max(1e-3);
    let top = r.max_concurrent.max(1) as f64;
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: runs in flight", r.flow), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_end * 1.02, 0.0..top * 1.1 + 0.5)
        .map_err(|e| fail(path, e))?;
    chart
        .configure_mesh()
        .x_desc("time since the first run, s")
        .y_desc("runs")
        .y_labels(r.max_concurrent.clamp(1, 10) + 2)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| fail(path, e))?;
    // The most runs in flight within each of the plot's columns, so that
    // a run shorter than a column still shows.
    let peaks = column_peaks(&steps, BINS);
    let width = t_end / BINS as f64;
    let mut pts = Vec::with_capacity(2 * BINS);
    for (i, n) in peaks.iter().enumerate() {
        pts.push((i as f64 * width, *n as f64));
        pts.push(((i + 1) as f64 * width, *n as f64));
    }
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_and_concurrency() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(
            (s.q1, s.median, s.q3, s.min, s.max),
            (2.0, 3.0, 4.0, 1.0, 5.0)
        );
        let s = Spread::of(&[1.0, 2.0]);
        assert_eq!(s.median, 1.5);
        // Runs [0,10), [5,15), [10,20): two at once at most; the hand-over
        // at 10 is not three.
        let c = concurrency(&[(0, 10), (5, 15), (10, 20)]);
        assert_eq!(c.iter().map(|p| p.1).max(), Some(2));
        assert_eq!(c.last(), Some(&(20, 0)));
        // A run that ends as it starts is one in flight for an instant, not
        // one that never ends.
        let c = concurrency(&[(0, 100), (50, 50)]);
        assert_eq!(c.iter().map(|p| p.1).max(), Some(2));
        assert_eq!(c.last().unwrap().1, 0);
        // A run far shorter than a column of the plot still shows in it.
        let c = concurrency(&[(0, 1_000_000), (500_000, 500_010)]);
        let peaks = column_peaks(&c, 100);
        assert_eq!(peaks[50], 2, "{peaks:?}");
        assert_eq!(peaks[10], 1);
        assert_eq!(peaks.iter().filter(|&&n| n == 2).count(), 1);
    }
}
