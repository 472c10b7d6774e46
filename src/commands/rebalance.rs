//! `kvmtune rebalance`: the deliberate compaction of a running host after churn
//! ([`kvmtune_core::rebalance`]): restore SMT pairing, free whole cores, pull a
//! spread guest into the node that holds its memory (read from `numa_maps`), with
//! a score before and after and the moves with their reasons. `--dry-run` (the
//! default) changes nothing; `--apply` makes the moves with the hook's own code
//! ([`crate::hook::moves`]: cgroup `cpuset.cpus`, thread affinity, read back),
//! under the ledger lock, and records them in the ledger; a guest whose move
//! fails is put back where it ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::exit::{self, fail};
use crate::hook::moves::{self, Applied};
use crate::inputs::{self as cli, Sources};
use kvmtune_core::admission::forbidden_cpus;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, Ledger};
use kvmtune_core::numa_maps::Mapping;
use kvmtune_core::policy::Policy;
use kvmtune_core::rebalance::{Options, Rebalanced, Score, rebalance};
use kvmtune_core::repack::{Move, moved_breaches};
use kvmtune_core::runstate::LiveGuest;
use kvmtune_sys::ledger_store::{self as ledger, LOCK_TIMEOUT, Locked};
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::logging::sanitize;
use kvmtune_sys::page_move;
use kvmtune_sys::roots::Roots;

/// Share of a guest's resident RAM one node must hold to be its home node. Not
/// all of it: the kernel's NUMA balancing pulls the pages a vCPU on another node
/// touches toward that vCPU while the guest is spread (measured in the multi-NUMA
/// VM: 94% → 88% within seconds); once every vCPU runs in the home node, it pulls
/// them home.
const HOME_SHARE: f64 = 0.8;

/// The version of the `--json` document.
pub const JSON_SCHEMA_VERSION: u32 = 1;

const REBALANCE_HELP: &str = "\
Moves only guests kvmtune placed in the shared pool itself and that run (never a
dedicated guest, never one whose own XML pins it under existing_pins: keep (pins
kvmtune apply/converge wrote are recorded as kvmtune's and do not count), never
one with moves pending at another guest's start); never onto CPU0, a reserved, an
IRQ or a dedicated CPU; each vCPU within its NUMA node, except to pull a spread
guest into the node that holds at least 80% of its RAM (numa_maps), which
moves no page. Three passes, at most --max-moves moves: home node (locality
first: it may take an idle core), SMT pairing (onto an idle sibling), whole cores
(a busy core emptied onto other busy cores of its node, never making an idle core
busy). No CPU gets more vCPUs than the most loaded CPU of its node
already has, unless --max-load says how far (and never past the guest's
cpu_allocation_ratio). Turned off with the policy's host.repack: false.

--dry-run (the default) prints the score before and after and the moves with
their reasons, and changes nothing. --apply makes them with the hook's code:
libvirt's per-vCPU cgroup cpuset.cpus, then the thread's affinity, read back from
/proc; emulator threads that ran on the guest's vCPU CPUs follow them. All under
the ledger lock, the ledger updated with each guest's new claim; a guest whose
move fails goes back where it ran.

Exit codes: 0 nothing to move, or every move applied; 1 moves proposed (dry
run), or a move failed (that guest put back), or the moves would break the
placement invariant (nothing moved); 2 usage or policy error; 3 the host or the
ledger cannot be read or written (after --apply: every moved guest put back).";

#[derive(Debug, Args)]
#[command(after_help = REBALANCE_HELP)]
pub struct RebalanceArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Make the moves (default: print them and change nothing)
    #[arg(long, conflicts_with = "dry_run")]
    pub apply: bool,
    /// Print the moves and the score, change nothing (the default)
    #[arg(long)]
    pub dry_run: bool,
    /// Make at most N moves
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_moves: usize,
    /// Let a move bring a CPU to N vCPUs (default: the most any CPU of its node
    /// carries now, so contention never grows)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_load: Option<u32>,
    /// Print JSON (schema_version 1) instead of text
    #[arg(long)]
    pub json: bool,
}

/// How one guest's moves went with `--apply`.
#[derive(Debug, Serialize)]
struct Outcome {
    guest: String,
    /// `moved`, `failed` (put back), `superseded` (its claim changed meanwhile).
    result: &'static str,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    schema_version: u32,
    dry_run: bool,
    /// The guests that may move.
    movable: Vec<&'a str>,
    before: Score,
    after: Score,
    moves: &'a [Move],
    /// With `--apply`: each moved guest's outcome.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    applied: Vec<Outcome>,
}

