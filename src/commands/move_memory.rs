//! `kvmtune move-memory` (hidden): what the hook starts, detached, at `started`
//! for a `preferred`/`interleave` guest whose memory lies partly on other nodes
//! than its claim (QEMU preallocated it before the vCPUs were pinned). Moves it
//! there once with `migrate_pages(2)` ([`kvmtune_sys::page_move`]), binds nothing,
//! and logs one syslog line: `guest=NAME stage=move-memory outcome=moved ...`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_sys::logging::{Log, one_line, sanitize};
use kvmtune_sys::page_move;

use crate::exit;

#[derive(Debug, Args)]
pub struct MoveMemoryArgs {
    /// The guest (libvirt's name); its QEMU's command line must name it
    #[arg(long)]
    pub guest: String,
    /// The guest's QEMU pid
    #[arg(long)]
    pub pid: u32,
    /// The NUMA nodes to move the memory to (a node list: 1 or 0-1)
    #[arg(long, value_parser = parse_nodes)]
    pub nodes: CpuSet,
}

fn parse_nodes(s: &str) -> Result<CpuSet, String> {
    match CpuSet::parse(s) {
        Ok(n) if !n.is_empty() => Ok(n),
        Ok(_) => Err("no node".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: &MoveMemoryArgs) -> Result<ExitCode> {
    let env = kvmtune_sys::roots::Roots::from_process_env();
    let mut log = Log::open(&env.syslog_socket);
    let (code, outcome) = if !page_move::is_guest_qemu(&env.proc_root, args.pid, &args.guest) {
        let e = page_move::MoveError::NotTheGuest {
            pid: args.pid,
            guest: args.guest.clone(),
        };
        (exit::INPUT, format!("outcome=not moved: {e}"))
    } else {
        match page_move::move_off_nodes(
            &env.proc_root,
            args.pid,
            &args.nodes,
            &mut page_move::Kernel,
        ) {
            Ok(report) => (exit::OK, format!("outcome=moved {report}")),
            Err(e) => (exit::FINDINGS, format!("outcome=not moved: {e}")),
        }
    };
    let line = one_line(&format!(
        "guest={} stage=move-memory {outcome}",
        sanitize(&args.guest)
    ));
    if code == exit::OK {
        log.info(line.clone());
    } else {
        log.warning(line.clone());
    }
    // Detached from the hook, stdout is /dev/null; run by hand, the admin reads it.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    Ok(ExitCode::from(code))
}
