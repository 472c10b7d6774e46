//! Repacking at admission: when a guest does not fit, moves of running *shared*
//! guests' vCPUs to other CPUs of the **same NUMA node** that make it fit. A move
//! is an affinity change (no memory moves, microseconds), so kvmtune, which owns
//! the runtime affinity of every guest it placed, can make room that a scheduler
//! deciding once cannot, and keep dedicated guests isolated.
//!
//! What a move respects: the moved guest's own eligible CPUs (never a dedicated,
//! CPU0, reserved or IRQ CPU) and `cpu_allocation_ratio`; its vCPUs stay on
//! distinct CPUs; its vCPU stays in the same node (never cross-node); the
//! destination prefers the SMT sibling of the guest's other vCPUs, then its L3
//! group, then CPUs already carrying shared load (idle cores stay whole for
//! dedicated guests), least loaded first. Only guests the caller names
//! [`Movable`] move (kvmtune's own shared placements, running).
//!
//! Bounded work: one node at a time, a few candidate CPU sets per node (the
//! cheapest whole cores and the cheapest CPUs, per L3 group and per node), at most
//! `max_moves` moves, and the new guest's placement is then [`place`]d on the
//! occupancy after the moves, so the result is whatever `place` accepts there.
//! Pure: host, occupancy, request and the movable guests in, moves out.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::admission::{Breach, Candidate, check};
use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::ledger::Entry;
use crate::placement::{Claim, Occupancy, Placement, Pool, Request, ThreadPolicy, place};

/// A running shared guest that repacking may move, with what its moves respect.
#[derive(Debug, Clone, PartialEq)]
pub struct Movable {
    /// Its `cpu_allocation_ratio`: a destination CPU takes at most this many vCPUs.
    pub ratio: f64,
    /// The CPUs its policy lets it use (its pool's eligible CPUs).
    pub eligible: CpuSet,
    /// Its emulator threads' CPUs, when known: moved along when they sit on a CPU
    /// the repacking frees.
    pub emulator: Option<CpuSet>,
    /// Its policy puts its emulator threads on the housekeeping CPUs.
    pub emulator_on_housekeeping: bool,
}

/// One vCPU of a running guest moved within its NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Move {
    pub guest: String,
    pub vcpu: u32,
    pub from: CpuSet,
    pub to: CpuSet,
    /// One sentence: what the move frees and why this destination.
    pub reason: String,
}

impl std::fmt::Display for Move {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest '{}' vCPU {}: CPU {} → {} ({})",
            self.guest, self.vcpu, self.from, self.to, self.reason
        )
    }
}

/// A placement made possible by moves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repacked {
    /// The new guest's placement, on the occupancy after the moves.
    pub placement: Placement,
    pub moves: Vec<Move>,
    /// The moved guests' claims after the moves.
    pub claims: BTreeMap<String, Claim>,
    /// The moved guests' emulator CPUs after the moves, for those whose emulator
    /// threads had to move too.
    pub emulators: BTreeMap<String, CpuSet>,
}

impl Repacked {
    /// `occupancy` with the moved guests' new claims.
    pub fn apply_to(&self, occupancy: &Occupancy) -> Occupancy {
        let mut after = occupancy.clone();
        for (name, claim) in &self.claims {
            after.guests.insert(name.clone(), claim.clone());
        }
        after
    }
}

/// The new guest being admitted with a repacking, as the invariant checks it.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a> {
    pub guest: &'a str,
    pub claim: &'a Claim,
    pub emulator: Option<&'a CpuSet>,
    pub emulator_on_housekeeping: bool,
}

/// The placement invariant ([`crate::admission::check`]) on the result of a
/// repacking: the new guest's claim against everyone after the moves, and every
/// moved guest's new claim (with its new emulator CPUs) against everyone else,
/// the new guest included. `others` = the claims before the moves, without the
/// new guest; `ledger` gives the other guests' emulator CPUs. Each breach with
/// the guest whose claim breaks it; empty = the repacking may be recorded.
pub fn breaches(
    repacked: &Repacked,
    admitted: Admitted<'_>,
    others: &Occupancy,
    movable: &BTreeMap<String, Movable>,
    ledger: &BTreeMap<String, Entry>,
    forbidden: &CpuSet,
) -> Vec<(String, Breach)> {
    let mut after = repacked.apply_to(others);
    after
        .guests
        .insert(admitted.guest.to_string(), admitted.claim.clone());
    // The moved guests' emulator CPUs as they will be.
    let mut ledger = ledger.clone();
    for (name, emulator) in &repacked.emulators {
        if let Some(entry) = ledger.get_mut(name) {
            entry.emulator = Some(emulator.clone());
        }
    }
    let mut out: Vec<(String, Breach)> = check(
        &Candidate {
            guest: admitted.guest,
            claim: admitted.claim,
            emulator: admitted.emulator,
            emulator_on_housekeeping: admitted.emulator_on_housekeeping,
        },
        &after,
        &ledger,
        forbidden,
    )
    .into_iter()
    .map(|b| (admitted.guest.to_string(), b))
    .collect();
    out.extend(moved_breaches(
        &repacked.claims,
        &repacked.emulators,
        &after,
        movable,
        &ledger,
        forbidden,
    ));
    out
}

