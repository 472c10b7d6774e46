//! Moves a running process's resident memory onto a set of NUMA nodes, once:
//! `migrate_pages(2)` from every other node that holds some, the kernel walking
//! only the pages that exist. It binds nothing: the process's memory policy is
//! untouched, so later allocations still follow the kernel's default (local to the
//! allocating thread, falling back to other nodes). The hook starts it in a
//! detached child ([`start_in_background`]) so a large guest never holds up
//! libvirt; where the memory is, before and after, comes from
//! `kvmtune_core::numa_maps`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::numa_maps::{self, MoveReport, Tally};

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("migrate_pages(pid {pid}, {from} -> {to}) failed: {errno}")]
    Syscall {
        pid: u32,
        from: CpuSet,
        to: CpuSet,
        errno: nix::errno::Errno,
    },
    #[error(
        "pid {pid} is not the QEMU of guest '{guest}' (its command line lacks the guest's -name)"
    )]
    NotTheGuest { pid: u32, guest: String },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// The kernel's page migration, a trait so the reporting is tested on fixture
/// trees without moving anything.
pub trait Migrate {
    /// Moves `pid`'s pages on `from` to `to`; returns how many pages could not
    /// be moved.
    fn migrate(&mut self, pid: u32, from: &CpuSet, to: &CpuSet) -> Result<u64, MoveError>;
}

/// `migrate_pages(2)` on the running kernel.
pub struct Kernel;

/// Node masks of 1024 bits (the kernel's MAX_NUMNODES is at most that).
const MASK_WORDS: usize = 16;

fn node_mask(nodes: &CpuSet) -> [libc::c_ulong; MASK_WORDS] {
    let mut mask = [0; MASK_WORDS];
    let bits = libc::c_ulong::BITS as usize;
    for n in nodes
        .iter()
        .map(|n| n as usize)
        .filter(|n| *n < MASK_WORDS * bits)
    {
        mask[n / bits] |= 1 << (n % bits);
    }
    mask
}

impl Migrate for Kernel {
    fn migrate(&mut self, pid: u32, from: &CpuSet, to: &CpuSet) -> Result<u64, MoveError> {
        let old = node_mask(from);
        let new = node_mask(to);
        // The kernel reads `maxnode - 1` bits (a historic off-by-one).
        let maxnode = (MASK_WORDS * libc::c_ulong::BITS as usize + 1) as libc::c_ulong;
        // SAFETY: `migrate_pages(pid, maxnode, old_nodes, new_nodes)` reads
        // `(maxnode - 1) / BITS` words from each mask; both are arrays of exactly
        // that many words, alive across the call. Nothing is written to our
        // memory.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::syscall(
                libc::SYS_migrate_pages,
                libc::c_long::from(i32::try_from(pid).unwrap_or(i32::MAX)),
                maxnode,
                old.as_ptr(),
                new.as_ptr(),
            )
        };
        u64::try_from(rc).map_err(|_| MoveError::Syscall {
            pid,
            from: from.clone(),
            to: to.clone(),
            errno: nix::errno::Errno::last(),
        })
    }
}

/// `/proc/PID/maps` and `/proc/PID/numa_maps`, joined.
pub fn read_mappings(proc_root: &Path, pid: u32) -> Result<Vec<numa_maps::Mapping>, MoveError> {
    let dir = proc_root.join(pid.to_string());
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| MoveError::Read { path, source })
    };
    let maps = read("maps")?;
    let numa = read("numa_maps")?;
    Ok(numa_maps::parse(&maps, &numa))
}

/// Where `pid`'s resident anonymous memory is, relative to `targets`.
pub fn tally(proc_root: &Path, pid: u32, targets: &CpuSet) -> Result<Tally, MoveError> {
    Ok(Tally::of(&read_mappings(proc_root, pid)?, targets))
}

