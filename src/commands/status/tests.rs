//! What `status` reads before building: vCPU thread affinity from a hand-made
//! /proc, and the ledger file (absent, unparsable, present).

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
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

    let threads = read_threads(proc.path(), &live);
    assert_eq!(threads["runtime"], vec![Some(set("2")), Some(set("18"))]);
    // A guest whose threads /proc does not have: one unknown per vCPU.
    assert_eq!(threads["absent"], vec![None]);
    // Without a QEMU pid nothing is read.
    assert!(!threads.contains_key("nopid"));

    proc_thread(proc.path(), 200, 202, "0-31");
    let threads = read_threads(proc.path(), &live);
    assert_eq!(threads["runtime"], vec![Some(set("2")), Some(set("0-31"))]);
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
