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
        Change::PinsMark { .. } => &["metadata", PINS_MARK],
        Change::NumaMemory { .. } => &["numatune", "memory"],
        Change::DiskDriver { .. } => &["disk", "driver"],
        Change::NoSharePages => &["memoryBacking", "nosharepages"],
        Change::HugePages { .. } => &["memoryBacking", "hugepages", "page"],
        Change::InterfaceDriver { .. } => &["interface", "driver"],
        Change::CpuHostModel => &["cpu", "model", "vendor", "cache", "maxphysaddr"],
        Change::GuestNuma { .. } => &["cpu", "numa", "cell", "numatune", "memnode"],
    }
}

/// The pins mark kvmtune writes with its pins (`kvmtune_core::pins_mark`).
pub const PINS_MARK: &str = kvmtune_core::pins_mark::QUALIFIED;

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
/// left out: new elements bring their own indentation). The pins mark is an
/// edited element, and `<metadata>` (which the mark may create) is listed by
/// its other children only.
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
        if node.is_element()
            && node.tag_name().namespace() == Some(kvmtune_core::pins_mark::NAMESPACE)
        {
            skip_until = node.range().end;
            continue;
        }
        if node.is_element()
            && node.tag_name().name() == "metadata"
            && node.parent_element() == Some(d.root_element())
        {
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

/// The schema tools (xmllint, libvirt's domain.rng, virt-xml-validate) are
/// missing: fail, unless `KVMTUNE_ALLOW_NO_SCHEMA=1` is set outside CI (CI must
/// validate, so the opt-out is refused when `CI` is set).
pub fn schema_tools_missing(what: &str) {
    let opt_out = std::env::var("KVMTUNE_ALLOW_NO_SCHEMA").is_ok_and(|v| v == "1");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if opt_out && !ci {
        eprintln!("note: {what}: schema validation skipped (KVMTUNE_ALLOW_NO_SCHEMA=1)");
        return;
    }
    panic!(
        "{what}: xmllint, virt-xml-validate or libvirt's schemas (/usr/share/libvirt/schemas) \
         are missing: apt-get install libxml2-utils libvirt-clients, or set \
         KVMTUNE_ALLOW_NO_SCHEMA=1 (not honoured under CI) to skip schema validation"
    );
}

/// Validates `files` with `xmllint --noout --relaxng SCHEMA` (one process) and
/// returns those that fail. Panics unless xmllint ran properly: exit status 0
/// (all valid) or 3 (some invalid), and every file reported as `validates` or
/// `fails to validate`.
pub fn xmllint_invalid(
    schema: &std::path::Path,
    files: &[std::path::PathBuf],
) -> Vec<std::path::PathBuf> {
    if files.is_empty() {
        return Vec::new();
    }
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(schema)
        .args(files)
        .output()
        .expect("cannot run xmllint");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "xmllint exited with {code:?} (0 = valid, 3 = invalid; anything else: it could not check): {}",
        stderr.chars().take(2000).collect::<String>()
    );
    let mut bad = Vec::new();
    for f in files {
        let failed = stderr.contains(&format!("{} fails to validate", f.display()));
        let passed = stderr.contains(&format!("{} validates", f.display()));
        assert!(
            failed || passed,
            "xmllint did not report {} as validating or failing: {}",
            f.display(),
            stderr.chars().take(2000).collect::<String>()
        );
        if failed {
            bad.push(f.clone());
        }
    }
    assert_eq!(
        code == Some(3),
        !bad.is_empty(),
        "xmllint's exit status {code:?} disagrees with its report"
    );
    bad
}
