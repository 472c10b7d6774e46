//! Rebalancing: a deliberate compaction of a running host after churn (`kvmtune
//! rebalance`), made of the moves repacking makes at admission ([`Move`]: one
//! running shared guest's vCPU onto another CPU), and the score that says whether
//! the host got better.
//!
//! Three passes, bounded together by `max_moves`:
//! 1. **Home node**: a shared guest spread over several nodes whose resident
//!    memory lies (almost) all in one of them (the caller reads `numa_maps`) has
//!    its other vCPUs pulled into that node. The only cross-node move kvmtune
//!    makes, and only here: the memory is already there, so no page moves. It
//!    prefers busy cores but takes an idle one when it must: locality (rule 1.2)
//!    outranks a whole core, so this pass alone may leave a core partly used.
//! 2. **SMT pairing**: a 2-vCPU guest whose vCPUs sit on different cores gets one
//!    vCPU moved onto the idle SMT sibling of the other's CPU (never onto a
//!    sibling another vCPU uses: pairing is not worth added contention).
//! 3. **Whole cores**: a busy core whose vCPUs all may move is emptied onto other
//!    busy cores of its node, so it stays whole for dedicated guests; a move never
//!    makes an idle core busy, so passes 2 and 3 never add fragmentation.
//!
//! What a move respects is what repacking respects: only [`Movable`] guests in the
//! shared pool; the guest's eligible CPUs, never a dedicated or forbidden CPU; its
//! vCPUs on distinct CPUs; its memory nodes; its `cpu_allocation_ratio`. And one
//! bound of its own, because the admin's ratio (16 by default) says what the host
//! may carry, not what a compaction should stack: no CPU gets more vCPUs than the
//! most loaded CPU of its node already has ([`Options::max_load`] raises it).
//! Pure: host, occupancy and the movable guests in, moves and scores out.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::placement::{Claim, Occupancy, Pool};
use crate::repack::{Movable, Move};

const EPS: f64 = 1e-9;

/// How far one rebalancing may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Moves at most.
    pub max_moves: usize,
    /// vCPUs a move may bring a CPU to; None: the most any CPU of that node
    /// carries before the rebalancing (at least 1), so contention never grows.
    pub max_load: Option<u32>,
}

/// How compact a host's placement is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// Cores with some usable (online, not forbidden) threads busy and some idle:
    /// the fragmentation; fewer is better.
    pub partly_used_cores: usize,
    /// Cores whose usable threads are all idle: room for dedicated guests.
    pub idle_cores: usize,
    /// The most vCPUs on one CPU (a vCPU allowed on k CPUs counts 1/k on each).
    pub max_load: f64,
    /// Shared guests with exactly 2 vCPUs.
    pub pair_guests: usize,
    /// Of those, the ones whose two vCPUs sit on the two threads of one core.
    pub paired: usize,
    /// Share of `pair_guests` paired (None when there are none).
    pub pairing_share: Option<f64>,
    /// Guests with vCPUs placed.
    pub guests: usize,
    /// Of those, the ones whose vCPUs lie in one NUMA node that also holds their
    /// memory (its home node when known, else the nodes it is bound to).
    pub local: usize,
    /// Share of `guests` local (None when there are none).
    pub locality_share: Option<f64>,
}

/// A rebalancing: the score before and after, the moves with their reasons, the
/// moved guests' claims after the moves (and emulator CPUs that follow them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rebalanced {
    pub before: Score,
    pub after: Score,
    pub moves: Vec<Move>,
    /// The moved guests' claims after the moves.
    pub claims: BTreeMap<String, Claim>,
    /// The moved guests' emulator CPUs after the moves, for those whose emulator
    /// threads ran on exactly their vCPUs' CPUs (they follow the vCPUs).
    pub emulators: BTreeMap<String, CpuSet>,
}

