//! Applies planned [`Change`]s to libvirt domain XML *text*, touching only the
//! edited elements: every other byte stays identical, and rewriting the output
//! again with the same changes changes nothing (`apply(apply(x, c), c) ==
//! apply(x, c)`; a change that is already satisfied changes no byte).
//!
//! How: roxmltree parses the text and gives the byte range of every element and
//! attribute; each change becomes a few "replace this range with that text"
//! edits, spliced into the original string (the `splice` submodule). Changes are
//! applied in order; consecutive changes whose scopes are disjoint (different
//! disks, `<cpu>` and `<cputune>`, ...) are computed against one parse, and a
//! change whose scope is taken starts a new batch on the spliced text, so the
//! result equals applying the changes one at a time (tested). The result is
//! parsed again before it is returned.
//!
//! Only elements in no namespace (libvirt's own vocabulary) are looked at or
//! edited, plus kvmtune's own pins mark ([`crate::pins_mark`]); other
//! `<metadata>` content and foreign-namespace elements are never touched. Indexes of disks and interfaces count `devices/disk` and
//! `devices/interface` in document order.
//!
//! # Preserved byte for byte
//! Everything outside the edited spans: the XML declaration, processing
//! instructions, comments (also those inside edited elements), foreign-namespace
//! metadata and its prefixes, attribute order, quote characters and spacing
//! inside tags, entity and character references, CDATA sections, indentation,
//! line breaks (`\n` or `\r\n`), an indented root, text after the root, and the
//! attributes of an edited element that the change does not name.
//!
//! # Not preserved, on purpose
//! - An attribute value the change sets is rewritten in canonical form
//!   (`cpuset='0-3,8'`, `unit='KiB'`), keeping its quote character; entity
//!   references inside that value are lost. A value that already means the same
//!   (`1,2,3` for `1-3`, `2` `M` hugepages for 2048 KiB, no `mode` for `strict`)
//!   is left as it is.
//! - A new attribute is appended at the end of the start tag (after any `xmlns`
//!   declarations) with the quote of the element's first attribute, or of the
//!   root element when it has none (libvirt writes `'`; default `'`).
//! - A new element takes the indentation of its siblings, or its parent's plus
//!   the document's indentation step (detected from the root's first child;
//!   default two spaces); in a document written on one line it gets no
//!   whitespace. It goes where `virsh dumpxml` puts it (see the `order`
//!   submodule), e.g. `<cputune>` after `<vcpu>`/`<iothreads>`, `<driver>` first
//!   in a `<disk>` and after `<model>` in an `<interface>`.
//! - A self-closed element that gains children (`<cputune/>`) is expanded into a
//!   start and an end tag; a `<cpu>` that loses all its children collapses to a
//!   self-closed tag.
//! - A removed attribute takes the whitespace before it; a removed element
//!   takes the line break and indentation before it, so a comment that followed
//!   it on its line moves to the previous line.
//! - A DOCTYPE is refused (roxmltree's default; libvirt never writes one).
//!
//! # What each change does
//! See [`Change`]. The edits specific to one tuning rule (`DiskDriver`,
//! `NoSharePages`, `HugePages`, `InterfaceDriver`, `CpuHostModel`) are written
//! by that rule's module in [`crate::rules`]; this module dispatches to them and
//! holds the placement edits. Choices the plan leaves to the rewrite:
//! - `VcpuPins`: `<vcpu placement='auto'>` becomes `placement='static'` (libvirt
//!   ignores `cpuset` under `auto`); `current` is kept; a missing `<vcpu>` is
//!   created as `<vcpu placement='static' cpuset='…'>1</vcpu>` (libvirt's default
//!   count). Every existing `<vcpupin>` whose vCPU is not in the plan is removed.
//! - `IothreadPins`: sets or adds the listed iothreads' pins, keeps the others.
//! - `PinsMark`: replaces kvmtune's pins mark in `<metadata>`, or appends it
//!   (`<metadata>` created where libvirt writes it); the mark is the one
//!   element there kvmtune writes.
//! - `NumaMemory`: `placement='auto'` is removed from `<memory>`; `mode: off`
//!   leaves the XML alone.
//! - `DiskDriver` / `InterfaceDriver`: `target` guards against XML that is not
//!   the one the plan was made from: when it is not empty and the disk at
//!   `index` has a different `<target dev>` (an interface: neither its
//!   `<target dev>` nor its `<mac address>` matches, unless `target` is the
//!   `interface #N` fallback label), the change is refused as
//!   [`RewriteError::Missing`].
//!   A missing disk `<driver>` is created as `<driver name='qemu' cache=… io=…/>`
//!   without `type` (libvirt then uses its default, raw).
//! - `HugePages`: sets the `<page>` without `nodeset` (per-node pages are kept),
//!   or adds one; `<hugepages/>` (host default size) gets an explicit page.
//! - `CpuHostModel`: only `mode='host-passthrough'` is rewritten; `check` and
//!   `migratable` are removed, and so are the children libvirt refuses or
//!   reinterprets under host-model: `<model>` (a named model turns host-model
//!   into custom on migration), `<vendor>` (refused without a model), and
//!   `<cache mode='passthrough'>` / `<maxphysaddr mode='passthrough'>` (only valid
//!   for host-passthrough). `<topology>`, `<feature>`, `<numa>` and other
//!   `<cache>`/`<maxphysaddr>` are kept.
//! - `GuestNuma`: a missing `<cpu>` is created holding only `<numa>` (valid:
//!   libvirt keeps the default CPU model); `<numa>` goes after `<feature>`. A
//!   `<cell>` / `<memnode>` with the cell's id is updated in place (`cpus`,
//!   `memory` — with `unit='KiB'` when it has a unit —, `mode`, `nodeset`), a
//!   missing one is added in id order; cells and memnodes of other ids are
//!   kept. A `<cell>` without `id` counts by position, as libvirt numbers it.

