//! What a plan is: the changes to a domain XML with their reasons, the violations
//! and notes, the [`Plan`] of one guest, and the [`Planner`] that the placement
//! (in `plan`) and the XML-level rules (in `rules`) add to. Kept apart from both so
//! that each depends on this, not on the other.

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::domain::Domain;
use crate::host::Host;
use crate::pins_mark::Mark;
use crate::placement::{Placement, Pool};
use crate::policy::{DiskCache, DiskIo, MemoryMode, Policy, Settings};

/// One change to the domain XML. Indexes count elements in document order
/// (`devices/disk`, `devices/interface`) of the XML the plan was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// `<vcpu cpuset='...'>` = the union of all pins, and in `<cputune>` one
    /// `<vcpupin vcpu='N' cpuset='...'/>` per vCPU (existing vcpupins replaced).
    VcpuPins { cpuset: CpuSet, pins: Vec<VcpuPin> },
    /// `<cputune><emulatorpin cpuset='...'/>`.
    EmulatorPin { cpuset: CpuSet },
    /// The pins mark in `<metadata>` ([`crate::pins_mark`]): which of the
    /// definition's pins are kvmtune's placement rather than the admin's.
    PinsMark { mark: Mark },
    /// `<cputune><iothreadpin iothread='N' cpuset='...'/>` per iothread.
    IothreadPins { pins: Vec<IothreadPin> },
    /// `<numatune><memory mode='...' nodeset='...'/>` (created or replaced; other
    /// numatune children such as `<memnode>` are kept).
    NumaMemory { mode: MemoryMode, nodeset: CpuSet },
    /// Set `cache`/`io` on the `<driver>` of the disk at `index` (created if missing,
    /// with `name='qemu'` and the type libvirt would use).
    DiskDriver {
        index: usize,
        target: String,
        cache: Option<DiskCache>,
        io: Option<DiskIo>,
    },
    /// `<memoryBacking><nosharepages/>`.
    NoSharePages,
    /// `<memoryBacking><hugepages><page size='N' unit='KiB'/></hugepages>`.
    HugePages { size_kib: u64 },
    /// On the `<interface>` at `index`: `<driver name='vhost'>` and/or `queues='N'`.
    InterfaceDriver {
        index: usize,
        target: String,
        vhost: bool,
        queues: Option<u32>,
    },
    /// `<cpu mode='host-passthrough'>` → `<cpu mode='host-model'>`. Dropped, because
    /// libvirt refuses them with host-model: `check`, `migratable`, `<model>`,
    /// `<vendor>`, and `<cache>`/`<maxphysaddr>` in `passthrough` mode. Kept:
    /// `<topology>`, `<numa>`, `<feature>`, other `<cache>`/`<maxphysaddr>` modes.
    CpuHostModel,
    /// A guest NUMA topology mirroring the host nodes the vCPUs span: in `<cpu>`,
    /// `<numa>` with one `<cell id cpus memory unit='KiB'/>` per cell, and in
    /// `<numatune>` one `<memnode cellid mode nodeset/>` per cell (both created
    /// when missing; existing cells and memnodes with these ids are updated).
    GuestNuma { cells: Vec<GuestCell> },
}

/// One guest NUMA cell and the host node its memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestCell {
    pub id: u32,
    /// Guest vCPU ids in the cell.
    pub vcpus: CpuSet,
    pub memory_kib: u64,
    /// The host NUMA node the cell's vCPUs run on and its memory comes from.
    pub host_node: u32,
    pub mode: MemoryMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcpuPin {
    pub vcpu: u32,
    pub cpuset: CpuSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IothreadPin {
    pub iothread: u32,
    pub cpuset: CpuSet,
}

/// The rule of TUNING-RULES.md an edit or note serves, and the policy rule (a
/// `rules:` entry or `defaults`) that chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// "1.1", "1.2", "2.1", ...
    pub rule: &'static str,
    pub policy_rule: String,
    pub text: String,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[rule {} via {}] {}",
            self.rule, self.policy_rule, self.text
        )
    }
}

/// A change and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edit {
    pub change: Change,
    pub reason: Reason,
}

