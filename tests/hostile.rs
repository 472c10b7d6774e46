//! Issue 7, hostile input: what a user allowed to define guests (or a broken host)
//! can throw at the hook, which runs as root on every guest start. Each test asserts
//! the behaviour: refused with one clear line, bounded time and memory, no
//! expansion, no unsafe paths, never a failed start caused by kvmtune itself
//! (`on_error: allow`), and a ledger that stays usable.
//!
//! Through `Domain::parse`/`parse_bytes`, `hook::run` on fixture trees (as
//! tests/hook.rs), and the real binary where process behaviour matters (stdin,
//! argv, exit codes, memory), with a fixture syslog socket to read its log lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmtune::hook::{Outcome, run};
use kvmtune_core::domain::{Domain, DomainError, MAX_XML_BYTES};
use kvmtune_core::ledger::{self as ledger_data};
use kvmtune_sys::ledger_store::{self as ledger, Paths};
use kvmtune_sys::logging::{Log, sanitize};
use kvmtune_sys::roots::Roots as Environment;

const HOST: &str = "intel-xeon-silver4108-2s8c2t-2node";
const POLICY: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n";

fn host_root(host: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts")
        .join(host)
}

struct Fixture {
    dir: tempfile::TempDir,
    env: Environment,
}

fn fixture(policy: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let libvirt = dir.path().join("libvirt");
    std::fs::create_dir_all(&libvirt).unwrap();
    let env = Environment {
        policy: policy_path,
        host_root: host_root(HOST),
        proc_root: dir.path().join("proc"),
        paths: Paths {
            run_dir: dir.path().join("run"),
            libvirt_run_dir: libvirt,
        },
        syslog_socket: dir.path().join("no-syslog"),
        allow_insecure_policy: true,
        apply_runtime: false,
    };
    Fixture { dir, env }
}

/// A guest; `name_xml` is the `<name>` content as written in XML (may hold refs).
fn guest_xml(name_xml: &str, vcpus: u32) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name_xml}</name>\n  <memory unit='MiB'>512</memory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <memoryBacking>\n    <nosharepages/>\n  </memoryBacking>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none' io='native'/>\n      <source file='/x.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
}

fn hook(f: &Fixture, guest: &str, op: &str, subop: &str, input: &[u8]) -> (Outcome, Log) {
    let mut log = Log::memory();
    let out = run(&f.env, guest, op, subop, input, &mut log);
    (out, log)
}

fn ledger_of(f: &Fixture) -> ledger_data::Ledger {
    ledger::read_unlocked(&f.env.paths.run_dir).unwrap_or_default()
}

/// A log line or refusal safe for syslog and libvirt's error message: one line,
/// no control characters at all.
fn assert_one_line(what: &str, text: &str) {
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}')),
        "{what}: not one clean line: {text:?}"
    );
}

fn assert_log_clean(log: &Log) {
    assert!(!log.lines.is_empty(), "no log line");
    for (_, line) in &log.lines {
        assert_one_line("log line", line);
    }
}

// ---------------------------------------------------------------- the real binary

struct Bin {
    dir: tempfile::TempDir,
    syslog: UnixDatagram,
    vars: Vec<(String, PathBuf)>,
    insecure_ok: bool,
}

struct BinRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    syslog: Vec<String>,
}

