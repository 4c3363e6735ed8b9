//! The manager's rules, each with a fake clock.

use super::*;
use crate::alloc::Reservation;
use crate::batch::End;
use crate::site::SiteConfig;

fn spec(target: &str) -> QueueSpec {
    let site = SiteConfig::parse(
        "name = \"t\"\nscheduler = \"slurm\"\n[targets.cpu]\nqueue = \"debug\"\nwalltime = \"1h\"\ncpus_per_node = 4\n[targets.realtime]\nqueue = \"debug\"\nwalltime = \"1h\"\ncpus_per_node = 4\n",
        "t.toml",
    )
    .unwrap();
    QueueSpec {
        target: site.effective(target).unwrap(),
        max_jobs: 3,
        max_nodes: None,
        backlog: 2,
        nodes_per_job: 1,
        walltime_s: 3600,
        idle_timeout_s: 300,
        reservation: None,
    }
}

fn demand(target: &str, tasks: u32, cpus_each: u64) -> BTreeMap<String, Demand> {
    let mut d = BTreeMap::new();
    d.insert(
        target.to_string(),
        Demand {
            tasks,
            cpus: tasks as u64 * cpus_each,
            gpus: 0,
        },
    );
    d
}

fn submits(cmds: &[Command]) -> Vec<(u32, u32)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Submit { number, nodes, .. } => Some((*number, *nodes)),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_waits_nothing_is_submitted() {
    let mut m = Manager::new(60.0);
    m.add(spec("cpu"), 0);
    assert!(m.plan(1, &BTreeMap::new()).is_empty());
    // Work for another target is not ours.
    assert!(m.plan(2, &demand("gpu", 5, 1)).is_empty());
}

#[test]
fn submits_for_demand_within_backlog_and_counts_queued_jobs() {
    let mut m = Manager::new(60.0);
    let q = m.add(spec("cpu"), 0);
    // 10 one-cpu tasks on 4-cpu nodes: 3 nodes wanted, backlog 2 allows 2.
    let c = m.plan(0, &demand("cpu", 10, 1));
    assert_eq!(submits(&c), vec![(1, 1), (2, 1)]);
    // While those submissions are under way nothing more is sent.
    assert!(submits(&m.plan(1, &demand("cpu", 10, 1))).is_empty());
    m.submitted(q, 1, "/a/1", Ok("101".into()), 2);
    m.submitted(q, 2, "/a/2", Ok("102".into()), 2);
    // Two queued jobs cover two of the three nodes; the backlog is full.
    assert!(submits(&m.plan(3, &demand("cpu", 10, 1))).is_empty());
    // The first starts: one queued, one backlog slot free, one node still wanted.
    assert_eq!(m.pilot_connected(7, None, "101", 4), Some(q));
    assert_eq!(submits(&m.plan(5, &demand("cpu", 10, 1))), vec![(3, 1)]);
    m.submitted(q, 3, "/a/3", Ok("103".into()), 6);
    // max_jobs 3 reached: no more, however much waits.
    m.pilot_connected(8, None, "102", 7);
    m.pilot_connected(9, None, "103", 7);
    assert!(submits(&m.plan(8, &demand("cpu", 100, 1))).is_empty());
    let info = &m.info(20)[0];
    assert_eq!((info.queued_jobs, info.running_jobs), (0, 3));
}

#[test]
fn max_nodes_caps_the_total() {
    let mut m = Manager::new(60.0);
    let mut s = spec("cpu");
    s.max_nodes = Some(3);
    s.nodes_per_job = 2;
    s.backlog = 5;
    s.max_jobs = 5;
    m.add(s, 0);
    // 40 cpus wanted = 10 nodes; jobs of 2 nodes; 3 nodes at most → one job.
    let c = m.plan(0, &demand("cpu", 40, 1));
    assert_eq!(submits(&c), vec![(1, 2)]);
}

#[test]
fn failures_back_off_then_pause() {
    let mut m = Manager::new(60.0);
    let q = m.add(spec("cpu"), 0);
    let d = demand("cpu", 1, 1);
    let mut now = 0;
    for i in 1..=MAX_SUBMIT_FAILURES {
        let c = m.plan(now, &d);
        assert_eq!(submits(&c).len(), 1, "try {i} at {now}");
        let (n, _) = submits(&c)[0];
        m.submitted(
            q,
            n,
            "/a",
            Err("sbatch: error: invalid partition".into()),
            now,
        );
        let delay = BACKOFF_US[(i as usize).min(4)];
        // Nothing during the back-off…
        assert!(submits(&m.plan(now + delay - 1, &d)).is_empty());
        now += delay;
    }
    // …and after ten failures the queue is paused with the reason.
    assert!(submits(&m.plan(now + 1, &d)).is_empty());
    let info = &m.info(20)[0];
    assert_eq!(info.state, "paused");
    assert!(info
        .paused_reason
        .as_ref()
        .unwrap()
        .contains("invalid partition"));
    let log = m.take_changes().log;
    assert!(log
        .iter()
        .any(|e| e.level == "error" && e.message.contains("invalid partition")));
    assert!(log.last().unwrap().message.contains("queue paused"));
    // Resume clears it.
    m.resume(q, now + 2).unwrap();
    assert_eq!(submits(&m.plan(now + 3, &d)).len(), 1);
}

