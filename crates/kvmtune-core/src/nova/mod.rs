//! `kvmtune nova check`: what a Nova compute node's nova.conf says against the
//! tuning policy and this host. Owns the comparison, pure: a parsed [`conf::NovaConf`],
//! the [`Policy`] and the [`Host`] go in, [`Finding`]s come out, each with the rule it
//! serves, a severity, the nova.conf line it is about and the exact nova.conf lines
//! that would make Nova define conforming guests.
//!
//! Nova's settings are host-wide, so they are compared with the policy's `host:` and
//! `defaults:` sections (a rule's `set:` applies per guest, which nova.conf cannot
//! express). The checks:
//!
//! - CPUs (rules 1.1, 1.3 and Nova's own): `[compute] cpu_dedicated_set` and
//!   `cpu_shared_set` disjoint (Nova refuses to start otherwise), online on this host,
//!   clear of CPU0 (unless `allow_cpu0`), the reserved and the IRQ CPUs
//!   ([`admission::forbidden_cpus`]), equal to the policy's `host.dedicated_cpus` /
//!   `host.shared_cpus` when those are set; `[DEFAULT] vcpu_pin_set` is deprecated;
//!   `existing_pins` must stay `keep`, so that kvmtune respects the pins Nova gives
//!   dedicated guests and counts them in its occupancy.
//! - rule 5: `[libvirt] cpu_mode` / `cpu_models`.
//! - rule 2.1: `[libvirt] disk_cachemodes`.
//! - rule 3.2: `[DEFAULT] reserved_host_memory_mb` against the host's huge page pool,
//!   `[DEFAULT] reserved_huge_pages` against the host's pages.
//! - repeated single-valued keys (the last wins; the earlier lines are reported).
//!
//! Every value a fix line suggests for a key is computed once ([`Wanted`]), so
//! all findings about one key suggest the same line, and [`merged_fix`] can print
//! one block to paste.

pub mod conf;

use serde::Serialize;

use crate::admission;
use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::policy::{CpuModeAction, DiskCache, ExistingPins, HugePagesMode, Policy};
use crate::rules;
use conf::{Entry, NovaConf};

/// Where Nova keeps its configuration.
pub const DEFAULT_NOVA_CONF: &str = "/etc/nova/nova.conf";

/// Nova's default `reserved_host_memory_mb`.
pub const NOVA_DEFAULT_RESERVED_MB: u64 = 512;

/// The rule id of findings about Nova's own requirements (not a tuning rule).
pub const NOVA_RULE: &str = "nova";

/// How much a finding matters; `Warn` and `Error` make `nova check` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// One thing `nova check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A TUNING-RULES.md id ("1.3", "2.1", "3.2", "5"), or [`NOVA_RULE`].
    pub rule: &'static str,
    pub severity: Severity,
    /// The nova.conf line the finding is about (`None`: about an unset option).
    pub line: Option<u32>,
    pub message: String,
    /// nova.conf lines that fix it: `[section]` headers and `key = value` lines
    /// (`#key = value` comments a line out). Empty when nova.conf cannot fix it.
    pub fix_lines: Vec<String>,
}

impl Finding {
    fn new(rule: &'static str, severity: Severity, line: Option<u32>, message: String) -> Self {
        Finding {
            rule,
            severity,
            line,
            message,
            fix_lines: Vec::new(),
        }
    }

    fn fix(mut self, lines: Vec<String>) -> Self {
        self.fix_lines = lines;
        self
    }
}

/// Whether the findings make `nova check` exit 1.
pub fn has_problems(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity >= Severity::Warn)
}

/// All fix lines of `findings`, grouped by section in order of first appearance,
/// each line once.
pub fn merged_fix(findings: &[Finding]) -> Vec<String> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for finding in findings {
        let mut current = String::new();
        for line in &finding.fix_lines {
            if line.starts_with('[') {
                current = line.clone();
                if !sections.iter().any(|(s, _)| *s == current) {
                    sections.push((current.clone(), Vec::new()));
                }
            } else if let Some((_, lines)) = sections.iter_mut().find(|(s, _)| *s == current)
                && !lines.contains(line)
            {
                lines.push(line.clone());
            }
        }
    }
    sections
        .into_iter()
        .flat_map(|(header, lines)| std::iter::once(header).chain(lines))
        .collect()
}

fn section_line(section: &str, line: String) -> Vec<String> {
    vec![format!("[{section}]"), line]
}

fn where_(entry: &Entry) -> String {
    format!(
        "[{}] {} = {}",
        entry.section,
        entry.key,
        entry.value.replace('\n', " ")
    )
}

