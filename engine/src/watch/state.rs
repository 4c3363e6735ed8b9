//! What a trigger has seen and started, in its own SQLite file, so that a
//! restarted trigger neither misses nor repeats a file.
//!
//! A complete file is recorded (`files`, no batch yet) before anything is
//! started for it; a batch is recorded with its run input before the run
//! is submitted, and its run ids after. A batch without run ids found at
//! start-up was being submitted when the trigger stopped: the server is
//! asked whether that run exists (the same flow and input) before it is
//! submitted again.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::settle::Stat;

pub struct State {
    db: Connection,
}

/// A batch whose runs have finished, with what they add up to.
#[derive(Clone, Debug, PartialEq)]
pub struct Tallied {
    pub id: i64,
    pub runs: Vec<u64>,
    pub total: f64,
    pub files: Vec<PathBuf>,
}

/// A batch of files and the run started for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub id: i64,
    pub files: Vec<PathBuf>,
    pub input: Value,
    /// `None` while it is being submitted.
    pub runs: Option<Vec<u64>>,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl State {
    pub fn open(path: &Path) -> anyhow::Result<State> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
        }
        let db =
            Connection::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS files (
                 path TEXT PRIMARY KEY,
                 size INTEGER NOT NULL,
                 mtime_ns TEXT NOT NULL,
                 seen_us INTEGER NOT NULL,
                 batch INTEGER
             );
             CREATE INDEX IF NOT EXISTS files_queued ON files(batch, seen_us);
             CREATE TABLE IF NOT EXISTS batches (
                 id INTEGER PRIMARY KEY,
                 input TEXT NOT NULL,
                 runs TEXT,
                 formed_us INTEGER NOT NULL,
                 total REAL,
                 followup INTEGER
             );
             CREATE TABLE IF NOT EXISTS followups (
                 id INTEGER PRIMARY KEY,
                 input TEXT NOT NULL,
                 runs TEXT,
                 formed_us INTEGER NOT NULL
             );",
        )
        .with_context(|| format!("{}: not a trigger state file", path.display()))?;
        Ok(State { db })
    }

    /// Every file recorded, whatever became of it.
    pub fn known(&self) -> anyhow::Result<std::collections::HashSet<PathBuf>> {
        let mut st = self.db.prepare("SELECT path FROM files")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.filter_map(Result::ok).map(PathBuf::from).collect())
    }

    /// Records a complete file; it waits for a batch.
    pub fn complete(&self, path: &Path, stat: Stat) -> anyhow::Result<()> {
        self.db.execute(
            "INSERT OR IGNORE INTO files(path, size, mtime_ns, seen_us) VALUES (?1, ?2, ?3, ?4)",
            params![
                path.display().to_string(),
                stat.0 as i64,
                stat.1.to_string(),
                now_us()
            ],
        )?;
        Ok(())
    }

    /// Complete files not in a batch, oldest first, and when the oldest was
    /// recorded (µs since the epoch).
    pub fn queued(&self) -> anyhow::Result<(Vec<PathBuf>, Option<i64>)> {
        let mut st = self.db.prepare(
            "SELECT path, seen_us FROM files WHERE batch IS NULL ORDER BY seen_us, path",
        )?;
        let rows: Vec<(String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let oldest = rows.first().map(|r| r.1);
        Ok((
            rows.into_iter().map(|r| PathBuf::from(r.0)).collect(),
            oldest,
        ))
    }

    /// Records a batch of `files` with the run `input` made for it, in one
    /// transaction, before the run is submitted.
    pub fn form(&mut self, files: &[PathBuf], input: &Value) -> anyhow::Result<Batch> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO batches(input, formed_us) VALUES (?1, ?2)",
            params![input.to_string(), now_us()],
        )?;
        let id = tx.last_insert_rowid();
        for f in files {
            tx.execute(
                "UPDATE files SET batch = ?1 WHERE path = ?2",
                params![id, f.display().to_string()],
            )?;
        }
        tx.commit()?;
        Ok(Batch {
            id,
            files: files.to_vec(),
            input: input.clone(),
            runs: None,
        })
    }

    /// Records the runs started for batch `id`.
    pub fn submitted(&self, id: i64, runs: &[u64]) -> anyhow::Result<()> {
        self.db.execute(
            "UPDATE batches SET runs = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(runs)?],
        )?;
        Ok(())
    }

    /// The files of batch `id`, in name order.
    fn files_of(&self, id: i64) -> anyhow::Result<Vec<PathBuf>> {
        let mut st = self
            .db
            .prepare_cached("SELECT path FROM files WHERE batch = ?1 ORDER BY path")?;
        let rows = st.query_map([id], |r| r.get::<_, String>(0))?;
        Ok(rows
            .map(|p| p.map(PathBuf::from))
            .collect::<Result<_, _>>()?)
    }

    /// Batches recorded but not known to be submitted.
    pub fn unsubmitted(&self) -> anyhow::Result<Vec<Batch>> {
        let ids: Vec<(i64, String)> = self
            .db
            .prepare("SELECT id, input FROM batches WHERE runs IS NULL ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        ids.into_iter()
            .map(|(id, input)| {
                let files = self.files_of(id)?;
                Ok(Batch {
                    id,
                    files,
                    input: serde_json::from_str(&input)?,
                    runs: None,
                })
            })
            .collect()
    }

    /// Run ids already credited to some batch (so that one run found on
    /// the server is not claimed by two batches).
    pub fn claimed_runs(&self) -> anyhow::Result<std::collections::HashSet<u64>> {
        let mut out = std::collections::HashSet::new();
        let mut st = self
            .db
            .prepare("SELECT runs FROM batches WHERE runs IS NOT NULL")?;
        for r in st.query_map([], |r| r.get::<_, String>(0))? {
            let ids: Vec<u64> = serde_json::from_str(&r?)?;
            out.extend(ids);
        }
        Ok(out)
    }

    /// Batches whose runs were started but whose total is not known yet.
    pub fn untallied(&self) -> anyhow::Result<Vec<(i64, Vec<u64>)>> {
        let rows: Vec<(i64, String)> = self
            .db
            .prepare(
                "SELECT id, runs FROM batches WHERE runs IS NOT NULL AND total IS NULL ORDER BY id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, runs)| Ok((id, serde_json::from_str(&runs)?)))
            .collect()
    }

    /// Records what batch `id`'s finished runs add to the follow-up's total.
    pub fn tally(&self, id: i64, total: f64) -> anyhow::Result<()> {
        self.db.execute(
            "UPDATE batches SET total = ?2 WHERE id = ?1",
            params![id, total],
        )?;
        Ok(())
    }

    /// The tallied batches no follow-up has covered yet, oldest first:
    /// (id, runs, total, files).
    pub fn uncovered(&self) -> anyhow::Result<Vec<Tallied>> {
        let rows: Vec<(i64, String, f64)> = self
            .db
            .prepare("SELECT id, runs, total FROM batches WHERE total IS NOT NULL AND followup IS NULL ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, runs, total)| {
                let files = self.files_of(id)?;
                Ok(Tallied {
                    id,
                    runs: serde_json::from_str(&runs)?,
                    total,
                    files,
                })
            })
            .collect()
    }

    /// Records a follow-up covering `batches`, before it is submitted.
    pub fn form_followup(&mut self, batches: &[i64], input: &Value) -> anyhow::Result<i64> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO followups(input, formed_us) VALUES (?1, ?2)",
            params![input.to_string(), now_us()],
        )?;
        let id = tx.last_insert_rowid();
        for b in batches {
            tx.execute(
                "UPDATE batches SET followup = ?1 WHERE id = ?2",
                params![id, b],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    pub fn followup_submitted(&self, id: i64, runs: &[u64]) -> anyhow::Result<()> {
        self.db.execute(
            "UPDATE followups SET runs = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(runs)?],
        )?;
        Ok(())
    }

    /// Follow-ups recorded but not known to be submitted: (id, input).
    pub fn unsubmitted_followups(&self) -> anyhow::Result<Vec<(i64, Value)>> {
        let rows: Vec<(i64, String)> = self
            .db
            .prepare("SELECT id, input FROM followups WHERE runs IS NULL ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, i)| Ok((id, serde_json::from_str(&i)?)))
            .collect()
    }

    /// How many batches have runs, for reports.
    pub fn runs_started(&self) -> anyhow::Result<usize> {
        let n: Option<i64> = self
            .db
            .query_row(
                "SELECT COUNT(*) FROM batches WHERE runs IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_batches_and_runs_survive_a_reopen() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("s.sqlite");
        let mut s = State::open(&db).unwrap();
        for n in ["a", "b", "c"] {
            s.complete(Path::new(n), (1, 2)).unwrap();
        }
        s.complete(Path::new("a"), (9, 9)).unwrap(); // recorded once
        let (q, oldest) = s.queued().unwrap();
        assert_eq!(q.len(), 3);
        assert!(oldest.is_some());
        let b = s
            .form(&q[..2], &serde_json::json!({"files": ["a", "b"]}))
            .unwrap();
        drop(s);
        let mut s = State::open(&db).unwrap();
        assert_eq!(s.known().unwrap().len(), 3);
        assert_eq!(s.queued().unwrap().0, vec![PathBuf::from("c")]);
        let open = s.unsubmitted().unwrap();
        assert_eq!(open, vec![b.clone()]);
        s.submitted(b.id, &[7]).unwrap();
        assert!(s.unsubmitted().unwrap().is_empty());
        assert_eq!(s.claimed_runs().unwrap(), [7].into());
        assert_eq!(s.runs_started().unwrap(), 1);
        let _ = s.form(&[PathBuf::from("c")], &Value::Null).unwrap();
        assert!(s.queued().unwrap().0.is_empty());
        // Tallies and a follow-up over them.
        assert_eq!(s.untallied().unwrap(), vec![(b.id, vec![7])]);
        s.tally(b.id, 600.0).unwrap();
        let t = s.uncovered().unwrap();
        let want = Tallied {
            id: b.id,
            runs: vec![7],
            total: 600.0,
            files: vec![PathBuf::from("a"), PathBuf::from("b")],
        };
        assert_eq!(t, vec![want]);
        let f = s
            .form_followup(&[b.id], &serde_json::json!({"total": 600}))
            .unwrap();
        assert!(s.uncovered().unwrap().is_empty());
        assert_eq!(s.unsubmitted_followups().unwrap().len(), 1);
        s.followup_submitted(f, &[9]).unwrap();
        assert!(s.unsubmitted_followups().unwrap().is_empty());
    }
}
