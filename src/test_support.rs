//! Test support for the binary's unit tests: a thread of the test process that
//! stands for a running guest's vCPU thread, with the libvirt status file naming
//! it and the [`Roots`] pointing there, so that moves are made with
//! `sched_setaffinity` and read back from the real `/proc`.

use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use kvmtune_sys::ledger_store::Paths;
use kvmtune_sys::roots::Roots;

/// The one-vCPU domain of guest `s` that the status file holds.
pub(crate) const GUEST_XML: &str = "<domain type='kvm'>\n  <name>s</name>\n  <memory unit='MiB'>256</memory>\n  <vcpu placement='static'>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices/>\n</domain>\n";

/// Guest `s`, running: this process is its QEMU, `tid` its vCPU 0.
pub(crate) struct ThreadGuest {
    _dir: tempfile::TempDir,
    pub env: Roots,
    pub pid: u32,
    pub tid: u32,
    done: Option<Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

impl ThreadGuest {
    pub fn start() -> ThreadGuest {
        let dir = tempfile::tempdir().expect("temp dir");
        let libvirt = dir.path().join("libvirt");
        std::fs::create_dir_all(&libvirt).expect("libvirt dir");
        let (tid_tx, tid_rx) = channel();
        let (done_tx, done_rx) = channel::<()>();
        let worker = std::thread::spawn(move || {
            let tid = u32::try_from(nix::unistd::gettid().as_raw()).expect("tid");
            tid_tx.send(tid).expect("send tid");
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().expect("the thread's id");
        let pid = std::process::id();
        std::fs::write(
            libvirt.join("s.xml"),
            format!("<domstatus state='running' pid='{pid}'>\n  <vcpus>\n    <vcpu id='0' pid='{tid}'/>\n  </vcpus>\n{GUEST_XML}</domstatus>\n"),
        )
        .expect("status file");
        let env = Roots {
            policy: dir.path().join("policy.yaml"),
            // No cgroup under this root: only the thread's affinity is set.
            host_root: dir.path().to_path_buf(),
            proc_root: PathBuf::from("/proc"),
            paths: Paths {
                run_dir: dir.path().join("run"),
                libvirt_run_dir: libvirt,
            },
            syslog_socket: dir.path().join("no-syslog"),
            allow_insecure_policy: true,
            apply_runtime: true,
        };
        ThreadGuest {
            _dir: dir,
            env,
            pid,
            tid,
            done: Some(done_tx),
            worker: Some(worker),
        }
    }
}

impl Drop for ThreadGuest {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
