//! status on a synthetic host numbered like the fixture
//! `intel-xeon-silver4108-2s8c2t-2node` (2 sockets, 2 nodes, 8 cores a node, 2
//! threads a core, no L3 information, 2M pages on each node), with hand-made status
//! files, ledger and vCPU thread affinities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::host::HugePages;
use crate::ledger::{Entry, EntryState, Ledger};
use crate::placement::Pool;
use crate::runstate::parse_status;

/// Like the fixture: CPU c and c+16 are siblings, node 0 = 0-7,16-23; the fixture
/// reports no L3 (groups are sockets) and 2048 free 2M pages and no 1G pages a node.
fn fixture_host() -> Host {
    let mut host = Host::synthetic(2, 1, 8, 2, 47_925_628);
    host.l3_groups.clear();
    for cpu in host.cpus.values_mut() {
        cpu.l3 = None;
    }
    for node in host.nodes.values_mut() {
        node.hugepages.insert(
            2048,
            HugePages {
                total: 2048,
                free: 2048,
            },
        );
        node.hugepages.insert(1_048_576, HugePages::default());
    }
    host
}

fn set(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

/// A status file: `pins` = (vcpu, cpuset) pins in the live XML.
fn status_xml(name: &str, pid: u32, vcpus: u32, pins: &[(u32, &str)], extra: &str) -> String {
    let tids: String = (0..vcpus)
        .map(|v| format!("<vcpu id='{v}' pid='{}'/>", pid + 1 + v))
        .collect();
    let cputune = if pins.is_empty() {
        String::new()
    } else {
        let p: String = pins
            .iter()
            .map(|(v, s)| format!("<vcpupin vcpu='{v}' cpuset='{s}'/>"))
            .collect();
        format!("<cputune>{p}</cputune>")
    };
    format!(
        "<domstatus state='running' pid='{pid}'><vcpus>{tids}</vcpus>\
         <domain type='kvm' id='1'><name>{name}</name><memory unit='KiB'>1048576</memory>\
         <vcpu placement='static'>{vcpus}</vcpu>{cputune}{extra}\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' io='native'/>\
         <source file='/x.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain></domstatus>"
    )
}

fn entry(vcpus: &[&str], nodes: &str, state: EntryState, claimed_at: u64) -> Entry {
    let vcpus: Vec<CpuSet> = vcpus.iter().map(|s| set(s)).collect();
    Entry {
        uuid: None,
        cpus: vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s)),
        nodes: set(nodes),
        vcpus,
        emulator: None,
        memory_kib: 1048576,
        pool: Pool::Shared,
        claimed_at,
        state,
        rule: "defaults".into(),
        floating: false,
    }
}

struct World {
    policy: Policy,
    host: Host,
    live: BTreeMap<String, LiveGuest>,
    ledger: Ledger,
    /// Cpus_allowed_list of the vCPU threads, by guest.
    threads: BTreeMap<String, Vec<Option<CpuSet>>>,
}

const NOW: u64 = 1_000_000;

