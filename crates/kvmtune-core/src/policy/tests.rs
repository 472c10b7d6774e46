//! Unit tests of the policy module: parsing, every validation error, rule
//! selection, host checks and loading.

use super::*;

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).unwrap()
}

/// Reads and validates a policy file (test helper: the core does no I/O itself).
fn load(path: &Path) -> Result<Policy, PolicyError> {
    Policy::parse_bytes(&std::fs::read(path).unwrap(), path)
}

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, Path::new("p.yaml"))
}

fn invalid(line: usize, column: usize, message: &str) -> PolicyError {
    PolicyError::Invalid {
        path: PathBuf::from("p.yaml"),
        line,
        column,
        message: message.to_string(),
    }
}

/// A valid policy touching every section; validation tests change one thing.
const VALID: &str = "\
version: 1
on_violation: refuse
on_error: allow
host:
  reserved_cpus: 0-1
  irq_cpus: auto
  allow_cpu0: false
defaults:
  memory_mode: preferred
  hugepage_size: 2M
rules:
  - name: nfv
    match:
      name: \"nfv-*\"
      vcpus: 2-8
      memory: 1G-64G
    set:
      hugepage_size: 1G
      nodes: 1
  - name: lab
    match:
      metadata: lab
    enabled: false
";

/// VALID with `from` (which must occur exactly once) replaced by `to`.
fn valid_with(from: &str, to: &str) -> String {
    assert_eq!(VALID.matches(from).count(), 1, "{from:?} must occur once");
    VALID.replacen(from, to, 1)
}

fn valid_policy() -> Policy {
    let defaults = Settings::default();
    Policy {
        source: PathBuf::from("p.yaml"),
        on_violation: OnViolation::Refuse,
        on_error: OnError::Allow,
        host: HostSettings {
            reserved_cpus: set("0-1"),
            irq_cpus: IrqCpus::Auto,
            allow_cpu0: false,
            shared_cpus: None,
            dedicated_cpus: None,
            reserved_memory_per_node_kib: 1 << 20,
            repack: true,
            repack_max_moves: 8,
            tuning: Default::default(),
        },
        defaults: defaults.clone(),
        rules: vec![
            Rule {
                name: "nfv".into(),
                matches: Match {
                    name: Some("nfv-*".into()),
                    vcpus: Some((2, 8)),
                    memory_kib: Some((1 << 20, 64 << 20)),
                    ..Match::default()
                },
                enabled: true,
                settings: Settings {
                    hugepage_size_kib: HUGEPAGE_1G_KIB,
                    nodes: Some(set("1")),
                    ..defaults.clone()
                },
            },
            Rule {
                name: "lab".into(),
                matches: Match {
                    metadata: Some("lab".into()),
                    ..Match::default()
                },
                enabled: false,
                settings: defaults,
            },
        ],
        text: PolicyText::default(),
    }
}

#[test]
fn parses_a_whole_policy() {
    assert_eq!(parse(VALID).unwrap(), valid_policy());
}

#[test]
fn minimal_policy_is_the_built_in_one() {
    let expected = Policy {
        source: PathBuf::from("p.yaml"),
        ..Policy::default()
    };
    assert_eq!(parse("version: 1\n").unwrap(), expected);
}

#[test]
fn built_in_defaults_are_the_documented_ones() {
    let expected = Settings {
        pin_vcpus: true,
        memory_mode: MemoryMode::Preferred,
        emulator: EmulatorPlacement::WithVcpus,
        existing_pins: ExistingPins::Keep,
        disk_cache: DiskCache::None,
        disk_io: DiskIo::Native,
        nosharepages: true,
        hugepages: HugePagesMode::Auto,
        hugepage_size_kib: 2048,
        vhost_net: true,
        max_net_queues: 8,
        cpu_mode: CpuModeAction::HostModel,
        nodes: None,
        pool: crate::placement::Pool::Shared,
        cpu_allocation_ratio: 16,
        thread_policy: crate::placement::ThreadPolicy::Prefer,
        dedicated_fallback: DedicatedFallback::Shared,
        max_nodes: None,
        converge: Converge::AfterStart,
    };
    assert_eq!(Settings::default(), expected);
    let host = HostSettings {
        reserved_cpus: CpuSet::new(),
        irq_cpus: IrqCpus::Auto,
        allow_cpu0: false,
        shared_cpus: None,
        dedicated_cpus: None,
        reserved_memory_per_node_kib: 1 << 20,
        repack: true,
        repack_max_moves: 8,
        tuning: Default::default(),
    };
    assert_eq!(HostSettings::default(), host);
}

#[test]
fn shipped_policy_spells_out_the_built_in_defaults() {
    let expected = Policy {
        source: PathBuf::from("<shipped>"),
        ..Policy::default()
    };
    assert_eq!(Policy::shipped(), expected);
}

