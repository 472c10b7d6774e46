//! Where a guest's vCPUs go: the host CPUs guests may use, the occupancy left by
//! running guests, and the choice of the smallest topology level that fits
//! (core → L3 group → NUMA node → socket → fewest nearest nodes), per TUNING-RULES
//! 1.1–1.3. Pure: host, occupancy and request in, placement out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::host::Host;

/// How CPUs are shared between guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// Overcommitted: CPUs shared with other shared guests up to the allocation
    /// ratio, least-loaded first, still NUMA- and cache-local.
    #[default]
    Shared,
    /// Exclusive: a CPU belongs to one vCPU of one guest.
    Dedicated,
}

/// How a dedicated guest treats the SMT sibling threads of its CPUs (Nova's
/// `hw:cpu_thread_policy`). Shared guests ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ThreadPolicy {
    /// Sibling threads are used when that fits best (vCPU pairs on one core).
    #[default]
    Prefer,
    /// Each vCPU gets a core of its own: the sibling threads stay empty (held by
    /// the guest, so no other guest lands there).
    Isolate,
    /// Only whole cores: every core the guest uses is entirely its own, vCPUs on
    /// sibling threads; refused on a host without SMT.
    Require,
}

/// What one running (or starting) guest holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The host CPUs each vCPU may run on, by vCPU number.
    pub vcpus: Vec<CpuSet>,
    /// NUMA nodes its memory is bound to.
    pub nodes: CpuSet,
    pub memory_kib: u64,
    pub pool: Pool,
}

impl Claim {
    /// All host CPUs the guest's vCPUs may use.
    pub fn cpus(&self) -> CpuSet {
        self.vcpus.iter().fold(CpuSet::new(), |acc, s| acc.union(s))
    }
}

/// The host's occupancy: what every other guest holds, by guest name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Occupancy {
    pub guests: BTreeMap<String, Claim>,
}

impl Occupancy {
    /// vCPU load per host CPU: a vCPU allowed on k CPUs adds 1/k to each.
    pub fn cpu_load(&self) -> BTreeMap<u32, f64> {
        let mut load = BTreeMap::new();
        for claim in self.guests.values() {
            for set in &claim.vcpus {
                let share = 1.0 / set.len().max(1) as f64;
                for cpu in set.iter() {
                    *load.entry(cpu).or_insert(0.0) += share;
                }
            }
        }
        load
    }

    /// CPUs held exclusively by dedicated guests.
    pub fn dedicated_cpus(&self) -> CpuSet {
        self.guests
            .values()
            .filter(|c| c.pool == Pool::Dedicated)
            .fold(CpuSet::new(), |acc, c| acc.union(&c.cpus()))
    }

    /// Every CPU any guest's vCPUs may use.
    pub fn all_cpus(&self) -> CpuSet {
        self.guests
            .values()
            .fold(CpuSet::new(), |acc, c| acc.union(&c.cpus()))
    }

    /// The occupancy without one guest (a guest being re-planned does not compete
    /// with itself).
    pub fn without(&self, guest: &str) -> Occupancy {
        let mut other = self.clone();
        other.guests.remove(guest);
        other
    }
}

/// The topology level a placement landed in, smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Core,
    L3,
    Node,
    Socket,
    /// Several NUMA nodes (the fewest, nearest).
    Nodes,
    /// More vCPUs than eligible CPUs: overcommitted across all of them.
    Host,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Core => "one core",
            Level::L3 => "one L3 cache group",
            Level::Node => "one NUMA node",
            Level::Socket => "one socket",
            Level::Nodes => "several NUMA nodes",
            Level::Host => "the whole host (overcommitted)",
        })
    }
}

/// What to place.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub vcpus: u32,
    pub memory_kib: u64,
    pub pool: Pool,
    /// Host CPUs guests may use at all (reserved, IRQ, CPU0 already removed).
    pub eligible: CpuSet,
    /// Shared CPUs take at most this many vCPUs each (Nova's cpu_allocation_ratio).
    pub cpu_allocation_ratio: f64,
    /// Dedicated pool: what happens to the sibling threads of the guest's CPUs.
    pub thread_policy: ThreadPolicy,
    /// Memory bound strictly to the chosen nodes (`memory_mode: strict` or
    /// `restrictive`): never placed on nodes without the guest's memory free.
    pub memory_strict: bool,
    /// The guest's memory is backed by huge pages of this size (KiB): a node must
    /// have that many free pages of that size.
    pub hugepage_kib: Option<u64>,
    /// Memory per node kept for the host (`host.reserved_memory_per_node`): a node
    /// holds guests up to MemTotal minus this, minus the running guests' memory.
    pub memory_reserve_kib: u64,
    /// The guest spans at most this many NUMA nodes (`max_nodes`, Nova's
    /// `hw:numa_nodes`); None = as many as it needs.
    pub max_nodes: Option<u32>,
}

/// Where a guest goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub level: Level,
    /// Host CPUs of each vCPU, by vCPU number.
    pub vcpus: Vec<CpuSet>,
    pub cpus: CpuSet,
    pub nodes: CpuSet,
    /// One sentence on why here.
    pub why: String,
}

