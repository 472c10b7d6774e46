//! Issue 7, corpus: a generator that varies every test domain (tests/data/domains
//! and, when present, ../shared/fixtures/domains) systematically and runs plan +
//! rewrite (`cli::plan_and_rewrite`, shipped policy) on fixture hosts.
//!
//! Variations, each applied to each base document:
//! - vCPUs 1..512, with and without `current` (pins, guest NUMA and topology that
//!   would contradict the count are dropped first);
//! - every `<cpu mode>` (and no `<cpu>`), keeping the element's children;
//! - with and without `<cputune>`, `<numatune>`, `<memoryBacking>` (each, and all);
//! - every disk type / device and every interface type, added to `<devices>`;
//! - comments and processing instructions in odd places, foreign namespaces
//!   (metadata, attributes, elements inside libvirt elements), CDATA, character
//!   references, single/double/mixed attribute quotes, one-line, CRLF, a BOM.
//!
//! Each variant runs on 3 of the 13 fixture hosts (rotating, so every host sees
//! every kind of variant). Asserts per pair: no panic; when the plan succeeds, the
//! output re-parses, a second pass changes nothing (idempotent) and content outside
//! the edited elements is unchanged; a plan error is only allowed for inputs libvirt
//! itself would reject. A sample of inputs and outputs is validated against
//! libvirt's RelaxNG schema (xmllint, one process per batch): every output whose
//! input validated must validate. Figures are printed (docs/robustness.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod rewrite_support;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kvmtune::inputs::plan_and_rewrite;
use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::policy::Policy;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bases() -> Vec<(String, String)> {
    let mut dirs = vec![manifest().join("tests/data/domains")];
    let shared = manifest().join("../shared/fixtures/domains");
    if shared.is_dir() {
        dirs.push(shared);
    } else {
        eprintln!("note: ../shared/fixtures/domains not found; repo domains only");
    }
    let mut out = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(&f).unwrap()));
        }
    }
    out
}

// ---------------------------------------------------------------- text surgery

fn doc(xml: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(xml).unwrap()
}

/// Range of the first element at `path` (libvirt namespace) below the root.
fn find(xml: &str, path: &[&str]) -> Option<Range<usize>> {
    let d = doc(xml);
    let mut node = d.root_element();
    for name in path {
        node = node.children().find(|n| {
            n.is_element()
                && n.tag_name().name() == *name
                && n.tag_name().namespace().is_none_or(str::is_empty)
        })?;
    }
    Some(node.range())
}

/// Ranges of every element named `name` anywhere below `path`.
fn find_all(xml: &str, path: &[&str], name: &str) -> Vec<Range<usize>> {
    let Some(r) = find(xml, path) else {
        return Vec::new();
    };
    let d = doc(xml);
    d.descendants()
        .filter(|n| {
            n.is_element()
                && n.tag_name().name() == name
                && n.range().start > r.start
                && n.range().end <= r.end
        })
        .map(|n| n.range())
        .collect()
}

fn splice(xml: &str, range: Range<usize>, with: &str) -> String {
    format!("{}{with}{}", &xml[..range.start], &xml[range.end..])
}