/// The node holding at least [`HOME_SHARE`] of the guest's resident RAM: the
/// anonymous mappings the size of a RAM block (the guest's memory, or one NUMA
/// cell of it: at least half of `memory_bytes / cells`, at most `memory_bytes`
/// plus alignment), so that QEMU's own heap and buffers do not count; all
/// anonymous mappings when none is that size.
fn home_node(mappings: &[Mapping], memory_bytes: u64, cells: usize) -> Option<u32> {
    let smallest = memory_bytes / (2 * cells.max(1) as u64);
    let largest = memory_bytes + 4 * 1024 * 1024;
    let is_ram = |m: &&Mapping| {
        let size = m.end.saturating_sub(m.start);
        m.anon && size >= smallest && size <= largest
    };
    let ram: Vec<&Mapping> = mappings.iter().filter(is_ram).collect();
    let counted: Vec<&Mapping> = if ram.is_empty() {
        mappings.iter().filter(|m| m.anon).collect()
    } else {
        ram
    };
    let mut per_node: BTreeMap<u32, u64> = BTreeMap::new();
    for m in counted {
        for (node, pages) in &m.pages {
            *per_node.entry(*node).or_insert(0) += pages * m.page_size;
        }
    }
    let total: u64 = per_node.values().sum();
    per_node
        .into_iter()
        .find(|(_, bytes)| total > 0 && *bytes as f64 >= HOME_SHARE * total as f64)
        .map(|(node, _)| node)
}

/// What the rebalancing works from.
struct Snapshot {
    policy: Policy,
    host: Host,
    env: Roots,
    live: BTreeMap<String, LiveGuest>,
    proc_root: PathBuf,
}

impl Snapshot {
    fn read(args: &RebalanceArgs) -> Result<Snapshot> {
        let policy = cli::load_policy(args.sources.policy.as_deref())?;
        let host = cli::read_host(&args.sources.host_root)?;
        let env = Roots::from_process_env();
        let proc_root = cli::proc_root(&args.sources.host_root);
        let live = runstate::running(&env.paths.libvirt_run_dir);
        Ok(Snapshot {
            policy,
            host,
            env,
            live,
            proc_root,
        })
    }

    /// The rebalancing of `ledger`'s claims, checked against the placement
    /// invariant; the names of the guests that may move.
    fn plan(&self, ledger: &Ledger, args: &RebalanceArgs) -> Result<(Rebalanced, Vec<String>)> {
        let pending = moves::pending_guests(&self.env.paths.run_dir);
        let movable: BTreeMap<_, _> = moves::movable_guests(
            &self.policy,
            &self.env.paths.run_dir,
            &ledger.guests,
            &self.host,
            None,
        )
        .into_iter()
        .filter(|(name, _)| {
            !pending.contains(name)
                && self
                    .live
                    .get(name)
                    .is_some_and(|g| g.qemu_pid.is_some() && !g.vcpu_tids.is_empty())
        })
        .collect();
        let occupancy = ledger.occupancy();
        // The home node of each spread guest that may move, from its numa_maps.
        let memory_home: BTreeMap<String, u32> = movable
            .keys()
            .filter(|name| {
                occupancy
                    .guests
                    .get(*name)
                    .is_some_and(|c| self.host.nodes_of(&c.cpus()).len() > 1)
            })
            .filter_map(|name| {
                let live = self.live.get(name)?;
                let mappings = page_move::read_mappings(&self.proc_root, live.qemu_pid?).ok()?;
                let memory_kib = occupancy.guests.get(name)?.memory_kib;
                let cells = live.domain.as_ref().map_or(1, |d| d.guest_numa_cells);
                Some((
                    name.clone(),
                    home_node(&mappings, memory_kib * 1024, cells)?,
                ))
            })
            .collect();
        let forbidden = forbidden_cpus(&self.policy, &self.host);
        let options = Options {
            max_moves: args.max_moves,
            max_load: args.max_load,
        };
        let done = rebalance(
            &self.host,
            &occupancy,
            &movable,
            &forbidden,
            &memory_home,
            options,
        );
        let mut after = occupancy.clone();
        for (name, claim) in &done.claims {
            after.guests.insert(name.clone(), claim.clone());
        }
        let breaches = moved_breaches(
            &done.claims,
            &done.emulators,
            &after,
            &movable,
            &ledger.guests,
            &forbidden,
        );
        if let Some((guest, breach)) = breaches.first() {
            // The passes never propose this; the one invariant check says so
            // before anything moves.
            return Err(fail(
                exit::FINDINGS,
                format!(
                    "rebalance: guest '{}': {breach}; nothing moved",
                    sanitize(guest)
                ),
            ));
        }
        Ok((done, movable.into_keys().collect()))
    }
}

