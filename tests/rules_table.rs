//! The rule table (kvmtune_core::rules::RULES) checked whole: ids unique, every
//! rule with keys, defaults and a summary that docs/policy.md (the source of
//! kvmtune-policy(5)) agrees with, and for every XML-level rule a domain that
//! violates it (the plan changes it, under that rule id, and explains it) and
//! one that conforms (no change, and its `conforms` agrees).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::plan::{Change, Plan, guest_facts, plan};
use kvmtune_core::policy::{Policy, Settings};
use kvmtune_core::rules::{RULES, RuleInfo, RuleKind, rule};

const BASE: &str = "version: 1\nhost:\n  reserved_cpus: none\n  irq_cpus: none\n";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two nodes with 2048 free 2 MiB pages each, so rule 3.2 can apply.
fn host() -> Host {
    kvmtune_sys::sysfs::read_host(
        &root().join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node"),
    )
    .unwrap()
}

fn policy() -> Policy {
    Policy::parse(BASE, Path::new("test.yaml")).unwrap()
}

fn settings_for(policy: &Policy, domain: &Domain) -> Settings {
    policy
        .select(&guest_facts(domain))
        .settings
        .cloned()
        .expect("the test policy enables every guest")
}

/// A 2-vCPU, 1 GiB guest with `top` after `<os>` and `devices` in `<devices>`.
fn guest(top: &str, devices: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>g</name>\n  <memory unit='MiB'>1024</memory>\n  <vcpu placement='static'>2</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n{top}\n  <devices>\n{devices}\n  </devices>\n</domain>\n"
    )
}

const DISK_WRITEBACK: &str = "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/><source file='/images/a.qcow2'/><target dev='vda' bus='virtio'/></disk>";
const DISK_NONE_NATIVE: &str = "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' io='native'/><source file='/images/a.qcow2'/><target dev='vda' bus='virtio'/></disk>";
const NIC_NO_VHOST: &str = "<interface type='network'><source network='default'/><model type='virtio'/><driver queues='2'/></interface>";
const NIC_NO_QUEUES: &str = "<interface type='network'><source network='default'/><model type='virtio'/><driver name='vhost'/></interface>";
const NIC_TUNED: &str = "<interface type='network'><source network='default'/><model type='virtio'/><driver name='vhost' queues='2'/></interface>";

/// For each XML-level rule: a domain that violates it, and one that conforms.
fn fixtures(id: &str) -> Option<(String, String)> {
    Some(match id {
        "2.1" => (guest("", DISK_WRITEBACK), guest("", DISK_NONE_NATIVE)),
        "3.1" => (
            guest("", ""),
            guest("  <memoryBacking><nosharepages/></memoryBacking>", ""),
        ),
        "3.2" => (
            guest("", ""),
            guest("  <memoryBacking><hugepages/></memoryBacking>", ""),
        ),
        "4.1" => (guest("", NIC_NO_VHOST), guest("", NIC_TUNED)),
        "4.2" => (guest("", NIC_NO_QUEUES), guest("", NIC_TUNED)),
        "5" => (
            guest("  <cpu mode='host-passthrough'/>", ""),
            guest("  <cpu mode='host-model'/>", ""),
        ),
        _ => return None,
    })
}

fn xml_rules() -> impl Iterator<Item = &'static RuleInfo> {
    RULES
        .iter()
        .filter(|r| matches!(r.kind, RuleKind::Xml { .. }))
}

fn plan_of(xml: &str) -> (Domain, Plan) {
    let domain = Domain::parse(xml).unwrap();
    let p = plan(&policy(), &host(), &Occupancy::default(), &domain).unwrap();
    (domain, p)
}

/// The text of docs/policy.md from the heading of `key` to the next heading.
fn doc_section<'a>(docs: &'a str, key: &str) -> Option<&'a str> {
    let heading = format!("### `{key}`\n");
    let start = docs.find(&heading)? + heading.len();
    let rest = &docs[start..];
    Some(&rest[..rest.find("\n#").unwrap_or(rest.len())])
}

#[test]
fn ids_are_unique_and_every_rule_is_described() {
    let mut ids = BTreeSet::new();
    for r in RULES {
        assert!(ids.insert(r.id), "rule {} listed twice", r.id);
        assert!(!r.title.is_empty(), "rule {}: no title", r.id);
        assert!(!r.summary.is_empty(), "rule {}: no summary", r.id);
        assert!(!r.keys.is_empty(), "rule {}: no policy key", r.id);
        for key in r.keys {
            assert!(
                !key.default.is_empty(),
                "rule {}: {} has no default",
                r.id,
                key.name
            );
        }
        assert_eq!(rule(r.id).map(|found| found.id), Some(r.id));
    }
}

