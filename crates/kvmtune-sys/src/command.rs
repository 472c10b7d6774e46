//! Running an outside program (virsh, modprobe, mount) with a timeout: the admin
//! commands' only door to other processes. The [`Runner`] trait is what the
//! commands depend on, so unit tests swap in a fake and never need libvirt.
//!
//! Every call is bounded: a libvirtd that hangs (or a virsh waiting on a lock)
//! must not hang `kvmtune apply` forever. The child is waited for with the
//! `wait-timeout` crate and killed at the timeout. Output is read by helper threads
//! while the child runs, so a chatty child cannot block on a full pipe; once the
//! child is gone they get [`READ_GRACE`] to drain the pipes and then stop, so a
//! grandchild that inherited a pipe and keeps it open (a daemon `modprobe` or a
//! helper started in the background) cannot hang the call either: what was read
//! by then is the output.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use wait_timeout::ChildExt;

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

/// Largest output read from a child (a domain XML is at most 16 MiB); the pipe is
/// closed after that.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// How long the readers may still drain the pipes once the child has exited.
pub const READ_GRACE: Duration = Duration::from_secs(2);

/// How often a reader waiting on a silent pipe looks at its deadline.
const READ_TICK_MS: u8 = 50;

/// When the readers must stop: unset while the child runs.
type StopAt = Arc<OnceLock<Instant>>;

/// Reads `pipe` until end of file, [`MAX_OUTPUT`], or `stop_at` has passed; returns
/// what it read. It only reads when `poll` says there is something, so it never
/// blocks longer than [`READ_TICK_MS`] past the deadline.
fn spawn_reader<P>(mut pipe: P, stop_at: StopAt) -> JoinHandle<Vec<u8>>
where
    P: Read + AsFd + Send + 'static,
{
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while buf.len() < MAX_OUTPUT && stop_at.get().is_none_or(|t| Instant::now() < *t) {
            let ready = {
                let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(READ_TICK_MS))
            };
            match ready {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => break,
            }
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT - buf.len();
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf
    })
}

/// Lets the readers finish by `deadline` and collects what they read.
fn collect(reader: Option<JoinHandle<Vec<u8>>>, stop_at: &StopAt, deadline: Instant) -> Vec<u8> {
    let _ = stop_at.set(deadline);
    reader.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Kills and reaps a child that is being given up on.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

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
        let stop_at: StopAt = Arc::default();
        let stdout = child
            .stdout
            .take()
            .map(|s| spawn_reader(s, Arc::clone(&stop_at)));
        let stderr = child
            .stderr
            .take()
            .map(|s| spawn_reader(s, Arc::clone(&stop_at)));
        let status = match child.wait_timeout(self.timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                kill(&mut child);
                // Output of a killed child is not used: stop the readers now.
                let now = Instant::now();
                collect(stdout, &stop_at, now);
                collect(stderr, &stop_at, now);
                return Err(RunError::Timeout {
                    program: name,
                    timeout: self.timeout,
                });
            }
            Err(e) => {
                kill(&mut child);
                let now = Instant::now();
                collect(stdout, &stop_at, now);
                collect(stderr, &stop_at, now);
                return Err(RunError::Io {
                    program: name,
                    message: e.to_string(),
                });
            }
        };
        let deadline = Instant::now() + READ_GRACE;
        let stdout = collect(stdout, &stop_at, deadline);
        let stderr = collect(stderr, &stop_at, deadline);
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
    fn a_grandchild_holding_the_pipes_does_not_hang_the_call() {
        let dir = tempfile::tempdir().unwrap();
        // The background sleep inherits stdout and stderr and keeps them open
        // after the script exits; its pid goes to stderr so the test can end it.
        let prog = script(dir.path(), "bg", "sleep 30 & echo $! >&2; echo hi");
        let started = Instant::now();
        let out = ProcessRunner::new(Duration::from_secs(20))
            .run(&prog, &[])
            .unwrap();
        let elapsed = started.elapsed();
        let grandchild: i32 = out.stderr.trim().parse().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(grandchild),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout, b"hi\n");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }

    #[test]
    fn a_killed_program_whose_grandchild_holds_the_pipes_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "bghang",
            "sleep 30 & echo $! > \"$0.pid\"; exec sleep 30",
        );
        let started = Instant::now();
        let err = ProcessRunner::new(Duration::from_millis(500))
            .run(&prog, &[])
            .unwrap_err();
        let pidfile = dir.path().join("bghang.pid");
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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
