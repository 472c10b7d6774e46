//! Repacking through the hook (issue 12 item 1): `prepare` of a guest that finds
//! no room moves running shared guests' vCPUs within their node, records the new
//! claim and the moved claims together, and `started` of that guest applies the
//! moves (here with runtime changes off: the fixture's threads are not real) or
//! rolls back the claim of a guest whose move cannot be made.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::PathBuf;

use kvmtune::hook::run;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::ledger::{self as ledger_data};
use kvmtune_core::placement::Pool;
use kvmtune_sys::ledger_store::{self as ledger, Paths};
use kvmtune_sys::logging::Log;
use kvmtune_sys::roots::Roots as Environment;

struct Fixture {
    _dir: tempfile::TempDir,
    env: Environment,
}

/// The i5 laptop: CPUs 0-3 (cores 0,2 and 1,3), CPU0 excluded: 1-3 serve guests.
fn fixture(policy: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let libvirt = dir.path().join("libvirt");
    std::fs::create_dir_all(&libvirt).unwrap();
    let env = Environment {
        policy: policy_path,
        host_root: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/hosts/intel-core-i5-m560-laptop-1s2c2t"),
        proc_root: dir.path().join("proc"),
        paths: Paths {
            run_dir: dir.path().join("run"),
            libvirt_run_dir: libvirt,
        },
        syslog_socket: dir.path().join("no-syslog"),
        allow_insecure_policy: true,
        apply_runtime: false,
    };
    Fixture { _dir: dir, env }
}

const POLICY: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\nrules:\n  - name: nfv\n    match: {name: 'ded*'}\n    set: {pool: dedicated, dedicated_fallback: refuse}\n";

fn guest(name: &str, vcpus: u32) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>256</memory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <memoryBacking>\n    <nosharepages/>\n  </memoryBacking>\n  <devices/>\n</domain>\n"
    )
}

fn hook(f: &Fixture, name: &str, op: &str, subop: &str, xml: &str) -> kvmtune::hook::Outcome {
    let mut log = Log::memory();
    run(&f.env, name, op, subop, xml.as_bytes(), &mut log)
}

/// A status file as libvirt writes it once QEMU runs; `pid`: with the QEMU pid
/// and vCPU 0's thread, else without (as a guest whose move cannot be made).
fn mark_running(f: &Fixture, name: &str, xml: &str, pid: bool) {
    let status = if pid {
        format!(
            "<domstatus state='running' pid='1'>\n  <vcpus>\n    <vcpu id='0' pid='2'/>\n  </vcpus>\n{xml}</domstatus>\n"
        )
    } else {
        format!("<domstatus state='running'>\n{xml}</domstatus>\n")
    };
    std::fs::write(
        f.env.paths.libvirt_run_dir.join(format!("{name}.xml")),
        status,
    )
    .unwrap();
}

fn ledger(f: &Fixture) -> ledger_data::Ledger {
    ledger::read_unlocked(&f.env.paths.run_dir).unwrap_or_default()
}

/// 1-vCPU shared guests, started, until two of CPUs 1-3 carry one: a 2-vCPU
/// dedicated guest then finds one CPU free, and fits only by a move.
fn shared_everywhere(f: &Fixture, with_pid: bool) -> Vec<String> {
    let mut names = Vec::new();
    for i in 1..=6 {
        let name = format!("s{i}");
        let xml = guest(&name, 1);
        assert_eq!(hook(f, &name, "prepare", "begin", &xml).exit, 0);
        mark_running(f, &name, &xml, with_pid);
        assert_eq!(hook(f, &name, "started", "begin", &xml).exit, 0);
        names.push(name);
        let l = ledger(f);
        let used = names
            .iter()
            .fold(CpuSet::new(), |a, n| a.union(&l.guests[n].cpus));
        if used.len() == 2 {
            return names;
        }
    }
    panic!(
        "shared guests never covered two CPUs: {:?}",
        ledger(f).guests
    );
}

