//! Run-dir state read for the metrics of `kvmtune status --format prometheus`:
//! the hook's outcome counters (`/run/kvmtune/hook-counters.json`, which the hook
//! bumps after each call) and the length of the convergence queue
//! (`/run/kvmtune/converge/`, one file per guest waiting).
//!
//! The counters live in tmpfs, so they restart at zero on every boot, as a
//! Prometheus counter may. Bumping them never waits: it takes the counter file's
//! own `flock` without blocking (a few immediate retries), and when another hook
//! holds it, that call is not counted. Every error is the caller's to ignore.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// The counter file in the run dir.
pub const COUNTERS_FILE: &str = "hook-counters.json";
const COUNTERS_LOCK: &str = "hook-counters.lock";
/// The convergence queue's directory in the run dir.
pub const CONVERGE_DIR: &str = "converge";
/// Larger counter files are not read (they are a few hundred bytes).
const MAX_BYTES: u64 = 1 << 20;

/// Hook calls by stage (`prepare-begin`, …) and outcome (`allowed`, `refused`,
/// `error`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookCounters {
    pub version: u32,
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Adds one call of `stage` with `outcome` to the counter file in `run_dir`.
/// Never waits for a lock: when it is taken, returns `WouldBlock` and counts
/// nothing. Does not create `run_dir`.
pub fn record_hook_outcome(run_dir: &Path, stage: &str, outcome: &str) -> io::Result<()> {
    if !fs::symlink_metadata(run_dir).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no run dir"));
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(run_dir.join(COUNTERS_LOCK))?;
    let mut tries = 0;
    let _lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) if tries < 3 => {
                tries += 1;
                file = f;
                std::thread::yield_now();
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    };
    remove_stale_temp_files(run_dir);
    let mut counters = read_hook_counters(run_dir).unwrap_or_default();
    counters.version = 1;
    *counters
        .counts
        .entry(stage.to_string())
        .or_default()
        .entry(outcome.to_string())
        .or_default() += 1;
    let bytes = serde_json::to_vec(&counters).map_err(io::Error::other)?;
    crate::atomicfile::write(
        &run_dir.join(COUNTERS_FILE),
        COUNTERS_FILE,
        &bytes,
        0o644,
        false,
    )
}

/// Temp files of counter writers killed between write and rename: under the
/// counter lock no other writer runs, so every one is stale.
fn remove_stale_temp_files(run_dir: &Path) {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    let prefix = format!(".{COUNTERS_FILE}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The counter file in `run_dir`; `None` when absent, unreadable or not parsable.
pub fn read_hook_counters(run_dir: &Path) -> Option<HookCounters> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(run_dir.join(COUNTERS_FILE))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// How many guests wait in the convergence queue: the regular files in
/// `run_dir/converge/` (hidden temp files aside); 0 when it does not exist.
pub fn converge_queue_length(run_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(run_dir.join(CONVERGE_DIR)) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate_and_survive_a_corrupt_file() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(read_hook_counters(run.path()), None);
        record_hook_outcome(run.path(), "prepare-begin", "allowed").unwrap();
        record_hook_outcome(run.path(), "prepare-begin", "allowed").unwrap();
        record_hook_outcome(run.path(), "prepare-begin", "refused").unwrap();
        let c = read_hook_counters(run.path()).unwrap();
        assert_eq!(c.counts["prepare-begin"]["allowed"], 2);
        assert_eq!(c.counts["prepare-begin"]["refused"], 1);
        fs::write(run.path().join(COUNTERS_FILE), "{garbage").unwrap();
        record_hook_outcome(run.path(), "release-end", "allowed").unwrap();
        let c = read_hook_counters(run.path()).unwrap();
        assert_eq!(c.counts.len(), 1);
        assert_eq!(c.counts["release-end"]["allowed"], 1);
        // A writer killed before its rename left a temp file: the next one removes it.
        let stale = run.path().join(".hook-counters.json.999999.tmp");
        fs::write(&stale, "{\"vers").unwrap();
        record_hook_outcome(run.path(), "release-end", "allowed").unwrap();
        assert!(!stale.exists());
        assert_eq!(
            read_hook_counters(run.path()).unwrap().counts["release-end"]["allowed"],
            2
        );
    }

    #[test]
    fn a_held_lock_is_never_waited_for() {
        let run = tempfile::tempdir().unwrap();
        let held = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(run.path().join(COUNTERS_LOCK))
            .unwrap();
        let held = Flock::lock(held, FlockArg::LockExclusive).unwrap();
        let err = record_hook_outcome(run.path(), "prepare-begin", "allowed").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(held);
        assert_eq!(read_hook_counters(run.path()), None);
    }

    #[test]
    fn no_run_dir_is_an_error_not_a_new_dir() {
        let run = tempfile::tempdir().unwrap();
        let missing = run.path().join("missing");
        assert!(record_hook_outcome(&missing, "prepare-begin", "allowed").is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn queue_length_counts_regular_files_only() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(converge_queue_length(run.path()), 0);
        let q = run.path().join(CONVERGE_DIR);
        fs::create_dir(&q).unwrap();
        assert_eq!(converge_queue_length(run.path()), 0);
        fs::write(q.join("web01"), "").unwrap();
        fs::write(q.join("db02"), "").unwrap();
        fs::write(q.join(".db03.123.tmp"), "").unwrap();
        fs::create_dir(q.join("subdir")).unwrap();
        assert_eq!(converge_queue_length(run.path()), 2);
    }
}
