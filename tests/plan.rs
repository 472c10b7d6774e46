//! Placement and edit behaviour of the pure planner on real fixture hosts
//! (tests/data/hosts, copied from ../shared/fixtures/hosts with provenance noted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};

use kvmtune_core::CpuSet;
use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::{Claim, Level, Occupancy, Pool};
use kvmtune_core::plan::{Change, Plan, plan};
use kvmtune_core::policy::Policy;

fn host(name: &str) -> Host {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts")
        .join(name);
    kvmtune_sys::sysfs::read_host(&root).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn policy(yaml: &str) -> Policy {
    Policy::parse(yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

const BASE: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n";

fn guest(name: &str, vcpus: u32, memory_mib: u64) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>{memory_mib}</memory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n  </devices>\n</domain>\n"
    )
}

fn plan_for(policy: &Policy, host: &Host, occupancy: &Occupancy, xml: &str) -> Plan {
    let domain = Domain::parse(xml).unwrap();
    plan(policy, host, occupancy, &domain).unwrap()
}

fn claim_of(plan: &Plan, memory_kib: u64) -> Claim {
    let p = plan.placement.as_ref().unwrap();
    Claim {
        vcpus: p.vcpus.clone(),
        nodes: p.nodes.clone(),
        memory_kib,
        pool: plan.pool,
    }
}

#[test]
fn two_vcpus_get_the_two_smt_siblings_of_one_core() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("g", 2, 1024),
    );
    let placement = p.placement.unwrap();
    assert_eq!(placement.level, Level::Core);
    let core = h.core_of(placement.cpus.first().unwrap()).unwrap();
    assert_eq!(placement.cpus, core.cpus, "both threads of one core");
    assert_eq!(placement.cpus.len(), 2);
    assert_ne!(
        placement.vcpus[0], placement.vcpus[1],
        "one thread per vCPU"
    );
    assert!(!placement.cpus.contains(0));
}

#[test]
fn six_vcpus_stay_in_one_node_of_one_socket() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("g", 6, 2048),
    );
    let placement = p.placement.unwrap();
    assert_eq!(placement.cpus.len(), 6);
    assert_eq!(h.nodes_of(&placement.cpus).len(), 1);
    let sockets: CpuSet = placement
        .cpus
        .iter()
        .filter_map(|c| h.socket_of(c))
        .collect();
    assert_eq!(sockets.len(), 1);
    // Whole cores: 6 vCPUs = 3 cores x 2 threads.
    let cores: Vec<_> = placement
        .cpus
        .iter()
        .map(|c| h.core_of(c).unwrap().cpus.clone())
        .collect();
    for core in &cores {
        assert!(core.is_subset(&placement.cpus), "core {core} split");
    }
}

#[test]
fn memory_nodeset_is_the_vcpus_node() {
    let h = host("intel-xeon-gold6230-2s20c2t-snc2-4node");
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("g", 4, 4096),
    );
    let placement = p.placement.as_ref().unwrap();
    let numa = p
        .edits
        .iter()
        .find_map(|e| match &e.change {
            Change::NumaMemory { nodeset, mode } => Some((nodeset.clone(), *mode)),
            _ => None,
        })
        .expect("a numatune edit");
    assert_eq!(numa.0, h.nodes_of(&placement.cpus));
    assert_eq!(numa.0.len(), 1);
    assert_eq!(numa.1, kvmtune_core::policy::MemoryMode::Preferred);
}

#[test]
fn cpu0_reserved_and_irq_cpus_are_never_used() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let pol = policy("version: 1\nhost:\n  reserved_cpus: 1,17\n  irq_cpus: 2,18\n");
    let forbidden = CpuSet::parse("0-2,17-18").unwrap();
    let mut occupancy = Occupancy::default();
    for (i, vcpus) in [1u32, 2, 4, 6, 8, 2, 1, 3, 12, 16, 30].iter().enumerate() {
        let name = format!("g{i}");
        let p = plan_for(&pol, &h, &occupancy, &guest(&name, *vcpus, 512));
        let placement = p.placement.as_ref().unwrap();
        assert!(
            !placement.cpus.intersects(&forbidden),
            "{name} ({vcpus} vCPUs) got {}",
            placement.cpus
        );
        assert!(!p.emulator_cpus.as_ref().unwrap().intersects(&forbidden));
        occupancy.guests.insert(name, claim_of(&p, 512 * 1024));
    }
}

