//! `kvmtune status`: a picture of the host taken in at a glance, like `lstopo`,
//! and every running guest with its placement, its conformance rule by rule, and
//! whether kvmtune's ledger agrees with libvirt, and which guests wait in the
//! convergence queue. This module is the door: its
//! arguments, and [`run_status`], which reads everything through `kvmtune_sys`
//! (sysfs, libvirt's status files, the ledger, `/proc` for the affinity of every
//! QEMU thread, the guest's cpuset cgroup),
//! builds the model with [`kvmtune_core::status::build`] and prints it as the
//! picture drawn by [`render`], as JSON (with a `schema_version`, documented in
//! docs/status-json.md) or in Prometheus' text exposition format ([`prometheus`]),
//! to stdout or atomically into a file (`--output`, for node_exporter's textfile
//! collector).
//!
//! Reads files only, never libvirt itself, so it is safe to run at any time, even
//! while libvirtd hangs.

pub mod prometheus;
pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anstream::{AutoStream, ColorChoice};
use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::exit;
use crate::inputs::{self as cli, Sources};
use kvmtune_core::converge::Entry;
use kvmtune_core::ledger::Ledger;
use kvmtune_core::readback::Observed;
use kvmtune_core::runstate::LiveGuest;
use kvmtune_core::status::{Inputs, Status, build, vcpu_count};
use kvmtune_sys::affinity;
use kvmtune_sys::atomicfile;
use kvmtune_sys::converge_queue::Queue;
use kvmtune_sys::ledger_store as ledger;
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::run_metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The picture of the host and its guests
    Text,
    /// JSON, versioned by its `schema_version` (docs/status-json.md)
    Json,
    /// Prometheus' text exposition format (node_exporter's textfile collector)
    Prometheus,
}

/// The version of the `--format json` schema (docs/status-json.md): raised when
/// a field is renamed, removed or changes meaning; adding fields keeps it.
pub const JSON_SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set or CLICOLOR=0 (CLICOLOR_FORCE forces it)
    Auto,
    Always,
    Never,
}

const STATUS_HELP: &str = "\
Reads files only: sysfs, libvirt's status files (/run/libvirt/qemu/*.xml), the
ledger (/run/kvmtune/ledger.json), /proc for thread affinity and the guests'
cpuset cgroups; never calls libvirt, so it is safe to run at any time. A guest's
placement comes from its live XML pins, else from the ledger (placed by the hook
at start). Conformance per rule: ok, runtime-enforced (the hook applied it to the
running guest), differs (fixed by kvmtune apply and a cold boot). Read back per
aspect (vCPU, emulator and iothreads, cgroup cpus and mems, memory policy):
applied and verified, not enforced at runtime (why), drifted (expected X, found
Y), not read back (why). Exit code 0.

The guests queued for convergence (/run/kvmtune/converge/, drained by kvmtune
converge) are listed with when they were queued. --format prometheus also reads
the hook's outcome counters (/run/kvmtune/hook-counters.json). --output FILE
replaces FILE atomically (temp file + rename), so node_exporter's textfile
collector never reads half of it.";

#[derive(Debug, Args)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Output format
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    pub format: Format,
    /// Same as --format json
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Write to FILE (replaced atomically: temp file + rename) instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
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

/// What each running guest with a QEMU pid shows: the `Cpus_allowed_list` of its
/// vCPU, emulator and iothreads (`PID/task/TID/status` under `proc_root`) and its
/// cpuset cgroup's effective sets (the mount point under `fs_root`).
pub fn read_observed(
    proc_root: &Path,
    fs_root: &Path,
    live: &BTreeMap<String, LiveGuest>,
) -> BTreeMap<String, Observed> {
    live.iter()
        .filter_map(|(name, guest)| {
            let observed = affinity::observe(proc_root, fs_root, guest, vcpu_count(guest))?;
            Some((name.clone(), observed))
        })
        .collect()
}

/// The convergence queue's directory and its entries, or why it could not be
/// read (it is 0700 root: other users get "permission denied").
pub fn read_queue(run_dir: &Path) -> (PathBuf, Result<Vec<(String, Entry)>, String>) {
    let queue = Queue::under(run_dir);
    let entries = queue
        .list()
        .map(|list| list.into_iter().map(|q| (q.guest, q.entry)).collect())
        .map_err(|e| e.to_string());
    (queue.dir().to_path_buf(), entries)
}

/// `kvmtune status`.
pub fn run_status(args: &StatusArgs) -> Result<ExitCode> {
    let policy = cli::load_policy(args.sources.policy.as_deref())?;
    let host = cli::read_host(&args.sources.host_root)?;
    let env = kvmtune_sys::roots::Roots::from_process_env();
    let proc_root = cli::proc_root(&args.sources.host_root);
    let live = runstate::running(&env.paths.libvirt_run_dir);
    let inputs = Inputs {
        policy: &policy,
        host: &host,
        ledger_path: env.paths.run_dir.join("ledger.json"),
        ledger: read_ledger(&env.paths.run_dir),
        observed: read_observed(&proc_root, &args.sources.host_root, &live),
        converge_queue: read_queue(&env.paths.run_dir),
        live,
        now: ledger::now(),
    };
    let status = build(&inputs);
    let format = if args.json { Format::Json } else { args.format };
    let text = match format {
        Format::Json => to_json(&status)?,
        Format::Prometheus => prometheus::render(
            &status,
            &prometheus::RunState {
                converge_queue_length: run_metrics::converge_queue_length(&env.paths.run_dir),
                hook_outcomes: run_metrics::read_hook_counters(&env.paths.run_dir)
                    .map(|c| c.counts)
                    .unwrap_or_default(),
            },
        ),
        // A file gets no colour codes, whatever --color says.
        Format::Text => render::render(&status, args.output.is_none() && use_color(args.color)),
    };
    match &args.output {
        Some(path) => write_output(path, &text)?,
        None => crate::output::print_stdout(&text)?,
    }
    Ok(ExitCode::from(exit::OK))
}

/// The `--format json` document: `schema_version`, then the [`Status`] fields.
#[derive(Serialize)]
struct JsonStatus<'a> {
    schema_version: u32,
    #[serde(flatten)]
    status: &'a Status,
}

/// `status` as the versioned JSON document, pretty-printed.
pub fn to_json(status: &Status) -> Result<String> {
    let doc = JsonStatus {
        schema_version: JSON_SCHEMA_VERSION,
        status,
    };
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

/// Replaces `path` with `text` atomically (mode 0644): readers see the old file
/// or the new one, never half of it.
fn write_output(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            exit::fail(
                exit::USAGE,
                format!("--output {}: not a file name", path.display()),
            )
        })?;
    atomicfile::write(path, name, text.as_bytes(), 0o644, false)
        .map_err(|e| exit::fail(exit::INPUT, format!("--output {}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