/// Moves `pid`'s resident anonymous memory on other nodes onto `targets` (the
/// kernel maps each source node to one target, in turn), and reads `numa_maps`
/// again: the report says where the memory is now.
pub fn move_off_nodes(
    proc_root: &Path,
    pid: u32,
    targets: &CpuSet,
    kernel: &mut impl Migrate,
) -> Result<MoveReport, MoveError> {
    let t0 = Instant::now();
    let mappings = read_mappings(proc_root, pid)?;
    let before = Tally::of(&mappings, targets);
    let from = numa_maps::nodes_off(&mappings, targets);
    let not_moved_pages = if from.is_empty() || targets.is_empty() {
        0
    } else {
        kernel.migrate(pid, &from, targets)?
    };
    let after = tally(proc_root, pid, targets).unwrap_or_default();
    Ok(MoveReport {
        targets: targets.clone(),
        before,
        after,
        not_moved_pages,
        elapsed_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Whether `pid` is the QEMU of `guest`: libvirt names it on the command line
/// (`-name guest=NAME,debug-threads=on`, a comma in the name doubled).
pub fn is_guest_qemu(proc_root: &Path, pid: u32, guest: &str) -> bool {
    let Ok(cmdline) = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")) else {
        return false;
    };
    let args: Vec<&str> = cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .collect();
    args.windows(2)
        .filter(|w| w[0] == "-name")
        .filter_map(|w| w[1].strip_prefix("guest="))
        .any(|v| qemu_option_value(v) == guest)
}

/// The first value of a QEMU option list: up to the first single comma, a
/// doubled comma standing for one.
fn qemu_option_value(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
            } else {
                break;
            }
        }
        out.push(c);
    }
    out
}

