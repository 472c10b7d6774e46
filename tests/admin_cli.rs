//! The admin commands through the real binary: argument wiring, exit codes and
//! messages. libvirt is a fake `virsh` shell script keeping definitions in a
//! directory; the host is a sysfs fixture; run directories are temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const FAKE_VIRSH: &str = r#"#!/bin/sh
# fake virsh: --quiet --connect URI COMMAND ARGS...
d=$FAKE_VIRSH_DIR
if [ -n "$FAKE_VIRSH_FAIL" ]; then printf '%b' "$FAKE_VIRSH_FAIL" >&2; exit 1; fi
[ "$1" = --quiet ] && [ "$2" = --connect ] || { echo "bad args: $*" >&2; exit 9; }
shift 3
case $1 in
list)
    if [ "$2" = --all ]; then
        for f in "$d"/*.xml; do [ -e "$f" ] && basename "$f" .xml; done
    else
        cat "$d/active" 2>/dev/null || true
    fi ;;
dumpxml)
    [ -f "$d/$5.xml" ] || { echo "error: failed to get domain '$5'" >&2; exit 1; }
    cat "$d/$5.xml" ;;
define)
    n=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$3" | head -n 1)
    cp "$3" "$d/$n.xml" && echo "Domain '$n' defined from $3" ;;
*) echo "unexpected: $*" >&2; exit 9 ;;
esac
"#;

const GUEST: &str = "<domain type='qemu'>
  <name>web</name>
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <cpu mode='host-passthrough'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback'/>
      <source file='/var/lib/libvirt/images/web.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for sub in ["defs", "run", "libvirt-run", "backups"] {
            fs::create_dir(p.join(sub)).unwrap();
        }
        fs::write(p.join("virsh"), FAKE_VIRSH).unwrap();
        fs::set_permissions(p.join("virsh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(p.join("defs/web.xml"), GUEST).unwrap();
        fs::write(p.join("policy.yaml"), "version: 1\n").unwrap();
        Env { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn kvmtune(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kvmtune"));
        c.args(args)
            .env("FAKE_VIRSH_DIR", self.path("defs"))
            .env("KVMTUNE_VIRSH", self.path("virsh"))
            .env("KVMTUNE_BACKUP_DIR", self.path("backups"))
            .env("KVMTUNE_RUN_DIR", self.path("run"))
            .env("KVMTUNE_LIBVIRT_RUN_DIR", self.path("libvirt-run"))
            .env("KVMTUNE_PROC_ROOT", self.path("proc"))
            .env_remove("LIBVIRT_DEFAULT_URI")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        c
    }

    /// `kvmtune ARGS --policy P --host-root FIXTURE` where the command takes them.
    fn run(&self, args: &[&str]) -> Output {
        self.kvmtune(args).output().unwrap()
    }
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node")
        .display()
        .to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn apply_dry_run_refusal_apply_and_revert() {
    let e = Env::new();
    let policy = e.path("policy.yaml").display().to_string();
    let host = fixture();
    let common = ["--policy", &policy, "--host-root", &host];

    let out = e.run(&[&["apply", "--dry-run", "web"][..], &common].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[rule 5 via defaults] CPU mode host-passthrough → host-model"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-      <driver name='qemu' type='qcow2' cache='writeback'/>"),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(e.path("defs/web.xml")).unwrap(), GUEST);

    // stdin is /dev/null: not a terminal, no --yes.
    let out = e.run(&[&["apply", "web"][..], &common].concat());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "kvmtune: not on a terminal: pass --yes to define the new definitions of web (or --dry-run to only look)\n"
    );
    assert_eq!(fs::read_to_string(e.path("defs/web.xml")).unwrap(), GUEST);

    let out = e.run(&[&["apply", "--all", "--yes"][..], &common].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let applied = fs::read_to_string(e.path("defs/web.xml")).unwrap();
    assert!(applied.contains("<cpu mode='host-model'/>"), "{applied}");
    assert!(applied.contains("cache='none' io='native'"), "{applied}");
    assert!(text(&out.stdout).contains("web: defined; previous definition saved as "));

    let out = e.run(&["revert", "--list", "web"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );

    let out = e.run(&["revert", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(e.path("defs/web.xml")).unwrap(), GUEST);
}

#[test]
fn libvirt_failures_exit_4_with_one_line() {
    let e = Env::new();
    let policy = e.path("policy.yaml").display().to_string();
    let host = fixture();
    let args = [
        "apply",
        "--all",
        "--dry-run",
        "--policy",
        &policy,
        "--host-root",
        &host,
    ];

    let out = e
        .kvmtune(&args)
        .env("KVMTUNE_VIRSH", "/nonexistent/virsh")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        text(&out.stderr),
        "kvmtune: virsh not found (/nonexistent/virsh): install libvirt-clients (Debian) or libvirt-client (RPM)\n"
    );

    let out = e
        .kvmtune(&args)
        .env(
            "FAKE_VIRSH_FAIL",
            "error: failed to connect to the hypervisor\\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied\\n",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("kvmtune: libvirt at qemu:///system refused access: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    let out = e.run(&["revert", "--connect", "qemu:///session", "nope"]);
    assert_eq!(out.status.code(), Some(3));

    let out = e.run(&["apply"]);
    assert_eq!(out.status.code(), Some(2), "GUEST or --all is required");
    let out = e.run(&["apply", "--all", "web"]);
    assert_eq!(out.status.code(), Some(2), "--all excludes names");
}

#[test]
fn status_is_plain_when_piped_and_json_on_request() {
    let e = Env::new();
    let policy = e.path("policy.yaml").display().to_string();
    let host = fixture();
    let out = e.run(&["status", "--policy", &policy, "--host-root", &host]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("host — 2 sockets, 2 nodes, 16 cores, 32 threads;"),
        "{stdout}"
    );
    assert!(!stdout.contains('\x1b'));
    assert!(
        stdout.contains("(absent, 0 entries) agrees with libvirt"),
        "{stdout}"
    );

    let out = e.run(&[
        "status",
        "--color",
        "always",
        "--policy",
        &policy,
        "--host-root",
        &host,
    ]);
    assert!(text(&out.stdout).contains("\x1b[32mfree\x1b[0m"));

    let out = e.run(&[
        "status",
        "--json",
        "--policy",
        &policy,
        "--host-root",
        &host,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["host"]["nodes"][1]["cpus"], "8-15,24-31");

    let out = e.run(&["status", "--policy", &policy, "--host-root", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr).lines().count(), 1);
}

#[test]
fn host_check_and_apply_on_a_tree() {
    let e = Env::new();
    let root = e.path("root");
    // The fixture's CPUs and nodes, plus KSM on and THP madvise.
    let status = Command::new("cp")
        .arg("-r")
        .arg(fixture())
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    fs::create_dir_all(root.join("sys/kernel/mm/ksm")).unwrap();
    fs::write(root.join("sys/kernel/mm/ksm/run"), "1\n").unwrap();
    fs::create_dir_all(root.join("sys/kernel/mm/transparent_hugepage")).unwrap();
    fs::write(
        root.join("sys/kernel/mm/transparent_hugepage/enabled"),
        "always [madvise] never\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("proc")).unwrap();
    fs::write(root.join("proc/mounts"), "proc /proc proc rw 0 0\n").unwrap();
    let policy = e.path("policy.yaml").display().to_string();
    let root_s = root.display().to_string();
    let args = ["--policy", &policy, "--host-root", &root_s];

    let out = e.run(&[&["host", "check"][..], &args].concat());
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("differs      [3.1] ksm"), "{stdout}");
    assert!(
        stdout.ends_with("4 setting(s) differ: kvmtune host apply changes them\n"),
        "{stdout}"
    );

    let out = e.run(&[&["host", "apply", "--dry-run"][..], &args].concat());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs::read_to_string(root.join("sys/kernel/mm/ksm/run")).unwrap(),
        "1\n"
    );

    // modprobe/mount are not run against a tree: those two fail, the files change.
    let out = e.run(&[&["host", "apply"][..], &args].concat());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("changed ksm: 1 (merging) → 0 (stopped)"),
        "{stdout}"
    );
    assert!(stdout.contains("changed thp: madvise → always"), "{stdout}");
    assert!(stdout.contains("failed  vhost_net: "), "{stdout}");
    assert!(
        stdout.contains("would change this machine, not the --host-root tree"),
        "{stdout}"
    );
    assert!(
        !root.join("dev/hugepages").exists()
            || fs::read_dir(root.join("dev/hugepages"))
                .unwrap()
                .next()
                .is_none()
    );
    assert_eq!(
        fs::read_to_string(root.join("sys/kernel/mm/ksm/run")).unwrap(),
        "0"
    );

    let out = e.run(&[&["host", "check", "--json"][..], &args].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ksm = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "ksm")
        .unwrap();
    assert_eq!(ksm["state"], "ok");
}