fn world() -> World {
    let conforming = "<memoryBacking><nosharepages/></memoryBacking><numatune><memory mode='preferred' nodeset='0'/></numatune>";
    let mut live = BTreeMap::new();
    // Pinned by its XML to the two threads of core 1 (CPUs 1 and 17), node 0.
    let pinned = parse_status(&status_xml(
        "pinned",
        100,
        2,
        &[(0, "1"), (1, "17")],
        &format!("{conforming}<cputune><emulatorpin cpuset='1,17'/></cputune>"),
    ))
    .unwrap();
    live.insert("pinned".to_string(), pinned);
    // Placed at runtime by the hook (ledger), threads agree; lacks <nosharepages/>.
    live.insert(
        "runtime".to_string(),
        parse_status(&status_xml("runtime", 200, 2, &[], "")).unwrap(),
    );
    // No ledger entry, nothing pinned.
    live.insert(
        "stray".to_string(),
        parse_status(&status_xml("stray", 300, 1, &[], conforming)).unwrap(),
    );

    let mut ledger = Ledger {
        version: 1,
        ..Ledger::default()
    };
    ledger.guests.insert(
        "pinned".into(),
        entry(&["1", "17"], "0", EntryState::Running, 10),
    );
    ledger.guests.insert(
        "runtime".into(),
        entry(&["2", "18"], "0", EntryState::Running, 10),
    );
    ledger
        .guests
        .insert("gone".into(), entry(&["3"], "0", EntryState::Running, 10));
    ledger.guests.insert(
        "booting".into(),
        entry(&["4"], "0", EntryState::Prepared, NOW - 5),
    );

    // As read from /proc: only the "runtime" guest's threads exist there.
    let mut threads = BTreeMap::new();
    threads.insert("pinned".to_string(), vec![None, None]);
    threads.insert("runtime".to_string(), vec![Some(set("2")), Some(set("18"))]);
    threads.insert("stray".to_string(), vec![None]);
    World {
        policy: Policy::default(),
        host: fixture_host(),
        live,
        ledger,
        threads,
    }
}

fn build_world(w: &World) -> Status {
    build(&Inputs {
        policy: &w.policy,
        host: &w.host,
        ledger_path: PathBuf::from("/run/kvmtune/ledger.json"),
        ledger: Some(Some(w.ledger.clone())),
        live: w.live.clone(),
        observed: w
            .threads
            .clone()
            .into_iter()
            .map(|(k, v)| (k, crate::readback::Observed::vcpus_only(v)))
            .collect(),
        converge_queue: (PathBuf::from("/run/kvmtune/converge"), Ok(Vec::new())),
        now: NOW,
    })
}

fn thread(s: &Status, cpu: u32) -> &ThreadView {
    s.host
        .nodes
        .iter()
        .flat_map(|n| &n.groups)
        .flat_map(|g| &g.cores)
        .flat_map(|c| &c.threads)
        .find(|t| t.cpu == cpu)
        .unwrap()
}

fn check<'a>(g: &'a GuestView, rule: &str) -> &'a Check {
    g.conformance.iter().find(|c| c.rule == rule).unwrap()
}

#[test]
fn topology_is_nodes_then_sockets_then_cores_then_threads() {
    let s = build_world(&world());
    assert_eq!(s.host.summary, "2 sockets, 2 nodes, 16 cores, 32 threads");
    assert_eq!(s.host.nodes.len(), 2);
    let node0 = &s.host.nodes[0];
    assert_eq!(node0.cpus, set("0-7,16-23"));
    // The fixture has no L3 information: one socket group per node.
    assert_eq!(node0.groups.len(), 1);
    assert_eq!(node0.groups[0].kind, "socket");
    assert_eq!(node0.groups[0].cores.len(), 8);
    assert_eq!(node0.groups[0].cores[1].cpus, set("1,17"));
    assert_eq!(
        node0.hugepages,
        vec![
            HugePagesView {
                size_kib: 2048,
                total: 2048,
                free: 2048
            },
            HugePagesView {
                size_kib: 1048576,
                total: 0,
                free: 0
            }
        ]
    );
}

#[test]
fn threads_are_marked_with_roles_and_guest_vcpus() {
    let mut w = world();
    w.policy.host.reserved_cpus = set("16");
    let s = build_world(&w);
    assert_eq!(thread(&s, 0).role, Role::Cpu0);
    assert_eq!(thread(&s, 16).role, Role::Reserved);
    assert_eq!(thread(&s, 5).role, Role::Guests);
    assert!(thread(&s, 5).guests.is_empty());
    let uses = &thread(&s, 17).guests;
    assert_eq!(
        uses,
        &vec![GuestUse {
            guest: "pinned".into(),
            vcpus: set("1")
        }]
    );
    assert_eq!(thread(&s, 2).guests[0].guest, "runtime");
    // The stale claim does not mark CPU 3: only running guests do.
    assert!(thread(&s, 3).guests.is_empty());
}

