//! host check/apply on temp trees built from a real sysfs snapshot.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::*;
use crate::command::{Output, RunError, Runner};

/// Copies a directory tree (regular files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// A 2-CPU host (the Hyper-V snapshot, with its IRQs) plus a virtio NIC, disks of
/// every kind, KSM, THP, huge pages, mounts and an irqbalance config, all untuned.
fn untuned() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("tests/data/hosts/hyperv-vm-xeon-w2155-2vcpu-with-irq");
    copy_tree(&fixture, root);
    // A virtio NIC whose queues are IRQs 24 and 25, an Intel NIC with MSI-X 40-41.
    let mut interrupts = fs::read_to_string(root.join("proc/interrupts")).unwrap();
    interrupts.push_str(" 24:   1   2   PCI-MSI 49152-edge      virtio2-input.0\n");
    interrupts.push_str(" 25:   1   2   PCI-MSI 49153-edge      virtio2-output.0\n");
    interrupts.push_str(" 26:   1   2   PCI-MSI 49154-edge      virtio3-req.0\n");
    interrupts.push_str(" 40:   1   2   IR-PCI-MSI 1-edge      eth1-TxRx-0\n");
    interrupts.push_str(" 41:   1   2   IR-PCI-MSI 2-edge      eth1-TxRx-1\n");
    fs::write(root.join("proc/interrupts"), interrupts).unwrap();
    for n in [24, 25, 26, 40, 41] {
        put(root, &format!("proc/irq/{n}/smp_affinity_list"), "0-1\n");
    }
    put(
        root,
        "sys/devices/pci0000:00/0000:00:03.0/virtio2/vendor",
        "0x1af4\n",
    );
    fs::create_dir_all(root.join("sys/class/net/eth0")).unwrap();
    std::os::unix::fs::symlink(
        "../../../devices/pci0000:00/0000:00:03.0/virtio2",
        root.join("sys/class/net/eth0/device"),
    )
    .unwrap();
    put(
        root,
        "sys/devices/pci0000:00/0000:00:04.0/msi_irqs/40",
        "msix\n",
    );
    put(
        root,
        "sys/devices/pci0000:00/0000:00:04.0/msi_irqs/41",
        "msix\n",
    );
    fs::create_dir_all(root.join("sys/class/net/eth1")).unwrap();
    std::os::unix::fs::symlink(
        "../../../devices/pci0000:00/0000:00:04.0",
        root.join("sys/class/net/eth1/device"),
    )
    .unwrap();
    fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();

    put(root, "sys/kernel/mm/ksm/run", "1\n");
    put(
        root,
        "sys/kernel/mm/transparent_hugepage/enabled",
        "always [madvise] never\n",
    );
    put(
        root,
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "0\n",
    );
    put(
        root,
        "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "0\n",
    );
    put(
        root,
        "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
        "0\n",
    );
    put(
        root,
        "proc/mounts",
        "proc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n",
    );
    put(root, "proc/modules", "kvm_intel 409600 0 - Live 0x0\n");
    for (dev, rot, sched) in [
        ("sda", "1", "[mq-deadline] kyber bfq none"),
        ("sdb", "0", "mq-deadline kyber bfq [none]"),
        ("nvme0n1", "0", "[none] mq-deadline"),
        ("vdc", "1", "[mq-deadline] none"),
    ] {
        fs::create_dir_all(root.join(format!("sys/block/{dev}/device"))).unwrap();
        put(
            root,
            &format!("sys/block/{dev}/queue/rotational"),
            &format!("{rot}\n"),
        );
        put(
            root,
            &format!("sys/block/{dev}/queue/scheduler"),
            &format!("{sched}\n"),
        );
    }
    put(
        root,
        "sys/block/loop0/queue/scheduler",
        "[none] mq-deadline\n",
    );
    put(
        root,
        "etc/default/irqbalance",
        "#Configuration for the irqbalance daemon\nIRQBALANCE_ONESHOT=0\nIRQBALANCE_BANNED_CPUS=00000000\nOPTIONS=\"\"\n",
    );
    dir
}

fn policy(reserved: &str) -> Policy {
    let mut p = Policy::default();
    p.host.reserved_cpus = CpuSet::parse(reserved).unwrap();
    p
}

fn item<'a>(items: &'a [Item], name: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no item {name}: {items:#?}"))
}

