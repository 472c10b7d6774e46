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
//! This module is the orchestration and the command line; the parts live where
//! their concept does: virsh behind the [`Runner`] trait in `kvmtune_sys::virsh`
//! (unit tests use a fake; every call has a timeout), the backup store and the
//! guest-name check in `kvmtune_sys::backups` (guest names come from libvirt and
//! the command line and end up in file names, so they are checked before any path
//! is built), and planning several guests against one occupancy in
//! `kvmtune_core::batch`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;

use crate::exit::{self, Failure, fail};
use crate::inputs::{self as cli, Sources};
use kvmtune_core::batch::{self, BatchError, Planned};
use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::plan::plan;
use kvmtune_core::policy::Policy;
use kvmtune_core::runstate::LiveGuest;
use kvmtune_sys::backups::{BackupError, Backups, check_guest_name, check_stamp};
use kvmtune_sys::command::{ProcessRunner, Runner, find_program};
use kvmtune_sys::ledger_store as ledger;
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::virsh::{VIRSH_ENV, VIRSH_TIMEOUT, Virsh, VirshError};

/// Where backups of replaced definitions go: `DIR/GUEST/TIMESTAMP.xml`.
pub const DEFAULT_BACKUP_DIR: &str = "/var/lib/kvmtune/backups";
/// Environment override of the backup directory (tests, unusual layouts).
pub const BACKUP_DIR_ENV: &str = "KVMTUNE_BACKUP_DIR";

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
            .unwrap_or_else(|| kvmtune_sys::virsh::DEFAULT_URI.to_string())
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

/// Into the CLI's error, carrying the exit code: an unknown guest is bad input,
/// everything else is libvirt's.
fn lv(e: VirshError) -> anyhow::Error {
    let code = match e {
        VirshError::NoSuchGuest { .. } => exit::INPUT,
        _ => exit::LIBVIRT,
    };
    fail(code, e.to_string())
}

/// Into the CLI's error: a policy that does not fit the host is usage, the rest is
/// bad input. Nothing has been defined when planning fails.
fn batch_failure(e: BatchError) -> anyhow::Error {
    match e {
        BatchError::WrongGuest { asked, found } => fail(
            exit::INPUT,
            format!("virsh dumpxml {asked} returned the definition of '{found}'; nothing defined"),
        ),
        BatchError::Plan { .. } => fail(exit::USAGE, format!("{e}; nothing defined")),
        _ => fail(exit::INPUT, format!("{e}; nothing defined")),
    }
}

/// Into the CLI's error: a bad stamp is usage, a permission problem is the
/// admin's (run as root), the rest is bad input (an unsafe name, a broken store).
fn backup_failure(e: BackupError) -> anyhow::Error {
    let code = match &e {
        BackupError::Stamp(_) => exit::USAGE,
        e if e.is_permission_denied() => exit::USAGE,
        _ => exit::INPUT,
    };
    fail(code, e.to_string())
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

/// A definition `apply` replaced: the guest, each change's reason, the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defined {
    pub guest: String,
    pub reasons: Vec<String>,
    pub backup: String,
}

/// Plans, shows and (unless dry-run or declined) defines. Returns the exit code.
pub fn apply<R: Runner>(
    ctx: &Context<'_, R>,
    request: &ApplyRequest<'_>,
    consent: Consent<'_>,
    out: &mut dyn Write,
) -> Result<u8> {
    apply_reporting(ctx, request, consent, out, &mut Vec::new())
}

/// [`apply`], also listing in `defined` what it defined (`kvmtune converge` logs it).
pub fn apply_reporting<R: Runner>(
    ctx: &Context<'_, R>,
    request: &ApplyRequest<'_>,
    consent: Consent<'_>,
    out: &mut dyn Write,
    defined: &mut Vec<Defined>,
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
                check_guest_name(g).map_err(backup_failure)?;
                if !persistent.contains(g) {
                    let active = virsh.active_guests().map_err(lv)?;
                    return Err(if active.contains(g) {
                        fail(
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
            fail(
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
    // A running guest counts where it runs (its claim), not where its
    // definition pinned it at start: repacking or rebalance may have moved it,
    // and the claim knows its pool (1:1 pins read as dedicated).
    let mut occupancy = running.clone();
    for (name, claim) in batch::pinned_by_definitions(
        policy,
        definitions
            .iter()
            .filter(|(name, _)| !targets.contains(name))
            .map(|(name, xml)| (name.as_str(), &xml[..])),
    )
    .guests
    {
        occupancy.guests.entry(name).or_insert(claim);
    }

    // Plan every target; any failure stops everything before anything is defined.
    let batch: Vec<(String, Vec<u8>)> = targets
        .iter()
        .map(|name| (name.clone(), definitions.remove(name).unwrap_or_default()))
        .collect();
    let planned = batch::plan_batch(policy, host, &mut occupancy, batch).map_err(batch_failure)?;

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
            return Err(fail(
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
        if let Ok(stamp) = &result {
            defined.push(Defined {
                guest: p.name.clone(),
                reasons: p.plan.edits.iter().map(|e| e.reason.to_string()).collect(),
                backup: stamp.clone(),
            });
        }
        if let Err(e) = result {
            let code = e
                .downcast_ref::<Failure>()
                .map_or(exit::LIBVIRT, |f| f.code);
            let already = if done.is_empty() {
                "nothing defined".to_string()
            } else {
                format!("already defined: {}", done.join(", "))
            };
            return Err(fail(code, format!("guest '{}': {e:#} ({already})", p.name)));
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
) -> Result<String> {
    let Context {
        virsh,
        policy,
        host,
        backups,
        ..
    } = *ctx;
    let backup = backups
        .save(&p.name, &p.before, SystemTime::now())
        .map_err(backup_failure)?;
    let scratch = backups
        .scratch(&p.name, p.after.as_bytes())
        .map_err(backup_failure)?;
    virsh.define(scratch.path(), &p.name).map_err(lv)?;
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
    Ok(backup.stamp)
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
    check_guest_name(guest).map_err(backup_failure)?;
    let list = backups.list(guest).map_err(backup_failure)?;
    let dir = backups.root().join(guest);
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
            let bytes = backups.read(b).map_err(backup_failure)?;
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
        check_stamp(stamp).map_err(backup_failure)?;
    }
    if list.is_empty() {
        return Err(fail(
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
                fail(
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
                if current.as_deref() != Some(&backups.read(b).map_err(backup_failure)?[..]) {
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
    let bytes = backups.read(&chosen).map_err(backup_failure)?;
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
        Some(xml) => Some(
            backups
                .save(guest, xml, SystemTime::now())
                .map_err(backup_failure)?,
        ),
        None => None,
    };
    let scratch = backups.scratch(guest, &bytes).map_err(backup_failure)?;
    virsh.define(scratch.path(), guest).map_err(lv)?;
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
