//! `kvmtune status --format prometheus`: the [`Status`] (plus the run-dir state
//! only metrics need, [`RunState`]) in Prometheus' text exposition format 0.0.4,
//! for node_exporter's textfile collector. Pure: [`render`] returns the text.
//!
//! Every family has its `# HELP` and `# TYPE` line, even without samples; names
//! are `kvmtune_…` in base units (`_bytes`), counters end in `_total`; label
//! values are escaped as the format says (`\` → `\\`, `"` → `\"`, newline →
//! `\n`). The metrics are listed in docs/admin.md.

use std::collections::BTreeMap;
use std::fmt::Write;

use kvmtune_core::conformance::Conformance;
use kvmtune_core::placement::Pool;
use kvmtune_core::readback::{Aspect, State};
use kvmtune_core::status::{GuestView, Source, Status};

/// What the metrics show besides the status, read by the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunState {
    /// Files in `/run/kvmtune/converge/` (0 when it does not exist).
    pub converge_queue_length: usize,
    /// Hook calls by stage and outcome, from `/run/kvmtune/hook-counters.json`.
    pub hook_outcomes: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The stages the hook handles and the outcomes it counts: always exported (0
/// until seen), so that `rate()` and `increase()` work from the first call on.
pub const HOOK_STAGES: [&str; 6] = [
    "prepare-begin",
    "started-begin",
    "restore-begin",
    "migrate-begin",
    "release-end",
    "reconnect-begin",
];
pub const HOOK_OUTCOMES: [&str; 3] = ["allowed", "refused", "error"];

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

fn pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Shared => "shared",
        Pool::Dedicated => "dedicated",
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Xml => "xml",
        Source::Ledger => "ledger",
        Source::None => "none",
    }
}

/// Threads (vCPU, emulator, iothreads) whose affinity, as read back from /proc,
/// differs from what was applied (live XML pins, or the ledger claim the hook
/// applied): the drifts of those aspects in the guest's read-back. Unread threads
/// and unplaced guests count 0.
pub fn affinity_drift(guest: &GuestView) -> u64 {
    guest
        .readback
        .iter()
        .filter(|r| {
            matches!(
                r.aspect,
                Aspect::VcpuThreads | Aspect::EmulatorThreads | Aspect::Iothreads
            )
        })
        .map(|r| r.drifts.len() as u64)
        .sum()
}