/// Why CPUs are kept from guests: CPU0, reserved, IRQ.
struct Forbidden {
    all: CpuSet,
    cpu0: bool,
    reserved: CpuSet,
    irq: CpuSet,
}

impl Forbidden {
    fn of(policy: &Policy, host: &Host) -> Self {
        Forbidden {
            all: admission::forbidden_cpus(policy, host),
            cpu0: !policy.host.allow_cpu0 && host.online.contains(0),
            reserved: policy.host.reserved_cpus.intersection(&host.online),
            irq: policy.irq_cpus(host),
        }
    }

    /// "CPU0, reserved CPUs 1,17 and IRQ CPUs 2" for the forbidden CPUs in `cpus`.
    fn describe(&self, cpus: &CpuSet) -> String {
        let mut parts = Vec::new();
        if self.cpu0 && cpus.contains(0) {
            parts.push("CPU0".to_string());
        }
        let mut without0 = CpuSet::new();
        without0.insert(0);
        let reserved = cpus.intersection(&self.reserved).difference(&without0);
        if !reserved.is_empty() {
            parts.push(format!("reserved CPUs {reserved}"));
        }
        let irq = cpus
            .intersection(&self.irq)
            .difference(&self.reserved)
            .difference(&without0);
        if !irq.is_empty() {
            parts.push(format!("IRQ CPUs {irq}"));
        }
        match parts.len() {
            0 => String::new(),
            1 => parts.remove(0),
            _ => {
                let last = parts.pop().unwrap_or_default();
                format!("{} and {last}", parts.join(", "))
            }
        }
    }
}

/// A cpulist as Nova reads it: items split at commas, each trimmed (so a value
/// continued on the next line works), `^N` exclusions allowed.
fn parse_cpus(value: &str) -> Result<CpuSet, String> {
    let joined: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    CpuSet::parse(&joined.join(",")).map_err(|e| e.to_string())
}

/// What nova.conf should say, computed once for all findings.
struct Wanted {
    shared: CpuSet,
    dedicated: CpuSet,
}

struct CpuOption<'a> {
    entry: &'a Entry,
    cpus: CpuSet,
}

fn cpu_option<'a>(
    conf: &'a NovaConf,
    section: &str,
    key: &str,
    findings: &mut Vec<Finding>,
) -> Option<CpuOption<'a>> {
    let entry = conf.get(section, key)?;
    if entry.value.trim().is_empty() {
        return None;
    }
    match parse_cpus(&entry.value) {
        Ok(cpus) => Some(CpuOption { entry, cpus }),
        Err(e) => {
            findings.push(Finding::new(
                NOVA_RULE,
                Severity::Error,
                Some(entry.line),
                format!("{}: {e}: nova-compute refuses to start", where_(entry)),
            ));
            None
        }
    }
}

/// Compares nova.conf with the policy and this host; findings in a fixed order:
/// repeated keys, CPUs, rule 5, rule 2.1, rule 3.2.
pub fn check(conf: &NovaConf, policy: &Policy, host: &Host) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (entry, earlier) in conf.repeated() {
        let lines: Vec<String> = earlier.iter().map(u32::to_string).collect();
        findings.push(Finding::new(
            NOVA_RULE,
            Severity::Info,
            Some(entry.line),
            format!(
                "[{}] {} is also set on line(s) {}: single-valued, so Nova uses this last one ({})",
                entry.section,
                entry.key,
                lines.join(", "),
                entry.value.replace('\n', " ")
            ),
        ));
    }
    check_cpus(conf, policy, host, &mut findings);
    check_cpu_mode(conf, policy, &mut findings);
    check_disk_cache(conf, policy, &mut findings);
    check_memory(conf, policy, host, &mut findings);
    findings
}

fn check_cpus(conf: &NovaConf, policy: &Policy, host: &Host, findings: &mut Vec<Finding>) {
    let start = findings.len();
    let cpus = CpuCheck::new(conf, policy, host, findings);
    cpus.pin_set_findings(findings);
    cpus.option_findings(findings);
    cpus.overlap_finding(findings);
    if cpus.dedicated.is_none() && cpus.shared.is_none() && cpus.pin_set.is_none() {
        cpus.unset_finding(findings);
    } else {
        cpus.policy_pool_findings(findings);
    }
    if findings[start..]
        .iter()
        .all(|f| f.severity < Severity::Warn)
    {
        findings.push(cpus.ok_finding());
    }
    findings.push(existing_pins_finding(policy));
}

