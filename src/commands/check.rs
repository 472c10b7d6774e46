//! `kvmtune check`: validates a policy against a host.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::exit;
use crate::inputs::{Sources, load_policy, read_host};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sources: Sources,
}

/// Runs `kvmtune check`.
pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let policy = load_policy(args.sources.policy.as_deref())?;
    let host = read_host(&args.sources.host_root)?;
    let nodes = host.nodes.keys().copied().collect();
    let problems = policy.check_against(&host.online, &nodes);
    for p in &problems {
        eprintln!("kvmtune: {p}");
    }
    if !problems.is_empty() {
        return Ok(ExitCode::from(exit::USAGE));
    }
    for warning in policy.warnings_against(&host.online, &nodes) {
        eprintln!("kvmtune: warning: {warning}");
    }
    println!(
        "{}: valid for this host ({}; {} rule(s))",
        policy.source.display(),
        host.summary(),
        policy.rules.len()
    );
    Ok(ExitCode::from(exit::OK))
}
