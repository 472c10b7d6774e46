use super::*;
use crate::placement::eligible_cpus;

const GIB: u64 = 1024 * 1024;

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).unwrap()
}

fn claim(cpus: &[&str], nodes: &str, pool: Pool) -> Claim {
    Claim {
        vcpus: cpus.iter().map(|c| set(c)).collect(),
        nodes: set(nodes),
        memory_kib: GIB,
        pool,
    }
}

fn movable(host: &Host, names: &[&str], ratio: f64) -> BTreeMap<String, Movable> {
    let eligible = eligible_cpus(host, &CpuSet::new(), &CpuSet::new(), false, None);
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Movable {
                    ratio,
                    eligible: eligible.clone(),
                    emulator: None,
                    emulator_on_housekeeping: false,
                },
            )
        })
        .collect()
}

fn occupancy(guests: &[(&str, Claim)]) -> Occupancy {
    Occupancy {
        guests: guests
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect(),
    }
}

const UNBOUNDED: Options = Options {
    max_moves: 32,
    max_load: None,
};

/// 1 socket, 2 nodes × 2 cores × 2 threads: node 0 = {0,4} {1,5}, node 1 = {2,6} {3,7}.
fn smt_host() -> Host {
    Host::synthetic(1, 2, 2, 2, 16 * GIB)
}

#[test]
fn a_two_vcpu_guest_split_over_two_cores_is_paired_within_its_node() {
    let host = smt_host();
    let occ = occupancy(&[("p", claim(&["2", "3"], "1", Pool::Shared))]);
    let done = rebalance(
        &host,
        &occ,
        &movable(&host, &["p"], 16.0),
        &set("0"),
        &BTreeMap::new(),
        UNBOUNDED,
    );
    assert_eq!(done.before.paired, 0);
    assert_eq!(done.after.paired, 1, "{:?}", done.moves);
    assert_eq!(done.moves.len(), 1);
    let m = &done.moves[0];
    assert!(m.reason.contains("SMT pairing"), "{m}");
    assert!(m.to.is_subset(&host.nodes[&1].cpus), "{m}");
    // Pairing also freed one of the two cores.
    assert_eq!(done.after.idle_cores, done.before.idle_cores + 1);
    assert_eq!(done.claims["p"].cpus().len(), 2);
}

#[test]
fn a_partly_used_core_is_emptied_onto_the_idle_thread_of_a_busy_core() {
    let host = smt_host();
    // Node 1: a on CPU 2 (core {2,6}), b on CPU 3 (core {3,7}): both partly used.
    let occ = occupancy(&[
        ("a", claim(&["2"], "1", Pool::Shared)),
        ("b", claim(&["3"], "1", Pool::Shared)),
    ]);
    let done = rebalance(
        &host,
        &occ,
        &movable(&host, &["a", "b"], 16.0),
        &set("0"),
        &BTreeMap::new(),
        UNBOUNDED,
    );
    assert_eq!(done.moves.len(), 1, "{:?}", done.moves);
    assert_eq!(done.before.partly_used_cores, 2);
    assert_eq!(done.after.partly_used_cores, 0);
    assert_eq!(done.after.idle_cores, done.before.idle_cores + 1);
    // No CPU got a second vCPU: the move went onto an idle SMT thread.
    assert_eq!(done.after.max_load, 1.0);
    assert!(
        done.moves[0].reason.contains("idle thread"),
        "{}",
        done.moves[0]
    );
}

#[test]
fn without_smt_contention_grows_only_when_the_admin_says_how_far() {
    // 1 socket, 1 node, 4 single-thread cores: CPU 0 forbidden, a on 1, b on 2.
    let host = Host::synthetic(1, 1, 4, 1, 16 * GIB);
    let occ = occupancy(&[
        ("a", claim(&["1"], "0", Pool::Shared)),
        ("b", claim(&["2"], "0", Pool::Shared)),
    ]);
    let movable = movable(&host, &["a", "b"], 16.0);
    let home = BTreeMap::new();
    let kept = rebalance(&host, &occ, &movable, &set("0"), &home, UNBOUNDED);
    assert!(kept.moves.is_empty(), "{:?}", kept.moves);
    assert_eq!(kept.after, kept.before);
    let options = Options {
        max_load: Some(2),
        ..UNBOUNDED
    };
    let packed = rebalance(&host, &occ, &movable, &set("0"), &home, options);
    assert_eq!(packed.moves.len(), 1, "{:?}", packed.moves);
    assert_eq!(packed.after.max_load, 2.0);
    assert_eq!(packed.after.idle_cores, packed.before.idle_cores + 1);
    // The guest's own ratio bounds it too.
    let tight = rebalance(
        &host,
        &occ,
        &self::movable(&host, &["a", "b"], 1.0),
        &set("0"),
        &home,
        options,
    );
    assert!(tight.moves.is_empty(), "{:?}", tight.moves);
}

