//! apply/revert against a fake libvirt: a [`Runner`] that answers virsh's command
//! lines from an in-memory set of definitions.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::host::Host;
use kvmtune_core::placement::{Claim, Pool};
use kvmtune_core::policy::Policy;
use kvmtune_sys::command::{Output, RunError, Runner};
use kvmtune_sys::virsh::DEFAULT_URI;

/// What the fake virsh knows and what it was asked.
#[derive(Default)]
struct State {
    definitions: BTreeMap<String, Vec<u8>>,
    active: BTreeSet<String>,
    transient: BTreeSet<String>,
    calls: Vec<Vec<String>>,
    /// stderr + exit code returned for every call whose args contain the key.
    fail_on: Vec<(String, Output)>,
    /// The run error returned for every call (virsh missing, timeout).
    run_error: Option<RunError>,
}

#[derive(Default)]
struct FakeVirsh(RefCell<State>);

impl Runner for &FakeVirsh {
    fn run(&self, _program: &Path, args: &[String]) -> Result<Output, RunError> {
        let mut s = self.0.borrow_mut();
        s.calls.push(args.to_vec());
        if let Some(e) = &s.run_error {
            return Err(e.clone());
        }
        assert_eq!(&args[..3], ["--quiet", "--connect", "qemu:///system"]);
        let args: Vec<&str> = args[3..].iter().map(String::as_str).collect();
        for (key, out) in &s.fail_on {
            if args.contains(&key.as_str()) {
                return Ok(out.clone());
            }
        }
        let no_domain = |g: &str| Output::failed(1, format!("error: failed to get domain '{g}'\n"));
        Ok(match args.as_slice() {
            ["list", "--all", "--persistent", "--name"] => Output::ok(
                s.definitions
                    .keys()
                    .map(|k| format!("{k}\n"))
                    .collect::<String>()
                    + "\n",
            ),
            ["list", "--name"] => Output::ok(
                s.active
                    .iter()
                    .chain(&s.transient)
                    .map(|k| format!("{k}\n"))
                    .collect::<String>()
                    + "\n",
            ),
            ["dumpxml", "--inactive", "--security-info", "--domain", g] => {
                match s.definitions.get(*g) {
                    Some(xml) => Output::ok(xml.clone()),
                    None => no_domain(g),
                }
            }
            ["define", "--file", file] => {
                let bytes = std::fs::read(file).unwrap();
                let text = String::from_utf8(bytes.clone()).unwrap();
                let name = Domain::parse(&text).unwrap().name;
                s.definitions.insert(name.clone(), bytes);
                Output::ok(format!("Domain '{name}' defined from {file}\n"))
            }
            other => panic!("unexpected virsh call {other:?}"),
        })
    }
}

fn guest_xml(name: &str, cache: &str) -> String {
    format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='KiB'>65536</memory>\n  <vcpu placement='static'>2</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n  </os>\n  <cpu mode='host-passthrough'/>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='{cache}'/>\n      <source file='/var/lib/libvirt/images/{name}.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
}