/// The exposition text.
pub fn render(status: &Status, run: &RunState) -> String {
    let mut out = String::new();
    let guests = &status.guests;

    let mut f = family(
        &mut out,
        "kvmtune_guest_info",
        "gauge",
        "Running guest: its CPU pool, memory NUMA nodes, policy rule and where its placement comes from (xml, ledger, none); always 1.",
    );
    for g in guests {
        let nodes = g.nodes.to_string();
        f.sample(
            &[
                ("guest", &g.name),
                ("pool", g.pool.map_or("", pool_name)),
                ("nodes", &nodes),
                ("rule", &g.policy_rule),
                ("source", source_name(g.source)),
            ],
            1,
        );
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_node",
        "gauge",
        "NUMA node a running guest's memory is bound to (one sample per node); always 1.",
    );
    for g in guests {
        for node in g.nodes.iter() {
            f.sample(&[("guest", &g.name), ("node", &node.to_string())], 1);
        }
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_vcpus",
        "gauge",
        "vCPUs of a running guest.",
    );
    for g in guests {
        f.sample(&[("guest", &g.name)], u64::from(g.vcpus));
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_memory_bytes",
        "gauge",
        "Memory of a running guest, from its live XML.",
    );
    for g in guests {
        f.sample(&[("guest", &g.name)], g.memory_kib.saturating_mul(1024));
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_conformance",
        "gauge",
        "1 when a running guest meets a tuning rule (ok, or enforced at runtime by the hook), 0 when it differs (fixed by kvmtune apply and a cold boot); rules whose state is unknown or opted out have no sample.",
    );
    for g in guests {
        for c in &g.conformance {
            let value = match c.state {
                Conformance::Ok | Conformance::RuntimeEnforced => 1,
                Conformance::Differs => 0,
                Conformance::OptedOut | Conformance::Unknown => continue,
            };
            f.sample(
                &[("guest", &g.name), ("rule", c.rule), ("aspect", c.what)],
                value,
            );
        }
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_opted_out",
        "gauge",
        "1 when the policy opts a running guest out of every rule (enabled: false).",
    );
    for g in guests {
        let opted = g
            .conformance
            .iter()
            .any(|c| c.state == Conformance::OptedOut);
        f.sample(&[("guest", &g.name)], u64::from(opted));
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_affinity_drift",
        "gauge",
        "Threads of a running guest (vCPU, emulator, iothreads) whose actual affinity (/proc) differs from what was applied (live XML pins or the ledger claim).",
    );
    for g in guests {
        f.sample(&[("guest", &g.name)], affinity_drift(g));
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_drift",
        "gauge",
        "Per running guest and aspect read back (vcpu-threads, emulator-threads, iothreads, cgroup-cpus, cgroup-mems, memory-policy): 1 when it drifted from what was applied, 0 when applied and verified or not enforced at runtime; aspects not read back have no sample.",
    );
    for g in guests {
        for r in &g.readback {
            let value = match r.state {
                State::Drifted => 1,
                State::Verified | State::NotEnforced => 0,
                State::Unread => continue,
            };
            f.sample(&[("guest", &g.name), ("aspect", r.aspect.id())], value);
        }
    }

    let mut f = family(
        &mut out,
        "kvmtune_guest_ledger_agrees",
        "gauge",
        "1 when kvmtune's ledger and libvirt agree on a running guest.",
    );
    for g in guests {
        f.sample(&[("guest", &g.name)], u64::from(g.ledger.agrees));
    }

    let mut f = family(
        &mut out,
        "kvmtune_node_free_cpus",
        "gauge",
        "CPUs of a NUMA node a pool may use that no placed guest's vCPUs may run on.",
    );
    for n in &status.host.nodes {
        for p in &n.free_cpus {
            f.sample(
                &[("node", &n.id.to_string()), ("pool", pool_name(p.pool))],
                p.cpus.len() as u64,
            );
        }
    }

    let mut f = family(
        &mut out,
        "kvmtune_node_free_hugepages",
        "gauge",
        "Free huge pages of a NUMA node, by page size in bytes.",
    );
    for n in &status.host.nodes {
        for h in &n.hugepages {
            let size = h.size_kib.saturating_mul(1024).to_string();
            f.sample(
                &[("node", &n.id.to_string()), ("size_bytes", &size)],
                h.free,
            );
        }
    }

    let mut f = family(
        &mut out,
        "kvmtune_node_hugepages",
        "gauge",
        "Huge pages of a NUMA node (free or not), by page size in bytes.",
    );
    for n in &status.host.nodes {
        for h in &n.hugepages {
            let size = h.size_kib.saturating_mul(1024).to_string();
            f.sample(
                &[("node", &n.id.to_string()), ("size_bytes", &size)],
                h.total,
            );
        }
    }

    let ledger = &status.ledger;
    let mut f = family(
        &mut out,
        "kvmtune_ledger_agrees",
        "gauge",
        "1 when kvmtune's ledger and libvirt's status files agree on every guest.",
    );
    f.sample(&[], u64::from(ledger.agrees));
    let mut f = family(
        &mut out,
        "kvmtune_ledger_stale_entries",
        "gauge",
        "Ledger claims of guests libvirt does not run (and that are not starting).",
    );
    f.sample(&[], ledger.stale.len() as u64);

    let mut f = family(
        &mut out,
        "kvmtune_converge_queue_length",
        "gauge",
        "Guests waiting in the convergence queue (/run/kvmtune/converge/).",
    );
    f.sample(&[], run.converge_queue_length as u64);

    let mut f = family(
        &mut out,
        "kvmtune_hook_outcomes_total",
        "counter",
        "libvirt hook calls by stage and outcome (allowed, refused, error: an internal error handled by on_error) since boot.",
    );
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for stage in HOOK_STAGES {
        for outcome in HOOK_OUTCOMES {
            counts.insert((stage, outcome), 0);
        }
    }
    for (stage, outcomes) in &run.hook_outcomes {
        for (outcome, n) in outcomes {
            counts.insert((stage, outcome), *n);
        }
    }
    for ((stage, outcome), n) in counts {
        f.sample(&[("stage", stage), ("outcome", outcome)], n);
    }

    out
}

#[cfg(test)]
mod tests;
