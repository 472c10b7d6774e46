//! Planning several guests' persistent definitions against one host at once (what
//! `kvmtune apply` does before it defines anything): the guests not being planned
//! count with the pins their definitions carry ([`pinned_by_definitions`]), and each
//! planned guest claims its placement before the next is planned ([`plan_batch`]),
//! so a batch spreads guests instead of stacking them. Pure: the definitions come in
//! as bytes, the plans and rewritten XML go out; reading and defining is the
//! caller's job.

use std::collections::BTreeMap;

use crate::domain::{Domain, DomainError};
use crate::host::Host;
use crate::placement::{Claim, Occupancy};
use crate::plan::{Plan, PlanError, plan};
use crate::policy::Policy;
use crate::rewrite::{self, RewriteError};
use crate::runstate::{LiveGuest, pinned_by_others};

/// One guest of a batch, planned.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    /// The definition as read.
    pub before: Vec<u8>,
    /// The definition with the plan's edits applied.
    pub after: String,
    pub plan: Plan,
}

/// Why one guest of a batch could not be planned; the whole batch stops there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("guest '{guest}': definition is not UTF-8 ({error})")]
    NotUtf8 {
        guest: String,
        error: std::str::Utf8Error,
    },
    #[error("guest '{guest}': {error}")]
    Domain { guest: String, error: DomainError },
    /// The policy does not fit the host (a usage error, not the guest's fault).
    #[error("guest '{guest}': {error}")]
    Plan { guest: String, error: PlanError },
    #[error("guest '{guest}': {error}")]
    Rewrite { guest: String, error: RewriteError },
    /// The definition read under one name is another guest's.
    #[error("the definition of '{asked}' is that of '{found}'")]
    WrongGuest { asked: String, found: String },
}

/// The occupancy of guests outside the batch, from their persistent definitions:
/// a guest that pins itself will run there, so the batch avoids it. Definitions
/// that do not parse do not count. The pool is read from the pins (1:1 pins are
/// Nova's dedicated policy), except for pins kvmtune wrote (pins mark): a shared
/// guest kvmtune pinned one CPU per vCPU is still shared, as `policy` says.
pub fn pinned_by_definitions<'a>(
    policy: &Policy,
    definitions: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Occupancy {
    let others: BTreeMap<String, LiveGuest> = definitions
        .into_iter()
        .filter_map(|(name, xml)| {
            let domain = std::str::from_utf8(xml)
                .ok()
                .and_then(|t| Domain::parse(t).ok())?;
            Some((
                name.to_string(),
                LiveGuest {
                    name: name.to_string(),
                    qemu_pid: None,
                    vcpu_tids: BTreeMap::new(),
                    iothread_tids: BTreeMap::new(),
                    domain: Some(domain),
                },
            ))
        })
        .collect();
    let mut occupancy = pinned_by_others(&others, &Occupancy::default());
    for (name, claim) in &mut occupancy.guests {
        let Some(domain) = others.get(name).and_then(|g| g.domain.as_ref()) else {
            continue;
        };
        if domain.pins_by_kvmtune()
            && let Some(settings) = policy.select(&crate::plan::guest_facts(domain)).settings
        {
            claim.pool = settings.pool;
        }
    }
    occupancy
}

