//! `reconnect begin`: libvirtd restarted while the guest runs; re-record its claim.

use anyhow::Result;

use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::placement::Pool;
use kvmtune_sys::affinity;
use kvmtune_sys::ledger_store::{self as ledger};
use kvmtune_sys::libvirt_run as runstate;

use super::Outcome;
use super::stage::{Stage, locked_ledger, read_host, status_path};

pub(super) fn reconnect(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, _, _) = locked_ledger(ctx)?;
    if let Some(e) = locked.ledger.guests.get_mut(&ctx.domain.name) {
        e.state = EntryState::Running;
        let cpus = e.cpus.clone();
        locked.save()?;
        return Ok(Outcome::allow(format!("claim kept cpus={cpus}")));
    }
    // No claim (ledger lost, e.g. /run cleared): record where the guest runs now,
    // from its XML pins or its threads' affinity.
    let live = status_path(ctx)
        .ok()
        .and_then(|p| runstate::read_status(&p).ok());
    let mut vcpus: Vec<CpuSet> = Vec::new();
    for v in 0..ctx.domain.vcpus_max {
        let from_xml = ctx.domain.pinned_cpus_of(v).cloned();
        let from_thread = live.as_ref().and_then(|l| {
            let tid = l.vcpu_tids.get(&v)?;
            affinity::allowed_cpus(&ctx.env.proc_root, l.qemu_pid?, *tid).ok()
        });
        if let Some(set) = from_xml.or(from_thread) {
            vcpus.push(set);
        }
    }
    if vcpus.is_empty() {
        return Ok(Outcome::allow("no placement to record"));
    }
    let cpus = vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
    let host = read_host(ctx, &locked).ok();
    let nodes = host
        .as_ref()
        .map(|h| kvmtune_core::placement::nodes_of(h, &cpus))
        .unwrap_or_default();
    locked.ledger.guests.insert(
        ctx.domain.name.clone(),
        Entry {
            uuid: ctx.domain.uuid.clone(),
            cpus: cpus.clone(),
            nodes,
            vcpus,
            emulator: ctx.domain.emulator_pin.clone(),
            memory_kib: ctx.domain.memory_kib,
            pool: Pool::Shared,
            claimed_at: ledger::now(),
            state: EntryState::Running,
            rule: "reconnect".into(),
        },
    );
    locked.save()?;
    Ok(Outcome::allow(format!("re-recorded cpus={cpus}")))
}
