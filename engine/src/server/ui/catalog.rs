//! `/ui/catalog`: the catalog portal (Figure 9 of the Patterns paper) — text
//! search, facets over the matching records (flow, day, every published
//! field) and a card per record with its thumbnail, fields, scalar outputs
//! and files.
//!
//! `?q=TEXT&field=KEY=VALUE&…&day=YYYY-MM-DD&limit=N`; `field` takes the
//! same dotted paths as `beamflow catalog search --field`.

use std::collections::BTreeMap;
use std::path::Path;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use super::super::api::{field_filter, read};
use super::super::core::ApiError;
use super::super::App;
use super::{fail, render, view};
use crate::store::{self, CatalogRow};

/// Records the facets are counted over.
const FACET_SAMPLE: usize = 2000;
/// Values shown per facet.
const FACET_VALUES: usize = 12;

#[derive(Debug, Default, Clone)]
struct Search {
    q: Option<String>,
    fields: Vec<(String, String)>,
    day: Option<String>,
    limit: usize,
}

impl Search {
    fn parse(raw: &str) -> Result<Search, ApiError> {
        let mut s = Search {
            limit: 60,
            ..Default::default()
        };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()).into_owned() {
            let v = v.trim().to_string();
            match k.as_str() {
                _ if v.is_empty() => {}
                "q" => s.q = Some(v),
                "field" => s.fields.push(field_filter(&v)?),
                "day" => s.day = Some(v),
                "limit" => {
                    s.limit = v
                        .parse::<usize>()
                        .map_err(|_| ApiError::new(400, "limit: expected a number"))?
                        .clamp(1, 1000)
                }
                other => {
                    return Err(ApiError::new(
                        400,
                        format!("unknown query parameter `{other}` (q, field, day, limit)"),
                    ))
                }
            }
        }
        Ok(s)
    }

    /// The day as a µs range, UTC.
    fn created(&self) -> Result<Option<(i64, i64)>, ApiError> {
        let Some(d) = &self.day else { return Ok(None) };
        let t = humantime::parse_rfc3339(&format!("{d}T00:00:00Z"))
            .map_err(|_| ApiError::new(400, format!("day `{d}`: expected YYYY-MM-DD")))?;
        let from = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ApiError::new(400, format!("day `{d}`: before 1970")))?
            .as_micros() as i64;
        Ok(Some((from, from + 86_400_000_000)))
    }

    /// This search as a query string, with `f` applied to its filters.
    fn href(&self, f: impl FnOnce(&mut Search)) -> String {
        let mut s = self.clone();
        f(&mut s);
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(t) = &s.q {
            q.append_pair("q", t);
        }
        for (k, v) in &s.fields {
            q.append_pair("field", &format!("{k}={v}"));
        }
        if let Some(d) = &s.day {
            q.append_pair("day", d);
        }
        format!("/ui/catalog?{}", q.finish())
    }
}

#[derive(Serialize)]
struct Facet {
    key: String,
    values: Vec<FacetValue>,
}

#[derive(Serialize)]
struct FacetValue {
    value: String,
    count: usize,
    href: String,
}

#[derive(Serialize)]
struct Chip {
    label: String,
    href: String,
}

#[derive(Serialize)]
struct Card {
    id: u64,
    run_id: u64,
    flow: String,
    title: String,
    created_us: i64,
    fields: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
    thumbnails: Vec<String>,
    files: Vec<FileLink>,
}

#[derive(Serialize)]
struct FileLink {
    name: String,
    path: String,
    bytes: Option<f64>,
    /// Served by the page (under the runs directory)?
    served: bool,
}

