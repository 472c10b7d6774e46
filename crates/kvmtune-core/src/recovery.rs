//! Recovery from what runs: the ledger entry of a running guest that the ledger
//! lacks (ledger deleted or corrupt, `/run` cleared, package reinstalled, a guest
//! started before kvmtune was installed), rebuilt from what the kernel and libvirt
//! say: its threads' affinity, else the guest's XML pins.
//!
//! The pool is the one the policy assigns the guest, unless what runs says
//! otherwise: a vCPU allowed on several CPUs, or a CPU another running guest also
//! uses, is shared. A guest whose vCPUs float over every CPU a guest may use (nobody
//! pinned it) is recorded as floating: it holds no claim, and is recorded only so
//! that later hook calls need not parse its status file again.

use std::collections::BTreeMap;

use crate::cpuset::CpuSet;
use crate::domain::Domain;
use crate::host::Host;
use crate::ledger::{Entry, EntryState};

use crate::placement::{Pool, nodes_of};
use crate::plan::guest_facts;
use crate::policy::Policy;

/// What was observed of one running guest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Per vCPU, the CPUs its thread may run on (`Cpus_allowed_list`), when read.
    pub vcpu_affinity: Vec<Option<CpuSet>>,
    /// The QEMU main thread's affinity (emulator threads), when read.
    pub emulator_affinity: Option<CpuSet>,
    /// Per vCPU, how long its thread has run (ns, `schedstat`), when read.
    pub vcpu_run_ns: Vec<Option<u64>>,
}

/// A vCPU thread that has run this long has executed guest code: QEMU's vCPU
/// threads under `-S` (libvirt resumes them after the `started` hook) run about
/// 0.25 ms while they wait (measured under TCG), a booting guest's first vCPU
/// tens of milliseconds within its first second.
pub const HAS_RUN_NS: u64 = 2_000_000;

impl Observed {
    /// Whether the guest has run: some vCPU thread ran at least [`HAS_RUN_NS`],
    /// or nothing could be read (then it is trusted as running).
    pub fn has_run(&self) -> bool {
        let read: Vec<u64> = self.vcpu_run_ns.iter().flatten().copied().collect();
        read.is_empty() || read.iter().any(|&ns| ns >= HAS_RUN_NS)
    }
}

/// The entry for a running guest the ledger lacks; `now` is the boot clock.
/// `used_by_others` holds the CPUs the other guests' vCPU and emulator threads
/// use (a dedicated CPU carries no other guest's thread of either kind).
pub fn recovered_entry(
    policy: &Policy,
    host: &Host,
    domain: &Domain,
    observed: &Observed,
    used_by_others: &CpuSet,
    now: u64,
) -> Entry {
    let selection = policy.select(&guest_facts(domain));
    let vcpus: Vec<CpuSet> = (0..domain.vcpus_max)
        .map(|v| {
            // What the kernel says the thread may run on is the truth (the hook
            // may have confined a guest away from its XML pins); the XML only
            // when the thread could not be read.
            observed
                .vcpu_affinity
                .get(v as usize)
                .cloned()
                .flatten()
                .or_else(|| domain.pinned_cpus_of(v).cloned())
                .unwrap_or_else(|| host.online.clone())
        })
        .collect();
    let cpus = vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
    // Nobody pinned it: its vCPUs may run on every online CPU.
    let floating = vcpus.iter().all(|s| host.online.is_subset(s));
    let wanted = selection.settings.map_or(Pool::Shared, |s| s.pool);
    let exclusive = vcpus.iter().all(|s| s.len() == 1) && !cpus.intersects(used_by_others);
    let pool = if wanted == Pool::Dedicated && exclusive && !floating {
        Pool::Dedicated
    } else {
        Pool::Shared
    };
    // As for the vCPUs, the kernel's view wins over the XML's `<emulatorpin>` (the
    // hook may have confined the guest away from it). Emulator threads on every CPU
    // were not placed yet (or by nobody): no set to record; `started` places them
    // when it runs.
    let emulator = observed
        .emulator_affinity
        .clone()
        .filter(|e| !host.online.is_subset(e))
        .or_else(|| domain.emulator_pin.clone());
    Entry {
        uuid: domain.uuid.clone(),
        nodes: nodes_of(host, &cpus),
        cpus,
        vcpus,
        emulator,
        memory_kib: domain.memory_kib,
        pool,
        claimed_at: now,
        state: EntryState::Running,
        rule: selection.rule_name.to_string(),
        floating,
    }
}