#[test]
fn irq_auto_keeps_guests_off_cpus_an_irq_is_bound_to() {
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-core-i5-m560-laptop-1s2c2t");
    copy_tree(&src, dir.path());
    let irq = dir.path().join("proc/irq/30");
    std::fs::create_dir_all(&irq).unwrap();
    std::fs::write(irq.join("smp_affinity_list"), "1\n").unwrap();
    let h = kvmtune_sys::sysfs::read_host(dir.path()).unwrap();
    assert_eq!(h.irq_bound_cpus().to_string(), "1");
    let pol = policy("version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: auto\n");
    let p = plan_for(&pol, &h, &Occupancy::default(), &guest("g", 2, 256));
    let cpus = &p.placement.unwrap().cpus;
    assert!(!cpus.contains(0) && !cpus.contains(1), "got {cpus}");
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_guest_larger_than_any_node_spans_the_fewest_nodes_and_says_so() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("big", 24, 4096),
    );
    let placement = p.placement.as_ref().unwrap();
    assert_eq!(placement.nodes.len(), 2);
    assert!(placement.level >= Level::Socket);
    let text = p.explain();
    assert!(text.contains("spans 2 nodes"), "{text}");
    // preferred takes one node: memory interleaves over the two.
    assert!(p.edits.iter().any(|e| matches!(
        &e.change,
        Change::NumaMemory { mode: kvmtune_core::policy::MemoryMode::Interleave, nodeset } if nodeset.len() == 2
    )));
}

#[test]
fn a_spanning_guest_gets_guest_numa_cells_mirroring_the_host_nodes() {
    use kvmtune_core::plan::Enforcement;
    use kvmtune_core::policy::MemoryMode;
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    // 24 GiB + 1 KiB: not a whole number of MiB, so the last cell takes the rest.
    let xml = guest("big", 24, 24 * 1024).replace(
        "<memory unit='MiB'>24576</memory>",
        "<memory unit='KiB'>25165825</memory>",
    );
    let p = plan_for(&policy(BASE), &h, &Occupancy::default(), &xml);
    let placement = p.placement.as_ref().unwrap();
    assert_eq!(placement.nodes, CpuSet::parse("0-1").unwrap());
    let edit = p
        .edits
        .iter()
        .find(|e| matches!(e.change, Change::GuestNuma { .. }))
        .expect("a guest NUMA topology");
    let Change::GuestNuma { cells } = &edit.change else {
        unreachable!()
    };
    assert_eq!(edit.reason.rule, "1.2");
    assert!(
        edit.reason.text.contains("mirrors host nodes 0,1"),
        "{}",
        edit.reason.text
    );
    // One cell per host node, in node order, memory bound to it.
    let ids: Vec<(u32, u32)> = cells.iter().map(|c| (c.id, c.host_node)).collect();
    assert_eq!(ids, [(0, 0), (1, 1)]);
    assert!(cells.iter().all(|c| c.mode == MemoryMode::Preferred));
    // Each vCPU in exactly one cell: the cell of the node it is pinned on.
    let mut all = CpuSet::new();
    for cell in cells {
        assert!(!cell.vcpus.intersects(&all), "cells overlap");
        all = all.union(&cell.vcpus);
        let node_cpus = h.nodes[&cell.host_node].cpus.clone();
        for v in cell.vcpus.iter() {
            assert!(
                placement.vcpus[v as usize].is_subset(&node_cpus),
                "vCPU {v} is not on node {}",
                cell.host_node
            );
        }
    }
    assert_eq!(all, (0..24).collect::<CpuSet>());
    // Memory in proportion to the vCPUs, whole MiB, summing to <memory>.
    let total: u64 = cells.iter().map(|c| c.memory_kib).sum();
    assert_eq!(total, 25_165_825);
    let first = &cells[0];
    assert_eq!(first.memory_kib % 1024, 0);
    assert_eq!(
        first.memory_kib / 1024,
        24 * 1024 * first.vcpus.len() as u64 / 24
    );
    // It changes what the guest sees: only a new definition brings it.
    assert_eq!(edit.change.enforcement(), Enforcement::XmlOnly);
    assert!(!edit.change.is_guest_abi_safe());
    assert!(!p.abi_safe_changes().contains(&edit.change));
    assert!(p.violations.iter().any(|v| v.rule == "1.2"));

    // Applied, the guest has its cells: planned again, nothing more to do.
    let (_, once) =
        kvmtune::inputs::plan_and_rewrite(&policy(BASE), &h, &Occupancy::default(), &xml).unwrap();
    let again = plan_for(&policy(BASE), &h, &Occupancy::default(), &once);
    assert!(again.edits.is_empty(), "{:?}", again.edits);
}

