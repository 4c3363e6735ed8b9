//! Checking and coercing a run's input against the flow's input schema.

use serde_json::{Map, Value};

use super::spec::{FlowSpec, InputType};

/// Coerces one value to `ty`. Strings from `--set k=v` are parsed; JSON values
/// must already have the right type.
pub(crate) fn coerce_value(ty: InputType, v: &Value) -> Result<Value, String> {
    let bad = || format!("expected {}, got {v}", ty.name());
    Ok(match (ty, v) {
        (InputType::Path | InputType::String, Value::String(_)) => v.clone(),
        (InputType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => v.clone(),
        (InputType::Int, Value::String(s)) => {
            Value::from(s.trim().parse::<i64>().map_err(|_| bad())?)
        }
        (InputType::Float, Value::Number(n)) => Value::from(n.as_f64().ok_or_else(bad)?),
        (InputType::Float, Value::String(s)) => {
            Value::from(s.trim().parse::<f64>().map_err(|_| bad())?)
        }
        (InputType::Bool, Value::Bool(_)) => v.clone(),
        (InputType::Bool, Value::String(s)) => match s.trim() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err(bad()),
        },
        (InputType::List, Value::Array(_)) => v.clone(),
        (InputType::List, Value::String(s)) => {
            let t = s.trim();
            if t.starts_with('[') {
                serde_json::from_str(t).map_err(|e| format!("expected a JSON list: {e}"))?
            } else if t.is_empty() {
                Value::Array(vec![])
            } else {
                Value::Array(
                    t.split(',')
                        .map(|x| Value::String(x.trim().to_string()))
                        .collect(),
                )
            }
        }
        _ => return Err(bad()),
    })
}

/// Checks `input` against the flow: unknown keys, missing required inputs and
/// wrong types are errors naming the input; defaults are filled in.
pub fn coerce_inputs(flow: &FlowSpec, input: &Value) -> Result<Value, String> {
    let empty = Map::new();
    let given = match input {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => return Err(format!("run input must be a JSON object, got {other}")),
    };
    let mut errors = Vec::new();
    for k in given.keys() {
        if !flow.inputs.iter().any(|i| &i.name == k) {
            let known: Vec<&str> = flow.inputs.iter().map(|i| i.name.as_str()).collect();
            errors.push(format!(
                "input `{k}`: flow `{}` has no such input (it takes: {})",
                flow.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let mut out = Map::new();
    for spec in &flow.inputs {
        match (given.get(&spec.name), &spec.default) {
            (Some(v), _) => match coerce_value(spec.ty, v) {
                Ok(v) => {
                    out.insert(spec.name.clone(), v);
                }
                Err(e) => errors.push(format!("input `{}`: {e}", spec.name)),
            },
            (None, Some(d)) => {
                out.insert(spec.name.clone(), d.clone());
            }
            (None, None) if spec.required => errors.push(format!(
                "input `{}` ({}) is required",
                spec.name,
                spec.ty.name()
            )),
            (None, None) => {}
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(errors.join("; "))
    }
}

/// Parses `--set key=value` arguments into a JSON object of strings (typed
/// later by [`coerce_inputs`]).
pub fn parse_set(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--set `{p}`: expected KEY=VALUE"))?;
        m.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse;
    use serde_json::json;

    #[test]
    fn inputs_are_typed_and_defaulted() {
        let f = parse(
            "name = \"f\"\nversion = 1\n[input.n]\ntype = \"int\"\n[input.x]\ntype = \"float\"\ndefault = 0.5\n[input.files]\ntype = \"list\"\nrequired = false\n[[steps]]\nname = \"a\"\naction = \"kernel\"\nkernel = \"noop\"\n",
            "f.toml",
            None,
        )
        .unwrap();
        let v = coerce_inputs(&f, &json!({"n": "7", "files": "a.h5, b.h5"})).unwrap();
        assert_eq!(v, json!({"n": 7, "x": 0.5, "files": ["a.h5", "b.h5"]}));
        let e = coerce_inputs(&f, &json!({"n": "seven", "m": 1})).unwrap_err();
        assert!(e.contains("input `m`: flow `f` has no such input"), "{e}");
        assert!(e.contains("input `n`: expected int"), "{e}");
        let e = coerce_inputs(&f, &json!({})).unwrap_err();
        assert_eq!(e, "input `n` (int) is required");
    }
}
