//! `reconnect begin`: libvirtd restarted while the guest runs; keep its claim, or
//! record it from what runs when the ledger lacks it (the recovery in
//! [`super::stage::locked_ledger_recovering`] does that for every running guest).

use anyhow::Result;

use kvmtune_core::ledger::EntryState;

use super::Outcome;
use super::stage::{Stage, locked_ledger_recovering};

pub(super) fn reconnect(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, _, notes) = locked_ledger_recovering(ctx, true)?;
    let Some(e) = locked.ledger.guests.get_mut(&ctx.domain.name) else {
        return Ok(Outcome::allow(
            "no claim and no readable status file: nothing to record",
        ));
    };
    e.state = EntryState::Running;
    let summary = format!(
        "claim kept cpus={} pool={:?} rule={}{}",
        e.cpus,
        e.pool,
        e.rule,
        if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join("; "))
        }
    );
    locked.save()?;
    Ok(Outcome::allow(summary))
}
