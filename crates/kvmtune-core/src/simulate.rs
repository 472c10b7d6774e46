//! `kvmtune simulate`: replays a workload (guest arrivals and departures) on a host
//! through the same [`place`] the hook uses, or through one of two baselines, and
//! measures the placement quality: NUMA- and cache-locality, SMT pairing, spanning,
//! overcommit, reserved-CPU violations and placement time.
//!
//! Pure apart from the clock: a [`Host`], a [`Policy`] and a [`Workload`] in, a
//! [`Report`] out. The file format and the baselines are described in
//! docs/placement.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::placement::{
    Claim, NodeMemory, Occupancy, Pool, Request, committed_memory, eligible_cpus, node_memory,
    place,
};
use crate::policy::{GuestFacts, MemoryMode, Policy};
use crate::repack::{Admitted, Movable, Move, Repacked, breaches, repack};

/// Largest vCPU count a workload may ask for (libvirt's own limit is lower).
pub const MAX_VCPUS: u32 = 4096;

/// How guests are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// kvmtune's placement engine (`place`), settings from the policy.
    Kvmtune,
    /// What libvirt does without a hook: no pinning, every vCPU floats over all
    /// online CPUs (CPU0 and reserved CPUs included).
    LibvirtDefault,
    /// A naive hook: each vCPU on its own CPU, first fit in CPU-number order,
    /// skipping CPU0 and reserved/IRQ CPUs and keeping each pool in its CPU set
    /// (`host.shared_cpus` / `host.dedicated_cpus`); shared guests overcommit only
    /// once no idle CPU is left.
    NaiveFirstFit,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [
        Strategy::Kvmtune,
        Strategy::LibvirtDefault,
        Strategy::NaiveFirstFit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Kvmtune => "kvmtune",
            Strategy::LibvirtDefault => "libvirt-default",
            Strategy::NaiveFirstFit => "naive-first-fit",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One workload event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Arrive {
        name: String,
        vcpus: u32,
        memory_kib: u64,
        /// None: the pool the policy gives the guest.
        pool: Option<Pool>,
    },
    Depart {
        name: String,
    },
}

/// A parsed workload: events in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Workload {
    pub events: Vec<Event>,
}

/// A workload file that could not be read or is invalid, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot read workload {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    arrive: Option<String>,
    depart: Option<String>,
    vcpus: Option<u32>,
    memory: Option<RawSize>,
    pool: Option<Pool>,
}

/// A memory size: `4G`, `512M`, `1GiB`, `2048K`, or a bare number of MiB.
#[derive(Debug)]
struct RawSize(serde_yaml_ng::Value);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_yaml_ng::Value::deserialize(d).map(RawSize)
    }
}

/// Parses a memory size into KiB: `4G`, `4GiB`, `512M`, `2048K`, `1T`; a bare
/// number is MiB. Binary units throughout.
pub fn parse_size_kib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid memory size '{text}' (expected e.g. 4G, 512M)"))?;
    let unit = unit.trim();
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "K" | "KB" | "KIB" => 1,
        "" | "M" | "MB" | "MIB" => 1024,
        "G" | "GB" | "GIB" => 1024 * 1024,
        "T" | "TB" | "TIB" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "invalid memory size '{text}': unknown unit '{unit}' (K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .filter(|k| *k > 0)
        .ok_or_else(|| format!("invalid memory size '{text}': zero or too large"))
}

