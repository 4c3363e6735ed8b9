//! The Slurm adapter against a real one-node Slurm (scripts/slurm-cluster.sh,
//! started here if it is not up: root and Debian's packages, as in CI).

use std::time::{Duration, Instant};

use beamflow::batch::{End, JobId, JobState, Scheduler};

#[path = "support/slurm.rs"]
mod slurm;
use slurm::cluster;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_for(id: &JobId, done: impl Fn(&JobState) -> bool) -> JobState {
    let start = Instant::now();
    loop {
        let st = Scheduler::Slurm
            .status(std::slice::from_ref(id))
            .await
            .unwrap();
        if let Some(s) = st.get(id) {
            if done(s) {
                return s.clone();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job {id}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn submit_poll_and_cancel_real_slurm_jobs() {
    cluster();
    let t = tempfile::tempdir().unwrap();
    let script = t.path().join("job.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\n#SBATCH -o job-%j.out\necho hello\nexit 3\n",
    )
    .unwrap();
    rt().block_on(async {
        let id = Scheduler::Slurm.submit(&script, t.path()).await.unwrap();
        let st = wait_for(&id, |s| matches!(s, JobState::Finished { .. })).await;
        assert_eq!(
            st,
            JobState::Finished {
                end: End::Failed,
                exit: Some(3)
            }
        );
        let out = std::fs::read_to_string(t.path().join(format!("job-{id}.out"))).unwrap();
        assert_eq!(out.trim(), "hello");

        std::fs::write(&script, "#!/bin/bash\n#SBATCH -o /dev/null\nsleep 300\n").unwrap();
        let id = Scheduler::Slurm.submit(&script, t.path()).await.unwrap();
        wait_for(&id, |s| *s == JobState::Running).await;
        Scheduler::Slurm
            .cancel(std::slice::from_ref(&id))
            .await
            .unwrap();
        let st = wait_for(&id, |s| matches!(s, JobState::Finished { .. })).await;
        assert!(
            matches!(
                st,
                JobState::Finished {
                    end: End::Cancelled,
                    ..
                }
            ),
            "{st:?}"
        );
        // Cancelling it again, and asking about an id Slurm never had, are not errors.
        Scheduler::Slurm
            .cancel(std::slice::from_ref(&id))
            .await
            .unwrap();
        let unknown = JobId("999999".into());
        assert!(Scheduler::Slurm
            .status(&[unknown])
            .await
            .unwrap()
            .is_empty());

        // A script sbatch rejects: the error carries sbatch's own words.
        let e = Scheduler::Slurm
            .submit(&t.path().join("missing.sh"), t.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sbatch --parsable") && e.contains("missing.sh"),
            "{e}"
        );
    });
}
