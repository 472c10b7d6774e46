//! `kvmtune apply` and `kvmtune revert`: conform libvirt's persistent definitions to
//! the policy, and undo that from backups.
//!
//! The hook cannot change the XML a plain `virsh start` uses (LIBVIRT-FACTS.md), so
//! the admin conforms the persistent definitions here, outside any hook: read each
//! inactive definition (`virsh dumpxml --inactive --security-info`, so secrets such
//! as VNC passwords survive the round trip), plan it, show the diff with a reason per
//! change, back the old definition up under `/var/lib/kvmtune/backups/GUEST/`, and
//! `virsh define` the new one. Nothing is defined unless every requested guest
//! planned cleanly. `revert` defines a backup's bytes again.
//!
//! libvirt is reached through virsh, behind the [`Runner`] trait (unit tests use a
//! fake); every call has a timeout. Guest names come from libvirt and the command
//! line and end up in file names, so they are checked before any path is built.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;

use crate::exit::{self, Failure};
use crate::inputs::{self as cli, Sources};
use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::{Claim, Occupancy};
use kvmtune_core::plan::{Plan, plan};
use kvmtune_core::policy::Policy;
use kvmtune_core::runstate::LiveGuest;
use kvmtune_sys::command::{Output, ProcessRunner, RunError, Runner, find_program};
use kvmtune_sys::ledger_store as ledger;
use kvmtune_sys::libvirt_run as runstate;

/// Where backups of replaced definitions go: `DIR/GUEST/TIMESTAMP.xml`.
pub const DEFAULT_BACKUP_DIR: &str = "/var/lib/kvmtune/backups";
/// Environment override of the backup directory (tests, unusual layouts).
pub const BACKUP_DIR_ENV: &str = "KVMTUNE_BACKUP_DIR";
/// Environment override of the virsh program (tests).
pub const VIRSH_ENV: &str = "KVMTUNE_VIRSH";
/// The URI used when neither `--connect` nor `LIBVIRT_DEFAULT_URI` says.
pub const DEFAULT_URI: &str = "qemu:///system";
/// How long one virsh call may take.
pub const VIRSH_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- arguments

/// How to reach libvirt and where backups live.
#[derive(Debug, Clone, Args)]
pub struct LibvirtArgs {
    /// libvirt connection URI [default: $LIBVIRT_DEFAULT_URI, else qemu:///system]
    #[arg(long, short = 'c', value_name = "URI")]
    pub connect: Option<String>,
    /// Backup directory [default: $KVMTUNE_BACKUP_DIR, else /var/lib/kvmtune/backups]
    #[arg(long, value_name = "DIR", hide = true)]
    pub backup_dir: Option<PathBuf>,
    /// The virsh program [default: $KVMTUNE_VIRSH, else virsh on PATH]
    #[arg(long, value_name = "PATH", hide = true)]
    pub virsh: Option<PathBuf>,
    /// Timeout of each virsh call
    #[arg(long, value_name = "SECONDS", default_value_t = VIRSH_TIMEOUT.as_secs(), hide = true)]
    pub virsh_timeout: u64,
}