#[test]
fn guests_show_placement_source_and_conformance() {
    let s = build_world(&world());
    let names: Vec<&str> = s.guests.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["pinned", "runtime", "stray"]);

    let pinned = &s.guests[0];
    assert_eq!(pinned.source, Source::Xml);
    assert_eq!(pinned.vcpu_cpus, vec![set("1"), set("17")]);
    assert_eq!(pinned.nodes, set("0"));
    assert!(pinned.ledger.agrees);
    assert_eq!(check(pinned, "1.1").state, Conformance::Ok);
    assert_eq!(check(pinned, "3.1").state, Conformance::Ok);

    let runtime = &s.guests[1];
    assert_eq!(runtime.source, Source::Ledger);
    assert_eq!(runtime.threads, vec![Some(set("2")), Some(set("18"))]);
    assert_eq!(check(runtime, "1.1").state, Conformance::RuntimeEnforced);
    assert_eq!(
        check(runtime, "1.1").detail,
        "applied at start: vCPU→CPU 0→2 1→18; threads agree"
    );
    // `preferred` memory is moved once, not bound: say what it is.
    assert_eq!(
        check(runtime, "1.2").detail,
        "memory from node(s) 0 where the vCPUs run, mode preferred — not bound at runtime: at start the hook has memory already allocated elsewhere moved to these node(s) once, in the background; later allocations follow the pinned vCPUs by first touch and may fall back to other nodes; kvmtune apply writes it"
    );
    assert_eq!(check(runtime, "1.2").state, Conformance::Ok);
    assert_eq!(check(runtime, "3.1").state, Conformance::Differs);
    assert_eq!(check(runtime, "2.1").state, Conformance::Ok);
    assert_eq!(check(runtime, "5").state, Conformance::Ok);

    let stray = &s.guests[2];
    assert_eq!(stray.source, Source::None);
    assert!(!stray.ledger.agrees);
    // Without a ledger claim nobody applied the placement: it differs.
    assert_eq!(check(stray, "1.1").state, Conformance::Differs);

    assert_eq!(s.ledger.stale, vec!["gone".to_string()]);
    assert_eq!(s.ledger.starting, vec!["booting".to_string()]);
    assert!(!s.ledger.agrees);
}

#[test]
fn threads_elsewhere_than_the_ledger_say_differs() {
    let mut w = world();
    // /proc says vCPU 1 may run anywhere.
    w.threads.insert(
        "runtime".to_string(),
        vec![Some(set("2")), Some(set("0-31"))],
    );
    let s = build_world(&w);
    let c = check(&s.guests[1], "1.1");
    assert_eq!(c.state, Conformance::Differs);
    assert_eq!(
        c.detail,
        "applied at start: vCPU→CPU 0→2 1→18; vCPU threads drifted: expected 18, found 0-31 (vCPU 1)"
    );
    let r = &s.guests[1].readback[0];
    assert_eq!(r.aspect, crate::readback::Aspect::VcpuThreads);
    assert_eq!(r.state, crate::readback::State::Drifted);
}

