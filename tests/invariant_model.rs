//! Issue 11: a model-based concurrency test of kvmtune's promise, driven from outside.
//!
//! A seeded random driver plays libvirt against the BUILT binary (invoked as
//! `.../hooks/qemu GUEST OP SUBOP -`, as libvirtd does) on fixture host trees, and
//! keeps a fake world: libvirt's run directory (`NAME.xml` `<domstatus>` and
//! `NAME.pid`), a fake `/proc` (`PID/task/TID/{status,comm,schedstat}`; vCPU threads
//! have run ~0.25 ms until `started` succeeds, as under QEMU's `-S`) for every "running"
//! QEMU, the ledger directory and a wall-clock offset. Steps: guest starts as libvirt
//! performs them (prepare begin → QEMU created with the XML's own pins applied, status
//! file written → started begin; stop = QEMU gone, then release end), restore begin
//! and migrate begin (their stdout XML is the XML then prepared and started),
//! reconnect begin (a libvirtd restart reconnects every running guest), ledger
//! deletion and corruption, a wall-clock step, hook processes killed with SIGKILL,
//! and bursts of up to 200 concurrent hook processes.
//!
//! After every step a checker that reads ONLY outside state — the ledger file, the
//! fake status files and each thread's `Cpus_allowed_list` in the fake /proc —
//! asserts (see `check`):
//!   I1 no vCPU, emulator or iothread of a running guest on CPU0, a reserved or an
//!      IRQ CPU;
//!   I2 a CPU a dedicated running guest's vCPU threads may run on is used by no
//!      other running guest (any thread), and no other ledger claim (vCPU or
//!      emulator set) includes a dedicated guest's vCPU CPUs (the dedicated guest's
//!      own emulator threads may share CPUs with shared guests: an <emulatorpin>
//!      kept from its XML, Nova's emulator "share" policy);
//!   I3 every running guest is in the ledger with the policy's rule, a shared guest
//!      as shared, a guest once recorded dedicated still dedicated (checked once a
//!      hook has run since the ledger was deleted or corrupted);
//!   I4 an admitted guest (prepare exit 0, started exit 0) is never left unpinned
//!      (a thread allowed on every host CPU);
//!   I5 libvirt's own `<iothreadpin>` of a guest is not overwritten at `started`.
//! A guest refused at prepare or started is not running and needs no claim; stale
//! claims of guests that are not running are allowed (they only err on the safe
//! side), so a correct kvmtune can pass every step.
//!
//! Seams (nothing in src/ is test-only): the hook sets thread affinity with a real
//! sched_setaffinity(2) and reads the wall clock with clock_gettime(2). A small
//! LD_PRELOAD library (`tests/invariant_model/shim.c`, built here with `cc`) is the
//! fake kernel: sched_setaffinity on a TID rewrites that thread's
//! `Cpus_allowed_list` in the fake /proc (ESRCH when the TID is not there), so the
//! fixture hosts' CPU numbers (0-31) need not exist on this 2-CPU machine, and
//! CLOCK_REALTIME is shifted by the seconds in a file (the clock step). Fake TIDs
//! start at 5,000,000, above Linux's PID_MAX_LIMIT (4,194,304): even without the
//! shim no real thread could be touched. CLOCK_MONOTONIC/BOOTTIME are not shifted.
//!
//! Replay: `KVMTUNE_MODEL_SEED=N cargo test --test invariant_model`; on failure the
//! seed, the step and the whole step sequence are printed. The schedule of steps is
//! a function of the seed and of the hooks' exit codes; the interleaving of the
//! processes inside one burst and the moment a SIGKILL lands are the OS's.
//! `KVMTUNE_MODEL_KEEP_GOING=1` runs all steps and lists every violation kind.
//! Std only (no crate of this package is linked), so the file survives moving the
//! sources into a workspace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::collapsible_if)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- small tools

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

type Cpus = BTreeSet<u32>;

fn parse_list(s: &str) -> Option<Cpus> {
    let s = s.trim();
    let mut out = Cpus::new();
    if s.is_empty() {
        return Some(out);
    }
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out)
}

fn fmt_list(c: &Cpus) -> String {
    let v: Vec<u32> = c.iter().copied().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// A minimal JSON reader for the ledger file.
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn cpus(&self) -> Option<Cpus> {
        match self {
            Json::Str(s) => parse_list(s),
            Json::Num(n) => Some(Cpus::from([*n as u32])),
            Json::Null => Some(Cpus::new()),
            _ => None,
        }
    }
}

fn parse_json(text: &str) -> Option<Json> {
    let b = text.as_bytes();
    let mut i = 0;
    let v = json_value(b, &mut i)?;
    json_ws(b, &mut i);
    (i == b.len()).then_some(v)
}

fn json_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn json_value(b: &[u8], i: &mut usize) -> Option<Json> {
    json_ws(b, i);
    match *b.get(*i)? {
        b'{' => {
            *i += 1;
            let mut m = Vec::new();
            json_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Some(Json::Obj(m));
            }
            loop {
                json_ws(b, i);
                let Json::Str(k) = json_value(b, i)? else {
                    return None;
                };
                json_ws(b, i);
                if b.get(*i) != Some(&b':') {
                    return None;
                }
                *i += 1;
                m.push((k, json_value(b, i)?));
                json_ws(b, i);
                match b.get(*i)? {
                    b',' => *i += 1,
                    b'}' => {
                        *i += 1;
                        return Some(Json::Obj(m));
                    }
                    _ => return None,
                }
            }
        }
        b'[' => {
            *i += 1;
            let mut a = Vec::new();
            json_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Some(Json::Arr(a));
            }
            loop {
                a.push(json_value(b, i)?);
                json_ws(b, i);
                match b.get(*i)? {
                    b',' => *i += 1,
                    b']' => {
                        *i += 1;
                        return Some(Json::Arr(a));
                    }
                    _ => return None,
                }
            }
        }
        b'"' => {
            *i += 1;
            let mut s = Vec::new();
            loop {
                let c = *b.get(*i)?;
                *i += 1;
                match c {
                    b'"' => return String::from_utf8(s).ok().map(Json::Str),
                    b'\\' => {
                        let e = *b.get(*i)?;
                        *i += 1;
                        match e {
                            b'n' => s.push(b'\n'),
                            b't' => s.push(b'\t'),
                            b'u' => {
                                let hex = std::str::from_utf8(b.get(*i..*i + 4)?).ok()?;
                                *i += 4;
                                let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)
                                    .unwrap_or('?');
                                let mut buf = [0u8; 4];
                                s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            other => s.push(other),
                        }
                    }
                    c => s.push(c),
                }
            }
        }
        b't' if b[*i..].starts_with(b"true") => {
            *i += 4;
            Some(Json::Bool(true))
        }
        b'f' if b[*i..].starts_with(b"false") => {
            *i += 5;
            Some(Json::Bool(false))
        }
        b'n' if b[*i..].starts_with(b"null") => {
            *i += 4;
            Some(Json::Null)
        }
        _ => {
            let start = *i;
            while *i < b.len() && (b[*i].is_ascii_digit() || b"+-.eE".contains(&b[*i])) {
                *i += 1;
            }
            std::str::from_utf8(&b[start..*i])
                .ok()?
                .parse()
                .ok()
                .map(Json::Num)
        }
    }
}

