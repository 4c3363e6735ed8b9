//! TOML flow files → [`FlowSpec`], with errors that name file, line and key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::check::{check_edges, check_templates};
use super::spec::*;
use super::step::build_step;
use crate::site::SiteConfig;
use crate::units::parse_duration;

/// One problem in a flow file.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowError {
    pub file: String,
    pub line: usize,
    /// Dotted key the problem is about, e.g. `steps.correlate.after`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        }
    }
}

/// Every problem found in one file, in line order.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowErrors(pub Vec<FlowError>);

impl fmt::Display for FlowErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FlowErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlow {
    pub(super) name: Spanned<String>,
    pub(super) version: Spanned<i64>,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default)]
    pub(super) priority: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) deadline: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) input: BTreeMap<Spanned<String>, Spanned<RawInput>>,
    #[serde(default)]
    pub(super) steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    pub(super) trigger: Vec<Spanned<RawTrigger>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    pub(super) dir: Spanned<String>,
    #[serde(default)]
    pub(super) pattern: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) recursive: bool,
    #[serde(default)]
    pub(super) batch: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) settle: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) flush_after: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) poll: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) input: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    #[serde(rename = "type")]
    pub(super) ty: Spanned<String>,
    #[serde(default)]
    pub(super) required: Option<bool>,
    #[serde(default)]
    pub(super) default: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) name: Spanned<String>,
    pub(super) action: Spanned<String>,
    #[serde(default)]
    pub(super) kernel: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) params: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub(super) after: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) when: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) retries: Option<Spanned<RawRetries>>,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) resources: Option<Spanned<RawResources>>,
    #[serde(default)]
    pub(super) on: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) outputs: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) priority: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) isolate: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) stage: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
}

/// `retries = 3` or `retries = { count = 3, backoff = "5s" }`. Read by
/// hand rather than as an untagged enum, whose one error ("did not match
/// any variant") hides the key that is wrong; this way a misspelt key is
/// named with the keys there are.
pub(super) enum RawRetries {
    Count(i64),
    Policy(RawRetryPolicy),
}