/// Pretends to be modprobe and mount by changing the tree the way they would.
struct FakeTools {
    root: PathBuf,
    calls: RefCell<Vec<String>>,
    fail: bool,
}

impl Runner for FakeTools {
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError> {
        let name = program.file_name().unwrap().to_string_lossy().to_string();
        self.calls
            .borrow_mut()
            .push(format!("{name} {}", args.join(" ")));
        if self.fail {
            return Ok(Output::failed(
                1,
                format!("{name}: operation not permitted\n"),
            ));
        }
        match name.as_str() {
            "modprobe" => fs::create_dir_all(self.root.join("sys/module/vhost_net")).unwrap(),
            "mount" => {
                let mut m = fs::read_to_string(self.root.join("proc/mounts")).unwrap();
                m.push_str(&format!("hugetlbfs {} hugetlbfs rw 0 0\n", args[3]));
                fs::write(self.root.join("proc/mounts"), m).unwrap();
            }
            other => panic!("unexpected program {other}"),
        }
        Ok(Output::ok(""))
    }
}

#[test]
fn check_reports_every_setting_with_current_and_wanted() {
    let dir = untuned();
    let items = check(dir.path(), &policy("1"), &HostTuning::default()).unwrap();
    let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "irq-cpus",
            "nic-irqs eth0",
            "nic-irqs eth1",
            "irqbalance",
            "ksm",
            "thp",
            "hugepages",
            "hugetlbfs",
            "io-scheduler nvme0n1",
            "io-scheduler sda",
            "io-scheduler sdb",
            "io-scheduler vdc",
            "vhost_net"
        ]
    );
    let eth0 = item(&items, "nic-irqs eth0");
    assert_eq!(
        (eth0.state, eth0.current.as_str(), eth0.wanted.as_str()),
        (State::Differs, "0-1 (IRQ 24-25)", "1")
    );
    assert_eq!(item(&items, "nic-irqs eth1").current, "0-1 (IRQ 40-41)");
    let irqb = item(&items, "irqbalance");
    assert_eq!(irqb.state, State::Differs);
    assert_eq!(irqb.current, "IRQBALANCE_BANNED_CPUS=00000000 ()");
    assert_eq!(irqb.wanted, "IRQBALANCE_BANNED_CPULIST=0");
    assert_eq!(
        (
            item(&items, "ksm").state,
            item(&items, "ksm").current.as_str()
        ),
        (State::Differs, "1 (merging)")
    );
    assert_eq!(
        (
            item(&items, "thp").current.as_str(),
            item(&items, "thp").wanted.as_str()
        ),
        ("madvise", "always")
    );
    let hp = item(&items, "hugepages");
    assert_eq!(
        (hp.state, hp.current.as_str()),
        (State::Skipped, "host: 2M 0 (0 free), 1G 0 (? free)")
    );
    assert_eq!(item(&items, "hugetlbfs").state, State::Differs);
    assert_eq!(item(&items, "io-scheduler sda").state, State::Differs);
    assert_eq!(item(&items, "io-scheduler sda").wanted, "bfq");
    assert_eq!(item(&items, "io-scheduler sdb").wanted, "mq-deadline");
    assert_eq!(item(&items, "io-scheduler nvme0n1").state, State::Ok);
    let vdc = item(&items, "io-scheduler vdc");
    assert_eq!(vdc.state, State::Unsupported);
    assert_eq!(
        vdc.detail,
        "rotational disk; the kernel offers mq-deadline none (modprobe bfq?)"
    );
    assert_eq!(item(&items, "vhost_net").state, State::Differs);

    let text = render(&items);
    assert!(
        text.contains(
            "differs      [1.3] nic-irqs eth0         0-1 (IRQ 24-25) → wanted 1  (NIC interrupts"
        ),
        "{text}"
    );
    assert!(
        text.contains("ok           [2.2] io-scheduler nvme0n1  none  (nvme disk)"),
        "{text}"
    );
}