impl LibvirtArgs {
    pub fn uri(&self) -> String {
        self.connect
            .clone()
            .or_else(|| {
                std::env::var("LIBVIRT_DEFAULT_URI")
                    .ok()
                    .filter(|u| !u.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_URI.to_string())
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir
            .clone()
            .or_else(|| std::env::var_os(BACKUP_DIR_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BACKUP_DIR))
    }

    pub fn virsh(&self) -> Virsh<ProcessRunner> {
        let program = self
            .virsh
            .clone()
            .or_else(|| std::env::var_os(VIRSH_ENV).map(PathBuf::from))
            .unwrap_or_else(|| find_program("virsh"));
        Virsh::new(
            ProcessRunner::new(Duration::from_secs(self.virsh_timeout.max(1))),
            program,
            self.uri(),
        )
    }
}

const APPLY_HELP: &str = "\
Each previous definition is saved as /var/lib/kvmtune/backups/GUEST/TIMESTAMP.xml
first (undo: kvmtune revert GUEST). Nothing is defined unless every guest planned
cleanly. A running guest gets the new definition at its next cold boot (shut down,
then start). Without --yes kvmtune asks on the terminal; scripts must pass --yes.

Examples:
  kvmtune apply --all --dry-run     what would change on every guest, and why
  kvmtune apply web01               show, ask, back up, define
  kvmtune apply --all --yes         from a script or configuration management

Exit codes: 0 defined or nothing to do, 1 --dry-run found changes or the question
was answered no, 2 usage or policy error (also: no terminal and no --yes), 3 bad
input (unknown guest, unparsable definition), 4 libvirt failed (virsh missing,
libvirt unreachable, permission denied, define refused).";

const REVERT_HELP: &str = "\
Defines the backup's bytes again. The definition being replaced is backed up first,
so a revert can be undone by another revert.

Exit codes: 0 restored or nothing to do, 2 no such timestamp, 3 bad guest name or
no backups, 4 libvirt failed.";

#[derive(Debug, Args)]
#[command(after_help = APPLY_HELP)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub sources: Sources,
    #[command(flatten)]
    pub libvirt: LibvirtArgs,
    /// Every persistent guest libvirt knows
    #[arg(long, conflicts_with = "guests")]
    pub all: bool,
    /// Show the changes and their reasons; define nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Guests to conform
    #[arg(value_name = "GUEST", required_unless_present = "all")]
    pub guests: Vec<String>,
}

#[derive(Debug, Args)]
#[command(after_help = REVERT_HELP)]
pub struct RevertArgs {
    #[command(flatten)]
    pub libvirt: LibvirtArgs,
    /// Restore the backup with this timestamp (see --list) [default: the newest
    /// backup that differs from the current definition]
    #[arg(long, value_name = "TIMESTAMP", conflicts_with = "list")]
    pub to: Option<String>,
    /// List the guest's backups; change nothing
    #[arg(long)]
    pub list: bool,
    /// The guest whose definition to restore
    #[arg(value_name = "GUEST")]
    pub guest: String,
}

// ---------------------------------------------------------------- errors

fn failure(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
    }
    .into()
}

/// What went wrong talking to libvirt, phrased for the admin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirshError {
    #[error(
        "virsh not found ({program}): install libvirt-clients (Debian) or libvirt-client (RPM)"
    )]
    Missing { program: String },
    #[error("cannot run {program}: permission denied")]
    NotExecutable { program: String },
    #[error("libvirt at {uri} is unreachable: {detail}; is libvirtd (or virtqemud) running?")]
    Unreachable { uri: String, detail: String },
    #[error(
        "libvirt at {uri} refused access: {detail}; run as root or as a member of the libvirt group"
    )]
    PermissionDenied { uri: String, detail: String },
    #[error("libvirt at {uri} has no guest named '{guest}'")]
    NoSuchGuest { uri: String, guest: String },
    #[error("virsh {command} did not answer within {secs}s (libvirtd hung?); killed")]
    Timeout { command: String, secs: u64 },
    #[error("virsh {command} failed: {detail}")]
    Failed { command: String, detail: String },
}

impl VirshError {
    /// The exit code: an unknown guest is bad input, everything else is libvirt's.
    pub fn exit_code(&self) -> u8 {
        match self {
            VirshError::NoSuchGuest { .. } => exit::INPUT,
            _ => exit::LIBVIRT,
        }
    }
}

/// Into the CLI's error, carrying the exit code.
fn lv(e: VirshError) -> anyhow::Error {
    failure(e.exit_code(), e.to_string())
}

// ---------------------------------------------------------------- virsh

/// virsh, one URI, behind a [`Runner`].
pub struct Virsh<R: Runner> {
    runner: R,
    program: PathBuf,
    uri: String,
}