impl Bin {
    fn new(policy: &str) -> Bin {
        let dir = tempfile::tempdir().unwrap();
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        std::fs::set_permissions(&policy_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir_all(dir.path().join("libvirt")).unwrap();
        let sock = dir.path().join("log");
        let syslog = UnixDatagram::bind(&sock).unwrap();
        syslog.set_nonblocking(true).unwrap();
        let vars = vec![
            ("KVMTUNE_POLICY".into(), policy_path),
            ("KVMTUNE_HOST_ROOT".into(), host_root(HOST)),
            ("KVMTUNE_RUN_DIR".into(), dir.path().join("run")),
            ("KVMTUNE_LIBVIRT_RUN_DIR".into(), dir.path().join("libvirt")),
            ("KVMTUNE_SYSLOG_SOCKET".into(), sock),
            ("KVMTUNE_PROC_ROOT".into(), dir.path().join("proc")),
        ];
        Bin {
            dir,
            syslog,
            vars,
            insecure_ok: true,
        }
    }

    fn run(&self, args: &[&std::ffi::OsStr], stdin: Vec<u8>, timeout: Duration) -> BinRun {
        let out_path = self.dir.path().join("stdout");
        let err_path = self.dir.path().join("stderr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmtune"));
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        if self.insecure_ok {
            cmd.env("KVMTUNE_ALLOW_INSECURE_POLICY", "1");
        }
        limit_memory(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        // The hook may stop reading early (and exit): a broken pipe is expected.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvmtune {args:?} still running after {timeout:?}: it hangs");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        writer.join().unwrap();
        let mut syslog = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.syslog.recv(&mut buf) {
            syslog.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        BinRun {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap(),
            stderr: std::fs::read_to_string(&err_path).unwrap(),
            elapsed,
            syslog,
        }
    }

    fn hook(&self, guest: &str, op: &str, stdin: Vec<u8>) -> BinRun {
        let args: Vec<&std::ffi::OsStr> = ["hook", guest, op, "begin", "-"]
            .into_iter()
            .map(std::ffi::OsStr::new)
            .collect();
        self.run(&args, stdin, Duration::from_secs(20))
    }

    fn ledger(&self) -> ledger_data::Ledger {
        ledger::read_unlocked(&self.dir.path().join("run")).unwrap_or_default()
    }
}

/// Heap bound for every hook process these tests run: RLIMIT_DATA (brk and private
/// mappings, Linux >= 4.7). A hook that read 50 MB of stdin or an endless status file
/// into memory would abort on allocation failure instead of exiting 0. (ru_maxrss
/// cannot measure this: a spawned child inherits the test process's peak.)
const HOOK_DATA_LIMIT: u64 = 48 * 1024 * 1024;

#[allow(unsafe_code)]
fn limit_memory(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: HOOK_DATA_LIMIT,
                rlim_max: HOOK_DATA_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------- DTDs and entities

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain type='kvm'><name>g</name><description>&lol9;</description><memory>1024</memory><vcpu>1</vcpu></domain>
"#;

const EXTERNAL_ENTITY: &str = r#"<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/shadow">]>
<domain type='kvm'><name>g</name><description>&xxe;</description><memory>1024</memory><vcpu>1</vcpu></domain>
"#;

const EXTERNAL_DTD: &str = r#"<?xml version="1.0"?>
<!DOCTYPE domain SYSTEM "http://attacker.invalid/evil.dtd">
<domain type='kvm'><name>g</name><memory>1024</memory><vcpu>1</vcpu></domain>
"#;

const PARAMETER_ENTITY: &str = r#"<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<domain type='kvm'><name>g</name><memory>1024</memory><vcpu>1</vcpu></domain>
"#;

const DTD_INPUTS: &[(&str, &str)] = &[
    ("billion laughs", BILLION_LAUGHS),
    ("external entity", EXTERNAL_ENTITY),
    ("external DTD", EXTERNAL_DTD),
    ("parameter entity", PARAMETER_ENTITY),
];

#[test]
fn doctype_entities_and_external_references_are_refused_without_expansion() {
    for (what, xml) in DTD_INPUTS {
        let started = Instant::now();
        let err = Domain::parse(xml).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(matches!(err, DomainError::Xml(_)), "{what}: {err:?}");
        let msg = err.to_string();
        assert_one_line(what, &msg);
        assert!(
            msg.contains("DTD"),
            "{what}: message does not say why: {msg}"
        );
        assert!(
            !msg.contains("lollol") && !msg.contains("root:"),
            "{what}: {msg}"
        );
        // Same through the byte entry point the hook uses.
        let _ = Domain::parse_bytes(xml.as_bytes()).unwrap_err();
    }
}

#[test]
fn the_hook_allows_a_dtd_guest_by_default_and_refuses_it_in_one_line_under_on_error_refuse() {
    let allow = fixture(POLICY);
    let refuse = fixture(&format!("{POLICY}on_error: refuse\n"));
    for (what, xml) in DTD_INPUTS {
        let (out, log) = hook(&allow, "g", "prepare", "begin", xml.as_bytes());
        assert_eq!(out.exit, 0, "{what}: {out:?}");
        assert_log_clean(&log);
        let (severity, line) = log.lines.last().unwrap();
        assert_eq!(*severity, kvmtune_sys::logging::Severity::Error, "{what}");
        assert!(line.contains("DTD"), "{what}: {line}");
        assert!(ledger_of(&allow).guests.is_empty(), "{what}: claimed");

        let (out, log) = hook(&refuse, "g", "prepare", "begin", xml.as_bytes());
        assert_eq!(out.exit, 1, "{what}: {out:?}");
        assert_one_line(what, &out.stderr);
        assert!(
            out.stderr.starts_with("kvmtune: guest 'g' refused"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("DTD"), "{what}: {}", out.stderr);
        assert_log_clean(&log);
    }
}

// ---------------------------------------------------------------- size

#[test]
fn oversized_xml_is_refused_before_parsing() {
    let mut big = b"<domain><name>g</name><description>".to_vec();
    big.resize(MAX_XML_BYTES + 1, b'a');
    let started = Instant::now();
    let err = Domain::parse_bytes(&big).unwrap_err();
    assert!(matches!(err, DomainError::TooLarge { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_one_line("too large", &err.to_string());
}

#[test]
fn fifty_megabytes_on_stdin_is_refused_as_too_large_quickly_in_bounded_memory() {
    let bin = Bin::new(POLICY);
    let mut input = b"<domain type='kvm'><name>g</name><description>".to_vec();
    input.resize(50 * 1024 * 1024, b'A');
    let r = bin.hook("g", "prepare", input);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(
        r.elapsed < Duration::from_secs(10),
        "took {:?} (must be far below libvirt's patience)",
        r.elapsed
    );
    // The hook reads at most MAX_XML_BYTES + 1 (16 MiB): it ran under a 48 MiB heap
    // limit (`limit_memory`), so 50 MB never sat in memory.
    assert!(r.stdout.is_empty());
    let line = r
        .syslog
        .iter()
        .find(|l| l.contains("stage=prepare-begin"))
        .unwrap_or_else(|| panic!("no log line: {:?}", r.syslog));
    assert!(line.contains("larger than"), "{line}");
    assert_one_line("syslog", line);
    assert!(line.len() < 1024, "{line}");
    assert!(bin.ledger().guests.is_empty());
}

// ---------------------------------------------------------------- depth

fn nested(depth: usize, name: &str) -> String {
    let mut xml = format!(
        "<domain type='kvm'><name>{name}</name><memory>1024</memory><vcpu>1</vcpu><metadata>"
    );
    for _ in 0..depth {
        xml.push_str("<a>");
    }
    for _ in 0..depth {
        xml.push_str("</a>");
    }
    xml.push_str("</metadata></domain>");
    xml
}

#[test]
fn nesting_ten_thousand_deep_neither_overflows_the_stack_nor_hangs() {
    // Run on a thread with a small stack (64 KiB less than libvirt's hook process
    // would have) so a recursive parser would crash here, not only in production.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            for depth in [10_000, 100_000] {
                let xml = nested(depth, "deep");
                let started = Instant::now();
                let result = Domain::parse(&xml);
                assert!(started.elapsed() < Duration::from_secs(5));
                match result {
                    Ok(d) => assert_eq!(d.name, "deep"),
                    Err(e) => assert_one_line("depth error", &e.to_string()),
                }
            }
        })
        .unwrap();
    handle.join().expect("parsing deep XML crashed the thread");

    // Through the whole hook (plan, ledger) and the rewrite path.
    let f = fixture(POLICY);
    let xml = nested(10_000, "deep");
    let (out, log) = hook(&f, "deep", "prepare", "begin", xml.as_bytes());
    assert_eq!(out.exit, 0, "{out:?}");
    assert_log_clean(&log);
    let (out, log) = hook(&f, "deep", "restore", "begin", xml.as_bytes());
    assert_eq!(out.exit, 0, "{out:?}");
    assert_log_clean(&log);
    if !out.stdout.is_empty() {
        let _ = Domain::parse(&out.stdout).unwrap();
    }
    // And as a libvirt status file of another guest.
    let status = format!(
        "<domstatus state='running' pid='1'>{}</domstatus>",
        nested(10_000, "deepstatus")
    );
    let _ = kvmtune_core::runstate::parse_status(&status).unwrap();
}

// ---------------------------------------------------------------- guest names

/// Guest names as libvirt would pass them (argv) and as the XML spells them.
fn hostile_names() -> Vec<(String, String)> {
    let long = "x".repeat(300);
    let long_multibyte = "é".repeat(150);
    vec![
        ("new\nline".into(), "new&#10;line".into()),
        (
            "cr\rlf\r\nforged=1".into(),
            "cr&#13;lf&#13;&#10;forged=1".into(),
        ),
        ("../../../etc/passwd".into(), "../../../etc/passwd".into()),
        ("..".into(), "..".into()),
        ("tab\there".into(), "tab&#9;here".into()),
        (
            "sep\u{2028}para\u{2029}end".into(),
            "sep&#x2028;para&#x2029;end".into(),
        ),
        ("bidi\u{202e}txt.exe".into(), "bidi&#x202e;txt.exe".into()),
        (long.clone(), long),
        (long_multibyte.clone(), long_multibyte),
    ]
}

#[test]
fn hostile_guest_names_keep_log_lines_one_line_and_write_no_paths() {
    let f = fixture(POLICY);
    for (name, name_xml) in hostile_names() {
        let xml = guest_xml(&name_xml, 1);
        assert_eq!(Domain::parse(&xml).unwrap().name, name, "{name:?}");
        for (op, subop) in [
            ("prepare", "begin"),
            ("started", "begin"),
            ("release", "end"),
        ] {
            let (out, log) = hook(&f, &name, op, subop, xml.as_bytes());
            assert_eq!(out.exit, 0, "{name:?} {op}: {out:?}");
            assert_log_clean(&log);
            for (_, line) in &log.lines {
                assert!(
                    line.len() < 2048,
                    "{name:?}: log line of {} bytes",
                    line.len()
                );
            }
        }
    }
    // The ledger is one JSON file, the hook counters another (by stage, not by
    // guest), repacking's state a third: no name ever became a path, except as an entry of the convergence
    // queue, one file directly in converge/, and only for names the backups' check
    // accepts (no '/', '..', control characters).
    let mut files: Vec<String> = std::fs::read_dir(&f.env.paths.run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "converge",
            "hook-counters.json",
            "hook-counters.lock",
            "host-topology.json",
            "ledger.json",
            "ledger.lock",
            // Repacking's state next to the ledger (src/hook/moves.rs): one file.
            "repack.json"
        ]
    );
    for entry in std::fs::read_dir(f.env.paths.run_dir.join("converge")).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file(), "{entry:?}");
        let name = entry.file_name().into_string().unwrap();
        kvmtune_sys::backups::check_guest_name(&name).unwrap();
        assert!(hostile_names().iter().any(|(n, _)| *n == name), "{name:?}");
    }
    let top: Vec<String> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!top.iter().any(|n| n.contains("passwd")), "{top:?}");
    assert!(ledger_of(&f).guests.is_empty());
}

