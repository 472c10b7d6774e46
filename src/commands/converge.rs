//! `kvmtune converge`: drains the convergence queue that the hook fills at
//! `prepare` for guests started with XML-level violations under
//! `converge: after-start` (`/run/kvmtune/converge/GUEST`). The hook cannot call
//! libvirt (it would deadlock libvirtd), so this runs outside it: started by the
//! `kvmtune-converge.path` systemd unit once the queue changes, or by hand.
//!
//! For each queued guest: it must still exist (`virsh domuuid`; undefined
//! meanwhile: the entry is dropped with a log line; redefined under the same name:
//! planned afresh), its start must have finished, its current definition must
//! still want convergence (no Nova metadata, `converge` not `off`), and then the
//! same code as `kvmtune apply GUEST --yes` runs ([`apply::apply_reporting`]):
//! the current `virsh dumpxml --inactive` is planned (nothing cached from the
//! queueing), backed up and defined. One syslog line per guest names the changes
//! and their reasons. libvirt unreachable: every entry stays, exit 0 (the next
//! change of the queue or the timer retries).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::apply::{self, ApplyRequest, Consent, Context, LibvirtArgs};
use crate::exit::{self, Failure};
use crate::inputs::{self as cli, Sources};
use kvmtune_core::converge::{Decision, still_wanted};
use kvmtune_core::domain::Domain;
use kvmtune_sys::backups::Backups;
use kvmtune_sys::command::Runner;
use kvmtune_sys::converge_queue::{Queue, Queued};
use kvmtune_sys::logging::{Log, one_line, sanitize};
use kvmtune_sys::virsh::{Virsh, VirshError};

/// How long a guest whose start is still running is waited for.
const START_WAIT: Duration = Duration::from_secs(30);

const CONVERGE_HELP: &str = "\
With converge: after-start (the default), the hook queues each guest that starts
with XML-level violations in /run/kvmtune/converge/; this command conforms their
persistent definitions as `kvmtune apply GUEST --yes` does (backup kept, undo with
kvmtune revert GUEST). The kvmtune-converge.path unit runs it after each start;
without systemd, run it yourself.

Exit codes: 0 drained, nothing queued, or libvirt unreachable (entries kept for
later), 1 --dry-run found changes or a guest could not be converged (kept), 2
usage or policy error, 3 unreadable queue.";

#[derive(Debug, Args)]
#[command(after_help = CONVERGE_HELP)]
pub struct ConvergeArgs {
    #[command(flatten)]
    pub sources: Sources,
    #[command(flatten)]
    pub libvirt: LibvirtArgs,
    /// Show what would change; define nothing, keep the queue
    #[arg(long, short = 'n', conflicts_with = "list")]
    pub dry_run: bool,
    /// List the queued guests; change nothing
    #[arg(long)]
    pub list: bool,
}

/// What happened to one queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Defined (or already conforming): entry removed.
    Done,
    /// Entry removed without defining (undefined meanwhile, Nova, converge off...).
    Dropped,
    /// Entry kept for a later run.
    Kept,
}

/// Drains `queue`; every decision goes to `log` (one line per guest) and the apply
/// output to `out`. Returns the exit code.
pub fn drain<R: Runner>(
    ctx: &Context<'_, R>,
    queue: &Queue,
    dry_run: bool,
    out: &mut dyn Write,
    log: &mut Log,
) -> Result<u8> {
    let entries = queue
        .list()
        .map_err(|e| exit::fail(exit::INPUT, format!("{}: {e}", queue.dir().display())))?;
    if entries.is_empty() {
        writeln!(out, "converge: nothing queued in {}", queue.dir().display())?;
        return Ok(exit::OK);
    }
    // One cheap call first: with libvirt down, nothing is touched.
    if let Err(e) = ctx.virsh.persistent_guests() {
        let line = format!(
            "stage=converge outcome=deferred {e}; {} guest(s) stay queued for a later run",
            entries.len()
        );
        writeln!(out, "converge: {line}")?;
        log.warning(one_line(&line));
        return Ok(exit::OK);
    }
    let mut code = exit::OK;
    for queued in &entries {
        let (fate, line) = converge_one(ctx, queued, dry_run, out)?;
        let line = one_line(&format!(
            "guest={} stage=converge {line}",
            sanitize(&queued.guest)
        ));
        writeln!(out, "converge: {line}")?;
        if dry_run {
            // Looking changes nothing: no syslog line, the queue stays.
            continue;
        }
        match fate {
            Fate::Kept => {
                log.warning(line);
                code = exit::FINDINGS;
            }
            Fate::Done | Fate::Dropped => {
                log.info(line);
                if let Err(e) = queue.remove(&queued.guest) {
                    let line = format!(
                        "guest={} stage=converge could not remove its queue entry: {e}",
                        sanitize(&queued.guest)
                    );
                    writeln!(out, "converge: {line}")?;
                    log.error(one_line(&line));
                    code = exit::FINDINGS;
                }
            }
        }
    }
    if dry_run {
        code = exit::FINDINGS;
    }
    Ok(code)
}