/// A scalar as text for a card; tables and lists are left to the record's JSON.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(x) if n.is_f64() => crate::util::sig(x, 4),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// A value a facet can offer: text and whole numbers, written as the
/// catalog's filter compares them. Measurements (floats) and flags are
/// not categories.
fn facet_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn card(row: &CatalogRow, runs_dir: &Path) -> Card {
    let r = &row.record;
    // A record may say its values' units: `units = { diffusion = "Å²/s" }`.
    let unit = |k: &str| {
        r["units"][k]
            .as_str()
            .map_or(String::new(), |u| format!(" {u}"))
    };
    let pairs = |key: &str| -> Vec<(String, String)> {
        r[key]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| scalar(v).map(|s| (k.clone(), s + &unit(k))))
                    .collect()
            })
            .unwrap_or_default()
    };
    let files: Vec<FileLink> = r["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    let path = f["path"].as_str()?.to_string();
                    Some(FileLink {
                        name: Path::new(&path)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| path.clone()),
                        served: super::files::confined(runs_dir, Path::new(&path)).is_ok(),
                        bytes: f["bytes"].as_f64(),
                        path,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let thumbnails = files
        .iter()
        .filter(|f| f.served && f.name.to_ascii_lowercase().ends_with(".png"))
        .map(|f| f.path.clone())
        .collect();
    Card {
        id: row.id,
        run_id: row.run_id,
        flow: row.flow.clone(),
        title: r["title"].as_str().unwrap_or("(untitled)").to_string(),
        created_us: row.created_us,
        fields: pairs("fields"),
        outputs: pairs("outputs").into_iter().take(12).collect(),
        thumbnails,
        files,
    }
}

/// Value counts of flow, day and each published field over `rows`, most
/// frequent first; values already filtered on are left out.
fn facets(rows: &[CatalogRow], s: &Search) -> Vec<Facet> {
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut add = |k: String, v: String| *counts.entry(k).or_default().entry(v).or_default() += 1;
    for row in rows {
        add("flow".into(), row.flow.clone());
        add("day".into(), view::day(row.created_us));
        if let Some(o) = row.record["fields"].as_object() {
            for (k, v) in o {
                if let Some(v) = facet_value(v) {
                    add(format!("fields.{k}"), v);
                }
            }
        }
    }
    let chosen = |k: &str, v: &str| {
        s.fields.iter().any(|(a, b)| a == k && b == v)
            || (k == "day" && s.day.as_deref() == Some(v))
    };
    let order = |k: &str| match k {
        "flow" => 0,
        "day" => 2,
        _ => 1,
    };
    let mut out: Vec<Facet> = counts
        .into_iter()
        .map(|(key, vals)| {
            let mut values: Vec<(String, usize)> =
                vals.into_iter().filter(|(v, _)| !chosen(&key, v)).collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            if key == "day" {
                values.sort_by(|a, b| b.0.cmp(&a.0));
            }
            values.truncate(FACET_VALUES);
            let values = values
                .into_iter()
                .map(|(value, count)| FacetValue {
                    href: s.href(|n| {
                        if key == "day" {
                            n.day = Some(value.clone());
                        } else {
                            n.fields.push((key.clone(), value.clone()));
                        }
                    }),
                    value,
                    count,
                })
                .collect();
            Facet { key, values }
        })
        .filter(|f| !f.values.is_empty())
        .collect();
    out.sort_by_key(|f| order(&f.key));
    out
}

/// The filters in force, each with the search without it.
fn chips(s: &Search) -> Vec<Chip> {
    let mut out: Vec<Chip> = s
        .fields
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Chip {
            label: format!("{k} = {v}"),
            href: s.href(|n| {
                n.fields.remove(i);
            }),
        })
        .collect();
    if let Some(d) = &s.day {
        out.push(Chip {
            label: format!("day = {d}"),
            href: s.href(|n| n.day = None),
        });
    }
    if let Some(q) = &s.q {
        out.push(Chip {
            label: format!("text: {q}"),
            href: s.href(|n| n.q = None),
        });
    }
    out
}

