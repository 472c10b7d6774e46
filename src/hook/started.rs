//! `started begin`: QEMU exists and the guest is paused; apply the claimed
//! placement to the threads the XML did not pin, read it back, log it.

use anyhow::{Result, anyhow};

use kvmtune_core::ledger::EntryState;
use kvmtune_core::plan::plan;
use kvmtune_core::policy::MemoryMode;
use kvmtune_sys::affinity;
use kvmtune_sys::libvirt_run as runstate;

use super::Outcome;
use super::stage::{Stage, entry_from_plan, locked_ledger, read_host, status_path};

pub(super) fn started(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, occupancy, mut notes) = locked_ledger(ctx)?;
    let entry = match locked.ledger.guests.get(&ctx.domain.name) {
        Some(e) => e.clone(),
        None => {
            // No claim from prepare (hook installed while the guest was starting,
            // or the policy just changed): plan now.
            let host = read_host(ctx, &locked)?;
            let plan = plan(&ctx.policy, &host, &occupancy, &ctx.domain)?;
            match entry_from_plan(ctx, &plan) {
                Some(e) if plan.enabled => e,
                _ => return Ok(Outcome::allow("nothing to apply (no placement)")),
            }
        }
    };
    let status_path = status_path(ctx)?;
    let live = runstate::read_status(&status_path)?;
    let pid = live
        .qemu_pid
        .ok_or_else(|| anyhow!("{}: no QEMU pid", status_path.display()))?;

    let mut applied = Vec::new();
    if ctx.env.apply_runtime {
        if !ctx.domain.pins_explicitly() {
            for (vcpu, tid) in &live.vcpu_tids {
                if let Some(cpus) = entry.vcpus.get(*vcpu as usize) {
                    affinity::set_thread_affinity(*tid, cpus)?;
                }
            }
        } else {
            notes.push("vCPUs pinned by the XML (libvirt applied them)".into());
        }
        if ctx.domain.emulator_pin.is_none()
            && let Some(emulator) = &entry.emulator
        {
            let vcpu_tids: Vec<u32> = live.vcpu_tids.values().copied().collect();
            for tid in affinity::threads_of(&ctx.env.proc_root, pid)? {
                if vcpu_tids.contains(&tid) {
                    continue;
                }
                // A thread may exit between listing and pinning: not an error.
                match affinity::set_thread_affinity(tid, emulator) {
                    Ok(()) => {}
                    Err(affinity::AffinityError::SetAffinity {
                        errno: nix::errno::Errno::ESRCH,
                        ..
                    }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Memory: strict modes through the cgroup's cpuset.mems; preferred follows
        // the pinned vCPUs by first touch.
        let settings_mode = ctx
            .policy
            .select(&kvmtune_core::plan::guest_facts(&ctx.domain))
            .settings
            .map(|s| s.memory_mode);
        if ctx.domain.numa_memory.is_none()
            && matches!(
                settings_mode,
                Some(MemoryMode::Strict | MemoryMode::Restrictive)
            )
        {
            match affinity::cpuset_cgroup(&ctx.env.host_root, pid) {
                Some(cg) => {
                    let dir = affinity::guest_cgroup_dir(&cg.dir);
                    affinity::set_cgroup_mems(&dir, &entry.nodes)?;
                    notes.push(format!("cgroup mems={}", entry.nodes));
                }
                None => notes.push("no cpuset cgroup found; memory nodes not enforced".into()),
            }
        }
        // Read back what the kernel reports.
        for (vcpu, tid) in &live.vcpu_tids {
            if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, *tid) {
                applied.push(format!("vcpu{vcpu}={cpus}"));
            }
        }
        if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, pid) {
            applied.push(format!("emulator={cpus}"));
        }
    }
    if let Some(e) = locked.ledger.guests.get_mut(&ctx.domain.name) {
        e.state = EntryState::Running;
    } else {
        let mut e = entry.clone();
        e.state = EntryState::Running;
        locked.ledger.guests.insert(ctx.domain.name.clone(), e);
    }
    locked.save()?;
    notes.insert(0, format!("effective {}", applied.join(" ")));
    Ok(Outcome::allow(notes.join("; ")))
}
