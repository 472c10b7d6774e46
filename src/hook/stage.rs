//! What every hook stage shares: the loaded policy and domain, the ledger taken
//! under its lock and reconciled with what runs, the host, the claim a plan makes.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::placement::Occupancy;
use kvmtune_core::plan::Plan;
use kvmtune_core::policy::Policy;
use kvmtune_sys::ledger_store::{self as ledger, LOCK_TIMEOUT, Locked};
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::logging::sanitize;
use kvmtune_sys::roots::Roots;

/// Everything a stage needs, loaded once.
pub(super) struct Stage<'a> {
    pub(super) env: &'a Roots,
    pub(super) policy: Policy,
    pub(super) xml: &'a str,
    pub(super) domain: Domain,
}

/// Takes the ledger lock and reconciles it with libvirt's status files.
pub(super) fn locked_ledger(ctx: &Stage<'_>) -> Result<(Locked, Occupancy, Vec<String>)> {
    let mut locked = Locked::acquire(&ctx.env.paths.run_dir, LOCK_TIMEOUT)?;
    // A guest is running while its status file exists, even when that file does not
    // parse (or is too large): freeing its claim would hand its CPUs out twice.
    let running = runstate::status_files(&ctx.env.paths.libvirt_run_dir);
    let mut notes = Vec::new();
    if let Some(recovered) = locked.recovered_from.take() {
        notes.push(format!("ledger recovered: {recovered}"));
    }
    let dropped = locked.ledger.reconcile(&running, ledger::now());
    if !dropped.is_empty() {
        notes.push(format!(
            "freed stale claims of {}",
            dropped
                .iter()
                .map(|d| sanitize(d))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let claimed = locked.ledger.occupancy();
    // Only guests kvmtune holds no claim for need their status file parsed.
    let live = runstate::parse_except(&running, &claimed);
    let mut occupancy = claimed.clone();
    occupancy
        .guests
        .extend(kvmtune_core::runstate::pinned_by_others(&live, &claimed).guests);
    Ok((locked, occupancy, notes))
}

/// libvirt's status file for the guest. libvirt refuses names with '/', so such a
/// name is not from libvirt: never let it reach outside the run directory.
pub(super) fn status_path(ctx: &Stage<'_>) -> Result<PathBuf> {
    let name = &ctx.domain.name;
    if name.contains('/') || name.contains('\0') {
        return Err(anyhow!(
            "guest name '{}' cannot name a libvirt status file",
            sanitize(name)
        ));
    }
    Ok(ctx.env.paths.libvirt_run_dir.join(format!("{name}.xml")))
}

/// The host, its static topology from `/run/kvmtune/host-topology.json` when that
/// is still valid (see [`Host::read_cached`]). Takes the ledger lock as a witness:
/// holding it means the run directory passed the ledger's checks (root's, no
/// symlink), and the cache's temp file, like the ledger's, is stale whenever the
/// lock is free.
pub(super) fn read_host(ctx: &Stage<'_>, _held: &Locked) -> Result<Host> {
    kvmtune_sys::sysfs::read_host_cached(
        &ctx.env.host_root,
        &ctx.env.paths.run_dir.join(HOST_CACHE_FILE),
    )
    .with_context(|| format!("host {}", ctx.env.host_root.display()))
}

/// The host topology cache, next to the ledger.
pub(super) const HOST_CACHE_FILE: &str = "host-topology.json";

pub(super) fn entry_from_plan(ctx: &Stage<'_>, plan: &Plan) -> Option<Entry> {
    let placement = plan.placement.as_ref()?;
    Some(Entry {
        uuid: ctx.domain.uuid.clone(),
        cpus: placement.cpus.clone(),
        nodes: placement.nodes.clone(),
        vcpus: placement.vcpus.clone(),
        emulator: plan.emulator_cpus.clone(),
        memory_kib: ctx.domain.memory_kib,
        pool: plan.pool,
        claimed_at: ledger::now(),
        state: EntryState::Prepared,
        rule: plan.policy_rule.clone(),
    })
}
