//! `kvmtune status`: a picture of the host taken in at a glance, like `lstopo`:
//! NUMA nodes → L3 groups (sockets where the host reports no L3) → cores → threads,
//! each thread marked as reserved / IRQ / CPU0 / free / GUEST:vCPU, with per-node
//! memory and huge pages; below it every running guest with its placement, its
//! conformance rule by rule, and whether kvmtune's ledger agrees with libvirt.
//!
//! Reads files only (sysfs, libvirt's status files, the ledger, `/proc` for thread
//! affinity), never libvirt itself, so it is safe to run at any time, even while
//! libvirtd hangs. [`build`] gathers a [`Status`] (also the `--json` output);
//! [`render`] draws it, in colour when asked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::exit;
use crate::inputs::{self as cli, Sources};
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{EntryState, Ledger, PREPARE_GRACE};
use kvmtune_core::placement::Occupancy;
use kvmtune_core::plan::{Change, Enforcement, Plan, plan};
use kvmtune_core::policy::{IrqCpus, Policy};
use kvmtune_core::runstate::LiveGuest;
use kvmtune_sys::affinity;
use kvmtune_sys::ledger_store as ledger;
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::logging::sanitize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set
    Auto,
    Always,
    Never,
}

const STATUS_HELP: &str = "\
Reads files only: sysfs, libvirt's status files (/run/libvirt/qemu/*.xml), the
ledger (/run/kvmtune/ledger.json) and /proc for thread affinity; never calls
libvirt, so it is safe to run at any time. A guest's placement comes from its live
XML pins, else from the ledger (placed by the hook at start). Conformance per rule:
ok, runtime-enforced (the hook applied it to the running guest), differs (fixed by
kvmtune apply and a cold boot). Exit code 0.";

#[derive(Debug, Args)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Print the status as JSON (for monitoring)
    #[arg(long)]
    pub json: bool,
    /// Colour the picture
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorWhen,
}

// ---------------------------------------------------------------- the model

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub host: HostView,
    pub guests: Vec<GuestView>,
    pub ledger: LedgerView,
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
    pub groups: Vec<GroupView>,
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

/// Where a guest's placement was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The live XML pins the vCPUs (`<vcpupin>`/`<vcpu cpuset>`): libvirt applied them.
    Xml,
    /// The hook applied kvmtune's placement at `started` (ledger claim).
    Ledger,
    /// Nobody pinned it: the vCPUs float over every CPU.
    None,
}

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
    pub conformance: Vec<Check>,
    pub ledger: Agreement,
}

/// One rule's verdict for a running guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub rule: &'static str,
    pub what: &'static str,
    pub state: Conformance,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conformance {
    Ok,
    /// The live XML lacks it, and the hook applied it to the running QEMU.
    RuntimeEnforced,
    /// The guest runs without it: fixed at the next cold boot after `kvmtune apply`.
    Differs,
    /// The guest is opted out by policy.
    OptedOut,
    /// The plan could not be made (policy does not fit the host).
    Unknown,
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

/// What [`build`] reads, already loaded.
pub struct Inputs<'a> {
    pub policy: &'a Policy,
    pub host: &'a Host,
    pub ledger_path: PathBuf,
    /// `None`: no ledger file; `Some(None)`: a file that does not parse.
    pub ledger: Option<Option<Ledger>>,
    pub live: BTreeMap<String, LiveGuest>,
    /// Where `PID/task/TID/status` are read (thread affinity); None = don't.
    pub proc_root: Option<PathBuf>,
    pub now: u64,
}

/// The aspects of the plan shown per guest, with the rule of TUNING-RULES.md.
const ASPECTS: [(&str, &str); 8] = [
    ("1.1", "vCPU placement"),
    ("1.2", "NUMA memory"),
    ("1.3", "emulator/iothreads"),
    ("2.1", "disk cache/io"),
    ("3.1", "no KSM"),
    ("3.2", "huge pages"),
    ("4", "vhost-net/multiqueue"),
    ("5", "CPU mode"),
];

