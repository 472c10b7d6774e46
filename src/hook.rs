//! The libvirt qemu hook: `GUEST OP SUBOP EXTRA`, domain XML on stdin.
//!
//! libvirt ignores hook output at prepare/start/started and reads a rewritten XML
//! only at restore/migrate (LIBVIRT-FACTS.md), so the hook acts through doors:
//! - `prepare begin`: plan, claim the placement in the ledger, and warn about or
//!   refuse XML-level violations (`on_violation`);
//! - `started begin`: QEMU exists, the guest is paused: apply the claimed placement
//!   to the threads the XML did not pin, read it back, log it;
//! - `restore begin` / `migrate begin`: print the XML with guest-ABI-safe edits;
//! - `release end`: free the claim; `reconnect begin`: re-record it.
//!
//! The hook must never be the accidental cause of a failed start: internal errors
//! follow `on_error` (default allow), panics are caught, every wait is bounded, and
//! it never calls libvirt (libvirtd waits for the hook: that would deadlock).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;

use kvmtune_core::cpuset::CpuSet;
use kvmtune_core::domain::{Domain, MAX_XML_BYTES};
use kvmtune_core::host::Host;
use kvmtune_core::ledger::{Entry, EntryState};
use kvmtune_core::placement::{Occupancy, Pool};
use kvmtune_core::plan::{Plan, plan};
use kvmtune_core::policy::{ExistingPins, MemoryMode, OnError, OnViolation, Policy};
use kvmtune_core::rewrite;
use kvmtune_sys::affinity;
use kvmtune_sys::ledger_store::{self as ledger, LOCK_TIMEOUT, Locked};
use kvmtune_sys::libvirt_run as runstate;
use kvmtune_sys::logging::{Log, one_line, sanitize};
use kvmtune_sys::roots::Roots;

/// `kvmtune hook GUEST OP SUBOP [EXTRA...]`, the same arguments libvirt passes.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Guest name
    pub guest: String,
    /// Operation: prepare, start, started, stopped, release, migrate, restore, reconnect, attach
    pub op: String,
    /// Sub-operation: begin or end
    pub subop: String,
    /// Extra arguments libvirt passes (ignored)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

/// What the hook process does on exit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub exit: u8,
    /// Printed on stdout (restore/migrate: the rewritten XML).
    pub stdout: String,
    /// One line printed on stderr when exiting non-zero (libvirt shows it to the user).
    pub stderr: String,
    /// The decision, for the log line.
    pub summary: String,
}

impl Outcome {
    fn allow(summary: impl Into<String>) -> Outcome {
        Outcome {
            summary: summary.into(),
            ..Outcome::default()
        }
    }
}

/// Entry from `kvmtune hook ...`.
pub fn run_from_cli(args: &HookArgs) -> ExitCode {
    run_process(&args.guest, &args.op, &args.subop)
}

/// Entry when invoked as `/etc/libvirt/hooks/qemu` (or from `qemu.d/`): argv[1..].
pub fn run_as_libvirt_hook(args: &[String]) -> ExitCode {
    match args {
        [guest, op, subop, ..] => run_process(guest, op, subop),
        // libvirt always passes at least three; anything else is not libvirt.
        _ => {
            eprintln!(
                "kvmtune: invoked as a libvirt hook with {} argument(s); expected GUEST OP SUBOP EXTRA",
                args.len()
            );
            ExitCode::from(crate::exit::USAGE)
        }
    }
}

fn run_process(guest: &str, op: &str, subop: &str) -> ExitCode {
    let env = Roots::from_process_env();
    let mut log = Log::open(&env.syslog_socket);
    // Read all of stdin (bounded): libvirt writes the XML and expects it consumed.
    let mut input = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_XML_BYTES as u64 + 1)
        .read_to_end(&mut input);
    if let Err(e) = read {
        log.error(format!(
            "guest={} stage={op} outcome=error reading stdin: {e}",
            sanitize(guest)
        ));
    }
    let outcome = run(&env, guest, op, subop, &input, &mut log);
    if !outcome.stdout.is_empty() {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(outcome.stdout.as_bytes());
        let _ = out.flush();
    }
    if outcome.exit != 0 && !outcome.stderr.is_empty() {
        eprintln!("{}", outcome.stderr);
    }
    ExitCode::from(outcome.exit)
}

