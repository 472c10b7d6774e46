//! What `status` reads back from a running guest, compared with what was applied to
//! it: per aspect (vCPU threads, emulator threads, iothreads, cgroup cpus, cgroup
//! mems, memory policy) one [`Readback`] — applied and verified, not enforced at
//! runtime (and why), drifted (expected X, found Y), or not read back. Pure: the
//! caller reads the threads' `Cpus_allowed_list` and the cgroup's effective sets
//! into an [`Observed`] (`kvmtune_sys::affinity::observe`); [`classify`] sorts a
//! QEMU's threads by role as the hook does at `started`; [`readback`] decides.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::domain::Domain;
use crate::ledger::{Entry, EntryState};
use crate::policy::MemoryMode;

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

/// One aspect of what runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aspect {
    VcpuThreads,
    EmulatorThreads,
    Iothreads,
    CgroupCpus,
    CgroupMems,
    MemoryPolicy,
}

impl Aspect {
    /// How the text output names it.
    pub fn label(self) -> &'static str {
        match self {
            Aspect::VcpuThreads => "vCPU threads",
            Aspect::EmulatorThreads => "emulator threads",
            Aspect::Iothreads => "iothreads",
            Aspect::CgroupCpus => "cgroup cpus",
            Aspect::CgroupMems => "cgroup mems",
            Aspect::MemoryPolicy => "memory policy",
        }
    }

    /// How JSON and the metrics name it (`vcpu-threads`, …).
    pub fn id(self) -> &'static str {
        match self {
            Aspect::VcpuThreads => "vcpu-threads",
            Aspect::EmulatorThreads => "emulator-threads",
            Aspect::Iothreads => "iothreads",
            Aspect::CgroupCpus => "cgroup-cpus",
            Aspect::CgroupMems => "cgroup-mems",
            Aspect::MemoryPolicy => "memory-policy",
        }
    }
}

/// The verdict on one aspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Applied (by libvirt from the XML, or by the hook at start) and read back as such.
    Verified,
    /// Nothing holds it at runtime; `detail` says why.
    NotEnforced,
    /// What runs is not what was applied: see `drifts`.
    Drifted,
    /// Could not be read (no QEMU pid, threads gone); `detail` says why.
    Unread,
}

/// One place where what runs differs from what was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// `vCPU 1`, `thread 305 (worker)`, `iothread 1`, `cgroup vcpu0`.
    pub what: String,
    pub expected: CpuSet,
    /// `true`: `found` must contain `expected` (a cgroup may allow more than the
    /// claim); `false`: it must equal it.
    pub at_least: bool,
    pub found: CpuSet,
}

/// One aspect as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readback {
    pub aspect: Aspect,
    pub state: State,
    /// What was verified, why it is not enforced or not read; for a drift, the
    /// drifts in words.
    pub detail: String,
    pub drifts: Vec<Drift>,
}

impl Readback {
    fn new(aspect: Aspect, state: State, detail: impl Into<String>) -> Readback {
        Readback {
            aspect,
            state,
            detail: detail.into(),
            drifts: Vec::new(),
        }
    }

    fn drifted(aspect: Aspect, drifts: Vec<Drift>) -> Readback {
        let detail = drifts
            .iter()
            .map(|d| {
                format!(
                    "expected {}{}, found {} ({})",
                    if d.at_least { "at least " } else { "" },
                    show(&d.expected),
                    show(&d.found),
                    d.what
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Readback {
            aspect,
            state: State::Drifted,
            detail,
            drifts,
        }
    }

    /// The verdict in words: `applied and verified: …`, `not enforced at runtime
    /// (…)`, `drifted: expected X, found Y (…)`, `not read back (…)`.
    pub fn sentence(&self) -> String {
        match self.state {
            State::Verified => format!("applied and verified: {}", self.detail),
            State::NotEnforced => format!("not enforced at runtime ({})", self.detail),
            State::Drifted => format!("drifted: {}", self.detail),
            State::Unread => format!("not read back ({})", self.detail),
        }
    }
}

fn show(set: &CpuSet) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.to_string()
    }
}

// ---------------------------------------------------------------- what was read

/// One QEMU thread as read from /proc.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadRead {
    pub tid: u32,
    /// Its `comm` (`CPU 0/KVM`, `IO iothread1`, `worker`…), empty when unread.
    pub name: String,
    /// Its `Cpus_allowed_list`; `None` when it could not be read (exited meanwhile).
    pub cpus: Option<CpuSet>,
}