fn aspect_of(change: &Change) -> usize {
    match change {
        Change::VcpuPins { .. } => 0,
        Change::NumaMemory { .. } | Change::GuestNuma { .. } => 1,
        Change::EmulatorPin { .. } | Change::IothreadPins { .. } => 2,
        Change::DiskDriver { .. } => 3,
        Change::NoSharePages => 4,
        Change::HugePages { .. } => 5,
        Change::InterfaceDriver { .. } => 6,
        Change::CpuHostModel => 7,
    }
}

fn aspect_of_rule(rule: &str) -> Option<usize> {
    match rule {
        "1.1" => Some(0),
        "1.2" => Some(1),
        "1.3" => Some(2),
        "2.1" => Some(3),
        "3.1" => Some(4),
        "3.2" => Some(5),
        "4.1" | "4.2" => Some(6),
        "5" => Some(7),
        _ => None,
    }
}

/// CPUs kept from guests for IRQs under the policy.
fn irq_cpus(policy: &Policy, host: &Host) -> CpuSet {
    match &policy.host.irq_cpus {
        IrqCpus::Auto => host.irq_bound_cpus(),
        IrqCpus::None => CpuSet::new(),
        IrqCpus::List(set) => set.intersection(&host.online),
    }
}

/// Gathers the status. Pure apart from reading thread affinity under `proc_root`.
pub fn build(inputs: &Inputs<'_>) -> Status {
    let Inputs {
        policy, host, live, ..
    } = inputs;
    let reserved = policy.host.reserved_cpus.intersection(&host.online);
    let irq = irq_cpus(policy, host);
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
        .extend(kvmtune_core::runstate::pinned_by_others(live, &claimed).guests);

    let mut guests = Vec::new();
    for (name, guest) in live.iter() {
        guests.push(guest_view(name, guest, inputs, &ledger, &occupancy));
    }

    let mut stale = Vec::new();
    let mut starting = Vec::new();
    for (name, entry) in &ledger.guests {
        if live.contains_key(name) {
            continue;
        }
        let young = inputs.now.saturating_sub(entry.claimed_at) < PREPARE_GRACE.as_secs();
        if entry.state == EntryState::Prepared && young {
            starting.push(name.clone());
        } else {
            stale.push(name.clone());
        }
    }
    let agrees =
        stale.is_empty() && ledger_file != "unreadable" && guests.iter().all(|g| g.ledger.agrees);

    // Which guest vCPUs may run on which CPU.
    let mut uses: BTreeMap<u32, Vec<GuestUse>> = BTreeMap::new();
    for g in &guests {
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
    let role = |cpu: u32| {
        if reserved.contains(cpu) {
            Role::Reserved
        } else if irq.contains(cpu) {
            Role::Irq
        } else if cpu == 0 && !policy.host.allow_cpu0 {
            Role::Cpu0
        } else {
            Role::Guests
        }
    };

    let mut nodes = Vec::new();
    for node in host.nodes.values() {
        let mut groups: Vec<GroupView> = Vec::new();
        let mut cores: Vec<&kvmtune_core::host::Core> =
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
                    role: role(cpu),
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
        let guests_mem_kib = guests
            .iter()
            .filter(|g| g.nodes.contains(node.id))
            .map(|g| g.memory_kib / g.nodes.len().max(1) as u64)
            .sum();
        nodes.push(NodeView {
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
            groups,
        });
    }

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
    let vcpus = domain.map_or(guest.vcpu_tids.len() as u32, |d| d.vcpus_max);
    let memory_kib = domain.map_or(0, |d| d.memory_kib);
    let xml_pins = domain.filter(|d| d.pins_explicitly());
    let (source, vcpu_cpus, nodes, emulator) = if let Some(d) = xml_pins {
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
            .unwrap_or_else(|| inputs.host.nodes_of(&pinned));
        (Source::Xml, per_vcpu, nodes, d.emulator_pin.clone())
    } else if let Some(e) = entry {
        (
            Source::Ledger,
            e.vcpus.clone(),
            e.nodes.clone(),
            domain
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
    };
    let cpus = vcpu_cpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
    let threads: Vec<Option<CpuSet>> = match (&inputs.proc_root, guest.qemu_pid) {
        (Some(proc_root), Some(pid)) => (0..vcpus)
            .map(|v| {
                let tid = guest.vcpu_tids.get(&v)?;
                affinity::allowed_cpus(proc_root, pid, *tid).ok()
            })
            .collect(),
        _ => Vec::new(),
    };

    // Conformance: plan the live XML as the hook would.
    let planned = domain.map(|d| plan(inputs.policy, inputs.host, occupancy, d));
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
            conformance(&p, source, &vcpu_cpus, &threads, entry),
        ),
    };

    let opted_out = conformance.iter().any(|c| c.state == Conformance::OptedOut);
    let ledger_agreement = match (entry, source) {
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
    };

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
        conformance,
        ledger: ledger_agreement,
    }
}