#[test]
fn docs_name_every_rule_and_key_with_its_default() {
    let docs = std::fs::read_to_string(root().join("docs/policy.md")).unwrap();
    for r in RULES {
        let mut tagged = false;
        for key in r.keys {
            let section = doc_section(&docs, key.name).unwrap_or_else(|| {
                panic!(
                    "rule {}: docs/policy.md has no heading for {}",
                    r.id, key.name
                )
            });
            assert!(
                section.contains(&format!("Default: `{}`", key.default)),
                "rule {}: docs give {} another default than `{}`",
                r.id,
                key.name,
                key.default
            );
            tagged |= section.contains(&format!("[{}]", r.id));
        }
        assert!(
            tagged,
            "rule {}: no key of it is tagged [{}] in docs/policy.md",
            r.id, r.id
        );
    }
}

#[test]
fn every_key_parses_with_its_default() {
    for r in RULES {
        for key in r.keys {
            let (section, name) = key.name.split_once('.').unwrap();
            let yaml = format!("version: 1\n{section}:\n  {name}: {}\n", key.default);
            if let Err(e) = Policy::parse(&yaml, Path::new("key.yaml")) {
                panic!(
                    "rule {}: {} = {} does not parse: {e}",
                    r.id, key.name, key.default
                );
            }
        }
    }
}

#[test]
fn a_violating_domain_gets_a_change_under_the_rule_id_and_its_explanation() {
    for r in xml_rules() {
        let (violating, _) = fixtures(r.id)
            .unwrap_or_else(|| panic!("rule {}: no fixture domains in tests/rules_table.rs", r.id));
        let (domain, p) = plan_of(&violating);
        let edits: Vec<_> = p.edits.iter().filter(|e| e.reason.rule == r.id).collect();
        assert!(
            !edits.is_empty(),
            "rule {}: no change planned for\n{violating}\n{}",
            r.id,
            p.explain()
        );
        let explain = p.explain();
        let unmet = (r.conforms().unwrap())(&domain, &settings_for(&policy(), &domain)).expect_err(
            &format!("rule {}: conforms() accepts the violating domain", r.id),
        );
        for edit in edits {
            assert_eq!(edit.change.enforcement(), r.takes_effect, "rule {}", r.id);
            let line = format!("change: {} ({})", edit.reason, r.takes_effect_text());
            assert!(
                explain.contains(&line),
                "rule {}: `{line}` not in\n{explain}",
                r.id
            );
            // The plan's reason for 3.2 counts the host's free pages, which the
            // domain alone cannot know; every other reason is the domain's.
            assert!(
                r.id == "3.2" || unmet.contains(&edit.reason.text),
                "rule {}: `{unmet}` does not name `{}`",
                r.id,
                edit.reason.text
            );
        }
    }
}

#[test]
fn a_conforming_domain_gets_no_change_and_conforms_agrees() {
    for r in xml_rules() {
        let (_, conforming) = fixtures(r.id).unwrap();
        let (domain, p) = plan_of(&conforming);
        assert!(
            !p.edits.iter().any(|e| e.reason.rule == r.id),
            "rule {}: a change planned for the conforming\n{conforming}\n{}",
            r.id,
            p.explain()
        );
        let settings = settings_for(&policy(), &domain);
        assert_eq!(
            (r.conforms().unwrap())(&domain, &settings),
            Ok(()),
            "rule {}",
            r.id
        );
    }
}

/// On every test domain, `conforms` and the plan agree: a change under a rule's
/// id means the domain does not conform, and a domain that does not conform
/// gets that change, except where the rule says otherwise: 3.2 skips huge pages
/// the host does not have (with a note), and a vhost change that also sets
/// queues counts as 4.2.
#[test]
fn conforms_agrees_with_the_plan_on_every_test_domain() {
    let pol = policy();
    let h = host();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/data/domains")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let xml = std::fs::read_to_string(&path).unwrap();
        let domain = Domain::parse(&xml).unwrap();
        let p = plan(&pol, &h, &Occupancy::default(), &domain).unwrap();
        let Some(settings) = pol.select(&guest_facts(&domain)).settings.cloned() else {
            continue;
        };
        for r in xml_rules() {
            let planned = p.edits.iter().any(|e| e.reason.rule == r.id);
            let verdict = (r.conforms().unwrap())(&domain, &settings);
            let excused = match r.id {
                "3.2" => p.notes.iter().any(|n| n.rule == "3.2"),
                "4.1" => p
                    .edits
                    .iter()
                    .any(|e| matches!(e.change, Change::InterfaceDriver { vhost: true, .. })),
                _ => false,
            };
            assert!(
                planned == verdict.is_err() || (!planned && excused),
                "{}: rule {}: planned {planned}, conforms {verdict:?}",
                path.display(),
                r.id
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}
