//! The host reader against the real sysfs/procfs snapshots in tests/data/hosts
//! (provenance and the quirks of each in tests/data/hosts/README.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::PathBuf;

use kvmtune_core::CpuSet;
use kvmtune_core::host::Host;

fn fixture(name: &str) -> Host {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts")
        .join(name);
    match kvmtune_sys::sysfs::read_host(&root) {
        Ok(host) => host,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).expect("cpulist")
}

fn core_cpus(host: &Host, cpu: u32) -> Option<CpuSet> {
    host.core_of(cpu).map(|core| core.cpus.clone())
}

/// One row of the fixtures README table.
struct Expected {
    name: &'static str,
    sockets: usize,
    nodes: usize,
    cores: usize,
    threads: usize,
    online: &'static str,
}

const TABLE: [Expected; 14] = [
    Expected {
        name: "intel-xeon-silver4108-2s8c2t-2node",
        sockets: 2,
        nodes: 2,
        cores: 16,
        threads: 32,
        online: "0-31",
    },
    // The same snapshot with 90% of each node's memory in page cache (README).
    Expected {
        name: "intel-xeon-silver4108-2s8c2t-2node-pagecache90",
        sockets: 2,
        nodes: 2,
        cores: 16,
        threads: 32,
        online: "0-31",
    },
    Expected {
        name: "intel-xeon-gold6230-2s20c2t-snc2-4node",
        sockets: 2,
        nodes: 4,
        cores: 40,
        threads: 80,
        online: "0-79",
    },
    Expected {
        name: "amd-epyc7451-2s24c2t-8node",
        sockets: 2,
        nodes: 8,
        cores: 48,
        threads: 96,
        online: "0-95",
    },
    Expected {
        name: "amd-opteron6276-4s-8node-cmt-modules",
        sockets: 4,
        nodes: 8,
        cores: 32,
        threads: 64,
        online: "0-63",
    },
    // The README table says 24 cores, but its own notes say "12 single-thread cores
    // per package" (x4 packages) and hwloc's view of the same snapshot
    // (48amd64-4pa2n6c-sparse.console) has 48 Cores: every thread_siblings_list is
    // a single CPU. 48 is right.
    Expected {
        name: "amd-opteron-magnycours-4s-8node-sparse-ids",
        sockets: 4,
        nodes: 8,
        cores: 48,
        threads: 48,
        online: "0-47",
    },
    Expected {
        name: "intel-xeon-e7-4870-4s10c-noht-interleaved",
        sockets: 4,
        nodes: 4,
        cores: 40,
        threads: 40,
        online: "0-39",
    },
    Expected {
        name: "intel-i7-1370p-1s-hybrid-pcore-ecore",
        sockets: 1,
        nodes: 1,
        cores: 14,
        threads: 20,
        online: "0-19",
    },
    Expected {
        name: "intel-xeon-e5-2680v3-2s-cpu0-and-node0-offline",
        sockets: 2,
        nodes: 1,
        cores: 17,
        threads: 17,
        online: "4-20",
    },
    Expected {
        name: "qemu-6vcpu-cpuless-memory-tier-nodes",
        sockets: 1,
        nodes: 7,
        cores: 6,
        threads: 6,
        online: "0-5",
    },
    Expected {
        name: "intel-core-i5-m560-laptop-1s2c2t",
        sockets: 1,
        nodes: 1,
        cores: 2,
        threads: 4,
        online: "0-3",
    },
    Expected {
        name: "intel-xeon-e5-2680-2s8c-noht-2node",
        sockets: 2,
        nodes: 2,
        cores: 16,
        threads: 16,
        online: "0-15",
    },
    Expected {
        name: "intel-xeon-e5472-2s-buggy-overlapping-nodes",
        sockets: 2,
        nodes: 8,
        cores: 8,
        threads: 8,
        online: "0-7",
    },
    Expected {
        name: "hyperv-vm-xeon-w2155-2vcpu-with-irq",
        sockets: 1,
        nodes: 1,
        cores: 1,
        threads: 2,
        online: "0-1",
    },
];

#[test]
fn table_covers_every_fixture() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hosts");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = TABLE.iter().map(|e| e.name.to_string()).collect();
    in_table.sort();
    assert_eq!(on_disk, in_table);
}

#[test]
fn every_fixture_has_the_documented_shape() {
    for e in &TABLE {
        let host = fixture(e.name);
        let counts = (
            host.sockets.len(),
            host.nodes.len(),
            host.cores.len(),
            host.cpus.len(),
        );
        assert_eq!(
            counts,
            (e.sockets, e.nodes, e.cores, e.threads),
            "{}",
            e.name
        );
        assert_eq!(host.online, set(e.online), "{}", e.name);
        assert_eq!(
            host.summary(),
            format!(
                "{} socket{}, {} node{}, {} core{}, {} thread{}",
                e.sockets,
                if e.sockets == 1 { "" } else { "s" },
                e.nodes,
                if e.nodes == 1 { "" } else { "s" },
                e.cores,
                if e.cores == 1 { "" } else { "s" },
                e.threads,
                if e.threads == 1 { "" } else { "s" },
            ),
        );
    }
}