/// The effective CPUs and memory nodes of one cgroup (`None` where unreadable).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupSets {
    pub cpus: Option<CpuSet>,
    pub mems: Option<CpuSet>,
}

/// libvirt's cpuset cgroup of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupRead {
    /// The guest's cgroup directory, for the text.
    pub dir: String,
    pub own: CgroupSets,
    /// Its sub-cgroups by name: `emulator`, `vcpuN`, `iothreadN`.
    pub children: BTreeMap<String, CgroupSets>,
}

/// What was read of one running guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// `Cpus_allowed_list` of each vCPU thread by vCPU number (`None`: no thread id
    /// known or unreadable).
    pub vcpus: Vec<Option<CpuSet>>,
    /// The QEMU threads that are neither vCPUs nor iothreads: the emulator threads.
    pub emulator: Vec<ThreadRead>,
    /// iothreads by iothread id.
    pub iothreads: BTreeMap<u32, ThreadRead>,
    /// Why QEMU's thread list (`/proc/PID/task`) could not be read, if it could not.
    pub tasks_error: Option<String>,
    /// libvirt's cpuset cgroup for the guest; `None` when there is none.
    pub cgroup: Option<CgroupRead>,
}

impl Observed {
    /// Only the vCPU threads were read.
    pub fn vcpus_only(vcpus: Vec<Option<CpuSet>>) -> Observed {
        Observed {
            vcpus,
            ..Observed::default()
        }
    }
}

/// A QEMU's threads by role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles {
    /// vCPU number → thread id.
    pub vcpus: BTreeMap<u32, u32>,
    /// iothread id → thread id.
    pub iothreads: BTreeMap<u32, u32>,
    /// Every other thread: the emulator threads.
    pub others: Vec<u32>,
}

/// Sorts `threads` (tid, `comm`) as the hook's `started` does: the status file's
/// vCPU and iothread ids first; when it lists none, QEMU's thread names (`CPU
/// N/KVM`, `CPU N/TCG`, `IO iothreadN`); the rest are emulator threads.
pub fn classify(
    vcpu_tids: &BTreeMap<u32, u32>,
    iothread_tids: &BTreeMap<u32, u32>,
    threads: &[(u32, String)],
) -> Roles {
    let mut roles = Roles {
        vcpus: vcpu_tids.clone(),
        iothreads: iothread_tids.clone(),
        others: Vec::new(),
    };
    for (tid, comm) in threads {
        if vcpu_tids.values().any(|t| t == tid) || iothread_tids.values().any(|t| t == tid) {
            continue;
        }
        if let Some(n) = vcpu_number(comm)
            && vcpu_tids.is_empty()
        {
            roles.vcpus.insert(n, *tid);
        } else if let Some(id) = comm
            .strip_prefix("IO iothread")
            .and_then(|n| n.parse().ok())
            && iothread_tids.is_empty()
        {
            roles.iothreads.insert(id, *tid);
        } else {
            roles.others.push(*tid);
        }
    }
    roles
}

/// `CPU 3/KVM` → 3.
fn vcpu_number(comm: &str) -> Option<u32> {
    let rest = comm.strip_prefix("CPU ")?;
    let (n, accel) = rest.split_once('/')?;
    (!accel.is_empty()).then_some(())?;
    n.parse().ok()
}

// ---------------------------------------------------------------- deciding

