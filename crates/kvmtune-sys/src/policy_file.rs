//! Reading the policy file: bounded, never blocking, and (for the hook) refused when
//! someone other than root could have written it. Parsing and validation are
//! `kvmtune_core::policy`'s.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use kvmtune_core::policy::{
    MAX_POLICY_BYTES, Policy, PolicyError, check_owner_and_mode, read_error,
};

/// Opens `path` for reading without blocking: a FIFO planted where the policy
/// should be would otherwise hang every guest start in `open(2)`. Anything but a
/// regular file is refused.
fn open_regular(path: &Path) -> Result<File, PolicyError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| read_error(path, &e))?;
    let meta = file.metadata().map_err(|e| read_error(path, &e))?;
    if !meta.is_file() {
        return Err(PolicyError::Read {
            path: path.to_path_buf(),
            message: "not a regular file".to_string(),
        });
    }
    Ok(file)
}

/// Loads and validates the policy at `path` (the CLI: an admin may pass a pipe,
/// e.g. `--policy <(…)`, so any readable file will do; the hook uses
/// [`load_checked`], which never blocks).
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let file = File::open(path).map_err(|e| read_error(path, &e))?;
    read_and_parse(file, path)
}

/// Like [`load`], but first refuses a file that someone other than root could have
/// written (sshd's StrictModes): the file or a directory above it not owned by root,
/// or writable by group or others (a sticky directory such as `/tmp` is fine for
/// the directories). `allow_insecure` skips the check; the binary sets it from
/// [`kvmtune_core::policy::ALLOW_INSECURE_ENV`].
pub fn load_checked(path: &Path, allow_insecure: bool) -> Result<Policy, PolicyError> {
    let file = open_regular(path)?;
    if !allow_insecure {
        // The open file's own metadata: what we check is what we read.
        let meta = file.metadata().map_err(|e| read_error(path, &e))?;
        check_owner_and_mode(path, meta.uid(), meta.mode(), false)?;
        // The directories above the path as given (whoever can write there can
        // swap a symlink) and above the file it resolves to.
        let given = std::path::absolute(path).map_err(|e| read_error(path, &e))?;
        let real = std::fs::canonicalize(path).map_err(|e| read_error(path, &e))?;
        let mut dirs: Vec<&Path> = Vec::new();
        for dir in given.ancestors().skip(1).chain(real.ancestors().skip(1)) {
            if !dir.as_os_str().is_empty() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            let meta = std::fs::metadata(dir).map_err(|e| read_error(dir, &e))?;
            check_owner_and_mode(dir, meta.uid(), meta.permissions().mode(), true)?;
        }
    }
    read_and_parse(file, path)
}

fn read_and_parse(file: File, path: &Path) -> Result<Policy, PolicyError> {
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, &e))?;
    Policy::parse_bytes(&bytes, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use kvmtune_core::policy::{MAX_POLICY_BYTES, PolicyError};

    use super::*;

    #[test]
    fn load_reports_read_and_encoding_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        assert_eq!(
            load(&missing),
            Err(PolicyError::Read {
                path: missing.clone(),
                message: "No such file or directory (os error 2)".into()
            })
        );
        let latin1 = dir.path().join("latin1.yaml");
        std::fs::write(&latin1, b"version: 1\n# caf\xe9\n").unwrap();
        assert_eq!(
            load(&latin1),
            Err(PolicyError::Invalid {
                path: latin1.clone(),
                line: 2,
                column: 6,
                message: "not valid UTF-8".into()
            })
        );
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        assert_eq!(
            load(&big),
            Err(PolicyError::Read {
                path: big.clone(),
                message: "larger than 1048576 bytes".into()
            })
        );
        let error = load(&missing).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "cannot read policy {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn load_checked_refuses_files_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "version: 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();

        let refused = load_checked(&path, false).unwrap_err();
        let shown = path.display();
        if nix_is_root() {
            assert_eq!(
                refused,
                PolicyError::Insecure {
                    path: path.clone(),
                    problem: format!("{shown} is writable by group or others (mode 0664)"),
                    fix: format!("chmod go-w {shown}"),
                }
            );
            assert_eq!(
                refused.to_string(),
                format!(
                    "refusing policy {shown}: {shown} is writable by group or others (mode 0664); fix: chmod go-w {shown}, or set KVMTUNE_ALLOW_INSECURE_POLICY=1 to load it anyway"
                )
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let _ = load_checked(&path, false).unwrap();

            // A directory others can write into is as bad as the file itself.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let dir_shown = dir.path().to_path_buf();
            assert_eq!(
                load_checked(&path, false),
                Err(PolicyError::Insecure {
                    path: dir_shown.clone(),
                    problem: format!(
                        "{} is writable by group or others (mode 0777)",
                        dir_shown.display()
                    ),
                    fix: format!("chmod go-w {}", dir_shown.display()),
                })
            );
        } else {
            assert!(matches!(refused, PolicyError::Insecure { .. }), "{refused}");
        }
        let _ = load_checked(&path, true).unwrap();
        assert!(matches!(
            load_checked(&dir.path().join("nope"), true),
            Err(PolicyError::Read { .. })
        ));
    }

    fn nix_is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
}
