//! Benchmark: plan + rewrite of a ~20 KB domain (30 disks, 12 NICs) on the largest
//! fixture host (AMD EPYC 7451, 96 threads, 8 nodes), against a baseline measured in
//! the same run: parsing the same XML with roxmltree, the least any XML tool does.
//! Run: `cargo bench --bench plan`. Results are written down in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use kvmtune::inputs::plan_and_rewrite;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::policy::Policy;

fn big_domain() -> String {
    let mut xml = String::from(
        "<domain type='kvm'>\n  <name>bench</name>\n  <uuid>11111111-2222-3333-4444-555555555555</uuid>\n  <memory unit='GiB'>16</memory>\n  <vcpu placement='static'>8</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n  </os>\n  <cpu mode='host-passthrough' check='none'/>\n  <devices>\n",
    );
    for i in 0..30 {
        xml.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='writeback'/>\n      <source file='/var/lib/libvirt/images/bench-disk-{i:02}.qcow2'/>\n      <target dev='vd{}{}' bus='virtio'/>\n      <address type='pci' domain='0x0000' bus='0x{i:02x}' slot='0x00' function='0x0'/>\n    </disk>\n",
            (b'a' + (i / 26) as u8) as char,
            (b'a' + (i % 26) as u8) as char
        ));
    }
    for i in 0..12 {
        xml.push_str(&format!(
            "    <interface type='bridge'>\n      <mac address='52:54:00:00:00:{i:02x}'/>\n      <source bridge='br{i}'/>\n      <model type='virtio'/>\n      <address type='pci' domain='0x0000' bus='0x{:02x}' slot='0x00' function='0x0'/>\n    </interface>\n",
            0x40 + i
        ));
    }
    xml.push_str("  </devices>\n</domain>\n");
    xml
}

fn time_per_iter(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hosts/amd-epyc7451-2s24c2t-8node");
    let host = kvmtune_sys::sysfs::read_host(&root).expect("fixture host");
    let policy = Policy::shipped();
    let xml = big_domain();
    let occupancy = Occupancy::default();
    let iterations = 2000;
    let baseline = time_per_iter(iterations, || {
        black_box(roxmltree::Document::parse(black_box(&xml)).unwrap());
    });
    let planned = time_per_iter(iterations, || {
        black_box(plan_and_rewrite(&policy, &host, &occupancy, black_box(&xml)).unwrap());
    });
    let nodes: kvmtune_core::CpuSet = host.nodes.keys().copied().collect();
    let check = time_per_iter(200, || {
        black_box(policy.check_against(&host.online, &nodes));
    });
    println!("check_against: {check:.1} µs");
    let domain = kvmtune_core::domain::Domain::parse(&xml).unwrap();
    let pl = time_per_iter(200, || {
        black_box(kvmtune_core::plan::plan(&policy, &host, &occupancy, &domain).unwrap());
    });
    println!("plan only: {pl:.1} µs");
    let host_read = time_per_iter(200, || {
        black_box(kvmtune_sys::sysfs::read_host(&root).unwrap());
    });
    println!("domain: {} bytes; host: {}", xml.len(), host.summary());
    println!("baseline roxmltree parse: {baseline:.1} µs");
    println!(
        "plan + rewrite:           {planned:.1} µs  ({:.1}x baseline)",
        planned / baseline
    );
    println!("host read (sysfs fixture): {host_read:.1} µs");
}
