//! The ledger on disk: `/run/kvmtune/ledger.json`, so that concurrent guest starts
//! never hand out the same dedicated CPU twice.
//!
//! Every change happens under an exclusive `flock` on `ledger.lock` (bounded wait),
//! is written atomically (temp file, fsync, rename), and is reconciled against
//! libvirt's status files (`/run/libvirt/qemu/GUEST.xml`): a guest that died without
//! `release`, or a hook killed mid-way, leaves no lasting claim. The directory lives
//! on tmpfs: claims describe running guests and must not survive a reboot.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmtune_core::ledger::Ledger;
use nix::fcntl::{Flock, FlockArg};

pub const DEFAULT_RUN_DIR: &str = "/run/kvmtune";
pub const DEFAULT_LIBVIRT_RUN_DIR: &str = "/run/libvirt/qemu";
const LEDGER_FILE: &str = "ledger.json";
const LOCK_FILE: &str = "ledger.lock";

/// How long a hook waits for the ledger lock before giving up (then `on_error`).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a waiter for the ledger lock sleeps before its next try: 1 ms,
/// doubling to at most 32 ms, plus up to half that again (from the pid and the
/// clock), so that a burst of waiters neither spins (hundreds of processes
/// polling every few ms starve the one holding the lock on a small host) nor
/// retries in lockstep.
fn retry_pause(attempt: u32) -> Duration {
    let base_us = 1000u64 << attempt.min(5);
    let noise = u64::from(std::process::id())
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    Duration::from_micros(base_us + noise % (base_us / 2 + 1))
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "ledger directory {0} is a symlink or not a directory owned by root; refusing to use it"
    )]
    UnsafeDir(PathBuf),
    #[error("ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger lock {0} not acquired within {1:?}")]
    LockTimeout(PathBuf, Duration),
}

/// Where the ledger and libvirt's status files live (configurable for tests).
#[derive(Debug, Clone)]
pub struct Paths {
    pub run_dir: PathBuf,
    pub libvirt_run_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            libvirt_run_dir: PathBuf::from(DEFAULT_LIBVIRT_RUN_DIR),
        }
    }
}

/// Seconds on the boot clock (`CLOCK_BOOTTIME`: monotonic, counts suspend, never
/// stepped by NTP or an admin), the clock claim ages are measured on.
pub fn now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| u64::try_from(t.tv_sec()).unwrap_or(0))
        .unwrap_or(0)
}

/// This boot's id (`proc/sys/kernel/random/boot_id` under `proc_parent`, the
/// directory holding `proc/`: `/` in production), or empty when unreadable.
pub fn boot_id(proc_parent: &Path) -> String {
    fs::read_to_string(proc_parent.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// An exclusive hold on the ledger. Dropping it releases the lock.
pub struct Locked {
    _lock: Flock<File>,
    path: PathBuf,
    pub ledger: Ledger,
    /// Set when the file was unreadable and the ledger started empty.
    pub recovered_from: Option<String>,
}

impl Locked {
    /// Takes the lock (waiting at most `timeout`) and reads the ledger. A corrupt or
    /// truncated file is moved aside to `ledger.json.corrupt` and the ledger starts
    /// empty: the caller reconciles it from libvirt's status files.
    pub fn acquire(run_dir: &Path, timeout: Duration) -> Result<Locked, LedgerError> {
        ensure_safe_dir(run_dir)?;
        let lock_path = run_dir.join(LOCK_FILE);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LedgerError::Io { path, source }
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let started = Instant::now();
        let mut file = file;
        let mut attempt: u32 = 0;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                    let waited = started.elapsed();
                    if waited >= timeout {
                        return Err(LedgerError::LockTimeout(lock_path, timeout));
                    }
                    file = f;
                    std::thread::sleep(retry_pause(attempt).min(timeout - waited));
                    attempt = attempt.saturating_add(1);
                }
                Err((_, errno)) => {
                    return Err(LedgerError::Io {
                        path: lock_path,
                        source: errno.into(),
                    });
                }
            }
        };
        remove_stale_temp_files(run_dir);
        let path = run_dir.join(LEDGER_FILE);
        let (ledger, recovered_from) = match read_no_follow(&path) {
            Ok(None) => (
                Ledger {
                    version: 1,
                    ..Ledger::default()
                },
                None,
            ),
            // Bytes, not text: invalid UTF-8 is corruption like any other.
            Ok(Some(bytes)) => match serde_json::from_slice::<Ledger>(&bytes) {
                Ok(ledger) => (ledger, None),
                Err(e) => {
                    let aside = run_dir.join(format!("{LEDGER_FILE}.corrupt"));
                    let _ = fs::rename(&path, &aside);
                    (
                        Ledger {
                            version: 1,
                            ..Ledger::default()
                        },
                        Some(format!(
                            "{} was unreadable ({e}); moved to {}",
                            path.display(),
                            aside.display()
                        )),
                    )
                }
            },
            Err(source) => return Err(LedgerError::Io { path, source }),
        };
        Ok(Locked {
            _lock: lock,
            path,
            ledger,
            recovered_from,
        })
    }

    /// Writes the ledger atomically: a reader (or a crash) sees the old or the new
    /// file, never a half-written one.
    pub fn save(&self) -> Result<(), LedgerError> {
        let mut text = serde_json::to_string_pretty(&self.ledger).map_err(|e| LedgerError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        crate::atomicfile::write(&self.path, LEDGER_FILE, text.as_bytes(), 0o644, true).map_err(
            |source| LedgerError::Io {
                path: self.path.clone(),
                source,
            },
        )
    }
}

