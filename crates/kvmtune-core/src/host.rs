//! The host as kvmtune sees it: CPUs, SMT cores, L3 groups, dies, sockets, NUMA nodes
//! (memory, distances, huge pages), isolated CPUs and IRQ affinities, as plain data,
//! and the queries the planner asks of it. `kvmtune_sys::sysfs` reads it from
//! sysfs/procfs under a root directory (`/` in production, a fixture tree in tests).
//!
//! Every online CPU belongs to exactly one node, and a core is the set of SMT
//! siblings (`thread_siblings_list`), never `core_id`; [`assemble`] builds the model
//! from per-CPU facts so that these hold whatever the firmware said.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cpuset::{CpuSet, MAX_CPUS};

/// One online logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Core {
    pub cpus: CpuSet,
    pub socket: u32,
    pub node: u32,
}

/// Huge pages of one size on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HugePages {
    pub total: u64,
    pub free: u64,
}

/// A NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Irq {
    pub number: u32,
    pub affinity: CpuSet,
    /// Device/action names from /proc/interrupts (e.g. "eth0-TxRx-0", "nvme0q1");
    /// empty when the IRQ has no handler or /proc/interrupts was not readable.
    pub actions: String,
}

/// Everything read from one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Online CPUs that no node lists (their node is offline): filed under a
    /// neighbouring node so every CPU has one, but never node-local; placement
    /// uses them only when nothing else fits, and says so.
    #[serde(default)]
    pub nodeless: CpuSet,
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

/// What one CPU's `topology/` says, before CPUs are grouped.
#[derive(Debug, Clone)]
pub struct RawCpu {
    /// `thread_siblings_list`.
    pub siblings: CpuSet,
    /// `physical_package_id`.
    pub socket: u32,
    /// `die_id` (0 when absent).
    pub die: u32,
}
impl Host {
    /// A made-up host for tests and benchmarks, numbered like Linux numbers a real
    /// one: with `C` cores in all, thread `t` of core `c` is CPU `c + t*C` (siblings
    /// `N` and `N+C`); cores fill node 0 first, nodes fill socket 0 first. One L3 per
    /// node. Distances 10 (local), 12 (same socket), 32 (other socket), as on EPYC.
    /// Each node has `mem_per_node_kib` of memory, all free, and no huge pages.
    ///
    /// # Panics
    /// If the host would have [`MAX_CPUS`] CPUs or more (test-only constructor).
    pub fn synthetic(
        sockets: u32,
        nodes_per_socket: u32,
        cores_per_node: u32,
        threads_per_core: u32,
        mem_per_node_kib: u64,
    ) -> Host {
        let node_count = sockets * nodes_per_socket;
        let total_cores = node_count * cores_per_node;
        assert!(
            u64::from(total_cores) * u64::from(threads_per_core) <= u64::from(MAX_CPUS),
            "synthetic host larger than {MAX_CPUS} CPUs"
        );
        let threads_of = |core: u32| (0..threads_per_core).map(move |t| core + t * total_cores);
        let mut online = CpuSet::new();
        let mut raw = BTreeMap::new();
        let mut l3_groups = Vec::new();
        let mut nodes = BTreeMap::new();
        for node in 0..node_count {
            let socket = node / nodes_per_socket;
            let first_core = node * cores_per_node;
            let node_cpus: CpuSet = (first_core..first_core + cores_per_node)
                .flat_map(threads_of)
                .collect();
            for core in first_core..first_core + cores_per_node {
                let siblings: CpuSet = threads_of(core).collect();
                for cpu in siblings.iter() {
                    let entry = RawCpu {
                        siblings: siblings.clone(),
                        socket,
                        die: 0,
                    };
                    raw.insert(cpu, entry);
                }
            }
            let distances = (0..node_count)
                .map(|other| {
                    let distance = if other == node {
                        10
                    } else if other / nodes_per_socket == socket {
                        12
                    } else {
                        32
                    };
                    (other, distance)
                })
                .collect();
            online = online.union(&node_cpus);
            l3_groups.push(node_cpus.clone());
            nodes.insert(
                node,
                Node {
                    id: node,
                    cpus: node_cpus,
                    mem_total_kib: Some(mem_per_node_kib),
                    mem_free_kib: Some(mem_per_node_kib),
                    distances,
                    hugepages: BTreeMap::new(),
                },
            );
        }
        assemble(
            PathBuf::new(),
            online,
            &raw,
            l3_groups,
            nodes,
            CpuSet::new(),
            Vec::new(),
        )
    }

