//! The pure planner: policy + host + occupancy + domain → placement and edits, each
//! edit with the rule of TUNING-RULES.md and the policy rule that chose it.
//! No I/O happens here; every caller (CLI, hook, apply) gets the same answer.
//! Placement (rules 1.1–1.3) is planned here; the XML-level rules' steps live
//! in their modules under [`crate::rules`], which this planner runs in order.

pub(crate) use crate::plan_model::Planner;

/// The CPU sets placement works with on this host.
struct CpuSets {
    /// CPUs guests may use (not reserved, IRQ or CPU0; within the policy's nodes).
    eligible: CpuSet,
    /// Online CPUs guests never get.
    forbidden: CpuSet,
    /// Where `emulator: housekeeping` puts emulator threads.
    housekeeping: CpuSet,
}
pub use crate::plan_model::{
    Change, Edit, Enforcement, GuestCell, IothreadPin, Note, Plan, PlanError, Reason, VcpuPin,
    Violation,
};

use std::collections::BTreeMap;

use crate::cpuset::CpuSet;
use crate::domain::Domain;
use crate::host::Host;
use crate::pins_mark::Mark;
use crate::placement::{
    Level, NoRoom, Occupancy, Placement, Pool, Request, eligible_cpus, nodes_of, place,
};
use crate::policy::{
    DedicatedFallback, EmulatorPlacement, ExistingPins, GuestFacts, MemoryMode, Policy,
};
use crate::repack::{Movable, repack};

/// What policy rules match on, taken from a domain.
pub fn guest_facts(domain: &Domain) -> GuestFacts<'_> {
    GuestFacts {
        name: &domain.name,
        vcpus: domain.vcpus_max,
        memory_kib: domain.memory_kib,
        kvmtune_rule: domain.kvmtune_rule.as_deref(),
        nova_flavor: domain.nova_flavor.as_deref(),
    }
}

/// Computes the plan for `domain`. Pure: everything it needs is passed in. No
/// running guest is moved to make room (see [`plan_repacking`]).
pub fn plan(
    policy: &Policy,
    host: &Host,
    occupancy: &Occupancy,
    domain: &Domain,
) -> Result<Plan, PlanError> {
    plan_repacking(policy, host, occupancy, &BTreeMap::new(), domain)
}

/// [`plan`], and when the guest does not fit and `host.repack` is on, moves of
/// the `movable` running shared guests' vCPUs within their nodes that make it fit
/// ([`crate::repack`]; at most `host.repack_max_moves`), in [`Plan::repack`].
pub fn plan_repacking(
    policy: &Policy,
    host: &Host,
    occupancy: &Occupancy,
    movable: &BTreeMap<String, Movable>,
    domain: &Domain,
) -> Result<Plan, PlanError> {
    let host_nodes: CpuSet = host.nodes.keys().copied().collect();
    if let Some(first) = policy
        .check_against(&host.online, &host_nodes)
        .into_iter()
        .next()
    {
        return Err(PlanError::PolicyDoesNotFitHost(first.to_string()));
    }
    let selection = policy.select(&guest_facts(domain));
    let mut plan = Plan {
        guest: domain.name.clone(),
        policy_rule: selection.rule_name.to_string(),
        enabled: selection.settings.is_some(),
        placement: None,
        kept_existing_pins: false,
        emulator_cpus: None,
        no_room: None,
        fell_back_to_shared: false,
        pool: Pool::Shared,
        repack: None,
        edits: Vec::new(),
        notes: Vec::new(),
        violations: Vec::new(),
    };
    let Some(settings) = selection.settings else {
        return Ok(plan);
    };
    plan.pool = settings.pool;
    let mut planner = Planner {
        policy,
        host,
        domain,
        settings,
        plan: &mut plan,
    };
    planner.placement(occupancy, movable);
    // Disks, memory backing, guest NUMA cells, NICs, CPU mode: see crate::rules.
    crate::rules::plan_xml_rules(&mut planner);
    Ok(plan)
}

