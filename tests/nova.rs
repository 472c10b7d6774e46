//! `kvmtune nova check` on three real-shaped nova.conf files (tests/data/nova/: a
//! DevStack compute node, a kolla-ansible one with split CPU pools, an upgraded Rocky
//! node still using vcpu_pin_set) on the two-socket Xeon Silver 4108 fixture host:
//! every finding asserted (rule, severity, line, message, fix lines), through the
//! core function and through the binary (text, JSON, exit codes); applying the fix
//! lines clears every warning; bad nova.conf files are one line naming FILE:LINE
//! with exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};

use kvmtune_core::nova::conf::NovaConf;
use kvmtune_core::nova::{self, Finding, Severity, Severity::*};
use kvmtune_core::policy::Policy;

const HOST: &str = "tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node";
const DATA: &str = "tests/data/nova";

struct Case {
    conf: &'static str,
    policy: &'static str,
    expected: fn() -> Vec<Finding>,
}

const CASES: &[Case] = &[
    Case {
        conf: "devstack-nova-cpu.conf",
        policy: "config/policy.yaml",
        expected: expected_devstack,
    },
    Case {
        conf: "kolla-nova-compute.conf",
        policy: "tests/data/nova/policy-split.yaml",
        expected: expected_kolla,
    },
    Case {
        conf: "rocky-vcpu-pin-set.conf",
        policy: "tests/data/nova/policy-refuse.yaml",
        expected: expected_pin_set,
    },
];

fn f(
    rule: &'static str,
    severity: Severity,
    line: Option<u32>,
    message: &str,
    fix: &[&str],
) -> Finding {
    Finding {
        rule,
        severity,
        line,
        message: message.to_string(),
        fix_lines: fix.iter().map(|s| s.to_string()).collect(),
    }
}

fn policy(path: &str) -> Policy {
    kvmtune_sys::policy_file::load(Path::new(path)).unwrap()
}

fn host() -> kvmtune_core::host::Host {
    kvmtune_sys::sysfs::read_host(Path::new(HOST)).unwrap()
}

fn core_findings(text: &str, policy_path: &str) -> Vec<Finding> {
    let conf = NovaConf::parse(text).unwrap();
    nova::check(&conf, &policy(policy_path), &host())
}

fn kvmtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmtune"))
        .args(args)
        .output()
        .unwrap()
}

fn nova_check(conf: &str, policy: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "nova",
        "check",
        "--nova-conf",
        conf,
        "--policy",
        policy,
        "--host-root",
        HOST,
    ];
    args.extend_from_slice(extra);
    kvmtune(&args)
}

#[test]
fn core_findings_per_file() {
    for case in CASES {
        let text = std::fs::read_to_string(format!("{DATA}/{}", case.conf)).unwrap();
        let got = core_findings(&text, case.policy);
        let want = (case.expected)();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{} finding {i}", case.conf);
        }
        assert_eq!(got.len(), want.len(), "{}: {got:#?}", case.conf);
        assert!(nova::has_problems(&got), "{}", case.conf);
    }
}

