//! What the planner needs to know about a libvirt domain, read from its XML: name,
//! uuid, vCPUs, memory, existing pinning, numatune, memory backing, CPU mode, disks,
//! interfaces and the metadata rules match on.
//!
//! Parsing is strict where a mistake would misplace a guest (a vCPU count that is not
//! a number is an error) and lenient elsewhere (unknown elements are ignored: libvirt
//! adds elements over time). DTDs are refused (no entity expansion from guest XML).

use std::collections::BTreeMap;

use roxmltree::{Document, Node, ParsingOptions};

use crate::cpuset::{CpuListError, CpuSet};
use crate::pins_mark::{self, Mark};
use crate::policy::{METADATA_NAMESPACE, NOVA_NAMESPACE};

/// Largest domain XML accepted (libvirt's own limit for an XML document is 10 MiB
/// for `virsh define`; a hook given more is being fed something else).
pub const MAX_XML_BYTES: usize = 16 * 1024 * 1024;

/// libvirt's upper bound on vCPUs (QEMU's x86 maximum is 4096 and below).
pub const MAX_VCPUS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("domain XML is empty")]
    Empty,
    #[error("domain XML is larger than {max} bytes ({size} bytes)", max = MAX_XML_BYTES)]
    TooLarge { size: usize },
    #[error("domain XML is not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("domain XML is not well-formed: {0}")]
    Xml(String),
    #[error("not a libvirt domain: root element is <{0}>, expected <domain>")]
    NotADomain(String),
    #[error("domain XML has no <name>")]
    NoName,
    #[error("domain '{guest}': <{element}> value '{value}' is invalid: {why}")]
    BadValue {
        guest: String,
        element: String,
        value: String,
        why: String,
    },
}

/// `<cpu mode=...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuMode {
    /// No `<cpu>` element or no mode attribute (libvirt's default: custom).
    Unspecified,
    HostPassthrough,
    HostModel,
    Maximum,
    Custom,
    Other(String),
}

/// A `<disk>` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `device` attribute: disk (default), cdrom, floppy, lun.
    pub device: String,
    /// `type` attribute: file, block, network, volume...
    pub source_type: String,
    pub target: String,
    pub bus: Option<String>,
    pub driver_name: Option<String>,
    pub driver_type: Option<String>,
    pub cache: Option<String>,
    pub io: Option<String>,
    pub readonly: bool,
    pub shareable: bool,
}

/// An `<interface>` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `type`: network, bridge, ethernet, direct, hostdev, vhostuser, user...
    pub kind: String,
    pub model: Option<String>,
    pub driver_name: Option<String>,
    pub queues: Option<u32>,
    /// `target dev` or MAC address, for messages.
    pub label: String,
}

/// `<numatune><memory>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaMemory {
    pub mode: Option<String>,
    pub nodeset: Option<CpuSet>,
    pub placement: Option<String>,
}

/// `<memoryBacking>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryBacking {
    pub present: bool,
    pub hugepages: bool,
    /// Page sizes named in `<hugepages><page size>` (KiB).
    pub hugepage_sizes_kib: Vec<u64>,
    pub nosharepages: bool,
    pub locked: bool,
    /// `<source type='memfd'|'file'|'anonymous'>`.
    pub source: Option<String>,
    /// `<access mode='shared'>`.
    pub access: Option<String>,
}

