//! The admin's tuning policy (`/etc/kvmtune/policy.yaml`, schema version 1): host
//! settings, per-rule defaults, ordered guest-matching rules, and the hook's
//! failure behaviour. Owns loading, validation (file:line:column errors) and
//! choosing the settings that apply to one guest.
//!
//! Two stages, as everywhere in kvmtune: the YAML is deserialized into private
//! `Raw*` structs (every key optional, `deny_unknown_fields`), then validated into
//! the public types, with the built-in defaults filled in. Errors serde finds
//! (unknown key, wrong type, bad cpulist, bad size) carry serde_yaml_ng's position.
//! Errors found after deserialization (duplicate rule names, shadowed rules,
//! impossible combinations, CPUs the host lacks) get theirs from the `locate`
//! submodule, which walks the document again with serde_yaml_ng's own parser, so
//! positions are right for flow style, quoting and anchors alike. That second walk
//! happens only on the error path: loading a valid policy parses it once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::placement::{Pool, ThreadPolicy};

mod locate;

use locate::{Seg, Want, dotted, find_duplicate_key, key, locate, without_position};

/// Where the production policy lives.
pub const DEFAULT_POLICY_PATH: &str = "/etc/kvmtune/policy.yaml";

/// The policy shipped with kvmtune (config/policy.yaml), parsed through the same path.
pub const SHIPPED_POLICY: &str = include_str!("../../../config/policy.yaml");

/// The namespace of kvmtune's own `<metadata>` element: `<kvmtune:rule>NAME</kvmtune:rule>`.
pub const METADATA_NAMESPACE: &str = "http://kvmtune.org/xmlns/kvmtune/1.0";

/// Nova's instance metadata namespace (`<nova:flavor name='...'>`).
pub const NOVA_NAMESPACE: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";

/// The only `version:` this kvmtune reads.
pub const SCHEMA_VERSION: u64 = 1;

/// The environment variable that lets the binary load a policy file that fails the
/// ownership/permission check (tests, development); the caller reads it and passes
/// the result to [`Policy::load_checked`].
pub const ALLOW_INSECURE_ENV: &str = "KVMTUNE_ALLOW_INSECURE_POLICY";

/// A policy larger than this is not a policy (and would slow down every guest start).
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// The rule name [`Policy::select`] reports when no rule matched; reserved.
pub const DEFAULTS_RULE_NAME: &str = "defaults";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnViolation {
    #[default]
    Warn,
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    #[default]
    Allow,
    Refuse,
}

/// `irq_cpus:` — which CPUs carry device interrupts and so are kept from guests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IrqCpus {
    /// The CPUs NIC/storage IRQs are explicitly bound to (an IRQ affine to every
    /// online CPU is unbound and says nothing).
    #[default]
    Auto,
    None,
    List(CpuSet),
}

/// Memory kept back on every NUMA node for the host itself (kernel, page tables,
/// libvirt, qemu's own overhead) when guests' committed memory is accounted
/// against the node's MemTotal: 1 GiB.
pub const DEFAULT_RESERVED_MEMORY_PER_NODE_KIB: u64 = 1 << 20;

/// Moves of running shared guests' vCPUs one admission may make (`host.repack_max_moves`).
pub const DEFAULT_REPACK_MAX_MOVES: u32 = 8;

/// The most `host.repack_max_moves` may say: each move is a syscall per thread and
/// a cgroup write in the hook, which must stay fast.
pub const MAX_REPACK_MOVES: u32 = 64;

/// `host:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// CPUs never given to guests (housekeeping, IRQs). Empty = none.
    pub reserved_cpus: CpuSet,
    pub irq_cpus: IrqCpus,
    /// CPU0 carries many interrupts and kernel work; guests only get it when allowed.
    pub allow_cpu0: bool,
    /// Host CPUs for the shared pool (Nova's `cpu_shared_set`); `None` (`none`)
    /// = every eligible CPU, `Some` of an empty set (`[]`) = no CPU at all.
    pub shared_cpus: Option<CpuSet>,
    /// Host CPUs for the dedicated pool (Nova's `cpu_dedicated_set`), as
    /// `shared_cpus`. Splitting the two keeps shared guests from taking the idle
    /// CPUs a later dedicated guest needs.
    pub dedicated_cpus: Option<CpuSet>,
    /// Memory per NUMA node guests never get (`host.reserved_memory_per_node`):
    /// a node holds guests up to MemTotal minus this, minus what the running
    /// guests committed there.
    pub reserved_memory_per_node_kib: u64,
    /// `host.repack`: a guest that does not fit may be admitted by moving running
    /// shared guests' vCPUs within their NUMA node ([`crate::repack`]).
    pub repack: bool,
    /// `host.repack_max_moves`: at most this many vCPU moves per admission.
    pub repack_max_moves: u32,
    /// `host.tuning:` the host-side rules `kvmtune host check|apply` enforce.
    pub tuning: crate::host_tuning::HostTuning,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            reserved_cpus: CpuSet::new(),
            irq_cpus: IrqCpus::default(),
            allow_cpu0: false,
            shared_cpus: None,
            dedicated_cpus: None,
            reserved_memory_per_node_kib: DEFAULT_RESERVED_MEMORY_PER_NODE_KIB,
            repack: true,
            repack_max_moves: DEFAULT_REPACK_MAX_MOVES,
            tuning: crate::host_tuning::HostTuning::default(),
        }
    }
}

impl HostSettings {
    /// The CPUs a pool may use at all (before reserved/IRQ/CPU0 are removed):
    /// `None` = no restriction; an empty set = the pool has no CPU (`[]`).
    pub fn pool_cpus(&self, pool: Pool) -> Option<&CpuSet> {
        match pool {
            Pool::Shared => self.shared_cpus.as_ref(),
            Pool::Dedicated => self.dedicated_cpus.as_ref(),
        }
    }

    /// Whether the pools have CPU sets of their own (either key set, `[]` too).
    pub fn pools_split(&self) -> bool {
        self.shared_cpus.is_some() || self.dedicated_cpus.is_some()
    }
}