/// What the planner relies on, on every fixture: nodes, cores and sockets each
/// partition the online CPUs, and every CPU's indexes agree with those sets.
#[test]
fn every_fixture_is_internally_consistent() {
    for e in &TABLE {
        let host = fixture(e.name);
        let name = e.name;
        for (label, groups) in [
            (
                "nodes",
                host.nodes
                    .values()
                    .map(|n| n.cpus.clone())
                    .collect::<Vec<_>>(),
            ),
            ("cores", host.cores.iter().map(|c| c.cpus.clone()).collect()),
            ("sockets", host.sockets.values().cloned().collect()),
        ] {
            let mut seen = CpuSet::new();
            for group in &groups {
                assert!(!group.intersects(&seen), "{name}: {label} overlap");
                seen = seen.union(group);
            }
            assert_eq!(
                seen, host.online,
                "{name}: {label} do not cover the online CPUs"
            );
        }
        for (&id, cpu) in &host.cpus {
            assert_eq!(cpu.id, id);
            assert!(
                host.cores[cpu.core].cpus.contains(id),
                "{name}: cpu{id} core"
            );
            assert!(
                host.nodes[&cpu.node].cpus.contains(id),
                "{name}: cpu{id} node"
            );
            assert!(
                host.sockets[&cpu.socket].contains(id),
                "{name}: cpu{id} socket"
            );
            assert_eq!(
                host.cores[cpu.core].socket, cpu.socket,
                "{name}: cpu{id} core socket"
            );
            assert_eq!(
                host.cores[cpu.core].node, cpu.node,
                "{name}: cpu{id} core node"
            );
            // No snapshot kept cpuN/cache: the planner falls back to the socket.
            assert_eq!(cpu.l3, None, "{name}");
            assert_eq!(host.llc_of(id), host.sockets.get(&cpu.socket), "{name}");
        }
        for (id, node) in &host.nodes {
            assert_eq!(node.id, *id);
            for other in node.distances.keys() {
                assert!(
                    host.nodes.contains_key(other),
                    "{name}: distance to unknown node {other}"
                );
            }
        }
        assert!(host.isolated.is_empty(), "{name}");
    }
}

#[test]
fn silver4108_classic_two_socket_ht() {
    let host = fixture("intel-xeon-silver4108-2s8c2t-2node");
    assert_eq!(core_cpus(&host, 0), Some(set("0,16")));
    assert_eq!(core_cpus(&host, 23), Some(set("7,23")));
    assert_eq!(host.nodes[&0].cpus, set("0-7,16-23"));
    assert_eq!(host.nodes[&1].cpus, set("8-15,24-31"));
    assert_eq!(host.node_of(16), Some(0));
    assert_eq!(host.socket_of(24), Some(1));
    assert_eq!(host.nodes[&0].mem_total_kib, Some(47_925_628));
    assert_eq!(host.nodes[&0].mem_free_kib, Some(24_465_948));
    assert_eq!(host.distance(0, 1), Some(21));
    assert_eq!(host.distance(1, 1), Some(10));
    for node in host.nodes.values() {
        assert_eq!(node.hugepages[&2048].total, 2048, "node{}", node.id);
        assert_eq!(node.hugepages[&2048].free, 2048, "node{}", node.id);
        assert_eq!(node.hugepages[&1_048_576].total, 0, "node{}", node.id);
    }
    assert_eq!(host.nodes_of(&set("0,8,16")), set("0-1"));
    assert!(host.irqs.is_empty());
}

#[test]
fn gold6230_sub_numa_clusters_interleave_cpus() {
    let host = fixture("intel-xeon-gold6230-2s20c2t-snc2-4node");
    assert_eq!(host.nodes[&0].cpus, set("0-79:4"));
    assert_eq!(host.nodes[&3].cpus, set("3-79:4"));
    assert_eq!(core_cpus(&host, 0), Some(set("0,40")));
    assert_eq!(host.node_of(40), Some(0));
    // Nodes 0 and 2 share socket 0: distance 11, not 21.
    assert_eq!(host.socket_of(0), host.socket_of(2));
    assert_eq!(host.distance(0, 2), Some(11));
    assert_eq!(host.distance(0, 1), Some(21));
}