/// A parsed domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    /// `type` on `<domain>`: kvm, qemu...
    pub hypervisor: String,
    /// `<vcpu>`: the maximum vCPU count.
    pub vcpus_max: u32,
    /// `<vcpu current=...>`, else equal to `vcpus_max`.
    pub vcpus_current: u32,
    /// `<vcpu cpuset=...>`.
    pub vcpu_cpuset: Option<CpuSet>,
    /// `<vcpu placement=...>` (static/auto).
    pub vcpu_placement: Option<String>,
    /// `<memory>` in KiB.
    pub memory_kib: u64,
    /// `<cputune><vcpupin>` by vCPU number.
    pub vcpu_pins: BTreeMap<u32, CpuSet>,
    pub emulator_pin: Option<CpuSet>,
    pub iothread_pins: BTreeMap<u32, CpuSet>,
    /// IOthread ids (`<iothreadids>` or 1..=`<iothreads>`).
    pub iothread_ids: Vec<u32>,
    pub numa_memory: Option<NumaMemory>,
    /// Number of `<numatune><memnode>` entries.
    pub numa_memnodes: usize,
    /// Guest NUMA cells (`<cpu><numa><cell>`).
    pub guest_numa_cells: usize,
    pub memory_backing: MemoryBacking,
    pub cpu_mode: CpuMode,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    /// `<kvmtune:rule>` text in kvmtune's metadata namespace.
    pub kvmtune_rule: Option<String>,
    /// `<nova:flavor name=...>`.
    pub nova_flavor: Option<String>,
    /// `<nova:instance>` (or any element in Nova's namespace) in `<metadata>`: Nova
    /// manages this guest and owns its definition.
    pub nova_managed: bool,
    /// The pins mark in `<metadata>` ([`crate::pins_mark`]): the pins kvmtune
    /// itself wrote into this definition, if it did.
    pub pins_mark: Option<Mark>,
}