#[test]
fn no_guest_numa_cells_within_one_node_with_memory_off_or_own_cells() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let has_cells = |p: &Plan| {
        p.edits
            .iter()
            .any(|e| matches!(e.change, Change::GuestNuma { .. }))
    };
    let small = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("s", 8, 4096),
    );
    assert!(!has_cells(&small));
    let off = policy(&format!("{BASE}defaults:\n  memory_mode: off\n"));
    let big = plan_for(&off, &h, &Occupancy::default(), &guest("big", 24, 4096));
    assert!(!has_cells(&big));
    let own = guest("big", 24, 4096).replace(
        "</os>",
        "</os>\n  <cpu>\n    <numa>\n      <cell id='0' cpus='0-23' memory='4194304' unit='KiB'/>\n    </numa>\n  </cpu>",
    );
    let big = plan_for(&policy(BASE), &h, &Occupancy::default(), &own);
    assert!(!has_cells(&big));
}

#[test]
fn guest_numa_cells_are_whole_huge_pages_when_huge_pages_back_the_guest() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let xml = guest("big", 24, 10 * 1024).replace(
        "<vcpu",
        "<memoryBacking>\n    <hugepages>\n      <page size='1' unit='G'/>\n    </hugepages>\n  </memoryBacking>\n  <vcpu",
    );
    let p = plan_for(&policy(BASE), &h, &Occupancy::default(), &xml);
    let cells = p
        .edits
        .iter()
        .find_map(|e| match &e.change {
            Change::GuestNuma { cells } => Some(cells.clone()),
            _ => None,
        })
        .expect("guest NUMA cells");
    let gib = 1024 * 1024;
    assert!(cells.iter().all(|c| c.memory_kib % gib == 0), "{cells:?}");
    assert_eq!(cells.iter().map(|c| c.memory_kib).sum::<u64>(), 10 * gib);
}

#[test]
fn on_epyc_a_twelve_vcpu_guest_spans_two_nodes_of_one_socket() {
    let h = host("amd-epyc7451-2s24c2t-8node");
    // 12 threads per node on EPYC 7451; node0 loses CPU0, so 13+ needs two nodes.
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("g", 14, 4096),
    );
    let placement = p.placement.unwrap();
    assert_eq!(placement.nodes.len(), 2);
    let sockets: CpuSet = placement
        .cpus
        .iter()
        .filter_map(|c| h.socket_of(c))
        .collect();
    assert_eq!(sockets.len(), 1, "nodes of one socket: {}", placement.nodes);
}

#[test]
fn without_smt_two_vcpus_get_two_cores_of_one_socket() {
    let h = host("intel-xeon-e5-2680-2s8c-noht-2node");
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("g", 2, 1024),
    );
    let placement = p.placement.unwrap();
    assert_eq!(placement.level, Level::L3);
    assert_eq!(placement.cpus.len(), 2);
    let sockets: CpuSet = placement
        .cpus
        .iter()
        .filter_map(|c| h.socket_of(c))
        .collect();
    assert_eq!(sockets.len(), 1);
    assert_eq!(h.nodes_of(&placement.cpus).len(), 1);
}

#[test]
fn successive_guests_spread_to_the_least_loaded_cores() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let pol = policy(BASE);
    let mut occupancy = Occupancy::default();
    let mut used = CpuSet::new();
    for i in 0..15 {
        let p = plan_for(&pol, &h, &occupancy, &guest(&format!("g{i}"), 2, 512));
        let cpus = p.placement.as_ref().unwrap().cpus.clone();
        assert!(
            !cpus.intersects(&used),
            "guest {i} shares {cpus} while free cores remain"
        );
        used = used.union(&cpus);
        occupancy
            .guests
            .insert(format!("g{i}"), claim_of(&p, 512 * 1024));
    }
}

#[test]
fn existing_explicit_pins_are_kept_and_counted() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let xml = "<domain type='kvm'><name>nova</name><memory>1048576</memory><vcpu cpuset='4-5'>2</vcpu>\
               <cputune><vcpupin vcpu='0' cpuset='4'/><vcpupin vcpu='1' cpuset='5'/></cputune></domain>";
    let p = plan_for(&policy(BASE), &h, &Occupancy::default(), xml);
    assert!(p.kept_existing_pins);
    assert!(
        !p.edits
            .iter()
            .any(|e| matches!(e.change, Change::VcpuPins { .. }))
    );
    assert_eq!(p.placement.unwrap().cpus.to_string(), "4-5");
}

