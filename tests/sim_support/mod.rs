//! Helpers shared by the simulator tests (tests/simulate.rs, tests/repack.rs):
//! the fixture hosts and workloads under tests/data, read.

#![allow(dead_code)]

use std::path::PathBuf;

use kvmtune_core::host::Host;
use kvmtune_core::simulate::Workload;

/// `tests/data/SUB`.
pub fn data(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(sub)
}

/// Every fixture host in tests/data/hosts, read, by directory name (sorted).
pub fn fixture_hosts() -> Vec<(String, Host)> {
    let mut names: Vec<String> = std::fs::read_dir(data("hosts"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let host = kvmtune_sys::sysfs::read_host(&data("hosts").join(&n))
                .unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, host)
        })
        .collect()
}

/// The workloads of docs/placement.md, in tests/data/workloads.
pub const WORKLOADS: [&str; 4] = ["many-small", "mixed", "churn", "fill"];

/// One workload of tests/data/workloads, read as `kvmtune simulate` reads it.
pub fn workload(name: &str) -> Workload {
    kvmtune::commands::simulate::load_workload(&data("workloads").join(format!("{name}.yaml")))
        .unwrap_or_else(|e| panic!("{e}"))
}
