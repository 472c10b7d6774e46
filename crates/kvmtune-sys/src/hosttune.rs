//! The host side of TUNING-RULES.md, read and changed: the IRQ CPUs the policy
//! resolves to and whether guests avoid them, NIC IRQs on the reserved CPUs and
//! irqbalance kept off the guests' CPUs (1.3), the IO scheduler per block device
//! kind (2.2), KSM off (3.1), transparent huge pages, huge pages reserved per node and
//! hugetlbfs mounted (3.2), vhost_net loaded (4.1).
//!
//! [`check`] reads everything under a root directory (`/` in production, a fixture
//! tree in tests) and returns one [`Item`] per setting: ok, differs, unsupported
//! (this host cannot have it) or skipped (the policy does not ask), with the current
//! and wanted values and the fix. [`apply`] carries out the fixes of the items that
//! differ — sysfs/procfs writes and the irqbalance config under the root, `modprobe`
//! and `mount` through a [`Runner`] — then checks again, so running it twice changes
//! nothing the second time. The wishes are [`HostTuning`], the policy's `host.tuning:`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::host::{Host, HostError};
use kvmtune_core::host_tuning::{HostTuning, Ksm, Thp, page_size_kib};
use kvmtune_core::ledger::Entry;
use kvmtune_core::policy::{IrqCpus, Policy};
use serde::Serialize;

use crate::command::{Runner, find_program};

/// Reads the host tuning keys from a YAML file (the hidden `--tuning FILE` option).
pub fn load_tuning_file(path: &Path) -> Result<HostTuning, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    HostTuning::parse(&text, &path.display().to_string())
}

// ---------------------------------------------------------------- items

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Ok,
    Differs,
    /// This host cannot have it (no such file: kernel without the feature).
    Unsupported,
    /// Not asked for by the policy (or nothing to apply it to); reported only.
    Skipped,
}

/// How to make an item conform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fix {
    /// Write `value` to each existing file (sysfs/procfs).
    Write { paths: Vec<PathBuf>, value: String },
    /// Replace a config file's content atomically.
    Replace { path: PathBuf, content: String },
    /// Create a directory, then run a program.
    Run {
        program: String,
        args: Vec<String>,
        mkdir: Option<PathBuf>,
    },
}

/// One host setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// `ksm`, `thp`, `io-scheduler sda`, `nic-irqs eth0`, ...
    pub name: String,
    /// The rule of TUNING-RULES.md.
    pub rule: &'static str,
    pub state: State,
    pub current: String,
    pub wanted: String,
    /// Why, or what to do by hand.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
}

impl Item {
    fn new(name: impl Into<String>, rule: &'static str) -> Item {
        Item {
            name: name.into(),
            rule,
            state: State::Ok,
            current: String::new(),
            wanted: String::new(),
            detail: String::new(),
            fix: None,
        }
    }

    fn state(mut self, state: State, detail: impl Into<String>) -> Item {
        self.state = state;
        self.detail = detail.into();
        self
    }

    fn values(mut self, current: impl Into<String>, wanted: impl Into<String>) -> Item {
        self.current = current.into();
        self.wanted = wanted.into();
        self
    }
}

// ---------------------------------------------------------------- check

/// Reads the host under `root` and judges every host-side setting.
pub fn check(root: &Path, policy: &Policy, tuning: &HostTuning) -> Result<Vec<Item>, HostError> {
    check_with_claims(root, policy, tuning, None)
}

/// [`check`], and with the ledger's claims also whether any claimed guest's vCPUs
/// sit on the IRQ CPUs (the `irq-cpus` item).
pub fn check_with_claims(
    root: &Path,
    policy: &Policy,
    tuning: &HostTuning,
    claims: Option<&BTreeMap<String, Entry>>,
) -> Result<Vec<Item>, HostError> {
    let host = crate::sysfs::read_host(root)?;
    // The CPUs set aside for IRQs: the IRQ CPUs placement keeps guests off
    // (`Policy::irq_cpus`, the one resolution), plus the reserved CPUs unless
    // `irq_cpus` lists its own.
    let irq_cpus = policy.irq_cpus(&host);
    let irq_target = match &policy.host.irq_cpus {
        IrqCpus::List(_) => irq_cpus.clone(),
        IrqCpus::Auto | IrqCpus::None => policy.host.reserved_cpus.union(&irq_cpus),
    }
    .intersection(&host.online);
    let mut items = vec![irq_cpus_item(policy, &host, &irq_cpus, claims)];
    items.extend(nic_irqs(root, &host, &irq_target, tuning));
    items.push(irqbalance(root, &host, &irq_target, tuning));
    items.push(ksm(root, tuning));
    items.push(thp(root, tuning));
    items.extend(hugepages(root, &host, tuning));
    items.push(hugetlbfs(root, tuning));
    items.extend(io_schedulers(root, tuning));
    items.push(vhost_net(root, tuning));
    Ok(items)
}