fn share(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Whether a 2-vCPU claim sits on the two threads of one core.
fn is_paired(host: &Host, claim: &Claim) -> bool {
    let [a, b] = claim.vcpus.as_slice() else {
        return false;
    };
    match (a.len(), b.len(), a.first(), b.first()) {
        (1, 1, Some(x), Some(y)) if x != y => {
            host.core_of(x).is_some_and(|core| core.cpus.contains(y))
        }
        _ => false,
    }
}

/// The score of `occupancy` on `host`; `forbidden`: CPUs no guest may use (CPU0,
/// reserved, IRQ CPUs), which make a core neither partly used nor idle;
/// `memory_home`: the node holding a guest's memory, where known.
pub fn score(
    host: &Host,
    occupancy: &Occupancy,
    forbidden: &CpuSet,
    memory_home: &BTreeMap<String, u32>,
) -> Score {
    let load = occupancy.cpu_load();
    let busy = |cpu: u32| load.get(&cpu).copied().unwrap_or(0.0) > EPS;
    let (mut partly_used_cores, mut idle_cores) = (0, 0);
    for core in &host.cores {
        let usable = core.cpus.intersection(&host.online).difference(forbidden);
        if usable.is_empty() {
            continue;
        }
        match usable.iter().filter(|c| busy(*c)).count() {
            0 => idle_cores += 1,
            used if used < usable.len() => partly_used_cores += 1,
            _ => {}
        }
    }
    let pairs: Vec<&Claim> = occupancy
        .guests
        .values()
        .filter(|c| c.pool == Pool::Shared && c.vcpus.len() == 2)
        .collect();
    let paired = pairs.iter().filter(|c| is_paired(host, c)).count();
    let placed: Vec<(&String, &Claim)> = occupancy
        .guests
        .iter()
        .filter(|(_, c)| !c.cpus().is_empty())
        .collect();
    let local = placed
        .iter()
        .filter(|(name, c)| {
            let nodes = host.nodes_of(&c.cpus());
            let memory = match memory_home.get(*name) {
                Some(home) => CpuSet::single(*home),
                None => c.nodes.clone(),
            };
            nodes.len() == 1 && (memory.is_empty() || memory == nodes)
        })
        .count();
    Score {
        partly_used_cores,
        idle_cores,
        max_load: load.values().copied().fold(0.0, f64::max),
        pair_guests: pairs.len(),
        paired,
        pairing_share: share(paired, pairs.len()),
        guests: placed.len(),
        local,
        locality_share: share(local, placed.len()),
    }
}

/// The working state of one rebalancing.
struct Work<'a> {
    host: &'a Host,
    movable: &'a BTreeMap<String, Movable>,
    forbidden: &'a CpuSet,
    memory_home: &'a BTreeMap<String, u32>,
    dedicated: CpuSet,
    /// vCPUs a move may bring a CPU to, by node.
    cap: BTreeMap<u32, f64>,
    claims: BTreeMap<String, Claim>,
    load: BTreeMap<u32, f64>,
    moves: Vec<Move>,
    max_moves: usize,
}

