//! Runtime placement of a running QEMU: CPU affinity of its vCPU, emulator and
//! iothreads, and the memory nodes of its cgroup cpuset. Used by the hook at
//! `started`, when QEMU exists but the guest has not run its first instruction,
//! and read back by `status` ([`observe`]). Every path is under a root directory
//! so tests run on fake `/proc` and cgroup trees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::readback::{self, CgroupRead, CgroupSets, Observed, ThreadRead};
use kvmtune_core::runstate::LiveGuest;

#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("thread {tid}: sched_setaffinity({cpus}) failed: {errno}")]
    SetAffinity {
        tid: u32,
        cpus: CpuSet,
        errno: nix::errno::Errno,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {value} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
}

/// Sets the CPU affinity of one thread.
pub fn set_thread_affinity(tid: u32, cpus: &CpuSet) -> Result<(), AffinityError> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus.iter() {
        set.set(cpu as usize)
            .map_err(|errno| AffinityError::SetAffinity {
                tid,
                cpus: cpus.clone(),
                errno,
            })?;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(tid).unwrap_or(i32::MAX));
    nix::sched::sched_setaffinity(pid, &set).map_err(|errno| AffinityError::SetAffinity {
        tid,
        cpus: cpus.clone(),
        errno,
    })
}

/// All thread ids of a process (`/proc/PID/task`).
pub fn threads_of(proc_root: &Path, pid: u32) -> Result<Vec<u32>, AffinityError> {
    let dir = proc_root.join(pid.to_string()).join("task");
    let entries = std::fs::read_dir(&dir).map_err(|source| AffinityError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut tids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The CPUs a thread may run on now, from `Cpus_allowed_list` in its status file.
pub fn allowed_cpus(proc_root: &Path, pid: u32, tid: u32) -> Result<CpuSet, AffinityError> {
    let path = proc_root
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string())
        .join("status");
    let text = std::fs::read_to_string(&path).map_err(|source| AffinityError::Read {
        path: path.clone(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| CpuSet::parse(v).ok())
        .ok_or_else(|| AffinityError::Read {
            path,
            source: std::io::Error::other("no Cpus_allowed_list"),
        })
}

/// How long a thread has run on a CPU, in nanoseconds (the first field of
/// `/proc/PID/task/TID/schedstat`). A vCPU thread of a guest still starting (QEMU
/// runs with `-S` until libvirt resumes it after the `started` hook) has run
/// well under a millisecond; a guest that has booted, for far longer.
pub fn run_time_ns(proc_root: &Path, pid: u32, tid: u32) -> Result<u64, AffinityError> {
    let path = proc_root
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string())
        .join("schedstat");
    let text = std::fs::read_to_string(&path).map_err(|source| AffinityError::Read {
        path: path.clone(),
        source,
    })?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| AffinityError::Read {
            path,
            source: std::io::Error::other("no run time in schedstat"),
        })
}

/// Where a process's cpuset cgroup is, for cgroup v1 (`cpuset` controller) or v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusetCgroup {
    /// The directory of the process's cgroup.
    pub dir: PathBuf,
    pub v2: bool,
}

/// Finds the cpuset cgroup directory of `pid` from `/proc/PID/cgroup` and the
/// mount table (`/proc/self/mountinfo`), all under `root`.
pub fn cpuset_cgroup(root: &Path, pid: u32) -> Option<CpusetCgroup> {
    cpuset_cgroup_at(&root.join("proc"), root, pid)
}

/// [`cpuset_cgroup`] with `/proc` read under `proc_root` and the cgroup mount
/// point taken under `fs_root`.
pub fn cpuset_cgroup_at(proc_root: &Path, fs_root: &Path, pid: u32) -> Option<CpusetCgroup> {
    let cgroup = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string(proc_root.join("self/mountinfo")).ok()?;
    // v1: "N:cpuset:/machine/qemu-1-g.libvirt-qemu/emulator"; v2: "0::/machine.slice/...".
    let v1 = cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpuset")
            .then(|| path.to_string())
    });
    let (path, v2) = match v1 {
        Some(p) => (p, false),
        None => (
            cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))?,
            true,
        ),
    };
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        let fstype = fields.next()?;
        let _source = fields.next()?;
        let options = fields.next().unwrap_or("");
        let mount_point = left.split_whitespace().nth(4)?;
        let matches = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "cpuset")
        };
        matches.then(|| mount_point.to_string())
    })?;
    let rel = path.trim_start_matches('/');
    Some(CpusetCgroup {
        dir: fs_root.join(mount.trim_start_matches('/')).join(rel),
        v2,
    })
}