impl Policy {
    /// The CPUs `host.irq_cpus` keeps from guests on `host`: with `auto` the CPUs
    /// the host's IRQs are bound to ([`crate::host::Host::irq_bound_cpus`]), with
    /// `none` no CPU, with a list the listed CPUs that are online.
    pub fn irq_cpus(&self, host: &crate::host::Host) -> CpuSet {
        match &self.host.irq_cpus {
            IrqCpus::Auto => host.irq_bound_cpus(),
            IrqCpus::None => CpuSet::new(),
            IrqCpus::List(set) => set.intersection(&host.online),
        }
    }
}

/// `<numatune><memory mode=...>`; `Off` leaves numatune alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryMode {
    Preferred,
    Strict,
    Restrictive,
    Interleave,
    Off,
}

/// Where emulator threads and iothreads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmulatorPlacement {
    /// On the guest's own vCPU CPUs.
    WithVcpus,
    /// On the host's reserved (housekeeping) CPUs; falls back to with-vcpus when none.
    Housekeeping,
    /// On the shared CPUs of the guest's NUMA node(s): eligible CPUs no dedicated
    /// guest holds (a dedicated guest's own vCPU CPUs excluded); falls back to
    /// with-vcpus when there are none.
    NodeShared,
}

/// Guests that already pin vCPUs (e.g. Nova `hw:cpu_policy=dedicated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingPins {
    Keep,
    Override,
}

/// What a dedicated guest gets when no dedicated CPUs are free: the eligible shared
/// CPUs (never another guest's dedicated CPU, never a forbidden one), or a refused
/// start. `on_violation: refuse` always refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DedicatedFallback {
    Shared,
    Refuse,
}

/// Disk cache mode to enforce on `device='disk'` disks, or `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskCache {
    None,
    Writethrough,
    Writeback,
    Directsync,
    Unsafe,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskIo {
    Native,
    Threads,
    IoUring,
    Keep,
}

/// What happens after a guest started with XML-level violations (`converge:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Converge {
    /// The hook queues the guest (never calling libvirt) and `kvmtune converge`
    /// (the `kvmtune-converge.path` unit) conforms its persistent definition, as
    /// `kvmtune apply GUEST --yes` does, so its next cold boot conforms. Never for
    /// guests with Nova metadata (Nova owns their definitions).
    #[default]
    AfterStart,
    /// Only warn or refuse (`on_violation`); the admin runs `kvmtune apply`.
    Off,
}

/// What rule 5 does with `host-passthrough`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuModeAction {
    /// Rewrite to host-model.
    HostModel,
    /// Leave the XML; the hook refuses to start such a guest.
    Refuse,
    /// Leave it alone.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HugePagesMode {
    /// Back memory with huge pages when the guest's node has enough free pages.
    Auto,
    Off,
}

/// The effective settings for one guest: `defaults:` overridden by the first
/// matching rule. One field per rule of TUNING-RULES.md.
///
/// `Default` is the built-in defaults: what a policy that names no key gets (and
/// what config/policy.yaml spells out, tested).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// 1.1/1.3: place and pin vCPUs.
    pub pin_vcpus: bool,
    /// 1.2: memory binding of the guest to its vCPUs' node(s).
    pub memory_mode: MemoryMode,
    pub emulator: EmulatorPlacement,
    pub existing_pins: ExistingPins,
    /// 2.1
    pub disk_cache: DiskCache,
    pub disk_io: DiskIo,
    /// 3.1
    pub nosharepages: bool,
    /// 3.2
    pub hugepages: HugePagesMode,
    /// Huge page size in KiB (2048 or 1048576).
    pub hugepage_size_kib: u64,
    /// 4.1
    pub vhost_net: bool,
    /// 4.2: queues = min(vCPUs, this); 0 or 1 leaves queues alone.
    pub max_net_queues: u32,
    /// 5
    pub cpu_mode: CpuModeAction,
    /// 1.1: `shared` CPUs (overcommitted, least-loaded first) or `dedicated`
    /// (exclusive, one host CPU per vCPU), as Nova's `hw:cpu_policy`.
    pub pool: Pool,
    /// Shared pool: at most this many vCPUs per host CPU (Nova's cpu_allocation_ratio).
    pub cpu_allocation_ratio: u32,
    /// 1.1, dedicated pool: `prefer` (sibling threads used when that fits best),
    /// `isolate` (one vCPU per core, siblings left empty) or `require` (whole cores
    /// only), as Nova's `hw:cpu_thread_policy`.
    pub thread_policy: ThreadPolicy,
    /// 1.1, dedicated pool: what happens when no dedicated CPU is free.
    pub dedicated_fallback: DedicatedFallback,
    /// Restrict placement to these NUMA nodes (None = any node).
    pub nodes: Option<CpuSet>,
    /// 1.2: a guest spans at most this many NUMA nodes (Nova's `hw:numa_nodes`);
    /// None = as many as it needs.
    pub max_nodes: Option<u32>,
    /// After a start with XML-level violations: queue the guest for `kvmtune converge`.
    pub converge: Converge,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pin_vcpus: true,
            memory_mode: MemoryMode::Preferred,
            emulator: EmulatorPlacement::WithVcpus,
            existing_pins: ExistingPins::Keep,
            disk_cache: DiskCache::None,
            disk_io: DiskIo::Native,
            nosharepages: true,
            hugepages: HugePagesMode::Auto,
            hugepage_size_kib: HUGEPAGE_2M_KIB,
            vhost_net: true,
            max_net_queues: 8,
            cpu_mode: CpuModeAction::HostModel,
            nodes: None,
            pool: Pool::Shared,
            cpu_allocation_ratio: 16,
            thread_policy: ThreadPolicy::Prefer,
            dedicated_fallback: DedicatedFallback::Shared,
            max_nodes: None,
            converge: Converge::AfterStart,
        }
    }
}

