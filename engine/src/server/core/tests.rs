//! The core's rules, driven by messages as the API and pilot connections
//! send them, with a store in a temporary directory: no sockets, no
//! processes. A "pilot" here is the channel the core writes its messages to.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::runs::StepState;
use super::{AgentMsg, AllocConfig, Core, CoreConfig, CoreMsg};
use crate::api::{AttemptId, AttemptState, PilotId, PilotState, RunId, RunState};
use crate::protocol::{FromPilot, Outcome, PilotInfo, TaskResult, TaskSpec, ToPilot};
use crate::resources::Resources;
use crate::site::SiteConfig;
use crate::store::{self, Durability, Location, Store};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Harness {
    core: Core,
    store: Store,
    next_conn: u64,
    /// The site (and whether preemptable) the next pilots say they run at.
    at: Option<(String, bool)>,
    _dir: tempfile::TempDir,
    _me: mpsc::UnboundedReceiver<CoreMsg>,
}

/// A pilot as the core sees it: its id, its connection and what the core
/// sent it.
struct FakePilot {
    id: PilotId,
    conn: u64,
    rx: mpsc::UnboundedReceiver<Vec<ToPilot>>,
    /// The welcome it was sent.
    welcome: ToPilot,
    /// Received with the welcome, not yet looked at.
    unread: Vec<ToPilot>,
}

impl FakePilot {
    /// Everything the core has sent since the last look.
    fn inbox(&mut self) -> Vec<ToPilot> {
        let mut out = std::mem::take(&mut self.unread);
        while let Ok(batch) = self.rx.try_recv() {
            out.extend(batch);
        }
        out
    }