// The rule-specific edits (disk driver, memory backing pages, interface
// driver, CPU mode) live with their rules in crate::rules and use these.
pub(crate) mod order;
pub(crate) mod shared;
pub(crate) mod splice;

pub use self::shared::RewriteError;
use self::shared::{same_text, size_in_kib};

use std::collections::{BTreeMap, BTreeSet};

use roxmltree::{Document, Node};

use self::splice::{Anchor, Editor, Elem, anchor_in, attribute, child, children};
use crate::cpuset::CpuSet;
use crate::pins_mark::{self, Mark};
use crate::plan_model::{Change, GuestCell};
use crate::policy::MemoryMode;
use crate::rules::{cpu_mode, disk_cache, hugepages, nosharepages, vhost_multiqueue};

/// Applies `changes` to `xml`, in order. With no changes the input is only
/// checked (well-formed, a `<domain>`) and returned unchanged.
pub fn apply(xml: &str, changes: &[Change]) -> Result<String, RewriteError> {
    let mut text = xml.to_owned();
    let mut rest = changes;
    let mut first = true;
    loop {
        let doc = match parse(&text) {
            Ok(doc) => doc,
            // Never hand out broken XML, whatever went wrong in a rewrite.
            Err(e) if !first => {
                return Err(RewriteError::Invalid(format!(
                    "internal rewrite error: the output does not parse: {e}"
                )));
            }
            Err(e) => return Err(e),
        };
        first = false;
        let root = domain_root(&doc)?;
        if rest.is_empty() {
            break;
        }
        // Changes whose scopes are disjoint share one parse (a hook applies
        // dozens of disk changes; a parse of a big domain costs ~50 µs). A
        // change whose scope is taken starts the next batch on the new text,
        // exactly as if every change had been applied on its own.
        let mut ed = Editor::new(&text, root);
        let mut taken = BTreeSet::new();
        let mut done = 0;
        for change in rest {
            let scopes = scopes(root, change);
            if done > 0 && scopes.iter().any(|s| taken.contains(s)) {
                break;
            }
            apply_change(&mut ed, root, change)?;
            taken.extend(scopes);
            done += 1;
        }
        rest = &rest[done..];
        let next = ed.finish()?;
        drop(doc);
        text = next;
    }
    Ok(text)
}

/// The parts of the document a change may edit; changes with disjoint scopes
/// can be computed against the same parse without their edits meeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// Inserting a new child of `<domain>` (two of those could land at the same
    /// position, in the wrong order).
    DomainChild,
    Vcpu,
    Cputune,
    Metadata,
    Numatune,
    MemoryBacking,
    Cpu,
    Disk(usize),
    Interface(usize),
}

