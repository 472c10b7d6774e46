//! Read-back verdicts on hand-made observations: a guest the hook placed on CPUs
//! 2 and 18 (node 0, emulator threads on 2,18), libvirt's cgroup v2 layout.

use super::*;
use crate::placement::Pool;

fn set(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

fn entry(emulator: Option<&str>, state: EntryState) -> Entry {
    Entry {
        uuid: None,
        cpus: set("2,18"),
        nodes: set("0"),
        vcpus: vec![set("2"), set("18")],
        emulator: emulator.map(set),
        memory_kib: 1 << 20,
        pool: Pool::Shared,
        claimed_at: 10,
        state,
        rule: "defaults".into(),
        floating: false,
    }
}

fn domain(extra: &str) -> Domain {
    Domain::parse(&format!(
        "<domain type='kvm'><name>g</name><memory unit='KiB'>1048576</memory><vcpu>2</vcpu>{extra}<os><type>hvm</type></os></domain>"
    ))
    .unwrap()
}

fn thread(tid: u32, name: &str, cpus: &str) -> ThreadRead {
    ThreadRead {
        tid,
        name: name.into(),
        cpus: Some(set(cpus)),
    }
}

/// What a correctly placed guest shows: vCPUs on 2 and 18, three emulator threads
/// on 2,18, no cgroup.
fn observed() -> Observed {
    Observed {
        vcpus: vec![Some(set("2")), Some(set("18"))],
        emulator: vec![
            thread(100, "qemu-system-x86", "2,18"),
            thread(103, "call_rcu", "2,18"),
            thread(104, "worker", "2,18"),
        ],
        ..Observed::default()
    }
}

fn cgroup(cpus: &str, mems: &str, children: &[(&str, &str, &str)]) -> CgroupRead {
    let sets = |c: &str, m: &str| CgroupSets {
        cpus: Some(set(c)),
        mems: Some(set(m)),
    };
    CgroupRead {
        dir: "/sys/fs/cgroup/machine.slice/machine-qemu\\x2d1\\x2dg.scope/libvirt".into(),
        own: sets(cpus, mems),
        children: children
            .iter()
            .map(|(n, c, m)| (n.to_string(), sets(c, m)))
            .collect(),
    }
}

struct Case {
    entry: Option<Entry>,
    domain: Domain,
    source: Source,
    vcpu_cpus: Vec<CpuSet>,
    nodes: CpuSet,
    mode: Option<MemoryMode>,
}

fn hook_placed() -> Case {
    Case {
        entry: Some(entry(Some("2,18"), EntryState::Running)),
        domain: domain(""),
        source: Source::Ledger,
        vcpu_cpus: vec![set("2"), set("18")],
        nodes: set("0"),
        mode: Some(MemoryMode::Preferred),
    }
}

fn run(c: &Case, o: Option<&Observed>) -> Vec<Readback> {
    readback(
        &Applied {
            source: c.source,
            vcpu_cpus: &c.vcpu_cpus,
            nodes: &c.nodes,
            entry: c.entry.as_ref(),
            domain: Some(&c.domain),
            memory_mode: c.mode,
        },
        o,
    )
}

fn get(r: &[Readback], aspect: Aspect) -> &Readback {
    r.iter()
        .find(|r| r.aspect == aspect)
        .unwrap_or_else(|| panic!("no {aspect:?} in {r:#?}"))
}

#[test]
fn a_guest_placed_by_the_hook_is_verified_and_preferred_memory_is_not_enforced() {
    let r = run(&hook_placed(), Some(&observed()));
    let aspects: Vec<Aspect> = r.iter().map(|r| r.aspect).collect();
    // No iothreads, no cgroup: those aspects are not shown.
    assert_eq!(
        aspects,
        [
            Aspect::VcpuThreads,
            Aspect::EmulatorThreads,
            Aspect::MemoryPolicy
        ]
    );
    let v = get(&r, Aspect::VcpuThreads);
    assert_eq!(v.state, State::Verified);
    assert_eq!(
        v.sentence(),
        "applied and verified: vCPU→CPU 0→2 1→18 (by the hook at start)"
    );
    let e = get(&r, Aspect::EmulatorThreads);
    assert_eq!(
        e.sentence(),
        "applied and verified: 3 thread(s) on CPUs 2,18 (by the hook at start)"
    );
    let m = get(&r, Aspect::MemoryPolicy);
    assert_eq!(m.state, State::NotEnforced);
    assert!(
        m.sentence()
            .starts_with("not enforced at runtime (mode preferred, node(s) 0: nothing binds it"),
        "{}",
        m.sentence()
    );
}

#[test]
fn one_emulator_thread_elsewhere_is_a_drift_naming_it() {
    let mut o = observed();
    o.emulator[2] = thread(104, "worker", "0-31");
    let r = run(&hook_placed(), Some(&o));
    let e = get(&r, Aspect::EmulatorThreads);
    assert_eq!(e.state, State::Drifted);
    assert_eq!(
        e.sentence(),
        "drifted: expected 2,18, found 0-31 (thread 104 worker)"
    );
    assert_eq!(
        e.drifts,
        vec![Drift {
            what: "thread 104 worker".into(),
            expected: set("2,18"),
            at_least: false,
            found: set("0-31"),
        }]
    );
    // The vCPUs are still fine.
    assert_eq!(get(&r, Aspect::VcpuThreads).state, State::Verified);
}

#[test]
fn a_vcpu_thread_elsewhere_drifts_and_unreadable_threads_are_not_read_back() {
    let mut o = observed();
    o.vcpus[1] = Some(set("0-31"));
    let r = run(&hook_placed(), Some(&o));
    assert_eq!(
        get(&r, Aspect::VcpuThreads).sentence(),
        "drifted: expected 18, found 0-31 (vCPU 1)"
    );
    let mut o = observed();
    o.vcpus[1] = None;
    o.emulator.iter_mut().for_each(|t| t.cpus = None);
    let r = run(&hook_placed(), Some(&o));
    assert_eq!(
        get(&r, Aspect::VcpuThreads).sentence(),
        "not read back (no readable thread for vCPU(s) 1)"
    );
    assert_eq!(get(&r, Aspect::EmulatorThreads).state, State::Unread);
    // No QEMU pid: nothing is read.
    let r = run(&hook_placed(), None);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].state, State::Unread);
}