/// What the CPU checks share: the three cpulist options, the forbidden CPUs and
/// the values the fix lines suggest.
struct CpuCheck<'a> {
    policy: &'a Policy,
    host: &'a Host,
    forbidden: Forbidden,
    dedicated: Option<CpuOption<'a>>,
    shared: Option<CpuOption<'a>>,
    pin_set: Option<CpuOption<'a>>,
    wanted: Wanted,
    /// The lines replacing vcpu_pin_set (empty when it is unset).
    pin_replacement: Vec<String>,
}

impl<'a> CpuCheck<'a> {
    /// Reads the three options (reporting unparsable ones) and computes the wanted sets.
    fn new(
        conf: &'a NovaConf,
        policy: &'a Policy,
        host: &'a Host,
        findings: &mut Vec<Finding>,
    ) -> Self {
        let forbidden = Forbidden::of(policy, host);
        let dedicated = cpu_option(conf, "compute", "cpu_dedicated_set", findings);
        let shared = cpu_option(conf, "compute", "cpu_shared_set", findings);
        let pin_set = cpu_option(conf, "DEFAULT", "vcpu_pin_set", findings);
        let usable = |cpus: &CpuSet| host.online.difference(&forbidden.all).intersection(cpus);

        let wanted_dedicated = usable(
            policy
                .host
                .pool_cpus(crate::placement::Pool::Dedicated)
                .or(dedicated.as_ref().map(|o| &o.cpus))
                .unwrap_or(&CpuSet::new()),
        );
        let shared_base = policy
            .host
            .pool_cpus(crate::placement::Pool::Shared)
            .cloned()
            // With vcpu_pin_set, cpu_shared_set means emulator threads (pre-Train).
            .or_else(|| pin_set.as_ref().or(shared.as_ref()).map(|o| o.cpus.clone()))
            .unwrap_or_else(|| host.online.difference(&wanted_dedicated));
        let wanted = Wanted {
            shared: usable(&shared_base).difference(&wanted_dedicated),
            dedicated: wanted_dedicated,
        };
        let mut check = CpuCheck {
            policy,
            host,
            forbidden,
            dedicated,
            shared,
            pin_set,
            wanted,
            pin_replacement: Vec::new(),
        };
        check.pin_replacement = check.pin_replacement();
        check
    }

    /// The lines that comment out vcpu_pin_set and set the two pools instead.
    fn pin_replacement(&self) -> Vec<String> {
        self.pin_set.as_ref().map_or_else(Vec::new, |pin| {
            let mut fix = vec![
                "[DEFAULT]".to_string(),
                format!("#vcpu_pin_set = {}", pin.entry.value.replace('\n', " ")),
            ];
            fix.extend(self.shared_fix());
            if !self.wanted.dedicated.is_empty() {
                fix.push(format!("cpu_dedicated_set = {}", self.wanted.dedicated));
            }
            fix
        })
    }

    /// The fix line for cpu_shared_set.
    fn shared_fix(&self) -> Vec<String> {
        section_line(
            "compute",
            format!("cpu_shared_set = {}", self.wanted.shared),
        )
    }

    /// The fix line for cpu_dedicated_set.
    fn dedicated_fix(&self) -> Vec<String> {
        section_line(
            "compute",
            format!("cpu_dedicated_set = {}", self.wanted.dedicated),
        )
    }

