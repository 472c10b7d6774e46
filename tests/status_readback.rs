//! `kvmtune status` reads back what was applied, through the real binary on a
//! fake host: the hook (in-process, as libvirt runs it) claims two guests, libvirt's
//! status files and a fake /proc hold their QEMU threads, a fake cgroup v2 tree
//! (under a copy of the sysfs fixture, the `--host-root`) holds the strict guest's
//! memory nodes. `good` (memory_mode strict) reads back verified on every aspect;
//! `drift` has one emulator thread on every CPU. Text, JSON and the metrics agree.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvmtune_core::cpuset::CpuSet;
use kvmtune_sys::ledger_store::{self, Paths};
use kvmtune_sys::logging::Log;
use kvmtune_sys::roots::Roots;

const POLICY: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\nrules:\n  - name: strict-memory\n    match:\n      name: good\n    set:\n      memory_mode: strict\n";

fn fixture_host() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node")
}

fn copy_tree(from: &Path, to: &Path) {
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

fn roots(dir: &Path) -> Roots {
    Roots {
        policy: dir.join("policy.yaml"),
        host_root: dir.join("host"),
        proc_root: dir.join("proc"),
        paths: Paths {
            run_dir: dir.join("run"),
            libvirt_run_dir: dir.join("libvirt"),
        },
        syslog_socket: dir.join("no-syslog"),
        allow_insecure_policy: true,
        apply_runtime: false,
    }
}

fn guest(name: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>512</memory>\n  <vcpu placement='static'>2</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <memoryBacking><nosharepages/></memoryBacking>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none' io='native'/>\n      <source file='/x.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
}

/// /proc/PID/task/TID/{status,comm}.
fn thread(proc: &Path, pid: u32, tid: u32, comm: &str, cpus: &CpuSet) {
    let dir = proc.join(format!("{pid}/task/{tid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
    std::fs::write(
        dir.join("status"),
        format!("Name:\t{comm}\nCpus_allowed_list:\t{cpus}\n"),
    )
    .unwrap();
}

struct World {
    dir: tempfile::TempDir,
    good_cpus: CpuSet,
    drift_cpus: CpuSet,
}

/// Two running guests placed by the hook; `drift`'s worker thread (tid 505) on
/// every CPU.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
    std::fs::create_dir_all(d.join("libvirt")).unwrap();
    copy_tree(&fixture_host(), &d.join("host"));
    let r = roots(d);
    let mut log = Log::memory();
    let all = CpuSet::parse("0-31").unwrap();
    let mut claimed = Vec::new();
    for (name, pid) in [("good", 400u32), ("drift", 500)] {
        let xml = guest(name);
        let out = kvmtune::hook::run(&r, name, "prepare", "begin", xml.as_bytes(), &mut log);
        assert_eq!(out.exit, 0, "{out:?}");
        std::fs::write(
            d.join(format!("libvirt/{name}.xml")),
            format!(
                "<domstatus state='running' pid='{pid}'><vcpus><vcpu id='0' pid='{}'/><vcpu id='1' pid='{}'/></vcpus>{xml}</domstatus>",
                pid + 1,
                pid + 2
            ),
        )
        .unwrap();
        let out = kvmtune::hook::run(&r, name, "started", "begin", xml.as_bytes(), &mut log);
        assert_eq!(out.exit, 0, "{out:?}");
        let ledger = ledger_store::read_unlocked(&r.paths.run_dir).unwrap();
        let entry = ledger.guests[name].clone();
        let emulator = entry.emulator.clone().unwrap();
        // What the hook's started applies with apply_runtime on.
        let proc = &r.proc_root;
        thread(proc, pid, pid, "qemu-system-x86", &emulator);
        thread(proc, pid, pid + 1, "CPU 0/KVM", &entry.vcpus[0]);
        thread(proc, pid, pid + 2, "CPU 1/KVM", &entry.vcpus[1]);
        let worker = if name == "drift" { &all } else { &emulator };
        thread(proc, pid, pid + 5, "worker", worker);
        claimed.push((entry.cpus.clone(), entry.nodes.clone()));
    }
    // good's cgroup (v2, libvirt's layout), its memory bound to the claimed nodes.
    let proc = d.join("proc");
    std::fs::create_dir_all(proc.join("self")).unwrap();
    std::fs::write(
        proc.join("self/mountinfo"),
        "31 25 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    )
    .unwrap();
    let scope = "machine.slice/machine-qemu\\x2d1\\x2dgood.scope/libvirt";
    std::fs::write(proc.join("400/cgroup"), format!("0::/{scope}/emulator\n")).unwrap();
    let cg = d.join("host/sys/fs/cgroup").join(scope);
    let nodes = &claimed[0].1;
    for sub in ["", "emulator", "vcpu0", "vcpu1"] {
        std::fs::create_dir_all(cg.join(sub)).unwrap();
        std::fs::write(cg.join(sub).join("cpuset.cpus.effective"), "0-31\n").unwrap();
        std::fs::write(
            cg.join(sub).join("cpuset.mems.effective"),
            format!("{nodes}\n"),
        )
        .unwrap();
    }
    World {
        dir,
        good_cpus: claimed[0].0.clone(),
        drift_cpus: claimed[1].0.clone(),
    }
}

fn status(w: &World, args: &[&str]) -> Output {
    let r = roots(w.dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_kvmtune"))
        .arg("status")
        .args(args)
        .arg("--policy")
        .arg(&r.policy)
        .arg("--host-root")
        .arg(&r.host_root)
        .arg("--color")
        .arg("never")
        .env("KVMTUNE_RUN_DIR", &r.paths.run_dir)
        .env("KVMTUNE_LIBVIRT_RUN_DIR", &r.paths.libvirt_run_dir)
        .env("KVMTUNE_PROC_ROOT", &r.proc_root)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The guest's block of the text output: its heading and the indented lines
/// below it.
fn block(text: &str, guest: &str) -> String {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("  {guest}  pid")));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no {guest} in {text}"));
    std::iter::once(head)
        .chain(lines.take_while(|l| l.starts_with("    ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn text_shows_each_aspect_verified_or_drifted() {
    let w = world();
    let text = String::from_utf8(status(&w, &[]).stdout).unwrap();
    let (good, drift) = (&block(&text, "good"), &block(&text, "drift"));
    // A read-back line: `    read back  LABEL  …` or the same indented.
    let line = |b: &str, label: &str| -> String {
        b.lines()
            .find(|l| l.get(15..).is_some_and(|rest| rest.starts_with(label)))
            .unwrap_or_else(|| panic!("no {label} line in {b}"))
            .to_string()
    };
    assert!(
        line(good, "vCPU threads").contains("applied and verified: vCPU→CPU"),
        "{good}"
    );
    assert!(
        line(good, "emulator threads").contains(&format!(
            "applied and verified: 2 thread(s) on CPUs {} (by the hook at start)",
            w.good_cpus
        )),
        "{good}"
    );
    assert!(
        line(good, "cgroup mems").contains("applied and verified: mode strict: node(s) 0"),
        "{good}"
    );
    assert!(
        line(good, "memory policy")
            .contains("applied and verified: mode strict: memory bound to node(s) 0"),
        "{good}"
    );
    assert!(!good.contains("drifted"), "{good}");
    assert!(
        line(drift, "emulator threads").ends_with(&format!(
            "drifted: expected {}, found 0-31 (thread 505 worker)",
            w.drift_cpus
        )),
        "{drift}"
    );
    assert!(
        line(drift, "vCPU threads").contains("applied and verified"),
        "{drift}"
    );
    assert!(
        line(drift, "memory policy").contains("not enforced at runtime (mode preferred"),
        "{drift}"
    );
    // No cgroup for drift: no cgroup lines.
    assert!(!drift.contains("cgroup cpus"), "{drift}");
    // Rule 1.3 agrees with the read-back.
    let rule = drift.lines().find(|l| l.starts_with("    1.3")).unwrap();
    assert!(rule.contains("differs"), "{rule}");
    let rule = good.lines().find(|l| l.starts_with("    1.3")).unwrap();
    assert!(rule.contains("runtime-enforced"), "{rule}");
}

#[test]
fn json_and_metrics_say_the_same() {
    let w = world();
    let json: serde_json::Value = serde_json::from_slice(&status(&w, &["--json"]).stdout).unwrap();
    assert_eq!(json["schema_version"], 2);
    let guest = |name: &str| {
        json["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap()
            .clone()
    };
    let aspect = |g: &serde_json::Value, a: &str| {
        g["readback"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["aspect"] == a)
            .unwrap_or_else(|| panic!("no {a} in {g}"))
            .clone()
    };
    let good = guest("good");
    for a in [
        "vcpu-threads",
        "emulator-threads",
        "cgroup-mems",
        "memory-policy",
    ] {
        assert_eq!(aspect(&good, a)["state"], "verified", "{a}: {good}");
    }
    assert_eq!(aspect(&good, "cgroup-cpus")["state"], "not-enforced");
    let drift = guest("drift");
    let e = aspect(&drift, "emulator-threads");
    assert_eq!(e["state"], "drifted");
    assert_eq!(e["drifts"][0]["what"], "thread 505 worker");
    assert_eq!(e["drifts"][0]["expected"], w.drift_cpus.to_string());
    assert_eq!(e["drifts"][0]["found"], "0-31");
    assert_eq!(aspect(&drift, "memory-policy")["state"], "not-enforced");

    let prom = String::from_utf8(status(&w, &["--format", "prometheus"]).stdout).unwrap();
    let scrape = prometheus_parse::Scrape::parse(prom.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        match found[0].value {
            prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        value("kvmtune_guest_affinity_drift", &[("guest", "drift")]),
        1.0
    );
    assert_eq!(
        value("kvmtune_guest_affinity_drift", &[("guest", "good")]),
        0.0
    );
    assert_eq!(
        value(
            "kvmtune_guest_drift",
            &[("guest", "drift"), ("aspect", "emulator-threads")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "kvmtune_guest_drift",
            &[("guest", "good"), ("aspect", "memory-policy")]
        ),
        0.0
    );
    assert_eq!(
        value(
            "kvmtune_guest_conformance",
            &[("guest", "drift"), ("rule", "1.3")]
        ),
        0.0
    );
    assert_eq!(
        value(
            "kvmtune_guest_conformance",
            &[("guest", "good"), ("rule", "1.3")]
        ),
        1.0
    );
}
