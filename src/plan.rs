//! The pure planner: policy + host + occupancy + domain → placement and edits, each
//! edit with the rule of TUNING-RULES.md and the policy rule that chose it.
//! No I/O happens here; every caller (CLI, hook, apply) gets the same answer.

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::policy::{DiskCache, DiskIo, MemoryMode};

/// One change to the domain XML. Indexes count elements in document order
/// (`devices/disk`, `devices/interface`) of the XML the plan was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// `<vcpu cpuset='...'>` = the union of all pins, and in `<cputune>` one
    /// `<vcpupin vcpu='N' cpuset='...'/>` per vCPU (existing vcpupins replaced).
    VcpuPins { cpuset: CpuSet, pins: Vec<VcpuPin> },
    /// `<cputune><emulatorpin cpuset='...'/>`.
    EmulatorPin { cpuset: CpuSet },
    /// `<cputune><iothreadpin iothread='N' cpuset='...'/>` per iothread.
    IothreadPins { pins: Vec<IothreadPin> },
    /// `<numatune><memory mode='...' nodeset='...'/>` (created or replaced; other
    /// numatune children such as `<memnode>` are kept).
    NumaMemory { mode: MemoryMode, nodeset: CpuSet },
    /// Set `cache`/`io` on the `<driver>` of the disk at `index` (created if missing,
    /// with `name='qemu'` and the type libvirt would use).
    DiskDriver {
        index: usize,
        target: String,
        cache: Option<DiskCache>,
        io: Option<DiskIo>,
    },
    /// `<memoryBacking><nosharepages/>`.
    NoSharePages,
    /// `<memoryBacking><hugepages><page size='N' unit='KiB'/></hugepages>`.
    HugePages { size_kib: u64 },
    /// On the `<interface>` at `index`: `<driver name='vhost'>` and/or `queues='N'`.
    InterfaceDriver {
        index: usize,
        target: String,
        vhost: bool,
        queues: Option<u32>,
    },
    /// `<cpu mode='host-passthrough'>` → `<cpu mode='host-model'>` (its `check`,
    /// `migratable` attributes and `<model>`/`<feature>` children that host-model
    /// does not accept are dropped; `<topology>`, `<numa>`, `<cache>` kept).
    CpuHostModel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcpuPin {
    pub vcpu: u32,
    pub cpuset: CpuSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IothreadPin {
    pub iothread: u32,
    pub cpuset: CpuSet,
}
