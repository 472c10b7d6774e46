//! The admin's command line: argument definitions (clap derive, also the source of
//! the man page and shell completions) and the subcommands that are thin doors onto
//! the library. The hook entry lives in [`crate::hook`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::domain::Domain;
use crate::host::Host;
use crate::placement::Occupancy;
use crate::plan::{Plan, plan};
use crate::policy::{DEFAULT_POLICY_PATH, Policy};
use crate::rewrite;

/// Exit codes scripts can rely on (also listed in kvmtune(8)).
pub mod exit {
    /// Success; for `check`, everything conforms.
    pub const OK: u8 = 0;
    /// The command worked and found something: violations, differences, a refusal.
    pub const FINDINGS: u8 = 1;
    /// Bad usage or a bad policy file.
    pub const USAGE: u8 = 2;
    /// Bad input: unreadable or invalid domain XML, unreadable host.
    pub const INPUT: u8 = 3;
    /// libvirt failed or is unreachable (apply, revert).
    pub const LIBVIRT: u8 = 4;
}

const AFTER_HELP: &str = "\
kvmtune makes every KVM guest libvirt starts follow the host's tuning policy
(/etc/kvmtune/policy.yaml): NUMA- and cache-local vCPU pinning away from CPU0 and
the IRQ CPUs, memory on the vCPUs' node, no KSM, huge pages, disk cache='none',
vhost-net with multiqueue, no host-passthrough.

libvirt ignores hook output when a guest starts, so the hook (installed as
/etc/libvirt/hooks/qemu) places vCPUs at start and warns about or refuses what only a
new definition can fix; `kvmtune apply` writes that definition.

Examples:
  kvmtune plan --explain guest.xml          what kvmtune would change, and why
  virsh dumpxml web01 | kvmtune plan --diff -
  kvmtune check                             validate the policy against this host
  kvmtune apply --dry-run --all             what apply would change in every definition
  kvmtune apply web01                       conform web01's definition (backup kept)
  kvmtune status                            what runs where, and does it conform

Exit codes: 0 ok, 1 findings (violations, differences, refusal), 2 usage or policy
error, 3 bad input (domain XML, host), 4 libvirt error.";

#[derive(Debug, Parser)]
#[command(
    name = "kvmtune",
    version,
    about = "Tune KVM guests to the host's policy: placement, memory, disks, network",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute the plan for one domain XML and print the conforming XML, a diff,
    /// the reasons or JSON.
    Plan(PlanArgs),
    /// Validate a policy file against a host.
    Check(CheckArgs),
    /// Run as the libvirt qemu hook: GUEST OP SUBOP EXTRA, domain XML on stdin.
    Hook(crate::hook::HookArgs),
    /// Conform persistent guest definitions to the policy (virsh dumpxml --inactive →
    /// plan → virsh define), backing up each previous definition.
    Apply(crate::apply::ApplyArgs),
    /// Restore a guest's definition from a backup made by `apply`.
    Revert(crate::apply::RevertArgs),
    /// Show the host (NUMA nodes, caches, cores, threads) with the running guests on
    /// it, their conformance rule by rule, and whether the ledger agrees with libvirt.
    Status(crate::status::StatusArgs),
    /// Check or apply the host-side tuning: NIC IRQs, irqbalance, KSM, transparent
    /// huge pages, huge pages, hugetlbfs, IO schedulers, vhost_net.
    Host(crate::hosttune::HostArgs),
    /// Replay a workload of guest arrivals and departures on a host and report the
    /// placement quality (kvmtune or a baseline strategy).
    Simulate(crate::simulate::SimulateArgs),
    /// Write the man pages or shell completions (packaging).
    #[command(hide = true)]
    Generate(crate::gendocs::GenerateArgs),
}

/// Where the policy and host come from.
#[derive(Debug, Args)]
pub struct Sources {
    /// Policy file [default: /etc/kvmtune/policy.yaml, or the shipped policy when
    /// that file does not exist]
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Read the host's sysfs/procfs under this directory (a fixture tree in tests)
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
}

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

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sources: Sources,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Plan(args) => run_plan(&args),
        Command::Check(args) => run_check(&args),
        Command::Hook(args) => Ok(crate::hook::run_from_cli(&args)),
        Command::Apply(args) => crate::apply::run_apply(&args),
        Command::Revert(args) => crate::apply::run_revert(&args),
        Command::Status(args) => crate::status::run_status(&args),
        Command::Host(args) => crate::hosttune::run_host(&args),
        Command::Simulate(args) => crate::simulate::run_simulate(&args),
        Command::Generate(args) => crate::gendocs::run(&args),
    }
}

/// A failure that maps to a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
    }
    .into()
}

/// Loads the policy named on the command line, else the production file, else the
/// shipped default (so `plan` works on a machine where kvmtune is not installed).
pub fn load_policy(explicit: Option<&Path>) -> Result<Policy> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_POLICY_PATH).exists() => PathBuf::from(DEFAULT_POLICY_PATH),
        None => return Ok(Policy::shipped()),
    };
    Policy::load(&path).map_err(|e| fail(exit::USAGE, e.to_string()))
}

pub fn read_host(root: &Path) -> Result<Host> {
    Host::read(root).map_err(|e| fail(exit::INPUT, format!("host {}: {e}", root.display())))
}

fn read_domain_text(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(crate::domain::MAX_XML_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        bytes = std::fs::read(path)
            .map_err(|e| fail(exit::INPUT, format!("{}: {e}", path.display())))?;
    }
    let name = if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    match Domain::parse_bytes(&bytes) {
        Ok((_, text)) => Ok(text.to_string()),
        Err(e) => Err(fail(exit::INPUT, format!("{name}: {e}"))),
    }
}

/// Plans and rewrites one domain: the shared path of `plan`, `apply` and the hook.
pub fn plan_and_rewrite(
    policy: &Policy,
    host: &Host,
    occupancy: &Occupancy,
    xml: &str,
) -> Result<(Plan, String)> {
    let domain = Domain::parse(xml).map_err(|e| fail(exit::INPUT, e.to_string()))?;
    let plan =
        plan(policy, host, occupancy, &domain).map_err(|e| fail(exit::USAGE, e.to_string()))?;
    let rewritten = rewrite::apply(xml, &plan.changes())
        .map_err(|e| fail(exit::INPUT, format!("guest '{}': {e}", domain.name)))?;
    Ok((plan, rewritten))
}

/// A unified diff between the current and the planned XML.
pub fn unified_diff(name: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{name} (current)"), &format!("{name} (kvmtune)"))
        .to_string()
}

fn run_plan(args: &PlanArgs) -> Result<ExitCode> {
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

fn run_check(args: &CheckArgs) -> Result<ExitCode> {
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
