//! Reads the [`Host`] from sysfs/procfs under a root directory (`/` in production, a
//! fixture tree in tests), and keeps the static topology in a cache under /run.
//!
//! The reader is written against real snapshots (tests/data/hosts, see its README),
//! which break most "obvious" assumptions, so the rules are:
//! * a CPU is online if `cpu/online` lists it, its `cpuN/` directory exists and its
//!   `cpuN/online` file (often absent for CPU0) does not say `0`;
//! * a core is the set of SMT siblings (`thread_siblings_list`), never `core_id`,
//!   which repeats within a package on several real machines;
//! * every online CPU belongs to exactly one node: nodes that claim the same CPU
//!   (buggy firmware) lose it to the lowest-numbered claimant, and a CPU no node
//!   claims (its node is offline) joins a node next to it, as the kernel itself does;
//! * optional files that are missing degrade to "unknown", never to an error; a file
//!   that exists but holds garbage is an error naming it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use kvmtune_core::cpuset::{CpuSet, MAX_CPUS};
use kvmtune_core::host::{Host, HostError, HugePages, Irq, Node, RawCpu, assemble, orphan_home};

/// Where CPUs live under the root.
const CPU_DIR: &str = "sys/devices/system/cpu";
/// Where NUMA nodes live under the root.
const NODE_DIR: &str = "sys/devices/system/node";
/// Host-wide huge pages, used only when there are no per-node ones (no NUMA info).
const GLOBAL_HUGEPAGES_DIR: &str = "sys/kernel/mm/hugepages";

/// The temp-file prefix of the topology cache (see `atomicfile`); the ledger
/// removes temp files a killed hook left behind.
pub const CACHE_TEMP_PREFIX: &str = "host-topology";

/// Reads the host under `root` (e.g. `/`).
pub fn read_host(root: &Path) -> Result<Host, HostError> {
    let cpu_dir = root.join(CPU_DIR);
    let online = read_online(&cpu_dir)?;
    let mut raw: BTreeMap<u32, RawCpu> = BTreeMap::new();
    for cpu in online.iter() {
        // SMT siblings share a core, so a socket and a die: reuse what the first
        // sibling said instead of reading three files per thread again (the hook
        // reads the host on every guest start).
        let known = raw
            .values()
            .find(|r| r.siblings.contains(cpu) && r.siblings.len() > 1)
            .cloned();
        let topology = match known {
            Some(sibling) => sibling,
            None => read_topology(&cpu_dir, cpu)?,
        };
        raw.insert(cpu, topology);
    }
    let l3_groups = read_l3_groups(&cpu_dir, &online)?;
    let (nodes, nodeless) = read_nodes(root, &online, &raw)?;
    let isolated = read_cpus(&cpu_dir.join("isolated"))?.unwrap_or_default();
    let irqs = read_irqs(root)?;
    let mut host = assemble(
        root.to_path_buf(),
        online,
        &raw,
        l3_groups,
        nodes,
        isolated,
        irqs,
    );
    host.nodeless = nodeless;
    Ok(host)
}

/// Like [`read_host`], but takes the static topology (CPUs, cores, caches,
/// sockets, node CPU lists, distances) from `cache` when it was written for the
/// same online CPUs and nodes since the last boot, and reads only what changes
/// at run time (memory, huge pages, isolated CPUs, IRQ affinities). The hook
/// reads the host on every guest start; the topology is most of those reads
/// (~300 files on a 96-thread host, thousands on a 512-thread one). Any problem
/// with the cache (missing, stale, unreadable, not writable) falls back to a
/// full read: the cache can make a call faster, never wrong.
pub fn read_host_cached(root: &Path, cache: &Path) -> Result<Host, HostError> {
    let key = topology_key(root)?;
    if let Some(mut host) = load_cache(cache, &key, root) {
        refresh_dynamic(&mut host, root)?;
        return Ok(host);
    }
    let host = read_host(root)?;
    store_cache(cache, &key, &host);
    Ok(host)
}