fn scopes(root: Node<'_, '_>, change: &Change) -> Vec<Scope> {
    let container = |name: &str, scope: Scope| {
        if child(root, name).is_some() {
            vec![scope]
        } else {
            vec![scope, Scope::DomainChild]
        }
    };
    match change {
        Change::VcpuPins { .. } => {
            let mut s = container("cputune", Scope::Cputune);
            s.extend(container("vcpu", Scope::Vcpu));
            s
        }
        Change::EmulatorPin { .. } | Change::IothreadPins { .. } => {
            container("cputune", Scope::Cputune)
        }
        Change::PinsMark { .. } => container("metadata", Scope::Metadata),
        Change::NumaMemory { .. } => container("numatune", Scope::Numatune),
        Change::NoSharePages | Change::HugePages { .. } => {
            container("memoryBacking", Scope::MemoryBacking)
        }
        Change::CpuHostModel => vec![Scope::Cpu],
        Change::GuestNuma { .. } => {
            let mut s = container("numatune", Scope::Numatune);
            s.extend(container("cpu", Scope::Cpu));
            s
        }
        Change::DiskDriver { index, .. } => vec![Scope::Disk(*index)],
        Change::InterfaceDriver { index, .. } => vec![Scope::Interface(*index)],
    }
}

fn parse(xml: &str) -> Result<Document<'_>, RewriteError> {
    Document::parse(xml).map_err(|e| RewriteError::Xml(e.to_string()))
}

fn domain_root<'a, 'i>(doc: &'a Document<'i>) -> Result<Node<'a, 'i>, RewriteError> {
    let root = doc.root_element();
    let name = root.tag_name();
    match name.namespace() {
        None | Some("") if name.name() == "domain" => Ok(root),
        None | Some("") => Err(RewriteError::NotADomain(name.name().to_owned())),
        Some(ns) => Err(RewriteError::NotADomain(format!(
            "{} xmlns=\"{ns}\"",
            name.name()
        ))),
    }
}

fn apply_change(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    change: &Change,
) -> Result<(), RewriteError> {
    match change {
        Change::VcpuPins { cpuset, pins } => {
            let pins: BTreeMap<u32, &CpuSet> = pins.iter().map(|p| (p.vcpu, &p.cpuset)).collect();
            vcpu_pins(ed, root, cpuset, &pins)?;
        }
        Change::EmulatorPin { cpuset } => emulator_pin(ed, root, cpuset)?,
        Change::IothreadPins { pins } => {
            let pins: BTreeMap<u32, &CpuSet> =
                pins.iter().map(|p| (p.iothread, &p.cpuset)).collect();
            sync_pins(ed, root, IOTHREADPIN, &pins)?;
        }
        Change::PinsMark { mark } => mark_pins(ed, root, mark),
        Change::NumaMemory { mode, nodeset } => numa_memory(ed, root, *mode, nodeset)?,
        Change::DiskDriver {
            index,
            target,
            cache,
            io,
        } => disk_cache::rewrite(ed, root, *index, target, *cache, *io)?,
        Change::NoSharePages => nosharepages::rewrite(ed, root),
        Change::HugePages { size_kib } => hugepages::rewrite(ed, root, *size_kib)?,
        Change::InterfaceDriver {
            index,
            target,
            vhost,
            queues,
        } => vhost_multiqueue::rewrite(ed, root, *index, target, *vhost, *queues)?,
        Change::CpuHostModel => cpu_mode::rewrite(ed, root)?,
        Change::GuestNuma { cells } => guest_numa(ed, root, cells)?,
    }
    Ok(())
}

// ---- value helpers ------------------------------------------------------------

fn nonempty(set: &CpuSet, what: &str) -> Result<String, RewriteError> {
    if set.is_empty() {
        return Err(RewriteError::Invalid(format!("{what} is an empty cpuset")));
    }
    Ok(set.to_string())
}

/// Whether an existing cpulist value names exactly `set`.
fn same_cpuset(set: &CpuSet) -> impl Fn(&str) -> bool + '_ {
    move |v| CpuSet::parse(v.trim()).is_ok_and(|s| s == *set)
}

fn memory_mode_value(mode: MemoryMode) -> Option<&'static str> {
    match mode {
        MemoryMode::Preferred => Some("preferred"),
        MemoryMode::Strict => Some("strict"),
        MemoryMode::Restrictive => Some("restrictive"),
        MemoryMode::Interleave => Some("interleave"),
        MemoryMode::Off => None,
    }
}

