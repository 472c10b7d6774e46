//! What the rewrite and the rules' XML edits share: the error type and small
//! helpers to find and compare elements. A child of `rewrite` so that the rule
//! modules can use it without depending on the dispatcher in `rewrite`.

use roxmltree::Node;

use super::order;
use super::splice::{Editor, Elem, anchor_in, child, children};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The text is not well-formed XML (roxmltree's one-line message).
    #[error("domain XML is not well-formed: {0}")]
    Xml(String),
    /// The root element is not libvirt's `<domain>` (no namespace).
    #[error("not a libvirt domain: the root element is <{0}>")]
    NotADomain(String),
    /// The element a change addresses does not exist (index out of range, no
    /// `<devices>`), or is not the one the plan named.
    #[error("domain XML has no element for {0}")]
    Missing(String),
    /// The change cannot be written as valid libvirt XML (an empty cpuset, zero
    /// queues), or the rewrite failed internally.
    #[error("cannot apply change: {0}")]
    Invalid(String),
}

pub(crate) fn same_text(want: &str) -> impl Fn(&str) -> bool + '_ {
    move |v| v.trim() == want
}

pub(crate) fn same_number(want: u64) -> impl Fn(&str) -> bool {
    move |v| v.trim().parse::<u64>() == Ok(want)
}

/// A libvirt scaled size in KiB (`size` + `unit`, unit defaulting to KiB), or
/// `None` when it is not a whole number of KiB or the unit is unknown.
pub(crate) fn size_in_kib(size: &str, unit: Option<&str>) -> Option<u64> {
    let size: u128 = size.trim().parse().ok()?;
    let unit = unit
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .unwrap_or("KiB");
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "b" | "byte" | "bytes" => 1,
        lower => {
            let prefix = lower.chars().next()?;
            let power = u32::try_from("kmgtpe".find(prefix)? + 1).ok()?;
            let base: u128 = match lower.get(1..)? {
                "" | "ib" => 1024,
                "b" => 1000,
                _ => return None,
            };
            base.pow(power)
        }
    };
    let bytes = size.checked_mul(multiplier)?;
    if bytes % 1024 != 0 {
        return None;
    }
    u64::try_from(bytes / 1024).ok()
}

/// Adds `elem` (named `name`) at its place in `<memoryBacking>`, creating that
/// when missing.
pub(crate) fn memory_backing_add(ed: &mut Editor<'_>, root: Node<'_, '_>, elem: Elem, name: &str) {
    match child(root, "memoryBacking") {
        None => {
            let backing = Elem::new("memoryBacking").children([elem]);
            ed.insert(
                anchor_in(root, order::DOMAIN, "memoryBacking", |_| false),
                &[backing],
            );
        }
        Some(backing) => ed.insert(
            anchor_in(backing, order::MEMORY_BACKING, name, |_| false),
            &[elem],
        ),
    }
}

/// The `index`-th `<devices>` child `kind`, or `Missing` naming it (and the
/// `target` the plan gave it).
pub(crate) fn device<'a, 'i>(
    root: Node<'a, 'i>,
    kind: &str,
    index: usize,
    target: &str,
) -> Result<Node<'a, 'i>, RewriteError> {
    let missing = || {
        if target.is_empty() {
            RewriteError::Missing(format!("{kind} #{index}"))
        } else {
            RewriteError::Missing(format!("{kind} #{index} ({target})"))
        }
    };
    let devices = child(root, "devices").ok_or_else(missing)?;
    children(devices, kind).nth(index).ok_or_else(missing)
}