    fn tasks(&mut self) -> Vec<TaskSpec> {
        self.inbox()
            .into_iter()
            .flat_map(|m| match m {
                ToPilot::Tasks { tasks } => tasks,
                _ => vec![],
            })
            .collect()
    }
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Location::Sqlite(dir.path().join("core.db")),
            Durability::Normal,
        )
        .unwrap();
        let cfg = CoreConfig {
            pilot_timeout: TIMEOUT,
            heartbeat: Duration::from_secs(2),
            runs_dir: dir.path().join("runs").display().to_string(),
            site: SiteConfig::local(),
            alloc: AllocConfig {
                poll_interval: Duration::from_secs(60),
                patience: Duration::from_secs(120),
                dir: dir.path().join("alloc"),
                exe: "beamflow".into(),
                url: "http://127.0.0.1:1".into(),
                token_file: dir.path().join("pilot-token"),
                server_cert: None,
            },
        };
        let (me, me_rx) = mpsc::unbounded_channel();
        let (updates, _) = broadcast::channel(1024);
        let core = Core::load(cfg, store.clone(), me, updates).unwrap();
        Harness {
            core,
            store,
            next_conn: 1,
            at: None,
            _dir: dir,
            _me: me_rx,
        }
    }

    /// Places what is ready and commits; the effects (messages to pilots,
    /// replies) have run when this returns.
    async fn commit(&mut self) {
        self.core.step();
        self.store.flush().await;
    }

    fn register(&mut self, src: &str) -> String {
        let spec = crate::flow::parse(src, "t.toml", None).unwrap();
        let name = spec.name.clone();
        self.core
            .register(spec, src.to_string(), "t.toml".into())
            .unwrap();
        name
    }

    fn submit(&mut self, flow: &str) -> RunId {
        self.core.submit(flow, None, vec![json!({})]).unwrap()[0]
    }

    async fn pilot(&mut self, cpus: u32, targets: &[&str], prefetch: u32) -> FakePilot {
        self.gpu_pilot(cpus, 0, targets, prefetch).await
    }

    async fn gpu_pilot(
        &mut self,
        cpus: u32,
        gpus: u32,
        targets: &[&str],
        prefetch: u32,
    ) -> FakePilot {
        let conn = self.next_conn;
        self.next_conn += 1;
        let info = PilotInfo {
            name: format!("p{conn}"),
            host: "node".into(),
            resources: Resources {
                cpus,
                gpus,
                ..Resources::NONE
            },
            gpu_ids: (0..gpus).collect(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            walltime_end_us: None,
            batch_job: None,
            reservation: None,
            site: self.at.as_ref().map(|a| a.0.clone()),
            preemptable: self.at.as_ref().is_some_and(|a| a.1),
            prefetch,
            version: String::new(),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (id_tx, id_rx) = oneshot::channel();
        self.core.hello(conn, None, info, vec![], tx, id_tx);
        self.commit().await;
        let id = id_rx.await.unwrap();
        let mut first = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            first.extend(batch);
        }
        assert!(matches!(first.first(), Some(ToPilot::Welcome { .. })));
        let unread = first.split_off(1);
        FakePilot {
            id,
            conn,
            rx,
            welcome: first.remove(0),
            unread,
        }
    }

    /// A site run by an agent, its config `toml`; the agent's end of the
    /// link (keep it, or the agent counts as gone).
    async fn agent_site(
        &mut self,
        toml: &str,
    ) -> mpsc::UnboundedReceiver<crate::agent::wire::ToAgent> {
        let site = SiteConfig::parse(toml, "agent-site.toml").unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ok_tx, ok_rx) = oneshot::channel();
        self.core.agent_msg(AgentMsg::Hello {
            conn: 900 + self.next_conn,
            host: "login".into(),
            version: String::new(),
            site: Box::new(site),
            tx,
            reply: ok_tx,
        });
        self.commit().await;
        ok_rx.await.unwrap().unwrap();
        rx
    }

    fn say(&mut self, p: &FakePilot, msgs: Vec<FromPilot>) {
        self.core.pilot_msgs(p.id, p.conn, msgs);
    }

    /// The pilot says it started `t`.
    fn started(&mut self, p: &FakePilot, t: &TaskSpec) {
        self.say(
            p,
            vec![FromPilot::Started {
                attempt: t.attempt,
                at_us: 1,
            }],
        );
    }

    fn result(&mut self, p: &FakePilot, t: &TaskSpec, outcome: Outcome) {
        let r = TaskResult {
            attempt: t.attempt,
            outputs: json!({ "exit_code": 0 }),
            error: (outcome == Outcome::Failed).then(|| "exit 1".to_string()),
            exit_code: Some(i32::from(outcome == Outcome::Failed)),
            started_us: 1,
            finished_us: 2,
            outcome,
        };
        self.say(p, vec![FromPilot::Finished(r)]);
    }

    fn run_row(&self, id: RunId) -> store::RunDetail {
        self.store.read(|c| store::run(c, id.0)).unwrap().unwrap()
    }
}

fn one_step(name: &str, extra: &str, step_extra: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = 1\n{extra}\n[[steps]]\nname = \"a\"\naction = \"shell\"\n\
         params = {{ argv = [\"true\"] }}\n{step_extra}\n"
    )
}

#[tokio::test]
async fn realtime_then_deadline_then_priority_then_age() {
    let mut h = Harness::new();
    let plain = h.register(&one_step("plain", "", ""));
    let urgent = h.register(&one_step("urgent", "priority = 5", ""));
    let due = h.register(&one_step("due", "deadline = \"10m\"", ""));
    let rt = h.register(&one_step("rt", "priority = -3", "on = \"realtime\""));
    // Submitted in the reverse of the order they must run in, but for the
    // two plain runs, of which the older goes first.
    let old = h.submit(&plain);
    let new = h.submit(&plain);
    let u = h.submit(&urgent);
    let d = h.submit(&due);
    let r = h.submit(&rt);
    h.commit().await;
    // One core, no prefetch: one attempt at a time, each placed when the
    // one before it ends.
    let mut p = h.pilot(1, &["cpu", "realtime"], 0).await;
    let mut order = Vec::new();
    for _ in 0..5 {
        let tasks = p.tasks();
        assert_eq!(tasks.len(), 1, "one task at a time: {tasks:?}");
        order.push(RunId(tasks[0].run));
        h.result(&p, &tasks[0], Outcome::Succeeded);
        h.commit().await;
    }
    assert_eq!(order, vec![r, d, u, old, new]);
    for id in order {
        assert_eq!(h.run_row(id).run.state, RunState::Succeeded);
    }
}

