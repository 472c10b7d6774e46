//! The hook's stages on fixture trees: a fixture host, a temporary ledger directory
//! and a fake libvirt run directory with status files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};

use kvmtune::hook::run;
use kvmtune_core::ledger::{self as ledger_data};
use kvmtune_sys::ledger_store::{self as ledger, Paths};
use kvmtune_sys::logging::Log;
use kvmtune_sys::roots::Roots as Environment;

struct Fixture {
    _dir: tempfile::TempDir,
    env: Environment,
}

fn fixture(host: &str, policy: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let libvirt = dir.path().join("libvirt");
    std::fs::create_dir_all(&libvirt).unwrap();
    let env = Environment {
        policy: policy_path,
        host_root: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/hosts")
            .join(host),
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

const POLICY: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n";

fn guest(name: &str, vcpus: u32, extra: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>00000000-0000-0000-0000-00000000000{vcpus}</uuid>\n  <memory unit='MiB'>512</memory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n{extra}  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none' io='native'/>\n      <source file='/x.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
}

/// A conforming guest apart from placement (which the hook applies at runtime).
fn conforming(name: &str, vcpus: u32) -> String {
    guest(
        name,
        vcpus,
        "  <memoryBacking>\n    <nosharepages/>\n  </memoryBacking>\n",
    )
}

fn hook(f: &Fixture, guest: &str, op: &str, subop: &str, xml: &str) -> kvmtune::hook::Outcome {
    let mut log = Log::memory();
    run(&f.env, guest, op, subop, xml.as_bytes(), &mut log)
}

/// Writes a libvirt status file as libvirt does once QEMU runs.
fn mark_running(f: &Fixture, name: &str, xml: &str) {
    let status = format!(
        "<domstatus state='running' pid='1'>\n  <vcpus>\n    <vcpu id='0' pid='2'/>\n  </vcpus>\n{xml}</domstatus>\n"
    );
    std::fs::write(
        f.env.paths.libvirt_run_dir.join(format!("{name}.xml")),
        status,
    )
    .unwrap();
}

fn ledger(f: &Fixture) -> ledger_data::Ledger {
    ledger::read_unlocked(&f.env.paths.run_dir).unwrap_or_default()
}

#[test]
fn prepare_claims_and_release_frees() {
    let f = fixture("intel-xeon-silver4108-2s8c2t-2node", POLICY);
    let xml = conforming("web", 2);
    let out = hook(&f, "web", "prepare", "begin", &xml);
    assert_eq!(out.exit, 0, "{out:?}");
    let l = ledger(&f);
    let entry = &l.guests["web"];
    assert_eq!(entry.cpus.len(), 2);
    assert!(!entry.cpus.contains(0));
    assert_eq!(entry.state, ledger_data::EntryState::Prepared);
    let out = hook(&f, "web", "release", "end", &xml);
    assert_eq!(out.exit, 0);
    assert!(ledger(&f).guests.is_empty());
}

#[test]
fn concurrent_claims_do_not_overlap_in_dedicated_sense() {
    let f = fixture("intel-xeon-silver4108-2s8c2t-2node", POLICY);
    let mut seen = kvmtune_core::CpuSet::new();
    for i in 0..10 {
        let name = format!("g{i}");
        assert_eq!(
            hook(&f, &name, "prepare", "begin", &conforming(&name, 2)).exit,
            0
        );
        let cpus = ledger(&f).guests[&name].cpus.clone();
        assert!(
            !cpus.intersects(&seen),
            "{name} got {cpus}, already used {seen}"
        );
        seen = seen.union(&cpus);
    }
}

#[test]
fn refuse_mode_blocks_a_violation_with_one_line_naming_guest_rule_and_fix() {
    let f = fixture(
        "intel-core-i5-m560-laptop-1s2c2t",
        &format!("{POLICY}on_violation: refuse\n"),
    );
    let xml = conforming("pt", 1).replace("<os>", "<cpu mode='host-passthrough'/>\n  <os>");
    let out = hook(&f, "pt", "prepare", "begin", &xml);
    assert_eq!(out.exit, 1);
    assert!(!out.stderr.contains('\n'));
    assert!(
        out.stderr.starts_with("kvmtune: guest 'pt'"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("host-passthrough"), "{}", out.stderr);
    assert!(out.stderr.contains("kvmtune apply pt"), "{}", out.stderr);
    assert!(
        ledger(&f).guests.is_empty(),
        "a refused guest holds no claim"
    );
}

#[test]
fn warn_mode_allows_and_logs_the_violation() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let xml = conforming("wb", 1).replace("cache='none' io='native'", "cache='writeback'");
    let mut log = Log::memory();
    let out = run(&f.env, "wb", "prepare", "begin", xml.as_bytes(), &mut log);
    assert_eq!(out.exit, 0);
    let line = &log.lines.last().unwrap().1;
    assert!(line.contains("guest=wb stage=prepare-begin"), "{line}");
    assert!(
        line.contains("violation") && line.contains("cache='none'"),
        "{line}"
    );
}

/// `converge: after-start` (the default): a guest started with violations is
/// queued under the run dir (refused or not), a conforming one and a Nova guest
/// are not, and `converge: off` queues nothing. The hook has no virsh to call here.
#[test]
fn prepare_queues_violating_guests_for_converge_but_never_nova_guests() {
    use kvmtune_sys::converge_queue::Queue;
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let queue = Queue::under(&f.env.paths.run_dir);
    let wb = conforming("wb", 1).replace("cache='none' io='native'", "cache='writeback'");
    let mut log = Log::memory();
    let out = run(&f.env, "wb", "prepare", "begin", wb.as_bytes(), &mut log);
    assert_eq!(out.exit, 0);
    assert!(out.summary.contains("converge: queued"), "{}", out.summary);
    let queued = queue.list().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].guest, "wb");
    assert_eq!(
        queued[0].entry.uuid.as_deref(),
        Some("00000000-0000-0000-0000-000000000001")
    );
    assert_eq!(
        hook(&f, "ok", "prepare", "begin", &conforming("ok", 1)).exit,
        0
    );
    let nova = conforming("nova", 1)
        .replace("cache='none' io='native'", "cache='writeback'")
        .replace(
            "<os>",
            "<metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:name>i</nova:name></nova:instance></metadata>\n  <os>",
        );
    let out = hook(&f, "nova", "prepare", "begin", &nova);
    assert_eq!(out.exit, 0);
    assert!(
        out.summary.contains("not queued (Nova metadata)"),
        "{}",
        out.summary
    );
    let names: Vec<_> = queue.list().unwrap().into_iter().map(|q| q.guest).collect();
    assert_eq!(names, ["wb"]);

    let refuse = fixture(
        "intel-core-i5-m560-laptop-1s2c2t",
        &format!("{POLICY}on_violation: refuse\n"),
    );
    // A refused start is queued too: converged, the next start is its first boot.
    let out = hook(&refuse, "wb", "prepare", "begin", &wb);
    assert_eq!(out.exit, 1);
    assert!(out.summary.contains("converge: queued"), "{}", out.summary);
    assert_eq!(
        Queue::under(&refuse.env.paths.run_dir)
            .list()
            .unwrap()
            .len(),
        1
    );
    let off = fixture(
        "intel-core-i5-m560-laptop-1s2c2t",
        &format!("{POLICY}defaults:\n  converge: off\n"),
    );
    assert_eq!(hook(&off, "wb", "prepare", "begin", &wb).exit, 0);
    assert!(
        Queue::under(&off.env.paths.run_dir)
            .list()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_broken_policy_allows_the_guest_by_default_and_logs_the_error() {
    let f = fixture(
        "intel-core-i5-m560-laptop-1s2c2t",
        "version: 1\nhost: [oops\n",
    );
    let mut log = Log::memory();
    let out = run(
        &f.env,
        "g",
        "prepare",
        "begin",
        conforming("g", 1).as_bytes(),
        &mut log,
    );
    assert_eq!(out.exit, 0);
    let (severity, line) = log.lines.last().unwrap();
    assert_eq!(*severity, kvmtune_sys::logging::Severity::Error);
    assert!(line.contains("policy"), "{line}");
}

#[test]
fn on_error_refuse_refuses_on_internal_errors() {
    let mut f = fixture(
        "intel-core-i5-m560-laptop-1s2c2t",
        &format!("{POLICY}on_error: refuse\n"),
    );
    f.env.host_root = PathBuf::from("/nonexistent-host-root");
    let out = hook(&f, "g", "prepare", "begin", &conforming("g", 1));
    assert_eq!(out.exit, 1);
    assert!(out.stderr.contains("on_error: refuse"), "{}", out.stderr);
}

#[test]
fn bad_stdin_never_panics_and_is_allowed_by_default() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    for input in [
        &b""[..],
        b"not xml",
        b"<domain><name>g</name>",
        b"\xff\xfe",
        b"<network/>",
    ] {
        let mut log = Log::memory();
        let out = run(&f.env, "g", "prepare", "begin", input, &mut log);
        assert_eq!(out.exit, 0);
        assert!(log.lines.last().unwrap().1.contains("error"));
    }
}

#[test]
fn unknown_operations_exit_zero_quietly() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let out = hook(&f, "g", "frobnicate", "begin", "");
    assert_eq!(out, kvmtune::hook::Outcome::default());
    let out = hook(&f, "g", "stopped", "end", &conforming("g", 1));
    assert_eq!(out.exit, 0);
}