pub(super) async fn page(State(app): State<App>, RawQuery(raw): RawQuery) -> Response {
    let s = match Search::parse(&raw.unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let created = match s.created() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (text, fields) = (s.q.clone(), s.fields.clone());
    let rows = read(&app, move |c| {
        store::catalog_search(c, text.as_deref(), &fields, created, FACET_SAMPLE)
    })
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let cards: Vec<Card> = rows
        .iter()
        .take(s.limit)
        .map(|r| card(r, &app.runs_dir))
        .collect();
    render(
        "catalog.html",
        minijinja::context! {
            nav => "catalog",
            q => s.q.clone(),
            fields => s.fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            day => s.day.clone(),
            chips => chips(&s),
            facets => facets(&rows, &s),
            cards,
            matched => rows.len(),
            capped => rows.len() == FACET_SAMPLE,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(id: u64, flow: &str, sample: &str, day: i64) -> CatalogRow {
        CatalogRow {
            id,
            run_id: id,
            attempt_id: id,
            flow: flow.into(),
            created_us: day * 86_400_000_000,
            record: json!({
                "title": format!("{flow} {sample}"),
                "fields": { "sample": sample, "technique": "XPCS", "temperature": 291.5, "cold": false, "run": 7 },
                "outputs": { "beta": 0.25, "q": [1, 2] },
                "files": [
                    { "path": "/runs/1/results/g2.png", "bytes": 10 },
                    { "path": "/elsewhere/raw.h5", "bytes": 20 }
                ]
            }),
        }
    }

    #[test]
    fn facets_count_and_link() {
        let rows = vec![
            row(1, "xpcs", "silica", 20_000),
            row(2, "xpcs", "silica", 20_001),
            row(3, "hedm", "steel", 20_001),
        ];
        let s = Search::parse("q=gel&field=fields.technique%3DXPCS").unwrap();
        let f = facets(&rows, &s);
        let keys: Vec<&str> = f.iter().map(|f| f.key.as_str()).collect();
        // The facet already chosen (technique = XPCS) offers nothing more.
        // Text and whole numbers only: floats and flags are not categories.
        assert_eq!(keys, ["flow", "fields.run", "fields.sample", "day"]);
        let sample = &f[2].values;
        assert_eq!((sample[0].value.as_str(), sample[0].count), ("silica", 2));
        assert_eq!(
            sample[0].href,
            "/ui/catalog?q=gel&field=fields.technique%3DXPCS&field=fields.sample%3Dsilica"
        );
        // Newest day first.
        assert_eq!(f[3].values[0].value, view::day(20_001 * 86_400_000_000));
        let c = chips(&s);
        assert_eq!(c[0].label, "fields.technique = XPCS");
        assert_eq!(c[0].href, "/ui/catalog?q=gel");
    }

    #[test]
    fn cards_show_only_served_thumbnails() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("runs");
        let png = root.join("1/results/g2.png");
        std::fs::create_dir_all(png.parent().unwrap()).unwrap();
        std::fs::write(&png, b"png").unwrap();
        let mut r = row(1, "xpcs", "silica", 1);
        r.record["files"][0]["path"] = json!(png.display().to_string());
        let c = card(&r, &root);
        assert_eq!(c.thumbnails, [png.display().to_string()]);
        assert_eq!(c.files.len(), 2);
        assert!(!c.files[1].served);
        assert_eq!(c.outputs, [("beta".to_string(), "0.2500".to_string())]);
        assert_eq!(c.fields.len(), 5);
        assert_eq!(scalar(&serde_json::json!(1.5e-9)).unwrap(), "1.500e-9");
        assert_eq!(
            scalar(&serde_json::json!(838256.056351)).unwrap(),
            "8.383e5"
        );
        // With the record's units.
        r.record["units"] = json!({ "beta": "(contrast)" });
        let c = card(&r, &root);
        assert_eq!(c.outputs[0].1, "0.2500 (contrast)");
    }

    #[test]
    fn bad_queries_are_named() {
        assert!(Search::parse("field=nokey")
            .unwrap_err()
            .message
            .contains("KEY=VALUE"));
        assert!(Search::parse("colour=red")
            .unwrap_err()
            .message
            .contains("colour"));
        let s = Search::parse("day=2026-13-40").unwrap();
        assert!(s.created().unwrap_err().message.contains("YYYY-MM-DD"));
        let s = Search::parse("day=1970-01-02").unwrap();
        assert_eq!(
            s.created().unwrap(),
            Some((86_400_000_000, 172_800_000_000))
        );
    }
}