const HUGEPAGE_2M_KIB: u64 = 2048;
const HUGEPAGE_1G_KIB: u64 = 1024 * 1024;

/// How a rule picks guests; every given criterion must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Shell glob on the guest name.
    pub name: Option<String>,
    /// `<kvmtune:rule>VALUE</kvmtune:rule>` in the guest's metadata.
    pub metadata: Option<String>,
    /// Glob on Nova's `<nova:flavor name=...>`.
    pub flavor: Option<String>,
    /// Inclusive vCPU count range.
    pub vcpus: Option<(u32, u32)>,
    /// Inclusive memory range in KiB.
    pub memory_kib: Option<(u64, u64)>,
}

impl Match {
    /// No criterion at all: the rule takes every guest (only allowed as the last rule).
    pub fn is_catch_all(&self) -> bool {
        *self == Match::default()
    }

    /// Whether every given criterion holds for `guest`.
    pub fn matches(&self, guest: &GuestFacts<'_>) -> bool {
        let glob = |pattern: &Option<String>, value: Option<&str>| match pattern {
            None => true,
            // Patterns were compiled once during validation; a hand-built Match with
            // a bad pattern matches nothing rather than everything.
            Some(p) => {
                value.is_some_and(|v| glob::Pattern::new(p).is_ok_and(|pattern| pattern.matches(v)))
            }
        };
        let in_range = |range: Option<(u64, u64)>, value: u64| {
            range.is_none_or(|(min, max)| min <= value && value <= max)
        };
        glob(&self.name, Some(guest.name))
            && glob(&self.flavor, guest.nova_flavor)
            && self
                .metadata
                .as_deref()
                .is_none_or(|want| guest.kvmtune_rule.map(str::trim) == Some(want))
            && in_range(
                self.vcpus.map(|(a, b)| (u64::from(a), u64::from(b))),
                u64::from(guest.vcpus),
            )
            && in_range(self.memory_kib, guest.memory_kib)
    }
}

/// One entry of `rules:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub matches: Match,
    /// `false` opts matching guests out of kvmtune entirely.
    pub enabled: bool,
    /// The defaults with this rule's overrides applied.
    pub settings: Settings,
}

/// The policy's YAML text, kept so that checks made later (against the real host)
/// can point at line:column. It is not part of the policy's meaning: any two
/// `PolicyText`s compare equal, so policies compare by what they say.
#[derive(Clone, Default)]
pub struct PolicyText(Arc<str>);

impl PolicyText {
    pub fn new(text: &str) -> Self {
        PolicyText(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for PolicyText {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for PolicyText {}

impl fmt::Debug for PolicyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyText({} bytes)", self.0.len())
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Where it was read from (for messages); `<shipped>` for the embedded one.
    pub source: PathBuf,
    pub on_violation: OnViolation,
    pub on_error: OnError,
    pub host: HostSettings,
    pub defaults: Settings,
    pub rules: Vec<Rule>,
    /// The text it was parsed from (empty for a policy built in code).
    pub text: PolicyText,
}

impl Default for Policy {
    /// The built-in policy: what a file holding only `version: 1` gives.
    fn default() -> Self {
        Policy {
            source: PathBuf::from("<built-in>"),
            on_violation: OnViolation::default(),
            on_error: OnError::default(),
            host: HostSettings::default(),
            defaults: Settings::default(),
            rules: Vec::new(),
            text: PolicyText::default(),
        }
    }
}

/// What a guest gets: the settings and the name of the rule that chose them
/// (`defaults` when no rule matched). `None` settings = the guest opted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<'p> {
    pub rule_name: &'p str,
    pub settings: Option<&'p Settings>,
}

/// Facts about a guest that rules match on (kept apart from domain parsing so the
/// policy does not depend on XML).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestFacts<'a> {
    pub name: &'a str,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub kvmtune_rule: Option<&'a str>,
    pub nova_flavor: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// A YAML or schema error: unknown key, wrong type, bad cpulist...
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The policy file (or a directory above it) could be changed by someone other
    /// than root; `path` is the offending file or directory.
    #[error(
        "refusing policy {path}: {problem}; fix: {fix}, or set {env}=1 to load it anyway",
        env = ALLOW_INSECURE_ENV
    )]
    Insecure {
        path: PathBuf,
        problem: String,
        fix: String,
    },
}