/// The IRQ CPUs `host.irq_cpus` resolves to on this host, which IRQs are bound
/// there, and whether guests avoid them: placement always does (admission's
/// invariant 1); with the ledger, also no claimed guest's vCPU is there now.
fn irq_cpus_item(
    policy: &Policy,
    host: &Host,
    irq_cpus: &CpuSet,
    claims: Option<&BTreeMap<String, Entry>>,
) -> Item {
    let item = Item::new("irq-cpus", "1.3");
    let setting = match &policy.host.irq_cpus {
        IrqCpus::Auto => "irq_cpus: auto".to_string(),
        IrqCpus::None => "irq_cpus: none".to_string(),
        IrqCpus::List(l) => format!("irq_cpus: {l}"),
    };
    if irq_cpus.is_empty() {
        return match policy.host.irq_cpus {
            IrqCpus::Auto => item.values("none", "").state(
                State::Ok,
                format!("{setting}: no IRQ is bound to fewer than all online CPUs"),
            ),
            _ => item.state(State::Skipped, format!("{setting}: no CPU kept for IRQs")),
        };
    }
    let bound: Vec<String> = host
        .irqs
        .iter()
        .filter(|i| !host.online.is_subset(&i.affinity) && i.affinity.intersects(irq_cpus))
        .map(|i| {
            let name = i.actions.trim();
            if name.is_empty() {
                format!("IRQ {} on {}", i.number, i.affinity)
            } else {
                format!("IRQ {} ({name}) on {}", i.number, i.affinity)
            }
        })
        .collect();
    let mut detail = setting;
    if !bound.is_empty() {
        let shown: Vec<&str> = bound.iter().take(4).map(String::as_str).collect();
        let more = bound.len().saturating_sub(shown.len());
        let _ = write!(detail, "; bound there: {}", shown.join(", "));
        if more > 0 {
            let _ = write!(detail, " and {more} more");
        }
    }
    detail.push_str("; guests are placed off them");
    let current = format!("CPUs {irq_cpus}");
    let Some(claims) = claims else {
        return item.values(current, "").state(State::Ok, detail);
    };
    let on = kvmtune_core::admission::guests_on_irq_cpus(policy, host, claims);
    if on.is_empty() {
        detail.push_str(", and no claimed guest's vCPU is on them");
        return item.values(current, "").state(State::Ok, detail);
    }
    let guests: Vec<String> = on
        .iter()
        .map(|(g, c)| format!("guest '{g}' on CPU {c}"))
        .collect();
    let _ = write!(
        detail,
        ", but {} (claimed before; a restart of the guest re-places it, host apply does not)",
        guests.join(", ")
    );
    item.values(
        format!("{current}, {}", guests.join(", ")),
        format!("no guest vCPU on CPUs {irq_cpus}"),
    )
    .state(State::Differs, detail)
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| {
        s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .to_string()
    })
}

/// Physical NICs (those with a `device`), by name, with their device directory.
fn physical_nics(root: &Path) -> Vec<(String, PathBuf)> {
    let dir = root.join("sys/class/net");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut nics: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let device = dir.join(&name).join("device");
            device.exists().then(|| {
                let real = fs::canonicalize(&device).unwrap_or(device);
                (name, real)
            })
        })
        .collect();
    nics.sort();
    nics
}

