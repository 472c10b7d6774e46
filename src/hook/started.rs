//! `started begin`: QEMU exists and the guest is paused. Under the ledger lock only
//! the claim is settled (the one `prepare` made, or one admitted now); then, with the
//! lock released, the claimed placement is applied to the threads the XML does not
//! pin (per vCPU, emulator and iothread), memory nodes are bound for the strict
//! modes (a `cpuset.mems` write may migrate memory: slow), a detached child is
//! started to move `preferred` memory already allocated elsewhere to the claimed
//! nodes once (nothing bound), and every thread's affinity is read back.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};

use kvmtune_core::admission;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::numa_maps;
use kvmtune_core::plan::plan;
use kvmtune_core::policy::{EmulatorPlacement, MemoryMode};
use kvmtune_sys::affinity;
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::page_move;

use super::Outcome;
use super::stage::{Admission, Stage, admit, locked_ledger, read_host, status_path};

pub(super) fn started(ctx: &Stage<'_>) -> Result<Outcome> {
    let entry = match settle_claim(ctx)? {
        Ok(entry) => entry,
        Err(outcome) => return Ok(outcome),
    };
    let Some(Settled {
        entry,
        override_emulator,
    }) = entry
    else {
        return Ok(Outcome::allow("nothing to apply (not pinned by policy)"));
    };
    let mut notes = Vec::new();
    // The moves this guest's admission made, before its own pins.
    let blocking = super::moves::apply_pending(ctx, &mut notes)?;
    if !blocking.is_empty() {
        // The moved guest still runs on CPUs this guest's claim was given: starting
        // it there would put two guests on a dedicated CPU (or over a ratio).
        return Ok(Outcome::refuse(format!(
            "kvmtune: guest '{}' cannot start where it was placed: {}",
            kvmtune_sys::logging::sanitize(&ctx.domain.name),
            blocking.join("; ")
        )));
    }
    if !ctx.env.apply_runtime {
        notes.insert(0, format!("claimed cpus={}", entry.cpus));
        return Ok(Outcome::allow(notes.join("; ")));
    }
    let status_path = status_path(ctx)?;
    let live = runstate::read_status(&status_path)?;
    let pid = live
        .qemu_pid
        .ok_or_else(|| anyhow!("{}: no QEMU pid", status_path.display()))?;
    let threads = Threads::of(ctx, pid, &live.vcpu_tids, &live.iothread_tids)?;
    let applied = apply(ctx, &entry, override_emulator, pid, &threads, &mut notes)?;
    notes.insert(0, format!("effective {}", applied.join(" ")));
    Ok(Outcome::allow(notes.join("; ")))
}

