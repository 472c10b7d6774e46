//! The placement invariant, checked in one place for every path that admits a guest
//! (the hook's prepare, restore, migrate, reconnect and recovery, and `apply`'s batch
//! plan):
//!
//! 1. no vCPU of any guest on a forbidden CPU: CPU0 (unless `allow_cpu0`), a
//!    reserved CPU or an IRQ CPU;
//! 2. no emulator thread or iothread on a forbidden CPU, except on the housekeeping
//!    CPUs when the guest's policy says `emulator: housekeeping` (that is what the
//!    reserved CPUs are for);
//! 3. a dedicated CPU is held by one live guest only, and no other guest's vCPU,
//!    emulator thread or iothread runs there.
//!
//! [`check`] returns every breach of a candidate claim against the claims already
//! held; the caller decides (refuse, confine to shared CPUs, or for a guest that is
//! already running, record and report). [`no_room_line`] words a refusal the way an
//! admin reads it: what was asked, what is free, who holds the rest.

use std::collections::BTreeMap;
use std::fmt;

use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::ledger::Entry;
use crate::placement::{Claim, Occupancy, Pool};
use crate::policy::Policy;

/// CPUs no vCPU may use on this host: reserved, IRQ and (unless allowed) CPU0.
pub fn forbidden_cpus(policy: &Policy, host: &Host) -> CpuSet {
    let mut forbidden = policy
        .host
        .reserved_cpus
        .union(&policy.irq_cpus(host))
        .intersection(&host.online);
    if !policy.host.allow_cpu0 && host.online.contains(0) {
        forbidden.insert(0);
    }
    forbidden
}

/// The claimed guests whose vCPUs sit on the IRQ CPUs ([`Policy::irq_cpus`]), with
/// the CPUs they hold there: a breach of invariant 1 that a claim made before an
/// IRQ was bound (or before the policy changed) can leave behind. Unpinned
/// (floating) guests hold no claim and are not listed.
pub fn guests_on_irq_cpus(
    policy: &Policy,
    host: &Host,
    claims: &BTreeMap<String, Entry>,
) -> Vec<(String, CpuSet)> {
    let irq = policy.irq_cpus(host);
    claims
        .iter()
        .filter(|(_, e)| !e.floating)
        .filter_map(|(name, e)| {
            let on = e.cpus.intersection(&irq);
            (!on.is_empty()).then(|| (name.clone(), on))
        })
        .collect()
}

/// The housekeeping CPUs (`emulator: housekeeping`): the reserved and IRQ CPUs,
/// or CPU0 when there are none and guests may not use it. Always forbidden CPUs,
/// the host's own.
pub fn housekeeping_cpus(policy: &Policy, host: &Host) -> CpuSet {
    let mut housekeeping = policy
        .host
        .reserved_cpus
        .union(&policy.irq_cpus(host))
        .intersection(&host.online);
    if housekeeping.is_empty() && !policy.host.allow_cpu0 && host.online.contains(0) {
        housekeeping.insert(0);
    }
    housekeeping
}

/// What a guest asks to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub guest: &'a str,
    pub claim: &'a Claim,
    /// Emulator threads (and iothreads, which follow them).
    pub emulator: Option<&'a CpuSet>,
    /// The policy puts this guest's emulator threads on the housekeeping CPUs.
    pub emulator_on_housekeeping: bool,
}

/// One way a candidate breaks the invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// vCPUs on CPU0, a reserved or an IRQ CPU.
    VcpusOnForbidden { cpus: CpuSet },
    /// Emulator threads or iothreads on a forbidden CPU without `emulator: housekeeping`.
    EmulatorOnForbidden { cpus: CpuSet },
    /// A CPU another guest holds dedicated.
    HeldDedicated { cpus: CpuSet, holder: String },
    /// A dedicated claim on CPUs another guest runs on.
    DedicatedShared { cpus: CpuSet, holder: String },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breach::VcpusOnForbidden { cpus } => {
                write!(
                    f,
                    "vCPUs on CPU(s) {cpus}, which guests never get (CPU0, reserved or IRQ CPUs)"
                )
            }
            Breach::EmulatorOnForbidden { cpus } => write!(
                f,
                "emulator threads on CPU(s) {cpus}, which guests never get (CPU0, reserved or IRQ CPUs)"
            ),
            Breach::HeldDedicated { cpus, holder } => {
                write!(f, "CPU(s) {cpus} held dedicated by guest '{holder}'")
            }
            Breach::DedicatedShared { cpus, holder } => {
                write!(f, "dedicated CPU(s) {cpus} also used by guest '{holder}'")
            }
        }
    }
}