#[test]
fn an_emulator_thread_elsewhere_makes_rule_1_3_differ() {
    use crate::readback::{Aspect, Observed, State, ThreadRead};
    let mut w = world();
    let mut e = w.ledger.guests["runtime"].clone();
    e.emulator = Some(set("2,18"));
    w.ledger.guests.insert("runtime".into(), e);
    let thread = |tid: u32, cpus: &str| ThreadRead {
        tid,
        name: "worker".into(),
        cpus: Some(set(cpus)),
    };
    let mut observed = Observed::vcpus_only(vec![Some(set("2")), Some(set("18"))]);
    observed.emulator = vec![thread(200, "2,18"), thread(205, "0-31")];
    let mut inputs_observed: BTreeMap<String, Observed> = w
        .threads
        .iter()
        .map(|(k, v)| (k.clone(), Observed::vcpus_only(v.clone())))
        .collect();
    inputs_observed.insert("runtime".into(), observed.clone());
    let build_with = |observed: BTreeMap<String, Observed>| {
        build(&Inputs {
            policy: &w.policy,
            host: &w.host,
            ledger_path: PathBuf::from("/run/kvmtune/ledger.json"),
            ledger: Some(Some(w.ledger.clone())),
            live: w.live.clone(),
            observed,
            converge_queue: (PathBuf::from("/run/kvmtune/converge"), Ok(Vec::new())),
            now: NOW,
        })
    };
    let s = build_with(inputs_observed.clone());
    let g = &s.guests[1];
    let r = g
        .readback
        .iter()
        .find(|r| r.aspect == Aspect::EmulatorThreads)
        .unwrap();
    assert_eq!(r.state, State::Drifted);
    assert_eq!(r.detail, "expected 2,18, found 0-31 (thread 205 worker)");
    let c = check(g, "1.3");
    assert_eq!(c.state, Conformance::Differs);
    assert!(
        c.detail
            .contains("emulator threads drifted: expected 2,18, found 0-31"),
        "{}",
        c.detail
    );
    // Both on the claim: verified, and the rule says so.
    observed.emulator[1].cpus = Some(set("2,18"));
    inputs_observed.insert("runtime".into(), observed);
    let s = build_with(inputs_observed);
    let c = check(&s.guests[1], "1.3");
    assert_eq!(c.state, Conformance::RuntimeEnforced);
    assert_eq!(
        c.detail,
        "applied at start: emulator threads on CPUs 2,18; emulator threads verified"
    );
}

/// Pins kvmtune wrote into the definition (pins mark) are where the guest
/// started, not where it runs once repacking or rebalance moved it: the claim
/// is the placement, and the threads are checked against it.
#[test]
fn kvmtunes_own_xml_pins_give_way_to_the_claim_that_moved_the_guest() {
    let mut w = world();
    let mark = format!(
        "<metadata><p:pins xmlns:p='{}'>0:1 1:17 emulator:1,17</p:pins></metadata>",
        crate::pins_mark::NAMESPACE
    );
    let xml = status_xml("pinned", 100, 2, &[(0, "1"), (1, "17")], "")
        .replace("<memory unit", &format!("{mark}<memory unit"))
        .replace("</cputune>", "<emulatorpin cpuset='1,17'/></cputune>");
    w.live.insert("pinned".into(), parse_status(&xml).unwrap());
    let mut moved = entry(&["5", "21"], "0", EntryState::Running, 10);
    moved.emulator = Some(set("5,21"));
    w.ledger.guests.insert("pinned".into(), moved);
    w.threads
        .insert("pinned".into(), vec![Some(set("5")), Some(set("21"))]);
    let s = build_world(&w);
    let g = &s.guests[0];
    assert_eq!(g.source, Source::Ledger);
    assert_eq!(g.vcpu_cpus, vec![set("5"), set("21")]);
    assert!(g.ledger.agrees, "{}", g.ledger.detail);
    assert_eq!(g.emulator, Some(set("5,21")));
    // Without a claim the XML pins are all there is.
    w.ledger.guests.remove("pinned");
    let s = build_world(&w);
    assert_eq!(s.guests[0].source, Source::Xml);
}

#[test]
fn ledger_pins_that_differ_from_the_live_xml_disagree() {
    let mut w = world();
    w.ledger.guests.insert(
        "pinned".into(),
        entry(&["5", "21"], "0", EntryState::Running, 10),
    );
    let s = build_world(&w);
    assert_eq!(
        s.guests[0].ledger.detail,
        "ledger says CPUs 5,21 but the live XML pins 1,17"
    );
    assert!(!s.guests[0].ledger.agrees);
}