/// Narrows the memory nodes of a guest's cgroup and its sub-cgroups (vcpuN,
/// emulator, iothreadN) to `nodes`. Children first: a parent's `cpuset.mems` may not
/// be narrowed below what its children hold.
pub fn set_cgroup_mems(guest_dir: &Path, nodes: &CpuSet) -> Result<Vec<PathBuf>, AffinityError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(guest_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cpuset.mems").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.push(guest_dir.to_path_buf());
    let value = nodes.to_string();
    let mut written = Vec::new();
    for dir in dirs {
        let file = dir.join("cpuset.mems");
        std::fs::write(&file, &value).map_err(|source| AffinityError::Write {
            path: file.clone(),
            value: value.clone(),
            source,
        })?;
        written.push(file);
    }
    Ok(written)
}

/// A thread's name (`comm`): QEMU names vCPU threads `CPU N/KVM` (`/TCG`) and
/// iothreads `IO iothreadN`.
pub fn thread_name(proc_root: &Path, pid: u32, tid: u32) -> Option<String> {
    let path = proc_root
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string())
        .join("comm");
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Sets the CPUs of one of a guest's sub-cgroups (`vcpuN`, `emulator`): libvirt
/// writes a pinned vCPU's pin there, and the kernel refuses an affinity outside it.
/// A missing directory (no cgroup for it) is not an error.
pub fn set_cgroup_cpus(dir: &Path, cpus: &CpuSet) -> Result<(), AffinityError> {
    let file = dir.join("cpuset.cpus");
    if !file.exists() {
        return Ok(());
    }
    let value = cpus.to_string();
    std::fs::write(&file, &value).map_err(|source| AffinityError::Write {
        path: file.clone(),
        value,
        source,
    })
}

/// The guest's cgroup directory: the process cgroup may be a leaf (`.../emulator`)
/// under the guest's own (`.../qemu-1-NAME.libvirt-qemu`); libvirt names the
/// latter after the guest.
pub fn guest_cgroup_dir(process_dir: &Path) -> PathBuf {
    let leaf = process_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if leaf == "emulator" || leaf.starts_with("vcpu") || leaf.starts_with("iothread") {
        process_dir.parent().unwrap_or(process_dir).to_path_buf()
    } else {
        process_dir.to_path_buf()
    }
}

/// The effective CPUs and memory nodes of one cgroup directory (v2
/// `cpuset.cpus.effective`, v1 `cpuset.effective_cpus`; `None` where unreadable).
pub fn cgroup_sets(dir: &Path, v2: bool) -> CgroupSets {
    let (cpus, mems) = if v2 {
        ("cpuset.cpus.effective", "cpuset.mems.effective")
    } else {
        ("cpuset.effective_cpus", "cpuset.effective_mems")
    };
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| CpuSet::parse(text.trim()).ok())
    };
    CgroupSets {
        cpus: read(cpus),
        mems: read(mems),
    }
}

/// A guest's cpuset cgroup (found from its QEMU process's) and its `emulator`,
/// `vcpuN` and `iothreadN` sub-cgroups; `None` when it has no cpuset files.
pub fn read_cgroup(process: &CpusetCgroup) -> Option<CgroupRead> {
    let dir = guest_cgroup_dir(&process.dir);
    let own = cgroup_sets(&dir, process.v2);
    if own.cpus.is_none() && own.mems.is_none() {
        return None;
    }
    let children = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let ours = name == "emulator"
                        || name.starts_with("vcpu")
                        || name.starts_with("iothread");
                    ours.then(|| (name, cgroup_sets(&e.path(), process.v2)))
                })
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default();
    Some(CgroupRead {
        dir: dir.display().to_string(),
        own,
        children,
    })
}

