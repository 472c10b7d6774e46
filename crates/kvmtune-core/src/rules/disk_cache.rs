//! Rule 2.1, disk cache: every disk with the qemu driver gets the policy's cache
//! mode (`cache='none'` by default, Nova's default too) and, for disks backed by
//! a file, block device or volume, its I/O mode (`io='native'`, which QEMU only
//! accepts with `O_DIRECT`: cache `none` or `directsync`). Owns the keys, the
//! per-disk decision shared by the plan step and the conformance check, the
//! reason texts and the `<disk><driver>` edit.

use roxmltree::Node;

use super::all_met;
use crate::domain::{Disk, Domain};
use crate::plan_model::{Change, Planner};
use crate::policy::{DiskCache, DiskIo, Settings};
use crate::rewrite::shared::{RewriteError, device, same_text};
use crate::rewrite::splice::{self, Editor, Elem, attribute, child};

pub const ID: &str = "2.1";
pub const KEY_CACHE: &str = "defaults.disk_cache";
pub const KEY_IO: &str = "defaults.disk_io";

/// libvirt's name for a disk cache mode.
pub fn cache_name(cache: DiskCache) -> &'static str {
    match cache {
        DiskCache::None => "none",
        DiskCache::Writethrough => "writethrough",
        DiskCache::Writeback => "writeback",
        DiskCache::Directsync => "directsync",
        DiskCache::Unsafe => "unsafe",
        DiskCache::Keep => "keep",
    }
}

/// libvirt's name for a disk io mode.
pub fn io_name(io: DiskIo) -> &'static str {
    match io {
        DiskIo::Native => "native",
        DiskIo::Threads => "threads",
        DiskIo::IoUring => "io_uring",
        DiskIo::Keep => "keep",
    }
}

/// What the rule says about one disk: a note (something left alone, and why)
/// and/or a change with its reason.
#[derive(Default)]
struct Decision {
    note: Option<String>,
    change: Option<(Change, String)>,
}

fn decide(index: usize, disk: &Disk, settings: &Settings) -> Decision {
    let mut decision = Decision::default();
    // CD-ROMs, floppies and LUNs have no cache worth setting.
    if disk.device != "disk" {
        return decision;
    }
    if disk.driver_name.as_deref().is_some_and(|n| n != "qemu") {
        decision.note = Some(format!(
            "disk {}: driver '{}' is not qemu; left alone",
            disk.target,
            disk.driver_name.as_deref().unwrap_or("")
        ));
        return decision;
    }
    let (cache, io) = (settings.disk_cache, settings.disk_io);
    let want_cache = (cache != DiskCache::Keep && disk.cache.as_deref() != Some(cache_name(cache)))
        .then_some(cache);
    let effective_cache = match want_cache {
        Some(c) => Some(cache_name(c)),
        None => disk.cache.as_deref(),
    };
    let direct = matches!(effective_cache, Some("none") | Some("directsync"));
    let io_applies = matches!(disk.source_type.as_str(), "file" | "block" | "volume");
    let want_io = if io == DiskIo::Keep || !io_applies || disk.io.as_deref() == Some(io_name(io)) {
        None
    } else if io == DiskIo::Native && !direct {
        decision.note = Some(format!(
            "disk {}: io='native' needs cache none or directsync; io left alone",
            disk.target
        ));
        None
    } else {
        Some(io)
    };
    if want_cache.is_none() && want_io.is_none() {
        return decision;
    }
    let mut what = Vec::new();
    if let Some(c) = want_cache {
        what.push(format!(
            "cache='{}' (was {})",
            cache_name(c),
            disk.cache.as_deref().unwrap_or("default")
        ));
    }
    if let Some(i) = want_io {
        what.push(format!("io='{}'", io_name(i)));
    }
    let change = Change::DiskDriver {
        index,
        target: disk.target.clone(),
        cache: want_cache,
        io: want_io,
    };
    decision.change = Some((change, format!("disk {}: {}", disk.target, what.join(", "))));
    decision
}

/// The plan step: one `DiskDriver` change per disk that needs one.
pub(crate) fn plan(p: &mut Planner<'_>) {
    let (domain, settings) = (p.domain, p.settings);
    for (index, disk) in domain.disks.iter().enumerate() {
        let decision = decide(index, disk, settings);
        if let Some(note) = decision.note {
            p.note(ID, note);
        }
        if let Some((change, text)) = decision.change {
            p.edit(ID, change, text);
        }
    }
}

/// Whether every disk already has the cache and I/O mode the rule asks for.
pub fn conforms(domain: &Domain, settings: &Settings) -> Result<(), String> {
    let unmet = domain
        .disks
        .iter()
        .enumerate()
        .filter_map(|(index, disk)| decide(index, disk, settings).change.map(|(_, text)| text))
        .collect();
    all_met(unmet)
}

/// The XML edit: sets `cache`/`io` on the disk's `<driver>`, creating it as
/// `<driver name='qemu' …/>` (no `type`: libvirt then uses its default, raw)
/// first in the `<disk>` when missing. `target` guards against XML that is not
/// the one the plan was made from.
pub(crate) fn rewrite(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    index: usize,
    target: &str,
    cache: Option<DiskCache>,
    io: Option<DiskIo>,
) -> Result<(), RewriteError> {
    let disk = device(root, "disk", index, target)?;
    let dev = child(disk, "target").and_then(|t| attribute(t, "dev"));
    if let Some(dev) = dev
        && !target.is_empty()
        && dev.value() != target
    {
        return Err(RewriteError::Missing(format!(
            "disk #{index} ({target}): that disk's target is {}",
            dev.value()
        )));
    }
    // `keep` is a policy word, never a libvirt value: nothing to write.
    let cache = cache.filter(|c| *c != DiskCache::Keep).map(cache_name);
    let io = io.filter(|i| *i != DiskIo::Keep).map(io_name);
    let wanted: Vec<(&'static str, &'static str)> = [("cache", cache), ("io", io)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    match child(disk, "driver") {
        Some(driver) => {
            for (name, value) in wanted {
                ed.set_attr(driver, name, value, same_text(value))?;
            }
        }
        None => {
            let driver = wanted.into_iter().fold(
                Elem::new("driver").attr("name", "qemu"),
                |e, (name, value)| e.attr(name, value),
            );
            ed.insert(splice::first_child_anchor(disk), &[driver]);
        }
    }
    Ok(())
}