#[test]
fn a_claim_under_a_hostile_name_round_trips_through_the_ledger() {
    let f = fixture(POLICY);
    for (name, name_xml) in hostile_names() {
        let (out, _) = hook(
            &f,
            &name,
            "prepare",
            "begin",
            guest_xml(&name_xml, 1).as_bytes(),
        );
        assert_eq!(out.exit, 0, "{out:?}");
    }
    let l = ledger_of(&f);
    assert_eq!(l.guests.len(), hostile_names().len());
    for (name, _) in hostile_names() {
        assert!(l.guests.contains_key(&name), "{name:?}");
    }
    // The JSON file itself holds the names escaped: one guest per key line.
    let text = std::fs::read_to_string(f.env.paths.run_dir.join("ledger.json")).unwrap();
    assert!(text.contains("new\\nline"));
}

#[test]
fn a_name_with_a_slash_never_reads_a_status_file_outside_libvirts_directory() {
    let f = fixture(POLICY);
    // A valid status file one level up, where `../escape` would find it.
    let outside = f
        .env
        .paths
        .libvirt_run_dir
        .parent()
        .unwrap()
        .join("escape.xml");
    std::fs::write(
        &outside,
        format!(
            "<domstatus state='running' pid='1'><vcpus><vcpu id='0' pid='2'/></vcpus>{}</domstatus>",
            guest_xml("../escape", 1)
        ),
    )
    .unwrap();
    let xml = guest_xml("../escape", 1);
    for op in ["started", "reconnect"] {
        let (out, log) = hook(&f, "../escape", op, "begin", xml.as_bytes());
        assert_eq!(out.exit, 0);
        assert_log_clean(&log);
        let line = &log.lines.last().unwrap().1;
        assert!(
            !line.contains("effective") && !line.contains("re-recorded"),
            "{op} used {}: {line}",
            outside.display()
        );
    }
}