#[test]
fn opted_out_guests_are_not_expected_in_the_ledger() {
    let text = "version: 1\nrules:\n  - name: hands-off\n    match:\n      name: \"stray\"\n    enabled: false\n";
    let mut w = world();
    w.policy = Policy::parse(text, Path::new("p.yaml")).unwrap();
    let s = build_world(&w);
    let stray = &s.guests[2];
    assert_eq!(stray.conformance.len(), 1);
    assert_eq!(stray.conformance[0].state, Conformance::OptedOut);
    assert!(stray.ledger.agrees);
}

#[test]
fn no_ledger_file_and_no_guests() {
    let w = world();
    let s = build(&Inputs {
        policy: &w.policy,
        host: &w.host,
        ledger_path: PathBuf::from("/nowhere/ledger.json"),
        ledger: None,
        live: BTreeMap::new(),
        observed: BTreeMap::new(),
        converge_queue: (PathBuf::from("/run/kvmtune/converge"), Ok(Vec::new())),
        now: NOW,
    });
    assert_eq!(s.ledger.file, "absent");
    assert!(s.ledger.agrees);
    // The picture of this status: see the renderer's tests.
}

#[test]
fn json_is_stable_for_monitoring() {
    let s = build_world(&world());
    let v: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(v["guests"][1]["name"], "runtime");
    assert_eq!(v["guests"][1]["source"], "ledger");
    assert_eq!(v["guests"][1]["cpus"], "2,18");
    assert_eq!(
        v["guests"][1]["conformance"][0]["state"],
        "runtime-enforced"
    );
    assert_eq!(
        v["host"]["nodes"][0]["groups"][0]["cores"][0]["threads"][0]["role"],
        "cpu0"
    );
    assert_eq!(v["ledger"]["stale"][0], "gone");
    assert_eq!(v["guests"][1]["readback"][0]["aspect"], "vcpu-threads");
    assert_eq!(v["guests"][1]["readback"][0]["state"], "verified");
    assert_eq!(v["guests"][0]["readback"][0]["state"], "unread");
}

#[test]
fn queued_guests_are_listed_and_marked_on_running_guests() {
    use crate::converge::Entry as Queued;
    let w = world();
    let queued = |uuid: Option<&str>, at: u64| Queued {
        uuid: uuid.map(str::to_string),
        queued_at: at,
    };
    let build_with = |queue: Result<Vec<(String, Queued)>, String>| {
        build(&Inputs {
            policy: &w.policy,
            host: &w.host,
            ledger_path: PathBuf::from("/run/kvmtune/ledger.json"),
            ledger: Some(Some(w.ledger.clone())),
            live: w.live.clone(),
            observed: BTreeMap::new(),
            converge_queue: (PathBuf::from("/run/kvmtune/converge"), queue),
            now: NOW,
        })
    };
    let s = build_with(Ok(vec![
        ("defunct".to_string(), queued(None, 0)),
        ("runtime".to_string(), queued(Some("u-1"), 1_764_589_202)),
    ]));
    let runtime = &s.guests[1];
    assert_eq!(
        runtime.queued_for_convergence,
        Some(super::Queued {
            queued_at: 1_764_589_202,
            uuid: Some("u-1".into())
        })
    );
    assert_eq!(s.guests[0].queued_for_convergence, None);
    let running: Vec<(&str, bool)> = s
        .converge_queue
        .guests
        .iter()
        .map(|q| (q.guest.as_str(), q.running))
        .collect();
    assert_eq!(running, [("defunct", false), ("runtime", true)]);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v["guests"][1]["queued_for_convergence"]["queued_at"],
        1_764_589_202
    );
    assert!(v["guests"][0]["queued_for_convergence"].is_null());
    assert_eq!(v["converge_queue"]["path"], "/run/kvmtune/converge");
    assert_eq!(v["converge_queue"]["guests"][0]["running"], false);
    assert!(v["converge_queue"]["error"].is_null());

    let s = build_with(Err("permission denied".into()));
    assert_eq!(s.converge_queue.error.as_deref(), Some("permission denied"));
    assert!(s.guests.iter().all(|g| g.queued_for_convergence.is_none()));
}