/// Converges one queued guest; returns its fate and the log line's outcome part.
fn converge_one<R: Runner>(
    ctx: &Context<'_, R>,
    queued: &Queued,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(Fate, String)> {
    let virsh = ctx.virsh;
    let guest = queued.guest.as_str();
    let kept = |what: String| Ok((Fate::Kept, format!("outcome=kept {what}; retried later")));
    let uuid = match virsh.domuuid(guest) {
        Ok(uuid) => uuid,
        Err(VirshError::NoSuchGuest { .. }) => {
            return Ok((Fate::Dropped, "outcome=dropped: undefined meanwhile".into()));
        }
        Err(e) => return kept(e.to_string()),
    };
    let mut notes = Vec::new();
    if let Some(was) = &queued.entry.uuid
        && *was != uuid
    {
        notes.push(format!(
            "redefined meanwhile (uuid {} -> {}): planned afresh",
            sanitize(was),
            sanitize(&uuid)
        ));
    }
    // The start that queued it must be over: a define while libvirt still starts
    // the guest would race that start.
    let waited = Instant::now();
    loop {
        match virsh.domstate(guest) {
            Ok(state) if state.contains("starting up") => {
                if waited.elapsed() >= START_WAIT {
                    return kept(format!("still starting after {}s", START_WAIT.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(_) => break,
            Err(VirshError::NoSuchGuest { .. }) => {
                return Ok((Fate::Dropped, "outcome=dropped: undefined meanwhile".into()));
            }
            Err(e) => return kept(e.to_string()),
        }
    }
    // The definition now, not the one queued: re-check that it still wants this.
    let current = match virsh.dumpxml_inactive(guest) {
        Ok(xml) => xml,
        Err(VirshError::NoSuchGuest { .. }) => {
            return Ok((Fate::Dropped, "outcome=dropped: undefined meanwhile".into()));
        }
        Err(e) => return kept(e.to_string()),
    };
    let domain = match std::str::from_utf8(&current)
        .map_err(|e| e.to_string())
        .and_then(|t| Domain::parse(t).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            return Ok((
                Fate::Dropped,
                format!("outcome=dropped: its definition does not parse: {e}"),
            ));
        }
    };
    match still_wanted(ctx.policy, &domain) {
        Decision::Nova => {
            return Ok((
                Fate::Dropped,
                "outcome=dropped: Nova metadata (Nova owns the definition)".into(),
            ));
        }
        Decision::Off => {
            return Ok((
                Fate::Dropped,
                "outcome=dropped: converge is off (or the guest opted out) now".into(),
            ));
        }
        Decision::Queue | Decision::Conforms => {}
    }
    let names = [guest.to_string()];
    let request = ApplyRequest {
        guests: Some(&names),
        dry_run,
    };
    let mut defined = Vec::new();
    let result = apply::apply_reporting(ctx, &request, Consent::Given, out, &mut defined);
    let prefix = if notes.is_empty() {
        String::new()
    } else {
        format!("{}; ", notes.join("; "))
    };
    match result {
        Ok(_) if dry_run => Ok((Fate::Kept, format!("{prefix}outcome=dry-run"))),
        Ok(_) => Ok(match defined.first() {
            Some(d) => (
                Fate::Done,
                format!(
                    "{prefix}outcome=defined backup={} (undo: kvmtune revert {} --to {}) changes: {}",
                    d.backup,
                    sanitize(guest),
                    d.backup,
                    d.reasons.join("; ")
                ),
            ),
            None => (
                Fate::Done,
                format!("{prefix}outcome=conforms: nothing to define"),
            ),
        }),
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map_or(exit::INPUT, |f| f.code);
            if code == exit::INPUT {
                // Transient now, or a definition kvmtune cannot plan: no retry helps.
                Ok((Fate::Dropped, format!("{prefix}outcome=dropped: {e:#}")))
            } else {
                kept(format!("{prefix}{e:#}"))
            }
        }
    }
}

/// `kvmtune converge --list`.
pub fn list(queue: &Queue, out: &mut dyn Write) -> Result<u8> {
    let entries = queue
        .list()
        .map_err(|e| exit::fail(exit::INPUT, format!("{}: {e}", queue.dir().display())))?;
    if entries.is_empty() {
        writeln!(out, "nothing queued in {}", queue.dir().display())?;
        return Ok(exit::OK);
    }
    writeln!(
        out,
        "queued in {} (conformed by kvmtune converge):",
        queue.dir().display()
    )?;
    for q in entries {
        writeln!(
            out,
            "  {}  uuid {}  queued {}",
            q.guest,
            q.entry.uuid.as_deref().unwrap_or("?"),
            kvmtune_sys::backups::utc_stamp(
                std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(q.entry.queued_at)
            )
        )?;
    }
    Ok(exit::OK)
}

/// `kvmtune converge`.
pub fn run(args: &ConvergeArgs) -> Result<ExitCode> {
    let env = kvmtune_sys::roots::Roots::from_process_env();
    let queue = Queue::under(&env.paths.run_dir);
    let mut out = std::io::stdout().lock();
    if args.list {
        return Ok(ExitCode::from(list(&queue, &mut out)?));
    }
    // Nothing queued: no policy, host or libvirt needed (the timer runs this often).
    if queue
        .list()
        .map_err(|e| exit::fail(exit::INPUT, format!("{}: {e}", queue.dir().display())))?
        .is_empty()
    {
        writeln!(out, "converge: nothing queued in {}", queue.dir().display())?;
        return Ok(ExitCode::from(exit::OK));
    }
    let policy = cli::load_policy(args.sources.policy.as_deref())?;
    let host = cli::read_host(&args.sources.host_root)?;
    let (running, _) = apply::running_occupancy(&env.paths);
    let virsh: Virsh<_> = args.libvirt.virsh();
    let backups = Backups::new(args.libvirt.backup_dir());
    let ctx = Context {
        virsh: &virsh,
        policy: &policy,
        host: &host,
        running: &running,
        backups: &backups,
    };
    let mut log = Log::open(&env.syslog_socket);
    let code = drain(&ctx, &queue, args.dry_run, &mut out, &mut log)?;
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests;
