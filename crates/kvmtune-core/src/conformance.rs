//! Conformance of a running guest, rule by rule: the plan of its live XML (made as
//! the hook would make it) read as one verdict per aspect of TUNING-RULES.md — ok,
//! runtime-enforced (the hook applied it to the running QEMU), differs, opted out
//! or unknown. [`crate::status`] puts these [`Check`]s in each guest's view.

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::ledger::Entry;
use crate::plan::{Change, Enforcement, Plan};

/// Where a guest's placement was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The live XML pins the vCPUs (`<vcpupin>`/`<vcpu cpuset>`): libvirt applied them.
    Xml,
    /// The hook applied kvmtune's placement at `started` (ledger claim).
    Ledger,
    /// Nobody pinned it: the vCPUs float over every CPU.
    None,
}

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
        Change::VcpuPins { .. } => 0,
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

/// Rule-by-rule verdicts from the plan `p` of a guest's live XML: `source` and
/// `vcpu_cpus` are where its placement was read from and what it is, `threads` the
/// vCPU threads' affinity, `entry` its ledger claim (the hook applied it).
pub fn checks(
    p: &Plan,
    source: Source,
    vcpu_cpus: &[CpuSet],
    threads: &[Option<CpuSet>],
    entry: Option<&Entry>,
) -> Vec<Check> {
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
        describe_applied(&mut checks, &mut texts, entry, source, vcpu_cpus, threads);
    }
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
/// now would choose: describe that, and check the vCPU threads are there.
fn describe_applied(
    checks: &mut [Check],
    texts: &mut [Vec<String>],
    entry: &Entry,
    source: Source,
    vcpu_cpus: &[CpuSet],
    threads: &[Option<CpuSet>],
) {
    if checks[0].state == Conformance::RuntimeEnforced {
        let pins: Vec<String> = entry
            .vcpus
            .iter()
            .enumerate()
            .map(|(v, s)| format!("{v}→{s}"))
            .collect();
        texts[0] = vec![format!("applied at start: vCPU→CPU {}", pins.join(" "))];
        if source == Source::Ledger {
            let off: Vec<String> = threads
                .iter()
                .enumerate()
                .filter_map(|(v, t)| {
                    let t = t.as_ref()?;
                    let want = vcpu_cpus.get(v)?;
                    (t != want).then(|| format!("vCPU {v} runs on {t}, ledger says {want}"))
                })
                .collect();
            if !off.is_empty() {
                checks[0].state = Conformance::Differs;
                texts[0] = off;
            } else if !threads.is_empty() && threads.iter().all(Option::is_some) {
                texts[0][0].push_str("; threads agree");
            }
        }
    }
    if checks[1].state == Conformance::RuntimeEnforced {
        texts[1] = vec![format!("applied at start: memory node(s) {}", entry.nodes)];
    }
    if checks[2].state == Conformance::RuntimeEnforced {
        // Only the vCPU threads are read back by status.
        texts[2] = vec![match &entry.emulator {
            Some(e) => {
                format!("claimed at start: emulator threads on CPUs {e} (not read back)")
            }
            None => "claimed at start (not read back)".to_string(),
        }];
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
