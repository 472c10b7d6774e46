//! The pins mark: kvmtune's record, in a definition's `<metadata>`, of the pins it
//! wrote there itself (`kvmtune apply`, `kvmtune converge`): per vCPU, the
//! emulator threads and per iothread.
//!
//! Why it exists: a definition that pins its threads is normally the admin's (or
//! Nova's) choice, and under `existing_pins: keep` kvmtune keeps such pins and
//! never moves the guest. But the default flow (`converge: after-start`) writes
//! kvmtune's own placement into the definition, so from the second boot on every
//! guest would look hand-pinned and repacking and `kvmtune rebalance` could never
//! move it again. The mark tells the two apart: a pin equal to the mark is
//! kvmtune's, and kvmtune keeps placing (and moving) the guest as if the
//! definition had none, preferring the same CPUs while they are free. A pin that
//! someone changed afterwards no longer equals the mark and is the admin's again.
//!
//! The element has a namespace of its own, not kvmtune's rule namespace: libvirt
//! keeps one `<metadata>` element per namespace, so sharing one with an admin's
//! `<kvmtune:rule>` would lose one of them.
//!
//! ```xml
//! <metadata>
//!   <kvmtune-pins:pins xmlns:kvmtune-pins="http://kvmtune.org/xmlns/pins/1.0">0:2 1:3-4 emulator:2-4 iothread1:2-4</kvmtune-pins:pins>
//! </metadata>
//! ```
//! The text is space-separated `VCPU:CPULIST`, `emulator:CPULIST` and
//! `iothreadID:CPULIST` items.

use std::collections::BTreeMap;

use crate::cpuset::CpuSet;

/// The mark's namespace.
pub const NAMESPACE: &str = "http://kvmtune.org/xmlns/pins/1.0";
/// The mark's element name (local part).
pub const ELEMENT: &str = "pins";
/// The qualified name kvmtune writes (any prefix is read).
pub const QUALIFIED: &str = "kvmtune-pins:pins";
/// The namespace declaration attribute kvmtune writes.
pub const XMLNS: &str = "xmlns:kvmtune-pins";

/// The mark element among `metadata`'s children (where kvmtune writes it; the
/// parser and the rewrite look in the same place).
pub fn element<'a, 'i>(metadata: roxmltree::Node<'a, 'i>) -> Option<roxmltree::Node<'a, 'i>> {
    metadata.children().find(|n| {
        n.is_element()
            && n.tag_name().namespace() == Some(NAMESPACE)
            && n.tag_name().name() == ELEMENT
    })
}

/// The pins kvmtune wrote into a definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Mark {
    /// Per vCPU (all of them, or none).
    pub vcpus: BTreeMap<u32, CpuSet>,
    /// The `<emulatorpin>`, when kvmtune wrote it.
    pub emulator: Option<CpuSet>,
    /// Per iothread id.
    pub iothreads: BTreeMap<u32, CpuSet>,
}

impl Mark {
    /// The mark's text.
    pub fn format(&self) -> String {
        let vcpus = self.vcpus.iter().map(|(v, c)| format!("{v}:{c}"));
        let emulator = self.emulator.iter().map(|c| format!("emulator:{c}"));
        let iothreads = self
            .iothreads
            .iter()
            .map(|(id, c)| format!("iothread{id}:{c}"));
        vcpus
            .chain(emulator)
            .chain(iothreads)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The pins a mark's text records; None when the text is not a mark kvmtune
    /// wrote (then the definition's pins all count as the admin's).
    pub fn parse(text: &str) -> Option<Mark> {
        let mut mark = Mark::default();
        for item in text.split_whitespace() {
            let (what, cpus) = item.split_once(':')?;
            let cpus = CpuSet::parse(cpus).ok().filter(|c| !c.is_empty())?;
            let fresh = if what == "emulator" {
                mark.emulator.replace(cpus).is_none()
            } else if let Some(id) = what.strip_prefix("iothread") {
                mark.iothreads.insert(number(id)?, cpus).is_none()
            } else {
                mark.vcpus.insert(number(what)?, cpus).is_none()
            };
            if !fresh {
                return None;
            }
        }
        (!mark.is_empty()).then_some(mark)
    }

    /// Whether it records no pin at all (then no mark is written).
    pub fn is_empty(&self) -> bool {
        self.vcpus.is_empty() && self.emulator.is_none() && self.iothreads.is_empty()
    }
}

/// A decimal id (digits only: no sign, no spaces).
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    #[test]
    fn a_mark_reads_back_what_was_written() {
        let mark = Mark {
            vcpus: [(0, set("2")), (1, set("3-4,9"))].into(),
            emulator: Some(set("2-4")),
            iothreads: [(1, set("2-4"))].into(),
        };
        let text = mark.format();
        assert_eq!(text, "0:2 1:3-4,9 emulator:2-4 iothread1:2-4");
        assert_eq!(Mark::parse(&text), Some(mark.clone()));
        assert_eq!(
            Mark::parse(" 0:2\n emulator:2-4 1:3-4,9 iothread1:2-4 "),
            Some(mark),
            "whitespace and order are free"
        );
    }

    #[test]
    fn anything_else_is_no_mark() {
        for bad in [
            "",
            "0",
            "0:",
            "x:1",
            "0:1 0:2",
            "0:1-",
            "-1:2",
            "+1:2",
            "0:99999",
            "emulator:1 emulator:2",
            "iothread:1",
        ] {
            assert_eq!(Mark::parse(bad), None, "{bad:?}");
        }
    }
}
