//! Property tests of the placement engine through the simulator, over random
//! synthetic hosts, host settings and workloads: no guest ever gets CPU0 (unless
//! allowed) or a reserved CPU, no dedicated CPU is handed out twice (not even to a
//! shared guest), shared CPUs stay within cpu_allocation_ratio, and departures give
//! back exactly what arrivals took.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use proptest::prelude::*;

use kvmtune_core::CpuSet;
use kvmtune_core::host::Host;
use kvmtune_core::placement::{
    Occupancy, Pool, Request, ThreadPolicy, eligible_cpus, nodes_of, place,
};
use kvmtune_core::policy::Policy;
use kvmtune_core::simulate::{Simulator, Strategy as Placer};

const GIB: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        vcpus: u32,
        gib: u64,
        dedicated: bool,
    },
    /// Departs the running guest at this index (modulo the running count).
    Depart(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..=10, 1u64..=6, any::<bool>())
            .prop_map(|(vcpus, gib, dedicated)| Op::Arrive { vcpus, gib, dedicated }),
        1 => (0usize..64).prop_map(Op::Depart),
    ]
}

/// (sockets, nodes per socket, cores per node, threads per core, GiB per node)
fn host_shape() -> impl Strategy<Value = (u32, u32, u32, u32, u64)> {
    (1u32..=2, 1u32..=3, 1u32..=6, 1u32..=2, 2u64..=24)
}

const THREAD_POLICIES: [&str; 3] = ["prefer", "isolate", "require"];

fn policy(reserved: &str, allow_cpu0: bool, ratio: u32) -> Policy {
    policy_with_threads(reserved, allow_cpu0, ratio, "prefer")
}

