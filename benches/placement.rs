//! Benchmark: one placement on the 512-CPU synthetic host (2 sockets × 4 nodes ×
//! 32 cores × 2 threads) with 200 running guests, against a baseline measured in the
//! same run: cloning the occupancy (what any caller that re-plans a guest does with
//! `Occupancy::without`). Run: `cargo bench --bench placement`. The figure is
//! written down in docs/placement.md. The last cases are dedicated guests that
//! do not fit as the host is: `place()` refuses, then `repack()` finds the moves
//! of shared vCPUs within a node that make room (what the planner does).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::hint::black_box;
use std::time::Instant;

use kvmtune_core::host::Host;
use std::collections::BTreeMap;

use kvmtune_core::placement::{Occupancy, Pool, Request, ThreadPolicy, eligible_cpus, place};
use kvmtune_core::policy::Policy;
use kvmtune_core::rebalance::{Options, rebalance};
use kvmtune_core::repack::{Movable, repack};
use kvmtune_core::simulate::{Simulator, Strategy};

const GIB: u64 = 1024 * 1024;

fn time_per_iter(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let host = Host::synthetic(2, 4, 32, 2, 256 * GIB);
    assert_eq!(host.online.len(), 512);
    let policy = Policy::shipped();
    // 200 running guests placed by kvmtune itself, so the occupancy looks like a
    // busy host's: 70 dedicated guests of 1-4 vCPUs, then 130 shared of 1-8.
    let mut sim = Simulator::new(&host, &policy, Strategy::Kvmtune);
    for i in 0..200u32 {
        let vcpus = [1, 2, 2, 4, 1, 2, 8, 2][i as usize % if i < 70 { 4 } else { 8 }];
        let pool = if i < 70 {
            Pool::Dedicated
        } else {
            Pool::Shared
        };
        sim.arrive(&format!("g{i:03}"), vcpus, 2 * GIB, Some(pool))
            .expect("room for 200 guests");
    }
    let occupancy: Occupancy = sim.occupancy().clone();
    let busy = sim.host().clone();
    let eligible = eligible_cpus(
        &busy,
        &policy.host.reserved_cpus,
        &Default::default(),
        false,
        None,
    );
    let request = |vcpus: u32, pool: Pool| Request {
        vcpus,
        memory_kib: 4 * GIB,
        pool,
        eligible: eligible.clone(),
        cpu_allocation_ratio: 16.0,
        thread_policy: ThreadPolicy::Prefer,
        memory_strict: false,
        hugepage_kib: None,
        memory_reserve_kib: 1 << 20,
        max_nodes: None,
    };
    let iterations = 500;
    let baseline = time_per_iter(iterations, || {
        black_box(black_box(&occupancy).clone());
    });
    println!(
        "placement on {} with {} running guests",
        host.summary(),
        occupancy.guests.len()
    );
    println!("  baseline (clone the occupancy): {baseline:9.1} µs");
    for (what, vcpus, pool) in [
        ("2 vCPUs shared", 2, Pool::Shared),
        ("2 vCPUs dedicated", 2, Pool::Dedicated),
        ("16 vCPUs shared", 16, Pool::Shared),
        ("48 vCPUs dedicated", 48, Pool::Dedicated),
    ] {
        let r = request(vcpus, pool);
        let t = time_per_iter(iterations, || {
            black_box(place(&busy, black_box(&occupancy), black_box(&r)).ok());
        });
        println!(
            "  place() {what:<20}: {t:9.1} µs ({:.1}× baseline)",
            t / baseline
        );
    }
    // Repacking: 200 running shared guests of 2-4 vCPUs (600 vCPUs, least
    // loaded first: every CPU carries shared vCPUs), all movable (as the hook
    // allows for the shared guests kvmtune placed), placed without repacking.
    let no_repack = Policy::parse(
        "version: 1\nhost:\n  repack: false\n",
        std::path::Path::new("bench.yaml"),
    )
    .unwrap();
    let mut sim = Simulator::new(&host, &no_repack, Strategy::Kvmtune);
    for i in 0..200u32 {
        let vcpus = [2, 4][i as usize % 2];
        sim.arrive(&format!("s{i:03}"), vcpus, GIB, Some(Pool::Shared))
            .expect("room for 200 shared guests");
    }
    let full: Occupancy = sim.occupancy().clone();
    let movable: BTreeMap<String, Movable> = full
        .guests
        .iter()
        .filter(|(_, c)| c.pool == Pool::Shared)
        .map(|(n, _)| {
            (
                n.clone(),
                Movable {
                    ratio: 16.0,
                    eligible: eligible.clone(),
                    emulator: None,
                    emulator_on_housekeeping: false,
                },
            )
        })
        .collect();
    println!(
        "  {} running shared guests of 2-4 vCPUs ({} CPUs without a vCPU), every one movable:",
        full.guests.len(),
        eligible.difference(&full.all_cpus()).len()
    );
    // Interleaved rounds, the fastest of each kept: baseline and cases see the
    // same machine.
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut baseline = f64::INFINITY;
    // 12 dedicated vCPUs need more than 8 moves: every phase of the search
    // runs and finds nothing (the worst case).
    for vcpus in [2, 4, 8, 12] {
        let r = request(vcpus, Pool::Dedicated);
        assert!(
            place(&busy, &full, &r).is_err(),
            "{vcpus} dedicated fit without repacking"
        );
        let moves = repack(&busy, &full, &r, &movable, 8).map_or(0, |d| d.moves.len());
        let (mut refused, mut repacked) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..10 {
            baseline = baseline.min(time_per_iter(50, || {
                black_box(black_box(&full).clone());
            }));
            refused = refused.min(time_per_iter(50, || {
                black_box(place(&busy, black_box(&full), black_box(&r)).is_err());
            }));
            repacked = repacked.min(time_per_iter(50, || {
                let refused = place(&busy, black_box(&full), black_box(&r)).is_err();
                black_box(refused.then(|| repack(&busy, &full, &r, &movable, 8)));
            }));
        }
        rows.push((format!("place() {vcpus} vCPUs dedicated, refused"), refused));
        rows.push((
            format!("place()+repack() {vcpus} vCPUs dedicated ({moves} moves)"),
            repacked,
        ));
    }
    // kvmtune rebalance on the same host: as it is (least-loaded: nothing worth
    // moving without raising contention), and after churn (every third guest
    // gone), with the CLI's default bound of 32 moves.
    let forbidden = kvmtune_core::cpuset::CpuSet::single(0);
    let mut churned = full.clone();
    churned.guests.retain(|name, _| {
        name.trim_start_matches('s')
            .parse::<u32>()
            .is_ok_and(|i| i % 3 != 0)
    });
    let home = BTreeMap::new();
    let options = Options {
        max_moves: 32,
        max_load: None,
    };
    for (what, occ) in [("as placed", &full), ("after churn (1/3 gone)", &churned)] {
        let done = rebalance(&busy, occ, &movable, &forbidden, &home, options);
        let mut t = f64::INFINITY;
        for _ in 0..5 {
            baseline = baseline.min(time_per_iter(50, || {
                black_box(black_box(&full).clone());
            }));
            t = t.min(time_per_iter(5, || {
                black_box(rebalance(
                    &busy,
                    black_box(occ),
                    &movable,
                    &forbidden,
                    &home,
                    options,
                ));
            }));
        }
        rows.push((
            format!(
                "rebalance() {what} ({} moves, idle cores {} -> {})",
                done.moves.len(),
                done.before.idle_cores,
                done.after.idle_cores
            ),
            t,
        ));
    }
    println!("  baseline (clone the occupancy), fastest of 30 rounds: {baseline:9.1} µs");
    for (what, t) in rows {
        println!("  {what:<60}: {t:9.1} µs ({:.1}× baseline)", t / baseline);
    }
}