/// Values of `attr` on every `<tag .../>` element of `xml` (single or double quotes).
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(p) = rest.find(&open) {
        let after = &rest[p + open.len()..];
        let end = after.find('>').unwrap_or(after.len());
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

fn attr(element: &str, name: &str) -> Option<String> {
    for q in ['\'', '"'] {
        let key = format!("{name}={q}");
        if let Some(p) = element.find(&key) {
            let v = &element[p + key.len()..];
            return v.find(q).map(|e| v[..e].to_string());
        }
    }
    None
}

/// The pins libvirt itself applies when it starts QEMU from `xml`.
#[derive(Debug, Clone, Default)]
struct XmlPins {
    vcpu: BTreeMap<u32, Cpus>,
    vcpu_cpuset: Option<Cpus>,
    emulator: Option<Cpus>,
    iothread: BTreeMap<u32, Cpus>,
    /// Iothreads whose `<iothreadpin>` kvmtune wrote itself (its pins mark in
    /// `<metadata>` says so): kvmtune's placement, which it may change.
    kvmtune_iothreads: Vec<u32>,
}

fn xml_pins(xml: &str) -> XmlPins {
    let mut p = XmlPins::default();
    for e in elements(xml, "vcpupin") {
        if let (Some(v), Some(c)) = (attr(e, "vcpu"), attr(e, "cpuset")) {
            if let (Ok(v), Some(c)) = (v.parse(), parse_list(&c)) {
                p.vcpu.insert(v, c);
            }
        }
    }
    for e in elements(xml, "iothreadpin") {
        if let (Some(v), Some(c)) = (attr(e, "iothread"), attr(e, "cpuset")) {
            if let (Ok(v), Some(c)) = (v.parse(), parse_list(&c)) {
                p.iothread.insert(v, c);
            }
        }
    }
    // kvmtune's pins mark: `<…:pins xmlns:…="http://kvmtune.org/xmlns/pins/1.0">0:2 iothread1:2-3</…>`.
    if let Some(at) = xml.find("http://kvmtune.org/xmlns/pins/1.0") {
        let rest = &xml[at..];
        let text = rest
            .find('>')
            .map(|s| &rest[s + 1..])
            .and_then(|r| r.find('<').map(|e| &r[..e]))
            .unwrap_or("");
        for item in text.split_whitespace() {
            if let Some((id, cpus)) = item
                .strip_prefix("iothread")
                .and_then(|r| r.split_once(':'))
                && let (Ok(id), Some(cpus)) = (id.parse::<u32>(), parse_list(cpus))
                && p.iothread.get(&id) == Some(&cpus)
            {
                p.kvmtune_iothreads.push(id);
            }
        }
    }
    p.emulator = elements(xml, "emulatorpin")
        .first()
        .and_then(|e| attr(e, "cpuset"))
        .and_then(|c| parse_list(&c));
    p.vcpu_cpuset = elements(xml, "vcpu")
        .first()
        .and_then(|e| attr(e, "cpuset"))
        .and_then(|c| parse_list(&c));
    p
}

// ---------------------------------------------------------------- the scenario

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Shared,
    Dedicated,
}

#[derive(Debug, Clone)]
struct GuestSpec {
    name: String,
    vcpus: u32,
    /// CPU each vCPU pins itself to in its XML (`existing_pins: keep` guests).
    pins: Option<Vec<u32>>,
    /// `<iothreads>1</iothreads>` with this `<iothreadpin>`.
    iothread_pin: Option<String>,
}