#[test]
fn a_success_resets_the_back_off() {
    let mut m = Manager::new(60.0);
    let q = m.add(spec("cpu"), 0);
    let d = demand("cpu", 8, 1);
    m.plan(0, &d);
    m.submitted(q, 1, "/a", Err("boom".into()), 0);
    m.submitted(q, 2, "/a", Ok("5".into()), 0);
    assert_eq!(m.queue(q).unwrap().submit_failures, 0);
    assert_eq!(submits(&m.plan(1, &d)).len(), 1);
}

#[test]
fn jobs_that_never_start_pause_the_queue() {
    let mut m = Manager::new(10.0);
    let q = m.add(spec("cpu"), 0);
    let d = demand("cpu", 1, 1);
    let mut now = 0;
    for i in 0..MAX_START_FAILURES {
        let c = m.plan(now, &d);
        let (n, _) = submits(&c)[0];
        let id = format!("{}", 200 + i);
        m.submitted(q, n, "/a", Ok(id.clone()), now);
        now += 10 * S;
        // The poll finds it failed (bad pilot path, say) before a pilot connected.
        let c = m.plan(now, &d);
        let asked = match &c[..] {
            [Command::Status { jobs, .. }] => jobs.clone(),
            other => panic!("expected one poll, got {other:?}"),
        };
        assert_eq!(asked, vec![id.clone()]);
        let mut st = BTreeMap::new();
        st.insert(
            id.clone(),
            JobState::Finished {
                end: End::Failed,
                exit: Some(127),
            },
        );
        m.statuses(q, &asked, Ok(st), now);
    }
    let info = &m.info(20)[0];
    assert_eq!(info.state, "paused");
    assert!(
        info.paused_reason
            .as_ref()
            .unwrap()
            .contains("before a pilot connected"),
        "{info:?}"
    );
    assert!(submits(&m.plan(now + 1, &d)).is_empty());
}

#[test]
fn pilots_tell_start_and_end_and_polls_tolerate_forgetful_schedulers() {
    let mut m = Manager::new(10.0);
    let q = m.add(spec("cpu"), 0);
    m.plan(0, &demand("cpu", 1, 1));
    m.submitted(q, 1, "/a", Ok("349710.polaris-pbs-01".into()), 0);
    // PBS_JOBID carries the full server name.
    assert_eq!(
        m.pilot_connected(
            3,
            None,
            "349710.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
            S
        ),
        Some(q)
    );
    // A running job with its pilot connected is not polled for a long time.
    assert!(m.plan(100 * S, &BTreeMap::new()).is_empty());
    m.pilot_gone(3, "idle for 300s", 200 * S);
    let j = &m.info(20)[0].jobs[0];
    assert_eq!(j.state, "ended");
    assert!(j.reason.as_ref().unwrap().contains("idle"));
    assert_eq!(m.queue(q).unwrap().start_failures, 0);

    // A queued job the scheduler forgets is kept for QUEUED_STATUS_ERRORS polls.
    m.plan(300 * S, &demand("cpu", 1, 1));
    m.submitted(q, 2, "/b", Ok("77".into()), 300 * S);
    let mut now = 300 * S;
    for i in 1..=QUEUED_STATUS_ERRORS {
        now += 10 * S;
        let c = m.plan(now, &BTreeMap::new());
        assert!(
            matches!(&c[..], [Command::Status { .. }]),
            "poll {i}: {c:?}"
        );
        m.statuses(q, &["77".to_string()], Ok(BTreeMap::new()), now);
        let state = m.job(q, "77").unwrap().phase;
        if i < QUEUED_STATUS_ERRORS {
            assert_eq!(state, Phase::Queued, "after {i} misses");
        } else {
            assert_eq!(state, Phase::Ended);
        }
    }
    // A failing squeue counts the same way but never crashes anything.
    m.statuses(q, &["77".to_string()], Err("squeue: timeout".into()), now);
}

#[test]
fn reservation_keeps_pilots_warm_in_its_window_only() {
    let mut m = Manager::new(60.0);
    let mut s = spec("cpu");
    s.reservation = Some(Reservation {
        name: "beam".into(),
        start_us: Some(1000 * S),
        end_us: Some(2000 * S),
        warm: 2,
    });
    s.backlog = 2;
    let q = m.add(s.clone(), 0);
    assert_eq!(s.serves(), vec!["realtime", "cpu"]);
    // Before the window: nothing, even with work waiting.
    assert!(submits(&m.plan(500 * S, &demand("realtime", 3, 1))).is_empty());
    // In the window: two warm pilots without any work, clamped to the window's end,
    // and they do not leave when idle.
    let c = m.plan(1500 * S, &BTreeMap::new());
    assert_eq!(submits(&c), vec![(1, 1), (2, 1)]);
    for cmd in &c {
        if let Command::Submit {
            walltime_s,
            idle_timeout_s,
            ..
        } = cmd
        {
            assert_eq!(*walltime_s, 500);
            assert_eq!(*idle_timeout_s, 0);
        }
    }
    m.submitted(q, 1, "/r1", Ok("1".into()), 1500 * S);
    m.submitted(q, 2, "/r2", Ok("2".into()), 1500 * S);
    assert!(submits(&m.plan(1501 * S, &BTreeMap::new())).is_empty());
    // Work for `cpu` does not grow a reservation queue; `realtime` work does.
    m.pilot_connected(1, None, "1", 1502 * S);
    m.pilot_connected(2, None, "2", 1502 * S);
    assert!(submits(&m.plan(1503 * S, &demand("cpu", 40, 1))).is_empty());
    assert_eq!(
        submits(&m.plan(1504 * S, &demand("realtime", 40, 1))).len(),
        1
    );
    // Too close to the end to be worth a job.
    let mut m2 = Manager::new(60.0);
    m2.add(s, 0);
    assert!(submits(&m2.plan(1950 * S, &BTreeMap::new())).is_empty());
}