// ---- cputune ------------------------------------------------------------------

/// One kind of pin element in `<cputune>`.
struct PinKind {
    element: &'static str,
    key: &'static str,
    /// Whether pins for ids the change does not list are removed.
    remove_others: bool,
}

const VCPUPIN: PinKind = PinKind {
    element: "vcpupin",
    key: "vcpu",
    remove_others: true,
};

const IOTHREADPIN: PinKind = PinKind {
    element: "iothreadpin",
    key: "iothread",
    remove_others: false,
};

fn vcpu_pins(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    cpuset: &CpuSet,
    pins: &BTreeMap<u32, &CpuSet>,
) -> Result<(), RewriteError> {
    let value = nonempty(cpuset, "the vCPU cpuset")?;
    match child(root, "vcpu") {
        Some(vcpu) => {
            ed.set_attr(vcpu, "cpuset", &value, same_cpuset(cpuset))?;
            if attribute(vcpu, "placement").is_some_and(|a| a.value().trim() == "auto") {
                ed.set_attr(vcpu, "placement", "static", same_text("static"))?;
            }
        }
        None => {
            let vcpu = Elem::new("vcpu")
                .attr("placement", "static")
                .attr("cpuset", value)
                .text("1");
            ed.insert(anchor_in(root, order::DOMAIN, "vcpu", |_| false), &[vcpu]);
        }
    }
    sync_pins(ed, root, VCPUPIN, pins)
}

/// Writes `mark` as the pins mark in `<metadata>` ([`crate::pins_mark`]): an
/// existing mark is replaced unless it already reads the same; a missing one is
/// appended to `<metadata>` (created where libvirt writes it). Nothing else in
/// `<metadata>` is touched.
fn mark_pins(ed: &mut Editor<'_>, root: Node<'_, '_>, mark: &Mark) {
    let metadata = child(root, "metadata");
    let existing = metadata.and_then(pins_mark::element);
    let old = existing.and_then(|n| Mark::parse(&crate::domain::text_of(n)));
    if old.as_ref() == Some(mark) {
        return;
    }
    let elem = Elem::new(pins_mark::QUALIFIED)
        .attr(pins_mark::XMLNS, pins_mark::NAMESPACE)
        .text(mark.format());
    match (metadata, existing) {
        (_, Some(node)) => ed.replace(
            node.range(),
            format!(
                "<{q} {x}='{ns}'>{text}</{q}>",
                q = pins_mark::QUALIFIED,
                x = pins_mark::XMLNS,
                ns = pins_mark::NAMESPACE,
                text = mark.format(),
            ),
        ),
        (Some(metadata), None) => ed.insert(
            anchor_in(metadata, &[], pins_mark::ELEMENT, |_| false),
            &[elem],
        ),
        (None, None) => ed.insert(
            anchor_in(root, order::DOMAIN, "metadata", |_| false),
            &[Elem::new("metadata").children([elem])],
        ),
    }
}