impl Domain {
    /// Parses raw bytes (what a hook reads from stdin), refusing empty, oversized or
    /// non-UTF-8 input with a clear error.
    pub fn parse_bytes(bytes: &[u8]) -> Result<(Domain, &str), DomainError> {
        if bytes.len() > MAX_XML_BYTES {
            return Err(DomainError::TooLarge { size: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| DomainError::NotUtf8(e.valid_up_to()))?;
        Ok((Domain::parse(text)?, text))
    }

    /// Parses domain XML text.
    pub fn parse(xml: &str) -> Result<Domain, DomainError> {
        if xml.trim().is_empty() {
            return Err(DomainError::Empty);
        }
        if xml.len() > MAX_XML_BYTES {
            return Err(DomainError::TooLarge { size: xml.len() });
        }
        let doc = parse_document(xml)?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain"
            || root.tag_name().namespace().is_some_and(|ns| !ns.is_empty())
        {
            return Err(DomainError::NotADomain(root.tag_name().name().to_string()));
        }
        let name_text = child(root, "name").map(text_of).unwrap_or_default();
        let name = Some(name_text.trim())
            .filter(|n| !n.is_empty())
            .ok_or(DomainError::NoName)?
            .to_string();
        let r = Reader { guest: &name };

        // Read in a fixed order: of several bad values, the one reported does not
        // depend on where the elements stand in the XML.
        let vcpu = child(root, "vcpu");
        let (vcpus_max, vcpus_current, vcpu_cpuset) = r.vcpus(vcpu)?;
        let memory_kib = r.memory(root)?;
        let cputune = r.cputune(root)?;
        let iothread_ids = r.iothread_ids(root)?;
        let (numa_memory, numa_memnodes) = r.numatune(root)?;
        let memory_backing = memory_backing(root);
        let cpu = child(root, "cpu");
        let guest_numa_cells = cpu
            .and_then(|c| child(c, "numa"))
            .map(|n| children(n, "cell").count())
            .unwrap_or(0);
        let (disks, interfaces) = match child(root, "devices") {
            Some(devices) => (
                children(devices, "disk").map(disk).collect(),
                children(devices, "interface")
                    .enumerate()
                    .map(|(index, iface)| r.interface(index, iface))
                    .collect::<Result<_, _>>()?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let metadata = child(root, "metadata");

        Ok(Domain {
            uuid: child(root, "uuid").map(|u| text_of(u).trim().to_string()),
            hypervisor: root.attribute("type").unwrap_or("").to_string(),
            vcpus_max,
            vcpus_current,
            vcpu_cpuset,
            vcpu_placement: vcpu
                .and_then(|v| v.attribute("placement"))
                .map(str::to_string),
            memory_kib,
            vcpu_pins: cputune.vcpu_pins,
            emulator_pin: cputune.emulator_pin,
            iothread_pins: cputune.iothread_pins,
            iothread_ids,
            numa_memory,
            numa_memnodes,
            guest_numa_cells,
            memory_backing,
            cpu_mode: cpu_mode(cpu),
            disks,
            interfaces,
            kvmtune_rule: metadata
                .and_then(|m| metadata_element(m, METADATA_NAMESPACE, "rule"))
                .map(|n| text_of(n).trim().to_string()),
            nova_flavor: metadata
                .and_then(|m| metadata_element(m, NOVA_NAMESPACE, "flavor"))
                .and_then(|n| n.attribute("name"))
                .map(str::to_string),
            nova_managed: metadata.is_some_and(|m| {
                m.descendants()
                    .any(|n| n.is_element() && n.tag_name().namespace() == Some(NOVA_NAMESPACE))
            }),
            pins_mark: metadata
                .and_then(pins_mark::element)
                .and_then(|n| Mark::parse(&text_of(n))),
            name,
        })
    }

    /// Whether the XML already pins every vCPU somewhere (explicit `<vcpupin>` for
    /// each vCPU, or a `<vcpu cpuset>` that all vCPUs inherit).
    pub fn pins_explicitly(&self) -> bool {
        self.vcpu_cpuset.is_some()
            || (0..self.vcpus_max).all(|v| self.vcpu_pins.contains_key(&v))
                && !self.vcpu_pins.is_empty()
    }

    /// Whether the vCPU pins are the ones kvmtune wrote (they equal the pins
    /// mark): then they are kvmtune's placement, not the admin's, and
    /// `existing_pins: keep` does not hold the guest on them.
    /// A vCPU without a pin (added since, `virsh setvcpus --maximum --config`)
    /// does not change that; a pin the mark does not record, or records
    /// otherwise, makes all the guest's pins its own.
    pub fn pins_by_kvmtune(&self) -> bool {
        let Some(mark) = &self.pins_mark else {
            return false;
        };
        self.pins_explicitly()
            && !self.vcpu_pins.is_empty()
            && self
                .vcpu_pins
                .iter()
                .all(|(vcpu, pin)| mark.vcpus.get(vcpu) == Some(pin))
    }

    /// Whether the `<emulatorpin>` is the one kvmtune wrote (pins mark).
    pub fn emulator_pin_by_kvmtune(&self) -> bool {
        self.emulator_pin.is_some()
            && self
                .pins_mark
                .as_ref()
                .is_some_and(|mark| mark.emulator == self.emulator_pin)
    }

    /// Whether iothread `id`'s `<iothreadpin>` is the one kvmtune wrote (pins mark).
    pub fn iothread_pin_by_kvmtune(&self, id: u32) -> bool {
        match (self.iothread_pins.get(&id), &self.pins_mark) {
            (Some(pin), Some(mark)) => mark.iothreads.get(&id) == Some(pin),
            _ => false,
        }
    }

    /// The host CPUs the XML lets vCPU `vcpu` run on, if it says.
    pub fn pinned_cpus_of(&self, vcpu: u32) -> Option<&CpuSet> {
        self.vcpu_pins.get(&vcpu).or(self.vcpu_cpuset.as_ref())
    }

    /// All host CPUs the XML pins vCPUs to.
    pub fn pinned_cpus(&self) -> CpuSet {
        let mut all = self.vcpu_cpuset.clone().unwrap_or_default();
        for set in self.vcpu_pins.values() {
            all = all.union(set);
        }
        all
    }
}

// ---- the parts of Domain::parse ---------------------------------------------

/// Reads the parts of one guest's XML whose values can be wrong, naming the
/// guest in the error.
struct Reader<'g> {
    guest: &'g str,
}

/// `<cputune>`'s pins.
#[derive(Default)]
struct Cputune {
    vcpu_pins: BTreeMap<u32, CpuSet>,
    emulator_pin: Option<CpuSet>,
    iothread_pins: BTreeMap<u32, CpuSet>,
}

impl Reader<'_> {
    fn bad(&self, element: &str, value: &str, why: String) -> DomainError {
        DomainError::BadValue {
            guest: self.guest.to_string(),
            element: element.to_string(),
            value: value.to_string(),
            why,
        }
    }

    fn cpuset(&self, element: &str, value: &str) -> Result<CpuSet, DomainError> {
        CpuSet::parse(value).map_err(|e: CpuListError| self.bad(element, value, e.to_string()))
    }

    /// `<vcpu>`: the maximum count (1 without the element), `current` and `cpuset`.
    fn vcpus(&self, vcpu: Option<Node<'_, '_>>) -> Result<(u32, u32, Option<CpuSet>), DomainError> {
        let vcpus_max = match vcpu.map(text_of) {
            Some(text) => parse_count(text.trim(), 1, MAX_VCPUS).ok_or_else(|| {
                self.bad("vcpu", text.trim(), format!("expected 1..={MAX_VCPUS}"))
            })?,
            None => 1,
        };
        let vcpus_current = match vcpu.and_then(|v| v.attribute("current")) {
            Some(c) => parse_count(c, 1, vcpus_max)
                .ok_or_else(|| self.bad("vcpu current", c, format!("expected 1..={vcpus_max}")))?,
            None => vcpus_max,
        };
        let vcpu_cpuset = match vcpu.and_then(|v| v.attribute("cpuset")) {
            Some(c) => Some(self.cpuset("vcpu cpuset", c)?),
            None => None,
        };
        Ok((vcpus_max, vcpus_current, vcpu_cpuset))
    }

    /// `<memory>` in KiB (0 without the element).
    fn memory(&self, root: Node<'_, '_>) -> Result<u64, DomainError> {
        let Some(m) = child(root, "memory") else {
            return Ok(0);
        };
        let joined = text_of(m);
        let text = joined.trim();
        memory_to_kib(text, m.attribute("unit"))
            .ok_or_else(|| self.bad("memory", text, "expected a size in the given unit".into()))
    }

    /// `<cputune>`'s vcpupin, emulatorpin and iothreadpin; a pin without its id
    /// or cpuset is skipped, as libvirt would refuse it anyway.
    fn cputune(&self, root: Node<'_, '_>) -> Result<Cputune, DomainError> {
        let mut tune = Cputune::default();
        let Some(cputune) = child(root, "cputune") else {
            return Ok(tune);
        };
        for pin in children(cputune, "vcpupin") {
            let (Some(id), Some(set)) = (pin.attribute("vcpu"), pin.attribute("cpuset")) else {
                continue;
            };
            let id = parse_count(id, 0, MAX_VCPUS)
                .ok_or_else(|| self.bad("vcpupin vcpu", id, "not a vCPU number".into()))?;
            tune.vcpu_pins
                .insert(id, self.cpuset("vcpupin cpuset", set)?);
        }
        if let Some(set) = child(cputune, "emulatorpin").and_then(|e| e.attribute("cpuset")) {
            tune.emulator_pin = Some(self.cpuset("emulatorpin cpuset", set)?);
        }
        for pin in children(cputune, "iothreadpin") {
            let (Some(id), Some(set)) = (pin.attribute("iothread"), pin.attribute("cpuset")) else {
                continue;
            };
            let id = parse_count(id, 0, u32::MAX)
                .ok_or_else(|| self.bad("iothreadpin iothread", id, "not a number".into()))?;
            tune.iothread_pins
                .insert(id, self.cpuset("iothreadpin cpuset", set)?);
        }
        Ok(tune)
    }

    /// `<iothreadids>`, else 1..=`<iothreads>`.
    fn iothread_ids(&self, root: Node<'_, '_>) -> Result<Vec<u32>, DomainError> {
        let ids: Vec<u32> = child(root, "iothreadids")
            .map(|ids| {
                children(ids, "iothread")
                    .filter_map(|t| t.attribute("id").and_then(|i| i.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            return Ok(ids);
        }
        let Some(n) = child(root, "iothreads").map(text_of) else {
            return Ok(ids);
        };
        let n = parse_count(n.trim(), 0, 1024)
            .ok_or_else(|| self.bad("iothreads", n.trim(), "expected 0..=1024".into()))?;
        Ok((1..=n).collect())
    }

    /// `<numatune>`: its `<memory>` and how many `<memnode>`s it has.
    fn numatune(&self, root: Node<'_, '_>) -> Result<(Option<NumaMemory>, usize), DomainError> {
        let Some(numatune) = child(root, "numatune") else {
            return Ok((None, 0));
        };
        let mut numa_memory = None;
        if let Some(mem) = child(numatune, "memory") {
            let nodeset = match mem.attribute("nodeset") {
                Some(s) => Some(self.cpuset("numatune memory nodeset", s)?),
                None => None,
            };
            numa_memory = Some(NumaMemory {
                mode: mem.attribute("mode").map(str::to_string),
                nodeset,
                placement: mem.attribute("placement").map(str::to_string),
            });
        }
        Ok((numa_memory, children(numatune, "memnode").count()))
    }

    /// One `<interface>`; `index` labels one without target dev or MAC.
    fn interface(&self, index: usize, iface: Node<'_, '_>) -> Result<Interface, DomainError> {
        let driver = child(iface, "driver");
        let queues = match driver.and_then(|d| d.attribute("queues")) {
            Some(q) => Some(
                parse_count(q, 0, 1024)
                    .ok_or_else(|| self.bad("interface driver queues", q, "not a count".into()))?,
            ),
            None => None,
        };
        let label = child(iface, "target")
            .and_then(|t| t.attribute("dev"))
            .or_else(|| child(iface, "mac").and_then(|m| m.attribute("address")))
            .map(str::to_string)
            .unwrap_or_else(|| format!("interface #{index}"));
        Ok(Interface {
            kind: iface.attribute("type").unwrap_or("").to_string(),
            model: child(iface, "model")
                .and_then(|m| m.attribute("type"))
                .map(str::to_string),
            driver_name: driver.and_then(|d| d.attribute("name")).map(str::to_string),
            queues,
            label,
        })
    }
}

/// `<memoryBacking>` (all absent without the element).
fn memory_backing(root: Node<'_, '_>) -> MemoryBacking {
    let Some(mb) = child(root, "memoryBacking") else {
        return MemoryBacking::default();
    };
    let hugepages = child(mb, "hugepages");
    MemoryBacking {
        present: true,
        hugepages: hugepages.is_some(),
        hugepage_sizes_kib: hugepages
            .map(|h| {
                children(h, "page")
                    .filter_map(|p| memory_to_kib(p.attribute("size")?, p.attribute("unit")))
                    .collect()
            })
            .unwrap_or_default(),
        nosharepages: child(mb, "nosharepages").is_some(),
        locked: child(mb, "locked").is_some(),
        source: child(mb, "source")
            .and_then(|s| s.attribute("type"))
            .map(str::to_string),
        access: child(mb, "access")
            .and_then(|s| s.attribute("mode"))
            .map(str::to_string),
    }
}

/// `<cpu mode>`.
fn cpu_mode(cpu: Option<Node<'_, '_>>) -> CpuMode {
    match cpu.and_then(|c| c.attribute("mode")) {
        None => CpuMode::Unspecified,
        Some("host-passthrough") => CpuMode::HostPassthrough,
        Some("host-model") => CpuMode::HostModel,
        Some("maximum") => CpuMode::Maximum,
        Some("custom") => CpuMode::Custom,
        Some(other) => CpuMode::Other(other.to_string()),
    }
}

/// One `<disk>`; libvirt's defaults for what it leaves out.
fn disk(disk: Node<'_, '_>) -> Disk {
    let driver = child(disk, "driver");
    let driver_attr = |name: &str| driver.and_then(|d| d.attribute(name)).map(str::to_string);
    let target = child(disk, "target");
    Disk {
        device: disk.attribute("device").unwrap_or("disk").to_string(),
        source_type: disk.attribute("type").unwrap_or("file").to_string(),
        target: target
            .and_then(|t| t.attribute("dev"))
            .unwrap_or("?")
            .to_string(),
        bus: target.and_then(|t| t.attribute("bus")).map(str::to_string),
        driver_name: driver_attr("name"),
        driver_type: driver_attr("type"),
        cache: driver_attr("cache"),
        io: driver_attr("io"),
        readonly: child(disk, "readonly").is_some(),
        shareable: child(disk, "shareable").is_some(),
    }
}

/// The first element `name` in namespace `ns` anywhere under `<metadata>`.
fn metadata_element<'a, 'i>(metadata: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    metadata.descendants().find(|n| {
        n.is_element() && n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
    })
}

/// Parses with roxmltree's safe defaults: no DTD (so no entity expansion), bounded
/// node count.
pub fn parse_document(xml: &str) -> Result<Document<'_>, DomainError> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: 4_000_000,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(xml, options).map_err(|e| DomainError::Xml(e.to_string()))
}

/// The first child element named `name` in libvirt's (empty) namespace.
pub fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| is_libvirt_element(*n, name))
}

/// Child elements named `name` in libvirt's (empty) namespace.
pub fn children<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |n| is_libvirt_element(*n, name))
}