/// Why nothing fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoRoom(pub String);

/// CPUs a guest may use under the host settings, and the reasons others are not.
pub fn eligible_cpus(
    host: &Host,
    reserved: &CpuSet,
    irq_cpus: &CpuSet,
    allow_cpu0: bool,
    nodes: Option<&CpuSet>,
) -> CpuSet {
    let mut eligible = host.online.difference(reserved).difference(irq_cpus);
    if !allow_cpu0 {
        eligible.remove(0);
    }
    if let Some(nodes) = nodes {
        let allowed = host
            .nodes
            .values()
            .filter(|n| nodes.contains(n.id))
            .fold(CpuSet::new(), |acc, n| acc.union(&n.cpus));
        eligible = eligible.intersection(&allowed);
    }
    eligible
}

/// How much guest memory one NUMA node can still hold, as a scheduler accounts
/// it (Nova per NUMA cell): MemTotal minus the host's reserve, minus the free
/// huge pages (memory only huge-page-backed guests can use), minus the memory the
/// running guests committed there. MemFree plays no part: page cache fills it on
/// every Linux host after a while, and the kernel gives that memory back on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeMemory {
    pub total_kib: u64,
    pub reserve_kib: u64,
    /// Free huge pages of every size (KiB): not available to other guests.
    pub hugepages_free_kib: u64,
    /// The running guests' memory on this node (a claim's memory split evenly
    /// over its nodes).
    pub committed_kib: u64,
}

impl NodeMemory {
    /// What a new guest may still get here.
    pub fn room_kib(&self) -> u64 {
        self.total_kib
            .saturating_sub(self.reserve_kib)
            .saturating_sub(self.hugepages_free_kib)
            .saturating_sub(self.committed_kib)
    }
}

impl std::fmt::Display for NodeMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} MiB room (MemTotal {} − reserve {}",
            self.room_kib() / 1024,
            self.total_kib / 1024,
            self.reserve_kib / 1024
        )?;
        if self.hugepages_free_kib > 0 {
            write!(f, " − free huge pages {}", self.hugepages_free_kib / 1024)?;
        }
        write!(f, " − guests {} MiB)", self.committed_kib / 1024)
    }
}

/// The memory each running guest committed per node: a claim's memory split
/// evenly over its nodes (the first nodes take the remainder); a claim bound to
/// no node commits nowhere in particular and is left out.
pub fn committed_memory(occupancy: &Occupancy) -> BTreeMap<u32, u64> {
    let mut committed = BTreeMap::new();
    for claim in occupancy.guests.values() {
        let count = claim.nodes.len() as u64;
        if count == 0 {
            continue;
        }
        let share = claim.memory_kib / count;
        let extra = claim.memory_kib % count;
        for (i, node) in claim.nodes.iter().enumerate() {
            *committed.entry(node).or_insert(0u64) += share + u64::from((i as u64) < extra);
        }
    }
    committed
}

/// [`NodeMemory`] of every node; `None` for a node whose MemTotal is unknown
/// (sysfs without meminfo), which then never blocks a placement.
pub fn node_memory(
    host: &Host,
    occupancy: &Occupancy,
    reserve_kib: u64,
) -> BTreeMap<u32, Option<NodeMemory>> {
    let committed = committed_memory(occupancy);
    host.nodes
        .values()
        .map(|node| {
            let memory = node.mem_total_kib.map(|total_kib| NodeMemory {
                total_kib,
                reserve_kib,
                hugepages_free_kib: node
                    .hugepages
                    .iter()
                    .map(|(size, pages)| pages.free.saturating_mul(*size))
                    .sum(),
                committed_kib: committed.get(&node.id).copied().unwrap_or(0),
            });
            (node.id, memory)
        })
        .collect()
}

/// The per-node memory a placement is checked against, and the free huge pages.
struct MemoryView<'a> {
    host: &'a Host,
    nodes: BTreeMap<u32, Option<NodeMemory>>,
}

