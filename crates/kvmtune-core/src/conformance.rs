//! Conformance of a running guest, rule by rule: the plan of its live XML (made as
//! the hook would make it) read as one verdict per aspect of TUNING-RULES.md — ok,
//! runtime-enforced (the hook applied it to the running QEMU, and what was read
//! back does not contradict it), differs, opted out or unknown. A drift found by
//! [`crate::readback`] makes the rule differ. [`crate::status`] puts these
//! [`Check`]s in each guest's view.

use serde::Serialize;

use crate::ledger::Entry;
use crate::plan::{Change, Enforcement, Plan};
use crate::readback::{Aspect, Readback, State};

/// Where a guest's placement was read from (defined with the read-back, which
/// judges by it).
pub use crate::readback::Source;

/// One rule's verdict for a running guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub rule: &'static str,
    pub what: &'static str,
    pub state: Conformance,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conformance {
    Ok,
    /// The live XML lacks it, and the hook applied it to the running QEMU.
    RuntimeEnforced,
    /// The guest runs without it: fixed at the next cold boot after `kvmtune apply`.
    Differs,
    /// The guest is opted out by policy.
    OptedOut,
    /// The plan could not be made (policy does not fit the host).
    Unknown,
}

/// The aspects of the plan shown per guest, with the rule of TUNING-RULES.md.
const ASPECTS: [(&str, &str); 8] = [
    ("1.1", "vCPU placement"),
    ("1.2", "NUMA memory"),
    ("1.3", "emulator/iothreads"),
    ("2.1", "disk cache/io"),
    ("3.1", "no KSM"),
    ("3.2", "huge pages"),
    ("4", "vhost-net/multiqueue"),
    ("5", "CPU mode"),
];

fn aspect_of(change: &Change) -> usize {
    match change {
        Change::VcpuPins { .. } | Change::PinsMark { .. } => 0,
        Change::NumaMemory { .. } | Change::GuestNuma { .. } => 1,
        Change::EmulatorPin { .. } | Change::IothreadPins { .. } => 2,
        Change::DiskDriver { .. } => 3,
        Change::NoSharePages => 4,
        Change::HugePages { .. } => 5,
        Change::InterfaceDriver { .. } => 6,
        Change::CpuHostModel => 7,
    }
}

fn aspect_of_rule(rule: &str) -> Option<usize> {
    match rule {
        "1.1" => Some(0),
        "1.2" => Some(1),
        "1.3" => Some(2),
        "2.1" => Some(3),
        "3.1" => Some(4),
        "3.2" => Some(5),
        "4.1" | "4.2" => Some(6),
        "5" => Some(7),
        _ => None,
    }
}

/// Rule-by-rule verdicts from the plan `p` of a guest's live XML: `readback` is
/// what was read back of its threads and cgroup, `entry` its ledger claim (the hook
/// applied it).
pub fn checks(p: &Plan, readback: &[Readback], entry: Option<&Entry>) -> Vec<Check> {
    let applied = entry.is_some();
    if !p.enabled {
        return vec![Check {
            rule: "-",
            what: "all rules",
            state: Conformance::OptedOut,
            detail: format!("opted out by rule {} (enabled: false)", p.policy_rule),
        }];
    }
    let mut checks: Vec<Check> = ASPECTS
        .iter()
        .map(|(rule, what)| Check {
            rule,
            what,
            state: Conformance::Ok,
            detail: String::new(),
        })
        .collect();
    let mut texts: Vec<Vec<String>> = vec![Vec::new(); ASPECTS.len()];
    for edit in &p.edits {
        let i = aspect_of(&edit.change);
        let state = match edit.change.enforcement() {
            // Bookkeeping, not a tuning: nothing differs without it.
            Enforcement::Record => continue,
            Enforcement::Runtime if applied => Conformance::RuntimeEnforced,
            // Not a violation, and not enforced: say what it is.
            Enforcement::FirstTouch => {
                texts[i].push(format!(
                    "{} — {}",
                    edit.reason.text,
                    Enforcement::FirstTouch.how()
                ));
                continue;
            }
            _ => Conformance::Differs,
        };
        // Differs wins over runtime-enforced within one aspect.
        if checks[i].state != Conformance::Differs {
            checks[i].state = state;
        }
        texts[i].push(edit.reason.text.clone());
    }
    for v in p.violations.iter().filter(|v| v.refuse_always) {
        if let Some(i) = aspect_of_rule(v.rule) {
            checks[i].state = Conformance::Differs;
            texts[i].push(v.what.clone());
        }
    }
    if p.placement.is_none()
        && !applied
        && let Some(why) = &p.no_room
    {
        checks[0].state = Conformance::Differs;
        texts[0].push(format!("no placement: {why}"));
    }
    if let Some(entry) = entry {
        describe_applied(&mut checks, &mut texts, entry);
    }
    apply_readback(&mut checks, &mut texts, readback);
    for note in &p.notes {
        if let Some(i) = aspect_of_rule(note.rule)
            && checks[i].state == Conformance::Ok
        {
            texts[i].push(note.text.clone());
        }
    }
    for (check, text) in checks.iter_mut().zip(texts) {
        check.detail = text.join("; ");
    }
    checks
}