#[test]
fn restore_prints_xml_with_only_guest_abi_safe_edits() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let xml = guest("r", 2, "  <cpu mode='host-passthrough'/>\n")
        .replace("cache='none' io='native'", "cache='writeback'");
    let out = hook(&f, "r", "restore", "begin", &xml);
    assert_eq!(out.exit, 0, "{out:?}");
    assert!(out.stdout.contains("<vcpupin vcpu='0'"), "{}", out.stdout);
    assert!(out.stdout.contains("cache='none'"));
    assert!(out.stdout.contains("<numatune>"));
    // Guest ABI: CPU mode and memory backing unchanged.
    assert!(out.stdout.contains("host-passthrough"));
    assert!(!out.stdout.contains("nosharepages"));
}

#[test]
fn migrate_replaces_source_host_pins_with_a_fresh_placement() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    // Another guest here already holds CPU 1 (dedicated 1:1 pin in its live XML).
    let other = "<domain type='kvm'><name>other</name><memory>1024</memory><vcpu>1</vcpu><cputune><vcpupin vcpu='0' cpuset='1'/></cputune></domain>\n";
    mark_running(&f, "other", other);
    let incoming = conforming("mig", 1).replace(
        "<os>",
        "<cputune>\n    <vcpupin vcpu='0' cpuset='1'/>\n  </cputune>\n  <os>",
    );
    let out = hook(&f, "mig", "migrate", "begin", &incoming);
    assert_eq!(out.exit, 0);
    assert!(!out.stdout.contains("cpuset='1'"), "{}", out.stdout);
    assert!(out.stdout.contains("<vcpupin vcpu='0' cpuset='"));
}