#[test]
fn a_dedicated_claim_is_never_handed_out_again() {
    let h = host("intel-core-i5-m560-laptop-1s2c2t");
    let mut occupancy = Occupancy::default();
    occupancy.guests.insert(
        "other".into(),
        Claim {
            vcpus: vec![CpuSet::single(1), CpuSet::single(3)],
            nodes: CpuSet::single(0),
            memory_kib: 0,
            pool: Pool::Dedicated,
        },
    );
    let p = plan_for(&policy(BASE), &h, &occupancy, &guest("g", 1, 256));
    assert_eq!(p.placement.unwrap().cpus.to_string(), "2");
}

#[test]
fn opted_out_guests_get_no_plan() {
    let h = host("intel-core-i5-m560-laptop-1s2c2t");
    let pol = policy(&format!(
        "{BASE}rules:\n  - name: legacy\n    match:\n      name: \"legacy-*\"\n    enabled: false\n"
    ));
    let p = plan_for(&pol, &h, &Occupancy::default(), &guest("legacy-db", 2, 256));
    assert!(!p.enabled);
    assert!(p.edits.is_empty());
    assert_eq!(p.policy_rule, "legacy");
}

#[test]
fn hugepages_only_when_the_node_has_enough_free_pages() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node"); // 2048 free 2M pages per node = 4 GiB
    let pol = policy(BASE);
    let fits = plan_for(&pol, &h, &Occupancy::default(), &guest("small", 2, 2048));
    assert!(
        fits.edits
            .iter()
            .any(|e| matches!(e.change, Change::HugePages { size_kib: 2048 }))
    );
    let too_big = plan_for(&pol, &h, &Occupancy::default(), &guest("large", 2, 8192));
    assert!(
        !too_big
            .edits
            .iter()
            .any(|e| matches!(e.change, Change::HugePages { .. }))
    );
    assert!(
        too_big
            .notes
            .iter()
            .any(|n| n.rule == "3.2" && n.text.contains("skipped"))
    );
}

#[test]
fn a_huge_page_backed_guest_goes_to_the_node_with_free_pages_of_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node");
    copy_tree(&src, dir.path());
    // Node 0 has only 100 free 2 MiB pages left (200 MiB); node 1 keeps 2048 (4 GiB).
    std::fs::write(
        dir.path()
            .join("sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages"),
        "100\n",
    )
    .unwrap();
    let h = kvmtune_sys::sysfs::read_host(dir.path()).unwrap();
    let xml = guest("hp", 2, 1024).replace(
        "<vcpu",
        "<memoryBacking>\n    <hugepages/>\n  </memoryBacking>\n  <vcpu",
    );
    let p = plan_for(&policy(BASE), &h, &Occupancy::default(), &xml);
    let placement = p.placement.unwrap();
    assert_eq!(placement.nodes.to_string(), "1", "{}", placement.why);
    // Without huge pages the same guest takes node 0 (its MemFree suffices).
    let p = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("plain", 2, 1024),
    );
    assert_eq!(p.placement.unwrap().nodes.to_string(), "0");
}

#[test]
fn shared_and_dedicated_guests_stay_in_their_pool_cpu_sets() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let pol = policy(
        "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n  shared_cpus: 1-7,16-23\n  dedicated_cpus: 8-15,24-31\nrules:\n  - name: nfv\n    match:\n      name: 'nfv-*'\n    set:\n      pool: dedicated\n",
    );
    let shared_set = CpuSet::parse("1-7,16-23").unwrap();
    let dedicated_set = CpuSet::parse("8-15,24-31").unwrap();
    let mut occupancy = Occupancy::default();
    for i in 0..12 {
        let name = if i % 3 == 0 {
            format!("nfv-{i}")
        } else {
            format!("web-{i}")
        };
        let p = plan_for(&pol, &h, &occupancy, &guest(&name, 2, 512));
        let placement = p.placement.as_ref().unwrap();
        let allowed = if name.starts_with("nfv") {
            &dedicated_set
        } else {
            &shared_set
        };
        assert!(
            placement.cpus.is_subset(allowed),
            "{name} got {} outside {allowed}",
            placement.cpus
        );
        occupancy.guests.insert(name, claim_of(&p, 512 * 1024));
    }
}