#[test]
fn cli_json_matches_core_and_exits_1() {
    for case in CASES {
        let path = format!("{DATA}/{}", case.conf);
        let out = nova_check(&path, case.policy, &["--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", case.conf);
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = (case.expected)();
        assert_eq!(json["findings"], serde_json::to_value(&want).unwrap());
        assert_eq!(
            json["fix_lines"],
            serde_json::to_value(nova::merged_fix(&want)).unwrap()
        );
        assert_eq!(json["nova_conf"], path.as_str());
    }
}

#[test]
fn cli_text_for_devstack() {
    let path = format!("{DATA}/devstack-nova-cpu.conf");
    let out = nova_check(&path, "config/policy.yaml", &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "\
{path}: checked against the policy on this host (2 sockets, 2 nodes, 16 cores, 32 threads)
warn  [rule 1.3]: neither [compute] cpu_shared_set nor cpu_dedicated_set is set: Nova offers every online CPU (0-31) to guests, CPU0 included
        [compute]
        cpu_shared_set = 1-31
ok    [rule 1.1]: existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy
warn  [rule 5] {path}:50: [libvirt] cpu_mode = host-passthrough, which kernel-panicked production hosts: Nova defines every guest with it and kvmtune apply has to rewrite each to host-model; use host-model, or custom with a named cpu_models
        [libvirt]
        cpu_mode = host-model
"
    );
    assert!(text.starts_with(&want), "{text}");
    assert!(
        text.ends_with(
            "\
0 error(s), 3 warning(s), 2 info, 1 ok

nova.conf lines that make Nova define conforming guests:
  [compute]
  cpu_shared_set = 1-31
  [libvirt]
  cpu_mode = host-model
  disk_cachemodes = file=none,block=none
  [DEFAULT]
  reserved_host_memory_mb = 8704
  reserved_huge_pages = node:0,size:2048,count:2048
  reserved_huge_pages = node:1,size:2048,count:2048
"
        ),
        "{text}"
    );
}

/// nova.conf with the merged fix lines applied: `#key = …` removes the key, every
/// other line is appended under its section (the last of a single-valued key wins).
fn apply_fix(text: &str, fix: &[String]) -> String {
    let mut kept: Vec<&str> = text.lines().collect();
    for line in fix {
        if let Some(commented) = line.strip_prefix('#') {
            let key = commented.split('=').next().unwrap().trim();
            kept.retain(|l| l.split('=').next().map(str::trim) != Some(key));
        }
    }
    let mut out = kept.join("\n");
    out.push('\n');
    for line in fix.iter().filter(|l| !l.starts_with('#')) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn applying_the_fix_lines_clears_every_warning() {
    for case in CASES {
        let text = std::fs::read_to_string(format!("{DATA}/{}", case.conf)).unwrap();
        let fix = nova::merged_fix(&core_findings(&text, case.policy));
        let fixed = apply_fix(&text, &fix);
        let after = core_findings(&fixed, case.policy);
        assert!(!nova::has_problems(&after), "{}: {after:#?}", case.conf);
        assert!(
            after.iter().any(|f| f.rule == "1.3" && f.severity == Ok),
            "{}: {after:#?}",
            case.conf
        );
    }
}

#[test]
fn a_conforming_nova_conf_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nova.conf");
    std::fs::write(
        &path,
        "[DEFAULT]\nreserved_host_memory_mb = 8704\nreserved_huge_pages = node:0,size:2048,count:1024\nreserved_huge_pages = node:1,size:2048,count:1024\n\n[compute]\ncpu_dedicated_set = 8-15,\n  24-31\ncpu_shared_set = 2-7,18-23\n\n[libvirt]\ncpu_mode = custom\ncpu_models = Skylake-Server-IBRS\ndisk_cachemodes = file=none,block=none,network=none\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let out = nova_check(path, "tests/data/nova/policy-split.yaml", &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = vec![
        f(
            "1.3",
            Ok,
            None,
            "cpu_dedicated_set 8-15,24-31 and cpu_shared_set 2-7,18-23: disjoint, online and clear of CPU0, reserved CPUs 16 and IRQ CPUs 1,17",
            &[],
        ),
        f(
            "1.1",
            Ok,
            None,
            "existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy",
            &[],
        ),
        f(
            "5",
            Ok,
            Some(12),
            "[libvirt] cpu_mode custom: not host-passthrough",
            &[],
        ),
        f(
            "2.1",
            Ok,
            Some(14),
            "[libvirt] disk_cachemodes = file=none,block=none,network=none: every disk type gets cache='none'",
            &[],
        ),
        f(
            "3.2",
            Ok,
            Some(2),
            "[DEFAULT] reserved_host_memory_mb = 8704: covers the 8192 MiB of huge pages this host holds",
            &[],
        ),
        f(
            "3.2",
            Ok,
            Some(3),
            "[DEFAULT] reserved_huge_pages = node:0,size:2048,count:1024: Nova keeps 1024 of node 0's 2 MiB huge pages from hw:mem_page_size guests",
            &[],
        ),
        f(
            "3.2",
            Ok,
            Some(4),
            "[DEFAULT] reserved_huge_pages = node:1,size:2048,count:1024: Nova keeps 1024 of node 1's 2 MiB huge pages from hw:mem_page_size guests",
            &[],
        ),
    ];
    assert_eq!(json["findings"], serde_json::to_value(&want).unwrap());
}

#[test]
fn nova_errors_in_cpu_sets_and_huge_pages() {
    let text = "\
[DEFAULT]
vcpu_pin_set = 2-7
reserved_host_memory_mb = lots
reserved_huge_pages = node:0,size:1GB,count:1
reserved_huge_pages = node:1,size:2048,count:4096
reserved_huge_pages = node:7,size:2048,count:1
reserved_huge_pages = size:2048
[compute]
cpu_dedicated_set = 4-7,32-35
cpu_shared_set = 0-5
[libvirt]
cpu_mode = custom
";
    let got = core_findings(text, "config/policy.yaml");
    let want = vec![
        f(
            "nova",
            Warn,
            Some(2),
            "[DEFAULT] vcpu_pin_set = 2-7 is deprecated since Nova 20.0.0 (Train): the CPUs for guests are [compute] cpu_shared_set (floating guests) and cpu_dedicated_set (hw:cpu_policy=dedicated)",
            &[
                "[DEFAULT]",
                "#vcpu_pin_set = 2-7",
                "[compute]",
                "cpu_shared_set = 2-3",
                "cpu_dedicated_set = 4-7",
            ],
        ),
        f(
            "nova",
            Error,
            Some(9),
            "[compute] cpu_dedicated_set and [DEFAULT] vcpu_pin_set (line 2) exclude each other: nova-compute refuses to start",
            &[],
        ),
        f(
            "nova",
            Warn,
            Some(10),
            "with [DEFAULT] vcpu_pin_set (line 2) set, Nova reads [compute] cpu_shared_set in its pre-Train meaning: the CPUs of emulator threads, not the shared pool; once vcpu_pin_set is replaced it is the shared pool (line 2's fix)",
            &[],
        ),
        f(
            "nova",
            Error,
            Some(9),
            "[compute] cpu_dedicated_set = 4-7,32-35 names CPUs 32-35 this host does not have online (online: 0-31): nova-compute refuses to start",
            &["[compute]", "cpu_dedicated_set = 4-7"],
        ),
        f(
            "1.1",
            Ok,
            None,
            "existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy",
            &[],
        ),
        f(
            "nova",
            Error,
            Some(12),
            "[libvirt] cpu_mode = custom without cpu_models: nova-compute refuses to start",
            &["[libvirt]", "cpu_mode = host-model"],
        ),
        f(
            "2.1",
            Info,
            None,
            "[libvirt] disk_cachemodes is unset: Nova uses cache none where the instances directory supports O_DIRECT and writeback where it does not (tmpfs); set it so every guest gets cache='none' (policy disk_cache: none)",
            &["[libvirt]", "disk_cachemodes = file=none,block=none"],
        ),
        f(
            "nova",
            Error,
            Some(3),
            "[DEFAULT] reserved_host_memory_mb = lots: not a number of MiB: nova-compute refuses to start",
            &[],
        ),
        f(
            "3.2",
            Error,
            Some(4),
            "[DEFAULT] reserved_huge_pages = node:0,size:1GB,count:1: node 0 has only 0 1 GiB huge pages",
            &[],
        ),
        f(
            "3.2",
            Error,
            Some(5),
            "[DEFAULT] reserved_huge_pages = node:1,size:2048,count:4096: node 1 has only 2048 2 MiB huge pages",
            &[],
        ),
        f(
            "3.2",
            Error,
            Some(6),
            "[DEFAULT] reserved_huge_pages = node:7,size:2048,count:1: this host has no NUMA node 7",
            &[],
        ),
        f(
            "nova",
            Error,
            Some(7),
            "[DEFAULT] reserved_huge_pages = size:2048: wants node:N,size:KiB,count:N: nova-compute refuses to start",
            &[],
        ),
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "finding {i}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn overlapping_pools_and_existing_pins_override() {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_path,
        "version: 1\ndefaults:\n  existing_pins: override\n",
    )
    .unwrap();
    let text = "[compute]\ncpu_dedicated_set = 8-15\ncpu_shared_set = 1-9\n";
    let got = core_findings(text, policy_path.to_str().unwrap());
    let want = [
        f(
            "nova",
            Error,
            Some(3),
            "[compute] cpu_shared_set and cpu_dedicated_set (line 2) overlap on CPUs 8-9: Nova requires them disjoint and refuses to start",
            &["[compute]", "cpu_shared_set = 1-7"],
        ),
        f(
            "1.1",
            Warn,
            None,
            "existing_pins: override (in defaults) re-pins guests Nova pinned itself (hw:cpu_policy=dedicated): Nova's accounting of cpu_dedicated_set no longer matches where they run; set existing_pins: keep in the policy",
            &[],
        ),
    ];
    assert_eq!(&got[..2], &want[..]);
}

#[test]
fn bad_nova_conf_is_one_line_with_file_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("binary.conf");
    std::fs::write(&binary, b"\x7fELF\x02\x01\x01\x00\x00\x00").unwrap();
    let outside = dir.path().join("outside.conf");
    std::fs::write(&outside, "# nova.conf\nvcpu_pin_set 2-15\n[DEFAULT]\n").unwrap();
    let no_section = dir.path().join("nosection.conf");
    std::fs::write(&no_section, "debug = True\n[DEFAULT]\n").unwrap();
    let latin1 = dir.path().join("latin1.conf");
    std::fs::write(&latin1, b"[DEFAULT]\n# caf\xe9\n").unwrap();
    let missing = dir.path().join("missing.conf");
    let cases = [
        (binary, ":1: NUL byte (a binary file?)".to_string()),
        (
            outside,
            ":2: 'vcpu_pin_set 2-15' is neither [section], key = value nor a comment".to_string(),
        ),
        (
            no_section,
            ":1: 'debug = True': key before any [section] (start with [DEFAULT])".to_string(),
        ),
        (latin1, ":2: not UTF-8 text (a binary file?)".to_string()),
        (
            missing,
            ": No such file or directory (os error 2)".to_string(),
        ),
    ];
    for (path, tail) in cases {
        let path = path.to_str().unwrap();
        let out = nova_check(path, "config/policy.yaml", &[]);
        assert_eq!(out.status.code(), Some(2), "{path}");
        assert!(out.stdout.is_empty());
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!("kvmtune: {path}{tail}\n")
        );
    }
}