/// Online CPUs: `cpu/online` (or every `cpuN/` when that file is missing), limited
/// to CPUs that have a directory, minus those whose own `online` file says 0.
fn read_online(cpu_dir: &Path) -> Result<CpuSet, HostError> {
    let dirs: CpuSet = numbered_entries(cpu_dir, "cpu")?.into_iter().collect();
    let online = match read_cpus(&cpu_dir.join("online"))? {
        Some(listed) => listed.intersection(&dirs),
        None => dirs,
    };
    let mut result = online.clone();
    for cpu in online.iter() {
        let path = cpu_dir.join(format!("cpu{cpu}/online"));
        if read_optional(&path)?.is_some_and(|text| trim_sysfs(&text) == "0") {
            result.remove(cpu);
        }
    }
    if result.is_empty() {
        return Err(HostError::Invalid {
            path: cpu_dir.to_path_buf(),
            message: "no online CPUs".to_string(),
        });
    }
    Ok(result)
}

/// One CPU's `topology/`. A CPU without it (seen only for offline CPUs, which are
/// not read) counts as a one-thread core on socket 0 rather than failing.
fn read_topology(cpu_dir: &Path, cpu: u32) -> Result<RawCpu, HostError> {
    let topology = cpu_dir.join(format!("cpu{cpu}/topology"));
    let siblings = read_cpus_either(&topology, "thread_siblings_list", "thread_siblings")?
        .unwrap_or_else(|| CpuSet::single(cpu));
    Ok(RawCpu {
        siblings,
        socket: read_id(&topology.join("physical_package_id"))?.unwrap_or(0),
        die: read_id(&topology.join("die_id"))?.unwrap_or(0),
    })
}

/// L3 groups, as a partition of the online CPUs that report one. CPUs already in a
/// group are not read again: on a 512-CPU host that saves thousands of reads on
/// the hook's hot path.
fn read_l3_groups(cpu_dir: &Path, online: &CpuSet) -> Result<Vec<CpuSet>, HostError> {
    let mut groups = Vec::new();
    let mut grouped = CpuSet::new();
    for cpu in online.iter() {
        if grouped.contains(cpu) {
            continue;
        }
        if let Some(shared) = read_l3_shared(cpu_dir, cpu)? {
            let mut group = shared.intersection(online);
            group.insert(cpu);
            let group = group.difference(&grouped);
            grouped = grouped.union(&group);
            groups.push(group);
        }
    }
    Ok(groups)
}

/// The CPUs sharing `cpu`'s L3, from the first `cache/indexN` with `level` 3.
fn read_l3_shared(cpu_dir: &Path, cpu: u32) -> Result<Option<CpuSet>, HostError> {
    let cache = cpu_dir.join(format!("cpu{cpu}/cache"));
    if !cache.is_dir() {
        return Ok(None);
    }
    for index in numbered_entries(&cache, "index")? {
        let dir = cache.join(format!("index{index}"));
        let level = read_optional(&dir.join("level"))?;
        if level.as_deref().map(trim_sysfs) != Some("3") {
            continue;
        }
        let kind = read_optional(&dir.join("type"))?;
        if kind.as_deref().map(trim_sysfs) == Some("Instruction") {
            continue;
        }
        if let Some(shared) = read_cpus_either(&dir, "shared_cpu_list", "shared_cpu_map")? {
            return Ok(Some(shared));
        }
    }
    Ok(None)
}

/// What the static topology depends on: the online CPUs and nodes, the boot (a
/// reboot may bring other hardware), and kvmtune's version (the cache's format).
fn topology_key(root: &Path) -> Result<String, HostError> {
    let part = |rel: &str| -> Result<String, HostError> {
        Ok(read_optional(&root.join(rel))?
            .map(|t| trim_sysfs(&t).to_string())
            .unwrap_or_default())
    };
    Ok(format!(
        "v{} cpus={} nodes={} possible={} boot={}",
        env!("CARGO_PKG_VERSION"),
        part("sys/devices/system/cpu/online")?,
        part("sys/devices/system/node/online")?,
        part("sys/devices/system/node/possible")?,
        part("proc/sys/kernel/random/boot_id")?,
    ))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TopologyCache {
    key: String,
    host: Host,
}

/// The cached host, if the cache is there, readable, for this key and this root.
fn load_cache(cache: &Path, key: &str, root: &Path) -> Option<Host> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(cache)
        .ok()?;
    let mut text = String::new();
    file.take(16 * 1024 * 1024).read_to_string(&mut text).ok()?;
    let cached: TopologyCache = serde_json::from_str(&text).ok()?;
    (cached.key == key && cached.host.root == root).then_some(cached.host)
}