#[test]
fn a_dedicated_guest_is_admitted_by_moving_a_shared_vcpu_and_started_applies_it() {
    let f = fixture(POLICY);
    shared_everywhere(&f, true);
    let xml = guest("ded", 2);
    let out = hook(&f, "ded", "prepare", "begin", &xml);
    assert_eq!(out.exit, 0, "{}", out.stderr);
    assert!(out.summary.contains("repack: guest '"), "{}", out.summary);
    // The claim and the moved claim, together: the dedicated CPU is its alone.
    let l = ledger(&f);
    let ded = &l.guests["ded"];
    assert_eq!(ded.pool, Pool::Dedicated);
    for (name, e) in &l.guests {
        if name != "ded" {
            assert!(!e.cpus.intersects(&ded.cpus), "{name} on {}", e.cpus);
            assert!(
                e.cpus.is_subset(&CpuSet::parse("1-3").unwrap()),
                "{name} on {}",
                e.cpus
            );
        }
    }
    // started applies the move (runtime changes off here) and clears it.
    mark_running(&f, "ded", &xml, true);
    let out = hook(&f, "ded", "started", "begin", &xml);
    assert_eq!(out.exit, 0, "{}", out.stderr);
    assert!(
        out.summary.contains("repack: moved guest '"),
        "{}",
        out.summary
    );
    let again = hook(&f, "ded", "started", "begin", &xml);
    assert!(!again.summary.contains("repack"), "{}", again.summary);
}

#[test]
fn a_move_that_cannot_be_made_rolls_that_guests_claim_back() {
    let f = fixture(POLICY);
    // No QEMU pid in any shared guest's status file: a move cannot be made.
    shared_everywhere(&f, false);
    let before = ledger(&f);
    let xml = guest("ded", 2);
    assert_eq!(hook(&f, "ded", "prepare", "begin", &xml).exit, 0);
    let moved: Vec<String> = ledger(&f)
        .guests
        .iter()
        .filter(|(n, e)| before.guests.get(*n).is_some_and(|b| b.vcpus != e.vcpus))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(moved.len(), 1, "one shared vCPU moves");
    mark_running(&f, "ded", &xml, true);
    let out = hook(&f, "ded", "started", "begin", &xml);
    assert!(out.summary.contains("failed"), "{}", out.summary);
    assert!(out.summary.contains("rolled back"), "{}", out.summary);
    // The moved guest still runs where it was: the dedicated guest must not start
    // on its CPU (libvirt then aborts the start and release frees the claim).
    assert_eq!(out.exit, 1, "{}", out.summary);
    assert!(
        out.stderr
            .starts_with("kvmtune: guest 'ded' cannot start where it was placed: moving guest '")
            && !out.stderr.contains('\n'),
        "{}",
        out.stderr
    );
    let after = ledger(&f);
    assert_eq!(
        after.guests[&moved[0]].vcpus,
        before.guests[&moved[0]].vcpus
    );
}

#[test]
fn repack_off_refuses_as_before() {
    let f = fixture(&POLICY.replace("  irq_cpus: none\n", "  irq_cpus: none\n  repack: false\n"));
    shared_everywhere(&f, true);
    let out = hook(&f, "ded", "prepare", "begin", &guest("ded", 2));
    assert_eq!(out.exit, 1, "{}", out.summary);
    assert!(out.stderr.contains("cannot be placed"), "{}", out.stderr);
}

