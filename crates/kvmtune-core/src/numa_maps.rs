//! Where a process's memory lies per NUMA node (`/proc/PID/numa_maps` joined with
//! `/proc/PID/maps`), how much of it lies off a set of nodes, and the words for the
//! one-time move the hook starts at `started` for `preferred`/`interleave` memory
//! (QEMU preallocated it before anything was pinned). Moving the pages is
//! `kvmtune_sys::page_move`'s job.

use std::collections::BTreeMap;
use std::fmt;

use crate::cpuset::CpuSet;

/// One mapping of the process, as `numa_maps` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `kernelpagesize_kB`, in bytes (4 KiB unless huge pages).
    pub page_size: u64,
    /// The mapping holds anonymous pages (`anon=`): the guest RAM of a
    /// `memory-backend-ram`, QEMU's heap and stacks. File pages (libraries, the
    /// binary) are shared with other processes and stay where they are.
    pub anon: bool,
    /// Resident pages per node (`N<node>=<pages>`).
    pub pages: BTreeMap<u32, u64>,
}

impl Mapping {
    /// Resident pages on nodes outside `targets`.
    pub fn pages_off(&self, targets: &CpuSet) -> u64 {
        self.pages
            .iter()
            .filter(|(n, _)| !targets.contains(**n))
            .map(|(_, p)| p)
            .sum()
    }
}

/// The mappings of `numa_maps` whose start `maps` lists (a mapping that came or
/// went between the two reads is left out). Unparsable lines are skipped.
pub fn parse(maps: &str, numa_maps: &str) -> Vec<Mapping> {
    let ends: BTreeMap<u64, u64> = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    numa_maps
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let start = u64::from_str_radix(words.next()?, 16).ok()?;
            let end = *ends.get(&start)?;
            let mut m = Mapping {
                start,
                end,
                page_size: 4096,
                anon: false,
                pages: BTreeMap::new(),
            };
            for w in words {
                let Some((key, value)) = w.split_once('=') else {
                    continue;
                };
                let Ok(n) = value.parse::<u64>() else {
                    continue;
                };
                if key == "anon" {
                    m.anon = n > 0;
                } else if key == "kernelpagesize_kB" {
                    m.page_size = n * 1024;
                } else if let Some(node) = key.strip_prefix('N').and_then(|k| k.parse().ok()) {
                    m.pages.insert(node, n);
                }
            }
            Some(m)
        })
        .collect()
}

/// Resident bytes of the anonymous mappings on and off `targets`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub on: u64,
    pub off: u64,
}

/// The nodes other than `targets` that hold resident anonymous memory.
pub fn nodes_off(mappings: &[Mapping], targets: &CpuSet) -> CpuSet {
    mappings
        .iter()
        .filter(|m| m.anon)
        .flat_map(|m| m.pages.iter())
        .filter(|(n, p)| **p > 0 && !targets.contains(**n))
        .map(|(n, _)| *n)
        .collect()
}

impl Tally {
    pub fn of(mappings: &[Mapping], targets: &CpuSet) -> Tally {
        mappings
            .iter()
            .filter(|m| m.anon)
            .fold(Tally::default(), |t, m| {
                let off = m.pages_off(targets) * m.page_size;
                let all: u64 = m.pages.values().sum::<u64>() * m.page_size;
                Tally {
                    on: t.on + (all - off),
                    off: t.off + off,
                }
            })
    }

    /// Percent of the resident anonymous memory on the target nodes.
    pub fn percent_on(&self) -> f64 {
        let all = self.on + self.off;
        if all == 0 {
            100.0
        } else {
            self.on as f64 * 100.0 / all as f64
        }
    }
}

/// What one move did, for its syslog line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoveReport {
    pub targets: CpuSet,
    /// Where the resident anonymous memory was before the move, and is after.
    pub before: Tally,
    pub after: Tally,
    /// Pages the kernel reported it could not move (busy, pinned, the node full).
    pub not_moved_pages: u64,
    pub elapsed_ms: u64,
}

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// "252.0 MiB", or "40 KiB" under one MiB.
fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{:.1} MiB", mib(bytes))
    }
}

