//! The model of `kvmtune status` and how it is built: a picture of the host (NUMA
//! nodes → L3 groups, or sockets where the host reports no L3 → cores → threads,
//! each thread with its role and the guest vCPUs that may run there, per-node memory
//! and huge pages) and of every running guest (placement, where it was read from,
//! [`crate::conformance`] rule by rule, what was applied and read back
//! ([`crate::readback`]: vCPU, emulator and iothreads, cgroup cpus and mems, memory
//! policy), agreement with kvmtune's ledger, whether it waits in the convergence
//! queue). Pure: [`build`] takes [`Inputs`] the
//! caller has already read (host, policy, ledger, libvirt's live guests, what each
//! guest's threads and cgroup show) and returns a [`Status`], which is also the
//! `--json` output. Drawing it is the binary's job.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::conformance::{self, Check, Conformance};
use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::ledger::{EntryState, Ledger, PREPARE_GRACE};
use crate::placement::{Occupancy, Pool};
use crate::plan::{guest_facts, plan};
use crate::policy::{MemoryMode, Policy};
use crate::readback::{self, Applied, Observed, Readback};
use crate::runstate::LiveGuest;

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub host: HostView,
    pub guests: Vec<GuestView>,
    pub ledger: LedgerView,
    pub converge_queue: QueueView,
}

/// The convergence queue (`/run/kvmtune/converge/`): guests the hook let start
/// with XML-level violations, whose definitions `kvmtune converge` conforms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueView {
    pub path: PathBuf,
    /// Why the queue could not be read (e.g. not root: the directory is 0700).
    pub error: Option<String>,
    /// Every queued guest, running or not, by name.
    pub guests: Vec<QueuedView>,
}

/// One queued guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedView {
    pub guest: String,
    /// Its UUID when it was queued.
    pub uuid: Option<String>,
    /// When it was queued, seconds since 1970 (UTC); 0 when the entry is damaged.
    pub queued_at: u64,
    /// Whether libvirt runs it now.
    pub running: bool,
}

