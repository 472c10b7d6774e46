//! The `kvmtune` binary's doors: the admin's command line ([`cli`], one module per
//! command under [`commands`]) and the libvirt qemu hook ([`hook`]). Everything they
//! decide comes from `kvmtune_core` (pure) and everything they touch goes through
//! `kvmtune_sys`; see ARCHITECTURE.md.

pub mod cli;
pub mod commands;
pub mod exit;
pub mod hook;
pub mod inputs;
pub mod output;
#[cfg(test)]
mod test_support;
