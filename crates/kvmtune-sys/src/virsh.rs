//! virsh, the admin commands' door to libvirt: [`Virsh`] runs `virsh --quiet
//! --connect URI ...` through a [`Runner`] (so unit tests answer with a fake and
//! every real call is bounded by [`ProcessRunner`](crate::command::ProcessRunner)'s
//! timeout), and [`classify`] turns virsh's stderr into a [`VirshError`] an admin
//! can act on (libvirt down, access refused, no such guest, timeout).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::{Output, RunError, Runner};

/// Environment override of the virsh program (tests).
pub const VIRSH_ENV: &str = "KVMTUNE_VIRSH";
/// The URI used when neither `--connect` nor `LIBVIRT_DEFAULT_URI` says.
pub const DEFAULT_URI: &str = "qemu:///system";
/// How long one virsh call may take.
pub const VIRSH_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong talking to libvirt, phrased for the admin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirshError {
    #[error(
        "virsh not found ({program}): install libvirt-clients (Debian) or libvirt-client (RPM)"
    )]
    Missing { program: String },
    #[error("cannot run {program}: permission denied")]
    NotExecutable { program: String },
    #[error("libvirt at {uri} is unreachable: {detail}; is libvirtd (or virtqemud) running?")]
    Unreachable { uri: String, detail: String },
    #[error(
        "libvirt at {uri} refused access: {detail}; run as root or as a member of the libvirt group"
    )]
    PermissionDenied { uri: String, detail: String },
    #[error("libvirt at {uri} has no guest named '{guest}'")]
    NoSuchGuest { uri: String, guest: String },
    #[error("virsh {command} did not answer within {secs}s (libvirtd hung?); killed")]
    Timeout { command: String, secs: u64 },
    #[error("virsh {command} failed: {detail}")]
    Failed { command: String, detail: String },
}

/// virsh, one URI, behind a [`Runner`].
pub struct Virsh<R: Runner> {
    runner: R,
    program: PathBuf,
    uri: String,
}