impl MemoryView<'_> {
    /// Whether `nodes` can hold `memory_kib`, an even share on each (of huge
    /// pages of `hugepage_kib` when given: their free pages together).
    fn fits(&self, nodes: &CpuSet, memory_kib: u64, hugepage_kib: Option<u64>) -> bool {
        if let Some(size) = hugepage_kib {
            // Huge-page-backed memory comes only from free pages of that size.
            let pools: Vec<u64> = nodes
                .iter()
                .filter_map(|id| self.host.nodes.get(&id)?.hugepages.get(&size))
                .map(|h| h.free.saturating_mul(size))
                .collect();
            if !pools.is_empty() {
                return pools.iter().sum::<u64>() >= memory_kib;
            }
            // No huge page information for these nodes: does not block placement.
            return true;
        }
        // The guest's memory is committed evenly over its nodes (as
        // committed_memory counts it): each node must hold its share.
        let count = nodes.len().max(1) as u64;
        let share = memory_kib.div_ceil(count);
        nodes.iter().all(|id| {
            // Unknown MemTotal (sysfs without meminfo) does not block placement.
            self.nodes
                .get(&id)
                .copied()
                .flatten()
                .is_none_or(|memory| memory.room_kib() >= share)
        })
    }

    /// The numbers behind a memory refusal or note: each node's room, or its free
    /// huge pages of the guest's size.
    fn describe(&self, nodes: &CpuSet, hugepage_kib: Option<u64>) -> String {
        let parts: Vec<String> = nodes
            .iter()
            .map(|id| match hugepage_kib {
                Some(size) => {
                    let free = self
                        .host
                        .nodes
                        .get(&id)
                        .and_then(|n| n.hugepages.get(&size))
                        .map_or(0, |h| h.free);
                    format!("node {id}: {free} free {} KiB huge pages", size)
                }
                None => match self.nodes.get(&id).copied().flatten() {
                    Some(memory) => format!("node {id}: {memory}"),
                    None => format!("node {id}: MemTotal unknown"),
                },
            })
            .collect();
        parts.join("; ")
    }
}

/// Places `request` on `host` given `occupancy`.
pub fn place(host: &Host, occupancy: &Occupancy, request: &Request) -> Result<Placement, NoRoom> {
    let wanted = request.vcpus.max(1) as usize;
    let (load, dedicated) = load_and_dedicated(host, occupancy);
    let load_of = |cpu: u32| load.get(cpu as usize).copied().unwrap_or(0.0);
    let available = available_cpus(request, &load_of, &dedicated)?;
    let (available, free_cores) =
        thread_policy_cpus(host, request, available, &load_of, &dedicated)?;
    let memory = MemoryView {
        host,
        nodes: node_memory(host, occupancy, request.memory_reserve_kib),
    };

    // Memory first: the chosen node(s) must be able to hold the guest's memory
    // (MemTotal − reserve − committed, see NodeMemory). When no node (set) can,
    // the CPUs still go where they fit best and the memory comes from wherever
    // the kernel finds it, unless the memory binding is strict.
    for check_memory in [true, false] {
        if !check_memory && request.memory_strict {
            if let Some(p) = search(host, request, &available, &load_of, None) {
                return Err(NoRoom(format!(
                    "no node (set) with room for the {wanted} vCPUs can hold the guest's {} MiB ({}), and strict memory binding never overcommits a node",
                    request.memory_kib / 1024,
                    memory.describe(&p.nodes, request.hugepage_kib)
                )));
            }
            break;
        }
        let view = check_memory.then_some(&memory);
        if let Some(mut placement) = search(host, request, &available, &load_of, view) {
            if let Some((policy, free)) = &free_cores {
                hold_whole_cores(host, &mut placement, *policy, free);
            }
            if !check_memory {
                placement.why.push_str(&format!(
                    "; node(s) {} cannot hold the guest's {} MiB ({}), so memory also comes from other nodes (memory_mode preferred)",
                    placement.nodes,
                    request.memory_kib / 1024,
                    memory.describe(&placement.nodes, request.hugepage_kib)
                ));
            }
            return Ok(placement);
        }
    }
    fit_nowhere(host, request, &available, &load_of, &memory, &dedicated)
}

/// One pass over the running guests, without allocating a set per vCPU: the
/// vCPU load per CPU (as `Occupancy::cpu_load`, indexed by CPU number) and the
/// CPUs dedicated guests hold.
fn load_and_dedicated(host: &Host, occupancy: &Occupancy) -> (Vec<f64>, CpuSet) {
    let mut load = vec![0.0f64; host.online.iter().last().map_or(0, |c| c as usize + 1)];
    let mut dedicated = CpuSet::new();
    for claim in occupancy.guests.values() {
        for set in &claim.vcpus {
            let share = 1.0 / set.len().max(1) as f64;
            for cpu in set.iter() {
                if let Some(l) = load.get_mut(cpu as usize) {
                    *l += share;
                }
                if claim.pool == Pool::Dedicated {
                    dedicated.insert(cpu);
                }
            }
        }
    }
    (load, dedicated)
}

/// The CPUs the request's pool may still use: shared CPUs under the allocation
/// ratio, or dedicated CPUs nobody uses; `NoRoom` when there is none.
fn available_cpus(
    request: &Request,
    load_of: &dyn Fn(u32) -> f64,
    dedicated: &CpuSet,
) -> Result<CpuSet, NoRoom> {
    let available: CpuSet = match request.pool {
        Pool::Shared => request
            .eligible
            .difference(dedicated)
            .iter()
            .filter(|c| load_of(*c) + 1.0 <= request.cpu_allocation_ratio.max(1.0))
            .collect(),
        Pool::Dedicated => request
            .eligible
            .difference(dedicated)
            .iter()
            .filter(|c| load_of(*c) == 0.0)
            .collect(),
    };
    if available.is_empty() {
        return Err(NoRoom(no_cpu_left(request, load_of, dedicated)));
    }
    Ok(available)
}