/// Something legal but probably not meant; same `path:line:column: message` shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl Policy {
    /// Validates policy bytes read from `path` (at most [`MAX_POLICY_BYTES`]): they
    /// must be UTF-8, then [`Policy::parse`] applies.
    pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Policy, PolicyError> {
        if bytes.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::Read {
                path: path.to_path_buf(),
                message: format!("larger than {MAX_POLICY_BYTES} bytes"),
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Policy::parse(text, path),
            Err(e) => {
                let (line, column) = line_column(bytes, e.valid_up_to());
                Err(PolicyError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: "not valid UTF-8".to_string(),
                })
            }
        }
    }

    /// Parses policy text; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Policy, PolicyError> {
        let doc = Doc { text, source };
        let raw: RawPolicy = serde_yaml_ng::from_str(text).map_err(|e| doc.serde_error(&e))?;
        if raw.version != SCHEMA_VERSION {
            return Err(doc.version_error(raw.version));
        }

        let defaults = raw
            .defaults
            .unwrap_or_default()
            .apply_to(&Settings::default());
        if let Some(message) = preferred_conflict(&defaults) {
            return Err(doc.invalid(&[key("defaults"), key("nodes")], &message));
        }

        let raw_rules = raw.rules.unwrap_or_default();
        let mut rules: Vec<Rule> = Vec::with_capacity(raw_rules.len());
        for (index, raw_rule) in raw_rules.into_iter().enumerate() {
            let rule = doc.validate_rule(index, raw_rule, &defaults, &rules)?;
            rules.push(rule);
        }

        let host = raw.host.unwrap_or_default();
        let tuning = host.tuning.unwrap_or_default();
        for size in tuning.hugepages_per_node.keys() {
            // x86_64 huge page sizes only (2 MiB, 1 GiB).
            if !matches!(
                crate::host_tuning::page_size_kib(size),
                Some(2048 | 1_048_576)
            ) {
                return Err(doc.invalid(
                    &[
                        key("host"),
                        key("tuning"),
                        key("hugepages_per_node"),
                        key(size),
                    ],
                    &format!("'{size}' is not a huge page size: use 2M or 1G"),
                ));
            }
        }
        let repack_max_moves = host.repack_max_moves.unwrap_or(DEFAULT_REPACK_MAX_MOVES);
        if repack_max_moves > MAX_REPACK_MOVES {
            return Err(doc.invalid(
                &[key("host"), key("repack_max_moves")],
                &format!(
                    "{repack_max_moves} moves per admission is more than {MAX_REPACK_MOVES} (the hook must stay fast)"
                ),
            ));
        }
        Ok(Policy {
            source: source.to_path_buf(),
            on_violation: raw.on_violation.unwrap_or_default(),
            on_error: raw.on_error.unwrap_or_default(),
            host: HostSettings {
                reserved_cpus: host.reserved_cpus.map(|c| c.0).unwrap_or_default(),
                irq_cpus: host.irq_cpus.map(|i| i.0).unwrap_or_default(),
                allow_cpu0: host.allow_cpu0.unwrap_or(false),
                shared_cpus: host.shared_cpus.and_then(|c| c.0),
                dedicated_cpus: host.dedicated_cpus.and_then(|c| c.0),
                reserved_memory_per_node_kib: host
                    .reserved_memory_per_node
                    .map_or(DEFAULT_RESERVED_MEMORY_PER_NODE_KIB, |m| m.0),
                repack: host.repack.unwrap_or(true),
                repack_max_moves,
                tuning,
            },
            defaults,
            rules,
            text: PolicyText::new(text),
        })
    }

    /// The shipped default policy.
    // The text is compiled in and a unit test parses it: a failure here is a build
    // that never passed its tests, not something an admin can cause.
    #[allow(clippy::expect_used)]
    pub fn shipped() -> Policy {
        Policy::parse(SHIPPED_POLICY, Path::new("<shipped>"))
            .expect("the shipped policy is valid (tested)")
    }

    /// First matching rule wins; else the defaults.
    pub fn select(&self, guest: &GuestFacts<'_>) -> Selection<'_> {
        match self.rules.iter().find(|rule| rule.matches.matches(guest)) {
            Some(rule) => Selection {
                rule_name: &rule.name,
                settings: rule.enabled.then_some(&rule.settings),
            },
            None => Selection {
                rule_name: DEFAULTS_RULE_NAME,
                settings: Some(&self.defaults),
            },
        }
    }

    /// Checks what only the real host can tell: every CPU in `reserved_cpus` and an
    /// `irq_cpus` list, and every NUMA node in a `nodes:` setting, must exist there.
    /// `host_cpus` are the host's online CPUs, `host_nodes` its NUMA nodes.
    pub fn check_against(&self, host_cpus: &CpuSet, host_nodes: &CpuSet) -> Vec<PolicyError> {
        let doc = Doc {
            text: self.text.as_str(),
            source: &self.source,
        };
        let mut errors = Vec::new();
        let mut check = |path: &[Seg<'_>], set: &CpuSet, have: &CpuSet, what: Thing| {
            let missing = set.difference(have);
            if !missing.is_empty() {
                errors.push(doc.invalid(path, &what.missing(&missing, have)));
            }
        };
        let reserved = &self.host.reserved_cpus;
        check(
            &[key("host"), key("reserved_cpus")],
            reserved,
            host_cpus,
            Thing::Cpu,
        );
        if let IrqCpus::List(irq) = &self.host.irq_cpus {
            check(&[key("host"), key("irq_cpus")], irq, host_cpus, Thing::Cpu);
        }
        let none = CpuSet::new();
        let shared = self.host.shared_cpus.as_ref().unwrap_or(&none);
        let dedicated = self.host.dedicated_cpus.as_ref().unwrap_or(&none);
        check(
            &[key("host"), key("shared_cpus")],
            shared,
            host_cpus,
            Thing::Cpu,
        );
        check(
            &[key("host"), key("dedicated_cpus")],
            dedicated,
            host_cpus,
            Thing::Cpu,
        );

        if let Some(nodes) = &self.defaults.nodes {
            check(
                &[key("defaults"), key("nodes")],
                nodes,
                host_nodes,
                Thing::Node,
            );
        }
        for (index, rule) in self.rules.iter().enumerate() {
            // A rule inheriting the defaults' nodes was reported at `defaults:`.
            if rule.settings.nodes == self.defaults.nodes {
                continue;
            }
            if let Some(nodes) = &rule.settings.nodes {
                let path = [key("rules"), Seg::Index(index), key("set"), key("nodes")];
                check(&path, nodes, host_nodes, Thing::Node);
            }
        }
        let both = shared.intersection(dedicated);
        if !both.is_empty() {
            errors.push(doc.invalid(
                &[key("host"), key("dedicated_cpus")],
                &format!(
                    "CPUs {both} are in both shared_cpus and dedicated_cpus: a CPU serves one pool"
                ),
            ));
        }
        errors
    }

    /// Legal but probably unintended against this host: reserved/IRQ CPUs (and CPU0
    /// unless allowed) leaving no CPU for guests, and rules whose `set:` is ignored
    /// because they opt guests out (`enabled: false`).
    pub fn warnings_against(&self, host_cpus: &CpuSet, host_nodes: &CpuSet) -> Vec<PolicyWarning> {
        let _ = host_nodes;
        let doc = Doc {
            text: self.text.as_str(),
            source: &self.source,
        };
        let mut warnings = Vec::new();
        let mut kept = self.host.reserved_cpus.clone();
        if let IrqCpus::List(irq) = &self.host.irq_cpus {
            kept = kept.union(irq);
        }
        if !self.host.allow_cpu0 {
            kept.insert(0);
        }
        if !host_cpus.is_empty() && host_cpus.is_subset(&kept) {
            let message = format!(
                "host: reserved_cpus, irq_cpus and CPU0 cover every host CPU ({host_cpus}): \
                 no CPU is left for guests"
            );
            warnings.push(doc.warning(&[key("host")], &message));
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let path = [key("rules"), Seg::Index(index), key("set")];
            if !rule.enabled && locate(doc.text, &path, Want::Key).is_some() {
                let message = format!(
                    "rules[{index}].set: has no effect: rule `{}` has enabled: false, so \
                     matching guests are left alone",
                    rule.name
                );
                warnings.push(doc.warning(&path, &message));
            }
        }
        let pools: Vec<Pool> = std::iter::once(&self.defaults)
            .chain(self.rules.iter().filter(|r| r.enabled).map(|r| &r.settings))
            .filter(|s| s.pin_vcpus)
            .map(|s| s.pool)
            .collect();
        let split = self.host.pools_split();
        for (pool, name) in [(Pool::Shared, "shared"), (Pool::Dedicated, "dedicated")] {
            let empty = self.host.pool_cpus(pool).is_some_and(CpuSet::is_empty);
            if empty && pools.contains(&pool) {
                let message = format!(
                    "host.{name}_cpus: [] gives the {name} pool no CPU, but the policy places \
                     guests in the {name} pool: they get no placement (dedicated guests with \
                     dedicated_fallback: shared go to the shared CPUs)"
                );
                warnings.push(doc.warning(&[key("host"), key(&format!("{name}_cpus"))], &message));
            }
        }
        if pools.contains(&Pool::Shared) && pools.contains(&Pool::Dedicated) && !split {
            warnings.push(doc.warning(
                &[key("host")],
                "host: both shared and dedicated guests, but no shared_cpus/dedicated_cpus: \
                 shared guests spread over idle CPUs and can leave none for a dedicated guest \
                 that starts later; consider splitting the CPUs between the pools",
            ));
        }
        warnings
    }
}