#[test]
fn control_characters_in_errors_never_break_the_refusal_line() {
    let refuse = fixture(&format!("{POLICY}on_error: refuse\n"));
    // A value with a newline inside an error message, and a name libvirt's XML
    // cannot even carry (ESC): both become one escaped line.
    let bad_value = guest_xml("g", 1).replace(
        "<vcpu placement='static'>1</vcpu>",
        "<vcpu placement='static'>1\nkvmtune: forged line</vcpu>",
    );
    let (out, log) = hook(&refuse, "g", "prepare", "begin", bad_value.as_bytes());
    assert_eq!(out.exit, 1, "{out:?}");
    assert_one_line("refusal", &out.stderr);
    assert_log_clean(&log);

    let (out, log) = hook(
        &refuse,
        "\x1b[2J\x1b[31mevil\x07",
        "prepare",
        "begin",
        guest_xml("g", 1).as_bytes(),
    );
    assert_eq!(out.exit, 1, "{out:?}");
    assert_one_line("refusal", &out.stderr);
    assert!(out.stderr.contains("\\u{1b}"), "{}", out.stderr);
    assert_log_clean(&log);
}

#[test]
fn sanitize_bounds_and_escapes() {
    for (name, _) in hostile_names() {
        let s = sanitize(&name);
        assert_one_line("sanitize", &s);
        assert!(s.chars().count() <= 129 + 16, "{s}");
    }
    assert_eq!(sanitize("../x"), "../x");
}