struct Setup {
    fake: FakeVirsh,
    policy: Policy,
    host: Host,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(guests: &[(&str, &str)]) -> Setup {
        let fake = FakeVirsh::default();
        for (name, cache) in guests {
            fake.0
                .borrow_mut()
                .definitions
                .insert(name.to_string(), guest_xml(name, cache).into_bytes());
        }
        Setup {
            fake,
            policy: Policy::default(),
            // 1 socket, 1 node, 4 cores x 2 threads: CPUs 0-7, siblings N and N+4.
            host: Host::synthetic(1, 1, 4, 2, 1 << 20),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn virsh(&self) -> Virsh<&FakeVirsh> {
        Virsh::new(&self.fake, "virsh".into(), DEFAULT_URI.into())
    }

    fn backups(&self) -> Backups {
        Backups::new(self.dir.path().join("backups"))
    }

    fn apply(
        &self,
        guests: Option<&[String]>,
        dry_run: bool,
        consent: Consent<'_>,
    ) -> (Result<u8>, String) {
        self.apply_among(&Occupancy::default(), guests, dry_run, consent)
    }

    /// `apply` with these running guests' claims.
    fn apply_among(
        &self,
        running: &Occupancy,
        guests: Option<&[String]>,
        dry_run: bool,
        consent: Consent<'_>,
    ) -> (Result<u8>, String) {
        let mut out = Vec::new();
        let request = ApplyRequest { guests, dry_run };
        let (virsh, backups) = (self.virsh(), self.backups());
        let ctx = Context {
            virsh: &virsh,
            policy: &self.policy,
            host: &self.host,
            running,
            backups: &backups,
        };
        let r = apply(&ctx, &request, consent, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    fn definition(&self, name: &str) -> String {
        String::from_utf8(self.fake.0.borrow().definitions[name].clone()).unwrap()
    }

    fn defines(&self) -> usize {
        self.fake
            .0
            .borrow()
            .calls
            .iter()
            .filter(|c| c[3] == "define")
            .count()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn code_of(r: Result<u8>) -> (u8, String) {
    match r {
        Ok(c) => (c, String::new()),
        Err(e) => (
            e.downcast_ref::<Failure>().map_or(255, |f| f.code),
            format!("{e:#}"),
        ),
    }
}

#[test]
fn dry_run_shows_reasons_and_diff_and_defines_nothing() {
    let s = Setup::new(&[("web", "writeback")]);
    let before = s.definition("web");
    let (r, out) = s.apply(Some(&names(&["web"])), true, Consent::Impossible);
    assert_eq!(r.unwrap(), exit::FINDINGS);
    assert!(
        out.contains("[rule 2.1 via defaults] disk vda: cache='none' (was writeback)"),
        "{out}"
    );
    assert!(out.contains("[rule 5 via defaults]"), "{out}");
    assert!(
        out.contains("--- web (current)\n+++ web (kvmtune)\n"),
        "{out}"
    );
    assert!(
        out.contains("+      <driver name='qemu' type='qcow2' cache='none' io='native'/>"),
        "{out}"
    );
    assert!(
        out.contains("dry run: 1 guest(s) would change (web); nothing defined"),
        "{out}"
    );
    assert_eq!(s.definition("web"), before);
    assert_eq!(s.defines(), 0);
    assert!(s.backups().list("web").unwrap().is_empty());
}

#[test]
fn apply_backs_up_then_defines_the_planned_xml() {
    let s = Setup::new(&[("web", "writeback")]);
    let before = s.definition("web");
    let (r, out) = s.apply(Some(&names(&["web"])), false, Consent::Given);
    assert_eq!(r.unwrap(), exit::OK, "{out}");
    let after = s.definition("web");
    let (_, expected) =
        cli::plan_and_rewrite(&s.policy, &s.host, &Occupancy::default(), &before).unwrap();
    assert_eq!(after, expected);
    assert!(after.contains("cache='none' io='native'"));
    assert!(after.contains("<cpu mode='host-model'/>"));
    assert!(after.contains("<nosharepages/>"));
    assert!(after.contains("<vcpupin vcpu='0'"));
    let backups = s.backups().list("web").unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(s.backups().read(&backups[0]).unwrap(), before.as_bytes());
    assert!(
        out.contains("web: defined; previous definition saved as"),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
    assert!(!out.contains("is running"), "{out}");
    // No scratch file left behind; backups are private.
    let dir = s.dir.path().join("backups/web");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&backups[0].path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Idempotent: a second apply finds nothing to do and defines nothing.
    let (r, out) = s.apply(Some(&names(&["web"])), false, Consent::Impossible);
    assert_eq!(r.unwrap(), exit::OK);
    assert!(
        out.contains("nothing to do: 1 guest(s) already conform"),
        "{out}"
    );
    assert_eq!(s.defines(), 1);
}

#[test]
fn running_guests_are_told_about_the_next_cold_boot() {
    let s = Setup::new(&[("web", "writeback")]);
    s.fake.0.borrow_mut().active.insert("web".into());
    let (r, out) = s.apply(Some(&names(&["web"])), false, Consent::Given);
    assert_eq!(r.unwrap(), exit::OK);
    assert!(
        out.contains("web: is running: the new definition takes effect at its next cold boot"),
        "{out}"
    );
}

#[test]
fn all_spreads_guests_instead_of_stacking_them() {
    let s = Setup::new(&[("a", "none"), ("b", "none"), ("c", "none")]);
    let (r, out) = s.apply(None, false, Consent::Given);
    assert_eq!(r.unwrap(), exit::OK, "{out}");
    let cpus: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|g| {
            Domain::parse(&s.definition(g))
                .unwrap()
                .pinned_cpus()
                .to_string()
        })
        .collect();
    // Three 2-vCPU guests on 3 different cores (never CPU0's core is not required,
    // only that no two share a CPU).
    let unique: BTreeSet<_> = cpus.iter().collect();
    assert_eq!(unique.len(), 3, "{cpus:?}");
    for c in &cpus {
        assert!(!CpuSet::parse(c).unwrap().contains(0), "{cpus:?}");
    }
}

#[test]
fn not_a_terminal_without_yes_is_refused_and_nothing_defined() {
    let s = Setup::new(&[("web", "writeback")]);
    let (code, msg) = code_of(
        s.apply(Some(&names(&["web"])), false, Consent::Impossible)
            .0,
    );
    assert_eq!(code, exit::USAGE);
    assert_eq!(
        msg,
        "not on a terminal: pass --yes to define the new definitions of web (or --dry-run to only look)"
    );
    assert_eq!(s.defines(), 0);
}

#[test]
fn the_terminal_is_asked_and_no_means_no() {
    let s = Setup::new(&[("web", "writeback")]);
    let mut prompt = Vec::new();
    let mut answer: &[u8] = b"n\n";
    let (r, out) = s.apply(
        Some(&names(&["web"])),
        false,
        Consent::Ask {
            prompt: &mut prompt,
            answer: &mut answer,
        },
    );
    assert_eq!(r.unwrap(), exit::FINDINGS);
    assert_eq!(
        String::from_utf8(prompt).unwrap(),
        "Define the new definition of web? [y/N] "
    );
    assert!(out.ends_with("nothing defined\n"));
    assert_eq!(s.defines(), 0);

    let mut prompt = Vec::new();
    let mut answer: &[u8] = b"yes\n";
    let (r, _) = s.apply(
        Some(&names(&["web"])),
        false,
        Consent::Ask {
            prompt: &mut prompt,
            answer: &mut answer,
        },
    );
    assert_eq!(r.unwrap(), exit::OK);
    assert_eq!(s.defines(), 1);
}

#[test]
fn a_planning_failure_defines_nothing_at_all() {
    let s = Setup::new(&[("good", "writeback"), ("bad", "none")]);
    s.fake.0.borrow_mut().definitions.insert(
        "bad".into(),
        b"<domain><name>bad</name><vcpu>many</vcpu></domain>".to_vec(),
    );
    let (code, msg) = code_of(s.apply(None, false, Consent::Given).0);
    assert_eq!(code, exit::INPUT, "{msg}");
    assert!(msg.starts_with("guest 'bad': "), "{msg}");
    assert!(msg.ends_with("nothing defined"), "{msg}");
    assert_eq!(s.defines(), 0);
}

#[test]
fn a_policy_that_does_not_fit_the_host_defines_nothing() {
    let mut s = Setup::new(&[("web", "writeback")]);
    s.policy.host.reserved_cpus = CpuSet::parse("64").unwrap();
    let (code, msg) = code_of(s.apply(Some(&names(&["web"])), false, Consent::Given).0);
    assert_eq!(code, exit::USAGE, "{msg}");
    assert_eq!(s.defines(), 0);
}

#[test]
fn unknown_and_transient_and_unsafe_guests_are_refused() {
    let s = Setup::new(&[("web", "none")]);
    s.fake.0.borrow_mut().transient.insert("tmp".into());
    let (code, msg) = code_of(s.apply(Some(&names(&["nope"])), false, Consent::Given).0);
    assert_eq!(
        (code, msg.as_str()),
        (
            exit::INPUT,
            "libvirt at qemu:///system has no guest named 'nope'"
        )
    );
    let (code, msg) = code_of(s.apply(Some(&names(&["tmp"])), false, Consent::Given).0);
    assert_eq!(code, exit::INPUT);
    assert!(msg.contains("is transient"), "{msg}");
    for bad in ["../etc", "a/b", "..", "x\ny", ""] {
        let (code, _) = code_of(s.apply(Some(&names(&[bad])), false, Consent::Given).0);
        assert_eq!(code, exit::INPUT, "{bad:?}");
    }
    assert_eq!(s.defines(), 0);
}

#[test]
fn libvirt_errors_are_clear_and_exit_4() {
    let cases = [
        (
            "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\n",
            "libvirt at qemu:///system is unreachable: failed to connect to the hypervisor: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory; is libvirtd (or virtqemud) running?",
        ),
        (
            "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied\n",
            "libvirt at qemu:///system refused access: failed to connect to the hypervisor: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied; run as root or as a member of the libvirt group",
        ),
        (
            "error: failed to connect to the hypervisor\nerror: authentication unavailable: no polkit agent available to authenticate action 'org.libvirt.unix.manage'\n",
            "libvirt at qemu:///system refused access: failed to connect to the hypervisor: authentication unavailable: no polkit agent available to authenticate action 'org.libvirt.unix.manage'; run as root or as a member of the libvirt group",
        ),
    ];
    for (stderr, want) in cases {
        let s = Setup::new(&[("web", "writeback")]);
        s.fake
            .0
            .borrow_mut()
            .fail_on
            .push(("list".into(), Output::failed(1, stderr)));
        let (code, msg) = code_of(s.apply(Some(&names(&["web"])), false, Consent::Given).0);
        assert_eq!((code, msg.as_str()), (exit::LIBVIRT, want));
    }
    let s = Setup::new(&[("web", "writeback")]);
    s.fake.0.borrow_mut().run_error = Some(RunError::NotFound {
        program: "virsh".into(),
    });
    let (code, msg) = code_of(s.apply(None, false, Consent::Given).0);
    assert_eq!(code, exit::LIBVIRT);
    assert!(
        msg.starts_with("virsh not found (virsh): install libvirt-clients"),
        "{msg}"
    );
    s.fake.0.borrow_mut().run_error = Some(RunError::Timeout {
        program: "virsh".into(),
        timeout: Duration::from_secs(60),
    });
    let (code, msg) = code_of(s.apply(None, false, Consent::Given).0);
    assert_eq!(code, exit::LIBVIRT);
    assert_eq!(
        msg,
        "virsh list did not answer within 60s (libvirtd hung?); killed"
    );
}

#[test]
fn a_failing_define_keeps_the_backup_and_says_so() {
    let s = Setup::new(&[("web", "writeback")]);
    s.fake.0.borrow_mut().fail_on.push((
        "define".into(),
        Output::failed(
            1,
            "error: Failed to define domain from x.xml\nerror: unsupported configuration: nope\n",
        ),
    ));
    let (code, msg) = code_of(s.apply(Some(&names(&["web"])), false, Consent::Given).0);
    assert_eq!(code, exit::LIBVIRT);
    assert_eq!(
        msg,
        "guest 'web': virsh define failed: Failed to define domain from x.xml: unsupported configuration: nope (nothing defined)"
    );
    assert_eq!(s.backups().list("web").unwrap().len(), 1);
}

#[test]
fn revert_restores_the_exact_bytes_and_can_itself_be_undone() {
    let s = Setup::new(&[("web", "writeback")]);
    let original = s.definition("web");
    let (r, _) = s.apply(Some(&names(&["web"])), false, Consent::Given);
    r.unwrap();
    let applied = s.definition("web");
    assert_ne!(applied, original);

    let mut out = Vec::new();
    let code = revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(None),
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, exit::OK);
    assert_eq!(s.definition("web"), original);
    assert!(out.starts_with("web: restored backup "), "{out}");
    assert!(
        out.contains("the replaced definition was saved as"),
        "{out}"
    );

    // The listing marks the backup equal to the current definition.
    let mut out = Vec::new();
    revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::List,
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].ends_with("= current definition"), "{out}");
    assert!(!lines[2].ends_with("= current definition"), "{out}");

    // Reverting again goes back to the applied definition (newest that differs).
    let mut out = Vec::new();
    revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(None),
        &mut out,
    )
    .unwrap();
    assert_eq!(s.definition("web"), applied);

    // --to an explicit stamp.
    let first = s.backups().list("web").unwrap()[0].stamp.clone();
    let mut out = Vec::new();
    revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(Some(&first)),
        &mut out,
    )
    .unwrap();
    assert_eq!(s.definition("web"), original);
}

#[test]
fn revert_errors() {
    let s = Setup::new(&[("web", "writeback")]);
    let mut out = Vec::new();
    let (code, msg) = code_of(revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(None),
        &mut out,
    ));
    assert_eq!(code, exit::INPUT);
    assert!(msg.starts_with("no backups of 'web' in "), "{msg}");
    s.apply(Some(&names(&["web"])), false, Consent::Given)
        .0
        .unwrap();
    let (code, msg) = code_of(revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(Some("19700101T000000Z")),
        &mut out,
    ));
    assert_eq!(code, exit::USAGE);
    assert!(
        msg.starts_with("no backup 19700101T000000Z of 'web'; available: "),
        "{msg}"
    );
    let (code, _) = code_of(revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(Some("../../x")),
        &mut out,
    ));
    assert_eq!(code, exit::USAGE);
    let (code, _) = code_of(revert(
        &s.virsh(),
        &s.backups(),
        "../web",
        RevertRequest::List,
        &mut out,
    ));
    assert_eq!(code, exit::INPUT);
}