#[test]
fn every_key_of_every_setting_parses() {
    let text = "\
version: 1
on_violation: refuse
on_error: refuse
host:
  reserved_cpus: 0-3,8
  irq_cpus: 4-5
  allow_cpu0: true
defaults:
  pin_vcpus: false
  memory_mode: interleave
  emulator: housekeeping
  existing_pins: override
  disk_cache: writeback
  disk_io: io_uring
  nosharepages: false
  hugepages: off
  hugepage_size: 1048576K
  vhost_net: false
  max_net_queues: 0
  cpu_mode: refuse
  thread_policy: isolate
  converge: off
  nodes: 0-1
";
    let policy = parse(text).unwrap();
    assert_eq!(
        policy.host,
        HostSettings {
            reserved_cpus: set("0-3,8"),
            irq_cpus: IrqCpus::List(set("4-5")),
            allow_cpu0: true,
            shared_cpus: None,
            dedicated_cpus: None,
            reserved_memory_per_node_kib: 1 << 20,
            repack: true,
            repack_max_moves: 8,
            tuning: Default::default(),
        }
    );
    assert_eq!(
        (policy.on_violation, policy.on_error),
        (OnViolation::Refuse, OnError::Refuse)
    );
    let expected = Settings {
        pin_vcpus: false,
        memory_mode: MemoryMode::Interleave,
        emulator: EmulatorPlacement::Housekeeping,
        existing_pins: ExistingPins::Override,
        disk_cache: DiskCache::Writeback,
        disk_io: DiskIo::IoUring,
        nosharepages: false,
        hugepages: HugePagesMode::Off,
        hugepage_size_kib: HUGEPAGE_1G_KIB,
        vhost_net: false,
        max_net_queues: 0,
        cpu_mode: CpuModeAction::Refuse,
        nodes: Some(set("0-1")),
        pool: crate::placement::Pool::Shared,
        cpu_allocation_ratio: 16,
        thread_policy: crate::placement::ThreadPolicy::Isolate,
        dedicated_fallback: DedicatedFallback::Shared,
        max_nodes: None,
        converge: Converge::Off,
    };
    assert_eq!(policy.defaults, expected);
}

