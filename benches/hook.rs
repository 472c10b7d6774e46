//! Benchmark: hook wall time per stage, process start to exit, on the largest fixture
//! host (EPYC 7451, 96 threads) with 100 running guests' status files, against
//! `/bin/true` started the same way in the same run (the floor of any hook).
//! Run: `cargo bench --bench hook`. Results: docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const RUNS: usize = 200;

fn guest(name: &str, cpu: u32) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>1024</memory>\n  <vcpu placement='static'>2</vcpu>\n  <cputune>\n    <vcpupin vcpu='0' cpuset='{cpu}'/>\n    <vcpupin vcpu='1' cpuset='{}'/>\n  </cputune>\n  <memoryBacking><nosharepages/></memoryBacking>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' io='native'/><source file='/x.qcow2'/><target dev='vda' bus='virtio'/></disk>\n  </devices>\n</domain>\n",
        cpu + 48
    )
}

/// The live `<domain>` libvirt keeps in a status file: the definition plus aliases,
/// PCI addresses, controllers, a console and channels: 8-12 KB on real hosts.
fn live_domain(name: &str, cpu: u32) -> String {
    let mut devices = String::new();
    for slot in 0..24u32 {
        devices.push_str(&format!(
            "    <controller type='pci' index='{}' model='pcie-root-port'>\n      <model name='pcie-root-port'/>\n      <target chassis='{}' port='0x{:x}'/>\n      <alias name='pci.{}'/>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x{:x}'/>\n    </controller>\n",
            slot + 1,
            slot + 1,
            0x10 + slot,
            slot + 1,
            slot % 8
        ));
    }
    devices.push_str("    <interface type='bridge'>\n      <mac address='52:54:00:12:34:56'/>\n      <source bridge='br0'/>\n      <target dev='vnet0'/>\n      <model type='virtio'/>\n      <driver name='vhost' queues='2'/>\n      <alias name='net0'/>\n      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>\n    </interface>\n    <serial type='pty'>\n      <source path='/dev/pts/3'/>\n      <target type='isa-serial' port='0'>\n        <model name='isa-serial'/>\n      </target>\n      <alias name='serial0'/>\n    </serial>\n    <channel type='unix'>\n      <source mode='bind' path='/run/libvirt/qemu/channel/1-x/org.qemu.guest_agent.0'/>\n      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>\n      <alias name='channel0'/>\n      <address type='virtio-serial' controller='0' bus='0' port='1'/>\n    </channel>\n");
    guest(name, cpu).replace("  </devices>\n", &format!("{devices}  </devices>\n"))
}