#[test]
fn apply_fixes_what_differs_and_a_second_apply_changes_nothing() {
    let dir = untuned();
    let root = dir.path();
    let tools = FakeTools {
        root: root.to_path_buf(),
        calls: RefCell::new(Vec::new()),
        fail: false,
    };
    let (outcomes, after) = apply(root, &policy("1"), &HostTuning::default(), &tools).unwrap();
    let changed: Vec<(&str, &str, &str)> = outcomes
        .iter()
        .map(|o| {
            assert_eq!(o.problem, None, "{o:?}");
            (o.name.as_str(), o.before.as_str(), o.after.as_str())
        })
        .collect();
    assert_eq!(
        changed,
        [
            ("nic-irqs eth0", "0-1 (IRQ 24-25)", "1 (IRQ 24-25)"),
            ("nic-irqs eth1", "0-1 (IRQ 40-41)", "1 (IRQ 40-41)"),
            (
                "irqbalance",
                "IRQBALANCE_BANNED_CPUS=00000000 ()",
                "IRQBALANCE_BANNED_CPULIST=0"
            ),
            ("ksm", "1 (merging)", "0 (stopped)"),
            ("thp", "madvise", "always"),
            (
                "hugetlbfs",
                "not mounted",
                &format!("mounted on {}/dev/hugepages", root.display())
            ),
            ("io-scheduler sda", "mq-deadline", "bfq"),
            ("io-scheduler sdb", "none", "mq-deadline"),
            ("vhost_net", "not loaded", "loaded"),
        ]
    );
    assert!(
        after.iter().all(|i| i.state != State::Differs),
        "{after:#?}"
    );
    // Only the NIC's own IRQs moved.
    assert_eq!(
        fs::read_to_string(root.join("proc/irq/26/smp_affinity_list")).unwrap(),
        "0-1\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("proc/irq/24/smp_affinity_list")).unwrap(),
        "1"
    );
    // The irqbalance config kept its other lines.
    assert_eq!(
        fs::read_to_string(root.join("etc/default/irqbalance")).unwrap(),
        "#Configuration for the irqbalance daemon\nIRQBALANCE_ONESHOT=0\n# IRQBALANCE_BANNED_CPUS=00000000  # kvmtune: replaced by IRQBALANCE_BANNED_CPULIST\nOPTIONS=\"\"\n# kvmtune: keep IRQs off the guests' CPUs (TUNING-RULES 1.3)\nIRQBALANCE_BANNED_CPULIST=0\n"
    );
    assert_eq!(
        tools.calls.borrow().clone(),
        [
            format!(
                "mount -t hugetlbfs hugetlbfs {}/dev/hugepages",
                root.display()
            ),
            "modprobe vhost_net".to_string()
        ]
    );

    let (again, _) = apply(root, &policy("1"), &HostTuning::default(), &tools).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(tools.calls.borrow().len(), 2);
}

#[test]
fn failures_are_reported_per_item() {
    let dir = untuned();
    let tools = FakeTools {
        root: dir.path().to_path_buf(),
        calls: RefCell::new(Vec::new()),
        fail: true,
    };
    let (outcomes, _) = apply(dir.path(), &policy("1"), &HostTuning::default(), &tools).unwrap();
    let vhost = outcomes.iter().find(|o| o.name == "vhost_net").unwrap();
    assert_eq!(
        vhost.problem.as_deref(),
        Some("modprobe vhost_net: modprobe: operation not permitted")
    );
    let ksm = outcomes.iter().find(|o| o.name == "ksm").unwrap();
    assert_eq!(ksm.problem, None);

    let err = carry_out(
        &Fix::Write {
            paths: vec![dir.path().join("sys/nope")],
            value: "1".into(),
        },
        &tools,
    )
    .unwrap_err();
    assert!(
        err.ends_with("sys/nope: No such file or directory (os error 2)"),
        "{err}"
    );
}

