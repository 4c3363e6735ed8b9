//! When a new file is complete: the rule every trigger mode shares.
//!
//! A candidate is *ready* when nobody is writing it (no write seen since
//! its last close or rename) and its size and modification time have not
//! changed for the settle time. With inotify the writes and closes are
//! events (`IN_MODIFY`, `IN_CLOSE_WRITE`, `IN_MOVED_TO`: detectors often
//! write a temporary name and rename it); a scan only sees size and time,
//! so on a file system without inotify a writer that pauses longer than
//! the settle time is taken as done — choose the settle time above the
//! writer's longest pause.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size and modification time (ns): what "unchanged" means.
pub type Stat = (u64, i128);

/// The stat of `path`, `None` when it is gone or not a regular file.
pub fn stat(path: &Path) -> Option<Stat> {
    let m = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let t = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Some((m.len(), t))
}

#[derive(Debug)]
struct Candidate {
    stat: Option<Stat>,
    changed: Instant,
    writing: bool,
}

/// Files seen but not yet complete.
#[derive(Debug)]
pub struct Settle {
    settle: Duration,
    files: HashMap<PathBuf, Candidate>,
}

impl Settle {
    pub fn new(settle: Duration) -> Settle {
        Settle {
            settle,
            files: HashMap::new(),
        }
    }

    /// Files being watched for completion.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// An event: `writing` after a create or a write, not after a close or
    /// a rename into place.
    pub fn event(&mut self, path: &Path, writing: bool, now: Instant) {
        let c = self.files.entry(path.to_path_buf()).or_insert(Candidate {
            stat: None,
            changed: now,
            writing,
        });
        c.changed = now;
        c.writing = writing;
    }

    /// A scan saw `path` with `stat`: a change restarts its clock.
    pub fn scanned(&mut self, path: &Path, stat: Stat, now: Instant) {
        let c = self.files.entry(path.to_path_buf()).or_insert(Candidate {
            stat: None,
            changed: now,
            writing: false,
        });
        if c.stat != Some(stat) {
            c.stat = Some(stat);
            c.changed = now;
        }
    }

    /// Takes the files that are complete at `now`, in name order, with the
    /// stat they were taken at; `stat_of` looks at the file once more (a
    /// change since the last look restarts its clock; a vanished file is
    /// dropped).
    pub fn ready(
        &mut self,
        now: Instant,
        stat_of: impl Fn(&Path) -> Option<Stat>,
    ) -> Vec<(PathBuf, Stat)> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (p, c) in self.files.iter_mut() {
            if c.writing || now.duration_since(c.changed) < self.settle {
                continue;
            }
            match stat_of(p) {
                None => gone.push(p.clone()),
                Some(s) if c.stat == Some(s) => out.push((p.clone(), s)),
                Some(s) => {
                    c.stat = Some(s);
                    c.changed = now;
                }
            }
        }
        for p in gone.iter().chain(out.iter().map(|(p, _)| p)) {
            self.files.remove(p);
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_once_closed_and_quiet_for_the_settle_time() {
        let t0 = Instant::now();
        let s = Duration::from_millis(100);
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = Settle::new(s);
        let p = Path::new("/d/a.h5");
        let st = std::cell::Cell::new(Some((10u64, 1i128)));
        let stat_of = |_: &Path| st.get();
        // Being written: never ready, however long.
        w.event(p, true, at(0));
        assert!(w.ready(at(1_000), stat_of).is_empty());
        // Closed at 1000: the first look records the stat, the clock restarts.
        w.event(p, false, at(1_000));
        assert!(w.ready(at(1_050), stat_of).is_empty());
        assert!(w.ready(at(1_150), stat_of).is_empty());
        // Unchanged for the settle time since that look.
        assert_eq!(
            w.ready(at(1_300), stat_of),
            vec![(p.to_path_buf(), (10, 1))]
        );
        assert!(w.is_empty());
        // A scanned file whose size keeps changing waits.
        let q = Path::new("/d/b.h5");
        w.scanned(q, (1, 1), at(0));
        w.scanned(q, (2, 2), at(90));
        st.set(Some((2, 2)));
        assert!(w.ready(at(150), stat_of).is_empty());
        assert_eq!(w.ready(at(190), stat_of).len(), 1);
        // A vanished file is dropped.
        w.scanned(q, (2, 2), at(0));
        st.set(None);
        assert!(w.ready(at(500), stat_of).is_empty());
        assert!(w.is_empty());
    }
}