impl Workload {
    /// Parses workload YAML: a list of `{arrive: NAME, vcpus: N, memory: SIZE,
    /// pool: shared|dedicated}` and `{depart: NAME}` events. `source` names the text
    /// in errors.
    pub fn parse(text: &str, source: &str) -> Result<Workload, WorkloadError> {
        let invalid = |line: usize, column: usize, message: String| WorkloadError::Invalid {
            path: source.to_string(),
            line,
            column,
            message,
        };
        let raw: Vec<RawEvent> = match serde_yaml_ng::from_str::<Option<Vec<RawEvent>>>(text) {
            Ok(events) => events.unwrap_or_default(),
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((1, 1));
                let message = e.to_string();
                // serde_yaml_ng appends " at line L column C"; the prefix says it.
                let mut message = match message.find(" at line ") {
                    Some(i) => message[..i].to_string(),
                    None => message,
                };
                // serde_yaml_ng names the item as `.[N]: `; say `event N+1: `.
                if let Some(rest) = message.strip_prefix(".[")
                    && let Some((index, tail)) = rest.split_once("]: ")
                    && let Ok(index) = index.parse::<usize>()
                {
                    message = format!("event {}: {tail}", index + 1);
                }
                return Err(invalid(line, column, message));
            }
        };
        let starts = item_lines(text);
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut events = Vec::with_capacity(raw.len());
        for (index, event) in raw.into_iter().enumerate() {
            let line = starts.get(index).copied().unwrap_or(1);
            let bad = |message: String| invalid(line, 1, format!("event {}: {message}", index + 1));
            match (event.arrive, event.depart) {
                (Some(name), None) => {
                    if name.is_empty() {
                        return Err(bad("empty guest name".into()));
                    }
                    let vcpus = event
                        .vcpus
                        .ok_or_else(|| bad(format!("arrival of '{name}' needs `vcpus`")))?;
                    if vcpus == 0 || vcpus > MAX_VCPUS {
                        return Err(bad(format!(
                            "vcpus {vcpus} out of range (1 to {MAX_VCPUS})"
                        )));
                    }
                    let memory = event
                        .memory
                        .ok_or_else(|| bad(format!("arrival of '{name}' needs `memory`")))?;
                    let memory_text = match &memory.0 {
                        serde_yaml_ng::Value::String(s) => s.clone(),
                        serde_yaml_ng::Value::Number(n) => n.to_string(),
                        _ => return Err(bad("memory must be a size such as 4G or 512M".into())),
                    };
                    let memory_kib = parse_size_kib(&memory_text).map_err(bad)?;
                    if !running.insert(name.clone()) {
                        return Err(bad(format!(
                            "'{name}' arrives again without having departed"
                        )));
                    }
                    events.push(Event::Arrive {
                        name,
                        vcpus,
                        memory_kib,
                        pool: event.pool,
                    });
                }
                (None, Some(name)) => {
                    if event.vcpus.is_some() || event.memory.is_some() || event.pool.is_some() {
                        return Err(bad(format!(
                            "departure of '{name}' takes no vcpus, memory or pool"
                        )));
                    }
                    if !running.remove(&name) {
                        return Err(bad(format!("'{name}' departs but is not running")));
                    }
                    events.push(Event::Depart { name });
                }
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "an event is either `arrive` or `depart`, not both".into()
                    ));
                }
                (None, None) => {
                    return Err(bad("an event needs `arrive: NAME` or `depart: NAME`".into()));
                }
            }
        }
        Ok(Workload { events })
    }

    pub fn arrivals(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Arrive { .. }))
            .count()
    }
}

/// Line numbers where the top-level list items start (for errors found after
/// deserializing).
fn item_lines(text: &str) -> Vec<usize> {
    let mut indent = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        if trimmed.starts_with('-') {
            let here = line.len() - trimmed.len();
            let top = *indent.get_or_insert(here);
            if here == top {
                out.push(i + 1);
            }
        }
    }
    out
}

/// A guest that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub guest: String,
    pub vcpus: u32,
    /// The pool asked for (or given by the policy).
    pub pool: Pool,
    pub reason: String,
}

/// A guest whose vCPUs span several NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spanning {
    pub guest: String,
    pub vcpus: u32,
    pub nodes: usize,
}