/// The placement invariant on moved guests: every moved guest's new claim
/// (`claims`, with its new emulator CPUs from `emulators`) against everyone in
/// `after` (the occupancy with the moves made). `ledger` gives the other guests'
/// emulator CPUs. Shared by repacking at admission and `kvmtune rebalance`.
pub fn moved_breaches(
    claims: &BTreeMap<String, Claim>,
    emulators: &BTreeMap<String, CpuSet>,
    after: &Occupancy,
    movable: &BTreeMap<String, Movable>,
    ledger: &BTreeMap<String, Entry>,
    forbidden: &CpuSet,
) -> Vec<(String, Breach)> {
    let mut ledger = ledger.clone();
    for (name, emulator) in emulators {
        if let Some(entry) = ledger.get_mut(name) {
            entry.emulator = Some(emulator.clone());
        }
    }
    let mut out = Vec::new();
    for (name, claim) in claims {
        let emulator = emulators
            .get(name)
            .or_else(|| ledger.get(name).and_then(|e| e.emulator.as_ref()));
        let breaches = check(
            &Candidate {
                guest: name,
                claim,
                emulator,
                emulator_on_housekeeping: movable
                    .get(name)
                    .is_some_and(|m| m.emulator_on_housekeeping),
            },
            after,
            &ledger,
            forbidden,
        );
        out.extend(breaches.into_iter().map(|b| (name.clone(), b)));
    }
    out
}

/// Relocations tried at most while growing one CPU set ([`State::grown`]).
const MAX_GROW_TRIES: usize = 24;

/// Relocations all grown candidates of one admission try at most together: the
/// bound on the search's work when nothing fits.
const MAX_GROW_BUDGET: usize = 96;

/// Candidate CPU sets tried at most per phase, cheapest first: each costs a `place`.
const MAX_CANDIDATES: usize = 4;

/// Moves that make `request` fit on `host`, at most `max_moves`, only of guests
/// in `movable`, each within its NUMA node; None when no such repacking fits it
/// (or `max_moves` is 0). Call it when [`place`] found no room.
pub fn repack(
    host: &Host,
    occupancy: &Occupancy,
    request: &Request,
    movable: &BTreeMap<String, Movable>,
    max_moves: usize,
) -> Option<Repacked> {
    if max_moves == 0 || movable.is_empty() {
        return None;
    }
    let state = State::new(host, occupancy, request, movable);
    // CPU sets worth freeing, cheapest first, in phases that cost more each:
    // within each node the fixed candidates, then the grown ones; then, for a
    // guest no one node can hold after repacking, the same over the whole host
    // (each vCPU still moved within its own node; the guest then spans nodes,
    // as `place` spans them).
    let mut units: Vec<(u32, CpuSet)> = Vec::new();
    for node in host.nodes.values() {
        let usable = node
            .cpus
            .intersection(&request.eligible)
            .difference(&state.dedicated);
        // The guest must fit this one node on distinct CPUs.
        if usable.len() >= state.wanted {
            for unit in node_units(host, &node.cpus, &usable) {
                units.push((node.id, unit));
            }
        }
    }
    let usable = request.eligible.difference(&state.dedicated);
    let phases: [&dyn Fn() -> Vec<Target>; 4] = [
        &|| {
            state.collect(
                units.iter().map(|(n, u)| (Some(*n), state.targets(u))),
                max_moves,
            )
        },
        &|| {
            state.collect(
                units
                    .iter()
                    .map(|(n, u)| (Some(*n), state.grown(u, Some(*n), max_moves))),
                max_moves,
            )
        },
        &|| state.collect(std::iter::once((None, state.targets(&usable))), max_moves),
        &|| {
            state.collect(
                std::iter::once((None, state.grown(&usable, None, max_moves))),
                max_moves,
            )
        },
    ];
    phases
        .iter()
        .find_map(|phase| state.attempt(occupancy, phase(), max_moves))
}

/// Units of one node the guest's CPUs are freed in, smallest first: its L3
/// groups (cut to the node), then the whole node; each cut to `usable`.
fn node_units(host: &Host, node_cpus: &CpuSet, usable: &CpuSet) -> Vec<CpuSet> {
    let mut units: Vec<CpuSet> = Vec::new();
    for group in &host.l3_groups {
        let unit = group.intersection(node_cpus).intersection(usable);
        if !unit.is_empty() && !units.contains(&unit) {
            units.push(unit);
        }
    }
    if !units.contains(usable) {
        units.push(usable.clone());
    }
    units
}

/// A CPU set to free, the moves that takes, and the one node it is in (None:
/// several nodes).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    cost: usize,
    node: Option<u32>,
    cpus: CpuSet,
}

/// One vCPU of a running guest, by guest index into [`State::names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VcpuRef {
    guest: usize,
    vcpu: usize,
}