#[tokio::test]
async fn a_failed_try_is_retried_after_its_back_off_then_the_run_fails() {
    let mut h = Harness::new();
    let f = h.register(&one_step(
        "flaky",
        "",
        "retries = { count = 2, backoff = \"10s\" }",
    ));
    let run = h.submit(&f);
    let mut p = h.pilot(1, &["cpu"], 0).await;
    h.commit().await;
    let mut delays = Vec::new();
    for try_no in 1..=3u32 {
        let t = p.tasks().pop().expect("a task for this try");
        assert!(t.task_dir.ends_with(&format!("attempt-{try_no}")), "{t:?}");
        h.result(&p, &t, Outcome::Failed);
        let failed_at = Instant::now();
        h.commit().await;
        if try_no == 3 {
            break;
        }
        // Waiting: nothing is placed before the back-off has passed.
        assert_eq!(h.core.runs[&run].steps[0].state, StepState::Waiting);
        let (&(at, _), _) = h.core.retries.iter().next().expect("a retry is due");
        delays.push(at.duration_since(failed_at).as_secs_f64());
        h.core.retries_due(at - Duration::from_millis(50));
        h.commit().await;
        assert!(p.tasks().is_empty(), "retried before its back-off");
        h.core.retries_due(at);
        h.commit().await;
        // The next iteration takes the new attempt.
        assert_eq!(h.core.runs[&run].steps[0].state, StepState::Active);
        // `p.tasks()` at the top of the loop sees it.
    }
    // 10 s, then doubled.
    assert!((delays[0] - 10.0).abs() < 0.5, "{delays:?}");
    assert!((delays[1] - 20.0).abs() < 0.5, "{delays:?}");
    let d = h.run_row(run);
    assert_eq!(d.run.state, RunState::Failed);
    let err = d.run.error.unwrap();
    assert!(err.contains("failed after 3 tries: exit 1"), "{err}");
    let states: Vec<AttemptState> = d.attempts.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AttemptState::Failed; 3]);
    assert!(d.attempts.iter().all(|a| a.counts_retry));
    let scheduled = d
        .events
        .iter()
        .filter(|e| e.kind == "retry_scheduled")
        .count();
    assert_eq!(scheduled, 2);
}

#[tokio::test]
async fn a_pilot_lost_mid_task_has_its_task_requeued_without_using_a_try() {
    let mut h = Harness::new();
    // No retries: a lost pilot must not count against them.
    let f = h.register(&one_step("once", "", ""));
    let run = h.submit(&f);
    let mut first = h.pilot(1, &["cpu"], 0).await;
    h.commit().await;
    let t = first.tasks().pop().expect("dispatched to the first pilot");
    h.started(&first, &t);
    h.commit().await;
    // A second pilot with room is there, but the attempt stays with the
    // first while it may come back.
    let mut second = h.pilot(1, &["cpu"], 0).await;
    h.core.pilot_gone(first.id, first.conn);
    h.commit().await;
    assert!(second.tasks().is_empty());
    // The timeout later; the second pilot has kept sending heartbeats.
    let later = Instant::now() + TIMEOUT;
    h.core.pilots.get_mut(&second.id).unwrap().last_seen = later;
    h.core.tick_at(later);
    h.commit().await;
    let again = second.tasks().pop().expect("requeued to the second pilot");
    assert_ne!(again.attempt, t.attempt);
    assert!(again.task_dir.ends_with("attempt-2"));
    assert_eq!(h.core.runs[&run].steps[0].failures, 0, "no try used");
    assert_eq!(h.core.runs[&run].steps[0].crashes, 1);
    // A kernel step would now run in a process of its own; a shell step
    // always does.
    h.result(&second, &again, Outcome::Succeeded);
    h.commit().await;
    let d = h.run_row(run);
    assert_eq!(d.run.state, RunState::Succeeded);
    let lost = &d.attempts[0];
    assert_eq!(lost.state, AttemptState::Lost);
    assert!(!lost.counts_retry);
    assert!(lost.error.as_deref().unwrap().contains("did not reconnect"));
    assert_eq!(d.attempts[1].state, AttemptState::Succeeded);
    assert!(!h.core.pilots.contains_key(&first.id));
}

