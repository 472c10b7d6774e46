//! One module per `kvmtune` subcommand: each parses nothing itself (clap did), reads
//! its inputs through [`crate::inputs`], calls the libraries and prints.

pub mod apply;
pub mod check;
pub mod converge;
pub mod host;
pub mod move_memory;
pub mod nova;
pub mod plan;
pub mod rebalance;
pub mod simulate;
pub mod status;