/// One running guest the ledger lacks, as read: its name, live domain and what
/// its threads say.
#[derive(Debug, Clone)]
pub struct Unrecorded<'a> {
    pub name: String,
    pub domain: &'a Domain,
    pub observed: Observed,
}

/// The entries for every running guest the ledger lacks, recorded together.
/// `recorded` is the occupancy of the ledger's own claims.
///
/// Exclusivity is judged against what the others run on now, so the order of
/// recording does not matter, with one precedence: a guest that has run wins
/// over one that has not ([`Observed::has_run`]). The latter is a guest whose
/// start is under way (its threads on the XML's pins or on every CPU, not on its
/// lost claim): it must not cost a running guest its dedicated claim. If it
/// overlaps, it is recorded shared, and its own `started` finds that claim
/// breaking the invariant and admits it afresh.
pub fn recovered_entries(
    policy: &Policy,
    host: &Host,
    recorded: &BTreeMap<String, Entry>,
    guests: &[Unrecorded<'_>],
    now: u64,
) -> Vec<(String, Entry)> {
    let threads_of = |e: &Entry| {
        e.emulator
            .as_ref()
            .map_or_else(|| e.cpus.clone(), |emulator| e.cpus.union(emulator))
    };
    let ran: Vec<bool> = guests.iter().map(|g| g.observed.has_run()).collect();
    let alone: Vec<Entry> = guests
        .iter()
        .map(|g| recovered_entry(policy, host, g.domain, &g.observed, &CpuSet::new(), now))
        .collect();
    guests
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut used = recorded
                .iter()
                .filter(|(name, e)| **name != g.name && !e.floating)
                .fold(CpuSet::new(), |a, (_, e)| a.union(&threads_of(e)));
            for (j, entry) in alone.iter().enumerate() {
                if j != i && !entry.floating && (ran[j] || !ran[i]) {
                    used = used.union(&threads_of(entry));
                }
            }
            let entry = recovered_entry(policy, host, g.domain, &g.observed, &used, now);
            (g.name.clone(), entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    fn domain(pins: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='kvm'><name>a</name><memory unit='KiB'>1024</memory><vcpu>2</vcpu>{pins}<os><type>hvm</type></os></domain>"
        ))
        .unwrap()
    }

    fn dedicated_policy() -> Policy {
        Policy::parse(
            "version: 1\ndefaults:\n  pool: dedicated\n",
            std::path::Path::new("p.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn a_guest_pinned_at_runtime_is_rebuilt_from_its_threads_with_its_pool() {
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        let observed = Observed {
            vcpu_affinity: vec![Some(set("1")), Some(set("2"))],
            emulator_affinity: Some(set("1-2")),
            vcpu_run_ns: vec![],
        };
        let e = recovered_entry(
            &dedicated_policy(),
            &host,
            &domain(""),
            &observed,
            &CpuSet::new(),
            7,
        );
        assert_eq!(e.vcpus, vec![set("1"), set("2")]);
        assert_eq!(e.pool, Pool::Dedicated);
        assert_eq!(e.emulator, Some(set("1-2")));
        assert_eq!(
            (e.state, e.claimed_at, e.floating),
            (EntryState::Running, 7, false)
        );
    }

    #[test]
    fn without_thread_affinity_the_xml_pins_count_and_overlap_makes_it_shared() {
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        // Another guest's thread (vCPU or emulator) runs on CPU 3.
        let others = set("3");
        let d = domain(
            "<cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/></cputune>",
        );
        let e = recovered_entry(
            &dedicated_policy(),
            &host,
            &d,
            &Observed::default(),
            &others,
            0,
        );
        assert_eq!(e.vcpus, vec![set("2"), set("3")]);
        assert_eq!(e.pool, Pool::Shared);
    }

    #[test]
    fn the_emulator_threads_are_recorded_where_they_run_not_where_the_xml_pinned_them() {
        // The hook confined the guest away from its XML pins (warn): the kernel's
        // view is what other guests must avoid.
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        let d = domain("<cputune><emulatorpin cpuset='1'/></cputune>");
        let observed = Observed {
            vcpu_affinity: vec![Some(set("3")), Some(set("2"))],
            emulator_affinity: Some(set("2-3")),
            vcpu_run_ns: vec![],
        };
        let e = recovered_entry(&dedicated_policy(), &host, &d, &observed, &CpuSet::new(), 0);
        assert_eq!(e.emulator, Some(set("2-3")));
        let unread = Observed {
            emulator_affinity: None,
            ..observed
        };
        let e = recovered_entry(&dedicated_policy(), &host, &d, &unread, &CpuSet::new(), 0);
        assert_eq!(e.emulator, Some(set("1")), "the XML only when unread");
    }

    #[test]
    fn a_running_guest_keeps_its_dedicated_claim_over_one_whose_start_is_under_way() {
        // The ledger was lost while `a` ran on CPU 1 (pinned by started) and `b`
        // was between prepare and started: libvirt put b's thread on its XML pin,
        // CPU 1 too (b's own, lost, claim was elsewhere); b has not run yet.
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        let a = domain("");
        let b = domain(
            "<cputune><vcpupin vcpu='0' cpuset='1'/><vcpupin vcpu='1' cpuset='2'/></cputune>",
        );
        let starting = Observed {
            vcpu_affinity: vec![Some(set("1")), Some(set("2"))],
            emulator_affinity: None,
            vcpu_run_ns: vec![Some(250_000), Some(240_000)],
        };
        let running = Observed {
            vcpu_affinity: vec![Some(set("1")), Some(set("3"))],
            emulator_affinity: Some(set("1,3")),
            vcpu_run_ns: vec![Some(40_000_000), Some(900_000)],
        };
        assert!(!starting.has_run() && running.has_run());
        assert!(Observed::default().has_run(), "unread: trusted as running");
        let recover = |guests: &[Unrecorded<'_>]| -> BTreeMap<String, Pool> {
            recovered_entries(&dedicated_policy(), &host, &BTreeMap::new(), guests, 0)
                .into_iter()
                .map(|(n, e)| (n, e.pool))
                .collect()
        };
        let g = |name: &str, domain, observed: &Observed| Unrecorded {
            name: name.into(),
            domain,
            observed: observed.clone(),
        };
        let pools = recover(&[g("b", &b, &starting), g("a", &a, &running)]);
        assert_eq!((pools["a"], pools["b"]), (Pool::Dedicated, Pool::Shared));
        // Both have run (b restored onto pins on CPU 1, a confined there too):
        // neither is trusted with a dedicated claim.
        let b_ran = Observed {
            vcpu_run_ns: vec![Some(9_000_000), None],
            ..starting.clone()
        };
        let pools = recover(&[g("b", &b, &b_ran), g("a", &a, &running)]);
        assert_eq!((pools["a"], pools["b"]), (Pool::Shared, Pool::Shared));
    }

    #[test]
    fn another_guests_emulator_threads_make_a_cpu_not_exclusive() {
        // `a` (recorded) runs its vCPU on CPU 1 and its emulator threads on CPU 2
        // (an <emulatorpin> kept from its XML); `b`, recovered on CPU 2, is not
        // alone there.
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        let recorded = BTreeMap::from([(
            "a".to_string(),
            recovered_entry(
                &dedicated_policy(),
                &host,
                &domain("<cputune><emulatorpin cpuset='2'/></cputune>"),
                &Observed {
                    vcpu_affinity: vec![Some(set("1")), Some(set("1"))],
                    emulator_affinity: Some(set("2")),
                    vcpu_run_ns: vec![],
                },
                &CpuSet::new(),
                0,
            ),
        )]);
        let b = domain("");
        let guests = [Unrecorded {
            name: "b".into(),
            domain: &b,
            observed: Observed {
                vcpu_affinity: vec![Some(set("2")), Some(set("3"))],
                emulator_affinity: Some(set("2-3")),
                vcpu_run_ns: vec![],
            },
        }];
        let entries = recovered_entries(&dedicated_policy(), &host, &recorded, &guests, 0);
        assert_eq!(entries[0].1.pool, Pool::Shared);
        let alone = recovered_entries(&dedicated_policy(), &host, &BTreeMap::new(), &guests, 0);
        assert_eq!(alone[0].1.pool, Pool::Dedicated);
    }

    #[test]
    fn an_unpinned_guest_floats_and_holds_no_claim() {
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        let observed = Observed {
            vcpu_affinity: vec![Some(set("0-3")), None],
            emulator_affinity: None,
            vcpu_run_ns: vec![],
        };
        let e = recovered_entry(
            &dedicated_policy(),
            &host,
            &domain(""),
            &observed,
            &CpuSet::new(),
            0,
        );
        assert!(e.floating);
        assert_eq!(e.pool, Pool::Shared);
    }
}
