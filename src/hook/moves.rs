//! Repacking in the hook ([`kvmtune_core::repack`]): which running guests may
//! move, the moves recorded together with the new guest's claim under the ledger
//! lock, and the moves applied at the new guest's `started`, read back, and a
//! failed one rolled back in the ledger.
//!
//! What the ledger entry cannot say is kept next to it in `/run/kvmtune/repack.json`
//! (written under the ledger lock, atomically, before the ledger): which guests
//! kvmtune placed in the shared pool itself (only those move; never a guest whose
//! own XML pins it), by the claim time of that claim, and the moves still to apply
//! at each admitted guest's `started`. A move is applied only while the ledger
//! still holds the moved guest's claim as the move left it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::placement::{Claim, Occupancy, Pool, eligible_cpus};
use kvmtune_core::plan::Plan;
use kvmtune_core::policy::{EmulatorPlacement, Policy, Settings};
use kvmtune_core::repack::{Admitted, Movable, Move, breaches};
use kvmtune_sys::affinity;
use kvmtune_sys::ledger_store::{LOCK_TIMEOUT, Locked};
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::logging::sanitize;
use kvmtune_sys::roots::Roots;

use super::context::Stage;

/// The file next to the ledger.
const STATE_FILE: &str = kvmtune_sys::ledger_store::REPACK_FILE;

/// What repacking keeps besides the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RepackState {
    /// Guests kvmtune placed in the shared pool itself, by their claim's
    /// `claimed_at`: a later claim of the same name moves only once it says so.
    #[serde(default)]
    movable: BTreeMap<String, u64>,
    /// Moves still to apply, by the guest whose admission made them.
    #[serde(default)]
    pending: BTreeMap<String, Vec<Move>>,
}

fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATE_FILE)
}

/// The state (empty when missing or unreadable: then nothing moves).
fn load(run_dir: &Path) -> RepackState {
    std::fs::read(state_path(run_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn store(run_dir: &Path, state: &RepackState, _held: &Locked) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state)?;
    let path = state_path(run_dir);
    kvmtune_sys::atomicfile::write(&path, STATE_FILE, &bytes, 0o600, false)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The settings the policy gave a guest by the rule that placed it.
fn settings_of<'p>(policy: &'p Policy, rule: &str) -> &'p Settings {
    policy
        .rules
        .iter()
        .find(|r| r.name == rule)
        .map_or(&policy.defaults, |r| &r.settings)
}

/// The running guests repacking may move at this guest's admission, with what
/// their moves respect (see [`movable_guests`]).
pub(super) fn movable(ctx: &Stage<'_>, locked: &Locked, host: &Host) -> BTreeMap<String, Movable> {
    movable_guests(
        &ctx.policy,
        &ctx.env.paths.run_dir,
        &locked.ledger.guests,
        host,
        Some(&ctx.domain.name),
    )
}

/// The running guests that may move, with what their moves respect: shared
/// claims kvmtune made itself (recorded movable at that claim), running, not
/// `except`; none when the policy turns repacking off. The one definition the
/// hook's repacking and `kvmtune rebalance` share.
pub(crate) fn movable_guests(
    policy: &Policy,
    run_dir: &Path,
    ledger: &BTreeMap<String, Entry>,
    host: &Host,
    except: Option<&str>,
) -> BTreeMap<String, Movable> {
    if !policy.host.repack {
        return BTreeMap::new();
    }
    let state = load(run_dir);
    let irq = policy.irq_cpus(host);
    ledger
        .iter()
        .filter(|(name, e)| {
            Some(name.as_str()) != except
                && e.pool == Pool::Shared
                && e.state == EntryState::Running
                && !e.floating
                && state.movable.get(*name) == Some(&e.claimed_at)
        })
        .map(|(name, e)| {
            let settings = settings_of(policy, &e.rule);
            let mut eligible = eligible_cpus(
                host,
                &policy.host.reserved_cpus,
                &irq,
                policy.host.allow_cpu0,
                settings.nodes.as_ref(),
            );
            if let Some(set) = policy.host.pool_cpus(Pool::Shared) {
                eligible = eligible.intersection(set);
            }
            (
                name.clone(),
                Movable {
                    ratio: f64::from(settings.cpu_allocation_ratio),
                    eligible,
                    emulator: e.emulator.clone(),
                    emulator_on_housekeeping: settings.emulator == EmulatorPlacement::Housekeeping,
                },
            )
        })
        .collect()
}

