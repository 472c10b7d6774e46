//! Rule 3.1, no KSM: the guest's memory is kept out of kernel samepage merging
//! (`<memoryBacking><nosharepages/>`), since pages merged across NUMA nodes raise
//! guests' memory latency. Owns the key, the decision, its reason text and the
//! `<nosharepages/>` edit. (The host-wide KSM switch is `host.tuning.ksm`,
//! kvmtune-sys's host tuning.)

use roxmltree::Node;

use crate::domain::Domain;
use crate::plan_model::{Change, Planner};
use crate::policy::Settings;
use crate::rewrite::shared::memory_backing_add;
use crate::rewrite::splice::{Editor, Elem, child};

pub const ID: &str = "3.1";
pub const KEY: &str = "defaults.nosharepages";

const REASON: &str = "no KSM page merging for this guest (<nosharepages/>)";

fn wanted(domain: &Domain, settings: &Settings) -> bool {
    settings.nosharepages && !domain.memory_backing.nosharepages
}

/// The plan step: `NoSharePages` when the policy wants it and the XML lacks it.
pub(crate) fn plan(p: &mut Planner<'_>) {
    if wanted(p.domain, p.settings) {
        p.edit(ID, Change::NoSharePages, REASON.into());
    }
}

pub fn conforms(domain: &Domain, settings: &Settings) -> Result<(), String> {
    if wanted(domain, settings) {
        Err(REASON.into())
    } else {
        Ok(())
    }
}

/// The XML edit: adds `<nosharepages/>` to `<memoryBacking>` (created when
/// missing) unless it is there.
pub(crate) fn rewrite(ed: &mut Editor<'_>, root: Node<'_, '_>) {
    let present = child(root, "memoryBacking").is_some_and(|b| child(b, "nosharepages").is_some());
    if !present {
        memory_backing_add(ed, root, Elem::new("nosharepages"), "nosharepages");
    }
}
