//! Submitting a pilot job exactly once.
//!
//! Each job has its own directory (script, output, id). Before the
//! scheduler is asked, the directory records that a submission began
//! (`submitting`); after, the id it got (`job-id`). Asked again for the same
//! directory — the server resending a submission whose answer it never got,
//! an agent restarted after being killed between `sbatch` and writing the id
//! down — the ledger answers with the recorded id, or finds the job in the
//! scheduler by name and directory, and only submits when neither knows it.

use std::path::Path;

use super::script::JobRequest;
use super::Scheduler;

/// Marks a submission begun and not yet answered.
const SUBMITTING: &str = "submitting";
/// The scheduler's id of the job submitted from the directory.
pub const JOB_ID: &str = "job-id";

/// Job directories (script, output) kept per queue; older ones are removed.
const KEEP_JOB_DIRS: u32 = 100;

/// How a submission was answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// The scheduler took it now.
    New(String),
    /// It had been submitted before (named by the ledger or the scheduler).
    Known(String),
}

impl Submitted {
    pub fn id(&self) -> &str {
        match self {
            Submitted::New(id) | Submitted::Known(id) => id,
        }
    }
}

/// Renders, writes and submits `req` unless its directory says it was
/// submitted already; the job id, or the reason.
///
/// Callers must not run two submissions of one directory at once (the
/// agent and the server's core each submit one at a time per job).
pub async fn submit_once(sched: Scheduler, req: &JobRequest) -> Result<Submitted, String> {
    let dir = req.dir.clone();
    if let Some(id) = recorded(&dir).await {
        return Ok(Submitted::Known(id));
    }
    let marker = dir.join(SUBMITTING);
    if tokio::fs::try_exists(&marker).await.unwrap_or(false) {
        // Begun before and never answered: the scheduler may have it.
        let found = sched
            .find(&req.name, &dir)
            .await
            .map_err(|e| format!("looking for job {} submitted before: {e}", req.name))?;
        if let Some(id) = found.into_iter().next() {
            record(&dir, &id.0).await?;
            return Ok(Submitted::Known(id.0));
        }
    }
    let script = req.render().map_err(|e| format!("{e:#}"))?;
    let path = dir.join("job.sh");
    let write = {
        let (dir, path, marker) = (dir.clone(), path.clone(), marker.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, script)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
            // Durable before the scheduler hears of the job.
            let m = std::fs::File::create(&marker)?;
            m.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        })
    };
    write
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: cannot write the job script: {e}", path.display()))?;
    let id = sched.submit(&path, &dir).await.map_err(|e| e.to_string())?;
    record(&dir, &id.0).await?;
    if let Some(queue_dir) = dir.parent().map(|p| p.to_path_buf()) {
        let _ = tokio::task::spawn_blocking(move || prune(&queue_dir, KEEP_JOB_DIRS)).await;
    }
    Ok(Submitted::New(id.0))
}

/// The id written down for `dir`, if any.
async fn recorded(dir: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(dir.join(JOB_ID)).await.ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Writes the id down (atomically) and clears the marker.
async fn record(dir: &Path, id: &str) -> Result<(), String> {
    let tmp = dir.join(format!("{JOB_ID}.tmp"));
    let path = dir.join(JOB_ID);
    let io = async {
        tokio::fs::write(&tmp, format!("{id}\n")).await?;
        tokio::fs::rename(&tmp, &path).await?;
        match tokio::fs::remove_file(dir.join(SUBMITTING)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    };
    io.await.map_err(|e| {
        format!(
            "job {id} was submitted, but {} cannot be written: {e}",
            path.display()
        )
    })
}

/// Removes a queue's job directories older than the newest `keep`.
fn prune(queue_dir: &Path, keep: u32) {
    let Ok(rd) = std::fs::read_dir(queue_dir) else {
        return;
    };
    let mut numbers: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    numbers.sort_unstable();
    let excess = numbers.len().saturating_sub(keep as usize);
    for n in &numbers[..excess] {
        let _ = std::fs::remove_dir_all(queue_dir.join(n.to_string()));
    }
}