/// Why the request's pool has no CPU at all, with the real cause and the numbers:
/// no eligible CPU, every eligible CPU held by dedicated guests, the rest at the
/// allocation ratio (shared) or running other guests' vCPUs (dedicated).
fn no_cpu_left(request: &Request, load_of: &dyn Fn(u32) -> f64, dedicated: &CpuSet) -> String {
    let pool = match request.pool {
        Pool::Shared => "shared",
        Pool::Dedicated => "dedicated",
    };
    let eligible = &request.eligible;
    if eligible.is_empty() {
        return format!(
            "no CPU is eligible for the {pool} pool (every CPU is reserved, an IRQ CPU, CPU0, or outside host.{pool}_cpus)"
        );
    }
    let held = eligible.intersection(dedicated);
    let rest = eligible.difference(dedicated);
    let held_text = if held.is_empty() {
        String::new()
    } else {
        format!("{} held by dedicated guests ({held})", held.len())
    };
    if rest.is_empty() {
        return format!(
            "every eligible {pool} CPU ({eligible}) is held by dedicated guests; none is at the allocation ratio"
        );
    }
    let joined = |other: String| {
        if held_text.is_empty() {
            other
        } else {
            format!("{held_text}, {other}")
        }
    };
    match request.pool {
        Pool::Shared => {
            let ratio = request.cpu_allocation_ratio.max(1.0);
            let peak = rest.iter().map(load_of).fold(0.0, f64::max);
            format!(
                "no shared CPU has room: of the {} eligible CPUs ({eligible}), {}",
                eligible.len(),
                joined(format!(
                    "{} ({rest}) at cpu_allocation_ratio {ratio} (up to {peak:.1} vCPUs each)",
                    rest.len()
                ))
            )
        }
        Pool::Dedicated => format!(
            "no free dedicated CPU: of the {} eligible CPUs ({eligible}), {}",
            eligible.len(),
            joined(format!("{} ({rest}) run shared guests' vCPUs", rest.len()))
        ),
    }
}

/// Under `isolate`/`require`: the policy and the CPUs of the free cores, which
/// the guest then holds whole.
type WholeCores = (ThreadPolicy, CpuSet);

/// The CPUs to search and, under `isolate`/`require`, the free cores the guest
/// then holds whole. Thread policy (dedicated only): only cores no other guest
/// touches; isolate searches one thread per core (a vCPU per core), require
/// whole cores.
fn thread_policy_cpus(
    host: &Host,
    request: &Request,
    available: CpuSet,
    load_of: &dyn Fn(u32) -> f64,
    dedicated: &CpuSet,
) -> Result<(CpuSet, Option<WholeCores>), NoRoom> {
    let thread_policy = match request.pool {
        Pool::Dedicated => request.thread_policy,
        Pool::Shared => ThreadPolicy::Prefer,
    };
    Ok(match thread_policy {
        ThreadPolicy::Prefer => (available, None),
        policy => {
            let name = thread_policy_name(policy);
            if policy == ThreadPolicy::Require
                && !host
                    .cores
                    .iter()
                    .any(|c| c.cpus.intersection(&request.eligible).len() >= 2)
            {
                return Err(NoRoom(format!(
                    "thread_policy: {name} needs SMT, and no core of this host has two threads guests may use"
                )));
            }
            // Isolate: cores no other guest uses (a thread guests may not use,
            // such as CPU0's sibling, just stays empty). Require: cores whose
            // every online thread is free for this guest.
            let free: CpuSet = available
                .iter()
                .filter(|cpu| {
                    host.core_of(*cpu).is_none_or(|core| {
                        core.cpus.iter().all(|t| {
                            let unused = load_of(t) == 0.0 && !dedicated.contains(t);
                            match policy {
                                ThreadPolicy::Require => {
                                    available.contains(t) || !host.online.contains(t)
                                }
                                _ => unused,
                            }
                        })
                    })
                })
                .collect();
            let searched: CpuSet = match policy {
                ThreadPolicy::Isolate => free
                    .iter()
                    .filter(|cpu| {
                        host.core_of(*cpu)
                            .and_then(|core| core.cpus.intersection(&free).first())
                            .is_none_or(|first| first == *cpu)
                    })
                    .collect(),
                _ => free.clone(),
            };
            if searched.is_empty() {
                return Err(NoRoom(format!(
                    "no free whole core left for thread_policy: {name} (free dedicated CPUs {available} all have a busy sibling)"
                )));
            }
            (searched, Some((policy, free)))
        }
    })
}

