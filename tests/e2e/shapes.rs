//! The shape of every `--json` answer, and the columns of every table the
//! README's tour shows, against tests/data/shapes/: a field renamed,
//! dropped or retyped, or a column gone, fails here and is seen in review.
//! `BEAMFLOW_UPDATE_SHAPES=1` writes the files anew from what the CLI says.

use super::*;

/// Values replaced by their types; an array by the union of its items'
/// shapes, an object by its keys' shapes (sorted).
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => match a.iter().map(shape).reduce(|x, y| merge(&x, &y)) {
            Some(s) => json!([s]),
            None => json!([]),
        },
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), shape(x))).collect()),
    }
}

/// Two shapes as one: objects key by key, anything else as `a|b`.
fn merge(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut m = x.clone();
            for (k, v) in y {
                let merged = match m.get(k) {
                    Some(w) => merge(w, v),
                    None => v.clone(),
                };
                m.insert(k.clone(), merged);
            }
            Value::Object(m)
        }
        (Value::Array(x), Value::Array(y)) => match (x.first(), y.first()) {
            (Some(p), Some(q)) => json!([merge(p, q)]),
            (Some(_), None) => a.clone(),
            _ => b.clone(),
        },
        _ if a == b => a.clone(),
        _ => {
            let mut words: Vec<String> = [a, b]
                .iter()
                .flat_map(|v| {
                    v.as_str()
                        .map(|s| s.split('|').map(String::from).collect::<Vec<_>>())
                        .unwrap_or_else(|| vec![v.to_string()])
                })
                .collect();
            words.sort();
            words.dedup();
            json!(words.join("|"))
        }
    }
}

/// The column names of each table in a command's output, one line per table.
fn columns(text: &str) -> String {
    let mut out = String::new();
    let mut in_header = false;
    for l in text.lines() {
        if l.starts_with('┌') {
            in_header = true;
        } else if l.starts_with('╞') {
            in_header = false;
            out.push('\n');
        } else if in_header {
            let cells: Vec<&str> = l.trim_matches('│').split('┆').map(str::trim).collect();
            out.push_str(&cells.join(" | "));
        }
    }
    out
}

struct Shapes {
    dir: PathBuf,
    update: bool,
    wrong: Vec<String>,
}

impl Shapes {
    fn new() -> Shapes {
        Shapes {
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/shapes"),
            update: std::env::var_os("BEAMFLOW_UPDATE_SHAPES").is_some(),
            wrong: vec![],
        }
    }

    fn check(&mut self, file: &str, actual: String) {
        let path = self.dir.join(file);
        if self.update {
            std::fs::create_dir_all(&self.dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            self.wrong.push(format!(
                "{}:\n--- expected\n{expected}\n--- now\n{actual}",
                path.display()
            ));
        }
    }

    fn json(&mut self, name: &str, out: &str) {
        let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
        let text = serde_json::to_string_pretty(&shape(&v)).unwrap() + "\n";
        self.check(&format!("{name}.json"), text);
    }

    fn table(&mut self, name: &str, out: &str) {
        let cols = columns(out);
        assert!(!cols.is_empty(), "{name}: no table in\n{out}");
        self.check(&format!("{name}.columns"), cols);
    }
}

/// The columns of the tables in `text` (a command's output) against
/// tests/data/shapes/NAME.columns, for tests that run a command anyway.
pub(super) fn check_columns(name: &str, text: &str) {
    let mut s = Shapes::new();
    s.table(name, text);
    assert!(s.wrong.is_empty(), "{}", s.wrong.join("\n\n"));
}

/// Runs the CLI against `env`'s home, whatever its exit status.
fn say(env: &Env, args: &[&str]) -> String {
    let o = Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .env_remove("COLUMNS")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_json_answer_and_table_keeps_its_shape() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _pilot = env.pilot("shapes", 2);
    let frames = env.home.join("frames");
    beamflow::cli::demo::generate_frames(&frames, 3, 4096).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs/demo.toml");
    let four = env.fixture("four");
    let (ok, failed) = rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&demo).await.unwrap();
        c.register(&four).await.unwrap();
        let input = json!({ "src": frames.display().to_string(), "sample": "shape" });
        let ok = c.submit("demo", None, vec![input]).await.unwrap()[0];
        // A run that fails, so that errors have their place in the shapes.
        let bad = json!({ "src": "/nonexistent/frames" });
        let failed = c.submit("demo", None, vec![bad]).await.unwrap()[0];
        c.wait(&[ok, failed], false, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        (ok, failed)
    });
    let (ok, failed) = (ok.to_string(), failed.to_string());
    let mut s = Shapes::new();
    let j = |args: &[&str]| env.beamflow_ok(&[&["--json"], args].concat());
    s.json("flow-list", &j(&["flow", "list"]));
    s.json("flow-show", &j(&["flow", "show", "demo"]));
    s.json("runs-list", &j(&["runs", "list"]));
    s.json("runs-show", &j(&["runs", "show", &ok]));
    s.json(
        "runs-show-failed",
        &say(&env, &["--json", "runs", "show", &failed]),
    );
    s.json(
        "runs-wait",
        &say(&env, &["--json", "runs", "wait", &ok, &failed]),
    );
    s.json("pilots", &j(&["pilots"]));
    s.json("catalog-search", &j(&["catalog", "search", "shape"]));
    s.json("report", &j(&["report", "--flow", "demo", "--no-plots"]));
    s.json(
        "token-add",
        &j(&["token", "add", "shapes", "--role", "viewer"]),
    );
    s.json("token-list", &j(&["token", "list"]));
    s.json("token-revoke", &j(&["token", "revoke", "shapes"]));
    s.json(
        "admin-prune",
        &j(&["admin", "prune", "--older-than", "300d", "--dry-run"]),
    );
    s.json("alloc-list", &j(&["alloc", "list"]));
    s.json("alloc-log", &j(&["alloc", "log"]));
    s.json("kernel-list", &j(&["kernel", "list"]));
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-configs/local.toml");
    s.json("site-show", &j(&["site", "show", local.to_str().unwrap()]));
    s.json("doctor", &say(&env, &["--json", "doctor"]));
    s.json("ui", &j(&["ui"]));
    let submitted = j(&["run", "four", "--set", "n=1"]);
    s.json("run", &submitted);
    let t = |args: &[&str]| env.beamflow_ok(args);
    s.table("flow-list", &t(&["flow", "list"]));
    s.table("runs-list", &t(&["runs", "list"]));
    s.table("runs-show", &t(&["runs", "show", &ok]));
    s.table("pilots", &t(&["pilots"]));
    s.table("catalog-search", &t(&["catalog", "search", "shape"]));
    s.table("report", &t(&["report", "--flow", "demo", "--no-plots"]));
    s.table("alloc-list", &t(&["alloc", "list"]));
    s.table("kernel-list", &t(&["kernel", "list"]));
    s.table("doctor", &say(&env, &["doctor"]));
    // Last, as it leaves a run waiting: what explain says of it.
    let waiting = rt().block_on(async {
        c.register(&env.fixture("gpu-only")).await.unwrap();
        c.submit("gpu-only", None, vec![json!({})]).await.unwrap()[0]
    });
    let waiting = waiting.to_string();
    s.json("runs-explain", &j(&["runs", "explain", &waiting]));
    s.json("runs-show-waiting", &j(&["runs", "show", &waiting]));
    s.table("runs-explain", &t(&["runs", "explain", &waiting]));
    env.beamflow_ok(&["runs", "cancel", &waiting]);
    assert!(s.wrong.is_empty(), "{}", s.wrong.join("\n\n"));
}
