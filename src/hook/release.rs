//! `release end`: free the guest's claim.

use anyhow::Result;

use kvmtune_sys::ledger_store::{LOCK_TIMEOUT, Locked};

use super::Outcome;
use super::stage::Stage;

pub(super) fn release(ctx: &Stage<'_>) -> Result<Outcome> {
    let mut locked = Locked::acquire(&ctx.env.paths.run_dir, LOCK_TIMEOUT)?;
    let had = locked.ledger.guests.remove(&ctx.domain.name);
    if had.is_some() {
        locked.save()?;
    }
    Ok(Outcome::allow(match had {
        Some(e) => format!("freed cpus={}", e.cpus),
        None => "no claim to free".to_string(),
    }))
}