/// Removes ranges (non-overlapping), last first.
fn remove_all(xml: &str, mut ranges: Vec<Range<usize>>) -> String {
    ranges.sort_by_key(|r| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for r in ranges {
        out = splice(&out, r, "");
    }
    out
}

fn remove(xml: &str, path: &[&str]) -> String {
    match find(xml, path) {
        Some(r) => splice(xml, r, ""),
        None => xml.to_string(),
    }
}

/// Byte offset just after the root's start tag, and of the root's end tag.
fn root_inner(xml: &str) -> (usize, usize) {
    let d = doc(xml);
    let root = d.root_element();
    let start = root.range().start + xml[root.range().start..].find('>').unwrap() + 1;
    let end = xml[..root.range().end].rfind("</").unwrap();
    (start, end)
}

/// Inserts `what` as the root's last child.
fn append_to_root(xml: &str, what: &str) -> String {
    let (_, end) = root_inner(xml);
    splice(xml, end..end, &format!("  {what}\n"))
}

/// Inserts `what` as the last child of the element at `path` (created under the
/// root when missing); self-closing elements are opened up.
fn append_to(xml: &str, path: &[&str], what: &str) -> String {
    match find(xml, path) {
        Some(r) => {
            let elem = &xml[r.clone()];
            if let Some(open) = elem.strip_suffix("/>") {
                let name = path.last().unwrap();
                splice(xml, r, &format!("{open}>{what}</{name}>"))
            } else {
                let close = r.start + elem.rfind("</").unwrap();
                splice(xml, close..close, what)
            }
        }
        None => {
            let (head, last) = path.split_at(path.len() - 1);
            let wrapped = format!("<{0}>{what}</{0}>", last[0]);
            if head.is_empty() {
                append_to_root(xml, &wrapped)
            } else {
                append_to(xml, head, &wrapped)
            }
        }
    }
}

/// Sets (or adds) attribute `attr` on the element at `path`.
fn set_attr(xml: &str, path: &[&str], attr: &str, value: &str) -> Option<String> {
    let r = find(xml, path)?;
    let d = doc(xml);
    let node = d.descendants().find(|n| n.range() == r)?;
    if let Some(a) = node.attributes().find(|a| a.name() == attr) {
        return Some(splice(xml, a.range_value(), value));
    }
    let name_end = r.start + 1 + path.last().unwrap().len();
    Some(splice(
        xml,
        name_end..name_end,
        &format!(" {attr}='{value}'"),
    ))
}

/// Rewrites every attribute's quotes: `pick(i)` true → double quotes.
fn requote(xml: &str, pick: impl Fn(usize) -> bool) -> String {
    let d = doc(xml);
    let mut edits: Vec<(usize, char)> = Vec::new();
    for (i, a) in d
        .descendants()
        .filter(|n| n.is_element())
        .flat_map(|n| n.attributes())
        .enumerate()
    {
        let v = a.range_value();
        let raw = &xml[v.clone()];
        let q = if pick(i) { '"' } else { '\'' };
        if raw.contains(q) {
            continue;
        }
        edits.push((v.start - 1, q));
        edits.push((v.end, q));
    }
    let mut bytes = xml.as_bytes().to_vec();
    for (at, q) in edits {
        bytes[at] = q as u8;
    }
    String::from_utf8(bytes).unwrap()
}

// ---------------------------------------------------------------- variants

const VCPU_COUNTS: &[u32] = &[1, 2, 3, 4, 6, 8, 16, 24, 33, 64, 128, 255, 256, 384, 512];

const CPU_MODES: &[Option<&str>] = &[
    None,
    Some("host-passthrough"),
    Some("host-model"),
    Some("maximum"),
    Some("custom"),
];

const DISKS: &[(&str, &str)] = &[
    (
        "disk-file",
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback' io='threads'/><source file='/var/lib/libvirt/images/c.qcow2'/><target dev='vdw' bus='virtio'/></disk>",
    ),
    (
        "disk-block",
        "<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/><source dev='/dev/sdb'/><target dev='vdw' bus='virtio'/></disk>",
    ),
    (
        "disk-network-rbd",
        "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='writeback' discard='unmap'/><source protocol='rbd' name='pool/image'><host name='mon1' port='6789'/></source><target dev='vdw' bus='virtio'/></disk>",
    ),
    (
        "disk-volume",
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='default' volume='c.qcow2'/><target dev='vdw' bus='virtio'/></disk>",
    ),
    (
        "disk-dir-fat",
        "<disk type='dir' device='disk'><driver name='qemu' type='fat'/><source dir='/srv/share'/><target dev='hdw' bus='ide'/><readonly/></disk>",
    ),
    (
        "disk-cdrom",
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/c.iso'/><target dev='sdw' bus='sata'/><readonly/></disk>",
    ),
    (
        "disk-floppy",
        "<disk type='file' device='floppy'><driver name='qemu' type='raw' cache='unsafe'/><source file='/f.img'/><target dev='fdb' bus='fdc'/></disk>",
    ),
    (
        "disk-lun",
        "<disk type='block' device='lun'><driver name='qemu' type='raw' cache='directsync'/><source dev='/dev/sdc'/><target dev='sdw' bus='scsi'/><shareable/></disk>",
    ),
    (
        "disk-nvme",
        "<disk type='nvme' device='disk'><driver name='qemu' type='raw'/><source type='pci' managed='yes' namespace='1'><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source><target dev='vdw' bus='virtio'/></disk>",
    ),
    (
        "disk-vhostuser",
        "<disk type='vhostuser' device='disk'><driver name='qemu' type='raw'/><source type='unix' path='/tmp/vhost-blk.sock'><reconnect enabled='yes' timeout='10'/></source><target dev='vdw' bus='virtio'/></disk>",
    ),
    (
        "disk-no-driver",
        "<disk type='file'><source file='/x.raw'/><target dev='vdw'/></disk>",
    ),
];

const INTERFACES: &[(&str, &str)] = &[
    (
        "nic-network",
        "<interface type='network'><source network='default'/><model type='virtio'/></interface>",
    ),
    (
        "nic-bridge-queues",
        "<interface type='bridge'><source bridge='br0'/><model type='virtio'/><driver name='vhost' queues='16'/></interface>",
    ),
    (
        "nic-bridge-qemu-driver",
        "<interface type='bridge'><source bridge='br0'/><model type='virtio'/><driver name='qemu'/></interface>",
    ),
    (
        "nic-ethernet",
        "<interface type='ethernet'><target dev='tap7' managed='no'/><model type='virtio'/></interface>",
    ),
    (
        "nic-direct",
        "<interface type='direct'><source dev='eth0' mode='vepa'/><model type='virtio'/></interface>",
    ),
    (
        "nic-hostdev",
        "<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></interface>",
    ),
    (
        "nic-vhostuser",
        "<interface type='vhostuser'><source type='unix' path='/tmp/vhost.sock' mode='server'/><model type='virtio'/></interface>",
    ),
    (
        "nic-user-e1000",
        "<interface type='user'><model type='e1000'/></interface>",
    ),
    (
        "nic-vdpa",
        "<interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>",
    ),
];

/// Removes what a changed vCPU count would contradict.
fn without_vcpu_dependents(xml: &str) -> String {
    let mut x = remove(xml, &["cputune"]);
    x = remove(&x, &["numatune"]);
    x = remove(&x, &["cpu", "numa"]);
    x = remove(&x, &["cpu", "topology"]);
    x = remove(&x, &["iothreadids"]);
    x = remove(&x, &["iothreads"]);
    x
}

fn with_vcpus(xml: &str, n: u32, current: bool) -> String {
    let x = without_vcpu_dependents(xml);
    let current = if current {
        format!(" current='{}'", n.div_ceil(2))
    } else {
        String::new()
    };
    let elem = format!("<vcpu placement='static'{current}>{n}</vcpu>");
    match find(&x, &["vcpu"]) {
        Some(r) => splice(&x, r, &elem),
        None => append_to_root(&x, &elem),
    }
}

fn with_cpu_mode(xml: &str, mode: Option<&str>) -> Option<String> {
    match mode {
        None => find(xml, &["cpu"]).map(|r| splice(xml, r, "")),
        Some(m) => {
            if find(xml, &["cpu"]).is_some() {
                let x = set_attr(xml, &["cpu"], "mode", m)?;
                // A custom CPU needs a model; host modes take none.
                if m == "custom" && find(&x, &["cpu", "model"]).is_none() {
                    Some(append_to(&x, &["cpu"], "<model>qemu64</model>"))
                } else if m != "custom" {
                    Some(remove(&x, &["cpu", "model"]))
                } else {
                    Some(x)
                }
            } else if m == "custom" {
                Some(append_to_root(
                    xml,
                    "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>",
                ))
            } else {
                Some(append_to_root(xml, &format!("<cpu mode='{m}'/>")))
            }
        }
    }
}

const SAMPLE_CPUTUNE: &str = "<cputune><shares>2048</shares><vcpupin vcpu='0' cpuset='1'/><emulatorpin cpuset='1'/></cputune>";
const SAMPLE_NUMATUNE: &str = "<numatune><memory mode='strict' nodeset='0'/></numatune>";
const SAMPLE_BACKING: &str = "<memoryBacking><hugepages/><locked/></memoryBacking>";

fn toggle(xml: &str, name: &str, sample: &str) -> String {
    match find(xml, &[name]) {
        Some(r) => splice(xml, r, ""),
        None => append_to_root(xml, sample),
    }
}

fn syntax_variants(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (inner_start, inner_end) = root_inner(xml);
    // Comments and PIs between elements, first and last inside the root.
    let mut c = splice(xml, inner_end..inner_end, "<!-- before end --><?pi last?>");
    c = splice(
        &c,
        inner_start..inner_start,
        "<!-- first child: a comment -->",
    );
    if let Some(r) = find(&c, &["devices"]) {
        let at = r.start + c[r.clone()].find('>').unwrap() + 1;
        c = splice(&c, at..at, "<!-- <disk type='file'/> commented out -->");
    }
    if let Some(r) = find(&c, &["vcpu"]) {
        // Before the element (a comment inside its text would change its value).
        c = splice(&c, r.start..r.start, "<!--vcpu-->");
    }
    out.push(("comments-pis".into(), c));
    // Foreign namespaces: in metadata (valid), as attributes and elements inside
    // libvirt elements (schema-invalid, must still be left alone).
    out.push((
        "ns-metadata".into(),
        append_to(
            xml,
            &["metadata"],
            "<x:app xmlns:x='urn:example:app'><x:cputune><x:vcpupin vcpu='0'/></x:cputune><x:vcpu>99</x:vcpu></x:app>",
        ),
    ));
    let mut ns = splice(
        xml,
        inner_start - 1..inner_start - 1,
        " xmlns:q='urn:example:q' q:owner='x'",
    );
    if let Some(r) = find(&ns, &["devices"]) {
        let at = r.start + ns[r.clone()].find('>').unwrap() + 1;
        ns = splice(&ns, at..at, "<q:gadget><q:vcpu>7</q:vcpu></q:gadget>");
    }
    if find(&ns, &["cputune"]).is_some() {
        ns = append_to(&ns, &["cputune"], "<q:vcpupin vcpu='0' cpuset='0'/>");
    }
    out.push(("ns-odd-places".into(), ns));
    // The default namespace redeclared empty on the root (still libvirt's).
    out.push((
        "ns-empty-default".into(),
        splice(xml, inner_start - 1..inner_start - 1, " xmlns=''"),
    ));
    // CDATA and character references in values the planner reads.
    let mut cd = xml.to_string();
    if let Some(r) = find(&cd, &["name"]) {
        let d = doc(&cd);
        let name = d
            .descendants()
            .find(|n| n.range() == r)
            .and_then(|n| n.text())
            .unwrap_or("x")
            .to_string();
        if !name.contains(['&', '<', ']']) {
            cd = splice(&cd, r, &format!("<name><![CDATA[{name}]]></name>"));
        }
    }
    if let Some(r) = find(&cd, &["memory"]) {
        let d = doc(&cd);
        let node = d.descendants().find(|n| n.range() == r).unwrap();
        if let Some(t) = node.first_child().filter(|n| n.is_text()) {
            let text = t.text().unwrap().trim().to_string();
            cd = splice(&cd, t.range(), &format!("<![CDATA[{text}]]>"));
        }
    }
    out.push(("cdata".into(), cd));
    let mut refs = xml.to_string();
    if let Some(r) = find(&refs, &["vcpu"]) {
        let d = doc(&refs);
        let node = d.descendants().find(|n| n.range() == r).unwrap();
        if let Some(t) = node.first_child().filter(|n| n.is_text()) {
            let escaped: String = t
                .text()
                .unwrap()
                .chars()
                .map(|c| format!("&#{};", c as u32))
                .collect();
            refs = splice(&refs, t.range(), &escaped);
        }
    }
    // An attribute with references: the vcpu placement, hex form.
    if let Some(r) = find(&refs, &["vcpu"]) {
        let d = doc(&refs);
        let node = d.descendants().find(|n| n.range() == r).unwrap();
        if let Some(a) = node.attributes().find(|a| a.name() == "placement") {
            let escaped: String = a
                .value()
                .chars()
                .map(|c| format!("&#x{:x};", c as u32))
                .collect();
            refs = splice(&refs, a.range_value(), &escaped);
        }
    }
    out.push(("char-refs".into(), refs));
    out.push(("quotes-double".into(), requote(xml, |_| true)));
    out.push(("quotes-single".into(), requote(xml, |_| false)));
    out.push(("quotes-mixed".into(), requote(xml, |i| i % 2 == 0)));
    // Layout: one line, CRLF, tabs, a BOM, an XML declaration.
    let one: String = xml
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("")
        .replace("?><", "?>\n<");
    if roxmltree::Document::parse(&one).is_ok() {
        out.push(("one-line".into(), one));
    }
    out.push((
        "crlf".into(),
        xml.replace("\r\n", "\n").replace('\n', "\r\n"),
    ));
    out.push(("tabs".into(), xml.replace("  ", "\t")));
    if !xml.starts_with("<?xml") {
        out.push((
            "xml-decl".into(),
            format!("<?xml version='1.0' encoding='UTF-8' standalone='yes'?>\n{xml}"),
        ));
        out.push(("bom".into(), format!("\u{feff}{xml}")));
    }
    out
}

/// Every variant of one base document, labelled.
fn variants(base: &str) -> Vec<(String, String)> {
    let mut out = vec![("base".to_string(), base.to_string())];
    for &n in VCPU_COUNTS {
        out.push((format!("vcpus-{n}"), with_vcpus(base, n, false)));
        if n > 1 {
            out.push((format!("vcpus-{n}-current"), with_vcpus(base, n, true)));
        }
    }
    for mode in CPU_MODES {
        if let Some(x) = with_cpu_mode(base, *mode) {
            out.push((format!("cpu-{}", mode.unwrap_or("none")), x));
        }
    }
    out.push((
        "toggle-cputune".into(),
        toggle(base, "cputune", SAMPLE_CPUTUNE),
    ));
    out.push((
        "toggle-numatune".into(),
        toggle(base, "numatune", SAMPLE_NUMATUNE),
    ));
    out.push((
        "toggle-memorybacking".into(),
        toggle(base, "memoryBacking", SAMPLE_BACKING),
    ));
    let mut none = remove(base, &["cputune"]);
    none = remove(&none, &["numatune"]);
    none = remove(&none, &["memoryBacking"]);
    out.push(("without-all-tuning".into(), none));
    // Existing tuning emptied (`<cputune/>` etc.), as some tools leave it.
    let mut empty = base.to_string();
    for name in ["cputune", "numatune", "memoryBacking"] {
        empty = match find(&empty, &[name]) {
            Some(r) => splice(&empty, r, &format!("<{name}/>")),
            None => append_to_root(&empty, &format!("<{name}></{name}>")),
        };
    }
    out.push(("empty-tuning".into(), empty));
    // A device of each kind, replacing the base's own disks/NICs of that target.
    let bare_devices = remove_all(
        base,
        find_all(base, &["devices"], "disk")
            .into_iter()
            .chain(find_all(base, &["devices"], "interface"))
            .collect(),
    );
    for (label, disk) in DISKS.iter().chain(INTERFACES) {
        out.push((
            label.to_string(),
            append_to(&bare_devices, &["devices"], disk),
        ));
    }
    out.extend(syntax_variants(base));
    out
}

// ---------------------------------------------------------------- checks

#[derive(Default)]
struct Tally {
    variants: usize,
    pairs: usize,
    planned: usize,
    changed: usize,
    refused: BTreeMap<String, usize>,
    failures: Vec<String>,
    /// Validation sample: (what, input, output).
    sample: Vec<(String, String, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.variants += other.variants;
        self.pairs += other.pairs;
        self.planned += other.planned;
        self.changed += other.changed;
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.failures.extend(other.failures);
        self.sample.extend(other.sample);
    }
}

/// Hosts each variant runs on (rotating over the 13); `KVMTUNE_CORPUS_HOSTS=13`
/// runs every variant on every host (minutes in a debug build).
fn hosts_per_variant() -> usize {
    std::env::var("KVMTUNE_CORPUS_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Generates and checks every variant of one base.
fn check_base(
    index: usize,
    base_name: &str,
    base: &str,
    policy: &Policy,
    hosts: &[(String, Host)],
) -> Tally {
    let mut tally = Tally::default();
    let per_variant = hosts_per_variant().clamp(1, hosts.len());
    for (v, (label, xml)) in variants(base).into_iter().enumerate() {
        tally.variants += 1;
        let what = format!("{base_name}/{label}");
        assert!(
            roxmltree::Document::parse(&xml).is_ok(),
            "{what}: the generator made ill-formed XML"
        );
        for j in 0..per_variant {
            let (host_name, host) = &hosts[(index * 7 + v + j) % hosts.len()];
            let what = format!("{what} on {host_name}");
            tally.pairs += 1;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                plan_and_rewrite(policy, host, &Occupancy::default(), &xml)
            }));
            let once = match result {
                Err(_) => {
                    tally.failures.push(format!("{what}: PANIC"));
                    continue;
                }
                Ok(Err(e)) => {
                    let msg = format!("{e:#}");
                    let key = msg
                        .rsplit(": ")
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(70)
                        .collect::<String>();
                    *tally.refused.entry(format!("{label}: {key}")).or_default() += 1;
                    continue;
                }
                Ok(Ok((_, once))) => once,
            };
            tally.planned += 1;
            if once != xml {
                tally.changed += 1;
            }
            if let Err(e) = kvmtune_core::domain::Domain::parse(&once) {
                tally
                    .failures
                    .push(format!("{what}: output does not re-parse: {e}"));
                continue;
            }
            match plan_and_rewrite(policy, host, &Occupancy::default(), &once) {
                Ok((_, twice)) if twice == once => {}
                Ok(_) => tally.failures.push(format!("{what}: not idempotent")),
                Err(e) => tally
                    .failures
                    .push(format!("{what}: second pass failed: {e:#}")),
            }
            if rewrite_support::untouched_outline(&xml) != rewrite_support::untouched_outline(&once)
            {
                tally
                    .failures
                    .push(format!("{what}: content outside edited elements changed"));
            }
            // Schema sample: a third of the variants (all kinds, all bases).
            if j == 0 && (index + v).is_multiple_of(3) {
                tally.sample.push((what.clone(), xml.clone(), once));
            }
        }
    }
    tally
}

