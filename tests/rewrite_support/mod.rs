//! Helpers shared by the rewrite tests: which lines a rewrite changed, and
//! which element names a change is allowed to touch.

#![allow(dead_code)]

use std::collections::BTreeSet;

use kvmtune::plan::Change;
use similar::{ChangeTag, TextDiff};

/// Element names that lines touched by `change` may contain (the elements it
/// edits, creates or removes, and their parents when those are created or
/// expanded from a self-closed tag).
pub fn allowed_tags(change: &Change) -> &'static [&'static str] {
    match change {
        Change::VcpuPins { .. } => &["vcpu", "cputune", "vcpupin"],
        Change::EmulatorPin { .. } => &["cputune", "emulatorpin"],
        Change::IothreadPins { .. } => &["cputune", "iothreadpin"],
        Change::NumaMemory { .. } => &["numatune", "memory"],
        Change::DiskDriver { .. } => &["disk", "driver"],
        Change::NoSharePages => &["memoryBacking", "nosharepages"],
        Change::HugePages { .. } => &["memoryBacking", "hugepages", "page"],
        Change::InterfaceDriver { .. } => &["interface", "driver"],
        Change::CpuHostModel => &["cpu", "model", "vendor", "cache", "maxphysaddr"],
        Change::GuestNuma { .. } => &["cpu", "numa", "cell", "numatune", "memnode"],
    }
}

/// The element names opened or closed on a line (`<x`, `</x`).
fn tags(line: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in line.match_indices('<') {
        let rest = &line[i + 1..];
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Panics unless every line `after` removed or added holds only elements
/// named in `allowed` (so every other line is byte-identical).
pub fn assert_only_touches(before: &str, after: &str, allowed: &[&str], what: &str) {
    let diff = TextDiff::from_lines(before, after);
    for change in diff.iter_all_changes() {
        if change.tag() == ChangeTag::Equal {
            continue;
        }
        let line = change.value();
        let found = tags(line);
        assert!(
            !found.is_empty() && found.iter().all(|t| allowed.contains(&t.as_str())),
            "{what}: line {line:?} changed, but only {allowed:?} may"
        );
    }
}
