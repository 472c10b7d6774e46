//! The backup store of `kvmtune apply`/`revert`: every definition kvmtune replaces
//! is saved first as `ROOT/GUEST/TIMESTAMP.xml` (directories 0700, files 0600:
//! definitions hold secrets), written and synced under a temp name, then linked
//! into place so that a backup is never half-written and never overwritten. Also
//! owns the names that become file names here: guest names
//! ([`check_guest_name`]) and timestamps ([`utc_stamp`], [`check_stamp`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::logging::sanitize;

/// What went wrong with a backup, or with a name that would become one's path.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A guest name that cannot safely become a file name ([`check_guest_name`]).
    #[error("{0}")]
    GuestName(String),
    /// Not a backup timestamp ([`check_stamp`]); the text is sanitized.
    #[error("'{0}' is not a backup timestamp (like 20250101T120000Z; see --list)")]
    Stamp(String),
    #[error("backup directory {} is a symlink or not a directory; refusing it", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: too many backups stamped {stamp}", dir.display())]
    TooMany { dir: PathBuf, stamp: String },
    /// The message includes the I/O error's, so it is not also a `source`.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

impl BackupError {
    /// `true` for an I/O error the admin fixes by running as someone else.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, BackupError::Io { error, .. } if error.kind() == io::ErrorKind::PermissionDenied)
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Refuses guest names that cannot safely become a file name: empty, `.`/`..`,
/// containing `/`, `..`, NUL or control characters, or longer than a file name.
pub fn check_guest_name(name: &str) -> Result<(), BackupError> {
    let shown = sanitize(name);
    let refuse = |m: String| Err(BackupError::GuestName(m));
    if name.is_empty() {
        return refuse("empty guest name".into());
    }
    if name.len() > 255 {
        return refuse(format!("guest name '{shown}' is longer than 255 bytes"));
    }
    if name.contains('/') || name.contains("..") || name == "." {
        return refuse(format!(
            "guest name '{shown}' contains '/' or '..'; refusing to use it in a file name"
        ));
    }
    if name.chars().any(char::is_control) {
        return refuse(format!(
            "guest name '{shown}' contains control characters; refusing to use it in a file name"
        ));
    }
    Ok(())
}

/// Backup timestamps are file names too: digits, `T`, `Z`, `-` only.
pub fn check_stamp(stamp: &str) -> Result<(), BackupError> {
    if stamp.is_empty()
        || stamp.len() > 64
        || !stamp.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(BackupError::Stamp(sanitize(stamp)));
    }
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` in UTC (a time before 1970 counts as 1970).
pub fn utc_stamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_else(|_| "19700101T000000Z".to_string())
}

/// One saved definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// `20250101T120000Z`, `-2`, `-3`... appended when several land in one second.
    pub stamp: String,
    pub path: PathBuf,
}

/// The backup store: `ROOT/GUEST/TIMESTAMP.xml`, directories 0700, files 0600
/// (definitions hold secrets), every file written atomically and never overwritten.
#[derive(Debug, Clone)]
pub struct Backups {
    root: PathBuf,
}

impl Backups {
    pub fn new(root: impl Into<PathBuf>) -> Backups {
        Backups { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/GUEST`, once the name is checked.
    pub fn guest_dir(&self, guest: &str) -> Result<PathBuf, BackupError> {
        check_guest_name(guest)?;
        Ok(self.root.join(guest))
    }