impl Work<'_> {
    fn load_of(&self, cpu: u32) -> f64 {
        self.load.get(&cpu).copied().unwrap_or(0.0)
    }

    fn room(&self) -> usize {
        self.max_moves.saturating_sub(self.moves.len())
    }

    fn core_busy(&self, cpu: u32, except: &CpuSet) -> bool {
        self.host.core_of(cpu).is_some_and(|k| {
            k.cpus
                .iter()
                .any(|t| !except.contains(t) && self.load_of(t) > EPS)
        })
    }

    /// The guests that may move: shared, named movable, every vCPU on one CPU.
    fn may_move(&self, name: &str) -> bool {
        self.movable.contains_key(name)
            && self
                .claims
                .get(name)
                .is_some_and(|c| c.pool == Pool::Shared && c.vcpus.iter().all(|s| s.len() == 1))
    }

    /// Whether vCPU `vcpu` of `name` may go to `to` with `extra` vCPUs already
    /// planned there: online, eligible, not dedicated or forbidden, within the
    /// guest's memory nodes, not on another vCPU of the guest, within its ratio
    /// and the node's cap. Same node as where it runs unless `node` says where.
    fn allowed(&self, name: &str, vcpu: usize, to: u32, node: Option<u32>, extra: f64) -> bool {
        let (Some(m), Some(claim)) = (self.movable.get(name), self.claims.get(name)) else {
            return false;
        };
        let Some(from) = claim.vcpus.get(vcpu).and_then(CpuSet::first) else {
            return false;
        };
        let (Some(node_from), Some(node_to)) = (self.host.node_of(from), self.host.node_of(to))
        else {
            return false;
        };
        let others_there = claim
            .vcpus
            .iter()
            .enumerate()
            .any(|(v, s)| v != vcpu && s.contains(to));
        let load = self.load_of(to) + extra + 1.0;
        let cap = self.cap.get(&node_to).copied().unwrap_or(1.0);
        to != from
            && node.unwrap_or(node_from) == node_to
            && (claim.nodes.is_empty() || claim.nodes.contains(node_to))
            && self.host.online.contains(to)
            && m.eligible.contains(to)
            && !self.dedicated.contains(to)
            && !self.forbidden.contains(to)
            && !others_there
            && load <= m.ratio.max(1.0) + EPS
            && load <= cap + EPS
    }

    fn make(&mut self, name: &str, vcpu: usize, to: u32, reason: String) {
        let Some(slot) = self
            .claims
            .get_mut(name)
            .and_then(|c| c.vcpus.get_mut(vcpu))
        else {
            return;
        };
        let from = std::mem::replace(slot, CpuSet::single(to));
        for c in from.iter() {
            *self.load.entry(c).or_insert(0.0) -= 1.0 / from.len().max(1) as f64;
        }
        *self.load.entry(to).or_insert(0.0) += 1.0;
        self.moves.push(Move {
            guest: name.to_string(),
            vcpu: vcpu as u32,
            from,
            to: CpuSet::single(to),
            reason,
        });
    }

    /// The destination order every pass uses: the SMT sibling of the guest's
    /// other vCPUs, then a CPU of a core already busy (idle cores stay whole),
    /// then least loaded, then lowest number.
    fn preference(&self, name: &str, vcpu: usize, to: u32, extra: f64) -> (bool, bool, u64, u32) {
        let siblings: CpuSet = self
            .claims
            .get(name)
            .map(|c| {
                c.vcpus
                    .iter()
                    .enumerate()
                    .filter(|(v, _)| *v != vcpu)
                    .flat_map(|(_, s)| s.iter())
                    .filter_map(|cpu| self.host.core_of(cpu).map(|k| k.cpus.clone()))
                    .fold(CpuSet::new(), |a, s| a.union(&s))
            })
            .unwrap_or_default();
        (
            !siblings.contains(to),
            !self.core_busy(to, &CpuSet::new()),
            ((self.load_of(to) + extra) * 1000.0).round() as u64,
            to,
        )
    }

    /// Pass 1: spread guests into the node that holds their memory.
    fn pull_home(&mut self) {
        let names: Vec<String> = self.claims.keys().cloned().collect();
        for name in names {
            let Some(home) = self.memory_home.get(&name).copied() else {
                continue;
            };
            let Some(claim) = self.claims.get(&name) else {
                continue;
            };
            if !self.may_move(&name) || self.host.nodes_of(&claim.cpus()).len() < 2 {
                continue;
            }
            let away: Vec<usize> = claim
                .vcpus
                .iter()
                .enumerate()
                .filter(|(_, s)| s.first().and_then(|c| self.host.node_of(c)) != Some(home))
                .map(|(v, _)| v)
                .collect();
            if away.len() > self.room() {
                continue;
            }
            let Some(node_cpus) = self.host.nodes.get(&home).map(|n| n.cpus.clone()) else {
                continue;
            };
            // All or nothing: a guest still spread gains no locality.
            let mut planned: Vec<(usize, u32)> = Vec::new();
            let mut extra: BTreeMap<u32, f64> = BTreeMap::new();
            for &vcpu in &away {
                let extra_at = |d: u32| extra.get(&d).copied().unwrap_or(0.0);
                let best = node_cpus
                    .iter()
                    .filter(|d| {
                        self.allowed(&name, vcpu, *d, Some(home), extra_at(*d))
                            && !planned.iter().any(|(_, p)| p == d)
                    })
                    .min_by_key(|d| self.preference(&name, vcpu, *d, extra_at(*d)));
                let Some(best) = best else {
                    planned.clear();
                    break;
                };
                *extra.entry(best).or_insert(0.0) += 1.0;
                planned.push((vcpu, best));
            }
            for (vcpu, to) in planned {
                let reason = format!(
                    "pulls the guest into node {home}, which holds its memory (numa_maps): one node instead of several"
                );
                self.make(&name, vcpu, to, reason);
            }
        }
    }

    /// Pass 2: 2-vCPU guests onto one core's two threads.
    fn pair(&mut self) {
        let names: Vec<String> = self.claims.keys().cloned().collect();
        for name in names {
            if self.room() == 0 {
                return;
            }
            let Some(claim) = self.claims.get(&name) else {
                continue;
            };
            if claim.vcpus.len() != 2 || !self.may_move(&name) || is_paired(self.host, claim) {
                continue;
            }
            let mut found: Option<(usize, u32, u32)> = None;
            // Move vCPU 1 next to vCPU 0, else vCPU 0 next to vCPU 1.
            for (moving, staying) in [(1usize, 0usize), (0, 1)] {
                let Some(anchor) = claim.vcpus[staying].first() else {
                    continue;
                };
                let Some(core) = self.host.core_of(anchor) else {
                    continue;
                };
                let sibling = core
                    .cpus
                    .iter()
                    .filter(|s| *s != anchor && self.allowed(&name, moving, *s, None, 0.0))
                    .find(|s| self.load_of(*s) <= EPS);
                if let Some(s) = sibling {
                    found = Some((moving, s, anchor));
                    break;
                }
            }
            if let Some((moving, to, anchor)) = found {
                let reason = format!(
                    "restores SMT pairing: onto CPU {to}, the SMT sibling of vCPU {}'s CPU {anchor}",
                    1 - moving
                );
                self.make(&name, moving, to, reason);
            }
        }
    }

    /// The vCPUs (guest, vCPU) on `cpu`.
    fn on_cpu(&self, cpu: u32) -> Vec<(String, usize)> {
        self.claims
            .iter()
            .flat_map(|(name, c)| {
                c.vcpus
                    .iter()
                    .enumerate()
                    .filter(move |(_, s)| s.contains(cpu))
                    .map(move |(v, _)| (name.clone(), v))
            })
            .collect()
    }

    /// Pass 3: empties busy cores onto other busy cores of the same node,
    /// cheapest (fewest vCPUs to move) first; a core carrying a paired guest
    /// stays (pairing is worth more than the core).
    fn free_cores(&mut self) {
        loop {
            if self.room() == 0 {
                return;
            }
            let mut candidates: Vec<(usize, usize)> = Vec::new();
            for (index, core) in self.host.cores.iter().enumerate() {
                // Every vCPU on the core, also on a thread that became forbidden
                // or offline: emptying the core moves them all.
                let vcpus: Vec<(String, usize)> =
                    core.cpus.iter().flat_map(|c| self.on_cpu(c)).collect();
                let breaks_pair = vcpus.iter().any(|(n, _)| {
                    self.claims
                        .get(n)
                        .is_some_and(|c| is_paired(self.host, c) && c.cpus().is_subset(&core.cpus))
                });
                if !vcpus.is_empty()
                    && !breaks_pair
                    && vcpus.len() <= self.room()
                    && vcpus.iter().all(|(n, _)| self.may_move(n))
                {
                    candidates.push((vcpus.len(), index));
                }
            }
            candidates.sort_unstable();
            let emptied = candidates
                .into_iter()
                .find_map(|(_, index)| self.empty(&self.host.cores[index].cpus));
            let Some(planned) = emptied else {
                return;
            };
            for (name, vcpu, to, reason) in planned {
                self.make(&name, vcpu, to, reason);
            }
        }
    }

    /// The moves that empty `core_cpus` onto other busy cores of the same node,
    /// or None when one vCPU has nowhere to go.
    fn empty(&self, core_cpus: &CpuSet) -> Option<Vec<(String, usize, u32, String)>> {
        let mut planned: Vec<(String, usize, u32, String)> = Vec::new();
        let mut extra: BTreeMap<u32, f64> = BTreeMap::new();
        for cpu in core_cpus.iter() {
            for (name, vcpu) in self.on_cpu(cpu) {
                let node = self.host.node_of(cpu)?;
                let node_cpus = &self.host.nodes.get(&node)?.cpus;
                let extra_at = |d: u32| extra.get(&d).copied().unwrap_or(0.0);
                let taken = |d: u32| {
                    planned
                        .iter()
                        .any(|(n, v, to, _)| n == &name && *v != vcpu && *to == d)
                };
                let best = node_cpus
                    .difference(core_cpus)
                    .iter()
                    .filter(|d| {
                        self.allowed(&name, vcpu, *d, None, extra_at(*d))
                            && self.core_busy(*d, core_cpus)
                            && !taken(*d)
                    })
                    .min_by_key(|d| self.preference(&name, vcpu, *d, extra_at(*d)))?;
                let why = if self.load_of(best) + extra_at(best) <= EPS {
                    "onto the idle thread of a core already in use"
                } else {
                    "onto a CPU already in use, the least loaded"
                };
                *extra.entry(best).or_insert(0.0) += 1.0;
                planned.push((
                    name.clone(),
                    vcpu,
                    best,
                    format!("frees core {core_cpus} whole; {why}, same node {node}"),
                ));
            }
        }
        (!planned.is_empty()).then_some(planned)
    }
}