fn is_libvirt_element(node: Node<'_, '_>, name: &str) -> bool {
    node.is_element()
        && node.tag_name().name() == name
        && node.tag_name().namespace().is_none_or(str::is_empty)
}

/// An element's text as libvirt reads it: all its text and CDATA children joined,
/// comments skipped (`<vcpu><!-- c -->4</vcpu>` is 4, not the empty first node).
pub fn text_of(node: Node<'_, '_>) -> String {
    node.children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect()
}

fn parse_count(text: &str, min: u32, max: u32) -> Option<u32> {
    let n: u32 = text.trim().parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

/// Converts a libvirt scaled integer to KiB (libvirt's units: b/bytes, KB, k/KiB,
/// MB, M/MiB, GB, G/GiB, TB, T/TiB, PB, P/PiB, EB, E/EiB; default KiB).
pub fn memory_to_kib(value: &str, unit: Option<&str>) -> Option<u64> {
    let n: u128 = value.trim().parse().ok()?;
    let bytes_per_unit: u128 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1024,
        "MB" => 1000u128.pow(2),
        "m" | "M" | "MiB" => 1024u128.pow(2),
        "GB" => 1000u128.pow(3),
        "g" | "G" | "GiB" => 1024u128.pow(3),
        "TB" => 1000u128.pow(4),
        "t" | "T" | "TiB" => 1024u128.pow(4),
        "PB" => 1000u128.pow(5),
        "p" | "P" | "PiB" => 1024u128.pow(5),
        "EB" => 1000u128.pow(6),
        "e" | "E" | "EiB" => 1024u128.pow(6),
        _ => return None,
    };
    let kib = n.checked_mul(bytes_per_unit)?.div_ceil(1024);
    u64::try_from(kib).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: &str = r#"<domain type='kvm' xmlns:kvmtune='http://kvmtune.org/xmlns/kvmtune/1.0'>
  <name>web1</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:flavor name="m1.large"/>
    </nova:instance>
    <kvmtune:rule>nfv</kvmtune:rule>
  </metadata>
  <memory unit='GiB'>4</memory>
  <memoryBacking><hugepages><page size='2' unit='M'/></hugepages><nosharepages/></memoryBacking>
  <vcpu placement='static' current='2'>4</vcpu>
  <iothreads>2</iothreads>
  <cputune>
    <vcpupin vcpu='0' cpuset='2'/>
    <vcpupin vcpu='1' cpuset='3'/>
    <emulatorpin cpuset='1'/>
  </cputune>
  <numatune><memory mode='strict' nodeset='0'/><memnode cellid='0' mode='strict' nodeset='0'/></numatune>
  <cpu mode='host-passthrough'/>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:00:00:01'/><model type='virtio'/><driver name='vhost' queues='4'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn parses_what_the_planner_needs() {
        let d = Domain::parse(GUEST).unwrap();
        assert_eq!(d.name, "web1");
        assert_eq!(d.vcpus_max, 4);
        assert_eq!(d.vcpus_current, 2);
        assert_eq!(d.memory_kib, 4 * 1024 * 1024);
        assert_eq!(d.vcpu_pins.len(), 2);
        assert_eq!(d.vcpu_pins[&1].to_string(), "3");
        assert_eq!(d.emulator_pin.as_ref().unwrap().to_string(), "1");
        assert_eq!(d.iothread_ids, vec![1, 2]);
        assert_eq!(
            d.numa_memory.as_ref().unwrap().mode.as_deref(),
            Some("strict")
        );
        assert_eq!(d.numa_memnodes, 1);
        assert!(d.memory_backing.hugepages && d.memory_backing.nosharepages);
        assert_eq!(d.memory_backing.hugepage_sizes_kib, vec![2048]);
        assert_eq!(d.cpu_mode, CpuMode::HostPassthrough);
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[0].cache.as_deref(), Some("writeback"));
        assert_eq!(d.disks[1].device, "cdrom");
        assert_eq!(d.interfaces[0].queues, Some(4));
        assert_eq!(d.interfaces[0].label, "52:54:00:00:00:01");
        assert_eq!(d.kvmtune_rule.as_deref(), Some("nfv"));
        assert_eq!(d.nova_flavor.as_deref(), Some("m1.large"));
        assert!(d.nova_managed);
        assert!(!d.pins_explicitly(), "only 2 of 4 vCPUs pinned");
    }

    #[test]
    fn bad_input_gives_one_clear_error() {
        assert_eq!(Domain::parse(""), Err(DomainError::Empty));
        assert!(matches!(Domain::parse("not xml"), Err(DomainError::Xml(_))));
        assert!(matches!(
            Domain::parse("<domain><name>x</name>"),
            Err(DomainError::Xml(_))
        ));
        assert_eq!(
            Domain::parse("<network><name>x</name></network>"),
            Err(DomainError::NotADomain("network".into()))
        );
        assert_eq!(Domain::parse("<domain/>"), Err(DomainError::NoName));
        assert!(matches!(
            Domain::parse("<domain><name>x</name><vcpu>lots</vcpu></domain>"),
            Err(DomainError::BadValue { .. })
        ));
        assert!(matches!(
            Domain::parse_bytes(b"<domain>\xff</domain>"),
            Err(DomainError::NotUtf8(8))
        ));
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><domain><name>&b;</name></domain>"#;
        assert!(matches!(Domain::parse(bomb), Err(DomainError::Xml(_))));
        let msg = Domain::parse("<domain><name>x</name><vcpu current='9'>4</vcpu></domain>")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "domain 'x': <vcpu current> value '9' is invalid: expected 1..=4"
        );
    }

    #[test]
    fn memory_units() {
        assert_eq!(memory_to_kib("1", Some("GiB")), Some(1048576));
        assert_eq!(memory_to_kib("524288", None), Some(524288));
        assert_eq!(memory_to_kib("1000", Some("KB")), Some(977));
        assert_eq!(memory_to_kib("x", None), None);
        assert_eq!(memory_to_kib("1", Some("parsecs")), None);
        assert_eq!(memory_to_kib("99999999999999999999", Some("EiB")), None);
    }
}
