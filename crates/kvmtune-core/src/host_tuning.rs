//! The host-side wishes of the policy's `host.tuning:` keys (TUNING-RULES.md 1.3, 2.2,
//! 3.1, 3.2, 4.1) as plain data, with the seed's rules as their defaults. Reading and
//! changing the host to match them is `kvmtune_sys::hosttune`'s job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `ksm:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ksm {
    Off,
    On,
    Keep,
}

/// `thp:` (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Thp {
    Always,
    Madvise,
    Never,
    Keep,
}

/// `io_scheduler:`: the scheduler per device kind; `keep` leaves that kind alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoSchedulers {
    /// Spinning disks: a fair scheduler so one guest cannot starve the others.
    pub rotational: String,
    /// Non-rotational SATA/SAS/virtio disks.
    pub ssd: String,
    /// NVMe: the device queues are fast and deep enough; no scheduler.
    pub nvme: String,
}

impl Default for IoSchedulers {
    fn default() -> Self {
        IoSchedulers {
            rotational: "bfq".into(),
            ssd: "mq-deadline".into(),
            nvme: "none".into(),
        }
    }
}

/// Host-side wishes. `Default` is the seed's rules; the YAML keys are the ones
/// proposed for the policy's `host:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostTuning {
    /// 1.3: bind physical NICs' IRQs to the IRQ CPUs (`irq_cpus` list, else `reserved_cpus`).
    pub nic_irqs: bool,
    /// 1.3: keep irqbalance's banned CPUs = every CPU but the IRQ CPUs.
    pub irqbalance: bool,
    /// 3.1
    pub ksm: Ksm,
    /// 3.2
    pub thp: Thp,
    /// 3.2: huge pages to reserve on every node, by size (`2M`, `1G`); empty = report only.
    pub hugepages_per_node: BTreeMap<String, u64>,
    /// 3.2: a hugetlbfs mount must exist (libvirt backs guest memory with it).
    pub hugetlbfs: bool,
    /// 2.2
    pub io_scheduler: IoSchedulers,
    /// 4.1: the vhost_net module loaded.
    pub vhost_net: bool,
}

impl Default for HostTuning {
    fn default() -> Self {
        HostTuning {
            nic_irqs: true,
            irqbalance: true,
            ksm: Ksm::Off,
            thp: Thp::Always,
            hugepages_per_node: BTreeMap::new(),
            hugetlbfs: true,
            io_scheduler: IoSchedulers::default(),
            vhost_net: true,
        }
    }
}
impl HostTuning {
    /// Parses the keys from YAML text (the hidden `--tuning FILE` option); `source`
    /// names the text in errors.
    pub fn parse(text: &str, source: &str) -> Result<HostTuning, String> {
        let tuning: HostTuning =
            serde_yaml_ng::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        for size in tuning.hugepages_per_node.keys() {
            if page_size_kib(size).is_none() {
                return Err(format!(
                    "{source}: hugepages_per_node: '{size}' is not a page size such as 2M or 1G"
                ));
            }
        }
        Ok(tuning)
    }
}

/// `2M` → 2048, `1G` → 1048576, `2048K`/`2048kB` → 2048.
pub fn page_size_kib(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix('G') {
        (n, 1024 * 1024)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix("kB").or_else(|| t.strip_suffix('K')) {
        (n, 1)
    } else {
        return None;
    };
    num.parse::<u64>().ok().filter(|n| *n > 0).map(|n| n * mult)
}
