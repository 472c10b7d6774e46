//! kvmtune's pure core: everything kvmtune decides, with no I/O. A validated
//! [`policy::Policy`], a [`host::Host`] model, the occupancy of the host and a parsed
//! [`domain::Domain`] go into [`plan::plan`], which returns a [`plan::Plan`]: a
//! placement plus a list of edits, each with its reason. [`rewrite`] applies the
//! edits to the XML text. Reading the machine is `kvmtune_sys`'s job; the doors
//! (CLI, hook) are the `kvmtune` binary's.

pub mod admission;
pub mod batch;
pub mod conformance;
pub mod converge;
pub mod cpuset;
pub mod domain;
pub mod host;
pub mod host_tuning;
pub mod ledger;
pub mod nova;
pub mod numa_maps;
pub mod pins_mark;
pub mod placement;
pub mod plan;
pub mod plan_model;
pub mod policy;
pub mod readback;
pub mod rebalance;
pub mod recovery;
pub mod repack;
pub mod rewrite;
pub mod rules;
pub mod runstate;
pub mod simulate;
pub mod status;

pub use cpuset::CpuSet;