/// Starts `PROGRAM move-memory --guest GUEST --pid PID --nodes NODES` detached
/// (own process group, no stdin/stdout/stderr: libvirt reads the hook's output to
/// its end) and returns its pid without waiting.
pub fn start_in_background(
    program: &Path,
    guest: &str,
    pid: u32,
    targets: &CpuSet,
) -> Result<u32, MoveError> {
    use std::os::unix::process::CommandExt;
    let child = Command::new(program)
        .args(["move-memory", "--guest", guest])
        .args(["--pid", &pid.to_string(), "--nodes", &targets.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| MoveError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    // Not waited for: the child outlives the hook (init reaps it).
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel over a fixture /proc/42: moves the anonymous pages of the
    /// source nodes in `numa_maps` to the first target, and records the call.
    struct Fake {
        dir: PathBuf,
        calls: Vec<(CpuSet, CpuSet)>,
        not_moved: u64,
    }

    impl Migrate for Fake {
        fn migrate(&mut self, _: u32, from: &CpuSet, to: &CpuSet) -> Result<u64, MoveError> {
            self.calls.push((from.clone(), to.clone()));
            let path = self.dir.join("numa_maps");
            let text = std::fs::read_to_string(&path).unwrap();
            let target = to.first().unwrap();
            let moved: Vec<String> = text
                .lines()
                .map(|l| {
                    if !l.contains("anon=") {
                        return l.to_string();
                    }
                    let mut per: std::collections::BTreeMap<u32, u64> = Default::default();
                    let mut words: Vec<String> = Vec::new();
                    for w in l.split_whitespace() {
                        match w.strip_prefix('N').and_then(|r| r.split_once('=')) {
                            Some((n, c)) => {
                                let n: u32 = n.parse().unwrap();
                                let to = if from.contains(n) { target } else { n };
                                *per.entry(to).or_default() += c.parse::<u64>().unwrap();
                            }
                            None => words.push(w.to_string()),
                        }
                    }
                    let last = words.pop().unwrap();
                    words.extend(per.iter().map(|(n, c)| format!("N{n}={c}")));
                    words.push(last);
                    words.join(" ")
                })
                .collect();
            std::fs::write(&path, moved.join("\n") + "\n").unwrap();
            Ok(self.not_moved)
        }
    }

    fn fixture(numa_maps: &str) -> (tempfile::TempDir, Fake) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("maps"),
            "55d0c0000000-55d0c0001000 r-xp 00000000 fe:01 1 /usr/bin/qemu\n\
             7f0000000000-7f0004000000 rw-p 00000000 00:00 0\n",
        )
        .unwrap();
        std::fs::write(p.join("numa_maps"), numa_maps).unwrap();
        let fake = Fake {
            dir: p,
            calls: Vec::new(),
            not_moved: 0,
        };
        (dir, fake)
    }

    fn set(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    const SPLIT: &str = "55d0c0000000 default file=/usr/bin/qemu mapped=1 N2=1 kernelpagesize_kB=4\n\
        7f0000000000 default anon=16384 dirty=16384 N0=8000 N1=384 N3=8000 kernelpagesize_kB=4\n";

    #[test]
    fn memory_on_other_nodes_is_moved_from_exactly_those_nodes() {
        let (dir, mut fake) = fixture(SPLIT);
        let r = move_off_nodes(dir.path(), 42, &set("1"), &mut fake).unwrap();
        // Node 2 holds only file pages (the binary): not a source.
        assert_eq!(fake.calls, vec![(set("0,3"), set("1"))]);
        assert_eq!((r.before.on, r.before.off), (384 * 4096, 16000 * 4096));
        assert_eq!((r.after.on, r.after.off), (16384 * 4096, 0));
        assert_eq!(
            r.to_string(),
            format!(
                "memory moved to node(s) 1 once in {} ms: 100.0% of 64 MiB there now (2.3% before)",
                r.elapsed_ms
            )
        );
    }

    #[test]
    fn memory_already_there_is_not_touched_and_refusals_are_reported() {
        let (dir, mut fake) = fixture(SPLIT);
        let r = move_off_nodes(dir.path(), 42, &set("0-1,3"), &mut fake).unwrap();
        assert!(fake.calls.is_empty());
        assert_eq!(
            r.to_string(),
            "memory already on node(s) 0-1,3 (64 MiB resident): nothing to move"
        );
        fake.not_moved = 7;
        let r = move_off_nodes(dir.path(), 42, &set("1"), &mut fake).unwrap();
        assert!(
            r.to_string()
                .ends_with("; the kernel could not move 7 page(s)"),
            "{r}"
        );
    }

    #[test]
    fn a_process_without_numa_maps_is_an_error_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let err = move_off_nodes(dir.path(), 42, &set("1"), &mut Kernel).unwrap_err();
        assert!(err.to_string().contains("maps"), "{err}");
    }

    #[test]
    fn node_masks_have_one_bit_per_node() {
        let m = node_mask(&set("0,3,64,1023,5000"));
        assert_eq!((m[0], m[1], m[15]), (0b1001, 1, 1 << 63));
    }

    #[test]
    fn the_real_kernel_moves_nothing_from_no_node() {
        // This process, node 1 to node 0: on a one-node host nothing to move.
        let pid = std::process::id();
        match Kernel.migrate(pid, &set("1"), &set("0")) {
            Ok(n) => assert_eq!(n, 0),
            // A kernel without NUMA support, or a sandbox.
            Err(MoveError::Syscall { errno, .. }) => {
                eprintln!("note: migrate_pages unavailable here ({errno}); skipped")
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_guest_is_known_by_its_qemu_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("cmdline"),
            b"/usr/bin/qemu-system-x86_64\0-name\0guest=a,,b,debug-threads=on\0-S\0",
        )
        .unwrap();
        assert!(is_guest_qemu(dir.path(), 42, "a,b"));
        assert!(!is_guest_qemu(dir.path(), 42, "a"));
        assert!(!is_guest_qemu(dir.path(), 42, "a,b,debug-threads=on"));
        assert!(!is_guest_qemu(dir.path(), 43, "a,b"));
    }
}