    /// The shared pool Nova uses: vcpu_pin_set when set (cpu_shared_set then holds
    /// emulator threads, which may well sit on the housekeeping CPUs).
    fn shared_pool(&self) -> &Option<CpuOption<'a>> {
        if self.pin_set.is_some() {
            &self.pin_set
        } else {
            &self.shared
        }
    }

    /// The fix for the shared pool: replacing vcpu_pin_set when set, else cpu_shared_set.
    fn shared_pool_fix(&self) -> Vec<String> {
        if self.pin_set.is_some() {
            self.pin_replacement.clone()
        } else {
            self.shared_fix()
        }
    }

    /// Checks vcpu_pin_set: deprecated, exclusive with cpu_dedicated_set, and
    /// changes the meaning of cpu_shared_set.
    fn pin_set_findings(&self, findings: &mut Vec<Finding>) {
        let Some(pin) = &self.pin_set else { return };
        findings.push(
            Finding::new(
                NOVA_RULE,
                Severity::Warn,
                Some(pin.entry.line),
                format!(
                    "{} is deprecated since Nova 20.0.0 (Train): the CPUs for guests are [compute] cpu_shared_set (floating guests) and cpu_dedicated_set (hw:cpu_policy=dedicated)",
                    where_(pin.entry)
                ),
            )
            .fix(self.pin_replacement.clone()),
        );
        if let Some(d) = &self.dedicated {
            findings.push(Finding::new(
                NOVA_RULE,
                Severity::Error,
                Some(d.entry.line),
                format!(
                    "[compute] cpu_dedicated_set and [DEFAULT] vcpu_pin_set (line {}) exclude each other: nova-compute refuses to start",
                    pin.entry.line
                ),
            ));
        }
        if let Some(s) = &self.shared {
            findings.push(Finding::new(
                NOVA_RULE,
                Severity::Warn,
                Some(s.entry.line),
                format!(
                    "with [DEFAULT] vcpu_pin_set (line {line}) set, Nova reads [compute] cpu_shared_set in its pre-Train meaning: the CPUs of emulator threads, not the shared pool; once vcpu_pin_set is replaced it is the shared pool (line {line}'s fix)",
                    line = pin.entry.line
                ),
            ));
        }
    }

    /// Checks the dedicated and the shared pool for offline and forbidden CPUs.
    fn option_findings(&self, findings: &mut Vec<Finding>) {
        if let Some(option) = &self.dedicated {
            self.option_cpus_findings("cpu_dedicated_set", option, self.dedicated_fix(), findings);
        }
        if let Some(option) = self.shared_pool() {
            self.option_cpus_findings("cpu_shared_set", option, self.shared_pool_fix(), findings);
        }
    }

    /// Checks one pool option for CPUs this host lacks online and CPUs rule 1.3 forbids.
    fn option_cpus_findings(
        &self,
        key: &str,
        option: &CpuOption<'_>,
        fix: Vec<String>,
        findings: &mut Vec<Finding>,
    ) {
        let offline = option.cpus.difference(&self.host.online);
        if !offline.is_empty() {
            findings.push(
                Finding::new(
                    NOVA_RULE,
                    Severity::Error,
                    Some(option.entry.line),
                    format!(
                        "{} names CPUs {offline} this host does not have online (online: {}): nova-compute refuses to start",
                        where_(option.entry),
                        self.host.online
                    ),
                )
                .fix(fix.clone()),
            );
        }
        let bad = option.cpus.intersection(&self.forbidden.all);
        if !bad.is_empty() {
            let (severity, consequence) = if key == "cpu_dedicated_set" {
                (
                    Severity::Error,
                    "Nova pins dedicated guests there itself, and kvmtune keeps Nova's pins (existing_pins: keep)",
                )
            } else {
                (
                    Severity::Warn,
                    "Nova counts them as capacity for floating guests, which kvmtune's hook then pins elsewhere",
                )
            };
            findings.push(
                Finding::new(
                    "1.3",
                    severity,
                    Some(option.entry.line),
                    format!(
                        "{} includes {}, which rule 1.3 keeps from guests: {consequence}",
                        where_(option.entry),
                        self.forbidden.describe(&bad)
                    ),
                )
                .fix(fix),
            );
        }
    }

    /// Checks that cpu_shared_set and cpu_dedicated_set are disjoint (without vcpu_pin_set).
    fn overlap_finding(&self, findings: &mut Vec<Finding>) {
        let (Some(d), Some(s)) = (&self.dedicated, &self.shared) else {
            return;
        };
        let both = d.cpus.intersection(&s.cpus);
        if !both.is_empty() && self.pin_set.is_none() {
            findings.push(
                Finding::new(
                    NOVA_RULE,
                    Severity::Error,
                    Some(s.entry.line),
                    format!(
                        "[compute] cpu_shared_set and cpu_dedicated_set (line {}) overlap on CPUs {both}: Nova requires them disjoint and refuses to start",
                        d.entry.line
                    ),
                )
                .fix(self.shared_fix()),
            );
        }
    }

    /// Reports that none of the three options is set, so Nova offers every online CPU.
    fn unset_finding(&self, findings: &mut Vec<Finding>) {
        let mut fix = self.shared_fix();
        if !self.wanted.dedicated.is_empty() {
            fix.push(format!("cpu_dedicated_set = {}", self.wanted.dedicated));
        }
        findings.push(
            Finding::new(
                "1.3",
                Severity::Warn,
                None,
                format!(
                    "neither [compute] cpu_shared_set nor cpu_dedicated_set is set: Nova offers every online CPU ({}) to guests, {} included",
                    self.host.online,
                    self.forbidden.describe(&self.forbidden.all)
                ),
            )
            .fix(fix),
        );
    }

    /// Checks both pools against the policy's host.shared_cpus / host.dedicated_cpus.
    fn policy_pool_findings(&self, findings: &mut Vec<Finding>) {
        for (pool, policy_key, nova, key, fix) in [
            (
                crate::placement::Pool::Shared,
                "host.shared_cpus",
                self.shared_pool().as_ref(),
                "cpu_shared_set",
                self.shared_pool_fix(),
            ),
            (
                crate::placement::Pool::Dedicated,
                "host.dedicated_cpus",
                self.dedicated.as_ref(),
                "cpu_dedicated_set",
                self.dedicated_fix(),
            ),
        ] {
            let Some(want) = self.policy.host.pool_cpus(pool) else {
                continue;
            };
            let differs = nova.is_none_or(|o| o.cpus != *want);
            if differs {
                let now =
                    nova.map_or_else(|| format!("[compute] {key} is unset"), |o| where_(o.entry));
                findings.push(
                    Finding::new(
                        "1.1",
                        Severity::Warn,
                        nova.map(|o| o.entry.line),
                        format!(
                            "{now}, but the policy's {policy_key} is {want}: Nova and kvmtune disagree about which CPUs serve {} guests",
                            if pool == crate::placement::Pool::Shared { "floating" } else { "dedicated" }
                        ),
                    )
                    .fix(fix),
                );
            }
        }
    }

    /// The finding that the CPU options are disjoint, online and clear of forbidden CPUs.
    fn ok_finding(&self) -> Finding {
        let show = |o: &Option<CpuOption<'_>>| {
            o.as_ref()
                .map_or("unset".to_string(), |o| o.cpus.to_string())
        };
        Finding::new(
            "1.3",
            Severity::Ok,
            None,
            format!(
                "cpu_dedicated_set {} and cpu_shared_set {}: disjoint, online and clear of {}",
                show(&self.dedicated),
                show(&self.shared),
                if self.forbidden.all.is_empty() {
                    "forbidden CPUs (none on this host)".to_string()
                } else {
                    self.forbidden.describe(&self.forbidden.all)
                }
            ),
        )
    }
}

