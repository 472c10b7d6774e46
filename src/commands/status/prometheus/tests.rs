//! The exposition text of a status built on the fixture host
//! `intel-xeon-silver4108-2s8c2t-2node`, read back with a real parser (the
//! `prometheus-parse` crate) and checked sample by sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::ledger::{Entry, EntryState, Ledger};
use kvmtune_core::policy::Policy;
use kvmtune_core::runstate::parse_status;
use kvmtune_core::status::{Inputs, build};
use prometheus_parse::{LineInfo, Scrape, Value};

fn set(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

/// A status file: `pins` in the live XML, `cache` the disk's cache mode.
fn status_xml(name: &str, pid: u32, vcpus: u32, pins: &[(u32, &str)], cache: &str) -> String {
    let tids: String = (0..vcpus)
        .map(|v| format!("<vcpu id='{v}' pid='{}'/>", pid + 1 + v))
        .collect();
    let pins: String = pins
        .iter()
        .map(|(v, s)| format!("<vcpupin vcpu='{v}' cpuset='{s}'/>"))
        .collect();
    format!(
        "<domstatus state='running' pid='{pid}'><vcpus>{tids}</vcpus>\
         <domain type='kvm' id='1'><name>{name}</name><memory unit='KiB'>1048576</memory>\
         <vcpu placement='static'>{vcpus}</vcpu><cputune>{pins}</cputune>\
         <memoryBacking><nosharepages/></memoryBacking><numatune><memory mode='preferred' nodeset='0'/></numatune>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='{cache}' io='native'/>\
         <source file='/x.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain></domstatus>"
    )
}

fn entry(vcpus: &[&str]) -> Entry {
    let vcpus: Vec<CpuSet> = vcpus.iter().map(|s| set(s)).collect();
    Entry {
        uuid: None,
        cpus: vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s)),
        nodes: set("0"),
        vcpus,
        emulator: None,
        memory_kib: 1048576,
        pool: Pool::Shared,
        claimed_at: 10,
        state: EntryState::Running,
        rule: "defaults".into(),
        floating: false,
    }
}

/// `pinned`: XML pins CPUs 1 and 17, disk cache writeback; `runtime`: placed by the
/// hook on CPUs 2 and 18, vCPU 1's thread found on 0-31 (drift).
fn status() -> Status {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/intel-xeon-silver4108-2s8c2t-2node");
    let host = kvmtune_sys::sysfs::read_host(&root).unwrap();
    let policy = Policy::default();
    let mut live = BTreeMap::new();
    for (name, xml) in [
        (
            "pinned",
            status_xml("pinned", 100, 2, &[(0, "1"), (1, "17")], "writeback"),
        ),
        ("runtime", status_xml("runtime", 200, 2, &[], "none")),
    ] {
        live.insert(name.to_string(), parse_status(&xml).unwrap());
    }
    let mut ledger = Ledger {
        version: 1,
        ..Ledger::default()
    };
    ledger.guests.insert("pinned".into(), entry(&["1", "17"]));
    ledger.guests.insert("runtime".into(), entry(&["2", "18"]));
    let mut threads = BTreeMap::new();
    threads.insert("pinned".to_string(), vec![Some(set("1")), Some(set("17"))]);
    threads.insert(
        "runtime".to_string(),
        vec![Some(set("2")), Some(set("0-31"))],
    );
    build(&Inputs {
        policy: &policy,
        host: &host,
        ledger_path: PathBuf::from("/run/kvmtune/ledger.json"),
        ledger: Some(Some(ledger)),
        live,
        observed: threads
            .into_iter()
            .map(|(k, v)| (k, kvmtune_core::readback::Observed::vcpus_only(v)))
            .collect(),
        converge_queue: (PathBuf::from("/run/kvmtune/converge"), Ok(Vec::new())),
        now: 1_000_000,
    })
}

fn run_state() -> RunState {
    let mut hook_outcomes = BTreeMap::new();
    hook_outcomes.insert(
        "prepare-begin".to_string(),
        BTreeMap::from([("allowed".to_string(), 7), ("refused".to_string(), 2)]),
    );
    RunState {
        converge_queue_length: 3,
        hook_outcomes,
    }
}

fn parse(text: &str) -> Scrape {
    // The parser skips what it does not understand: make sure nothing was skipped.
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored | LineInfo::Empty),
            "not exposition format: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the one sample of `metric` with exactly these labels.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Value {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == metric
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    found[0].value.clone()
}

fn gauge(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match value(scrape, metric, labels) {
        Value::Gauge(v) => v,
        other => panic!("{metric} {labels:?} is not a gauge: {other:?}"),
    }
}