/// Makes the `kind` pins in `<cputune>` match `pins`: existing ones are updated
/// in place, missing ones inserted in id order next to their neighbours.
fn sync_pins(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    kind: PinKind,
    pins: &BTreeMap<u32, &CpuSet>,
) -> Result<(), RewriteError> {
    let mut values = BTreeMap::new();
    for (id, set) in pins {
        values.insert(*id, nonempty(set, &format!("{} {id}", kind.element))?);
    }
    let pin_elem = |id: u32| {
        Elem::new(kind.element)
            .attr(kind.key, id.to_string())
            .attr("cpuset", values[&id].clone())
    };
    let Some(cputune) = child(root, "cputune") else {
        if !pins.is_empty() {
            let cputune = Elem::new("cputune").children(pins.keys().map(|id| pin_elem(*id)));
            ed.insert(
                anchor_in(root, order::DOMAIN, "cputune", |_| false),
                &[cputune],
            );
        }
        return Ok(());
    };

    let mut seen = BTreeSet::new();
    let mut kept: Vec<(Node<'_, '_>, u32)> = Vec::new();
    let mut removed = BTreeSet::new();
    for pin in children(cputune, kind.element) {
        let id = attribute(pin, kind.key).and_then(|a| a.value().trim().parse::<u32>().ok());
        match id {
            Some(id) if pins.contains_key(&id) && seen.insert(id) => {
                ed.set_attr(pin, "cpuset", &values[&id], same_cpuset(pins[&id]))?;
                kept.push((pin, id));
            }
            Some(id) if !pins.contains_key(&id) && !kind.remove_others => kept.push((pin, id)),
            None if !kind.remove_others => {}
            // Not planned (vcpupin), a duplicate, or an unreadable id.
            _ => {
                ed.remove_element(pin);
                removed.insert(pin.range().start);
            }
        }
    }

    let mut groups: Vec<(Anchor<'_, '_>, Vec<Elem>)> = Vec::new();
    for id in pins.keys().filter(|id| !seen.contains(*id)) {
        let anchor = match kept.iter().rev().find(|(_, k)| k < id) {
            Some((node, _)) => Anchor::After(*node),
            None => match kept.first() {
                Some((node, _)) => Anchor::Before(*node),
                None => anchor_in(cputune, order::CPUTUNE, kind.element, |n| {
                    removed.contains(&n.range().start)
                }),
            },
        };
        match groups.iter_mut().find(|(a, _)| a.key() == anchor.key()) {
            Some((_, elems)) => elems.push(pin_elem(*id)),
            None => groups.push((anchor, vec![pin_elem(*id)])),
        }
    }
    for (anchor, elems) in groups {
        ed.insert(anchor, &elems);
    }
    Ok(())
}

fn emulator_pin(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    cpuset: &CpuSet,
) -> Result<(), RewriteError> {
    let value = nonempty(cpuset, "the emulator cpuset")?;
    let pin = || Elem::new("emulatorpin").attr("cpuset", value.clone());
    match child(root, "cputune") {
        None => {
            let cputune = Elem::new("cputune").children([pin()]);
            ed.insert(
                anchor_in(root, order::DOMAIN, "cputune", |_| false),
                &[cputune],
            );
        }
        Some(cputune) => match child(cputune, "emulatorpin") {
            Some(existing) => ed.set_attr(existing, "cpuset", &value, same_cpuset(cpuset))?,
            None => ed.insert(
                anchor_in(cputune, order::CPUTUNE, "emulatorpin", |_| false),
                &[pin()],
            ),
        },
    }
    Ok(())
}

// ---- numatune, memoryBacking ----------------------------------------------------

fn numa_memory(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    mode: MemoryMode,
    nodeset: &CpuSet,
) -> Result<(), RewriteError> {
    let Some(mode) = memory_mode_value(mode) else {
        return Ok(());
    };
    let value = nonempty(nodeset, "the memory nodeset")?;
    let memory = || {
        Elem::new("memory")
            .attr("mode", mode)
            .attr("nodeset", value.clone())
    };
    let Some(numatune) = child(root, "numatune") else {
        let numatune = Elem::new("numatune").children([memory()]);
        ed.insert(
            anchor_in(root, order::DOMAIN, "numatune", |_| false),
            &[numatune],
        );
        return Ok(());
    };
    let Some(existing) = child(numatune, "memory") else {
        ed.insert(
            anchor_in(numatune, order::NUMATUNE, "memory", |_| false),
            &[memory()],
        );
        return Ok(());
    };
    // An absent mode means strict.
    let mode_ok = move |v: &str| v.trim() == mode;
    match attribute(existing, "mode") {
        None if mode == "strict" => {}
        _ => ed.set_attr(existing, "mode", mode, mode_ok)?,
    }
    if attribute(existing, "placement").is_some_and(|a| a.value().trim() == "auto") {
        ed.remove_attr(existing, "placement");
    }
    ed.set_attr(existing, "nodeset", &value, same_cpuset(nodeset))
}

// ---- devices ------------------------------------------------------------------

// ---- guest NUMA -------------------------------------------------------------------

/// Each planned cell by id: the cell, its `cpus` value and its memnode mode.
type Cells<'c> = BTreeMap<u32, (&'c GuestCell, String, &'static str)>;