/// A NIC's IRQs: its device's MSI vectors and legacy IRQ, plus the IRQs whose
/// action names it (`eth0-TxRx-0`; virtio NICs name their device: `virtio2-input.0`).
fn nic_irq_numbers(name: &str, device: &Path, host: &Host) -> Vec<u32> {
    let mut numbers: Vec<u32> = Vec::new();
    if let Ok(entries) = fs::read_dir(device.join("msi_irqs")) {
        numbers.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
    }
    if let Some(n) = read_trim(&device.join("irq")).and_then(|s| s.parse::<u32>().ok())
        && n > 0
    {
        numbers.push(n);
    }
    let dev_name = device.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let virtio_prefix = dev_name
        .starts_with("virtio")
        .then(|| format!("{dev_name}-"));
    for irq in &host.irqs {
        let named = irq.actions.split([',', ' ']).any(|a| {
            let a = a.trim();
            a == name
                || a.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-'))
                || virtio_prefix.as_deref().is_some_and(|p| a.starts_with(p))
        });
        if named {
            numbers.push(irq.number);
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

fn nic_irqs(root: &Path, host: &Host, target: &CpuSet, tuning: &HostTuning) -> Vec<Item> {
    if !tuning.nic_irqs {
        return vec![Item::new("nic-irqs", "1.3").state(State::Skipped, "nic_irqs: false")];
    }
    if target.is_empty() {
        return vec![Item::new("nic-irqs", "1.3").state(
            State::Skipped,
            "no CPUs are set aside for IRQs (host.reserved_cpus: none, and irq_cpus finds or lists none)",
        )];
    }
    let nics = physical_nics(root);
    if nics.is_empty() {
        return vec![Item::new("nic-irqs", "1.3").state(State::Skipped, "no physical NIC found")];
    }
    let mut items = Vec::new();
    for (name, device) in nics {
        let item = Item::new(format!("nic-irqs {name}"), "1.3");
        let numbers = nic_irq_numbers(&name, &device, host);
        if numbers.is_empty() {
            items.push(
                item.values("-", target.to_string())
                    .state(State::Unsupported, "no IRQs found for this NIC"),
            );
            continue;
        }
        let mut current: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut wrong = Vec::new();
        for n in &numbers {
            let dir = root.join(format!("proc/irq/{n}"));
            let affinity = read_trim(&dir.join("smp_affinity_list"))
                .and_then(|s| CpuSet::parse(&s).ok())
                .or_else(|| {
                    read_trim(&dir.join("smp_affinity")).and_then(|s| CpuSet::parse_mask(&s).ok())
                });
            let shown = affinity
                .as_ref()
                .map_or("?".to_string(), ToString::to_string);
            current.entry(shown).or_default().push(*n);
            if affinity.as_ref() != Some(target) {
                wrong.push(dir.join("smp_affinity_list"));
            }
        }
        let current_text = current
            .iter()
            .map(|(aff, irqs)| format!("{aff} (IRQ {})", irqs.iter().copied().collect::<CpuSet>()))
            .collect::<Vec<_>>()
            .join(", ");
        let item = item.values(current_text, target.to_string());
        items.push(if wrong.is_empty() {
            item.state(State::Ok, "")
        } else {
            Item {
                fix: Some(Fix::Write {
                    paths: wrong,
                    value: target.to_string(),
                }),
                ..item.state(
                    State::Differs,
                    "NIC interrupts belong on the reserved CPUs, away from guests",
                )
            }
        });
    }
    items
}

/// Where irqbalance reads its environment, by distribution family.
const IRQBALANCE_CONFIGS: [&str; 2] = ["etc/default/irqbalance", "etc/sysconfig/irqbalance"];

/// `KEY=value` (optionally `export`ed, quoted) from a shell-style config, last wins.
fn shell_var(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("export ").unwrap_or(l);
            let value = l.strip_prefix(key)?.strip_prefix('=')?;
            Some(
                value
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_string(),
            )
        })
        .next_back()
}

fn irqbalance(root: &Path, host: &Host, target: &CpuSet, tuning: &HostTuning) -> Item {
    let item = Item::new("irqbalance", "1.3");
    if !tuning.irqbalance {
        return item.state(State::Skipped, "irqbalance: false");
    }
    if target.is_empty() {
        return item.state(
            State::Skipped,
            "no CPUs are set aside for IRQs (host.reserved_cpus: none, and irq_cpus finds or lists none)",
        );
    }
    let existing = IRQBALANCE_CONFIGS
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.is_file());
    let installed = [
        "usr/sbin/irqbalance",
        "sbin/irqbalance",
        "usr/bin/irqbalance",
    ]
    .iter()
    .any(|p| root.join(p).exists());
    if existing.is_none() && !installed {
        return item.state(State::Skipped, "irqbalance is not installed");
    }
    let path = existing.unwrap_or_else(|| {
        if root.join("etc/sysconfig").is_dir() && !root.join("etc/default").is_dir() {
            root.join(IRQBALANCE_CONFIGS[1])
        } else {
            root.join(IRQBALANCE_CONFIGS[0])
        }
    });
    let text = fs::read_to_string(&path).unwrap_or_default();
    let wanted = host.online.difference(target);
    let list = shell_var(&text, "IRQBALANCE_BANNED_CPULIST");
    let mask = shell_var(&text, "IRQBALANCE_BANNED_CPUS");
    let current = match (&list, &mask) {
        (Some(l), _) => CpuSet::parse(l).ok(),
        (None, Some(m)) => CpuSet::parse_mask(&m.replace(',', "")).ok(),
        (None, None) => Some(CpuSet::new()),
    };
    let shown = match (&list, &mask) {
        (Some(l), _) => format!("IRQBALANCE_BANNED_CPULIST={l}"),
        (None, Some(m)) => format!(
            "IRQBALANCE_BANNED_CPUS={m} ({})",
            current.as_ref().map_or("?".into(), |c| c.to_string())
        ),
        (None, None) => "no banned CPUs".to_string(),
    };
    let item = item.values(shown, format!("IRQBALANCE_BANNED_CPULIST={wanted}"));
    if current.as_ref() == Some(&wanted) {
        return item.state(State::Ok, "");
    }
    Item {
        fix: Some(Fix::Replace {
            content: irqbalance_config(&text, &wanted),
            path: path.clone(),
        }),
        ..item.state(
            State::Differs,
            format!(
                "irqbalance would move IRQs onto guest CPUs; {} (restart irqbalance afterwards)",
                path.strip_prefix(root).unwrap_or(&path).display()
            ),
        )
    }
}

