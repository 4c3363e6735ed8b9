//! Typed settings from a TOML file (flows, site configs) with errors a
//! person can act on: where (a byte span, so the caller can name the line),
//! which key (`steps.s.retries`, `queues.debug.nodes`) and what is wrong.
//! The toml crate alone gives the span and the message but not the key
//! path, and says "duplicate key" without the key.

use std::ops::Range;

use serde::de::DeserializeOwned;

/// What was wrong and where.
#[derive(Debug)]
pub struct TomlError {
    /// Bytes of the source the problem is at (empty when unknown).
    pub span: Range<usize>,
    /// Dotted key path, with an array of tables' entries named by their
    /// `name` (`steps.align`) where they have one; empty at the top.
    pub key: String,
    pub message: String,
}

impl TomlError {
    /// 1-based line of the span's start.
    pub fn line(&self, src: &str) -> usize {
        line_at(src, self.span.start)
    }
}

/// 1-based line of byte `at`.
pub fn line_at(src: &str, at: usize) -> usize {
    1 + src.as_bytes()[..at.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Parses `src` into `T`.
pub fn from_str<T: DeserializeOwned>(src: &str) -> Result<T, TomlError> {
    let de = toml::Deserializer::parse(src).map_err(|e| plain(src, e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut key = named_path(src, &e.path().to_string());
        let inner = e.into_inner();
        // An unknown field's path ends in the field, which the message
        // names already: the key is the table it is in.
        if inner.message().starts_with("unknown field") {
            key = key
                .rsplit_once('.')
                .map(|(t, _)| t.to_string())
                .unwrap_or_default();
        }
        TomlError {
            key,
            ..plain(src, inner)
        }
    })
}

fn plain(src: &str, e: toml::de::Error) -> TomlError {
    let span = e.span().unwrap_or(0..0);
    let mut message = e.message().trim().to_string();
    // The span of a duplicate key is its second occurrence.
    if message == "duplicate key" {
        if let Some(k) = src.get(span.clone()).filter(|k| !k.is_empty()) {
            message = format!("duplicate key `{}`", k.trim().trim_matches('"'));
        }
    }
    TomlError {
        span,
        key: String::new(),
        message,
    }
}

/// `steps[2].retries` → `steps.align.retries` when the third `[[steps]]`
/// has `name = "align"`; `.` for serde_path_to_error's empty path.
fn named_path(src: &str, path: &str) -> String {
    if path == "." {
        return String::new();
    }
    let Ok(doc) = src.parse::<toml::Table>() else {
        return path.to_string();
    };
    let mut out = Vec::new();
    let mut at: Option<&toml::Value> = None;
    // `Spanned<T>` fields add a private segment of their own.
    for seg in path.split('.').filter(|s| !s.starts_with("$__")) {
        // A segment is `key` or `key[i]` (possibly `key[i][j]`).
        let (key, rest) = seg.split_once('[').map_or((seg, ""), |(k, r)| (k, r));
        let table = match at {
            None => Some(&doc),
            Some(v) => v.as_table(),
        };
        at = table.and_then(|t| t.get(key));
        let mut name = key.to_string();
        for ix in rest.split('[').filter(|s| !s.is_empty()) {
            let i: Option<usize> = ix.trim_end_matches(']').parse().ok();
            at = at.and_then(|v| v.as_array()).and_then(|a| a.get(i?));
            match at.and_then(|v| v.get("name")).and_then(|n| n.as_str()) {
                Some(n) => name = format!("{name}.{n}"),
                None => name = format!("{name}[{}", ix),
            }
        }
        out.push(name);
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        steps: Vec<Step>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Step {
        name: String,
        #[serde(default)]
        nodes: Option<i64>,
    }

    #[test]
    fn errors_name_the_key_by_its_step_and_the_duplicate_key() {
        let src = "[[steps]]\nname = \"a\"\n[[steps]]\nname = \"b\"\nnodes = \"one\"\n";
        let e = from_str::<Doc>(src).unwrap_err();
        assert_eq!(e.key, "steps.b.nodes");
        assert_eq!(e.line(src), 5);
        assert!(e.message.contains("invalid type: string \"one\""), "{e:?}");
        let src = "[[steps]]\nname = \"a\"\nname = \"b\"\n";
        let e = from_str::<Doc>(src).unwrap_err();
        assert_eq!(e.message, "duplicate key `name`");
        assert_eq!(e.line(src), 3);
        let src = "[[steps]]\nname = \"a\"\nparams = { script = \"x\", script = \"y\" }\n";
        let e = from_str::<toml::Table>(src).unwrap_err();
        assert_eq!(e.message, "duplicate key `script`");
        assert_eq!(&src[e.span.clone()], "script");
        assert!(e.span.start > src.find("script").unwrap());
    }
}