#[test]
fn none_forms_and_overrides_back_to_any_node() {
    let text = "\
version: 1
host: {reserved_cpus: \"\", irq_cpus: none}
defaults: {memory_mode: strict, nodes: 0-1}
rules:
  - name: anywhere
    match: {name: x}
    set: {nodes: null}
  - name: inherits
    match: {name: y}
  - name: none-word
    match: {name: z}
    set: {nodes: none}
  - name: empty-string
    match: {name: w}
    set: {nodes: \"\"}
";
    let policy = parse(text).unwrap();
    assert_eq!(policy.host.reserved_cpus, CpuSet::new());
    assert_eq!(policy.host.irq_cpus, IrqCpus::None);
    assert_eq!(policy.rules[0].settings.nodes, None);
    assert_eq!(policy.rules[1].settings.nodes, Some(set("0-1")));
    assert_eq!(policy.rules[2].settings.nodes, None);
    assert_eq!(policy.rules[3].settings.nodes, None);
    let single = parse("version: 1\nhost: {reserved_cpus: 3}\n").unwrap();
    assert_eq!(single.host.reserved_cpus, set("3"));
    let none = parse("version: 1\nhost: {reserved_cpus: none, irq_cpus: \"\"}\n").unwrap();
    assert_eq!(
        none.host,
        HostSettings {
            irq_cpus: IrqCpus::None,
            ..HostSettings::default()
        }
    );
}

#[test]
fn hugepage_sizes() {
    for (text, kib) in [
        ("2M", 2048),
        ("1G", HUGEPAGE_1G_KIB),
        ("2048K", 2048),
        ("1048576K", HUGEPAGE_1G_KIB),
        ("1GiB", HUGEPAGE_1G_KIB),
    ] {
        let policy = parse(&format!(
            "version: 1\ndefaults: {{hugepage_size: {text}}}\n"
        ))
        .unwrap();
        assert_eq!(policy.defaults.hugepage_size_kib, kib, "{text}");
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size_kib("512M"), Ok(512 * 1024));
    assert_eq!(parse_size_kib("2T"), Ok(2 << 30));
    assert_eq!(parse_size_kib(" 4 g "), Ok(4 << 20));
    assert_eq!(parse_size_kib("0"), Ok(0));
    assert_eq!(
        parse_size_kib("1.5G"),
        Err(
            "invalid size '1.5G': expected a whole number with a unit K, M, G or T, such as 4G"
                .into()
        )
    );
    assert_eq!(
        parse_size_kib("99999999999999999999T"),
        Err("size '99999999999999999999T' is too large".into())
    );
    assert_eq!(
        parse_size_kib("17179869184T"),
        Err("size '17179869184T' is too large".into())
    );
    assert_eq!(
        parse_size_kib("12"),
        Err("size '12' needs a unit (K, M, G or T), such as 12G".into())
    );
}

/// One row per error kind: VALID with one change, and the exact error.
#[test]
fn validation_errors() {
    let cases: &[(&str, &str, PolicyError)] = &[
        // unknown key, at the key
        (
            "  allow_cpu0: false\n",
            "  allow_cpu0: false\n  alow_cpu0: true\n",
            invalid(
                8,
                3,
                "host: unknown field `alow_cpu0`, expected one of `reserved_cpus`, `irq_cpus`, `allow_cpu0`, `shared_cpus`, `dedicated_cpus`, `reserved_memory_per_node`, `repack`, `repack_max_moves`, `tuning`",
            ),
        ),
        (
            "      hugepage_size: 1G\n",
            "      hugepage_size: 1G\n      cpu_mdoe: keep\n",
            invalid(
                19,
                7,
                "rules[0].set: unknown field `cpu_mdoe`, expected one of `pin_vcpus`, `memory_mode`, `emulator`, `existing_pins`, `disk_cache`, `disk_io`, `nosharepages`, `hugepages`, `hugepage_size`, `vhost_net`, `max_net_queues`, `cpu_mode`, `pool`, `cpu_allocation_ratio`, `thread_policy`, `dedicated_fallback`, `nodes`, `max_nodes`, `converge`",
            ),
        ),
        (
            "on_error: allow\n",
            "on_error: allow\ntuning: on\n",
            invalid(
                4,
                1,
                "unknown field `tuning`, expected one of `version`, `on_violation`, `on_error`, `host`, `defaults`, `rules`",
            ),
        ),
        // wrong type, at the value
        (
            "allow_cpu0: false",
            "allow_cpu0: 0",
            invalid(
                7,
                15,
                "host.allow_cpu0: invalid type: integer `0`, expected a boolean",
            ),
        ),
        (
            "enabled: false",
            "enabled: no",
            invalid(
                23,
                14,
                "rules[1].enabled: invalid type: string \"no\", expected a boolean",
            ),
        ),
        (
            "host:\n  reserved",
            "host: 5\nx:\n  reserved",
            invalid(
                4,
                7,
                "host: invalid type: integer `5`, expected a mapping of host settings",
            ),
        ),
        (
            "memory_mode: preferred",
            "memory_mode: fast",
            invalid(
                9,
                16,
                "defaults.memory_mode: unknown variant `fast`, expected one of `preferred`, `strict`, `restrictive`, `interleave`, `off`",
            ),
        ),
        (
            "on_violation: refuse",
            "on_violation: block",
            invalid(
                2,
                15,
                "on_violation: unknown variant `block`, expected `warn` or `refuse`",
            ),
        ),
        // bad cpulist
        (
            "reserved_cpus: 0-1",
            "reserved_cpus: 0-one",
            invalid(
                5,
                18,
                "host.reserved_cpus: invalid cpulist '0-one': '0-one' is not a number or range",
            ),
        ),
        (
            "irq_cpus: auto",
            "irq_cpus: 9000",
            invalid(
                6,
                13,
                "host.irq_cpus: invalid cpulist '9000': 9000 is beyond the largest CPU number 8191",
            ),
        ),
        (
            "nodes: 1",
            "nodes: 3-1",
            invalid(
                19,
                14,
                "rules[0].set.nodes: invalid cpulist '3-1': range '3-1' goes backwards",
            ),
        ),
        // bad size
        (
            "memory: 1G-64G",
            "memory: 1G-64Q",
            invalid(
                16,
                15,
                "rules[0].match.memory: invalid size '64Q': expected a whole number with a unit K, M, G or T, such as 4G",
            ),
        ),
        (
            "memory: 1G-64G",
            "memory: 4096",
            invalid(
                16,
                15,
                "rules[0].match.memory: memory size 4096 needs a unit (K, M, G or T), such as 4G",
            ),
        ),
        // unsupported version, at its value; also when later keys are unknown to v1
        (
            "version: 1",
            "version: 2",
            invalid(
                1,
                10,
                "version: unsupported policy schema version 2; this kvmtune reads version 1",
            ),
        ),
        (
            "version: 1\n",
            "version: 2\npools: {}\n",
            invalid(
                1,
                10,
                "version: unsupported policy schema version 2; this kvmtune reads version 1",
            ),
        ),
        ("version: 1\n", "", invalid(1, 1, "missing field `version`")),
        // duplicate rule name, at the second name
        (
            "- name: lab",
            "- name: nfv",
            invalid(
                20,
                11,
                "rules[1].name: duplicate rule name `nfv` (rules[0], line 12, has it)",
            ),
        ),
        // a rule that can never match
        (
            "vcpus: 2-8",
            "vcpus: 8-2",
            invalid(
                15,
                14,
                "rules[0].match.vcpus: vCPU range '8-2' goes backwards, so it never matches",
            ),
        ),
        (
            "vcpus: 2-8",
            "vcpus: 0",
            invalid(
                15,
                14,
                "rules[0].match.vcpus: vCPU range '0' never matches: a guest has at least one vCPU",
            ),
        ),
        (
            "memory: 1G-64G",
            "memory: 64G-1G",
            invalid(
                16,
                15,
                "rules[0].match.memory: memory range '64G-1G' goes backwards, so it never matches",
            ),
        ),
        (
            "metadata: lab",
            "name: \"nfv-*\"\n      vcpus: 2-8\n      memory: 1G-64G",
            invalid(
                20,
                5,
                "rules[1]: rule `lab` can never match: rule `nfv` (line 12) comes first and has the same match criteria",
            ),
        ),
        (
            "      metadata: lab\n",
            "      {}\n",
            invalid(
                22,
                7,
                "rules[1].match: empty match: give at least one of name, metadata, flavor, vcpus, memory, or leave out match: for a catch-all rule (last rule only)",
            ),
        ),
        (
            "name: \"nfv-*\"",
            "name: \"[nfv\"",
            invalid(
                14,
                13,
                "rules[0].match.name: invalid glob '[nfv': invalid range pattern",
            ),
        ),
        // preferred takes one node
        (
            "nodes: 1",
            "nodes: 0-1",
            invalid(
                19,
                14,
                "rules[0].set.nodes: nodes 0-1 names several NUMA nodes, but memory_mode preferred takes a single node (libvirt's numatune mode preferred); name one node or use memory_mode strict, restrictive or interleave",
            ),
        ),
        (
            "  hugepage_size: 2M\n",
            "  hugepage_size: 2M\n  nodes: 0,2\n",
            invalid(
                11,
                10,
                "defaults.nodes: nodes 0,2 names several NUMA nodes, but memory_mode preferred takes a single node (libvirt's numatune mode preferred); name one node or use memory_mode strict, restrictive or interleave",
            ),
        ),
        // hugepage_size
        (
            "hugepage_size: 2M",
            "hugepage_size: 4M",
            invalid(
                10,
                18,
                "defaults.hugepage_size: unsupported huge page size '4M': use 2M or 1G (x86_64 huge page sizes)",
            ),
        ),
        (
            "hugepage_size: 1G",
            "hugepage_size: 1024",
            invalid(
                18,
                22,
                "rules[0].set.hugepage_size: huge page size 1024 needs a unit: use 2M or 1G",
            ),
        ),
        // duplicate YAML keys, at the repeat
        (
            "  irq_cpus: auto\n",
            "  irq_cpus: auto\n  irq_cpus: none\n",
            invalid(7, 3, "host: duplicate key `irq_cpus`"),
        ),
        (
            "on_error: allow\n",
            "on_error: allow\non_error: refuse\n",
            invalid(4, 1, "duplicate key `on_error`"),
        ),
        (
            "      vcpus: 2-8\n",
            "      vcpus: 2-8\n      vcpus: 4\n",
            invalid(16, 7, "rules[0].match: duplicate key `vcpus`"),
        ),
        // rule names
        (
            "- name: lab",
            "- name: defaults",
            invalid(
                20,
                11,
                "rules[1].name: rule name 'defaults' is reserved (it names the defaults when no rule matches)",
            ),
        ),
        (
            "- name: lab",
            "- name: \"my lab\"",
            invalid(
                20,
                11,
                "rules[1].name: invalid rule name 'my lab': use letters, digits, '-', '_' and '.'",
            ),
        ),
        // YAML syntax
        (
            "  irq_cpus: auto\n",
            "\tirq_cpus: auto\n",
            invalid(
                6,
                1,
                "found a tab character that violates indentation, while scanning a plain scalar at line 5 column 18",
            ),
        ),
    ];
    for (from, to, expected) in cases {
        let text = valid_with(from, to);
        assert_eq!(
            parse(&text).as_ref(),
            Err(expected),
            "{from:?} -> {to:?}\n{text}"
        );
    }
}

#[test]
fn catch_all_rule_must_be_last() {
    // VALID's nfv rule without criteria now takes every guest: lab can never match.
    let text = valid_with(
        "    match:\n      name: \"nfv-*\"\n      vcpus: 2-8\n      memory: 1G-64G\n",
        "",
    );
    assert_eq!(
        parse(&text),
        Err(invalid(
            16,
            5,
            "rules[1]: rule `lab` can never match: rule `nfv` (line 12) comes first and has no match criteria, so it takes every guest (a catch-all rule must be last)"
        ))
    );
    // As the last rule it is fine.
    let last = valid_with("    match:\n      metadata: lab\n", "");
    assert_eq!(parse(&last).unwrap().rules[1].matches, Match::default());
}

#[test]
fn preferred_conflict_from_a_rule_blames_the_key_the_rule_sets() {
    let text = "\
version: 1
defaults:
  memory_mode: strict
  nodes: 0-1
rules:
  - name: a
    match: {name: a}
    set: {memory_mode: preferred}
";
    let message = "rules[0].set.memory_mode: nodes 0-1 names several NUMA nodes, but memory_mode preferred takes a single node (libvirt's numatune mode preferred); name one node or use memory_mode strict, restrictive or interleave";
    assert_eq!(parse(text), Err(invalid(8, 24, message)));
}

#[test]
fn positions_hold_in_flow_style() {
    let text = "version: 1\nrules: [{name: a, match: {name: x}}, {name: a, match: {name: y}}]\n";
    assert_eq!(
        parse(text),
        Err(invalid(
            2,
            45,
            "rules[1].name: duplicate rule name `a` (rules[0], line 2, has it)"
        ))
    );
}

#[test]
fn more_than_one_document_is_refused() {
    assert_eq!(
        parse("version: 1\n---\nversion: 1\n"),
        Err(invalid(
            2,
            1,
            "deserializing from YAML containing more than one document is not supported"
        ))
    );
}

/// The keys of `defaults:`/`set:` as serde knows them (from its unknown-field error).
fn settings_keys() -> Vec<String> {
    let Err(PolicyError::Invalid { message, .. }) = parse("version: 1\ndefaults: {zzz: 1}\n")
    else {
        panic!("expected an unknown-field error");
    };
    let list = message.split("expected one of ").nth(1).unwrap();
    list.split(", ")
        .map(|k| k.trim_matches('`').to_string())
        .collect()
}

#[test]
fn every_setting_has_a_key_and_a_default() {
    // The admin's keys are Settings' fields (hugepage_size is given with a unit).
    let serde_yaml_ng::Value::Mapping(fields) =
        serde_yaml_ng::to_value(Settings::default()).unwrap()
    else {
        panic!("Settings serializes to a mapping");
    };
    let fields: Vec<String> = fields
        .keys()
        .map(|k| {
            k.as_str()
                .unwrap()
                .replace("hugepage_size_kib", "hugepage_size")
        })
        .collect();
    assert_eq!(settings_keys(), fields);
}

/// Every key of the schema appears, uncommented and documented by a comment
/// right above it, in the shipped policy.
#[test]
fn shipped_policy_documents_every_key() {
    let mut keys: Vec<(String, String)> = [
        "version",
        "on_violation",
        "on_error",
        "host",
        "defaults",
        "rules",
    ]
    .iter()
    .map(|k| (String::new(), k.to_string()))
    .collect();
    for k in ["reserved_cpus", "irq_cpus", "allow_cpu0"] {
        keys.push(("  ".into(), k.into()));
    }
    for k in settings_keys() {
        keys.push(("  ".into(), k));
    }
    let lines: Vec<&str> = SHIPPED_POLICY.lines().collect();
    for (indent, key) in keys {
        let wanted = format!("{indent}{key}:");
        let found: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with(&wanted))
            .collect();
        assert_eq!(found.len(), 1, "`{wanted}` once in config/policy.yaml");
        let above = lines[found[0] - 1].trim_start();
        let is_section = ["host", "defaults"].contains(&key.as_str());
        assert!(
            is_section || above.starts_with('#'),
            "`{key}` has a comment above it"
        );
    }
}

#[test]
/// Every example policy parses; each is there to be copied, so each has rules.
fn example_policies_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // Policies only (the directory also holds example guests for the README).
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let policy = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!policy.rules.is_empty(), "{}", path.display());
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["nova-compute.yaml", "small-lab.yaml"]);
}