/// A preemptable pilot's running step goes back as `preempted`, costing
/// neither a try nor a crash, and its next attempt prefers another site's
/// pilot over an idle one at the same site; each placement says where.
/// A pilot at a site an agent runs is welcomed with that site's transfer
/// rules (its allowed roots and remotes), a pilot of the server's own site
/// with the server's.
#[tokio::test]
async fn a_pilot_at_an_agents_site_moves_data_by_that_sites_rules() {
    let mut h = Harness::new();
    let _agent = h
        .agent_site("name = \"beta\"\nscheduler = \"slurm\"\n\n[transfer]\nallowed_roots = [\"/beta/scratch\"]\n")
        .await;
    h.at = Some(("beta".into(), false));
    let at_beta = h.pilot(1, &["cpu"], 0).await;
    h.at = None;
    let here = h.pilot(1, &["cpu"], 0).await;
    let roots = |p: &FakePilot| match &p.welcome {
        ToPilot::Welcome { transfer, .. } => transfer.allowed_roots.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(roots(&at_beta), ["/beta/scratch"]);
    assert_eq!(roots(&here), h.core.cfg.site.transfer.allowed_roots);
    assert_ne!(roots(&here), roots(&at_beta));
}

/// A step that stages from remote `aps` waits while only pilots of a site
/// without that remote are connected (explain says why), and goes to the
/// first pilot of a site that declares it.
#[tokio::test]
async fn a_step_staging_from_a_remote_goes_only_to_a_site_that_reaches_it() {
    let mut h = Harness::new();
    let f = h.register(&one_step(
        "staged",
        "",
        "stage = { raw = \"aps:/gdata/8idi/x.h5\" }",
    ));
    let _agent = h
        .agent_site("name = \"beta\"\nscheduler = \"slurm\"\n\n[transfer.remotes.aps]\nhost = \"dtn.aps\"\n")
        .await;
    let mut here = h.pilot(1, &["cpu"], 0).await;
    let run = h.submit(&f);
    h.commit().await;
    assert!(
        here.tasks().is_empty(),
        "the server's own site has no remote aps"
    );
    let why: Vec<String> = h
        .core
        .explain(run)
        .into_iter()
        .flat_map(|s| s.pilots.into_iter().map(|p| p.why))
        .collect();
    assert!(
        why.iter()
            .any(|w| w.contains("its site local declares no transfer remote `aps`")),
        "{why:?}"
    );
    h.at = Some(("beta".into(), false));
    let mut there = h.pilot(1, &["cpu"], 0).await;
    h.commit().await;
    let t = there.tasks().pop().expect("placed at beta");
    assert_eq!(t.stage[0].remote(), Some("aps"));
    assert_eq!(t.stage[0].path(), format!("{}/staged/raw/x.h5", t.task_dir));
    assert!(here.tasks().is_empty());
}

#[tokio::test]
async fn a_preempted_pilots_step_is_placed_at_another_site_first_for_free() {
    let mut h = Harness::new();
    let f = h.register(&one_step("once", "", ""));
    let run = h.submit(&f);
    h.at = Some(("alpha".into(), true));
    let mut doomed = h.pilot(1, &["cpu"], 0).await;
    h.commit().await;
    let t = doomed.tasks().pop().expect("dispatched");
    h.started(&doomed, &t);
    h.commit().await;
    // Another pilot at alpha first (better placed by load and id), then one at beta.
    let mut same = h.pilot(1, &["cpu"], 0).await;
    h.at = Some(("beta".into(), false));
    let mut other = h.pilot(1, &["cpu"], 0).await;
    h.say(
        &doomed,
        vec![FromPilot::Bye {
            reason: "terminated".into(),
        }],
    );
    h.commit().await;
    assert!(same.tasks().is_empty(), "not at the site that preempted it");
    let again = other.tasks().pop().expect("placed at beta");
    let st = &h.core.runs[&run].steps[0];
    assert_eq!((st.failures, st.crashes), (0, 0));
    h.result(&other, &again, Outcome::Succeeded);
    h.commit().await;
    let d = h.run_row(run);
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.attempts[0].state, AttemptState::Preempted);
    assert!(!d.attempts[0].counts_retry);
    let placed: Vec<&str> = d
        .events
        .iter()
        .filter(|e| e.kind == "placed")
        .filter_map(|e| e.detail.as_deref())
        .collect();
    let last = placed.last().expect("a placed event");
    assert!(
        last.starts_with("site beta (pilot ")
            && last.contains("a warm idle pilot")
            && last.contains("the step's last pilot, at alpha, was preempted"),
        "{placed:?}"
    );
}