#[test]
fn every_family_has_help_and_type_and_parses() {
    let text = render(&status(), &run_state());
    let scrape = parse(&text);
    let families: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    assert!(families.len() >= 14, "{families:?}");
    for name in families {
        assert!(name.starts_with("kvmtune_"), "{name}");
        assert!(scrape.docs.contains_key(name), "no HELP for {name}");
        assert!(
            text.contains(&format!("\n# TYPE {name} "))
                || text.starts_with(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn conformance_per_guest_and_rule() {
    let scrape = parse(&render(&status(), &run_state()));
    let c = |guest, rule, aspect| {
        gauge(
            &scrape,
            "kvmtune_guest_conformance",
            &[("guest", guest), ("rule", rule), ("aspect", aspect)],
        )
    };
    // The writeback disk differs from rule 2.1; the runtime guest's disk is ok.
    assert_eq!(c("pinned", "2.1", "disk cache/io"), 0.0);
    assert_eq!(c("runtime", "2.1", "disk cache/io"), 1.0);
    assert_eq!(c("pinned", "1.1", "vCPU placement"), 1.0);
    // vCPU 1 of the runtime guest runs off its claim: placement differs, drift 1.
    assert_eq!(c("runtime", "1.1", "vCPU placement"), 0.0);
    let drift = |g| gauge(&scrape, "kvmtune_guest_affinity_drift", &[("guest", g)]);
    assert_eq!(drift("runtime"), 1.0);
    assert_eq!(drift("pinned"), 0.0);
}

#[test]
fn guests_nodes_and_pools() {
    let scrape = parse(&render(&status(), &run_state()));
    let info = [
        ("guest", "runtime"),
        ("pool", "shared"),
        ("nodes", "0"),
        ("rule", "defaults"),
        ("source", "ledger"),
    ];
    assert_eq!(gauge(&scrape, "kvmtune_guest_info", &info), 1.0);
    assert_eq!(
        gauge(
            &scrape,
            "kvmtune_guest_node",
            &[("guest", "pinned"), ("node", "0")]
        ),
        1.0
    );
    assert_eq!(
        gauge(
            &scrape,
            "kvmtune_guest_memory_bytes",
            &[("guest", "pinned")]
        ),
        1073741824.0
    );
    // Node 0 has CPUs 0-7,16-23; CPU0 is kept from guests and 1,2,17,18 are taken.
    let free = |node, pool| {
        gauge(
            &scrape,
            "kvmtune_node_free_cpus",
            &[("node", node), ("pool", pool)],
        )
    };
    assert_eq!(free("0", "shared"), 11.0);
    assert_eq!(free("0", "dedicated"), 11.0);
    assert_eq!(free("1", "shared"), 16.0);
    assert_eq!(
        gauge(
            &scrape,
            "kvmtune_node_free_hugepages",
            &[("node", "0"), ("size_bytes", "2097152")]
        ),
        2048.0
    );
    assert_eq!(gauge(&scrape, "kvmtune_ledger_agrees", &[]), 1.0);
}

#[test]
fn queue_length_and_hook_counters() {
    let scrape = parse(&render(&status(), &run_state()));
    assert_eq!(gauge(&scrape, "kvmtune_converge_queue_length", &[]), 3.0);
    let counter = |stage, outcome| match value(
        &scrape,
        "kvmtune_hook_outcomes_total",
        &[("stage", stage), ("outcome", outcome)],
    ) {
        Value::Counter(v) => v,
        other => panic!("not a counter: {other:?}"),
    };
    assert_eq!(counter("prepare-begin", "allowed"), 7.0);
    assert_eq!(counter("prepare-begin", "refused"), 2.0);
    // Known stages are exported before the hook ever ran them.
    assert_eq!(counter("release-end", "error"), 0.0);
    let empty = parse(&render(&status(), &RunState::default()));
    assert_eq!(
        empty
            .samples
            .iter()
            .filter(|s| s.metric == "kvmtune_hook_outcomes_total")
            .count(),
        HOOK_STAGES.len() * HOOK_OUTCOMES.len()
    );
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    let mut s = status();
    s.guests[0].name = "ev\"il\\\nname".into();
    let text = render(&s, &RunState::default());
    assert!(
        text.contains("kvmtune_guest_vcpus{guest=\"ev\\\"il\\\\\\nname\"} 2\n"),
        "{text}"
    );
    // Still one sample per line.
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored | LineInfo::Empty),
            "{line:?}"
        );
    }
}
