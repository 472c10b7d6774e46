//! The ledger's data: which guest kvmtune placed where, and its reconciliation with
//! the guests that run. Storing it (`/run/kvmtune/ledger.json` under a `flock`,
//! written atomically) is `kvmtune_sys::ledger_store`'s job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::placement::{Claim, Occupancy, Pool};

/// How long a claim made at `prepare` may wait for libvirt's status file before
/// reconciliation treats the start as failed. libvirt writes the status file while
/// starting QEMU, seconds after prepare at most.
pub const PREPARE_GRACE: Duration = Duration::from_secs(120);

/// One guest's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub uuid: Option<String>,
    /// Union of the vCPUs' CPUs (for people reading the file).
    pub cpus: CpuSet,
    pub nodes: CpuSet,
    pub vcpus: Vec<CpuSet>,
    pub emulator: Option<CpuSet>,
    pub memory_kib: u64,
    pub pool: Pool,
    /// When claimed: seconds on the boot clock (`CLOCK_BOOTTIME`), which neither
    /// NTP nor an admin can step; compared only within one boot ([`Ledger::boot_id`]).
    pub claimed_at: u64,
    /// `prepared` (claimed, QEMU not seen yet) or `running`.
    pub state: EntryState,
    /// The policy rule that placed the guest.
    pub rule: String,
    /// A running guest kvmtune did not pin, recorded so that later calls need not
    /// parse its status file again: it floats over `cpus` and holds no claim.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub floating: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    Prepared,
    Running,
}

/// The ledger file's content.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub version: u32,
    /// The boot the claims' times belong to (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    pub boot_id: String,
    pub guests: BTreeMap<String, Entry>,
}

impl Ledger {
    /// The claims as the placement engine's occupancy.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            guests: self
                .guests
                .iter()
                .filter(|(_, e)| !e.floating)
                .map(|(name, e)| {
                    (
                        name.clone(),
                        Claim {
                            vcpus: e.vcpus.clone(),
                            nodes: e.nodes.clone(),
                            memory_kib: e.memory_kib,
                            pool: e.pool,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Adopts the current boot: claim times from another boot mean nothing on this
    /// boot's clock, so `prepared` claims of that boot are dropped (their starts
    /// did not survive the reboot); running ones stay until reconciliation finds
    /// their status files gone. Returns whether the boot changed.
    pub fn adopt_boot(&mut self, boot_id: &str) -> bool {
        if self.boot_id == boot_id {
            return false;
        }
        let first = self.boot_id.is_empty() && self.guests.is_empty();
        self.guests.retain(|_, e| e.state == EntryState::Running);
        self.boot_id = boot_id.to_string();
        !first
    }

    /// Drops entries whose guest is not running: no status file and either marked
    /// running (it stopped without `release`) or prepared longer ago than the grace
    /// period (its start failed or its hook was killed). Returns the dropped names.
    pub fn reconcile(&mut self, running: &BTreeMap<String, PathBuf>, now: u64) -> Vec<String> {
        let mut dropped = Vec::new();
        self.guests.retain(|name, entry| {
            let alive = running.contains_key(name)
                || (entry.state == EntryState::Prepared
                    && now.saturating_sub(entry.claimed_at) < PREPARE_GRACE.as_secs());
            if !alive {
                dropped.push(name.clone());
            }
            alive
        });
        for (name, entry) in self.guests.iter_mut() {
            if running.contains_key(name) {
                entry.state = EntryState::Running;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cpus: &str, state: EntryState, claimed_at: u64) -> Entry {
        let set = CpuSet::parse(cpus).unwrap();
        Entry {
            uuid: None,
            vcpus: set.iter().map(CpuSet::single).collect(),
            cpus: set,
            nodes: CpuSet::single(0),
            emulator: None,
            memory_kib: 1024,
            pool: Pool::Dedicated,
            claimed_at,
            state,
            rule: "defaults".into(),
            floating: false,
        }
    }

    #[test]
    fn reconcile_drops_dead_and_stale_claims_only() {
        let mut ledger = Ledger::default();
        ledger
            .guests
            .insert("running".into(), entry("1", EntryState::Running, 0));
        ledger
            .guests
            .insert("died".into(), entry("2", EntryState::Running, 0));
        ledger
            .guests
            .insert("starting".into(), entry("3", EntryState::Prepared, 1000));
        ledger
            .guests
            .insert("failed".into(), entry("4", EntryState::Prepared, 10));
        let mut running = BTreeMap::new();
        running.insert("running".to_string(), PathBuf::from("/x"));
        let dropped = ledger.reconcile(&running, 1000 + 5);
        assert_eq!(dropped, vec!["died".to_string(), "failed".to_string()]);
        assert_eq!(
            ledger.guests.keys().collect::<Vec<_>>(),
            vec!["running", "starting"]
        );
    }
}
