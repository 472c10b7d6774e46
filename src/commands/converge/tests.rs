//! The drain against a fake libvirt: a [`Runner`] answering virsh's command lines
//! (list, domuuid, domstate, dumpxml, define) from in-memory definitions.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use kvmtune_core::converge::Entry;
use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::policy::Policy;
use kvmtune_sys::command::{Output, RunError};
use kvmtune_sys::logging::Severity;
use kvmtune_sys::virsh::DEFAULT_URI;

#[derive(Default)]
struct State {
    /// name -> (uuid, definition)
    guests: BTreeMap<String, (String, Vec<u8>)>,
    /// `domstate` answers, consumed in order (then `running (booted)`).
    states: Vec<String>,
    down: bool,
    calls: Vec<String>,
}

#[derive(Default)]
struct Fake(RefCell<State>);

impl Runner for &Fake {
    fn run(&self, _program: &Path, args: &[String]) -> Result<Output, RunError> {
        let mut s = self.0.borrow_mut();
        let args: Vec<&str> = args[3..].iter().map(String::as_str).collect();
        s.calls.push(args.join(" "));
        if s.down {
            return Ok(Output::failed(
                1,
                "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory\n",
            ));
        }
        let missing = |g: &str| Output::failed(1, format!("error: failed to get domain '{g}'\n"));
        Ok(match args.as_slice() {
            ["list", "--all", "--persistent", "--name"] => Output::ok(
                s.guests
                    .keys()
                    .map(|k| format!("{k}\n"))
                    .collect::<String>(),
            ),
            ["list", "--name"] => Output::ok(""),
            ["domuuid", "--domain", g] => match s.guests.get(*g) {
                Some((uuid, _)) => Output::ok(format!("{uuid}\n")),
                None => missing(g),
            },
            ["domstate", "--reason", "--domain", g] => {
                if !s.guests.contains_key(*g) {
                    missing(g)
                } else if s.states.is_empty() {
                    Output::ok("running (booted)\n")
                } else {
                    Output::ok(s.states.remove(0))
                }
            }
            ["dumpxml", "--inactive", "--security-info", "--domain", g] => match s.guests.get(*g) {
                Some((_, xml)) => Output::ok(xml.clone()),
                None => missing(g),
            },
            ["define", "--file", file] => {
                let bytes = std::fs::read(file).unwrap();
                let name = Domain::parse(std::str::from_utf8(&bytes).unwrap())
                    .unwrap()
                    .name;
                s.guests.get_mut(&name).unwrap().1 = bytes;
                Output::ok("defined\n")
            }
            other => panic!("unexpected virsh call {other:?}"),
        })
    }
}

fn xml(name: &str, uuid: &str, cache: &str, metadata: &str) -> Vec<u8> {
    format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  <memory unit='KiB'>65536</memory>\n  <vcpu placement='static'>1</vcpu>\n{metadata}  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='{cache}'/>\n      <source file='/images/{name}.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
    .into_bytes()
}

struct Setup {
    fake: Fake,
    policy: Policy,
    host: Host,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            fake: Fake::default(),
            policy: Policy::default(),
            host: Host::synthetic(1, 1, 4, 2, 1 << 20),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn define(&self, name: &str, uuid: &str, cache: &str, metadata: &str) {
        self.fake
            .0
            .borrow_mut()
            .guests
            .insert(name.into(), (uuid.into(), xml(name, uuid, cache, metadata)));
    }

    fn queue(&self) -> Queue {
        Queue::under(self.dir.path())
    }

    fn enqueue(&self, name: &str, uuid: &str) {
        self.queue()
            .enqueue(
                name,
                &Entry {
                    uuid: Some(uuid.into()),
                    queued_at: 1,
                },
            )
            .unwrap();
    }

