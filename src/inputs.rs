//! What every command reads: the policy, the host and a domain XML, each turned into
//! a one-line error with the right exit code; and the plan+rewrite that `plan`,
//! `apply` and the hook share.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::plan::{Plan, plan};
use kvmtune_core::policy::{DEFAULT_POLICY_PATH, Policy};
use kvmtune_core::rewrite;

use crate::exit::{self, fail};

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

/// Loads the policy named on the command line, else the production file, else the
/// shipped default (so `plan` works on a machine where kvmtune is not installed).
pub fn load_policy(explicit: Option<&Path>) -> Result<Policy> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_POLICY_PATH).exists() => PathBuf::from(DEFAULT_POLICY_PATH),
        None => return Ok(Policy::shipped()),
    };
    kvmtune_sys::policy_file::load(&path).map_err(|e| fail(exit::USAGE, e.to_string()))
}

/// Reads the host under `root`; an unreadable host is bad input.
pub fn read_host(root: &Path) -> Result<Host> {
    kvmtune_sys::sysfs::read_host(root)
        .map_err(|e| fail(exit::INPUT, format!("host {}: {e}", root.display())))
}

/// Where the admin commands that read running guests (`status`, `rebalance`)
/// read their `/proc`: `KVMTUNE_PROC_ROOT` when set, else `--host-root`'s
/// (unlike the hook, they follow `--host-root`, so a fixture tree brings its own).
pub fn proc_root(host_root: &Path) -> PathBuf {
    std::env::var_os("KVMTUNE_PROC_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| host_root.join("proc"))
}

/// Reads domain XML from a file or `-` (stdin), checked to be a domain.
pub fn read_domain_text(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(kvmtune_core::domain::MAX_XML_BYTES as u64 + 1)
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