impl<R: Runner> Virsh<R> {
    pub fn new(runner: R, program: PathBuf, uri: String) -> Virsh<R> {
        Virsh {
            runner,
            program,
            uri,
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `virsh --connect URI ARGS`; `guest` names the guest for error messages.
    fn call(&self, args: &[&str], guest: Option<&str>) -> Result<Vec<u8>, VirshError> {
        // --quiet: without it virsh frames each command's output with a blank line
        // of its own, which would end up in backups.
        let mut full = vec![
            "--quiet".to_string(),
            "--connect".to_string(),
            self.uri.clone(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let command = args.first().copied().unwrap_or("").to_string();
        let program = self.program.display().to_string();
        let output = self.runner.run(&self.program, &full).map_err(|e| match e {
            RunError::NotFound { .. } => VirshError::Missing { program },
            RunError::NotExecutable { .. } => VirshError::NotExecutable { program },
            RunError::Timeout { timeout, .. } => VirshError::Timeout {
                command: command.clone(),
                secs: timeout.as_secs(),
            },
            RunError::Io { message, .. } => VirshError::Failed {
                command: command.clone(),
                detail: message,
            },
        })?;
        if output.success() {
            return Ok(output.stdout);
        }
        Err(classify(&self.uri, &command, guest, &output))
    }

    /// Persistent guests (`list --all --persistent --name`).
    pub fn persistent_guests(&self) -> Result<Vec<String>, VirshError> {
        let out = self.call(&["list", "--all", "--persistent", "--name"], None)?;
        Ok(names(&out))
    }

    /// Running (or paused) guests (`list --name`).
    pub fn active_guests(&self) -> Result<BTreeSet<String>, VirshError> {
        let out = self.call(&["list", "--name"], None)?;
        Ok(names(&out).into_iter().collect())
    }

    /// The persistent definition, secrets included so that defining it back loses nothing.
    pub fn dumpxml_inactive(&self, guest: &str) -> Result<Vec<u8>, VirshError> {
        self.call(
            &[
                "dumpxml",
                "--inactive",
                "--security-info",
                "--domain",
                guest,
            ],
            Some(guest),
        )
    }

    /// `virsh define FILE`.
    pub fn define(&self, file: &Path, guest: &str) -> Result<(), VirshError> {
        let file = file.to_string_lossy();
        self.call(&["define", "--file", &file], Some(guest))
            .map(|_| ())
    }
}

fn names(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Turns virsh's stderr into an error the admin can act on.
fn classify(uri: &str, command: &str, guest: Option<&str>, output: &Output) -> VirshError {
    let detail = output
        .stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("error:").trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let detail = if detail.is_empty() {
        format!(
            "exit status {}",
            output.code.map_or("signal".to_string(), |c| c.to_string())
        )
    } else {
        detail
    };
    let lower = detail.to_lowercase();
    let denied = [
        "permission denied",
        "access denied",
        "authentication",
        "not permitted",
        "polkit",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let unreachable = [
        "failed to connect",
        "no connection driver",
        "cannot recv data",
        "connection reset",
        "connection refused",
        "no such file or directory",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let uri = uri.to_string();
    if denied && (unreachable || !lower.contains("domain")) {
        VirshError::PermissionDenied { uri, detail }
    } else if lower.contains("failed to connect") || (unreachable && guest.is_none()) {
        VirshError::Unreachable { uri, detail }
    } else if let Some(guest) = guest
        .filter(|_| lower.contains("domain not found") || lower.contains("failed to get domain"))
    {
        VirshError::NoSuchGuest {
            uri,
            guest: guest.to_string(),
        }
    } else if denied {
        VirshError::PermissionDenied { uri, detail }
    } else {
        VirshError::Failed {
            command: command.to_string(),
            detail,
        }
    }
}

// ---------------------------------------------------------------- names

/// Refuses guest names that cannot safely become a file name: empty, `.`/`..`,
/// containing `/`, `..`, NUL or control characters, or longer than a file name.
pub fn check_guest_name(name: &str) -> Result<(), String> {
    let shown = kvmtune_sys::logging::sanitize(name);
    if name.is_empty() {
        return Err("empty guest name".into());
    }
    if name.len() > 255 {
        return Err(format!("guest name '{shown}' is longer than 255 bytes"));
    }
    if name.contains('/') || name.contains("..") || name == "." {
        return Err(format!(
            "guest name '{shown}' contains '/' or '..'; refusing to use it in a file name"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "guest name '{shown}' contains control characters; refusing to use it in a file name"
        ));
    }
    Ok(())
}

/// Backup timestamps are file names too: digits, `T`, `Z`, `-` only.
fn check_stamp(stamp: &str) -> Result<(), String> {
    if stamp.is_empty()
        || stamp.len() > 64
        || !stamp.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "'{}' is not a backup timestamp (like 20250101T120000Z; see --list)",
            kvmtune_sys::logging::sanitize(stamp)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- backups

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

    fn guest_dir(&self, guest: &str) -> Result<PathBuf> {
        check_guest_name(guest).map_err(|m| failure(exit::INPUT, m))?;
        Ok(self.root.join(guest))
    }

    /// Creates (0700) and checks the guest's directory: a symlink is refused.
    fn ensure_dir(&self, guest: &str) -> Result<PathBuf> {
        let dir = self.guest_dir(guest)?;
        for d in [&self.root, &dir] {
            match fs::symlink_metadata(d) {
                Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
                    return Err(failure(
                        exit::INPUT,
                        format!(
                            "backup directory {} is a symlink or not a directory; refusing it",
                            d.display()
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(d).map_err(|e| io_failure(d, &e))?;
                    fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                        .map_err(|e| io_failure(d, &e))?;
                }
                Err(e) => return Err(io_failure(d, &e)),
            }
        }
        Ok(dir)
    }

    /// Saves `bytes` as a new backup stamped `now`; never replaces an existing one.
    pub fn save(&self, guest: &str, bytes: &[u8], now: SystemTime) -> Result<Backup> {
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
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_failure(&path, &e));
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        Err(failure(
            exit::INPUT,
            format!("{}: too many backups stamped {base}", dir.display()),
        ))
    }

    /// The guest's backups, oldest first.
    pub fn list(&self, guest: &str) -> Result<Vec<Backup>> {
        let dir = self.guest_dir(guest)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_failure(&dir, &e)),
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

    /// The bytes of one backup.
    pub fn read(&self, backup: &Backup) -> Result<Vec<u8>> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&backup.path)
            .map_err(|e| io_failure(&backup.path, &e))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut file, kvmtune_core::domain::MAX_XML_BYTES as u64 + 1),
            &mut bytes,
        )
        .map_err(|e| io_failure(&backup.path, &e))?;
        Ok(bytes)
    }

    /// A private scratch file next to the backups, for `virsh define --file`.
    fn scratch(&self, guest: &str, bytes: &[u8]) -> Result<Scratch> {
        let dir = self.ensure_dir(guest)?;
        let path = dir.join(format!(".define-{}.xml", std::process::id()));
        let _ = fs::remove_file(&path);
        write_synced(&path, bytes)?;
        Ok(Scratch(path))
    }
}

/// Removes its file when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn stamp_order(stamp: &str) -> (String, u32) {
    match stamp.rsplit_once('-') {
        Some((base, n)) if n.chars().all(|c| c.is_ascii_digit()) => {
            (base.to_string(), n.parse().unwrap_or(0))
        }
        _ => (stamp.to_string(), 1),
    }
}

fn io_failure(path: &Path, e: &std::io::Error) -> anyhow::Error {
    let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
        exit::USAGE
    } else {
        exit::INPUT
    };
    failure(code, format!("{}: {e}", path.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_failure(path, &e))?;
    file.write_all(bytes).map_err(|e| io_failure(path, &e))?;
    file.sync_all().map_err(|e| io_failure(path, &e))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub fn utc_stamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------- apply

/// How the admin agrees to changes.
pub enum Consent<'a> {
    /// `--yes`.
    Given,
    /// Ask on the terminal: the question goes to `prompt`, the answer is read from `answer`.
    Ask {
        prompt: &'a mut dyn Write,
        answer: &'a mut dyn BufRead,
    },
    /// Not a terminal and no `--yes`.
    Impossible,
}

/// What `apply` is asked to do.
pub struct ApplyRequest<'a> {
    pub guests: Option<&'a [String]>,
    pub dry_run: bool,
}

/// One guest, planned.
struct Planned {
    name: String,
    before: Vec<u8>,
    after: String,
    plan: Plan,
}

/// The occupancy of running guests, as the hook sees it: the ledger's claims
/// (runtime placement) plus the pins of running guests kvmtune has no claim for.
pub fn running_occupancy(paths: &ledger::Paths) -> (Occupancy, BTreeMap<String, LiveGuest>) {
    let live = runstate::running(&paths.libvirt_run_dir);
    let mut claimed = Occupancy::default();
    if let Some(mut ledger) = ledger::read_unlocked(&paths.run_dir) {
        let running: BTreeMap<String, PathBuf> = live
            .keys()
            .map(|k| (k.clone(), paths.libvirt_run_dir.join(format!("{k}.xml"))))
            .collect();
        ledger.reconcile(&running, ledger::now());
        claimed = ledger.occupancy();
    }
    let mut occupancy = claimed.clone();
    occupancy
        .guests
        .extend(kvmtune_core::runstate::pinned_by_others(&live, &claimed).guests);
    (occupancy, live)
}

/// What `apply` works with.
pub struct Context<'a, R: Runner> {
    pub virsh: &'a Virsh<R>,
    pub policy: &'a Policy,
    pub host: &'a Host,
    /// The occupancy of running guests ([`running_occupancy`]).
    pub running: &'a Occupancy,
    pub backups: &'a Backups,
}

/// Plans, shows and (unless dry-run or declined) defines. Returns the exit code.
pub fn apply<R: Runner>(
    ctx: &Context<'_, R>,
    request: &ApplyRequest<'_>,
    consent: Consent<'_>,
    out: &mut dyn Write,
) -> Result<u8> {
    let Context {
        virsh,
        policy,
        host,
        running,
        ..
    } = *ctx;
    let persistent = virsh.persistent_guests().map_err(lv)?;
    let targets: Vec<String> = match request.guests {
        None => persistent.clone(),
        Some(list) => {
            let mut seen = BTreeSet::new();
            let mut targets = Vec::new();
            for g in list {
                check_guest_name(g).map_err(|m| failure(exit::INPUT, m))?;
                if !persistent.contains(g) {
                    let active = virsh.active_guests().map_err(lv)?;
                    return Err(if active.contains(g) {
                        failure(
                            exit::INPUT,
                            format!(
                                "guest '{}' is transient (no persistent definition to conform); the hook tunes it when it starts",
                                kvmtune_sys::logging::sanitize(g)
                            ),
                        )
                    } else {
                        lv(VirshError::NoSuchGuest {
                            uri: virsh.uri().to_string(),
                            guest: kvmtune_sys::logging::sanitize(g),
                        })
                    });
                }
                if seen.insert(g.clone()) {
                    targets.push(g.clone());
                }
            }
            targets
        }
    };
    if targets.is_empty() {
        writeln!(out, "no persistent guests at {}", virsh.uri())?;
        return Ok(exit::OK);
    }
    for g in &targets {
        check_guest_name(g).map_err(|m| {
            failure(
                exit::INPUT,
                format!("libvirt lists a guest kvmtune cannot handle: {m}"),
            )
        })?;
    }

    // Read every definition first: the targets to plan them, the others because
    // their persistent pins say where they will run, so targets avoid them.
    let mut definitions: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for g in &persistent {
        if check_guest_name(g).is_err() {
            continue;
        }
        match virsh.dumpxml_inactive(g) {
            Ok(xml) => {
                definitions.insert(g.clone(), xml);
            }
            Err(e) if targets.contains(g) => return Err(lv(e)),
            // Another guest vanished meanwhile: it simply does not count.
            Err(_) => {}
        }
    }
    let mut occupancy = running.clone();
    let mut others = BTreeMap::new();
    for (name, xml) in &definitions {
        if targets.contains(name) {
            continue;
        }
        if let Some(domain) = std::str::from_utf8(xml)
            .ok()
            .and_then(|t| Domain::parse(t).ok())
        {
            others.insert(
                name.clone(),
                LiveGuest {
                    name: name.clone(),
                    qemu_pid: None,
                    vcpu_tids: BTreeMap::new(),
                    iothread_tids: BTreeMap::new(),
                    domain: Some(domain),
                },
            );
        }
    }
    occupancy
        .guests
        .extend(kvmtune_core::runstate::pinned_by_others(&others, &Occupancy::default()).guests);

    // Plan every target; any failure stops everything before anything is defined.
    let mut planned = Vec::new();
    for name in &targets {
        let before = definitions.remove(name).unwrap_or_default();
        let text = std::str::from_utf8(&before).map_err(|e| {
            failure(
                exit::INPUT,
                format!("guest '{name}': definition is not UTF-8 ({e}); nothing defined"),
            )
        })?;
        let (plan, after) = cli::plan_and_rewrite(policy, host, &occupancy, text).map_err(|e| {
            let code = e.downcast_ref::<Failure>().map_or(exit::INPUT, |f| f.code);
            failure(code, format!("guest '{name}': {e:#}; nothing defined"))
        })?;
        if plan.guest != *name {
            return Err(failure(
                exit::INPUT,
                format!(
                    "virsh dumpxml {name} returned the definition of '{}'; nothing defined",
                    plan.guest
                ),
            ));
        }
        // Later targets must not land on the CPUs this one was just given.
        if let Some(p) = &plan.placement {
            occupancy.guests.insert(
                name.clone(),
                Claim {
                    vcpus: p.vcpus.clone(),
                    nodes: p.nodes.clone(),
                    memory_kib: Domain::parse(text).map(|d| d.memory_kib).unwrap_or(0),
                    pool: plan.pool,
                },
            );
        }
        planned.push(Planned {
            name: name.clone(),
            before,
            after,
            plan,
        });
    }

    // Show.
    let mut changing = Vec::new();
    for p in &planned {
        out.write_all(p.plan.explain().as_bytes())?;
        let before = String::from_utf8_lossy(&p.before);
        if p.plan.edits.is_empty() || p.after == before {
            continue;
        }
        out.write_all(cli::unified_diff(&p.name, &before, &p.after).as_bytes())?;
        changing.push(p);
    }
    writeln!(out)?;
    if changing.is_empty() {
        writeln!(
            out,
            "nothing to do: {} guest(s) already conform",
            planned.len()
        )?;
        return Ok(exit::OK);
    }
    let list = changing
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if request.dry_run {
        writeln!(
            out,
            "dry run: {} guest(s) would change ({list}); nothing defined",
            changing.len()
        )?;
        return Ok(exit::FINDINGS);
    }
    match consent {
        Consent::Given => {}
        Consent::Impossible => {
            return Err(failure(
                exit::USAGE,
                format!(
                    "not on a terminal: pass --yes to define the new definitions of {list} (or --dry-run to only look)"
                ),
            ));
        }
        Consent::Ask { prompt, answer } => {
            write!(prompt, "Define the new definition of {list}? [y/N] ")?;
            prompt.flush()?;
            let mut line = String::new();
            answer.read_line(&mut line)?;
            if !matches!(line.trim().to_lowercase().as_str(), "y" | "yes") {
                writeln!(out, "nothing defined")?;
                return Ok(exit::FINDINGS);
            }
        }
    }

    let active = virsh.active_guests().map_err(lv)?;
    let mut done: Vec<&str> = Vec::new();
    for p in changing {
        let result = define_one(ctx, &occupancy, p, &active, out);
        if let Err(e) = result {
            let code = e
                .downcast_ref::<Failure>()
                .map_or(exit::LIBVIRT, |f| f.code);
            let already = if done.is_empty() {
                "nothing defined".to_string()
            } else {
                format!("already defined: {}", done.join(", "))
            };
            return Err(failure(
                code,
                format!("guest '{}': {e:#} ({already})", p.name),
            ));
        }
        done.push(&p.name);
    }
    Ok(exit::OK)
}

fn define_one<R: Runner>(
    ctx: &Context<'_, R>,
    occupancy: &Occupancy,
    p: &Planned,
    active: &BTreeSet<String>,
    out: &mut dyn Write,
) -> Result<()> {
    let Context {
        virsh,
        policy,
        host,
        backups,
        ..
    } = *ctx;
    let backup = backups.save(&p.name, &p.before, SystemTime::now())?;
    let scratch = backups.scratch(&p.name, p.after.as_bytes())?;
    virsh.define(&scratch.0, &p.name).map_err(lv)?;
    drop(scratch);
    writeln!(
        out,
        "{}: defined; previous definition saved as {} (undo: kvmtune revert {} --to {})",
        p.name,
        backup.path.display(),
        p.name,
        backup.stamp
    )?;
    // libvirt may drop or normalize what it does not accept: re-read and re-plan.
    match virsh.dumpxml_inactive(&p.name) {
        Ok(now) => {
            let text = String::from_utf8_lossy(&now);
            let left = Domain::parse(&text)
                .ok()
                .and_then(|d| plan(policy, host, occupancy, &d).ok())
                .map(|again| again.edits);
            match left {
                Some(edits) if edits.is_empty() => {}
                Some(edits) => {
                    for e in edits {
                        writeln!(
                            out,
                            "{}: warning: libvirt did not keep: {}",
                            p.name, e.reason
                        )?;
                    }
                }
                None => writeln!(
                    out,
                    "{}: warning: could not re-check the new definition",
                    p.name
                )?,
            }
        }
        Err(e) => writeln!(
            out,
            "{}: warning: could not re-read the new definition: {e}",
            p.name
        )?,
    }
    if active.contains(&p.name) {
        writeln!(
            out,
            "{}: is running: the new definition takes effect at its next cold boot (shut it down, then start it; a reboot from inside the guest keeps the running configuration)",
            p.name
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------- revert

/// What `revert` should do.
pub enum RevertRequest<'a> {
    List,
    /// Restore this timestamp, or the newest that differs from the current definition.
    Restore(Option<&'a str>),
}

/// Lists or restores backups. Returns the exit code.
pub fn revert<R: Runner>(
    virsh: &Virsh<R>,
    backups: &Backups,
    guest: &str,
    request: RevertRequest<'_>,
    out: &mut dyn Write,
) -> Result<u8> {
    check_guest_name(guest).map_err(|m| failure(exit::INPUT, m))?;
    let list = backups.list(guest)?;
    let dir = backups.root.join(guest);
    if let RevertRequest::List = request {
        // The current definition, to mark the backup equal to it (libvirt unreachable
        // or guest undefined: list anyway).
        let current = virsh.dumpxml_inactive(guest).ok();
        if list.is_empty() {
            writeln!(out, "no backups of {guest} in {}", dir.display())?;
            return Ok(exit::OK);
        }
        writeln!(
            out,
            "backups of {guest} in {} (oldest first):",
            dir.display()
        )?;
        for b in &list {
            let bytes = backups.read(b)?;
            let mark = if current.as_deref() == Some(&bytes[..]) {
                "  = current definition"
            } else {
                ""
            };
            writeln!(out, "  {}  {} bytes{mark}", b.stamp, bytes.len())?;
        }
        return Ok(exit::OK);
    }
    let RevertRequest::Restore(to) = request else {
        unreachable!("List returned above")
    };
    if let Some(stamp) = to {
        check_stamp(stamp).map_err(|m| failure(exit::USAGE, m))?;
    }
    if list.is_empty() {
        return Err(failure(
            exit::INPUT,
            format!("no backups of '{guest}' in {}", dir.display()),
        ));
    }
    let current = match virsh.dumpxml_inactive(guest) {
        Ok(xml) => Some(xml),
        Err(VirshError::NoSuchGuest { .. }) => None,
        Err(e) => return Err(lv(e)),
    };
    let chosen = match to {
        Some(stamp) => list
            .iter()
            .find(|b| b.stamp == stamp)
            .cloned()
            .ok_or_else(|| {
                failure(
                    exit::USAGE,
                    format!(
                        "no backup {stamp} of '{guest}'; available: {}",
                        list.iter()
                            .map(|b| b.stamp.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )
            })?,
        None => {
            let mut found = None;
            for b in list.iter().rev() {
                if current.as_deref() != Some(&backups.read(b)?[..]) {
                    found = Some(b.clone());
                    break;
                }
            }
            match found {
                Some(b) => b,
                None => {
                    writeln!(
                        out,
                        "{guest}: every backup equals the current definition; nothing to do"
                    )?;
                    return Ok(exit::OK);
                }
            }
        }
    };
    let bytes = backups.read(&chosen)?;
    if current.as_deref() == Some(&bytes[..]) {
        writeln!(
            out,
            "{guest}: the current definition already equals backup {}; nothing to do",
            chosen.stamp
        )?;
        return Ok(exit::OK);
    }
    // The definition being replaced is saved too: a revert can itself be undone.
    let saved = match &current {
        Some(xml) => Some(backups.save(guest, xml, SystemTime::now())?),
        None => None,
    };
    let scratch = backups.scratch(guest, &bytes)?;
    virsh.define(&scratch.0, guest).map_err(lv)?;
    drop(scratch);
    write!(out, "{guest}: restored backup {}", chosen.stamp)?;
    match saved {
        Some(b) => writeln!(out, "; the replaced definition was saved as {}", b.stamp)?,
        None => writeln!(out, " (the guest was not defined)")?,
    }
    if let Ok(now) = virsh.dumpxml_inactive(guest)
        && now != bytes
    {
        writeln!(
            out,
            "{guest}: note: libvirt formats the restored definition differently from the backup (same guest, different bytes)"
        )?;
    }
    if virsh.active_guests().is_ok_and(|a| a.contains(guest)) {
        writeln!(
            out,
            "{guest}: is running: the restored definition takes effect at its next cold boot"
        )?;
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------- CLI doors

/// `kvmtune apply`.
pub fn run_apply(args: &ApplyArgs) -> Result<ExitCode> {
    let policy = cli::load_policy(args.sources.policy.as_deref())?;
    let host = cli::read_host(&args.sources.host_root)?;
    let env = kvmtune_sys::roots::Roots::from_process_env();
    let (running, _) = running_occupancy(&env.paths);
    let virsh = args.libvirt.virsh();
    let backups = Backups::new(args.libvirt.backup_dir());
    let request = ApplyRequest {
        guests: (!args.all).then_some(&args.guests[..]),
        dry_run: args.dry_run,
    };
    let mut stderr = std::io::stderr();
    let stdin = std::io::stdin();
    let mut answer = stdin.lock();
    let consent = if args.yes || args.dry_run {
        Consent::Given
    } else if std::io::stdin().is_terminal() {
        Consent::Ask {
            prompt: &mut stderr,
            answer: &mut answer,
        }
    } else {
        Consent::Impossible
    };
    let mut out = std::io::stdout().lock();
    let ctx = Context {
        virsh: &virsh,
        policy: &policy,
        host: &host,
        running: &running,
        backups: &backups,
    };
    let code = apply(&ctx, &request, consent, &mut out)?;
    Ok(ExitCode::from(code))
}

/// `kvmtune revert`.
pub fn run_revert(args: &RevertArgs) -> Result<ExitCode> {
    let virsh = args.libvirt.virsh();
    let backups = Backups::new(args.libvirt.backup_dir());
    let request = if args.list {
        RevertRequest::List
    } else {
        RevertRequest::Restore(args.to.as_deref())
    };
    let mut out = std::io::stdout().lock();
    let code = revert(&virsh, &backups, &args.guest, request, &mut out)?;
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests;