    fn drain(&self, dry_run: bool) -> (u8, String, Vec<(Severity, String)>) {
        let virsh = Virsh::new(&self.fake, "virsh".into(), DEFAULT_URI.into());
        let backups = Backups::new(self.dir.path().join("backups"));
        let running = Occupancy::default();
        let ctx = Context {
            virsh: &virsh,
            policy: &self.policy,
            host: &self.host,
            running: &running,
            backups: &backups,
        };
        let mut out = Vec::new();
        let mut log = Log::memory();
        let code = drain(&ctx, &self.queue(), dry_run, &mut out, &mut log).unwrap();
        (code, String::from_utf8(out).unwrap(), log.lines)
    }

    fn definition(&self, name: &str) -> String {
        String::from_utf8(self.fake.0.borrow().guests[name].1.clone()).unwrap()
    }

    fn queued(&self) -> Vec<String> {
        self.queue()
            .list()
            .unwrap()
            .into_iter()
            .map(|q| q.guest)
            .collect()
    }

    fn backups_of(&self, name: &str) -> usize {
        std::fs::read_dir(self.dir.path().join("backups").join(name))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

#[test]
fn a_queued_guest_is_applied_backed_up_logged_and_dequeued() {
    let s = Setup::new();
    s.define("web", "u-1", "writeback", "");
    s.enqueue("web", "u-1");
    let (code, out, log) = s.drain(false);
    assert_eq!(code, exit::OK, "{out}");
    assert!(s.definition("web").contains("cache='none'"), "{out}");
    assert_eq!(s.backups_of("web"), 1);
    assert!(s.queued().is_empty());
    assert_eq!(log.len(), 1, "{log:?}");
    let line = &log[0].1;
    assert!(
        line.starts_with("guest=web stage=converge outcome=defined backup="),
        "{line}"
    );
    assert!(
        line.contains("[rule 2.1 via defaults] disk vda: cache='none'"),
        "{line}"
    );
    // Draining again: nothing queued, no libvirt call at all.
    let calls = s.fake.0.borrow().calls.len();
    let (code, out, _) = s.drain(false);
    assert_eq!(code, exit::OK);
    assert!(out.contains("nothing queued"), "{out}");
    assert_eq!(s.fake.0.borrow().calls.len(), calls);
}

#[test]
fn an_undefined_guest_is_dropped_with_a_log_line() {
    let s = Setup::new();
    s.enqueue("gone", "u-9");
    let (code, _, log) = s.drain(false);
    assert_eq!(code, exit::OK);
    assert!(s.queued().is_empty());
    assert_eq!(
        log[0].1,
        "guest=gone stage=converge outcome=dropped: undefined meanwhile"
    );
}

#[test]
fn a_guest_redefined_meanwhile_is_planned_afresh() {
    let s = Setup::new();
    // Queued with uuid u-1; meanwhile someone defined a new guest under the name,
    // with io='threads' and cache='directsync' (what the drain must plan on).
    s.enqueue("web", "u-1");
    s.define("web", "u-2", "directsync", "");
    let before = s.definition("web");
    let (code, _, log) = s.drain(false);
    assert_eq!(code, exit::OK);
    let after = s.definition("web");
    assert!(after.contains("<uuid>u-2</uuid>"), "{after}");
    assert!(after.contains("cache='none'"), "{after}");
    assert!(
        log[0]
            .1
            .contains("redefined meanwhile (uuid u-1 -> u-2): planned afresh")
    );
    assert!(log[0].1.contains("(was directsync)"), "{}", log[0].1);
    let backup = std::fs::read_dir(s.dir.path().join("backups/web"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read_to_string(backup).unwrap(), before);
}

#[test]
fn nova_guests_and_converge_off_are_dropped_untouched() {
    let mut s = Setup::new();
    let nova = "  <metadata>\n    <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'/>\n  </metadata>\n";
    s.define("nova", "u-1", "writeback", nova);
    s.define("off", "u-2", "writeback", "");
    s.enqueue("nova", "u-1");
    s.enqueue("off", "u-2");
    s.policy = Policy::parse(
        "version: 1\nrules:\n  - name: r\n    match: {name: 'off'}\n    set: {converge: off}\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    let (code, _, log) = s.drain(false);
    assert_eq!(code, exit::OK);
    assert!(s.definition("nova").contains("writeback"));
    assert!(s.definition("off").contains("writeback"));
    assert!(s.queued().is_empty());
    assert!(
        log[0].1.contains("outcome=dropped: Nova metadata"),
        "{log:?}"
    );
    assert!(
        log[1].1.contains("outcome=dropped: converge is off"),
        "{log:?}"
    );
}

#[test]
fn libvirt_down_keeps_every_entry_and_exits_zero() {
    let s = Setup::new();
    s.define("web", "u-1", "writeback", "");
    s.enqueue("web", "u-1");
    s.fake.0.borrow_mut().down = true;
    let (code, out, log) = s.drain(false);
    assert_eq!(code, exit::OK, "{out}");
    assert_eq!(s.queued(), ["web"]);
    assert_eq!(log[0].0, Severity::Warning);
    assert!(log[0].1.contains("outcome=deferred"), "{log:?}");
    assert!(log[0].1.contains("1 guest(s) stay queued"), "{log:?}");
    // libvirt back: drained.
    s.fake.0.borrow_mut().down = false;
    let (code, _, _) = s.drain(false);
    assert_eq!(code, exit::OK);
    assert!(s.queued().is_empty());
}

#[test]
fn a_start_still_running_is_waited_for_and_dry_run_keeps_the_queue() {
    let s = Setup::new();
    s.define("web", "u-1", "writeback", "");
    s.enqueue("web", "u-1");
    s.fake.0.borrow_mut().states = vec!["paused (starting up)\n".into()];
    let (code, out, _) = s.drain(true);
    assert_eq!(code, exit::FINDINGS, "{out}");
    assert!(s.definition("web").contains("writeback"));
    assert_eq!(s.queued(), ["web"]);
    let calls = s.fake.0.borrow().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("domstate")).count(),
        2,
        "{calls:?}"
    );
    let mut listed = Vec::new();
    list(&s.queue(), &mut listed).unwrap();
    let listed = String::from_utf8(listed).unwrap();
    assert!(
        listed.contains("  web  uuid u-1  queued 19700101T000001Z"),
        "{listed}"
    );
}

/// The drain's virsh calls are bounded even when virsh leaves a grandchild holding
/// its output pipes: a real [`ProcessRunner`] and a virsh script that does so.
#[test]
fn a_virsh_whose_grandchild_keeps_the_pipe_open_does_not_hang_the_drain() {
    use kvmtune_sys::command::ProcessRunner;
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    s.enqueue("gone", "u-1");
    let script = s.dir.path().join("virsh");
    let pids = s.dir.path().join("pids");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 30 & echo $! >> '{}'\ncase \"$*\" in *list*) echo other ;; *) echo \"error: failed to get domain 'gone'\" >&2; exit 1 ;; esac\n",
            pids.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let virsh = Virsh::new(
        ProcessRunner::new(Duration::from_secs(20)),
        script,
        DEFAULT_URI.into(),
    );
    let backups = Backups::new(s.dir.path().join("backups"));
    let running = Occupancy::default();
    let ctx = Context {
        virsh: &virsh,
        policy: &s.policy,
        host: &s.host,
        running: &running,
        backups: &backups,
    };
    let started = Instant::now();
    let mut log = Log::memory();
    let code = drain(&ctx, &s.queue(), false, &mut Vec::new(), &mut log).unwrap();
    let elapsed = started.elapsed();
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        if let Ok(pid) = pid.trim().parse() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    assert_eq!(code, exit::OK);
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(s.queued().is_empty());
    assert!(
        log.lines[0].1.contains("dropped: undefined meanwhile"),
        "{:?}",
        log.lines
    );
}
