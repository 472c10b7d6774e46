//! Rule 5, CPU mode: no guest runs with `<cpu mode='host-passthrough'>`, which
//! kernel-panicked several production hosts within three days. The policy
//! rewrites it to `host-model`, refuses the guest, or keeps it. Owns the key,
//! the decision, its reason texts and the `<cpu>` edit.

use roxmltree::Node;

use crate::domain::{CpuMode, Domain};
use crate::plan_model::{Change, Planner, Violation};
use crate::policy::{CpuModeAction, Settings};
use crate::rewrite::shared::RewriteError;
use crate::rewrite::shared::same_text;
use crate::rewrite::splice::{self, Editor, attribute, child};

pub const ID: &str = "5";
pub const KEY: &str = "defaults.cpu_mode";

const REWRITE_REASON: &str =
    "CPU mode host-passthrough → host-model (host-passthrough caused host kernel panics)";
const REFUSE_REASON: &str =
    "CPU mode host-passthrough is refused by policy (it caused host kernel panics)";

/// What the rule does to the domain: nothing, or the reason of what it does.
fn decide(domain: &Domain, settings: &Settings) -> Option<(CpuModeAction, &'static str)> {
    if domain.cpu_mode != CpuMode::HostPassthrough {
        return None;
    }
    match settings.cpu_mode {
        CpuModeAction::HostModel => Some((CpuModeAction::HostModel, REWRITE_REASON)),
        CpuModeAction::Refuse => Some((CpuModeAction::Refuse, REFUSE_REASON)),
        CpuModeAction::Keep => None,
    }
}

/// The plan step: `CpuHostModel`, or under `cpu_mode: refuse` a violation that
/// refuses the guest whatever `on_violation` says.
pub(crate) fn plan(p: &mut Planner<'_>) {
    match decide(p.domain, p.settings) {
        Some((CpuModeAction::Refuse, text)) => p.plan.violations.push(Violation {
            rule: ID,
            what: text.into(),
            refuse_always: true,
        }),
        Some((_, text)) => p.edit(ID, Change::CpuHostModel, text.into()),
        None => {}
    }
}

pub fn conforms(domain: &Domain, settings: &Settings) -> Result<(), String> {
    match decide(domain, settings) {
        Some((_, text)) => Err(text.into()),
        None => Ok(()),
    }
}

/// The XML edit: only `mode='host-passthrough'` is rewritten; `check` and
/// `migratable` are removed, and so are the children libvirt refuses or
/// reinterprets under host-model: `<model>` (a named model turns host-model
/// into custom on migration), `<vendor>` (refused without a model), and
/// `<cache mode='passthrough'>` / `<maxphysaddr mode='passthrough'>` (only valid
/// for host-passthrough). `<topology>`, `<feature>`, `<numa>` and other
/// `<cache>`/`<maxphysaddr>` are kept.
pub(crate) fn rewrite(ed: &mut Editor<'_>, root: Node<'_, '_>) -> Result<(), RewriteError> {
    let Some(cpu) = child(root, "cpu") else {
        return Ok(());
    };
    if attribute(cpu, "mode").is_none_or(|m| m.value().trim() != "host-passthrough") {
        return Ok(());
    }
    ed.set_attr(cpu, "mode", "host-model", same_text("host-model"))?;
    ed.remove_attr(cpu, "check");
    ed.remove_attr(cpu, "migratable");

    let passthrough_only =
        |n: Node<'_, '_>| attribute(n, "mode").is_some_and(|m| m.value().trim() == "passthrough");
    let drop: Vec<Node<'_, '_>> = cpu
        .children()
        .filter(|n| {
            splice::is_libvirt(*n, "model")
                || splice::is_libvirt(*n, "vendor")
                || ((splice::is_libvirt(*n, "cache") || splice::is_libvirt(*n, "maxphysaddr"))
                    && passthrough_only(*n))
        })
        .collect();
    if drop.is_empty() {
        return Ok(());
    }
    let only_blank_left = cpu.children().all(|n| {
        drop.contains(&n) || (n.is_text() && n.text().is_some_and(|t| t.trim().is_empty()))
    });
    if only_blank_left && !ed.is_self_closing(cpu) {
        // `<cpu mode='host-model'>…</cpu>` → `<cpu mode='host-model'/>`.
        let tag_end = ed.start_tag_end(cpu);
        ed.replace(tag_end - 1..cpu.range().end, "/>");
    } else {
        for node in drop {
            ed.remove_element(node);
        }
    }
    Ok(())
}