/// Writes the cache atomically (temp + rename); failures are ignored.
fn store_cache(cache: &Path, key: &str, host: &Host) {
    let Some(dir) = cache.parent() else { return };
    if !dir.is_dir() {
        return;
    }
    let Ok(text) = serde_json::to_string(&TopologyCache {
        key: key.to_string(),
        host: host.clone(),
    }) else {
        return;
    };
    // Not fsynced: a cache lost in a crash is simply rebuilt.
    let _ = crate::atomicfile::write(cache, CACHE_TEMP_PREFIX, text.as_bytes(), 0o644, false);
}

/// Re-reads what changes while the host runs: free memory and huge pages per
/// node, isolated CPUs, IRQ affinities.
fn refresh_dynamic(host: &mut Host, root: &Path) -> Result<(), HostError> {
    let node_dir = root.join(NODE_DIR);
    if node_dir.is_dir() {
        for node in host.nodes.values_mut() {
            let dir = node_dir.join(format!("node{}", node.id));
            let meminfo = read_optional(&dir.join("meminfo"))?;
            node.mem_total_kib = meminfo.as_deref().and_then(|t| meminfo_kib(t, "MemTotal:"));
            node.mem_free_kib = meminfo.as_deref().and_then(|t| meminfo_kib(t, "MemFree:"));
            node.hugepages = read_hugepages(&dir.join("hugepages"))?;
        }
    } else if let Some(fresh) = uma_node(root, &host.online)?.remove(&0)
        && let Some(node) = host.nodes.get_mut(&0)
    {
        node.mem_total_kib = fresh.mem_total_kib;
        node.mem_free_kib = fresh.mem_free_kib;
        node.hugepages = fresh.hugepages;
    }
    host.isolated = read_cpus(&root.join(CPU_DIR).join("isolated"))?.unwrap_or_default();
    host.irqs = read_irqs(root)?;
    Ok(())
}

/// NUMA nodes, each online CPU in exactly one of them, and the online CPUs that no
/// node directory lists (filed under a neighbour's node, but not node-local).
fn read_nodes(
    root: &Path,
    online: &CpuSet,
    raw: &BTreeMap<u32, RawCpu>,
) -> Result<(BTreeMap<u32, Node>, CpuSet), HostError> {
    let node_dir = root.join(NODE_DIR);
    let ids = if node_dir.is_dir() {
        numbered_entries(&node_dir, "node")?
    } else {
        Vec::new()
    };
    if ids.is_empty() {
        return Ok((uma_node(root, online)?, CpuSet::new()));
    }

    // Buggy firmware can make every node claim the same CPUs; the lowest node wins.
    let mut nodes = BTreeMap::new();
    let mut assigned = CpuSet::new();
    for &id in &ids {
        let dir = node_dir.join(format!("node{id}"));
        let claimed = read_cpus_either(&dir, "cpulist", "cpumap")?
            .unwrap_or_default()
            .intersection(online)
            .difference(&assigned);
        assigned = assigned.union(&claimed);
        let meminfo = read_optional(&dir.join("meminfo"))?;
        let node = Node {
            id,
            cpus: claimed,
            mem_total_kib: meminfo.as_deref().and_then(|t| meminfo_kib(t, "MemTotal:")),
            mem_free_kib: meminfo.as_deref().and_then(|t| meminfo_kib(t, "MemFree:")),
            distances: BTreeMap::new(),
            hugepages: read_hugepages(&dir.join("hugepages"))?,
        };
        nodes.insert(id, node);
    }

    let nodeless = online.difference(&assigned);
    for cpu in nodeless.iter() {
        let home = orphan_home(cpu, &nodes, raw);
        if let Some(node) = nodes.get_mut(&home) {
            node.cpus.insert(cpu);
        }
    }

    read_distances(&node_dir, &ids, &mut nodes)?;
    Ok((nodes, nodeless))
}