/// A policy file that cannot be read, as a [`PolicyError`].
pub fn read_error(path: &Path, err: &std::io::Error) -> PolicyError {
    PolicyError::Read {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

/// StrictModes for one path: owned by root, and not writable by group or others
/// (for a directory, unless sticky: others cannot replace root's file there).
pub fn check_owner_and_mode(
    path: &Path,
    uid: u32,
    mode: u32,
    is_dir: bool,
) -> Result<(), PolicyError> {
    let shown = path.display();
    if uid != 0 {
        return Err(PolicyError::Insecure {
            path: path.to_path_buf(),
            problem: format!("{shown} is owned by uid {uid}, not root"),
            fix: format!("chown root: {shown}"),
        });
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(PolicyError::Insecure {
            path: path.to_path_buf(),
            problem: format!(
                "{shown} is writable by group or others (mode {:04o})",
                mode & 0o7777
            ),
            fix: format!("chmod go-w {shown}"),
        });
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Thing {
    Cpu,
    Node,
}

impl Thing {
    fn missing(self, missing: &CpuSet, have: &CpuSet) -> String {
        let (one, many, all) = match self {
            Thing::Cpu => ("CPU", "CPUs", "its CPUs are"),
            Thing::Node => ("NUMA node", "NUMA nodes", "its NUMA nodes are"),
        };
        let (noun, verb) = if missing.len() == 1 {
            (one, "is")
        } else {
            (many, "are")
        };
        let have = if have.is_empty() {
            "none".to_string()
        } else {
            have.to_string()
        };
        format!("{noun} {missing} {verb} not on this host ({all} {have})")
    }
}

/// `preferred` binds memory to exactly one node in libvirt; a `nodes:` naming several
/// cannot be expressed. `None` when the settings are fine.
fn preferred_conflict(settings: &Settings) -> Option<String> {
    let nodes = settings.nodes.as_ref()?;
    (settings.memory_mode == MemoryMode::Preferred && nodes.len() > 1).then(|| {
        format!(
            "nodes {nodes} names several NUMA nodes, but memory_mode preferred takes a single \
             node (libvirt's numatune mode preferred); name one node or use memory_mode \
             strict, restrictive or interleave"
        )
    })
}

/// 1-based line and column of byte `offset` in `text` (column counted in characters).
fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// Raw (deserialized) form: every key optional, nothing resolved yet.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a policy mapping (version, host, defaults, rules...)"
)]
struct RawPolicy {
    version: u64,
    on_violation: Option<OnViolation>,
    on_error: Option<OnError>,
    host: Option<RawHost>,
    defaults: Option<RawSettings>,
    rules: Option<Vec<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a mapping of host settings")]
struct RawHost {
    reserved_cpus: Option<ReservedCpus>,
    irq_cpus: Option<RawIrqCpus>,
    allow_cpu0: Option<bool>,
    shared_cpus: Option<PoolCpus>,
    dedicated_cpus: Option<PoolCpus>,
    reserved_memory_per_node: Option<MemorySize>,
    repack: Option<bool>,
    repack_max_moves: Option<u32>,
    tuning: Option<crate::host_tuning::HostTuning>,
}

/// `defaults:` and a rule's `set:`; the keys of [`Settings`] as the admin writes them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a mapping of tuning settings")]
struct RawSettings {
    pin_vcpus: Option<bool>,
    memory_mode: Option<MemoryMode>,
    emulator: Option<EmulatorPlacement>,
    existing_pins: Option<ExistingPins>,
    disk_cache: Option<DiskCache>,
    disk_io: Option<DiskIo>,
    nosharepages: Option<bool>,
    hugepages: Option<HugePagesMode>,
    hugepage_size: Option<HugePageSize>,
    vhost_net: Option<bool>,
    max_net_queues: Option<u32>,
    cpu_mode: Option<CpuModeAction>,
    pool: Option<Pool>,
    cpu_allocation_ratio: Option<u32>,
    thread_policy: Option<ThreadPolicy>,
    dedicated_fallback: Option<DedicatedFallback>,
    /// `None`: key absent (inherit the defaults'); `Some(NodeList(None))`: any node.
    #[serde(default, deserialize_with = "present")]
    nodes: Option<NodeList>,
    max_nodes: Option<MaxNodes>,
    converge: Option<Converge>,
}

impl RawSettings {
    fn apply_to(self, base: &Settings) -> Settings {
        Settings {
            pin_vcpus: self.pin_vcpus.unwrap_or(base.pin_vcpus),
            memory_mode: self.memory_mode.unwrap_or(base.memory_mode),
            emulator: self.emulator.unwrap_or(base.emulator),
            existing_pins: self.existing_pins.unwrap_or(base.existing_pins),
            disk_cache: self.disk_cache.unwrap_or(base.disk_cache),
            disk_io: self.disk_io.unwrap_or(base.disk_io),
            nosharepages: self.nosharepages.unwrap_or(base.nosharepages),
            hugepages: self.hugepages.unwrap_or(base.hugepages),
            hugepage_size_kib: self.hugepage_size.map_or(base.hugepage_size_kib, |h| h.0),
            vhost_net: self.vhost_net.unwrap_or(base.vhost_net),
            max_net_queues: self.max_net_queues.unwrap_or(base.max_net_queues),
            cpu_mode: self.cpu_mode.unwrap_or(base.cpu_mode),
            pool: self.pool.unwrap_or(base.pool),
            cpu_allocation_ratio: self
                .cpu_allocation_ratio
                .unwrap_or(base.cpu_allocation_ratio),
            thread_policy: self.thread_policy.unwrap_or(base.thread_policy),
            dedicated_fallback: self.dedicated_fallback.unwrap_or(base.dedicated_fallback),
            max_nodes: self.max_nodes.map_or(base.max_nodes, |m| m.0),
            converge: self.converge.unwrap_or(base.converge),
            nodes: match self.nodes {
                Some(given) => given.0,
                None => base.nodes.clone(),
            },
        }
    }
}

/// Deserializes a present key (even `null`) as `Some`, so absent and null differ.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule mapping (name, match, enabled, set)"
)]
struct RawRule {
    name: RuleName,
    #[serde(rename = "match")]
    matches: Option<RawMatch>,
    enabled: Option<bool>,
    set: Option<RawSettings>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of match criteria (name, metadata, flavor, vcpus, memory)"
)]
struct RawMatch {
    name: Option<Glob>,
    metadata: Option<MetadataValue>,
    flavor: Option<Glob>,
    vcpus: Option<VcpuRange>,
    memory: Option<MemoryRange>,
}

