//! `restore begin` / `migrate begin`: place the guest against the current
//! occupancy, record the claim (state `prepared`, under the lock, so that two
//! restores or incoming migrations never get the same CPUs), and print the XML with
//! guest-ABI-safe edits (the only stages whose output libvirt reads).

use anyhow::Result;

use kvmtune_core::plan::plan;
use kvmtune_core::policy::ExistingPins;
use kvmtune_core::rewrite;

use super::Outcome;
use super::stage::{Admission, Stage, admit, locked_ledger, read_host};

pub(super) fn restore_or_migrate(ctx: &Stage<'_>, migrate: bool) -> Result<Outcome> {
    let (mut locked, occupancy, mut notes) = locked_ledger(ctx)?;
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
    let stage = Stage {
        env: ctx.env,
        policy,
        xml: ctx.xml,
        domain,
    };
    let planned = plan(&stage.policy, &host, &occupancy, &stage.domain)?;
    let planned = match admit(&stage, &locked, &host, &occupancy, &planned)? {
        Admission::Claim {
            entry,
            notes: adjusted,
            confined,
        } => {
            notes.push(format!("claimed cpus={} (prepared)", entry.cpus));
            notes.extend(adjusted);
            locked.ledger.guests.insert(ctx.domain.name.clone(), entry);
            locked.save()?;
            confined.map_or(planned, |p| *p)
        }
        Admission::Unpinned => {
            if locked.ledger.guests.remove(&ctx.domain.name).is_some() {
                locked.save()?;
            }
            planned
        }
        Admission::Refused(line) => {
            if locked.ledger.guests.remove(&ctx.domain.name).is_some() {
                locked.save()?;
            }
            return Ok(Outcome::refuse(line));
        }
    };
    drop(locked);
    let changes = planned.abi_safe_changes();
    if changes.is_empty() {
        notes.insert(0, "XML unchanged".into());
        return Ok(Outcome::allow(notes.join("; ")));
    }
    let rewritten = rewrite::apply(ctx.xml, &changes)?;
    notes.insert(
        0,
        format!("rewrote XML: {} guest-ABI-safe change(s)", changes.len()),
    );
    Ok(Outcome {
        stdout: rewritten,
        summary: notes.join("; "),
        ..Outcome::default()
    })
}