/// The config with `IRQBALANCE_BANNED_CPULIST` set (replacing an existing line, or
/// appended) and the older mask variable commented out; every other line kept.
fn irqbalance_config(text: &str, banned: &CpuSet) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        let bare = line.trim_start();
        let bare = bare.strip_prefix("export ").unwrap_or(bare);
        if bare.starts_with("IRQBALANCE_BANNED_CPULIST=") {
            if !done {
                let _ = writeln!(out, "IRQBALANCE_BANNED_CPULIST={banned}");
                done = true;
            }
        } else if bare.starts_with("IRQBALANCE_BANNED_CPUS=") {
            let _ = writeln!(
                out,
                "# {line}  # kvmtune: replaced by IRQBALANCE_BANNED_CPULIST"
            );
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    if !done {
        let _ = writeln!(
            out,
            "# kvmtune: keep IRQs off the guests' CPUs (TUNING-RULES 1.3)\nIRQBALANCE_BANNED_CPULIST={banned}"
        );
    }
    out
}

fn ksm(root: &Path, tuning: &HostTuning) -> Item {
    let item = Item::new("ksm", "3.1");
    let wanted = match tuning.ksm {
        Ksm::Keep => return item.state(State::Skipped, "ksm: keep"),
        Ksm::Off => "0",
        Ksm::On => "1",
    };
    let path = root.join("sys/kernel/mm/ksm/run");
    let Some(current) = read_trim(&path) else {
        return item.values("-", wanted).state(
            State::Unsupported,
            "kernel without KSM (no /sys/kernel/mm/ksm/run)",
        );
    };
    let describe = |v: &str| match v {
        "0" => "0 (stopped)".to_string(),
        "1" => "1 (merging)".to_string(),
        "2" => "2 (unmerging)".to_string(),
        other => other.to_string(),
    };
    let item = item.values(describe(&current), describe(wanted));
    // 2 = "unmerge everything and stop": as good as off.
    if current == wanted || (wanted == "0" && current == "2") {
        return item.state(State::Ok, "");
    }
    let mut detail = "pages merged across NUMA nodes raise guests' memory latency".to_string();
    if root.join("usr/sbin/ksmtuned").exists() {
        detail.push_str("; ksmtuned is installed and may start KSM again: disable it");
    }
    Item {
        fix: Some(Fix::Write {
            paths: vec![path],
            value: wanted.into(),
        }),
        ..item.state(State::Differs, detail)
    }
}

/// The bracketed choice and all choices of a sysfs selector (`always [madvise] never`).
fn selector(text: &str) -> (Option<String>, Vec<String>) {
    let mut chosen = None;
    let mut all = Vec::new();
    for word in text.split_whitespace() {
        if let Some(w) = word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            chosen = Some(w.to_string());
            all.push(w.to_string());
        } else {
            all.push(word.to_string());
        }
    }
    (chosen, all)
}

