//! The picture of a status built on the fixture host
//! `intel-xeon-silver4108-2s8c2t-2node` with hand-made status files, ledger and
//! vCPU thread affinities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, EntryState, Ledger};
use kvmtune_core::placement::Pool;
use kvmtune_core::policy::Policy;
use kvmtune_core::runstate::{LiveGuest, parse_status};
use kvmtune_core::status::{Inputs, build};

fn fixture_host() -> Host {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node");
    kvmtune_sys::sysfs::read_host(&root).unwrap()
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
            .map(|(k, v)| (k, kvmtune_core::readback::Observed::vcpus_only(v)))
            .collect(),
        converge_queue: (PathBuf::from("/run/kvmtune/converge"), Ok(Vec::new())),
        now: NOW,
    })
}

#[test]
fn no_ledger_file_and_no_guests_is_drawn() {
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
    let text = render(&s, false);
    assert!(text.contains("guests (0 running); ledger /nowhere/ledger.json (absent, 0 entries) agrees with libvirt\n  (none)\n"), "{text}");
}

#[test]
fn picture_plain_and_coloured() {
    let s = build_world(&world());
    let plain = render(&s, false);
    assert!(!plain.contains('\x1b'));
    assert!(
        plain.starts_with("host — 2 sockets, 2 nodes, 16 cores, 32 threads; policy <built-in>\n"),
        "{plain}"
    );
    assert!(plain.contains("NUMA node 0  memory "), "{plain}");
    assert!(
        plain.contains("huge pages 2M 0 used/2048 free, 1G 0 used/0 free"),
        "{plain}"
    );
    assert!(
        plain.contains("└─ socket 0 (L3 unknown) 0-7,16-23\n"),
        "{plain}"
    );
    let core1 = plain.lines().find(|l| l.contains("core 1,17")).unwrap();
    assert_eq!(
        core1.trim_end(),
        "   ├─ core 1,17      1 pinned:v0   17 pinned:v1"
    );
    let core0 = plain.lines().find(|l| l.contains("core 0,16")).unwrap();
    assert_eq!(
        core0.trim_end(),
        "   ├─ core 0,16      0 host        16 free"
    );
    assert!(
        plain.contains("stale ledger entry: gone (not running)"),
        "{plain}"
    );
    assert!(
        plain.contains("    3.1 no KSM               differs          no KSM page merging"),
        "{plain}"
    );
    assert!(plain.contains("    1.1 vCPU placement       runtime-enforced applied at start: vCPU→CPU 0→2 1→18; threads agree"), "{plain}");
    assert!(
        plain.contains("fix 'differs': kvmtune apply GUEST"),
        "{plain}"
    );
    for line in plain.lines() {
        assert_eq!(line, line.trim_end(), "trailing spaces in {line:?}");
    }
    let coloured = render(&s, true);
    // anstyle writes red bold as bold then red: `\x1b[1m\x1b[31m`.
    assert!(
        coloured.contains(&format!("{}differs", ALARM.render())),
        "{coloured}"
    );
    assert!(coloured.contains("\x1b[1m\x1b[31mdiffers"), "{coloured}");
    assert!(coloured.contains("\x1b[32mfree\x1b[0m"));
}

#[test]
fn hostile_guest_names_do_not_reach_the_terminal_raw() {
    let mut w = world();
    let evil = "ev\x1b[2Jil";
    let g = parse_status(&status_xml("evil", 400, 1, &[(0, "6")], "")).unwrap();
    w.live.insert(
        evil.to_string(),
        LiveGuest {
            name: evil.to_string(),
            ..g
        },
    );
    let s = build_world(&w);
    let text = render(&s, false);
    assert!(!text.contains('\x1b'), "{text}");
}

#[test]
fn read_back_lines_per_aspect_and_escaped_thread_names() {
    use kvmtune_core::readback::{Observed, ThreadRead};
    let w = world();
    let mut observed: BTreeMap<String, Observed> = w
        .threads
        .iter()
        .map(|(k, v)| (k.clone(), Observed::vcpus_only(v.clone())))
        .collect();
    if let Some(o) = observed.get_mut("runtime") {
        o.emulator = vec![ThreadRead {
            tid: 205,
            name: "wor\x1bker".into(),
            cpus: Some(set("0-31")),
        }];
    }
    let mut ledger = w.ledger.clone();
    if let Some(e) = ledger.guests.get_mut("runtime") {
        e.emulator = Some(set("2,18"));
    }
    let s = build(&Inputs {
        policy: &w.policy,
        host: &w.host,
        ledger_path: PathBuf::from("/run/kvmtune/ledger.json"),
        ledger: Some(Some(ledger)),
        live: w.live.clone(),
        observed,
        converge_queue: (PathBuf::from("/run/kvmtune/converge"), Ok(Vec::new())),
        now: NOW,
    });
    let plain = render(&s, false);
    assert!(!plain.contains('\x1b'), "{plain}");
    assert!(
        plain.contains("    read back  vCPU threads      applied and verified: vCPU→CPU 0→2 1→18 (by the hook at start)\n"),
        "{plain}"
    );
    assert!(
        plain.contains("               emulator threads  drifted: expected 2,18, found 0-31 (thread 205 wor\\u{1b}ker)\n"),
        "{plain}"
    );
    assert!(
        plain.contains("               memory policy     not enforced at runtime (mode preferred"),
        "{plain}"
    );
}

#[test]
fn queued_guests_have_a_line_and_a_section() {
    use kvmtune_core::converge::Entry as Queued;
    let w = world();
    let queue = vec![
        (
            "defunct".to_string(),
            Queued {
                uuid: None,
                queued_at: 0,
            },
        ),
        (
            "runtime".to_string(),
            Queued {
                uuid: Some("u-1".into()),
                queued_at: 1_764_589_202,
            },
        ),
    ];
    let build_with = |queue| {
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
    let plain = render(&build_with(Ok(queue)), false);
    assert!(
        plain.contains("    ledger     agrees\n    converge   queued for convergence at 20251201T114002Z: kvmtune converge conforms its definition (effective at the next cold boot)\n"),
        "{plain}"
    );
    assert!(
        plain.ends_with("\nqueued for convergence /run/kvmtune/converge: 2 guests (kvmtune converge conforms their definitions)\n  defunct  queued at an unknown time  (not running)\n  runtime  queued at 20251201T114002Z  uuid u-1\n"),
        "{plain}"
    );
    let plain = render(&build_with(Ok(Vec::new())), false);
    assert!(
        plain.ends_with("\nqueued for convergence /run/kvmtune/converge: none\n"),
        "{plain}"
    );
    assert!(!plain.contains("    converge "), "{plain}");
    let plain = render(
        &build_with(Err("Permission denied (os error 13)".into())),
        false,
    );
    assert!(
        plain.ends_with("\nqueued for convergence /run/kvmtune/converge: cannot read: Permission denied (os error 13)\n"),
        "{plain}"
    );
}