impl MoveReport {
    /// What the hook says when it starts a move: where the memory is now.
    pub fn starting(before: &Tally, targets: &CpuSet) -> String {
        if before.off == 0 {
            return format!(
                "memory already on node(s) {targets} ({:.0} MiB resident): nothing to move",
                mib(before.on)
            );
        }
        format!(
            "memory: {} of {} resident on other nodes; moving it to node(s) {targets} once, in the background",
            size(before.off),
            size(before.on + before.off)
        )
    }
}

impl fmt::Display for MoveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.before.off == 0 {
            return f.write_str(&MoveReport::starting(&self.before, &self.targets));
        }
        write!(
            f,
            "memory moved to node(s) {} once in {} ms: {:.1}% of {:.0} MiB there now ({:.1}% before)",
            self.targets,
            self.elapsed_ms,
            self.after.percent_on(),
            mib(self.after.on + self.after.off),
            self.before.percent_on(),
        )?;
        if self.not_moved_pages > 0 {
            write!(
                f,
                "; the kernel could not move {} page(s)",
                self.not_moved_pages
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 fe:01 1234 /usr/bin/qemu-system-x86_64
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
7f0020000000-7f0020021000 rw-p 00000000 00:00 0 [heap]
7f0030000000-7f0030400000 rw-p 00000000 00:00 0
";
    const NUMA_MAPS: &str = "\
55d0c0000000 default file=/usr/bin/qemu-system-x86_64 mapped=400 N0=300 N2=100 kernelpagesize_kB=4
7f0000000000 default anon=65536 dirty=65536 active=0 N0=1000 N1=60000 N3=4536 kernelpagesize_kB=4
7f0020000000 default heap anon=33 dirty=33 N1=33 kernelpagesize_kB=4
7f0030000000 bind:1 anon=2 dirty=2 N1=2 kernelpagesize_kB=2048
7f0040000000 default anon=1 N0=1 kernelpagesize_kB=4
garbage line
";

    fn set(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    #[test]
    fn numa_maps_joined_with_maps() {
        let m = parse(MAPS, NUMA_MAPS);
        // The last numa_maps line has no mapping in maps (gone meanwhile).
        assert_eq!(m.len(), 4);
        assert!(!m[0].anon);
        assert_eq!(m[1].end - m[1].start, 256 << 20);
        assert_eq!(m[1].pages[&1], 60000);
        assert_eq!(m[3].page_size, 2 << 20);
        assert_eq!(m[1].pages_off(&set("1")), 5536);
    }

    #[test]
    fn only_anonymous_memory_counts_and_the_nodes_it_is_on() {
        let m = parse(MAPS, NUMA_MAPS);
        // File pages (the binary on nodes 0 and 2) are shared: not counted.
        assert_eq!(nodes_off(&m, &set("1")), set("0,3"));
        assert!(nodes_off(&m, &set("0,1,3")).is_empty());
        let t = Tally::of(&m, &set("1"));
        assert_eq!(t.off, 5536 * 4096);
        assert_eq!(t.on, (60000 + 33) * 4096 + 2 * (2 << 20));
        assert!((t.percent_on() - 91.7).abs() < 0.1, "{}", t.percent_on());
        assert_eq!(Tally::default().percent_on(), 100.0);
    }

    #[test]
    fn the_report_says_where_the_memory_is() {
        let before = Tally {
            on: 4 << 20,
            off: 252 << 20,
        };
        assert_eq!(
            MoveReport::starting(&before, &set("1")),
            "memory: 252.0 MiB of 256.0 MiB resident on other nodes; moving it to node(s) 1 once, in the background"
        );
        let mut r = MoveReport {
            targets: set("1"),
            before,
            after: Tally {
                on: 250 << 20,
                off: 6 << 20,
            },
            not_moved_pages: 3,
            elapsed_ms: 800,
        };
        assert_eq!(
            r.to_string(),
            "memory moved to node(s) 1 once in 800 ms: 97.7% of 256 MiB there now (1.6% before); \
             the kernel could not move 3 page(s)"
        );
        r.before.off = 0;
        assert_eq!(
            r.to_string(),
            "memory already on node(s) 1 (4 MiB resident): nothing to move"
        );
        let little = Tally {
            on: 270 << 20,
            off: 40 << 10,
        };
        assert!(
            MoveReport::starting(&little, &set("1")).starts_with("memory: 40 KiB of 270.0 MiB"),
            "{}",
            MoveReport::starting(&little, &set("1"))
        );
    }
}