#[test]
fn dedicated_forbidden_and_unmovable_guests_are_never_touched_and_max_moves_bounds_it() {
    let host = smt_host();
    // d holds core {3,7} dedicated; u (not movable) on 2; a on 1; p spread
    // over 4 (node 0) and 6 (node 1).
    let occ = occupancy(&[
        ("d", claim(&["3", "7"], "1", Pool::Dedicated)),
        ("u", claim(&["2"], "1", Pool::Shared)),
        ("a", claim(&["1"], "0", Pool::Shared)),
        ("p", claim(&["4", "6"], "0,1", Pool::Shared)),
    ]);
    let m = movable(&host, &["a", "p"], 16.0);
    let done = rebalance(&host, &occ, &m, &set("0"), &BTreeMap::new(), UNBOUNDED);
    for mv in &done.moves {
        assert!(mv.guest == "a" || mv.guest == "p", "{mv}");
        assert!(!mv.to.intersects(&set("0,3,7")), "{mv}");
        assert_eq!(
            host.nodes_of(&mv.from),
            host.nodes_of(&mv.to),
            "cross-node without a memory home: {mv}"
        );
    }
    assert!(!done.claims.contains_key("u") && !done.claims.contains_key("d"));
    let none = rebalance(
        &host,
        &occ,
        &m,
        &set("0"),
        &BTreeMap::new(),
        Options {
            max_moves: 0,
            max_load: None,
        },
    );
    assert!(none.moves.is_empty());
}

#[test]
fn a_spread_guest_is_pulled_into_the_node_that_holds_its_memory_only_when_told_so() {
    let host = smt_host();
    // s: vCPU 0 on CPU 1 (node 0), vCPU 1 on CPU 2 (node 1), memory on 0 and 1.
    let occ = occupancy(&[("s", claim(&["1", "2"], "0,1", Pool::Shared))]);
    let m = movable(&host, &["s"], 16.0);
    let unknown = rebalance(&host, &occ, &m, &set("0"), &BTreeMap::new(), UNBOUNDED);
    assert!(
        unknown
            .moves
            .iter()
            .all(|mv| host.nodes_of(&mv.from) == host.nodes_of(&mv.to)),
        "{:?}",
        unknown.moves
    );
    let home = BTreeMap::from([("s".to_string(), 1u32)]);
    let pulled = rebalance(&host, &occ, &m, &set("0"), &home, UNBOUNDED);
    assert_eq!(pulled.before.local, 0);
    assert_eq!(pulled.after.local, 1, "{:?}", pulled.moves);
    assert!(pulled.claims["s"].cpus().is_subset(&host.nodes[&1].cpus));
    assert!(
        pulled.moves[0].reason.contains("node 1"),
        "{}",
        pulled.moves[0]
    );
    // The pass pairs it afterwards: both vCPUs on one core of node 1.
    assert_eq!(pulled.after.paired, 1);
    // A home outside its memory binding is never a destination.
    let bound = occupancy(&[("s", claim(&["1", "2"], "0", Pool::Shared))]);
    let stays = rebalance(&host, &bound, &m, &set("0"), &home, UNBOUNDED);
    assert!(
        stays
            .claims
            .get("s")
            .is_none_or(|c| !c.cpus().is_subset(&host.nodes[&1].cpus))
    );
}

#[test]
fn the_emulator_threads_follow_vcpus_they_ran_with() {
    let host = smt_host();
    let occ = occupancy(&[("p", claim(&["2", "3"], "1", Pool::Shared))]);
    let mut m = movable(&host, &["p"], 16.0);
    m.get_mut("p").unwrap().emulator = Some(set("2-3"));
    let done = rebalance(&host, &occ, &m, &set("0"), &BTreeMap::new(), UNBOUNDED);
    assert_eq!(done.emulators.get("p"), Some(&done.claims["p"].cpus()));
    m.get_mut("p").unwrap().emulator = Some(set("0"));
    let apart = rebalance(&host, &occ, &m, &set("0"), &BTreeMap::new(), UNBOUNDED);
    assert!(apart.emulators.is_empty());
}

