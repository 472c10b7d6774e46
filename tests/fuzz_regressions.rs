//! Issue 7, fuzzing in `cargo test`: the inputs cargo-fuzz found (kept in
//! tests/data/fuzz/TARGET/, one file each) and a bounded proptest-based fuzz that
//! mutates the real test domains and policies, through the same checks as the
//! fuzz/ targets: never a panic; a rewrite re-parses and is idempotent.
//! The long-running libFuzzer runs are fuzz/run.sh (nightly, not in `cargo test`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::policy::Policy;
use proptest::prelude::*;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn setup() -> &'static (Policy, Vec<Host>, Vec<String>) {
    static SETUP: OnceLock<(Policy, Vec<Host>, Vec<String>)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = manifest().join("tests/data/hosts");
        let hosts = [
            "intel-xeon-silver4108-2s8c2t-2node",
            "intel-core-i5-m560-laptop-1s2c2t",
            "amd-opteron-magnycours-4s-8node-sparse-ids",
        ]
        .iter()
        .map(|h| kvmtune_sys::sysfs::read_host(&dir.join(h)).unwrap())
        .collect();
        let mut domains = Vec::new();
        for d in [
            manifest().join("tests/data/domains"),
            manifest().join("../shared/fixtures/domains"),
        ] {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "xml"))
                .collect();
            files.sort();
            domains.extend(files.iter().map(|f| std::fs::read_to_string(f).unwrap()));
        }
        (Policy::shipped(), hosts, domains)
    })
}

/// What fuzz/fuzz_targets/domain.rs checks.
fn check_domain(data: &[u8]) {
    if let Ok((domain, _)) = Domain::parse_bytes(data) {
        assert!(!domain.name.is_empty());
        assert!(domain.vcpus_current >= 1 && domain.vcpus_current <= domain.vcpus_max);
        let _ = domain.pins_explicitly();
        let _ = domain.pinned_cpus();
    }
}

/// What fuzz/fuzz_targets/rewrite.rs checks (first byte picks the host).
fn check_rewrite(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let Ok(xml) = std::str::from_utf8(bytes) else {
        return;
    };
    let (policy, hosts, _) = setup();
    let host = &hosts[selector as usize % hosts.len()];
    let Ok((_, once)) = kvmtune::inputs::plan_and_rewrite(policy, host, &Occupancy::default(), xml)
    else {
        return;
    };
    Domain::parse(&once).expect("rewritten XML re-parses");
    let (_, twice) = kvmtune::inputs::plan_and_rewrite(policy, host, &Occupancy::default(), &once)
        .expect("rewritten XML plans again");
    assert_eq!(once, twice, "rewrite is not idempotent");
}

/// What fuzz/fuzz_targets/policy.rs checks.
fn check_policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text, Path::new("fuzz.yaml")) {
        let domain = Domain::parse(
            "<domain type='kvm'><name>web-1</name><memory unit='GiB'>4</memory><vcpu>4</vcpu></domain>",
        )
        .unwrap();
        let _ = policy.select(&kvmtune_core::plan::guest_facts(&domain));
    }
}

fn check_status(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kvmtune_core::runstate::parse_status(text);
    }
}

#[test]
fn kept_fuzz_inputs_still_pass() {
    let dir = manifest().join("tests/data/fuzz");
    let mut n = 0;
    for (target, check) in [
        ("domain", check_domain as fn(&[u8])),
        ("rewrite", check_rewrite),
        ("policy", check_policy),
        ("status", check_status),
    ] {
        let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            check(&data);
            n += 1;
        }
    }
    eprintln!("replayed {n} kept fuzz inputs");
}

/// A mutation of a real document: byte-level edits at positions that matter to a
/// parser (around markup) as well as anywhere.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Replace(usize, u8),
    Duplicate(usize, usize),
}

fn tokens() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"<".to_vec()),
        Just(b">".to_vec()),
        Just(b"/>".to_vec()),
        Just(b"'".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"&amp;".to_vec()),
        Just(b"&#0;".to_vec()),
        Just(b"&#x110000;".to_vec()),
        Just(b"<![CDATA[".to_vec()),
        Just(b"]]>".to_vec()),
        Just(b"<!--".to_vec()),
        Just(b"-->".to_vec()),
        Just(b"<!DOCTYPE d [<!ENTITY a 'b'>]>".to_vec()),
        Just(b"<vcpu>4096</vcpu>".to_vec()),
        Just(b"<vcpu current='0'>4</vcpu>".to_vec()),
        Just(b"<vcpupin vcpu='4294967295' cpuset='0-8191'/>".to_vec()),
        Just(b"<cputune><emulatorpin cpuset='^0'/></cputune>".to_vec()),
        Just(b"<numatune><memory mode='strict' nodeset='99'/></numatune>".to_vec()),
        Just(b"<memory unit='EiB'>16</memory>".to_vec()),
        Just(
            b"<memoryBacking><hugepages><page size='1' unit='G'/></hugepages></memoryBacking>"
                .to_vec()
        ),
        Just(b"<cpu mode='host-model'><numa><cell cpus='0-3' memory='1'/></numa></cpu>".to_vec()),
        Just(b"<iothreads>1024</iothreads>".to_vec()),
        Just(b"xmlns:x='urn:x'".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just("\u{2028}é\u{202e}".as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 1..8),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), tokens()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Replace(a, b)),
        (any::<usize>(), 1usize..256).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
    ]
}

fn mutate(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut out = base.to_vec();
    for m in muts {
        let len = out.len().max(1);
        match m {
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(out.len());
                if at < end {
                    out.drain(at..end);
                }
            }
            Mutation::Insert(at, t) => {
                let at = at % (out.len() + 1);
                out.splice(at..at, t.iter().copied());
            }
            Mutation::Replace(at, b) => {
                if !out.is_empty() {
                    let at = at % out.len();
                    out[at] = *b;
                }
            }
            Mutation::Duplicate(at, n) => {
                let at = at % len;
                let end = (at + n).min(out.len());
                let chunk: Vec<u8> = out.get(at..end).unwrap_or(&[]).to_vec();
                out.splice(end..end, chunk);
            }
        }
    }
    out
}

proptest! {
    // Bounded: 1,000 cases each keep this to seconds (debug build).
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_domains_never_panic_the_parser_or_the_rewrite(
        pick in any::<usize>(),
        host in any::<u8>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let (_, _, domains) = setup();
        let base = domains[pick % domains.len()].as_bytes();
        let data = mutate(base, &muts);
        check_domain(&data);
        let mut with_host = vec![host];
        with_host.extend_from_slice(&data);
        check_rewrite(&with_host);
        check_status(&[b"<domstatus pid='1'>".as_slice(), &data, b"</domstatus>"].concat());
    }

    #[test]
    fn mutated_policies_never_panic_the_loader(
        muts in proptest::collection::vec(mutation(), 1..6),
        extra in "[a-z_:{}\\[\\]0-9 ,\\-\n'*.]{0,40}",
    ) {
        let base = kvmtune_core::policy::SHIPPED_POLICY.as_bytes();
        let mut data = mutate(base, &muts);
        data.extend_from_slice(extra.as_bytes());
        check_policy(&data);
    }
}
