//! `publish`: builds the catalog record of a run. The pilot describes the files
//! (size, BLAKE3) where they are; the server stores the record in the same
//! commit as the step's result, adding the run's input.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::Failure;
use crate::protocol::TaskSpec;
use crate::util::now_us;

pub async fn run(spec: &TaskSpec) -> Result<Value, Failure> {
    let p = &spec.params;
    let files: Vec<String> = match p.get("files") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Failure::msg(format!("params.files: expected paths, got {x}")))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(Failure::msg(format!(
                "params.files: expected a path or a list of paths, got {other}"
            )))
        }
    };
    let fields = match p.get("fields") {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            return Err(Failure::msg(format!(
                "params.fields: expected a table, got {other}"
            )))
        }
    };
    let outputs = p
        .get("outputs")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    // What the outputs and fields are measured in: "Å²/s", "px".
    let units = match p.get("units") {
        None => Value::Object(Map::new()),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Value::Object(m.clone()),
        Some(other) => {
            return Err(Failure::msg(format!(
                "params.units: expected a table of unit names, e.g. {{ diffusion = \"Å²/s\" }}, got {other}"
            )))
        }
    };
    let title = p
        .get("title")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{} run {}", spec.flow, spec.run));
    let described = tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|f| describe(Path::new(f)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| Failure::msg(format!("publish panicked: {e}")))??;
    let record = json!({
        "title": title,
        "flow": spec.flow,
        "run_id": spec.run,
        "step": spec.step,
        "attempt_id": spec.attempt,
        "created_us": now_us(),
        "fields": fields,
        "outputs": outputs,
        "units": units,
        "files": described,
    });
    Ok(json!({ "record_id": format!("{}-{}", spec.run, spec.attempt), "record": record }))
}

fn describe(path: &Path) -> Result<Value, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::msg(format!("{}: cannot publish: {e}", path.display())))?;
    if meta.is_dir() {
        return Ok(json!({ "path": path.display().to_string(), "kind": "directory" }));
    }
    let mut h = blake3::Hasher::new();
    std::fs::File::open(path)
        .and_then(|f| h.update_reader(f).map(|_| ()))
        .map_err(|e| Failure::msg(format!("{}: {e}", path.display())))?;
    Ok(json!({
        "path": path.display().to_string(),
        "kind": "file",
        "bytes": meta.len(),
        "blake3": h.finalize().to_hex().to_string(),
    }))
}
