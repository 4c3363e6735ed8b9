//! Checks across the steps of a flow: `after` edges name steps and form no
//! cycle, and every template variable names something that exists when
//! the step runs.

use std::collections::HashSet;
use std::ops::Range;

use super::parse::*;
use super::spec::*;
use super::template;
use crate::site::SiteConfig;

/// Edges: every `after` names an existing step, and the graph has no cycle.
pub(super) fn check_edges(cx: &mut Ctx, raw: &RawFlow, spec: &FlowSpec) {
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
pub(super) fn check_templates(
    cx: &mut Ctx,
    raw: &RawFlow,
    spec: &FlowSpec,
    site: Option<&SiteConfig>,
) {
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
        if let Some(st) = &rs.get_ref().stage {
            for (name, src) in st.get_ref() {
                strings.push((
                    format!("{key}.stage.{name}"),
                    src.get_ref().clone(),
                    src.span(),
                ));
            }
        }
        if let Some(w) = &rs.get_ref().when {
            // `when` is an expression, not a template: braces around it
            // would otherwise read as a (malformed) object literal.
            let text = w.get_ref().trim();
            if let Some(inner) = text.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")) {
                cx.err(
                    w.span(),
                    format!("{key}.when"),
                    format!(
                        "`when` is an expression without braces: write when = \"{}\"",
                        inner.trim()
                    ),
                );
                continue;
            }
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
                let checked = if path.contains(".stage.") && var.split('.').next() == Some("staged")
                {
                    Err(format!(
                        "`{var}`: a stage path is rendered before anything is staged"
                    ))
                } else {
                    check_variable(&var, &inputs, &before, spec, s, site)
                };
                if let Err(msg) = checked {
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
    spec_step: &crate::flow::StepSpec,
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
        "staged" => match parts.get(1) {
            None => Ok(()),
            Some(n) if spec_step.stage.contains_key(*n) => Ok(()),
            Some(n) => Err(format!(
                "`{var}`: this step stages no `{n}` (its [stage] table has: {})",
                if spec_step.stage.is_empty() {
                    "nothing".to_string()
                } else {
                    spec_step
                        .stage
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
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
