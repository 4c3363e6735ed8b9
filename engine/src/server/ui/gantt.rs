//! One run's step timeline as an SVG Gantt chart (Figure 7 of the Patterns
//! paper): a row per attempt, split into the time it waited for a pilot
//! (queued: ready → dispatched), the engine's and pilot's overhead
//! (dispatched → started, finished → recorded) and the action itself
//! (started → finished). Drawn on the server: no script, no library, and the
//! browser scales it.

use std::fmt::Write;

use crate::api::AttemptState;
use crate::store::{AttemptRow, RunDetail};
use crate::util::fmt_secs;

const LABEL_W: f64 = 170.0;
const PLOT_W: f64 = 760.0;
const ROW_H: f64 = 22.0;
const BAR_H: f64 = 14.0;
const AXIS_H: f64 = 28.0;

/// The kinds of segment, with the CSS class that colours them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
    Queued,
    Overhead,
    Running,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Queued => "seg-queued",
            Kind::Overhead => "seg-overhead",
            Kind::Running => "seg-running",
        }
    }
}

/// A stretch of one attempt: what it was, from, to (µs since the epoch).
pub(super) type Segment = (Kind, i64, i64);

/// The segments of one attempt, µs since the epoch. An attempt still on its
/// pilot runs until `now`.
pub(super) fn segments(a: &AttemptRow, now: i64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut push = |k: Kind, from: Option<i64>, to: Option<i64>| {
        if let (Some(f), Some(t)) = (from, to) {
            if t > f {
                out.push((k, f, t));
            }
        }
    };
    let live = matches!(a.state.as_str(), "ready" | "dispatched" | "running");
    let until = |t: Option<i64>| t.or(live.then_some(now));
    push(Kind::Queued, a.ready_us, until(a.dispatched_us));
    if a.dispatched_us.is_some() {
        push(Kind::Overhead, a.dispatched_us, until(a.started_us));
    }
    if a.started_us.is_some() {
        push(Kind::Running, a.started_us, until(a.finished_us));
    }
    if a.finished_us.is_some() {
        push(Kind::Overhead, a.finished_us, a.recorded_us);
    }
    out
}