#[test]
fn epyc_dump_without_meminfo_has_unknown_memory() {
    let host = fixture("amd-epyc7451-2s24c2t-8node");
    assert_eq!(host.nodes[&0].cpus, set("0-5,48-53"));
    assert_eq!(core_cpus(&host, 5), Some(set("5,53")));
    for node in host.nodes.values() {
        assert_eq!(node.mem_total_kib, None);
        assert_eq!(node.mem_free_kib, None);
        assert!(node.distances.is_empty());
        assert!(node.hugepages.is_empty());
    }
}

#[test]
fn cmt_modules_are_cores_by_thread_siblings_not_core_id() {
    let host = fixture("amd-opteron6276-4s-8node-cmt-modules");
    // CPUs 0 and 1 have different core_ids but one thread_siblings_list.
    assert_eq!(core_cpus(&host, 1), Some(set("0-1")));
    assert_eq!(host.nodes[&5].mem_total_kib, Some(8_388_608));
    assert_eq!(host.nodes[&4].mem_total_kib, Some(16_777_216));
    assert_eq!(host.distance(0, 3), Some(22));
    assert_eq!(host.distance(0, 1), Some(16));
}

#[test]
fn sparse_node_ids_map_distance_rows_by_index() {
    let host = fixture("amd-opteron-magnycours-4s-8node-sparse-ids");
    let ids: Vec<u32> = host.nodes.keys().copied().collect();
    assert_eq!(ids, vec![0, 1, 2, 33, 34, 45, 72, 73]);
    assert_eq!(host.nodes[&33].cpus, set("18-23"));
    // node0's row is "10 16 16 22 ...": its 4th entry is node33, not node3.
    assert_eq!(host.distance(0, 33), Some(22));
    assert_eq!(host.distance(2, 33), Some(16));
    assert_eq!(host.distance(73, 72), Some(16));
    assert_eq!(host.distance(73, 73), Some(10));
    // core_id repeats 0-5 twice per package; each CPU is still its own core.
    assert_eq!(core_cpus(&host, 6), Some(set("6")));
    assert_eq!(host.sockets[&0], set("0-11"));
}

#[test]
fn e7_4870_numbers_cpus_round_robin_across_sockets() {
    let host = fixture("intel-xeon-e7-4870-4s10c-noht-interleaved");
    assert_eq!(host.nodes[&0].cpus, set("0-36:4"));
    assert_eq!(host.sockets[&1], set("1-37:4"));
    assert_eq!(core_cpus(&host, 4), Some(set("4")));
}

#[test]
fn hybrid_p_and_e_cores() {
    let host = fixture("intel-i7-1370p-1s-hybrid-pcore-ecore");
    assert_eq!(core_cpus(&host, 0), Some(set("0-1")));
    assert_eq!(core_cpus(&host, 11), Some(set("10-11")));
    assert_eq!(core_cpus(&host, 12), Some(set("12")));
    let sizes: Vec<u64> = host.nodes[&0].hugepages.keys().copied().collect();
    assert_eq!(sizes, vec![2048, 1_048_576]);
}

#[test]
fn offline_cpu0_and_node0() {
    let host = fixture("intel-xeon-e5-2680v3-2s-cpu0-and-node0-offline");
    assert!(!host.cpus.contains_key(&0));
    assert_eq!(host.node_of(0), None);
    assert_eq!(host.core_of(0), None);
    let ids: Vec<u32> = host.nodes.keys().copied().collect();
    assert_eq!(ids, vec![1]);
    // node1/cpulist names only odd CPUs (1,3 and 21,23 offline); the even ones
    // belonged to the offline node0 and are adopted by the only online node, as
    // the kernel does for CPUs of an offline node.
    assert_eq!(host.nodes[&1].cpus, set("4-20"));
    assert_eq!(host.sockets[&0], set("4-20:2"));
    assert_eq!(host.sockets[&1], set("5-19:2"));
    // The distance row "21 10" indexes the possible nodes 0-1; node0 is gone.
    assert_eq!(host.nodes[&1].distances.len(), 1);
    assert_eq!(host.distance(1, 1), Some(10));
    assert_eq!(host.nodes[&1].mem_total_kib, Some(67_108_864));
}

#[test]
fn cpuless_memory_tier_nodes_are_kept() {
    let host = fixture("qemu-6vcpu-cpuless-memory-tier-nodes");
    let ids: Vec<u32> = host.nodes.keys().copied().collect();
    assert_eq!(ids, vec![0, 1, 2, 4, 6, 8, 9]);
    for id in [4, 6, 8, 9] {
        assert!(host.nodes[&id].cpus.is_empty(), "node{id}");
        assert!(host.nodes[&id].mem_total_kib.is_some(), "node{id}");
    }
    assert_eq!(host.nodes[&4].mem_total_kib, Some(524_288));
    assert_eq!(host.nodes[&2].cpus, set("4-5"));
    assert_eq!(host.distance(0, 9), Some(20));
    assert_eq!(host.distance(9, 9), Some(10));
}

