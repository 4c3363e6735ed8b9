//! The order ready steps start in, and reservation pilots kept for realtime steps.

use super::*;

/// Start order of the runs' only steps on a pilot that runs one at a time.
async fn start_order(c: &Client, ids: &[u64]) -> Vec<u64> {
    let mut started: Vec<(i64, u64)> = Vec::new();
    for &id in ids {
        let d = detail(c, id).await;
        let a = d.attempts.iter().find(|a| a.state == "succeeded").unwrap();
        started.push((a.started_us.unwrap(), id));
    }
    started.sort();
    started.into_iter().map(|(_, id)| id).collect()
}

#[test]
fn waiting_steps_start_by_class_deadline_priority_then_age() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let plain = env.fixture("plain");
    let high = env.fixture("high");
    let due = env.fixture("due");
    let rt_flow = env.fixture("rt-low-priority");
    // One core and no prefetch: every placement is a choice among all waiting steps.
    let _p = env.pilot_with("solo", 1, &["--idle-timeout", "0s", "--prefetch", "0"]);
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        for f in [&plain, &high, &due, &rt_flow] {
            c.register(f).await.unwrap();
        }
        // The first keeps the pilot busy while the others queue up.
        let first = c.submit("plain", None, vec![json!({})]).await.unwrap()[0];
        wait_first_attempt(&c, first, "running").await;
        let older_plain = c.submit("plain", None, vec![json!({})]).await.unwrap()[0];
        let h = c.submit("high", None, vec![json!({})]).await.unwrap()[0];
        let d = c.submit("due", None, vec![json!({})]).await.unwrap()[0];
        let r = c.submit("rt", None, vec![json!({})]).await.unwrap()[0];
        let ids = [first, older_plain, h, d, r];
        c.wait(&ids, false, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(
            start_order(&c, &ids).await,
            vec![first, r, d, h, older_plain]
        );
    });
}

#[test]
fn a_reservation_pilot_keeps_to_realtime_steps_while_busy() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let rt_flow = env.fixture("rt-sleep");
    let cpu_flow = env.fixture("cpu-true");
    // Two cores in the reservation: one is free while the realtime step runs.
    let _p = env.pilot_with(
        "resv",
        2,
        &[
            "--idle-timeout",
            "0s",
            "--reservation",
            "beam",
            "--targets",
            "realtime,cpu",
        ],
    );
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&rt_flow).await.unwrap();
        c.register(&cpu_flow).await.unwrap();
        let r = c.submit("rt", None, vec![json!({})]).await.unwrap()[0];
        wait_first_attempt(&c, r, "running").await;
        let w = c.submit("cpu", None, vec![json!({})]).await.unwrap()[0];
        // The free core is not given to backfill work while realtime runs.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(detail(&c, w).await.attempts[0].state, "ready");
        c.wait(&[r, w], false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        let rt_end = detail(&c, r).await.attempts[0].finished_us.unwrap();
        let w_start = detail(&c, w).await.attempts[0].started_us.unwrap();
        assert!(
            w_start >= rt_end,
            "backfill started before the pilot was idle"
        );
    });
}