/// Fills each node's distances. A `distance` row lists distances in node *index*
/// order, not by number; which nodes it indexes depends on the kernel and on what
/// was edited in a snapshot, so the row is matched to the first list of node numbers
/// of the same length: `node/online`, the node directories, `node/possible`.
/// A row matching none of them is left out rather than guessed.
fn read_distances(
    node_dir: &Path,
    ids: &[u32],
    nodes: &mut BTreeMap<u32, Node>,
) -> Result<(), HostError> {
    let online_nodes = read_cpus(&node_dir.join("online"))?;
    let possible_nodes = read_cpus(&node_dir.join("possible"))?;
    let candidates: Vec<Vec<u32>> = [
        online_nodes.map(|s| s.iter().collect()),
        Some(ids.to_vec()),
        possible_nodes.map(|s| s.iter().collect()),
    ]
    .into_iter()
    .flatten()
    .collect();
    for &id in ids {
        let path = node_dir.join(format!("node{id}/distance"));
        let Some(text) = read_optional(&path)? else {
            continue;
        };
        let row = trim_sysfs(&text)
            .split_whitespace()
            .map(|d| d.parse::<u32>())
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|e| HostError::Invalid {
                path: path.clone(),
                message: format!("bad distance row '{}': {e}", trim_sysfs(&text)),
            })?;
        let Some(order) = candidates.iter().find(|c| c.len() == row.len()) else {
            continue;
        };
        let distances = order
            .iter()
            .zip(row)
            .filter(|(other, _)| nodes.contains_key(other))
            .map(|(&other, distance)| (other, distance))
            .collect();
        if let Some(node) = nodes.get_mut(&id) {
            node.distances = distances;
        }
    }
    Ok(())
}

/// A host without NUMA information (no node directory: a kernel without
/// CONFIG_NUMA, or a snapshot that skipped it) is one node 0 holding everything,
/// with the host-wide memory and huge pages.
fn uma_node(root: &Path, online: &CpuSet) -> Result<BTreeMap<u32, Node>, HostError> {
    let meminfo = read_optional(&root.join("proc/meminfo"))?;
    let node = Node {
        id: 0,
        cpus: online.clone(),
        mem_total_kib: meminfo.as_deref().and_then(|t| meminfo_kib(t, "MemTotal:")),
        mem_free_kib: meminfo.as_deref().and_then(|t| meminfo_kib(t, "MemFree:")),
        distances: BTreeMap::new(),
        hugepages: read_hugepages(&root.join(GLOBAL_HUGEPAGES_DIR))?,
    };
    Ok(BTreeMap::from([(0, node)]))
}

/// The value in kB of `key` in a meminfo file, in either the per-node form
/// (`Node 0 MemTotal:  47925628 kB`) or the /proc form (`MemTotal:  47925628 kB`).
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key)?;
        words.next()?.parse().ok()
    })
}

/// `hugepages-<size>kB/{nr,free}_hugepages` under `dir`, by size in KiB.
fn read_hugepages(dir: &Path) -> Result<BTreeMap<u64, HugePages>, HostError> {
    let mut sizes = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(sizes),
        Err(source) => return Err(read_error(dir, source)),
    };
    for entry in entries {
        let entry = entry.map_err(|source| read_error(dir, source))?;
        let name = entry.file_name();
        let Some(size) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let size_dir = entry.path();
        let Some(total) = read_u64(&size_dir.join("nr_hugepages"))? else {
            continue;
        };
        // A missing free count is taken as none free, the safe side for the planner.
        let free = read_u64(&size_dir.join("free_hugepages"))?.unwrap_or(0);
        sizes.insert(size, HugePages { total, free });
    }
    Ok(sizes)
}

/// IRQs from `proc/irq/N/`, with names from `proc/interrupts`. A host without them
/// (most snapshots) simply has no IRQs. An IRQ that vanishes between listing and
/// reading (freed meanwhile) is skipped.
fn read_irqs(root: &Path) -> Result<Vec<Irq>, HostError> {
    let irq_dir = root.join("proc/irq");
    if !irq_dir.is_dir() {
        return Ok(Vec::new());
    }
    let actions = read_optional(&root.join("proc/interrupts"))?
        .map(|text| parse_interrupts(&text))
        .unwrap_or_default();
    let mut irqs = Vec::new();
    for number in numbered_entries(&irq_dir, "")? {
        let dir = irq_dir.join(number.to_string());
        let Some(affinity) = read_cpus_either(&dir, "smp_affinity_list", "smp_affinity")? else {
            continue;
        };
        irqs.push(Irq {
            number,
            affinity,
            actions: actions.get(&number).cloned().unwrap_or_default(),
        });
    }
    Ok(irqs)
}