/// What every candidate is computed from: the load per CPU, the dedicated CPUs,
/// and which vCPUs sit on each CPU.
struct State<'a> {
    host: &'a Host,
    request: &'a Request,
    movable: &'a BTreeMap<String, Movable>,
    wanted: usize,
    load: Vec<f64>,
    dedicated: CpuSet,
    names: Vec<&'a str>,
    claims: Vec<&'a Claim>,
    /// By guest index: a shared guest repacking may move.
    may_move: Vec<bool>,
    on_cpu: Vec<Vec<VcpuRef>>,
    /// By CPU: the moves freeing it for the request takes ([`State::cost`]).
    costs: Vec<Option<usize>>,
    /// Relocations the grown candidates may still try, over the whole search.
    budget: std::cell::Cell<usize>,
}

/// A repacking that frees CPUs of `node`, before `place` accepts it: its
/// moves and the moved claims.
struct Repacking {
    /// The node the guest is placed in; None: wherever `place` puts it.
    node: Option<u32>,
    moves: Vec<Move>,
    claims: BTreeMap<String, Claim>,
}

impl Repacking {
    /// The occupancy after the moves, as far as a placement sees it: within one
    /// node, the guests with a CPU or memory there (the others change neither
    /// its CPUs' load nor its committed memory); moved claims replaced.
    fn view(&self, host: &Host, occupancy: &Occupancy) -> Occupancy {
        let node_cpus = self.node.and_then(|n| host.nodes.get(&n)).map(|n| &n.cpus);
        let guests = occupancy
            .guests
            .iter()
            .filter(|(_, c)| match (self.node, node_cpus) {
                (Some(node), Some(cpus)) => {
                    c.nodes.contains(node) || c.vcpus.iter().any(|s| s.intersects(cpus))
                }
                _ => true,
            })
            .map(|(name, claim)| {
                let claim = self.claims.get(name).unwrap_or(claim);
                (name.clone(), claim.clone())
            })
            .collect();
        Occupancy { guests }
    }
}

