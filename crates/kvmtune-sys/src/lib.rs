//! kvmtune's system edge: every read and write of the machine, each path derived
//! from one [`roots::Roots`] value. sysfs/procfs and the topology cache
//! ([`sysfs`]), libvirt's status files ([`libvirt_run`]), the ledger store
//! ([`ledger_store`]), the policy file ([`policy_file`]), thread affinity and
//! cgroups ([`affinity`]), the one-time move of a guest's memory onto its nodes
//! ([`page_move`]), host tuning ([`hosttune`]), syslog ([`logging`]),
//! bounded child processes ([`command`]), libvirt through virsh ([`virsh`]), the
//! backups of replaced definitions ([`backups`]), the hook's outcome counters and the
//! convergence queue's length ([`run_metrics`]), and the convergence queue itself
//! ([`converge_queue`]). Decisions are `kvmtune_core`'s.

pub mod affinity;
pub mod atomicfile;
pub mod backups;
pub mod command;
pub mod converge_queue;
pub mod hosttune;
pub mod ledger_store;
pub mod libvirt_run;
pub mod logging;
pub mod page_move;
pub mod policy_file;
pub mod roots;
pub mod run_metrics;
pub mod sysfs;
pub mod virsh;