#[test]
fn a_running_guest_keeps_its_cpus_while_they_still_suit_the_policy() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let own = |cpus: [u32; 2]| Claim {
        vcpus: cpus.iter().map(|c| CpuSet::single(*c)).collect(),
        nodes: CpuSet::single(0),
        memory_kib: 512 * 1024,
        pool: Pool::Shared,
    };
    let mut occupancy = Occupancy::default();
    occupancy.guests.insert("web".into(), own([5, 21]));
    let p = plan_for(&policy(BASE), &h, &occupancy, &guest("web", 2, 512));
    let placement = p.placement.unwrap();
    assert_eq!(placement.cpus.to_string(), "5,21", "{}", placement.why);
    assert_eq!(placement.level, Level::Core);
    // Once its CPUs are reserved, it is placed afresh, away from them.
    let reserved = policy("version: 1\nhost:\n  reserved_cpus: 5,21\n  irq_cpus: none\n");
    let p = plan_for(&reserved, &h, &occupancy, &guest("web", 2, 512));
    let cpus = p.placement.unwrap().cpus;
    assert!(!cpus.contains(5) && !cpus.contains(21), "{cpus}");
}

#[test]
fn cpus_no_node_lists_are_never_node_local_and_used_last() {
    // node0 is offline on this snapshot: the online CPUs it held (4-20 even) are
    // listed by no node. They are filed under node 1 so every CPU has a node, but
    // they are not node-local (issue 11).
    let h = host("intel-xeon-e5-2680v3-2s-cpu0-and-node0-offline");
    let node1_listed = h.nodes[&1].cpus.difference(&h.nodeless);
    assert!(
        !h.nodeless.is_empty(),
        "the snapshot has CPUs no node lists"
    );
    assert!(!node1_listed.is_empty());
    let small = plan_for(
        &policy(BASE),
        &h,
        &Occupancy::default(),
        &guest("g", 2, 1024),
    );
    let cpus = small.placement.unwrap().cpus;
    assert!(
        !cpus.intersects(&h.nodeless),
        "{cpus} uses CPUs no node lists ({})",
        h.nodeless
    );
    assert!(small.notes.iter().all(|n| !n.text.contains("no NUMA node")));
    // A dedicated guest larger than the node-listed CPUs uses them, and says so.
    let big = plan_for(
        &policy(&format!("{BASE}defaults:\n  pool: dedicated\n")),
        &h,
        &Occupancy::default(),
        &guest("g", node1_listed.len() as u32 + 2, 1024),
    );
    assert!(big.placement.unwrap().cpus.intersects(&h.nodeless));
    assert!(
        big.notes
            .iter()
            .any(|n| n.rule == "1.2" && n.text.contains("belong to no NUMA node")),
        "{:?}",
        big.notes
    );
}

/// Issue 12: MemFree is only a sanity note. On the snapshot with 90% of memory in
/// page cache (MemFree 4.6 GiB on node 0, MemTotal 45.7 GiB) an 8 GiB guest is
/// placed exactly as on the original, with a note on MemFree; a guest the node
/// cannot hold by committed memory is refused under strict, noted under preferred.
#[test]
fn memfree_is_a_note_and_memtotal_minus_committed_decides() {
    let original = host("intel-xeon-silver4108-2s8c2t-2node");
    let cached = host("intel-xeon-silver4108-2s8c2t-2node-pagecache90");
    let pol = policy(BASE);
    let xml = guest("big", 4, 8192);
    let a = plan_for(&pol, &original, &Occupancy::default(), &xml);
    let b = plan_for(&pol, &cached, &Occupancy::default(), &xml);
    assert_eq!(a.placement, b.placement);
    assert!(b.no_room.is_none());
    assert!(
        b.notes
            .iter()
            .any(|n| n.rule == "1.2" && n.text.contains("MemFree")),
        "{:?}",
        b.notes
    );
    assert!(!a.notes.iter().any(|n| n.text.contains("MemFree")));
    // Node 0 holds 45.7 GiB − 1 GiB reserve − 4 GiB free huge pages; a guest
    // there with 40 GiB committed leaves 0.7 GiB: a 4 GiB guest cannot go there.
    let mut occupancy = Occupancy::default();
    occupancy.guests.insert(
        "resident".into(),
        Claim {
            vcpus: vec![CpuSet::single(8)],
            nodes: CpuSet::single(0),
            memory_kib: 40 << 20,
            pool: Pool::Shared,
        },
    );
    let strict = policy(&format!(
        "{BASE}defaults:\n  memory_mode: strict\n  nodes: 0\n"
    ));
    let refused = plan_for(&strict, &cached, &occupancy, &guest("g", 2, 4096));
    assert!(refused.placement.is_none());
    let why = refused.no_room.unwrap();
    assert!(why.contains("can hold the guest's 4096 MiB"), "{why}");
    assert!(
        why.contains("node 0: 722 MiB room (MemTotal 46802 − reserve 1024 − free huge pages 4096 − guests 40960 MiB)"),
        "{why}"
    );
    let preferred = policy(&format!("{BASE}defaults:\n  nodes: 0\n"));
    let placed = plan_for(&preferred, &cached, &occupancy, &guest("g", 2, 4096));
    let why = placed.placement.unwrap().why;
    assert!(why.contains("memory also comes from other nodes"), "{why}");
}