#[test]
fn nothing_is_enforced_for_an_unpinned_guest_or_before_started() {
    let mut c = hook_placed();
    c.entry = None;
    c.source = Source::None;
    c.vcpu_cpus.clear();
    let r = run(&c, Some(&observed()));
    for aspect in [Aspect::VcpuThreads, Aspect::EmulatorThreads] {
        assert_eq!(get(&r, aspect).state, State::NotEnforced);
        assert!(get(&r, aspect).detail.contains("nobody pinned"));
    }
    let mut c = hook_placed();
    c.entry = Some(entry(Some("2,18"), EntryState::Prepared));
    c.mode = Some(MemoryMode::Strict);
    let mut o = observed();
    o.vcpus = vec![Some(set("0-31")), Some(set("0-31"))];
    let r = run(&c, Some(&o));
    for aspect in [
        Aspect::VcpuThreads,
        Aspect::EmulatorThreads,
        Aspect::MemoryPolicy,
    ] {
        assert_eq!(get(&r, aspect).state, State::NotEnforced, "{aspect:?}");
        assert!(get(&r, aspect).detail.contains("started stage has not run"));
    }
}

#[test]
fn xml_pins_are_libvirts_and_a_kept_emulatorpin_is_accepted() {
    let mut c = hook_placed();
    c.source = Source::Xml;
    c.domain = domain(
        "<cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='18'/><emulatorpin cpuset='3'/></cputune>",
    );
    let mut o = observed();
    o.emulator.iter_mut().for_each(|t| t.cpus = Some(set("3")));
    let r = run(&c, Some(&o));
    assert_eq!(
        get(&r, Aspect::VcpuThreads).detail,
        "vCPU→CPU 0→2 1→18 (by libvirt, from the XML pins)"
    );
    assert_eq!(
        get(&r, Aspect::EmulatorThreads).detail,
        "3 thread(s) on CPUs 3 (libvirt, from <emulatorpin>; the claim says 2,18)"
    );
    // The claim and the XML's pin agree: libvirt applied it.
    c.entry = Some(entry(Some("3"), EntryState::Running));
    assert_eq!(
        get(&run(&c, Some(&o)), Aspect::EmulatorThreads).detail,
        "3 thread(s) on CPUs 3 (by libvirt, from <emulatorpin>)"
    );
    // Without a claim the XML's pin is the expectation.
    c.entry = None;
    o.emulator[0].cpus = Some(set("2,18"));
    let r = run(&c, Some(&o));
    assert_eq!(
        get(&r, Aspect::EmulatorThreads).sentence(),
        "drifted: expected 3, found 2,18 (thread 100 qemu-system-x86)"
    );
}

#[test]
fn iothreads_follow_their_iothreadpin_else_the_emulator_claim() {
    let mut c = hook_placed();
    c.domain =
        domain("<iothreads>2</iothreads><cputune><iothreadpin iothread='1' cpuset='5'/></cputune>");
    let mut o = observed();
    o.iothreads.insert(1, thread(110, "IO iothread1", "5"));
    o.iothreads.insert(2, thread(111, "IO iothread2", "2,18"));
    let r = run(&c, Some(&o));
    assert_eq!(
        get(&r, Aspect::Iothreads).sentence(),
        "applied and verified: iothread→CPU 1→5 2→2,18"
    );
    o.iothreads.insert(2, thread(111, "IO iothread2", "0-31"));
    let r = run(&c, Some(&o));
    assert_eq!(
        get(&r, Aspect::Iothreads).sentence(),
        "drifted: expected 2,18, found 0-31 (iothread 2)"
    );
    o.iothreads.remove(&2);
    let r = run(&c, Some(&o));
    assert_eq!(get(&r, Aspect::Iothreads).state, State::Unread);
}

