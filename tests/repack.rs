//! Repacking at admission (issue 12 item 1): the planner moves running shared
//! guests' vCPUs within their node to make room, lists the moves with reasons,
//! and never breaks the placement invariant; the policy turns it off and bounds
//! it. The simulator's claims (an exhaustive oracle on small hosts, both pool
//! layouts) are in the second half.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use kvmtune_core::CpuSet;
use kvmtune_core::admission;
use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::{Claim, Occupancy, Pool};
use kvmtune_core::plan::{Plan, plan_repacking};
use kvmtune_core::policy::Policy;
use kvmtune_core::repack::{Admitted, Movable, breaches};

const GIB: u64 = 1024 * 1024;

fn policy(host_extra: &str, defaults: &str) -> Policy {
    Policy::parse(
        &format!(
            "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n{host_extra}defaults:\n  pool: shared\n{defaults}"
        ),
        Path::new("test.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn dedicated_guest(name: &str, vcpus: u32) -> Domain {
    Domain::parse(&format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>1024</memory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <devices/>\n</domain>\n"
    ))
    .unwrap()
}

fn shared(cpus: &[u32], node: u32) -> Claim {
    Claim {
        vcpus: cpus.iter().map(|c| CpuSet::single(*c)).collect(),
        nodes: CpuSet::single(node),
        memory_kib: GIB,
        pool: Pool::Shared,
    }
}

fn movable(host: &Host, occupancy: &Occupancy) -> BTreeMap<String, Movable> {
    let eligible = host.online.difference(&CpuSet::single(0));
    occupancy
        .guests
        .iter()
        .filter(|(_, c)| c.pool == Pool::Shared)
        .map(|(n, c)| {
            (
                n.clone(),
                Movable {
                    ratio: 16.0,
                    eligible: eligible.clone(),
                    emulator: Some(c.cpus()),
                    emulator_on_housekeeping: false,
                },
            )
        })
        .collect()
}

/// 1 socket, 2 nodes × 2 cores × 2 threads: node 0 = 0-1,4-5, node 1 = 2-3,6-7.
/// Every eligible CPU of both nodes carries one shared vCPU: a dedicated guest
/// fits nowhere as the host is.
fn busy_host() -> (Host, Occupancy) {
    let host = Host::synthetic(1, 2, 2, 2, 16 * GIB);
    let mut occupancy = Occupancy::default();
    occupancy.guests.insert("a".into(), shared(&[1, 5], 0));
    occupancy.guests.insert("b".into(), shared(&[4], 0));
    occupancy.guests.insert("c".into(), shared(&[2, 6], 1));
    occupancy.guests.insert("e".into(), shared(&[3, 7], 1));
    (host, occupancy)
}

const NFV: &str = "rules:\n  - name: nfv\n    match: {name: new}\n    set: {pool: dedicated, dedicated_fallback: refuse}\n";

fn planned(policy: &Policy, host: &Host, occupancy: &Occupancy, vcpus: u32) -> Plan {
    let domain = dedicated_guest("new", vcpus);
    plan_repacking(policy, host, occupancy, &movable(host, occupancy), &domain).unwrap()
}

#[test]
fn a_dedicated_guest_is_admitted_by_moving_shared_vcpus_within_their_node() {
    let (host, occupancy) = busy_host();
    let policy = policy("", NFV);
    let plan = planned(&policy, &host, &occupancy, 2);
    assert_eq!(plan.no_room, None, "{}", plan.explain());
    let placement = plan.placement.as_ref().unwrap();
    let done = plan.repack.as_ref().expect("moves made room");
    assert!(!done.moves.is_empty() && done.moves.len() <= 8);
    // Each move stays in the moved vCPU's node, off the new guest's CPUs, off CPU0.
    for m in &done.moves {
        let from_node = host.nodes_of(&m.from);
        assert_eq!(host.nodes_of(&m.to), from_node, "{m}");
        assert!(!m.to.intersects(&placement.cpus), "{m}");
        assert!(!m.to.contains(0), "{m}");
        assert!(m.reason.contains("same node"), "{m}");
    }
    // The plan lists the moves with their reasons.
    let text = plan.explain();
    assert!(text.contains("move: guest '"), "{text}");
    assert!(text.contains("repacking"), "{text}");
    // The invariant holds for the new claim and every moved claim.
    let claim = Claim {
        vcpus: placement.vcpus.clone(),
        nodes: placement.nodes.clone(),
        memory_kib: GIB,
        pool: Pool::Dedicated,
    };
    let found = breaches(
        done,
        Admitted {
            guest: "new",
            claim: &claim,
            emulator: plan.emulator_cpus.as_ref(),
            emulator_on_housekeeping: false,
        },
        &occupancy,
        &movable(&host, &occupancy),
        &BTreeMap::new(),
        &admission::forbidden_cpus(&policy, &host),
    );
    assert!(found.is_empty(), "{found:?}");
    // Moved guests with their emulator threads on their vCPUs take them along.
    for name in done.claims.keys() {
        assert_eq!(
            done.emulators.get(name),
            Some(&done.claims[name].cpus()),
            "{name}"
        );
    }
}

#[test]
fn repacking_off_or_bounded_to_zero_refuses_as_before() {
    let (host, occupancy) = busy_host();
    for extra in ["  repack: false\n", "  repack_max_moves: 0\n"] {
        let plan = planned(&policy(extra, NFV), &host, &occupancy, 2);
        assert!(plan.repack.is_none(), "{extra}");
        assert!(plan.placement.is_none(), "{extra}");
        assert!(plan.no_room.is_some(), "{extra}");
    }
    // One move is not enough for 3 dedicated vCPUs in one node (3 eligible CPUs
    // there, all busy): bounded, refused.
    let plan = planned(
        &policy("  repack_max_moves: 1\n", NFV),
        &host,
        &occupancy,
        3,
    );
    assert!(plan.repack.is_none());
    assert!(plan.no_room.is_some());
}

#[test]
fn a_guest_larger_than_a_node_spans_nodes_and_every_vcpu_moves_within_its_own() {
    // Node 0 = 0-1,4-5 (CPU0 forbidden), node 1 = 2-3,6-7; 5, 6 and 7 are free.
    let host = Host::synthetic(1, 2, 2, 2, 16 * GIB);
    let mut occupancy = Occupancy::default();
    occupancy.guests.insert("a".into(), shared(&[1], 0));
    occupancy.guests.insert("b".into(), shared(&[4], 0));
    occupancy.guests.insert("c".into(), shared(&[2], 1));
    occupancy.guests.insert("e".into(), shared(&[3], 1));
    let plan = planned(&policy("", NFV), &host, &occupancy, 5);
    let done = plan.repack.as_ref().expect("moves made room");
    let placement = plan.placement.as_ref().unwrap();
    assert_eq!(placement.cpus.len(), 5);
    assert_eq!(placement.nodes.len(), 2, "{}", placement.why);
    assert_eq!(done.moves.len(), 2, "{:?}", done.moves);
    for m in &done.moves {
        assert_eq!(host.nodes_of(&m.to), host.nodes_of(&m.from), "{m}");
    }
    // 7 dedicated vCPUs would take every eligible CPU: no CPU would be left for
    // the shared vCPUs in either node, so no repacking fits it.
    let plan = planned(&policy("", NFV), &host, &occupancy, 7);
    assert!(plan.repack.is_none(), "{}", plan.explain());
    assert!(plan.no_room.is_some());
}

// ---------------------------------------------------------------------------
// The simulator's claims, both pool layouts, every fixture workload.

use kvmtune_core::simulate::{Event, Report, Simulator, Strategy, simulate};

mod sim_support;
use sim_support::{WORKLOADS, fixture_hosts, workload};

/// The two layouts of docs/placement.md: one pool (the shipped policy), and the
/// pools split by the stated rule: the first third (rounded up) of each node's
/// cores, every thread of them, serve the shared pool, the rest the dedicated
/// pool. `repack` on or off.
fn layout(host: &Host, split: bool, repack: bool) -> Policy {
    let mut policy = Policy::shipped();
    policy.host.repack = repack;
    if split {
        let (shared, dedicated) = kvmtune_core::simulate::split_pools(host);
        policy.host.shared_cpus = Some(shared);
        policy.host.dedicated_cpus = Some(dedicated);
    }
    policy
}

/// Hosts small enough for the exhaustive oracle (at most 32 CPUs).
fn small(host: &Host) -> bool {
    host.online.len() <= 32
}

/// The exhaustive oracle: whether some repacking of at most `max_moves` moves,
/// each vCPU moved within its own node onto a CPU its guest may use (no
/// dedicated CPU, at most `cpu_allocation_ratio` vCPUs, its vCPUs on distinct
/// CPUs), would let `place` fit a guest of `vcpus` in `pool` on the host as
/// `sim` has it. Every running shared guest may move (kvmtune placed them all).
fn repacking_could_fit(
    sim: &Simulator<'_>,
    policy: &Policy,
    vcpus: u32,
    memory_kib: u64,
    pool: Pool,
) -> bool {
    if sim
        .host_memory_room_kib()
        .is_some_and(|room| room < memory_kib)
    {
        return false;
    }
    let host = sim.host();
    let occupancy = sim.occupancy();
    let ratio = f64::from(policy.defaults.cpu_allocation_ratio);
    let pool_eligible = |p: Pool| {
        let eligible = host.online.difference(sim.forbidden());
        match policy.host.pool_cpus(p) {
            Some(set) => eligible.intersection(set),
            None => eligible,
        }
    };
    let dedicated = occupancy.dedicated_cpus();
    let load = occupancy.cpu_load();
    let load_of = |c: u32| load.get(&c).copied().unwrap_or(0.0);
    let k = vcpus as usize;
    let max_moves = policy.host.repack_max_moves as usize;
    let eligible = pool_eligible(pool).difference(&dedicated);
    match pool {
        Pool::Shared => {
            // A shared guest larger than its pool is overcommitted over the
            // pool's room, which moves within the pool do not change. One that
            // fits its pool needs k distinct CPUs with room: a CPU at the ratio
            // gets room by one move to a CPU with room for two; per node at most
            // min(moves, full CPUs, spare room) CPUs gain room (a relaxation:
            // distinct CPUs per guest ignored, so "cannot" here is exact).
            if eligible.len() < k {
                return false;
            }
            let room = |c: u32| (ratio - load_of(c)).floor().max(0.0) as usize;
            let with_room = eligible.iter().filter(|c| room(*c) >= 1).count();
            let mut gains = Vec::new();
            for node in host.nodes.values() {
                let here = eligible.intersection(&node.cpus);
                let full = here.iter().filter(|c| room(*c) == 0).count();
                let spare: usize = here.iter().map(|c| room(c).saturating_sub(1)).sum();
                gains.push(full.min(spare));
            }
            gains.sort_unstable_by(|a, b| b.cmp(a));
            let mut left = max_moves;
            let mut gained = 0;
            for g in gains {
                let take = g.min(left);
                gained += take;
                left -= take;
            }
            with_room + gained >= k
        }
        Pool::Dedicated => {
            let free: CpuSet = eligible.iter().filter(|c| load_of(*c) == 0.0).collect();
            let shared_eligible = pool_eligible(Pool::Shared);
            // Per node: the most CPUs freed with m moves, m = 0..=max_moves.
            let mut gains: Vec<Vec<usize>> = Vec::new();
            for node in host.nodes.values() {
                let busy: Vec<u32> = eligible
                    .intersection(&node.cpus)
                    .iter()
                    .filter(|c| load_of(*c) > 0.0)
                    .collect();
                let free_here = free.intersection(&node.cpus);
                let dests = shared_eligible
                    .intersection(&node.cpus)
                    .difference(&dedicated);
                gains.push(node_gains(
                    occupancy, &busy, &free_here, &dests, ratio, max_moves,
                ));
            }
            // Knapsack over the nodes' gains.
            let mut best = vec![0usize; max_moves + 1];
            for g in &gains {
                let mut next = best.clone();
                for used in 0..=max_moves {
                    for (m, gain) in g.iter().enumerate() {
                        if used + m <= max_moves {
                            next[used + m] = next[used + m].max(best[used] + gain);
                        }
                    }
                }
                best = next;
            }
            free.len() + best.iter().copied().max().unwrap_or(0) >= k
        }
    }
}

/// For one node: the most CPUs (net) a set of `busy` CPUs emptied with at
/// most m moves frees, for each m; every subset of at most `max_moves` busy
/// CPUs tried, its vCPUs reassigned by a max-flow within the node's other
/// `dests` (a free CPU used as a destination is one free CPU less).
fn node_gains(
    occupancy: &Occupancy,
    busy: &[u32],
    free: &CpuSet,
    dests: &CpuSet,
    ratio: f64,
    max_moves: usize,
) -> Vec<usize> {
    // The vCPUs on each busy CPU (guest name, vCPU index), single-CPU pins.
    let on = |cpu: u32| -> Vec<(String, usize)> {
        occupancy
            .guests
            .iter()
            .flat_map(|(n, c)| {
                c.vcpus
                    .iter()
                    .enumerate()
                    .filter(move |(_, s)| s.contains(cpu))
                    .map(move |(v, _)| (n.clone(), v))
            })
            .collect()
    };
    let per_cpu: Vec<Vec<(String, usize)>> = busy.iter().map(|c| on(*c)).collect();
    let mut gains = vec![0usize; max_moves + 1];
    // Subsets depth-first; busy CPUs cost at least one move each.
    let limit = busy.len().min(max_moves);
    let mut stack: Vec<(usize, Vec<usize>, usize)> = vec![(0, Vec::new(), 0)];
    while let Some((start, chosen, cost)) = stack.pop() {
        if !chosen.is_empty() {
            let target: CpuSet = chosen.iter().map(|i| busy[*i]).collect();
            let moving: Vec<(String, usize)> =
                chosen.iter().flat_map(|i| per_cpu[*i].clone()).collect();
            if let Some(used_free) = reassign(occupancy, &moving, &target, free, dests, ratio) {
                let net = chosen.len().saturating_sub(used_free);
                for slot in gains.iter_mut().skip(cost) {
                    *slot = (*slot).max(net);
                }
            }
        }
        if chosen.len() == limit {
            continue;
        }
        for (i, vcpus) in per_cpu.iter().enumerate().skip(start) {
            let c = cost + vcpus.len();
            if c > max_moves {
                continue;
            }
            let mut next = chosen.clone();
            next.push(i);
            stack.push((i + 1, next, c));
        }
    }
    gains
}

/// The fewest free CPUs the `moving` vCPUs need besides the busy destinations,
/// or None when they cannot all be placed: a max-flow, guest → CPU at most one
/// vCPU each (distinct CPUs, none where the guest keeps a vCPU), CPU → at most
/// ratio − load vCPUs.
fn reassign(
    occupancy: &Occupancy,
    moving: &[(String, usize)],
    target: &CpuSet,
    free: &CpuSet,
    dests: &CpuSet,
    ratio: f64,
) -> Option<usize> {
    let load = occupancy.cpu_load();
    let busy_dests: Vec<u32> = dests.difference(target).difference(free).iter().collect();
    let free_dests: Vec<u32> = dests.intersection(free).difference(target).iter().collect();
    let mut guests: BTreeMap<&str, usize> = BTreeMap::new();
    for (g, _) in moving {
        *guests.entry(g.as_str()).or_insert(0) += 1;
    }
    for used in 0..=free_dests.len() {
        let cpus: Vec<u32> = busy_dests
            .iter()
            .copied()
            .chain(free_dests.iter().copied().take(used))
            .collect();
        if max_flow(occupancy, &guests, &cpus, &load, ratio) == moving.len() {
            return Some(used);
        }
    }
    None
}

/// Augmenting paths on guests × CPUs (small graphs only).
fn max_flow(
    occupancy: &Occupancy,
    guests: &BTreeMap<&str, usize>,
    cpus: &[u32],
    load: &BTreeMap<u32, f64>,
    ratio: f64,
) -> usize {
    let names: Vec<&str> = guests.keys().copied().collect();
    let allowed = |g: usize, c: usize| !occupancy.guests[names[g]].cpus().contains(cpus[c]);
    let mut cap_cpu: Vec<usize> = cpus
        .iter()
        .map(|c| {
            (ratio - load.get(c).copied().unwrap_or(0.0))
                .floor()
                .max(0.0) as usize
        })
        .collect();
    // assigned[g][c]: a vCPU of guest g moved to CPU c.
    let mut assigned = vec![vec![false; cpus.len()]; names.len()];
    let mut flow = 0;
    for (g, name) in names.iter().enumerate() {
        for _ in 0..guests[name] {
            let mut seen_g = vec![false; names.len()];
            if augment(g, &allowed, &mut cap_cpu, &mut assigned, &mut seen_g) {
                flow += 1;
            }
        }
    }
    flow
}

fn augment(
    g: usize,
    allowed: &dyn Fn(usize, usize) -> bool,
    cap_cpu: &mut Vec<usize>,
    assigned: &mut Vec<Vec<bool>>,
    seen: &mut Vec<bool>,
) -> bool {
    if seen[g] {
        return false;
    }
    seen[g] = true;
    for c in 0..cap_cpu.len() {
        if assigned[g][c] || !allowed(g, c) {
            continue;
        }
        if cap_cpu[c] > 0 {
            cap_cpu[c] -= 1;
            assigned[g][c] = true;
            return true;
        }
        // CPU c is full: move another guest's vCPU off it elsewhere.
        for h in 0..assigned.len() {
            if h != g && assigned[h][c] {
                assigned[h][c] = false;
                cap_cpu[c] += 1;
                if augment(h, allowed, cap_cpu, assigned, seen) {
                    cap_cpu[c] -= 1;
                    assigned[g][c] = true;
                    return true;
                }
                assigned[h][c] = true;
                cap_cpu[c] -= 1;
            }
        }
    }
    false
}

/// Dedicated CPUs carry no other guest's vCPU.
fn dedicated_exclusive(occupancy: &Occupancy) -> Result<(), String> {
    for (name, claim) in &occupancy.guests {
        if claim.pool != Pool::Dedicated {
            continue;
        }
        for (other, c) in &occupancy.guests {
            if other != name && c.cpus().intersects(&claim.cpus()) {
                return Err(format!(
                    "dedicated CPUs {} of '{name}' also carry '{other}' ({:?})",
                    claim.cpus().intersection(&c.cpus()),
                    c.pool
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn refused_only_when_no_repacking_fits_and_dedicated_cpus_stay_exclusive() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, host) in fixture_hosts().into_iter().filter(|(_, h)| small(h)) {
        for split in [false, true] {
            let policy = layout(&host, split, true);
            for w in WORKLOADS {
                let at = format!(
                    "{name} × {w} × {}",
                    if split { "split" } else { "one pool" }
                );
                let mut sim = Simulator::new(&host, &policy, Strategy::Kvmtune);
                for event in &workload(w).events {
                    match event {
                        Event::Arrive {
                            name,
                            vcpus,
                            memory_kib,
                            pool,
                        } => {
                            let before = sim.clone();
                            let pool = sim.pool_for(name, *vcpus, *memory_kib, *pool);
                            match sim.arrive(name, *vcpus, *memory_kib, Some(pool)) {
                                Ok(d) => {
                                    for m in &d.moves {
                                        if host.nodes_of(&m.to) != host.nodes_of(&m.from) {
                                            problems.push(format!("{at}: {m} crosses nodes"));
                                        }
                                    }
                                }
                                Err(reason) => {
                                    checked += 1;
                                    if repacking_could_fit(
                                        &before,
                                        &policy,
                                        *vcpus,
                                        *memory_kib,
                                        pool,
                                    ) {
                                        problems.push(format!(
                                            "{at}: {name} ({vcpus} {pool:?}) refused although a repacking fits it: {reason}"
                                        ));
                                    }
                                }
                            }
                            if let Err(e) = dedicated_exclusive(sim.occupancy()) {
                                problems.push(format!("{at}: after {name}: {e}"));
                            }
                        }
                        Event::Depart { name } => {
                            sim.depart(name);
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no refusal was checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// kvmtune with repacking against naive-first-fit: placed guests per row.
fn rows() -> Vec<(String, [Report; 2])> {
    let mut out = Vec::new();
    for (name, host) in fixture_hosts() {
        for split in [false, true] {
            let policy = layout(&host, split, true);
            for w in WORKLOADS {
                let wl = workload(w);
                let at = format!(
                    "{name} × {w} × {}",
                    if split { "split" } else { "one pool" }
                );
                out.push((
                    at,
                    [
                        simulate(&host, &policy, &wl, Strategy::Kvmtune),
                        simulate(&host, &policy, &wl, Strategy::NaiveFirstFit),
                    ],
                ));
            }
        }
    }
    out
}

/// Rows where kvmtune with repacking places fewer guests than naive-first-fit,
/// and why (docs/placement.md says the same). Each is checked to be exactly
/// that: still behind, and not behind without repacking.
/// Each is also checked to be unavoidable: no placement at all holds the
/// dedicated guests kvmtune admitted and the shared guests naive placed, so
/// matching naive's count would mean refusing a guest that repacking fits,
/// which the first Done-when of issue 12 forbids.
const BEHIND_NAIVE: [(&str, &str); 1] = [(
    "intel-xeon-e5-2680v3-2s-cpu0-and-node0-offline × mixed × one pool",
    "repacking admits dedicated small05 (naive refuses it), which leaves the shared guests 5 CPUs instead of 7; at cpu_allocation_ratio 16 three later shared guests then find no room: 20 placed against naive's 22. No placement holds both: kvmtune's 12 dedicated vCPUs need 12 of the 17 CPUs, naive's 84 shared vCPUs need ⌈84/16⌉ = 6 more",
)];

#[test]
fn with_repacking_kvmtune_places_at_least_as_many_guests_as_naive_first_fit() {
    let mut problems = Vec::new();
    for (at, [k, n]) in rows() {
        let known = BEHIND_NAIVE.iter().find(|(row, _)| *row == at);
        match (k.placed < n.placed, known) {
            (true, None) => problems.push(format!(
                "{at}: kvmtune {} < naive {}; kvmtune refused {:?}",
                k.placed,
                n.placed,
                k.refused
                    .iter()
                    .map(|r| format!("{} ({} {:?}): {}", r.guest, r.vcpus, r.pool, r.reason))
                    .collect::<Vec<_>>()
            )),
            (false, Some(_)) => {
                problems.push(format!("{at}: no longer behind naive: update BEHIND_NAIVE"))
            }
            (true, Some((_, why))) => {
                // The explanation holds: without repacking kvmtune is not behind,
                // and with it kvmtune admitted a guest naive refused.
                let (name, host) = fixture_hosts()
                    .into_iter()
                    .find(|(name, _)| at.starts_with(name.as_str()))
                    .unwrap();
                let w = WORKLOADS
                    .iter()
                    .find(|w| at.contains(&format!(" × {w} × ")))
                    .unwrap();
                let off = simulate(
                    &host,
                    &layout(&host, at.ends_with("split"), false),
                    &workload(w),
                    Strategy::Kvmtune,
                );
                if off.placed < n.placed {
                    problems.push(format!(
                        "{name}: behind naive without repacking too ({why})"
                    ));
                }
                let admitted_only_by_repacking = k.guests.iter().any(|g| {
                    !g.made_room_by.is_empty() && n.refused.iter().any(|r| r.guest == g.guest)
                });
                if !admitted_only_by_repacking {
                    problems.push(format!("{at}: the stated cause does not hold: {why}"));
                }
                // Unavoidable: the CPUs kvmtune's dedicated guests need plus those
                // naive's shared guests need at the ratio exceed the eligible CPUs.
                let policy = layout(&host, at.ends_with("split"), true);
                let eligible = kvmtune_core::placement::eligible_cpus(
                    &host,
                    &policy.host.reserved_cpus,
                    &policy.irq_cpus(&host),
                    policy.host.allow_cpu0,
                    None,
                )
                .len() as u64;
                let vcpus_in = |r: &Report, pool: Pool| -> u64 {
                    r.guests
                        .iter()
                        .filter(|g| g.pool == pool)
                        .map(|g| u64::from(g.vcpus))
                        .sum()
                };
                let ratio = u64::from(policy.defaults.cpu_allocation_ratio);
                let needed =
                    vcpus_in(&k, Pool::Dedicated) + vcpus_in(&n, Pool::Shared).div_ceil(ratio);
                let departures = workload(w)
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::Depart { .. }));
                if departures || needed <= eligible {
                    problems.push(format!(
                        "{at}: not shown unavoidable: {needed} CPUs needed of {eligible} eligible (departures: {departures})"
                    ));
                }
            }
            (false, None) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