/// What was applied to a guest, as `status` knows it.
pub struct Applied<'a> {
    /// Where the vCPU placement comes from.
    pub source: Source,
    /// Host CPUs of each vCPU (XML pins or the ledger claim).
    pub vcpu_cpus: &'a [CpuSet],
    /// Memory nodes of the placement.
    pub nodes: &'a CpuSet,
    /// The guest's ledger claim.
    pub entry: Option<&'a Entry>,
    /// The live XML.
    pub domain: Option<&'a Domain>,
    /// The policy's memory mode for this guest (`None`: opted out or no plan).
    pub memory_mode: Option<MemoryMode>,
}

impl Applied<'_> {
    /// The hook's `started` applied the claim (a running, non-floating entry).
    fn by_hook(&self) -> bool {
        self.entry
            .is_some_and(|e| e.state == EntryState::Running && !e.floating)
    }

    /// Claimed at prepare, `started` not seen yet.
    fn starting(&self) -> bool {
        self.entry.is_some_and(|e| e.state == EntryState::Prepared)
    }

    /// Where the emulator threads should be, and who put them there. The claim
    /// when the hook applied it, else the XML's `<emulatorpin>` (libvirt). A second
    /// set is also accepted: the XML's own pin, which the hook keeps when it
    /// differs from the claim and breaks nothing.
    fn emulator(&self) -> Option<(CpuSet, Option<CpuSet>, &'static str)> {
        let xml = self.domain.and_then(|d| d.emulator_pin.clone());
        let claim = self
            .entry
            .filter(|_| self.by_hook())
            .and_then(|e| e.emulator.clone());
        match (claim, xml) {
            (Some(c), Some(x)) if c != x => Some((c, Some(x), "the hook at start")),
            // The hook leaves threads the XML pins to libvirt.
            (Some(c), Some(_)) => Some((c, None, "libvirt, from <emulatorpin>")),
            (Some(c), None) => Some((c, None, "the hook at start")),
            (None, Some(x)) => Some((x, None, "libvirt, from <emulatorpin>")),
            (None, None) => None,
        }
    }
}

/// The verdicts on every aspect that applies to the guest. `observed` is `None`
/// when nothing could be read (no QEMU pid).
pub fn readback(applied: &Applied<'_>, observed: Option<&Observed>) -> Vec<Readback> {
    let Some(observed) = observed else {
        return vec![Readback::new(
            Aspect::VcpuThreads,
            State::Unread,
            "libvirt's status file names no QEMU pid",
        )];
    };
    let mut out = vec![
        vcpu_threads(applied, observed),
        emulator_threads(applied, observed),
    ];
    if let Some(io) = iothreads(applied, observed) {
        out.push(io);
    }
    if let Some(cg) = &observed.cgroup {
        out.push(cgroup_cpus(applied, cg));
        out.push(cgroup_mems(applied, cg));
    }
    out.push(memory_policy(applied, observed.cgroup.as_ref()));
    out
}

const NOBODY: &str = "nobody pinned this guest: no XML pins, no ledger claim";
const STARTING: &str = "claimed at prepare; the hook's started stage has not run (yet)";

fn vcpu_threads(applied: &Applied<'_>, observed: &Observed) -> Readback {
    let aspect = Aspect::VcpuThreads;
    let who = match applied.source {
        Source::None => return Readback::new(aspect, State::NotEnforced, NOBODY),
        Source::Ledger if applied.starting() => {
            return Readback::new(aspect, State::NotEnforced, STARTING);
        }
        Source::Ledger => "the hook at start",
        Source::Xml => "libvirt, from the XML pins",
    };
    let mut drifts = Vec::new();
    let mut unread = Vec::new();
    for (v, want) in applied.vcpu_cpus.iter().enumerate() {
        match observed.vcpus.get(v).cloned().flatten() {
            Some(found) if &found != want => drifts.push(Drift {
                what: format!("vCPU {v}"),
                expected: want.clone(),
                at_least: false,
                found,
            }),
            Some(_) => {}
            None => unread.push(v.to_string()),
        }
    }
    if !drifts.is_empty() {
        return Readback::drifted(aspect, drifts);
    }
    if !unread.is_empty() {
        return Readback::new(
            aspect,
            State::Unread,
            format!("no readable thread for vCPU(s) {}", unread.join(",")),
        );
    }
    let pins: Vec<String> = applied
        .vcpu_cpus
        .iter()
        .enumerate()
        .map(|(v, s)| format!("{v}→{s}"))
        .collect();
    Readback::new(
        aspect,
        State::Verified,
        format!("vCPU→CPU {} (by {who})", pins.join(" ")),
    )
}