/// Where one placed guest went, so every figure of a report can be checked per
/// guest (`simulate --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestOutcome {
    pub guest: String,
    pub vcpus: u32,
    pub memory_kib: u64,
    /// The pool the guest got (libvirt-default: always shared, it has no
    /// dedicated CPUs).
    pub pool: Pool,
    /// Host CPUs of each vCPU, by vCPU number.
    pub vcpu_cpus: Vec<CpuSet>,
    /// NUMA nodes its memory is bound to.
    pub memory_nodes: CpuSet,
    /// Moves of other guests' vCPUs made to admit this guest (repacking).
    pub made_room_by: Vec<Move>,
    /// Moves of this guest's vCPUs made later to admit other guests, in order.
    pub moves: Vec<Move>,
}

/// The outcome of one simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub strategy: Strategy,
    pub host: String,
    pub arrivals: usize,
    pub departures: usize,
    pub placed: usize,
    pub refused: Vec<Refusal>,
    /// Every placed arrival, in workload order.
    pub guests: Vec<GuestOutcome>,
    /// % of placed guests whose vCPUs are all within one NUMA node; None when
    /// nothing was placed.
    pub numa_local_pct: Option<f64>,
    /// % of placed guests within one L3 group (the socket when the host reports
    /// no caches); None when nothing was placed.
    pub l3_local_pct: Option<f64>,
    /// Placed guests with exactly 2 vCPUs.
    pub two_vcpu_guests: usize,
    /// % of those on the two threads of one core; None when no core has two
    /// threads guests may use (or no 2-vCPU guest was placed).
    pub smt_paired_pct: Option<f64>,
    pub spanning: Vec<Spanning>,
    /// Highest vCPU load any host CPU reached (a vCPU allowed on k CPUs counts 1/k
    /// on each).
    pub max_vcpus_per_cpu: f64,
    /// Placed guests allowed on CPU0 (unless allowed), a reserved or an IRQ CPU.
    pub reserved_violations: usize,
    pub placement_us_mean: f64,
    pub placement_us_max: f64,
    /// Admissions that needed repacking (moves of running shared guests' vCPUs).
    pub repacked: usize,
    /// vCPU moves made by all those admissions together.
    pub repack_moves: usize,
}

impl Report {
    /// Human-readable summary.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "strategy: {}", self.strategy);
        let _ = writeln!(out, "host: {}", self.host);
        let _ = writeln!(
            out,
            "guests: {} arrivals, {} departures, {} placed, {} refused",
            self.arrivals,
            self.departures,
            self.placed,
            self.refused.len()
        );
        let pct =
            |p: Option<f64>| p.map_or("n/a (nothing placed)".to_string(), |p| format!("{p:.1}%"));
        let _ = writeln!(out, "NUMA-local: {}", pct(self.numa_local_pct));
        let _ = writeln!(out, "L3-local: {}", pct(self.l3_local_pct));
        match self.smt_paired_pct {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "SMT-paired: {p:.1}% of {} 2-vCPU guests",
                    self.two_vcpu_guests
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "SMT-paired: n/a ({} 2-vCPU guests; host without SMT or none placed)",
                    self.two_vcpu_guests
                );
            }
        }
        if self.spanning.is_empty() {
            let _ = writeln!(out, "spanning guests: none");
        } else {
            let list: Vec<String> = self
                .spanning
                .iter()
                .map(|s| format!("{} ({} vCPUs, {} nodes)", s.guest, s.vcpus, s.nodes))
                .collect();
            let _ = writeln!(
                out,
                "spanning guests: {}: {}",
                self.spanning.len(),
                list.join(", ")
            );
        }
        let _ = writeln!(out, "max vCPUs per host CPU: {:.2}", self.max_vcpus_per_cpu);
        let _ = writeln!(
            out,
            "reserved/CPU0 violations: {}",
            self.reserved_violations
        );
        if self.repacked > 0 {
            let _ = writeln!(
                out,
                "repacking: {} admissions made room by moving {} shared vCPUs within their nodes ({:.1} moves per repacked admission)",
                self.repacked,
                self.repack_moves,
                self.repack_moves as f64 / self.repacked as f64
            );
        }
        if self.placed == 0 {
            let _ = writeln!(out, "placement time per guest: n/a (nothing placed)");
        } else {
            let _ = writeln!(
                out,
                "placement time per guest: mean {:.1} µs, max {:.1} µs",
                self.placement_us_mean, self.placement_us_max
            );
        }
        for r in &self.refused {
            let _ = writeln!(
                out,
                "refused: {} ({} vCPUs): {}",
                r.guest, r.vcpus, r.reason
            );
        }
        out
    }
}