#[test]
fn nova_example_routes_flavors() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples/nova-compute.yaml");
    let policy = load(&path).unwrap();
    assert_eq!(policy.host.reserved_cpus, set("0-1"));
    let guest = |flavor, vcpus, memory_kib| GuestFacts {
        name: "instance-0000002a",
        vcpus,
        memory_kib,
        nova_flavor: Some(flavor),
        ..GuestFacts::default()
    };
    let nfv = policy.select(&guest("nfv.large", 8, 16 << 20));
    assert_eq!(nfv.rule_name, "nfv");
    assert_eq!(nfv.settings.unwrap().hugepage_size_kib, HUGEPAGE_1G_KIB);
    assert_eq!(
        policy.select(&guest("db.xlarge", 16, 64 << 20)).rule_name,
        "database"
    );
    assert_eq!(
        policy.select(&guest("db.tiny", 1, 1 << 20)).rule_name,
        "defaults"
    );
    assert_eq!(
        policy.select(&guest("m1.small", 1, 2 << 20)).rule_name,
        "small"
    );
}

fn rule(name: &str, matches: Match, enabled: bool) -> Rule {
    Rule {
        name: name.into(),
        matches,
        enabled,
        settings: Settings {
            max_net_queues: 2,
            ..Settings::default()
        },
    }
}