/// Under the lock: the claim `prepare` made (now running), or, when there is none
/// (hook installed while the guest was starting, ledger lost, policy changed), one
/// admitted now. `Err` is a refusal to return as is; `Ok(None)`: nothing to pin.
fn settle_claim(ctx: &Stage<'_>) -> Result<Result<Option<Settled>, Outcome>> {
    let (mut locked, occupancy, _) = locked_ledger(ctx)?;
    let host = read_host(ctx, &locked)?;
    let on_housekeeping = ctx
        .policy
        .select(&kvmtune_core::plan::guest_facts(&ctx.domain))
        .settings
        .is_some_and(|s| s.emulator == EmulatorPlacement::Housekeeping);
    let holds_up = |entry: &Entry| {
        super::stage::breaches(
            ctx,
            &locked,
            &occupancy.without(&ctx.domain.name),
            &admission::forbidden_cpus(&ctx.policy, &host),
            on_housekeeping,
            entry,
        )
        .is_empty()
    };
    // A claim that breaks the invariant now (recorded from what runs while the
    // ledger lacked it, and another guest holds those CPUs) is no claim: admit.
    let claimed = locked
        .ledger
        .guests
        .get(&ctx.domain.name)
        .filter(|e| !e.floating)
        .filter(|e| holds_up(e))
        .cloned();
    let entry = match claimed {
        // A claim recovered before the emulator threads were placed: place them
        // now as the policy says (the vCPUs keep the claim's CPUs).
        // Relative to the claim's own vCPUs, not to a fresh plan's placement.
        Some(mut e) if e.emulator.is_none() && ctx.domain.emulator_pin.is_none() => {
            let housekeeping = admission::housekeeping_cpus(&ctx.policy, &host);
            e.emulator = Some(if on_housekeeping && !housekeeping.is_empty() {
                housekeeping
            } else {
                e.cpus.clone()
            });
            e
        }
        Some(e) => e,
        None => {
            let plan = plan(&ctx.policy, &host, &occupancy, &ctx.domain)?;
            if !plan.enabled {
                return Ok(Ok(None));
            }
            match admit(ctx, &locked, &host, &occupancy, &plan)? {
                Admission::Claim { entry, .. } => entry,
                Admission::Unpinned => return Ok(Ok(None)),
                Admission::Refused(line) => {
                    return Ok(Err(Outcome::refuse(line)));
                }
            }
        }
    };
    // The XML's own emulator pin is kept unless kvmtune wrote it (pins mark: the
    // claim is where kvmtune places the guest now) or it breaks the invariant (a
    // confined guest whose copied <emulatorpin> sits on another guest's
    // dedicated CPU): then the claim's set replaces it.
    let override_emulator = match (&ctx.domain.emulator_pin, &entry.emulator) {
        (Some(own), Some(claimed)) if own != claimed => {
            let mut as_pinned = entry.clone();
            as_pinned.emulator = Some(own.clone());
            ctx.domain.emulator_pin_by_kvmtune() || !holds_up(&as_pinned)
        }
        _ => false,
    };
    let mut running = entry.clone();
    running.state = EntryState::Running;
    // Where the emulator threads will really be: libvirt's <emulatorpin> when it
    // is kept, so that later admissions see those CPUs as used.
    if let (Some(own), false) = (&ctx.domain.emulator_pin, override_emulator) {
        running.emulator = Some(own.clone());
    }
    locked
        .ledger
        .guests
        .insert(ctx.domain.name.clone(), running.clone());
    locked.save()?;
    Ok(Ok(Some(Settled {
        entry: running,
        override_emulator,
    })))
}

/// The claim `started` applies, and whether it replaces the XML's emulator pin.
struct Settled {
    entry: Entry,
    override_emulator: bool,
}

/// The guest's threads by role: vCPU number → tid, iothread id → tid, the rest.
struct Threads {
    vcpus: BTreeMap<u32, u32>,
    iothreads: BTreeMap<u32, u32>,
    others: Vec<u32>,
}

impl Threads {
    /// From the status file's lists, else from the thread names QEMU gives
    /// (`CPU N/KVM`, `CPU N/TCG`, `IO iothreadN`).
    fn of(
        ctx: &Stage<'_>,
        pid: u32,
        vcpu_tids: &BTreeMap<u32, u32>,
        iothread_tids: &BTreeMap<u32, u32>,
    ) -> Result<Threads> {
        let mut vcpus = vcpu_tids.clone();
        let mut iothreads = iothread_tids.clone();
        let mut others = Vec::new();
        for tid in affinity::threads_of(&ctx.env.proc_root, pid)? {
            if vcpus.values().any(|t| *t == tid) || iothreads.values().any(|t| *t == tid) {
                continue;
            }
            let comm = affinity::thread_name(&ctx.env.proc_root, pid, tid).unwrap_or_default();
            if let Some(n) = vcpu_number(&comm)
                && vcpu_tids.is_empty()
            {
                vcpus.insert(n, tid);
            } else if let Some(id) = comm
                .strip_prefix("IO iothread")
                .and_then(|n| n.parse().ok())
                && iothread_tids.is_empty()
            {
                iothreads.insert(id, tid);
            } else {
                others.push(tid);
            }
        }
        Ok(Threads {
            vcpus,
            iothreads,
            others,
        })
    }
}

