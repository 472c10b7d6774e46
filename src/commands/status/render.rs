//! Drawing a [`Status`] as text: the host tree (NUMA nodes → L3 groups or sockets
//! → cores → threads, one padded cell per thread), the legend, then every running
//! guest with its placement, ledger agreement, place in the convergence queue,
//! conformance rule by rule and what was applied and read back, aspect by aspect;
//! last the convergence queue. Colours
//! are [`anstyle`] styles, used only when asked; with colour off the text holds no
//! escape at all. Guest names are sanitized before they reach the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use kvmtune_core::conformance::Conformance;
use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::readback::{Readback, State};
use kvmtune_core::status::{QueueView, Role, Source, Status, ThreadView};
use kvmtune_sys::logging::sanitize;

/// Headings.
const BOLD: Style = Style::new().bold();
/// Host-kept CPUs (CPU0, reserved), opted-out and unknown verdicts.
const HOST: Style = AnsiColor::Yellow.on_default();
/// IRQ CPUs.
const IRQ: Style = AnsiColor::Magenta.on_default();
/// Free CPUs, ok verdicts, agreement.
const GOOD: Style = AnsiColor::Green.on_default();
/// Disagreement, stale claims.
const BAD: Style = AnsiColor::Red.on_default();
/// A guest on a CPU guests should not get; `differs`.
const ALARM: Style = AnsiColor::Red.on_default().bold();
/// Runtime-enforced verdicts, and the legend's guest sample.
const RUNTIME: Style = AnsiColor::Cyan.on_default();

/// One colour per guest, in turn.
const GUEST_COLORS: [Style; 6] = [
    AnsiColor::Cyan.on_default(),
    AnsiColor::Blue.on_default(),
    AnsiColor::Magenta.on_default(),
    AnsiColor::BrightCyan.on_default(),
    AnsiColor::BrightBlue.on_default(),
    AnsiColor::BrightMagenta.on_default(),
];

/// Applies styles, or (colour off) none.
struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, style: Style, text: &str) -> String {
        let style = if self.on { style } else { Style::new() };
        format!("{style}{text}{style:#}")
    }
}

