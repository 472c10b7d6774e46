//! Exit codes scripts can rely on (also listed in kvmtune(8)), and the one error type
//! that carries one: commands fail with [`fail`], and `main` maps the error to its
//! code in one place ([`code_of`]).

/// Success; for `check`, everything conforms.
pub const OK: u8 = 0;
/// The command worked and found something: violations, differences, a refusal.
pub const FINDINGS: u8 = 1;
/// Bad usage or a bad policy file.
pub const USAGE: u8 = 2;
/// Bad input: unreadable or invalid domain XML, unreadable host.
pub const INPUT: u8 = 3;
/// libvirt failed or is unreachable (apply, revert).
pub const LIBVIRT: u8 = 4;

/// A failure that maps to a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// An error that exits with `code`.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error that reached `main`: its [`Failure`] code, else
/// [`INPUT`] (an I/O error on what the command read).
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<Failure>().map_or(INPUT, |f| f.code)
}