impl<'a> State<'a> {
    fn new(
        host: &'a Host,
        occupancy: &'a Occupancy,
        request: &'a Request,
        movable: &'a BTreeMap<String, Movable>,
    ) -> State<'a> {
        let size = host.online.iter().last().map_or(0, |c| c as usize + 1);
        let mut load = vec![0.0f64; size];
        let mut on_cpu: Vec<Vec<VcpuRef>> = vec![Vec::new(); size];
        let mut dedicated = CpuSet::new();
        let mut names = Vec::with_capacity(occupancy.guests.len());
        let mut claims = Vec::with_capacity(occupancy.guests.len());
        let mut may_move = Vec::with_capacity(occupancy.guests.len());
        for (index, (name, claim)) in occupancy.guests.iter().enumerate() {
            names.push(name.as_str());
            claims.push(claim);
            may_move.push(claim.pool == Pool::Shared && movable.contains_key(name));
            for (vcpu, set) in claim.vcpus.iter().enumerate() {
                let share = 1.0 / set.len().max(1) as f64;
                for cpu in set.iter() {
                    if let Some(l) = load.get_mut(cpu as usize) {
                        *l += share;
                    }
                    if let Some(list) = on_cpu.get_mut(cpu as usize) {
                        list.push(VcpuRef { guest: index, vcpu });
                    }
                    if claim.pool == Pool::Dedicated {
                        dedicated.insert(cpu);
                    }
                }
            }
        }
        let mut state = State {
            host,
            request,
            movable,
            wanted: request.vcpus.max(1) as usize,
            load,
            dedicated,
            names,
            claims,
            may_move,
            on_cpu,
            costs: Vec::new(),
            budget: std::cell::Cell::new(MAX_GROW_BUDGET),
        };
        state.costs = (0..size as u32).map(|c| state.cost_now(c)).collect();
        state
    }

    fn load_of(&self, cpu: u32) -> f64 {
        self.load.get(cpu as usize).copied().unwrap_or(0.0)
    }

    fn vcpus_on(&self, cpu: u32) -> &[VcpuRef] {
        self.on_cpu.get(cpu as usize).map_or(&[], Vec::as_slice)
    }

    fn is_movable(&self, v: VcpuRef) -> bool {
        self.may_move[v.guest]
    }

    /// How many vCPUs must leave `cpu` for the request to use it; None when it
    /// can never be freed (a vCPU there may not move).
    fn cost(&self, cpu: u32) -> Option<usize> {
        self.costs.get(cpu as usize).copied().flatten()
    }

    fn cost_now(&self, cpu: u32) -> Option<usize> {
        let on = self.vcpus_on(cpu);
        match self.request.pool {
            Pool::Dedicated => on.iter().all(|v| self.is_movable(*v)).then_some(on.len()),
            Pool::Shared => {
                let ratio = self.request.cpu_allocation_ratio.max(1.0);
                let excess = self.load_of(cpu) + 1.0 - ratio;
                if excess <= 1e-9 {
                    return Some(0);
                }
                let need = excess.ceil() as usize;
                let movable = on.iter().filter(|v| self.is_movable(**v)).count();
                (movable >= need).then_some(need)
            }
        }
    }

    /// The CPU sets of `unit` worth freeing for the request: the cheapest whole
    /// cores (SMT pairs stay together), and the cheapest CPUs one by one (the
    /// fewest moves); under `isolate`/`require`, whole cores only.
    fn targets(&self, unit: &CpuSet) -> Vec<CpuSet> {
        let whole_cores_only = self.request.pool == Pool::Dedicated
            && self.request.thread_policy != ThreadPolicy::Prefer;
        let mut cores: Vec<(usize, CpuSet)> = Vec::new();
        let mut seen = CpuSet::new();
        for cpu in unit.iter() {
            if seen.contains(cpu) {
                continue;
            }
            let threads = self
                .host
                .core_of(cpu)
                .map_or_else(|| CpuSet::single(cpu), |c| c.cpus.intersection(unit));
            seen = seen.union(&threads);
            if whole_cores_only && !self.whole_core_usable(cpu, &threads) {
                continue;
            }
            let cost: Option<usize> = threads.iter().map(|t| self.cost(t)).sum();
            if let Some(cost) = cost {
                cores.push((cost, threads));
            }
        }
        let mut out = Vec::new();
        cores.sort_by_key(|(cost, threads)| {
            (*cost, std::cmp::Reverse(threads.len()), threads.first())
        });
        let per_core = match (whole_cores_only, self.request.thread_policy) {
            (true, ThreadPolicy::Isolate) => 1,
            _ => usize::MAX,
        };
        let mut chosen = CpuSet::new();
        let mut counted = 0usize;
        for (_, threads) in &cores {
            if counted >= self.wanted {
                break;
            }
            if whole_cores_only {
                chosen = chosen.union(threads);
                counted += threads.len().min(per_core);
            } else {
                // Cheapest threads of the core first, no more than needed.
                let mut ts: Vec<u32> = threads.iter().collect();
                ts.sort_by_key(|t| (self.cost(*t).unwrap_or(usize::MAX), *t));
                for t in ts.into_iter().take(self.wanted - counted) {
                    chosen.insert(t);
                    counted += 1;
                }
            }
        }
        if counted >= self.wanted {
            out.push(chosen);
        }
        if !whole_cores_only {
            let mut cpus: Vec<(usize, u32)> = unit
                .iter()
                .filter_map(|c| self.cost(c).map(|k| (k, c)))
                .collect();
            cpus.sort_unstable();
            if cpus.len() >= self.wanted {
                let single: CpuSet = cpus[..self.wanted].iter().map(|(_, c)| *c).collect();
                if !out.contains(&single) {
                    out.push(single);
                }
            }
        }
        out
    }

    /// CPU sets of `unit` grown one piece at a time, cheapest first, keeping a
    /// piece only when every vCPU that must leave the set still has somewhere to
    /// go (the fixed [`State::targets`] fail when a cheap CPU's vCPU cannot move,
    /// e.g. its guest already runs on every other CPU of the node): once with
    /// single CPUs as pieces, once with whole cores. At most [`MAX_GROW_TRIES`]
    /// relocations each.
    fn grown(&self, unit: &CpuSet, node: Option<u32>, max_moves: usize) -> Vec<CpuSet> {
        if self.request.pool == Pool::Dedicated
            && self.request.thread_policy != ThreadPolicy::Prefer
        {
            return Vec::new();
        }
        // No set of the unit can cost less than its `wanted` cheapest CPUs.
        let mut costs: Vec<usize> = unit.iter().filter_map(|c| self.cost(c)).collect();
        if costs.len() < self.wanted {
            return Vec::new();
        }
        costs.sort_unstable();
        if costs[..self.wanted].iter().sum::<usize>() > max_moves {
            return Vec::new();
        }
        let singles: Vec<CpuSet> = unit.iter().map(CpuSet::single).collect();
        let mut cores: Vec<CpuSet> = Vec::new();
        for cpu in unit.iter() {
            let core = self
                .host
                .core_of(cpu)
                .map_or_else(|| CpuSet::single(cpu), |c| c.cpus.intersection(unit));
            if !cores.contains(&core) {
                cores.push(core);
            }
        }
        // Whether a guest has any CPU of a node to move a vCPU to, by (guest, node).
        let mut spare: BTreeMap<(usize, u32), bool> = BTreeMap::new();
        let mut out = Vec::new();
        for pieces in [singles, cores] {
            if let Some(set) = self.grow(pieces, node, max_moves, &mut spare)
                && !out.contains(&set)
            {
                out.push(set);
            }
        }
        out
    }

    fn grow(
        &self,
        pieces: Vec<CpuSet>,
        node: Option<u32>,
        max_moves: usize,
        spare: &mut BTreeMap<(usize, u32), bool>,
    ) -> Option<CpuSet> {
        let mut order: Vec<(usize, CpuSet)> = pieces
            .into_iter()
            .filter_map(|p| {
                let cost: Option<usize> = p.iter().map(|c| self.cost(c)).sum();
                cost.map(|k| (k, p))
            })
            .collect();
        // Fewest moves per CPU first; whole cores before their single threads.
        order.sort_by_key(|(k, p)| {
            (
                k * 1000 / p.len().max(1),
                std::cmp::Reverse(p.len()),
                p.first(),
            )
        });
        self.grow_from(&order, None, node, max_moves, spare)
            .or_else(|| {
                // Greedy may start from a piece that blocks the rest (its guest then
                // has nowhere left): once more without the first piece it kept.
                let first = order.iter().find(|(k, _)| *k > 0).map(|(_, p)| p.clone())?;
                self.grow_from(&order, Some(&first), node, max_moves, spare)
            })
    }

    fn grow_from(
        &self,
        order: &[(usize, CpuSet)],
        skip: Option<&CpuSet>,
        node: Option<u32>,
        max_moves: usize,
        spare: &mut BTreeMap<(usize, u32), bool>,
    ) -> Option<CpuSet> {
        let mut chosen = CpuSet::new();
        let (mut cost, mut tries) = (0usize, 0usize);
        for (k, piece) in order {
            if chosen.len() >= self.wanted || tries == MAX_GROW_TRIES {
                break;
            }
            if skip == Some(piece) {
                continue;
            }
            let (k, grown) = (*k, chosen.union(piece));
            if k == 0 {
                chosen = grown;
                continue;
            }
            if cost + k > max_moves || !piece.iter().all(|c| self.each_can_leave(c, spare)) {
                continue;
            }
            if self.budget.get() == 0 {
                break;
            }
            self.budget.set(self.budget.get() - 1);
            tries += 1;
            if self.relocate(node, &grown, max_moves).is_some() {
                chosen = grown;
                cost += k;
            }
        }
        (chosen.len() >= self.wanted).then_some(chosen)
    }

    /// Whether every movable vCPU on `cpu` has some other CPU of its node its
    /// guest may move it to (cached per guest and node in `spare`): a cheap
    /// filter before a relocation is tried.
    fn each_can_leave(&self, cpu: u32, spare: &mut BTreeMap<(usize, u32), bool>) -> bool {
        let Some(node) = self.host.cpus.get(&cpu).map(|c| c.node) else {
            return false;
        };
        let Some(node_cpus) = self.host.nodes.get(&node).map(|n| &n.cpus) else {
            return false;
        };
        self.vcpus_on(cpu).iter().all(|v| {
            *spare.entry((v.guest, node)).or_insert_with(|| {
                let Some(movable) = self.movable.get(self.names[v.guest]) else {
                    return false;
                };
                let mine = self.claims[v.guest].cpus();
                node_cpus
                    .intersection(&movable.eligible)
                    .difference(&self.dedicated)
                    .difference(&mine)
                    .iter()
                    .any(|d| self.load_of(d) + 1.0 <= movable.ratio.max(1.0) + 1e-9)
            })
        })
    }

    /// The targets of a phase with their costs, cheapest first, without
    /// duplicates or targets needing no move or more than `max_moves`.
    fn collect(
        &self,
        sets: impl Iterator<Item = (Option<u32>, Vec<CpuSet>)>,
        max_moves: usize,
    ) -> Vec<Target> {
        let mut targets = Vec::new();
        for (node, list) in sets {
            for target in list {
                self.push_target(&mut targets, node, target, max_moves);
            }
        }
        targets.sort_by_key(|t| (t.cost, t.node, t.cpus.first()));
        targets
    }

    /// The first of `targets` whose vCPUs can be relocated and on which `place`
    /// then fits the guest (at most [`MAX_CANDIDATES`] tried), as a repacking.
    fn attempt(
        &self,
        occupancy: &Occupancy,
        targets: Vec<Target>,
        max_moves: usize,
    ) -> Option<Repacked> {
        let host = self.host;
        let request = self.request;
        let mut tried = 0;
        for Target {
            node, cpus: target, ..
        } in targets
        {
            if tried == MAX_CANDIDATES {
                break;
            }
            let Some(candidate) = self.relocate(node, &target, max_moves) else {
                continue;
            };
            tried += 1;
            let after = candidate.view(host, occupancy);
            let local = Request {
                eligible: match node.and_then(|n| host.nodes.get(&n)) {
                    Some(n) => request.eligible.intersection(&n.cpus),
                    None => request.eligible.clone(),
                },
                ..request.clone()
            };
            let Ok(mut placement) = place(host, &after, &local) else {
                continue;
            };
            // Only moves that freed a CPU the guest got are made: `place` may
            // prefer CPUs that were free already over some freed ones.
            let moves: Vec<Move> = candidate
                .moves
                .into_iter()
                .filter(|m| m.from.intersects(&placement.cpus))
                .collect();
            if moves.is_empty() {
                continue;
            }
            let mut claims: BTreeMap<String, Claim> = BTreeMap::new();
            for m in &moves {
                let Some(original) = occupancy.guests.get(&m.guest) else {
                    continue;
                };
                let claim = claims
                    .entry(m.guest.clone())
                    .or_insert_with(|| original.clone());
                if let Some(slot) = claim.vcpus.get_mut(m.vcpu as usize) {
                    *slot = m.to.clone();
                }
            }
            let emulators = self.moved_emulators(&claims, &placement.cpus);
            let from = moves
                .iter()
                .fold(CpuSet::new(), |acc, m| acc.union(&m.from));
            placement.why.push_str(&format!(
                "; made room by moving {} shared vCPU(s), each within its node ({}) (repacking)",
                moves.len(),
                host.nodes_of(&from)
            ));
            return Some(Repacked {
                placement,
                moves,
                claims,
                emulators,
            });
        }
        None
    }

    /// Adds `target` with its cost, when it needs moves, at most `max_moves`, and
    /// is not there yet.
    fn push_target(
        &self,
        targets: &mut Vec<Target>,
        node: Option<u32>,
        target: CpuSet,
        max_moves: usize,
    ) {
        let cost: usize = target.iter().filter_map(|c| self.cost(c)).sum();
        // Cost 0: free already, so `place` refused for another reason.
        if cost == 0 || cost > max_moves {
            return;
        }
        if !targets.iter().any(|t| t.node == node && t.cpus == target) {
            targets.push(Target {
                cost,
                node,
                cpus: target,
            });
        }
    }

    /// Whether the core of `cpu` can be held whole once freed: no thread of it
    /// outside `threads` (the ones in the unit) is busy, and under `require`
    /// every online thread is in the unit.
    fn whole_core_usable(&self, cpu: u32, threads: &CpuSet) -> bool {
        let Some(core) = self.host.core_of(cpu) else {
            return true;
        };
        core.cpus
            .intersection(&self.host.online)
            .difference(threads)
            .iter()
            .all(|t| {
                self.request.thread_policy != ThreadPolicy::Require
                    && self.load_of(t) <= 1e-9
                    && !self.dedicated.contains(t)
            })
    }

    /// Moves every vCPU that must leave `target` to another CPU of its node
    /// (the node of the target CPU it leaves); None when one has nowhere to go
    /// or more than `max_moves` are needed. `node`: the one node the target is
    /// in, None for a target over several nodes.
    fn relocate(&self, node: Option<u32>, target: &CpuSet, max_moves: usize) -> Option<Repacking> {
        let total: usize = target.iter().map(|c| self.cost(c).unwrap_or(0)).sum();
        if total > max_moves {
            return None;
        }
        let mut load = Loads {
            base: &self.load,
            delta: BTreeMap::new(),
        };
        let mut claims: BTreeMap<String, Claim> = BTreeMap::new();
        let mut moves = Vec::new();
        let ratio_new = self.request.cpu_allocation_ratio.max(1.0);
        for cpu in target.iter() {
            let cpu_node = self.host.cpus.get(&cpu)?.node;
            let node_cpus = &self.host.nodes.get(&cpu_node)?.cpus;
            let mut leaving: Vec<VcpuRef> = self
                .vcpus_on(cpu)
                .iter()
                .copied()
                .filter(|v| self.is_movable(*v))
                .collect();
            // Already moved off by an earlier target CPU (a vCPU on several CPUs).
            leaving.retain(|v| {
                claims
                    .get(self.names[v.guest])
                    .is_none_or(|c| c.vcpus[v.vcpu].contains(cpu))
            });
            let need = match self.request.pool {
                Pool::Dedicated => leaving.len(),
                Pool::Shared => {
                    let excess = load.of(cpu) + 1.0 - ratio_new;
                    if excess <= 1e-9 {
                        0
                    } else {
                        excess.ceil() as usize
                    }
                }
            };
            // vCPUs pinned to this one CPU free the most; they leave first.
            leaving.sort_by_key(|v| (self.claims[v.guest].vcpus[v.vcpu].len(), v.guest, v.vcpu));
            for v in leaving.into_iter().take(need) {
                let name = self.names[v.guest];
                let claim = claims
                    .entry(name.to_string())
                    .or_insert_with(|| self.claims[v.guest].clone());
                let from = claim.vcpus[v.vcpu].clone();
                if !claim.nodes.is_empty() && !claim.nodes.contains(cpu_node) {
                    return None;
                }
                let (to, why) = self.destination(name, claim, v.vcpu, node_cpus, target, &load)?;
                let share = 1.0 / from.len().max(1) as f64;
                for c in from.iter() {
                    load.add(c, -share);
                }
                load.add(to, 1.0);
                claim.vcpus[v.vcpu] = CpuSet::single(to);
                moves.push(Move {
                    guest: name.to_string(),
                    vcpu: v.vcpu as u32,
                    from,
                    to: CpuSet::single(to),
                    reason: format!(
                        "frees CPU {cpu} for the {} {} vCPU(s) being admitted; {why}, same node {cpu_node}",
                        self.wanted,
                        match self.request.pool {
                            Pool::Dedicated => "dedicated",
                            Pool::Shared => "shared",
                        }
                    ),
                });
                if moves.len() > max_moves {
                    return None;
                }
            }
        }
        if moves.is_empty() {
            return None;
        }
        Some(Repacking {
            node,
            moves,
            claims,
        })
    }

    /// Where a vCPU of `name` goes within the node, and why there.
    fn destination(
        &self,
        name: &str,
        claim: &Claim,
        vcpu: usize,
        node_cpus: &CpuSet,
        target: &CpuSet,
        load: &Loads<'_>,
    ) -> Option<(u32, &'static str)> {
        let movable = self.movable.get(name)?;
        let ratio = movable.ratio.max(1.0);
        let mine: CpuSet = claim
            .vcpus
            .iter()
            .enumerate()
            .filter(|(v, _)| *v != vcpu)
            .fold(CpuSet::new(), |acc, (_, s)| acc.union(s));
        // The guest's other vCPUs that stay where they are.
        let staying = mine.difference(target);
        let siblings: CpuSet = staying
            .iter()
            .filter_map(|c| self.host.core_of(c).map(|core| core.cpus.clone()))
            .fold(CpuSet::new(), |acc, s| acc.union(&s));
        let l3: CpuSet = staying
            .iter()
            .filter_map(|c| self.host.l3_of(c).cloned())
            .fold(CpuSet::new(), |acc, s| acc.union(&s));
        let from = &claim.vcpus[vcpu];
        // A shared request may share a freed CPU: one of the target takes the
        // vCPU when it keeps room for the new guest's vCPU too.
        let ratio_new = self.request.cpu_allocation_ratio.max(1.0);
        let keeps_room = |d: u32| {
            !target.contains(d)
                || (self.request.pool == Pool::Shared && load.of(d) + 2.0 <= ratio_new + 1e-9)
        };
        node_cpus
            .intersection(&movable.eligible)
            .difference(&self.dedicated)
            .difference(&mine)
            .difference(from)
            .iter()
            .filter(|d| load.of(*d) + 1.0 <= ratio + 1e-9 && keeps_room(*d))
            .min_by_key(|d| {
                let l = load.of(*d);
                (
                    target.contains(*d),
                    !siblings.contains(*d),
                    !l3.contains(*d),
                    l <= 1e-9,
                    (l * 1000.0).round() as u64,
                    *d,
                )
            })
            .map(|d| {
                let why = if siblings.contains(d) {
                    "onto the SMT sibling of the guest's other vCPU"
                } else if l3.contains(d) {
                    "within the L3 group of the guest's other vCPUs"
                } else if load.of(d) > 1e-9 {
                    "onto a CPU already shared, the least loaded"
                } else {
                    "onto an idle CPU"
                };
                (d, why)
            })
    }

    /// Emulator threads that sat on a freed CPU follow the vCPUs: with the vCPUs
    /// (`with-vcpus`) they take the new vCPU CPUs, otherwise they lose the freed
    /// CPUs (and take the new vCPU CPUs when nothing is left).
    fn moved_emulators(
        &self,
        claims: &BTreeMap<String, Claim>,
        freed: &CpuSet,
    ) -> BTreeMap<String, CpuSet> {
        let mut out = BTreeMap::new();
        for (name, after) in claims {
            let Some(emulator) = self.movable.get(name).and_then(|m| m.emulator.as_ref()) else {
                continue;
            };
            if !emulator.intersects(freed) {
                continue;
            }
            let before = self
                .names
                .iter()
                .position(|n| n == name)
                .map(|i| self.claims[i].cpus());
            let new = if before.as_ref() == Some(emulator) {
                after.cpus()
            } else {
                let rest = emulator.difference(freed);
                if rest.is_empty() { after.cpus() } else { rest }
            };
            out.insert(name.clone(), new);
        }
        out
    }
}