/// The picture, `color` = with ANSI colours.
pub fn render(status: &Status, color: bool) -> String {
    let paint = Paint { on: color };
    let mut out = String::new();
    let guest_color: BTreeMap<&str, Style> = status
        .guests
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.as_str(), GUEST_COLORS[i % GUEST_COLORS.len()]))
        .collect();
    let _ = writeln!(
        out,
        "{} — {}; policy {}",
        paint.wrap(BOLD, "host"),
        status.host.summary,
        status.host.policy
    );
    let _ = writeln!(
        out,
        "reserved CPUs {}, IRQ CPUs {}",
        or_dash(&status.host.reserved_cpus),
        or_dash(&status.host.irq_cpus)
    );

    // Thread cells are padded to one width so the cores line up.
    let cell = |t: &ThreadView| -> (String, String) {
        let mut plain = format!("{:>3} ", t.cpu);
        let mut coloured = plain.clone();
        let mut labels: Vec<(String, Style)> = Vec::new();
        match t.role {
            Role::Reserved => labels.push(("reserved".into(), HOST)),
            Role::Irq => labels.push(("IRQ".into(), IRQ)),
            Role::Cpu0 => labels.push(("host".into(), HOST)),
            Role::Guests if t.guests.is_empty() => labels.push(("free".into(), GOOD)),
            Role::Guests => {}
        }
        for u in &t.guests {
            let warn = t.role != Role::Guests;
            let text = format!(
                "{}:v{}{}",
                short(&u.guest),
                u.vcpus,
                if warn { "!" } else { "" }
            );
            labels.push((
                text,
                if warn {
                    ALARM
                } else {
                    guest_color
                        .get(u.guest.as_str())
                        .copied()
                        .unwrap_or(RUNTIME)
                },
            ));
        }
        let joined_plain: Vec<String> = labels.iter().map(|(l, _)| l.clone()).collect();
        let joined_col: Vec<String> = labels.iter().map(|(l, c)| paint.wrap(*c, l)).collect();
        // vCPU lists use commas; several guests on one CPU are spaced apart.
        plain.push_str(&joined_plain.join(" "));
        coloured.push_str(&joined_col.join(" "));
        (plain, coloured)
    };
    let width = status
        .host
        .nodes
        .iter()
        .flat_map(|n| &n.groups)
        .flat_map(|g| &g.cores)
        .flat_map(|c| &c.threads)
        .map(|t| cell(t).0.chars().count())
        .max()
        .unwrap_or(8)
        .min(40);

    for node in &status.host.nodes {
        let _ = writeln!(out);
        let mut line = paint.wrap(BOLD, &format!("NUMA node {}", node.id));
        match (node.mem_total_kib, node.mem_free_kib) {
            (Some(t), Some(f)) => {
                let _ = write!(line, "  memory {} free of {}", human_kib(f), human_kib(t));
            }
            (Some(t), None) => {
                let _ = write!(line, "  memory {}", human_kib(t));
            }
            _ => line.push_str("  memory unknown"),
        }
        if node.guests_mem_kib > 0 {
            let _ = write!(line, ", guests {}", human_kib(node.guests_mem_kib));
        }
        if node.hugepages.is_empty() {
            line.push_str("  huge pages: none");
        } else {
            let pages: Vec<String> = node
                .hugepages
                .iter()
                .map(|h| {
                    format!(
                        "{} {} used/{} free",
                        page_size(h.size_kib),
                        h.total.saturating_sub(h.free),
                        h.free
                    )
                })
                .collect();
            let _ = write!(line, "  huge pages {}", pages.join(", "));
        }
        let _ = writeln!(out, "{line}");
        if node.groups.is_empty() {
            let _ = writeln!(out, "└─ (no CPUs)");
        }
        for (gi, group) in node.groups.iter().enumerate() {
            let last_group = gi + 1 == node.groups.len();
            let label = match group.kind {
                "l3" => format!("L3 {}", group.cpus),
                _ => format!("socket {} (L3 unknown) {}", group.socket, group.cpus),
            };
            let _ = writeln!(out, "{}─ {label}", if last_group { "└" } else { "├" });
            let pad = if last_group { "   " } else { "│  " };
            for (ci, core) in group.cores.iter().enumerate() {
                let branch = if ci + 1 == group.cores.len() {
                    "└"
                } else {
                    "├"
                };
                let mut row = format!("{pad}{branch}─ core {:<7}", core.cpus.to_string());
                for t in &core.threads {
                    let (plain, coloured) = cell(t);
                    let fill = width.saturating_sub(plain.chars().count());
                    let _ = write!(row, " {coloured}{}", " ".repeat(fill));
                }
                let _ = writeln!(out, "{}", row.trim_end());
            }
        }
    }

    let _ = writeln!(
        out,
        "\n{}: {} = CPU0, kept for the host; {} = host.reserved_cpus; {} = IRQ CPUs; {} = no guest; {} = vCPUs of guest NAME may run here (! = on a CPU guests should not get)",
        paint.wrap(BOLD, "legend"),
        paint.wrap(HOST, "host"),
        paint.wrap(HOST, "reserved"),
        paint.wrap(IRQ, "IRQ"),
        paint.wrap(GOOD, "free"),
        paint.wrap(RUNTIME, "NAME:vN"),
    );
    let _ = writeln!(out);
    let ledger = &status.ledger;
    let agree = if ledger.agrees {
        paint.wrap(GOOD, "agrees with libvirt")
    } else {
        paint.wrap(ALARM, "DISAGREES with libvirt")
    };
    let _ = writeln!(
        out,
        "{} ({} running); ledger {} ({}, {} entr{}) {agree}",
        paint.wrap(BOLD, "guests"),
        status.guests.len(),
        ledger.path.display(),
        ledger.file,
        ledger.entries,
        if ledger.entries == 1 { "y" } else { "ies" }
    );
    for name in &ledger.stale {
        let _ = writeln!(
            out,
            "  {}",
            paint.wrap(
                BAD,
                &format!("stale ledger entry: {} (not running)", sanitize(name))
            )
        );
    }
    for name in &ledger.starting {
        let _ = writeln!(out, "  starting: {} (claimed at prepare)", sanitize(name));
    }
    if status.guests.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in &status.guests {
        let colour = guest_color.get(g.name.as_str()).copied().unwrap_or(RUNTIME);
        let _ = writeln!(
            out,
            "  {}  pid {}  {} vCPU{}  {}  rule {}",
            paint.wrap(colour.bold(), &sanitize(&g.name)),
            g.pid.map_or("?".to_string(), |p| p.to_string()),
            g.vcpus,
            if g.vcpus == 1 { "" } else { "s" },
            human_kib(g.memory_kib),
            if g.policy_rule.is_empty() {
                "?"
            } else {
                &g.policy_rule
            }
        );
        let placement = match g.source {
            Source::None => "unpinned (vCPUs float over every CPU)".to_string(),
            source => {
                let pins: Vec<String> = g
                    .vcpu_cpus
                    .iter()
                    .enumerate()
                    .map(|(v, s)| format!("{v}→{s}"))
                    .collect();
                format!(
                    "vCPU→CPU {}; memory node(s) {}; emulator {} ({})",
                    pins.join(" "),
                    or_dash(&g.nodes),
                    g.emulator
                        .as_ref()
                        .map_or("unpinned".to_string(), ToString::to_string),
                    if source == Source::Xml {
                        "pinned by the XML"
                    } else {
                        "applied by the hook at start"
                    }
                )
            }
        };
        let _ = writeln!(out, "    placement  {placement}");
        let ledger_text = if g.ledger.agrees {
            paint.wrap(GOOD, &g.ledger.detail)
        } else {
            paint.wrap(BAD, &g.ledger.detail)
        };
        let _ = writeln!(out, "    ledger     {ledger_text}");
        if let Some(q) = &g.queued_for_convergence {
            let _ = writeln!(
                out,
                "    converge   {}",
                paint.wrap(
                    RUNTIME,
                    &format!(
                        "queued for convergence {}: kvmtune converge conforms its definition (effective at the next cold boot)",
                        queued_when(q.queued_at)
                    )
                )
            );
        }
        for c in &g.conformance {
            let (word, code) = match c.state {
                Conformance::Ok => ("ok", GOOD),
                Conformance::RuntimeEnforced => ("runtime-enforced", RUNTIME),
                Conformance::Differs => ("differs", ALARM),
                Conformance::OptedOut => ("opted out", HOST),
                Conformance::Unknown => ("unknown", HOST),
            };
            let padded = format!("{word:<16}");
            let detail = if c.detail.is_empty() {
                String::new()
            } else {
                format!(" {}", escape_controls(&c.detail))
            };
            let _ = writeln!(
                out,
                "    {:<4}{:<21}{}{}",
                c.rule,
                c.what,
                paint.wrap(code, &padded),
                detail
            )
            .map(|_| ());
        }
        render_readback(&mut out, &paint, &g.readback);
    }
    if status.guests.iter().any(|g| {
        g.conformance
            .iter()
            .any(|c| c.state == Conformance::Differs)
    }) {
        let _ = writeln!(
            out,
            "  fix 'differs': kvmtune apply GUEST, then shut the guest down and start it"
        );
    }
    render_queue(&mut out, &paint, &status.converge_queue);
    // Trailing spaces from padding are noise when piped.
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `at 20261201T114002Z` (UTC, as `kvmtune converge --list` prints it), or
/// `at an unknown time` for a damaged entry.
fn queued_when(secs: u64) -> String {
    if secs == 0 {
        return "at an unknown time".into();
    }
    let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    format!("at {}", kvmtune_sys::backups::utc_stamp(at))
}