#[test]
fn stale_claims_are_reconciled_away() {
    let f = fixture("intel-xeon-silver4108-2s8c2t-2node", POLICY);
    let xml = conforming("crashed", 2);
    assert_eq!(hook(&f, "crashed", "prepare", "begin", &xml).exit, 0);
    mark_running(&f, "crashed", &xml);
    assert_eq!(
        hook(&f, "other", "prepare", "begin", &conforming("other", 1)).exit,
        0
    );
    assert_eq!(
        ledger(&f).guests["crashed"].state,
        ledger_data::EntryState::Running
    );
    // QEMU died without release: the status file disappears.
    std::fs::remove_file(f.env.paths.libvirt_run_dir.join("crashed.xml")).unwrap();
    assert_eq!(
        hook(&f, "third", "prepare", "begin", &conforming("third", 1)).exit,
        0
    );
    let l = ledger(&f);
    assert!(!l.guests.contains_key("crashed"));
    assert!(l.guests.contains_key("other") && l.guests.contains_key("third"));
}

#[test]
fn reconnect_re_records_a_guest_missing_from_the_ledger() {
    let f = fixture("intel-xeon-silver4108-2s8c2t-2node", POLICY);
    let xml = conforming("pinned", 2).replace(
        "<os>",
        "<cputune>\n    <vcpupin vcpu='0' cpuset='5'/>\n    <vcpupin vcpu='1' cpuset='21'/>\n  </cputune>\n  <os>",
    );
    mark_running(&f, "pinned", &xml);
    assert_eq!(hook(&f, "pinned", "reconnect", "begin", &xml).exit, 0);
    let l = ledger(&f);
    assert_eq!(l.guests["pinned"].cpus.to_string(), "5,21");
    assert_eq!(l.guests["pinned"].state, ledger_data::EntryState::Running);
}