/// When no level fits the CPUs. A guest's own vCPUs never share a CPU unless the
/// guest is larger than its pool (the eligible CPUs no dedicated guest holds, for
/// a shared guest): only then is a shared guest overcommitted across the usable
/// CPUs (within `max_nodes` nodes) while the ratio leaves room, and the placement
/// says so. Otherwise there is no room, and the reason names the cause.
fn fit_nowhere(
    host: &Host,
    request: &Request,
    available: &CpuSet,
    load_of: &dyn Fn(u32) -> f64,
    memory: &MemoryView<'_>,
    dedicated: &CpuSet,
) -> Result<Placement, NoRoom> {
    let wanted = request.vcpus.max(1) as usize;
    let capped = |what: &str| {
        request.max_nodes.map_or(String::new(), |m| {
            format!("; max_nodes {m} caps the guest at {m} node(s) and no {m} node(s) {what}")
        })
    };
    match request.pool {
        Pool::Shared => {
            let ratio = request.cpu_allocation_ratio.max(1.0);
            let pool = request.eligible.difference(dedicated);
            if wanted <= pool.len() {
                let cause = if available.len() >= wanted {
                    capped(&format!(
                        "have {wanted} CPUs under cpu_allocation_ratio {ratio}{}",
                        if request.memory_strict {
                            " and the memory"
                        } else {
                            ""
                        }
                    ))
                } else {
                    format!(
                        ", of which only {} ({available}) have room under cpu_allocation_ratio {ratio}; a guest's own vCPUs never share a CPU unless it is larger than its pool",
                        available.len()
                    )
                };
                return Err(NoRoom(format!(
                    "{wanted} shared vCPUs need {wanted} distinct CPUs of the {} shared CPUs ({pool}){cause}",
                    pool.len()
                )));
            }
            // Larger than its pool: overcommitted, within max_nodes nodes.
            let usable = match request.max_nodes {
                Some(m) => best_nodes_by_cpus(host, available, m as usize),
                None => available.clone(),
            };
            let room: f64 = usable
                .iter()
                .map(|c| (ratio - load_of(c)).floor().max(0.0))
                .sum();
            if wanted as f64 > room {
                return Err(NoRoom(format!(
                    "{wanted} shared vCPUs do not fit: the {} usable CPUs ({usable}) have room for {room} more vCPUs under cpu_allocation_ratio {ratio}{}",
                    usable.len(),
                    request
                        .max_nodes
                        .map_or(String::new(), |m| format!(" within max_nodes {m}"))
                )));
            }
            let vcpus = assign_overcommitted(host, &usable, wanted, load_of, ratio);
            // CPUs at the ratio got no vCPU: the placement is what was used.
            let cpus = vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
            let nodes = nodes_of(host, &cpus);
            if request.memory_strict
                && !memory.fits(&nodes, request.memory_kib, request.hugepage_kib)
            {
                return Err(NoRoom(format!(
                    "nodes {nodes} cannot hold the guest's {} MiB ({}), and strict memory binding never overcommits a node",
                    request.memory_kib / 1024,
                    memory.describe(&nodes, request.hugepage_kib)
                )));
            }
            Ok(Placement {
                level: Level::Host,
                why: format!(
                    "{wanted} vCPUs exceed the shared pool's {} CPUs ({pool}): overcommitted across {} usable CPUs ({usable}), so the guest's own vCPUs share CPUs",
                    pool.len(),
                    usable.len()
                ),
                vcpus,
                cpus,
                nodes,
            })
        }
        Pool::Dedicated => Err(NoRoom(format!(
            "{wanted} dedicated vCPUs do not fit: {} free dedicated CPUs ({available}) on the host{}",
            available.len(),
            if available.len() >= wanted {
                capped(&format!("have {wanted} free dedicated CPUs"))
            } else {
                String::new()
            }
        ))),
    }
}

/// The CPUs of the `count` nodes with the most `available` CPUs (ties: nearest,
/// then lowest numbers).
fn best_nodes_by_cpus(host: &Host, available: &CpuSet, count: usize) -> CpuSet {
    let usable = |id: u32| {
        host.nodes
            .get(&id)
            .map_or(0, |n| n.cpus.intersection(available).len())
    };
    let ids: Vec<u32> = host
        .nodes
        .keys()
        .copied()
        .filter(|id| usable(*id) > 0)
        .collect();
    let mut best: Option<(usize, u32, CpuSet)> = None;
    for_each_subset(&ids, count.min(ids.len()), &mut |nodes: &CpuSet| {
        let cpus: usize = nodes.iter().map(usable).sum();
        let key = (cpus, spread(host, nodes));
        if best
            .as_ref()
            .is_none_or(|b| key.0 > b.0 || (key.0 == b.0 && key.1 < b.1))
        {
            best = Some((key.0, key.1, nodes.clone()));
        }
    });
    best.map_or_else(CpuSet::new, |(_, _, nodes)| {
        node_cpus(host, &nodes).intersection(available)
    })
}

/// Calls `f` with every `k`-node subset of `ids`, in lexicographic order.
fn for_each_subset(ids: &[u32], k: usize, f: &mut dyn FnMut(&CpuSet)) {
    fn go(ids: &[u32], k: usize, chosen: &mut CpuSet, f: &mut dyn FnMut(&CpuSet)) {
        if k == 0 {
            f(chosen);
            return;
        }
        for i in 0..ids.len() {
            if ids.len() - i < k {
                break;
            }
            chosen.insert(ids[i]);
            go(&ids[i + 1..], k - 1, chosen, f);
            chosen.remove(ids[i]);
        }
    }
    go(ids, k, &mut CpuSet::new(), f);
}