    /// The NUMA node of an online CPU.
    pub fn node_of(&self, cpu: u32) -> Option<u32> {
        self.cpus.get(&cpu).map(|c| c.node)
    }

    /// The core (SMT siblings) of an online CPU.
    pub fn core_of(&self, cpu: u32) -> Option<&Core> {
        self.cpus.get(&cpu).and_then(|c| self.cores.get(c.core))
    }

    /// The L3 group of an online CPU, when the host reports L3 caches.
    pub fn l3_of(&self, cpu: u32) -> Option<&CpuSet> {
        self.cpus
            .get(&cpu)
            .and_then(|c| c.l3)
            .and_then(|index| self.l3_groups.get(index))
    }

    /// The socket (`physical_package_id`) of an online CPU.
    pub fn socket_of(&self, cpu: u32) -> Option<u32> {
        self.cpus.get(&cpu).map(|c| c.socket)
    }

    /// The CPUs sharing a last-level cache with `cpu`: its L3 group, or its whole
    /// socket where no L3 is reported (none of the fixture snapshots kept caches).
    pub fn llc_of(&self, cpu: u32) -> Option<&CpuSet> {
        self.l3_of(cpu)
            .or_else(|| self.socket_of(cpu).and_then(|s| self.sockets.get(&s)))
    }

    /// The NUMA nodes holding the given CPUs (the memory nodeset of a placement).
    pub fn nodes_of(&self, cpus: &CpuSet) -> CpuSet {
        cpus.iter().filter_map(|cpu| self.node_of(cpu)).collect()
    }

    /// The distance between two nodes, when the host reports it.
    pub fn distance(&self, from: u32, to: u32) -> Option<u32> {
        self.nodes
            .get(&from)
            .and_then(|n| n.distances.get(&to))
            .copied()
    }

    /// Online CPUs that some IRQ is bound to. An IRQ whose affinity covers every
    /// online CPU is unbound (the kernel default) and says nothing about which CPUs
    /// the admin set aside for interrupts, so it is left out. So are per-queue IRQs
    /// spread one per CPU over the whole host (NVMe `nvme0q1..N`, a NIC's
    /// `mlx5_comp0..N`, kernel-managed affinity): together they cover every CPU,
    /// and counting them would leave guests no CPU at all. They are grouped by
    /// their name without digits.
    pub fn irq_bound_cpus(&self) -> CpuSet {
        let mut groups: BTreeMap<String, CpuSet> = BTreeMap::new();
        for irq in self
            .irqs
            .iter()
            .filter(|irq| !self.online.is_subset(&irq.affinity))
        {
            let stem: String = irq
                .actions
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            // An IRQ without a name is a group of its own.
            let key = if stem.trim().is_empty() {
                format!("irq {}", irq.number)
            } else {
                stem
            };
            let cpus = groups.entry(key).or_default();
            *cpus = cpus.union(&irq.affinity.intersection(&self.online));
        }
        groups
            .values()
            .filter(|cpus| !self.online.is_subset(cpus))
            .fold(CpuSet::new(), |acc, cpus| acc.union(cpus))
    }