/// Moves that compact `occupancy` on `host`: at most `options.max_moves`, only of
/// guests in `movable`, never onto `forbidden` or dedicated CPUs, within a node
/// except to pull a guest into its `memory_home` (the node holding its memory).
pub fn rebalance(
    host: &Host,
    occupancy: &Occupancy,
    movable: &BTreeMap<String, Movable>,
    forbidden: &CpuSet,
    memory_home: &BTreeMap<String, u32>,
    options: Options,
) -> Rebalanced {
    let before = score(host, occupancy, forbidden, memory_home);
    let dedicated = occupancy
        .guests
        .values()
        .filter(|c| c.pool == Pool::Dedicated)
        .fold(CpuSet::new(), |a, c| a.union(&c.cpus()));
    let load = occupancy.cpu_load();
    let cap = host
        .nodes
        .values()
        .map(|node| {
            let most = node
                .cpus
                .iter()
                .map(|c| load.get(&c).copied().unwrap_or(0.0))
                .fold(0.0, f64::max)
                .max(1.0);
            (node.id, options.max_load.map_or(most, f64::from))
        })
        .collect();
    let mut work = Work {
        host,
        movable,
        forbidden,
        memory_home,
        dedicated,
        cap,
        claims: occupancy.guests.clone(),
        load,
        moves: Vec::new(),
        max_moves: options.max_moves,
    };
    work.pull_home();
    work.pair();
    work.free_cores();
    let after = score(
        host,
        &Occupancy {
            guests: work.claims.clone(),
        },
        forbidden,
        memory_home,
    );
    let moves = merged(work.moves);
    let mut claims = BTreeMap::new();
    let mut emulators = BTreeMap::new();
    for m in &moves {
        let (Some(old), Some(new)) = (occupancy.guests.get(&m.guest), work.claims.get(&m.guest))
        else {
            continue;
        };
        if claims.insert(m.guest.clone(), new.clone()).is_some() {
            continue;
        }
        let follows = movable
            .get(&m.guest)
            .and_then(|g| g.emulator.as_ref())
            .is_some_and(|e| *e == old.cpus());
        if follows {
            emulators.insert(m.guest.clone(), new.cpus());
        }
    }
    Rebalanced {
        before,
        after,
        moves,
        claims,
        emulators,
    }
}

/// One move per vCPU: a vCPU the passes moved twice (pass 3 may move one a pass
/// before moved) goes from where it ran to where it ends, with the last reason;
/// one that ends where it ran does not move.
fn merged(moves: Vec<Move>) -> Vec<Move> {
    let mut out: Vec<Move> = Vec::new();
    for m in moves {
        match out
            .iter_mut()
            .find(|o| o.guest == m.guest && o.vcpu == m.vcpu)
        {
            Some(first) => {
                first.to = m.to;
                first.reason = m.reason;
            }
            None => out.push(m),
        }
    }
    out.retain(|m| m.from != m.to);
    out
}

#[cfg(test)]
mod tests;