/// The convergence queue: every queued guest, running or not.
fn render_queue(out: &mut String, paint: &Paint, queue: &QueueView) {
    let _ = writeln!(out);
    let head = paint.wrap(BOLD, "queued for convergence");
    let path = queue.path.display();
    if let Some(e) = &queue.error {
        let _ = writeln!(
            out,
            "{head} {path}: {}",
            paint.wrap(HOST, &format!("cannot read: {}", escape_controls(e)))
        );
        return;
    }
    if queue.guests.is_empty() {
        let _ = writeln!(out, "{head} {path}: none");
        return;
    }
    let _ = writeln!(
        out,
        "{head} {path}: {} guest{} (kvmtune converge conforms their definitions)",
        queue.guests.len(),
        if queue.guests.len() == 1 { "" } else { "s" }
    );
    let width = queue
        .guests
        .iter()
        .map(|q| short(&q.guest).chars().count())
        .max()
        .unwrap_or(0);
    for q in &queue.guests {
        let _ = writeln!(
            out,
            "  {:<width$}  queued {}{}{}",
            short(&q.guest),
            queued_when(q.queued_at),
            q.uuid
                .as_deref()
                .map_or(String::new(), |u| format!("  uuid {}", sanitize(u))),
            if q.running { "" } else { "  (not running)" }
        );
    }
}

/// The read-back lines of one guest: `read back  ASPECT  VERDICT`.
fn render_readback(out: &mut String, paint: &Paint, readback: &[Readback]) {
    for (i, r) in readback.iter().enumerate() {
        let code = match r.state {
            State::Verified => GOOD,
            State::NotEnforced => HOST,
            State::Drifted => ALARM,
            State::Unread => HOST,
        };
        let _ = writeln!(
            out,
            "    {:<11}{:<18}{}",
            if i == 0 { "read back" } else { "" },
            r.aspect.label(),
            paint.wrap(code, &escape_controls(&r.sentence()))
        );
    }
}

/// Control characters escaped, no length bound: read-back sentences hold thread
/// names and cgroup paths (named after the guest) and may be long.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn or_dash(set: &CpuSet) -> String {
    if set.is_empty() {
        "none".to_string()
    } else {
        set.to_string()
    }
}

/// Guest names in the picture: sanitized, at most 20 characters.
fn short(name: &str) -> String {
    let clean = sanitize(name);
    if clean.chars().count() > 20 {
        format!("{}…", clean.chars().take(19).collect::<String>())
    } else {
        clean
    }
}

fn page_size(kib: u64) -> String {
    match kib {
        1_048_576 => "1G".into(),
        2048 => "2M".into(),
        k if k % 1024 == 0 => format!("{}M", k / 1024),
        k => format!("{k}K"),
    }
}

/// `23.5 GiB`, `512 MiB`, `64 KiB`.
pub fn human_kib(kib: u64) -> String {
    const MIB: u64 = 1024;
    const GIB: u64 = 1024 * 1024;
    if kib >= GIB {
        format!("{:.1} GiB", kib as f64 / GIB as f64)
    } else if kib >= MIB {
        format!("{} MiB", kib / MIB)
    } else {
        format!("{kib} KiB")
    }
}

#[cfg(test)]
mod tests;
