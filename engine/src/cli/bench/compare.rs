//! `beamflow bench compare A.json B.json`: two suite results side by side —
//! two machines, or two revisions on one — as ratios B ÷ A of the machines'
//! roofs and of each kernel's work rate (above 1: B is faster).

use std::path::Path;

use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table};
use serde::Serialize;
use serde_json::Value;

use super::suite::{rate, SCHEMA};

#[derive(Debug, Serialize, PartialEq)]
pub struct Ratio {
    pub kernel: String,
    pub backend: String,
    pub problem: String,
    pub unit: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// b ÷ a, when both ran.
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub triad_ratio: f64,
    pub sgemm_ratio: f64,
    pub kernels: Vec<Ratio>,
}

/// Reads a `beamflow bench --json` file, checking its schema.
pub fn load(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    anyhow::ensure!(
        v["schema"] == SCHEMA,
        "{}: schema {} is not {SCHEMA} (a `beamflow bench --json` result?)",
        path.display(),
        v["schema"]
    );
    Ok(v)
}

fn label(v: &Value) -> String {
    let m = &v["machine"];
    format!(
        "{} · {} · {}",
        m["host"].as_str().unwrap_or("?"),
        m["cpu_model"].as_str().unwrap_or("?"),
        m["git"].as_str().unwrap_or("?")
    )
}

/// Pairs the results by kernel, backend and problem; a case only one side
/// ran is listed with the other side empty.
pub fn compare(a: &Value, b: &Value) -> Comparison {
    let key = |x: &Value| {
        (
            x["kernel"].as_str().unwrap_or("").to_string(),
            x["backend"].as_str().unwrap_or("").to_string(),
            x["problem"].as_str().unwrap_or("").to_string(),
        )
    };
    let empty = Vec::new();
    let ra = a["results"].as_array().unwrap_or(&empty);
    let rb = b["results"].as_array().unwrap_or(&empty);
    let mut kernels: Vec<Ratio> = Vec::new();
    for x in ra.iter().chain(rb) {
        let k = key(x);
        if kernels
            .iter()
            .any(|r| (&r.kernel, &r.backend, &r.problem) == (&k.0, &k.1, &k.2))
        {
            continue;
        }
        let find = |side: &[Value]| {
            side.iter()
                .find(|y| key(y) == k)
                .and_then(|y| y["rate"].as_f64())
        };
        let (va, vb) = (find(ra), find(rb));
        kernels.push(Ratio {
            unit: x["unit"].as_str().unwrap_or("").to_string(),
            ratio: va.zip(vb).map(|(a, b)| b / a),
            a: va,
            b: vb,
            kernel: k.0,
            backend: k.1,
            problem: k.2,
        });
    }
    let roof = |k: &str| {
        b["machine"][k].as_f64().unwrap_or(f64::NAN) / a["machine"][k].as_f64().unwrap_or(f64::NAN)
    };
    Comparison {
        a: label(a),
        b: label(b),
        triad_ratio: roof("triad_gbs"),
        sgemm_ratio: roof("sgemm_gflops"),
        kernels,
    }
}

pub fn table(c: &Comparison) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["kernel", "backend", "problem", "A", "B", "B ÷ A"]);
    let num = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    let show = |v: Option<f64>, unit: &str| v.map(|x| rate(x, unit)).unwrap_or_else(|| "-".into());
    t.add_row(vec![
        Cell::new("memory bandwidth"),
        Cell::new(""),
        Cell::new("STREAM triad"),
        num(String::new()),
        num(String::new()),
        num(format!("{:.2}×", c.triad_ratio)),
    ]);
    t.add_row(vec![
        Cell::new("peak"),
        Cell::new(""),
        Cell::new("SGEMM"),
        num(String::new()),
        num(String::new()),
        num(format!("{:.2}×", c.sgemm_ratio)),
    ]);
    for r in &c.kernels {
        t.add_row(vec![
            Cell::new(&r.kernel),
            Cell::new(&r.backend),
            Cell::new(&r.problem),
            num(show(r.a, &r.unit)),
            num(show(r.b, &r.unit)),
            num(r
                .ratio
                .map(|x| format!("{x:.2}×"))
                .unwrap_or_else(|| "-".into())),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(triad: f64, rates: &[(&str, f64)]) -> Value {
        json!({
            "schema": SCHEMA,
            "machine": { "host": "h", "cpu_model": "c", "git": "g", "triad_gbs": triad, "sgemm_gflops": 100.0 },
            "results": rates.iter().map(|(k, r)| json!({
                "kernel": k, "backend": "cpu", "problem": "p", "unit": "u", "rate": r
            })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn ratios_pair_kernels_and_keep_the_unpaired() {
        let a = doc(10.0, &[("x", 100.0), ("only-a", 1.0)]);
        let b = doc(25.0, &[("x", 250.0), ("only-b", 2.0)]);
        let c = compare(&a, &b);
        assert_eq!(c.triad_ratio, 2.5);
        assert_eq!(c.sgemm_ratio, 1.0);
        assert_eq!(c.kernels.len(), 3);
        assert_eq!(c.kernels[0].ratio, Some(2.5));
        assert_eq!((c.kernels[1].a, c.kernels[1].b), (Some(1.0), None));
        assert_eq!(
            (c.kernels[2].a, c.kernels[2].b, c.kernels[2].ratio),
            (None, Some(2.0), None)
        );
    }

    #[test]
    fn other_files_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.json");
        std::fs::write(&p, r#"{"bench": "engine"}"#).unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(err.contains("x.json") && err.contains("schema"), "{err}");
    }
}