fn median_us(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn time(program: &Path, args: &[&str], envs: &[(&str, PathBuf)], stdin: &str) -> f64 {
    time_with(program, args, envs, stdin, || {})
}

/// [`time`], running `before` (untimed) ahead of every run.
fn time_with(
    program: &Path,
    args: &[&str],
    envs: &[(&str, PathBuf)],
    stdin: &str,
    before: impl Fn(),
) -> f64 {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        before();
        let start = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait().unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    median_us(samples)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let libvirt = dir.path().join("libvirt");
    std::fs::create_dir_all(&libvirt).unwrap();
    for i in 0..100u32 {
        let name = format!("running{i:03}");
        let status = format!(
            "<domstatus state='running' pid='{}'>\n  <vcpus>\n    <vcpu id='0' pid='{}'/>\n  </vcpus>\n{}</domstatus>\n",
            100000 + i,
            200000 + i,
            live_domain(&name, 1 + i % 47)
        );
        std::fs::write(libvirt.join(format!("{name}.xml")), status).unwrap();
    }
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, kvmtune_core::policy::SHIPPED_POLICY).unwrap();
    let envs = [
        ("KVMTUNE_POLICY", policy),
        (
            "KVMTUNE_HOST_ROOT",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/hosts/amd-epyc7451-2s24c2t-8node"),
        ),
        // The ledger directory on tmpfs, as /run is on production hosts (on ext4 the
        // ledger's fsyncs alone cost milliseconds on this VM).
        ("KVMTUNE_RUN_DIR", shm.path().join("run")),
        ("KVMTUNE_LIBVIRT_RUN_DIR", libvirt),
        ("KVMTUNE_SYSLOG_SOCKET", dir.path().join("nosyslog")),
        ("KVMTUNE_ALLOW_INSECURE_POLICY", PathBuf::from("1")),
    ];
    // Invoked as libvirt does: through a link named `qemu` (no CLI parsing).
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let bin = hooks.join("qemu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvmtune"), &bin).unwrap();
    let xml = guest("bench", 5).replace("<cputune>\n    <vcpupin vcpu='0' cpuset='5'/>\n    <vcpupin vcpu='1' cpuset='53'/>\n  </cputune>\n", "");
    let floor = time(Path::new("/bin/true"), &[], &[], &xml);
    let sh = time(Path::new("/bin/sh"), &["-c", "/bin/true"], &[], &xml);
    let size = std::fs::metadata(libvirt_dir(&envs).join("running000.xml")).map_or(0, |m| m.len());
    println!(
        "host: EPYC 7451 fixture (96 threads, 8 nodes), 100 running guests' status files of {size} bytes; median of {RUNS} runs"
    );
    println!("/bin/true:              {floor:8.0} µs");
    println!("sh -c /bin/true:        {sh:8.0} µs");
    // A: nobody recorded the running guests yet: the first call after installing
    // kvmtune (or after the ledger was lost) parses every status file and records
    // each guest once; measured with the ledger removed before every run.
    let run_dir = envs[2].1.clone();
    let first = time_with(
        &bin,
        &["bench", "prepare", "begin", "-"],
        &envs,
        &xml,
        || {
            let _ = std::fs::remove_file(run_dir.join("ledger.json"));
        },
    );
    println!(
        "A0. first call, the 100 guests unknown (every status file parsed, each guest recorded once)"
    );
    println!(
        "hook  prepare begin   {first:8.0} µs  ({:.1}x /bin/true, {:.1}x sh -c /bin/true)",
        first / floor,
        first / sh
    );
    // One call records them; from then on their status files are not parsed again.
    let _ = time(&bin, &["bench", "prepare", "begin", "-"], &envs, &xml);
    let stages = [
        ("prepare", "begin"),
        ("release", "end"),
        ("restore", "begin"),
        ("stopped", "end"),
    ];
    println!(
        "A. the 100 guests not placed by kvmtune, recorded by the first call (pinned by their XML)"
    );
    for (op, subop) in stages {
        let t = time(&bin, &["bench", op, subop, "-"], &envs, &xml);
        println!(
            "hook {op:>8} {subop:<5}   {t:8.0} µs  ({:.1}x /bin/true, {:.1}x sh -c /bin/true)",
            t / floor,
            t / sh
        );
    }
    // B: the usual state: kvmtune placed the running guests, the ledger holds them.
    {
        let mut locked = kvmtune_sys::ledger_store::Locked::acquire(
            &envs[2].1,
            kvmtune_sys::ledger_store::LOCK_TIMEOUT,
        )
        .unwrap();
        for i in 0..100u32 {
            let cpus =
                kvmtune_core::CpuSet::parse(&format!("{},{}", 1 + i % 47, 49 + i % 47)).unwrap();
            locked.ledger.guests.insert(
                format!("running{i:03}"),
                kvmtune_core::ledger::Entry {
                    uuid: None,
                    vcpus: cpus.iter().map(kvmtune_core::CpuSet::single).collect(),
                    cpus,
                    nodes: kvmtune_core::CpuSet::single(0),
                    emulator: None,
                    memory_kib: 1 << 20,
                    pool: kvmtune_core::placement::Pool::Shared,
                    claimed_at: kvmtune_sys::ledger_store::now(),
                    state: kvmtune_core::ledger::EntryState::Running,
                    rule: "defaults".into(),
                    floating: false,
                },
            );
        }
        locked.save().unwrap();
    }
    println!(
        "B. the 100 guests were placed by kvmtune (the ledger holds them: no status file is parsed)"
    );
    for (op, subop) in stages {
        let t = time(&bin, &["bench", op, subop, "-"], &envs, &xml);
        println!(
            "hook {op:>8} {subop:<5}   {t:8.0} µs  ({:.1}x /bin/true, {:.1}x sh -c /bin/true)",
            t / floor,
            t / sh
        );
    }
    small_host(&bin, &xml, floor, sh);
}

fn libvirt_dir(envs: &[(&str, PathBuf)]) -> PathBuf {
    envs.iter()
        .find(|(k, _)| *k == "KVMTUNE_LIBVIRT_RUN_DIR")
        .map(|(_, v)| v.clone())
        .unwrap()
}

/// C: a small host (the 4-thread laptop fixture) with 2 running guests.
fn small_host(bin: &Path, xml: &str, floor: f64, sh: f64) {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let libvirt = dir.path().join("libvirt");
    std::fs::create_dir_all(&libvirt).unwrap();
    for i in 0..2u32 {
        let name = format!("running{i}");
        let status = format!(
            "<domstatus state='running' pid='{}'>\n  <vcpus>\n    <vcpu id='0' pid='{}'/>\n  </vcpus>\n{}</domstatus>\n",
            100000 + i,
            200000 + i,
            live_domain(&name, 1 + i).replace("cpuset='5", "cpuset='3")
        );
        std::fs::write(libvirt.join(format!("{name}.xml")), status).unwrap();
    }
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, kvmtune_core::policy::SHIPPED_POLICY).unwrap();
    let envs = [
        ("KVMTUNE_POLICY", policy),
        (
            "KVMTUNE_HOST_ROOT",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/hosts/intel-core-i5-m560-laptop-1s2c2t"),
        ),
        ("KVMTUNE_RUN_DIR", shm.path().join("run")),
        ("KVMTUNE_LIBVIRT_RUN_DIR", libvirt),
        ("KVMTUNE_SYSLOG_SOCKET", dir.path().join("nosyslog")),
        ("KVMTUNE_ALLOW_INSECURE_POLICY", PathBuf::from("1")),
    ];
    let xml = xml.replace(
        "<vcpu placement='static'>2</vcpu>",
        "<vcpu placement='static'>1</vcpu>",
    );
    let _ = time(bin, &["bench", "prepare", "begin", "-"], &envs, &xml);
    println!("C. small host: the 4-thread laptop fixture, 2 running guests recorded");
    let t = time(bin, &["bench", "prepare", "begin", "-"], &envs, &xml);
    println!(
        "hook  prepare begin   {t:8.0} µs  ({:.1}x /bin/true, {:.1}x sh -c /bin/true)",
        t / floor,
        t / sh
    );
}
