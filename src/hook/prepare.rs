//! `prepare begin`: plan the guest, claim its placement in the ledger, and warn
//! about or refuse what only a new definition can fix (`on_violation`).

use anyhow::Result;

use kvmtune_core::plan::plan_repacking;
use kvmtune_core::policy::OnViolation;
use kvmtune_sys::logging::sanitize;

use super::Outcome;
use super::stage::{Admission, Stage, admit, locked_ledger, pool_name, read_host};

pub(super) fn prepare(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, occupancy, mut notes) = locked_ledger(ctx)?;
    let host = read_host(ctx, &locked)?;
    let movable = super::moves::movable(ctx, &locked, &host);
    let plan = plan_repacking(&ctx.policy, &host, &occupancy, &movable, &ctx.domain)?;
    let name = sanitize(&ctx.domain.name);
    if !plan.enabled {
        locked.ledger.guests.remove(&ctx.domain.name);
        locked.save()?;
        return Ok(Outcome::allow(format!(
            "opted out by rule {}",
            plan.policy_rule
        )));
    }
    // XML-level rules: only a changed definition fixes them.
    let refuse_always: Vec<_> = plan.violations.iter().filter(|v| v.refuse_always).collect();
    if !plan.violations.is_empty() {
        let list = plan
            .violations
            .iter()
            .map(|v| format!("rule {}: {}", v.rule, v.what))
            .collect::<Vec<_>>()
            .join("; ");
        if !refuse_always.is_empty() || ctx.policy.on_violation == OnViolation::Refuse {
            let reason = format!(
                "kvmtune: guest '{name}' violates the tuning policy ({} via {}): {list}; fix: kvmtune apply {name}",
                if refuse_always.is_empty() {
                    "on_violation: refuse"
                } else {
                    "refused by policy"
                },
                plan.policy_rule
            );
            locked.ledger.guests.remove(&ctx.domain.name);
            locked.save()?;
            // Queued too: once converged, the next start is the first boot, conforming.
            let queued = queue_for_convergence(ctx, &plan)
                .map(|n| format!("; {n}"))
                .unwrap_or_default();
            return Ok(Outcome {
                exit: 1,
                stderr: reason,
                stdout: String::new(),
                summary: format!("violation refused: {list}{queued}"),
            });
        }
        notes.push(format!(
            "violation (on_violation: warn): {list}; fix: kvmtune apply {name}"
        ));
    }
    match admit(ctx, &locked, &host, &occupancy, &plan)? {
        Admission::Claim {
            entry,
            notes: adjusted,
            confined,
        } => {
            notes.insert(
                0,
                format!(
                    "claimed cpus={} nodes={} emulator={} pool={} rule={}",
                    entry.cpus,
                    entry.nodes,
                    entry
                        .emulator
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                    pool_name(entry.pool),
                    entry.rule
                ),
            );
            notes.extend(adjusted);
            let own = confined.is_none().then_some(&plan);
            notes.extend(super::moves::record(ctx, &mut locked, own, &entry)?);
            locked.ledger.guests.insert(ctx.domain.name.clone(), entry);
        }
        Admission::Unpinned => {
            locked.ledger.guests.remove(&ctx.domain.name);
        }
        Admission::Refused(line) => {
            locked.ledger.guests.remove(&ctx.domain.name);
            locked.save()?;
            return Ok(Outcome::refuse(line));
        }
    }
    locked.save()?;
    notes.extend(queue_for_convergence(ctx, &plan));
    Ok(Outcome::allow(notes.join("; ")))
}

/// `converge: after-start`: records the guest (started with a warning, or refused)
/// in the convergence queue, for
/// `kvmtune converge` to conform its definition after the start. A file write,
/// under the ledger lock; never a libvirt call. A failure is a note, not an error.
fn queue_for_convergence(ctx: &Stage<'_>, plan: &kvmtune_core::plan_model::Plan) -> Option<String> {
    use kvmtune_core::converge::{Decision, Entry, decide};
    match decide(&ctx.policy, &ctx.domain, plan) {
        Decision::Queue => {}
        Decision::Nova => return Some("converge: not queued (Nova metadata)".into()),
        Decision::Conforms | Decision::Off => return None,
    }
    let entry = Entry {
        uuid: ctx.domain.uuid.clone(),
        queued_at: kvmtune_sys::converge_queue::now_utc_secs(),
    };
    let queue = kvmtune_sys::converge_queue::Queue::under(&ctx.env.paths.run_dir);
    Some(match queue.enqueue(&ctx.domain.name, &entry) {
        Ok(()) => "converge: queued for kvmtune converge".into(),
        Err(e) => format!("converge: could not queue: {e}"),
    })
}