#[tokio::test]
async fn a_cancel_racing_a_result_keeps_the_run_cancelled() {
    let mut h = Harness::new();
    let two = "name = \"two\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"shell\"\n\
               params = { argv = [\"true\"] }\n[[steps]]\nname = \"b\"\naction = \"shell\"\n\
               params = { argv = [\"true\"] }\n";
    let f = h.register(two);
    let run = h.submit(&f);
    let mut p = h.pilot(1, &["cpu"], 0).await;
    h.commit().await;
    let t = p.tasks().pop().expect("step a dispatched");
    h.started(&p, &t);
    // The user cancels; in the same drain, before the cancel reached the
    // pilot, its result arrives.
    let msg = h.core.cancel(run).unwrap();
    assert_eq!(msg, format!("run {run} cancelled"));
    h.result(&p, &t, Outcome::Succeeded);
    h.commit().await;
    let inbox = p.inbox();
    let cancels: Vec<u64> = inbox
        .iter()
        .flat_map(|m| match m {
            ToPilot::Cancel { attempts } => attempts.clone(),
            _ => vec![],
        })
        .collect();
    let acks: Vec<u64> = inbox
        .iter()
        .flat_map(|m| match m {
            ToPilot::Ack { attempts } => attempts.clone(),
            _ => vec![],
        })
        .collect();
    assert_eq!(cancels, vec![t.attempt], "the pilot is told to stop it");
    assert_eq!(acks, vec![t.attempt], "and its result is acknowledged");
    assert!(
        !inbox.iter().any(|m| matches!(m, ToPilot::Tasks { .. })),
        "step b never starts: {inbox:?}"
    );
    let d = h.run_row(run);
    assert_eq!(d.run.state, RunState::Cancelled);
    assert_eq!(d.run.error.as_deref(), Some("cancelled by user"));
    assert_eq!(d.attempts.len(), 1);
    // What the pilot said is kept as it said it.
    assert_eq!(d.attempts[0].state, AttemptState::Succeeded);
    assert!(!h.core.runs.contains_key(&run));
    assert!(!h.core.attempts.contains_key(&AttemptId(t.attempt)));
    // A second cancel is refused with the run's state.
    let e = h.core.cancel(run).unwrap_err();
    assert_eq!(e.status, 409);
    assert!(e.message.contains("already cancelled"), "{}", e.message);
    // The same result sent again after a reconnect changes nothing.
    h.result(&p, &t, Outcome::Failed);
    h.commit().await;
    assert_eq!(h.run_row(run).attempts[0].state, AttemptState::Succeeded);
}

#[tokio::test]
async fn a_retry_waiting_for_its_back_off_survives_a_restart() {
    let mut h = Harness::new();
    let f = h.register(&one_step(
        "flaky",
        "",
        "retries = { count = 1, backoff = \"1h\" }",
    ));
    let run = h.submit(&f);
    let mut p = h.pilot(1, &["cpu"], 0).await;
    h.commit().await;
    let t = p.tasks().pop().unwrap();
    h.result(&p, &t, Outcome::Failed);
    h.commit().await;
    // A new core on the same store: the waiting step is retried at once
    // rather than forgotten.
    let (me, _me_rx) = mpsc::unbounded_channel();
    let (updates, _) = broadcast::channel(16);
    let cfg = h.core.cfg.clone();
    let mut restarted = Core::load(cfg, h.store.clone(), me, updates).unwrap();
    assert_eq!(restarted.retries.len(), 1);
    restarted.retries_due(Instant::now());
    let step = &restarted.runs[&run].steps[0];
    assert_eq!(
        (step.state, step.attempts, step.failures),
        (StepState::Active, 2, 1)
    );
}

