//! The admin's tuning policy (`/etc/kvmtune/policy.yaml`, schema version 1): host
//! settings, per-rule defaults, ordered guest-matching rules, and the hook's
//! failure behaviour. Owns loading, validation (file:line:column errors) and
//! choosing the settings that apply to one guest.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;

/// Where the production policy lives.
pub const DEFAULT_POLICY_PATH: &str = "/etc/kvmtune/policy.yaml";

/// The policy shipped with kvmtune (config/policy.yaml), parsed through the same path.
pub const SHIPPED_POLICY: &str = include_str!("../config/policy.yaml");

/// The namespace of kvmtune's own `<metadata>` element: `<kvmtune:rule>NAME</kvmtune:rule>`.
pub const METADATA_NAMESPACE: &str = "http://kvmtune.org/xmlns/kvmtune/1.0";

/// Nova's instance metadata namespace (`<nova:flavor name='...'>`).
pub const NOVA_NAMESPACE: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";

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

/// `host:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostSettings {
    /// CPUs never given to guests (housekeeping, IRQs). Empty = none.
    pub reserved_cpus: CpuSet,
    pub irq_cpus: IrqCpus,
    /// CPU0 carries many interrupts and kernel work; guests only get it when allowed.
    pub allow_cpu0: bool,
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
}

/// Guests that already pin vCPUs (e.g. Nova `hw:cpu_policy=dedicated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingPins {
    Keep,
    Override,
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
    /// Restrict placement to these NUMA nodes (None = any node).
    pub nodes: Option<CpuSet>,
}

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
}

impl Policy {
    /// Loads and validates the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let _ = path;
        unimplemented!()
    }

    /// Parses policy text; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Policy, PolicyError> {
        let _ = (text, source);
        unimplemented!()
    }

    /// The shipped default policy.
    pub fn shipped() -> Policy {
        Policy::parse(SHIPPED_POLICY, Path::new("<shipped>"))
            .expect("the shipped policy is valid (tested)")
    }

    /// First matching rule wins; else the defaults.
    pub fn select(&self, guest: &GuestFacts<'_>) -> Selection<'_> {
        let _ = guest;
        unimplemented!()
    }
}
