//! `prepare begin`: plan the guest, claim its placement in the ledger, and warn
//! about or refuse what only a new definition can fix (`on_violation`).

use anyhow::Result;

use kvmtune_core::plan::plan;
use kvmtune_core::policy::OnViolation;
use kvmtune_sys::logging::sanitize;

use super::Outcome;
use super::stage::{Stage, entry_from_plan, locked_ledger, read_host};

pub(super) fn prepare(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, occupancy, mut notes) = locked_ledger(ctx)?;
    let host = read_host(ctx, &locked)?;
    let plan = plan(&ctx.policy, &host, &occupancy, &ctx.domain)?;
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
            return Ok(Outcome {
                exit: 1,
                stderr: reason,
                stdout: String::new(),
                summary: format!("violation refused: {list}"),
            });
        }
        notes.push(format!(
            "violation (on_violation: warn): {list}; fix: kvmtune apply {name}"
        ));
    }
    if let Some(why) = &plan.no_room {
        if ctx.policy.on_violation == OnViolation::Refuse {
            return Ok(Outcome {
                exit: 1,
                stderr: format!("kvmtune: guest '{name}' cannot be placed: {why}"),
                stdout: String::new(),
                summary: format!("no room: {why}"),
            });
        }
        match &plan.placement {
            Some(_) => notes.push(format!("no room: {why}; fell back to the shared pool")),
            None => notes.push(format!("no placement: {why}; guest runs unpinned")),
        }
    }
    match entry_from_plan(ctx, &plan) {
        Some(entry) => {
            notes.insert(
                0,
                format!(
                    "claimed cpus={} nodes={} emulator={} rule={}",
                    entry.cpus,
                    entry.nodes,
                    entry
                        .emulator
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                    plan.policy_rule
                ),
            );
            locked.ledger.guests.insert(ctx.domain.name.clone(), entry);
        }
        None => {
            locked.ledger.guests.remove(&ctx.domain.name);
        }
    }
    locked.save()?;
    Ok(Outcome::allow(notes.join("; ")))
}