#[test]
fn a_vcpu_the_passes_move_twice_is_one_move_from_where_it_ran() {
    // 5 single-thread cores: x on CPU 1 and y on CPU 2 may move, n1 and n2 on
    // 3 and 4 may not; at most 2 vCPUs per CPU.
    let host = Host::synthetic(1, 1, 5, 1, 16 * GIB);
    let occ = occupancy(&[
        ("x", claim(&["1"], "0", Pool::Shared)),
        ("y", claim(&["2"], "0", Pool::Shared)),
        ("n1", claim(&["3"], "0", Pool::Shared)),
        ("n2", claim(&["4"], "0", Pool::Shared)),
    ]);
    let options = Options {
        max_moves: 8,
        max_load: Some(2),
    };
    let m = movable(&host, &["x", "y"], 16.0);
    let done = rebalance(&host, &occ, &m, &set("0"), &BTreeMap::new(), options);
    let mut seen = std::collections::BTreeSet::new();
    for mv in &done.moves {
        assert!(
            seen.insert((mv.guest.clone(), mv.vcpu)),
            "moved twice: {:?}",
            done.moves
        );
        // From where it ran, to where its claim ends.
        assert_eq!(
            mv.from, occ.guests[&mv.guest].vcpus[mv.vcpu as usize],
            "{mv}"
        );
        assert_eq!(
            mv.to, done.claims[&mv.guest].vcpus[mv.vcpu as usize],
            "{mv}"
        );
        assert_ne!(mv.from, mv.to, "{mv}");
    }
    assert!(
        done.after.idle_cores > done.before.idle_cores,
        "{:?}",
        done.moves
    );
}

#[test]
fn a_floating_vcpus_share_does_not_raise_the_bound() {
    // f floats over CPUs 1-2 (half a vCPU on each), a on 1 and c on 2: the most
    // loaded CPUs carry 1.5. b on 3 and d on 4 may move, but one onto the other
    // would make 2.
    let host = Host::synthetic(1, 1, 5, 1, 16 * GIB);
    let occ = occupancy(&[
        ("f", claim(&["1-2"], "0", Pool::Shared)),
        ("a", claim(&["1"], "0", Pool::Shared)),
        ("c", claim(&["2"], "0", Pool::Shared)),
        ("b", claim(&["3"], "0", Pool::Shared)),
        ("d", claim(&["4"], "0", Pool::Shared)),
    ]);
    let done = rebalance(
        &host,
        &occ,
        &movable(&host, &["b", "d"], 16.0),
        &set("0"),
        &BTreeMap::new(),
        UNBOUNDED,
    );
    assert_eq!(done.before.max_load, 1.5);
    assert!(done.moves.is_empty(), "{:?}", done.moves);
    assert_eq!(done.after.max_load, 1.5);
}