/// Runs one hook call: never panics, never returns an error; every path logs one
/// line with the duration.
pub fn run(
    env: &Roots,
    guest: &str,
    op: &str,
    subop: &str,
    input: &[u8],
    log: &mut Log,
) -> Outcome {
    let started = Instant::now();
    let stage = format!("{op}-{subop}");
    let handled = matches!(
        (op, subop),
        ("prepare", "begin")
            | ("started", "begin")
            | ("restore", "begin")
            | ("migrate", "begin")
            | ("release", "end")
            | ("reconnect", "begin")
    );
    if !handled {
        // libvirt adds operations over time; unknown ones are none of our business.
        return Outcome::default();
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stage_dispatch(env, guest, op, input, log)
    }));
    let (mut outcome, severity_error) = match result {
        Ok(Ok(outcome)) => (outcome, false),
        Ok(Err(failure)) => (
            on_error(guest, &stage, &failure.error, failure.on_error),
            true,
        ),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            (
                on_error(
                    guest,
                    &stage,
                    &anyhow!("internal error (panic): {what}"),
                    OnError::Allow,
                ),
                true,
            )
        }
    };
    // Error texts can quote the XML (a value with a newline): libvirt shows the
    // refusal as one line, and syslog lines must not be forgeable.
    outcome.stderr = one_line(&outcome.stderr);
    let line = format!(
        "guest={} stage={stage} outcome={} duration_us={} {}",
        sanitize(guest),
        if outcome.exit == 0 {
            "allowed"
        } else {
            "refused"
        },
        started.elapsed().as_micros(),
        outcome.summary
    );
    let line = one_line(&line);
    if severity_error {
        log.error(line);
    } else if outcome.exit != 0 || outcome.summary.contains("violation") {
        log.warning(line);
    } else {
        log.info(line);
    }
    outcome
}

/// An internal error and the `on_error` in force when it happened.
struct Failure {
    error: anyhow::Error,
    on_error: OnError,
}

fn on_error(guest: &str, stage: &str, error: &anyhow::Error, mode: OnError) -> Outcome {
    match mode {
        OnError::Allow => {
            Outcome::allow(format!("error: {error:#}; guest allowed (on_error: allow)"))
        }
        OnError::Refuse => Outcome {
            exit: 1,
            stderr: format!(
                "kvmtune: guest '{}' refused at {stage}: {error:#} (on_error: refuse)",
                sanitize(guest)
            ),
            stdout: String::new(),
            summary: format!("error: {error:#}; guest refused (on_error: refuse)"),
        },
    }
}

/// Everything a stage needs, loaded once.
struct Stage<'a> {
    env: &'a Roots,
    policy: Policy,
    xml: &'a str,
    domain: Domain,
}

fn stage_dispatch(
    env: &Roots,
    guest: &str,
    op: &str,
    input: &[u8],
    log: &mut Log,
) -> Result<Outcome, Failure> {
    // Until the policy is loaded, the safe default applies: allow.
    let fail_allow = |error: anyhow::Error| Failure {
        error,
        on_error: OnError::Allow,
    };
    let policy =
        match kvmtune_sys::policy_file::load_checked(&env.policy, env.allow_insecure_policy) {
            Ok(policy) => policy,
            // Freeing a claim needs no policy: a broken policy must not leave the CPUs
            // of a stopped guest claimed.
            Err(e) if op == "release" => {
                log.error(format!(
                    "guest={} stage=release-end policy: {e}; freeing the claim anyway",
                    sanitize(guest)
                ));
                Policy::default()
            }
            Err(e) => return Err(fail_allow(anyhow!("policy: {e}"))),
        };
    let on_error = policy.on_error;
    let fail = |error: anyhow::Error| Failure { error, on_error };
    let (domain, xml) =
        Domain::parse_bytes(input).map_err(|e| fail(anyhow!("domain XML on stdin: {e}")))?;
    if domain.name != guest {
        return Err(fail(anyhow!(
            "domain XML on stdin is for guest '{}', not '{}'",
            sanitize(&domain.name),
            sanitize(guest)
        )));
    }
    let ctx = Stage {
        env,
        policy,
        xml,
        domain,
    };
    let result = match op {
        "prepare" => prepare(&ctx),
        "started" => started(&ctx),
        "restore" | "migrate" => restore_or_migrate(&ctx, op == "migrate"),
        "release" => release(&ctx),
        "reconnect" => reconnect(&ctx),
        _ => Ok(Outcome::default()),
    };
    result.map_err(fail)
}

