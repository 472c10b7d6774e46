//! The order in which libvirt writes the children of the elements kvmtune adds
//! to (`virsh dumpxml` order, from libvirt's domain_conf.c formatters). The
//! schema accepts any order (`<interleave>`); following libvirt's keeps a
//! rewritten definition looking like one libvirt wrote, and `virsh define` +
//! `dumpxml` does not move our additions around.

/// Children of `<domain>`.
pub(crate) const DOMAIN: &[&str] = &[
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "defaultiothread",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "bootloader",
    "bootloader_args",
    "os",
    "idmap",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_lockfailure",
    "pm",
    "perf",
    "devices",
    "seclabel",
    "keywrap",
    "launchSecurity",
];

/// Children of `<cputune>`.
pub(crate) const CPUTUNE: &[&str] = &[
    "shares",
    "global_period",
    "global_quota",
    "period",
    "quota",
    "emulator_period",
    "emulator_quota",
    "iothread_period",
    "iothread_quota",
    "vcpupin",
    "emulatorpin",
    "iothreadpin",
    "vcpusched",
    "iothreadsched",
    "emulatorsched",
    "cachetune",
    "memorytune",
];

/// Children of `<numatune>`.
pub(crate) const NUMATUNE: &[&str] = &["memory", "memnode"];

/// Children of `<cpu>` (virCPUDefFormatBuf, then the guest NUMA topology).
pub(crate) const CPU: &[&str] = &[
    "model",
    "vendor",
    "topology",
    "cache",
    "maxphysaddr",
    "feature",
    "numa",
];

/// Children of `<cpu><numa>`.
pub(crate) const NUMA: &[&str] = &["cell", "interconnects"];

/// Children of `<memoryBacking>`.
pub(crate) const MEMORY_BACKING: &[&str] = &[
    "hugepages",
    "nosharepages",
    "locked",
    "source",
    "access",
    "allocation",
    "discard",
];

/// Children of `<interface>`, as far as they matter for placing `<driver>`
/// (right after `<model>`).
pub(crate) const INTERFACE: &[&str] = &[
    "mac",
    "source",
    "vlan",
    "virtualport",
    "ip",
    "route",
    "script",
    "downscript",
    "backenddomain",
    "target",
    "guest",
    "model",
    "driver",
    "backend",
    "filterref",
    "tune",
    "teaming",
    "link",
    "mtu",
    "coalesce",
    "rom",
    "boot",
    "bandwidth",
    "port",
    "alias",
    "address",
    "acpi",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn tables_have_no_duplicates_and_hold_what_kvmtune_inserts() {
        let tables: [(&[&str], &[&str]); 7] = [
            (
                DOMAIN,
                &["vcpu", "cputune", "numatune", "memoryBacking", "cpu"],
            ),
            (CPUTUNE, &["vcpupin", "emulatorpin", "iothreadpin"]),
            (NUMATUNE, &["memory", "memnode"]),
            (CPU, &["numa"]),
            (NUMA, &["cell"]),
            (MEMORY_BACKING, &["hugepages", "nosharepages"]),
            (INTERFACE, &["driver"]),
        ];
        for (table, inserted) in tables {
            let unique: BTreeSet<_> = table.iter().collect();
            assert_eq!(unique.len(), table.len(), "duplicate in {table:?}");
            for name in inserted {
                assert!(table.contains(name), "{name} missing from {table:?}");
            }
        }
    }
}