fn gpu_flow(name: &str, resources: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = 1\n[[steps]]\nname = \"fit\"\naction = \"shell\"\n\
         on = \"gpu\"\nresources = {resources}\nparams = {{ argv = [\"true\"] }}\n"
    )
}

#[tokio::test]
async fn a_gpu_step_runs_its_cpu_variant_where_no_pilot_serves_gpu() {
    let mut h = Harness::new();
    let either = h.register(&gpu_flow(
        "either",
        "{ variants = [{ gpus = 1, cpus = 2 }, { cpus = 1 }] }",
    ));
    let only_gpu = h.register(&gpu_flow("only-gpu", "{ gpus = 1 }"));
    let run = h.submit(&either);
    let stuck = h.submit(&only_gpu);
    let mut cpu = h.pilot(2, &["cpu", "edge", "realtime"], 0).await;
    h.commit().await;
    let tasks = cpu.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(RunId(tasks[0].run), run, "the step with a CPU variant runs");
    // The other waits, and says why.
    let e = h.core.explain(stuck);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].state, AttemptState::Ready);
    assert_eq!(
        e[0].waiting.as_deref(),
        Some(
            "waiting: no connected pilot serves target gpu (and the step has no variant \
             without GPUs to run on a cpu pilot)"
        )
    );
    assert_eq!(e[0].pilots.len(), 1);
    assert!(!e[0].pilots[0].takes);
    assert_eq!(e[0].pilots[0].why, "serves cpu, edge, realtime, not gpu");
    // Once a GPU pilot is connected, gpu steps wait for it, not for the
    // CPUs: the full GPU pilot takes the stuck step, the next waits.
    let mut gpu = h.gpu_pilot(1, 1, &["cpu", "gpu"], 0).await;
    h.commit().await;
    assert_eq!(RunId(gpu.tasks()[0].run), stuck);
    let third = h.submit(&either);
    h.commit().await;
    assert!(
        cpu.tasks().is_empty(),
        "the cpu pilot takes no gpu step now"
    );
    assert!(gpu.tasks().is_empty());
    let e = h.core.explain(third);
    assert_eq!(
        e[0].waiting.as_deref(),
        Some("waiting for a pilot with free resources (see each pilot's reason)")
    );
    let why: Vec<&str> = e[0].pilots.iter().map(|p| p.why.as_str()).collect();
    assert_eq!(
        why,
        vec![
            "serves cpu, edge, realtime, not gpu",
            "busy: 0 cpus free, its prefetch queue full (0 waiting)"
        ]
    );
}

#[tokio::test]
async fn after_a_restart_pilots_are_disconnected_until_they_come_back_under_their_ids() {
    let mut h = Harness::new();
    let p = h.pilot(2, &["cpu"], 0).await;
    let (me, _me_rx) = mpsc::unbounded_channel();
    let (updates, _) = broadcast::channel(16);
    let cfg = h.core.cfg.clone();
    h.core = Core::load(cfg, h.store.clone(), me, updates).unwrap();
    h.store.flush().await;
    let row = |h: &Harness| {
        let rows = h.store.read(store::pilots).unwrap();
        assert_eq!(rows.len(), 1, "no ghost rows");
        (rows[0].id, rows[0].state)
    };
    assert_eq!(row(&h), (p.id.0, PilotState::Disconnected));
    // It reconnects, naming its id: the same pilot, connected again.
    let (tx, _rx) = mpsc::unbounded_channel();
    let (id_tx, id_rx) = oneshot::channel();
    let info = h.core.pilots[&p.id].info.clone();
    h.core.hello(9, Some(p.id), info, vec![], tx, id_tx);
    h.commit().await;
    assert_eq!(id_rx.await.unwrap(), p.id);
    assert_eq!(row(&h), (p.id.0, PilotState::Connected));
    // One that does not come back is lost after the pilot timeout.
    h.core.pilot_gone(p.id, 9);
    h.core.tick_at(Instant::now() + TIMEOUT);
    h.commit().await;
    assert_eq!(row(&h), (p.id.0, PilotState::Lost));
}