fn thp(root: &Path, tuning: &HostTuning) -> Item {
    let item = Item::new("thp", "3.2");
    let wanted = match tuning.thp {
        Thp::Keep => return item.state(State::Skipped, "thp: keep"),
        Thp::Always => "always",
        Thp::Madvise => "madvise",
        Thp::Never => "never",
    };
    let path = root.join("sys/kernel/mm/transparent_hugepage/enabled");
    let Some(text) = read_trim(&path) else {
        return item
            .values("-", wanted)
            .state(State::Unsupported, "kernel without transparent huge pages");
    };
    let (chosen, all) = selector(&text);
    let current = chosen.unwrap_or_else(|| text.clone());
    let item = item.values(current.clone(), wanted);
    if current == wanted {
        return item.state(State::Ok, "");
    }
    if !all.iter().any(|a| a == wanted) {
        return item.state(
            State::Unsupported,
            format!("the kernel offers {}", all.join(" ")),
        );
    }
    Item {
        fix: Some(Fix::Write {
            paths: vec![path],
            value: wanted.into(),
        }),
        ..item.state(State::Differs, "fewer TLB misses for guest memory")
    }
}

/// Huge page pools: per node where the host has nodes, else host-wide.
fn hugepage_pools(root: &Path, host: &Host) -> Vec<(String, PathBuf)> {
    let node_dir = root.join("sys/devices/system/node");
    let mut pools: Vec<(String, PathBuf)> = host
        .nodes
        .keys()
        .map(|n| {
            (
                format!("node{n}"),
                node_dir.join(format!("node{n}/hugepages")),
            )
        })
        .filter(|(_, p)| p.is_dir())
        .collect();
    if pools.is_empty() {
        pools.push(("host".to_string(), root.join("sys/kernel/mm/hugepages")));
    }
    pools
}

fn hugepages(root: &Path, host: &Host, tuning: &HostTuning) -> Vec<Item> {
    let pools = hugepage_pools(root, host);
    if tuning.hugepages_per_node.is_empty() {
        let mut parts = Vec::new();
        for (pool, dir) in &pools {
            let mut sizes = Vec::new();
            if let Ok(entries) = fs::read_dir(dir) {
                let mut found: Vec<(u64, String)> = entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let kib: u64 = name
                            .strip_prefix("hugepages-")?
                            .strip_suffix("kB")?
                            .parse()
                            .ok()?;
                        let nr = read_trim(&e.path().join("nr_hugepages"))?;
                        let free = read_trim(&e.path().join("free_hugepages"))
                            .unwrap_or_else(|| "?".into());
                        Some((kib, format!("{} {nr} ({free} free)", size_name(kib))))
                    })
                    .collect();
                found.sort();
                sizes.extend(found.into_iter().map(|(_, s)| s));
            }
            if !sizes.is_empty() {
                parts.push(format!("{pool}: {}", sizes.join(", ")));
            }
        }
        let current = if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join("; ")
        };
        return vec![Item::new("hugepages", "3.2").values(current, "-").state(
            State::Skipped,
            "report only: the policy asks for no huge page reservation",
        )];
    }
    let mut items = Vec::new();
    for (size, count) in &tuning.hugepages_per_node {
        let Some(kib) = page_size_kib(size) else {
            continue;
        };
        for (pool, dir) in &pools {
            let item = Item::new(format!("hugepages {pool} {}", size_name(kib)), "3.2");
            let path = dir.join(format!("hugepages-{kib}kB/nr_hugepages"));
            let Some(current) = read_trim(&path) else {
                items.push(item.values("-", count.to_string()).state(
                    State::Unsupported,
                    format!("the kernel has no {} huge pages here", size_name(kib)),
                ));
                continue;
            };
            let item = item.values(current.clone(), count.to_string());
            items.push(if current == count.to_string() {
                item.state(State::Ok, "")
            } else {
                Item {
                    fix: Some(Fix::Write {
                        paths: vec![path],
                        value: count.to_string(),
                    }),
                    ..item.state(
                        State::Differs,
                        "the kernel may give fewer when memory is fragmented; reserve at boot (hugepages= on the kernel command line) if so",
                    )
                }
            });
        }
    }
    items
}

fn size_name(kib: u64) -> String {
    match kib {
        k if k % (1024 * 1024) == 0 => format!("{}G", k / (1024 * 1024)),
        k if k % 1024 == 0 => format!("{}M", k / 1024),
        k => format!("{k}K"),
    }
}

