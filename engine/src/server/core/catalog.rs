//! The catalog: a publish step's record goes in with the run's input and
//! flow version, in the same commit as the step's result, with the text it
//! is found by.

use serde_json::{json, Value};

use super::Core;
use crate::api::{AttemptId, RunId};
use crate::store::Op;
use crate::util::now_us;

impl Core {
    pub(super) fn catalog(&mut self, run_id: RunId, attempt: AttemptId, outputs: &Value) {
        let Some(Value::Object(rec)) = outputs.get("record") else {
            return;
        };
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let mut rec = rec.clone();
        rec.insert("input".into(), run.input.clone());
        rec.insert("flow_version".into(), json!(run.flow.version));
        let record = Value::Object(rec);
        let mut body = String::new();
        collect_text(&record, &mut body);
        let flow = run.flow.name.clone();
        self.batch.ops.push(Op::Catalog {
            run: run_id,
            attempt,
            flow,
            record: record.to_string(),
            body,
            at: now_us(),
        });
    }
}

/// All strings and numbers of a record, for full-text search.
fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        Value::Bool(b) => out.push_str(if *b { "true " } else { "false " }),
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push_str(k);
            out.push(' ');
            collect_text(x, out)
        }),
        Value::Null => {}
    }
}