#[test]
fn select_first_matching_rule_wins() {
    let policy = Policy {
        rules: vec![
            rule(
                "by-name",
                Match {
                    name: Some("nfv-*".into()),
                    ..Match::default()
                },
                true,
            ),
            rule(
                "by-metadata",
                Match {
                    metadata: Some("db".into()),
                    ..Match::default()
                },
                true,
            ),
            rule(
                "by-flavor",
                Match {
                    flavor: Some("m1.*".into()),
                    ..Match::default()
                },
                true,
            ),
            rule(
                "opt-out",
                Match {
                    name: Some("manual-?".into()),
                    ..Match::default()
                },
                false,
            ),
            rule(
                "big",
                Match {
                    vcpus: Some((9, 64)),
                    memory_kib: Some((16 << 20, 256 << 20)),
                    ..Match::default()
                },
                true,
            ),
            rule(
                "small",
                Match {
                    vcpus: Some((1, 2)),
                    ..Match::default()
                },
                true,
            ),
        ],
        ..Policy::default()
    };
    let base = GuestFacts {
        name: "web",
        vcpus: 4,
        memory_kib: 4 << 20,
        ..GuestFacts::default()
    };
    let pick = |facts: GuestFacts<'_>| {
        let selection = policy.select(&facts);
        (
            selection.rule_name.to_string(),
            selection.settings.map(|s| s.max_net_queues),
        )
    };
    let expect = |name: &str, queues: Option<u32>| (name.to_string(), queues);

    assert_eq!(pick(base.clone()), expect("defaults", Some(8)));
    assert_eq!(
        pick(GuestFacts {
            name: "nfv-1",
            ..base.clone()
        }),
        expect("by-name", Some(2))
    );
    // First match wins: a name and a metadata match, name's rule comes first.
    assert_eq!(
        pick(GuestFacts {
            name: "nfv-1",
            kvmtune_rule: Some("db"),
            ..base.clone()
        }),
        expect("by-name", Some(2))
    );
    assert_eq!(
        pick(GuestFacts {
            kvmtune_rule: Some(" db\n"),
            ..base.clone()
        }),
        expect("by-metadata", Some(2))
    );
    assert_eq!(
        pick(GuestFacts {
            kvmtune_rule: Some("dbx"),
            ..base.clone()
        }),
        expect("defaults", Some(8))
    );
    assert_eq!(
        pick(GuestFacts {
            nova_flavor: Some("m1.large"),
            ..base.clone()
        }),
        expect("by-flavor", Some(2))
    );
    assert_eq!(
        pick(GuestFacts {
            nova_flavor: Some("x1.large"),
            ..base.clone()
        }),
        expect("defaults", Some(8))
    );
    assert_eq!(
        pick(GuestFacts {
            name: "manual-1",
            ..base.clone()
        }),
        expect("opt-out", None)
    );
    assert_eq!(
        pick(GuestFacts {
            name: "manual-10",
            ..base.clone()
        }),
        expect("defaults", Some(8))
    );
    // Ranges are inclusive at both ends, and every criterion must hold.
    assert_eq!(
        pick(GuestFacts {
            vcpus: 9,
            memory_kib: 16 << 20,
            ..base.clone()
        }),
        expect("big", Some(2))
    );
    assert_eq!(
        pick(GuestFacts {
            vcpus: 64,
            memory_kib: 256 << 20,
            ..base.clone()
        }),
        expect("big", Some(2))
    );
    assert_eq!(
        pick(GuestFacts {
            vcpus: 65,
            memory_kib: 32 << 20,
            ..base.clone()
        }),
        expect("defaults", Some(8))
    );
    assert_eq!(
        pick(GuestFacts {
            vcpus: 16,
            memory_kib: (16 << 20) - 1,
            ..base.clone()
        }),
        expect("defaults", Some(8))
    );
    assert_eq!(
        pick(GuestFacts {
            vcpus: 2,
            ..base.clone()
        }),
        expect("small", Some(2))
    );
    assert_eq!(
        pick(GuestFacts { vcpus: 1, ..base }),
        expect("small", Some(2))
    );
}