fn xmllint_available(schema: &Path) -> bool {
    schema.exists() && Command::new("xmllint").arg("--version").output().is_ok()
}

/// The files of `files` that fail validation (one xmllint process per 400 files,
/// its exit status checked).
fn invalid(schema: &Path, files: &[PathBuf]) -> Vec<PathBuf> {
    let mut bad = Vec::new();
    for chunk in files.chunks(400) {
        bad.extend(rewrite_support::xmllint_invalid(schema, chunk));
    }
    bad
}

#[test]
fn generated_corpus_plans_without_panics_idempotently_and_stays_schema_valid() {
    let started = Instant::now();
    let policy = Policy::shipped();
    let hosts = rewrite_support::fixture_hosts();
    let bases = bases();
    assert!(!bases.is_empty());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let mut tally = Tally::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (policy, hosts, bases) = (&policy, &hosts, &bases);
                scope.spawn(move || {
                    let mut t = Tally::default();
                    for (i, (name, base)) in bases.iter().enumerate().skip(w).step_by(workers) {
                        t.merge(check_base(i, name, base, policy, hosts));
                    }
                    t
                })
            })
            .collect();
        for h in handles {
            tally.merge(h.join().expect("a corpus worker panicked"));
        }
    });
    let planning = started.elapsed();
    let failures = &tally.failures;
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    // Refusals: no valid variant may be refused (`xmlns=''` on the root is the empty
    // namespace, libvirt's own, and must plan like no namespace).
    let unexpected: Vec<_> = tally.refused.keys().collect();
    assert!(
        unexpected.is_empty(),
        "unexpected plan errors: {unexpected:#?}"
    );
    let sample = &tally.sample;

    // Schema: every sampled output whose input validated must validate.
    let schema = Path::new("/usr/share/libvirt/schemas/domain.rng");
    let mut validated = (0, 0, 0);
    if xmllint_available(schema) {
        let dir = tempfile::tempdir().unwrap();
        let inputs: Vec<PathBuf> = sample
            .iter()
            .enumerate()
            .map(|(i, (_, input, _))| {
                let p = dir.path().join(format!("in{i}.xml"));
                std::fs::write(&p, input).unwrap();
                p
            })
            .collect();
        let bad_inputs = invalid(schema, &inputs);
        let mut outputs = Vec::new();
        let mut origin = BTreeMap::new();
        for (i, (what, _, output)) in sample.iter().enumerate() {
            if bad_inputs.contains(&inputs[i]) {
                continue;
            }
            let p = dir.path().join(format!("out{i}.xml"));
            std::fs::write(&p, output).unwrap();
            origin.insert(p.clone(), what.clone());
            outputs.push(p);
        }
        assert!(
            !outputs.is_empty(),
            "no sampled input validated against libvirt's schema"
        );
        let bad_outputs = invalid(schema, &outputs);
        let named: Vec<&String> = bad_outputs.iter().map(|p| &origin[p]).collect();
        assert!(
            named.is_empty(),
            "outputs that no longer validate though their input did: {named:#?}"
        );
        validated = (sample.len(), bad_inputs.len(), outputs.len());
    } else {
        rewrite_support::schema_tools_missing("corpus");
    }
    let refused: usize = tally.refused.values().sum();
    eprintln!(
        "corpus: {} base documents, {} variants, {} variant×host pairs ({} host(s) per variant, {workers} threads): {} planned ({} changed), {} refused with an error, 0 panics, all idempotent and untouched outside edits; schema sample: {} inputs ({} invalid by construction), {} outputs validated; planning {:?}, total {:?}",
        bases.len(),
        tally.variants,
        tally.pairs,
        hosts_per_variant(),
        tally.planned,
        tally.changed,
        refused,
        validated.0,
        validated.1,
        validated.2,
        planning,
        started.elapsed()
    );
    for (why, n) in &tally.refused {
        eprintln!("  refused {n}× {why}");
    }
}
