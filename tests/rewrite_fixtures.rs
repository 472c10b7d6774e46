//! Runs the rewrite over the team's shared corpus of real domain XML
//! (`../shared/fixtures/domains`, next to the repository; skipped with a note
//! when absent): a representative plan per domain must leave a document that
//! parses, is a fixed point of the same plan, changes only the lines of the
//! elements each change names, and — when `virt-xml-validate` is on PATH —
//! validates whenever the input did.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod rewrite_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use kvmtune_core::CpuSet;
use kvmtune_core::plan::{Change, GuestCell, IothreadPin, VcpuPin};
use kvmtune_core::policy::{DiskCache, DiskIo, MemoryMode};
use kvmtune_core::rewrite::apply;
use rewrite_support::{allowed_tags, assert_only_touches};

fn fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/domains");
    dir.is_dir().then_some(dir)
}

fn cpus(list: &str) -> CpuSet {
    CpuSet::parse(list).unwrap()
}

fn libvirt<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(|n| {
            n.is_element()
                && n.tag_name().namespace().is_none_or(str::is_empty)
                && n.tag_name().name() == name
        })
        .collect()
}

/// What a planner would ask of this domain: pin every vCPU and iothread, bind
/// memory, set every disk's cache/io and every tap-like NIC's vhost queues,
/// hugepages, nosharepages, host-model.
fn plan_for(xml: &str) -> Vec<Change> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let root = doc.root_element();
    let vcpus: u32 = libvirt(root, "vcpu")
        .first()
        .and_then(|v| v.text())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1)
        .min(256);
    let mut iothreads: Vec<u32> = libvirt(root, "iothreadids")
        .iter()
        .flat_map(|ids| libvirt(*ids, "iothread"))
        .filter_map(|t| t.attribute("id")?.parse().ok())
        .collect();
    if iothreads.is_empty() {
        let count: u32 = libvirt(root, "iothreads")
            .first()
            .and_then(|n| n.text()?.trim().parse().ok())
            .unwrap_or(0);
        iothreads = (1..=count).collect();
    }
    let mut plan = vec![
        Change::VcpuPins {
            cpuset: cpus(&format!("2-{}", vcpus + 1)),
            pins: (0..vcpus)
                .map(|v| VcpuPin {
                    vcpu: v,
                    cpuset: CpuSet::single(v + 2),
                })
                .collect(),
        },
        Change::EmulatorPin {
            cpuset: cpus("0-1"),
        },
        Change::IothreadPins {
            pins: iothreads
                .iter()
                .map(|id| IothreadPin {
                    iothread: *id,
                    cpuset: cpus("0-1"),
                })
                .collect(),
        },
        Change::NumaMemory {
            mode: MemoryMode::Preferred,
            nodeset: cpus("0"),
        },
        Change::NoSharePages,
        Change::HugePages { size_kib: 2048 },
        Change::CpuHostModel,
    ];
    // A guest spanning two host nodes, as the planner asks of guests without
    // their own NUMA cells or memnodes.
    let has_cells = libvirt(root, "cpu")
        .iter()
        .any(|cpu| !libvirt(*cpu, "numa").is_empty());
    let has_memnodes = libvirt(root, "numatune")
        .iter()
        .any(|n| !libvirt(*n, "memnode").is_empty());
    if vcpus >= 2 && !has_cells && !has_memnodes {
        let half = vcpus / 2;
        plan.push(Change::GuestNuma {
            cells: vec![
                GuestCell {
                    id: 0,
                    vcpus: (0..half).collect(),
                    memory_kib: 1024 * 1024,
                    host_node: 0,
                    mode: MemoryMode::Preferred,
                },
                GuestCell {
                    id: 1,
                    vcpus: (half..vcpus).collect(),
                    memory_kib: 1024 * 1024,
                    host_node: 1,
                    mode: MemoryMode::Preferred,
                },
            ],
        });
    }
    let devices = libvirt(root, "devices");
    if let Some(devices) = devices.first() {
        for (index, disk) in libvirt(*devices, "disk").into_iter().enumerate() {
            let target = libvirt(disk, "target")
                .first()
                .and_then(|t| t.attribute("dev"))
                .unwrap_or("?")
                .to_owned();
            plan.push(Change::DiskDriver {
                index,
                target,
                cache: Some(DiskCache::None),
                io: Some(DiskIo::Native),
            });
        }
        for (index, nic) in libvirt(*devices, "interface").into_iter().enumerate() {
            // vhost-net applies to tap-backed NICs only (as in the planner).
            if matches!(
                nic.attribute("type"),
                Some("network" | "bridge" | "ethernet" | "direct")
            ) {
                plan.push(Change::InterfaceDriver {
                    index,
                    target: String::new(),
                    vhost: true,
                    queues: Some(vcpus.clamp(1, 8)),
                });
            }
        }
    }
    plan
}