#[test]
fn select_through_parsed_policy() {
    let policy = parse(VALID).unwrap();
    let guest = GuestFacts {
        name: "nfv-router",
        vcpus: 4,
        memory_kib: 8 << 20,
        ..GuestFacts::default()
    };
    assert_eq!(
        policy.select(&guest),
        Selection {
            rule_name: "nfv",
            settings: Some(&policy.rules[0].settings)
        }
    );
    let lab = GuestFacts {
        kvmtune_rule: Some("lab"),
        ..guest.clone()
    };
    assert_eq!(
        policy.select(&GuestFacts {
            vcpus: 12,
            ..lab.clone()
        }),
        Selection {
            rule_name: "lab",
            settings: None
        }
    );
    assert_eq!(
        policy.select(&GuestFacts {
            name: "web",
            ..guest
        }),
        Selection {
            rule_name: "defaults",
            settings: Some(&policy.defaults)
        }
    );
}

#[test]
fn check_against_the_host() {
    let text = valid_with("reserved_cpus: 0-1", "reserved_cpus: 0-1,70-71").replacen(
        "irq_cpus: auto",
        "irq_cpus: 6-9",
        1,
    );
    let policy = parse(&text).unwrap();
    assert_eq!(policy.check_against(&set("0-127"), &set("0-1")), vec![]);
    assert_eq!(
        policy.check_against(&set("0-7"), &set("0")),
        vec![
            invalid(
                5,
                18,
                "host.reserved_cpus: CPUs 70-71 are not on this host (its CPUs are 0-7)"
            ),
            invalid(
                6,
                13,
                "host.irq_cpus: CPUs 8-9 are not on this host (its CPUs are 0-7)"
            ),
            invalid(
                19,
                14,
                "rules[0].set.nodes: NUMA node 1 is not on this host (its NUMA nodes are 0)"
            ),
        ]
    );
    let defaults_nodes =
        parse("version: 1\ndefaults:\n  memory_mode: strict\n  nodes: 0-3\n").unwrap();
    assert_eq!(
        defaults_nodes.check_against(&set("0-7"), &set("0-1")),
        vec![invalid(
            4,
            10,
            "defaults.nodes: NUMA nodes 2-3 are not on this host (its NUMA nodes are 0-1)"
        )]
    );
}