/// Checks that no enabled rule (nor the defaults) sets existing_pins: override.
fn existing_pins_finding(policy: &Policy) -> Finding {
    let overriding: Vec<&str> = std::iter::once(("defaults", &policy.defaults))
        .chain(
            policy
                .rules
                .iter()
                .filter(|r| r.enabled)
                .map(|r| (r.name.as_str(), &r.settings)),
        )
        .filter(|(_, s)| s.existing_pins == ExistingPins::Override)
        .map(|(name, _)| name)
        .collect();
    if overriding.is_empty() {
        Finding::new(
            "1.1",
            Severity::Ok,
            None,
            "existing_pins: keep: kvmtune respects the pins Nova gives dedicated guests and counts them in its occupancy".to_string(),
        )
    } else {
        Finding::new(
            "1.1",
            Severity::Warn,
            None,
            format!(
                "existing_pins: override (in {}) re-pins guests Nova pinned itself (hw:cpu_policy=dedicated): Nova's accounting of cpu_dedicated_set no longer matches where they run; set existing_pins: keep in the policy",
                overriding.join(", ")
            ),
        )
    }
}

fn check_cpu_mode(conf: &NovaConf, policy: &Policy, findings: &mut Vec<Finding>) {
    let mode = conf.get("libvirt", "cpu_mode");
    let models = conf
        .get("libvirt", "cpu_models")
        .or_else(|| conf.get("libvirt", "cpu_model"))
        .filter(|e| !e.value.trim().is_empty());
    let virt_type = conf
        .get("libvirt", "virt_type")
        .map_or("kvm", |e| e.value.trim());
    let fix = section_line("libvirt", "cpu_mode = host-model".to_string());
    let mode_value = mode.map_or(nova_default_cpu_mode(virt_type), |e| e.value.trim());
    if let Some(m) = models
        && mode_value != "custom"
    {
        findings.push(cpu_models_unused_finding(m, mode_value));
    }
    match mode.map(|e| (e, e.value.trim())) {
        Some((entry, "host-passthrough")) => {
            findings.push(host_passthrough_finding(entry, policy, fix));
        }
        Some((entry, "custom")) if models.is_none() => {
            findings.push(
                Finding::new(
                    NOVA_RULE,
                    Severity::Error,
                    Some(entry.line),
                    "[libvirt] cpu_mode = custom without cpu_models: nova-compute refuses to start"
                        .to_string(),
                )
                .fix(fix),
            );
        }
        _ => findings.push(cpu_mode_ok_finding(mode, virt_type)),
    }
}

/// Nova's `cpu_mode` when unset: host-model for KVM, none otherwise.
fn nova_default_cpu_mode(virt_type: &str) -> &'static str {
    if virt_type == "kvm" {
        "host-model"
    } else {
        "none"
    }
}