#[test]
fn strict_memory_shows_the_cgroup_nodes_or_their_drift() {
    let mut c = hook_placed();
    c.mode = Some(MemoryMode::Strict);
    let mut o = observed();
    o.cgroup = Some(cgroup(
        "0-31",
        "0",
        &[
            ("emulator", "2,18", "0"),
            ("vcpu0", "0-31", "0"),
            ("vcpu1", "0-31", "0"),
        ],
    ));
    let r = run(&c, Some(&o));
    let m = get(&r, Aspect::MemoryPolicy);
    assert_eq!(m.state, State::Verified);
    assert_eq!(
        m.detail,
        "mode strict: memory bound to node(s) 0 by the cgroup's cpuset.mems (by the hook at start)"
    );
    let mems = get(&r, Aspect::CgroupMems);
    assert_eq!(mems.state, State::Verified);
    assert!(
        mems.detail.contains("and its 3 sub-cgroup(s)"),
        "{}",
        mems.detail
    );
    // The cgroup allows more CPUs than the claim: thread affinity holds it.
    let cpus = get(&r, Aspect::CgroupCpus);
    assert_eq!(cpus.state, State::NotEnforced);
    assert!(cpus.detail.contains("allows CPUs 0-31"), "{}", cpus.detail);

    // vcpu1's memory on both nodes: drifted, in both aspects.
    o.cgroup = Some(cgroup("0-31", "0", &[("vcpu1", "0-31", "0-1")]));
    let r = run(&c, Some(&o));
    for aspect in [Aspect::CgroupMems, Aspect::MemoryPolicy] {
        assert_eq!(
            get(&r, aspect).sentence(),
            "drifted: expected 0, found 0-1 (cgroup vcpu1)"
        );
    }
    // No cgroup at all: strict memory is not bound by anything.
    let r = run(&c, Some(&observed()));
    let m = get(&r, Aspect::MemoryPolicy);
    assert_eq!(m.state, State::NotEnforced);
    assert!(m.detail.contains("no cpuset cgroup"), "{}", m.detail);
}

#[test]
fn a_cgroup_that_excludes_claimed_cpus_drifts_and_an_exact_one_verifies() {
    let c = hook_placed();
    let mut o = observed();
    o.cgroup = Some(cgroup("0-31", "0-1", &[("vcpu1", "3", "0-1")]));
    let r = run(&c, Some(&o));
    assert_eq!(
        get(&r, Aspect::CgroupCpus).sentence(),
        "drifted: expected at least 18, found 3 (cgroup vcpu1)"
    );
    // preferred: the cgroup's mems are no binding.
    assert_eq!(get(&r, Aspect::CgroupMems).state, State::NotEnforced);
    o.cgroup = Some(cgroup(
        "2,18",
        "0-1",
        &[
            ("vcpu0", "2", "0-1"),
            ("vcpu1", "18", "0-1"),
            ("emulator", "2,18", "0-1"),
        ],
    ));
    let r = run(&c, Some(&o));
    assert_eq!(get(&r, Aspect::CgroupCpus).state, State::Verified);
}

#[test]
fn xml_numatune_is_libvirts() {
    let mut c = hook_placed();
    c.domain = domain("<numatune><memory mode='preferred' nodeset='1'/></numatune>");
    let r = run(&c, Some(&observed()));
    let m = get(&r, Aspect::MemoryPolicy);
    assert_eq!(m.state, State::NotEnforced);
    assert!(
        m.detail
            .starts_with("<numatune> mode preferred on node(s) 1"),
        "{}",
        m.detail
    );
    c.domain = domain("<numatune><memory nodeset='1'/></numatune>");
    let mut o = observed();
    o.cgroup = Some(cgroup("0-31", "1", &[]));
    let r = run(&c, Some(&o));
    assert_eq!(
        get(&r, Aspect::MemoryPolicy).detail,
        "mode strict: memory bound to node(s) 1 by the cgroup's cpuset.mems (by libvirt, from <numatune>)"
    );
}

#[test]
fn threads_are_sorted_by_role_as_started_does() {
    let names = |list: &[(u32, &str)]| -> Vec<(u32, String)> {
        list.iter().map(|(t, n)| (*t, n.to_string())).collect()
    };
    let threads = names(&[
        (100, "qemu-system-x86"),
        (101, "CPU 0/KVM"),
        (102, "CPU 1/KVM"),
        (103, "IO iothread1"),
        (104, "worker"),
    ]);
    // The status file lists nothing: QEMU's names decide.
    let roles = classify(&BTreeMap::new(), &BTreeMap::new(), &threads);
    assert_eq!(roles.vcpus, BTreeMap::from([(0, 101), (1, 102)]));
    assert_eq!(roles.iothreads, BTreeMap::from([(1, 103)]));
    assert_eq!(roles.others, vec![100, 104]);
    // The status file's lists win; a thread named like a vCPU it does not list is
    // an emulator thread.
    let roles = classify(&BTreeMap::from([(0, 101)]), &BTreeMap::new(), &threads);
    assert_eq!(roles.vcpus, BTreeMap::from([(0, 101)]));
    assert_eq!(roles.others, vec![100, 102, 104]);
    assert_eq!(vcpu_number("CPU 3/TCG"), Some(3));
    assert_eq!(vcpu_number("CPU 1/"), None);
}