/// The default flow writes kvmtune's placement into the definition (`apply`,
/// `converge`): those pins carry kvmtune's pins mark, so at the next start they
/// are no hand-made pins to keep (`existing_pins: keep`) but kvmtune's own
/// placement: preferred while free (nothing to rewrite), re-placed when another
/// guest holds them, movable; once the admin changes one, they are the admin's.
#[test]
fn pins_kvmtune_wrote_stay_kvmtunes_until_someone_changes_them() {
    let h = host("intel-xeon-silver4108-2s8c2t-2node");
    let p = policy(BASE);
    let fresh = guest("web", 2, 1024)
        .replace("</name>", "</name>\n  <metadata>\n    <k:rule xmlns:k='http://kvmtune.org/xmlns/kvmtune/1.0'>x</k:rule>\n  </metadata>");
    let first = plan_for(&p, &h, &Occupancy::default(), &fresh);
    assert!(
        first
            .edits
            .iter()
            .any(|e| matches!(e.change, Change::PinsMark { .. })),
        "{}",
        first.explain()
    );
    let written = kvmtune_core::rewrite::apply(&fresh, &first.changes()).unwrap();
    assert!(
        written.contains("<k:rule"),
        "the admin's metadata stays:\n{written}"
    );
    let d = Domain::parse(&written).unwrap();
    assert!(d.pins_explicitly() && d.pins_by_kvmtune() && d.emulator_pin_by_kvmtune());
    assert_eq!(d.kvmtune_rule.as_deref(), Some("x"));
    let cpus = first.placement.as_ref().unwrap().cpus.clone();

    // Next start, CPUs free: the same CPUs, nothing to change, not kept.
    let again = plan_for(&p, &h, &Occupancy::default(), &written);
    assert!(!again.kept_existing_pins, "{}", again.explain());
    assert!(again.edits.is_empty(), "{}", again.explain());
    assert_eq!(again.placement.as_ref().unwrap().cpus, cpus);

    // Another guest holds them dedicated meanwhile: placed elsewhere, and the
    // new pins are marked again.
    let mut held = Occupancy::default();
    held.guests.insert(
        "nfv".into(),
        Claim {
            vcpus: cpus.iter().map(|c| CpuSet::from_iter([c])).collect(),
            nodes: CpuSet::parse("0").unwrap(),
            memory_kib: 1 << 20,
            pool: Pool::Dedicated,
        },
    );
    let moved = plan_for(&p, &h, &held, &written);
    let now = moved.placement.as_ref().unwrap().cpus.clone();
    assert!(!now.intersects(&cpus), "{}", moved.explain());
    let marks: Vec<_> = moved
        .edits
        .iter()
        .filter_map(|e| match &e.change {
            Change::PinsMark { mark } => Some(mark.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(marks.len(), 1, "{}", moved.explain());
    let marked: CpuSet = marks[0]
        .vcpus
        .values()
        .fold(CpuSet::new(), |a, s| a.union(s));
    assert_eq!(marked, now);

    // The admin pins vCPU 0 elsewhere: the guest's own pins now, kept.
    let other = h.online.difference(&cpus).iter().nth(3).unwrap();
    let vcpu0 = first.placement.as_ref().unwrap().vcpus[0].clone();
    let edited = written.replacen(
        &format!("<vcpupin vcpu='0' cpuset='{vcpu0}'/>"),
        &format!("<vcpupin vcpu='0' cpuset='{other}'/>"),
        1,
    );
    assert_ne!(edited, written);
    let kept = plan_for(&p, &h, &Occupancy::default(), &edited);
    assert!(kept.kept_existing_pins, "{}", kept.explain());
    assert!(
        !kept
            .edits
            .iter()
            .any(|e| matches!(e.change, Change::VcpuPins { .. })),
        "{}",
        kept.explain()
    );
}
