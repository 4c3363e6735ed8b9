//! Rendering of step parameters with minijinja.
//!
//! Every string inside a step's `params` is a template. A string that is one
//! `{{ expression }}` and nothing else keeps the expression's type, so
//! `files = "{{ steps.stage.outputs.files }}"` passes a list, not its text.
//! Undefined variables are errors, never empty strings: a typo must fail the
//! step loudly instead of running a command with a missing argument.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env
    })
}

/// The expression inside `{{ … }}` when `text` is exactly one expression.
fn sole_expression(text: &str) -> Option<&str> {
    let t = text.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || t.contains("{%") {
        return None;
    }
    Some(
        inner
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim(),
    )
}

/// Dotted variable paths a template reads, e.g. `steps.stage.outputs.files`.
pub fn variables(text: &str) -> Result<BTreeSet<String>, String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(BTreeSet::new());
    }
    let tmpl = env().template_from_str(text).map_err(|e| describe(&e))?;
    Ok(tmpl.undeclared_variables(true).into_iter().collect())
}

/// Calls `f(path, text)` for every string in a JSON tree.
pub fn collect_strings(v: &Value, path: &str, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect_strings(x, &format!("{path}[{i}]"), f);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                collect_strings(x, &format!("{path}.{k}"), f);
            }
        }
        _ => {}
    }
}

/// Renders every string in `params` against `ctx`.
pub fn render(params: &Value, ctx: &Value) -> Result<Value, String> {
    render_at(params, ctx, "params")
}

fn render_at(v: &Value, ctx: &Value, path: &str) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_string(s, ctx).map_err(|e| format!("{path}: {e}"))?,
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| render_at(x, ctx, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_at(x, ctx, &format!("{path}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(s: &str, ctx: &Value) -> Result<Value, String> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(expr) = sole_expression(s) {
        let v = eval(expr, ctx)?;
        return Ok(v);
    }
    env()
        .render_str(s, ctx)
        .map(Value::String)
        .map_err(|e| describe(&e))
}

/// Evaluates one expression to JSON.
pub fn eval(expr: &str, ctx: &Value) -> Result<Value, String> {
    let e = env().compile_expression(expr).map_err(|e| describe(&e))?;
    let v = e.eval(ctx).map_err(|e| describe(&e))?;
    if v.is_undefined() {
        return Err(format!("`{expr}` is undefined"));
    }
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// Evaluates a `when` condition with Jinja truthiness.
pub fn eval_bool(expr: &str, ctx: &Value) -> Result<bool, String> {
    let e = env().compile_expression(expr).map_err(|e| describe(&e))?;
    let v = e.eval(ctx).map_err(|e| describe(&e))?;
    Ok(v.is_true())
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sole_expression_keeps_type() {
        let ctx = json!({"steps": {"a": {"outputs": {"files": ["x", "y"], "n": 3}}}});
        let out = render(&json!({"f": "{{ steps.a.outputs.files }}", "n": "{{ steps.a.outputs.n + 1 }}", "s": "n={{ steps.a.outputs.n }}"}), &ctx).unwrap();
        assert_eq!(out, json!({"f": ["x", "y"], "n": 4, "s": "n=3"}));
    }

    #[test]
    fn undefined_is_an_error_naming_the_path() {
        let err = render(
            &json!({"argv": ["echo", "{{ input.nope }}"]}),
            &json!({"input": {}}),
        )
        .unwrap_err();
        assert!(err.starts_with("params.argv[1]: "), "{err}");
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn nested_variables_are_listed() {
        let v = variables("{{ input.path }}/{{ steps.s.outputs.dst }} {% for f in input.files %}{{ f }}{% endfor %}").unwrap();
        let v: Vec<_> = v.into_iter().collect();
        assert_eq!(v, vec!["input.files", "input.path", "steps.s.outputs.dst"]);
    }

    #[test]
    fn when_uses_truthiness() {
        assert!(eval_bool("input.n > 2", &json!({"input": {"n": 3}})).unwrap());
        assert!(!eval_bool("input.flag", &json!({"input": {"flag": false}})).unwrap());
    }
}
