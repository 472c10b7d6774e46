//! `kvmtune plan`: the conforming XML, a diff, the reasons or JSON for one domain.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use kvmtune_core::placement::Occupancy;

use crate::exit;
use crate::inputs::{
    Sources, load_policy, plan_and_rewrite, read_domain_text, read_host, unified_diff,
};

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Print a unified diff of the current and the conforming XML
    #[arg(long, group = "format")]
    pub diff: bool,
    /// Print the placement and every change with its reason
    #[arg(long, group = "format")]
    pub explain: bool,
    /// Print the plan as JSON
    #[arg(long, group = "format")]
    pub json: bool,
    /// Domain XML file, or - for standard input
    #[arg(value_name = "DOMAIN.xml")]
    pub domain: PathBuf,
}

/// Runs `kvmtune plan`.
pub fn run(args: &PlanArgs) -> Result<ExitCode> {
    let policy = load_policy(args.sources.policy.as_deref())?;
    let host = read_host(&args.sources.host_root)?;
    let xml = read_domain_text(&args.domain)?;
    let (plan, rewritten) = plan_and_rewrite(&policy, &host, &Occupancy::default(), &xml)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &plan)?;
        writeln!(out)?;
    } else if args.explain {
        out.write_all(plan.explain().as_bytes())?;
    } else if args.diff {
        out.write_all(unified_diff(&plan.guest, &xml, &rewritten).as_bytes())?;
    } else {
        out.write_all(rewritten.as_bytes())?;
    }
    Ok(ExitCode::from(exit::OK))
}