fn guest_numa(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    cells: &[GuestCell],
) -> Result<(), RewriteError> {
    let by_id = cells_by_id(cells)?;
    if by_id.is_empty() {
        return Ok(());
    }
    let ids: Vec<u32> = by_id.keys().copied().collect();

    // New containers, numatune first: when both go to the same place (a bare
    // domain), one insertion keeps libvirt's order.
    let mut new_children = Vec::new();
    match child(root, "numatune") {
        None => new_children.push((
            anchor_in(root, order::DOMAIN, "numatune", |_| false),
            Elem::new("numatune").children(ids.iter().map(|id| memnode_elem(&by_id, *id))),
        )),
        Some(numatune) => sync_memnodes(ed, numatune, &by_id, &ids)?,
    }
    let numa = || Elem::new("numa").children(ids.iter().map(|id| cell_elem(&by_id, *id)));
    match child(root, "cpu") {
        None => new_children.push((
            anchor_in(root, order::DOMAIN, "cpu", |_| false),
            Elem::new("cpu").children([numa()]),
        )),
        Some(cpu) => match child(cpu, "numa") {
            None => ed.insert(anchor_in(cpu, order::CPU, "numa", |_| false), &[numa()]),
            Some(existing) => sync_cells(ed, existing, &by_id, &ids)?,
        },
    }
    let mut groups: Vec<(Anchor<'_, '_>, Vec<Elem>)> = Vec::new();
    for (anchor, elem) in new_children {
        match groups.iter_mut().find(|(a, _)| a.key() == anchor.key()) {
            Some((_, elems)) => elems.push(elem),
            None => groups.push((anchor, vec![elem])),
        }
    }
    for (anchor, elems) in groups {
        ed.insert(anchor, &elems);
    }
    Ok(())
}

/// The planned cells by id, each checked: vCPUs, memory, a memory mode, an id
/// named once.
fn cells_by_id(cells: &[GuestCell]) -> Result<Cells<'_>, RewriteError> {
    let mut by_id = Cells::new();
    for cell in cells {
        let cpus = nonempty(&cell.vcpus, &format!("guest NUMA cell {}", cell.id))?;
        if cell.memory_kib == 0 {
            return Err(RewriteError::Invalid(format!(
                "guest NUMA cell {} has no memory",
                cell.id
            )));
        }
        let mode = memory_mode_value(cell.mode).ok_or_else(|| {
            RewriteError::Invalid(format!("guest NUMA cell {}: memory mode off", cell.id))
        })?;
        if by_id.insert(cell.id, (cell, cpus, mode)).is_some() {
            return Err(RewriteError::Invalid(format!(
                "guest NUMA cell {} named twice",
                cell.id
            )));
        }
    }
    Ok(by_id)
}

/// A new `<cell>` in `<cpu><numa>`.
fn cell_elem(by_id: &Cells<'_>, id: u32) -> Elem {
    let (cell, cpus, _) = &by_id[&id];
    Elem::new("cell")
        .attr("id", id.to_string())
        .attr("cpus", cpus.clone())
        .attr("memory", cell.memory_kib.to_string())
        .attr("unit", "KiB")
}

/// A new `<memnode>` in `<numatune>`.
fn memnode_elem(by_id: &Cells<'_>, id: u32) -> Elem {
    let (cell, _, mode) = &by_id[&id];
    Elem::new("memnode")
        .attr("cellid", id.to_string())
        .attr("mode", *mode)
        .attr("nodeset", cell.host_node.to_string())
}

/// The `<memnode>`s of an existing `<numatune>`: one per cell, mode and nodeset
/// as planned.
fn sync_memnodes(
    ed: &mut Editor<'_>,
    numatune: Node<'_, '_>,
    by_id: &Cells<'_>,
    ids: &[u32],
) -> Result<(), RewriteError> {
    let memnodes = children(numatune, "memnode").map(|n| {
        let id = attribute(n, "cellid").and_then(|a| a.value().trim().parse().ok());
        (n, id)
    });
    sync_by_id(
        ed,
        numatune,
        order::NUMATUNE,
        "memnode",
        memnodes.collect(),
        ids,
        &|id| memnode_elem(by_id, id),
        |ed, node, id| {
            let (cell, _, mode) = &by_id[&id];
            match attribute(node, "mode") {
                // An absent mode means strict.
                None if *mode == "strict" => {}
                _ => ed.set_attr(node, "mode", mode, same_text(mode))?,
            }
            let node_set = CpuSet::single(cell.host_node);
            ed.set_attr(
                node,
                "nodeset",
                &node_set.to_string(),
                same_cpuset(&node_set),
            )
        },
    )
}