fn hugetlbfs(root: &Path, tuning: &HostTuning) -> Item {
    let item = Item::new("hugetlbfs", "3.2");
    if !tuning.hugetlbfs {
        return item.state(State::Skipped, "hugetlbfs: false");
    }
    let Some(mounts) = fs::read_to_string(root.join("proc/mounts")).ok() else {
        return item.state(State::Unsupported, "cannot read /proc/mounts");
    };
    let found: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "hugetlbfs").then_some(dir)
        })
        .collect();
    if !found.is_empty() {
        return item
            .values(format!("mounted on {}", found.join(" ")), "mounted")
            .state(State::Ok, "");
    }
    let dir = root.join("dev/hugepages");
    Item {
        fix: Some(Fix::Run {
            program: "mount".into(),
            args: vec![
                "-t".into(),
                "hugetlbfs".into(),
                "hugetlbfs".into(),
                dir.display().to_string(),
            ],
            mkdir: Some(dir),
        }),
        ..item
            .values("not mounted", "mounted")
            .state(State::Differs, "libvirt backs huge-page guests with it; restart libvirtd after mounting so it sees the mount")
    }
}

/// Device kind for the scheduler choice.
fn device_kind(root: &Path, dev: &str) -> &'static str {
    if dev.starts_with("nvme") {
        "nvme"
    } else if read_trim(&root.join(format!("sys/block/{dev}/queue/rotational"))).as_deref()
        == Some("1")
    {
        "rotational"
    } else {
        "ssd"
    }
}

fn io_schedulers(root: &Path, tuning: &HostTuning) -> Vec<Item> {
    let dir = root.join("sys/block");
    let Ok(entries) = fs::read_dir(&dir) else {
        return vec![Item::new("io-scheduler", "2.2").state(State::Unsupported, "no /sys/block")];
    };
    let mut devs: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        // Virtual devices (loop, dm, md, zram) have no `device`: their IO lands on
        // a physical disk whose scheduler is what counts.
        .filter(|d| dir.join(d).join("device").exists())
        .collect();
    devs.sort();
    let mut items = Vec::new();
    for dev in devs {
        let kind = device_kind(root, &dev);
        let wanted = match kind {
            "nvme" => &tuning.io_scheduler.nvme,
            "rotational" => &tuning.io_scheduler.rotational,
            _ => &tuning.io_scheduler.ssd,
        };
        let item = Item::new(format!("io-scheduler {dev}"), "2.2");
        if wanted == "keep" {
            items.push(item.state(State::Skipped, format!("io_scheduler.{kind}: keep")));
            continue;
        }
        let path = dir.join(&dev).join("queue/scheduler");
        let Some(text) = read_trim(&path) else {
            items.push(
                item.values("-", wanted.clone())
                    .state(State::Unsupported, "no queue/scheduler"),
            );
            continue;
        };
        let (chosen, all) = selector(&text);
        let current = chosen.unwrap_or_else(|| text.clone());
        let item = item.values(current.clone(), wanted.clone());
        items.push(if &current == wanted {
            item.state(State::Ok, format!("{kind} disk"))
        } else if !all.iter().any(|a| a == wanted) {
            item.state(
                State::Unsupported,
                format!(
                    "{kind} disk; the kernel offers {} (modprobe {wanted}?)",
                    all.join(" ")
                ),
            )
        } else {
            let why = match kind {
                "nvme" => "NVMe disk: the device's own queues schedule",
                "rotational" => {
                    "rotational disk: a fair scheduler so one guest cannot starve the others"
                }
                _ => "solid-state disk",
            };
            Item {
                fix: Some(Fix::Write {
                    paths: vec![path],
                    value: wanted.clone(),
                }),
                ..item.state(State::Differs, why)
            }
        });
    }
    if items.is_empty() {
        items.push(
            Item::new("io-scheduler", "2.2").state(State::Skipped, "no physical block device"),
        );
    }
    items
}