/// The ledger for a dry run, read without the lock: none yet is an empty one
/// (kvmtune placed nothing); one that cannot be opened (not root) or parsed is
/// an error, never "nothing to move".
fn read_ledger(run_dir: &Path) -> Result<Ledger> {
    let path = run_dir.join("ledger.json");
    match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
        Err(e) => {
            return Err(fail(
                exit::INPUT,
                format!("{}: {e}; nothing to rebalance", path.display()),
            ));
        }
        Ok(_) => {}
    }
    ledger::read_unlocked(run_dir).ok_or_else(|| {
        fail(
            exit::INPUT,
            format!(
                "{}: unreadable (the next hook call recovers it); nothing to rebalance",
                path.display()
            ),
        )
    })
}

/// `kvmtune rebalance`.
pub fn run(args: &RebalanceArgs) -> Result<ExitCode> {
    let snapshot = Snapshot::read(args)?;
    let run_dir = snapshot.env.paths.run_dir.clone();
    if !args.apply {
        let ledger = read_ledger(&run_dir)?;
        let (done, movable) = snapshot.plan(&ledger, args)?;
        print(
            args,
            &done,
            &movable,
            Vec::new(),
            true,
            snapshot.policy.host.repack,
        )?;
        let code = if done.moves.is_empty() {
            exit::OK
        } else {
            exit::FINDINGS
        };
        return Ok(ExitCode::from(code));
    }
    let mut locked = Locked::acquire(&run_dir, LOCK_TIMEOUT)
        .map_err(|e| fail(exit::INPUT, format!("{}: {e}", run_dir.display())))?;
    let (done, movable) = snapshot.plan(&locked.ledger, args)?;
    let mut by_guest: BTreeMap<&str, Vec<Move>> = BTreeMap::new();
    for m in &done.moves {
        by_guest.entry(&m.guest).or_default().push(m.clone());
    }
    let mut outcomes = Vec::new();
    let mut names = Vec::new();
    let mut moved: Vec<(String, Entry, Vec<Move>)> = Vec::new();
    for (guest, guest_moves) in by_guest {
        let before = locked.ledger.guests.get(guest).cloned();
        let outcome = apply_one(&snapshot.env, &mut locked, &done, guest, &guest_moves);
        if let (Some(before), "moved") = (before, outcome.result) {
            moved.push((guest.to_string(), before, guest_moves));
        }
        names.push(guest.to_string());
        outcomes.push(outcome);
    }
    if let Err(e) = locked.save() {
        // The threads moved but the ledger cannot say so: put them back, so
        // that what runs is what the ledger on disk holds.
        let mut notes = Vec::new();
        for (guest, before, guest_moves) in &moved {
            let emulator = done.emulators.contains_key(guest).then_some(before);
            if let Err(why) = put_back(&snapshot.env, guest, before, guest_moves, emulator) {
                notes.push(format!("guest '{}': {why}", sanitize(guest)));
            }
        }
        let tail = if notes.is_empty() {
            "every moved guest put back where it ran".to_string()
        } else {
            format!("putting back failed for {}", notes.join(", "))
        };
        return Err(fail(
            exit::INPUT,
            format!("{}: {e}; {tail}", run_dir.display()),
        ));
    }
    drop(locked);
    // The definitions whose pins kvmtune wrote now say where the moved guests
    // ran: queued for kvmtune converge (the path unit runs it), once the ledger
    // says where they run.
    for (o, guest) in outcomes.iter_mut().zip(&names) {
        if o.result != "moved" {
            continue;
        }
        if let Some(note) = moves::queue_moved_definition(&snapshot.env, &snapshot.policy, guest) {
            o.detail = format!("{}; {note}", o.detail);
        }
    }
    let failed = outcomes.iter().any(|o| o.result == "failed");
    print(
        args,
        &done,
        &movable,
        outcomes,
        false,
        snapshot.policy.host.repack,
    )?;
    Ok(ExitCode::from(if failed {
        exit::FINDINGS
    } else {
        exit::OK
    }))
}