    /// One line for logs and `kvmtune check`: "2 sockets, 2 nodes, 16 cores, 32 threads".
    pub fn summary(&self) -> String {
        let count = |n: usize, word: &str| {
            if n == 1 {
                format!("1 {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        format!(
            "{}, {}, {}, {}",
            count(self.sockets.len(), "socket"),
            count(self.nodes.len(), "node"),
            count(self.cores.len(), "core"),
            count(self.cpus.len(), "thread"),
        )
    }
}

/// Groups per-CPU facts into cores, L3 indexes and sockets. `nodes` must already
/// hold each online CPU in exactly one node.
pub fn assemble(
    root: PathBuf,
    online: CpuSet,
    raw: &BTreeMap<u32, RawCpu>,
    l3_groups: Vec<CpuSet>,
    nodes: BTreeMap<u32, Node>,
    isolated: CpuSet,
    irqs: Vec<Irq>,
) -> Host {
    let node_of: BTreeMap<u32, u32> = nodes
        .values()
        .flat_map(|n| n.cpus.iter().map(move |cpu| (cpu, n.id)))
        .collect();
    let l3_of: BTreeMap<u32, usize> = l3_groups
        .iter()
        .enumerate()
        .flat_map(|(index, group)| group.iter().map(move |cpu| (cpu, index)))
        .collect();

    // Cores partition the online CPUs even if sibling lists disagree with each
    // other: a CPU joins the first core that claims it.
    let mut cores: Vec<Core> = Vec::new();
    let mut core_of = BTreeMap::new();
    for (&cpu, info) in raw {
        if core_of.contains_key(&cpu) {
            continue;
        }
        let mut members = info.siblings.intersection(&online);
        members.insert(cpu);
        for member in members.iter() {
            core_of.entry(member).or_insert(cores.len());
        }
        let members: CpuSet = members
            .iter()
            .filter(|m| core_of.get(m) == Some(&cores.len()))
            .collect();
        cores.push(Core {
            cpus: members,
            socket: info.socket,
            node: node_of.get(&cpu).copied().unwrap_or(0),
        });
    }

    let mut sockets: BTreeMap<u32, CpuSet> = BTreeMap::new();
    let mut cpus = BTreeMap::new();
    for (&cpu, info) in raw {
        sockets.entry(info.socket).or_default().insert(cpu);
        cpus.insert(
            cpu,
            Cpu {
                id: cpu,
                core: core_of.get(&cpu).copied().unwrap_or(0),
                l3: l3_of.get(&cpu).copied(),
                socket: info.socket,
                die: info.die,
                node: node_of.get(&cpu).copied().unwrap_or(0),
            },
        );
    }

    Host {
        root,
        cpus,
        online,
        cores,
        l3_groups,
        sockets,
        nodes,
        isolated,
        irqs,
        nodeless: CpuSet::new(),
    }
}

/// The node for an online CPU that no node lists (its own node is offline; seen in
/// the offline-node0 snapshot). The kernel would move it to the nearest online node;
/// the best stand-in we have is its SMT siblings' node, else the node holding most
/// of its socket, else the first node with CPUs, else the first node.
pub fn orphan_home(cpu: u32, nodes: &BTreeMap<u32, Node>, raw: &BTreeMap<u32, RawCpu>) -> u32 {
    let info = raw.get(&cpu);
    if let Some(info) = info
        && let Some(node) = nodes.values().find(|n| n.cpus.intersects(&info.siblings))
    {
        return node.id;
    }
    let socket_cpus: CpuSet = match info {
        Some(info) => raw
            .iter()
            .filter(|(_, other)| other.socket == info.socket)
            .map(|(&c, _)| c)
            .collect(),
        None => CpuSet::new(),
    };
    let mut best: Option<(usize, u32)> = None;
    for node in nodes.values() {
        let shared = node.cpus.intersection(&socket_cpus).len();
        if shared > 0 && best.is_none_or(|(count, _)| shared > count) {
            best = Some((shared, node.id));
        }
    }
    if let Some((_, id)) = best {
        return id;
    }
    nodes
        .values()
        .find(|n| !n.cpus.is_empty())
        .or_else(|| nodes.values().next())
        .map_or(0, |n| n.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).expect("cpulist")
    }

    #[test]
    fn synthetic_host_matches_linux_numbering() {
        let host = Host::synthetic(2, 4, 32, 2, 64 * 1024 * 1024);
        assert_eq!(host.summary(), "2 sockets, 8 nodes, 256 cores, 512 threads");
        assert_eq!(host.core_of(0).map(|c| c.cpus.clone()), Some(set("0,256")));
        assert_eq!(host.nodes[&0].cpus, set("0-31,256-287"));
        assert_eq!(host.nodes[&7].cpus, set("224-255,480-511"));
        assert_eq!(host.sockets[&1], set("128-255,384-511"));
        assert_eq!(host.l3_of(300), Some(&set("288-319,32-63")));
        assert_eq!(host.node_of(300), Some(1));
        assert_eq!(host.distance(0, 0), Some(10));
        assert_eq!(host.distance(0, 3), Some(12));
        assert_eq!(host.distance(0, 4), Some(32));
        assert_eq!(host.nodes_of(&set("0,40,300")), set("0-1"));
        assert_eq!(host.nodes[&5].mem_total_kib, Some(64 * 1024 * 1024));
        // Every CPU's indexes point back at sets that contain it.
        for (id, cpu) in &host.cpus {
            assert!(host.cores[cpu.core].cpus.contains(*id));
            assert!(cpu.l3.is_some_and(|l3| host.l3_groups[l3].contains(*id)));
            assert!(host.nodes[&cpu.node].cpus.contains(*id));
        }
    }

    #[test]
    fn synthetic_single_thread_host() {
        let host = Host::synthetic(1, 1, 4, 1, 1024);
        assert_eq!(host.summary(), "1 socket, 1 node, 4 cores, 4 threads");
        assert_eq!(host.cores.len(), 4);
        assert_eq!(host.distance(0, 0), Some(10));
    }
}