fn emulator_threads(applied: &Applied<'_>, observed: &Observed) -> Readback {
    let aspect = Aspect::EmulatorThreads;
    let Some((want, also, who)) = applied.emulator() else {
        let why = if applied.starting() {
            STARTING
        } else if applied.source == Source::None {
            NOBODY
        } else {
            "no emulator placement: no <emulatorpin>, none in the ledger claim"
        };
        return Readback::new(aspect, State::NotEnforced, why);
    };
    if let Some(why) = &observed.tasks_error {
        return Readback::new(aspect, State::Unread, why.clone());
    }
    let mut drifts = Vec::new();
    let mut read = 0;
    for t in &observed.emulator {
        let Some(found) = &t.cpus else {
            continue; // exited between listing and reading
        };
        read += 1;
        if found != &want && Some(found) != also.as_ref() {
            drifts.push(Drift {
                what: thread_label(t),
                expected: want.clone(),
                at_least: false,
                found: found.clone(),
            });
        }
    }
    if !drifts.is_empty() {
        return Readback::drifted(aspect, drifts);
    }
    if read == 0 {
        return Readback::new(aspect, State::Unread, "no readable emulator thread");
    }
    let on_xml = also
        .as_ref()
        .is_some_and(|x| observed.emulator.iter().any(|t| t.cpus.as_ref() == Some(x)));
    let detail = match also {
        Some(x) if on_xml => format!(
            "{read} thread(s) on CPUs {x} (libvirt, from <emulatorpin>; the claim says {want})"
        ),
        _ => format!("{read} thread(s) on CPUs {want} (by {who})"),
    };
    Readback::new(aspect, State::Verified, detail)
}

fn thread_label(t: &ThreadRead) -> String {
    if t.name.is_empty() {
        format!("thread {}", t.tid)
    } else {
        format!("thread {} {}", t.tid, t.name)
    }
}

