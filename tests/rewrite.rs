//! Tests of `kvmtune_core::rewrite`: one exact-output test per kind of change, round
//! trips, idempotence and "nothing outside the edit moves" on the domains in
//! tests/data/domains (written for kvmtune, each covering XML quirks: comments,
//! foreign namespaces, CDATA, character references, both quote styles, tabs,
//! self-closed parents, CRLF, one-line documents).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod rewrite_support;

use std::path::PathBuf;

use kvmtune_core::CpuSet;
use kvmtune_core::plan::{Change, GuestCell, IothreadPin, VcpuPin};
use kvmtune_core::policy::{DiskCache, DiskIo, MemoryMode};
use kvmtune_core::rewrite::{RewriteError, apply};
use rewrite_support::{allowed_tags, assert_only_touches};

const DOMAINS: [&str; 4] = ["dumpxml-plain", "tuned-existing", "quirky", "oneline"];

fn domain(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/data/domains",
        &format!("{name}.xml"),
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cpus(list: &str) -> CpuSet {
    CpuSet::parse(list).unwrap()
}

fn vcpu_pins(cpuset: &str, pins: &[(u32, &str)]) -> Change {
    Change::VcpuPins {
        cpuset: cpus(cpuset),
        pins: pins
            .iter()
            .map(|(vcpu, set)| VcpuPin {
                vcpu: *vcpu,
                cpuset: cpus(set),
            })
            .collect(),
    }
}

fn disk(index: usize, target: &str, cache: Option<DiskCache>, io: Option<DiskIo>) -> Change {
    Change::DiskDriver {
        index,
        target: target.to_owned(),
        cache,
        io,
    }
}

fn nic(index: usize, vhost: bool, queues: Option<u32>) -> Change {
    Change::InterfaceDriver {
        index,
        target: String::new(),
        vhost,
        queues,
    }
}

/// A plan touching everything, as the planner would make for a 4-vCPU guest.
fn full_plan() -> Vec<Change> {
    vec![
        vcpu_pins("2-5", &[(0, "2"), (1, "3"), (2, "4"), (3, "5")]),
        Change::EmulatorPin {
            cpuset: cpus("2-5"),
        },
        Change::IothreadPins {
            pins: vec![IothreadPin {
                iothread: 1,
                cpuset: cpus("2-5"),
            }],
        },
        Change::NumaMemory {
            mode: MemoryMode::Preferred,
            nodeset: cpus("0"),
        },
        disk(0, "vda", Some(DiskCache::None), Some(DiskIo::Native)),
        Change::NoSharePages,
        Change::HugePages { size_kib: 2048 },
        nic(0, true, Some(4)),
        Change::CpuHostModel,
    ]
}

/// Applies `changes`, checks the exact output, and that applying again is a no-op.
#[track_caller]
fn check(before: &str, changes: &[Change], expected: &str) {
    let after = apply(before, changes).unwrap();
    assert_eq!(after, expected);
    assert_eq!(apply(&after, changes).unwrap(), after, "not idempotent");
}

// ---- round trips, idempotence, untouched bytes --------------------------------

#[test]
fn no_changes_is_byte_identical() {
    for name in DOMAINS {
        let xml = domain(name);
        assert_eq!(apply(&xml, &[]).unwrap(), xml, "{name}");
        let crlf = xml.replace('\n', "\r\n");
        assert_eq!(apply(&crlf, &[]).unwrap(), crlf, "{name} (CRLF)");
    }
}

#[test]
fn the_full_plan_is_idempotent_on_every_domain() {
    let plan = full_plan();
    for name in DOMAINS {
        let xml = domain(name);
        let once = apply(&xml, &plan).unwrap();
        assert_ne!(once, xml, "{name}");
        assert_eq!(apply(&once, &plan).unwrap(), once, "{name}");
        // Each change alone, too, and on its own output.
        for change in &plan {
            let one = apply(&xml, std::slice::from_ref(change)).unwrap();
            assert_eq!(
                apply(&one, std::slice::from_ref(change)).unwrap(),
                one,
                "{name}: {change:?}"
            );
        }
    }
}

/// `apply` computes changes with disjoint scopes against one parse; the result
/// must equal applying them one at a time, in any order of the plan.
#[test]
fn batched_changes_equal_one_at_a_time() {
    let plan = full_plan();
    let mut reversed = plan.clone();
    reversed.reverse();
    let mut disks_first = plan.clone();
    disks_first.rotate_left(4);
    for name in DOMAINS {
        for xml in [domain(name), domain(name).replace('\n', "\r\n")] {
            for order in [&plan, &reversed, &disks_first] {
                let one_by_one = order.iter().fold(xml.clone(), |text, change| {
                    apply(&text, std::slice::from_ref(change)).unwrap()
                });
                assert_eq!(apply(&xml, order).unwrap(), one_by_one, "{name}");
            }
        }
    }
    // Creating <cputune> and <numatune> in one call still orders them right.
    let after = apply(
        "<domain>\n  <vcpu>1</vcpu>\n</domain>\n",
        &[
            Change::NumaMemory {
                mode: MemoryMode::Strict,
                nodeset: cpus("0"),
            },
            Change::EmulatorPin { cpuset: cpus("0") },
            Change::NoSharePages,
        ],
    )
    .unwrap();
    assert_eq!(
        after,
        "<domain>
  <memoryBacking>
    <nosharepages/>
  </memoryBacking>
  <vcpu>1</vcpu>
  <cputune>
    <emulatorpin cpuset='0'/>
  </cputune>
  <numatune>
    <memory mode='strict' nodeset='0'/>
  </numatune>
</domain>
"
    );
}

#[test]
fn each_change_only_touches_its_own_elements() {
    for name in DOMAINS.iter().filter(|n| **n != "oneline") {
        let xml = domain(name);
        for variant in [xml.clone(), xml.replace('\n', "\r\n")] {
            for change in full_plan() {
                let after = apply(&variant, std::slice::from_ref(&change)).unwrap();
                assert_only_touches(
                    &variant,
                    &after,
                    allowed_tags(&change),
                    &format!("{name}: {change:?}"),
                );
            }
        }
    }
}

#[test]
fn crlf_documents_get_crlf_lines() {
    let xml = domain("dumpxml-plain").replace('\n', "\r\n");
    let after = apply(&xml, &full_plan()).unwrap();
    assert!(
        !after.replace("\r\n", "").contains('\n'),
        "a bare LF was inserted"
    );
    let lf = apply(&domain("dumpxml-plain"), &full_plan()).unwrap();
    assert_eq!(after, lf.replace('\n', "\r\n"));
}

#[test]
fn full_plan_on_a_libvirt_dumpxml() {
    let before = domain("dumpxml-plain");
    let after = apply(&before, &full_plan()).unwrap();
    let diff = similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(1)
        .to_string();
    assert_eq!(
        diff,
        "\
@@ -21,3 +21,20 @@
   <currentMemory unit='KiB'>4194304</currentMemory>
-  <vcpu placement='static'>4</vcpu>
+  <memoryBacking>
+    <hugepages>
+      <page size='2048' unit='KiB'/>
+    </hugepages>
+    <nosharepages/>
+  </memoryBacking>
+  <vcpu placement='static' cpuset='2-5'>4</vcpu>
+  <cputune>
+    <vcpupin vcpu='0' cpuset='2'/>
+    <vcpupin vcpu='1' cpuset='3'/>
+    <vcpupin vcpu='2' cpuset='4'/>
+    <vcpupin vcpu='3' cpuset='5'/>
+    <emulatorpin cpuset='2-5'/>
+    <iothreadpin iothread='1' cpuset='2-5'/>
+  </cputune>
+  <numatune>
+    <memory mode='preferred' nodeset='0'/>
+  </numatune>
   <os>
@@ -30,3 +47,3 @@
   </features>
-  <cpu mode='host-passthrough' check='none' migratable='on'/>
+  <cpu mode='host-model'/>
   <clock offset='utc'/>
@@ -38,3 +55,3 @@
     <disk type='file' device='disk'>
-      <driver name='qemu' type='qcow2'/>
+      <driver name='qemu' type='qcow2' cache='none' io='native'/>
       <source file='/var/lib/libvirt/images/web01.qcow2'/>
@@ -56,2 +73,3 @@
       <model type='virtio'/>
+      <driver name='vhost' queues='4'/>
     </interface>
"
    );
}

#[test]
fn full_plan_on_a_quirky_document() {
    // Double quotes, tabs, a PI, CDATA, `&apos;`, `&#10;`, non-ASCII text, a
    // default-namespace metadata child holding its own <cputune/> and <devices>
    // (untouched), self-closed <memoryBacking/> and <cputune/>, a trailing comment.
    let before = domain("quirky");
    let after = apply(&before, &full_plan()).unwrap();
    let diff = similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(1)
        .to_string();
    assert_eq!(
        diff,
        "\
@@ -13,5 +13,20 @@
 \t<memory unit=\"MiB\">1024</memory>
-\t<memoryBacking/>
-\t<vcpu>2</vcpu>
-\t<cputune/>
+\t<memoryBacking>
+\t\t<hugepages>
+\t\t\t<page size=\"2048\" unit=\"KiB\"/>
+\t\t</hugepages>
+\t\t<nosharepages/>
+\t</memoryBacking>
+\t<vcpu cpuset=\"2-5\">2</vcpu>
+\t<cputune>
+\t\t<vcpupin vcpu=\"0\" cpuset=\"2\"/>
+\t\t<vcpupin vcpu=\"1\" cpuset=\"3\"/>
+\t\t<vcpupin vcpu=\"2\" cpuset=\"4\"/>
+\t\t<vcpupin vcpu=\"3\" cpuset=\"5\"/>
+\t\t<emulatorpin cpuset=\"2-5\"/>
+\t\t<iothreadpin iothread=\"1\" cpuset=\"2-5\"/>
+\t</cputune>
+\t<numatune>
+\t\t<memory mode=\"preferred\" nodeset=\"0\"/>
+\t</numatune>
 \t<features>
@@ -20,5 +35,6 @@
 \t</features>
-\t<cpu mode=\"host-passthrough\"/>
+\t<cpu mode=\"host-model\"/>
 \t<devices>
 \t\t<disk type=\"file\" device=\"disk\">
+\t\t\t<driver name=\"qemu\" cache=\"none\" io=\"native\"/>
 \t\t\t<source file=\"/images/a&amp;b.raw\"/>
@@ -28,2 +44,3 @@
 \t\t\t<mac address=\"52:54:00:aa:bb:cc\"/>
+\t\t\t<driver name=\"vhost\" queues=\"4\"/>
 \t\t</interface>
"
    );
}

#[test]
fn full_plan_on_a_one_line_document_adds_no_whitespace() {
    check(
        &domain("oneline"),
        &full_plan(),
        "<domain type='qemu'><name>one</name><memory>65536</memory>\
<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages><nosharepages/></memoryBacking>\
<vcpu cpuset='2-5'>1</vcpu>\
<cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/><vcpupin vcpu='2' cpuset='4'/>\
<vcpupin vcpu='3' cpuset='5'/><emulatorpin cpuset='2-5'/><iothreadpin iothread='1' cpuset='2-5'/></cputune>\
<numatune><memory mode='preferred' nodeset='0'/></numatune>\
<os><type>hvm</type></os><devices><disk type='file'><driver name='qemu' cache='none' io='native'/>\
<source file='/x.img'/><target dev='vda'/></disk><interface type='user'><model type='virtio'/>\
<driver name='vhost' queues='4'/></interface></devices></domain>",
    );
}

#[test]
fn satisfied_changes_change_no_byte() {
    let xml = domain("tuned-existing");
    let satisfied = [
        // Same pins, cpuset written differently.
        vcpu_pins("2,3,4,5", &[(3, "5"), (2, "4"), (1, "3"), (0, "2")]),
        Change::EmulatorPin {
            cpuset: cpus("0,1"),
        },
        Change::IothreadPins {
            pins: vec![IothreadPin {
                iothread: 1,
                cpuset: cpus("0-1"),
            }],
        },
        // `2` `M` is 2048 KiB.
        Change::HugePages { size_kib: 2048 },
        disk(0, "vda", Some(DiskCache::Keep), Some(DiskIo::Keep)),
        disk(0, "vda", Some(DiskCache::Writeback), None),
        nic(0, true, Some(2)),
        nic(0, false, None),
        Change::NumaMemory {
            mode: MemoryMode::Off,
            nodeset: cpus("0"),
        },
    ];
    for change in satisfied {
        let after = apply(&xml, std::slice::from_ref(&change)).unwrap();
        // vcpu placement='auto' still becomes static for VcpuPins.
        if matches!(change, Change::VcpuPins { .. }) {
            assert_eq!(
                after,
                xml.replace(
                    "<vcpu placement='auto' current='2'>",
                    "<vcpu placement='static' current='2' cpuset='2-5'>"
                ),
            );
        } else {
            assert_eq!(after, xml, "{change:?}");
        }
    }
}

// ---- one test per kind of change -------------------------------------------------

#[test]
fn vcpu_pins_create_cputune_after_iothreads() {
    check(
        "<domain type='kvm'>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>2</vcpu>
  <iothreads>1</iothreads>
  <os>
    <type>hvm</type>
  </os>
</domain>
",
        &[vcpu_pins("4-5", &[(1, "5"), (0, "4")])],
        "<domain type='kvm'>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static' cpuset='4-5'>2</vcpu>
  <iothreads>1</iothreads>
  <cputune>
    <vcpupin vcpu='0' cpuset='4'/>
    <vcpupin vcpu='1' cpuset='5'/>
  </cputune>
  <os>
    <type>hvm</type>
  </os>
</domain>
",
    );
}

#[test]
fn vcpu_pins_replace_update_and_remove_existing_pins() {
    check(
        "<domain type='kvm'>
  <vcpu placement='auto' current='2'>4</vcpu>
  <cputune>
    <shares>2048</shares>
    <vcpupin vcpu='0' cpuset='2'/>
    <vcpupin vcpu='1' cpuset='3'/>
    <vcpupin vcpu='2' cpuset='4'/>
    <vcpupin vcpu='3' cpuset='5'/>
    <emulatorpin cpuset='0-1'/> <!-- housekeeping -->
    <vcpusched vcpus='0-3' scheduler='fifo' priority='1'/>
  </cputune>
</domain>
",
        &[vcpu_pins("4-9", &[(0, "6"), (2, "4"), (5, "9")])],
        "<domain type='kvm'>
  <vcpu placement='static' current='2' cpuset='4-9'>4</vcpu>
  <cputune>
    <shares>2048</shares>
    <vcpupin vcpu='0' cpuset='6'/>
    <vcpupin vcpu='2' cpuset='4'/>
    <vcpupin vcpu='5' cpuset='9'/>
    <emulatorpin cpuset='0-1'/> <!-- housekeeping -->
    <vcpusched vcpus='0-3' scheduler='fifo' priority='1'/>
  </cputune>
</domain>
",
    );
}

#[test]
fn vcpu_pins_go_before_emulatorpin_after_a_leading_comment() {
    check(
        "<domain>
  <vcpu cpuset='0-7'>2</vcpu>
  <cputune>
    <!-- pinned by hand -->
    <vcpupin vcpu='1' cpuset='1'/>
    <emulatorpin cpuset='0'/>
  </cputune>
</domain>
",
        &[vcpu_pins("0-1", &[(0, "0"), (1, "1"), (2, "1")])],
        "<domain>
  <vcpu cpuset='0-1'>2</vcpu>
  <cputune>
    <!-- pinned by hand -->
    <vcpupin vcpu='0' cpuset='0'/>
    <vcpupin vcpu='1' cpuset='1'/>
    <vcpupin vcpu='2' cpuset='1'/>
    <emulatorpin cpuset='0'/>
  </cputune>
</domain>
",
    );
}

#[test]
fn vcpu_pins_create_a_missing_vcpu_with_libvirts_default_count() {
    check(
        "<domain>
  <name>x</name>
  <memory>65536</memory>
  <os>
    <type>hvm</type>
  </os>
</domain>
",
        &[vcpu_pins("3", &[(0, "3")])],
        "<domain>
  <name>x</name>
  <memory>65536</memory>
  <vcpu placement='static' cpuset='3'>1</vcpu>
  <cputune>
    <vcpupin vcpu='0' cpuset='3'/>
  </cputune>
  <os>
    <type>hvm</type>
  </os>
</domain>
",
    );
}

#[test]
fn emulator_pin_expands_a_self_closed_cputune() {
    check(
        "<domain type=\"kvm\">\n\t<vcpu>2</vcpu>\n\t<cputune/>\n</domain>\n",
        &[Change::EmulatorPin {
            cpuset: cpus("0-1"),
        }],
        "<domain type=\"kvm\">\n\t<vcpu>2</vcpu>\n\t<cputune>\n\t\t<emulatorpin cpuset=\"0-1\"/>\n\t</cputune>\n</domain>\n",
    );
}

#[test]
fn emulator_pin_updates_in_place_and_keeps_the_comment_after_it() {
    check(
        "<domain>
  <cputune>
    <emulatorpin cpuset='45-52'/> <!-- if HT were on -->
  </cputune>
</domain>
",
        &[Change::EmulatorPin { cpuset: cpus("8") }],
        "<domain>
  <cputune>
    <emulatorpin cpuset='8'/> <!-- if HT were on -->
  </cputune>
</domain>
",
    );
}

#[test]
fn emulator_pin_goes_after_vcpupins_and_into_an_empty_cputune() {
    check(
        "<domain>
  <cputune>
    <vcpupin vcpu='0' cpuset='1'/>
    <iothreadpin iothread='1' cpuset='1'/>
  </cputune>
</domain>
",
        &[Change::EmulatorPin { cpuset: cpus("0") }],
        "<domain>
  <cputune>
    <vcpupin vcpu='0' cpuset='1'/>
    <emulatorpin cpuset='0'/>
    <iothreadpin iothread='1' cpuset='1'/>
  </cputune>
</domain>
",
    );
    check(
        "<domain>\n  <cputune>\n  </cputune>\n</domain>\n",
        &[Change::EmulatorPin { cpuset: cpus("0") }],
        "<domain>\n  <cputune>\n    <emulatorpin cpuset='0'/>\n  </cputune>\n</domain>\n",
    );
}

#[test]
fn iothread_pins_update_add_and_keep_others() {
    check(
        "<domain>
  <iothreads>3</iothreads>
  <cputune>
    <emulatorpin cpuset='0'/>
    <iothreadpin iothread='1' cpuset='0'/>
    <iothreadpin iothread='3' cpuset='0'/>
    <vcpusched vcpus='0' scheduler='fifo' priority='1'/>
  </cputune>
</domain>
",
        &[Change::IothreadPins {
            pins: vec![
                IothreadPin {
                    iothread: 2,
                    cpuset: cpus("1"),
                },
                IothreadPin {
                    iothread: 1,
                    cpuset: cpus("1"),
                },
            ],
        }],
        "<domain>
  <iothreads>3</iothreads>
  <cputune>
    <emulatorpin cpuset='0'/>
    <iothreadpin iothread='1' cpuset='1'/>
    <iothreadpin iothread='2' cpuset='1'/>
    <iothreadpin iothread='3' cpuset='0'/>
    <vcpusched vcpus='0' scheduler='fifo' priority='1'/>
  </cputune>
</domain>
",
    );
}

#[test]
fn numa_memory_is_created_after_cputune() {
    check(
        "<domain>
  <vcpu>2</vcpu>
  <cputune>
    <shares>1024</shares>
  </cputune>
  <os/>
</domain>
",
        &[Change::NumaMemory {
            mode: MemoryMode::Preferred,
            nodeset: cpus("1"),
        }],
        "<domain>
  <vcpu>2</vcpu>
  <cputune>
    <shares>1024</shares>
  </cputune>
  <numatune>
    <memory mode='preferred' nodeset='1'/>
  </numatune>
  <os/>
</domain>
",
    );
}

#[test]
fn numa_memory_replaces_placement_auto_and_keeps_memnodes() {
    check(
        "<domain>
  <numatune>
    <memory mode='strict' placement='auto'/>
    <memnode cellid='0' mode='strict' nodeset='0'/>
  </numatune>
</domain>
",
        &[Change::NumaMemory {
            mode: MemoryMode::Interleave,
            nodeset: cpus("0-1"),
        }],
        "<domain>
  <numatune>
    <memory mode='interleave' nodeset='0-1'/>
    <memnode cellid='0' mode='strict' nodeset='0'/>
  </numatune>
</domain>
",
    );
    // A numatune with only memnodes gets <memory> first.
    check(
        "<domain>\n  <numatune>\n    <memnode cellid='0' mode='preferred' nodeset='3'/>\n  </numatune>\n</domain>\n",
        &[Change::NumaMemory {
            mode: MemoryMode::Restrictive,
            nodeset: cpus("3"),
        }],
        "<domain>\n  <numatune>\n    <memory mode='restrictive' nodeset='3'/>\n    \
<memnode cellid='0' mode='preferred' nodeset='3'/>\n  </numatune>\n</domain>\n",
    );
}

#[test]
fn numa_memory_without_mode_is_strict_and_off_changes_nothing() {
    let xml = "<domain>\n  <numatune>\n    <memory nodeset='0'/>\n  </numatune>\n</domain>\n";
    let strict = Change::NumaMemory {
        mode: MemoryMode::Strict,
        nodeset: cpus("0"),
    };
    assert_eq!(apply(xml, &[strict]).unwrap(), xml);
    let off = Change::NumaMemory {
        mode: MemoryMode::Off,
        nodeset: cpus("5"),
    };
    assert_eq!(apply("<domain/>", &[off]).unwrap(), "<domain/>");
}

#[test]
fn disk_driver_counts_every_disk_including_cdroms() {
    // Index 1 is the cdrom; index 2 the block disk without a driver.
    let xml = "<domain>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <target dev='vda'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/sdb'/>
      <target dev='vdb'/>
    </disk>
  </devices>
</domain>
";
    check(
        xml,
        &[disk(
            2,
            "vdb",
            Some(DiskCache::Directsync),
            Some(DiskIo::IoUring),
        )],
        "<domain>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <target dev='vda'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' cache='directsync' io='io_uring'/>
      <source dev='/dev/sdb'/>
      <target dev='vdb'/>
    </disk>
  </devices>
</domain>
",
    );
    // Keep / None leave an attribute alone; the driver stays self-closed.
    let after = apply(
        xml,
        &[
            disk(0, "vda", Some(DiskCache::Keep), Some(DiskIo::Threads)),
            disk(0, "vda", None, None),
        ],
    )
    .unwrap();
    assert_eq!(
        after,
        xml.replace(
            "<driver name='qemu' type='qcow2'/>",
            "<driver name='qemu' type='qcow2' io='threads'/>"
        )
    );
    // Existing values are replaced in place.
    let after = apply(
        &after,
        &[disk(
            0,
            "vda",
            Some(DiskCache::Unsafe),
            Some(DiskIo::Native),
        )],
    )
    .unwrap();
    assert!(after.contains("<driver name='qemu' type='qcow2' io='native' cache='unsafe'/>"));
    let after = apply(
        &after,
        &[disk(0, "vda", Some(DiskCache::Writethrough), None)],
    )
    .unwrap();
    assert!(after.contains("<driver name='qemu' type='qcow2' io='native' cache='writethrough'/>"));
    assert_eq!(
        apply(xml, &[disk(3, "vdc", Some(DiskCache::None), None)]),
        Err(RewriteError::Missing("disk #3 (vdc)".to_owned()))
    );
    assert_eq!(
        apply(xml, &[disk(0, "vdb", Some(DiskCache::None), None)]),
        Err(RewriteError::Missing(
            "disk #0 (vdb): that disk's target is vda".to_owned()
        ))
    );
}

#[test]
fn interface_driver_goes_after_model_or_is_updated() {
    check(
        "<domain>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:00:00:01'/>
      <source network='default'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <model type='virtio'/>
      <driver name='qemu' txmode='iothread'/>
    </interface>
  </devices>
</domain>
",
        &[nic(0, true, None), nic(1, true, Some(8))],
        "<domain>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:00:00:01'/>
      <source network='default'/>
      <model type='virtio'/>
      <driver name='vhost'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <model type='virtio'/>
      <driver name='vhost' txmode='iothread' queues='8'/>
    </interface>
  </devices>
</domain>
",
    );
}

#[test]
fn interface_driver_checks_the_index_and_label() {
    let xml = domain("dumpxml-plain");
    let labelled = |target: &str| Change::InterfaceDriver {
        index: 1,
        target: target.to_owned(),
        vhost: true,
        queues: None,
    };
    let _ = apply(&xml, &[labelled("52:54:00:6b:3c:02")]).unwrap();
    let _ = apply(&xml, &[labelled("interface #1")]).unwrap();
    assert_eq!(
        apply(&xml, &[labelled("52:54:00:6b:3c:01")]),
        Err(RewriteError::Missing(
            "interface #1 (52:54:00:6b:3c:01): that interface is 52:54:00:6b:3c:02".to_owned()
        ))
    );
    assert_eq!(
        apply(&xml, &[nic(2, true, None)]),
        Err(RewriteError::Missing("interface #2".to_owned()))
    );
    assert_eq!(
        apply(&xml, &[nic(0, true, Some(0))]),
        Err(RewriteError::Invalid("interface #0: 0 queues".to_owned()))
    );
}

#[test]
fn nosharepages_creates_or_fills_memory_backing() {
    check(
        "<domain>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu>1</vcpu>
</domain>
",
        &[Change::NoSharePages],
        "<domain>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <memoryBacking>
    <nosharepages/>
  </memoryBacking>
  <vcpu>1</vcpu>
</domain>
",
    );
    check(
        "<domain>
  <memoryBacking>
    <hugepages/>
    <locked/>
  </memoryBacking>
</domain>
",
        &[Change::NoSharePages],
        "<domain>
  <memoryBacking>
    <hugepages/>
    <nosharepages/>
    <locked/>
  </memoryBacking>
</domain>
",
    );
    check(
        "<domain>\n  <memoryBacking />\n</domain>\n",
        &[Change::NoSharePages],
        "<domain>\n  <memoryBacking >\n    <nosharepages/>\n  </memoryBacking>\n</domain>\n",
    );
}

#[test]
fn hugepages_are_created_first_in_memory_backing() {
    check(
        "<domain>
  <memoryBacking>
    <nosharepages/>
  </memoryBacking>
</domain>
",
        &[Change::HugePages {
            size_kib: 1_048_576,
        }],
        "<domain>
  <memoryBacking>
    <hugepages>
      <page size='1048576' unit='KiB'/>
    </hugepages>
    <nosharepages/>
  </memoryBacking>
</domain>
",
    );
}

#[test]
fn hugepages_fill_an_empty_element_and_resize_the_default_page() {
    check(
        "<domain>\n  <memoryBacking>\n    <hugepages/>\n  </memoryBacking>\n</domain>\n",
        &[Change::HugePages { size_kib: 2048 }],
        "<domain>\n  <memoryBacking>\n    <hugepages>\n      <page size='2048' unit='KiB'/>\n    \
</hugepages>\n  </memoryBacking>\n</domain>\n",
    );
    // The page without nodeset is the guest's default; per-node pages stay.
    check(
        "<domain>
  <memoryBacking>
    <hugepages>
      <page size='1' unit='G' nodeset='0'/>
      <page size=\"2\" unit=\"M\"/>
    </hugepages>
  </memoryBacking>
</domain>
",
        &[Change::HugePages {
            size_kib: 1_048_576,
        }],
        "<domain>
  <memoryBacking>
    <hugepages>
      <page size='1' unit='G' nodeset='0'/>
      <page size=\"1048576\" unit=\"KiB\"/>
    </hugepages>
  </memoryBacking>
</domain>
",
    );
    check(
        "<domain>\n  <memoryBacking>\n    <hugepages>\n      <page size='2048' nodeset='0'/>\n    </hugepages>\n  </memoryBacking>\n</domain>\n",
        &[Change::HugePages { size_kib: 2048 }],
        "<domain>\n  <memoryBacking>\n    <hugepages>\n      <page size='2048' nodeset='0'/>\n      \
<page size='2048' unit='KiB'/>\n    </hugepages>\n  </memoryBacking>\n</domain>\n",
    );
}

#[test]
fn cpu_host_model_drops_what_host_model_refuses() {
    check(
        "<domain>
  <cpu mode='host-passthrough' check='none' migratable='on'>
    <model fallback='forbid'>qemu64</model>
    <vendor>Intel</vendor>
    <topology sockets='1' dies='1' cores='2' threads='2'/>
    <cache mode='passthrough'/>
    <maxphysaddr mode='passthrough'/>
    <feature policy='disable' name='invtsc'/>
    <numa>
      <cell id='0' cpus='0-3' memory='1048576' unit='KiB'/>
    </numa>
  </cpu>
</domain>
",
        &[Change::CpuHostModel],
        "<domain>
  <cpu mode='host-model'>
    <topology sockets='1' dies='1' cores='2' threads='2'/>
    <feature policy='disable' name='invtsc'/>
    <numa>
      <cell id='0' cpus='0-3' memory='1048576' unit='KiB'/>
    </numa>
  </cpu>
</domain>
",
    );
    check(
        "<domain>\n  <cpu mode=\"host-passthrough\" migratable=\"off\">\n    <model>x</model>\n    \
<cache level='3' mode='emulate'/>\n  </cpu>\n</domain>\n",
        &[Change::CpuHostModel],
        "<domain>\n  <cpu mode=\"host-model\">\n    <cache level='3' mode='emulate'/>\n  </cpu>\n</domain>\n",
    );
}

#[test]
fn cpu_host_model_collapses_an_emptied_cpu_and_ignores_other_modes() {
    check(
        "<domain>\n  <cpu mode='host-passthrough'>\n    <model fallback='allow'/>\n  </cpu>\n</domain>\n",
        &[Change::CpuHostModel],
        "<domain>\n  <cpu mode='host-model'/>\n</domain>\n",
    );
    for xml in [
        "<domain>\n  <cpu mode='host-model' check='partial'/>\n</domain>\n",
        "<domain>\n  <cpu mode='maximum' migratable='on'/>\n</domain>\n",
        "<domain>\n  <cpu>\n    <topology sockets='1' cores='2' threads='1'/>\n  </cpu>\n</domain>\n",
        "<domain>\n  <vcpu>1</vcpu>\n</domain>\n",
    ] {
        assert_eq!(apply(xml, &[Change::CpuHostModel]).unwrap(), xml);
    }
}

// ---- guest NUMA ------------------------------------------------------------------

fn two_cells(mode: MemoryMode) -> Change {
    Change::GuestNuma {
        cells: vec![
            GuestCell {
                id: 0,
                vcpus: cpus("0-5"),
                memory_kib: 3 * 1024 * 1024,
                host_node: 0,
                mode,
            },
            GuestCell {
                id: 1,
                vcpus: cpus("6-11"),
                memory_kib: 3 * 1024 * 1024,
                host_node: 1,
                mode,
            },
        ],
    }
}

#[test]
fn guest_numa_creates_cpu_numa_and_memnodes() {
    check(
        "<domain type='kvm'>
  <name>big</name>
  <memory unit='KiB'>6291456</memory>
  <vcpu placement='static'>12</vcpu>
  <numatune>
    <memory mode='interleave' nodeset='0-1'/>
  </numatune>
  <os>
    <type arch='x86_64'>hvm</type>
  </os>
  <clock offset='utc'/>
</domain>
",
        &[two_cells(MemoryMode::Preferred)],
        "<domain type='kvm'>
  <name>big</name>
  <memory unit='KiB'>6291456</memory>
  <vcpu placement='static'>12</vcpu>
  <numatune>
    <memory mode='interleave' nodeset='0-1'/>
    <memnode cellid='0' mode='preferred' nodeset='0'/>
    <memnode cellid='1' mode='preferred' nodeset='1'/>
  </numatune>
  <os>
    <type arch='x86_64'>hvm</type>
  </os>
  <cpu>
    <numa>
      <cell id='0' cpus='0-5' memory='3145728' unit='KiB'/>
      <cell id='1' cpus='6-11' memory='3145728' unit='KiB'/>
    </numa>
  </cpu>
  <clock offset='utc'/>
</domain>
",
    );
}

#[test]
fn guest_numa_goes_after_cpu_features_and_creates_numatune() {
    check(
        "<domain>
  <vcpu>12</vcpu>
  <cputune>
    <shares>1024</shares>
  </cputune>
  <cpu mode='custom' match='exact'>
    <model fallback='forbid'>Skylake-Server</model>
    <topology sockets='2' cores='6' threads='1'/>
    <feature policy='require' name='pcid'/>
  </cpu>
</domain>
",
        &[two_cells(MemoryMode::Strict)],
        "<domain>
  <vcpu>12</vcpu>
  <cputune>
    <shares>1024</shares>
  </cputune>
  <numatune>
    <memnode cellid='0' mode='strict' nodeset='0'/>
    <memnode cellid='1' mode='strict' nodeset='1'/>
  </numatune>
  <cpu mode='custom' match='exact'>
    <model fallback='forbid'>Skylake-Server</model>
    <topology sockets='2' cores='6' threads='1'/>
    <feature policy='require' name='pcid'/>
    <numa>
      <cell id='0' cpus='0-5' memory='3145728' unit='KiB'/>
      <cell id='1' cpus='6-11' memory='3145728' unit='KiB'/>
    </numa>
  </cpu>
</domain>
",
    );
    // A self-closed <cpu> is expanded; a bare domain gets both, in order.
    check(
        "<domain>
  <cpu mode='host-model'/>
</domain>
",
        &[two_cells(MemoryMode::Interleave)],
        "<domain>
  <numatune>
    <memnode cellid='0' mode='interleave' nodeset='0'/>
    \
<memnode cellid='1' mode='interleave' nodeset='1'/>
  </numatune>
  <cpu mode='host-model'>
    \
<numa>
      <cell id='0' cpus='0-5' memory='3145728' unit='KiB'/>
      \
<cell id='1' cpus='6-11' memory='3145728' unit='KiB'/>
    </numa>
  </cpu>
</domain>
",
    );
    check(
        "<domain><name>x</name></domain>",
        &[two_cells(MemoryMode::Preferred)],
        "<domain><name>x</name><numatune><memnode cellid='0' mode='preferred' nodeset='0'/>\
<memnode cellid='1' mode='preferred' nodeset='1'/></numatune><cpu><numa>\
<cell id='0' cpus='0-5' memory='3145728' unit='KiB'/><cell id='1' cpus='6-11' memory='3145728' unit='KiB'/>\
</numa></cpu></domain>",
    );
}

#[test]
fn guest_numa_updates_cells_and_memnodes_by_id() {
    check(
        "<domain>
  <numatune>
    <memnode cellid='1' mode='strict' nodeset='3'/>
  </numatune>
  <cpu>
    <numa>
      <cell cpus='0-5' memory='3' unit='GiB'/>
      <cell id='1' cpus='6-9' memory='1048576'/>
    </numa>
  </cpu>
</domain>
",
        &[two_cells(MemoryMode::Preferred)],
        "<domain>
  <numatune>
    <memnode cellid='0' mode='preferred' nodeset='0'/>
    <memnode cellid='1' mode='preferred' nodeset='1'/>
  </numatune>
  <cpu>
    <numa>
      <cell cpus='0-5' memory='3' unit='GiB'/>
      <cell id='1' cpus='6-11' memory='3145728'/>
    </numa>
  </cpu>
</domain>
",
    );
}

/// With the full plan, in any order, on every test domain (CRLF too): batched
/// equals one at a time, a fixed point, and alone it touches only its elements.
#[test]
fn guest_numa_with_the_full_plan_on_every_domain() {
    let mut plan = full_plan();
    plan.insert(4, two_cells(MemoryMode::Preferred));
    let mut reversed = plan.clone();
    reversed.reverse();
    let numa = two_cells(MemoryMode::Preferred);
    for name in DOMAINS {
        for xml in [domain(name), domain(name).replace('\n', "\r\n")] {
            for order in [&plan, &reversed] {
                let once = apply(&xml, order).unwrap();
                let one_by_one = order.iter().fold(xml.clone(), |text, change| {
                    apply(&text, std::slice::from_ref(change)).unwrap()
                });
                assert_eq!(once, one_by_one, "{name}");
                assert_eq!(apply(&once, order).unwrap(), once, "{name}");
                let doc = roxmltree::Document::parse(&once).unwrap();
                let named = |tag: &str| doc.descendants().filter(|n| n.has_tag_name(tag)).count();
                assert_eq!((named("memnode"), named("cell")), (2, 2), "{name}");
            }
            let alone = apply(&xml, std::slice::from_ref(&numa)).unwrap();
            assert_eq!(apply(&alone, std::slice::from_ref(&numa)).unwrap(), alone);
            if name != "oneline" {
                assert_only_touches(&xml, &alone, allowed_tags(&numa), name);
            }
        }
    }
}

#[test]
fn guest_numa_refuses_what_libvirt_would() {
    let cell = |vcpus: &str, memory_kib: u64, mode: MemoryMode| GuestCell {
        id: 0,
        vcpus: cpus(vcpus),
        memory_kib,
        host_node: 0,
        mode,
    };
    for cells in [
        vec![cell("", 1024, MemoryMode::Strict)],
        vec![cell("0", 0, MemoryMode::Strict)],
        vec![cell("0", 1024, MemoryMode::Off)],
        vec![
            cell("0", 1024, MemoryMode::Strict),
            cell("1", 1024, MemoryMode::Strict),
        ],
    ] {
        assert!(matches!(
            apply("<domain/>", &[Change::GuestNuma { cells }]),
            Err(RewriteError::Invalid(_))
        ));
    }
}

// ---- namespaces and errors ------------------------------------------------------

#[test]
fn foreign_namespace_elements_are_never_edited() {
    // The only <cputune>, <devices> and <disk> here are in another namespace.
    let xml = "<domain xmlns:x='urn:x'>
  <metadata>
    <x:cputune/>
    <app xmlns='urn:app'><cputune/><devices><disk/></devices></app>
  </metadata>
  <vcpu>1</vcpu>
</domain>
";
    check(
        xml,
        &[Change::EmulatorPin { cpuset: cpus("1") }],
        "<domain xmlns:x='urn:x'>
  <metadata>
    <x:cputune/>
    <app xmlns='urn:app'><cputune/><devices><disk/></devices></app>
  </metadata>
  <vcpu>1</vcpu>
  <cputune>
    <emulatorpin cpuset='1'/>
  </cputune>
</domain>
",
    );
    assert_eq!(
        apply(xml, &[disk(0, "", Some(DiskCache::None), None)]),
        Err(RewriteError::Missing("disk #0".to_owned()))
    );
    // New attributes go after namespace declarations, in the root's quote style.
    let after = apply(
        "<domain xmlns:q=\"urn:q\" type=\"kvm\"><vcpu>1</vcpu></domain>",
        &[vcpu_pins("1", &[])],
    )
    .unwrap();
    assert_eq!(
        after,
        "<domain xmlns:q=\"urn:q\" type=\"kvm\"><vcpu cpuset=\"1\">1</vcpu></domain>"
    );
}

#[test]
fn errors_name_the_problem() {
    assert!(matches!(apply("<domain>", &[]), Err(RewriteError::Xml(_))));
    assert!(matches!(
        apply("", &[Change::NoSharePages]),
        Err(RewriteError::Xml(_))
    ));
    let Err(RewriteError::Xml(message)) = apply("<domain><name>x</nam></domain>", &[]) else {
        panic!("expected an XML error");
    };
    assert!(!message.contains('\n'), "{message}");
    assert_eq!(
        apply("<network/>", &[Change::NoSharePages]),
        Err(RewriteError::NotADomain("network".to_owned()))
    );
    assert_eq!(
        apply("<domain xmlns='urn:libvirt'/>", &[]),
        Err(RewriteError::NotADomain(
            "domain xmlns=\"urn:libvirt\"".to_owned()
        ))
    );
    assert_eq!(
        apply("<domain/>", &[vcpu_pins("", &[])]),
        Err(RewriteError::Invalid(
            "the vCPU cpuset is an empty cpuset".to_owned()
        ))
    );
    assert_eq!(
        apply("<domain/>", &[Change::HugePages { size_kib: 0 }]),
        Err(RewriteError::Invalid("huge page size 0".to_owned()))
    );
    assert!(matches!(
        apply("<!DOCTYPE domain [<!ENTITY e 'x'>]><domain/>", &[]),
        Err(RewriteError::Xml(_))
    ));
}

#[test]
fn truncated_and_mangled_input_never_panics() {
    let plan = full_plan();
    for name in ["quirky", "tuned-existing"] {
        let xml = domain(name);
        for (i, _) in xml.char_indices() {
            let _ = apply(&xml[..i], &plan);
            let _ = apply(&xml[i..], &plan);
        }
        // Every '>' turned into '/>' one at a time: other shapes of well-formed
        // and malformed documents.
        for (i, _) in xml.match_indices('>') {
            let mangled = format!("{}/{}", &xml[..i], &xml[i..]);
            if let Ok(out) = apply(&mangled, &plan) {
                assert_eq!(apply(&out, &plan).unwrap(), out);
            }
        }
    }
}

fn pins_mark(text: &str) -> Change {
    Change::PinsMark {
        mark: kvmtune_core::pins_mark::Mark::parse(text).unwrap(),
    }
}

#[test]
fn pins_mark_creates_metadata_where_libvirt_writes_it() {
    check(
        "<domain type='kvm'>
  <name>g</name>
  <uuid>u</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>2</vcpu>
</domain>
",
        &[pins_mark("0:4 1:5 emulator:4-5")],
        "<domain type='kvm'>
  <name>g</name>
  <uuid>u</uuid>
  <metadata>
    <kvmtune-pins:pins xmlns:kvmtune-pins='http://kvmtune.org/xmlns/pins/1.0'>0:4 1:5 emulator:4-5</kvmtune-pins:pins>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>2</vcpu>
</domain>
",
    );
}

#[test]
fn pins_mark_is_appended_to_foreign_metadata_and_replaced_in_place() {
    let before = "<domain type='kvm'>
  <name>g</name>
  <metadata>
    <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"><nova:name>x</nova:name></nova:instance>
  </metadata>
  <vcpu>1</vcpu>
</domain>
";
    let marked = "<domain type='kvm'>
  <name>g</name>
  <metadata>
    <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"><nova:name>x</nova:name></nova:instance>
    <kvmtune-pins:pins xmlns:kvmtune-pins='http://kvmtune.org/xmlns/pins/1.0'>0:3</kvmtune-pins:pins>
  </metadata>
  <vcpu>1</vcpu>
</domain>
";
    check(before, &[pins_mark("0:3")], marked);
    // Another prefix, other text: replaced, the rest byte-identical.
    let other = marked.replace(
        "<kvmtune-pins:pins xmlns:kvmtune-pins='http://kvmtune.org/xmlns/pins/1.0'>0:3</kvmtune-pins:pins>",
        "<p:pins xmlns:p=\"http://kvmtune.org/xmlns/pins/1.0\">0:1</p:pins>",
    );
    check(&other, &[pins_mark("0:3")], marked);
    // The same mark in other words: no byte changes.
    let same = other.replace(">0:1<", "> 0:3 <");
    assert_eq!(apply(&same, &[pins_mark("0:3")]).unwrap(), same);
}