/// The load per CPU with the moves made so far.
struct Loads<'a> {
    base: &'a [f64],
    delta: BTreeMap<u32, f64>,
}

impl Loads<'_> {
    fn of(&self, cpu: u32) -> f64 {
        self.base.get(cpu as usize).copied().unwrap_or(0.0)
            + self.delta.get(&cpu).copied().unwrap_or(0.0)
    }

    fn add(&mut self, cpu: u32, amount: f64) {
        *self.delta.entry(cpu).or_insert(0.0) += amount;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::eligible_cpus;

    const GIB: u64 = 1024 * 1024;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    fn claim(cpus: &[&str], node: u32, pool: Pool) -> Claim {
        Claim {
            vcpus: cpus.iter().map(|c| set(c)).collect(),
            nodes: CpuSet::single(node),
            memory_kib: GIB,
            pool,
        }
    }

    fn request(host: &Host, vcpus: u32, pool: Pool) -> Request {
        Request {
            vcpus,
            memory_kib: GIB,
            pool,
            eligible: eligible_cpus(host, &CpuSet::new(), &CpuSet::new(), false, None),
            cpu_allocation_ratio: 16.0,
            thread_policy: ThreadPolicy::Prefer,
            memory_strict: false,
            hugepage_kib: None,
            memory_reserve_kib: 0,
            max_nodes: None,
        }
    }

    fn movable(host: &Host, names: &[&str]) -> BTreeMap<String, Movable> {
        let eligible = eligible_cpus(host, &CpuSet::new(), &CpuSet::new(), false, None);
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Movable {
                        ratio: 16.0,
                        eligible: eligible.clone(),
                        emulator: None,
                        emulator_on_housekeeping: false,
                    },
                )
            })
            .collect()
    }

    /// 1 socket, 2 nodes × 2 cores × 2 threads: node 0 = 0-1,4-5, node 1 = 2-3,6-7.
    fn host() -> Host {
        Host::synthetic(1, 2, 2, 2, 16 * GIB)
    }

    #[test]
    fn a_dedicated_guest_gets_a_core_freed_within_the_node() {
        let host = host();
        let mut occupancy = Occupancy::default();
        // Node 0: CPU 0 forbidden; shared guest s on 1 and 5 (one core), t on 4.
        // Node 1: dedicated d holds 2-3,6-7.
        occupancy
            .guests
            .insert("d".into(), claim(&["2", "3", "6", "7"], 1, Pool::Dedicated));
        occupancy
            .guests
            .insert("s".into(), claim(&["1"], 0, Pool::Shared));
        occupancy
            .guests
            .insert("t".into(), claim(&["5"], 0, Pool::Shared));
        let r = request(&host, 2, Pool::Dedicated);
        place(&host, &occupancy, &r).unwrap_err();
        let done = repack(&host, &occupancy, &r, &movable(&host, &["s", "t"]), 8).unwrap();
        // Node 0 has 3 eligible CPUs (1,4,5): two must be freed, onto the third.
        assert_eq!(done.placement.nodes, set("0"));
        assert_eq!(done.placement.cpus.len(), 2);
        assert!(!done.moves.is_empty() && done.moves.len() <= 2);
        let after = done.apply_to(&occupancy);
        for m in &done.moves {
            assert!(m.to.is_subset(&host.nodes[&0].cpus), "{m}");
            assert!(!m.to.intersects(&done.placement.cpus), "{m}");
            assert!(!m.to.contains(0), "{m}");
        }
        // The new claim shares no CPU with anyone.
        assert!(!after.all_cpus().intersects(&done.placement.cpus));
    }

    #[test]
    fn nothing_moves_that_is_not_movable_and_the_bound_holds() {
        let host = host();
        let mut occupancy = Occupancy::default();
        occupancy
            .guests
            .insert("d".into(), claim(&["2", "3", "6", "7"], 1, Pool::Dedicated));
        occupancy
            .guests
            .insert("s".into(), claim(&["1"], 0, Pool::Shared));
        occupancy
            .guests
            .insert("t".into(), claim(&["5"], 0, Pool::Shared));
        let r = request(&host, 2, Pool::Dedicated);
        // Only s may move: CPUs 4 (idle) and 1 (s moves to 5) are freed.
        let done = repack(&host, &occupancy, &r, &movable(&host, &["s"]), 8).unwrap();
        assert!(done.moves.iter().all(|m| m.guest == "s"));
        assert_eq!(done.moves.len(), 1);
        // No move allowed: no room.
        assert!(repack(&host, &occupancy, &r, &movable(&host, &["s"]), 0).is_none());
        // Nobody movable: no room.
        assert!(repack(&host, &occupancy, &r, &BTreeMap::new(), 8).is_none());
        // Three dedicated vCPUs fit node 0 (1,4,5) only with both moved, and
        // then there is no CPU of node 0 left for them: never cross-node.
        let r3 = request(&host, 3, Pool::Dedicated);
        assert!(repack(&host, &occupancy, &r3, &movable(&host, &["s", "t"]), 8).is_none());
    }

    #[test]
    fn a_two_vcpu_guest_keeps_its_smt_pair_when_moved() {
        // 1 node, 4 cores × 2 threads: core k = k, k+4.
        let host = Host::synthetic(1, 1, 4, 2, 16 * GIB);
        let mut occupancy = Occupancy::default();
        occupancy
            .guests
            .insert("d".into(), claim(&["1", "5"], 0, Pool::Dedicated));
        // p sits on core 2 split with q; q2 on core 3's thread 3.
        occupancy
            .guests
            .insert("p".into(), claim(&["2", "6"], 0, Pool::Shared));
        occupancy
            .guests
            .insert("q".into(), claim(&["3"], 0, Pool::Shared));
        let mut r = request(&host, 2, Pool::Dedicated);
        r.thread_policy = ThreadPolicy::Require;
        let done = repack(&host, &occupancy, &r, &movable(&host, &["p", "q"]), 8).unwrap();
        // Core 3 (3,7) is the cheapest whole core: q moves, onto a CPU already shared.
        assert_eq!(done.placement.cpus, set("3,7"));
        assert_eq!(done.moves.len(), 1);
        assert_eq!(done.moves[0].guest, "q");
        assert!(done.moves[0].to.is_subset(&set("2,6")), "{}", done.moves[0]);
    }

    #[test]
    fn emulator_threads_with_the_vcpus_follow_them() {
        let host = host();
        let mut occupancy = Occupancy::default();
        occupancy
            .guests
            .insert("d".into(), claim(&["2", "3", "6", "7"], 1, Pool::Dedicated));
        occupancy
            .guests
            .insert("s".into(), claim(&["1"], 0, Pool::Shared));
        let mut movable = movable(&host, &["s"]);
        movable.get_mut("s").unwrap().emulator = Some(set("1"));
        occupancy
            .guests
            .insert("t".into(), claim(&["4"], 0, Pool::Shared));
        let r = request(&host, 2, Pool::Dedicated);
        let done = repack(&host, &occupancy, &r, &movable, 8).unwrap();
        assert_eq!(done.moves.len(), 1);
        assert_eq!(done.emulators.get("s"), Some(&done.moves[0].to));
    }
}
