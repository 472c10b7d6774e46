//! Convergence after a start (`converge: after-start`): whether a guest that the
//! hook let start with XML-level violations is queued so that `kvmtune converge`
//! conforms its persistent definition, and the queue entry's text. Pure: the
//! queue's files are `kvmtune_sys::converge_queue`'s, the drain is the binary's.

use crate::domain::Domain;
use crate::plan::guest_facts;
use crate::plan_model::Plan;
use crate::policy::{Converge, Policy};

/// Why a guest is not queued, or `Queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Queue it: it violates XML-level rules and its settings say `after-start`.
    Queue,
    /// Nothing only a new definition can fix.
    Conforms,
    /// Opted out (`enabled: false`) or `converge: off`.
    Off,
    /// Nova metadata: Nova owns the definition, kvmtune never redefines it.
    Nova,
}

/// What the hook does with a guest it lets start (`plan` is its plan at prepare):
/// queued when it violates XML-level rules, or when kvmtune's own pins in its
/// definition no longer say where it runs.
pub fn decide(policy: &Policy, domain: &Domain, plan: &Plan) -> Decision {
    if domain.nova_managed {
        return Decision::Nova;
    }
    let Some(settings) = policy.select(&guest_facts(domain)).settings else {
        return Decision::Off;
    };
    if settings.converge == Converge::Off || !plan.enabled {
        return Decision::Off;
    }
    if plan.violations.is_empty() && !replaced(domain, plan) {
        return Decision::Conforms;
    }
    Decision::Queue
}

/// Whether the guest's definition holds kvmtune's pins (pins mark) and the plan
/// places it elsewhere (those CPUs were taken): the definition would then say
/// where it no longer runs, so it is queued as a guest that moved is.
fn replaced(domain: &Domain, plan: &Plan) -> bool {
    domain.pins_by_kvmtune()
        && plan.placement.as_ref().is_some_and(|p| {
            (0u32..)
                .zip(&p.vcpus)
                .any(|(v, cpus)| domain.vcpu_pins.get(&v) != Some(cpus))
        })
}

/// Whether the current definition of a queued guest may still be converged
/// (re-checked when draining: the definition may have changed since it was queued).
pub fn still_wanted(policy: &Policy, domain: &Domain) -> Decision {
    if domain.nova_managed {
        return Decision::Nova;
    }
    match policy.select(&guest_facts(domain)).settings {
        Some(s) if s.converge == Converge::AfterStart => Decision::Queue,
        _ => Decision::Off,
    }
}

/// What becomes of a running guest that repacking or `kvmtune rebalance` just
/// moved (`domain`: its live XML): when its definition carries pins kvmtune
/// wrote (pins mark), they now say where it ran before, so under
/// `converge: after-start` it is queued and `kvmtune converge` writes where it
/// runs now; a guest its definition does not pin (or pins itself) has nothing
/// stale.
pub fn after_move(policy: &Policy, domain: &Domain) -> Decision {
    if domain.nova_managed {
        return Decision::Nova;
    }
    match policy.select(&guest_facts(domain)).settings {
        Some(s) if s.converge == Converge::AfterStart => {}
        _ => return Decision::Off,
    }
    if domain.pins_by_kvmtune() {
        Decision::Queue
    } else {
        Decision::Conforms
    }
}

/// One queue entry: the guest's UUID when queued and when (seconds since 1970).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uuid: Option<String>,
    pub queued_at: u64,
}

impl Entry {
    /// `uuid=UUID\nqueued=SECONDS\n`.
    pub fn render(&self) -> String {
        format!(
            "uuid={}\nqueued={}\n",
            self.uuid.as_deref().unwrap_or(""),
            self.queued_at
        )
    }

    /// Reads [`Entry::render`]'s text; unknown lines are ignored, a damaged entry
    /// still names its guest (by its file name), so it reads as "no uuid, time 0".
    pub fn parse(text: &str) -> Entry {
        let mut entry = Entry {
            uuid: None,
            queued_at: 0,
        };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("uuid", v)) if !v.trim().is_empty() => {
                    entry.uuid = Some(v.trim().to_string());
                }
                Some(("queued", v)) => entry.queued_at = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::Host;
    use crate::placement::Occupancy;
    use std::path::Path;