impl Planner<'_> {
    /// Rules 1.1–1.3: where the vCPUs, the emulator threads and the iothreads go,
    /// and the memory binding that follows them.
    fn placement(&mut self, occupancy: &Occupancy, movable: &BTreeMap<String, Movable>) {
        if !self.settings.pin_vcpus {
            return;
        }
        let sets = self.cpu_sets();
        let kept = self.domain.pins_explicitly() && self.keeps_own_pins();
        if self.domain.pins_by_kvmtune() && self.settings.existing_pins == ExistingPins::Keep {
            self.note(
                "1.3",
                "the definition's vCPU pins are the ones kvmtune wrote (pins mark in <metadata>): kvmtune places this guest, preferring those CPUs, and may move it; change the pins to make them the guest's own".into(),
            );
        }
        let placement = if kept {
            self.kept_placement(&sets.forbidden)
        } else {
            match self.fresh_placement(occupancy, movable, &sets.eligible) {
                Some(p) => p,
                None => return,
            }
        };
        if !self.plan.kept_existing_pins {
            self.vcpu_pin_edit(&placement, &sets.forbidden);
        }
        let emulator = self.emulator_cpus(&placement, &sets, occupancy);
        self.emulator_edits(&emulator);
        self.pins_mark(&placement, &emulator);
        self.plan.emulator_cpus = Some(emulator);
        // Memory binding (1.2).
        self.numatune(&placement);
        self.memfree_note(occupancy, &placement);
        self.plan.placement = Some(placement);
    }

    /// The CPUs guests may use, those they never get, and the housekeeping CPUs.
    fn cpu_sets(&self) -> CpuSets {
        let host_settings = &self.policy.host;
        let irq = self.policy.irq_cpus(self.host);
        let eligible = eligible_cpus(
            self.host,
            &host_settings.reserved_cpus,
            &irq,
            host_settings.allow_cpu0,
            self.settings.nodes.as_ref(),
        );
        CpuSets {
            forbidden: self.host.online.difference(&eligible),
            eligible,
            housekeeping: crate::admission::housekeeping_cpus(self.policy, self.host),
        }
    }

    /// Whether the guest's own pins are kept (`existing_pins: keep`): never the
    /// pins kvmtune itself wrote ([`Domain::pins_by_kvmtune`]).
    fn keeps_own_pins(&self) -> bool {
        self.settings.existing_pins == ExistingPins::Keep && !self.domain.pins_by_kvmtune()
    }

    /// The guest's own explicit pinning, kept (`existing_pins: keep`).
    fn kept_placement(&mut self, forbidden: &CpuSet) -> Placement {
        let vcpus: Vec<CpuSet> = (0..self.domain.vcpus_max)
            .map(|v| self.domain.pinned_cpus_of(v).cloned().unwrap_or_default())
            .collect();
        let cpus = self.domain.pinned_cpus();
        let bad = cpus.intersection(forbidden);
        if !bad.is_empty() {
            self.note(
                "1.3",
                format!(
                    "the guest's own pinning uses CPUs {bad} that guests should not get (reserved, IRQ or CPU0); kept because existing_pins: keep"
                ),
            );
        }
        self.plan.kept_existing_pins = true;
        Placement {
            level: Level::Host,
            nodes: nodes_of(self.host, &cpus),
            why: "the guest pins its vCPUs itself (existing_pins: keep)".into(),
            vcpus,
            cpus,
        }
    }

    /// The eligible CPUs of the guest's pool (Nova-style `host.shared_cpus` /
    /// `host.dedicated_cpus`).
    fn pool_eligible(&self, eligible: &CpuSet, pool: Pool) -> CpuSet {
        match self.policy.host.pool_cpus(pool) {
            Some(set) => eligible.intersection(set),
            None => eligible.clone(),
        }
    }

    /// What the placement engine is asked for this guest.
    fn request(&self, eligible: &CpuSet) -> Request {
        let host_settings = &self.policy.host;
        Request {
            vcpus: self.domain.vcpus_max,
            memory_kib: self.domain.memory_kib,
            pool: self.settings.pool,
            eligible: self.pool_eligible(eligible, self.settings.pool),
            cpu_allocation_ratio: f64::from(self.settings.cpu_allocation_ratio),
            thread_policy: self.settings.thread_policy,
            memory_strict: matches!(
                self.settings.memory_mode,
                MemoryMode::Strict | MemoryMode::Restrictive
            ),
            // A guest already backed by huge pages needs free pages of its
            // size on the node (one that only may get them is decided later,
            // from the chosen node's free pages: rule 3.2).
            hugepage_kib: self.domain.memory_backing.hugepages.then(|| {
                self.domain
                    .memory_backing
                    .hugepage_sizes_kib
                    .first()
                    .copied()
                    .unwrap_or(self.settings.hugepage_size_kib)
            }),
            memory_reserve_kib: host_settings.reserved_memory_per_node_kib,
            max_nodes: self.settings.max_nodes,
        }
    }

    /// A placement made now: where the running guest already is, else a new one,
    /// else (dedicated, no room) the shared fallback. None: no placement at all
    /// (the hook refuses the guest; `no_room` says why).
    fn fresh_placement(
        &mut self,
        occupancy: &Occupancy,
        movable: &BTreeMap<String, Movable>,
        eligible: &CpuSet,
    ) -> Option<Placement> {
        let request = self.request(eligible);
        let others = occupancy.without(&self.domain.name);
        // A running guest keeps the CPUs it runs on (its own claim), while they
        // still suit the policy: `apply` then writes where it already is, and a
        // restart lands there again. No one else may hold them exclusively.
        let own = occupancy.guests.get(&self.domain.name).filter(|claim| {
            let cpus = claim.cpus();
            claim.vcpus.len() == self.domain.vcpus_max as usize
                && claim.pool == self.settings.pool
                && claim.vcpus.iter().all(|s| !s.is_empty())
                && cpus.is_subset(&request.eligible)
                && !cpus.intersects(&others.dedicated_cpus())
                && (claim.pool == Pool::Shared || !cpus.intersects(&others.all_cpus()))
        });
        let fresh = match own {
            Some(claim) => Ok(crate::placement::describe(
                self.host,
                claim.vcpus.clone(),
                "kept where the running guest already is".into(),
            )),
            None => match self.where_kvmtune_pinned_it(&others, &request) {
                Some(p) => Ok(p),
                None => self.place_node_local_first(&others, &request),
            },
        };
        match fresh {
            Ok(p) => Some(p),
            Err(NoRoom(why)) => match self.repacked(&others, movable, &request) {
                Some(p) => Some(p),
                None => self.fall_back(why, request, &others, eligible),
            },
        }
    }

    /// The definition's pins when kvmtune wrote them and the placement engine
    /// would still admit the guest there, on exactly those CPUs (eligible, memory
    /// and ratio room, no one else's dedicated CPU): a restart lands where the
    /// definition says, so it keeps telling the truth. None: place afresh.
    fn where_kvmtune_pinned_it(&self, others: &Occupancy, request: &Request) -> Option<Placement> {
        if !self.domain.pins_by_kvmtune() {
            return None;
        }
        let marked = self.domain.pinned_cpus();
        if !marked.is_subset(&request.eligible) {
            return None;
        }
        // Memory must fit the nodes there outright: a guest whose memory
        // needed other nodes than its CPUs' is placed afresh (as it was then).
        let there = Request {
            eligible: marked.clone(),
            memory_strict: true,
            ..request.clone()
        };
        let placed = place(self.host, others, &there)
            .ok()
            .filter(|p| p.cpus == marked)?;
        // The engine's nodes (memory may need more nodes than the CPUs') and its
        // vCPU layout, unless the definition's is one distinct CPU per vCPU on
        // those same CPUs (then nothing needs rewriting). A definition that
        // stacks vCPUs, or a vCPU added since, gets the engine's layout: it
        // respects the pool (1:1 for dedicated) and the allocation ratio.
        let own: Vec<CpuSet> = (0..self.domain.vcpus_max)
            .map(|v| self.domain.pinned_cpus_of(v).cloned().unwrap_or_default())
            .collect();
        let distinct = own.iter().all(|s| s.len() == 1)
            && own.iter().fold(CpuSet::new(), |a, s| a.union(s)).len() == own.len()
            && placed.vcpus.iter().all(|s| s.len() == 1)
            && own.len() == placed.vcpus.len();
        Some(Placement {
            vcpus: if distinct { own } else { placed.vcpus.clone() },
            why: "kept where kvmtune placed it before (the definition's pins, marked as kvmtune's)"
                .into(),
            ..placed
        })
    }

    /// No room as the host is: room made by moving running shared guests' vCPUs
    /// within their nodes, when the policy allows it (`host.repack`).
    fn repacked(
        &mut self,
        others: &Occupancy,
        movable: &BTreeMap<String, Movable>,
        request: &Request,
    ) -> Option<Placement> {
        let host_settings = &self.policy.host;
        if !host_settings.repack || movable.is_empty() {
            return None;
        }
        let mut movable = movable.clone();
        movable.remove(&self.domain.name);
        let done = repack(
            self.host,
            others,
            request,
            &movable,
            host_settings.repack_max_moves as usize,
        )?;
        let placement = done.placement.clone();
        self.plan.repack = Some(done);
        Some(placement)
    }

    /// No room in the guest's own pool: the eligible shared CPUs (still local,
    /// never a dedicated or forbidden CPU) when the policy allows it.
    fn fall_back(
        &mut self,
        why: String,
        request: Request,
        others: &Occupancy,
        eligible: &CpuSet,
    ) -> Option<Placement> {
        let line =
            crate::admission::no_room_line(request.vcpus, request.pool, &request.eligible, others);
        self.plan.no_room = Some(format!("{why} ({line})"));
        // With no placement at all the hook refuses: never unpinned.
        let fallback = self.settings.pool == Pool::Dedicated
            && self.settings.dedicated_fallback == DedicatedFallback::Shared;
        if !fallback {
            return None;
        }
        let shared = Request {
            pool: Pool::Shared,
            eligible: self
                .pool_eligible(eligible, Pool::Shared)
                .difference(&others.dedicated_cpus()),
            ..request
        };
        match place(self.host, others, &shared) {
            Ok(p) => {
                self.note(
                    "1.1",
                    format!(
                        "{why}: placed in the shared pool instead (dedicated_fallback: shared)"
                    ),
                );
                self.plan.pool = Pool::Shared;
                self.plan.fell_back_to_shared = true;
                Some(p)
            }
            Err(NoRoom(shared_why)) => {
                self.plan.no_room = Some(format!(
                    "{why}; no shared CPU either: {shared_why} ({line})"
                ));
                None
            }
        }
    }

    /// Pins each vCPU where the placement put it, unless the XML already says so.
    fn vcpu_pin_edit(&mut self, placement: &Placement, forbidden: &CpuSet) {
        if self.domain.vcpus_current < self.domain.vcpus_max {
            self.note(
                "1.1",
                format!(
                    "placed for all {} vCPUs (only {} online now) so hot-plugged vCPUs stay local",
                    self.domain.vcpus_max, self.domain.vcpus_current
                ),
            );
        }
        let pins: Vec<VcpuPin> = placement
            .vcpus
            .iter()
            .enumerate()
            .map(|(v, s)| VcpuPin {
                vcpu: v as u32,
                cpuset: s.clone(),
            })
            .collect();
        let already = self.domain.vcpu_cpuset.as_ref() == Some(&placement.cpus)
            && pins
                .iter()
                .all(|p| self.domain.vcpu_pins.get(&p.vcpu) == Some(&p.cpuset))
            && self.domain.vcpu_pins.len() == pins.len();
        if !already {
            let text = format!(
                "pin vCPUs within {}: {} (never CPU0, reserved or IRQ CPUs {})",
                placement.level,
                placement.cpus,
                if forbidden.is_empty() {
                    "-".to_string()
                } else {
                    forbidden.to_string()
                }
            );
            self.edit(
                if placement.level <= Level::L3 {
                    "1.1"
                } else {
                    "1.2"
                },
                Change::VcpuPins {
                    cpuset: placement.cpus.clone(),
                    pins,
                },
                text,
            );
        }
    }

    /// Where the emulator threads (and iothreads) go, per `emulator:`.
    fn emulator_cpus(
        &mut self,
        placement: &Placement,
        sets: &CpuSets,
        occupancy: &Occupancy,
    ) -> CpuSet {
        match self.settings.emulator {
            EmulatorPlacement::WithVcpus => placement.cpus.clone(),
            EmulatorPlacement::Housekeeping if !sets.housekeeping.is_empty() => {
                sets.housekeeping.clone()
            }
            EmulatorPlacement::Housekeeping => {
                self.note("1.3", "emulator: housekeeping, but the host has no housekeeping CPU; emulator threads stay with the vCPUs".into());
                placement.cpus.clone()
            }
            EmulatorPlacement::NodeShared => {
                let shared = node_shared_cpus(
                    self.host,
                    placement,
                    &sets.eligible,
                    &occupancy.without(&self.domain.name),
                    self.plan.pool,
                );
                if shared.is_empty() {
                    self.note("1.1", "emulator: node-shared, but the guest's nodes have no shared CPU left; emulator threads stay with the vCPUs".into());
                    placement.cpus.clone()
                } else {
                    shared
                }
            }
        }
    }

    /// The emulator pin and the iothread pins the XML lacks.
    fn emulator_edits(&mut self, emulator: &CpuSet) {
        let keep_own = self.settings.existing_pins == ExistingPins::Keep;
        let keep_emulator = keep_own && !self.domain.emulator_pin_by_kvmtune();
        if !(keep_emulator && self.domain.emulator_pin.is_some())
            && self.domain.emulator_pin.as_ref() != Some(emulator)
        {
            self.edit(
                "1.3",
                Change::EmulatorPin {
                    cpuset: emulator.clone(),
                },
                format!(
                    "emulator threads on CPUs {emulator} (emulator: {})",
                    emulator_name(self.settings.emulator)
                ),
            );
        }
        if !self.domain.iothread_ids.is_empty() {
            let pins: Vec<IothreadPin> = self
                .domain
                .iothread_ids
                .iter()
                .filter(|id| {
                    !(keep_own
                        && self.domain.iothread_pins.contains_key(id)
                        && !self.domain.iothread_pin_by_kvmtune(**id))
                })
                .filter(|id| self.domain.iothread_pins.get(id) != Some(emulator))
                .map(|id| IothreadPin {
                    iothread: *id,
                    cpuset: emulator.clone(),
                })
                .collect();
            if !pins.is_empty() {
                self.edit(
                    "1.3",
                    Change::IothreadPins { pins },
                    format!("iothreads on CPUs {emulator}, with the emulator threads"),
                );
            }
        }
    }

    /// The pins mark ([`crate::pins_mark`]) the conformed definition carries:
    /// every pin it has that is kvmtune's, written now or marked before (the
    /// admin's own pins, kept, are left out). No edit when the definition's
    /// mark already says so, or when no pin is kvmtune's.
    fn pins_mark(&mut self, placement: &Placement, emulator: &CpuSet) {
        let mut written_vcpus = false;
        let mut written_emulator = false;
        let mut written_iothreads = Vec::new();
        for edit in &self.plan.edits {
            match &edit.change {
                Change::VcpuPins { .. } => written_vcpus = true,
                Change::EmulatorPin { .. } => written_emulator = true,
                Change::IothreadPins { pins } => {
                    written_iothreads.extend(pins.iter().map(|p| (p.iothread, p.cpuset.clone())));
                }
                _ => {}
            }
        }
        let domain = self.domain;
        let mut mark = Mark::default();
        if written_vcpus || domain.pins_by_kvmtune() {
            mark.vcpus = (0..).zip(placement.vcpus.iter().cloned()).collect();
        }
        if written_emulator {
            mark.emulator = Some(emulator.clone());
        } else if domain.emulator_pin_by_kvmtune() {
            mark.emulator = domain.emulator_pin.clone();
        }
        for (id, pin) in &domain.iothread_pins {
            if domain.iothread_pin_by_kvmtune(*id) {
                mark.iothreads.insert(*id, pin.clone());
            }
        }
        mark.iothreads.extend(written_iothreads);
        if mark.is_empty() || domain.pins_mark.as_ref() == Some(&mark) {
            return;
        }
        self.edit(
            "1.3",
            Change::PinsMark { mark },
            "record these pins as kvmtune's in <metadata> (kvmtune-pins), so that kvmtune keeps placing and may move the guest under existing_pins: keep".into(),
        );
    }

    /// Places on CPUs that a NUMA node lists first; the CPUs no node lists
    /// ([`Host::nodeless`]) only when nothing else fits, with a note (their
    /// memory is never local).
    fn place_node_local_first(
        &mut self,
        others: &Occupancy,
        request: &Request,
    ) -> Result<Placement, NoRoom> {
        let nodeless = request.eligible.intersection(&self.host.nodeless);
        if nodeless.is_empty() {
            return place(self.host, others, request);
        }
        let local = Request {
            eligible: request.eligible.difference(&nodeless),
            ..request.clone()
        };
        match place(self.host, others, &local) {
            Ok(p) => Ok(p),
            Err(_) => {
                let p = place(self.host, others, request)?;
                let used = p.cpus.intersection(&nodeless);
                if !used.is_empty() {
                    self.note(
                        "1.2",
                        format!("CPUs {used} belong to no NUMA node (their node is offline): not node-local; used because nothing else fits"),
                    );
                }
                Ok(p)
            }
        }
    }

    /// MemFree is no admission figure (page cache fills it), only a sanity check:
    /// a guest not yet running whose nodes have less MemFree than its memory gets
    /// a note, since the kernel must first reclaim cache (or the nodes really are
    /// short of memory outside kvmtune's accounting).
    fn memfree_note(&mut self, occupancy: &Occupancy, placement: &Placement) {
        // A guest already running has its memory; huge pages are not MemFree.
        if occupancy.guests.contains_key(&self.domain.name)
            || placement.nodes.is_empty()
            || self.domain.memory_backing.hugepages
        {
            return;
        }
        let mut free = 0u64;
        for id in placement.nodes.iter() {
            match self.host.nodes.get(&id).and_then(|n| n.mem_free_kib) {
                Some(kib) => free = free.saturating_add(kib),
                None => return,
            }
        }
        if free < self.domain.memory_kib {
            self.note(
                "1.2",
                format!(
                    "node(s) {} have {} MiB MemFree, less than the guest's {} MiB: admitted by committed memory (MemTotal − reserve − guests); the kernel reclaims page cache for the rest, or the host runs memory kvmtune does not account",
                    placement.nodes,
                    free / 1024,
                    self.domain.memory_kib / 1024
                ),
            );
        }
    }

    fn numatune(&mut self, placement: &Placement) {
        let mode = self.settings.memory_mode;
        if mode == MemoryMode::Off || placement.nodes.is_empty() {
            return;
        }
        if self.plan.kept_existing_pins && self.domain.numa_memory.is_some() {
            return;
        }
        if self.domain.numa_memnodes > 0 {
            self.note(
                "1.2",
                "the guest binds its NUMA cells itself (<memnode>); its <numatune> is kept".into(),
            );
            return;
        }
        let (mode, text) = if mode == MemoryMode::Preferred && placement.nodes.len() > 1 {
            (
                MemoryMode::Interleave,
                format!(
                    "memory interleaved over nodes {} (the vCPUs span them; 'preferred' takes one node)",
                    placement.nodes
                ),
            )
        } else {
            (
                mode,
                format!(
                    "memory from node(s) {} where the vCPUs run, mode {}",
                    placement.nodes,
                    mode_name(mode)
                ),
            )
        };
        let current = self.domain.numa_memory.as_ref();
        let same = current.is_some_and(|m| {
            m.mode.as_deref().unwrap_or("strict") == mode_name(mode)
                && m.nodeset.as_ref() == Some(&placement.nodes)
                && m.placement.as_deref() != Some("auto")
        });
        if !same {
            self.edit(
                "1.2",
                Change::NumaMemory {
                    mode,
                    nodeset: placement.nodes.clone(),
                },
                text,
            );
        }
    }

    /// A guest whose vCPUs span several host nodes gets guest NUMA cells mirroring
    /// them (one per node, in node order) and a `<memnode>` binding each cell's
    /// memory to its node, so the guest OS keeps its memory next to its vCPUs.
    pub(crate) fn guest_numa(&mut self) {
        let mode = self.settings.memory_mode;
        let Some(placement) = self.plan.placement.as_ref() else {
            return;
        };
        if mode == MemoryMode::Off
            || placement.nodes.len() < 2
            || self.plan.kept_existing_pins
            || self.domain.guest_numa_cells > 0
            || self.domain.numa_memnodes > 0
        {
            return;
        }
        // Each vCPU in the cell of the node its first CPU is on.
        let mut by_node: std::collections::BTreeMap<u32, CpuSet> = Default::default();
        for (vcpu, set) in placement.vcpus.iter().enumerate() {
            let node = set.first().and_then(|cpu| {
                self.host
                    .nodes
                    .values()
                    .find(|n| n.cpus.contains(cpu))
                    .map(|n| n.id)
            });
            if let Some(node) = node {
                by_node.entry(node).or_default().insert(vcpu as u32);
            }
        }
        let total_vcpus: u64 = by_node.values().map(|s| s.len() as u64).sum();
        if by_node.len() < 2 || total_vcpus != placement.vcpus.len() as u64 {
            return;
        }
        // Whole MiB per cell (whole huge pages when huge pages back the guest:
        // QEMU refuses a backend that is not a multiple of its page size), in
        // proportion to the cell's vCPUs; the last cell takes the remainder.
        let granule = self.memory_granule_kib();
        let total = self.domain.memory_kib;
        let granules = total / granule;
        let count = by_node.len();
        let mut cells = Vec::with_capacity(count);
        let mut given = 0u64;
        for (i, (node, vcpus)) in by_node.into_iter().enumerate() {
            let memory_kib = if i + 1 == count {
                total - given
            } else {
                let share = u128::from(granules) * vcpus.len() as u128 / u128::from(total_vcpus);
                u64::try_from(share).unwrap_or(0) * granule
            };
            given += memory_kib;
            cells.push(GuestCell {
                id: i as u32,
                vcpus,
                memory_kib,
                host_node: node,
                mode,
            });
        }
        if cells.iter().any(|c| c.memory_kib == 0) {
            self.note(
                "1.2",
                format!(
                    "no guest NUMA cells: {} KiB of memory is too little to split over nodes {}",
                    total, placement.nodes
                ),
            );
            return;
        }
        let nodes: Vec<String> = cells.iter().map(|c| c.host_node.to_string()).collect();
        let layout: Vec<String> = cells
            .iter()
            .map(|c| {
                format!(
                    "cell {} = vCPUs {} + {} MiB on node {}",
                    c.id,
                    c.vcpus,
                    c.memory_kib / 1024,
                    c.host_node
                )
            })
            .collect();
        let text = format!(
            "guest NUMA topology mirrors host nodes {}: {}; each cell's memory bound to its node (mode {})",
            nodes.join(","),
            layout.join(", "),
            mode_name(mode)
        );
        self.edit("1.2", Change::GuestNuma { cells }, text);
    }

    /// The unit guest NUMA cell sizes are multiples of: the huge page size when
    /// huge pages back the guest (already, or planned), else 1 MiB.
    fn memory_granule_kib(&self) -> u64 {
        let planned = self.plan.edits.iter().find_map(|e| match e.change {
            Change::HugePages { size_kib } => Some(size_kib),
            _ => None,
        });
        let mb = &self.domain.memory_backing;
        let existing = mb.hugepages.then(|| {
            mb.hugepage_sizes_kib
                .iter()
                .copied()
                .max()
                .unwrap_or(self.settings.hugepage_size_kib)
        });
        planned.or(existing).unwrap_or(1024).max(1024)
    }
}