/// A running simulation: the host's occupancy and free memory under one strategy.
/// Step it with [`Simulator::arrive`] / [`Simulator::depart`], or replay a whole
/// workload with [`simulate`].
#[derive(Debug, Clone)]
pub struct Simulator<'a> {
    base: &'a Host,
    policy: &'a Policy,
    strategy: Strategy,
    /// The running guests' claims; their memory is what the nodes have committed
    /// (see [`crate::placement::NodeMemory`]), the same accounting `place()` does.
    occupancy: Occupancy,
    /// Requested pool per running guest (the baselines' admission counts).
    pools: BTreeMap<String, (Pool, u32, u32)>,
    /// The running shared guests kvmtune placed: what repacking may move.
    movable: BTreeMap<String, Movable>,
    forbidden: CpuSet,
}

/// What a strategy decided for one arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub claim: Claim,
    /// Moves of running guests' vCPUs that made room (kvmtune with `host.repack`).
    pub moves: Vec<Move>,
    pub elapsed_us: f64,
}

impl<'a> Simulator<'a> {
    pub fn new(host: &'a Host, policy: &'a Policy, strategy: Strategy) -> Simulator<'a> {
        let eligible = host_eligible(host, policy);
        Simulator {
            base: host,
            policy,
            strategy,
            occupancy: Occupancy::default(),
            pools: BTreeMap::new(),
            movable: BTreeMap::new(),
            forbidden: host.online.difference(&eligible),
        }
    }

    pub fn occupancy(&self) -> &Occupancy {
        &self.occupancy
    }

    /// The host as read (the snapshot is never changed: memory is accounted from
    /// the occupancy, see [`Simulator::node_memory`]).
    pub fn host(&self) -> &Host {
        self.base
    }

    /// Each node's memory as `place()` accounts it now: MemTotal − the policy's
    /// `host.reserved_memory_per_node` − free huge pages − the running guests'
    /// committed memory; `None` where MemTotal is unknown.
    pub fn node_memory(&self) -> BTreeMap<u32, Option<NodeMemory>> {
        node_memory(
            self.base,
            &self.occupancy,
            self.policy.host.reserved_memory_per_node_kib,
        )
    }

    /// Memory the host can still give guests at all (every node with a known
    /// MemTotal; guests bound to no node count too); `None` when no node reports
    /// its MemTotal.
    pub fn host_memory_room_kib(&self) -> Option<u64> {
        let nodes: Vec<NodeMemory> = self.node_memory().into_values().flatten().collect();
        if nodes.is_empty() {
            return None;
        }
        let capacity: u64 = nodes
            .iter()
            .map(|n| {
                n.total_kib
                    .saturating_sub(n.reserve_kib)
                    .saturating_sub(n.hugepages_free_kib)
            })
            .sum();
        let committed: u64 = self.occupancy.guests.values().map(|c| c.memory_kib).sum();
        Some(capacity.saturating_sub(committed))
    }

    /// The memory committed per node (a claim's memory split evenly over its
    /// nodes).
    pub fn committed_memory(&self) -> BTreeMap<u32, u64> {
        committed_memory(&self.occupancy)
    }

    /// Online CPUs no guest should get under the policy (CPU0 unless allowed,
    /// reserved and IRQ CPUs).
    pub fn forbidden(&self) -> &CpuSet {
        &self.forbidden
    }

    /// Places one guest; on success it is added to the occupancy.
    ///
    /// # Panics
    /// If `name` is already running (the workload parser refuses that).
    pub fn arrive(
        &mut self,
        name: &str,
        vcpus: u32,
        memory_kib: u64,
        pool: Option<Pool>,
    ) -> Result<Decision, String> {
        assert!(
            !self.occupancy.guests.contains_key(name),
            "guest {name} arrives twice"
        );
        let facts = GuestFacts {
            name,
            vcpus,
            memory_kib,
            ..GuestFacts::default()
        };
        let settings = self.policy.select(&facts).settings.cloned();
        let pool = self.pool_for(name, vcpus, memory_kib, pool);
        let ratio = settings
            .as_ref()
            .map_or(16, |s| s.cpu_allocation_ratio)
            .max(1);

        // Common admission for every strategy: the host can hold the memory at
        // all (committed memory against MemTotal − reserve, as place() counts).
        if let Some(room) = self.host_memory_room_kib()
            && room < memory_kib
        {
            return Err(format!(
                "not enough memory on the host: {} MiB uncommitted (MemTotal − {} MiB reserve per node − free huge pages − guests), {} MiB asked",
                room / 1024,
                self.policy.host.reserved_memory_per_node_kib / 1024,
                memory_kib / 1024
            ));
        }

        let start = Instant::now();
        let mut moves = Vec::new();
        let claim = match (self.strategy, &settings) {
            (Strategy::Kvmtune, Some(settings)) => {
                let mut eligible = eligible_cpus(
                    self.base,
                    &self.policy.host.reserved_cpus,
                    &self.policy.irq_cpus(self.base),
                    self.policy.host.allow_cpu0,
                    settings.nodes.as_ref(),
                );
                if let Some(set) = self.policy.host.pool_cpus(pool) {
                    eligible = eligible.intersection(set);
                }
                let request = Request {
                    vcpus,
                    memory_kib,
                    pool,
                    eligible,
                    cpu_allocation_ratio: f64::from(ratio),
                    thread_policy: settings.thread_policy,
                    memory_strict: matches!(
                        settings.memory_mode,
                        MemoryMode::Strict | MemoryMode::Restrictive
                    ),
                    hugepage_kib: None,
                    memory_reserve_kib: self.policy.host.reserved_memory_per_node_kib,
                    max_nodes: settings.max_nodes,
                };
                let (claim, repacked) = self.kvmtune(name, &request)?;
                if pool == Pool::Shared {
                    self.movable.insert(
                        name.to_string(),
                        Movable {
                            ratio: request.cpu_allocation_ratio,
                            eligible: request.eligible.clone(),
                            emulator: None,
                            emulator_on_housekeeping: false,
                        },
                    );
                }
                if let Some(done) = repacked {
                    self.occupancy = done.apply_to(&self.occupancy);
                    moves = done.moves;
                }
                claim
            }
            // An opted-out guest (enabled: false) is left to libvirt.
            (Strategy::Kvmtune, None) | (Strategy::LibvirtDefault, _) => {
                self.libvirt_default(vcpus, memory_kib, pool, ratio)?
            }
            (Strategy::NaiveFirstFit, _) => self.naive(vcpus, memory_kib, pool, ratio)?,
        };
        let elapsed_us = start.elapsed().as_secs_f64() * 1e6;

        self.pools.insert(name.to_string(), (pool, vcpus, ratio));
        self.occupancy
            .guests
            .insert(name.to_string(), claim.clone());
        Ok(Decision {
            claim,
            moves,
            elapsed_us,
        })
    }

    /// kvmtune's placement, with repacking when it does not fit and the policy
    /// allows it (`host.repack`), exactly as the hook plans it: the same
    /// [`place`] and [`repack`], and the placement invariant checked on the new
    /// claim and every moved claim.
    fn kvmtune(&self, name: &str, request: &Request) -> Result<(Claim, Option<Repacked>), String> {
        let claim_of = |p: &crate::placement::Placement| Claim {
            vcpus: p.vcpus.clone(),
            nodes: p.nodes.clone(),
            memory_kib: request.memory_kib,
            pool: request.pool,
        };
        let why = match place(self.base, &self.occupancy, request) {
            Ok(p) => return Ok((claim_of(&p), None)),
            Err(e) => e.0,
        };
        let host = &self.policy.host;
        if !host.repack {
            return Err(why);
        }
        let Some(done) = repack(
            self.base,
            &self.occupancy,
            request,
            &self.movable,
            host.repack_max_moves as usize,
        ) else {
            return Err(why);
        };
        let claim = claim_of(&done.placement);
        let admitted = Admitted {
            guest: name,
            claim: &claim,
            emulator: None,
            emulator_on_housekeeping: false,
        };
        let breaches = breaches(
            &done,
            admitted,
            &self.occupancy,
            &self.movable,
            &BTreeMap::new(),
            &self.forbidden,
        );
        if let Some((guest, breach)) = breaches.first() {
            return Err(format!(
                "{why}; a repacking was found but breaks the placement invariant ({guest}: {breach})"
            ));
        }
        Ok((claim, Some(done)))
    }

    /// The pool a guest gets: the workload's, else the policy's for it.
    pub fn pool_for(&self, name: &str, vcpus: u32, memory_kib: u64, pool: Option<Pool>) -> Pool {
        let facts = GuestFacts {
            name,
            vcpus,
            memory_kib,
            ..GuestFacts::default()
        };
        pool.or(self.policy.select(&facts).settings.map(|s| s.pool))
            .unwrap_or_default()
    }

    /// Removes a guest (no-op for a guest that is not running, e.g. refused).
    pub fn depart(&mut self, name: &str) -> Option<Claim> {
        let claim = self.occupancy.guests.remove(name)?;
        self.pools.remove(name);
        self.movable.remove(name);
        Some(claim)
    }

    /// libvirt without a hook: every vCPU on all online CPUs, memory anywhere.
    /// Admission by counting, as Nova's scheduler does: dedicated vCPUs plus shared
    /// vCPUs / ratio within the eligible CPUs.
    fn libvirt_default(
        &self,
        vcpus: u32,
        memory_kib: u64,
        pool: Pool,
        ratio: u32,
    ) -> Result<Claim, String> {
        let capacity = self.base.online.difference(&self.forbidden).len() as f64;
        let mut dedicated = 0.0;
        let mut shared = 0.0;
        for (p, n, r) in self.pools.values() {
            match p {
                Pool::Dedicated => dedicated += f64::from(*n),
                Pool::Shared => shared += f64::from(*n) / f64::from(*r),
            }
        }
        match pool {
            Pool::Dedicated => dedicated += f64::from(vcpus),
            Pool::Shared => shared += f64::from(vcpus) / f64::from(ratio),
        }
        if dedicated + shared > capacity + 1e-9 {
            return Err(format!(
                "the host's {capacity} eligible CPUs are fully allocated ({dedicated} dedicated + {shared:.2} shared-equivalent vCPUs)"
            ));
        }
        let nodes: CpuSet = self.base.nodes.keys().copied().collect();
        Ok(Claim {
            vcpus: vec![self.base.online.clone(); vcpus as usize],
            nodes,
            memory_kib,
            // libvirt knows no dedicated CPUs: nothing is exclusive.
            pool: Pool::Shared,
        })
    }

    /// A naive hook: the lowest-numbered eligible CPUs, idle ones first.
    /// The pools' CPU sets (`host.shared_cpus` / `host.dedicated_cpus`) are
    /// honoured as a hook following the same policy would.
    fn naive(&self, vcpus: u32, memory_kib: u64, pool: Pool, ratio: u32) -> Result<Claim, String> {
        let mut eligible = self.base.online.difference(&self.forbidden);
        if let Some(set) = self.policy.host.pool_cpus(pool) {
            eligible = eligible.intersection(set);
        }
        let load = self.occupancy.cpu_load();
        let load_of = |cpu: u32| load.get(&cpu).copied().unwrap_or(0.0);
        let dedicated = self.occupancy.dedicated_cpus();
        let wanted = vcpus as usize;
        let free: Vec<u32> = eligible
            .difference(&dedicated)
            .iter()
            .filter(|c| match pool {
                Pool::Dedicated => load_of(*c) == 0.0,
                Pool::Shared => load_of(*c) + 1.0 <= f64::from(ratio),
            })
            .collect();
        // Idle CPUs first, then the least loaded, each in CPU-number order; shared
        // vCPUs never beyond the ratio.
        let mut given: BTreeMap<u32, f64> = BTreeMap::new();
        let mut chosen = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            let next = free
                .iter()
                .copied()
                .filter(|c| match pool {
                    Pool::Dedicated => !given.contains_key(c),
                    Pool::Shared => {
                        load_of(*c) + given.get(c).copied().unwrap_or(0.0) + 1.0 <= f64::from(ratio)
                    }
                })
                .min_by_key(|c| {
                    let load = load_of(*c) + given.get(c).copied().unwrap_or(0.0);
                    ((load * 1000.0).round() as u64, *c)
                });
            match next {
                Some(cpu) => {
                    *given.entry(cpu).or_insert(0.0) += 1.0;
                    chosen.push(cpu);
                }
                None => {
                    return Err(match pool {
                        Pool::Dedicated => format!(
                            "{wanted} dedicated vCPUs do not fit: {} free CPUs",
                            free.len()
                        ),
                        Pool::Shared => format!(
                            "{wanted} shared vCPUs do not fit under cpu_allocation_ratio {ratio}"
                        ),
                    });
                }
            }
        }
        let cpus: CpuSet = chosen.iter().copied().collect();
        Ok(Claim {
            vcpus: chosen.into_iter().map(CpuSet::single).collect(),
            nodes: self.base.nodes_of(&cpus),
            memory_kib,
            pool,
        })
    }
}

