//! libvirt's run state as data: a status file (`/run/libvirt/qemu/GUEST.xml`, a
//! `<domstatus>` holding the QEMU pid, the vCPU thread ids and the live `<domain>`)
//! parsed into a [`LiveGuest`], and the occupancy of guests that pin themselves.
//! Reading the files is `kvmtune_sys::libvirt_run`'s job.

use std::collections::BTreeMap;

use crate::cpuset::CpuSet;
use crate::domain::{Domain, parse_document};
use crate::placement::{Claim, Occupancy, Pool};

/// One running guest as its status file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGuest {
    pub name: String,
    pub qemu_pid: Option<u32>,
    /// vCPU number → thread id.
    pub vcpu_tids: BTreeMap<u32, u32>,
    /// iothread id → thread id (when libvirt records them).
    pub iothread_tids: BTreeMap<u32, u32>,
    /// The live domain, when the status file holds one that parses.
    pub domain: Option<Domain>,
}

/// Parses a `<domstatus>` document.
pub fn parse_status(text: &str) -> Result<LiveGuest, String> {
    let doc = parse_document(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "domstatus" {
        return Err(format!(
            "root element is <{}>, expected <domstatus>",
            root.tag_name().name()
        ));
    }
    let qemu_pid = root.attribute("pid").and_then(|p| p.parse().ok());
    let mut vcpu_tids = BTreeMap::new();
    let mut iothread_tids = BTreeMap::new();
    for node in root.children().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "vcpus" => {
                for v in node.children().filter(|n| n.has_tag_name("vcpu")) {
                    if let (Some(id), Some(pid)) = (
                        v.attribute("id").and_then(|i| i.parse().ok()),
                        v.attribute("pid").and_then(|p| p.parse().ok()),
                    ) {
                        vcpu_tids.insert(id, pid);
                    }
                }
            }
            "iothreads" => {
                for t in node.children().filter(|n| n.has_tag_name("iothread")) {
                    if let (Some(id), Some(pid)) = (
                        t.attribute("id").and_then(|i| i.parse().ok()),
                        t.attribute("pid").and_then(|p| p.parse().ok()),
                    ) {
                        iothread_tids.insert(id, pid);
                    }
                }
            }
            _ => {}
        }
    }
    let domain = root
        .children()
        .find(|n| n.has_tag_name("domain"))
        .and_then(|d| Domain::parse(&text[d.range()]).ok());
    let name = domain
        .as_ref()
        .map(|d| d.name.clone())
        .ok_or_else(|| "no parsable <domain> inside".to_string())?;
    Ok(LiveGuest {
        name,
        qemu_pid,
        vcpu_tids,
        iothread_tids,
        domain,
    })
}

/// The occupancy of guests that pin themselves (their live XML says where), for
/// guests kvmtune has no claim for: they count, and are never moved.
pub fn pinned_by_others(live: &BTreeMap<String, LiveGuest>, claimed: &Occupancy) -> Occupancy {
    let mut occupancy = Occupancy::default();
    for (name, guest) in live {
        if claimed.guests.contains_key(name) {
            continue;
        }
        let Some(domain) = &guest.domain else {
            continue;
        };
        let pinned = domain.pinned_cpus();
        if pinned.is_empty() {
            continue;
        }
        let vcpus: Vec<CpuSet> = (0..domain.vcpus_max)
            .map(|v| {
                domain
                    .pinned_cpus_of(v)
                    .cloned()
                    .unwrap_or_else(|| pinned.clone())
            })
            .collect();
        // Explicit 1:1 pins are Nova's dedicated policy; wider sets float (shared).
        let pool = if vcpus.iter().all(|s| s.len() == 1) {
            Pool::Dedicated
        } else {
            Pool::Shared
        };
        occupancy.guests.insert(
            name.clone(),
            Claim {
                vcpus,
                nodes: domain
                    .numa_memory
                    .as_ref()
                    .and_then(|m| m.nodeset.clone())
                    .unwrap_or_default(),
                memory_kib: domain.memory_kib,
                pool,
            },
        );
    }
    occupancy
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"<domstatus state='paused' reason='starting up' pid='4242'>
  <monitor path='/var/lib/libvirt/qemu/domain-1-g/monitor.sock' type='unix'/>
  <vcpus>
    <vcpu id='0' pid='4250'/>
    <vcpu id='1' pid='4251'/>
  </vcpus>
  <domain type='qemu' id='1'>
    <name>g</name>
    <memory unit='KiB'>65536</memory>
    <vcpu placement='static'>2</vcpu>
    <cputune><vcpupin vcpu='0' cpuset='3'/><vcpupin vcpu='1' cpuset='4'/></cputune>
  </domain>
</domstatus>"#;

    #[test]
    fn reads_pid_vcpu_threads_and_live_domain() {
        let g = parse_status(STATUS).unwrap();
        assert_eq!(g.name, "g");
        assert_eq!(g.qemu_pid, Some(4242));
        assert_eq!(g.vcpu_tids.get(&1), Some(&4251));
        let occ = pinned_by_others(
            &BTreeMap::from([("g".to_string(), g)]),
            &Occupancy::default(),
        );
        assert_eq!(occ.dedicated_cpus().to_string(), "3-4");
    }

    #[test]
    fn refuses_other_documents() {
        let _ = parse_status("<domain><name>x</name></domain>").unwrap_err();
        let _ = parse_status("<domstatus pid='1'/>").unwrap_err();
    }
}
