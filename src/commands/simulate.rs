//! `kvmtune simulate`: replays a workload file on a host through
//! [`kvmtune_core::simulate`] and prints the placement-quality report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use kvmtune_core::simulate::{Strategy, Workload, WorkloadError, simulate};

use crate::exit::{self, fail};
use crate::inputs::{self as cli, Sources};

/// Who places the guests, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// kvmtune's placement engine, settings from the policy
    Kvmtune,
    /// No pinning: every vCPU floats over all online CPUs (libvirt without a hook)
    LibvirtDefault,
    /// Each vCPU on its own CPU, first fit in CPU-number order
    NaiveFirstFit,
}

impl From<StrategyArg> for Strategy {
    fn from(arg: StrategyArg) -> Strategy {
        match arg {
            StrategyArg::Kvmtune => Strategy::Kvmtune,
            StrategyArg::LibvirtDefault => Strategy::LibvirtDefault,
            StrategyArg::NaiveFirstFit => Strategy::NaiveFirstFit,
        }
    }
}

/// `kvmtune simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Workload YAML: a list of `{arrive: NAME, vcpus: N, memory: 4G, pool:
    /// shared|dedicated}` and `{depart: NAME}` events
    #[arg(long, value_name = "FILE")]
    pub workload: PathBuf,
    /// Who places the guests: kvmtune, or a baseline run by the same simulator
    #[arg(long, value_enum, default_value = "kvmtune")]
    pub strategy: StrategyArg,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Reads and parses a workload file.
pub fn load_workload(path: &Path) -> Result<Workload, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Workload::parse(&text, &path.display().to_string())
}

/// Runs `kvmtune simulate`.
pub fn run(args: &SimulateArgs) -> Result<ExitCode> {
    let policy = cli::load_policy(args.sources.policy.as_deref())?;
    let host = cli::read_host(&args.sources.host_root)?;
    let workload = load_workload(&args.workload).map_err(|e| fail(exit::INPUT, e.to_string()))?;
    let report = simulate(&host, &policy, &workload, args.strategy.into());
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(report.text().as_bytes())?;
    }
    Ok(ExitCode::from(exit::OK))
}