/// What a running guest's QEMU shows, for `status`: every thread by role (as
/// the hook's `started` sorts them) with its `Cpus_allowed_list`, the first
/// `vcpus` vCPUs by number, and its cpuset cgroup. `/proc` is read under
/// `proc_root`, the cgroup mount point under `fs_root`. `None` without a QEMU pid.
pub fn observe(
    proc_root: &Path,
    fs_root: &Path,
    guest: &LiveGuest,
    vcpus: u32,
) -> Option<Observed> {
    let pid = guest.qemu_pid?;
    let (tids, tasks_error) = match threads_of(proc_root, pid) {
        Ok(tids) => (tids, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let named: Vec<(u32, String)> = tids
        .iter()
        .map(|tid| (*tid, thread_name(proc_root, pid, *tid).unwrap_or_default()))
        .collect();
    let roles = readback::classify(&guest.vcpu_tids, &guest.iothread_tids, &named);
    let name_of = |tid: u32| {
        named
            .iter()
            .find(|(t, _)| *t == tid)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };
    let thread = |tid: u32| ThreadRead {
        tid,
        name: name_of(tid),
        cpus: allowed_cpus(proc_root, pid, tid).ok(),
    };
    Some(Observed {
        vcpus: (0..vcpus)
            .map(|v| {
                let tid = roles.vcpus.get(&v)?;
                allowed_cpus(proc_root, pid, *tid).ok()
            })
            .collect(),
        emulator: roles.others.iter().map(|tid| thread(*tid)).collect(),
        iothreads: roles
            .iothreads
            .iter()
            .map(|(id, tid)| (*id, thread(*tid)))
            .collect(),
        tasks_error,
        cgroup: cpuset_cgroup_at(proc_root, fs_root, pid).and_then(|cg| read_cgroup(&cg)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_cpuset_cgroup_of_a_qemu_process() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/42")).unwrap();
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(
            root.join("proc/42/cgroup"),
            "12:cpuset:/machine/qemu-1-g.libvirt-qemu/emulator\n0::/\n",
        )
        .unwrap();
        std::fs::write(
            root.join("proc/self/mountinfo"),
            "30 25 0:26 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset\n\
             31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        let cg = cpuset_cgroup(root, 42).unwrap();
        assert!(!cg.v2);
        assert_eq!(
            cg.dir,
            root.join("sys/fs/cgroup/cpuset/machine/qemu-1-g.libvirt-qemu/emulator")
        );
        assert_eq!(
            guest_cgroup_dir(&cg.dir),
            root.join("sys/fs/cgroup/cpuset/machine/qemu-1-g.libvirt-qemu")
        );
    }

    #[test]
    fn narrows_children_before_parent() {
        let dir = tempfile::tempdir().unwrap();
        let guest = dir.path().join("qemu-1-g.libvirt-qemu");
        for sub in ["vcpu0", "emulator"] {
            std::fs::create_dir_all(guest.join(sub)).unwrap();
            std::fs::write(guest.join(sub).join("cpuset.mems"), "0-1").unwrap();
        }
        std::fs::write(guest.join("cpuset.mems"), "0-1").unwrap();
        let written = set_cgroup_mems(&guest, &CpuSet::single(1)).unwrap();
        assert_eq!(written.last().unwrap(), &guest.join("cpuset.mems"));
        assert_eq!(
            std::fs::read_to_string(guest.join("vcpu0/cpuset.mems")).unwrap(),
            "1"
        );
    }

    #[test]
    fn sets_and_reads_back_own_thread_affinity() {
        let tid = nix::unistd::gettid().as_raw() as u32;
        let pid = std::process::id();
        let before = allowed_cpus(Path::new("/proc"), pid, tid).unwrap();
        let one = CpuSet::single(before.first().unwrap());
        set_thread_affinity(tid, &one).unwrap();
        assert_eq!(allowed_cpus(Path::new("/proc"), pid, tid).unwrap(), one);
        set_thread_affinity(tid, &before).unwrap();
        assert!(matches!(
            set_thread_affinity(tid, &CpuSet::single(8000)),
            Err(AffinityError::SetAffinity { .. })
        ));
    }
}