    fn domain(metadata: &str, cache: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='kvm'><name>g</name><uuid>u-1</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>{metadata}<os><type>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' cache='{cache}' io='native'/><source file='/a'/><target dev='vda'/></disk></devices></domain>"
        ))
        .unwrap()
    }

    fn decide_with(policy: &str, d: &Domain) -> Decision {
        let policy = Policy::parse(policy, Path::new("p.yaml")).unwrap();
        let host = Host::synthetic(1, 1, 2, 2, 1 << 22);
        let plan = crate::plan::plan(&policy, &host, &Occupancy::default(), d).unwrap();
        decide(&policy, d, &plan)
    }

    const WARN: &str = "version: 1\nhost: {reserved_cpus: none, irq_cpus: none, allow_cpu0: true}\ndefaults: {nosharepages: false, hugepages: off}\n";

    #[test]
    fn a_violating_guest_is_queued_by_default() {
        assert_eq!(decide_with(WARN, &domain("", "writeback")), Decision::Queue);
        assert_eq!(decide_with(WARN, &domain("", "none")), Decision::Conforms);
    }

    #[test]
    fn converge_off_and_nova_guests_are_never_queued() {
        let off = format!(
            "{WARN}rules:\n  - name: r\n    match: {{name: g}}\n    set: {{converge: off}}\n"
        );
        assert_eq!(decide_with(&off, &domain("", "writeback")), Decision::Off);
        let nova = "<metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:name>x</nova:name></nova:instance></metadata>";
        let d = domain(nova, "writeback");
        assert!(d.nova_managed);
        assert_eq!(decide_with(WARN, &d), Decision::Nova);
        let policy = Policy::parse(WARN, Path::new("p.yaml")).unwrap();
        assert_eq!(still_wanted(&policy, &d), Decision::Nova);
        assert!(!domain("", "none").nova_managed);
    }

    /// A moved guest's definition is queued only when its pins are kvmtune's:
    /// they then say where it ran before the move.
    #[test]
    fn a_moved_guest_is_queued_when_its_definition_holds_kvmtunes_pins() {
        let policy = Policy::parse(WARN, Path::new("p.yaml")).unwrap();
        let pins = "<cputune><vcpupin vcpu='0' cpuset='1'/></cputune>";
        let mark = |text: &str| {
            format!(
                "<metadata><p:pins xmlns:p='{}'>{text}</p:pins></metadata>",
                crate::pins_mark::NAMESPACE
            )
        };
        let marked = domain(&format!("{}{pins}", mark("0:1")), "none");
        assert_eq!(after_move(&policy, &marked), Decision::Queue);
        // The admin's pins (no mark, or a mark that no longer matches), or none.
        for other in [
            pins.to_string(),
            format!("{}{pins}", mark("0:2")),
            String::new(),
        ] {
            assert_eq!(
                after_move(&policy, &domain(&other, "none")),
                Decision::Conforms,
                "{other}"
            );
        }
        let off = format!(
            "{WARN}rules:\n  - name: r\n    match: {{name: g}}\n    set: {{converge: off}}\n"
        );
        let off = Policy::parse(&off, Path::new("p.yaml")).unwrap();
        assert_eq!(after_move(&off, &marked), Decision::Off);
    }

    /// A guest whose kvmtune-written pins were taken meanwhile starts elsewhere:
    /// its definition is queued so that converge writes where it runs.
    #[test]
    fn a_guest_started_away_from_kvmtunes_pins_is_queued() {
        let policy = Policy::parse(WARN, Path::new("p.yaml")).unwrap();
        let host = Host::synthetic(1, 1, 2, 2, 1 << 22);
        let marked = domain(
            &format!(
                "<metadata><p:pins xmlns:p='{}'>0:1</p:pins></metadata><cputune><vcpupin vcpu='0' cpuset='1'/></cputune>",
                crate::pins_mark::NAMESPACE
            ),
            "none",
        );
        let free = crate::plan::plan(&policy, &host, &Occupancy::default(), &marked).unwrap();
        assert_eq!(
            decide(&policy, &marked, &free),
            Decision::Conforms,
            "{}",
            free.explain()
        );
        let mut taken = Occupancy::default();
        taken.guests.insert(
            "nfv".into(),
            crate::placement::Claim {
                vcpus: vec![crate::CpuSet::single(1)],
                nodes: crate::CpuSet::single(0),
                memory_kib: 1 << 10,
                pool: crate::placement::Pool::Dedicated,
            },
        );
        let elsewhere = crate::plan::plan(&policy, &host, &taken, &marked).unwrap();
        assert!(
            !elsewhere.placement.as_ref().unwrap().cpus.contains(1),
            "{}",
            elsewhere.explain()
        );
        assert_eq!(decide(&policy, &marked, &elsewhere), Decision::Queue);
    }

    #[test]
    fn entries_round_trip_and_damaged_ones_still_read() {
        let e = Entry {
            uuid: Some("u-1".into()),
            queued_at: 42,
        };
        assert_eq!(Entry::parse(&e.render()), e);
        assert_eq!(
            Entry::parse("garbage\n"),
            Entry {
                uuid: None,
                queued_at: 0
            }
        );
    }
}
