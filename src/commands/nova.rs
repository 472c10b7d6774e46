//! `kvmtune nova check`: reads nova.conf, hands it with the policy and the host to
//! [`kvmtune_core::nova::check`], and prints the findings (text or JSON) with the
//! nova.conf lines that fix them.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use kvmtune_core::nova::conf::{ConfError, MAX_CONF_BYTES, NovaConf};
use kvmtune_core::nova::{self, DEFAULT_NOVA_CONF, Finding, Severity};

use crate::exit::{self, fail};
use crate::inputs::{Sources, load_policy, read_host};

const NOVA_HELP: &str = "\
On an OpenStack compute node Nova writes each guest's XML from nova.conf; this
compares nova.conf with the tuning policy and this host, so that the XML Nova
writes already conforms:

  [compute] cpu_dedicated_set / cpu_shared_set  disjoint, online, no CPU0, reserved
                                                or IRQ CPUs (rule 1.3), equal to the
                                                policy's host.dedicated_cpus /
                                                host.shared_cpus (rule 1.1)
  [DEFAULT] vcpu_pin_set                        deprecated since Train: replaced
  [libvirt] cpu_mode, cpu_models                no host-passthrough (rule 5)
  [libvirt] disk_cachemodes                     the policy's disk_cache (rule 2.1)
  [DEFAULT] reserved_host_memory_mb             covers the huge page pool (rule 3.2)
  [DEFAULT] reserved_huge_pages                 pages this host has (rule 3.2)

kvmtune keeps the pins Nova gives dedicated guests (existing_pins: keep) and counts
them in its occupancy. nova.conf is read as oslo.config does: the last of a
repeated key wins (reserved_huge_pages and [pci] lists keep every line), indented
lines continue the value above, no inline comments.

Example:
  kvmtune nova check --nova-conf /etc/kolla/nova-compute/nova.conf

Each finding prints its severity, rule and nova.conf line, then the lines to put in
nova.conf; the end repeats all of them as one block to paste.

Exit codes: 0 no warning or error, 1 warnings or errors, 2 usage, bad policy, or
nova.conf unreadable or invalid (one line naming FILE:LINE), 3 unreadable host.";

#[derive(Debug, Args)]
#[command(after_help = NOVA_HELP)]
pub struct NovaArgs {
    #[command(subcommand)]
    pub command: NovaCommand,
}

#[derive(Debug, Subcommand)]
pub enum NovaCommand {
    /// Compare nova.conf with the policy and this host; exit 1 on any warning or error.
    Check(NovaCheckArgs),
}

#[derive(Debug, Args)]
#[command(after_help = NOVA_HELP)]
pub struct NovaCheckArgs {
    /// Nova's configuration file
    #[arg(long, value_name = "FILE", default_value = DEFAULT_NOVA_CONF)]
    pub nova_conf: PathBuf,
    #[command(flatten)]
    pub sources: Sources,
    /// Print the findings as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `kvmtune nova …`.
pub fn run(args: &NovaArgs) -> Result<ExitCode> {
    match &args.command {
        NovaCommand::Check(check) => run_check(check),
    }
}

fn read_conf(path: &Path) -> Result<NovaConf> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| fail(exit::USAGE, format!("{name}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONF_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(exit::USAGE, format!("{name}: {e}")))?;
    NovaConf::parse_bytes(&bytes).map_err(|e| {
        let message = match e {
            ConfError::TooLarge => format!("{name}: {e}"),
            _ => format!("{name}:{e}"),
        };
        fail(exit::USAGE, message)
    })
}

fn run_check(args: &NovaCheckArgs) -> Result<ExitCode> {
    let policy = load_policy(args.sources.policy.as_deref())?;
    let host = read_host(&args.sources.host_root)?;
    let nodes = host.nodes.keys().copied().collect();
    let problems = policy.check_against(&host.online, &nodes);
    if let Some(first) = problems.first() {
        return Err(fail(exit::USAGE, first.to_string()));
    }
    let conf = read_conf(&args.nova_conf)?;
    let findings = nova::check(&conf, &policy, &host);
    if args.json {
        let out = serde_json::json!({
            "nova_conf": args.nova_conf.display().to_string(),
            "findings": findings,
            "fix_lines": nova::merged_fix(&findings),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&args.nova_conf, &findings, &host.summary()));
    }
    Ok(ExitCode::from(if nova::has_problems(&findings) {
        exit::FINDINGS
    } else {
        exit::OK
    }))
}

/// The text report: one block per finding, a count, and the merged fix lines.
pub fn render(path: &Path, findings: &[Finding], host: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: checked against the policy on this host ({host})",
        path.display()
    );
    for f in findings {
        let at = f
            .line
            .map_or(String::new(), |l| format!(" {}:{l}", path.display()));
        let _ = writeln!(
            out,
            "{:<5} [rule {}]{at}: {}",
            f.severity.as_str(),
            f.rule,
            f.message
        );
        for line in &f.fix_lines {
            let _ = writeln!(out, "        {line}");
        }
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "{} error(s), {} warning(s), {} info, {} ok",
        count(Severity::Error),
        count(Severity::Warn),
        count(Severity::Info),
        count(Severity::Ok)
    );
    let merged = nova::merged_fix(findings);
    if !merged.is_empty() {
        let _ = writeln!(
            out,
            "\nnova.conf lines that make Nova define conforming guests:"
        );
        for line in merged {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}