/// Reports cpu_models set while cpu_mode is not custom (Nova ignores it then).
fn cpu_models_unused_finding(models: &Entry, mode_value: &str) -> Finding {
    Finding::new(
        NOVA_RULE,
        Severity::Warn,
        Some(models.line),
        format!(
            "{} takes effect only with cpu_mode = custom (cpu_mode is {mode_value})",
            where_(models)
        ),
    )
    .fix(section_line(
        "libvirt",
        format!("#{} = {}", models.key, models.value),
    ))
}

/// Checks cpu_mode = host-passthrough against the policy's cpu_mode action (rule 5).
fn host_passthrough_finding(entry: &Entry, policy: &Policy, fix: Vec<String>) -> Finding {
    let (severity, what) = match policy.defaults.cpu_mode {
        CpuModeAction::HostModel => (
            Severity::Warn,
            "Nova defines every guest with it and kvmtune apply has to rewrite each to host-model",
        ),
        CpuModeAction::Refuse => (
            Severity::Error,
            "the policy says cpu_mode: refuse, so the hook refuses to start every guest Nova defines",
        ),
        CpuModeAction::Keep => (
            Severity::Info,
            "the policy says cpu_mode: keep, so kvmtune leaves it",
        ),
    };
    let finding = Finding::new(
        rules::cpu_mode::ID,
        severity,
        Some(entry.line),
        format!(
            "[libvirt] cpu_mode = host-passthrough, which kernel-panicked production hosts: {what}; use host-model, or custom with a named cpu_models"
        ),
    );
    if severity >= Severity::Warn {
        finding.fix(fix)
    } else {
        finding
    }
}

/// The finding that cpu_mode (set, or Nova's default) is not host-passthrough.
fn cpu_mode_ok_finding(mode: Option<&Entry>, virt_type: &str) -> Finding {
    let shown = mode.map(|e| e.value.trim()).map_or_else(
        || {
            format!(
                "unset (Nova's default for virt_type {virt_type}: {})",
                nova_default_cpu_mode(virt_type)
            )
        },
        str::to_string,
    );
    Finding::new(
        rules::cpu_mode::ID,
        Severity::Ok,
        mode.map(|e| e.line),
        format!("[libvirt] cpu_mode {shown}: not host-passthrough"),
    )
}

fn check_disk_cache(conf: &NovaConf, policy: &Policy, findings: &mut Vec<Finding>) {
    let id = rules::disk_cache::ID;
    if policy.defaults.disk_cache == DiskCache::Keep {
        return;
    }
    let want = rules::disk_cache::cache_name(policy.defaults.disk_cache);
    let entry = conf
        .get("libvirt", "disk_cachemodes")
        .filter(|e| !e.value.trim().is_empty());
    let Some(entry) = entry else {
        findings.push(
            Finding::new(
                id,
                Severity::Info,
                None,
                format!(
                    "[libvirt] disk_cachemodes is unset: Nova uses cache none where the instances directory supports O_DIRECT and writeback where it does not (tmpfs); set it so every guest gets cache='{want}' (policy disk_cache: {want})"
                ),
            )
            .fix(section_line("libvirt", format!("disk_cachemodes = file={want},block={want}"))),
        );
        return;
    };
    let items: Vec<(String, String)> = entry
        .value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (kind, mode) = item.split_once('=').unwrap_or((item, ""));
            (kind.trim().to_string(), mode.trim().to_string())
        })
        .collect();
    let mut problems = Vec::new();
    for (kind, mode) in &items {
        if mode != want {
            problems.push(format!("{kind}={mode}"));
        }
    }
    for kind in ["file", "block"] {
        if !items.iter().any(|(k, _)| k == kind) {
            problems.push(format!("{kind} unset"));
        }
    }
    if problems.is_empty() {
        findings.push(Finding::new(
            id,
            Severity::Ok,
            Some(entry.line),
            format!("{}: every disk type gets cache='{want}'", where_(entry)),
        ));
        return;
    }
    let mut fixed: Vec<String> = items.iter().map(|(k, _)| format!("{k}={want}")).collect();
    for kind in ["file", "block"] {
        if !items.iter().any(|(k, _)| k == kind) {
            fixed.push(format!("{kind}={want}"));
        }
    }
    findings.push(
        Finding::new(
            id,
            Severity::Warn,
            Some(entry.line),
            format!(
                "{}: {}: rule 2.1 wants cache='{want}' for every disk (policy disk_cache: {want})",
                where_(entry),
                problems.join(", ")
            ),
        )
        .fix(section_line(
            "libvirt",
            format!("disk_cachemodes = {}", fixed.join(",")),
        )),
    );
}