#[test]
fn the_binary_keeps_hostile_names_on_one_stderr_and_syslog_line() {
    let bin = Bin::new(&format!("{POLICY}on_error: refuse\n"));
    // Mismatched name with newlines: an internal error, refused in one line.
    let r = bin.hook(
        "evil\nkvmtune: forged",
        "prepare",
        guest_xml("g", 1).into_bytes(),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
    assert_one_line("stderr", r.stderr.trim_end_matches('\n'));
    assert!(!r.syslog.is_empty());
    for line in &r.syslog {
        assert_one_line("syslog", line);
    }
}

// ---------------------------------------------------------------- encoding

#[test]
fn invalid_utf8_is_refused_with_the_byte_offset_and_allowed_by_the_hook() {
    for input in [
        &b"<domain><name>g\xff</name></domain>"[..],
        b"\xef\xbb\xbf<domain><name>\xc3</name></domain>",
        b"<domain><name>g</name><description>\xed\xa0\x80</description></domain>",
        b"\xfe\xff\x00<\x00d",
    ] {
        let err = Domain::parse_bytes(input).unwrap_err();
        assert!(matches!(err, DomainError::NotUtf8(_)), "{err:?}");
        assert_one_line("utf8", &err.to_string());
    }
    let f = fixture(POLICY);
    let (out, log) = hook(
        &f,
        "g",
        "prepare",
        "begin",
        b"<domain><name>g\xff</name></domain>",
    );
    assert_eq!(out.exit, 0);
    assert!(log.lines.last().unwrap().1.contains("UTF-8"));
}

#[test]
fn a_non_utf8_guest_name_in_argv_neither_panics_nor_fails_the_start() {
    use std::os::unix::ffi::OsStrExt;
    let bin = Bin::new(POLICY);
    // As libvirt runs it: the binary invoked through a `hooks/qemu` symlink.
    let hooks = bin.dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let qemu = hooks.join("qemu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvmtune"), &qemu).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"g\xff\xfe");
    let mut cmd = Command::new(&qemu);
    cmd.env_clear()
        .args([name, "prepare".as_ref(), "begin".as_ref(), "-".as_ref()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in &bin.vars {
        cmd.env(k, v);
    }
    cmd.env("KVMTUNE_ALLOW_INSECURE_POLICY", "1");
    limit_memory(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(guest_xml("g", 1).as_bytes());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

// ---------------------------------------------------------------- the policy file

#[test]
fn a_world_writable_or_foreign_owned_policy_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, POLICY).unwrap();

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let msg = kvmtune_sys::policy_file::load_checked(&path, false)
        .unwrap_err()
        .to_string();
    assert_one_line("policy", &msg);
    assert!(msg.contains("writable by group or others"), "{msg}");
    assert!(msg.contains("chmod go-w"), "{msg}");
    assert!(msg.contains("KVMTUNE_ALLOW_INSECURE_POLICY"), "{msg}");
    // The override (tests only) accepts it.
    let _ = kvmtune_sys::policy_file::load_checked(&path, true).unwrap();

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let we_are_root = nix::unistd::geteuid().is_root();
    if we_are_root {
        assert!(
            kvmtune_sys::policy_file::load_checked(&path, false).is_ok(),
            "root-owned 0644"
        );
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    }
    let msg = kvmtune_sys::policy_file::load_checked(&path, false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("not root") && msg.contains("chown root"),
        "{msg}"
    );
    assert_one_line("policy", &msg);
    let _ = kvmtune_sys::policy_file::load_checked(&path, true).unwrap();
    if we_are_root {
        // A writable directory above it is as bad (a symlink could be swapped in).
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let msg = kvmtune_sys::policy_file::load_checked(&path, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("writable"), "{msg}");
    }
}

#[test]
fn the_hook_ignores_an_insecure_policy_unless_the_override_is_set() {
    let mut bin = Bin::new(POLICY);
    let policy = bin.vars[0].1.clone();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    bin.insecure_ok = false;
    let r = bin.hook("g", "prepare", guest_xml("g", 1).into_bytes());
    assert_eq!(
        r.code,
        Some(0),
        "a bad policy never fails a start (on_error allow)"
    );
    assert!(
        bin.ledger().guests.is_empty(),
        "no claim under a refused policy"
    );
    let line = r
        .syslog
        .iter()
        .find(|l| l.contains("stage=prepare-begin"))
        .unwrap_or_else(|| panic!("{:?}", r.syslog));
    assert!(line.contains("writable by group or others"), "{line}");

    bin.insecure_ok = true;
    let r = bin.hook("g", "prepare", guest_xml("g", 1).into_bytes());
    assert_eq!(r.code, Some(0));
    assert!(bin.ledger().guests.contains_key("g"), "{:?}", r.syslog);
}

// ---------------------------------------------------------------- the ledger

#[test]
fn a_symlinked_ledger_directory_is_refused_and_nothing_is_written_through_it() {
    let mut f = fixture(POLICY);
    let target = f.dir.path().join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    let link = f.dir.path().join("run-link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    f.env.paths.run_dir = link;
    for (op, subop) in [
        ("prepare", "begin"),
        ("started", "begin"),
        ("release", "end"),
    ] {
        let (out, log) = hook(&f, "g", op, subop, guest_xml("g", 1).as_bytes());
        assert_eq!(out.exit, 0);
        let line = &log.lines.last().unwrap().1;
        assert!(line.contains("symlink"), "{op}: {line}");
        assert_log_clean(&log);
    }
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

    // A symlinked ledger file or lock file is refused too (O_NOFOLLOW).
    let mut f = fixture(POLICY);
    std::fs::create_dir_all(&f.env.paths.run_dir).unwrap();
    let victim = f.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, f.env.paths.run_dir.join("ledger.lock")).unwrap();
    let (out, _) = hook(&f, "g", "prepare", "begin", guest_xml("g", 1).as_bytes());
    assert_eq!(out.exit, 0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(f.env.paths.run_dir.join("ledger.lock")).unwrap();
    std::os::unix::fs::symlink(&victim, f.env.paths.run_dir.join("ledger.json")).unwrap();
    let (out, _) = hook(&f, "g", "prepare", "begin", guest_xml("g", 1).as_bytes());
    assert_eq!(out.exit, 0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    f.env.paths.run_dir = PathBuf::new();
}

#[test]
fn a_ledger_truncated_mid_write_is_set_aside_and_rebuilt() {
    let f = fixture(POLICY);
    for i in 0..3 {
        let name = format!("g{i}");
        let (out, _) = hook(
            &f,
            &name,
            "prepare",
            "begin",
            guest_xml(&name, 2).as_bytes(),
        );
        assert_eq!(out.exit, 0);
    }
    let path = f.env.paths.run_dir.join("ledger.json");
    let full = std::fs::read(&path).unwrap();
    // Every possible truncation point of a real ledger (a sample of them).
    for cut in (0..full.len()).step_by(full.len() / 25 + 1) {
        std::fs::write(&path, &full[..cut]).unwrap();
        let (out, log) = hook(
            &f,
            "new",
            "prepare",
            "begin",
            guest_xml("new", 1).as_bytes(),
        );
        assert_eq!(out.exit, 0, "cut at {cut}");
        assert_log_clean(&log);
        let line = &log.lines.last().unwrap().1;
        assert!(line.contains("claimed"), "cut at {cut}: {line}");
        if cut > 0 {
            assert!(line.contains("ledger recovered"), "cut at {cut}: {line}");
            assert!(f.env.paths.run_dir.join("ledger.json.corrupt").exists());
        }
        let l = ledger_of(&f);
        assert!(l.guests.contains_key("new"), "cut at {cut}");
    }
    // Garbage, NULs and a huge file are handled the same way.
    for junk in [
        vec![0u8; 4096],
        b"\xff\xfe garbage".to_vec(),
        b"[1,2,3]".to_vec(),
    ] {
        std::fs::write(&path, junk).unwrap();
        let (out, _) = hook(
            &f,
            "new",
            "prepare",
            "begin",
            guest_xml("new", 1).as_bytes(),
        );
        assert_eq!(out.exit, 0);
        assert!(ledger_of(&f).guests.contains_key("new"));
    }
}

// ---------------------------------------------------------------- libvirt's status files

#[test]
fn garbage_huge_or_special_status_files_do_not_break_other_guests_starts() {
    let f = fixture(POLICY);
    let dir = &f.env.paths.libvirt_run_dir;
    std::fs::write(dir.join("garbage.xml"), b"\x00\xff\xfe not xml at all <<<").unwrap();
    std::fs::write(dir.join("empty.xml"), b"").unwrap();
    std::fs::write(dir.join("dtd.xml"), BILLION_LAUGHS).unwrap();
    std::fs::write(
        dir.join("wrongroot.xml"),
        "<domain><name>wrongroot</name></domain>",
    )
    .unwrap();
    std::fs::write(
        dir.join("deep.xml"),
        format!("<domstatus pid='1'>{}</domstatus>", nested(10_000, "deep")),
    )
    .unwrap();
    // Huge (sparse: costs no disk), a FIFO nobody writes (opening it for reading
    // would block forever), a symlink to an endless device, a directory.
    let huge = std::fs::File::create(dir.join("huge.xml")).unwrap();
    huge.set_len(1024 * 1024 * 1024).unwrap();
    drop(huge);
    nix::unistd::mkfifo(
        &dir.join("fifo.xml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.xml")).unwrap();
    std::fs::create_dir(dir.join("adir.xml")).unwrap();

    let started = Instant::now();
    for i in 0..3 {
        let name = format!("ok{i}");
        let (out, log) = hook(
            &f,
            &name,
            "prepare",
            "begin",
            guest_xml(&name, 2).as_bytes(),
        );
        assert_eq!(out.exit, 0, "{out:?}");
        assert_log_clean(&log);
        assert!(
            log.lines.last().unwrap().1.contains("claimed"),
            "{:?}",
            log.lines
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "three prepares took {:?}",
        started.elapsed()
    );
    let l = ledger_of(&f);
    // The three guests claim; the one hostile file that still holds a parsable
    // domain ("deep") is a running guest nobody pinned: recorded once, floating,
    // holding no claim.
    let claims: Vec<&String> = l
        .guests
        .iter()
        .filter(|(_, e)| !e.floating)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(claims, ["ok0", "ok1", "ok2"]);
    assert!(l.guests["deep"].floating);
    // Their claims do not overlap.
    let mut seen = kvmtune_core::CpuSet::new();
    for e in l.guests.values().filter(|e| !e.floating) {
        assert!(!e.cpus.intersects(&seen));
        seen = seen.union(&e.cpus);
    }
    // `started` of a guest whose own status file is hostile: an error, allowed.
    for bad in ["garbage", "huge", "fifo", "zero", "adir"] {
        let t = Instant::now();
        let (out, log) = hook(&f, bad, "started", "begin", guest_xml(bad, 1).as_bytes());
        assert_eq!(out.exit, 0, "{bad}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{bad}: {:?}",
            t.elapsed()
        );
        assert_log_clean(&log);
    }
}

#[test]
fn the_real_binary_survives_a_hostile_libvirt_run_directory() {
    let bin = Bin::new(POLICY);
    let dir = bin.dir.path().join("libvirt");
    nix::unistd::mkfifo(
        &dir.join("fifo.xml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.xml")).unwrap();
    let r = bin.hook("g", "prepare", guest_xml("g", 1).into_bytes());
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Under the 48 MiB heap limit: /dev/zero was not read.
    assert!(bin.ledger().guests.contains_key("g"), "{:?}", r.syslog);
    let _ = Path::new("");
}

#[test]
fn a_running_guest_whose_status_file_turns_unreadable_keeps_its_claim() {
    let f = fixture(POLICY);
    let xml = guest_xml("a", 4);
    assert_eq!(hook(&f, "a", "prepare", "begin", xml.as_bytes()).0.exit, 0);
    let status = f.env.paths.libvirt_run_dir.join("a.xml");
    std::fs::write(
        &status,
        format!("<domstatus state='running' pid='1'>{xml}</domstatus>"),
    )
    .unwrap();
    assert_eq!(
        hook(&f, "b", "prepare", "begin", guest_xml("b", 1).as_bytes())
            .0
            .exit,
        0
    );
    assert_eq!(
        ledger_of(&f).guests["a"].state,
        ledger_data::EntryState::Running
    );
    // The file exists but no longer parses (garbage, or grown past the bound): the
    // guest still runs, so its CPUs must not be handed out again.
    std::fs::write(&status, b"\xff garbage").unwrap();
    for i in 0..4 {
        let name = format!("c{i}");
        let (out, _) = hook(
            &f,
            &name,
            "prepare",
            "begin",
            guest_xml(&name, 2).as_bytes(),
        );
        assert_eq!(out.exit, 0);
    }
    let l = ledger_of(&f);
    let a = &l.guests["a"];
    for (name, e) in &l.guests {
        if name != "a" {
            assert!(
                !e.cpus.intersects(&a.cpus),
                "{name} got a's CPUs {}",
                a.cpus
            );
        }
    }
}

/// A comment inside a value splits its text into two nodes; the value is read as
/// libvirt reads it: `<vcpu><!-- c -->4</vcpu>` is 4 vCPUs.
#[test]
fn a_comment_inside_a_value_does_not_change_it() {
    let xml = "<domain type='kvm'><name>c</name><memory unit='MiB'>256</memory><vcpu placement='static'><!-- four -->4</vcpu></domain>";
    assert_eq!(Domain::parse(xml).unwrap().vcpus_max, 4);
    let xml = "<domain type='kvm'><name><!-- n -->c</name><memory unit='MiB'><!-- m -->256</memory><vcpu>4</vcpu></domain>";
    let d = Domain::parse(xml).unwrap();
    assert_eq!((d.name.as_str(), d.memory_kib), ("c", 256 * 1024));
}