struct Scenario {
    name: &'static str,
    host_root: PathBuf,
    online: Cpus,
    /// CPU0 (allow_cpu0 false), reserved and IRQ CPUs.
    forbidden: Cpus,
    /// Where `emulator: housekeeping` puts emulator threads and iothreads (they may
    /// be on those forbidden CPUs; vCPUs never).
    housekeeping: Cpus,
    policy: String,
    /// Pool and rule name the policy gives a guest, by name.
    policy_of: fn(&str) -> (Pool, &'static str),
    guests: Vec<GuestSpec>,
    steps: usize,
    /// Steps at which every guest takes its next lifecycle step at once.
    big_bursts: Vec<usize>,
    max_small_burst: u64,
}

fn fixture(host: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts")
        .join(host)
}

fn silver() -> Scenario {
    // 2 sockets × 8 cores × 2 threads, node 0 = 0-7,16-23, node 1 = 8-15,24-31.
    let mut guests = Vec::new();
    for i in 0..40 {
        guests.push(GuestSpec {
            name: format!("ded-{i}"),
            vcpus: 1 + i % 2,
            pins: None,
            iothread_pin: None,
        });
    }
    let ded_cpus: Vec<u32> = (1..=7).chain(17..=23).collect();
    for i in 0..10 {
        // Nova-style guests pinning 1:1 onto CPUs of the dedicated set.
        let cpu = ded_cpus[(i * 5) % ded_cpus.len()];
        guests.push(GuestSpec {
            name: format!("pin-{i}"),
            vcpus: 1,
            pins: Some(vec![cpu]),
            iothread_pin: None,
        });
    }
    for i in 0..20 {
        guests.push(GuestSpec {
            name: format!("io-{i}"),
            vcpus: 2,
            pins: None,
            iothread_pin: Some("9-10".into()),
        });
    }
    for i in 0..130 {
        guests.push(GuestSpec {
            name: format!("sh-{i}"),
            vcpus: 1 + (i % 4) as u32,
            pins: None,
            iothread_pin: None,
        });
    }
    Scenario {
        name: "silver4108-2node",
        host_root: fixture("intel-xeon-silver4108-2s8c2t-2node"),
        online: parse_list("0-31").unwrap(),
        forbidden: parse_list("0,8,16,24").unwrap(),
        housekeeping: Cpus::new(),
        policy: "version: 1
on_violation: refuse
host:
  reserved_cpus: '16'
  irq_cpus: '8,24'
  shared_cpus: '9-15,25-31'
  dedicated_cpus: '1-7,17-23'
defaults:
  hugepages: off
rules:
  - name: nfv
    match: {name: 'ded-*'}
    set: {pool: dedicated}
  - name: pinned
    match: {name: 'pin-*'}
    set: {pool: dedicated, existing_pins: keep}
"
        .into(),
        policy_of: |name| {
            if name.starts_with("ded-") {
                (Pool::Dedicated, "nfv")
            } else if name.starts_with("pin-") {
                (Pool::Dedicated, "pinned")
            } else {
                (Pool::Shared, "defaults")
            }
        },
        guests,
        steps: 50,
        big_bursts: vec![3, 22, 44],
        max_small_burst: 12,
    }
}

fn laptop() -> Scenario {
    // 1 socket × 2 cores × 2 threads: CPUs 0-3, CPU0 forbidden, 1-3 for guests.
    let mut guests = Vec::new();
    for i in 0..6 {
        guests.push(GuestSpec {
            name: format!("ded-{i}"),
            vcpus: 1,
            pins: None,
            iothread_pin: None,
        });
    }
    for i in 0..3 {
        guests.push(GuestSpec {
            name: format!("pin-{i}"),
            vcpus: 1,
            pins: Some(vec![1 + i % 3]),
            iothread_pin: None,
        });
    }
    for i in 0..6 {
        guests.push(GuestSpec {
            name: format!("sh-{i}"),
            vcpus: 1 + (i % 2) as u32,
            pins: None,
            iothread_pin: None,
        });
    }
    Scenario {
        name: "laptop-1s2c2t",
        host_root: fixture("intel-core-i5-m560-laptop-1s2c2t"),
        online: parse_list("0-3").unwrap(),
        forbidden: parse_list("0").unwrap(),
        housekeeping: Cpus::new(),
        policy: "version: 1
on_violation: warn
host:
  reserved_cpus: none
  irq_cpus: none
defaults:
  hugepages: off
rules:
  - name: nfv
    match: {name: 'ded-*'}
    set: {pool: dedicated}
  - name: pinned
    match: {name: 'pin-*'}
    set: {pool: dedicated, existing_pins: keep}
"
        .into(),
        policy_of: |name| {
            if name.starts_with("ded-") {
                (Pool::Dedicated, "nfv")
            } else if name.starts_with("pin-") {
                (Pool::Dedicated, "pinned")
            } else {
                (Pool::Shared, "defaults")
            }
        },
        guests,
        steps: 150,
        big_bursts: vec![40, 100],
        max_small_burst: 5,
    }
}

fn guest_xml(g: &GuestSpec) -> String {
    let mut cputune = String::new();
    if let Some(pins) = &g.pins {
        for (v, c) in pins.iter().enumerate() {
            cputune.push_str(&format!("    <vcpupin vcpu='{v}' cpuset='{c}'/>\n"));
        }
    }
    let mut iothreads = String::new();
    if let Some(p) = &g.iothread_pin {
        iothreads = "  <iothreads>1</iothreads>\n".into();
        cputune.push_str(&format!("    <iothreadpin iothread='1' cpuset='{p}'/>\n"));
    }
    let cputune = if cputune.is_empty() {
        String::new()
    } else {
        format!("  <cputune>\n{cputune}  </cputune>\n")
    };
    let h = g
        .name
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    format!(
        "<domain type='kvm'>\n  <name>{}</name>\n  <uuid>{:08x}-0000-4000-8000-{:012x}</uuid>\n  <memory unit='MiB'>64</memory>\n  <vcpu placement='static'>{}</vcpu>\n{iothreads}{cputune}  <os><type arch='x86_64'>hvm</type></os>\n  <memoryBacking>\n    <nosharepages/>\n  </memoryBacking>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none' io='native'/>\n      <source file='/x.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
        g.name,
        h as u32,
        h & 0xffff_ffff_ffff,
        g.vcpus
    )
}

// ---------------------------------------------------------------- the fake world

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Vcpu(u32),
    Emulator,
    Iothread(u32),
}

#[derive(Debug, Clone)]
struct Qemu {
    pid: u32,
    threads: Vec<(u32, Role)>,
    pins: XmlPins,
}

#[derive(Debug, Clone)]
enum St {
    Stopped,
    /// restore/migrate begin printed this XML: libvirt prepares and starts it next.
    Restoring(String),
    /// prepare begin exited 0 for this XML; QEMU not created yet.
    Prepared(String),
    Running(Qemu),
}

struct Call {
    guest: String,
    op: &'static str,
    subop: &'static str,
    xml: String,
    kill_after: Option<Duration>,
}

#[derive(Debug)]
struct Res {
    code: Option<i32>,
    killed: bool,
    stdout: String,
    stderr: String,
}

static WORLDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct World {
    sc: Scenario,
    dir: PathBuf,
    hook: PathBuf,
    shim: PathBuf,
    next_pid: u32,
    clock_offset: i64,
    state: BTreeMap<String, St>,
    /// Set by ledger deletion/corruption until a hook call has rebuilt the ledger.
    ledger_stale: bool,
    /// Running guests seen recorded as dedicated (cleared when the guest stops).
    dedicated: BTreeSet<String>,
    log: Vec<String>,
    /// Write status files without `<vcpus>` (libvirt before QEMU reported them).
    omit_vcpu_tids: bool,
}