/// Applies one guest's moves and records its new claim; on failure puts its
/// threads back where they ran and leaves its claim as it was.
fn apply_one(
    env: &Roots,
    locked: &mut Locked,
    done: &Rebalanced,
    guest: &str,
    guest_moves: &[Move],
) -> Outcome {
    let who = sanitize(guest);
    let (Some(entry), Some(claim)) = (locked.ledger.guests.get(guest), done.claims.get(guest))
    else {
        return Outcome {
            guest: who,
            result: "superseded",
            detail: "no longer in the ledger: nothing moved".into(),
        };
    };
    let before = entry.clone();
    let new_emulator = done.emulators.get(guest).cloned();
    match moves::apply_guest(env, guest, guest_moves, new_emulator.as_ref()) {
        Applied::Done(effective) => {
            if let Some(entry) = locked.ledger.guests.get_mut(guest) {
                entry.vcpus = claim.vcpus.clone();
                entry.cpus = claim.cpus();
                if new_emulator.is_some() {
                    entry.emulator = new_emulator;
                }
            }
            Outcome {
                guest: who,
                result: "moved",
                detail: effective.join(" "),
            }
        }
        Applied::Superseded => Outcome {
            guest: who,
            result: "superseded",
            detail: "its claim changed meanwhile: nothing moved".into(),
        },
        Applied::Failed(why) => {
            // Put back what may have moved before the failure: every vCPU of
            // the moves onto its CPUs in the ledger (which still holds them).
            let emulator = new_emulator.is_some().then_some(&before);
            let restored = match put_back(env, guest, &before, guest_moves, emulator) {
                Ok(()) => "put back where it ran".to_string(),
                Err(e) => format!("putting it back failed too ({e})"),
            };
            Outcome {
                guest: who,
                result: "failed",
                detail: format!("{why}; {restored}; its claim unchanged"),
            }
        }
    }
}

/// Puts the vCPUs `guest_moves` touched back on their CPUs in `before` (the
/// guest's ledger entry before the moves), and its other threads on `before`'s
/// emulator CPUs when `emulator` says they had followed the vCPUs.
fn put_back(
    env: &Roots,
    guest: &str,
    before: &Entry,
    guest_moves: &[Move],
    emulator: Option<&Entry>,
) -> std::result::Result<(), String> {
    let mut vcpus: Vec<u32> = guest_moves.iter().map(|m| m.vcpu).collect();
    vcpus.sort_unstable();
    vcpus.dedup();
    let back: Vec<Move> = vcpus
        .into_iter()
        .filter_map(|v| {
            let to = before.vcpus.get(v as usize)?.clone();
            Some(Move {
                guest: guest.to_string(),
                vcpu: v,
                from: CpuSet::new(),
                to,
                reason: "put back after a failed move".into(),
            })
        })
        .collect();
    match moves::apply_guest(
        env,
        guest,
        &back,
        emulator.and_then(|e| e.emulator.as_ref()),
    ) {
        Applied::Failed(e) => Err(e),
        Applied::Done(_) | Applied::Superseded => Ok(()),
    }
}

fn ratio(part: usize, whole: usize) -> String {
    if whole == 0 {
        "n/a".into()
    } else {
        format!("{part}/{whole}")
    }
}