/// A shared guest whose definition pins it: under `existing_pins: keep` (the
/// default) the admin's (or Nova's) pins are its placement and it never moves,
/// so a dedicated guest that needs its CPU is refused; pins that `kvmtune
/// apply` / `converge` wrote carry kvmtune's pins mark and stay kvmtune's to
/// move, unless someone changed them since; under `existing_pins: override`
/// kvmtune places every guest at start, and any may move.
#[test]
fn a_guest_pinned_by_its_definition_moves_only_when_the_pins_are_kvmtunes_or_overridden() {
    let pinned = |name: &str, cpu: u32, mark: Option<u32>| {
        let metadata = mark.map_or(String::new(), |m| {
            format!(
                "  <metadata>\n    <p:pins xmlns:p='{}'>0:{m}</p:pins>\n  </metadata>\n",
                kvmtune_core::pins_mark::NAMESPACE
            )
        });
        guest(name, 1)
            .replace("  <memory", &format!("{metadata}  <memory"))
            .replace(
                "  <os>",
                &format!(
                    "  <cputune>\n    <vcpupin vcpu='0' cpuset='{cpu}'/>\n  </cputune>\n  <os>"
                ),
            )
    };
    let keep = "";
    let override_ = "defaults:\n  existing_pins: override\n";
    for (what, extra, mark_of, admitted) in [
        ("the admin's pins", keep, None, false),
        ("kvmtune's pins (marked)", keep, Some(0), true),
        (
            "pins changed after kvmtune marked them",
            keep,
            Some(3),
            false,
        ),
        ("the admin's pins, override", override_, None, true),
    ] {
        let f = fixture(&format!("{POLICY}{extra}"));
        for (name, cpu) in [("s1", 1), ("s2", 2)] {
            // mark_of: Some(0) marks the pin as written, Some(n) marks CPU n.
            let mark = mark_of.map(|m| if m == 0 { cpu } else { m });
            let xml = pinned(name, cpu, mark);
            assert_eq!(
                kvmtune_core::domain::Domain::parse(&xml)
                    .unwrap()
                    .pins_by_kvmtune(),
                mark == Some(cpu),
                "{what}"
            );
            assert_eq!(hook(&f, name, "prepare", "begin", &xml).exit, 0);
            mark_running(&f, name, &xml, true);
            assert_eq!(hook(&f, name, "started", "begin", &xml).exit, 0);
        }
        let l = ledger(&f);
        let used = l.guests["s1"].cpus.union(&l.guests["s2"].cpus);
        assert_eq!(used.len(), 2, "{what}: {:?}", l.guests);
        if extra == keep {
            // Kept, or (kvmtune's) preferred while free: where the definition says.
            assert_eq!(l.guests["s1"].cpus, CpuSet::parse("1").unwrap(), "{what}");
            assert_eq!(l.guests["s2"].cpus, CpuSet::parse("2").unwrap(), "{what}");
        }
        let queue = kvmtune_sys::converge_queue::Queue::under(&f.env.paths.run_dir);
        let queued =
            || -> Vec<String> { queue.list().unwrap().into_iter().map(|q| q.guest).collect() };
        let before = queued();
        let ded = guest("ded", 2);
        let out = hook(&f, "ded", "prepare", "begin", &ded);
        if admitted {
            assert_eq!(out.exit, 0, "{what}: {}", out.stderr);
            assert!(out.summary.contains("repack: guest '"), "{}", out.summary);
            // Once the move is made, a definition whose pins kvmtune wrote is
            // queued for kvmtune converge (they say where it ran before).
            mark_running(&f, "ded", &ded, true);
            let out = hook(&f, "ded", "started", "begin", &ded);
            assert_eq!(out.exit, 0, "{what}: {}", out.stderr);
            let moved: Vec<String> = ["s1", "s2"]
                .into_iter()
                .filter(|g| out.summary.contains(&format!("moved guest '{g}'")))
                .map(String::from)
                .collect();
            assert_eq!(moved.len(), 1, "{what}: {}", out.summary);
            let newly: Vec<String> = queued()
                .into_iter()
                .filter(|g| !before.contains(g))
                .collect();
            let want = if mark_of.is_some() {
                moved.clone()
            } else {
                Vec::new()
            };
            assert_eq!(newly, want, "{what}: {}", out.summary);
        } else {
            assert_eq!(out.exit, 1, "{what}: {}", out.summary);
            assert!(out.stderr.contains("cannot be placed"), "{}", out.stderr);
        }
    }
}
