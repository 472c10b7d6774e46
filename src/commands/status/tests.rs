//! What `status` reads before building: the affinity of every QEMU thread and
//! the guest's cgroup from a hand-made /proc and cgroup tree, and the ledger file
//! (absent, unparsable, present).

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::runstate::parse_status;

fn set(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

/// A status file of a guest with `vcpus` vCPUs, threads `pid+1`…, nothing pinned.
fn status_xml(name: &str, pid: u32, vcpus: u32) -> String {
    let tids: String = (0..vcpus)
        .map(|v| format!("<vcpu id='{v}' pid='{}'/>", pid + 1 + v))
        .collect();
    format!(
        "<domstatus state='running' pid='{pid}'><vcpus>{tids}</vcpus>\
         <domain type='kvm' id='1'><name>{name}</name><memory unit='KiB'>1048576</memory>\
         <vcpu placement='static'>{vcpus}</vcpu></domain></domstatus>"
    )
}

/// /proc/PID/task/TID/status with Cpus_allowed_list.
fn proc_thread(root: &Path, pid: u32, tid: u32, cpus: &str) {
    let dir = root.join(format!("{pid}/task/{tid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("status"),
        format!("Name:\tCPU 0/KVM\nCpus_allowed_list:\t{cpus}\n"),
    )
    .unwrap();
}

#[test]
fn thread_affinity_is_read_per_vcpu_of_each_guest() {
    let proc = tempfile::tempdir().unwrap();
    proc_thread(proc.path(), 200, 201, "2");
    proc_thread(proc.path(), 200, 202, "18");
    let mut live = BTreeMap::new();
    for (name, pid, vcpus) in [("runtime", 200, 2), ("absent", 300, 1)] {
        live.insert(
            name.to_string(),
            parse_status(&status_xml(name, pid, vcpus)).unwrap(),
        );
    }
    let mut nopid = parse_status(&status_xml("nopid", 400, 1)).unwrap();
    nopid.qemu_pid = None;
    live.insert("nopid".to_string(), nopid);

    let vcpus = |o: &BTreeMap<String, Observed>, name: &str| o[name].vcpus.clone();
    let threads = read_observed(proc.path(), proc.path(), &live);
    assert_eq!(
        vcpus(&threads, "runtime"),
        vec![Some(set("2")), Some(set("18"))]
    );
    // A guest whose threads /proc does not have: one unknown per vCPU.
    assert_eq!(vcpus(&threads, "absent"), vec![None]);
    assert!(threads["absent"].tasks_error.is_some());
    // Without a QEMU pid nothing is read.
    assert!(!threads.contains_key("nopid"));

    proc_thread(proc.path(), 200, 202, "0-31");
    let threads = read_observed(proc.path(), proc.path(), &live);
    assert_eq!(
        vcpus(&threads, "runtime"),
        vec![Some(set("2")), Some(set("0-31"))]
    );
}

/// /proc/PID/task/TID/{status,comm}.
fn named_thread(root: &Path, pid: u32, tid: u32, comm: &str, cpus: &str) {
    proc_thread(root, pid, tid, cpus);
    std::fs::write(
        root.join(format!("{pid}/task/{tid}/comm")),
        format!("{comm}\n"),
    )
    .unwrap();
}

#[test]
fn emulator_threads_iothreads_and_the_v2_cgroup_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, fs) = (dir.path().join("proc"), dir.path().join("fs"));
    named_thread(&proc, 200, 200, "qemu-system-x86", "2,18");
    named_thread(&proc, 200, 201, "CPU 0/KVM", "2");
    named_thread(&proc, 200, 202, "CPU 1/KVM", "18");
    named_thread(&proc, 200, 203, "IO iothread1", "5");
    named_thread(&proc, 200, 204, "worker", "0-31");
    std::fs::create_dir_all(proc.join("self")).unwrap();
    std::fs::write(
        proc.join("200/cgroup"),
        "0::/machine.slice/machine-qemu\\x2d1\\x2druntime.scope/libvirt/emulator\n",
    )
    .unwrap();
    std::fs::write(
        proc.join("self/mountinfo"),
        "31 25 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    )
    .unwrap();
    let guest_dir =
        fs.join("sys/fs/cgroup/machine.slice/machine-qemu\\x2d1\\x2druntime.scope/libvirt");
    for (sub, cpus) in [("", "0-31"), ("emulator", "2,18"), ("vcpu1", "18")] {
        let d = guest_dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cpuset.cpus.effective"), format!("{cpus}\n")).unwrap();
        std::fs::write(d.join("cpuset.mems.effective"), "0\n").unwrap();
    }
    let mut live = BTreeMap::new();
    live.insert(
        "runtime".to_string(),
        parse_status(&status_xml("runtime", 200, 2)).unwrap(),
    );
    let o = &read_observed(&proc, &fs, &live)["runtime"];
    assert_eq!(o.vcpus, vec![Some(set("2")), Some(set("18"))]);
    let emulator: Vec<(u32, &str)> = o
        .emulator
        .iter()
        .map(|t| (t.tid, t.name.as_str()))
        .collect();
    assert_eq!(emulator, [(200, "qemu-system-x86"), (204, "worker")]);
    assert_eq!(o.emulator[1].cpus, Some(set("0-31")));
    assert_eq!(o.iothreads[&1].cpus, Some(set("5")));
    let cg = o.cgroup.as_ref().unwrap();
    assert_eq!(cg.dir, guest_dir.display().to_string());
    assert_eq!(cg.own.cpus, Some(set("0-31")));
    assert_eq!(cg.children["vcpu1"].cpus, Some(set("18")));
    assert_eq!(cg.children["emulator"].mems, Some(set("0")));
}

#[test]
fn ledger_file_absent_unparsable_or_present() {
    let run = tempfile::tempdir().unwrap();
    assert_eq!(read_ledger(run.path()), None);
    std::fs::write(run.path().join("ledger.json"), "{not json").unwrap();
    assert_eq!(read_ledger(run.path()), Some(None));
    std::fs::write(
        run.path().join("ledger.json"),
        serde_json::to_string(&Ledger::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(read_ledger(run.path()), Some(Some(Ledger::default())));
}
