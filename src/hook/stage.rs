//! What every hook stage shares: the loaded policy and domain, the ledger taken
//! under its lock and reconciled with what runs, the host, the claim a plan makes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use kvmtune_core::admission::{self, Candidate};
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::placement::{Claim, Occupancy, Pool};
use kvmtune_core::plan::Plan;
use kvmtune_core::policy::{EmulatorPlacement, ExistingPins, OnViolation, Policy};
use kvmtune_core::recovery::{Observed, Unrecorded, recovered_entries};
use kvmtune_sys::affinity;
use kvmtune_sys::ledger_store::{self as ledger, LOCK_TIMEOUT, Locked};
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::logging::sanitize;

pub(super) use super::context::Stage;

/// Takes the ledger lock, reconciles it with libvirt's status files, and recovers
/// the claim of every running guest the ledger lacks from what runs (see
/// [`kvmtune_core::recovery`]): a lost or corrupt ledger never hands a running
/// guest's CPUs out again. Each such guest is recorded once, so its status file is
/// parsed once, not on every call.
pub(super) fn locked_ledger(ctx: &Stage<'_>) -> Result<(Locked, Occupancy, Vec<String>)> {
    locked_ledger_recovering(ctx, false)
}

/// [`locked_ledger`]; `recover_self`: also recover the guest of this call from what
/// runs (`reconnect`). Other stages admit their own guest instead: a guest that
/// starts while the ledger lacks its claim must pass the invariant, not be
/// recorded wherever libvirt put it.
pub(super) fn locked_ledger_recovering(
    ctx: &Stage<'_>,
    recover_self: bool,
) -> Result<(Locked, Occupancy, Vec<String>)> {
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
        .filter(|(name, _)| recover_self || **name != ctx.domain.name)
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
    let mut unrecorded = Vec::new();
    for (name, guest) in &live {
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
                vcpu_run_ns: (0..domain.vcpus_max)
                    .map(|v| {
                        let tid = guest.vcpu_tids.get(&v)?;
                        affinity::run_time_ns(&ctx.env.proc_root, pid, *tid).ok()
                    })
                    .collect(),
            },
            None => Observed::default(),
        };
        unrecorded.push(Unrecorded {
            name: name.clone(),
            domain,
            observed,
        });
    }
    let recorded = locked.ledger.guests.clone();
    let mut names = Vec::new();
    for (name, entry) in
        recovered_entries(&ctx.policy, &host, &recorded, &unrecorded, ledger::now())
    {
        names.push(name.clone());
        locked.ledger.guests.insert(name, entry);
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

/// What admitting a guest decided.
pub(super) enum Admission {
    /// Record this claim (`notes` say what was adjusted and why). `confined` is the
    /// plan that placed it when it is not the plan admitted (confinement).
    Claim {
        entry: Entry,
        notes: Vec<String>,
        confined: Option<Box<Plan>>,
    },
    /// Nothing to claim: the guest is opted out or its policy does not pin.
    Unpinned,
    /// Refuse the start (or restore, or migration): one line for the user.
    Refused(String),
}

/// The placement invariant applied to a plan, in one place for prepare, restore,
/// migrate and a `started` without a claim ([`kvmtune_core::admission`]): a guest
/// whose pool has no room, or whose kept pins break the invariant, is refused under
/// `on_violation: refuse`; under `warn` it is confined to the eligible shared CPUs
/// when there are any, else refused. Never unpinned, never on a forbidden CPU or
/// another guest's dedicated CPU.
pub(super) fn admit(
    ctx: &Stage<'_>,
    locked: &Locked,
    host: &Host,
    occupancy: &Occupancy,
    plan: &Plan,
) -> Result<Admission> {
    let name = sanitize(&ctx.domain.name);
    let Some(settings) = ctx
        .policy
        .select(&kvmtune_core::plan::guest_facts(&ctx.domain))
        .settings
    else {
        return Ok(Admission::Unpinned);
    };
    if !settings.pin_vcpus {
        return Ok(Admission::Unpinned);
    }
    let refuse = ctx.policy.on_violation == OnViolation::Refuse;
    let others = occupancy.without(&ctx.domain.name);
    let forbidden = admission::forbidden_cpus(&ctx.policy, host);
    let on_housekeeping = settings.emulator == EmulatorPlacement::Housekeeping;
    let breaches_of =
        |entry: &Entry| breaches(ctx, locked, &others, &forbidden, on_housekeeping, entry);
    let mut notes = Vec::new();
    let first = match (entry_from_plan(ctx, plan), &plan.no_room) {
        (Some(_), Some(why)) if refuse => {
            return Ok(Admission::Refused(format!(
                "kvmtune: guest '{name}' cannot be placed: {why} ({} pool, on_violation: refuse)",
                pool_name(settings.pool)
            )));
        }
        (Some(entry), Some(why)) => {
            notes.push(format!("no room: {why}; placed on shared CPUs instead"));
            entry
        }
        (Some(entry), None) => entry,
        (None, why) => {
            return Ok(Admission::Refused(format!(
                "kvmtune: guest '{name}' cannot be placed: {}",
                why.as_deref().unwrap_or("no placement")
            )));
        }
    };
    // A repacking's moved claims are recorded with this one: the invariant holds
    // for this claim and every moved one against everyone after the moves, or
    // none is made.
    if plan.repack.is_some() {
        let moved = super::moves::invariant_breaches(
            ctx,
            locked,
            host,
            &others,
            plan,
            &first,
            on_housekeeping,
        );
        if !moved.is_empty() {
            return Ok(Admission::Refused(format!(
                "kvmtune: guest '{name}' cannot be placed: {}",
                moved.join("; ")
            )));
        }
        return Ok(Admission::Claim {
            entry: first,
            notes,
            confined: None,
        });
    }
    let breaches = breaches_of(&first);
    if breaches.is_empty() {
        return Ok(Admission::Claim {
            entry: first,
            notes,
            confined: None,
        });
    }
    let list = breaches
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if refuse {
        return Ok(Admission::Refused(format!(
            "kvmtune: guest '{name}' cannot start where it asks (on_violation: refuse): {list}"
        )));
    }
    // warn: confine it to the eligible shared CPUs, its own pins set aside.
    let confined_policy = confined(&ctx.policy);
    let mut domain = ctx.domain.clone();
    domain.vcpu_pins.clear();
    domain.vcpu_cpuset = None;
    let again = kvmtune_core::plan::plan(&confined_policy, host, occupancy, &domain)?;
    match entry_from_plan(ctx, &again) {
        Some(entry) if again.no_room.is_none() && breaches_of(&entry).is_empty() => {
            notes.push(format!(
                "{list}: confined to shared CPUs {} (on_violation: warn)",
                entry.cpus
            ));
            Ok(Admission::Claim {
                entry,
                notes,
                confined: Some(Box::new(again)),
            })
        }
        _ => Ok(Admission::Refused(format!(
            "kvmtune: guest '{name}' cannot start: {list}; and no eligible shared CPU is free{}",
            again.no_room.map(|w| format!(" ({w})")).unwrap_or_default()
        ))),
    }
}

/// The policy with every guest shared and its own pins overridden: the placement
/// a guest gets when what it asks for breaks the invariant under `warn`.
fn confined(policy: &Policy) -> Policy {
    let mut policy = policy.clone();
    for settings in std::iter::once(&mut policy.defaults)
        .chain(policy.rules.iter_mut().map(|r| &mut r.settings))
    {
        settings.existing_pins = ExistingPins::Override;
        settings.pool = Pool::Shared;
    }
    policy
}

/// A pool as the policy spells it.
pub(super) fn pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Shared => "shared",
        Pool::Dedicated => "dedicated",
    }
}

/// The placement invariant's breaches of `entry` (this guest's claim) against the
/// claims of every other guest (`others`, with their emulator sets from the ledger).
pub(super) fn breaches(
    ctx: &Stage<'_>,
    locked: &Locked,
    others: &Occupancy,
    forbidden: &CpuSet,
    emulator_on_housekeeping: bool,
    entry: &Entry,
) -> Vec<admission::Breach> {
    let claim = Claim {
        vcpus: entry.vcpus.clone(),
        nodes: entry.nodes.clone(),
        memory_kib: entry.memory_kib,
        pool: entry.pool,
    };
    admission::check(
        &Candidate {
            guest: &ctx.domain.name,
            claim: &claim,
            emulator: entry.emulator.as_ref(),
            emulator_on_housekeeping,
        },
        others,
        &locked.ledger.guests,
        forbidden,
    )
}