#[test]
fn revert_of_an_undefined_guest_defines_it_again() {
    let s = Setup::new(&[("web", "writeback")]);
    let original = s.definition("web");
    s.apply(Some(&names(&["web"])), false, Consent::Given)
        .0
        .unwrap();
    s.fake.0.borrow_mut().definitions.remove("web");
    let mut out = Vec::new();
    revert(
        &s.virsh(),
        &s.backups(),
        "web",
        RevertRequest::Restore(None),
        &mut out,
    )
    .unwrap();
    assert_eq!(s.definition("web"), original);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("(the guest was not defined)")
    );
}

/// A running guest counts by its claim, not by the pins of its definition: a
/// definition pinned 1:1 reads as dedicated, but the claim says the guest is
/// shared there (kvmtune wrote those pins for a shared guest), so another shared
/// guest may join it instead of being refused.
#[test]
fn running_guests_count_by_their_claim_not_their_definitions_pins() {
    let s = Setup::new(&[("target", "none"), ("shared", "none")]);
    let pinned = s.definition("shared").replace(
        "<os>",
        "<cputune><vcpupin vcpu='0' cpuset='1'/><vcpupin vcpu='1' cpuset='5'/></cputune>\n  <os>",
    );
    s.fake
        .0
        .borrow_mut()
        .definitions
        .insert("shared".into(), pinned.into_bytes());
    let claim = |cpus: &[u32], pool| Claim {
        vcpus: cpus.iter().map(|c| CpuSet::from_iter([*c])).collect(),
        nodes: CpuSet::parse("0").unwrap(),
        memory_kib: 65536,
        pool,
    };
    let mut running = Occupancy::default();
    running
        .guests
        .insert("shared".into(), claim(&[1, 5], Pool::Shared));
    // Every other CPU but CPU0 is some dedicated guest's.
    running
        .guests
        .insert("d1".into(), claim(&[2, 6], Pool::Dedicated));
    running
        .guests
        .insert("d2".into(), claim(&[3, 7], Pool::Dedicated));
    running
        .guests
        .insert("d3".into(), claim(&[4], Pool::Dedicated));
    let (r, out) = s.apply_among(&running, Some(&names(&["target"])), false, Consent::Given);
    assert_eq!(r.unwrap(), exit::OK, "{out}");
    let target = Domain::parse(&s.definition("target")).unwrap();
    assert_eq!(target.pinned_cpus(), CpuSet::parse("1,5").unwrap(), "{out}");
}