/// How a planned change takes effect on a guest that is being started from XML
/// that lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// The hook applies it to the running QEMU at `started` (thread affinity).
    Runtime,
    /// Only a changed definition can bring it (disk cache, memory backing, CPU
    /// mode, NIC driver): unmet at start = a violation.
    XmlOnly,
    /// Not bound at runtime, and not a violation: for `preferred` (and
    /// `interleave`) memory the hook has what QEMU already allocated off the
    /// claimed nodes moved there once at `started` (a detached `kvmtune
    /// move-memory`, `migrate_pages(2)`); later allocations follow the pinned
    /// vCPUs by the kernel's first touch and may fall back to other nodes.
    /// `kvmtune apply` writes the `<numatune>` into the definition.
    FirstTouch,
    /// kvmtune's own bookkeeping in `<metadata>` (the pins mark): nothing to
    /// enforce, no violation; `kvmtune apply` writes it with the pins.
    Record,
}

impl Enforcement {
    /// How `plan --explain` says a change takes effect.
    pub fn how(self) -> &'static str {
        match self {
            Enforcement::Runtime => "hook applies at start",
            Enforcement::XmlOnly => "needs kvmtune apply",
            Enforcement::Record => "kvmtune's own record, written with the pins by kvmtune apply",
            Enforcement::FirstTouch => {
                "not bound at runtime: at start the hook has memory already allocated elsewhere moved to these node(s) once, in the background; later allocations follow the pinned vCPUs by first touch and may fall back to other nodes; kvmtune apply writes it"
            }
        }
    }
}

impl Change {
    pub fn enforcement(&self) -> Enforcement {
        match self {
            Change::VcpuPins { .. } | Change::EmulatorPin { .. } | Change::IothreadPins { .. } => {
                Enforcement::Runtime
            }
            // Strict modes are applied through the cgroup's cpuset.mems at
            // started; preferred memory is moved there once, then follows the
            // pinned vCPUs by first touch.
            Change::NumaMemory { mode, .. } => match mode {
                MemoryMode::Strict | MemoryMode::Restrictive => Enforcement::Runtime,
                _ => Enforcement::FirstTouch,
            },
            Change::DiskDriver { .. }
            | Change::NoSharePages
            | Change::HugePages { .. }
            | Change::InterfaceDriver { .. }
            | Change::CpuHostModel
            // The guest sees NUMA nodes: a guest ABI change.
            | Change::GuestNuma { .. } => Enforcement::XmlOnly,
            Change::PinsMark { .. } => Enforcement::Record,
        }
    }

    /// Whether the change may be made while restoring a saved guest or accepting
    /// an incoming migration (host-side settings only; the guest ABI must not move).
    pub fn is_guest_abi_safe(&self) -> bool {
        matches!(
            self,
            Change::VcpuPins { .. }
                | Change::EmulatorPin { .. }
                | Change::IothreadPins { .. }
                | Change::NumaMemory { .. }
                | Change::DiskDriver { .. }
                | Change::PinsMark { .. }
        )
    }
}

/// A rule the guest's XML does not meet and that only a changed definition can
/// fix: the hook's `on_violation` decides what happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub what: String,
    /// `true` when the policy refuses such guests outright (`cpu_mode: refuse`).
    pub refuse_always: bool,
}

/// Something the plan left alone on purpose, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub rule: &'static str,
    pub text: String,
}

/// Everything kvmtune would do to one guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub guest: String,
    /// The policy rule that chose the settings (`defaults` when none matched).
    pub policy_rule: String,
    /// `false`: the guest is opted out (`enabled: false`); nothing else is planned.
    pub enabled: bool,
    /// Where the vCPUs go (kept pins included); None when pinning is off or nothing fits.
    pub placement: Option<Placement>,
    /// `true` when the placement is the guest's own explicit pinning, kept.
    pub kept_existing_pins: bool,
    /// Host CPUs for emulator threads and iothreads.
    pub emulator_cpus: Option<CpuSet>,
    /// Why the guest's own pool had no room (the hook decides what to do with it).
    pub no_room: Option<String>,
    /// `true` when a dedicated guest was placed on shared CPUs for lack of room.
    pub fell_back_to_shared: bool,
    /// The CPU pool the guest was placed in.
    pub pool: Pool,
    /// The moves of running shared guests' vCPUs (within their node) that made
    /// room for the placement, and their new claims ([`crate::repack`]); None
    /// when the guest fitted without.
    pub repack: Option<crate::repack::Repacked>,
    pub edits: Vec<Edit>,
    pub notes: Vec<Note>,
    pub violations: Vec<Violation>,
}