/// What was enforced at runtime is what the ledger recorded, not what a plan made
/// now would choose: describe that.
fn describe_applied(checks: &mut [Check], texts: &mut [Vec<String>], entry: &Entry) {
    if checks[0].state == Conformance::RuntimeEnforced {
        let pins: Vec<String> = entry
            .vcpus
            .iter()
            .enumerate()
            .map(|(v, s)| format!("{v}→{s}"))
            .collect();
        texts[0] = vec![format!("applied at start: vCPU→CPU {}", pins.join(" "))];
    }
    if checks[1].state == Conformance::RuntimeEnforced {
        texts[1] = vec![format!("applied at start: memory node(s) {}", entry.nodes)];
    }
    if checks[2].state == Conformance::RuntimeEnforced {
        texts[2] = vec![match &entry.emulator {
            Some(e) => format!("applied at start: emulator threads on CPUs {e}"),
            None => "claimed at start".to_string(),
        }];
    }
}

/// The rule each read-back aspect speaks for.
fn check_of(aspect: Aspect) -> Option<usize> {
    match aspect {
        Aspect::VcpuThreads => Some(0),
        Aspect::MemoryPolicy => Some(1),
        Aspect::EmulatorThreads | Aspect::Iothreads => Some(2),
        Aspect::CgroupCpus | Aspect::CgroupMems => None,
    }
}

/// What was read back decides: a drift makes the rule differ, whatever applied it;
/// a rule the hook should have enforced but nothing holds at runtime differs too.
fn apply_readback(checks: &mut [Check], texts: &mut [Vec<String>], readback: &[Readback]) {
    for r in readback {
        let Some(i) = check_of(r.aspect) else {
            continue;
        };
        let runtime = checks[i].state == Conformance::RuntimeEnforced;
        match r.state {
            State::Drifted => {
                checks[i].state = Conformance::Differs;
                texts[i].push(format!("{} {}", r.aspect.label(), r.sentence()));
            }
            State::NotEnforced if runtime => {
                checks[i].state = Conformance::Differs;
                texts[i].push(format!("{} {}", r.aspect.label(), r.sentence()));
            }
            State::Verified if runtime && r.aspect == Aspect::VcpuThreads => {
                texts[i].push("threads agree".into());
            }
            State::Verified if runtime => {
                texts[i].push(format!("{} verified", r.aspect.label()));
            }
            State::Unread if runtime => {
                texts[i].push(format!("{} {}", r.aspect.label(), r.sentence()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule of the table (`rules::RULES`) has its line in `kvmtune status`:
    /// a rule added to the table without an aspect here fails this test.
    #[test]
    fn every_rule_in_the_table_appears_in_status() {
        for rule in crate::rules::RULES {
            let aspect = aspect_of_rule(rule.id)
                .unwrap_or_else(|| panic!("rule {} has no line in status", rule.id));
            let (id, what) = ASPECTS[aspect];
            assert!(
                rule.id.starts_with(id),
                "rule {} is shown as {id} ({what})",
                rule.id
            );
        }
    }
}
