//! The convergence queue: `RUN_DIR/converge/GUEST`, one file per guest that
//! started with XML-level violations under `converge: after-start`. The hook writes
//! an entry at `prepare` (atomically, a small file on tmpfs: it never calls libvirt
//! and never waits); `kvmtune converge` (the `kvmtune-converge.path` unit) reads
//! and removes them. Guest names become file names here, so they pass
//! [`check_guest_name`] first, as the backups' do.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use kvmtune_core::converge::Entry;

use crate::atomicfile;
use crate::backups::check_guest_name;

/// The queue directory under kvmtune's run dir.
pub const QUEUE_DIR: &str = "converge";
/// An entry larger than this is not one of ours.
const MAX_ENTRY_BYTES: u64 = 4096;

/// The queue under one run dir.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

/// One queued guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub guest: String,
    pub entry: Entry,
}

impl Queue {
    /// The queue of the run dir `run_dir` (`/run/kvmtune`).
    pub fn under(run_dir: &Path) -> Queue {
        Queue {
            dir: run_dir.join(QUEUE_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records `guest` (replacing an older entry of it). Callers hold the ledger
    /// lock, so a temp file left here belongs to a killed writer and is removed.
    pub fn enqueue(&self, guest: &str, entry: &Entry) -> io::Result<()> {
        check_guest_name(guest).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let meta = fs::symlink_metadata(&self.dir)?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                self.dir.display()
            )));
        }
        self.remove_stale_temp_files();
        atomicfile::write(
            &self.dir.join(guest),
            "converge-entry",
            entry.render().as_bytes(),
            0o600,
            false,
        )
    }

    /// The queued guests, by name. A missing directory is an empty queue; temp
    /// files of writers and names that are not guest names are skipped.
    pub fn list(&self) -> io::Result<Vec<Queued>> {
        let read = match fs::read_dir(&self.dir) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for item in read {
            let item = item?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_temp_name(&name) || check_guest_name(&name).is_err() {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(item.path()) else {
                continue;
            };
            if !meta.is_file() || meta.len() > MAX_ENTRY_BYTES {
                continue;
            }
            let text = fs::read_to_string(item.path()).unwrap_or_default();
            out.push(Queued {
                guest: name,
                entry: Entry::parse(&text),
            });
        }
        out.sort_by(|a, b| a.guest.cmp(&b.guest));
        Ok(out)
    }

    /// Removes `guest`'s entry; a missing one is fine.
    pub fn remove(&self, guest: &str) -> io::Result<()> {
        check_guest_name(guest).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        match fs::remove_file(self.dir.join(guest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The wall clock in seconds since 1970, what an entry's `queued_at` holds (a time
/// for people: `status` and `converge --list` print it in UTC).
pub fn now_utc_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Queue {
    fn remove_stale_temp_files(&self) {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return;
        };
        for item in read.flatten() {
            if item.file_name().to_str().is_some_and(is_temp_name) {
                let _ = fs::remove_file(item.path());
            }
        }
    }
}

/// `.converge-entry.PID.tmp`, what [`atomicfile::write`] leaves while writing.
fn is_temp_name(name: &str) -> bool {
    name.starts_with(".converge-entry.") && name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(uuid: &str) -> Entry {
        Entry {
            uuid: Some(uuid.into()),
            queued_at: 7,
        }
    }

    #[test]
    fn enqueue_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::under(dir.path());
        assert!(q.list().unwrap().is_empty(), "no directory: empty");
        q.enqueue("web01", &entry("u1")).unwrap();
        q.enqueue("db", &entry("u2")).unwrap();
        q.enqueue("web01", &entry("u3")).unwrap();
        let names: Vec<_> = q.list().unwrap().into_iter().map(|e| e.guest).collect();
        assert_eq!(names, ["db", "web01"]);
        assert_eq!(q.list().unwrap()[1].entry, entry("u3"));
        q.remove("db").unwrap();
        q.remove("db").unwrap();
        assert_eq!(q.list().unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(q.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn bad_names_and_strays_are_refused_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::under(dir.path());
        q.enqueue("../x", &entry("u")).unwrap_err();
        q.enqueue("a/b", &entry("u")).unwrap_err();
        q.remove("..").unwrap_err();
        q.enqueue("ok", &entry("u")).unwrap();
        fs::write(q.dir().join(".converge-entry.1.tmp"), "x").unwrap();
        fs::create_dir(q.dir().join("subdir")).unwrap();
        let names: Vec<_> = q.list().unwrap().into_iter().map(|e| e.guest).collect();
        assert_eq!(names, ["ok"]);
        assert!(!dir.path().join("x").exists());
        // The next writer (holding the ledger lock) removes a killed one's temp file.
        q.enqueue("ok", &entry("u")).unwrap();
        assert!(!q.dir().join(".converge-entry.1.tmp").exists());
    }
}