#[test]
fn warnings_against_the_host() {
    let policy = parse(&valid_with(
        "    enabled: false\n",
        "    enabled: false\n    set: {disk_cache: keep}\n",
    ))
    .unwrap();
    let shown = |warnings: Vec<PolicyWarning>| -> Vec<String> {
        warnings.iter().map(ToString::to_string).collect()
    };
    let ignored_set = "p.yaml:24:5: rules[1].set: has no effect: rule `lab` has enabled: false, so matching guests are left alone";
    assert_eq!(
        shown(policy.warnings_against(&set("0-3"), &set("0"))),
        [ignored_set]
    );
    assert_eq!(
        shown(policy.warnings_against(&set("0-1"), &set("0"))),
        [
            "p.yaml:4:1: host: reserved_cpus, irq_cpus and CPU0 cover every host CPU (0-1): no CPU is left for guests",
            ignored_set,
        ]
    );
    assert_eq!(
        shown(
            parse(VALID)
                .unwrap()
                .warnings_against(&set("0-3"), &set("0"))
        ),
        Vec::<String>::new()
    );
}

#[test]
fn host_tuning_is_read_from_the_policy_and_checked() {
    let policy = parse(
        "version: 1\nhost:\n  tuning:\n    ksm: keep\n    hugepages_per_node:\n      1G: 4\n",
    )
    .unwrap();
    assert_eq!(policy.host.tuning.ksm, crate::host_tuning::Ksm::Keep);
    assert_eq!(policy.host.tuning.hugepages_per_node.get("1G"), Some(&4));
    assert_eq!(policy.host.tuning.thp, crate::host_tuning::Thp::Always);
    let err = parse("version: 1\nhost:\n  tuning:\n    hugepages_per_node:\n      4M: 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("host.tuning.hugepages_per_node.4M: '4M' is not a huge page size"),
        "{err}"
    );
    let err = parse("version: 1\nhost:\n  tuning:\n    kms: off\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":4:5: host.tuning: unknown field `kms`"),
        "{err}"
    );
}