fn iothreads(applied: &Applied<'_>, observed: &Observed) -> Option<Readback> {
    let aspect = Aspect::Iothreads;
    let ids: Vec<u32> = applied
        .domain
        .map(|d| d.iothread_ids.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(observed.iothreads.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return None;
    }
    let claim = applied
        .entry
        .filter(|_| applied.by_hook())
        .and_then(|e| e.emulator.clone());
    let mut drifts = Vec::new();
    let (mut verified, mut loose, mut unread) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids {
        // The XML's pin, unless kvmtune wrote it (pins mark) and the hook
        // applied its claim over it.
        let pin = applied
            .domain
            .filter(|d| claim.is_none() || !d.iothread_pin_by_kvmtune(id))
            .and_then(|d| d.iothread_pins.get(&id))
            .cloned();
        let Some(want) = pin.or_else(|| claim.clone()) else {
            loose.push(id.to_string());
            continue;
        };
        match observed.iothreads.get(&id).and_then(|t| t.cpus.clone()) {
            Some(found) if found != want => drifts.push(Drift {
                what: format!("iothread {id}"),
                expected: want,
                at_least: false,
                found,
            }),
            Some(_) => verified.push(format!("{id}→{want}")),
            None => unread.push(id.to_string()),
        }
    }
    Some(if !drifts.is_empty() {
        Readback::drifted(aspect, drifts)
    } else if !unread.is_empty() {
        Readback::new(
            aspect,
            State::Unread,
            format!("no readable thread for iothread(s) {}", unread.join(",")),
        )
    } else if verified.is_empty() {
        let why = if applied.starting() {
            STARTING.to_string()
        } else {
            format!(
                "iothread(s) {}: no <iothreadpin>, no ledger claim",
                loose.join(",")
            )
        };
        Readback::new(aspect, State::NotEnforced, why)
    } else {
        let mut detail = format!("iothread→CPU {}", verified.join(" "));
        if !loose.is_empty() {
            detail.push_str(&format!(
                "; iothread(s) {} unpinned (no <iothreadpin>, no claim)",
                loose.join(",")
            ));
        }
        Readback::new(aspect, State::Verified, detail)
    })
}

/// The guest's cgroup (and its vCPU and emulator sub-cgroups) must allow the CPUs
/// claimed for its threads, or the kernel keeps them off those CPUs.
fn cgroup_cpus(applied: &Applied<'_>, cg: &CgroupRead) -> Readback {
    let aspect = Aspect::CgroupCpus;
    if applied.source == Source::None {
        return Readback::new(aspect, State::NotEnforced, NOBODY);
    }
    let emulator = applied.emulator().map(|(want, _, _)| want);
    let mut wanted: Vec<(String, CpuSet, Option<&CpuSet>)> = Vec::new();
    let all = applied
        .vcpu_cpus
        .iter()
        .chain(emulator.as_ref())
        .fold(CpuSet::new(), |a, s| a.union(s));
    wanted.push(("cgroup".into(), all.clone(), cg.own.cpus.as_ref()));
    for (v, want) in applied.vcpu_cpus.iter().enumerate() {
        let name = format!("vcpu{v}");
        if let Some(child) = cg.children.get(&name) {
            wanted.push((format!("cgroup {name}"), want.clone(), child.cpus.as_ref()));
        }
    }
    if let (Some(want), Some(child)) = (&emulator, cg.children.get("emulator")) {
        wanted.push(("cgroup emulator".into(), want.clone(), child.cpus.as_ref()));
    }
    let mut drifts = Vec::new();
    let mut exact = true;
    let mut read = 0;
    for (what, want, found) in &wanted {
        let Some(found) = found else { continue };
        read += 1;
        if !want.is_subset(found) {
            drifts.push(Drift {
                what: what.clone(),
                expected: want.clone(),
                at_least: true,
                found: (*found).clone(),
            });
        }
        exact &= want == *found;
    }
    if !drifts.is_empty() {
        return Readback::drifted(aspect, drifts);
    }
    if read == 0 {
        return Readback::new(
            aspect,
            State::Unread,
            format!("no effective cpus readable in {}", cg.dir),
        );
    }
    if exact {
        Readback::new(
            aspect,
            State::Verified,
            format!("{} allows exactly the claimed CPUs {all}", cg.dir),
        )
    } else {
        let found = cg.own.cpus.clone().unwrap_or_default();
        Readback::new(
            aspect,
            State::NotEnforced,
            format!(
                "the cgroup allows CPUs {}, a superset of the claim {all}: thread affinity holds the placement, not the cgroup",
                show(&found)
            ),
        )
    }
}

/// Which memory binding libvirt or the hook applied: (mode, nodes, who), `None`
/// when none binds.
fn binding(applied: &Applied<'_>) -> Result<(String, CpuSet, &'static str), String> {
    if let Some(m) = applied.domain.and_then(|d| d.numa_memory.as_ref()) {
        // libvirt's default mode is strict.
        let mode = m.mode.clone().unwrap_or_else(|| "strict".into());
        let nodes = m.nodeset.clone().unwrap_or_else(|| applied.nodes.clone());
        return match mode.as_str() {
            "strict" | "restrictive" => Ok((mode, nodes, "libvirt, from <numatune>")),
            other => Err(format!(
                "<numatune> mode {other} on node(s) {}: libvirt set it as QEMU's memory policy at start; it is not a binding and is not read back",
                show(&nodes)
            )),
        };
    }
    match applied.memory_mode {
        None => Err("no memory placement: opted out, or no plan".into()),
        Some(MemoryMode::Off) => Err("memory_mode: off".into()),
        Some(MemoryMode::Strict | MemoryMode::Restrictive) if applied.starting() => {
            Err(STARTING.into())
        }
        Some(mode @ (MemoryMode::Strict | MemoryMode::Restrictive)) if applied.by_hook() => Ok((
            if mode == MemoryMode::Strict {
                "strict".into()
            } else {
                "restrictive".into()
            },
            applied.nodes.clone(),
            "the hook at start",
        )),
        Some(MemoryMode::Strict | MemoryMode::Restrictive) => {
            Err("strict memory needs a ledger claim or <numatune>; this guest has neither".into())
        }
        // The hook's one-time move (kvmtune move-memory) binds nothing either.
        Some(MemoryMode::Preferred) => Err(format!(
            "mode preferred, node(s) {}: nothing binds it; {}memory follows the pinned vCPUs by first touch, and may come from other nodes when these are full",
            show(applied.nodes),
            if applied.by_hook() {
                "what QEMU allocated elsewhere before the vCPUs were pinned was moved there once at start; later "
            } else {
                ""
            }
        )),
        Some(MemoryMode::Interleave) => Err(format!(
            "mode interleave over node(s) {}: the hook does not set it (it only moves memory allocated elsewhere before start onto these nodes, once); kvmtune apply writes it into the definition",
            show(applied.nodes)
        )),
    }
}

/// The memory nodes of the guest's cgroup and its sub-cgroups: for a strict
/// binding they must be the claimed nodes.
fn cgroup_mems(applied: &Applied<'_>, cg: &CgroupRead) -> Readback {
    let aspect = Aspect::CgroupMems;
    let own = cg.own.mems.clone();
    match binding(applied) {
        Err(_) => Readback::new(
            aspect,
            State::NotEnforced,
            format!(
                "the cgroup allows node(s) {}: no strict memory mode, so no cgroup binding",
                own.as_ref().map_or("?".to_string(), show)
            ),
        ),
        Ok((mode, nodes, who)) => {
            let mut drifts = Vec::new();
            let mut read = 0;
            let dirs = std::iter::once(("cgroup".to_string(), &cg.own)).chain(
                cg.children
                    .iter()
                    .map(|(name, sets)| (format!("cgroup {name}"), sets)),
            );
            for (what, sets) in dirs {
                let Some(found) = &sets.mems else { continue };
                read += 1;
                if found != &nodes {
                    drifts.push(Drift {
                        what,
                        expected: nodes.clone(),
                        at_least: false,
                        found: found.clone(),
                    });
                }
            }
            if !drifts.is_empty() {
                Readback::drifted(aspect, drifts)
            } else if read == 0 {
                Readback::new(
                    aspect,
                    State::Unread,
                    format!("no effective mems readable in {}", cg.dir),
                )
            } else {
                Readback::new(
                    aspect,
                    State::Verified,
                    format!(
                        "mode {mode}: node(s) {nodes} in {} and its {} sub-cgroup(s) (by {who})",
                        cg.dir,
                        read - 1
                    ),
                )
            }
        }
    }
}

fn memory_policy(applied: &Applied<'_>, cg: Option<&CgroupRead>) -> Readback {
    let aspect = Aspect::MemoryPolicy;
    match (binding(applied), cg) {
        (Err(why), _) => Readback::new(aspect, State::NotEnforced, why),
        (Ok((mode, nodes, _)), None) => Readback::new(
            aspect,
            State::NotEnforced,
            format!(
                "mode {mode} on node(s) {nodes}, but no cpuset cgroup was found for the guest: nothing binds its memory"
            ),
        ),
        (Ok((mode, nodes, who)), Some(cg)) => {
            let mems = cgroup_mems(applied, cg);
            match mems.state {
                State::Verified => Readback::new(
                    aspect,
                    State::Verified,
                    format!(
                        "mode {mode}: memory bound to node(s) {nodes} by the cgroup's cpuset.mems (by {who})"
                    ),
                ),
                _ => Readback { aspect, ..mems },
            }
        }
    }
}

#[cfg(test)]
mod tests;
