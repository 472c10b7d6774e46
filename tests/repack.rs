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
fn a_guest_larger_than_a_node_is_never_repacked_across_nodes() {
    let (host, occupancy) = busy_host();
    // Node 0 has 3 eligible CPUs (CPU0 is forbidden), node 1 has 4: 4 dedicated
    // vCPUs fit node 1 only, whose every CPU would have to be emptied with no CPU
    // of node 1 left to take the vCPUs: refused, never moved to node 0.
    let plan = planned(&policy("", NFV), &host, &occupancy, 4);
    assert!(plan.repack.is_none(), "{}", plan.explain());
    assert!(plan.no_room.is_some());
}