impl World {
    fn new(sc: Scenario, seed: u64) -> World {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "invariant-model-{}-{}-{seed}-{}",
            sc.name,
            std::process::id(),
            WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["libvirt", "proc", "hooks"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("policy.yaml"), &sc.policy).unwrap();
        std::fs::write(dir.join("clock"), "0\n").unwrap();
        // libvirt runs /etc/libvirt/hooks/qemu -> /usr/bin/kvmtune: the binary knows
        // it is the hook by that name.
        let hook = dir.join("hooks/qemu");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvmtune"), &hook).unwrap();
        let shim = dir.join("shim.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invariant_model/shim.c");
        let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("a C compiler (cc) builds the fake-kernel shim");
        assert!(
            cc.status.success(),
            "building {}: {}",
            src.display(),
            String::from_utf8_lossy(&cc.stderr)
        );
        let state = sc
            .guests
            .iter()
            .map(|g| (g.name.clone(), St::Stopped))
            .collect();
        let w = World {
            sc,
            dir,
            hook,
            shim,
            next_pid: 5_000_000,
            clock_offset: 0,
            state,
            ledger_stale: false,
            dedicated: BTreeSet::new(),
            log: Vec::new(),
            omit_vcpu_tids: false,
        };
        // The shim must be in effect, or affinity would not be observed.
        let probe = w.dir.join("shim-probe");
        let out = Command::new(env!("CARGO_BIN_EXE_kvmtune"))
            .arg("--version")
            .env("LD_PRELOAD", &w.shim)
            .env("KVMTUNE_MODEL_SHIM_PROBE", &probe)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            probe.exists(),
            "LD_PRELOAD shim not loaded into {} (static binary?)",
            env!("CARGO_BIN_EXE_kvmtune")
        );
        w
    }

    fn spec(&self, name: &str) -> &GuestSpec {
        self.sc.guests.iter().find(|g| g.name == name).unwrap()
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn libvirt(&self) -> PathBuf {
        self.dir.join("libvirt")
    }
    fn proc_root(&self) -> PathBuf {
        self.dir.join("proc")
    }

    fn spawn(&self, c: &Call) -> Child {
        let mut child = Command::new(&self.hook)
            .args([&c.guest, c.op, c.subop, "-"])
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/bin:/bin")
            .env("KVMTUNE_POLICY", self.dir.join("policy.yaml"))
            .env("KVMTUNE_ALLOW_INSECURE_POLICY", "1")
            .env("KVMTUNE_HOST_ROOT", &self.sc.host_root)
            .env("KVMTUNE_RUN_DIR", self.run_dir())
            .env("KVMTUNE_LIBVIRT_RUN_DIR", self.libvirt())
            .env("KVMTUNE_PROC_ROOT", self.proc_root())
            .env("KVMTUNE_SYSLOG_SOCKET", self.dir.join("no-syslog"))
            .env("LD_PRELOAD", &self.shim)
            .env("KVMTUNE_MODEL_FAKE_PROC", self.proc_root())
            .env("KVMTUNE_MODEL_CLOCK_FILE", self.dir.join("clock"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A few KB: fits the pipe buffer, never blocks.
        let _ = stdin.write_all(c.xml.as_bytes());
        child
    }

    /// Runs every call at once; kills those with `kill_after` when it is due.
    fn burst(&self, calls: &[Call]) -> Vec<Res> {
        // One burst at a time across this binary's worlds: each world is one
        // host, and two hosts' bursts of 200 hooks sharing the test machine's
        // CPUs would only measure how far the lock waits stretch (past 10 s,
        // on_error: allow starts guests unpinned by design).
        static ONE_BURST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_BURST_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = Instant::now();
        let mut children: Vec<Option<Child>> = calls.iter().map(|c| Some(self.spawn(c))).collect();
        let mut results: Vec<Option<Res>> = calls.iter().map(|_| None).collect();
        let mut killed = vec![false; calls.len()];
        loop {
            let mut pending = 0;
            for (i, slot) in children.iter_mut().enumerate() {
                let Some(child) = slot else { continue };
                if let Some(status) = child.try_wait().unwrap() {
                    let out = slot.take().unwrap().wait_with_output().unwrap();
                    results[i] = Some(Res {
                        code: status.code(),
                        killed: killed[i],
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                    continue;
                }
                pending += 1;
                if !killed[i] && calls[i].kill_after.is_some_and(|d| start.elapsed() >= d) {
                    let _ = child.kill(); // SIGKILL
                    killed[i] = true;
                }
            }
            if pending == 0 {
                break;
            }
            if start.elapsed() > Duration::from_secs(40) {
                for c in children.iter_mut().flatten() {
                    let _ = c.kill();
                }
                panic!("hook processes still running after 40 s: hung");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        results.into_iter().map(Option::unwrap).collect()
    }

    /// libvirt starts QEMU for `xml`: threads created with the XML's own pins applied
    /// (vcpupin, else `<vcpu cpuset>`, else every CPU; emulatorpin likewise;
    /// iothreadpin, else the emulator's), then the status and pid files.
    fn create_qemu(&mut self, name: &str, xml: &str) -> Qemu {
        let spec = self.spec(name).clone();
        let pid = self.next_pid;
        self.next_pid += 100;
        let pins = xml_pins(xml);
        let all = self.sc.online.clone();
        let default = pins.vcpu_cpuset.clone().unwrap_or(all);
        let emulator = pins.emulator.clone().unwrap_or_else(|| default.clone());
        let mut threads = vec![(pid, Role::Emulator), (pid + 1, Role::Emulator)];
        let mut t = pid + 2;
        for v in 0..spec.vcpus {
            threads.push((t, Role::Vcpu(v)));
            t += 1;
        }
        if spec.iothread_pin.is_some() {
            threads.push((t, Role::Iothread(1)));
        }
        for (tid, role) in &threads {
            let (comm, cpus) = match role {
                Role::Emulator if *tid == pid => ("qemu-system-x86".to_string(), emulator.clone()),
                Role::Emulator => ("call_rcu".to_string(), emulator.clone()),
                Role::Vcpu(v) => (
                    format!("CPU {v}/KVM"),
                    pins.vcpu.get(v).cloned().unwrap_or_else(|| default.clone()),
                ),
                Role::Iothread(n) => (
                    format!("IO iothread{n}"),
                    pins.iothread
                        .get(n)
                        .cloned()
                        .unwrap_or_else(|| emulator.clone()),
                ),
            };
            let d = self
                .proc_root()
                .join(pid.to_string())
                .join("task")
                .join(tid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            // QEMU runs with -S until libvirt resumes it after `started`: its vCPU
            // threads have run a fraction of a millisecond (see `ran`).
            let run_ns = if matches!(role, Role::Vcpu(_)) {
                250_000
            } else {
                20_000_000
            };
            std::fs::write(d.join("schedstat"), format!("{run_ns} 4000 5\n")).unwrap();
            std::fs::write(
                d.join("status"),
                format!(
                    "Name:\t{comm}\nTgid:\t{pid}\nPid:\t{tid}\nCpus_allowed_list:\t{}\n",
                    fmt_list(&cpus)
                ),
            )
            .unwrap();
        }
        let vcpus: String = threads
            .iter()
            .filter(|_| !self.omit_vcpu_tids)
            .filter_map(|(tid, r)| match r {
                Role::Vcpu(v) => Some(format!("    <vcpu id='{v}' pid='{tid}'/>\n")),
                _ => None,
            })
            .collect();
        let domain = xml
            .trim_start()
            .strip_prefix("<?xml")
            .map_or(xml, |r| &r[r.find("?>").map_or(0, |p| p + 2)..]);
        let status = format!(
            "<domstatus state='paused' reason='starting up' pid='{pid}'>\n  <monitor path='/var/lib/libvirt/qemu/domain-{name}/monitor.sock' type='unix'/>\n  <vcpus>\n{vcpus}  </vcpus>\n{}</domstatus>\n",
            domain.replacen(
                "<domain type='kvm'>",
                &format!("<domain type='kvm' id='{}'>", pid - 4_999_999),
                1
            )
        );
        let tmp = self.libvirt().join(format!(".{name}.xml.new"));
        std::fs::write(&tmp, status).unwrap();
        std::fs::rename(&tmp, self.libvirt().join(format!("{name}.xml"))).unwrap();
        std::fs::write(self.libvirt().join(format!("{name}.pid")), format!("{pid}")).unwrap();
        Qemu { pid, threads, pins }
    }

    /// libvirt resumed the guest after a successful `started`: its vCPUs run.
    fn ran(&self, q: &Qemu) {
        for (tid, role) in &q.threads {
            if matches!(role, Role::Vcpu(_)) {
                let d = self
                    .proc_root()
                    .join(q.pid.to_string())
                    .join("task")
                    .join(tid.to_string());
                let _ = std::fs::write(d.join("schedstat"), "40000000 90000 80\n");
            }
        }
    }

    fn destroy_qemu(&mut self, name: &str, q: &Qemu) {
        let _ = std::fs::remove_file(self.libvirt().join(format!("{name}.xml")));
        let _ = std::fs::remove_file(self.libvirt().join(format!("{name}.pid")));
        let _ = std::fs::remove_dir_all(self.proc_root().join(q.pid.to_string()));
        self.dedicated.remove(name);
    }

    fn running(&self) -> Vec<(String, Qemu)> {
        self.state
            .iter()
            .filter_map(|(n, s)| match s {
                St::Running(q) => Some((n.clone(), q.clone())),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------- the checker

struct LedgerEntry {
    pool: String,
    rule: String,
    /// The CPUs its vCPUs are claimed on (for a dedicated guest: its dedicated CPUs).
    vcpu_cpus: Cpus,
    /// Those and its emulator threads' CPUs.
    cpus: Cpus,
}

fn read_ledger(run: &Path) -> Result<Option<BTreeMap<String, LedgerEntry>>, String> {
    let text = match std::fs::read_to_string(run.join("ledger.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("ledger unreadable: {e}")),
    };
    let json = parse_json(&text).ok_or_else(|| format!("ledger does not parse: {text:.200}"))?;
    let mut out = BTreeMap::new();
    let Some(Json::Obj(guests)) = json.get("guests") else {
        return Err("ledger has no guests object".into());
    };
    for (name, e) in guests {
        // A floating entry records a running guest nobody pinned (or one whose
        // `started` has not run yet): it holds no claim, by design. What its
        // threads really run on is checked from the fake /proc above.
        if matches!(e.get("floating"), Some(Json::Bool(true))) {
            continue;
        }
        let mut cpus = e.get("cpus").and_then(Json::cpus).unwrap_or_default();
        if let Some(Json::Arr(vs)) = e.get("vcpus") {
            for v in vs {
                cpus.extend(v.cpus().unwrap_or_default());
            }
        }
        let vcpu_cpus = cpus.clone();
        if let Some(em) = e.get("emulator").and_then(Json::cpus) {
            cpus.extend(em);
        }
        out.insert(
            name.clone(),
            LedgerEntry {
                pool: e.get("pool").and_then(Json::str).unwrap_or("?").to_string(),
                rule: e.get("rule").and_then(Json::str).unwrap_or("?").to_string(),
                vcpu_cpus,
                cpus,
            },
        );
    }
    Ok(Some(out))
}

fn read_affinity(proc_root: &Path, pid: u32, tid: u32) -> Option<Cpus> {
    let text = std::fs::read_to_string(proc_root.join(format!("{pid}/task/{tid}/status"))).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_list)
}

/// Every violated invariant, one line each: (kind, text).
fn check(w: &mut World) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = Vec::new();
    let running = w.running();
    // Thread affinity as the (fake) kernel reports it.
    let mut used: BTreeMap<String, Cpus> = BTreeMap::new();
    // The CPUs each guest's vCPU threads may run on.
    let mut vcpus_on: BTreeMap<String, Cpus> = BTreeMap::new();
    for (name, q) in &running {
        if !w.libvirt().join(format!("{name}.xml")).exists() {
            v.push(("world", format!("{name}: status file vanished")));
        }
        let mut all = Cpus::new();
        let mut unpinned = Vec::new();
        for (tid, role) in &q.threads {
            let Some(cpus) = read_affinity(&w.proc_root(), q.pid, *tid) else {
                v.push((
                    "world",
                    format!("{name}: thread {tid} has no Cpus_allowed_list"),
                ));
                continue;
            };
            let mut bad: Cpus = cpus.intersection(&w.sc.forbidden).copied().collect();
            let on_housekeeping = !matches!(role, Role::Vcpu(_))
                && !cpus.is_empty()
                && cpus.is_subset(&w.sc.housekeeping);
            if on_housekeeping {
                bad.clear();
            }
            if cpus == w.sc.online {
                unpinned.push(format!("{role:?}"));
            } else if !bad.is_empty() {
                v.push(("I1 forbidden CPU", format!("guest {name} {role:?} thread {tid} may run on forbidden CPU(s) {} (Cpus_allowed_list {})", fmt_list(&bad), fmt_list(&cpus))));
            }
            if let Role::Iothread(n) = role {
                if let Some(pin) = q
                    .pins
                    .iothread
                    .get(n)
                    .filter(|_| !q.pins.kvmtune_iothreads.contains(n))
                {
                    if &cpus != pin {
                        v.push((
                            "I5 iothreadpin overwritten",
                            format!(
                                "guest {name} iothread {n}: XML <iothreadpin> {} but thread on {}",
                                fmt_list(pin),
                                fmt_list(&cpus)
                            ),
                        ));
                    }
                }
            }
            if matches!(role, Role::Vcpu(_)) {
                vcpus_on
                    .entry(name.clone())
                    .or_default()
                    .extend(cpus.iter().copied());
            }
            if !on_housekeeping {
                all.extend(cpus);
            }
        }
        if !unpinned.is_empty() {
            v.push((
                "I4 unpinned",
                format!(
                    "guest {name} is unpinned: thread(s) {} allowed on every CPU {}",
                    unpinned.join(","),
                    fmt_list(&w.sc.online)
                ),
            ));
        }
        used.insert(name.clone(), all);
    }
    // The ledger.
    let ledger = match read_ledger(&w.run_dir()) {
        Ok(l) => l,
        Err(e) if w.ledger_stale => {
            let _ = e;
            None
        }
        Err(e) => {
            v.push(("I3 ledger", e));
            None
        }
    };
    if !w.ledger_stale {
        let empty = BTreeMap::new();
        let l = ledger.as_ref().unwrap_or(&empty);
        for (name, _) in &running {
            let (pool, rule) = (w.sc.policy_of)(name);
            match l.get(name) {
                None => v.push((
                    "I3 running guest not in ledger",
                    format!("running guest {name} ({pool:?} by policy) has no ledger entry"),
                )),
                Some(e) => {
                    if e.rule != rule {
                        v.push(("I3 wrong rule", format!("running guest {name} recorded with rule '{}', the policy's rule is '{rule}'", e.rule)));
                    }
                    if pool == Pool::Shared && e.pool != "shared" {
                        v.push((
                            "I3 wrong pool",
                            format!("shared guest {name} recorded as {}", e.pool),
                        ));
                    }
                    if w.dedicated.contains(name) && e.pool != "dedicated" {
                        v.push(("I3 wrong pool", format!("dedicated guest {name} (recorded dedicated before) now recorded as {}", e.pool)));
                    }
                    if e.pool == "dedicated" {
                        w.dedicated.insert(name.clone());
                    }
                }
            }
        }
        // Claims: a dedicated guest's vCPU CPUs carry no other guest's claim (vCPU
        // or emulator). Its own emulator threads may share CPUs with shared guests
        // (an <emulatorpin> kept from its XML: Nova's emulator "share" policy).
        let entries: Vec<(&String, &LedgerEntry)> = l.iter().collect();
        for (i, (a, ea)) in entries.iter().enumerate() {
            for (b, eb) in entries.iter().skip(i + 1) {
                let mut both = Cpus::new();
                if ea.pool == "dedicated" {
                    both.extend(ea.vcpu_cpus.intersection(&eb.cpus));
                }
                if eb.pool == "dedicated" {
                    both.extend(eb.vcpu_cpus.intersection(&ea.cpus));
                }
                if !both.is_empty() {
                    v.push((
                        "I2 dedicated claim overlaps",
                        format!(
                            "ledger: {a} ({}) and {b} ({}) both claim CPU(s) {}",
                            ea.pool,
                            eb.pool,
                            fmt_list(&both)
                        ),
                    ));
                }
            }
        }
    }
    // Exclusivity of what runs: a dedicated guest's vCPU CPUs carry no thread of
    // any other guest.
    for (a, ca) in &vcpus_on {
        if !w.dedicated.contains(a) {
            continue;
        }
        for (b, cb) in &used {
            if a != b && !ca.is_disjoint(cb) {
                let both: Cpus = ca.intersection(cb).copied().collect();
                v.push((
                    "I2 dedicated CPU shared",
                    format!(
                        "dedicated guest {a} runs on {}, and {b} ({}) also runs on CPU(s) {}",
                        fmt_list(ca),
                        if w.dedicated.contains(b) {
                            "dedicated"
                        } else {
                            "shared"
                        },
                        fmt_list(&both)
                    ),
                ));
            }
        }
    }
    v
}

// ---------------------------------------------------------------- the driver

fn describe(calls: &[Call], results: &[Res]) -> String {
    if calls.len() > 12 {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for (c, r) in calls.iter().zip(results) {
            let out = if r.killed {
                "killed".to_string()
            } else {
                format!("exit {:?}", r.code.unwrap_or(-1))
            };
            *by.entry(format!("{} {}", c.op, out)).or_default() += 1;
        }
        let text: Vec<String> = by.iter().map(|(k, n)| format!("{n}× {k}")).collect();
        return format!(
            "burst of {} concurrent hooks: {}",
            calls.len(),
            text.join(", ")
        );
    }
    let parts: Vec<String> = calls
        .iter()
        .zip(results)
        .map(|(c, r)| {
            let out = if r.killed {
                "KILLED".to_string()
            } else {
                format!("{}", r.code.unwrap_or(-1))
            };
            let err = if r.code != Some(0) && !r.stderr.trim().is_empty() {
                format!(" [{}]", r.stderr.trim())
            } else {
                String::new()
            };
            format!("{} {}→{out}{err}", c.guest, c.op)
        })
        .collect();
    format!("hooks: {}", parts.join(", "))
}

/// Picks the next lifecycle call for guest `name`, doing libvirt's part of the world
/// first (creating or destroying QEMU).
fn next_call(w: &mut World, rng: &mut Rng, name: &str, allow_idle: bool) -> Option<Call> {
    let base = guest_xml(w.spec(name));
    let kill_after = rng.chance(4).then(|| Duration::from_millis(rng.below(35)));
    let mk = |op: &'static str, subop: &'static str, xml: String| Call {
        guest: name.to_string(),
        op,
        subop,
        xml,
        kill_after,
    };
    match w.state[name].clone() {
        St::Stopped => Some(match rng.below(10) {
            0..=5 => mk("prepare", "begin", base),
            6..=7 => mk("restore", "begin", base),
            _ => mk("migrate", "begin", base),
        }),
        St::Restoring(xml) => Some(mk("prepare", "begin", xml)),
        St::Prepared(xml) => {
            let q = w.create_qemu(name, &xml);
            w.state.insert(name.to_string(), St::Running(q));
            Some(mk("started", "begin", xml))
        }
        St::Running(q) => match rng.below(10) {
            0..=3 => {
                w.destroy_qemu(name, &q);
                w.state.insert(name.to_string(), St::Stopped);
                Some(mk("release", "end", base))
            }
            4..=6 => Some(mk("reconnect", "begin", live_xml(w, name))),
            _ if allow_idle => None,
            _ => Some(mk("reconnect", "begin", live_xml(w, name))),
        },
    }
}

/// The live XML libvirt passes at reconnect: the `<domain>` of the status file.
fn live_xml(w: &World, name: &str) -> String {
    let s = std::fs::read_to_string(w.libvirt().join(format!("{name}.xml"))).unwrap_or_default();
    match (s.find("<domain"), s.rfind("</domain>")) {
        (Some(a), Some(b)) => format!("{}\n", &s[a..b + "</domain>".len()]),
        _ => guest_xml(w.spec(name)),
    }
}

/// Applies the results of a burst to the model, as libvirt would react.
fn settle(w: &mut World, rng: &mut Rng, calls: &[Call], results: &[Res]) -> Vec<Call> {
    let mut followups = Vec::new();
    for (c, r) in calls.iter().zip(results) {
        let ok = !r.killed && r.code == Some(0);
        if ok && matches!(c.op, "prepare" | "started" | "reconnect") {
            w.ledger_stale = false;
        }
        match c.op {
            "restore" | "migrate" => {
                let xml = if r.stdout.trim().is_empty() {
                    c.xml.clone()
                } else {
                    r.stdout.clone()
                };
                w.state.insert(
                    c.guest.clone(),
                    if ok { St::Restoring(xml) } else { St::Stopped },
                );
            }
            "prepare" => {
                if ok {
                    w.state.insert(c.guest.clone(), St::Prepared(c.xml.clone()));
                } else {
                    // Refused (or killed): libvirt aborts the start, and its cleanup
                    // may or may not reach release.
                    w.state.insert(c.guest.clone(), St::Stopped);
                    if rng.chance(50) {
                        followups.push(Call {
                            guest: c.guest.clone(),
                            op: "release",
                            subop: "end",
                            xml: c.xml.clone(),
                            kill_after: None,
                        });
                    }
                }
            }
            "started" if ok => {
                if let St::Running(q) = &w.state[&c.guest] {
                    w.ran(q);
                }
            }
            "started" if !ok => {
                // A failed started hook aborts the start: QEMU is killed, release runs.
                if let St::Running(q) = w.state[&c.guest].clone() {
                    w.destroy_qemu(&c.guest, &q);
                }
                w.state.insert(c.guest.clone(), St::Stopped);
                followups.push(Call {
                    guest: c.guest.clone(),
                    op: "release",
                    subop: "end",
                    xml: c.xml.clone(),
                    kill_after: None,
                });
            }
            _ => {}
        }
    }
    followups
}

fn seed() -> u64 {
    std::env::var("KVMTUNE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11)
}

fn run_model(sc: Scenario) {
    let seed = seed();
    let keep_going = std::env::var_os("KVMTUNE_MODEL_KEEP_GOING").is_some_and(|v| v == "1");
    let started = Instant::now();
    let steps = std::env::var("KVMTUNE_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(sc.steps);
    let scenario = sc.name;
    let mut rng = Rng(seed
        ^ scenario
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(131).wrapping_add(b as u64)));
    let mut w = World::new(sc, seed);
    let names: Vec<String> = w.sc.guests.iter().map(|g| g.name.clone()).collect();
    let mut seen: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let mut processes = 0usize;
    for step in 0..steps {
        let roll = rng.below(100);
        let what = if w.sc.big_bursts.contains(&step) {
            let mut calls = Vec::new();
            for n in &names {
                if let Some(c) = next_call(&mut w, &mut rng, n, false) {
                    calls.push(c);
                }
            }
            run_calls(&mut w, &mut rng, calls, &mut processes)
        } else if roll < 5 {
            let _ = std::fs::remove_file(w.run_dir().join("ledger.json"));
            w.ledger_stale = true;
            "ledger deleted (/run/kvmtune cleared, package reinstalled)".to_string()
        } else if roll < 9 {
            if w.run_dir().exists() {
                std::fs::write(
                    w.run_dir().join("ledger.json"),
                    "{\"version\":1,\"guests\":{\"x\":{\"cp",
                )
                .unwrap();
                w.ledger_stale = true;
            }
            "ledger corrupted (truncated file)".to_string()
        } else if roll < 12 {
            let delta: i64 = if rng.chance(70) { 3600 } else { -3600 };
            w.clock_offset += delta;
            std::fs::write(w.dir.join("clock"), format!("{}\n", w.clock_offset)).unwrap();
            format!(
                "wall clock stepped {delta:+} s (offset now {} s)",
                w.clock_offset
            )
        } else if roll < 18 {
            // libvirtd restarts: it reconnects every running guest.
            let run: Vec<String> = w.running().into_iter().map(|(n, _)| n).collect();
            let calls: Vec<Call> = run
                .iter()
                .map(|n| Call {
                    guest: n.clone(),
                    op: "reconnect",
                    subop: "begin",
                    xml: live_xml(&w, n),
                    kill_after: rng.chance(3).then(|| Duration::from_millis(rng.below(20))),
                })
                .collect();
            format!(
                "libvirtd restart: {}",
                run_calls(&mut w, &mut rng, calls, &mut processes)
            )
        } else {
            let k = 1 + rng.below(w.sc.max_small_burst) as usize;
            let mut pick: Vec<String> = Vec::new();
            for _ in 0..k * 3 {
                if pick.len() == k {
                    break;
                }
                let n = &names[rng.below(names.len() as u64) as usize];
                if !pick.contains(n) {
                    pick.push(n.clone());
                }
            }
            let mut calls = Vec::new();
            for n in &pick {
                if let Some(c) = next_call(&mut w, &mut rng, n, true) {
                    calls.push(c);
                }
            }
            run_calls(&mut w, &mut rng, calls, &mut processes)
        };
        w.log.push(format!("step {step}: {what}"));
        let violations = check(&mut w);
        if violations.is_empty() {
            continue;
        }
        for (kind, text) in &violations {
            seen.entry(kind).or_insert((step, text.clone()));
        }
        if !keep_going {
            let log_path = w.dir.join("steps.log");
            std::fs::write(&log_path, w.log.join("\n")).unwrap();
            panic!(
                "\ninvariant violated: scenario {scenario}, seed {seed}, step {step}\n{}\n\nsteps so far:\n{}\n\nreplay: KVMTUNE_MODEL_SEED={seed} cargo test --test invariant_model {}\n(world kept in {})",
                violations
                    .iter()
                    .map(|(k, t)| format!("  [{k}] {t}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                w.log.join("\n"),
                scenario.replace('-', "_"),
                w.dir.display()
            );
        }
    }
    eprintln!(
        "invariant model {scenario}: seed {seed}, {steps} steps, {processes} hook processes, {:?}",
        started.elapsed()
    );
    if std::env::var_os("KVMTUNE_MODEL_VERBOSE").is_some() {
        eprintln!("{}", w.log.join("\n"));
    }
    if !seen.is_empty() {
        let text: Vec<String> = seen
            .iter()
            .map(|(k, (s, t))| format!("  [{k}] first at step {s}: {t}"))
            .collect();
        panic!(
            "\nscenario {scenario}, seed {seed}: violations\n{}\n\nsteps:\n{}",
            text.join("\n"),
            w.log.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&w.dir);
}

fn run_calls(w: &mut World, rng: &mut Rng, calls: Vec<Call>, processes: &mut usize) -> String {
    if calls.is_empty() {
        return "nothing to do".into();
    }
    *processes += calls.len();
    let results = w.burst(&calls);
    let mut text = describe(&calls, &results);
    let followups = settle(w, rng, &calls, &results);
    if !followups.is_empty() {
        *processes += followups.len();
        let r2 = w.burst(&followups);
        settle(w, rng, &followups, &r2);
        text.push_str(&format!(
            "; then libvirt cleanup {}",
            describe(&followups, &r2)
        ));
    }
    text
}

#[test]
fn silver4108_2node() {
    run_model(silver());
}

#[test]
fn laptop_1s2c2t() {
    run_model(laptop());
}

// ---------------------------------------------------------------- scripted cases
//
// One short, fixed sequence per bullet of issue 11, on the 2-CPU CI machine's
// situation (CPU1 the only guest CPU: the laptop fixture with CPUs 2-3 reserved),
// checked after every step by the same checker. They name the bug when they fail.

fn one_cpu_guests(policy_extra: &str, reserved: &str, housekeeping: &str) -> Scenario {
    let g = |name: &str, pins: Option<Vec<u32>>, io: Option<&str>| GuestSpec {
        name: name.into(),
        vcpus: 1,
        pins,
        iothread_pin: io.map(str::to_string),
    };
    Scenario {
        name: "scripted",
        host_root: fixture("intel-core-i5-m560-laptop-1s2c2t"),
        online: parse_list("0-3").unwrap(),
        forbidden: parse_list(format!("0,{reserved}").trim_end_matches(',')).unwrap(),
        housekeeping: parse_list(housekeeping).unwrap(),
        policy: format!(
            "version: 1
on_violation: warn
host:
  reserved_cpus: '{}'
  irq_cpus: none
defaults:
  hugepages: off
{policy_extra}rules:
  - name: nfv
    match: {{name: 'ded-*'}}
    set: {{pool: dedicated}}
  - name: pinned
    match: {{name: 'pin-*'}}
    set: {{pool: dedicated, existing_pins: keep}}
",
            if reserved.is_empty() {
                "none"
            } else {
                reserved
            }
        ),
        policy_of: |name| {
            if name.starts_with("ded-") {
                (Pool::Dedicated, "nfv")
            } else if name.starts_with("pin-") {
                (Pool::Dedicated, "pinned")
            } else {
                (Pool::Shared, "defaults")
            }
        },
        guests: vec![
            g("ded-a", None, None),
            g("ded-b", None, None),
            g("pin-x", Some(vec![1]), None),
            g("sh-a", None, None),
            g("io-a", None, Some("1-3")),
        ],
        steps: 0,
        big_bursts: vec![],
        max_small_burst: 1,
    }
}

struct Script {
    w: World,
    step: usize,
}

impl Drop for Script {
    fn drop(&mut self) {
        // Kept for inspection when the case failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.w.dir);
        }
    }
}

impl Script {
    fn new(sc: Scenario) -> Script {
        Script {
            w: World::new(sc, 0),
            step: 0,
        }
    }

    /// Runs calls at once, applies libvirt's reactions, then checks.
    fn hooks(&mut self, calls: Vec<(&str, &'static str, String)>) -> Vec<Res> {
        let calls: Vec<Call> = calls
            .into_iter()
            .map(|(g, op, xml)| Call {
                guest: g.into(),
                op,
                subop: if op == "release" { "end" } else { "begin" },
                xml,
                kill_after: None,
            })
            .collect();
        let results = self.w.burst(&calls);
        let text = describe(&calls, &results);
        let mut rng = Rng(0);
        let _ = settle(&mut self.w, &mut rng, &calls, &results);
        self.after(text);
        results
    }

    fn after(&mut self, text: String) {
        self.w.log.push(format!("step {}: {text}", self.step));
        let v = check(&mut self.w);
        if !v.is_empty() {
            panic!(
                "\ninvariant violated at step {}:\n{}\n\nsteps:\n{}",
                self.step,
                v.iter()
                    .map(|(k, t)| format!("  [{k}] {t}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.w.log.join("\n")
            );
        }
        self.step += 1;
    }

    fn xml(&self, name: &str) -> String {
        guest_xml(self.w.spec(name))
    }

    fn prepare(&mut self, name: &str) -> bool {
        let xml = match self.w.state[name].clone() {
            St::Restoring(x) => x,
            _ => self.xml(name),
        };
        self.hooks(vec![(name, "prepare", xml)])[0].code == Some(0)
    }

    /// libvirt creates QEMU (XML pins applied), then calls started.
    fn started(&mut self, name: &str) {
        let mut rng = Rng(0);
        let call = next_call(&mut self.w, &mut rng, name, false).expect("a prepared guest");
        assert_eq!(call.op, "started");
        self.hooks(vec![(name, "started", call.xml)]);
    }

    fn start(&mut self, name: &str) {
        if self.prepare(name) {
            self.started(name);
        }
    }

    fn restore(&mut self, names: &[&str], op: &'static str) {
        let calls = names.iter().map(|n| (*n, op, self.xml(n))).collect();
        self.hooks(calls);
    }

    fn world(&mut self, what: &str, f: impl FnOnce(&mut World)) {
        f(&mut self.w);
        self.after(what.to_string());
    }
}

#[test]
fn scripted_dedicated_guest_without_room_is_never_unpinned() {
    // Bullet 1: A dedicated on CPU 1, then B with the same policy.
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    s.start("ded-a");
    s.start("ded-b");
}

#[test]
fn scripted_ledger_lost_while_a_dedicated_guest_runs() {
    // Bullet 2: /run cleared; the next dedicated guest must not get A's CPU.
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    s.start("ded-a");
    s.world("ledger deleted", |w| {
        let _ = std::fs::remove_file(w.run_dir().join("ledger.json"));
        w.ledger_stale = true;
    });
    s.start("ded-b");
}

#[test]
fn scripted_reconnect_after_ledger_loss_keeps_the_pool() {
    // Bullet 2: reconnect re-records a dedicated guest as shared.
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    s.start("ded-a");
    s.world("ledger corrupted", |w| {
        std::fs::write(w.run_dir().join("ledger.json"), "{\"version\":1,\"gu").unwrap();
        w.ledger_stale = true;
    });
    let xml = live_xml(&s.w, "ded-a");
    s.hooks(vec![("ded-a", "reconnect", xml)]);
}

#[test]
fn scripted_two_restores_before_either_prepare() {
    // Bullet 3: restore begin prints pins but records no claim.
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    s.restore(&["ded-a"], "restore");
    s.restore(&["ded-b"], "restore");
    s.start("ded-a");
    s.start("ded-b");
}

#[test]
fn scripted_two_incoming_migrations_before_either_prepare() {
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    s.restore(&["ded-a"], "migrate");
    s.restore(&["ded-b"], "migrate");
    s.start("ded-a");
    s.start("ded-b");
}

#[test]
fn scripted_existing_pins_onto_a_dedicated_cpu() {
    // Bullet 4: pin-x pins itself onto CPU 1, which ded-a holds dedicated.
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    s.start("ded-a");
    s.start("pin-x");
}

#[test]
fn scripted_started_keeps_libvirts_iothreadpin() {
    // Bullet 5: io-a's <iothreadpin> 1-3 is overwritten with the emulator set.
    let mut s = Script::new(one_cpu_guests("", "", ""));
    s.start("io-a");
}

#[test]
fn scripted_status_file_without_vcpu_threads() {
    // Bullet 5: no vCPU thread ids in the status file: with emulator: housekeeping
    // every thread, vCPUs included, goes to the housekeeping CPU 0.
    let mut s = Script::new(one_cpu_guests("  emulator: housekeeping\n", "", "0"));
    s.w.omit_vcpu_tids = true;
    s.start("sh-a");
}

#[test]
fn scripted_wall_clock_step_between_prepare_and_started() {
    // Bullet 6: an NTP step at boot expires ded-a's prepared claim.
    let mut s = Script::new(one_cpu_guests("", "2-3", ""));
    assert!(s.prepare("ded-a"));
    s.world("wall clock stepped +3600 s", |w| {
        w.clock_offset += 3600;
        std::fs::write(w.dir.join("clock"), "3600\n").unwrap();
    });
    s.start("ded-b");
    if matches!(s.w.state["ded-a"], St::Prepared(_)) {
        s.started("ded-a");
    }
}

#[test]
fn scripted_policy_fifo_does_not_hang_the_hook() {
    // Bullet 7: a FIFO as the policy file; libvirt waits for the hook forever.
    let s = Script::new(one_cpu_guests("", "2-3", ""));
    let policy = s.w.dir.join("policy.yaml");
    std::fs::remove_file(&policy).unwrap();
    let made = Command::new("mkfifo").arg(&policy).status().unwrap();
    assert!(made.success());
    let mut child = s.w.spawn(&Call {
        guest: "ded-a".into(),
        op: "prepare",
        subop: "begin",
        xml: s.xml("ded-a"),
        kill_after: None,
    });
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("hook still running after 5 s with a FIFO as the policy file");
}
