//! libvirt's run directory (`/run/libvirt/qemu`): which guests run, and their status
//! files read safely. Reading files instead of calling libvirt is what lets the hook
//! know the host's occupancy without deadlocking libvirtd (a hook must never call it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kvmtune_core::domain::MAX_XML_BYTES;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::runstate::{LiveGuest, parse_status};

#[derive(Debug, thiserror::Error)]
pub enum RunStateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Largest status file read: the live domain XML plus libvirt's run state.
pub const MAX_STATUS_BYTES: u64 = 2 * MAX_XML_BYTES as u64;

/// Reads one status file.
pub fn read_status(path: &Path) -> Result<LiveGuest, RunStateError> {
    let text = read_bounded(path).map_err(|source| RunStateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_status(&text).map_err(|message| RunStateError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// Reads a regular file of at most `MAX_STATUS_BYTES`: a FIFO (whose open would
/// block), a device (`/dev/zero` never ends), a directory or a huge file in the run
/// directory is an error for that file, never a hang or an unbounded allocation.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_STATUS_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_STATUS_BYTES} bytes"
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATUS_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATUS_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_STATUS_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Running guests by name → status file, from libvirt's run directory (a guest
/// runs while its status file exists, whether or not the file parses).
pub fn status_files(libvirt_run_dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(libvirt_run_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("xml") {
            continue;
        }
        if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
            out.insert(name.to_string(), path);
        }
    }
    out
}

/// Running guests by name, from every status file under `dir` (unreadable files
/// are skipped: one broken file must not stop every guest start).
pub fn running(dir: &Path) -> BTreeMap<String, LiveGuest> {
    parse_except(&status_files(dir), &Occupancy::default())
}

/// Parses the `status_files` of guests `claimed` does not hold: their placement is
/// known, and parsing a status file (libvirt's are 10-30 KB) is most of a hook
/// call's cost on a busy host.
pub fn parse_except(
    status_files: &BTreeMap<String, PathBuf>,
    claimed: &Occupancy,
) -> BTreeMap<String, LiveGuest> {
    status_files
        .iter()
        .filter(|(name, _)| !claimed.guests.contains_key(*name))
        .filter_map(|(name, path)| read_status(path).ok().map(|g| (name.clone(), g)))
        .collect()
}
