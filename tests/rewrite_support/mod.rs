//! Helpers shared by the rewrite tests: which lines a rewrite changed, and
//! which element names a change is allowed to touch.

#![allow(dead_code)]

use std::collections::BTreeSet;

use kvmtune_core::plan::Change;
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

/// Elements a plan may edit (their whole subtree is excluded from the outline).
pub const EDITED: &[&str] = &[
    "vcpu",
    "cputune",
    "numatune",
    "memoryBacking",
    "driver",
    "cpu",
];

/// Everything outside edited elements in document order (whitespace-only text
/// left out: new elements bring their own indentation).
pub fn untouched_outline(xml: &str) -> Vec<String> {
    let d = roxmltree::Document::parse(xml).unwrap();
    let mut out = Vec::new();
    let mut skip_until = 0usize;
    for node in d.root().descendants() {
        if node.range().start < skip_until {
            continue;
        }
        if node.is_element()
            && node.tag_name().namespace().is_none_or(str::is_empty)
            && EDITED.contains(&node.tag_name().name())
            && node.parent_element().is_some_and(|p| {
                p == d.root_element()
                    || p.tag_name().name() == "disk"
                    || p.tag_name().name() == "interface"
            })
        {
            skip_until = node.range().end;
            continue;
        }
        if node.is_element() {
            let attrs: Vec<String> = node
                .attributes()
                .map(|a| format!("{}={}", a.name(), &xml[a.range_value()]))
                .collect();
            out.push(format!("<{}> {}", node.tag_name().name(), attrs.join(" ")));
        } else if node.is_text() {
            let t = node.text().unwrap_or("");
            if !t.trim().is_empty() {
                out.push(format!("text {t:?}"));
            }
        } else if node.is_comment() {
            out.push(format!("comment {:?}", node.text()));
        } else if node.is_pi() {
            out.push(format!("pi {:?}", node.pi()));
        }
    }
    out
}

/// Every fixture host in tests/data/hosts, read, by directory name.
pub fn fixture_hosts() -> Vec<(String, kvmtune_core::host::Host)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hosts");
    let mut out: Vec<(String, kvmtune_core::host::Host)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            (name, kvmtune_sys::sysfs::read_host(&e.path()).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