/// The split pool layout of docs/placement.md, by its stated rule: on each NUMA
/// node the first third of its cores (rounded up, every thread of them, in core
/// order) serve the shared pool (`host.shared_cpus`), the rest the dedicated pool
/// (`host.dedicated_cpus`); CPUs no node lists are shared. Returns (shared,
/// dedicated).
pub fn split_pools(host: &Host) -> (CpuSet, CpuSet) {
    let mut shared = CpuSet::new();
    for node in host.nodes.values() {
        let cores: Vec<CpuSet> = host
            .cores
            .iter()
            .map(|c| c.cpus.intersection(&node.cpus))
            .filter(|c| !c.is_empty())
            .collect();
        for core in cores.iter().take(cores.len().div_ceil(3)) {
            shared = shared.union(core);
        }
    }
    shared = shared.union(&host.nodeless);
    let dedicated = host.online.difference(&shared);
    (shared.intersection(&host.online), dedicated)
}

/// CPUs guests may use under the policy's host settings (all nodes).
fn host_eligible(host: &Host, policy: &Policy) -> CpuSet {
    eligible_cpus(
        host,
        &policy.host.reserved_cpus,
        &policy.irq_cpus(host),
        policy.host.allow_cpu0,
        None,
    )
}

/// Per-claim quality facts.
struct Quality {
    numa_local: bool,
    l3_local: bool,
    nodes: usize,
    smt_paired: bool,
}