/// Repacking's state next to the ledger (the binary's `hook::moves`), written
/// atomically under the ledger lock through a temp file named after it.
pub const REPACK_FILE: &str = "repack.json";

/// Removes temp files left by hooks killed between writing and renaming (SIGKILL,
/// OOM): every writer holds the lock while its temp file exists, so under the lock
/// any temp file is stale.
fn remove_stale_temp_files(run_dir: &Path) {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    // The host topology cache and repacking's state are also written only under
    // the lock.
    let prefixes =
        [LEDGER_FILE, crate::sysfs::CACHE_TEMP_PREFIX, REPACK_FILE].map(|p| format!(".{p}."));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Reads the ledger without the lock (status display): may be one update behind.
pub fn read_unlocked(run_dir: &Path) -> Option<Ledger> {
    let bytes = read_no_follow(&run_dir.join(LEDGER_FILE)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

fn read_no_follow(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    match file {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            use std::io::Read;
            // The ledger is small; bound the read so a planted huge file cannot eat memory.
            (&mut f).take(64 * 1024 * 1024).read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates the run directory (0755) if missing; refuses a symlink, a non-directory,
/// or (when we are root) a directory not owned by root or writable by others.
fn ensure_safe_dir(dir: &Path) -> Result<(), LedgerError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
            Ok(())
        }
        Err(source) => Err(LedgerError::Io {
            path: dir.to_path_buf(),
            source,
        }),
        Ok(meta) => {
            let is_root = nix::unistd::geteuid().is_root();
            let unsafe_owner = is_root && (meta.uid() != 0 || meta.mode() & 0o022 != 0);
            if meta.file_type().is_symlink() || !meta.is_dir() || unsafe_owner {
                Err(LedgerError::UnsafeDir(dir.to_path_buf()))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmtune_core::cpuset::CpuSet;
    use kvmtune_core::ledger::{Entry, EntryState};
    use kvmtune_core::placement::Pool;

    fn entry(cpus: &str, state: EntryState, claimed_at: u64) -> Entry {
        let set = CpuSet::parse(cpus).unwrap();
        Entry {
            uuid: None,
            vcpus: set.iter().map(CpuSet::single).collect(),
            cpus: set,
            nodes: CpuSet::single(0),
            emulator: None,
            memory_kib: 1024,
            pool: Pool::Dedicated,
            claimed_at,
            state,
            rule: "defaults".into(),
            floating: false,
        }
    }

    #[test]
    fn save_then_acquire_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut locked = Locked::acquire(&run, LOCK_TIMEOUT).unwrap();
        locked
            .ledger
            .guests
            .insert("a".into(), entry("2-3", EntryState::Prepared, 100));
        locked.save().unwrap();
        drop(locked);
        let again = Locked::acquire(&run, LOCK_TIMEOUT).unwrap();
        assert_eq!(again.ledger.guests["a"].cpus.to_string(), "2-3");
        assert_eq!(again.ledger.occupancy().dedicated_cpus().to_string(), "2-3");
    }

    #[test]
    fn lock_wait_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Locked::acquire(dir.path(), LOCK_TIMEOUT).unwrap();
        let second = Locked::acquire(dir.path(), Duration::from_millis(50));
        assert!(matches!(second, Err(LedgerError::LockTimeout(..))));
    }

    #[test]
    fn truncated_ledger_is_set_aside_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LEDGER_FILE),
            "{\"version\":1,\"guests\":{\"a\":{\"uu",
        )
        .unwrap();
        let locked = Locked::acquire(dir.path(), LOCK_TIMEOUT).unwrap();
        assert!(locked.ledger.guests.is_empty());
        assert!(locked.recovered_from.is_some());
        assert!(dir.path().join("ledger.json.corrupt").exists());
    }

    #[test]
    fn symlinked_ledger_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            Locked::acquire(&link, LOCK_TIMEOUT),
            Err(LedgerError::UnsafeDir(_))
        ));
    }
}
