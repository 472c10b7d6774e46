//! Running an outside program (virsh, modprobe, mount) with a timeout: the admin
//! commands' only door to other processes. The [`Runner`] trait is what the
//! commands depend on, so unit tests swap in a fake and never need libvirt.
//!
//! Every call is bounded: a libvirtd that hangs (or a virsh waiting on a lock)
//! must not hang `kvmtune apply` forever. Output is read by helper threads while
//! the child runs, so a chatty child cannot block on a full pipe.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output of a finished program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A successful run printing `stdout` (for fakes).
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Output {
        Output {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// A failed run printing `stderr` (for fakes).
    pub fn failed(code: i32, stderr: impl Into<String>) -> Output {
        Output {
            code: Some(code),
            stdout: Vec::new(),
            stderr: stderr.into(),
        }
    }
}

/// Why a program could not be run to completion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("{program}: not found")]
    NotFound { program: String },
    #[error("{program}: permission denied")]
    NotExecutable { program: String },
    #[error("{program} did not finish within {}s and was killed", timeout.as_secs())]
    Timeout { program: String, timeout: Duration },
    #[error("{program}: {message}")]
    Io { program: String, message: String },
}

/// Runs one program with arguments and returns what it printed.
pub trait Runner {
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError>;
}

/// The real runner: a child process, stdin closed, killed after `timeout`.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    pub timeout: Duration,
}

impl ProcessRunner {
    pub fn new(timeout: Duration) -> ProcessRunner {
        ProcessRunner { timeout }
    }
}

/// Largest output read from a child (a domain XML is at most 16 MiB).
const MAX_OUTPUT: u64 = 64 * 1024 * 1024;

impl Runner for ProcessRunner {
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError> {
        let name = program.display().to_string();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Messages we parse (virsh's errors) must not be translated.
            .env("LC_ALL", "C")
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RunError::NotFound {
                    program: name.clone(),
                },
                std::io::ErrorKind::PermissionDenied => RunError::NotExecutable {
                    program: name.clone(),
                },
                _ => RunError::Io {
                    program: name.clone(),
                    message: e.to_string(),
                },
            })?;
        let stdout = child.stdout.take().map(|s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
                buf
            })
        });
        let stderr = child.stderr.take().map(|s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
                buf
            })
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The reader threads end when the pipes close; a grandchild that
                    // kept them open would keep them alive, so they are not joined.
                    return Err(RunError::Timeout {
                        program: name,
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    let _ = child.kill();
                    return Err(RunError::Io {
                        program: name,
                        message: e.to_string(),
                    });
                }
            }
        };
        let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        Ok(Output {
            code: status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

/// Finds `name` on `PATH` (plus the sbin directories, which a non-login root shell
/// may lack), or returns it unchanged so that running it reports "not found".
pub fn find_program(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn captures_output_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(dir.path(), "p", "echo out \"$1\"; echo err >&2; exit 3");
        let out = ProcessRunner::new(Duration::from_secs(10))
            .run(&prog, &["arg".to_string()])
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"out arg\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.success());
    }

    #[test]
    fn a_hanging_program_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(dir.path(), "hang", "exec sleep 30");
        let started = Instant::now();
        let err = ProcessRunner::new(Duration::from_millis(200))
            .run(&prog, &[])
            .unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let err = ProcessRunner::new(Duration::from_secs(1))
            .run(Path::new("/nonexistent/virsh"), &[])
            .unwrap_err();
        assert_eq!(
            err,
            RunError::NotFound {
                program: "/nonexistent/virsh".into()
            }
        );
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "big",
            "head -c 1000000 /dev/zero; head -c 200000 /dev/zero >&2",
        );
        let out = ProcessRunner::new(Duration::from_secs(10))
            .run(&prog, &[])
            .unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
        assert_eq!(out.stderr.len(), 200_000);
    }
}