/// The CPUs another guest uses: its vCPUs and, when the ledger knows them, its
/// emulator threads.
fn used_by(name: &str, claim: &Claim, ledger: &BTreeMap<String, Entry>) -> CpuSet {
    let mut cpus = claim.cpus();
    if let Some(emulator) = ledger.get(name).and_then(|e| e.emulator.as_ref()) {
        cpus = cpus.union(emulator);
    }
    cpus
}

/// Every breach of `candidate` against `others` (the claims of every other guest;
/// `ledger` adds their emulator sets) on a host whose forbidden CPUs are `forbidden`.
pub fn check(
    candidate: &Candidate<'_>,
    others: &Occupancy,
    ledger: &BTreeMap<String, Entry>,
    forbidden: &CpuSet,
) -> Vec<Breach> {
    let mut breaches = Vec::new();
    let vcpus = candidate.claim.cpus();
    let bad = vcpus.intersection(forbidden);
    if !bad.is_empty() {
        breaches.push(Breach::VcpusOnForbidden { cpus: bad });
    }
    let emulator = candidate.emulator.cloned().unwrap_or_default();
    if !candidate.emulator_on_housekeeping {
        let bad = emulator.intersection(forbidden);
        if !bad.is_empty() {
            breaches.push(Breach::EmulatorOnForbidden { cpus: bad });
        }
    }
    let mine = vcpus.union(&emulator);
    for (name, claim) in &others.guests {
        if name == candidate.guest {
            continue;
        }
        if claim.pool == Pool::Dedicated {
            let clash = mine.intersection(&claim.cpus());
            if !clash.is_empty() {
                breaches.push(Breach::HeldDedicated {
                    cpus: clash,
                    holder: name.clone(),
                });
                continue;
            }
        }
        if candidate.claim.pool == Pool::Dedicated {
            let clash = vcpus.intersection(&used_by(name, claim, ledger));
            if !clash.is_empty() {
                breaches.push(Breach::DedicatedShared {
                    cpus: clash,
                    holder: name.clone(),
                });
            }
        }
    }
    breaches
}