/// A small deterministic generator (xorshift): random occupancies without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// On random occupancies of hosts with and without SMT: every move keeps what a
/// move must keep, and the score never gets worse.
#[test]
fn on_random_hosts_no_move_breaks_a_rule_and_the_score_never_worsens() {
    let hosts = [
        Host::synthetic(2, 1, 4, 2, 16 * GIB),
        Host::synthetic(1, 2, 3, 2, 16 * GIB),
        Host::synthetic(2, 2, 3, 1, 16 * GIB),
    ];
    let forbidden = set("0");
    for (h, host) in hosts.iter().enumerate() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed * 7919 + h as u64);
            let cpus: Vec<u32> = host.online.difference(&forbidden).iter().collect();
            let mut load: BTreeMap<u32, u32> = BTreeMap::new();
            let mut occ = Occupancy::default();
            let mut names = Vec::new();
            let mut dedicated = CpuSet::new();
            let mut home: BTreeMap<String, u32> = BTreeMap::new();
            for g in 0..rng.next(8) + 1 {
                let name = format!("g{g}");
                let node = rng.next(host.nodes.len() as u64) as u32;
                // One guest in four may spread over a second node.
                let second = (rng.next(4) == 0)
                    .then(|| rng.next(host.nodes.len() as u64) as u32)
                    .filter(|n| *n != node);
                let node_cpus: Vec<u32> = cpus
                    .iter()
                    .copied()
                    .filter(|c| {
                        host.node_of(*c)
                            .is_some_and(|n| n == node || Some(n) == second)
                            && !dedicated.contains(*c)
                    })
                    .collect();
                let vcpus = (rng.next(3) + 1) as usize;
                let pool = if rng.next(4) == 0 {
                    Pool::Dedicated
                } else {
                    Pool::Shared
                };
                let mut chosen: Vec<u32> = Vec::new();
                for _ in 0..vcpus {
                    let free: Vec<u32> = node_cpus
                        .iter()
                        .copied()
                        .filter(|c| !chosen.contains(c))
                        .filter(|c| pool == Pool::Shared || !load.contains_key(c))
                        .collect();
                    if free.is_empty() {
                        break;
                    }
                    chosen.push(free[rng.next(free.len() as u64) as usize]);
                }
                if chosen.is_empty() {
                    continue;
                }
                for c in &chosen {
                    *load.entry(*c).or_insert(0) += 1;
                    if pool == Pool::Dedicated {
                        dedicated.insert(*c);
                    }
                }
                let claim = Claim {
                    vcpus: chosen.iter().map(|c| CpuSet::single(*c)).collect(),
                    nodes: host.nodes_of(&chosen.iter().copied().collect()),
                    memory_kib: GIB,
                    pool,
                };
                if claim.nodes.len() > 1 && rng.next(2) == 0 {
                    home.insert(name.clone(), claim.nodes.first().unwrap_or(node));
                }
                occ.guests.insert(name.clone(), claim);
                if pool == Pool::Shared && rng.next(5) != 0 {
                    names.push(name);
                }
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let m = movable(host, &refs, 4.0);
            let options = Options {
                max_moves: rng.next(6) as usize,
                max_load: None,
            };
            let done = rebalance(host, &occ, &m, &forbidden, &home, options);
            let ctx = format!("host {h} seed {seed}: {:?}", done.moves);
            assert!(done.moves.len() <= options.max_moves, "{ctx}");
            let after = Occupancy {
                guests: occ
                    .guests
                    .iter()
                    .map(|(n, c)| (n.clone(), done.claims.get(n).unwrap_or(c).clone()))
                    .collect(),
            };
            let before_max = occ.cpu_load().values().copied().fold(1.0, f64::max);
            for (cpu, l) in after.cpu_load() {
                assert!(l <= before_max + EPS, "CPU {cpu} load {l}: {ctx}");
                if dedicated.contains(cpu) {
                    let holders = after
                        .guests
                        .values()
                        .filter(|c| c.cpus().contains(cpu))
                        .count();
                    assert_eq!(holders, 1, "dedicated CPU {cpu} shared: {ctx}");
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for mv in &done.moves {
                assert!(names.contains(&mv.guest), "{ctx}");
                assert!(!mv.to.intersects(&forbidden), "{ctx}");
                assert!(seen.insert((mv.guest.clone(), mv.vcpu)), "{ctx}");
                if host.nodes_of(&mv.from) != host.nodes_of(&mv.to) {
                    // Only into the node that holds the guest's memory.
                    let into = home.get(&mv.guest).copied();
                    assert_eq!(
                        into.map(CpuSet::single),
                        Some(host.nodes_of(&mv.to)),
                        "{ctx}"
                    );
                }
            }
            for (name, c) in &done.claims {
                assert_eq!(c.cpus().len(), c.vcpus.len(), "{name} stacked: {ctx}");
            }
            assert!(done.after.paired >= done.before.paired, "{ctx}");
            assert!(done.after.local >= done.before.local, "{ctx}");
            // Pulling a guest home may take an idle core (locality first); the
            // other passes never add fragmentation.
            if !done.moves.iter().any(|m| m.reason.contains("pulls")) {
                assert!(
                    done.after.partly_used_cores <= done.before.partly_used_cores,
                    "{ctx}"
                );
                assert!(done.after.idle_cores >= done.before.idle_cores, "{ctx}");
                assert_eq!(done.after.local, done.before.local, "{ctx}");
            }
        }
    }
}