/// Action names by IRQ number from /proc/interrupts. A row is `N: <one count per
/// CPU> <chip> <hwirq-handler> <actions>`; the chip/handler columns vary by kernel
/// and architecture (`IO-APIC 8-edge`, `IR-PCI-MSI-edge`, `GICv3 27 Level`), so the
/// actions are what follows the first word naming a flow handler, or the whole text
/// after the counts when no such word is found.
fn parse_interrupts(text: &str) -> BTreeMap<u32, String> {
    const HANDLERS: [&str; 8] = [
        "edge",
        "level",
        "fasteoi",
        "simple",
        "percpu",
        "percpu_devid",
        "untracked",
        "event",
    ];
    let mut lines = text.lines();
    let cpu_columns = lines.next().map_or(0, |header| {
        header
            .split_whitespace()
            .filter(|w| w.starts_with("CPU"))
            .count()
    });
    let mut actions = BTreeMap::new();
    for line in lines {
        let Some((label, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(number) = label.trim().parse::<u32>() else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let counts = words
            .iter()
            .take(cpu_columns)
            .take_while(|w| w.parse::<u64>().is_ok())
            .count();
        let after_counts = &words[counts..];
        let is_handler = |word: &&str| {
            let lower = word.to_ascii_lowercase();
            HANDLERS.iter().any(|h| {
                lower == *h
                    || lower
                        .strip_suffix(h)
                        .is_some_and(|head| head.ends_with('-'))
            })
        };
        let names = match after_counts.iter().position(is_handler) {
            Some(handler) => &after_counts[handler + 1..],
            None => after_counts,
        };
        actions.insert(number, names.join(" "));
    }
    actions
}

/// Names `<prefix><N>` in `dir`, as numbers, ascending. Numbers a CpuSet cannot hold
/// are ignored: no kernel has them.
fn numbered_entries(dir: &Path, prefix: &str) -> Result<Vec<u32>, HostError> {
    let entries = fs::read_dir(dir).map_err(|source| read_error(dir, source))?;
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| read_error(dir, source))?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = digits.parse::<u32>()
            && n < MAX_CPUS
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// A cpulist file `dir/list`, or else the hex mask file `dir/mask`; None if neither.
fn read_cpus_either(dir: &Path, list: &str, mask: &str) -> Result<Option<CpuSet>, HostError> {
    if let Some(set) = read_cpus(&dir.join(list))? {
        return Ok(Some(set));
    }
    let path = dir.join(mask);
    match read_optional(&path)? {
        Some(text) => CpuSet::parse_mask(&text)
            .map(Some)
            .map_err(|e| invalid(&path, e)),
        None => Ok(None),
    }
}

/// A cpulist file; None if it does not exist.
fn read_cpus(path: &Path) -> Result<Option<CpuSet>, HostError> {
    match read_optional(path)? {
        Some(text) => CpuSet::parse(&text).map(Some).map_err(|e| invalid(path, e)),
        None => Ok(None),
    }
}

/// An id file such as `physical_package_id`; None if missing or negative (some
/// kernels and hypervisors report -1 for "unknown").
fn read_id(path: &Path) -> Result<Option<u32>, HostError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let value: i64 = trim_sysfs(&text).parse().map_err(|e| invalid(path, e))?;
    Ok(u32::try_from(value).ok())
}

/// A file holding one unsigned number; None if it does not exist.
fn read_u64(path: &Path) -> Result<Option<u64>, HostError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    trim_sysfs(&text)
        .parse()
        .map(Some)
        .map_err(|e| invalid(path, e))
}

/// A file's text, or None if it does not exist. Bytes that are not UTF-8 are
/// replaced rather than refused: only ASCII numbers are ever taken from them.
fn read_optional(path: &Path) -> Result<Option<String>, HostError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if is_missing(&e) => Ok(None),
        Err(source) => Err(read_error(path, source)),
    }
}

