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

fn median_us(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn time(program: &Path, args: &[&str], envs: &[(&str, PathBuf)], stdin: &str) -> f64 {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
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
            guest(&name, 1 + i % 47)
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
    println!(
        "host: EPYC 7451 fixture (96 threads, 8 nodes), 100 running guests' status files; median of {RUNS} runs"
    );
    println!("/bin/true:              {floor:8.0} µs");
    let stages = [
        ("prepare", "begin"),
        ("release", "end"),
        ("restore", "begin"),
        ("stopped", "end"),
    ];
    println!(
        "A. the 100 guests are unknown to kvmtune (first starts after installing it: every status file is parsed)"
    );
    for (op, subop) in stages {
        let t = time(&bin, &["bench", op, subop, "-"], &envs, &xml);
        println!(
            "hook {op:>8} {subop:<5}   {t:8.0} µs  ({:.1}x /bin/true)",
            t / floor
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
            "hook {op:>8} {subop:<5}   {t:8.0} µs  ({:.1}x /bin/true)",
            t / floor
        );
    }
}