/// `CPU 3/KVM` → 3.
fn vcpu_number(comm: &str) -> Option<u32> {
    let rest = comm.strip_prefix("CPU ")?;
    let (n, accel) = rest.split_once('/')?;
    (!accel.is_empty()).then_some(())?;
    n.parse().ok()
}

/// Sets a thread's affinity; a thread that exited meanwhile is not an error.
fn pin(tid: u32, cpus: &CpuSet) -> Result<()> {
    match affinity::set_thread_affinity(tid, cpus) {
        Ok(())
        | Err(affinity::AffinityError::SetAffinity {
            errno: nix::errno::Errno::ESRCH,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies `entry` to what the XML leaves unpinned, binds memory for the strict
/// modes, and returns what the kernel reports afterwards.
fn apply(
    ctx: &Stage<'_>,
    entry: &Entry,
    override_emulator: bool,
    pid: u32,
    threads: &Threads,
    notes: &mut Vec<String>,
) -> Result<Vec<String>> {
    let domain = &ctx.domain;
    if threads.vcpus.is_empty() {
        notes.push("no vCPU thread ids known (status file, thread names): nothing pinned".into());
        return Ok(Vec::new());
    }
    let mut kept = Vec::new();
    for (vcpu, tid) in &threads.vcpus {
        let Some(cpus) = entry.vcpus.get(*vcpu as usize) else {
            continue;
        };
        // libvirt applied the XML's own pin; the claim is that pin unless the guest
        // was confined, and then the claim wins (the cgroup first, or the kernel
        // refuses CPUs outside it).
        match domain.vcpu_pins.get(vcpu).or(domain.vcpu_cpuset.as_ref()) {
            Some(own) if own == cpus => kept.push(*vcpu),
            Some(_) => {
                if let Some(cg) = affinity::cpuset_cgroup(&ctx.env.host_root, pid) {
                    let dir = affinity::guest_cgroup_dir(&cg.dir).join(format!("vcpu{vcpu}"));
                    affinity::set_cgroup_cpus(&dir, cpus)?;
                }
                pin(*tid, cpus)?;
            }
            None => pin(*tid, cpus)?,
        }
    }
    if !kept.is_empty() {
        notes.push(format!(
            "vCPU(s) {} pinned by the XML (libvirt applied them)",
            kept.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(emulator) = &entry.emulator {
        for (id, tid) in &threads.iothreads {
            match domain.iothread_pins.get(id) {
                // The admin's pin, applied by libvirt.
                Some(_) if !domain.iothread_pin_by_kvmtune(*id) => continue,
                // kvmtune's earlier pin: the claim wins (the cgroup first).
                Some(own) if own != emulator => {
                    if let Some(cg) = affinity::cpuset_cgroup(&ctx.env.host_root, pid) {
                        let dir = affinity::guest_cgroup_dir(&cg.dir).join(format!("iothread{id}"));
                        affinity::set_cgroup_cpus(&dir, emulator)?;
                    }
                }
                _ => {}
            }
            pin(*tid, emulator)?;
        }
        if domain.emulator_pin.is_none() || override_emulator {
            if override_emulator && let Some(cg) = affinity::cpuset_cgroup(&ctx.env.host_root, pid)
            {
                let dir = affinity::guest_cgroup_dir(&cg.dir).join("emulator");
                affinity::set_cgroup_cpus(&dir, emulator)?;
                notes.push(if domain.emulator_pin_by_kvmtune() {
                    format!("emulator threads on {emulator}, where the claim puts them (the XML's <emulatorpin> is kvmtune's earlier placement)")
                } else {
                    format!("the XML's <emulatorpin> breaks the placement invariant: emulator threads on {emulator}")
                });
            }
            for tid in &threads.others {
                pin(*tid, emulator)?;
            }
        }
    }
    bind_memory(ctx, entry, pid, notes)?;
    // Read back what the kernel reports.
    let mut applied = Vec::new();
    for (vcpu, tid) in &threads.vcpus {
        if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, *tid) {
            applied.push(format!("vcpu{vcpu}={cpus}"));
        }
    }
    for (id, tid) in &threads.iothreads {
        if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, *tid) {
            applied.push(format!("iothread{id}={cpus}"));
        }
    }
    if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, pid) {
        applied.push(format!("emulator={cpus}"));
    }
    Ok(applied)
}

/// Memory: the strict modes through the cgroup's `cpuset.mems`. `preferred` and
/// `interleave` bind nothing; the memory QEMU already allocated off the claimed
/// nodes (preallocated RAM, touched before anything was pinned) is moved there
/// once by a detached `kvmtune move-memory`, so a large guest never holds up
/// libvirt; later allocations follow the pinned vCPUs by first touch and may
/// still fall back to other nodes.
fn bind_memory(ctx: &Stage<'_>, entry: &Entry, pid: u32, notes: &mut Vec<String>) -> Result<()> {
    let mode = ctx
        .policy
        .select(&kvmtune_core::plan::guest_facts(&ctx.domain))
        .settings
        .map(|s| s.memory_mode);
    // The admin's <numatune> stands; one kvmtune wrote with its pins (pins mark)
    // follows the claim, which may have moved off the definition's CPUs.
    // Guest cells bound by <memnode>s are the guest's own either way.
    let kvmtunes = ctx.domain.pins_by_kvmtune() && ctx.domain.numa_memnodes == 0;
    if ctx.domain.numa_memory.is_some() && !kvmtunes {
        return Ok(());
    }
    match mode {
        Some(MemoryMode::Strict | MemoryMode::Restrictive) => {}
        // Guest NUMA cells bound by the XML's <memnode>s: libvirt placed them.
        Some(MemoryMode::Preferred | MemoryMode::Interleave)
            if !entry.nodes.is_empty() && ctx.domain.numa_memnodes == 0 =>
        {
            notes.push(move_memory(ctx, entry, pid));
            return Ok(());
        }
        _ => return Ok(()),
    }
    match affinity::cpuset_cgroup(&ctx.env.host_root, pid) {
        Some(cg) => {
            let dir = affinity::guest_cgroup_dir(&cg.dir);
            affinity::set_cgroup_mems(&dir, &entry.nodes)?;
            notes.push(format!("cgroup mems={}", entry.nodes));
        }
        None => notes.push("no cpuset cgroup found; memory nodes not enforced".into()),
    }
    Ok(())
}

/// Starts the one-time move of the guest's memory onto its nodes, if any lies
/// elsewhere; never a reason to fail the start (the memory then stays where QEMU
/// put it). Returns the note for the syslog line.
fn move_memory(ctx: &Stage<'_>, entry: &Entry, pid: u32) -> String {
    let before = match page_move::tally(&ctx.env.proc_root, pid, &entry.nodes) {
        Ok(t) => t,
        Err(e) => return format!("memory not moved: {e}"),
    };
    if before.off == 0 {
        return numa_maps::MoveReport::starting(&before, &entry.nodes);
    }
    let started = std::env::current_exe()
        .map_err(|e| e.to_string())
        .and_then(|exe| {
            page_move::start_in_background(&exe, &ctx.domain.name, pid, &entry.nodes)
                .map_err(|e| e.to_string())
        });
    match started {
        Ok(child) => format!(
            "{} (kvmtune move-memory, pid {child})",
            numa_maps::MoveReport::starting(&before, &entry.nodes)
        ),
        Err(e) => format!("memory not moved: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::vcpu_number;

    #[test]
    fn vcpu_threads_are_known_by_qemus_names() {
        assert_eq!(vcpu_number("CPU 3/KVM"), Some(3));
        assert_eq!(vcpu_number("CPU 0/TCG"), Some(0));
        assert_eq!(vcpu_number("CPU x/KVM"), None);
        assert_eq!(vcpu_number("IO mon_iothread"), None);
        assert_eq!(vcpu_number("CPU 1/"), None);
    }
}