#[test]
fn remove_refuses_live_jobs_unless_cancelled() {
    let mut m = Manager::new(60.0);
    let q = m.add(spec("cpu"), 0);
    m.plan(0, &demand("cpu", 1, 1));
    m.submitted(q, 1, "/a", Ok("9".into()), 0);
    let e = m.remove(q, false, 1).unwrap_err();
    assert!(e.contains("--cancel"), "{e}");
    let c = m.remove(q, true, 2).unwrap();
    assert_eq!(
        c,
        vec![Command::Cancel {
            queue: q,
            jobs: vec!["9".into()]
        }]
    );
    assert!(m.is_empty());
}

#[test]
fn restore_keeps_counters_and_open_jobs() {
    let mut m = Manager::new(60.0);
    let q = m.add(spec("cpu"), 0);
    m.plan(0, &demand("cpu", 1, 1));
    m.submitted(q, 1, "/a", Ok("42".into()), 0);
    let queue: Queue =
        serde_json::from_str(&serde_json::to_string(m.queue(q).unwrap()).unwrap()).unwrap();
    let job: Job =
        serde_json::from_str(&serde_json::to_string(m.job(q, "42").unwrap()).unwrap()).unwrap();
    let mut m2 = Manager::new(60.0);
    m2.restore(vec![queue], vec![(q, job)]);
    assert_eq!(m2.pilot_connected(5, None, "42", 10), Some(q));
    assert_eq!(m2.queue(q).unwrap().next_number, 2);
    // A new queue gets a fresh id.
    assert_eq!(m2.add(spec("cpu"), 11), q + 1);
}

fn at_site(target: &str, site: &str) -> QueueSpec {
    let mut s = spec(target);
    s.target.site = site.into();
    s
}

fn submitted_at(cmds: &[Command]) -> Vec<u64> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Submit { queue, .. } => Some(*queue),
            _ => None,
        })
        .collect()
}

/// Two sites' queues for one target: work goes to the one expected to
/// start soonest; a queued job later than the other's expected start
/// by more than the patience stops holding the work back, and the
/// submission says why, naming both.
#[test]
fn work_goes_to_the_queue_expected_to_start_soonest() {
    let mut m = Manager::new(60.0).with_patience(10.0);
    let a = m.add(at_site("cpu", "alpha"), 0);
    let b = m.add(at_site("cpu", "beta"), 0);
    let d = demand("cpu", 1, 1);
    // Nothing measured at either: the first queue, once.
    assert_eq!(submitted_at(&m.plan(0, &d)), vec![a]);
    m.submitted(a, 1, "/a", Ok("11".into()), 0);
    // alpha's job waits; within the patience nothing more is asked.
    assert!(submitted_at(&m.plan(5 * S, &d)).is_empty());
    // Later than beta's next (expected now) by more than 10 s: beta too.
    assert_eq!(submitted_at(&m.plan(11 * S, &d)), vec![b]);
    m.take_changes();
    m.submitted(b, 1, "/b", Ok("11".into()), 11 * S);
    let log = m.take_changes().log;
    let line = &log.iter().find(|e| e.queue == b).unwrap().message;
    assert!(
        line.contains(
            "routed to queue 2 at beta: expected start now (no job queued, no start measured yet)"
        ) && line.contains("queue 1 at alpha: 11.00 s (job 11 queued 11.00 s, none started yet)"),
        "{line}"
    );
    // beta's job is on time: nothing more while it waits.
    assert!(submitted_at(&m.plan(12 * S, &d)).is_empty());
    // Its pilot says its site: the same job id at alpha is not it.
    assert_eq!(m.pilot_connected(7, Some("beta"), "11", 13 * S), Some(b));
    assert_eq!(m.job(a, "11").unwrap().phase, Phase::Queued);
    assert!(m.job(b, "11").unwrap().routed.is_some());
    // New work: beta starts in 2 s as measured, alpha's job is late.
    let e = m.queues[&b].expected_start(20 * S);
    assert_eq!(e.us, 2 * S, "{e:?}");
    assert_eq!(submitted_at(&m.plan(20 * S, &demand("cpu", 2, 1))), vec![b]);
}
