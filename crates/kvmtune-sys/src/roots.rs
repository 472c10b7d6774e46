//! Every path kvmtune reads or writes, from one value: sysfs/procfs root, /proc,
//! kvmtune's run dir (ledger), libvirt's run dir (status files), the policy and the
//! syslog socket. Production uses the defaults; tests point them at fixture trees.

use std::path::PathBuf;

use kvmtune_core::policy::DEFAULT_POLICY_PATH;

use crate::ledger_store::{self, Paths};

/// Where kvmtune reads and writes. libvirt runs hooks with an almost empty
/// environment, so production always gets the defaults; tests and the e2e suite
/// point these at fixture trees through `KVMTUNE_*` variables.
#[derive(Debug, Clone)]
pub struct Roots {
    pub policy: PathBuf,
    pub host_root: PathBuf,
    pub proc_root: PathBuf,
    pub paths: Paths,
    pub syslog_socket: PathBuf,
    /// Accept a policy file writable by others (tests only).
    pub allow_insecure_policy: bool,
    /// Apply thread affinity at `started` (off in unit tests on fake pids).
    pub apply_runtime: bool,
}

impl Roots {
    /// The production paths, each overridable by its `KVMTUNE_*` variable.
    pub fn from_process_env() -> Roots {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Roots {
            policy: var("KVMTUNE_POLICY", DEFAULT_POLICY_PATH),
            host_root: var("KVMTUNE_HOST_ROOT", "/"),
            proc_root: var("KVMTUNE_PROC_ROOT", "/proc"),
            paths: Paths {
                run_dir: var("KVMTUNE_RUN_DIR", ledger_store::DEFAULT_RUN_DIR),
                libvirt_run_dir: var(
                    "KVMTUNE_LIBVIRT_RUN_DIR",
                    ledger_store::DEFAULT_LIBVIRT_RUN_DIR,
                ),
            },
            syslog_socket: var("KVMTUNE_SYSLOG_SOCKET", crate::logging::DEFAULT_SOCKET),
            allow_insecure_policy: std::env::var_os("KVMTUNE_ALLOW_INSECURE_POLICY")
                .is_some_and(|v| v == "1"),
            apply_runtime: true,
        }
    }
}