/// Plans every `(name, definition)` in order against `occupancy`, adding each
/// guest's placement to it before planning the next (later guests must not land
/// on the CPUs an earlier one was just given). The first guest that cannot be
/// planned stops the batch. On return `occupancy` holds every claim of the batch.
pub fn plan_batch(
    policy: &Policy,
    host: &Host,
    occupancy: &mut Occupancy,
    definitions: Vec<(String, Vec<u8>)>,
) -> Result<Vec<Planned>, BatchError> {
    let mut planned = Vec::with_capacity(definitions.len());
    for (name, before) in definitions {
        let text = std::str::from_utf8(&before).map_err(|error| BatchError::NotUtf8 {
            guest: name.clone(),
            error,
        })?;
        let domain = Domain::parse(text).map_err(|error| BatchError::Domain {
            guest: name.clone(),
            error,
        })?;
        let plan = plan(policy, host, occupancy, &domain).map_err(|error| BatchError::Plan {
            guest: name.clone(),
            error,
        })?;
        let after = rewrite::apply(text, &plan.changes()).map_err(|error| BatchError::Rewrite {
            guest: name.clone(),
            error,
        })?;
        if plan.guest != name {
            return Err(BatchError::WrongGuest {
                asked: name,
                found: plan.guest,
            });
        }
        if let Some(p) = &plan.placement {
            occupancy.guests.insert(
                name.clone(),
                Claim {
                    vcpus: p.vcpus.clone(),
                    nodes: p.nodes.clone(),
                    memory_kib: domain.memory_kib,
                    pool: plan.pool,
                },
            );
        }
        planned.push(Planned {
            name,
            before,
            after,
            plan,
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuset::CpuSet;

    fn guest_xml(name: &str) -> Vec<u8> {
        format!(
            "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>65536</memory>\n  <vcpu placement='static'>2</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n  </os>\n</domain>\n"
        )
        .into_bytes()
    }

    fn host() -> Host {
        // 1 socket, 1 node, 4 cores x 2 threads: CPUs 0-7.
        Host::synthetic(1, 1, 4, 2, 1 << 20)
    }

    #[test]
    fn each_guest_claims_its_cpus_before_the_next_is_planned() {
        let mut occupancy = Occupancy::default();
        let batch = ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), guest_xml(n)))
            .collect();
        let planned = plan_batch(&Policy::default(), &host(), &mut occupancy, batch).unwrap();
        assert_eq!(planned.len(), 3);
        let mut seen = CpuSet::new();
        for p in &planned {
            let cpus = occupancy.guests[&p.name].cpus();
            assert!(!cpus.is_empty(), "{}", p.name);
            assert!(seen.intersection(&cpus).is_empty(), "{} overlaps", p.name);
            seen = seen.union(&cpus);
            assert_ne!(p.after.as_bytes(), &p.before[..]);
        }
    }

    #[test]
    fn the_first_bad_guest_stops_the_batch() {
        let mut occupancy = Occupancy::default();
        let batch = vec![
            ("a".to_string(), guest_xml("a")),
            (
                "bad".to_string(),
                b"<domain><name>bad</name><vcpu>many</vcpu></domain>".to_vec(),
            ),
            ("c".to_string(), guest_xml("c")),
        ];
        let err = plan_batch(&Policy::default(), &host(), &mut occupancy, batch).unwrap_err();
        assert!(
            matches!(&err, BatchError::Domain { guest, .. } if guest == "bad"),
            "{err}"
        );
        assert!(err.to_string().starts_with("guest 'bad': "), "{err}");
        let err = plan_batch(
            &Policy::default(),
            &host(),
            &mut Occupancy::default(),
            vec![("a".to_string(), guest_xml("b"))],
        )
        .unwrap_err();
        assert_eq!(
            err,
            BatchError::WrongGuest {
                asked: "a".into(),
                found: "b".into()
            }
        );
    }

    #[test]
    fn other_guests_count_with_their_persistent_pins() {
        let pinned = b"<domain><name>p</name><memory unit='KiB'>1024</memory><vcpu cpuset='2-3'>2</vcpu></domain>".to_vec();
        let loose = guest_xml("l");
        // 1:1 pins kvmtune wrote for a shared guest (pins mark): still shared.
        let marked = format!(
            "<domain><name>m</name><metadata><k:pins xmlns:k='{}'>0:4 1:5</k:pins></metadata><memory unit='KiB'>1024</memory><vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='4'/><vcpupin vcpu='1' cpuset='5'/></cputune></domain>",
            crate::pins_mark::NAMESPACE
        );
        let by_hand = marked
            .replace("<name>m</name>", "<name>h</name>")
            .replace("0:4 1:5", "0:6 1:5");
        let policy = Policy::default();
        let occupancy = pinned_by_definitions(
            &policy,
            [
                ("p", &pinned[..]),
                ("l", &loose[..]),
                ("junk", &b"not xml"[..]),
                ("m", marked.as_bytes()),
                ("h", by_hand.as_bytes()),
            ],
        );
        assert_eq!(occupancy.guests.keys().collect::<Vec<_>>(), ["h", "m", "p"]);
        assert_eq!(occupancy.guests["p"].cpus(), CpuSet::parse("2-3").unwrap());
        assert_eq!(occupancy.guests["m"].pool, crate::placement::Pool::Shared);
        assert_eq!(
            occupancy.guests["h"].pool,
            crate::placement::Pool::Dedicated
        );
    }
}