/// Rule-by-rule verdicts from the plan of the live XML.
fn conformance(
    p: &Plan,
    source: Source,
    vcpu_cpus: &[CpuSet],
    threads: &[Option<CpuSet>],
    entry: Option<&kvmtune_core::ledger::Entry>,
) -> Vec<Check> {
    let applied = entry.is_some();
    if !p.enabled {
        return vec![Check {
            rule: "-",
            what: "all rules",
            state: Conformance::OptedOut,
            detail: format!("opted out by rule {} (enabled: false)", p.policy_rule),
        }];
    }
    let mut checks: Vec<Check> = ASPECTS
        .iter()
        .map(|(rule, what)| Check {
            rule,
            what,
            state: Conformance::Ok,
            detail: String::new(),
        })
        .collect();
    let mut texts: Vec<Vec<String>> = vec![Vec::new(); ASPECTS.len()];
    for edit in &p.edits {
        let i = aspect_of(&edit.change);
        let state = match edit.change.enforcement() {
            Enforcement::Runtime if applied => Conformance::RuntimeEnforced,
            _ => Conformance::Differs,
        };
        // Differs wins over runtime-enforced within one aspect.
        if checks[i].state != Conformance::Differs {
            checks[i].state = state;
        }
        texts[i].push(edit.reason.text.clone());
    }
    for v in p.violations.iter().filter(|v| v.refuse_always) {
        if let Some(i) = aspect_of_rule(v.rule) {
            checks[i].state = Conformance::Differs;
            texts[i].push(v.what.clone());
        }
    }
    if p.placement.is_none()
        && !applied
        && let Some(why) = &p.no_room
    {
        checks[0].state = Conformance::Differs;
        texts[0].push(format!("no placement: {why}"));
    }
    // What was enforced at runtime is what the ledger recorded, not what a plan
    // made now would choose: describe that, and check the threads are there.
    if let Some(entry) = entry {
        if checks[0].state == Conformance::RuntimeEnforced {
            let pins: Vec<String> = entry
                .vcpus
                .iter()
                .enumerate()
                .map(|(v, s)| format!("{v}→{s}"))
                .collect();
            texts[0] = vec![format!("applied at start: vCPU→CPU {}", pins.join(" "))];
            if source == Source::Ledger {
                let off: Vec<String> = threads
                    .iter()
                    .enumerate()
                    .filter_map(|(v, t)| {
                        let t = t.as_ref()?;
                        let want = vcpu_cpus.get(v)?;
                        (t != want).then(|| format!("vCPU {v} runs on {t}, ledger says {want}"))
                    })
                    .collect();
                if !off.is_empty() {
                    checks[0].state = Conformance::Differs;
                    texts[0] = off;
                } else if !threads.is_empty() && threads.iter().all(Option::is_some) {
                    texts[0][0].push_str("; threads agree");
                }
            }
        }
        if checks[1].state == Conformance::RuntimeEnforced {
            texts[1] = vec![format!("applied at start: memory node(s) {}", entry.nodes)];
        }
        if checks[2].state == Conformance::RuntimeEnforced {
            texts[2] = vec![match &entry.emulator {
                Some(e) => format!("applied at start: emulator threads on CPUs {e}"),
                None => "applied at start".to_string(),
            }];
        }
    }
    for note in &p.notes {
        if let Some(i) = aspect_of_rule(note.rule)
            && checks[i].state == Conformance::Ok
        {
            texts[i].push(note.text.clone());
        }
    }
    for (check, text) in checks.iter_mut().zip(texts) {
        check.detail = text.join("; ");
    }
    checks
}