#[test]
fn irq_cpus_auto_reports_the_cpus_it_resolved_and_whether_guests_avoid_them() {
    let dir = untuned();
    // One IRQ bound to one CPU (as the multi-NUMA VM case irqcheck does).
    put(dir.path(), "proc/irq/24/smp_affinity_list", "1\n");
    let mut policy = Policy::default();
    policy.host.irq_cpus = IrqCpus::Auto;
    let host = crate::sysfs::read_host(dir.path()).unwrap();
    assert_eq!(
        policy.irq_cpus(&host),
        CpuSet::single(1),
        "the one resolution"
    );
    let items = check(dir.path(), &policy, &HostTuning::default()).unwrap();
    let irq = item(&items, "irq-cpus");
    assert_eq!((irq.state, irq.current.as_str()), (State::Ok, "CPUs 1"));
    assert_eq!(
        irq.detail,
        "irq_cpus: auto; bound there: IRQ 24 (virtio2-input.0) on 1; guests are placed off them"
    );
    // NIC IRQs and irqbalance aim at the same CPUs.
    assert_eq!(
        item(&items, "irqbalance").wanted,
        "IRQBALANCE_BANNED_CPULIST=0"
    );
    let text = render(&items);
    assert!(
        text.contains("ok           [1.3] irq-cpus  ") && text.contains("CPUs 1  (irq_cpus: auto;"),
        "{text}"
    );

    // With the ledger: a claim made before the IRQ was bound sits on CPU 1.
    let entry = |cpus: &str| Entry {
        uuid: None,
        vcpus: CpuSet::parse(cpus)
            .unwrap()
            .iter()
            .map(CpuSet::single)
            .collect(),
        cpus: CpuSet::parse(cpus).unwrap(),
        nodes: CpuSet::single(0),
        emulator: None,
        memory_kib: 1024,
        pool: kvmtune_core::placement::Pool::Dedicated,
        claimed_at: 0,
        state: kvmtune_core::ledger::EntryState::Running,
        rule: "defaults".into(),
        floating: false,
    };
    let claims: BTreeMap<String, Entry> = [("g".to_string(), entry("0"))].into();
    let items =
        check_with_claims(dir.path(), &policy, &HostTuning::default(), Some(&claims)).unwrap();
    let irq = item(&items, "irq-cpus");
    assert_eq!(irq.state, State::Ok);
    assert!(
        irq.detail
            .ends_with("guests are placed off them, and no claimed guest's vCPU is on them"),
        "{}",
        irq.detail
    );
    let claims: BTreeMap<String, Entry> = [("g".to_string(), entry("1"))].into();
    let items =
        check_with_claims(dir.path(), &policy, &HostTuning::default(), Some(&claims)).unwrap();
    let irq = item(&items, "irq-cpus");
    assert_eq!(
        (irq.state, irq.current.as_str(), irq.wanted.as_str()),
        (
            State::Differs,
            "CPUs 1, guest 'g' on CPU 1",
            "no guest vCPU on CPUs 1"
        )
    );
    assert!(irq.fix.is_none(), "host apply does not move guests");

    // irq_cpus: none keeps no CPU; a list is reported as resolved (online only).
    policy.host.irq_cpus = IrqCpus::None;
    let items = check(dir.path(), &policy, &HostTuning::default()).unwrap();
    assert_eq!(item(&items, "irq-cpus").state, State::Skipped);
    policy.host.irq_cpus = IrqCpus::List(CpuSet::parse("1,7").unwrap());
    let items = check(dir.path(), &policy, &HostTuning::default()).unwrap();
    assert_eq!(item(&items, "irq-cpus").current, "CPUs 1");
}

#[test]
fn without_reserved_cpus_irq_items_are_skipped() {
    let dir = untuned();
    let items = check(dir.path(), &Policy::default(), &HostTuning::default()).unwrap();
    assert_eq!(item(&items, "nic-irqs").state, State::Skipped);
    assert_eq!(item(&items, "irqbalance").state, State::Skipped);
}

#[test]
fn irqbalance_not_installed_is_skipped_and_cpulist_wins_over_the_mask() {
    let dir = untuned();
    fs::remove_file(dir.path().join("etc/default/irqbalance")).unwrap();
    let items = check(dir.path(), &policy("1"), &HostTuning::default()).unwrap();
    assert_eq!(item(&items, "irqbalance").state, State::Skipped);
    put(
        dir.path(),
        "etc/sysconfig/irqbalance",
        "IRQBALANCE_BANNED_CPUS=ffffffff\nexport IRQBALANCE_BANNED_CPULIST=\"0\"\n",
    );
    let items = check(dir.path(), &policy("1"), &HostTuning::default()).unwrap();
    assert_eq!(item(&items, "irqbalance").state, State::Ok, "{items:#?}");
}

#[test]
fn missing_kernel_features_are_unsupported() {
    let dir = untuned();
    fs::remove_dir_all(dir.path().join("sys/kernel/mm/ksm")).unwrap();
    fs::remove_dir_all(dir.path().join("sys/kernel/mm/transparent_hugepage")).unwrap();
    let items = check(dir.path(), &policy("1"), &HostTuning::default()).unwrap();
    assert_eq!(item(&items, "ksm").state, State::Unsupported);
    assert_eq!(item(&items, "thp").state, State::Unsupported);
}