    /// Creates (0700) and checks the guest's directory: a symlink is refused.
    fn ensure_dir(&self, guest: &str) -> Result<PathBuf, BackupError> {
        let dir = self.guest_dir(guest)?;
        for d in [&self.root, &dir] {
            match fs::symlink_metadata(d) {
                Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
                    return Err(BackupError::NotADirectory(d.clone()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(d).map_err(io_error(d))?;
                    fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                        .map_err(io_error(d))?;
                }
                Err(e) => return Err(io_error(d)(e)),
            }
        }
        Ok(dir)
    }

    /// Saves `bytes` as a new backup stamped `now`; never replaces an existing one.
    pub fn save(&self, guest: &str, bytes: &[u8], now: SystemTime) -> Result<Backup, BackupError> {
        let dir = self.ensure_dir(guest)?;
        let base = utc_stamp(now);
        let tmp = dir.join(format!(".tmp-{}.xml", std::process::id()));
        write_synced(&tmp, bytes)?;
        for n in 1..1000 {
            let stamp = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let path = dir.join(format!("{stamp}.xml"));
            // link() fails if the name exists: an atomic "create, never overwrite".
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    let _ = fs::remove_file(&tmp);
                    sync_dir(&dir);
                    return Ok(Backup { stamp, path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_error(&path)(e));
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        Err(BackupError::TooMany { dir, stamp: base })
    }

    /// The guest's backups, oldest first.
    pub fn list(&self, guest: &str) -> Result<Vec<Backup>, BackupError> {
        let dir = self.guest_dir(guest)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&dir)(e)),
        };
        let mut out: Vec<Backup> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stamp = name.strip_suffix(".xml")?.to_string();
                (!stamp.starts_with('.') && check_stamp(&stamp).is_ok()).then(|| Backup {
                    stamp,
                    path: e.path(),
                })
            })
            .collect();
        out.sort_by_key(|b| stamp_order(&b.stamp));
        Ok(out)
    }

    /// The bytes of one backup (at most one byte more than a domain XML may have,
    /// so that an oversized one is refused by the parser, not read whole).
    pub fn read(&self, backup: &Backup) -> Result<Vec<u8>, BackupError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&backup.path)
            .map_err(io_error(&backup.path))?;
        let mut bytes = Vec::new();
        file.take(kvmtune_core::domain::MAX_XML_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error(&backup.path))?;
        Ok(bytes)
    }

    /// A private scratch file next to the backups, for `virsh define --file`;
    /// removed when the returned [`Scratch`] is dropped.
    pub fn scratch(&self, guest: &str, bytes: &[u8]) -> Result<Scratch, BackupError> {
        let dir = self.ensure_dir(guest)?;
        let path = dir.join(format!(".define-{}.xml", std::process::id()));
        let _ = fs::remove_file(&path);
        write_synced(&path, bytes)?;
        Ok(Scratch(path))
    }
}

/// A scratch file; removes its file when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Sort key: the base stamp, then the `-N` suffix as a number (`-10` after `-9`).
fn stamp_order(stamp: &str) -> (String, u32) {
    match stamp.rsplit_once('-') {
        Some((base, n)) if n.chars().all(|c| c.is_ascii_digit()) => {
            (base.to_string(), n.parse().unwrap_or(0))
        }
        _ => (stamp.to_string(), 1),
    }
}

/// Creates `path` (0600, never following a symlink, never an existing file) with
/// `bytes`, synced to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backups_never_overwrite_and_sort_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backups::new(dir.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let names: Vec<String> = (0..11)
            .map(|i| b.save("g", format!("{i}").as_bytes(), t).unwrap().stamp)
            .collect();
        assert_eq!(names[0], "20231114T221320Z");
        assert_eq!(names[1], "20231114T221320Z-2");
        assert_eq!(names[10], "20231114T221320Z-11");
        let listed: Vec<String> = b.list("g").unwrap().into_iter().map(|b| b.stamp).collect();
        assert_eq!(listed, names);
        // A symlinked guest directory is refused.
        std::os::unix::fs::symlink(dir.path().join("g"), dir.path().join("h")).unwrap();
        let _ = b.save("h", b"x", t).unwrap_err();
    }

    #[test]
    fn a_scratch_file_is_private_and_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backups::new(dir.path());
        let scratch = b.scratch("g", b"<domain/>").unwrap();
        let path = scratch.path().to_path_buf();
        assert_eq!(fs::read(&path).unwrap(), b"<domain/>");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(scratch);
        assert!(!path.exists());
        assert!(b.list("g").unwrap().is_empty());
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31 23:59:59
        assert_eq!(utc_stamp(late), "20991231T235959Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(utc_stamp(before), "19700101T000000Z");
    }

    #[test]
    fn guest_names() {
        check_guest_name("web-01.example_x").unwrap();
        check_guest_name("with space").unwrap();
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/abs",
            "a..b",
            "tab\there",
            "nul\0",
            &"x".repeat(256),
        ] {
            assert!(check_guest_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stamps_are_checked() {
        check_stamp("20250101T120000Z-2").unwrap();
        for bad in ["", "../../x", "a b", &"1".repeat(65)] {
            assert!(check_stamp(bad).is_err(), "{bad:?}");
        }
    }
}
