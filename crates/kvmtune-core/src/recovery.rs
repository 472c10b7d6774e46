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

use crate::cpuset::CpuSet;
use crate::domain::Domain;
use crate::host::Host;
use crate::ledger::{Entry, EntryState};
use crate::placement::{Occupancy, Pool, nodes_of};
use crate::plan::guest_facts;
use crate::policy::Policy;

/// What was observed of one running guest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Per vCPU, the CPUs its thread may run on (`Cpus_allowed_list`), when read.
    pub vcpu_affinity: Vec<Option<CpuSet>>,
    /// The QEMU main thread's affinity (emulator threads), when read.
    pub emulator_affinity: Option<CpuSet>,
}

/// The entry for a running guest the ledger lacks; `now` is the boot clock.
/// `others` holds the claims of the other guests.
pub fn recovered_entry(
    policy: &Policy,
    host: &Host,
    domain: &Domain,
    observed: &Observed,
    others: &Occupancy,
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
    let exclusive = vcpus.iter().all(|s| s.len() == 1) && !cpus.intersects(&others.all_cpus());
    let pool = if wanted == Pool::Dedicated && exclusive && !floating {
        Pool::Dedicated
    } else {
        Pool::Shared
    };
    // Emulator threads on every CPU were not placed yet (or by nobody): no set to
    // record; `started` places them when it runs.
    let emulator = domain.emulator_pin.clone().or_else(|| {
        observed
            .emulator_affinity
            .clone()
            .filter(|e| !host.online.is_subset(e))
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Claim;

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
        };
        let e = recovered_entry(
            &dedicated_policy(),
            &host,
            &domain(""),
            &observed,
            &Occupancy::default(),
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
        let others = Occupancy {
            guests: [(
                "b".to_string(),
                Claim {
                    vcpus: vec![set("3")],
                    nodes: set("0"),
                    memory_kib: 1,
                    pool: Pool::Shared,
                },
            )]
            .into(),
        };
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
    fn an_unpinned_guest_floats_and_holds_no_claim() {
        let host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        let observed = Observed {
            vcpu_affinity: vec![Some(set("0-3")), None],
            emulator_affinity: None,
        };
        let e = recovered_entry(
            &dedicated_policy(),
            &host,
            &domain(""),
            &observed,
            &Occupancy::default(),
            0,
        );
        assert!(e.floating);
        assert_eq!(e.pool, Pool::Shared);
    }
}
