//! `kvmtune status`: a picture of the host taken in at a glance, like `lstopo`,
//! and every running guest with its placement, its conformance rule by rule, and
//! whether kvmtune's ledger agrees with libvirt. This module is the door: its
//! arguments, and [`run_status`], which reads everything through `kvmtune_sys`
//! (sysfs, libvirt's status files, the ledger, `/proc` for vCPU thread affinity),
//! builds the model with [`kvmtune_core::status::build`] and prints it as JSON or
//! as the picture drawn by [`render`].
//!
//! Reads files only, never libvirt itself, so it is safe to run at any time, even
//! while libvirtd hangs.

pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anstream::{AutoStream, ColorChoice};
use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::exit;
use crate::inputs::{self as cli, Sources};
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::ledger::Ledger;
use kvmtune_core::runstate::LiveGuest;
use kvmtune_core::status::{Inputs, build, vcpu_count};
use kvmtune_sys::affinity;
use kvmtune_sys::ledger_store as ledger;
use kvmtune_sys::libvirt_run as runstate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set or CLICOLOR=0 (CLICOLOR_FORCE forces it)
    Auto,
    Always,
    Never,
}

const STATUS_HELP: &str = "\
Reads files only: sysfs, libvirt's status files (/run/libvirt/qemu/*.xml), the
ledger (/run/kvmtune/ledger.json) and /proc for thread affinity; never calls
libvirt, so it is safe to run at any time. A guest's placement comes from its live
XML pins, else from the ledger (placed by the hook at start). Conformance per rule:
ok, runtime-enforced (the hook applied it to the running guest), differs (fixed by
kvmtune apply and a cold boot). Exit code 0.";

#[derive(Debug, Args)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Print the status as JSON (for monitoring)
    #[arg(long)]
    pub json: bool,
    /// Colour the picture
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorWhen,
}

impl ColorWhen {
    fn choice(self) -> ColorChoice {
        match self {
            ColorWhen::Auto => ColorChoice::Auto,
            ColorWhen::Always => ColorChoice::Always,
            ColorWhen::Never => ColorChoice::Never,
        }
    }
}

/// Whether to colour stdout: `--color`, and with `auto` anstream's detection
/// (`NO_COLOR`, `CLICOLOR`, `CLICOLOR_FORCE`, `TERM`, whether stdout is a terminal).
pub fn use_color(when: ColorWhen) -> bool {
    when.choice().write_global();
    AutoStream::choice(&std::io::stdout()) != ColorChoice::Never
}

/// Reads the ledger file: None = absent, Some(None) = present but unparsable.
pub fn read_ledger(run_dir: &Path) -> Option<Option<Ledger>> {
    let path = run_dir.join("ledger.json");
    if std::fs::symlink_metadata(&path).is_err() {
        return None;
    }
    Some(ledger::read_unlocked(run_dir))
}

/// `Cpus_allowed_list` of each vCPU thread of each running guest with a QEMU pid,
/// from `PID/task/TID/status` under `proc_root` (`None` where unreadable).
pub fn read_threads(
    proc_root: &Path,
    live: &BTreeMap<String, LiveGuest>,
) -> BTreeMap<String, Vec<Option<CpuSet>>> {
    live.iter()
        .filter_map(|(name, guest)| {
            let pid = guest.qemu_pid?;
            let threads = (0..vcpu_count(guest))
                .map(|v| {
                    let tid = guest.vcpu_tids.get(&v)?;
                    affinity::allowed_cpus(proc_root, pid, *tid).ok()
                })
                .collect();
            Some((name.clone(), threads))
        })
        .collect()
}

/// `kvmtune status`.
pub fn run_status(args: &StatusArgs) -> Result<ExitCode> {
    let policy = cli::load_policy(args.sources.policy.as_deref())?;
    let host = cli::read_host(&args.sources.host_root)?;
    let env = kvmtune_sys::roots::Roots::from_process_env();
    // Unlike the hook, status follows --host-root to its /proc unless told otherwise.
    let proc_root = std::env::var_os("KVMTUNE_PROC_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| args.sources.host_root.join("proc"));
    let live = runstate::running(&env.paths.libvirt_run_dir);
    let inputs = Inputs {
        policy: &policy,
        host: &host,
        ledger_path: env.paths.run_dir.join("ledger.json"),
        ledger: read_ledger(&env.paths.run_dir),
        threads: read_threads(&proc_root, &live),
        live,
        now: ledger::now(),
    };
    let status = build(&inputs);
    let text = if args.json {
        serde_json::to_string_pretty(&status)? + "\n"
    } else {
        render::render(&status, use_color(args.color))
    };
    crate::output::print_stdout(&text)?;
    Ok(ExitCode::from(exit::OK))
}

#[cfg(test)]
mod tests;
