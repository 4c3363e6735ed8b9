//! TOML flow files → [`FlowSpec`], with errors that name file, line and key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::spec::*;
use super::template;
use crate::resources::{ResourceRequest, Resources};
use crate::site::{SiteConfig, STANDARD_TARGETS};
use crate::units::{parse_duration, parse_memory_mb};

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
struct RawFlow {
    name: Spanned<String>,
    version: Spanned<i64>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    priority: Option<Spanned<i64>>,
    #[serde(default)]
    deadline: Option<Spanned<String>>,
    #[serde(default)]
    input: BTreeMap<Spanned<String>, Spanned<RawInput>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    trigger: Vec<Spanned<RawTrigger>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    dir: Spanned<String>,
    #[serde(default)]
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    batch: Option<Spanned<i64>>,
    #[serde(default)]
    settle: Option<Spanned<String>>,
    #[serde(default)]
    flush_after: Option<Spanned<String>>,
    #[serde(default)]
    poll: Option<Spanned<String>>,
    #[serde(default)]
    input: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[serde(rename = "type")]
    ty: Spanned<String>,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    default: Option<Spanned<toml::Value>>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Spanned<String>,
    action: Spanned<String>,
    #[serde(default)]
    kernel: Option<Spanned<String>>,
    #[serde(default)]
    params: Option<Spanned<toml::Table>>,
    #[serde(default)]
    after: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    when: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<RawRetries>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    resources: Option<Spanned<RawResources>>,
    #[serde(default)]
    on: Option<Spanned<String>>,
    #[serde(default)]
    outputs: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    priority: Option<Spanned<i64>>,
    #[serde(default)]
    isolate: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRetries {
    Count(i64),
    Policy(RawRetryPolicy),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetryPolicy {
    count: i64,
    #[serde(default)]
    backoff: Option<String>,
    #[serde(default)]
    max_backoff: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAmounts {
    #[serde(default)]
    cpus: Option<i64>,
    #[serde(default)]
    gpus: Option<i64>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    nodes: Option<i64>,
    #[serde(default)]
    ranks_per_node: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    #[serde(flatten)]
    base: RawAmounts,
    #[serde(default)]
    variants: Option<Vec<RawAmounts>>,
}

/// Collects errors against the source text so each gets a line number.
struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
    errors: Vec<FlowError>,
}

impl Ctx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }
    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
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
    fn find(&self, within: Range<usize>, needle: &str) -> Range<usize> {
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
    let raw: RawFlow = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.err(span, "", e.message().trim().to_string());
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

fn is_ident(s: &str) -> bool {
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
fn build_priority(cx: &mut Ctx, p: &Spanned<i64>, key: &str) -> i32 {
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

fn build_step(
    cx: &mut Ctx,
    s: &RawStep,
    key: &str,
    index: usize,
    all: &[Spanned<RawStep>],
    site: Option<&SiteConfig>,
) -> StepSpec {
    let action = match ActionKind::from_name(s.action.get_ref()) {
        Some(a) => a,
        None => {
            cx.err(
                s.action.span(),
                format!("{key}.action"),
                format!(
                    "unknown action `{}` (expected shell, transfer, publish or kernel)",
                    s.action.get_ref()
                ),
            );
            ActionKind::Shell
        }
    };
    let mut allowed_params: Vec<&str> = action.params().to_vec();
    let kernel = match (&s.kernel, action) {
        (Some(k), ActionKind::Kernel) => match beamflow_kernels::find(k.get_ref()) {
            Some(kern) => {
                allowed_params.extend(kern.params());
                Some(k.get_ref().clone())
            }
            None => {
                let known: Vec<&str> = beamflow_kernels::kernels()
                    .iter()
                    .map(|k| k.name())
                    .collect();
                cx.err(
                    k.span(),
                    format!("{key}.kernel"),
                    format!(
                        "unknown kernel `{}` (known: {})",
                        k.get_ref(),
                        known.join(", ")
                    ),
                );
                None
            }
        },
        (None, ActionKind::Kernel) => {
            cx.err(
                s.action.span(),
                format!("{key}.kernel"),
                "an action = \"kernel\" step must name its kernel",
            );
            None
        }
        (Some(k), _) => {
            cx.err(
                k.span(),
                format!("{key}.kernel"),
                "only action = \"kernel\" steps take a kernel",
            );
            None
        }
        (None, _) => None,
    };

    let params_span = s.params.as_ref().map(|p| p.span()).unwrap_or(s.name.span());
    let params = match &s.params {
        Some(p) => {
            for k in p.get_ref().keys() {
                if !allowed_params.contains(&k.as_str()) {
                    let span = cx.find(p.span(), k);
                    let what = kernel
                        .as_deref()
                        .map(|k| format!("kernel `{k}`"))
                        .unwrap_or_else(|| format!("action `{}`", action.name()));
                    let expected = if allowed_params.is_empty() {
                        "none".to_string()
                    } else {
                        allowed_params.join(", ")
                    };
                    cx.err(
                        span,
                        format!("{key}.params.{k}"),
                        format!("unknown parameter for {what} (expected: {expected})"),
                    );
                }
            }
            toml_to_json(&toml::Value::Table(p.get_ref().clone()))
        }
        None => Value::Object(Default::default()),
    };
    check_action_params(cx, action, &params, params_span, key);

    let after = match &s.after {
        Some(a) => a.get_ref().iter().map(|x| x.get_ref().clone()).collect(),
        None if index > 0 => vec![all[index - 1].get_ref().name.get_ref().clone()],
        None => vec![],
    };

    let retry = match &s.retries {
        None => RetryPolicy::default(),
        Some(r) => {
            let span = r.span();
            let mut p = RetryPolicy::default();
            let count = match r.get_ref() {
                RawRetries::Count(n) => *n,
                RawRetries::Policy(rp) => {
                    if let Some(b) = &rp.backoff {
                        match parse_duration(b) {
                            Ok(d) => p.backoff_s = d,
                            Err(m) => cx.err(span.clone(), format!("{key}.retries.backoff"), m),
                        }
                    }
                    if let Some(b) = &rp.max_backoff {
                        match parse_duration(b) {
                            Ok(d) => p.max_backoff_s = d,
                            Err(m) => cx.err(span.clone(), format!("{key}.retries.max_backoff"), m),
                        }
                    }
                    rp.count
                }
            };
            if !(0..=1000).contains(&count) {
                cx.err(
                    span,
                    format!("{key}.retries"),
                    format!("count must be between 0 and 1000, got {count}"),
                );
            }
            p.count = count.clamp(0, 1000) as u32;
            p
        }
    };

    let timeout_s = s
        .timeout
        .as_ref()
        .and_then(|t| match parse_duration(t.get_ref()) {
            Ok(d) if d > 0.0 => Some(d),
            Ok(_) => {
                cx.err(
                    t.span(),
                    format!("{key}.timeout"),
                    "must be longer than zero",
                );
                None
            }
            Err(m) => {
                cx.err(t.span(), format!("{key}.timeout"), m);
                None
            }
        });

    let on =
        s.on.as_ref()
            .map(|o| o.get_ref().clone())
            .unwrap_or_else(|| "cpu".to_string());
    let on_span = s.on.as_ref().map(|o| o.span()).unwrap_or(s.name.span());
    let known_target = match site {
        Some(site) => {
            site.targets.contains_key(&on)
                || (site.targets.is_empty() && STANDARD_TARGETS.contains(&on.as_str()))
        }
        None => STANDARD_TARGETS.contains(&on.as_str()),
    };
    if !known_target {
        let known: Vec<String> = match site {
            Some(site) if !site.targets.is_empty() => site.targets.keys().cloned().collect(),
            _ => STANDARD_TARGETS.iter().map(|s| s.to_string()).collect(),
        };
        cx.err(
            on_span.clone(),
            format!("{key}.on"),
            format!("unknown target `{on}` (known: {})", known.join(", ")),
        );
    }

    let resources = match &s.resources {
        None => ResourceRequest::default(),
        Some(r) => build_resources(cx, r, key),
    };
    if resources
        .variants
        .iter()
        .any(|v| v.nodes > 1 || v.ranks_per_node > 1)
    {
        let span = s
            .resources
            .as_ref()
            .map(|r| r.span())
            .unwrap_or(on_span.clone());
        let spans = match action {
            ActionKind::Shell => true,
            ActionKind::Kernel => kernel
                .as_deref()
                .and_then(beamflow_kernels::find)
                .is_none_or(|k| k.spans_nodes()),
            _ => false,
        };
        if !spans {
            let wide: Vec<&str> = beamflow_kernels::kernels()
                .iter()
                .filter(|k| k.spans_nodes())
                .map(|k| k.name())
                .collect();
            cx.err(
                span.clone(),
                format!("{key}.resources.nodes"),
                format!(
                    "only shell steps and kernels that share a run among MPI ranks ({}) span nodes",
                    wide.join(", ")
                ),
            );
        }
        if resources
            .variants
            .iter()
            .any(|v| v.nodes > 1 && v.cpus % v.ranks_per_node != 0)
        {
            cx.err(
                span.clone(),
                format!("{key}.resources.cpus"),
                "on several nodes `cpus` counts per node and is split among the node's ranks: make it a multiple of ranks_per_node",
            );
        }
        if resources
            .variants
            .iter()
            .any(|v| v.nodes == 1 && v.ranks_per_node > 1)
        {
            cx.err(
                span,
                format!("{key}.resources.ranks_per_node"),
                "ranks are started on several nodes only: set nodes > 1 (a step on one node runs in the pilot)",
            );
        }
    }
    if let Some(limits) = site.and_then(|s| s.targets.get(&on)) {
        if !resources.variants.iter().any(|v| limits.admits(v)) {
            let span = s.resources.as_ref().map(|r| r.span()).unwrap_or(on_span);
            let wide = resources.variants.iter().any(|v| v.nodes > 1)
                && limits.pilot_per == crate::site::PilotPer::Node;
            cx.err(
                span,
                format!("{key}.resources"),
                format!(
                    "no variant fits target `{on}` of site `{}` ({}){}",
                    site.map(|s| s.name.as_str()).unwrap_or(""),
                    limits.describe(),
                    if wide {
                        "; steps on several nodes need a target with pilot_per = \"job\""
                    } else {
                        ""
                    }
                ),
            );
        }
    }

    let outputs = s
        .outputs
        .as_ref()
        .map(|o| o.get_ref().clone())
        .unwrap_or_default();
    if let Some(o) = &s.outputs {
        for name in o.get_ref() {
            if !is_ident(name) {
                cx.err(
                    o.span(),
                    format!("{key}.outputs"),
                    format!("`{name}` is not an identifier"),
                );
            }
        }
        if action != ActionKind::Shell {
            cx.err(
                o.span(),
                format!("{key}.outputs"),
                "only shell steps declare extra outputs",
            );
        }
    }

    let priority = s
        .priority
        .as_ref()
        .map(|p| build_priority(cx, p, &format!("{key}.priority")));
    let isolate = s.isolate.as_ref().is_some_and(|i| *i.get_ref());
    if let (Some(i), false) = (&s.isolate, action == ActionKind::Kernel) {
        cx.err(
            i.span(),
            format!("{key}.isolate"),
            "only kernel steps run in the pilot's process; other actions need no isolation",
        );
    }
    StepSpec {
        priority,
        isolate,
        name: s.name.get_ref().clone(),
        action,
        kernel,
        params,
        after,
        when: s.when.as_ref().map(|w| w.get_ref().clone()),
        retry,
        timeout_s,
        resources,
        on,
        outputs,
    }
}

fn check_action_params(
    cx: &mut Ctx,
    action: ActionKind,
    params: &Value,
    span: Range<usize>,
    key: &str,
) {
    let has = |k: &str| params.get(k).is_some();
    match action {
        ActionKind::Shell => {
            if has("argv") == has("script") {
                cx.err(
                    span.clone(),
                    format!("{key}.params"),
                    "a shell step needs exactly one of `argv` (list) or `script` (string)",
                );
            }
            if let Some(a) = params.get("argv") {
                let ok = matches!(a, Value::Array(v) if !v.is_empty()) || a.is_string();
                if !ok {
                    cx.err(
                        span.clone(),
                        format!("{key}.params.argv"),
                        "must be a non-empty list of strings",
                    );
                }
            }
            if let Some(e) = params.get("env") {
                if !e.is_object() {
                    cx.err(
                        span,
                        format!("{key}.params.env"),
                        "must be a table of strings",
                    );
                }
            }
        }
        ActionKind::Transfer => {
            for k in ["src", "dst"] {
                if !has(k) {
                    cx.err(
                        span.clone(),
                        format!("{key}.params"),
                        format!("a transfer step needs `{k}`"),
                    );
                }
            }
        }
        ActionKind::Publish | ActionKind::Kernel => {}
    }
}

fn build_resources(cx: &mut Ctx, r: &Spanned<RawResources>, key: &str) -> ResourceRequest {
    let span = r.span();
    let raw = r.get_ref();
    let one = |cx: &mut Ctx, a: &RawAmounts, base: Option<&Resources>| -> Resources {
        let mut res = base.copied().unwrap_or_default();
        let int = |cx: &mut Ctx, v: Option<i64>, what: &str, min: i64| -> Option<u32> {
            let v = v?;
            if v < min || v > 1_000_000 {
                cx.err(
                    span.clone(),
                    format!("{key}.resources.{what}"),
                    format!("must be between {min} and 1000000, got {v}"),
                );
                return None;
            }
            Some(v as u32)
        };
        if let Some(c) = int(cx, a.cpus, "cpus", 0) {
            res.cpus = c;
        }
        if let Some(g) = int(cx, a.gpus, "gpus", 0) {
            res.gpus = g;
        }
        if let Some(n) = int(cx, a.nodes, "nodes", 1) {
            res.nodes = n;
        }
        if let Some(n) = int(cx, a.ranks_per_node, "ranks_per_node", 1) {
            res.ranks_per_node = n;
        }
        if let Some(m) = &a.memory {
            match parse_memory_mb(m) {
                Ok(mb) => res.memory_mb = mb,
                Err(msg) => cx.err(span.clone(), format!("{key}.resources.memory"), msg),
            }
        }
        res
    };
    let base = one(cx, &raw.base, None);
    let variants = match &raw.variants {
        None => vec![base],
        Some(vs) if vs.is_empty() => {
            cx.err(
                span.clone(),
                format!("{key}.resources.variants"),
                "must list at least one variant",
            );
            vec![base]
        }
        // Keys given beside `variants` are defaults each variant may override.
        Some(vs) => vs
            .iter()
            .map(|v| {
                let mut b = base;
                if v.gpus.is_some() && v.cpus.is_none() && raw.base.cpus.is_none() {
                    b.cpus = 1;
                }
                one(cx, v, Some(&b))
            })
            .collect(),
    };
    for v in &variants {
        if v.cpus == 0 && v.gpus == 0 {
            cx.err(
                span.clone(),
                format!("{key}.resources"),
                "a variant must ask for at least one cpu or gpu",
            );
        }
    }
    ResourceRequest { variants }
}

/// Edges: every `after` names an existing step, and the graph has no cycle.
fn check_edges(cx: &mut Ctx, raw: &RawFlow, spec: &FlowSpec) {
    let names: HashSet<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
    for (rs, s) in raw.steps.iter().zip(&spec.steps) {
        let span = rs
            .get_ref()
            .after
            .as_ref()
            .map(|a| a.span())
            .unwrap_or(rs.get_ref().name.span());
        for dep in &s.after {
            if !names.contains(dep.as_str()) {
                cx.err(
                    span.clone(),
                    format!("steps.{}.after", s.name),
                    format!("unknown step `{dep}`"),
                );
            } else if dep == &s.name {
                cx.err(
                    span.clone(),
                    format!("steps.{}.after", s.name),
                    "a step cannot wait for itself",
                );
            }
        }
    }
    if !cx.errors.is_empty() {
        return;
    }
    if let Some(cycle) = find_cycle(spec) {
        let first = &cycle[0];
        let idx = spec.step_index(first).unwrap_or(0);
        let rs = raw.steps[idx].get_ref();
        let span = rs
            .after
            .as_ref()
            .map(|a| a.span())
            .unwrap_or(rs.name.span());
        cx.err(
            span,
            format!("steps.{first}.after"),
            format!("cycle: {}", cycle.join(" -> ")),
        );
    }
}

/// Returns one cycle as a closed path of step names, if any.
fn find_cycle(spec: &FlowSpec) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let n = spec.steps.len();
    let mut mark = vec![Mark::New; n];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        spec: &FlowSpec,
        mark: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        mark[i] = Mark::Active;
        stack.push(i);
        for dep in &spec.steps[i].after {
            let j = spec.step_index(dep)?;
            match mark[j] {
                Mark::Active => {
                    let pos = stack.iter().position(|&k| k == j).unwrap_or(0);
                    let mut path: Vec<String> = stack[pos..]
                        .iter()
                        .map(|&k| spec.steps[k].name.clone())
                        .collect();
                    path.push(spec.steps[j].name.clone());
                    return Some(path);
                }
                Mark::New => {
                    if let Some(c) = visit(j, spec, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark[i] = Mark::Done;
        None
    }
    for i in 0..n {
        if mark[i] == Mark::New {
            if let Some(c) = visit(i, spec, &mut mark, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// Names every step transitively waits for.
pub(crate) fn ancestors(spec: &FlowSpec, idx: usize) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut todo: Vec<usize> = vec![idx];
    while let Some(i) = todo.pop() {
        for dep in &spec.steps[i].after {
            if out.insert(dep.clone()) {
                if let Some(j) = spec.step_index(dep) {
                    todo.push(j);
                }
            }
        }
    }
    out
}

/// Every template in params and `when` may only use variables that will exist
/// when the step runs.
fn check_templates(cx: &mut Ctx, raw: &RawFlow, spec: &FlowSpec, site: Option<&SiteConfig>) {
    let inputs: HashSet<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
    for (i, (rs, s)) in raw.steps.iter().zip(&spec.steps).enumerate() {
        let before = ancestors(spec, i);
        let key = format!("steps.{}", s.name);
        let mut strings: Vec<(String, String, Range<usize>)> = Vec::new();
        let pspan = rs
            .get_ref()
            .params
            .as_ref()
            .map(|p| p.span())
            .unwrap_or(rs.span());
        template::collect_strings(&s.params, &format!("{key}.params"), &mut |path, text| {
            strings.push((path.to_string(), text.to_string(), pspan.clone()));
        });
        if let Some(w) = &rs.get_ref().when {
            strings.push((
                format!("{key}.when"),
                format!("{{{{ {} }}}}", w.get_ref()),
                w.span(),
            ));
        }
        for (path, text, span) in strings {
            let vars = match template::variables(&text) {
                Ok(v) => v,
                Err(e) => {
                    let span = cx.find(span, text.lines().next().unwrap_or(""));
                    cx.err(span, path, format!("bad template: {e}"));
                    continue;
                }
            };
            for var in vars {
                if let Err(msg) = check_variable(&var, &inputs, &before, spec, site) {
                    let needle = var.split('.').next_back().unwrap_or(&var);
                    let span = cx.find(span.clone(), needle);
                    cx.err(span, path.clone(), msg);
                }
            }
        }
    }
}

fn check_variable(
    var: &str,
    inputs: &HashSet<&str>,
    before: &HashSet<String>,
    spec: &FlowSpec,
    site: Option<&SiteConfig>,
) -> Result<(), String> {
    let parts: Vec<&str> = var.split('.').collect();
    match parts[0] {
        "input" => match parts.get(1) {
            None => Ok(()),
            Some(n) if inputs.contains(n) => Ok(()),
            Some(n) => Err(format!("`{var}`: the flow declares no input `{n}`")),
        },
        "run" => match parts.get(1) {
            None | Some(&"id") | Some(&"dir") | Some(&"flow") => Ok(()),
            Some(n) => Err(format!(
                "`{var}`: unknown run variable `{n}` (known: id, dir, flow)"
            )),
        },
        "task" => match parts.get(1) {
            None | Some(&"id") | Some(&"dir") | Some(&"attempt") => Ok(()),
            Some(n) => Err(format!(
                "`{var}`: unknown task variable `{n}` (known: id, dir, attempt)"
            )),
        },
        "site" => match (parts.get(1), site) {
            (None, _) | (Some(_), None) => Ok(()),
            (Some(&"name"), Some(_)) => Ok(()),
            (Some(n), Some(site)) if site.vars.contains_key(*n) => Ok(()),
            (Some(n), Some(site)) => Err(format!(
                "`{var}`: site `{}` defines no variable `{n}`",
                site.name
            )),
        },
        "steps" => {
            let Some(step) = parts.get(1) else {
                return Err(format!(
                    "`{var}`: name a step, as in steps.NAME.outputs.KEY"
                ));
            };
            let Some(idx) = spec.step_index(step) else {
                return Err(format!("`{var}`: unknown step `{step}`"));
            };
            if !before.contains(*step) {
                return Err(format!(
                    "`{var}`: step `{step}` does not run before this one (add it to `after`)"
                ));
            }
            match (parts.get(2), parts.get(3)) {
                (None, _) | (Some(&"outputs"), None) => Ok(()),
                (Some(&"outputs"), Some(k)) => {
                    let keys = spec.steps[idx].output_keys();
                    if keys.iter().any(|x| x == k) {
                        Ok(())
                    } else {
                        Err(format!(
                            "`{var}`: step `{step}` has no output `{k}` (it has: {})",
                            if keys.is_empty() {
                                "none".to_string()
                            } else {
                                keys.join(", ")
                            }
                        ))
                    }
                }
                (Some(other), _) => Err(format!(
                    "`{var}`: unknown field `{other}` (use steps.{step}.outputs.KEY)"
                )),
            }
        }
        other => Err(format!(
            "unknown variable `{other}` (known: input, run, task, site, steps)"
        )),
    }
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
