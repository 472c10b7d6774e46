//! `kvmtune rebalance` (issue 12 item 2) through the binary, on state the hook
//! made: shared guests started through the hook on the i5 laptop fixture, then
//! the dry run proposes the compaction and changes nothing, and `--apply` makes it on real threads, or, when the move cannot be
//! made, puts the guest back and leaves its claim as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::PathBuf;
use std::process::{Child, Command, Output};

use kvmtune::hook::run;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::ledger::Ledger;
use kvmtune_sys::ledger_store::{self as ledger, Paths};
use kvmtune_sys::logging::Log;
use kvmtune_sys::roots::Roots;

const HOST: &str = "tests/data/hosts/intel-core-i5-m560-laptop-1s2c2t";

const POLICY: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n";

struct Fixture {
    _dir: tempfile::TempDir,
    env: Roots,
    /// Processes standing for the guests' QEMU (their main thread is vCPU 0).
    qemu: Vec<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.qemu {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let libvirt = dir.path().join("libvirt");
    std::fs::create_dir_all(&libvirt).unwrap();
    let env = Roots {
        policy,
        host_root: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(HOST),
        proc_root: PathBuf::from("/proc"),
        paths: Paths {
            run_dir: dir.path().join("run"),
            libvirt_run_dir: libvirt,
        },
        syslog_socket: dir.path().join("no-syslog"),
        allow_insecure_policy: true,
        apply_runtime: false,
    };
    Fixture {
        _dir: dir,
        env,
        qemu: Vec::new(),
    }
}

fn guest(name: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>256</memory>\n  <vcpu placement='static'>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <memoryBacking>\n    <nosharepages/>\n  </memoryBacking>\n  <devices/>\n</domain>\n"
    )
}

fn hook(f: &Fixture, name: &str, op: &str, subop: &str) -> kvmtune::hook::Outcome {
    let mut log = Log::memory();
    run(&f.env, name, op, subop, guest(name).as_bytes(), &mut log)
}

fn ledger(f: &Fixture) -> Ledger {
    ledger::read_unlocked(&f.env.paths.run_dir).unwrap()
}

/// Starts s1-s3 through the hook (each with a real process as its QEMU and
/// vCPU 0). The hook keeps CPU 3 idle (two guests share CPU 1, one is on CPU 2,
/// the only usable thread of core {0,2} with CPU0 excluded): rebalancing then
/// moves the guest on CPU 2 onto idle CPU 3, next to CPU 1 in core {1,3}, and
/// core {0,2} is idle. Returns the name of the guest on CPU 2.
fn started_three(f: &mut Fixture) -> String {
    for name in ["s1", "s2", "s3"] {
        assert_eq!(hook(f, name, "prepare", "begin").exit, 0);
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        f.qemu.push(child);
        std::fs::write(
            f.env.paths.libvirt_run_dir.join(format!("{name}.xml")),
            format!(
                "<domstatus state='running' pid='{pid}'>\n  <vcpus>\n    <vcpu id='0' pid='{pid}'/>\n  </vcpus>\n{}</domstatus>\n",
                guest(name)
            ),
        )
        .unwrap();
        assert_eq!(hook(f, name, "started", "begin").exit, 0);
    }
    let l = ledger(f);
    let on = |cpu: u32| {
        l.guests
            .iter()
            .find(|(_, e)| e.cpus == CpuSet::single(cpu))
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| panic!("no guest alone on CPU {cpu}: {:?}", l.guests))
    };
    assert!(
        l.guests.values().all(|e| !e.cpus.contains(3)),
        "{:?}",
        l.guests
    );
    on(2)
}

fn rebalance(f: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmtune"))
        .arg("rebalance")
        .arg("--policy")
        .arg(&f.env.policy)
        .arg("--host-root")
        .arg(&f.env.host_root)
        .args(args)
        .env("KVMTUNE_RUN_DIR", &f.env.paths.run_dir)
        .env("KVMTUNE_LIBVIRT_RUN_DIR", &f.env.paths.libvirt_run_dir)
        .env("KVMTUNE_PROC_ROOT", "/proc")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_dry_run_proposes_freeing_a_core_and_changes_nothing() {
    let mut f = fixture();
    let lone = started_three(&mut f);
    let before = std::fs::read(f.env.paths.run_dir.join("ledger.json")).unwrap();
    let out = rebalance(&f, &[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!("guest '{lone}' vCPU 0: CPU 2 → 3")),
        "{shown}"
    );
    assert!(shown.contains("frees core 0,2 whole"), "{shown}");
    assert!(shown.contains("dry run: nothing changed"), "{shown}");
    assert_eq!(
        std::fs::read(f.env.paths.run_dir.join("ledger.json")).unwrap(),
        before
    );
    // JSON: the same moves and the score, idle cores up by one.
    let out = rebalance(&f, &["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["moves"][0]["guest"], lone.as_str());
    assert_eq!(
        doc["after"]["idle_cores"].as_u64().unwrap(),
        doc["before"]["idle_cores"].as_u64().unwrap() + 1
    );
    // Nothing left to do once compact: max-moves 0 proposes nothing, exit 0.
    let none = rebalance(&f, &["--max-moves", "0"]);
    assert_eq!(none.status.code(), Some(0), "{}", text(&none));
    assert!(text(&none).contains("nothing to move"));
}

#[test]
fn a_move_the_kernel_refuses_puts_the_guest_back_and_keeps_its_claim() {
    let mut f = fixture();
    let lone = started_three(&mut f);
    let claim = ledger(&f).guests[&lone].clone();
    let pid = f.qemu[["s1", "s2", "s3"].iter().position(|n| *n == lone).unwrap()].id();
    let allowed_before = affinity(pid);
    // The fixture host's CPU 3 does not exist on this 2-CPU machine: the
    // kernel says EINVAL, as for a guest whose CPU went offline.
    let out = rebalance(&f, &["--apply"]);
    let shown = text(&out);
    if std::thread::available_parallelism().map_or(1, usize::from) > 3 {
        // On a machine with a CPU 3 the move is made and recorded instead.
        assert_eq!(out.status.code(), Some(0), "{shown}");
        assert_eq!(ledger(&f).guests[&lone].cpus, CpuSet::single(3));
        assert_eq!(affinity(pid), CpuSet::single(3));
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains(&format!("failed '{lone}'")), "{shown}");
    assert!(shown.contains("EINVAL"), "{shown}");
    assert_eq!(ledger(&f).guests[&lone], claim);
    assert_eq!(affinity(pid), allowed_before);
}

fn affinity(pid: u32) -> CpuSet {
    kvmtune_sys::affinity::allowed_cpus(std::path::Path::new("/proc"), pid, pid).unwrap()
}

#[test]
fn no_ledger_is_nothing_to_move_and_a_corrupt_one_is_one_line_exit_3() {
    let f = fixture();
    let out = rebalance(&f, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("nothing to move"), "{}", text(&out));
    std::fs::create_dir_all(&f.env.paths.run_dir).unwrap();
    std::fs::write(f.env.paths.run_dir.join("ledger.json"), "{not json").unwrap();
    let out = rebalance(&f, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        err.starts_with("kvmtune: ") && err.contains("ledger.json") && err.lines().count() == 1,
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out));
}
