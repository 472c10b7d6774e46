//! Decision logging to syslog (facility daemon, ident `kvmtune`) that can never
//! hang the hook: the socket gets a write timeout, because a `/dev/log` nobody reads
//! blocks `send()` forever once its queue fills (CRATES.md). Without a syslog socket
//! the lines are kept, so the caller can print them to stderr when it exits non-zero.

use std::path::Path;
use std::time::Duration;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

/// Longest a single syslog send may block.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Where syslog listens on Linux.
pub const DEFAULT_SOCKET: &str = "/dev/log";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// A syslog connection (if any) plus the lines sent, for stderr on failure.
pub struct Log {
    logger: Option<Logger<LoggerBackend, Formatter3164>>,
    pub lines: Vec<(Severity, String)>,
}

impl Log {
    /// Connects to the syslog socket at `path`; a missing or unusable socket is not
    /// an error (the lines are still kept in memory).
    pub fn open(path: &Path) -> Log {
        let formatter = Formatter3164 {
            facility: Facility::LOG_DAEMON,
            hostname: None,
            process: "kvmtune".into(),
            pid: std::process::id(),
        };
        let logger = if path.exists() {
            syslog::unix_custom(formatter, path).ok().map(|mut logger| {
                match &mut logger.backend {
                    LoggerBackend::Unix(socket) => {
                        let _ = socket.set_write_timeout(Some(SEND_TIMEOUT));
                    }
                    LoggerBackend::UnixStream(stream) => {
                        let _ = stream.get_ref().set_write_timeout(Some(SEND_TIMEOUT));
                    }
                    _ => {}
                }
                logger
            })
        } else {
            None
        };
        Log {
            logger,
            lines: Vec::new(),
        }
    }

    /// A log that only keeps lines (tests, `--no-syslog`).
    pub fn memory() -> Log {
        Log {
            logger: None,
            lines: Vec::new(),
        }
    }

    pub fn send(&mut self, severity: Severity, message: String) {
        if let Some(logger) = &mut self.logger {
            // A failed or timed-out send is dropped: logging must never stop a guest.
            let result = match severity {
                Severity::Info => logger.info(&message),
                Severity::Warning => logger.warning(&message),
                Severity::Error => logger.err(&message),
            };
            if result.is_err() {
                // After one timeout, stop trying: each try could cost SEND_TIMEOUT.
                self.logger = None;
            }
        }
        self.lines.push((severity, message));
    }

    pub fn info(&mut self, message: String) {
        self.send(Severity::Info, message);
    }

    pub fn warning(&mut self, message: String) {
        self.send(Severity::Warning, message);
    }

    pub fn error(&mut self, message: String) {
        self.send(Severity::Error, message);
    }
}

/// Makes an untrusted string (a guest name) safe for one log line: control
/// characters escaped, length bounded.
pub fn sanitize(text: &str) -> String {
    const MAX: usize = 128;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= MAX {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// Keeps a whole message (a log line, the refusal line libvirt shows) on one line:
/// characters that break or disguise a line are escaped; the length is not bounded.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// Control characters (C0, DEL, C1), Unicode line/paragraph separators and the
/// bidirectional overrides that can make a log line read differently than it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    if needs_escape(c) {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_controls_and_bounds_length() {
        assert_eq!(sanitize("a\nb\x1b"), "a\\nb\\u{1b}");
        assert_eq!(sanitize(&"x".repeat(300)).chars().count(), 129);
    }

    #[test]
    fn a_socket_nobody_reads_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let _server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut log = Log::open(&path);
        let started = std::time::Instant::now();
        for i in 0..2000 {
            log.info(format!("message {i} {}", "x".repeat(512)));
        }
        // Bounded: at most one SEND_TIMEOUT is paid, then the logger is dropped.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(log.lines.len(), 2000);
    }
}