#[test]
fn a_guest_name_mismatch_is_an_error_not_a_claim() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let mut log = Log::memory();
    let out = run(
        &f.env,
        "a",
        "prepare",
        "begin",
        conforming("b", 1).as_bytes(),
        &mut log,
    );
    assert_eq!(out.exit, 0);
    assert!(ledger(&f).guests.is_empty());
    let _ = Path::new("");
}

#[test]
fn no_dedicated_room_falls_back_to_shared_or_refuses() {
    // i5 laptop: CPUs 1-3 eligible; a 4-vCPU dedicated guest cannot fit.
    let dedicated = format!("{POLICY}defaults:\n  pool: dedicated\n");
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", &dedicated);
    let out = hook(&f, "big", "prepare", "begin", &conforming("big", 4));
    assert_eq!(out.exit, 0);
    assert!(
        out.summary.contains("placed on shared CPUs instead"),
        "{}",
        out.summary
    );
    assert_eq!(
        ledger(&f).guests["big"].pool,
        kvmtune_core::placement::Pool::Shared
    );

    let refuse = format!("{dedicated}on_violation: refuse\n");
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", &refuse);
    let out = hook(&f, "big", "prepare", "begin", &conforming("big", 4));
    assert_eq!(out.exit, 1);
    assert!(
        out.stderr
            .starts_with("kvmtune: guest 'big' cannot be placed:"),
        "{}",
        out.stderr
    );
}

/// A two-CPU host tree (CPU0 and CPU1, no SMT, one node) like the CI machine.
fn two_cpu_host(root: &Path) {
    let cpu = root.join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    std::fs::write(cpu.join("online"), "0-1\n").unwrap();
    for n in 0..2 {
        let topo = cpu.join(format!("cpu{n}/topology"));
        std::fs::create_dir_all(&topo).unwrap();
        std::fs::write(topo.join("thread_siblings_list"), format!("{n}\n")).unwrap();
        std::fs::write(topo.join("physical_package_id"), "0\n").unwrap();
    }
}

#[test]
fn started_pins_the_vcpu_thread_and_other_threads_of_a_real_process() {
    let allowed = std::fs::read_to_string("/proc/self/status").unwrap();
    if !allowed
        .lines()
        .any(|l| l.starts_with("Cpus_allowed_list:") && l.contains('1'))
    {
        eprintln!("note: CPU 1 not available to this process; skipped");
        return;
    }
    let mut f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let host = f._dir.path().join("host");
    two_cpu_host(&host);
    f.env.host_root = host;
    f.env.proc_root = PathBuf::from("/proc");
    f.env.apply_runtime = true;
    // A stand-in for QEMU: one process whose only thread plays vCPU 0.
    let mut qemu = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = qemu.id();
    let xml = conforming("rt", 1);
    assert_eq!(hook(&f, "rt", "prepare", "begin", &xml).exit, 0);
    let status = format!(
        "<domstatus state='running' pid='{pid}'>\n  <vcpus>\n    <vcpu id='0' pid='{pid}'/>\n  </vcpus>\n{xml}</domstatus>\n"
    );
    std::fs::write(f.env.paths.libvirt_run_dir.join("rt.xml"), status).unwrap();
    let out = hook(&f, "rt", "started", "begin", &xml);
    let effective = kvmtune_sys::affinity::allowed_cpus(Path::new("/proc"), pid, pid);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert_eq!(out.exit, 0, "{out:?}");
    assert_eq!(
        effective.unwrap().to_string(),
        "1",
        "vCPU thread moved off CPU0"
    );
    assert!(out.summary.contains("effective vcpu0=1"), "{}", out.summary);
    assert_eq!(
        ledger(&f).guests["rt"].state,
        ledger_data::EntryState::Running
    );
}

#[test]
fn release_frees_the_claim_even_when_the_policy_broke_meanwhile() {
    let f = fixture("intel-core-i5-m560-laptop-1s2c2t", POLICY);
    let xml = conforming("g", 1);
    assert_eq!(hook(&f, "g", "prepare", "begin", &xml).exit, 0);
    assert!(ledger(&f).guests.contains_key("g"));
    std::fs::write(&f.env.policy, "version: 1\nhost: [broken\n").unwrap();
    assert_eq!(hook(&f, "g", "release", "end", &xml).exit, 0);
    assert!(ledger(&f).guests.is_empty());
}