// ---------------------------------------------------------------- rendering

/// ANSI styles, or nothing.
struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

const GUEST_COLORS: [&str; 6] = ["36", "34", "35", "96", "94", "95"];

/// The picture, `color` = with ANSI colours.
pub fn render(status: &Status, color: bool) -> String {
    let paint = Paint { on: color };
    let mut out = String::new();
    let guest_color: BTreeMap<&str, &str> = status
        .guests
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.as_str(), GUEST_COLORS[i % GUEST_COLORS.len()]))
        .collect();
    let _ = writeln!(
        out,
        "{} — {}; policy {}",
        paint.wrap("1", "host"),
        status.host.summary,
        status.host.policy
    );
    let _ = writeln!(
        out,
        "reserved CPUs {}, IRQ CPUs {}",
        or_dash(&status.host.reserved_cpus),
        or_dash(&status.host.irq_cpus)
    );

    // Thread cells are padded to one width so the cores line up.
    let cell = |t: &ThreadView| -> (String, String) {
        let mut plain = format!("{:>3} ", t.cpu);
        let mut coloured = plain.clone();
        let mut labels: Vec<(String, &str)> = Vec::new();
        match t.role {
            Role::Reserved => labels.push(("reserved".into(), "33")),
            Role::Irq => labels.push(("IRQ".into(), "35")),
            Role::Cpu0 => labels.push(("host".into(), "33")),
            Role::Guests if t.guests.is_empty() => labels.push(("free".into(), "32")),
            Role::Guests => {}
        }
        for u in &t.guests {
            let warn = t.role != Role::Guests;
            let text = format!(
                "{}:v{}{}",
                short(&u.guest),
                u.vcpus,
                if warn { "!" } else { "" }
            );
            labels.push((
                text,
                if warn {
                    "31;1"
                } else {
                    guest_color.get(u.guest.as_str()).copied().unwrap_or("36")
                },
            ));
        }
        let joined_plain: Vec<String> = labels.iter().map(|(l, _)| l.clone()).collect();
        let joined_col: Vec<String> = labels.iter().map(|(l, c)| paint.wrap(c, l)).collect();
        // vCPU lists use commas; several guests on one CPU are spaced apart.
        plain.push_str(&joined_plain.join(" "));
        coloured.push_str(&joined_col.join(" "));
        (plain, coloured)
    };
    let width = status
        .host
        .nodes
        .iter()
        .flat_map(|n| &n.groups)
        .flat_map(|g| &g.cores)
        .flat_map(|c| &c.threads)
        .map(|t| cell(t).0.chars().count())
        .max()
        .unwrap_or(8)
        .min(40);

    for node in &status.host.nodes {
        let _ = writeln!(out);
        let mut line = paint.wrap("1", &format!("NUMA node {}", node.id));
        match (node.mem_total_kib, node.mem_free_kib) {
            (Some(t), Some(f)) => {
                let _ = write!(line, "  memory {} free of {}", human_kib(f), human_kib(t));
            }
            (Some(t), None) => {
                let _ = write!(line, "  memory {}", human_kib(t));
            }
            _ => line.push_str("  memory unknown"),
        }
        if node.guests_mem_kib > 0 {
            let _ = write!(line, ", guests {}", human_kib(node.guests_mem_kib));
        }
        if node.hugepages.is_empty() {
            line.push_str("  huge pages: none");
        } else {
            let pages: Vec<String> = node
                .hugepages
                .iter()
                .map(|h| {
                    format!(
                        "{} {} used/{} free",
                        page_size(h.size_kib),
                        h.total.saturating_sub(h.free),
                        h.free
                    )
                })
                .collect();
            let _ = write!(line, "  huge pages {}", pages.join(", "));
        }
        let _ = writeln!(out, "{line}");
        if node.groups.is_empty() {
            let _ = writeln!(out, "└─ (no CPUs)");
        }
        for (gi, group) in node.groups.iter().enumerate() {
            let last_group = gi + 1 == node.groups.len();
            let label = match group.kind {
                "l3" => format!("L3 {}", group.cpus),
                _ => format!("socket {} (L3 unknown) {}", group.socket, group.cpus),
            };
            let _ = writeln!(out, "{}─ {label}", if last_group { "└" } else { "├" });
            let pad = if last_group { "   " } else { "│  " };
            for (ci, core) in group.cores.iter().enumerate() {
                let branch = if ci + 1 == group.cores.len() {
                    "└"
                } else {
                    "├"
                };
                let mut row = format!("{pad}{branch}─ core {:<7}", core.cpus.to_string());
                for t in &core.threads {
                    let (plain, coloured) = cell(t);
                    let fill = width.saturating_sub(plain.chars().count());
                    let _ = write!(row, " {coloured}{}", " ".repeat(fill));
                }
                let _ = writeln!(out, "{}", row.trim_end());
            }
        }
    }

    let _ = writeln!(
        out,
        "\n{}: {} = CPU0, kept for the host; {} = host.reserved_cpus; {} = IRQ CPUs; {} = no guest; {} = vCPUs of guest NAME may run here (! = on a CPU guests should not get)",
        paint.wrap("1", "legend"),
        paint.wrap("33", "host"),
        paint.wrap("33", "reserved"),
        paint.wrap("35", "IRQ"),
        paint.wrap("32", "free"),
        paint.wrap("36", "NAME:vN"),
    );
    let _ = writeln!(out);
    let ledger = &status.ledger;
    let agree = if ledger.agrees {
        paint.wrap("32", "agrees with libvirt")
    } else {
        paint.wrap("31;1", "DISAGREES with libvirt")
    };
    let _ = writeln!(
        out,
        "{} ({} running); ledger {} ({}, {} entr{}) {agree}",
        paint.wrap("1", "guests"),
        status.guests.len(),
        ledger.path.display(),
        ledger.file,
        ledger.entries,
        if ledger.entries == 1 { "y" } else { "ies" }
    );
    for name in &ledger.stale {
        let _ = writeln!(
            out,
            "  {}",
            paint.wrap(
                "31",
                &format!("stale ledger entry: {} (not running)", sanitize(name))
            )
        );
    }
    for name in &ledger.starting {
        let _ = writeln!(out, "  starting: {} (claimed at prepare)", sanitize(name));
    }
    if status.guests.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in &status.guests {
        let colour = guest_color.get(g.name.as_str()).copied().unwrap_or("36");
        let _ = writeln!(
            out,
            "  {}  pid {}  {} vCPU{}  {}  rule {}",
            paint.wrap(&format!("1;{colour}"), &sanitize(&g.name)),
            g.pid.map_or("?".to_string(), |p| p.to_string()),
            g.vcpus,
            if g.vcpus == 1 { "" } else { "s" },
            human_kib(g.memory_kib),
            if g.policy_rule.is_empty() {
                "?"
            } else {
                &g.policy_rule
            }
        );
        let placement = match g.source {
            Source::None => "unpinned (vCPUs float over every CPU)".to_string(),
            source => {
                let pins: Vec<String> = g
                    .vcpu_cpus
                    .iter()
                    .enumerate()
                    .map(|(v, s)| format!("{v}→{s}"))
                    .collect();
                format!(
                    "vCPU→CPU {}; memory node(s) {}; emulator {} ({})",
                    pins.join(" "),
                    or_dash(&g.nodes),
                    g.emulator
                        .as_ref()
                        .map_or("unpinned".to_string(), ToString::to_string),
                    if source == Source::Xml {
                        "pinned by the XML"
                    } else {
                        "applied by the hook at start"
                    }
                )
            }
        };
        let _ = writeln!(out, "    placement  {placement}");
        let ledger_text = if g.ledger.agrees {
            paint.wrap("32", &g.ledger.detail)
        } else {
            paint.wrap("31", &g.ledger.detail)
        };
        let _ = writeln!(out, "    ledger     {ledger_text}");
        for c in &g.conformance {
            let (word, code) = match c.state {
                Conformance::Ok => ("ok", "32"),
                Conformance::RuntimeEnforced => ("runtime-enforced", "36"),
                Conformance::Differs => ("differs", "31;1"),
                Conformance::OptedOut => ("opted out", "33"),
                Conformance::Unknown => ("unknown", "33"),
            };
            let padded = format!("{word:<16}");
            let detail = if c.detail.is_empty() {
                String::new()
            } else {
                format!(" {}", c.detail)
            };
            let _ = writeln!(
                out,
                "    {:<4}{:<21}{}{}",
                c.rule,
                c.what,
                paint.wrap(code, &padded),
                detail
            )
            .map(|_| ());
        }
    }
    if status.guests.iter().any(|g| {
        g.conformance
            .iter()
            .any(|c| c.state == Conformance::Differs)
    }) {
        let _ = writeln!(
            out,
            "  fix 'differs': kvmtune apply GUEST, then shut the guest down and start it"
        );
    }
    // Trailing spaces from padding are noise when piped.
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn or_dash(set: &CpuSet) -> String {
    if set.is_empty() {
        "none".to_string()
    } else {
        set.to_string()
    }
}