fn vhost_net(root: &Path, tuning: &HostTuning) -> Item {
    let item = Item::new("vhost_net", "4.1");
    if !tuning.vhost_net {
        return item.state(State::Skipped, "vhost_net: false");
    }
    let loaded = root.join("sys/module/vhost_net").is_dir()
        || fs::read_to_string(root.join("proc/modules")).is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().next() == Some("vhost_net"))
        });
    if loaded {
        return item.values("loaded", "loaded").state(State::Ok, "");
    }
    Item {
        fix: Some(Fix::Run {
            program: "modprobe".into(),
            args: vec!["vhost_net".into()],
            mkdir: None,
        }),
        ..item.values("not loaded", "loaded").state(
            State::Differs,
            "in-kernel virtio-net backend; add vhost_net to /etc/modules to keep it across reboots",
        )
    }
}

// ---------------------------------------------------------------- apply

/// What `apply` did to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub before: String,
    pub after: String,
    /// None = now conforms; Some = why it still differs.
    pub problem: Option<String>,
}

/// Carries out `fix`: writes under the root, runs programs through `runner`.
fn carry_out(fix: &Fix, runner: &dyn Runner) -> Result<(), String> {
    match fix {
        Fix::Write { paths, value } => {
            for path in paths {
                // No create: a sysfs file that vanished is not ours to make up.
                // O_TRUNC as `echo >` does: sysfs ignores it, a test tree needs it.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                file.write_all(value.as_bytes())
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::EIO) => format!(
                            "{}: the kernel refused ({e}): a managed IRQ?",
                            path.display()
                        ),
                        _ => format!("{}: {e}", path.display()),
                    })?;
            }
            Ok(())
        }
        Fix::Replace { path, content } => {
            let dir = path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let tmp = dir.join(format!(
                ".{}.kvmtune-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
                std::process::id()
            ));
            fs::write(&tmp, content).map_err(|e| format!("{}: {e}", tmp.display()))?;
            if let Ok(meta) = fs::metadata(path) {
                let _ = fs::set_permissions(&tmp, meta.permissions());
            }
            fs::rename(&tmp, path).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                format!("{}: {e}", path.display())
            })
        }
        Fix::Run {
            program,
            args,
            mkdir,
        } => {
            if let Some(dir) = mkdir {
                fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let out = runner
                .run(&find_program(program), args)
                .map_err(|e| e.to_string())?;
            if out.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {}: {}",
                    args.join(" "),
                    out.stderr.trim()
                ))
            }
        }
    }
}

/// Applies the fixes of every item that differs, then checks again. Returns what
/// was done per item (empty when everything already conformed) and the final items.
pub fn apply(
    root: &Path,
    policy: &Policy,
    tuning: &HostTuning,
    runner: &dyn Runner,
) -> Result<(Vec<Outcome>, Vec<Item>), HostError> {
    let before = check(root, policy, tuning)?;
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for item in before.iter().filter(|i| i.state == State::Differs) {
        if let Some(fix) = &item.fix
            && let Err(e) = carry_out(fix, runner)
        {
            errors.insert(item.name.clone(), e);
        }
    }
    let after = check(root, policy, tuning)?;
    let mut outcomes = Vec::new();
    for item in before.iter().filter(|i| i.state == State::Differs) {
        let now = after.iter().find(|a| a.name == item.name);
        let problem = match (errors.get(&item.name), now) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(a)) if a.state == State::Differs => Some(match item.fix {
                None => "no automatic fix".to_string(),
                Some(_) => format!("still {} after the change ({})", a.current, a.detail),
            }),
            _ => None,
        };
        outcomes.push(Outcome {
            name: item.name.clone(),
            before: item.current.clone(),
            after: now.map_or_else(String::new, |a| a.current.clone()),
            problem,
        });
    }
    Ok((outcomes, after))
}

// ---------------------------------------------------------------- output

/// The check table: `STATE  ITEM  current → wanted  (detail)`.
pub fn render(items: &[Item]) -> String {
    let name_width = items
        .iter()
        .map(|i| i.name.chars().count())
        .max()
        .unwrap_or(4)
        .min(32);
    let mut out = String::new();
    for i in items {
        let state = match i.state {
            State::Ok => "ok",
            State::Differs => "differs",
            State::Unsupported => "unsupported",
            State::Skipped => "skipped",
        };
        let values = match (i.current.is_empty(), i.state) {
            (true, _) => String::new(),
            (false, State::Differs | State::Unsupported) => {
                format!("{} → wanted {}", i.current, i.wanted)
            }
            (false, _) => i.current.clone(),
        };
        let detail = if i.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", i.detail)
        };
        let line = format!(
            "{state:<12} [{:<3}] {:<name_width$}  {values}{detail}",
            i.rule, i.name
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests;
