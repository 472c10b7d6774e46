//! `kvmtune status --format prometheus` and `--format json` through the real
//! binary on fixture trees: hook calls (run in-process, as libvirt would run the
//! binary) bump the outcome counters, a convergence queue directory holds files,
//! and the exposition text written atomically by `--output` parses with a real
//! parser (`prometheus-parse`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvmtune_sys::ledger_store::Paths;
use kvmtune_sys::logging::Log;
use kvmtune_sys::roots::Roots;
use prometheus_parse::{LineInfo, Scrape, Value};

const POLICY: &str =
    "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\non_violation: refuse\n";

fn host() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node")
}

fn roots(dir: &Path) -> Roots {
    Roots {
        policy: dir.join("policy.yaml"),
        host_root: host(),
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

fn guest(name: &str, cpu: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>512</memory>\n  <vcpu placement='static'>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  {cpu}\n  <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages><nosharepages/></memoryBacking>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none' io='native'/>\n      <source file='/x.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
}

fn status(dir: &Path, args: &[&str]) -> Output {
    let r = roots(dir);
    Command::new(env!("CARGO_BIN_EXE_kvmtune"))
        .arg("status")
        .args(args)
        .arg("--policy")
        .arg(&r.policy)
        .arg("--host-root")
        .arg(&r.host_root)
        .env("KVMTUNE_RUN_DIR", &r.paths.run_dir)
        .env("KVMTUNE_LIBVIRT_RUN_DIR", &r.paths.libvirt_run_dir)
        .env("KVMTUNE_PROC_ROOT", &r.proc_root)
        .output()
        .unwrap()
}

fn world() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
    std::fs::create_dir_all(d.join("libvirt")).unwrap();
    let r = roots(d);
    let mut log = Log::memory();
    let web = guest("web", "");
    let out = kvmtune::hook::run(&r, "web", "prepare", "begin", web.as_bytes(), &mut log);
    assert_eq!(out.exit, 0, "{out:?}");
    let pt = guest("pt", "<cpu mode='host-passthrough'/>");
    let out = kvmtune::hook::run(&r, "pt", "prepare", "begin", pt.as_bytes(), &mut log);
    assert_eq!(out.exit, 1, "{out:?}");
    // web runs: libvirt wrote its status file.
    std::fs::write(
        d.join("libvirt/web.xml"),
        format!("<domstatus state='running' pid='1'><vcpus><vcpu id='0' pid='2'/></vcpus>{web}</domstatus>"),
    )
    .unwrap();
    let out = kvmtune::hook::run(&r, "web", "started", "begin", web.as_bytes(), &mut log);
    assert_eq!(out.exit, 0, "{out:?}");
    let queue = d.join("run/converge");
    std::fs::create_dir_all(&queue).unwrap();
    std::fs::write(queue.join("web"), "").unwrap();
    std::fs::write(queue.join("db"), "").unwrap();
    dir
}

fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Value {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    found[0].value.clone()
}

#[test]
fn prometheus_output_file_parses_and_counts_hook_outcomes() {
    let dir = world();
    let file = dir.path().join("textfile/kvmtune.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "old content\n").unwrap();
    let out = status(
        dir.path(),
        &["--format", "prometheus", "--output", file.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored | LineInfo::Empty),
            "{line:?}"
        );
    }
    // No temp file is left beside it.
    let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("kvmtune.prom")]);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let counter = |stage, outcome| {
        sample(
            &scrape,
            "kvmtune_hook_outcomes_total",
            &[("stage", stage), ("outcome", outcome)],
        )
    };
    assert_eq!(counter("prepare-begin", "allowed"), Value::Counter(1.0));
    assert_eq!(counter("prepare-begin", "refused"), Value::Counter(1.0));
    assert_eq!(counter("started-begin", "allowed"), Value::Counter(1.0));
    assert_eq!(counter("release-end", "allowed"), Value::Counter(0.0));
    // web and db written here, and pt: its refused start was queued by the hook
    // (converge: after-start queues refused starts too).
    assert_eq!(
        sample(&scrape, "kvmtune_converge_queue_length", &[]),
        Value::Gauge(3.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "kvmtune_guest_info",
            &[("guest", "web"), ("pool", "shared"), ("source", "ledger")]
        ),
        Value::Gauge(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "kvmtune_guest_conformance",
            &[("guest", "web"), ("rule", "5")]
        ),
        Value::Gauge(1.0)
    );
    // Without --output the same text goes to stdout.
    let out = status(dir.path(), &["--format", "prometheus"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
}

#[test]
fn json_has_a_schema_version_and_json_is_an_alias() {
    let dir = world();
    let a = status(dir.path(), &["--json"]);
    let b = status(dir.path(), &["--format", "json"]);
    assert_eq!(a.status.code(), Some(0));
    let va: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let vb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(va["schema_version"], 2);
    assert_eq!(va["guests"], vb["guests"]);
    assert_eq!(va["guests"][0]["pool"], "shared");
    assert_eq!(va["host"]["nodes"][0]["free_cpus"][0]["pool"], "shared");
    let bad = status(dir.path(), &["--json", "--format", "text"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn an_unwritable_output_is_one_line_and_exit_3() {
    let dir = world();
    let out = status(
        dir.path(),
        &[
            "--format",
            "prometheus",
            "--output",
            "/nonexistent/dir/kvmtune.prom",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/dir/kvmtune.prom"), "{err}");
}

#[test]
fn queued_guests_are_listed_in_text_and_json() {
    let dir = world();
    // A well-formed entry for web (the running guest), as the hook writes them.
    std::fs::write(
        dir.path().join("run/converge/web"),
        "uuid=u-web\nqueued=1764589202\n",
    )
    .unwrap();
    let out = status(dir.path(), &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let queue = &v["converge_queue"];
    assert_eq!(
        queue["path"],
        dir.path().join("run/converge").display().to_string()
    );
    assert!(queue["error"].is_null());
    let names: Vec<(&str, bool)> = queue["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["guest"].as_str().unwrap(),
                q["running"].as_bool().unwrap(),
            )
        })
        .collect();
    // pt was queued by the hook at its (refused) prepare; db by hand; only web runs.
    assert_eq!(names, [("db", false), ("pt", false), ("web", true)]);
    let pt = &queue["guests"][1];
    assert!(pt["queued_at"].as_u64().unwrap() > 1_700_000_000, "{pt}");
    let web = &v["guests"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["queued_for_convergence"]["queued_at"], 1_764_589_202);
    assert_eq!(web["queued_for_convergence"]["uuid"], "u-web");

    let out = status(dir.path(), &["--color", "never"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("    converge   queued for convergence at 20251201T114002Z: kvmtune converge conforms its definition"),
        "{text}"
    );
    assert!(
        text.contains(": 3 guests (kvmtune converge conforms their definitions)\n  db   queued at an unknown time  (not running)\n  pt   queued at "),
        "{text}"
    );
    assert!(
        text.contains("\n  web  queued at 20251201T114002Z  uuid u-web\n"),
        "{text}"
    );

    // Drained: nothing queued, no converge line.
    std::fs::remove_dir_all(dir.path().join("run/converge")).unwrap();
    let text = String::from_utf8(status(dir.path(), &["--color", "never"]).stdout).unwrap();
    assert!(text.contains("converge: none\n"), "{text}");
    assert!(!text.contains("    converge "), "{text}");
}
