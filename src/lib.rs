//! kvmtune: makes every KVM guest libvirt starts follow the host's tuning policy.
//!
//! Data flows one way (see DESIGN.md): a YAML [`policy::Policy`], a [`host::Host`]
//! read from sysfs/procfs under a root directory, the occupancy of the host, and a
//! parsed [`domain::Domain`] go into the pure [`plan::plan`], which returns a
//! [`plan::Plan`]: a placement plus a list of edits, each with its reason. The edits
//! are applied to the XML text by [`rewrite`], to running threads by the hook, and
//! explained to the admin by the CLI.

pub mod affinity;
pub mod apply;
pub mod atomicfile;
pub mod cli;
pub mod command;
pub mod cpuset;
pub mod domain;
pub mod gendocs;
pub mod hook;
pub mod host;
pub mod hosttune;
pub mod ledger;
pub mod logging;
pub mod placement;
pub mod plan;
pub mod policy;
pub mod rewrite;
pub mod runstate;
pub mod simulate;
pub mod status;

pub use cpuset::CpuSet;