/// The `<cell>`s of an existing `<cpu><numa>`: one per cell, cpus and memory as
/// planned. A `<cell>` without `id` counts by position, as libvirt numbers it.
fn sync_cells(
    ed: &mut Editor<'_>,
    numa: Node<'_, '_>,
    by_id: &Cells<'_>,
    ids: &[u32],
) -> Result<(), RewriteError> {
    let cells = children(numa, "cell").enumerate().map(|(i, n)| {
        let id = match attribute(n, "id") {
            Some(a) => a.value().trim().parse().ok(),
            None => u32::try_from(i).ok(),
        };
        (n, id)
    });
    sync_by_id(
        ed,
        numa,
        order::NUMA,
        "cell",
        cells.collect(),
        ids,
        &|id| cell_elem(by_id, id),
        |ed, node, id| {
            let (cell, cpus, _) = &by_id[&id];
            ed.set_attr(node, "cpus", cpus, same_cpuset(&cell.vcpus))?;
            let unit = attribute(node, "unit").map(|u| u.value());
            let current = attribute(node, "memory").and_then(|m| size_in_kib(m.value(), unit));
            if current != Some(cell.memory_kib) {
                ed.set_attr(node, "memory", &cell.memory_kib.to_string(), |_| false)?;
                if unit.is_some() {
                    ed.set_attr(node, "unit", "KiB", same_text("KiB"))?;
                }
            }
            Ok(())
        },
    )
}

/// Makes the children `name` of `parent` (each with its id, `None` when
/// unreadable) hold one element per id in `ids`: the first with an id is
/// updated by `update`, a missing one is made by `make` and inserted next to
/// its neighbours in id order. Others are kept.
#[allow(clippy::too_many_arguments)]
fn sync_by_id<'a, 'i>(
    ed: &mut Editor<'_>,
    parent: Node<'a, 'i>,
    order: &[&str],
    name: &str,
    existing: Vec<(Node<'a, 'i>, Option<u32>)>,
    ids: &[u32],
    make: &dyn Fn(u32) -> Elem,
    update: impl Fn(&mut Editor<'_>, Node<'a, 'i>, u32) -> Result<(), RewriteError>,
) -> Result<(), RewriteError> {
    let mut seen = BTreeSet::new();
    let mut kept: Vec<(Node<'a, 'i>, u32)> = Vec::new();
    for (node, id) in existing {
        let Some(id) = id else { continue };
        if ids.contains(&id) && seen.insert(id) {
            update(ed, node, id)?;
        }
        kept.push((node, id));
    }
    let mut groups: Vec<(Anchor<'a, 'i>, Vec<Elem>)> = Vec::new();
    for id in ids.iter().filter(|id| !seen.contains(*id)) {
        let anchor = match kept.iter().rev().find(|(_, k)| k < id) {
            Some((node, _)) => Anchor::After(*node),
            None => match kept.iter().find(|(_, k)| k > id) {
                Some((node, _)) => Anchor::Before(*node),
                None => anchor_in(parent, order, name, |_| false),
            },
        };
        match groups.iter_mut().find(|(a, _)| a.key() == anchor.key()) {
            Some((_, elems)) => elems.push(make(*id)),
            None => groups.push((anchor, vec![make(*id)])),
        }
    }
    for (anchor, elems) in groups {
        ed.insert(anchor, &elems);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_convert_like_libvirt() {
        assert_eq!(size_in_kib("2048", None), Some(2048));
        assert_eq!(size_in_kib("2", Some("M")), Some(2048));
        assert_eq!(size_in_kib("2", Some("MiB")), Some(2048));
        assert_eq!(size_in_kib("1", Some("G")), Some(1_048_576));
        assert_eq!(size_in_kib("1", Some("GiB")), Some(1_048_576));
        assert_eq!(size_in_kib("2048", Some("KiB")), Some(2048));
        assert_eq!(size_in_kib("2048", Some("k")), Some(2048));
        assert_eq!(size_in_kib("2097152", Some("bytes")), Some(2048));
        assert_eq!(size_in_kib("1024000", Some("KB")), Some(1_000_000));
        assert_eq!(size_in_kib("1", Some("KB")), None);
        assert_eq!(size_in_kib("1", Some("furlong")), None);
        assert_eq!(size_in_kib("x", None), None);
    }
}
