//! `emulator: node-shared` and `thread_policy` through the planner: where the
//! emulator threads of dedicated and shared guests go, on a synthetic host.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use kvmtune_core::CpuSet;
use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::{Claim, Occupancy, Pool};
use kvmtune_core::plan::{Plan, plan};
use kvmtune_core::policy::Policy;

const GIB: u64 = 1024 * 1024;

fn policy(defaults: &str) -> Policy {
    Policy::parse(
        &format!(
            "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\ndefaults:\n{defaults}"
        ),
        Path::new("test.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn guest(name: &str, vcpus: u32) -> Domain {
    Domain::parse(&format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='GiB'>1</memory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <devices/>\n</domain>\n"
    ))
    .unwrap()
}

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).unwrap()
}

/// 1 socket × 2 nodes × 4 cores × 2 threads: node 0 = CPUs 0-3,8-11 (siblings N, N+8).
fn host() -> Host {
    Host::synthetic(1, 2, 4, 2, 16 * GIB)
}

fn planned(defaults: &str, occupancy: &Occupancy, name: &str, vcpus: u32) -> Plan {
    plan(&policy(defaults), &host(), occupancy, &guest(name, vcpus)).unwrap()
}

#[test]
fn node_shared_keeps_a_dedicated_guests_emulator_off_its_vcpus() {
    // Another dedicated guest holds CPUs 2 and 10 on node 0.
    let mut occupancy = Occupancy::default();
    occupancy.guests.insert(
        "other".into(),
        Claim {
            vcpus: vec![set("2"), set("10")],
            nodes: set("0"),
            memory_kib: GIB,
            pool: Pool::Dedicated,
        },
    );
    let p = planned(
        "  pool: dedicated\n  emulator: node-shared\n",
        &occupancy,
        "db",
        2,
    );
    let placement = p.placement.as_ref().unwrap();
    assert_eq!(placement.cpus, set("1,9"));
    // Node 0's CPUs guests may use (CPU0 not), minus other's and db's own.
    assert_eq!(p.emulator_cpus, Some(set("3,8,11")));
    assert!(
        p.explain().contains("emulator: node-shared"),
        "{}",
        p.explain()
    );
}

#[test]
fn node_shared_for_a_shared_guest_is_its_nodes_shared_cpus() {
    let p = planned("  emulator: node-shared\n", &Occupancy::default(), "web", 2);
    assert_eq!(p.placement.as_ref().unwrap().nodes, set("0"));
    assert_eq!(p.emulator_cpus, Some(set("1-3,8-11")));
}

#[test]
fn node_shared_falls_back_to_the_vcpus_when_the_node_has_no_shared_cpu() {
    // A 7-vCPU dedicated guest takes every usable CPU of node 0.
    let p = planned(
        "  pool: dedicated\n  emulator: node-shared\n",
        &Occupancy::default(),
        "big",
        7,
    );
    let cpus = p.placement.as_ref().unwrap().cpus.clone();
    assert_eq!(cpus, set("1-3,8-11"));
    assert_eq!(p.emulator_cpus, Some(cpus));
    assert!(
        p.notes
            .iter()
            .any(|n| n.text.contains("no shared CPU left"))
    );
}

#[test]
fn thread_policy_isolate_through_the_planner() {
    let p = planned(
        "  pool: dedicated\n  thread_policy: isolate\n",
        &Occupancy::default(),
        "iso",
        2,
    );
    let placement = p.placement.as_ref().unwrap();
    let pins: Vec<String> = placement.vcpus.iter().map(|s| s.to_string()).collect();
    assert_eq!(pins, ["1,9", "2,10"]);
    assert!(
        placement.why.contains("thread_policy: isolate"),
        "{}",
        placement.why
    );
}
