//! What every hook stage shares: the loaded policy and domain, the ledger taken
//! under its lock and reconciled with what runs, the host, the claim a plan makes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use kvmtune_core::domain::Domain;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::placement::Occupancy;
use kvmtune_core::plan::Plan;
use kvmtune_core::policy::Policy;
use kvmtune_core::recovery::{Observed, recovered_entry};
use kvmtune_sys::affinity;
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

/// Takes the ledger lock, reconciles it with libvirt's status files, and recovers
/// the claim of every running guest the ledger lacks from what runs (see
/// [`kvmtune_core::recovery`]): a lost or corrupt ledger never hands a running
/// guest's CPUs out again. Each such guest is recorded once, so its status file is
/// parsed once, not on every call.
pub(super) fn locked_ledger(ctx: &Stage<'_>) -> Result<(Locked, Occupancy, Vec<String>)> {
    let mut locked = Locked::acquire(&ctx.env.paths.run_dir, LOCK_TIMEOUT)?;
    // A guest is running while its status file exists, even when that file does not
    // parse (or is too large): freeing its claim would hand its CPUs out twice.
    let running = runstate::status_files(&ctx.env.paths.libvirt_run_dir);
    let mut notes = Vec::new();
    let mut changed = false;
    if let Some(recovered) = locked.recovered_from.take() {
        notes.push(format!("ledger recovered: {recovered}"));
        changed = true;
    }
    if locked
        .ledger
        .adopt_boot(&ledger::boot_id(&ctx.env.host_root))
    {
        notes.push("new boot: dropped the previous boot's prepared claims".into());
        changed = true;
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
    let unknown: BTreeMap<String, PathBuf> = running
        .iter()
        .filter(|(name, _)| !locked.ledger.guests.contains_key(*name))
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    if !unknown.is_empty() {
        let recovered = recover(ctx, &mut locked, &unknown)?;
        if !recovered.is_empty() {
            notes.push(format!(
                "recovered claims of {} from what runs",
                recovered
                    .iter()
                    .map(|d| sanitize(d))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            changed = true;
        }
    }
    if changed {
        locked.save()?;
    }
    let occupancy = locked.ledger.occupancy();
    Ok((locked, occupancy, notes))
}

/// Records the running guests the ledger lacks (`unknown`: name → status file),
/// each from its XML pins or its threads' affinity in /proc. Returns their names.
fn recover(
    ctx: &Stage<'_>,
    locked: &mut Locked,
    unknown: &BTreeMap<String, PathBuf>,
) -> Result<Vec<String>> {
    let live = runstate::parse_except(unknown, &Occupancy::default());
    if live.is_empty() {
        return Ok(Vec::new());
    }
    let host = read_host(ctx, locked)?;
    let now = ledger::now();
    let mut names = Vec::new();
    for (name, guest) in live {
        let Some(domain) = &guest.domain else {
            continue;
        };
        let observed = match guest.qemu_pid {
            Some(pid) => Observed {
                vcpu_affinity: (0..domain.vcpus_max)
                    .map(|v| {
                        let tid = guest.vcpu_tids.get(&v)?;
                        affinity::allowed_cpus(&ctx.env.proc_root, pid, *tid).ok()
                    })
                    .collect(),
                emulator_affinity: affinity::allowed_cpus(&ctx.env.proc_root, pid, pid).ok(),
            },
            None => Observed::default(),
        };
        let others = locked.ledger.occupancy().without(&name);
        let entry = recovered_entry(&ctx.policy, &host, domain, &observed, &others, now);
        locked.ledger.guests.insert(name.clone(), entry);
        names.push(name);
    }
    Ok(names)
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
        floating: false,
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
