//! Rule 3.2, huge pages: the guest's memory is backed by huge pages of the
//! policy's size (fewer TLB misses) when the NUMA node(s) it is placed on have
//! enough free ones for all of it; otherwise the plan notes why not. Owns the
//! keys, the decision, its reason texts and the `<memoryBacking><hugepages>`
//! edit. Reserving pages on the host is the admin's (`host.tuning`).

use roxmltree::Node;

use crate::CpuSet;
use crate::domain::Domain;
use crate::plan_model::{Change, Planner};
use crate::policy::{HugePagesMode, Settings};
use crate::rewrite::shared::{RewriteError, memory_backing_add, same_text, size_in_kib};
use crate::rewrite::splice::{Editor, Elem, anchor_in, attribute, child, children};

pub const ID: &str = "3.2";
pub const KEY_MODE: &str = "defaults.hugepages";
pub const KEY_SIZE: &str = "defaults.hugepage_size";

/// A huge page size as people write it.
pub fn size_name(kib: u64) -> String {
    match kib {
        1048576 => "1 GiB".into(),
        2048 => "2 MiB".into(),
        other => format!("{other} KiB"),
    }
}

/// The plan step: `HugePages` when the policy wants them, the XML has none and
/// the guest's node(s) (all nodes when it is not placed) have enough free pages.
pub(crate) fn plan(p: &mut Planner<'_>) {
    if p.settings.hugepages != HugePagesMode::Auto || p.domain.memory_backing.hugepages {
        return;
    }
    let size = p.settings.hugepage_size_kib;
    let nodes: CpuSet = p
        .plan
        .placement
        .as_ref()
        .map(|placement| placement.nodes.clone())
        .unwrap_or_else(|| p.host.nodes.keys().copied().collect());
    let needed = p.domain.memory_kib.div_ceil(size.max(1));
    let free: u64 = nodes
        .iter()
        .filter_map(|n| p.host.nodes.get(&n))
        .filter_map(|n| n.hugepages.get(&size))
        .map(|h| h.free)
        .sum();
    let size_text = size_name(size);
    if needed > 0 && free >= needed {
        p.edit(
            ID,
            Change::HugePages { size_kib: size },
            format!("back memory with {size_text} huge pages: node(s) {nodes} have {free} free, the guest needs {needed}"),
        );
    } else {
        p.note(
            ID,
            format!("huge pages skipped: node(s) {nodes} have {free} free {size_text} pages, the guest needs {needed}"),
        );
    }
}

/// Whether the XML is backed by huge pages when the policy asks for them. The
/// domain alone cannot say whether the host has free pages for it: a guest the
/// plan leaves without huge pages (with a note) does not conform here.
pub fn conforms(domain: &Domain, settings: &Settings) -> Result<(), String> {
    if settings.hugepages == HugePagesMode::Auto && !domain.memory_backing.hugepages {
        Err(format!(
            "memory not backed by {} huge pages",
            size_name(settings.hugepage_size_kib)
        ))
    } else {
        Ok(())
    }
}

/// The XML edit: sets the `<page>` without `nodeset` (per-node pages are kept),
/// or adds one; `<hugepages/>` (host default size) gets an explicit page. A page
/// that already has this size in another unit is left as it is.
pub(crate) fn rewrite(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    size_kib: u64,
) -> Result<(), RewriteError> {
    if size_kib == 0 {
        return Err(RewriteError::Invalid("huge page size 0".to_owned()));
    }
    let size = size_kib.to_string();
    let page = || {
        Elem::new("page")
            .attr("size", size.clone())
            .attr("unit", "KiB")
    };
    let hugepages = child(root, "memoryBacking").and_then(|b| child(b, "hugepages"));
    let Some(hugepages) = hugepages else {
        let elem = Elem::new("hugepages").children([page()]);
        memory_backing_add(ed, root, elem, "hugepages");
        return Ok(());
    };
    let default_page = children(hugepages, "page").find(|p| attribute(*p, "nodeset").is_none());
    match default_page {
        None => ed.insert(
            anchor_in(hugepages, &["page"], "page", |_| false),
            &[page()],
        ),
        Some(existing) => {
            let current = attribute(existing, "size").and_then(|s| {
                size_in_kib(s.value(), attribute(existing, "unit").map(|u| u.value()))
            });
            if current != Some(size_kib) {
                ed.set_attr(existing, "size", &size, |_| false)?;
                if attribute(existing, "unit").is_some() {
                    ed.set_attr(existing, "unit", "KiB", same_text("KiB"))?;
                }
            }
        }
    }
    Ok(())
}
