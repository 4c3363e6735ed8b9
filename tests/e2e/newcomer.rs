//! What a new user runs into, fixed: a step no pilot serves says why, a
//! second server on a home is refused, prune wants a unit, `run --local`
//! keeps its results.

use super::*;

fn beamflow(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_step_no_connected_pilot_serves_says_so_and_explain_says_why() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    // The tour's pilot: no GPUs, so it serves cpu, edge and realtime.
    let _pilot = env.pilot("tour", 2);
    let flow = env.fixture("gpu-only");
    let id = rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        c.submit("gpu-only", None, vec![json!({})]).await.unwrap()[0]
    });
    let id = id.to_string();
    let shown = env.beamflow_ok(&["runs", "show", &id]);
    assert!(
        shown.contains(&format!(
            "step fit is waiting: no connected pilot serves target gpu (and the step has no \
             variant without GPUs to run on a cpu pilot) (beamflow runs explain {id})"
        )),
        "{shown}"
    );
    let json: Value =
        serde_json::from_str(&env.beamflow_ok(&["--json", "runs", "show", &id])).unwrap();
    assert_eq!(json["waiting"][0]["step"], "fit");
    let explained = env.beamflow_ok(&["runs", "explain", &id]);
    assert!(
        explained.contains("step fit (attempt 1): ready · target gpu · 1 cpus + 1 gpus"),
        "{explained}"
    );
    assert!(
        explained.contains("serves cpu, edge, realtime, not gpu"),
        "{explained}"
    );
    let e: Value =
        serde_json::from_str(&env.beamflow_ok(&["--json", "runs", "explain", &id])).unwrap();
    assert_eq!(e["steps"][0]["pilots"][0]["takes"], false);
    // A finished run has nothing to explain; an unknown one is an error.
    env.beamflow_ok(&["runs", "cancel", &id]);
    let after = env.beamflow_ok(&["runs", "explain", &id]);
    assert!(after.contains("no step is waiting or running"), "{after}");
    let o = beamflow(&env, &["runs", "explain", "999"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no run 999"), "{}", text(&o));
}

#[test]
fn a_second_server_on_a_home_is_refused_and_leaves_the_first_alone() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(env.home.join("server.json")).unwrap())
            .unwrap();
    let o = beamflow(&env, &["server", "--bind", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let pid = first["pid"].as_u64().unwrap();
    assert!(
        text(&o).contains(&format!("another beamflow server (pid {pid}, https://")),
        "{}",
        text(&o)
    );
    // The first one's server.json is still there, and it still answers.
    let now: Value =
        serde_json::from_str(&std::fs::read_to_string(env.home.join("server.json")).unwrap())
            .unwrap();
    assert_eq!(now, first);
    rt().block_on(async { c.flows().await.unwrap() });
    env.beamflow_ok(&["flow", "list"]);
}

#[test]
fn prune_wants_a_unit_and_a_dry_run_says_the_cut_off_first() {
    let env = Env::new();
    let (_server, _c) = env.server("127.0.0.1:0", &[]);
    let o = beamflow(&env, &["admin", "prune", "--older-than", "30"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("`30` has no unit: give one, e.g. 30d or 12h"),
        "{}",
        text(&o)
    );
    let dry = env.beamflow_ok(&["admin", "prune", "--older-than", "30d", "--dry-run"]);
    let first = dry.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("cut-off: 20") && first.ends_with("(30days ago)"),
        "{dry}"
    );
    assert!(dry.contains("would prune 0 runs"), "{dry}");
}

#[test]
fn run_local_keeps_its_results_under_the_home_and_says_where() {
    let env = Env::new();
    let flow = env.fixture("hello");
    let o = beamflow(&env, &["run", flow.to_str().unwrap(), "--local", "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = env.home.join("local/runs/hello/1");
    assert!(dir.is_dir(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("the run's files: {}", dir.display())),
        "{}",
        text(&o)
    );
    // The local store keeps the run.
    let o = beamflow(&env, &["run", flow.to_str().unwrap(), "--local", "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(env.home.join("local/runs/hello/2").is_dir());
}

#[test]
fn a_relative_path_given_with_set_means_the_callers_directory() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _pilot = env.pilot("elsewhere", 2);
    let here = tempfile::tempdir().unwrap();
    beamflow::cli::demo::generate_frames(&here.path().join("frames"), 2, 1000).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs/demo.toml");
    rt().block_on(wait_pilots(&c, 1));
    // The pilot runs in another directory than the one the user types in.
    let o = Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .current_dir(here.path())
        .args(["--json", "run"])
        .arg(&demo)
        .args(["--set", "src=frames", "--wait"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let src = shown["run"]["input"]["src"].as_str().unwrap().to_string();
    assert_eq!(Path::new(&src), here.path().join("frames"));
    assert_eq!(shown["run"]["state"], "succeeded");
}

#[test]
fn braggnn_synthetic_makes_the_directory_of_its_file() {
    let env = Env::new();
    let file = env.home.join("new/dir/patches.h5");
    let o = beamflow(
        &env,
        &[
            "kernel",
            "braggnn",
            "synthetic",
            "-o",
            file.to_str().unwrap(),
            "--count",
            "64",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(file.is_file());
}
