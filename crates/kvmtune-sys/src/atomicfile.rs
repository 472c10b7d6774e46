//! Writing a file so that readers (and a crash) see the old content or the new,
//! never half of it: a temp file in the same directory, opened without following
//! symlinks, then `rename` over the target. Used for the ledger and the host
//! topology cache under `/run/kvmtune/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temp file a writer with this prefix uses: `.PREFIX.PID.tmp` in `dir`. Only
/// one writer per prefix may run at a time (callers hold the ledger lock), so a
/// leftover one belongs to a killed process.
pub fn temp_path(dir: &Path, prefix: &str) -> PathBuf {
    dir.join(format!(".{prefix}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `target` (mode `mode`) through a temp file named after
/// `prefix`. `durable`: fsync the file and its directory, so the new content
/// survives a power cut (pointless on tmpfs, where it costs nothing either).
/// On error the temp file is removed and the target is untouched.
pub fn write(
    target: &Path,
    prefix: &str,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(dir, prefix);
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, target)?;
        if durable && let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_target_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.json");
        write(&target, "f.json", b"old", 0o644, true).unwrap();
        write(&target, "f.json", b"new", 0o644, false).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlinked_temp_path_is_refused_and_the_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.json");
        fs::write(&target, "old").unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, temp_path(dir.path(), "f.json")).unwrap();
        let _ = write(&target, "f.json", b"new", 0o644, true).unwrap_err();
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        assert!(!elsewhere.exists());
    }
}
