//! A kernel's parameters, declared once: one struct per kernel that clap
//! reads from `beamflow kernel …` (each field a `--flag` of the same name,
//! kebab-cased) and serde from a flow step's `params` table, with the same
//! defaults (a test of each struct compares them) and the same checks
//! (the struct's own validation, which both paths call).
//!
//! Flows are more forgiving than a command line in one way: a value that a
//! template rendered — always text — is read as the number, boolean or
//! list it spells when the field wants one.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::registry::{KernelContext, KernelError};

/// The parameter names of `T` (its fields, as flows write them), for flow
/// validation and `beamflow kernel list`. Made once per kernel.
pub fn names<T: clap::Args>() -> &'static [&'static str] {
    let cmd = T::augment_args(clap::Command::new("params"));
    let names: Vec<&'static str> = cmd
        .get_arguments()
        .map(|a| &*Box::leak(a.get_id().as_str().to_string().into_boxed_str()))
        .collect();
    Box::leak(names.into_boxed_slice())
}

/// `names::<T>()` computed the first time a kernel is asked.
#[macro_export]
macro_rules! param_names {
    ($t:ty) => {{
        static NAMES: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
        *NAMES.get_or_init($crate::params::names::<$t>)
    }};
}

/// A step's `params` as `T`. Nulls and empty text (an optional input left
/// unset in the flow) count as absent; `out`, when `T` has it and the step
/// did not set it, is the attempt's directory. Errors name the parameter.
pub fn from_step<T: DeserializeOwned + clap::Args>(
    params: &Value,
    ctx: &KernelContext,
) -> Result<T, KernelError> {
    let mut m: Map<String, Value> = match params {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        other => {
            return Err(KernelError::param(
                "params",
                format!("expected a table of parameters, got {other}"),
            ))
        }
    };
    m.retain(|_, v| !(v.is_null() || v.as_str() == Some("")));
    if names::<T>().contains(&"out") && !m.contains_key("out") {
        let dir = ctx.ensure_work_dir()?.display().to_string();
        m.insert("out".into(), Value::String(dir));
    }
    from_table(m)
}

/// `m` as `T`, reading text as JSON where a field's type wants it.
pub fn from_table<T: DeserializeOwned>(mut m: Map<String, Value>) -> Result<T, KernelError> {
    // Each pass reads at most one more text value as JSON.
    for _ in 0..=m.len() {
        let e = match serde_path_to_error::deserialize::<_, T>(Value::Object(m.clone())) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let mut field = e
            .path()
            .iter()
            .next()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let msg = e.into_inner().to_string();
        if field.is_empty() {
            // Inside a flattened struct serde loses the path: the field is
            // the one holding the text the error quotes.
            field = quoted_text(&msg)
                .and_then(|t| {
                    m.iter()
                        .find(|(_, v)| v.as_str() == Some(t.as_str()))
                        .map(|(k, _)| k.clone())
                })
                .unwrap_or_default();
        }
        if let Some(Value::String(s)) = m.get(&field) {
            if let Ok(v) = serde_json::from_str::<Value>(s.trim()) {
                if !v.is_string() {
                    m.insert(field, v);
                    continue;
                }
            }
            return Err(KernelError::param(
                &field,
                format!("`{s}` is not a number, boolean or list ({msg})"),
            ));
        }
        if let Some(name) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            return Err(KernelError::param(name, "required"));
        }
        let name = if field.is_empty() { "params" } else { &field };
        return Err(KernelError::param(name, msg));
    }
    Err(KernelError::param("params", "cannot be read"))
}

/// The text in `invalid type: string "TEXT", expected …`.
fn quoted_text(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("invalid type: string ")?;
    let end = rest.find(", expected")?;
    serde_json::from_str(&rest[..end]).ok()
}

/// `v` (a JSON object) as `T`, as [`from_table`] reads it: for tests.
#[cfg(test)]
pub fn from_json<T: DeserializeOwned>(v: Value) -> Result<T, KernelError> {
    match v {
        Value::Object(m) => from_table(m),
        other => panic!("a table, not {other}"),
    }
}

/// For each struct's test: the defaults clap gives for `args` (the
/// required flags) are the defaults serde gives for `table`.
#[cfg(test)]
pub fn same_defaults<T>(args: &[&str], table: Value)
where
    T: clap::Args + clap::FromArgMatches + DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let cmd = T::augment_args(clap::Command::new("kernel").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(args)
        .expect("the required flags parse");
    let cli = T::from_arg_matches(&matches).expect("the flags make the struct");
    let flow: T = from_json(table).expect("the table makes the struct");
    assert_eq!(cli, flow, "clap's and serde's defaults differ");
}