/// The smallest level that fits (core → L3 group → node → socket → fewest nearest
/// nodes), with the memory requirement when `memory` is given; None when the CPUs
/// fit nowhere.
fn search(
    host: &Host,
    request: &Request,
    available: &CpuSet,
    load_of: &dyn Fn(u32) -> f64,
    memory: Option<&MemoryView<'_>>,
) -> Option<Placement> {
    let wanted = request.vcpus.max(1) as usize;
    let node_fits = |nodes: &CpuSet| {
        memory.is_none_or(|m| m.fits(nodes, request.memory_kib, request.hugepage_kib))
    };
    let unit_load =
        |unit: &CpuSet| unit.iter().map(load_of).sum::<f64>() / unit.len().max(1) as f64;

    // Single-node levels, smallest first. Each unit is cut to one node: rule 1.2
    // (one NUMA node) outranks sharing an L3 that spans nodes (SNC).
    for level in [Level::Core, Level::L3, Level::Node] {
        let mut best: Option<(CpuSet, u32)> = None;
        let mut best_key = None;
        for (unit, node) in units(host, level) {
            let unit = unit.intersection(available);
            if unit.len() < wanted || !node_fits(&CpuSet::single(node)) {
                continue;
            }
            // Shared: least loaded first; then best fit (the smallest unit that
            // fits, so big free areas stay for big guests); then lowest CPU.
            let key = match request.pool {
                Pool::Shared => (ordered(unit_load(&unit)), unit.len(), unit.first()),
                Pool::Dedicated => (0, unit.len(), unit.first()),
            };
            if best_key.as_ref().is_none_or(|k| key < *k) {
                best_key = Some(key);
                best = Some((unit, node));
            }
        }
        if let Some((unit, node)) = best {
            let vcpus = assign(host, &unit, wanted, load_of);
            let cpus = vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
            return Some(Placement {
                level,
                why: format!("{wanted} vCPU(s) fit in {level} (node {node}); CPUs {cpus}",),
                vcpus,
                cpus,
                nodes: CpuSet::single(node),
            });
        }
    }

    // Spanning: the fewest, nearest nodes, within one socket when possible.
    let largest_node = host
        .nodes
        .values()
        .map(|n| n.cpus.intersection(available).len())
        .max()
        .unwrap_or(0);
    let mut candidates: Vec<(Level, Vec<u32>)> = Vec::new();
    for socket_cpus in host.sockets.values() {
        let nodes: Vec<u32> = host
            .nodes
            .values()
            .filter(|n| n.cpus.intersects(socket_cpus))
            .map(|n| n.id)
            .collect();
        candidates.push((Level::Socket, nodes));
    }
    candidates.push((Level::Nodes, host.nodes.keys().copied().collect()));
    let mut best: Option<(usize, u32, Level, CpuSet)> = None;
    let max_nodes = request.max_nodes.map_or(usize::MAX, |m| m as usize);
    for (level, nodes) in candidates {
        if let Some(chosen) =
            fewest_nearest_nodes(host, &nodes, available, wanted, max_nodes, &node_fits)
        {
            let distance = spread(host, &chosen);
            let key = (chosen.len(), distance, level, chosen.clone());
            if best
                .as_ref()
                .is_none_or(|b| (key.0, key.1, key.2) < (b.0, b.1, b.2))
            {
                best = Some(key);
            }
        }
    }
    if let Some((count, _, level, nodes)) = best {
        let unit = node_cpus(host, &nodes).intersection(available);
        let vcpus = assign(host, &unit, wanted, load_of);
        let cpus = vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
        return Some(Placement {
            level,
            why: format!(
                "{wanted} vCPUs exceed the largest NUMA node ({largest_node} usable CPUs): \
                 spans {count} nodes ({nodes}), the fewest and nearest that fit"
            ),
            vcpus,
            cpus,
            nodes,
        });
    }

    None
}

fn thread_policy_name(policy: ThreadPolicy) -> &'static str {
    match policy {
        ThreadPolicy::Prefer => "prefer",
        ThreadPolicy::Isolate => "isolate",
        ThreadPolicy::Require => "require",
    }
}