/// Guest names in the picture: sanitized, at most 20 characters.
fn short(name: &str) -> String {
    let clean = sanitize(name);
    if clean.chars().count() > 20 {
        format!("{}…", clean.chars().take(19).collect::<String>())
    } else {
        clean
    }
}

fn page_size(kib: u64) -> String {
    match kib {
        1_048_576 => "1G".into(),
        2048 => "2M".into(),
        k if k % 1024 == 0 => format!("{}M", k / 1024),
        k => format!("{k}K"),
    }
}

/// `23.5 GiB`, `512 MiB`, `64 KiB`.
pub fn human_kib(kib: u64) -> String {
    const MIB: u64 = 1024;
    const GIB: u64 = 1024 * 1024;
    if kib >= GIB {
        format!("{:.1} GiB", kib as f64 / GIB as f64)
    } else if kib >= MIB {
        format!("{} MiB", kib / MIB)
    } else {
        format!("{kib} KiB")
    }
}

// ---------------------------------------------------------------- CLI door

/// Whether to colour: `--color`, `NO_COLOR` and whether stdout is a terminal.
pub fn use_color(when: ColorWhen) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal()
        }
    }
}

/// Reads the ledger file: None = absent, Some(None) = present but unparsable.
pub fn read_ledger(run_dir: &Path) -> Option<Option<Ledger>> {
    let path = run_dir.join("ledger.json");
    if std::fs::symlink_metadata(&path).is_err() {
        return None;
    }
    Some(ledger::read_unlocked(run_dir))
}

/// `kvmtune status`.
pub fn run_status(args: &StatusArgs) -> Result<ExitCode> {
    let policy = cli::load_policy(args.sources.policy.as_deref())?;
    let host = cli::read_host(&args.sources.host_root)?;
    let env = kvmtune_sys::roots::Roots::from_process_env();
    let proc_root = std::env::var_os("KVMTUNE_PROC_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| args.sources.host_root.join("proc"));
    let inputs = Inputs {
        policy: &policy,
        host: &host,
        ledger_path: env.paths.run_dir.join("ledger.json"),
        ledger: read_ledger(&env.paths.run_dir),
        live: runstate::running(&env.paths.libvirt_run_dir),
        proc_root: Some(proc_root),
        now: ledger::now(),
    };
    let status = build(&inputs);
    let text = if args.json {
        serde_json::to_string_pretty(&status)? + "\n"
    } else {
        render(&status, use_color(args.color))
    };
    crate::output::print_stdout(&text)?;
    Ok(ExitCode::from(exit::OK))
}

#[cfg(test)]
mod tests;