#[test]
fn configured_tuning_is_honoured() {
    let dir = untuned();
    let tuning_file = dir.path().join("tuning.yaml");
    fs::write(
        &tuning_file,
        "ksm: keep\nthp: madvise\nhugepages_per_node: {2M: 64, 1G: 1}\nio_scheduler: {rotational: mq-deadline, ssd: keep}\nvhost_net: false\n",
    )
    .unwrap();
    let tuning = load_tuning_file(&tuning_file).unwrap();
    let items = check(dir.path(), &policy("1"), &tuning).unwrap();
    assert_eq!(item(&items, "ksm").state, State::Skipped);
    assert_eq!(item(&items, "thp").state, State::Ok);
    assert_eq!(item(&items, "io-scheduler sda").state, State::Ok);
    assert_eq!(item(&items, "io-scheduler sdb").state, State::Skipped);
    assert_eq!(item(&items, "vhost_net").state, State::Skipped);
    let hp = item(&items, "hugepages host 2M");
    assert_eq!(
        (hp.state, hp.current.as_str(), hp.wanted.as_str()),
        (State::Differs, "0", "64")
    );
    assert_eq!(item(&items, "hugepages host 1G").state, State::Differs);

    fs::write(&tuning_file, "thp: sometimes\n").unwrap();
    let err = load_tuning_file(&tuning_file).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown variant `sometimes`"),
        "{err:#}"
    );
    fs::write(&tuning_file, "hugepages_per_node: {3X: 1}\n").unwrap();
    let err = load_tuning_file(&tuning_file).unwrap_err();
    assert!(
        format!("{err:#}")
            .ends_with("hugepages_per_node: '3X' is not a page size such as 2M or 1G"),
        "{err:#}"
    );
    fs::write(&tuning_file, "kms: off\n").unwrap();
    let _ = load_tuning_file(&tuning_file).unwrap_err();
}

#[test]
fn hugepages_per_numa_node_on_a_numa_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node");
    copy_tree(&fixture, dir.path());
    let mut tuning = HostTuning::default();
    tuning.hugepages_per_node.insert("2M".into(), 1024);
    let items = check(dir.path(), &Policy::default(), &tuning).unwrap();
    let n0 = item(&items, "hugepages node0 2M");
    assert_eq!((n0.state, n0.current.as_str()), (State::Differs, "2048"));
    let tools = FakeTools {
        root: dir.path().to_path_buf(),
        calls: RefCell::new(Vec::new()),
        fail: true,
    };
    let (outcomes, after) = apply(dir.path(), &Policy::default(), &tuning, &tools).unwrap();
    assert!(
        outcomes
            .iter()
            .any(|o| o.name == "hugepages node1 2M" && o.problem.is_none())
    );
    assert_eq!(item(&after, "hugepages node0 2M").state, State::Ok);
}

#[test]
fn page_sizes() {
    assert_eq!(page_size_kib("2M"), Some(2048));
    assert_eq!(page_size_kib("1G"), Some(1048576));
    assert_eq!(page_size_kib("2048kB"), Some(2048));
    assert_eq!(page_size_kib("0M"), None);
    assert_eq!(page_size_kib("big"), None);
}

#[test]
fn the_default_tuning_is_the_seed() {
    let t = HostTuning::default();
    assert_eq!(t.ksm, Ksm::Off);
    assert_eq!(t.thp, Thp::Always);
    assert_eq!(t.io_scheduler.nvme, "none");
    assert!(t.hugepages_per_node.is_empty());
    // The defaults round-trip through the YAML keys proposed for the policy.
    let yaml = serde_yaml_ng::to_string(&t).unwrap();
    assert_eq!(serde_yaml_ng::from_str::<HostTuning>(&yaml).unwrap(), t);
}

#[test]
fn irq_cpus_auto_sets_the_cpus_irqs_are_bound_to_aside() {
    // An IRQ bound to CPU 0 alone, `irq_cpus: auto` and no reserved CPUs: CPU 0 is
    // an IRQ CPU (placement avoids it), so host check targets it too instead of
    // saying that nothing is set aside (found by the multi-NUMA VM suite).
    let dir = untuned();
    put(dir.path(), "proc/irq/1/smp_affinity_list", "0\n");
    let items = check(dir.path(), &Policy::default(), &HostTuning::default()).unwrap();
    let nic = items
        .iter()
        .find(|i| i.name.starts_with("nic-irqs"))
        .unwrap();
    assert_ne!(nic.state, State::Skipped, "{nic:?}");
    assert!(!item(&items, "irqbalance").wanted.is_empty(), "{items:#?}");
}