/// A tick spacing (s) giving about six ticks over `span` seconds.
fn tick(span: f64) -> f64 {
    let raw = (span / 6.0).max(1e-6);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart; empty when no attempt has started waiting yet.
pub(super) fn svg(d: &RunDetail, now: i64) -> String {
    let rows: Vec<(&AttemptRow, Vec<Segment>)> = d
        .attempts
        .iter()
        .filter(|a| a.state != "skipped")
        .map(|a| (a, segments(a, now)))
        .collect();
    let t0 = d.run.created_us;
    let t1 = rows
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.2))
        .chain(d.run.finished_us)
        .max()
        .unwrap_or(t0);
    if rows.is_empty() || t1 <= t0 {
        return String::new();
    }
    let span = (t1 - t0) as f64 / 1e6;
    let x = |us: i64| LABEL_W + PLOT_W * ((us - t0) as f64 / 1e6) / span;
    let h = AXIS_H + ROW_H * rows.len() as f64 + 8.0;
    let w = LABEL_W + PLOT_W + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="gantt" id="gantt" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="step timeline">"#
    );
    let step = tick(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let px = LABEL_W + PLOT_W * t / span;
        let _ = write!(
            s,
            r#"<line class="grid" x1="{px:.1}" y1="{AXIS_H}" x2="{px:.1}" y2="{h}"/><text class="tick" x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            AXIS_H - 10.0,
            if t == 0.0 {
                "0".to_string()
            } else {
                esc(&fmt_secs(t))
            },
        );
        t += step;
    }
    for (i, (a, segs)) in rows.iter().enumerate() {
        let y = AXIS_H + ROW_H * i as f64;
        let label = if a.number > 1 {
            format!("{} (try {})", a.step, a.number)
        } else {
            a.step.clone()
        };
        let _ = write!(
            s,
            r#"<g class="row" data-step="{}" data-state="{}"><text class="label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            esc(&a.step),
            esc(a.state.as_str()),
            LABEL_W - 8.0,
            y + ROW_H / 2.0 + 4.0,
            esc(&label)
        );
        for (k, from, to) in segs {
            let (x0, x1) = (x(*from), x(*to));
            let class = match (k, a.state) {
                (Kind::Running, AttemptState::Failed) => "seg-failed",
                // Not a success: the action ended with its pilot, or was stopped.
                (
                    Kind::Running,
                    AttemptState::Lost
                    | AttemptState::Cancelled
                    | AttemptState::Returned
                    | AttemptState::Preempted,
                ) => "seg-stopped",
                _ => k.class(),
            };
            let what = match k {
                Kind::Queued => "queued",
                Kind::Overhead => "overhead",
                Kind::Running => "running",
            };
            let _ = write!(
                s,
                r#"<rect class="{class}" x="{x0:.2}" y="{:.1}" width="{:.2}" height="{BAR_H}"><title>{} {}: {}</title></rect>"#,
                y + (ROW_H - BAR_H) / 2.0,
                (x1 - x0).max(1.0),
                esc(&label),
                what,
                esc(&fmt_secs((to - from) as f64 / 1e6)),
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunRow;

    fn attempt(step: &str, times: [Option<i64>; 5], state: &str) -> AttemptRow {
        let state = state.parse().unwrap();
        AttemptRow {
            id: 1,
            run_id: 1,
            step: step.into(),
            step_index: 0,
            number: 1,
            action: "kernel".into(),
            state,
            params: None,
            pilot_id: Some(1),
            ready_us: times[0],
            dispatched_us: times[1],
            started_us: times[2],
            finished_us: times[3],
            recorded_us: times[4],
            outputs: None,
            error: None,
            exit_code: None,
            counts_retry: true,
        }
    }

    #[test]
    fn segments_follow_the_timestamps() {
        let a = attempt(
            "fit",
            [Some(0), Some(100), Some(130), Some(1130), Some(1140)],
            "succeeded",
        );
        assert_eq!(
            segments(&a, 5000),
            vec![
                (Kind::Queued, 0, 100),
                (Kind::Overhead, 100, 130),
                (Kind::Running, 130, 1130),
                (Kind::Overhead, 1130, 1140)
            ]
        );
        // Still running: the action bar grows to now; nothing after it.
        let b = attempt(
            "fit",
            [Some(0), Some(100), Some(130), None, None],
            "running",
        );
        assert_eq!(segments(&b, 900).last(), Some(&(Kind::Running, 130, 900)));
        // Waiting for a pilot: only the queue.
        let c = attempt("fit", [Some(0), None, None, None, None], "ready");
        assert_eq!(segments(&c, 70), vec![(Kind::Queued, 0, 70)]);
    }

    #[test]
    fn chart_has_a_row_per_attempt_scaled_to_the_run() {
        let d = RunDetail {
            run: RunRow {
                id: 1,
                flow: "f".into(),
                flow_version: 1,
                input: serde_json::Value::Null,
                dir: "/r".into(),
                state: crate::api::RunState::Succeeded,
                error: None,
                created_us: 0,
                started_us: Some(0),
                finished_us: Some(2_000_000),
            },
            attempts: vec![
                attempt(
                    "stage",
                    [Some(0), Some(0), Some(0), Some(1_000_000), Some(1_000_000)],
                    "succeeded",
                ),
                attempt(
                    "fit<x>",
                    [
                        Some(1_000_000),
                        Some(1_000_000),
                        Some(1_000_000),
                        Some(2_000_000),
                        Some(2_000_000),
                    ],
                    "failed",
                ),
            ],
            events: vec![],
        };
        let s = svg(&d, 0);
        assert_eq!(s.matches(r#"<g class="row""#).count(), 2);
        // Each action fills half the plot width.
        assert!(s.contains(&format!(r#"x="{:.2}""#, LABEL_W)), "{s}");
        assert!(
            s.contains(&format!(r#"width="{:.2}""#, PLOT_W / 2.0)),
            "{s}"
        );
        assert!(s.contains("seg-failed"));
        assert!(s.contains("fit&lt;x&gt;") && !s.contains("fit<x>"));
        // An attempt whose pilot died is not drawn as a success.
        let mut lost = d.clone();
        lost.attempts[1].state = AttemptState::Lost;
        let s = svg(&lost, 0);
        assert!(
            s.contains("seg-stopped") && !s.contains("seg-failed"),
            "{s}"
        );
        assert_eq!(
            s.matches("seg-running").count(),
            1,
            "only the stage succeeded"
        );
        assert_eq!(tick(2.0), 0.5);
        assert_eq!(tick(600.0), 100.0);
    }
}