/// Makes a dedicated placement hold whole cores: isolate pins each vCPU to all
/// free threads of its core (the siblings stay empty, and held); require gives
/// the free threads of a core the guest uses that no vCPU got to the core's last
/// vCPU. `free` = the CPUs of cores no other guest touches.
fn hold_whole_cores(host: &Host, placement: &mut Placement, policy: ThreadPolicy, free: &CpuSet) {
    let within = node_cpus(host, &placement.nodes);
    let free_of = |cpu: u32| {
        host.core_of(cpu).map_or_else(
            || CpuSet::single(cpu),
            |core| core.cpus.intersection(free).intersection(&within),
        )
    };
    match policy {
        ThreadPolicy::Prefer => return,
        ThreadPolicy::Isolate => {
            for set in &mut placement.vcpus {
                if let Some(cpu) = set.first() {
                    *set = set.union(&free_of(cpu));
                }
            }
        }
        ThreadPolicy::Require => {
            let used = placement.cpus.clone();
            let mut last_on_core: BTreeMap<u32, usize> = BTreeMap::new();
            for (v, set) in placement.vcpus.iter().enumerate() {
                if let Some(cpu) = set.first() {
                    let core_first = free_of(cpu).first().unwrap_or(cpu);
                    last_on_core.insert(core_first, v);
                }
            }
            for (core_first, v) in last_on_core {
                let spare = free_of(core_first).difference(&used);
                placement.vcpus[v] = placement.vcpus[v].union(&spare);
            }
        }
    }
    placement.cpus = placement
        .vcpus
        .iter()
        .fold(CpuSet::new(), |a, s| a.union(s));
    let name = thread_policy_name(policy);
    placement.why.push_str(&format!(
        "; thread_policy: {name}, whole cores held: CPUs {}",
        placement.cpus
    ));
}

/// Orders f64 loads (never NaN here) as integers in 1/1000 vCPU steps.
fn ordered(load: f64) -> u64 {
    (load * 1000.0).round() as u64
}

/// Candidate units of a level, each cut to one NUMA node, with that node.
fn units(host: &Host, level: Level) -> Vec<(CpuSet, u32)> {
    let mut out = Vec::new();
    for node in host.nodes.values() {
        match level {
            Level::Core => {
                // `intersects` first: no allocation for the cores of other nodes.
                for core in host.cores.iter().filter(|c| c.cpus.intersects(&node.cpus)) {
                    out.push((core.cpus.intersection(&node.cpus), node.id));
                }
            }
            Level::L3 => {
                // Without L3 info (many sysfs snapshots lack cache/), assume the
                // L3 is socket-wide, as on the Intel Xeons of that era.
                let groups: Vec<&CpuSet> = if host.l3_groups.is_empty() {
                    host.sockets.values().collect()
                } else {
                    host.l3_groups.iter().collect()
                };
                for group in groups {
                    let cpus = group.intersection(&node.cpus);
                    if !cpus.is_empty() {
                        out.push((cpus, node.id));
                    }
                }
            }
            _ => out.push((node.cpus.clone(), node.id)),
        }
    }
    out
}

fn node_cpus(host: &Host, nodes: &CpuSet) -> CpuSet {
    host.nodes
        .values()
        .filter(|n| nodes.contains(n.id))
        .fold(CpuSet::new(), |acc, n| acc.union(&n.cpus))
}

/// NUMA nodes holding any of `cpus`.
pub fn nodes_of(host: &Host, cpus: &CpuSet) -> CpuSet {
    cpus.iter()
        .filter_map(|c| host.cpus.get(&c).map(|cpu| cpu.node))
        .collect()
}

/// Sum of pairwise distances (0 when the host gives none).
fn spread(host: &Host, nodes: &CpuSet) -> u32 {
    let ids: Vec<u32> = nodes.iter().collect();
    let mut total = 0;
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            total += host
                .nodes
                .get(a)
                .and_then(|n| n.distances.get(b))
                .copied()
                .unwrap_or(0);
        }
    }
    total
}

/// Candidate node sets up to this many nodes are searched exhaustively (2^12
/// subsets at most); larger hosts use the greedy search.
const EXHAUSTIVE_NODES: usize = 12;

/// The fewest nodes among `candidates` whose usable CPUs hold `wanted` vCPUs and
/// that `fits` (memory), at most `max_nodes`; among those, the nearest (smallest
/// sum of pairwise distances), then the lowest node numbers. Exhaustive on hosts
/// with up to [`EXHAUSTIVE_NODES`] candidate nodes, greedy beyond.
fn fewest_nearest_nodes(
    host: &Host,
    candidates: &[u32],
    available: &CpuSet,
    wanted: usize,
    max_nodes: usize,
    fits: &dyn Fn(&CpuSet) -> bool,
) -> Option<CpuSet> {
    let usable = |id: u32| {
        host.nodes
            .get(&id)
            .map(|n| n.cpus.intersection(available).len())
            .unwrap_or(0)
    };
    let ids: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|id| usable(*id) > 0)
        .collect();
    if ids.len() > EXHAUSTIVE_NODES {
        return greedy_nearest_nodes(host, &ids, wanted, max_nodes, &usable, fits);
    }
    for k in 1..=ids.len().min(max_nodes) {
        let mut best: Option<(u32, CpuSet)> = None;
        for_each_subset(&ids, k, &mut |nodes: &CpuSet| {
            let cpus: usize = nodes.iter().map(usable).sum();
            if cpus < wanted {
                return;
            }
            let distance = spread(host, nodes);
            if best.as_ref().is_some_and(|b| b.0 <= distance) || !fits(nodes) {
                return;
            }
            best = Some((distance, nodes.clone()));
        });
        if let Some((_, nodes)) = best {
            return Some(nodes);
        }
    }
    None
}