fn print(
    args: &RebalanceArgs,
    done: &Rebalanced,
    movable: &[String],
    applied: Vec<Outcome>,
    dry_run: bool,
    repack_on: bool,
) -> Result<()> {
    if args.json {
        let report = Report {
            schema_version: JSON_SCHEMA_VERSION,
            dry_run,
            movable: movable.iter().map(String::as_str).collect(),
            before: done.before,
            after: done.after,
            moves: &done.moves,
            applied,
        };
        return crate::output::print_stdout(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let (b, a) = (&done.before, &done.after);
    let mut out = String::new();
    let names = if movable.is_empty() && !repack_on {
        "none (the policy's host.repack is false)".to_string()
    } else if movable.is_empty() {
        "none".to_string()
    } else {
        movable
            .iter()
            .map(|n| sanitize(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!(
        "guests that may move ({}): {names}\n",
        movable.len()
    ));
    out.push_str(&format!("{:<28} {:>8} {:>8}\n", "score", "before", "after"));
    let rows: [(&str, String, String); 5] = [
        (
            "idle cores",
            b.idle_cores.to_string(),
            a.idle_cores.to_string(),
        ),
        (
            "partly used cores",
            b.partly_used_cores.to_string(),
            a.partly_used_cores.to_string(),
        ),
        (
            "most vCPUs on one CPU",
            format!("{:.1}", b.max_load),
            format!("{:.1}", a.max_load),
        ),
        (
            "2-vCPU guests SMT-paired",
            ratio(b.paired, b.pair_guests),
            ratio(a.paired, a.pair_guests),
        ),
        (
            "guests in one NUMA node",
            ratio(b.local, b.guests),
            ratio(a.local, a.guests),
        ),
    ];
    for (label, before, after) in rows {
        out.push_str(&format!("{label:<28} {before:>8} {after:>8}\n"));
    }
    if done.moves.is_empty() {
        out.push_str("nothing to move\n");
    } else {
        out.push_str(&format!("moves ({}):\n", done.moves.len()));
        for m in &done.moves {
            out.push_str(&format!("  {}\n", sanitize(&m.to_string())));
        }
        if dry_run {
            out.push_str("dry run: nothing changed; kvmtune rebalance --apply makes these moves\n");
        }
    }
    for o in &applied {
        out.push_str(&format!("{} '{}': {}\n", o.result, o.guest, o.detail));
    }
    crate::output::print_stdout(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn mapping(anon: bool, size: u64, pages: &[(u32, u64)]) -> Mapping {
        Mapping {
            start: 0,
            end: size,
            page_size: 4096,
            anon,
            pages: pages.iter().copied().collect(),
        }
    }

    #[test]
    fn the_home_node_holds_four_fifths_of_the_guest_ram() {
        let ram = |pages: &[(u32, u64)]| mapping(true, 64 * MIB, pages);
        assert_eq!(home_node(&[ram(&[(0, 5), (1, 95)])], 64 * MIB, 1), Some(1));
        assert_eq!(home_node(&[ram(&[(0, 15), (1, 85)])], 64 * MIB, 1), Some(1));
        assert_eq!(home_node(&[ram(&[(0, 30), (1, 70)])], 64 * MIB, 1), None);
        // QEMU's heap and TCG buffers (other sizes) and file pages do not count.
        let heap = mapping(true, 8 * MIB, &[(0, 1000)]);
        let tcg = mapping(true, 1024 * MIB, &[(0, 1000)]);
        let lib = mapping(false, 64 * MIB, &[(0, 1000)]);
        assert_eq!(
            home_node(&[ram(&[(1, 100)]), heap, tcg, lib], 64 * MIB, 1),
            Some(1)
        );
        // Two guest NUMA cells of 32 MiB each, both on node 1.
        let cell = |pages: &[(u32, u64)]| mapping(true, 32 * MIB, pages);
        assert_eq!(
            home_node(&[cell(&[(1, 50)]), cell(&[(1, 50)])], 64 * MIB, 2),
            Some(1)
        );
        // No RAM-sized mapping: every anonymous mapping counts.
        assert_eq!(
            home_node(&[mapping(true, MIB, &[(1, 9), (0, 1)])], 64 * MIB, 1),
            Some(1)
        );
        assert_eq!(home_node(&[], 64 * MIB, 1), None);
    }

    /// A real thread of this test process stands for a guest's vCPU thread that
    /// a failed rebalancing had already moved: put_back sets it back to the CPU
    /// the ledger entry holds, whatever the moves said.
    #[test]
    fn put_back_restores_the_ledgers_cpus_on_a_real_thread() {
        use kvmtune_core::placement::Pool;
        use kvmtune_sys::affinity;
        let guest = crate::test_support::ThreadGuest::start();
        let (env, pid, tid) = (&guest.env, guest.pid, guest.tid);
        let proc_root = Path::new("/proc");
        let allowed = affinity::allowed_cpus(proc_root, pid, tid).unwrap();
        let cpus: Vec<u32> = allowed.iter().collect();
        assert!(cpus.len() >= 2, "this test needs 2 CPUs, has {allowed}");
        let (home, away) = (cpus[0], cpus[cpus.len() - 1]);
        affinity::set_thread_affinity(tid, &CpuSet::single(away)).unwrap();
        let before = Entry {
            uuid: None,
            cpus: CpuSet::single(home),
            nodes: CpuSet::single(0),
            vcpus: vec![CpuSet::single(home)],
            emulator: None,
            memory_kib: 1024,
            pool: Pool::Shared,
            claimed_at: 1,
            state: kvmtune_core::ledger::EntryState::Running,
            rule: "defaults".into(),
            floating: false,
        };
        // The moves as planned: home -> away, then (failed) away -> a CPU that
        // does not exist; the thread is on `away`.
        let planned = [Move {
            guest: "s".into(),
            vcpu: 0,
            from: CpuSet::single(away),
            to: CpuSet::single(1000),
            reason: "test".into(),
        }];
        put_back(env, "s", &before, &planned, None).unwrap();
        assert_eq!(
            affinity::allowed_cpus(proc_root, pid, tid).unwrap(),
            CpuSet::single(home)
        );
    }

    #[test]
    fn an_unset_ratio_reads_n_a() {
        assert_eq!(ratio(0, 0), "n/a");
        assert_eq!(ratio(1, 2), "1/2");
    }
}