impl<'de> Deserialize<'de> for RawRetries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawRetries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count (retries = 3) or a table (retries = { count = 3, backoff = \"5s\", max_backoff = \"5m\" })")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawRetries, E> {
                Ok(RawRetries::Count(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawRetries, E> {
                Ok(RawRetries::Count(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<RawRetries, A::Error> {
                RawRetryPolicy::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RawRetries::Policy)
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryPolicy {
    pub(super) count: i64,
    #[serde(default)]
    pub(super) backoff: Option<String>,
    #[serde(default)]
    pub(super) max_backoff: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAmounts {
    #[serde(default)]
    pub(super) cpus: Option<i64>,
    #[serde(default)]
    pub(super) gpus: Option<i64>,
    #[serde(default)]
    pub(super) memory: Option<String>,
    #[serde(default)]
    pub(super) nodes: Option<i64>,
    #[serde(default)]
    pub(super) ranks_per_node: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    #[serde(flatten)]
    pub(super) base: RawAmounts,
    #[serde(default)]
    pub(super) variants: Option<Vec<RawAmounts>>,
}

/// Collects errors against the source text so each gets a line number.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) src: &'a str,
    pub(super) errors: Vec<FlowError>,
}

impl Ctx<'_> {
    pub(super) fn line(&self, span: Range<usize>) -> usize {
        crate::tomlfile::line_at(self.src, span.start)
    }
    pub(super) fn err(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = self.line(span);
        self.errors.push(FlowError {
            file: self.file.to_string(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }
    /// Span of `needle` inside `within`, or `within` itself: a template string
    /// nested in a params table has no span of its own after deserialising.
    pub(super) fn find(&self, within: Range<usize>, needle: &str) -> Range<usize> {
        let hay = &self.src[within.clone()];
        match hay.find(needle) {
            Some(off) => within.start + off..within.start + off + needle.len(),
            None => within,
        }
    }
}

/// Parses and validates one flow file. `file` is used in messages only;
/// `site`, when given, also checks targets, `site.*` variables and resource
/// limits against that site.
pub fn parse(src: &str, file: &str, site: Option<&SiteConfig>) -> Result<FlowSpec, FlowErrors> {
    let mut cx = Ctx {
        file,
        src,
        errors: Vec::new(),
    };
    let raw: RawFlow = match crate::tomlfile::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            cx.err(e.span, e.key, e.message);
            return Err(FlowErrors(cx.errors));
        }
    };
    let spec = build(&mut cx, raw, site);
    if cx.errors.is_empty() {
        Ok(spec)
    } else {
        cx.errors.sort_by_key(|e| e.line);
        Err(FlowErrors(cx.errors))
    }
}

pub(super) fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn build(cx: &mut Ctx, raw: RawFlow, site: Option<&SiteConfig>) -> FlowSpec {
    let name = raw.name.get_ref().clone();
    if !is_flow_name(&name) {
        cx.err(
            raw.name.span(),
            "name",
            format!("`{name}` is not a valid flow name (letters, digits, `-`, `_`; starting with a letter)"),
        );
    }
    let version = *raw.version.get_ref();
    if !(1..=i64::from(u32::MAX)).contains(&version) {
        cx.err(
            raw.version.span(),
            "version",
            format!("must be a positive integer, got {version}"),
        );
    }

    let inputs = build_inputs(cx, &raw.input);
    let mut steps = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, rs) in raw.steps.iter().enumerate() {
        let s = rs.get_ref();
        let sname = s.name.get_ref().clone();
        let key = format!("steps.{sname}");
        if !is_ident(&sname) {
            cx.err(
                s.name.span(),
                "steps.name",
                format!("`{sname}` is not a valid step name (lower-case letters, digits and `_`; it is used as `steps.{sname}` in templates)"),
            );
        }
        if seen.insert(sname.clone(), i).is_some() {
            cx.err(s.name.span(), key.clone(), "duplicate step name");
        }
        steps.push(build_step(cx, s, &key, i, &raw.steps, site));
    }
    if raw.steps.is_empty() {
        cx.err(0..0, "steps", "a flow needs at least one step");
    }

    let priority = raw
        .priority
        .as_ref()
        .map(|p| build_priority(cx, p, "priority"))
        .unwrap_or(0);
    let deadline_s = raw
        .deadline
        .as_ref()
        .and_then(|d| match parse_duration(d.get_ref()) {
            Ok(s) if s > 0.0 => Some(s),
            Ok(_) => {
                cx.err(d.span(), "deadline", "must be longer than zero");
                None
            }
            Err(e) => {
                cx.err(d.span(), "deadline", e);
                None
            }
        });
    let triggers = raw
        .trigger
        .iter()
        .enumerate()
        .map(|(i, t)| build_trigger(cx, t.get_ref(), &format!("trigger[{i}]"), &inputs))
        .collect();
    let spec = FlowSpec {
        name,
        version: version.clamp(0, i64::from(u32::MAX)) as u32,
        description: raw.description.trim().to_string(),
        inputs,
        steps,
        priority,
        deadline_s,
        triggers,
    };
    check_edges(cx, &raw, &spec);
    if cx.errors.is_empty() {
        check_templates(cx, &raw, &spec, site);
    }
    spec
}

/// A `[[trigger]]` table: an absolute directory, a glob, sizes and
/// durations in range, and an input that names the flow's inputs (every
/// required one) with templates that compile.
fn build_trigger(cx: &mut Ctx, t: &RawTrigger, key: &str, inputs: &[InputSpec]) -> TriggerSpec {
    let dir = t.dir.get_ref().clone();
    if !Path::new(&dir).is_absolute() {
        cx.err(
            t.dir.span(),
            format!("{key}.dir"),
            format!("`{dir}` must be an absolute path (on the server's machine)"),
        );
    }
    let pattern = t
        .pattern
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_else(|| "*".into());
    if let (Some(p), Err(e)) = (&t.pattern, globset::Glob::new(&pattern)) {
        cx.err(p.span(), format!("{key}.pattern"), e.to_string());
    }
    let batch = match &t.batch {
        Some(b) if !(1..=1_000_000).contains(b.get_ref()) => {
            cx.err(
                b.span(),
                format!("{key}.batch"),
                "must be from 1 to 1000000",
            );
            1
        }
        Some(b) => *b.get_ref() as usize,
        None => 1,
    };
    let mut duration = |d: &Option<Spanned<String>>, name: &str| -> Option<f64> {
        let d = d.as_ref()?;
        match parse_duration(d.get_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                cx.err(d.span(), format!("{key}.{name}"), e);
                None
            }
        }
    };
    let settle_s = duration(&t.settle, "settle").unwrap_or(2.0);
    let flush_after_s = duration(&t.flush_after, "flush_after");
    let poll_s = duration(&t.poll, "poll");
    if let Some((p, 0.0)) = t.poll.as_ref().zip(poll_s) {
        cx.err(p.span(), format!("{key}.poll"), "must be longer than zero");
    }
    let mut input = serde_json::Map::new();
    let env = minijinja::Environment::new();
    if let Some(tbl) = &t.input {
        for (k, v) in tbl.get_ref() {
            let at = cx.find(tbl.span(), k);
            if !inputs.iter().any(|i| &i.name == k) {
                let known: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                cx.err(
                    at,
                    format!("{key}.input.{k}"),
                    format!(
                        "the flow has no input `{k}` (it takes: {})",
                        known.join(", ")
                    ),
                );
                continue;
            }
            if let toml::Value::String(text) = v {
                if let Err(e) = env.template_from_str(text) {
                    cx.err(at, format!("{key}.input.{k}"), e.to_string());
                }
            }
            input.insert(k.clone(), toml_to_json(v));
        }
    }
    for i in inputs.iter().filter(|i| i.required && i.default.is_none()) {
        if !input.contains_key(&i.name) {
            cx.err(
                t.dir.span(),
                format!("{key}.input"),
                format!("sets no value for the required input `{}` (e.g. input = {{ {} = \"{{{{ file }}}}\" }})", i.name, i.name),
            );
        }
    }
    TriggerSpec {
        dir,
        pattern,
        recursive: t.recursive,
        batch,
        settle_s,
        flush_after_s,
        poll_s,
        input,
    }
}

/// Priorities are small integers; anything outside ±1000 is a typo.
pub(super) fn build_priority(cx: &mut Ctx, p: &Spanned<i64>, key: &str) -> i32 {
    let v = *p.get_ref();
    if !(-1000..=1000).contains(&v) {
        cx.err(
            p.span(),
            key.to_string(),
            format!("{v} is out of range (-1000 to 1000; higher runs first)"),
        );
        return 0;
    }
    v as i32
}

fn is_flow_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn build_inputs(
    cx: &mut Ctx,
    raw: &BTreeMap<Spanned<String>, Spanned<RawInput>>,
) -> Vec<InputSpec> {
    let mut out = Vec::new();
    for (k, v) in raw {
        let name = k.get_ref().clone();
        let key = format!("input.{name}");
        if !is_ident(&name) {
            cx.err(
                k.span(),
                key.clone(),
                "input names are lower-case identifiers (letters, digits, `_`)",
            );
        }
        let ri = v.get_ref();
        let ty = match InputType::from_name(ri.ty.get_ref()) {
            Some(t) => t,
            None => {
                cx.err(
                    ri.ty.span(),
                    format!("{key}.type"),
                    format!(
                        "unknown type `{}` (expected path, string, int, float, bool or list)",
                        ri.ty.get_ref()
                    ),
                );
                InputType::String
            }
        };
        let default = ri.default.as_ref().map(|d| {
            let json = toml_to_json(d.get_ref());
            match super::input::coerce_value(ty, &json) {
                Ok(v) => v,
                Err(m) => {
                    cx.err(d.span(), format!("{key}.default"), m);
                    json
                }
            }
        });
        let required = ri.required.unwrap_or(default.is_none());
        if required && default.is_some() {
            cx.err(
                v.span(),
                key.clone(),
                "a required input cannot have a default",
            );
        }
        out.push(InputSpec {
            name,
            ty,
            required,
            default,
            description: ri.description.trim().to_string(),
        });
    }
    out
}

pub(crate) fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> FlowSpec {
        parse(src, "t.toml", None).unwrap_or_else(|e| panic!("{e}"))
    }
    fn errs(src: &str) -> String {
        parse(src, "t.toml", None).unwrap_err().to_string()
    }

    /// An unknown action is the one error: its params are not held to
    /// another action's rules.
    #[test]
    fn an_unknown_action_is_one_error() {
        let e = errs("name = \"x\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"copy\"\nparams = { from = \"a\" }\n");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.contains("t.toml:5: steps.a.action: unknown action `copy`"),
            "{e}"
        );
    }

    const TWO: &str = r#"
name = "two"
version = 3
[input.path]
type = "path"
[[steps]]
name = "a"
action = "shell"
params = { argv = ["echo", "{{ input.path }}"] }
[[steps]]
name = "b"
action = "kernel"
kernel = "sleep"
params = { seconds = 0.1 }
retries = { count = 2, backoff = "2s" }
timeout = "1m"
resources = { cpus = 2, memory = "1GB" }
"#;

    #[test]
    fn only_shell_steps_and_shared_kernels_span_nodes() {
        let step = |action: &str, res: &str| {
            format!(
                "name = \"w\"\nversion = 1\n[[steps]]\nname = \"a\"\n{action}\nresources = {res}\nparams = {{}}\n"
            )
        };
        let f = ok(&step(
            "action = \"kernel\"\nkernel = \"xpcs.multitau\"",
            "{ cpus = 4, nodes = 2, ranks_per_node = 2 }",
        )
        .replace(
            "params = {}",
            "params = { raw = \"r.h5\", qmap = \"q.h5\" }",
        ));
        let v = f.steps[0].resources.variants[0];
        assert_eq!((v.nodes, v.ranks_per_node, v.cpus), (2, 2, 4));
        let e = errs(&step(
            "action = \"kernel\"\nkernel = \"sleep\"",
            "{ nodes = 2 }",
        ));
        assert!(
            e.contains("t.toml:") && e.contains("steps.a.resources.nodes"),
            "{e}"
        );
        assert!(e.contains("xpcs.multitau"), "{e}");
        let e = errs(&step("action = \"publish\"", "{ nodes = 3 }"));
        assert!(e.contains("span nodes"), "{e}");
        let e = errs(
            &step("action = \"shell\"\n", "{ ranks_per_node = 4 }")
                .replace("params = {}", "params = { argv = [\"true\"] }"),
        );
        assert!(e.contains("steps.a.resources.ranks_per_node"), "{e}");
        let e = errs(
            &step(
                "action = \"shell\"\n",
                "{ cpus = 3, nodes = 2, ranks_per_node = 2 }",
            )
            .replace("params = {}", "params = { argv = [\"true\"] }"),
        );
        assert!(
            e.contains("steps.a.resources.cpus") && e.contains("multiple"),
            "{e}"
        );
    }

    #[test]
    fn default_edge_is_the_previous_step() {
        let f = ok(TWO);
        assert_eq!(f.version, 3);
        assert_eq!(f.steps[0].after, Vec::<String>::new());
        assert_eq!(f.steps[1].after, vec!["a".to_string()]);
        assert_eq!(f.steps[1].retry.count, 2);
        assert_eq!(f.steps[1].retry.delay_s(2), 4.0);
        assert_eq!(f.steps[1].timeout_s, Some(60.0));
        assert_eq!(f.steps[1].resources.variants[0].memory_mb, 1024);
        assert_eq!(f.steps[1].resources.variants[0].cpus, 2);
        assert!(f.inputs[0].required);
    }

    #[test]
    fn variants_inherit_defaults() {
        let f = ok(r#"
name = "v"
version = 1
[[steps]]
name = "a"
action = "kernel"
kernel = "noop"
resources = { memory = "2GB", variants = [{ gpus = 1, cpus = 4 }, { cpus = 8 }] }
"#);
        let v = &f.steps[0].resources.variants;
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].gpus, v[0].cpus, v[0].memory_mb), (1, 4, 2048));
        assert_eq!((v[1].gpus, v[1].cpus, v[1].memory_mb), (0, 8, 2048));
    }

    #[test]
    fn unknown_key_names_line() {
        let e = errs("name = \"x\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"shell\"\nparams = { argv = [\"true\"] }\nretry = 3\n");
        assert!(e.starts_with("t.toml:7:"), "{e}");
        assert!(e.contains("unknown field `retry`"), "{e}");
    }

    #[test]
    fn reference_to_later_step_is_rejected() {
        let e = errs(
            r#"
name = "x"
version = 1
[[steps]]
name = "a"
action = "shell"
params = { argv = ["echo", "{{ steps.b.outputs.exit_code }}"] }
[[steps]]
name = "b"
action = "shell"
params = { argv = ["true"] }
"#,
        );
        assert!(e.contains("t.toml:7: steps.a.params.argv[1]: `steps.b.outputs.exit_code`: step `b` does not run before this one"), "{e}");
    }
}