/// `Some(valid)` from virt-xml-validate, `None` when it cannot run.
fn validates(path: &Path) -> Option<bool> {
    let output = Command::new("virt-xml-validate")
        .arg(path)
        .arg("domain")
        .output()
        .ok()?;
    Some(output.status.success())
}

#[test]
fn rewrite_every_shared_fixture() {
    let Some(dir) = fixtures_dir() else {
        println!("note: ../shared/fixtures/domains not found; skipping the fixture sweep");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());

    let scratch = tempfile::tempdir().unwrap();
    let have_validator = validates(Path::new("/nonexistent.xml")).is_some();
    let (mut changed, mut valid_before, mut valid_after, mut edits) = (0, 0, 0, 0);
    let mut regressions = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let xml = std::fs::read_to_string(path).unwrap();
        let plan = plan_for(&xml);
        edits += plan.len();

        // Each change alone touches only its own elements and is a fixed point.
        for change in &plan {
            let one = apply(&xml, std::slice::from_ref(change))
                .unwrap_or_else(|e| panic!("{name}: {change:?}: {e}"));
            assert_only_touches(
                &xml,
                &one,
                allowed_tags(change),
                &format!("{name}: {change:?}"),
            );
            assert_eq!(
                apply(&one, std::slice::from_ref(change)).unwrap(),
                one,
                "{name}: {change:?}"
            );
        }

        let out = apply(&xml, &plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        let one_by_one = plan.iter().fold(xml.clone(), |text, change| {
            apply(&text, std::slice::from_ref(change)).unwrap()
        });
        assert_eq!(
            out, one_by_one,
            "{name}: batched differs from one at a time"
        );
        let mut reversed = plan.clone();
        reversed.reverse();
        let one_by_one = reversed.iter().fold(xml.clone(), |text, change| {
            apply(&text, std::slice::from_ref(change)).unwrap()
        });
        assert_eq!(
            apply(&xml, &reversed).unwrap(),
            one_by_one,
            "{name}: reversed plan"
        );
        roxmltree::Document::parse(&out).unwrap_or_else(|e| panic!("{name}: output: {e}"));
        assert_eq!(apply(&out, &plan).unwrap(), out, "{name}: not idempotent");
        assert_eq!(apply(&xml, &[]).unwrap(), xml, "{name}: round trip");
        if out != xml {
            changed += 1;
        }

        if have_validator {
            let after_path = scratch.path().join(&name);
            std::fs::write(&after_path, &out).unwrap();
            let before_ok = validates(path) == Some(true);
            let after_ok = validates(&after_path) == Some(true);
            valid_before += usize::from(before_ok);
            valid_after += usize::from(after_ok);
            if before_ok && !after_ok {
                regressions.push(name);
            }
        }
    }
    println!(
        "rewrite fixture sweep: {} domains, {edits} changes, {changed} rewritten, all idempotent",
        files.len()
    );
    if have_validator {
        println!("virt-xml-validate: {valid_before} valid before, {valid_after} valid after");
        assert!(
            valid_before > 0,
            "no fixture validated before the rewrite: nothing was checked"
        );
    } else {
        rewrite_support::schema_tools_missing("rewrite fixture sweep (virt-xml-validate)");
    }
    assert!(
        regressions.is_empty(),
        "valid before, invalid after: {regressions:?}"
    );
}