fn policy_with_threads(reserved: &str, allow_cpu0: bool, ratio: u32, threads: &str) -> Policy {
    let text = format!(
        "version: 1\nhost:\n  reserved_cpus: {reserved}\n  irq_cpus: none\n  allow_cpu0: {allow_cpu0}\ndefaults:\n  cpu_allocation_ratio: {ratio}\n  thread_policy: {threads}\n"
    );
    Policy::parse(&text, Path::new("props.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn check_invariants(sim: &Simulator, ratio: u32, threads: &str) -> Result<(), TestCaseError> {
    let occupancy: &Occupancy = sim.occupancy();
    let mut taken = CpuSet::new();
    for (name, claim) in &occupancy.guests {
        let cpus = claim.cpus();
        prop_assert!(
            !cpus.intersects(sim.forbidden()),
            "{name} got forbidden CPUs {}",
            cpus.intersection(sim.forbidden())
        );
        prop_assert!(
            cpus.is_subset(&sim.host().online),
            "{name}: offline CPUs {cpus}"
        );
        prop_assert!(!claim.vcpus.is_empty());
        if claim.pool == Pool::Dedicated {
            // One CPU per vCPU, all different, held by nobody else.
            let sizes: usize = claim.vcpus.iter().map(CpuSet::len).sum();
            prop_assert_eq!(cpus.len(), sizes, "{} has vCPUs sharing a CPU", name);
            if threads == "prefer" {
                prop_assert_eq!(cpus.len(), claim.vcpus.len(), "{} shares CPUs", name);
            }
            prop_assert!(
                !cpus.intersects(&taken),
                "{name}: dedicated CPUs {} handed out twice",
                cpus.intersection(&taken)
            );
        }
        taken = taken.union(&cpus);
    }
    // Shared guests never land on a dedicated guest's CPU.
    let dedicated = occupancy.dedicated_cpus();
    for (name, claim) in &occupancy.guests {
        if claim.pool == Pool::Shared {
            prop_assert!(
                !claim.cpus().intersects(&dedicated),
                "{name}: shared guest on dedicated CPUs"
            );
        }
    }
    // isolate / require: no other guest on a sibling thread of a dedicated guest's
    // CPUs; require: every usable thread of a core it touches is its own.
    if threads != "prefer" {
        let host = sim.host();
        let usable = host.online.difference(sim.forbidden());
        for (name, claim) in &occupancy.guests {
            if claim.pool != Pool::Dedicated {
                continue;
            }
            let cpus = claim.cpus();
            let cores: CpuSet = cpus
                .iter()
                .flat_map(|c| host.core_of(c).map(|k| k.cpus.iter().collect::<Vec<_>>()))
                .flatten()
                .collect();
            for (other, oc) in &occupancy.guests {
                if other != name {
                    prop_assert!(
                        !oc.cpus().intersects(&cores),
                        "{other} on a sibling of isolated/whole-core guest {name}"
                    );
                }
            }
            if threads == "require" {
                prop_assert_eq!(
                    cores.intersection(&usable),
                    cpus.clone(),
                    "{} does not hold whole cores",
                    name
                );
            }
        }
    }
    for (cpu, load) in occupancy.cpu_load() {
        prop_assert!(
            load <= f64::from(ratio) + 1e-9,
            "CPU {cpu} carries {load} vCPUs > ratio {ratio}"
        );
    }
    Ok(())
}

fn run(
    shape: (u32, u32, u32, u32, u64),
    reserve_first: u32,
    allow_cpu0: bool,
    ratio: u32,
    ops: &[Op],
    strategy: Placer,
    threads: &str,
) -> Result<(), TestCaseError> {
    let (sockets, nps, cpn, tpc, gib) = shape;
    let host = Host::synthetic(sockets, nps, cpn, tpc, gib * GIB);
    let reserved = if reserve_first == 0 {
        "none".to_string()
    } else {
        // CPU 1 onwards (CPU0 is governed by allow_cpu0), within the host.
        let last = reserve_first.min(host.online.len() as u32 - 1).max(1);
        if host.online.len() < 2 {
            "none".to_string()
        } else {
            format!("\"1-{last}\"")
        }
    };
    let policy = policy_with_threads(&reserved, allow_cpu0, ratio, threads);
    let mut sim = Simulator::new(&host, &policy, strategy);
    let room_at_start = sim.node_memory();
    let mut running: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Arrive {
                vcpus,
                gib,
                dedicated,
            } => {
                let name = format!("g{i}");
                let pool = if *dedicated {
                    Pool::Dedicated
                } else {
                    Pool::Shared
                };
                let before = sim.occupancy().clone();
                match sim.arrive(&name, *vcpus, gib * GIB, Some(pool)) {
                    Ok(decision) => {
                        prop_assert_eq!(decision.claim.vcpus.len(), *vcpus as usize);
                        prop_assert_eq!(
                            decision.claim.pool,
                            if strategy == Placer::LibvirtDefault {
                                Pool::Shared
                            } else {
                                pool
                            }
                        );
                        running.push(name);
                    }
                    Err(_) => {
                        prop_assert_eq!(sim.occupancy(), &before, "a refusal changed the occupancy")
                    }
                }
            }
            Op::Depart(k) if !running.is_empty() => {
                let name = running.remove(k % running.len());
                let mut expected = sim.occupancy().clone();
                let claim = expected.guests.remove(&name);
                prop_assert_eq!(sim.depart(&name), claim);
                // Exactly that guest's claim went; the others are untouched.
                prop_assert_eq!(sim.occupancy(), &expected);
            }
            Op::Depart(_) => {}
        }
        check_invariants(&sim, ratio, threads)?;
    }
    for name in running.drain(..) {
        prop_assert!(sim.depart(&name).is_some());
    }
    prop_assert!(sim.occupancy().guests.is_empty());
    prop_assert_eq!(
        sim.node_memory(),
        room_at_start,
        "memory not given back exactly"
    );
    prop_assert_eq!(sim.host(), &host, "the snapshot changed");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn kvmtune_placement_invariants(
        shape in host_shape(),
        reserve_first in 0u32..4,
        allow_cpu0 in any::<bool>(),
        ratio in 1u32..=4,
        threads in 0usize..3,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(shape, reserve_first, allow_cpu0, ratio, &ops, Placer::Kvmtune, THREAD_POLICIES[threads])?;
    }

    #[test]
    fn naive_baseline_invariants(
        shape in host_shape(),
        reserve_first in 0u32..4,
        allow_cpu0 in any::<bool>(),
        ratio in 1u32..=4,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(shape, reserve_first, allow_cpu0, ratio, &ops, Placer::NaiveFirstFit, "prefer")?;
    }

    /// A guest that departs and arrives again on an otherwise unchanged host gets
    /// a placement as good as before: the same CPUs (placement is deterministic).
    #[test]
    fn departure_then_same_arrival_is_deterministic(
        shape in host_shape(),
        vcpus in 1u32..=8,
        dedicated in any::<bool>(),
        others in proptest::collection::vec((1u32..=4, any::<bool>()), 0..12),
    ) {
        let (sockets, nps, cpn, tpc, gib) = shape;
        let host = Host::synthetic(sockets, nps, cpn, tpc, gib * GIB);
        let policy = policy("none", false, 4);
        let mut sim = Simulator::new(&host, &policy, Placer::Kvmtune);
        for (i, (v, d)) in others.iter().enumerate() {
            let pool = if *d { Pool::Dedicated } else { Pool::Shared };
            let _ = sim.arrive(&format!("o{i}"), *v, GIB, Some(pool));
        }
        let pool = if dedicated { Pool::Dedicated } else { Pool::Shared };
        if let Ok(first) = sim.arrive("x", vcpus, GIB, Some(pool)) {
            sim.depart("x");
            let again = sim.arrive("x", vcpus, GIB, Some(pool));
            prop_assert_eq!(again.map(|d| d.claim), Ok(first.claim));
        }
    }

    /// A placement's `cpus` is exactly the union of its vCPUs' CPUs and its
    /// `nodes` hold the nodes of those CPUs, at every level (the ledger relies on it),
    /// including the overcommitted whole-host fallback.
    #[test]
    fn placement_cpus_are_the_union_of_its_vcpus(
        shape in host_shape(),
        ratio in 1u32..=3,
        vcpus in 1u32..=40,
        dedicated in any::<bool>(),
        others in proptest::collection::vec((1u32..=6, any::<bool>()), 0..16),
    ) {
        let (sockets, nps, cpn, tpc, gib) = shape;
        let host = Host::synthetic(sockets, nps, cpn, tpc, gib * GIB);
        let policy = policy("none", false, ratio);
        let mut sim = Simulator::new(&host, &policy, Placer::Kvmtune);
        for (i, (v, d)) in others.iter().enumerate() {
            let pool = if *d { Pool::Dedicated } else { Pool::Shared };
            let _ = sim.arrive(&format!("o{i}"), *v, GIB, Some(pool));
        }
        let request = Request {
            vcpus,
            memory_kib: GIB,
            pool: if dedicated { Pool::Dedicated } else { Pool::Shared },
            eligible: eligible_cpus(&host, &CpuSet::new(), &CpuSet::new(), false, None),
            cpu_allocation_ratio: f64::from(ratio),
            thread_policy: ThreadPolicy::Prefer,
            memory_strict: false,
            hugepage_kib: None,
            memory_reserve_kib: 1 << 20,
            max_nodes: None,
        };
        if let Ok(p) = place(sim.host(), sim.occupancy(), &request) {
            let union = p.vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
            prop_assert_eq!(&p.cpus, &union);
            // Memory nodes: at least the vCPUs' nodes (a spanning guest may also
            // get the memory of a chosen node its vCPUs did not need).
            prop_assert!(nodes_of(&host, &union).is_subset(&p.nodes));
            prop_assert_eq!(p.vcpus.len(), vcpus as usize);
        }
    }

    /// `memory_mode: strict`: a guest only goes to nodes that can hold its memory
    /// (MemTotal − reserve − committed), so no node is ever overcommitted.
    #[test]
    fn strict_memory_never_overcommits_a_node(
        shape in host_shape(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let (sockets, nps, cpn, tpc, gib) = shape;
        let host = Host::synthetic(sockets, nps, cpn, tpc, gib * GIB);
        let policy = Policy::parse(
            "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\ndefaults:\n  memory_mode: strict\n",
            Path::new("strict.yaml"),
        )
        .unwrap();
        let mut sim = Simulator::new(&host, &policy, Placer::Kvmtune);
        let mut running: Vec<String> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Arrive { vcpus, gib, dedicated } => {
                    let pool = if *dedicated { Pool::Dedicated } else { Pool::Shared };
                    let free_before: Vec<(u32, u64)> = sim
                        .node_memory()
                        .into_iter()
                        .map(|(id, m)| (id, m.map_or(0, |m| m.room_kib())))
                        .collect();
                    let name = format!("g{i}");
                    if let Ok(d) = sim.arrive(&name, *vcpus, gib * GIB, Some(pool)) {
                        let free_on_nodes: u64 = free_before
                            .iter()
                            .filter(|(id, _)| d.claim.nodes.contains(*id))
                            .map(|(_, free)| free)
                            .sum();
                        prop_assert!(
                            free_on_nodes >= gib * GIB,
                            "{name} ({gib} GiB) placed on nodes {} with {free_on_nodes} KiB free",
                            d.claim.nodes
                        );
                        running.push(name);
                    }
                    // Never more committed on a node than MemTotal − reserve.
                    for (id, m) in sim.node_memory() {
                        let m = m.unwrap();
                        prop_assert!(
                            m.committed_kib <= m.total_kib - m.reserve_kib.min(m.total_kib),
                            "node {id} overcommitted: {m}"
                        );
                    }
                }
                Op::Depart(k) if !running.is_empty() => {
                    let name = running.remove(k % running.len());
                    sim.depart(&name);
                }
                Op::Depart(_) => {}
            }
        }
    }
}