impl Plan {
    /// The changes alone, in order.
    pub fn changes(&self) -> Vec<Change> {
        self.edits.iter().map(|e| e.change.clone()).collect()
    }

    /// Only the changes allowed at restore/migrate (guest ABI unchanged).
    pub fn abi_safe_changes(&self) -> Vec<Change> {
        self.edits
            .iter()
            .map(|e| e.change.clone())
            .filter(Change::is_guest_abi_safe)
            .collect()
    }

    /// Human explanation: placement, each edit with its reason, each note.
    pub fn explain(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "guest {}: settings from {}",
            self.guest, self.policy_rule
        );
        if !self.enabled {
            let _ = writeln!(out, "  opted out (enabled: false): nothing changed");
            return out;
        }
        match (&self.placement, &self.no_room) {
            (Some(p), _) if self.kept_existing_pins => {
                let _ = writeln!(
                    out,
                    "  placement: kept the guest's own pinning: CPUs {} (nodes {})",
                    p.cpus, p.nodes
                );
            }
            (Some(p), _) => {
                let _ = writeln!(out, "  placement: {} — {}", p.level, p.why);
                let pins: Vec<String> = p
                    .vcpus
                    .iter()
                    .enumerate()
                    .map(|(v, s)| format!("{v}→{s}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "    vCPU→CPU: {}; memory nodes {}",
                    pins.join(" "),
                    p.nodes
                );
            }
            (None, Some(why)) => {
                let _ = writeln!(out, "  placement: none: {why}");
            }
            (None, None) => {
                let _ = writeln!(out, "  placement: not managed (pin_vcpus: false)");
            }
        }
        if let Some(e) = &self.emulator_cpus {
            let _ = writeln!(out, "    emulator/iothreads: CPUs {e}");
        }
        for m in self.repack.iter().flat_map(|r| &r.moves) {
            let _ = writeln!(out, "  move: {m} (hook applies at start)");
        }
        if self.edits.is_empty() {
            let _ = writeln!(out, "  changes: none, the XML already conforms");
        }
        // How each change reaches a guest started from the current XML: the hook
        // applies placement at start; the rest needs the definition changed
        // (`kvmtune apply`), and until then is a violation at start.
        for edit in &self.edits {
            let how = edit.change.enforcement().how();
            let _ = writeln!(out, "  change: {} ({how})", edit.reason);
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: [rule {}] {}", note.rule, note.text);
        }
        // Violations without a change of their own (the policy refuses the guest).
        for v in self.violations.iter().filter(|v| v.refuse_always) {
            let _ = writeln!(out, "  refused: [rule {}] {}", v.rule, v.what);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    PolicyDoesNotFitHost(String),
}

/// The plan being made for one guest, and what it is made from. The XML-level
/// rules' steps (crate::rules) add to it through [`Planner::edit`] and
/// [`Planner::note`].
pub(crate) struct Planner<'a> {
    pub(crate) policy: &'a Policy,
    pub(crate) host: &'a Host,
    pub(crate) domain: &'a Domain,
    pub(crate) settings: &'a Settings,
    pub(crate) plan: &'a mut Plan,
}

impl Planner<'_> {
    fn reason(&self, rule: &'static str, text: String) -> Reason {
        Reason {
            rule,
            policy_rule: self.plan.policy_rule.clone(),
            text,
        }
    }

    /// Adds a change; one that only a changed definition can bring is also a
    /// violation at start.
    pub(crate) fn edit(&mut self, rule: &'static str, change: Change, text: String) {
        if change.enforcement() == Enforcement::XmlOnly {
            self.plan.violations.push(Violation {
                rule,
                what: text.clone(),
                refuse_always: false,
            });
        }
        let reason = self.reason(rule, text);
        self.plan.edits.push(Edit { change, reason });
    }

    pub(crate) fn note(&mut self, rule: &'static str, text: String) {
        self.plan.notes.push(Note { rule, text });
    }
}