/// Old kernels end some sysfs files with `\n\0` or `\0\n`.
fn trim_sysfs(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || c == '\0')
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn read_error(path: &Path, source: io::Error) -> HostError {
    HostError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> HostError {
    HostError::Invalid {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path relative to the root, content) into a fresh tempdir.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            fs::write(full, content).expect("write");
        }
        dir
    }

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).expect("cpulist")
    }

    /// Four CPUs, two SMT cores (0,2 and 1,3), one socket, no node directory.
    fn four_cpu_files() -> Vec<(String, String)> {
        let mut files = vec![(
            "sys/devices/system/cpu/online".to_string(),
            "0-3\n".to_string(),
        )];
        for cpu in 0..4 {
            let topo = format!("sys/devices/system/cpu/cpu{cpu}/topology");
            let siblings = if cpu % 2 == 0 { "0,2" } else { "1,3" };
            files.push((
                format!("{topo}/thread_siblings_list"),
                format!("{siblings}\n"),
            ));
            files.push((format!("{topo}/physical_package_id"), "0\n".to_string()));
        }
        files
    }

    fn tree_owned(files: &[(String, String)]) -> tempfile::TempDir {
        let borrowed: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        tree(&borrowed)
    }

    #[test]
    fn irq_bound_to_one_cpu_is_reported_and_unbound_ones_are_not() {
        let mut files = four_cpu_files();
        files.push((
            "proc/interrupts".to_string(),
            "           CPU0       CPU1       CPU2       CPU3\n\
             \x20 0:         40          0          0          0   IO-APIC   2-edge      timer\n\
             \x2024:          0          0       9000          0   PCI-MSI 524288-edge      eth0-TxRx-0\n\
             NMI:          0          0          0          0   Non-maskable interrupts\n"
                .to_string(),
        ));
        files.push((
            "proc/irq/0/smp_affinity_list".to_string(),
            "0-3\n".to_string(),
        ));
        files.push((
            "proc/irq/24/smp_affinity_list".to_string(),
            "2\n".to_string(),
        ));
        // Only the mask variant: 0xf = all four CPUs, so unbound.
        files.push(("proc/irq/25/smp_affinity".to_string(), "f\n".to_string()));
        let dir = tree_owned(&files);
        let host = read_host(dir.path()).expect("host");

        assert_eq!(host.irq_bound_cpus(), set("2"));
        let numbers: Vec<u32> = host.irqs.iter().map(|i| i.number).collect();
        assert_eq!(numbers, vec![0, 24, 25]);
        assert_eq!(host.irqs[0].actions, "timer");
        assert_eq!(host.irqs[1].actions, "eth0-TxRx-0");
        assert_eq!(host.irqs[2].actions, "");
        assert_eq!(host.irqs[2].affinity, set("0-3"));
    }

    #[test]
    fn per_queue_irqs_spread_over_every_cpu_bind_nothing() {
        let mut files = four_cpu_files();
        let mut interrupts = String::from("           CPU0       CPU1       CPU2       CPU3\n");
        // NVMe: one managed queue IRQ per CPU; the NIC: bound by the admin to CPU 2-3.
        for (irq, cpu) in [(40, 0), (41, 1), (42, 2), (43, 3)] {
            interrupts.push_str(&format!(
                "{irq}:          1          1          1          1   PCI-MSI 1-edge      nvme0q{}\n",
                cpu + 1
            ));
            files.push((
                format!("proc/irq/{irq}/smp_affinity_list"),
                format!("{cpu}\n"),
            ));
        }
        for (irq, queue) in [(50, 0), (51, 1)] {
            interrupts.push_str(&format!(
                "{irq}:          1          1          1          1   PCI-MSI 2-edge      eth0-TxRx-{queue}\n"
            ));
            files.push((
                format!("proc/irq/{irq}/smp_affinity_list"),
                "2-3\n".to_string(),
            ));
        }
        files.push(("proc/interrupts".to_string(), interrupts));
        let dir = tree_owned(&files);
        let host = read_host(dir.path()).expect("host");
        assert_eq!(host.irqs.len(), 6);
        assert_eq!(host.irq_bound_cpus(), set("2-3"));
    }

    #[test]
    fn four_cpu_tree_without_nodes_is_one_node_with_smt_cores() {
        let mut files = four_cpu_files();
        files.push((
            "proc/meminfo".to_string(),
            "MemTotal:        8000000 kB\nMemFree:         1000 kB\n".to_string(),
        ));
        let dir = tree_owned(&files);
        let host = read_host(dir.path()).expect("host");
        assert_eq!(host.summary(), "1 socket, 1 node, 2 cores, 4 threads");
        assert_eq!(host.core_of(2).map(|c| c.cpus.clone()), Some(set("0,2")));
        assert_eq!(host.nodes[&0].cpus, set("0-3"));
        assert_eq!(host.nodes[&0].mem_total_kib, Some(8_000_000));
        assert_eq!(host.nodes[&0].mem_free_kib, Some(1000));
        assert!(host.irqs.is_empty());
        assert!(host.irq_bound_cpus().is_empty());
        // No cache directories: no L3, and the last-level cache falls back to the socket.
        assert_eq!(host.l3_of(1), None);
        assert_eq!(host.llc_of(1), Some(&set("0-3")));
    }

    #[test]
    fn l3_groups_come_from_the_level_3_cache_index() {
        let mut files = four_cpu_files();
        for cpu in 0..4 {
            let cache = format!("sys/devices/system/cpu/cpu{cpu}/cache");
            files.push((format!("{cache}/index0/level"), "1\n".to_string()));
            files.push((
                format!("{cache}/index0/shared_cpu_list"),
                format!("{cpu}\n"),
            ));
            files.push((format!("{cache}/index3/level"), "3\n".to_string()));
            files.push((format!("{cache}/index3/type"), "Unified\n".to_string()));
            // Two L3 slices, given as masks only: CPUs 0-1 (0x3) and 2-3 (0xc).
            let mask = if cpu < 2 { "00000003" } else { "0000000c" };
            files.push((
                format!("{cache}/index3/shared_cpu_map"),
                format!("{mask}\n"),
            ));
        }
        let dir = tree_owned(&files);
        let host = read_host(dir.path()).expect("host");
        assert_eq!(host.l3_groups, vec![set("0-1"), set("2-3")]);
        assert_eq!(host.l3_of(3), Some(&set("2-3")));
        assert_eq!(host.cpus[&1].l3, Some(0));
        assert_eq!(host.llc_of(0), Some(&set("0-1")));
    }

    #[test]
    fn missing_cpu_directory_is_an_error_naming_it() {
        let dir = tree(&[("proc/meminfo", "MemTotal: 1 kB\n")]);
        let error = read_host(dir.path()).expect_err("no cpu dir");
        match &error {
            HostError::Read { path, .. } => assert!(path.ends_with("sys/devices/system/cpu")),
            other => panic!("unexpected error {other:?}"),
        }
        assert!(error.to_string().contains("sys/devices/system/cpu"));
    }

    #[test]
    fn garbage_in_an_existing_file_is_an_error_naming_it() {
        let mut files = four_cpu_files();
        files.push((
            "sys/devices/system/cpu/cpu1/topology/physical_package_id".to_string(),
            "socket one\n".to_string(),
        ));
        let dir = tree_owned(&files);
        match read_host(dir.path()) {
            Err(HostError::Invalid { path, .. }) => {
                assert!(path.ends_with("cpu1/topology/physical_package_id"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn interrupts_actions_across_kernel_formats() {
        let text = "            CPU0       CPU1\n\
                    \x20 8:          0          1   IO-APIC   8-edge      rtc0\n\
                    \x2030:          5          0   IR-PCI-MSI-edge      eth0, eth1\n\
                    \x2011:        100        200     GICv3  27 Level     arch_timer\n\
                    \x2099:          1          2   weird-chip  no-handler-word\n\
                    ERR:          0\n";
        let parsed = parse_interrupts(text);
        assert_eq!(parsed[&8], "rtc0");
        assert_eq!(parsed[&30], "eth0, eth1");
        assert_eq!(parsed[&11], "arch_timer");
        assert_eq!(parsed[&99], "weird-chip no-handler-word");
        assert_eq!(parsed.len(), 4);
    }
}
