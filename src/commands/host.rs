//! `kvmtune host check|apply`: the CLI over [`kvmtune_sys::hosttune`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use kvmtune_core::host_tuning::HostTuning;
use kvmtune_core::ledger::Entry;
use kvmtune_core::policy::Policy;
use kvmtune_sys::command::{Output, ProcessRunner, RunError, Runner};
use kvmtune_sys::hosttune::{Fix, Item, State, apply, check, check_with_claims, render};

use crate::exit::{self, fail};
use crate::inputs::{self as cli, Sources};

const HOST_HELP: &str = "\
Each setting is ok, differs, unsupported (this kernel lacks it) or skipped (not
asked for). apply writes sysfs/procfs and the irqbalance config, and runs modprobe
and mount (only when --host-root is /); it changes only what differs, so running it
again changes nothing.

Exit codes: check: 0 conforms, 1 something differs; apply: 0 everything conforms
now, 1 something could not be changed (or --dry-run found changes).";

#[derive(Debug, Args)]
#[command(after_help = HOST_HELP)]
pub struct HostArgs {
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Compare the host-side settings (NIC IRQs, irqbalance, KSM, transparent huge
    /// pages, huge pages, hugetlbfs, IO schedulers, vhost_net) with the policy;
    /// exit 1 if any differs.
    Check(HostCheckArgs),
    /// Change the host-side settings that differ, and print what changed.
    Apply(HostApplyArgs),
}

#[derive(Debug, Args)]
#[command(after_help = HOST_HELP)]
pub struct HostCheckArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// YAML with the proposed host tuning keys (until they join the policy)
    #[arg(long, value_name = "FILE", hide = true)]
    pub tuning: Option<PathBuf>,
    /// Print the items as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = HOST_HELP)]
pub struct HostApplyArgs {
    #[command(flatten)]
    pub sources: Sources,
    #[arg(long, value_name = "FILE", hide = true)]
    pub tuning: Option<PathBuf>,
    /// Show what would change; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// Whether `root` is this machine's `/`.
fn is_system_root(root: &Path) -> bool {
    fs::canonicalize(root).is_ok_and(|r| r == Path::new("/"))
}

/// Refuses to run programs: they would change the real system, not the tree
/// `--host-root` names.
struct NotOnThisRoot;

impl Runner for NotOnThisRoot {
    fn run(&self, program: &Path, args: &[String]) -> std::result::Result<Output, RunError> {
        Err(RunError::Io {
            program: program.display().to_string(),
            message: format!(
                "not run: {} would change this machine, not the --host-root tree",
                args.join(" ")
            ),
        })
    }
}

/// The host tuning: `--tuning FILE` when given (tests), else the policy's `host.tuning:`.
fn load_tuning(path: Option<&Path>, policy: &Policy) -> Result<HostTuning> {
    match path {
        Some(p) => kvmtune_sys::hosttune::load_tuning_file(p).map_err(|e| fail(exit::USAGE, e)),
        None => Ok(policy.host.tuning.clone()),
    }
}

/// The ledger's claims of the guests libvirt runs (a status file in its run dir),
/// for the `irq-cpus` item; `None` without a readable ledger.
fn running_claims() -> Option<BTreeMap<String, Entry>> {
    let env = kvmtune_sys::roots::Roots::from_process_env();
    let ledger = kvmtune_sys::ledger_store::read_unlocked(&env.paths.run_dir)?;
    let running = kvmtune_sys::libvirt_run::status_files(&env.paths.libvirt_run_dir);
    Some(
        ledger
            .guests
            .into_iter()
            .filter(|(name, _)| running.contains_key(name))
            .collect(),
    )
}

/// `kvmtune host check|apply`.
pub fn run_host(args: &HostArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match &args.command {
        HostCommand::Check(a) => {
            let policy = cli::load_policy(a.sources.policy.as_deref())?;
            let tuning = load_tuning(a.tuning.as_deref(), &policy)?;
            let claims = running_claims();
            let items = check_with_claims(&a.sources.host_root, &policy, &tuning, claims.as_ref())?;
            let differs = items.iter().filter(|i| i.state == State::Differs).count();
            let text = if a.json {
                serde_json::to_string_pretty(&items)? + "\n"
            } else if differs > 0 {
                // Guests on IRQ CPUs are re-placed by their restart, not by apply.
                let by_hand = items
                    .iter()
                    .filter(|i| i.state == State::Differs && i.name == "irq-cpus")
                    .count();
                let how = if by_hand == 0 {
                    "kvmtune host apply changes them".to_string()
                } else {
                    format!(
                        "kvmtune host apply changes {} of them (see irq-cpus for the other)",
                        differs - by_hand
                    )
                };
                render(&items) + &format!("{differs} setting(s) differ: {how}\n")
            } else {
                render(&items) + "host settings conform\n"
            };
            crate::output::print_stdout(&text)?;
            Ok(ExitCode::from(if differs > 0 {
                exit::FINDINGS
            } else {
                exit::OK
            }))
        }
        HostCommand::Apply(a) => {
            let policy = cli::load_policy(a.sources.policy.as_deref())?;
            let tuning = load_tuning(a.tuning.as_deref(), &policy)?;
            if a.dry_run {
                let items = check(&a.sources.host_root, &policy, &tuning)?;
                let differs: Vec<&Item> =
                    items.iter().filter(|i| i.state == State::Differs).collect();
                for i in &differs {
                    let how = match &i.fix {
                        Some(Fix::Write { paths, value }) => format!(
                            "write {value} to {}",
                            paths
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                        Some(Fix::Replace { path, .. }) => format!("rewrite {}", path.display()),
                        Some(Fix::Run { program, args, .. }) => {
                            format!("run {program} {}", args.join(" "))
                        }
                        None => "nothing automatic".to_string(),
                    };
                    writeln!(
                        out,
                        "would change {}: {} → {} ({how})",
                        i.name, i.current, i.wanted
                    )?;
                }
                if differs.is_empty() {
                    writeln!(out, "host settings conform; nothing to change")?;
                    return Ok(ExitCode::from(exit::OK));
                }
                writeln!(
                    out,
                    "dry run: {} setting(s) would change; nothing changed",
                    differs.len()
                )?;
                return Ok(ExitCode::from(exit::FINDINGS));
            }
            // modprobe and mount act on the running system, not on a --host-root tree.
            let real = ProcessRunner::new(Duration::from_secs(60));
            let runner: &dyn Runner = if is_system_root(&a.sources.host_root) {
                &real
            } else {
                &NotOnThisRoot
            };
            let (outcomes, _) = apply(&a.sources.host_root, &policy, &tuning, runner)?;
            let mut failed = 0;
            for o in &outcomes {
                match &o.problem {
                    None => writeln!(out, "changed {}: {} → {}", o.name, o.before, o.after)?,
                    Some(p) => {
                        failed += 1;
                        writeln!(out, "failed  {}: {p}", o.name)?;
                    }
                }
            }
            if outcomes.is_empty() {
                writeln!(out, "host settings conform; nothing changed")?;
            } else {
                writeln!(out, "{} changed, {failed} failed", outcomes.len() - failed)?;
            }
            Ok(ExitCode::from(if failed > 0 {
                exit::FINDINGS
            } else {
                exit::OK
            }))
        }
    }
}