fn emulator_name(e: EmulatorPlacement) -> &'static str {
    match e {
        EmulatorPlacement::WithVcpus => "with-vcpus",
        EmulatorPlacement::Housekeeping => "housekeeping",
        EmulatorPlacement::NodeShared => "node-shared",
    }
}

/// `emulator: node-shared`: the CPUs of the guest's NUMA node(s) that guests may
/// use and no dedicated guest holds; a dedicated guest's own vCPU CPUs excluded.
fn node_shared_cpus(
    host: &Host,
    placement: &Placement,
    eligible: &CpuSet,
    others: &Occupancy,
    pool: Pool,
) -> CpuSet {
    let node_cpus = host
        .nodes
        .values()
        .filter(|n| placement.nodes.contains(n.id))
        .fold(CpuSet::new(), |acc, n| acc.union(&n.cpus));
    let mut shared = node_cpus
        .intersection(eligible)
        .difference(&others.dedicated_cpus());
    if pool == Pool::Dedicated {
        shared = shared.difference(&placement.cpus);
    }
    shared
}

/// libvirt's name for a memory mode.
pub fn mode_name(mode: MemoryMode) -> &'static str {
    match mode {
        MemoryMode::Preferred => "preferred",
        MemoryMode::Strict => "strict",
        MemoryMode::Restrictive => "restrictive",
        MemoryMode::Interleave => "interleave",
        MemoryMode::Off => "off",
    }
}

pub use crate::rules::disk_cache::{cache_name, io_name};