#[test]
fn laptop_with_derived_cpulist_and_no_meminfo() {
    let host = fixture("intel-core-i5-m560-laptop-1s2c2t");
    assert_eq!(core_cpus(&host, 0), Some(set("0,2")));
    assert_eq!(core_cpus(&host, 3), Some(set("1,3")));
    assert_eq!(host.nodes[&0].cpus, set("0-3"));
    assert_eq!(host.nodes[&0].mem_total_kib, None);
}

#[test]
fn no_ht_two_node_contiguous() {
    let host = fixture("intel-xeon-e5-2680-2s8c-noht-2node");
    assert_eq!(host.nodes[&0].cpus, set("0-7"));
    assert_eq!(host.nodes[&1].cpus, set("8-15"));
    assert_eq!(host.distance(1, 0), Some(21));
}

#[test]
fn overlapping_nodes_give_each_cpu_to_the_lowest_node() {
    let host = fixture("intel-xeon-e5472-2s-buggy-overlapping-nodes");
    assert_eq!(host.nodes[&0].cpus, set("0-7"));
    for id in 1..8 {
        assert!(host.nodes[&id].cpus.is_empty(), "node{id}");
        assert!(host.nodes[&id].mem_total_kib.is_some(), "node{id}");
    }
    assert!(host.cpus.values().all(|cpu| cpu.node == 0));
    assert_eq!(host.nodes_of(&host.online), set("0"));
}

#[test]
fn hyperv_irqs_all_unbound_and_no_node_directory() {
    let host = fixture("hyperv-vm-xeon-w2155-2vcpu-with-irq");
    assert_eq!(host.nodes[&0].cpus, set("0-1"));
    assert_eq!(host.nodes[&0].mem_total_kib, None);
    assert_eq!(core_cpus(&host, 1), Some(set("0-1")));
    let numbers: Vec<u32> = host.irqs.iter().map(|irq| irq.number).collect();
    assert_eq!(numbers, (0..16).collect::<Vec<u32>>());
    assert!(host.irqs.iter().all(|irq| irq.affinity == set("0-1")));
    let named: Vec<(u32, &str)> = host
        .irqs
        .iter()
        .filter(|irq| !irq.actions.is_empty())
        .map(|irq| (irq.number, irq.actions.as_str()))
        .collect();
    assert_eq!(named, vec![(8, "rtc0"), (9, "acpi")]);
    // Every IRQ may go to every online CPU: none is bound anywhere.
    assert!(host.irq_bound_cpus().is_empty());
}

/// The hook's cached read gives exactly the full read, on every fixture host, and
/// refreshes what changes at run time.
#[test]
fn cached_reads_equal_full_reads_and_refresh_memory_and_huge_pages() {
    let hosts = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hosts");
    for entry in std::fs::read_dir(&hosts).unwrap().flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let root = entry.path();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("host-topology.json");
        let full = kvmtune_sys::sysfs::read_host(&root).unwrap();
        let first = kvmtune_sys::sysfs::read_host_cached(&root, &cache).unwrap();
        assert!(cache.exists(), "{}: cache not written", root.display());
        let second = kvmtune_sys::sysfs::read_host_cached(&root, &cache).unwrap();
        assert_eq!(first, full, "{}", root.display());
        assert_eq!(second, full, "{} (from the cache)", root.display());
    }
}

#[test]
fn the_cache_is_refreshed_or_ignored_when_the_host_changed() {
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    copy_tree(&src, &root);
    let cache = dir.path().join("host-topology.json");
    let before = kvmtune_sys::sysfs::read_host_cached(&root, &cache).unwrap();
    assert_eq!(before.nodes[&0].hugepages[&2048].free, 2048);
    // Run-time state changes: read fresh although the topology comes from the cache.
    let free = root.join("sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages");
    std::fs::write(&free, "7\n").unwrap();
    let after = kvmtune_sys::sysfs::read_host_cached(&root, &cache).unwrap();
    assert_eq!(after.nodes[&0].hugepages[&2048].free, 7);
    // CPU hot-unplug changes the online list: the cache no longer applies.
    std::fs::write(root.join("sys/devices/system/cpu/online"), "0-30\n").unwrap();
    let unplugged = kvmtune_sys::sysfs::read_host_cached(&root, &cache).unwrap();
    assert_eq!(unplugged, kvmtune_sys::sysfs::read_host(&root).unwrap());
    assert!(!unplugged.online.contains(31));
    // A garbage cache is ignored.
    std::fs::write(&cache, "{not json").unwrap();
    let again = kvmtune_sys::sysfs::read_host_cached(&root, &cache).unwrap();
    assert_eq!(again, kvmtune_sys::sysfs::read_host(&root).unwrap());
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