#[test]
fn pool_cpu_sets_are_read_checked_against_the_host_and_must_not_overlap() {
    let policy = parse("version: 1\nhost:\n  shared_cpus: 1-7\n  dedicated_cpus: 8-15\n").unwrap();
    assert_eq!(
        policy.host.pool_cpus(crate::placement::Pool::Shared),
        Some(&set("1-7"))
    );
    assert_eq!(
        policy.host.pool_cpus(crate::placement::Pool::Dedicated),
        Some(&set("8-15"))
    );
    assert!(policy.check_against(&set("0-15"), &set("0")).is_empty());
    let errors = policy.check_against(&set("0-11"), &set("0"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains(":4:19: host.dedicated_cpus: CPUs 12-15 are not on this host"),
        "{}",
        errors[0]
    );
    let overlap = parse("version: 1\nhost:\n  shared_cpus: 1-8\n  dedicated_cpus: 8-15\n").unwrap();
    let errors = overlap.check_against(&set("0-15"), &set("0"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().ends_with(
            "host.dedicated_cpus: CPUs 8 are in both shared_cpus and dedicated_cpus: a CPU serves one pool"
        ),
        "{}",
        errors[0]
    );
    assert_eq!(
        parse("version: 1\n")
            .unwrap()
            .host
            .pool_cpus(crate::placement::Pool::Shared),
        None
    );
}

#[test]
fn an_empty_pool_list_means_no_cpu_and_none_means_every_cpu() {
    use crate::placement::Pool;
    let host = |text: &str| parse(&format!("version: 1\nhost:\n{text}")).unwrap().host;
    let empty = host("  shared_cpus: []\n  dedicated_cpus: 1-7\n");
    assert_eq!(empty.pool_cpus(Pool::Shared), Some(&CpuSet::new()));
    assert_eq!(empty.pool_cpus(Pool::Dedicated), Some(&set("1-7")));
    assert!(empty.pools_split());
    for all in ["none", "\"\"", "null"] {
        let h = host(&format!("  shared_cpus: {all}\n"));
        assert_eq!(h.pool_cpus(Pool::Shared), None, "{all}");
        assert!(!h.pools_split(), "{all}");
    }
    let list = host("  shared_cpus: [1-3, 5]\n");
    assert_eq!(list.pool_cpus(Pool::Shared), Some(&set("1-3,5")));
    let err = parse("version: 1\nhost:\n  shared_cpus: [x]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("host.shared_cpus"), "{err}");
    // Checked: a pool with no CPU that the policy uses is a warning.
    let policy = parse("version: 1\nhost:\n  shared_cpus: []\n").unwrap();
    assert!(policy.check_against(&set("0-7"), &set("0")).is_empty());
    let warnings = policy.warnings_against(&set("0-7"), &set("0"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .to_string()
            .contains("host.shared_cpus: [] gives the shared pool no CPU"),
        "{}",
        warnings[0]
    );
    let dedicated_only =
        parse("version: 1\nhost:\n  shared_cpus: []\ndefaults:\n  pool: dedicated\n").unwrap();
    assert!(
        dedicated_only
            .warnings_against(&set("0-7"), &set("0"))
            .is_empty()
    );
}

#[test]
fn mixing_pools_without_split_cpu_sets_is_a_warning() {
    let mixed = "version: 1\nrules:\n  - name: nfv\n    match:\n      name: 'nfv-*'\n    set:\n      pool: dedicated\n";
    let warnings = parse(mixed)
        .unwrap()
        .warnings_against(&set("0-7"), &set("0"));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .to_string()
            .contains("no shared_cpus/dedicated_cpus"),
        "{}",
        warnings[0]
    );
    let split = mixed.replace(
        "version: 1\n",
        "version: 1\nhost:\n  shared_cpus: 1-3\n  dedicated_cpus: 4-7\n",
    );
    assert!(
        parse(&split)
            .unwrap()
            .warnings_against(&set("0-7"), &set("0"))
            .is_empty()
    );
    assert!(
        parse("version: 1\n")
            .unwrap()
            .warnings_against(&set("0-7"), &set("0"))
            .is_empty()
    );
}

#[test]
fn irq_cpus_resolve_against_the_host() {
    // 2 nodes of 2 cores of 2 threads: CPUs 0-7, no IRQ bound anywhere but 5.
    let mut host = crate::host::Host::synthetic(1, 2, 2, 2, 1024);
    host.irqs.push(crate::host::Irq {
        number: 30,
        affinity: set("5"),
        actions: "eth0".to_string(),
    });
    let mut policy = Policy::default();
    policy.host.irq_cpus = IrqCpus::Auto;
    assert_eq!(policy.irq_cpus(&host), set("5"));
    policy.host.irq_cpus = IrqCpus::None;
    assert!(policy.irq_cpus(&host).is_empty());
    // A listed CPU the host does not have online is not kept.
    policy.host.irq_cpus = IrqCpus::List(set("2-3,12"));
    assert_eq!(policy.irq_cpus(&host), set("2-3"));
}

#[test]
fn reserved_memory_per_node_takes_sizes() {
    let kib = |text: &str| {
        parse(&format!(
            "version: 1\nhost:\n  reserved_memory_per_node: {text}\n"
        ))
        .map(|p| p.host.reserved_memory_per_node_kib)
    };
    assert_eq!(kib("1G").unwrap(), 1 << 20);
    assert_eq!(kib("512M").unwrap(), 512 << 10);
    assert_eq!(kib("2GiB").unwrap(), 2 << 20);
    assert_eq!(kib("0").unwrap(), 0);
    assert_eq!(
        parse("version: 1\n")
            .unwrap()
            .host
            .reserved_memory_per_node_kib,
        crate::policy::DEFAULT_RESERVED_MEMORY_PER_NODE_KIB
    );
    let err = kib("512").unwrap_err().to_string();
    assert!(err.contains("needs a unit"), "{err}");
    assert!(err.contains(":3:"), "{err}");
    let err = kib("lots").unwrap_err().to_string();
    assert!(err.contains("reserved_memory_per_node"), "{err}");
}

#[test]
fn repack_is_on_by_default_and_its_moves_are_bounded() {
    let host = |text: &str| parse(&format!("version: 1\nhost:\n{text}")).map(|p| p.host);
    let default = parse("version: 1\n").unwrap().host;
    assert!(default.repack);
    assert_eq!(
        default.repack_max_moves,
        crate::policy::DEFAULT_REPACK_MAX_MOVES
    );
    let off = host("  repack: false\n  repack_max_moves: 0\n").unwrap();
    assert!(!off.repack);
    assert_eq!(off.repack_max_moves, 0);
    assert_eq!(
        host("  repack_max_moves: 64\n").unwrap().repack_max_moves,
        64
    );
    let err = host("  repack_max_moves: 65\n").unwrap_err().to_string();
    assert!(
        err.contains(":3:")
            && err.contains("host.repack_max_moves: 65 moves per admission is more than 64"),
        "{err}"
    );
    let err = host("  repack: sometimes\n").unwrap_err().to_string();
    assert!(err.contains("host.repack"), "{err}");
}

#[test]
fn max_nodes_is_a_count_or_none() {
    let max = |text: &str| {
        parse(&format!("version: 1\ndefaults:\n  max_nodes: {text}\n"))
            .map(|p| p.defaults.max_nodes)
    };
    assert_eq!(max("2").unwrap(), Some(2));
    assert_eq!(max("none").unwrap(), None);
    assert_eq!(parse("version: 1\n").unwrap().defaults.max_nodes, None);
    let err = max("0").unwrap_err().to_string();
    assert!(err.contains("max_nodes 0 never fits"), "{err}");
    let err = max("two").unwrap_err().to_string();
    assert!(err.contains("invalid max_nodes"), "{err}");
}
