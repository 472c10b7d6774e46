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

mod context;
pub(crate) mod moves;
mod prepare;
mod reconnect;
mod release;
mod restore;
mod stage;
mod started;

use prepare::prepare;
use reconnect::reconnect;
use release::release;
use restore::restore_or_migrate;
use stage::Stage;
use started::started;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, anyhow};
use clap::Args;

use kvmtune_core::domain::{Domain, MAX_XML_BYTES};
use kvmtune_core::policy::{OnError, Policy};
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

    /// Exit 1 with `line` on stderr: libvirt shows it to the user and aborts.
    fn refuse(line: String) -> Outcome {
        Outcome {
            exit: 1,
            summary: format!("refused: {line}"),
            stderr: line,
            stdout: String::new(),
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
    // For `kvmtune status --format prometheus`; never waits, never fails the call.
    let counted = match (severity_error, outcome.exit) {
        (true, _) => "error",
        (false, 0) => "allowed",
        (false, _) => "refused",
    };
    let _ = kvmtune_sys::run_metrics::record_hook_outcome(&env.paths.run_dir, &stage, counted);
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