/// A running guest's place in the convergence queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queued {
    /// Seconds since 1970 (UTC); 0 when unknown.
    pub queued_at: u64,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostView {
    /// "2 sockets, 2 nodes, 16 cores, 32 threads".
    pub summary: String,
    pub policy: String,
    pub reserved_cpus: CpuSet,
    pub irq_cpus: CpuSet,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub id: u32,
    pub cpus: CpuSet,
    pub mem_total_kib: Option<u64>,
    pub mem_free_kib: Option<u64>,
    /// Memory of the running guests bound to this node (split evenly over their nodes).
    pub guests_mem_kib: u64,
    pub hugepages: Vec<HugePagesView>,
    /// Per CPU pool, this node's CPUs the pool may use (not reserved, IRQ or CPU0,
    /// within `host.shared_cpus` / `host.dedicated_cpus` when set) on which no
    /// placed guest's vCPUs may run (XML pins or ledger claims, starting guests
    /// included).
    pub free_cpus: Vec<PoolCpus>,
    pub groups: Vec<GroupView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolCpus {
    pub pool: Pool,
    pub cpus: CpuSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugePagesView {
    pub size_kib: u64,
    pub total: u64,
    pub free: u64,
}

/// CPUs sharing a last-level cache: an L3 group, or a socket when L3 is unknown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupView {
    /// `l3` or `socket`.
    pub kind: &'static str,
    pub socket: u32,
    pub cpus: CpuSet,
    pub cores: Vec<CoreView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoreView {
    pub cpus: CpuSet,
    pub threads: Vec<ThreadView>,
}

/// What the host keeps a CPU for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `host.reserved_cpus`.
    Reserved,
    /// An IRQ CPU (`irq_cpus`, or IRQs bound there with `auto`).
    Irq,
    /// CPU0, kept from guests (`allow_cpu0: false`).
    Cpu0,
    /// Guests may use it.
    Guests,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadView {
    pub cpu: u32,
    pub role: Role,
    /// Guests whose vCPUs may run here.
    pub guests: Vec<GuestUse>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestUse {
    pub guest: String,
    /// The guest's vCPU numbers that may run on this CPU.
    pub vcpus: CpuSet,
}

pub use crate::readback::Source;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestView {
    pub name: String,
    pub pid: Option<u32>,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub source: Source,
    /// Host CPUs of each vCPU (empty when unpinned).
    pub vcpu_cpus: Vec<CpuSet>,
    pub cpus: CpuSet,
    pub nodes: CpuSet,
    pub emulator: Option<CpuSet>,
    /// `Cpus_allowed_list` of each vCPU thread, when /proc could be read.
    pub threads: Vec<Option<CpuSet>>,
    pub policy_rule: String,
    /// The CPU pool: the ledger claim's, else the one the policy puts it in
    /// (`None` when no plan could be made).
    pub pool: Option<Pool>,
    pub conformance: Vec<Check>,
    /// What was applied, read back from /proc and the cgroup, aspect by aspect.
    pub readback: Vec<Readback>,
    pub ledger: Agreement,
    /// Queued for convergence: `kvmtune converge` will conform its definition
    /// (`None`: not queued, or the queue could not be read).
    pub queued_for_convergence: Option<Queued>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agreement {
    pub agrees: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerView {
    pub path: PathBuf,
    /// `present`, `absent` or `unreadable`.
    pub file: &'static str,
    pub entries: usize,
    /// Claims of guests libvirt does not run (and that are not starting).
    pub stale: Vec<String>,
    /// Claims made at prepare for guests still starting.
    pub starting: Vec<String>,
    /// Whether the ledger and libvirt's status files agree on every guest.
    pub agrees: bool,
}

// ---------------------------------------------------------------- building

/// What [`build`] looks at, already read by the caller.
pub struct Inputs<'a> {
    pub policy: &'a Policy,
    pub host: &'a Host,
    pub ledger_path: PathBuf,
    /// `None`: no ledger file; `Some(None)`: a file that does not parse.
    pub ledger: Option<Option<Ledger>>,
    pub live: BTreeMap<String, LiveGuest>,
    /// What each guest's threads and cgroup show, by guest name: the affinity of
    /// its vCPU threads by vCPU number (see [`vcpu_count`]), emulator threads and
    /// iothreads, its cgroup's effective sets. A guest missing here was not read
    /// (no QEMU pid).
    pub observed: BTreeMap<String, Observed>,
    /// The convergence queue's directory and what it holds (guest name, entry),
    /// or why it could not be read.
    pub converge_queue: (
        PathBuf,
        Result<Vec<(String, crate::converge::Entry)>, String>,
    ),
    pub now: u64,
}

/// Gathers the status from what was read.
pub fn build(inputs: &Inputs<'_>) -> Status {
    let Inputs {
        policy, host, live, ..
    } = inputs;
    let roles = Roles {
        reserved: policy.host.reserved_cpus.intersection(&host.online),
        irq: policy.irq_cpus(host),
        cpu0_forbidden: !policy.host.allow_cpu0,
    };
    let (ledger, ledger_file) = match &inputs.ledger {
        None => (Ledger::default(), "absent"),
        Some(None) => (Ledger::default(), "unreadable"),
        Some(Some(l)) => (l.clone(), "present"),
    };

    // Occupancy as the hook sees it, for planning each guest's live XML.
    let claimed = ledger.occupancy();
    let mut occupancy: Occupancy = claimed.clone();
    occupancy
        .guests
        .extend(crate::runstate::pinned_by_others(live, &claimed).guests);

    let mut guests: Vec<GuestView> = live
        .iter()
        .map(|(name, guest)| guest_view(name, guest, inputs, &ledger, &occupancy))
        .collect();
    let converge_queue = queue_view(inputs);
    for g in &mut guests {
        g.queued_for_convergence = converge_queue
            .guests
            .iter()
            .find(|q| q.guest == g.name)
            .map(|q| Queued {
                queued_at: q.queued_at,
                uuid: q.uuid.clone(),
            });
    }
    let (stale, starting) = stale_and_starting(&ledger, inputs);
    let agrees =
        stale.is_empty() && ledger_file != "unreadable" && guests.iter().all(|g| g.ledger.agrees);
    let uses = cpu_uses(&guests);

    // CPUs some placed guest's vCPUs may use: live pins, ledger claims (starting too).
    let used = guests
        .iter()
        .fold(claimed.all_cpus(), |acc, g| acc.union(&g.cpus));
    let eligible = host
        .online
        .iter()
        .filter(|cpu| roles.of(*cpu) == Role::Guests)
        .collect::<CpuSet>();
    let nodes = host
        .nodes
        .values()
        .map(|node| node_view(inputs, node, &roles, &eligible, &used, &uses, &guests))
        .collect();
    let (reserved, irq) = (roles.reserved, roles.irq);

    Status {
        host: HostView {
            summary: host.summary(),
            policy: policy.source.display().to_string(),
            reserved_cpus: reserved,
            irq_cpus: irq,
            nodes,
        },
        guests,
        ledger: LedgerView {
            path: inputs.ledger_path.clone(),
            file: ledger_file,
            entries: ledger.guests.len(),
            stale,
            starting,
            agrees,
        },
        converge_queue,
    }
}

/// The convergence queue as read, each guest marked running or not.
fn queue_view(inputs: &Inputs<'_>) -> QueueView {
    let (path, read) = &inputs.converge_queue;
    let (error, entries) = match read {
        Ok(entries) => (None, entries.as_slice()),
        Err(e) => (Some(e.clone()), &[][..]),
    };
    QueueView {
        path: path.clone(),
        error,
        guests: entries
            .iter()
            .map(|(guest, entry)| QueuedView {
                guest: guest.clone(),
                uuid: entry.uuid.clone(),
                queued_at: entry.queued_at,
                running: inputs.live.contains_key(guest),
            })
            .collect(),
    }
}

/// What a CPU is for, in the host picture.
struct Roles {
    reserved: CpuSet,
    irq: CpuSet,
    cpu0_forbidden: bool,
}

impl Roles {
    fn of(&self, cpu: u32) -> Role {
        if self.reserved.contains(cpu) {
            Role::Reserved
        } else if self.irq.contains(cpu) {
            Role::Irq
        } else if cpu == 0 && self.cpu0_forbidden {
            Role::Cpu0
        } else {
            Role::Guests
        }
    }
}

/// Ledger entries without a running guest: still starting (prepared, young) or
/// stale.
fn stale_and_starting(ledger: &Ledger, inputs: &Inputs<'_>) -> (Vec<String>, Vec<String>) {
    let mut stale = Vec::new();
    let mut starting = Vec::new();
    for (name, entry) in &ledger.guests {
        if inputs.live.contains_key(name) {
            continue;
        }
        let young = inputs.now.saturating_sub(entry.claimed_at) < PREPARE_GRACE.as_secs();
        if entry.state == EntryState::Prepared && young {
            starting.push(name.clone());
        } else {
            stale.push(name.clone());
        }
    }
    (stale, starting)
}

/// Which guest vCPUs may run on which CPU.
fn cpu_uses(guests: &[GuestView]) -> BTreeMap<u32, Vec<GuestUse>> {
    let mut uses: BTreeMap<u32, Vec<GuestUse>> = BTreeMap::new();
    for g in guests {
        let mut per_cpu: BTreeMap<u32, CpuSet> = BTreeMap::new();
        for (v, set) in g.vcpu_cpus.iter().enumerate() {
            for cpu in set.iter() {
                per_cpu.entry(cpu).or_default().insert(v as u32);
            }
        }
        for (cpu, vcpus) in per_cpu {
            uses.entry(cpu).or_default().push(GuestUse {
                guest: g.name.clone(),
                vcpus,
            });
        }
    }
    uses
}

/// One NUMA node of the host picture: its CPUs by cache group and core, who runs
/// where, memory and huge pages, free CPUs per pool.
fn node_view(
    inputs: &Inputs<'_>,
    node: &crate::host::Node,
    roles: &Roles,
    eligible: &CpuSet,
    used: &CpuSet,
    uses: &BTreeMap<u32, Vec<GuestUse>>,
    guests: &[GuestView],
) -> NodeView {
    let (policy, host) = (inputs.policy, inputs.host);
    let free_cpus = [Pool::Shared, Pool::Dedicated]
        .into_iter()
        .map(|pool| {
            let mut cpus = eligible.intersection(&node.cpus).difference(used);
            if let Some(set) = policy.host.pool_cpus(pool) {
                cpus = cpus.intersection(set);
            }
            PoolCpus { pool, cpus }
        })
        .collect();
    let groups = node_groups(host, node, roles, uses);
    let guests_mem_kib = guests
        .iter()
        .filter(|g| g.nodes.contains(node.id))
        .map(|g| g.memory_kib / g.nodes.len().max(1) as u64)
        .sum();
    NodeView {
        id: node.id,
        cpus: node.cpus.clone(),
        mem_total_kib: node.mem_total_kib,
        mem_free_kib: node.mem_free_kib,
        guests_mem_kib,
        hugepages: node
            .hugepages
            .iter()
            .map(|(size, h)| HugePagesView {
                size_kib: *size,
                total: h.total,
                free: h.free,
            })
            .collect(),
        free_cpus,
        groups,
    }
}

/// A node's cores grouped by L3 cache (or by socket when the host reports none).
fn node_groups(
    host: &crate::host::Host,
    node: &crate::host::Node,
    roles: &Roles,
    uses: &BTreeMap<u32, Vec<GuestUse>>,
) -> Vec<GroupView> {
    let mut groups: Vec<GroupView> = Vec::new();
    let mut cores: Vec<&crate::host::Core> =
        host.cores.iter().filter(|c| c.node == node.id).collect();
    cores.sort_by_key(|c| c.cpus.first());
    for core in cores {
        let Some(first) = core.cpus.first() else {
            continue;
        };
        let (kind, cpus) = match host.l3_of(first) {
            Some(l3) => ("l3", l3.intersection(&node.cpus)),
            None => (
                "socket",
                host.sockets
                    .get(&core.socket)
                    .cloned()
                    .unwrap_or_default()
                    .intersection(&node.cpus),
            ),
        };
        let threads = core
            .cpus
            .iter()
            .map(|cpu| ThreadView {
                cpu,
                role: roles.of(cpu),
                guests: uses.get(&cpu).cloned().unwrap_or_default(),
            })
            .collect();
        let view = CoreView {
            cpus: core.cpus.clone(),
            threads,
        };
        match groups.iter_mut().find(|g| g.kind == kind && g.cpus == cpus) {
            Some(g) => g.cores.push(view),
            None => groups.push(GroupView {
                kind,
                socket: core.socket,
                cpus,
                cores: vec![view],
            }),
        }
    }
    groups
}

/// How many vCPUs a running guest has: its live XML's `<vcpu>`, else the vCPU
/// threads libvirt recorded. The caller reads that many thread affinities for
/// [`Inputs::threads`].
pub fn vcpu_count(guest: &LiveGuest) -> u32 {
    guest
        .domain
        .as_ref()
        .map_or(guest.vcpu_tids.len() as u32, |d| d.vcpus_max)
}

/// Where a running guest's placement comes from and what it is: (source, CPUs of
/// each vCPU, memory nodes, emulator CPUs). The live XML's explicit pins, else
/// the ledger claim the hook applied, else nothing. Pins kvmtune wrote itself
/// (pins mark) are no source while the guest has a claim: the hook applied the
/// claim over them, and repacking or rebalance may have moved it since (libvirt's
/// live XML still says where the definition put it).
fn placement_of(
    domain: Option<&crate::domain::Domain>,
    entry: Option<&crate::ledger::Entry>,
    host: &Host,
) -> (Source, Vec<CpuSet>, CpuSet, Option<CpuSet>) {
    let claimed = entry.is_some_and(|e| !e.floating);
    let xml_pins = domain.filter(|d| d.pins_explicitly() && !(claimed && d.pins_by_kvmtune()));
    if let Some(d) = xml_pins {
        let pinned = d.pinned_cpus();
        let per_vcpu: Vec<CpuSet> = (0..d.vcpus_max)
            .map(|v| {
                d.pinned_cpus_of(v)
                    .cloned()
                    .unwrap_or_else(|| pinned.clone())
            })
            .collect();
        let nodes = d
            .numa_memory
            .as_ref()
            .and_then(|m| m.nodeset.clone())
            .unwrap_or_else(|| host.nodes_of(&pinned));
        (Source::Xml, per_vcpu, nodes, d.emulator_pin.clone())
    } else if let Some(e) = entry {
        (
            Source::Ledger,
            e.vcpus.clone(),
            e.nodes.clone(),
            domain
                .filter(|d| !d.emulator_pin_by_kvmtune())
                .and_then(|d| d.emulator_pin.clone())
                .or_else(|| e.emulator.clone()),
        )
    } else {
        (
            Source::None,
            Vec::new(),
            CpuSet::new(),
            domain.and_then(|d| d.emulator_pin.clone()),
        )
    }
}

fn guest_view(
    name: &str,
    guest: &LiveGuest,
    inputs: &Inputs<'_>,
    ledger: &Ledger,
    occupancy: &Occupancy,
) -> GuestView {
    let entry = ledger.guests.get(name);
    let domain = guest.domain.as_ref();
    let vcpus = vcpu_count(guest);
    let memory_kib = domain.map_or(0, |d| d.memory_kib);
    let (source, vcpu_cpus, nodes, emulator) = placement_of(domain, entry, inputs.host);
    let cpus = vcpu_cpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
    let observed = inputs.observed.get(name);
    let threads = observed.map(|o| o.vcpus.clone()).unwrap_or_default();
    let readback = readback::readback(
        &Applied {
            source,
            vcpu_cpus: &vcpu_cpus,
            nodes: &nodes,
            entry,
            domain,
            memory_mode: domain.and_then(|d| memory_mode(inputs.policy, d)),
        },
        observed,
    );

    // Conformance: plan the live XML as the hook would.
    let planned = domain.map(|d| plan(inputs.policy, inputs.host, occupancy, d));
    let planned_pool = match &planned {
        Some(Ok(p)) => Some(p.pool),
        _ => None,
    };
    let pool = entry.map(|e| e.pool).or(planned_pool);
    let (policy_rule, conformance) = match planned {
        None => (
            String::new(),
            vec![Check {
                rule: "-",
                what: "live XML",
                state: Conformance::Unknown,
                detail: "the status file holds no parsable <domain>".into(),
            }],
        ),
        Some(Err(e)) => (
            String::new(),
            vec![Check {
                rule: "-",
                what: "plan",
                state: Conformance::Unknown,
                detail: e.to_string(),
            }],
        ),
        Some(Ok(p)) => (
            p.policy_rule.clone(),
            conformance::checks(&p, &readback, entry),
        ),
    };

    let opted_out = conformance.iter().any(|c| c.state == Conformance::OptedOut);
    let ledger_agreement = agreement(entry, source, opted_out, &vcpu_cpus, &cpus);

    GuestView {
        name: name.to_string(),
        pid: guest.qemu_pid,
        vcpus,
        memory_kib,
        source,
        vcpu_cpus,
        cpus,
        nodes,
        emulator,
        threads,
        policy_rule,
        pool,
        conformance,
        readback,
        ledger: ledger_agreement,
        queued_for_convergence: None,
    }
}

/// The memory mode the policy gives a guest (`None`: opted out).
fn memory_mode(policy: &Policy, domain: &crate::domain::Domain) -> Option<MemoryMode> {
    policy
        .select(&guest_facts(domain))
        .settings
        .map(|s| s.memory_mode)
}

#[cfg(test)]
mod tests;

/// Whether kvmtune's ledger agrees with what libvirt runs, for one guest.
fn agreement(
    entry: Option<&crate::ledger::Entry>,
    source: Source,
    opted_out: bool,
    vcpu_cpus: &[CpuSet],
    cpus: &CpuSet,
) -> Agreement {
    match (entry, source) {
        (None, _) if opted_out => Agreement {
            agrees: true,
            detail: "not tracked (opted out by policy)".into(),
        },
        (None, _) => Agreement {
            agrees: false,
            detail: "no ledger entry (started before the hook was installed, or the hook failed)"
                .into(),
        },
        (Some(e), Source::Xml) if e.vcpus != vcpu_cpus => Agreement {
            agrees: false,
            detail: format!("ledger says CPUs {} but the live XML pins {}", e.cpus, cpus),
        },
        (Some(e), _) if e.state == EntryState::Prepared => Agreement {
            agrees: true,
            detail: "claimed at prepare; started not seen yet".into(),
        },
        (Some(_), _) => Agreement {
            agrees: true,
            detail: "agrees".into(),
        },
    }
}