/// `size:` of reserved_huge_pages: KiB, or with a unit (`2MB`, `1GB`, `2M`).
fn page_size_kib(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = if let Some(n) = t.strip_suffix('G') {
        (n, 1024 * 1024)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix('K') {
        (n, 1)
    } else {
        (t, 1)
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn size_name(kib: u64) -> String {
    if kib.is_multiple_of(1024 * 1024) {
        format!("{} GiB", kib / (1024 * 1024))
    } else if kib.is_multiple_of(1024) {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

fn check_memory(conf: &NovaConf, policy: &Policy, host: &Host, findings: &mut Vec<Finding>) {
    let pool = HugePagePool::of(policy, host);
    reserved_memory_findings(
        conf.get("DEFAULT", "reserved_host_memory_mb"),
        &pool,
        findings,
    );
    let mut reserved_pages = false;
    for e in conf.get_all("DEFAULT", "reserved_huge_pages") {
        reserved_pages = true;
        findings.push(reserved_huge_pages_finding(e, host));
    }
    if !reserved_pages && let Some(finding) = auto_hugepages_finding(policy, host) {
        findings.push(finding);
    }
}

/// The huge page pool Nova should keep from small-page guests, and where it comes from.
struct HugePagePool {
    mib: u64,
    source: &'static str,
}

impl HugePagePool {
    /// What the host holds now, or what host.tuning will reserve (on every node),
    /// whichever is larger.
    fn of(policy: &Policy, host: &Host) -> Self {
        let current_kib: u64 = host
            .nodes
            .values()
            .flat_map(|n| {
                n.hugepages
                    .iter()
                    .map(|(size, p)| size.saturating_mul(p.total))
            })
            .sum();
        let target_kib: u64 = policy
            .host
            .tuning
            .hugepages_per_node
            .iter()
            .filter_map(|(size, count)| {
                crate::host_tuning::page_size_kib(size).map(|kib| kib.saturating_mul(*count))
            })
            .sum::<u64>()
            .saturating_mul(host.nodes.len() as u64);
        if target_kib > current_kib {
            HugePagePool {
                mib: target_kib / 1024,
                source: "host.tuning.hugepages_per_node reserves",
            }
        } else {
            HugePagePool {
                mib: current_kib / 1024,
                source: "this host holds",
            }
        }
    }
}

/// Checks reserved_host_memory_mb parses and covers the huge page pool (rule 3.2).
fn reserved_memory_findings(
    entry: Option<&Entry>,
    pool: &HugePagePool,
    findings: &mut Vec<Finding>,
) {
    let reserved = match entry {
        Some(e) => match e.value.trim().parse::<u64>() {
            Ok(v) => v,
            Err(_) => {
                findings.push(Finding::new(
                    NOVA_RULE,
                    Severity::Error,
                    Some(e.line),
                    format!(
                        "{}: not a number of MiB: nova-compute refuses to start",
                        where_(e)
                    ),
                ));
                return;
            }
        },
        None => NOVA_DEFAULT_RESERVED_MB,
    };
    let shown = entry.map_or_else(
        || format!("reserved_host_memory_mb is unset (Nova's default {NOVA_DEFAULT_RESERVED_MB})"),
        where_,
    );
    let (pool_mib, pool_source) = (pool.mib, pool.source);
    if pool_mib > 0 && reserved < pool_mib {
        findings.push(
            Finding::new(
                rules::hugepages::ID,
                Severity::Warn,
                entry.map(|e| e.line),
                format!(
                    "{shown}, but {pool_source} {pool_mib} MiB of huge pages, which Nova counts as free memory for guests without hw:mem_page_size: reserve them too, or Nova overcommits the small-page memory"
                ),
            )
            .fix(section_line(
                "DEFAULT",
                format!("reserved_host_memory_mb = {}", reserved + pool_mib),
            )),
        );
    } else {
        findings.push(Finding::new(
            rules::hugepages::ID,
            Severity::Ok,
            entry.map(|e| e.line),
            format!("{shown}: covers the {pool_mib} MiB of huge pages {pool_source}"),
        ));
    }
}

/// `node:N,size:KiB,count:N` of a reserved_huge_pages value, `None` when a part is missing.
fn parse_reserved_huge_pages(value: &str) -> Option<(u32, u64, u64)> {
    let mut node = None;
    let mut size = None;
    let mut count = None;
    for part in value.split(',') {
        let (k, v) = part.split_once(':').unwrap_or((part, ""));
        match k.trim() {
            "node" => node = v.trim().parse::<u32>().ok(),
            "size" => size = page_size_kib(v),
            "count" => count = v.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    Some((node?, size?, count?))
}

/// Checks one reserved_huge_pages line parses and names pages this host has.
fn reserved_huge_pages_finding(e: &Entry, host: &Host) -> Finding {
    let id = rules::hugepages::ID;
    let Some((node, size, count)) = parse_reserved_huge_pages(&e.value) else {
        return Finding::new(
            NOVA_RULE,
            Severity::Error,
            Some(e.line),
            format!(
                "{}: wants node:N,size:KiB,count:N: nova-compute refuses to start",
                where_(e)
            ),
        );
    };
    let have = host
        .nodes
        .get(&node)
        .and_then(|n| n.hugepages.get(&size))
        .map(|p| p.total);
    let problem = match have {
        _ if !host.nodes.contains_key(&node) => Some(format!("this host has no NUMA node {node}")),
        None => Some(format!("node {node} has no {} huge pages", size_name(size))),
        Some(total) if count > total => Some(format!(
            "node {node} has only {total} {} huge pages",
            size_name(size)
        )),
        Some(_) => None,
    };
    if let Some(problem) = problem {
        Finding::new(
            id,
            Severity::Error,
            Some(e.line),
            format!("{}: {problem}", where_(e)),
        )
    } else {
        Finding::new(
            id,
            Severity::Ok,
            Some(e.line),
            format!(
                "{}: Nova keeps {count} of node {node}'s {} huge pages from hw:mem_page_size guests",
                where_(e),
                size_name(size)
            ),
        )
    }
}

/// Notes that hugepages: auto takes pages Nova does not see (no reserved_huge_pages set).
fn auto_hugepages_finding(policy: &Policy, host: &Host) -> Option<Finding> {
    let size = policy.defaults.hugepage_size_kib;
    let per_node: Vec<(u32, u64)> = host
        .nodes
        .values()
        .filter_map(|n| n.hugepages.get(&size).map(|p| (n.id, p.total)))
        .filter(|(_, total)| *total > 0)
        .collect();
    if policy.defaults.hugepages != HugePagesMode::Auto || per_node.is_empty() {
        return None;
    }
    let mut fix = vec!["[DEFAULT]".to_string()];
    for (node, total) in &per_node {
        fix.push(format!(
            "reserved_huge_pages = node:{node},size:{size},count:{total}"
        ));
    }
    Some(
        Finding::new(
            rules::hugepages::ID,
            Severity::Info,
            None,
            format!(
                "policy hugepages: auto backs guests with {} huge pages at start when their node has enough free; Nova does not see those pages taken, so a later guest whose flavor sets hw:mem_page_size may not fit: either give every flavor hw:mem_page_size={size} (Nova then accounts the pages), or keep the pages from Nova with reserved_huge_pages",
                size_name(size)
            ),
        )
        .fix(fix),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_fix_groups_by_section_once() {
        let f = |lines: &[&str]| Finding {
            rule: "x",
            severity: Severity::Warn,
            line: None,
            message: String::new(),
            fix_lines: lines.iter().map(|s| s.to_string()).collect(),
        };
        let merged = merged_fix(&[
            f(&["[compute]", "cpu_shared_set = 1-3"]),
            f(&["[libvirt]", "cpu_mode = host-model"]),
            f(&[
                "[DEFAULT]",
                "#vcpu_pin_set = 1-7",
                "[compute]",
                "cpu_shared_set = 1-3",
            ]),
        ]);
        assert_eq!(
            merged,
            [
                "[compute]",
                "cpu_shared_set = 1-3",
                "[libvirt]",
                "cpu_mode = host-model",
                "[DEFAULT]",
                "#vcpu_pin_set = 1-7"
            ]
        );
    }

    #[test]
    fn reserved_huge_page_sizes() {
        assert_eq!(page_size_kib("2048"), Some(2048));
        assert_eq!(page_size_kib("2MB"), Some(2048));
        assert_eq!(page_size_kib("1GB"), Some(1024 * 1024));
        assert_eq!(page_size_kib("1G"), Some(1024 * 1024));
        assert_eq!(page_size_kib("x"), None);
    }

    #[test]
    fn cpulists_as_nova_reads_them() {
        assert_eq!(parse_cpus("2-7,\n18-23").unwrap().to_string(), "2-7,18-23");
        assert_eq!(parse_cpus("1-7, ^4").unwrap().to_string(), "1-3,5-7");
        assert_eq!(
            parse_cpus("one").unwrap_err(),
            "invalid cpulist 'one': 'one' is not a number or range"
        );
    }
}
