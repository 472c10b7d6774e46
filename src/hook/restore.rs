//! `restore begin` / `migrate begin`: print the XML with guest-ABI-safe edits
//! (the only stages whose output libvirt reads).

use anyhow::Result;

use kvmtune_core::plan::plan;
use kvmtune_core::policy::ExistingPins;
use kvmtune_core::rewrite;

use super::Outcome;
use super::stage::{Stage, locked_ledger, read_host};

pub(super) fn restore_or_migrate(ctx: &Stage<'_>, migrate: bool) -> Result<Outcome> {
    let (locked, occupancy, _) = locked_ledger(ctx)?;
    let host = read_host(ctx, &locked)?;
    let mut domain = ctx.domain.clone();
    let mut policy = ctx.policy.clone();
    if migrate {
        // Pins copied from the source host say nothing about this host: place the
        // guest afresh against this host's occupancy (copied pins collide).
        policy.defaults.existing_pins = ExistingPins::Override;
        for rule in &mut policy.rules {
            rule.settings.existing_pins = ExistingPins::Override;
        }
        domain.vcpu_pins.clear();
        domain.vcpu_cpuset = None;
    }
    let plan = plan(&policy, &host, &occupancy, &domain)?;
    let changes = plan.abi_safe_changes();
    if changes.is_empty() {
        return Ok(Outcome::allow("XML unchanged"));
    }
    let rewritten = rewrite::apply(ctx.xml, &changes)?;
    Ok(Outcome {
        stdout: rewritten,
        summary: format!("rewrote XML: {} guest-ABI-safe change(s)", changes.len()),
        ..Outcome::default()
    })
}