impl<R: Runner> Virsh<R> {
    pub fn new(runner: R, program: PathBuf, uri: String) -> Virsh<R> {
        Virsh {
            runner,
            program,
            uri,
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `virsh --connect URI ARGS`; `guest` names the guest for error messages.
    fn call(&self, args: &[&str], guest: Option<&str>) -> Result<Vec<u8>, VirshError> {
        // --quiet: without it virsh frames each command's output with a blank line
        // of its own, which would end up in backups.
        let mut full = vec![
            "--quiet".to_string(),
            "--connect".to_string(),
            self.uri.clone(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let command = args.first().copied().unwrap_or("").to_string();
        let program = self.program.display().to_string();
        let output = self.runner.run(&self.program, &full).map_err(|e| match e {
            RunError::NotFound { .. } => VirshError::Missing { program },
            RunError::NotExecutable { .. } => VirshError::NotExecutable { program },
            RunError::Timeout { timeout, .. } => VirshError::Timeout {
                command: command.clone(),
                secs: timeout.as_secs(),
            },
            RunError::Io { message, .. } => VirshError::Failed {
                command: command.clone(),
                detail: message,
            },
        })?;
        if output.success() {
            return Ok(output.stdout);
        }
        Err(classify(&self.uri, &command, guest, &output))
    }

    /// Persistent guests (`list --all --persistent --name`).
    pub fn persistent_guests(&self) -> Result<Vec<String>, VirshError> {
        let out = self.call(&["list", "--all", "--persistent", "--name"], None)?;
        Ok(names(&out))
    }

    /// Running (or paused) guests (`list --name`).
    pub fn active_guests(&self) -> Result<BTreeSet<String>, VirshError> {
        let out = self.call(&["list", "--name"], None)?;
        Ok(names(&out).into_iter().collect())
    }

    /// The persistent definition, secrets included so that defining it back loses nothing.
    pub fn dumpxml_inactive(&self, guest: &str) -> Result<Vec<u8>, VirshError> {
        self.call(
            &[
                "dumpxml",
                "--inactive",
                "--security-info",
                "--domain",
                guest,
            ],
            Some(guest),
        )
    }

    /// The guest's UUID (`domuuid`).
    pub fn domuuid(&self, guest: &str) -> Result<String, VirshError> {
        let out = self.call(&["domuuid", "--domain", guest], Some(guest))?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// The guest's state and reason (`domstate --reason`), e.g. `paused (starting up)`.
    pub fn domstate(&self, guest: &str) -> Result<String, VirshError> {
        let out = self.call(&["domstate", "--reason", "--domain", guest], Some(guest))?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// `virsh define FILE`.
    pub fn define(&self, file: &Path, guest: &str) -> Result<(), VirshError> {
        let file = file.to_string_lossy();
        self.call(&["define", "--file", &file], Some(guest))
            .map(|_| ())
    }
}

/// The names virsh lists, one a line (blank lines dropped).
pub fn names(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Turns virsh's stderr into an error the admin can act on.
pub fn classify(uri: &str, command: &str, guest: Option<&str>, output: &Output) -> VirshError {
    let detail = output
        .stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("error:").trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let detail = if detail.is_empty() {
        format!(
            "exit status {}",
            output.code.map_or("signal".to_string(), |c| c.to_string())
        )
    } else {
        detail
    };
    let lower = detail.to_lowercase();
    let denied = [
        "permission denied",
        "access denied",
        "authentication",
        "not permitted",
        "polkit",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let unreachable = [
        "failed to connect",
        "no connection driver",
        "cannot recv data",
        "connection reset",
        "connection refused",
        "no such file or directory",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let uri = uri.to_string();
    if denied && (unreachable || !lower.contains("domain")) {
        VirshError::PermissionDenied { uri, detail }
    } else if lower.contains("failed to connect") || (unreachable && guest.is_none()) {
        VirshError::Unreachable { uri, detail }
    } else if let Some(guest) = guest
        .filter(|_| lower.contains("domain not found") || lower.contains("failed to get domain"))
    {
        VirshError::NoSuchGuest {
            uri,
            guest: guest.to_string(),
        }
    } else if denied {
        VirshError::PermissionDenied { uri, detail }
    } else {
        VirshError::Failed {
            command: command.to_string(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records every command line and answers each with `answer`.
    struct Recorder {
        calls: RefCell<Vec<Vec<String>>>,
        answer: Output,
    }

    impl Runner for &Recorder {
        fn run(&self, _program: &Path, args: &[String]) -> Result<Output, RunError> {
            self.calls.borrow_mut().push(args.to_vec());
            Ok(self.answer.clone())
        }
    }

    fn recorder(answer: Output) -> Recorder {
        Recorder {
            calls: RefCell::new(Vec::new()),
            answer,
        }
    }

    #[test]
    fn virsh_calls_pass_the_uri_and_name_the_domain_explicitly() {
        let fake = recorder(Output::ok("<domain/>"));
        let virsh = Virsh::new(&fake, "virsh".into(), DEFAULT_URI.into());
        let _ = virsh.dumpxml_inactive("-web").unwrap();
        let calls = fake.calls.borrow().clone();
        assert_eq!(
            calls[0],
            [
                "--quiet",
                "--connect",
                "qemu:///system",
                "dumpxml",
                "--inactive",
                "--security-info",
                "--domain",
                "-web"
            ]
        );
    }

    #[test]
    fn lists_skip_blank_lines() {
        let fake = recorder(Output::ok("a\n b \n\n"));
        let virsh = Virsh::new(&fake, "virsh".into(), DEFAULT_URI.into());
        assert_eq!(virsh.persistent_guests().unwrap(), ["a", "b"]);
        assert_eq!(
            virsh
                .active_guests()
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn an_unknown_guest_is_named() {
        let fake = recorder(Output::failed(1, "error: failed to get domain 'x'\n"));
        let virsh = Virsh::new(&fake, "virsh".into(), DEFAULT_URI.into());
        assert_eq!(
            virsh.dumpxml_inactive("x").unwrap_err(),
            VirshError::NoSuchGuest {
                uri: DEFAULT_URI.into(),
                guest: "x".into()
            }
        );
        // Without a guest the same words are just a failure of the command.
        let out = Output::failed(1, "error: failed to get domain 'x'\n");
        assert_eq!(
            classify(DEFAULT_URI, "list", None, &out),
            VirshError::Failed {
                command: "list".into(),
                detail: "failed to get domain 'x'".into()
            }
        );
    }
}