impl RawMatch {
    fn into_match(self) -> Match {
        Match {
            name: self.name.map(|g| g.0),
            metadata: self.metadata.map(|m| m.0),
            flavor: self.flavor.map(|g| g.0),
            vcpus: self.vcpus.map(|r| (r.min, r.max)),
            memory_kib: self.memory.map(|r| (r.min_kib, r.max_kib)),
        }
    }
}

/// Implements `Deserialize` for a scalar newtype from its `&str` (and, when given,
/// integer) form; errors raised there get serde_yaml_ng's position of the value.
macro_rules! scalar_from_str {
    ($ty:ident, $expecting:literal, $from_str:expr) => {
        scalar_from_str!($ty, $expecting, $from_str, |v: u64| $from_str(
            &v.to_string()
        ));
    };
    ($ty:ident, $expecting:literal, $from_str:expr, $from_u64:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        let from_str: fn(&str) -> Result<$ty, String> = $from_str;
                        from_str(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        let from_u64: fn(u64) -> Result<$ty, String> = $from_u64;
                        from_u64(v).map_err(E::custom)
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                        self.visit_str("")
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

/// `reserved_cpus:` — a cpulist, or `none`/empty.
struct ReservedCpus(CpuSet);
scalar_from_str!(
    ReservedCpus,
    "a cpulist such as \"0-1\", or none",
    |s: &str| parse_cpulist_or_none(s).map(|set| ReservedCpus(set.unwrap_or_default()))
);

/// `shared_cpus:` / `dedicated_cpus:` — a cpulist; `none` (or empty text) for no
/// restriction (every eligible CPU); a YAML list of cpulists, where `[]` means no
/// CPU at all.
struct PoolCpus(Option<CpuSet>);
impl<'de> Deserialize<'de> for PoolCpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PoolCpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cpulist such as \"1-7\", none (every eligible CPU), or [] (no CPU)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PoolCpus, E> {
                parse_cpulist_or_none(v).map(PoolCpus).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PoolCpus, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_unit<E: de::Error>(self) -> Result<PoolCpus, E> {
                Ok(PoolCpus(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PoolCpus, A::Error> {
                let mut set = CpuSet::new();
                while let Some(item) = seq.next_element::<ReservedCpus>()? {
                    set = set.union(&item.0);
                }
                Ok(PoolCpus(Some(set)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `nodes:` — a list of NUMA nodes, or `None` for any node (`null`, `none`, empty).
struct NodeList(Option<CpuSet>);
impl<'de> Deserialize<'de> for NodeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Option::<NodeListText>::deserialize(d)?;
        Ok(NodeList(text.and_then(|t| t.0)))
    }
}
struct NodeListText(Option<CpuSet>);
scalar_from_str!(
    NodeListText,
    "a NUMA node list such as \"0\" or \"0-1\", or none",
    |s: &str| parse_cpulist_or_none(s).map(NodeListText)
);

struct RawIrqCpus(IrqCpus);
scalar_from_str!(
    RawIrqCpus,
    "auto, none, or a cpulist such as \"0-1\"",
    |s: &str| {
        if s.trim() == "auto" {
            return Ok(RawIrqCpus(IrqCpus::Auto));
        }
        Ok(RawIrqCpus(match parse_cpulist_or_none(s)? {
            Some(set) => IrqCpus::List(set),
            None => IrqCpus::None,
        }))
    }
);

/// A cpulist, where `none` and the empty string (and an empty result) mean none.
fn parse_cpulist_or_none(s: &str) -> Result<Option<CpuSet>, String> {
    if s.trim() == "none" {
        return Ok(None);
    }
    let set = CpuSet::parse(s).map_err(|e| e.to_string())?;
    Ok((!set.is_empty()).then_some(set))
}

struct HugePageSize(u64);
scalar_from_str!(
    HugePageSize,
    "a huge page size, 2M or 1G",
    |s: &str| match parse_size_kib(s)? {
        kib @ (HUGEPAGE_2M_KIB | HUGEPAGE_1G_KIB) => Ok(HugePageSize(kib)),
        _ => Err(format!(
            "unsupported huge page size '{s}': use 2M or 1G (x86_64 huge page sizes)"
        )),
    },
    |v: u64| Err(format!("huge page size {v} needs a unit: use 2M or 1G"))
);

/// `max_nodes:` — a node count of at least 1, or `none` (no cap).
struct MaxNodes(Option<u32>);
scalar_from_str!(
    MaxNodes,
    "a number of NUMA nodes (1 or more), or none",
    |s: &str| {
        let t = s.trim();
        if t == "none" || t.is_empty() {
            return Ok(MaxNodes(None));
        }
        match t.parse::<u32>() {
            Ok(0) => Err("max_nodes 0 never fits: a guest uses at least one node".to_string()),
            Ok(n) => Ok(MaxNodes(Some(n))),
            Err(_) => Err(format!(
                "invalid max_nodes '{t}': a number such as 2, or none"
            )),
        }
    }
);

/// A memory size such as `1G` or `512M`; a bare `0` means none.
struct MemorySize(u64);
scalar_from_str!(
    MemorySize,
    "a memory size such as 1G or 512M",
    |s: &str| parse_size_kib(s).map(MemorySize),
    |v: u64| {
        if v == 0 {
            Ok(MemorySize(0))
        } else {
            Err(format!(
                "memory size {v} needs a unit (K, M, G or T), such as {v}G"
            ))
        }
    }
);

struct RuleName(String);
scalar_from_str!(RuleName, "a rule name", |s: &str| {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "invalid rule name '{s}': use letters, digits, '-', '_' and '.'"
        ));
    }
    if s == DEFAULTS_RULE_NAME {
        return Err(format!(
            "rule name '{s}' is reserved (it names the defaults when no rule matches)"
        ));
    }
    Ok(RuleName(s.to_string()))
});

struct MetadataValue(String);
scalar_from_str!(
    MetadataValue,
    "the text of a <kvmtune:rule> element",
    |s: &str| {
        let t = s.trim();
        if t.is_empty() {
            return Err("metadata value is empty".to_string());
        }
        Ok(MetadataValue(t.to_string()))
    }
);

struct Glob(String);
scalar_from_str!(
    Glob,
    "a glob pattern such as \"nfv-*\"",
    |s: &str| match glob::Pattern::new(s) {
        Ok(_) => Ok(Glob(s.to_string())),
        Err(e) => Err(format!("invalid glob '{s}': {}", e.msg)),
    }
);

struct VcpuRange {
    min: u32,
    max: u32,
}
scalar_from_str!(VcpuRange, "a vCPU count or range such as 2-8", |s: &str| {
    let number = |t: &str| {
        t.trim().parse::<u32>().map_err(|_| {
            format!("invalid vCPU range '{s}': expected a count or a range such as 2-8")
        })
    };
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(s)?, number(s)?),
    };
    if min > max {
        return Err(format!(
            "vCPU range '{s}' goes backwards, so it never matches"
        ));
    }
    if max == 0 {
        return Err(format!(
            "vCPU range '{s}' never matches: a guest has at least one vCPU"
        ));
    }
    Ok(VcpuRange { min, max })
});

struct MemoryRange {
    min_kib: u64,
    max_kib: u64,
}
scalar_from_str!(
    MemoryRange,
    "a memory size or range such as 1G-64G",
    |s: &str| {
        let (min_kib, max_kib) = match s.split_once('-') {
            Some((a, b)) => (parse_size_kib(a)?, parse_size_kib(b)?),
            None => (parse_size_kib(s)?, parse_size_kib(s)?),
        };
        if min_kib > max_kib {
            return Err(format!(
                "memory range '{s}' goes backwards, so it never matches"
            ));
        }
        if max_kib == 0 {
            return Err(format!(
                "memory range '{s}' never matches: a guest has memory"
            ));
        }
        Ok(MemoryRange { min_kib, max_kib })
    },
    |v: u64| {
        if v == 0 {
            Err("memory range '0' never matches: a guest has memory".to_string())
        } else {
            Err(format!(
                "memory size {v} needs a unit (K, M, G or T), such as 4G"
            ))
        }
    }
);

/// A binary size with a unit (`512M`, `2048K`, `1G`, `2GiB`) in KiB. A bare `0` is
/// allowed (as the low end of a range); other numbers need a unit.
fn parse_size_kib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let bad = || {
        format!("invalid size '{t}': expected a whole number with a unit K, M, G or T, such as 4G")
    };
    if number.is_empty() {
        return Err(bad());
    }
    let too_large = || format!("size '{t}' is too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    let multiplier: u64 = match unit.trim_start().to_ascii_uppercase().as_str() {
        "" if n == 0 => 1,
        "" => {
            return Err(format!(
                "size '{t}' needs a unit (K, M, G or T), such as {t}G"
            ));
        }
        "K" | "KIB" => 1,
        "M" | "MIB" => 1 << 10,
        "G" | "GIB" => 1 << 20,
        "T" | "TIB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(multiplier).ok_or_else(too_large)
}

// ---------------------------------------------------------------------------
// Validation after deserialization, with positions.

/// The text being validated and its name, for building positioned errors.
struct Doc<'a> {
    text: &'a str,
    source: &'a Path,
}

impl Doc<'_> {
    /// An `Invalid` error at the value `path` points at; `message` is prefixed with
    /// the dotted path, as serde_yaml_ng does for its own errors.
    fn invalid(&self, path: &[Seg<'_>], message: &str) -> PolicyError {
        let (line, column) = self.position(path, Want::Value);
        PolicyError::Invalid {
            path: self.source.to_path_buf(),
            line,
            column,
            message: prefixed(path, message),
        }
    }

    /// A warning at the key `path` ends with.
    fn warning(&self, path: &[Seg<'_>], message: &str) -> PolicyWarning {
        let (line, column) = self.position(path, Want::Key);
        PolicyWarning {
            path: self.source.to_path_buf(),
            line,
            column,
            message: message.to_string(),
        }
    }

    /// Where `path` is; the start of the document when it cannot be found (a policy
    /// built in code has no text).
    fn position(&self, path: &[Seg<'_>], want: Want) -> (usize, usize) {
        locate(self.text, path, want).unwrap_or((1, 1))
    }

    fn version_error(&self, version: impl fmt::Display) -> PolicyError {
        self.invalid(
            &[key("version")],
            &format!(
                "unsupported policy schema version {version}; this kvmtune reads version \
                 {SCHEMA_VERSION}"
            ),
        )
    }

    /// Turns a serde_yaml_ng error into `Invalid`, pointing at the exact spot.
    fn serde_error(&self, err: &serde_yaml_ng::Error) -> PolicyError {
        // A newer schema is better reported as such than as its first unknown key.
        #[derive(Deserialize)]
        struct VersionOnly {
            version: Option<serde_yaml_ng::Value>,
        }
        // A version that is no number at all gets serde's type error instead.
        if let Ok(VersionOnly {
            version: Some(version),
        }) = serde_yaml_ng::from_str(self.text)
            && version.is_number()
            && version.as_u64() != Some(SCHEMA_VERSION)
        {
            let shown = serde_yaml_ng::to_string(&version).unwrap_or_default();
            return self.version_error(shown.trim_end());
        }

        let text = err.to_string();
        // serde's derive reports a duplicate key at its mapping's start; find the
        // duplicate itself.
        if text.contains("duplicate field")
            && let Some(dup) = find_duplicate_key(self.text)
        {
            return PolicyError::Invalid {
                path: self.source.to_path_buf(),
                line: dup.line,
                column: dup.column,
                message: dup.message,
            };
        }
        let (line, column) = match err.location() {
            Some(l) => (l.line(), l.column()),
            None if text.contains("more than one document") => second_document(self.text),
            None => (1, 1),
        };
        let mut message = without_position(&text, line, column);
        if message.starts_with("found character that cannot start any token")
            && self
                .text
                .lines()
                .nth(line.saturating_sub(1))
                .is_some_and(|l| l.contains('\t'))
        {
            message.push_str(" (tabs are not allowed for indentation in YAML)");
        }
        PolicyError::Invalid {
            path: self.source.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn validate_rule(
        &self,
        index: usize,
        raw: RawRule,
        defaults: &Settings,
        earlier: &[Rule],
    ) -> Result<Rule, PolicyError> {
        let rule_path = [key("rules"), Seg::Index(index)];
        let at = |sub: &'static str| [key("rules"), Seg::Index(index), key(sub)];
        let name = raw.name.0;

        if let Some(first) = earlier.iter().position(|r| r.name == name) {
            let (line, _) = self.position(&[key("rules"), Seg::Index(first)], Want::Value);
            return Err(self.invalid(
                &at("name"),
                &format!("duplicate rule name `{name}` (rules[{first}], line {line}, has it)"),
            ));
        }

        let matches = match raw.matches {
            Some(m) => {
                let m = m.into_match();
                if m.is_catch_all() {
                    return Err(self.invalid(
                        &at("match"),
                        "empty match: give at least one of name, metadata, flavor, vcpus, \
                         memory, or leave out match: for a catch-all rule (last rule only)",
                    ));
                }
                m
            }
            None => Match::default(),
        };

        if let Some((first, earlier_rule)) = earlier
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.is_catch_all() || r.matches == matches)
        {
            let (line, _) = self.position(&[key("rules"), Seg::Index(first)], Want::Value);
            let why = if earlier_rule.matches.is_catch_all() {
                "has no match criteria, so it takes every guest (a catch-all rule must be last)"
            } else {
                "has the same match criteria"
            };
            return Err(self.invalid(
                &rule_path,
                &format!(
                    "rule `{name}` can never match: rule `{}` (line {line}) comes first and {why}",
                    earlier_rule.name
                ),
            ));
        }

        let raw_set = raw.set.unwrap_or_default();
        let sets_nodes = raw_set.nodes.is_some();
        let settings = raw_set.apply_to(defaults);
        if let Some(message) = preferred_conflict(&settings) {
            let culprit = if sets_nodes { "nodes" } else { "memory_mode" };
            let path = [key("rules"), Seg::Index(index), key("set"), key(culprit)];
            return Err(self.invalid(&path, &message));
        }

        Ok(Rule {
            name,
            matches,
            enabled: raw.enabled.unwrap_or(true),
            settings,
        })
    }
}

/// `rules[2].set.nodes: message`, like serde_yaml_ng's own messages.
fn prefixed(path: &[Seg<'_>], message: &str) -> String {
    match dotted(path) {
        p if p.is_empty() => message.to_string(),
        p => format!("{p}: {message}"),
    }
}

/// The line of a second `---` document (serde_yaml_ng gives no position for it).
fn second_document(text: &str) -> (usize, usize) {
    let mut seen_content = false;
    for (index, line) in text.lines().enumerate() {
        let t = line.trim();
        if line.starts_with("---") && seen_content {
            return (index + 1, 1);
        }
        if !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') && !line.starts_with("---") {
            seen_content = true;
        }
    }
    (1, 1)
}

#[cfg(test)]
mod tests;