/// Takes the ledger lock and reconciles it with libvirt's status files.
fn locked_ledger(ctx: &Stage<'_>) -> Result<(Locked, Occupancy, Vec<String>)> {
    let mut locked = Locked::acquire(&ctx.env.paths.run_dir, LOCK_TIMEOUT)?;
    // A guest is running while its status file exists, even when that file does not
    // parse (or is too large): freeing its claim would hand its CPUs out twice.
    let running = runstate::status_files(&ctx.env.paths.libvirt_run_dir);
    let mut notes = Vec::new();
    if let Some(recovered) = locked.recovered_from.take() {
        notes.push(format!("ledger recovered: {recovered}"));
    }
    let dropped = locked.ledger.reconcile(&running, ledger::now());
    if !dropped.is_empty() {
        notes.push(format!(
            "freed stale claims of {}",
            dropped
                .iter()
                .map(|d| sanitize(d))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let claimed = locked.ledger.occupancy();
    // Only guests kvmtune holds no claim for need their status file parsed.
    let live = runstate::parse_except(&running, &claimed);
    let mut occupancy = claimed.clone();
    occupancy
        .guests
        .extend(kvmtune_core::runstate::pinned_by_others(&live, &claimed).guests);
    Ok((locked, occupancy, notes))
}

/// libvirt's status file for the guest. libvirt refuses names with '/', so such a
/// name is not from libvirt: never let it reach outside the run directory.
fn status_path(ctx: &Stage<'_>) -> Result<PathBuf> {
    let name = &ctx.domain.name;
    if name.contains('/') || name.contains('\0') {
        return Err(anyhow!(
            "guest name '{}' cannot name a libvirt status file",
            sanitize(name)
        ));
    }
    Ok(ctx.env.paths.libvirt_run_dir.join(format!("{name}.xml")))
}

/// The host, its static topology from `/run/kvmtune/host-topology.json` when that
/// is still valid (see [`Host::read_cached`]). Takes the ledger lock as a witness:
/// holding it means the run directory passed the ledger's checks (root's, no
/// symlink), and the cache's temp file, like the ledger's, is stale whenever the
/// lock is free.
fn read_host(ctx: &Stage<'_>, _held: &Locked) -> Result<Host> {
    kvmtune_sys::sysfs::read_host_cached(
        &ctx.env.host_root,
        &ctx.env.paths.run_dir.join(HOST_CACHE_FILE),
    )
    .with_context(|| format!("host {}", ctx.env.host_root.display()))
}

/// The host topology cache, next to the ledger.
pub const HOST_CACHE_FILE: &str = "host-topology.json";

fn entry_from_plan(ctx: &Stage<'_>, plan: &Plan) -> Option<Entry> {
    let placement = plan.placement.as_ref()?;
    Some(Entry {
        uuid: ctx.domain.uuid.clone(),
        cpus: placement.cpus.clone(),
        nodes: placement.nodes.clone(),
        vcpus: placement.vcpus.clone(),
        emulator: plan.emulator_cpus.clone(),
        memory_kib: ctx.domain.memory_kib,
        pool: plan.pool,
        claimed_at: ledger::now(),
        state: EntryState::Prepared,
        rule: plan.policy_rule.clone(),
    })
}

fn prepare(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, occupancy, mut notes) = locked_ledger(ctx)?;
    let host = read_host(ctx, &locked)?;
    let plan = plan(&ctx.policy, &host, &occupancy, &ctx.domain)?;
    let name = sanitize(&ctx.domain.name);
    if !plan.enabled {
        locked.ledger.guests.remove(&ctx.domain.name);
        locked.save()?;
        return Ok(Outcome::allow(format!(
            "opted out by rule {}",
            plan.policy_rule
        )));
    }
    // XML-level rules: only a changed definition fixes them.
    let refuse_always: Vec<_> = plan.violations.iter().filter(|v| v.refuse_always).collect();
    if !plan.violations.is_empty() {
        let list = plan
            .violations
            .iter()
            .map(|v| format!("rule {}: {}", v.rule, v.what))
            .collect::<Vec<_>>()
            .join("; ");
        if !refuse_always.is_empty() || ctx.policy.on_violation == OnViolation::Refuse {
            let reason = format!(
                "kvmtune: guest '{name}' violates the tuning policy ({} via {}): {list}; fix: kvmtune apply {name}",
                if refuse_always.is_empty() {
                    "on_violation: refuse"
                } else {
                    "refused by policy"
                },
                plan.policy_rule
            );
            locked.ledger.guests.remove(&ctx.domain.name);
            locked.save()?;
            return Ok(Outcome {
                exit: 1,
                stderr: reason,
                stdout: String::new(),
                summary: format!("violation refused: {list}"),
            });
        }
        notes.push(format!(
            "violation (on_violation: warn): {list}; fix: kvmtune apply {name}"
        ));
    }
    if let Some(why) = &plan.no_room {
        if ctx.policy.on_violation == OnViolation::Refuse {
            return Ok(Outcome {
                exit: 1,
                stderr: format!("kvmtune: guest '{name}' cannot be placed: {why}"),
                stdout: String::new(),
                summary: format!("no room: {why}"),
            });
        }
        match &plan.placement {
            Some(_) => notes.push(format!("no room: {why}; fell back to the shared pool")),
            None => notes.push(format!("no placement: {why}; guest runs unpinned")),
        }
    }
    match entry_from_plan(ctx, &plan) {
        Some(entry) => {
            notes.insert(
                0,
                format!(
                    "claimed cpus={} nodes={} emulator={} rule={}",
                    entry.cpus,
                    entry.nodes,
                    entry
                        .emulator
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                    plan.policy_rule
                ),
            );
            locked.ledger.guests.insert(ctx.domain.name.clone(), entry);
        }
        None => {
            locked.ledger.guests.remove(&ctx.domain.name);
        }
    }
    locked.save()?;
    Ok(Outcome::allow(notes.join("; ")))
}

fn started(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, occupancy, mut notes) = locked_ledger(ctx)?;
    let entry = match locked.ledger.guests.get(&ctx.domain.name) {
        Some(e) => e.clone(),
        None => {
            // No claim from prepare (hook installed while the guest was starting,
            // or the policy just changed): plan now.
            let host = read_host(ctx, &locked)?;
            let plan = plan(&ctx.policy, &host, &occupancy, &ctx.domain)?;
            match entry_from_plan(ctx, &plan) {
                Some(e) if plan.enabled => e,
                _ => return Ok(Outcome::allow("nothing to apply (no placement)")),
            }
        }
    };
    let status_path = status_path(ctx)?;
    let live = runstate::read_status(&status_path)?;
    let pid = live
        .qemu_pid
        .ok_or_else(|| anyhow!("{}: no QEMU pid", status_path.display()))?;

    let mut applied = Vec::new();
    if ctx.env.apply_runtime {
        if !ctx.domain.pins_explicitly() {
            for (vcpu, tid) in &live.vcpu_tids {
                if let Some(cpus) = entry.vcpus.get(*vcpu as usize) {
                    affinity::set_thread_affinity(*tid, cpus)?;
                }
            }
        } else {
            notes.push("vCPUs pinned by the XML (libvirt applied them)".into());
        }
        if ctx.domain.emulator_pin.is_none()
            && let Some(emulator) = &entry.emulator
        {
            let vcpu_tids: Vec<u32> = live.vcpu_tids.values().copied().collect();
            for tid in affinity::threads_of(&ctx.env.proc_root, pid)? {
                if vcpu_tids.contains(&tid) {
                    continue;
                }
                // A thread may exit between listing and pinning: not an error.
                match affinity::set_thread_affinity(tid, emulator) {
                    Ok(()) => {}
                    Err(affinity::AffinityError::SetAffinity {
                        errno: nix::errno::Errno::ESRCH,
                        ..
                    }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Memory: strict modes through the cgroup's cpuset.mems; preferred follows
        // the pinned vCPUs by first touch.
        let settings_mode = ctx
            .policy
            .select(&kvmtune_core::plan::guest_facts(&ctx.domain))
            .settings
            .map(|s| s.memory_mode);
        if ctx.domain.numa_memory.is_none()
            && matches!(
                settings_mode,
                Some(MemoryMode::Strict | MemoryMode::Restrictive)
            )
        {
            match affinity::cpuset_cgroup(&ctx.env.host_root, pid) {
                Some(cg) => {
                    let dir = affinity::guest_cgroup_dir(&cg.dir);
                    affinity::set_cgroup_mems(&dir, &entry.nodes)?;
                    notes.push(format!("cgroup mems={}", entry.nodes));
                }
                None => notes.push("no cpuset cgroup found; memory nodes not enforced".into()),
            }
        }
        // Read back what the kernel reports.
        for (vcpu, tid) in &live.vcpu_tids {
            if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, *tid) {
                applied.push(format!("vcpu{vcpu}={cpus}"));
            }
        }
        if let Ok(cpus) = affinity::allowed_cpus(&ctx.env.proc_root, pid, pid) {
            applied.push(format!("emulator={cpus}"));
        }
    }
    if let Some(e) = locked.ledger.guests.get_mut(&ctx.domain.name) {
        e.state = EntryState::Running;
    } else {
        let mut e = entry.clone();
        e.state = EntryState::Running;
        locked.ledger.guests.insert(ctx.domain.name.clone(), e);
    }
    locked.save()?;
    notes.insert(0, format!("effective {}", applied.join(" ")));
    Ok(Outcome::allow(notes.join("; ")))
}

fn restore_or_migrate(ctx: &Stage<'_>, migrate: bool) -> Result<Outcome> {
    let (locked, occupancy, _) = locked_ledger(ctx)?;
    let host = read_host(ctx, &locked)?;
    let mut domain = ctx.domain.clone();
    let mut policy = ctx.policy.clone();
    if migrate {
        // Pins copied from the source host say nothing about this host: place the
        // guest afresh against this host's occupancy (copied pins collide).
        policy.defaults.existing_pins = ExistingPins::Override;
        for rule in &mut policy.rules {
            rule.settings.existing_pins = ExistingPins::Override;
        }
        domain.vcpu_pins.clear();
        domain.vcpu_cpuset = None;
    }
    let plan = plan(&policy, &host, &occupancy, &domain)?;
    let changes = plan.abi_safe_changes();
    if changes.is_empty() {
        return Ok(Outcome::allow("XML unchanged"));
    }
    let rewritten = rewrite::apply(ctx.xml, &changes)?;
    Ok(Outcome {
        stdout: rewritten,
        summary: format!("rewrote XML: {} guest-ABI-safe change(s)", changes.len()),
        ..Outcome::default()
    })
}

fn release(ctx: &Stage<'_>) -> Result<Outcome> {
    let mut locked = Locked::acquire(&ctx.env.paths.run_dir, LOCK_TIMEOUT)?;
    let had = locked.ledger.guests.remove(&ctx.domain.name);
    if had.is_some() {
        locked.save()?;
    }
    Ok(Outcome::allow(match had {
        Some(e) => format!("freed cpus={}", e.cpus),
        None => "no claim to free".to_string(),
    }))
}

fn reconnect(ctx: &Stage<'_>) -> Result<Outcome> {
    let (mut locked, _, _) = locked_ledger(ctx)?;
    if let Some(e) = locked.ledger.guests.get_mut(&ctx.domain.name) {
        e.state = EntryState::Running;
        let cpus = e.cpus.clone();
        locked.save()?;
        return Ok(Outcome::allow(format!("claim kept cpus={cpus}")));
    }
    // No claim (ledger lost, e.g. /run cleared): record where the guest runs now,
    // from its XML pins or its threads' affinity.
    let live = status_path(ctx)
        .ok()
        .and_then(|p| runstate::read_status(&p).ok());
    let mut vcpus: Vec<CpuSet> = Vec::new();
    for v in 0..ctx.domain.vcpus_max {
        let from_xml = ctx.domain.pinned_cpus_of(v).cloned();
        let from_thread = live.as_ref().and_then(|l| {
            let tid = l.vcpu_tids.get(&v)?;
            affinity::allowed_cpus(&ctx.env.proc_root, l.qemu_pid?, *tid).ok()
        });
        if let Some(set) = from_xml.or(from_thread) {
            vcpus.push(set);
        }
    }
    if vcpus.is_empty() {
        return Ok(Outcome::allow("no placement to record"));
    }
    let cpus = vcpus.iter().fold(CpuSet::new(), |a, s| a.union(s));
    let host = read_host(ctx, &locked).ok();
    let nodes = host
        .as_ref()
        .map(|h| kvmtune_core::placement::nodes_of(h, &cpus))
        .unwrap_or_default();
    locked.ledger.guests.insert(
        ctx.domain.name.clone(),
        Entry {
            uuid: ctx.domain.uuid.clone(),
            cpus: cpus.clone(),
            nodes,
            vcpus,
            emulator: ctx.domain.emulator_pin.clone(),
            memory_kib: ctx.domain.memory_kib,
            pool: Pool::Shared,
            claimed_at: ledger::now(),
            state: EntryState::Running,
            rule: "reconnect".into(),
        },
    );
    locked.save()?;
    Ok(Outcome::allow(format!("re-recorded cpus={cpus}")))
}

/// Whether `argv0` names the libvirt hook (`.../hooks/qemu` or a file in `qemu.d/`).
pub fn invoked_as_hook(argv0: &Path) -> bool {
    let name = argv0.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = argv0
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "qemu" || parent == "qemu.d"
}
