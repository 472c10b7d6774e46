//! The issue-2 matrix: every domain (the repo's own tests/data/domains, plus the 58
//! real ones in ../shared/fixtures/domains when that directory exists, as in CI) ×
//! every fixture host × the shipped policy. Asserts: the plan never fails on a valid
//! domain, rewriting is idempotent (`plan(plan(x)) == plan(x)`), only lines of edited
//! elements change, and — when `xmllint` and libvirt's schemas are installed — the
//! output validates whenever the input did.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod rewrite_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use kvmtune::inputs::plan_and_rewrite;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::policy::Policy;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn domains() -> Vec<PathBuf> {
    let mut dirs = vec![
        manifest().join("tests/data/domains"),
        manifest().join("config/examples"),
    ];
    let shared = manifest().join("../shared/fixtures/domains");
    if shared.is_dir() {
        dirs.push(shared);
    } else {
        eprintln!(
            "note: ../shared/fixtures/domains not found; running the repo's own domains only"
        );
    }
    let mut files = Vec::new();
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "xml") {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    files
}

/// Opening tags of the elements a plan may edit: a changed line must be one of them.
const EDITABLE: &[&str] = &[
    "<vcpu",
    "<vcpupin",
    "<emulatorpin",
    "<iothreadpin",
    "<cputune",
    "</cputune",
    "<numatune",
    "</numatune",
    "<memory mode",
    "<memory placement",
    "<memory nodeset",
    "<memnode",
    "<numa",
    "</numa",
    "<cell",
    "<memoryBacking",
    "</memoryBacking",
    "<nosharepages",
    "<hugepages",
    "</hugepages",
    "<page",
    "<driver",
    "</driver",
    "<cpu",
    "</cpu",
    "<model",
    "<feature",
    "<vendor",
    "<cache",
    "<maxphysaddr",
];

fn line_is_editable(line: &str) -> bool {
    let t = line.trim_start();
    EDITABLE.iter().any(|tag| t.starts_with(tag))
}

#[test]
fn every_domain_on_every_host_plans_idempotently_and_touches_only_edited_elements() {
    let policy = Policy::shipped();
    let hosts = rewrite_support::fixture_hosts();
    let domains = domains();
    assert!(domains.len() >= 13, "too few domains: {}", domains.len());
    let mut planned = 0;
    let mut outputs = Vec::new();
    for path in &domains {
        let xml = std::fs::read_to_string(path).unwrap();
        for (host_name, host) in &hosts {
            let what = format!("{} on {host_name}", path.display());
            let (_, once) = plan_and_rewrite(&policy, host, &Occupancy::default(), &xml)
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let (_, twice) = plan_and_rewrite(&policy, host, &Occupancy::default(), &once)
                .unwrap_or_else(|e| panic!("{what} (second pass): {e:#}"));
            assert_eq!(once, twice, "{what}: not idempotent");
            assert_eq!(
                rewrite_support::untouched_outline(&xml),
                rewrite_support::untouched_outline(&once),
                "{what}: content outside the edited elements changed"
            );
            // Line-level check for normal (multi-line) documents: every removed line
            // is a line of an edited element.
            let multi_line = xml.lines().count() > 5;
            let diff = similar::TextDiff::from_lines(&xml, &once);
            for change in diff.iter_all_changes().filter(|_| multi_line) {
                if change.tag() == similar::ChangeTag::Delete {
                    let line = change.value();
                    assert!(
                        line_is_editable(line),
                        "{what}: changed a line outside the edited elements: {line:?}"
                    );
                }
            }
            planned += 1;
            outputs.push((path.clone(), once));
        }
    }
    // Big guests on small hosts span nodes and get guest NUMA cells (rule 1.2);
    // the schema check below covers those outputs too.
    let given_cells = outputs
        .iter()
        .filter(|(path, out)| {
            out.contains("<memnode") && !std::fs::read_to_string(path).unwrap().contains("<memnode")
        })
        .count();
    eprintln!("planned {planned} domain×host pairs; {given_cells} got guest NUMA cells");
    assert!(given_cells > 0, "no spanning guest got guest NUMA cells");
    validate(&outputs);
}

/// Validates outputs with libvirt's RelaxNG schema (what virt-xml-validate runs),
/// one xmllint process for all files; skipped with a note when not installed.
fn validate(outputs: &[(PathBuf, String)]) {
    let schema = Path::new("/usr/share/libvirt/schemas/domain.rng");
    let xmllint_ok = Command::new("xmllint").arg("--version").output().is_ok();
    if !schema.exists() || !xmllint_ok {
        rewrite_support::schema_tools_missing("matrix");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut input_valid = std::collections::BTreeMap::new();
    for (path, _) in outputs {
        input_valid
            .entry(path.clone())
            .or_insert_with(|| validates(schema, std::slice::from_ref(path)).is_empty());
    }
    let mut files = Vec::new();
    for (i, (path, out)) in outputs.iter().enumerate() {
        if !input_valid[path] {
            continue;
        }
        let file = dir.path().join(format!("{i}.xml"));
        std::fs::write(&file, out).unwrap();
        files.push((file, path.clone()));
        checked += 1;
    }
    assert!(
        checked > 0,
        "no input validated against libvirt's schema: nothing was checked"
    );
    let failures = validates(
        schema,
        &files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
    );
    let named: Vec<String> = failures
        .iter()
        .map(|f| {
            let src = files
                .iter()
                .find(|(p, _)| p == f)
                .map(|(_, s)| s.display().to_string());
            format!("{} (from {})", f.display(), src.unwrap_or_default())
        })
        .collect();
    assert!(
        named.is_empty(),
        "outputs that no longer validate: {named:#?}"
    );
    eprintln!(
        "validated {checked} outputs against libvirt's schema ({} inputs were invalid to begin with)",
        input_valid.values().filter(|v| !**v).count()
    );
}

/// Returns the files that fail validation (xmllint's exit status checked).
fn validates(schema: &Path, files: &[PathBuf]) -> Vec<PathBuf> {
    rewrite_support::xmllint_invalid(schema, files)
}
