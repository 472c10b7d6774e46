//! The binary as an admin meets it: `kvmtune plan` / `kvmtune check` on good and bad
//! input. Every failure is one line on stderr starting with `kvmtune:` and a
//! documented exit code (README: 2 policy/usage, 3 bad input); never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const HOST: &str = "tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node";

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kvmtune(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmtune"))
        .current_dir(manifest())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn plan_stdin(stdin: &[u8]) -> Output {
    // The shipped policy, not whatever /etc/kvmtune/policy.yaml this machine has.
    kvmtune(
        &[
            "plan",
            "--policy",
            "config/policy.yaml",
            "--host-root",
            HOST,
            "-",
        ],
        stdin,
    )
}

/// Asserts a one-line `kvmtune:` error containing `needle` and exit `code`.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("kvmtune: "), "{stderr}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing half-written on stdout");
}

#[test]
fn the_readme_example_plans_the_example_guest() {
    let out = kvmtune(
        &[
            "plan",
            "--explain",
            "--host-root",
            HOST,
            "config/examples/guest.xml",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("guest web01: settings from defaults"),
        "{text}"
    );
    assert!(
        text.contains("CPU mode host-passthrough → host-model"),
        "{text}"
    );
}

#[test]
fn plan_outputs_conforming_xml_diff_and_json() {
    let xml = std::fs::read(manifest().join("config/examples/guest.xml")).unwrap();
    let out = plan_stdin(&xml);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("<nosharepages/>") && text.contains("cache='none'"));
    assert!(text.contains("<!-- An example guest as virt-install defines it"));

    let out = kvmtune(&["plan", "--diff", "--host-root", HOST, "-"], &xml);
    let diff = String::from_utf8(out.stdout).unwrap();
    assert!(
        diff.starts_with("--- web01 (current)\n+++ web01 (kvmtune)\n"),
        "{diff}"
    );
    assert!(diff.contains("-      <driver name='qemu' type='qcow2' cache='writeback'/>"));

    let out = kvmtune(&["plan", "--json", "--host-root", HOST, "-"], &xml);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["guest"], "web01");
    assert_eq!(json["placement"]["level"], "l3");
}

#[test]
fn bad_domain_input_is_one_line_exit_3() {
    assert_one_line_error(&plan_stdin(b""), 3, "<stdin>: domain XML is empty");
    assert_one_line_error(&plan_stdin(b"hello"), 3, "not well-formed");
    assert_one_line_error(
        &plan_stdin(b"<network><name>x</name></network>"),
        3,
        "not a libvirt domain: root element is <network>",
    );
    assert_one_line_error(
        &plan_stdin(b"<domain><name>x</name><vcpu>2"),
        3,
        "not well-formed",
    );
    assert_one_line_error(&plan_stdin(b"<domain>\xff</domain>"), 3, "not valid UTF-8");
    let out = kvmtune(
        &["plan", "--host-root", HOST, "/nonexistent/guest.xml"],
        b"",
    );
    assert_one_line_error(&out, 3, "/nonexistent/guest.xml");
}

#[test]
fn a_ten_megabyte_domain_plans_and_a_larger_than_limit_one_is_refused() {
    let padding = "x".repeat(10 * 1024 * 1024);
    let xml = format!(
        "<domain type='kvm'><name>big</name><description>{padding}</description><memory>1048576</memory><vcpu>2</vcpu></domain>"
    );
    let out = plan_stdin(xml.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.len() > xml.len());
    let huge = format!(
        "<domain><name>huge</name><description>{}</description></domain>",
        "x".repeat(17 * 1024 * 1024)
    );
    assert_one_line_error(&plan_stdin(huge.as_bytes()), 3, "larger than");
}

#[test]
fn bad_policy_is_one_line_with_file_line_column_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "version: 1\nhost:\n  alow_cpu0: true\n",
            ":3:3: host: unknown field `alow_cpu0`",
        ),
        (
            "version: 1\nhost:\n  reserved_cpus: 0-x\n",
            ":3:18: host.reserved_cpus: invalid cpulist",
        ),
        (
            "version: 1\nhost:\n  allow_cpu0: 7\n",
            ":3:15: host.allow_cpu0: invalid type",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let p = path.to_str().unwrap();
        let out = kvmtune(&["check", "--policy", p, "--host-root", HOST], b"");
        assert_one_line_error(&out, 2, &format!("{p}{needle}"));
        let out = kvmtune(
            &[
                "plan",
                "--policy",
                p,
                "--host-root",
                HOST,
                "config/examples/guest.xml",
            ],
            b"",
        );
        assert_one_line_error(&out, 2, needle);
    }
}

#[test]
fn check_validates_against_the_host() {
    let out = kvmtune(
        &[
            "check",
            "--policy",
            "config/policy.yaml",
            "--host-root",
            HOST,
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 sockets, 2 nodes, 16 cores, 32 threads")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "version: 1\nhost:\n  reserved_cpus: 0-1,40\n").unwrap();
    let out = kvmtune(
        &[
            "check",
            "--policy",
            path.to_str().unwrap(),
            "--host-root",
            HOST,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(":3:18: host.reserved_cpus: CPU 40 is not on this host (its CPUs are 0-31)")
    );
}

#[test]
fn unknown_subcommand_and_missing_args_exit_2() {
    assert_eq!(kvmtune(&["frobnicate"], b"").status.code(), Some(2));
    assert_eq!(kvmtune(&["plan"], b"").status.code(), Some(2));
}

#[test]
fn invoked_as_the_libvirt_hook_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let link = hooks.join("qemu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvmtune"), &link).unwrap();
    // Unknown operation: exits 0 quietly whatever the environment.
    let out = Command::new(&link)
        .args(["g", "frobnicate", "begin", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    // Too few arguments: not libvirt, a usage error.
    let out = Command::new(&link).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
