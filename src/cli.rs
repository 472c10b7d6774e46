//! The admin's command line: argument definitions (clap derive, also the source of
//! the man page and shell completions) and the dispatch to one module per command
//! under [`crate::commands`]. The hook's own entry is [`crate::hook`].

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::commands;

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
  kvmtune rebalance                         which moves would compact the running guests

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
    Plan(commands::plan::PlanArgs),
    /// Validate a policy file against a host.
    Check(commands::check::CheckArgs),
    /// Run as the libvirt qemu hook: GUEST OP SUBOP EXTRA, domain XML on stdin.
    Hook(crate::hook::HookArgs),
    /// Conform persistent guest definitions to the policy (virsh dumpxml --inactive →
    /// plan → virsh define), backing up each previous definition.
    Apply(commands::apply::ApplyArgs),
    /// Conform the definitions of the guests the hook queued after a start with
    /// violations (converge: after-start), as `apply GUEST --yes` does.
    Converge(commands::converge::ConvergeArgs),
    /// Restore a guest's definition from a backup made by `apply`.
    Revert(commands::apply::RevertArgs),
    /// Show the host (NUMA nodes, caches, cores, threads) with the running guests on
    /// it, their conformance rule by rule, and whether the ledger agrees with libvirt.
    Status(commands::status::StatusArgs),
    /// Check or apply the host-side tuning: NIC IRQs, irqbalance, KSM, transparent
    /// huge pages, huge pages, hugetlbfs, IO schedulers, vhost_net.
    Host(commands::host::HostArgs),
    /// Compact the running guests after churn: restore SMT pairing, free whole
    /// cores, pull spread guests into their memory's node (--dry-run, or --apply).
    Rebalance(commands::rebalance::RebalanceArgs),
    /// Replay a workload of guest arrivals and departures on a host and report the
    /// placement quality (kvmtune or a baseline strategy).
    Simulate(commands::simulate::SimulateArgs),
    /// Compare an OpenStack compute node's nova.conf with the policy and this host,
    /// and print the nova.conf lines that make Nova define conforming guests.
    Nova(commands::nova::NovaArgs),
    /// Move a running guest's memory onto its NUMA nodes once (what the hook starts
    /// in the background at `started` for `preferred` memory).
    #[command(hide = true)]
    MoveMemory(commands::move_memory::MoveMemoryArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Plan(args) => commands::plan::run(&args),
        Command::Check(args) => commands::check::run(&args),
        Command::Hook(args) => Ok(crate::hook::run_from_cli(&args)),
        Command::Apply(args) => commands::apply::run_apply(&args),
        Command::Converge(args) => commands::converge::run(&args),
        Command::Revert(args) => commands::apply::run_revert(&args),
        Command::Status(args) => commands::status::run_status(&args),
        Command::Host(args) => commands::host::run_host(&args),
        Command::Rebalance(args) => commands::rebalance::run(&args),
        Command::Simulate(args) => commands::simulate::run(&args),
        Command::Nova(args) => commands::nova::run(&args),
        Command::MoveMemory(args) => commands::move_memory::run(&args),
    }
}