/// Greedy, for hosts with many nodes: start from each node, add the nearest node
/// (ties: most usable CPUs) until the CPUs and memory fit, at most `max_nodes`.
fn greedy_nearest_nodes(
    host: &Host,
    ids: &[u32],
    wanted: usize,
    max_nodes: usize,
    usable: &dyn Fn(u32) -> usize,
    fits: &dyn Fn(&CpuSet) -> bool,
) -> Option<CpuSet> {
    let mut best: Option<CpuSet> = None;
    for &start in ids {
        let mut chosen = CpuSet::single(start);
        let mut count = usable(start);
        while (count < wanted || !fits(&chosen)) && chosen.len() < max_nodes {
            let next = ids
                .iter()
                .filter(|id| !chosen.contains(**id))
                .min_by_key(|id| {
                    let distance: u32 = chosen
                        .iter()
                        .map(|c| {
                            host.nodes
                                .get(&c)
                                .and_then(|n| n.distances.get(id))
                                .copied()
                                .unwrap_or(20)
                        })
                        .sum();
                    (distance, std::cmp::Reverse(usable(**id)), **id)
                });
            match next {
                Some(id) => {
                    chosen.insert(*id);
                    count += usable(*id);
                }
                None => break,
            }
        }
        if count >= wanted
            && fits(&chosen)
            && best
                .as_ref()
                .is_none_or(|b| (chosen.len(), spread(host, &chosen)) < (b.len(), spread(host, b)))
        {
            best = Some(chosen);
        }
    }
    best
}

/// Gives each vCPU one CPU of `unit`: whole cores first (SMT siblings together, so
/// vCPU pairs share L1/L2), least-loaded cores first; more vCPUs than CPUs wrap.
fn assign(host: &Host, unit: &CpuSet, wanted: usize, load_of: &dyn Fn(u32) -> f64) -> Vec<CpuSet> {
    let mut cores: Vec<CpuSet> = Vec::new();
    let mut seen = CpuSet::new();
    for cpu in unit.iter() {
        if seen.contains(cpu) {
            continue;
        }
        let siblings = host
            .cpus
            .get(&cpu)
            .and_then(|c| host.cores.get(c.core))
            .map(|core| core.cpus.intersection(unit))
            .unwrap_or_else(|| CpuSet::single(cpu));
        seen = seen.union(&siblings);
        cores.push(siblings);
    }
    // Fill partly used/least loaded cores first; for a pair of vCPUs prefer a core
    // with two usable threads.
    cores.sort_by_key(|core| {
        let load: f64 = core.iter().map(load_of).sum();
        (
            ordered(load),
            std::cmp::Reverse(core.len().min(wanted)),
            core.first(),
        )
    });
    let order: Vec<u32> = cores
        .iter()
        .flat_map(|c| c.iter().collect::<Vec<_>>())
        .collect();
    (0..wanted)
        .map(|i| CpuSet::single(order[i % order.len()]))
        .collect()
}

/// Like [`assign`] for more vCPUs than CPUs: each vCPU goes to the least-loaded CPU
/// (counting the vCPUs given so far, whole cores first), never beyond `ratio`
/// vCPUs per CPU; the caller checked that there is room.
fn assign_overcommitted(
    host: &Host,
    unit: &CpuSet,
    wanted: usize,
    load_of: &dyn Fn(u32) -> f64,
    ratio: f64,
) -> Vec<CpuSet> {
    let order: Vec<u32> = assign(host, unit, unit.len(), load_of)
        .iter()
        .filter_map(CpuSet::first)
        .collect();
    let mut load: Vec<f64> = order.iter().map(|c| load_of(*c)).collect();
    let mut out = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        let pick = (0..order.len())
            .filter(|i| load[*i] + 1.0 <= ratio)
            .min_by_key(|i| (ordered(load[*i]), *i))
            .unwrap_or(0);
        load[pick] += 1.0;
        out.push(CpuSet::single(order[pick]));
    }
    out
}

/// The placement a guest already has (its running claim), described like a fresh
/// one: the smallest level that holds its CPUs.
pub fn describe(host: &Host, vcpus: Vec<CpuSet>, why: String) -> Placement {
    let cpus = vcpus.iter().fold(CpuSet::new(), |acc, s| acc.union(s));
    let nodes = nodes_of(host, &cpus);
    let within = |group: &CpuSet| !cpus.is_empty() && cpus.is_subset(group);
    let l3_groups: Vec<&CpuSet> = if host.l3_groups.is_empty() {
        host.sockets.values().collect()
    } else {
        host.l3_groups.iter().collect()
    };
    let level = if host.cores.iter().any(|c| within(&c.cpus)) {
        Level::Core
    } else if nodes.len() == 1 && l3_groups.iter().any(|g| within(g)) {
        Level::L3
    } else if nodes.len() == 1 {
        Level::Node
    } else if host.sockets.values().any(within) {
        Level::Socket
    } else {
        Level::Nodes
    };
    Placement {
        level,
        vcpus,
        cpus,
        nodes,
        why,
    }
}