fn quality(host: &Host, claim: &Claim) -> Quality {
    let cpus = claim.cpus();
    let nodes = host.nodes_of(&cpus).len();
    let l3_local = cpus
        .first()
        .and_then(|c| host.llc_of(c))
        .is_some_and(|llc| cpus.is_subset(llc));
    let smt_paired = match claim.vcpus.as_slice() {
        [a, b] if a.len() == 1 && b.len() == 1 && a != b => {
            let core = |s: &CpuSet| s.first().and_then(|c| host.cpus.get(&c)).map(|c| c.core);
            core(a).is_some() && core(a) == core(b)
        }
        _ => false,
    };
    Quality {
        numa_local: nodes == 1,
        l3_local,
        nodes,
        smt_paired,
    }
}

/// Whether any core of the host has two or more threads guests may use.
pub fn host_has_smt(host: &Host, forbidden: &CpuSet) -> bool {
    let usable = host.online.difference(forbidden);
    host.cores
        .iter()
        .any(|c| c.cpus.intersection(&usable).len() >= 2)
}

/// Replays `workload` on `host` under `policy` with `strategy`.
pub fn simulate(host: &Host, policy: &Policy, workload: &Workload, strategy: Strategy) -> Report {
    let mut sim = Simulator::new(host, policy, strategy);
    let mut refused = Vec::new();
    let mut guests: Vec<GuestOutcome> = Vec::new();
    let mut spanning = Vec::new();
    let (mut placed, mut departures, mut numa_local, mut l3_local) = (0usize, 0usize, 0, 0);
    let (mut two, mut paired, mut violations) = (0usize, 0usize, 0usize);
    let (mut total_us, mut max_us, mut max_load) = (0.0f64, 0.0f64, 0.0f64);
    let (mut repacked, mut repack_moves) = (0usize, 0usize);
    // Where each running guest's outcome is in `guests`.
    let mut latest: BTreeMap<String, usize> = BTreeMap::new();
    for event in &workload.events {
        match event {
            Event::Arrive {
                name,
                vcpus,
                memory_kib,
                pool,
            } => match sim.arrive(name, *vcpus, *memory_kib, *pool) {
                Ok(decision) => {
                    placed += 1;
                    if !decision.moves.is_empty() {
                        repacked += 1;
                        repack_moves += decision.moves.len();
                    }
                    for m in &decision.moves {
                        if let Some(i) = latest.get(&m.guest) {
                            guests[*i].moves.push(m.clone());
                        }
                    }
                    latest.insert(name.clone(), guests.len());
                    guests.push(GuestOutcome {
                        guest: name.clone(),
                        vcpus: *vcpus,
                        memory_kib: *memory_kib,
                        pool: decision.claim.pool,
                        vcpu_cpus: decision.claim.vcpus.clone(),
                        memory_nodes: decision.claim.nodes.clone(),
                        made_room_by: decision.moves.clone(),
                        moves: Vec::new(),
                    });
                    total_us += decision.elapsed_us;
                    max_us = max_us.max(decision.elapsed_us);
                    let q = quality(host, &decision.claim);
                    numa_local += usize::from(q.numa_local);
                    l3_local += usize::from(q.l3_local);
                    if q.nodes > 1 {
                        spanning.push(Spanning {
                            guest: name.clone(),
                            vcpus: *vcpus,
                            nodes: q.nodes,
                        });
                    }
                    if *vcpus == 2 {
                        two += 1;
                        paired += usize::from(q.smt_paired);
                    }
                    if decision.claim.cpus().intersects(&sim.forbidden) {
                        violations += 1;
                    }
                    let peak = sim
                        .occupancy
                        .cpu_load()
                        .values()
                        .copied()
                        .fold(0.0, f64::max);
                    max_load = max_load.max(peak);
                }
                Err(reason) => refused.push(Refusal {
                    guest: name.clone(),
                    vcpus: *vcpus,
                    pool: sim.pool_for(name, *vcpus, *memory_kib, *pool),
                    reason,
                }),
            },
            Event::Depart { name } => {
                if sim.depart(name).is_some() {
                    departures += 1;
                }
            }
        }
    }
    let pct = |n: usize, of: usize| {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    };
    Report {
        strategy,
        host: host.summary(),
        arrivals: workload.arrivals(),
        departures,
        placed,
        refused,
        guests,
        numa_local_pct: (placed > 0).then(|| pct(numa_local, placed)),
        l3_local_pct: (placed > 0).then(|| pct(l3_local, placed)),
        two_vcpu_guests: two,
        smt_paired_pct: (host_has_smt(host, &sim.forbidden) && two > 0).then(|| pct(paired, two)),
        spanning,
        max_vcpus_per_cpu: max_load,
        reserved_violations: violations,
        placement_us_mean: if placed == 0 {
            0.0
        } else {
            total_us / placed as f64
        },
        placement_us_max: max_us,
        repacked,
        repack_moves,
    }
}