/// One line for a guest that finds no room: "2 dedicated vCPUs needed, 0 free on
/// CPUs 1-3; CPU 1 held by guest 'a', CPU 2-3 used by shared guests".
pub fn no_room_line(vcpus: u32, pool: Pool, eligible: &CpuSet, others: &Occupancy) -> String {
    let pool_name = match pool {
        Pool::Dedicated => "dedicated",
        Pool::Shared => "shared",
    };
    let held = others.dedicated_cpus().intersection(eligible);
    let busy = others.all_cpus().intersection(eligible).difference(&held);
    let free = eligible.difference(&held);
    let free = match pool {
        Pool::Dedicated => free.difference(&busy),
        Pool::Shared => free,
    };
    let mut line = format!(
        "{vcpus} {pool_name} vCPU(s) needed, {} free CPU(s) among the eligible {}",
        free.len(),
        if eligible.is_empty() {
            "(none)".to_string()
        } else {
            eligible.to_string()
        }
    );
    let mut holders: Vec<String> = others
        .guests
        .iter()
        .filter(|(_, c)| c.pool == Pool::Dedicated)
        .filter_map(|(name, c)| {
            let mine = c.cpus().intersection(eligible);
            (!mine.is_empty()).then(|| format!("CPU {mine} held by guest '{name}'"))
        })
        .collect();
    if pool == Pool::Dedicated && !busy.is_empty() {
        holders.push(format!("CPU {busy} used by shared guests"));
    }
    if !holders.is_empty() {
        line.push_str("; ");
        line.push_str(&holders.join(", "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    fn claim(cpus: &str, pool: Pool) -> Claim {
        Claim {
            vcpus: set(cpus).iter().map(CpuSet::single).collect(),
            nodes: CpuSet::single(0),
            memory_kib: 1024,
            pool,
        }
    }

    fn others(list: &[(&str, &str, Pool)]) -> Occupancy {
        Occupancy {
            guests: list
                .iter()
                .map(|(n, c, p)| ((*n).to_string(), claim(c, *p)))
                .collect(),
        }
    }

    #[test]
    fn guests_on_irq_cpus_are_the_claims_on_the_resolved_irq_cpus() {
        let mut host = Host::synthetic(1, 1, 4, 1, 1 << 20);
        host.irqs.push(crate::host::Irq {
            number: 4,
            affinity: set("3"),
            actions: "ttyS0".into(),
        });
        let entry = |cpus: &str, floating: bool| Entry {
            uuid: None,
            vcpus: set(cpus).iter().map(CpuSet::single).collect(),
            cpus: set(cpus),
            nodes: CpuSet::single(0),
            emulator: Some(set("3")),
            memory_kib: 1024,
            pool: Pool::Dedicated,
            claimed_at: 0,
            state: crate::ledger::EntryState::Running,
            rule: "defaults".into(),
            floating,
        };
        let claims: BTreeMap<String, Entry> = [
            ("off".to_string(), entry("1-2", false)),
            ("on".to_string(), entry("2-3", false)),
            ("unpinned".to_string(), entry("0-3", true)),
        ]
        .into();
        let mut policy = Policy::default();
        policy.host.irq_cpus = crate::policy::IrqCpus::Auto;
        assert_eq!(
            guests_on_irq_cpus(&policy, &host, &claims),
            vec![("on".to_string(), set("3"))]
        );
        // An emulator on an IRQ CPU (housekeeping) is not a vCPU there.
        let mut without = claims.clone();
        without.remove("on");
        assert!(guests_on_irq_cpus(&policy, &host, &without).is_empty());
        policy.host.irq_cpus = crate::policy::IrqCpus::None;
        assert!(guests_on_irq_cpus(&policy, &host, &claims).is_empty());
    }

    #[test]
    fn a_dedicated_cpu_is_not_handed_out_twice() {
        let b = claim("1", Pool::Dedicated);
        let cand = Candidate {
            guest: "b",
            claim: &b,
            emulator: None,
            emulator_on_housekeeping: false,
        };
        let breaches = check(
            &cand,
            &others(&[("a", "1", Pool::Dedicated)]),
            &BTreeMap::new(),
            &set("0"),
        );
        assert_eq!(
            breaches,
            vec![Breach::HeldDedicated {
                cpus: set("1"),
                holder: "a".into()
            }]
        );
    }

    #[test]
    fn shared_next_to_dedicated_and_forbidden_cpus_are_breaches() {
        let b = claim("0-2", Pool::Shared);
        let emulator = set("0");
        let cand = Candidate {
            guest: "b",
            claim: &b,
            emulator: Some(&emulator),
            emulator_on_housekeeping: false,
        };
        let breaches = check(
            &cand,
            &others(&[("a", "2", Pool::Dedicated), ("c", "1", Pool::Shared)]),
            &BTreeMap::new(),
            &set("0"),
        );
        assert_eq!(
            breaches,
            vec![
                Breach::VcpusOnForbidden { cpus: set("0") },
                Breach::EmulatorOnForbidden { cpus: set("0") },
                Breach::HeldDedicated {
                    cpus: set("2"),
                    holder: "a".into()
                },
            ]
        );
    }

    #[test]
    fn housekeeping_emulator_and_own_claim_are_fine() {
        let b = claim("1", Pool::Dedicated);
        let emulator = set("0");
        let cand = Candidate {
            guest: "b",
            claim: &b,
            emulator: Some(&emulator),
            emulator_on_housekeeping: true,
        };
        let breaches = check(
            &cand,
            &others(&[("b", "1", Pool::Dedicated)]),
            &BTreeMap::new(),
            &set("0"),
        );
        assert_eq!(breaches, vec![]);
    }

    #[test]
    fn dedicated_on_a_shared_guests_cpu_is_a_breach() {
        let b = claim("2", Pool::Dedicated);
        let cand = Candidate {
            guest: "b",
            claim: &b,
            emulator: None,
            emulator_on_housekeeping: false,
        };
        let breaches = check(
            &cand,
            &others(&[("s", "2-3", Pool::Shared)]),
            &BTreeMap::new(),
            &set("0"),
        );
        assert_eq!(
            breaches,
            vec![Breach::DedicatedShared {
                cpus: set("2"),
                holder: "s".into()
            }]
        );
    }

    #[test]
    fn the_no_room_line_names_what_is_free_and_who_holds_the_rest() {
        let line = no_room_line(
            2,
            Pool::Dedicated,
            &set("1"),
            &others(&[("a", "1", Pool::Dedicated)]),
        );
        assert_eq!(
            line,
            "2 dedicated vCPU(s) needed, 0 free CPU(s) among the eligible 1; CPU 1 held by guest 'a'"
        );
    }
}
