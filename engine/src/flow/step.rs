//! One step of a flow file: its action and parameters, resources,
//! retries, target and templates, checked and built into a [`StepSpec`].

use std::ops::Range;

use serde_json::Value;
use toml::Spanned;

use super::parse::*;
use super::spec::*;
use crate::resources::{ResourceRequest, Resources};
use crate::site::{SiteConfig, STANDARD_TARGETS};
use crate::units::{parse_duration, parse_memory_mb};

pub(super) fn build_step(
    cx: &mut Ctx,
    s: &RawStep,
    key: &str,
    index: usize,
    all: &[Spanned<RawStep>],
    site: Option<&SiteConfig>,
) -> StepSpec {
    // An unknown action's params are not checked against any action's: the
    // one error is the action.
    let known_action = ActionKind::from_name(s.action.get_ref()).is_some();
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
            for k in p.get_ref().keys().filter(|_| known_action) {
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
    if known_action {
        check_action_params(cx, action, &params, params_span, key);
    }

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
    let mut stage = std::collections::BTreeMap::new();
    if let Some(st) = &s.stage {
        for (name, src) in st.get_ref() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                cx.err(
                    st.span(),
                    format!("{key}.stage.{name}"),
                    format!("`{name}` is not an identifier (letters, digits and _)"),
                );
            }
            if src.get_ref().trim().is_empty() {
                cx.err(
                    src.span(),
                    format!("{key}.stage.{name}"),
                    "an empty path: write the file or directory to copy, REMOTE:/path for another facility's",
                );
            }
            stage.insert(name.clone(), src.get_ref().clone());
        }
    }
    StepSpec {
        priority,
        isolate,
        stage,
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

pub(super) fn check_action_params(
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

pub(super) fn build_resources(
    cx: &mut Ctx,
    r: &Spanned<RawResources>,
    key: &str,
) -> ResourceRequest {
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