/// The guests with moves still to apply at another guest's `started`: a
/// rebalancing leaves them alone (their ledger claim is ahead of their threads).
pub(crate) fn pending_guests(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = load(run_dir)
        .pending
        .into_values()
        .flatten()
        .map(|m| m.guest)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The placement invariant on a plan's repacking: the new claim `entry` and
/// every moved guest's new claim, against everyone after the moves. Empty when
/// the plan moves nothing.
pub(super) fn invariant_breaches(
    ctx: &Stage<'_>,
    locked: &Locked,
    host: &Host,
    others: &Occupancy,
    plan: &Plan,
    entry: &Entry,
    emulator_on_housekeeping: bool,
) -> Vec<String> {
    let Some(done) = &plan.repack else {
        return Vec::new();
    };
    let claim = Claim {
        vcpus: entry.vcpus.clone(),
        nodes: entry.nodes.clone(),
        memory_kib: entry.memory_kib,
        pool: entry.pool,
    };
    breaches(
        done,
        Admitted {
            guest: &ctx.domain.name,
            claim: &claim,
            emulator: entry.emulator.as_ref(),
            emulator_on_housekeeping,
        },
        others,
        &movable(ctx, locked, host),
        &locked.ledger.guests,
        &kvmtune_core::admission::forbidden_cpus(&ctx.policy, host),
    )
    .into_iter()
    .map(|(guest, breach)| format!("repacking: guest '{}': {breach}", sanitize(&guest)))
    .collect()
}

/// With the new guest's claim `entry` (already in the ledger, not saved yet):
/// the moved guests' new claims into the ledger, the moves pending for this
/// guest's `started`, and whether this guest may itself move later. The caller
/// saves the ledger (after this writes the state file). `plan`: the plan the
/// claim came from (None when the guest was confined by another plan: nothing
/// of this plan's repacking is made). Returns one note per move.
pub(super) fn record(
    ctx: &Stage<'_>,
    locked: &mut Locked,
    plan: Option<&Plan>,
    entry: &Entry,
) -> Result<Vec<String>> {
    let run_dir = &ctx.env.paths.run_dir;
    let mut state = load(run_dir);
    let name = &ctx.domain.name;
    // Drop what no longer belongs to a guest in the ledger.
    state
        .movable
        .retain(|g, _| locked.ledger.guests.contains_key(g));
    state
        .pending
        .retain(|g, _| locked.ledger.guests.contains_key(g));
    state.pending.remove(name);
    match plan {
        Some(p) if p.pool == Pool::Shared && !p.kept_existing_pins => {
            state.movable.insert(name.clone(), entry.claimed_at);
        }
        _ => {
            state.movable.remove(name);
        }
    }
    let mut notes = Vec::new();
    if let Some(done) = plan.and_then(|p| p.repack.as_ref()) {
        for (guest, claim) in &done.claims {
            if let Some(moved) = locked.ledger.guests.get_mut(guest) {
                moved.vcpus = claim.vcpus.clone();
                moved.cpus = claim.cpus();
                if let Some(emulator) = done.emulators.get(guest) {
                    moved.emulator = Some(emulator.clone());
                }
            }
        }
        notes.extend(
            done.moves
                .iter()
                .map(|m| format!("repack: {}", sanitize(&m.to_string()))),
        );
        state.pending.insert(name.clone(), done.moves.clone());
    }
    store(run_dir, &state, locked)?;
    Ok(notes)
}

/// How one guest's moves went.
#[derive(Debug, PartialEq)]
pub(crate) enum Applied {
    /// Every move applied (and read back where threads are touched).
    Done(Vec<String>),
    /// A move failed: the guest's claim goes back to where it ran.
    Failed(String),
    /// The ledger no longer holds the claim the moves made: nothing to do.
    Superseded,
}

/// At `started` of the admitted guest: applies the moves its admission made to
/// the moved guests' vCPU threads (libvirt's per-vCPU cgroup `cpuset.cpus`
/// first, where it exists, then the thread's affinity), reads them back, and
/// rolls back in the ledger the claim of a guest whose move failed (guest gone,
/// EINVAL), with a note. Under the ledger lock: a few syscalls per move.
///
/// Returns the moves that failed for a guest that still runs: its threads stay on
/// CPUs the admitted guest was given, so the admitted guest must not run there
/// (the caller refuses its start).
pub(super) fn apply_pending(ctx: &Stage<'_>, notes: &mut Vec<String>) -> Result<Vec<String>> {
    let run_dir = &ctx.env.paths.run_dir;
    let mut blocking = Vec::new();
    if !state_path(run_dir).exists() {
        return Ok(blocking);
    }
    let mut locked = Locked::acquire(run_dir, LOCK_TIMEOUT)?;
    let mut state = load(run_dir);
    let Some(moves) = state.pending.remove(&ctx.domain.name) else {
        return Ok(blocking);
    };
    let mut by_guest: BTreeMap<String, Vec<Move>> = BTreeMap::new();
    for m in moves {
        by_guest.entry(m.guest.clone()).or_default().push(m);
    }
    for (guest, moves) in &by_guest {
        let outcome = match locked.ledger.guests.get(guest) {
            Some(entry) if still_claimed(entry, moves) => {
                apply_guest(ctx.env, guest, moves, entry.emulator.as_ref())
            }
            _ => Applied::Superseded,
        };
        let who = sanitize(guest);
        match outcome {
            Applied::Done(effective) => {
                notes.push(format!(
                    "repack: moved guest '{who}': {}",
                    effective.join(" ")
                ));
                notes.extend(queue_moved_definition(ctx.env, &ctx.policy, guest));
            }
            Applied::Superseded => notes.push(format!(
                "repack: guest '{who}' no longer holds the moved claim: nothing moved"
            )),
            Applied::Failed(why) => {
                if let Some(entry) = locked.ledger.guests.get_mut(guest) {
                    roll_back(entry, moves);
                }
                notes.push(format!(
                    "repack: moving guest '{who}' failed ({why}); its claim rolled back to where it runs"
                ));
                let still_runs = ctx
                    .env
                    .paths
                    .libvirt_run_dir
                    .join(format!("{guest}.xml"))
                    .exists();
                if still_runs && !guest.contains('/') {
                    blocking.push(format!(
                        "moving guest '{who}' out of the way failed ({why}), its claim rolled back to where it runs"
                    ));
                }
            }
        }
    }
    store(run_dir, &state, &locked)?;
    locked.save()?;
    Ok(blocking)
}

/// Whether the ledger still holds `entry` as the moves left it.
fn still_claimed(entry: &Entry, moves: &[Move]) -> bool {
    moves
        .iter()
        .all(|m| entry.vcpus.get(m.vcpu as usize) == Some(&m.to))
}

/// The claim as it was before the moves (emulator threads that followed the
/// vCPUs follow them back).
fn roll_back(entry: &mut Entry, moves: &[Move]) {
    let with_vcpus = entry.emulator.as_ref() == Some(&entry.cpus);
    for m in moves {
        if let Some(slot) = entry.vcpus.get_mut(m.vcpu as usize) {
            *slot = m.from.clone();
        }
    }
    entry.cpus = entry.vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
    if with_vcpus {
        entry.emulator = Some(entry.cpus.clone());
    }
}

/// After `guest` moved: queues its definition for `kvmtune converge` when the
/// pins kvmtune wrote there now say where it ran before
/// ([`kvmtune_core::converge::after_move`]). A file write, never a libvirt call;
/// returns the note to log, if any.
pub(crate) fn queue_moved_definition(env: &Roots, policy: &Policy, guest: &str) -> Option<String> {
    use kvmtune_core::converge::{Decision, Entry, after_move};
    let path = env.paths.libvirt_run_dir.join(format!("{guest}.xml"));
    let domain = runstate::read_status(&path).ok()?.domain?;
    if after_move(policy, &domain) != Decision::Queue {
        return None;
    }
    let entry = Entry {
        uuid: domain.uuid.clone(),
        queued_at: kvmtune_sys::converge_queue::now_utc_secs(),
    };
    let queue = kvmtune_sys::converge_queue::Queue::under(&env.paths.run_dir);
    let who = sanitize(guest);
    Some(match queue.enqueue(guest, &entry) {
        Ok(()) => format!("converge: guest '{who}' queued (its definition's pins follow the move)"),
        Err(e) => format!("converge: could not queue guest '{who}': {e}"),
    })
}

/// Applies one guest's moves to its running threads (when the hook touches
/// threads at all, `apply_runtime`), and reads each back; its other threads
/// (emulator, iothreads libvirt does not pin) go to `emulator`, the claim's
/// emulator set after the moves (with `emulator: with-vcpus` it follows them).
pub(crate) fn apply_guest(
    env: &Roots,
    guest: &str,
    moves: &[Move],
    emulator: Option<&CpuSet>,
) -> Applied {
    if guest.contains('/') || guest.contains('\0') {
        return Applied::Failed("not a libvirt guest name".into());
    }
    let path = env.paths.libvirt_run_dir.join(format!("{guest}.xml"));
    let live = match runstate::read_status(&path) {
        Ok(live) => live,
        Err(e) => return Applied::Failed(format!("guest gone: {e}")),
    };
    let Some(pid) = live.qemu_pid else {
        return Applied::Failed("no QEMU pid in its status file".into());
    };
    let mut effective = Vec::new();
    for m in moves {
        let Some(tid) = live.vcpu_tids.get(&m.vcpu).copied() else {
            return Applied::Failed(format!("vCPU {} has no thread id", m.vcpu));
        };
        if !env.apply_runtime {
            effective.push(format!(
                "vcpu{}={} (not applied: runtime off)",
                m.vcpu, m.to
            ));
            continue;
        }
        // The cgroup first: the kernel refuses an affinity outside it.
        if let Some(cg) = affinity::cpuset_cgroup(&env.host_root, pid) {
            let dir = affinity::guest_cgroup_dir(&cg.dir).join(format!("vcpu{}", m.vcpu));
            if let Err(e) = affinity::set_cgroup_cpus(&dir, &m.to) {
                return Applied::Failed(e.to_string());
            }
        }
        if let Err(e) = affinity::set_thread_affinity(tid, &m.to) {
            return Applied::Failed(e.to_string());
        }
        match affinity::allowed_cpus(&env.proc_root, pid, tid) {
            Ok(cpus) if cpus == m.to => effective.push(format!("vcpu{}={cpus}", m.vcpu)),
            Ok(cpus) => {
                return Applied::Failed(format!(
                    "vCPU {} reads back CPUs {cpus}, not {}",
                    m.vcpu, m.to
                ));
            }
            Err(e) => return Applied::Failed(e.to_string()),
        }
    }
    if let (Some(emulator), true) = (emulator, env.apply_runtime) {
        match move_other_threads(env, pid, &live, emulator) {
            Ok(()) => effective.push(format!("emulator={emulator}")),
            Err(e) => return Applied::Failed(e),
        }
    }
    Applied::Done(effective)
}

/// The guest's threads that are neither vCPUs nor iothreads with the admin's
/// own `<iothreadpin>`, set to `emulator` and read back; libvirt's emulator (and
/// kvmtune-pinned iothread) cgroups first, or the kernel refuses CPUs outside
/// the `<emulatorpin>` libvirt applied.
fn move_other_threads(
    env: &Roots,
    pid: u32,
    live: &kvmtune_core::runstate::LiveGuest,
    emulator: &CpuSet,
) -> std::result::Result<(), String> {
    let threads = affinity::threads_of(&env.proc_root, pid).map_err(|e| e.to_string())?;
    let admins_pin = |id: &u32| {
        live.domain
            .as_ref()
            .is_some_and(|d| d.iothread_pins.contains_key(id) && !d.iothread_pin_by_kvmtune(*id))
    };
    if let Some(cg) = affinity::cpuset_cgroup(&env.host_root, pid) {
        let dir = affinity::guest_cgroup_dir(&cg.dir);
        // The admin's <emulatorpin> stays: a move that needs other CPUs then
        // fails on the affinity and is rolled back.
        let admins_emulator = live
            .domain
            .as_ref()
            .is_some_and(|d| d.emulator_pin.is_some() && !d.emulator_pin_by_kvmtune());
        let known = live.domain.iter().flat_map(|d| d.iothread_ids.iter());
        let iothreads: std::collections::BTreeSet<&u32> = live
            .iothread_tids
            .keys()
            .chain(known)
            .filter(|id| !admins_pin(id))
            .collect();
        let emulator_leaf = (!admins_emulator).then(|| "emulator".to_string());
        for leaf in emulator_leaf
            .into_iter()
            .chain(iothreads.into_iter().map(|id| format!("iothread{id}")))
        {
            affinity::set_cgroup_cpus(&dir.join(leaf), emulator).map_err(|e| e.to_string())?;
        }
    }
    let pinned_iothreads: Vec<u32> = live
        .iothread_tids
        .iter()
        .filter(|(id, _)| admins_pin(id))
        .map(|(_, tid)| *tid)
        .collect();
    for tid in threads {
        if live.vcpu_tids.values().any(|t| *t == tid) || pinned_iothreads.contains(&tid) {
            continue;
        }
        let name = affinity::thread_name(&env.proc_root, pid, tid).unwrap_or_default();
        if name.starts_with("CPU ") && (name.ends_with("/KVM") || name.ends_with("/TCG")) {
            continue;
        }
        // An iothread the status file does not list, known by QEMU's name for it.
        if let Some(id) = name
            .strip_prefix("IO iothread")
            .and_then(|n| n.parse::<u32>().ok())
            && admins_pin(&id)
        {
            continue;
        }
        affinity::set_thread_affinity(tid, emulator).map_err(|e| e.to_string())?;
        match affinity::allowed_cpus(&env.proc_root, pid, tid) {
            Ok(cpus) if &cpus == emulator => {}
            Ok(cpus) => {
                return Err(format!(
                    "thread {tid} reads back CPUs {cpus}, not {emulator}"
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvmtune_core::domain::Domain;
    use kvmtune_core::policy::Policy;

    use super::*;
    use crate::test_support::{GUEST_XML, ThreadGuest};

    /// A real thread of this test process stands for a guest's vCPU thread: the
    /// move is made with sched_setaffinity and read back from /proc.
    #[test]
    fn a_move_is_applied_to_a_real_thread_and_read_back_and_einval_fails_it() {
        let guest = ThreadGuest::start();
        let (pid, tid) = (guest.pid, guest.tid);
        let ctx = Stage {
            env: &guest.env,
            policy: Policy::shipped(),
            xml: GUEST_XML,
            domain: Domain::parse(GUEST_XML).unwrap(),
        };
        let allowed = affinity::allowed_cpus(Path::new("/proc"), pid, tid).unwrap();
        let cpu = allowed.first().unwrap();
        let to = set(&cpu.to_string());
        let done = apply_guest(
            ctx.env,
            "s",
            &[mv("s", 0, &allowed.to_string(), &to.to_string())],
            None,
        );
        assert_eq!(done, Applied::Done(vec![format!("vcpu0={to}")]));
        assert_eq!(
            affinity::allowed_cpus(Path::new("/proc"), pid, tid).unwrap(),
            to
        );
        // A CPU the machine lacks: sched_setaffinity says EINVAL, the move fails.
        let failed = apply_guest(ctx.env, "s", &[mv("s", 0, &to.to_string(), "1000")], None);
        assert!(
            matches!(&failed, Applied::Failed(why) if why.contains("EINVAL")),
            "{failed:?}"
        );
        // A guest without a status file is gone.
        let gone = apply_guest(ctx.env, "t", &[mv("t", 0, "0", "1")], None);
        assert!(
            matches!(&gone, Applied::Failed(why) if why.contains("gone")),
            "{gone:?}"
        );
    }

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    fn mv(guest: &str, vcpu: u32, from: &str, to: &str) -> Move {
        Move {
            guest: guest.into(),
            vcpu,
            from: set(from),
            to: set(to),
            reason: "test".into(),
        }
    }

    #[test]
    fn a_failed_move_rolls_the_claim_back_and_only_a_current_claim_moves() {
        let mut entry = Entry {
            uuid: None,
            cpus: set("3,5"),
            nodes: set("0"),
            vcpus: vec![set("3"), set("5")],
            emulator: None,
            memory_kib: 1024,
            pool: Pool::Shared,
            claimed_at: 1,
            state: EntryState::Running,
            rule: "defaults".into(),
            floating: false,
        };
        let moves = [mv("s", 1, "1", "5")];
        assert!(still_claimed(&entry, &moves));
        assert!(!still_claimed(&entry, &[mv("s", 1, "1", "6")]));
        roll_back(&mut entry, &moves);
        assert_eq!(entry.vcpus, vec![set("3"), set("1")]);
        assert_eq!(entry.cpus, set("1,3"));
        assert!(!still_claimed(&entry, &moves));
    }
}
