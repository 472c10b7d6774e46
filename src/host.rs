//! The host as kvmtune sees it: CPUs, SMT cores, L3 groups, dies, sockets, NUMA nodes
//! (memory, distances, huge pages), isolated CPUs and IRQ affinities, read from
//! sysfs/procfs under a root directory (`/` in production, a fixture tree in tests).
//!
//! Reading is the only I/O here; everything the planner needs afterwards is plain data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cpuset::CpuSet;

/// One online logical CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub id: u32,
    /// Index into [`Host::cores`].
    pub core: usize,
    /// Index into [`Host::l3_groups`], when the host reports an L3 cache.
    pub l3: Option<usize>,
    /// `physical_package_id`.
    pub socket: u32,
    /// `die_id` (0 when not reported).
    pub die: u32,
    /// NUMA node number (not index).
    pub node: u32,
}

/// A physical core: the SMT sibling threads that share L1/L2 (`thread_siblings_list`,
/// which is right even where core_id is not unique, see fixtures README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    pub cpus: CpuSet,
    pub socket: u32,
    pub node: u32,
}

/// Huge pages of one size on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HugePages {
    pub total: u64,
    pub free: u64,
}

/// A NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: u32,
    /// Online CPUs of the node (may be empty: memory-only nodes).
    pub cpus: CpuSet,
    pub mem_total_kib: Option<u64>,
    pub mem_free_kib: Option<u64>,
    /// Distance to each other node, by node number (empty if not reported).
    pub distances: BTreeMap<u32, u32>,
    /// By page size in KiB (2048, 1048576).
    pub hugepages: BTreeMap<u64, HugePages>,
}

/// One IRQ line and the CPUs it may be delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irq {
    pub number: u32,
    pub affinity: CpuSet,
    /// Device/action names from /proc/interrupts (e.g. "eth0-TxRx-0", "nvme0q1").
    pub actions: String,
}

/// Everything read from one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub root: PathBuf,
    /// Online CPUs by number.
    pub cpus: BTreeMap<u32, Cpu>,
    pub online: CpuSet,
    pub cores: Vec<Core>,
    /// L3 cache groups (`cache/index3/shared_cpu_list`), online CPUs only.
    pub l3_groups: Vec<CpuSet>,
    /// Sockets by `physical_package_id`, online CPUs.
    pub sockets: BTreeMap<u32, CpuSet>,
    /// NUMA nodes by number; a host without node info gets one node 0 with all CPUs.
    pub nodes: BTreeMap<u32, Node>,
    /// `isolated` CPUs (isolcpus=).
    pub isolated: CpuSet,
    pub irqs: Vec<Irq>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Host {
    /// Reads the host under `root` (e.g. `/`).
    pub fn read(root: &Path) -> Result<Host, HostError> {
        let _ = root;
        unimplemented!("host reader")
    }
}