#[test]
fn unreadable_host_exits_3_and_bad_policy_exits_2() {
    let conf = format!("{DATA}/devstack-nova-cpu.conf");
    let out = kvmtune(&[
        "nova",
        "check",
        "--nova-conf",
        &conf,
        "--policy",
        "config/policy.yaml",
        "--host-root",
        "/nonexistent-kvmtune-host",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let out = kvmtune(&[
        "nova",
        "check",
        "--nova-conf",
        &conf,
        "--policy",
        "tests/data/nova/devstack-nova-cpu.conf",
        "--host-root",
        HOST,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
}

#[test]
fn help_teaches_with_an_example_and_exit_codes() {
    let out = kvmtune(&["nova", "check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--nova-conf <FILE>"), "{help}");
    assert!(help.contains("[default: /etc/nova/nova.conf]"), "{help}");
    assert!(help.contains("kvmtune nova check --nova-conf"), "{help}");
    assert!(
        help.contains("Exit codes: 0 no warning or error, 1 warnings or errors, 2"),
        "{help}"
    );
}

fn expected_devstack() -> Vec<Finding> {
    vec![
        f(
            "1.3",
            Warn,
            None,
            "neither [compute] cpu_shared_set nor cpu_dedicated_set is set: Nova offers every online CPU (0-31) to guests, CPU0 included",
            &["[compute]", "cpu_shared_set = 1-31"],
        ),
        f(
            "1.1",
            Ok,
            None,
            "existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy",
            &[],
        ),
        f(
            "5",
            Warn,
            Some(50),
            "[libvirt] cpu_mode = host-passthrough, which kernel-panicked production hosts: Nova defines every guest with it and kvmtune apply has to rewrite each to host-model; use host-model, or custom with a named cpu_models",
            &["[libvirt]", "cpu_mode = host-model"],
        ),
        f(
            "2.1",
            Info,
            None,
            "[libvirt] disk_cachemodes is unset: Nova uses cache none where the instances directory supports O_DIRECT and writeback where it does not (tmpfs); set it so every guest gets cache='none' (policy disk_cache: none)",
            &["[libvirt]", "disk_cachemodes = file=none,block=none"],
        ),
        f(
            "3.2",
            Warn,
            None,
            "reserved_host_memory_mb is unset (Nova's default 512), but this host holds 8192 MiB of huge pages, which Nova counts as free memory for guests without hw:mem_page_size: reserve them too, or Nova overcommits the small-page memory",
            &["[DEFAULT]", "reserved_host_memory_mb = 8704"],
        ),
        f(
            "3.2",
            Info,
            None,
            "policy hugepages: auto backs guests with 2 MiB huge pages at start when their node has enough free; Nova does not see those pages taken, so a later guest whose flavor sets hw:mem_page_size may not fit: either give every flavor hw:mem_page_size=2048 (Nova then accounts the pages), or keep the pages from Nova with reserved_huge_pages",
            &[
                "[DEFAULT]",
                "reserved_huge_pages = node:0,size:2048,count:2048",
                "reserved_huge_pages = node:1,size:2048,count:2048",
            ],
        ),
    ]
}

fn expected_kolla() -> Vec<Finding> {
    vec![
        f(
            "nova",
            Info,
            Some(64),
            "[libvirt] cpu_mode is also set on line(s) 62: single-valued, so Nova uses this last one (host-model)",
            &[],
        ),
        f(
            "1.3",
            Warn,
            Some(70),
            "[compute] cpu_shared_set = 0-7,16-23 includes CPU0, reserved CPUs 16 and IRQ CPUs 1,17, which rule 1.3 keeps from guests: Nova counts them as capacity for floating guests, which kvmtune's hook then pins elsewhere",
            &["[compute]", "cpu_shared_set = 2-7,18-23"],
        ),
        f(
            "1.1",
            Warn,
            Some(70),
            "[compute] cpu_shared_set = 0-7,16-23, but the policy's host.shared_cpus is 2-7,18-23: Nova and kvmtune disagree about which CPUs serve floating guests",
            &["[compute]", "cpu_shared_set = 2-7,18-23"],
        ),
        f(
            "1.1",
            Ok,
            None,
            "existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy",
            &[],
        ),
        f(
            "5",
            Ok,
            Some(64),
            "[libvirt] cpu_mode host-model: not host-passthrough",
            &[],
        ),
        f(
            "2.1",
            Warn,
            Some(58),
            "[libvirt] disk_cachemodes = network=writeback: network=writeback, file unset, block unset: rule 2.1 wants cache='none' for every disk (policy disk_cache: none)",
            &[
                "[libvirt]",
                "disk_cachemodes = network=none,file=none,block=none",
            ],
        ),
        f(
            "3.2",
            Warn,
            Some(14),
            "[DEFAULT] reserved_host_memory_mb = 4096, but this host holds 8192 MiB of huge pages, which Nova counts as free memory for guests without hw:mem_page_size: reserve them too, or Nova overcommits the small-page memory",
            &["[DEFAULT]", "reserved_host_memory_mb = 12288"],
        ),
        f(
            "3.2",
            Ok,
            Some(15),
            "[DEFAULT] reserved_huge_pages = node:0,size:2048,count:512: Nova keeps 512 of node 0's 2 MiB huge pages from hw:mem_page_size guests",
            &[],
        ),
        f(
            "3.2",
            Ok,
            Some(16),
            "[DEFAULT] reserved_huge_pages = node:1,size:2MB,count:512: Nova keeps 512 of node 1's 2 MiB huge pages from hw:mem_page_size guests",
            &[],
        ),
    ]
}

fn expected_pin_set() -> Vec<Finding> {
    vec![
        f(
            "nova",
            Warn,
            Some(8),
            "[DEFAULT] vcpu_pin_set = 1-15,17-31 is deprecated since Nova 20.0.0 (Train): the CPUs for guests are [compute] cpu_shared_set (floating guests) and cpu_dedicated_set (hw:cpu_policy=dedicated)",
            &[
                "[DEFAULT]",
                "#vcpu_pin_set = 1-15,17-31",
                "[compute]",
                "cpu_shared_set = 2-15,18-31",
            ],
        ),
        f(
            "nova",
            Warn,
            Some(19),
            "with [DEFAULT] vcpu_pin_set (line 8) set, Nova reads [compute] cpu_shared_set in its pre-Train meaning: the CPUs of emulator threads, not the shared pool; once vcpu_pin_set is replaced it is the shared pool (line 8's fix)",
            &[],
        ),
        f(
            "1.3",
            Warn,
            Some(8),
            "[DEFAULT] vcpu_pin_set = 1-15,17-31 includes reserved CPUs 1,17, which rule 1.3 keeps from guests: Nova counts them as capacity for floating guests, which kvmtune's hook then pins elsewhere",
            &[
                "[DEFAULT]",
                "#vcpu_pin_set = 1-15,17-31",
                "[compute]",
                "cpu_shared_set = 2-15,18-31",
            ],
        ),
        f(
            "1.1",
            Ok,
            None,
            "existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy",
            &[],
        ),
        f(
            "nova",
            Warn,
            Some(24),
            "[libvirt] cpu_models = Cascadelake-Server takes effect only with cpu_mode = custom (cpu_mode is host-passthrough)",
            &["[libvirt]", "#cpu_models = Cascadelake-Server"],
        ),
        f(
            "5",
            Error,
            Some(23),
            "[libvirt] cpu_mode = host-passthrough, which kernel-panicked production hosts: the policy says cpu_mode: refuse, so the hook refuses to start every guest Nova defines; use host-model, or custom with a named cpu_models",
            &["[libvirt]", "cpu_mode = host-model"],
        ),
        f(
            "2.1",
            Warn,
            Some(25),
            "[libvirt] disk_cachemodes = file=directsync,block=none: file=directsync: rule 2.1 wants cache='none' for every disk (policy disk_cache: none)",
            &["[libvirt]", "disk_cachemodes = file=none,block=none"],
        ),
        f(
            "3.2",
            Ok,
            Some(9),
            "[DEFAULT] reserved_host_memory_mb = 10240: covers the 8192 MiB of huge pages this host holds",
            &[],
        ),
        f(
            "3.2",
            Info,
            None,
            "policy hugepages: auto backs guests with 2 MiB huge pages at start when their node has enough free; Nova does not see those pages taken, so a later guest whose flavor sets hw:mem_page_size may not fit: either give every flavor hw:mem_page_size=2048 (Nova then accounts the pages), or keep the pages from Nova with reserved_huge_pages",
            &[
                "[DEFAULT]",
                "reserved_huge_pages = node:0,size:2048,count:2048",
                "reserved_huge_pages = node:1,size:2048,count:2048",
            ],
        ),
    ]
}
