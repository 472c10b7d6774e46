//! The tuning rules of TUNING-RULES.md, one module per XML-level rule, and
//! [`RULES`], the one table that lists every rule kvmtune enforces per guest.
//!
//! A rule module owns everything that is specific to its rule: the names of its
//! policy keys (the values themselves stay fields of [`Settings`], parsed in
//! `policy.rs`), its plan step (what change the rule asks of a domain, with the
//! reason `plan --explain` prints), its XML edit (how `rewrite` writes that
//! change), and its conformance check ([`RuleInfo::conforms`]: whether a
//! parsed domain already meets the rule, which `kvmtune status` reports). The
//! plan step and the conformance check share one decision function, so they
//! cannot disagree.
//!
//! The placement rules (1.1 vCPU pinning, 1.2 NUMA memory, 1.3 emulator threads
//! and iothreads) are table entries too, but their code stays in `plan.rs`
//! (`Planner::placement`, `numatune`, `guest_numa`) and `placement.rs`: they
//! decide together, from the host's occupancy, not from the domain alone.
//!
//! # Adding a rule
//! 1. A new file `rules/<name>.rs` opening with a `//!` doc naming the rule; in
//!    it `pub const ID`, a `pub const KEY_…` per policy key (as docs/policy.md
//!    spells it), a `decide` function used by both `pub(crate) fn plan(&mut
//!    Planner)` (which calls `Planner::edit` / `Planner::note` with `ID`) and
//!    `pub fn conforms(&Domain, &Settings) -> Result<(), String>`, and the XML
//!    edit `pub(crate) fn rewrite(..)` when the rule needs a new [`Change`]
//!    (add the variant in `plan.rs` and its arm in `rewrite::apply_change` and
//!    `rewrite::scopes`).
//! 2. Its `pub mod` line and one entry in [`RULES`], in the order the plan
//!    should run it (the order of the edits is the order of `plan --explain`
//!    and of the rewrite).
//! 3. Its key(s) documented in docs/policy.md with `[ID]` and a `Default:`;
//!    `tests/rules_table.rs` then checks the entry (unique id, keys, defaults
//!    and id in the docs) and wants a violating and a conforming domain for it
//!    from its `fixtures` function: add those two.
//!
//! [`Change`]: crate::plan::Change

use crate::domain::Domain;
use crate::plan_model::{Enforcement, Planner};
use crate::policy::Settings;

pub mod cpu_mode;
pub mod disk_cache;
pub mod hugepages;
pub mod nosharepages;
pub mod vhost_multiqueue;

/// One policy key a rule reads, as docs/policy.md names it (`defaults.X`: also
/// `X` under a rule's `set:`; `host.X`: the host section), with its built-in
/// default as the docs write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyKey {
    pub name: &'static str,
    pub default: &'static str,
}

/// A rule's plan step: adds the rule's edits, notes and violations to the plan.
/// Opaque outside the crate: the planner is `plan::plan`'s business.
#[derive(Clone, Copy)]
pub struct PlanStep(pub(crate) fn(&mut Planner<'_>));

impl std::fmt::Debug for PlanStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlanStep")
    }
}

/// Whether a parsed domain meets a rule under the guest's settings; `Err` says
/// what is unmet, in the words of the plan's reason.
pub type Conforms = fn(&Domain, &Settings) -> Result<(), String>;

/// Where a rule's code lives.
#[derive(Debug, Clone, Copy)]
pub enum RuleKind {
    /// Decided from the domain XML and the settings alone, by its module.
    Xml {
        /// `None` when another entry's step plans this rule too (4.2 is planned
        /// in the same pass over the interfaces as 4.1).
        plan: Option<PlanStep>,
        conforms: Conforms,
    },
    /// Part of placement, decided from the host's occupancy; `code` names where.
    Placement { code: &'static str },
}

/// One tuning rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleInfo {
    /// The number in TUNING-RULES.md, also in reasons (`[rule 2.1 via …]`).
    pub id: &'static str,
    /// A few words, as `kvmtune status` shows them.
    pub title: &'static str,
    pub keys: &'static [PolicyKey],
    /// One sentence on what the rule does to a guest.
    pub summary: &'static str,
    /// How a change the rule plans reaches a guest started from XML without it.
    pub takes_effect: Enforcement,
    pub kind: RuleKind,
}

impl RuleInfo {
    /// What `plan --explain` says about how the rule's changes take effect.
    pub fn takes_effect_text(&self) -> &'static str {
        self.takes_effect.how()
    }

    /// The rule's conformance check, for XML-level rules.
    pub fn conforms(&self) -> Option<Conforms> {
        match self.kind {
            RuleKind::Xml { conforms, .. } => Some(conforms),
            RuleKind::Placement { .. } => None,
        }
    }
}

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.id == id)
}

/// Every rule kvmtune enforces per guest, in TUNING-RULES.md order, which is
/// also the order the plan runs the XML-level rules' steps in.
pub const RULES: &[RuleInfo] = &[
    RuleInfo {
        id: "1.1",
        title: "vCPU placement",
        keys: &[
            PolicyKey {
                name: "defaults.pin_vcpus",
                default: "true",
            },
            PolicyKey {
                name: "defaults.pool",
                default: "shared",
            },
            PolicyKey {
                name: "defaults.cpu_allocation_ratio",
                default: "16",
            },
            PolicyKey {
                name: "defaults.thread_policy",
                default: "prefer",
            },
            PolicyKey {
                name: "defaults.existing_pins",
                default: "keep",
            },
            PolicyKey {
                name: "host.shared_cpus",
                default: "none",
            },
            PolicyKey {
                name: "host.dedicated_cpus",
                default: "none",
            },
        ],
        summary: "vCPUs placed cache-locally (one core, one L3 group, one node, one socket) and pinned there",
        takes_effect: Enforcement::Runtime,
        kind: RuleKind::Placement {
            code: "plan.rs Planner::placement, placement.rs place",
        },
    },
    RuleInfo {
        id: "1.2",
        title: "NUMA memory",
        keys: &[
            PolicyKey {
                name: "defaults.memory_mode",
                default: "preferred",
            },
            PolicyKey {
                name: "defaults.nodes",
                default: "null",
            },
        ],
        summary: "memory bound to the NUMA node(s) of the vCPUs; a guest spanning nodes gets guest NUMA cells mirroring them (those need kvmtune apply)",
        takes_effect: Enforcement::Runtime,
        kind: RuleKind::Placement {
            code: "plan.rs Planner::numatune, Planner::guest_numa",
        },
    },
    RuleInfo {
        id: "1.3",
        title: "emulator/iothreads",
        keys: &[
            PolicyKey {
                name: "defaults.emulator",
                default: "with-vcpus",
            },
            PolicyKey {
                name: "host.reserved_cpus",
                default: "none",
            },
            PolicyKey {
                name: "host.irq_cpus",
                default: "auto",
            },
            PolicyKey {
                name: "host.allow_cpu0",
                default: "false",
            },
        ],
        summary: "no guest on CPU0, reserved or IRQ CPUs; emulator threads and iothreads pinned with the vCPUs or on housekeeping CPUs",
        takes_effect: Enforcement::Runtime,
        kind: RuleKind::Placement {
            code: "plan.rs Planner::placement (emulator and iothread pins), placement.rs eligible_cpus",
        },
    },
    RuleInfo {
        id: disk_cache::ID,
        title: "disk cache/io",
        keys: &[
            PolicyKey {
                name: disk_cache::KEY_CACHE,
                default: "none",
            },
            PolicyKey {
                name: disk_cache::KEY_IO,
                default: "native",
            },
        ],
        summary: "every qemu disk gets cache='none' and, for file, block and volume disks, io='native'",
        takes_effect: Enforcement::XmlOnly,
        kind: RuleKind::Xml {
            plan: Some(PlanStep(disk_cache::plan)),
            conforms: disk_cache::conforms,
        },
    },
    RuleInfo {
        id: nosharepages::ID,
        title: "no KSM",
        keys: &[PolicyKey {
            name: nosharepages::KEY,
            default: "true",
        }],
        summary: "KSM does not merge the guest's memory pages (<nosharepages/>)",
        takes_effect: Enforcement::XmlOnly,
        kind: RuleKind::Xml {
            plan: Some(PlanStep(nosharepages::plan)),
            conforms: nosharepages::conforms,
        },
    },
    RuleInfo {
        id: hugepages::ID,
        title: "huge pages",
        keys: &[
            PolicyKey {
                name: hugepages::KEY_MODE,
                default: "auto",
            },
            PolicyKey {
                name: hugepages::KEY_SIZE,
                default: "2M",
            },
        ],
        summary: "memory backed by huge pages when the guest's node(s) have enough free ones",
        takes_effect: Enforcement::XmlOnly,
        kind: RuleKind::Xml {
            plan: Some(PlanStep(hugepages::plan)),
            conforms: hugepages::conforms,
        },
    },
    RuleInfo {
        id: vhost_multiqueue::VHOST_ID,
        title: "vhost-net",
        keys: &[PolicyKey {
            name: vhost_multiqueue::KEY_VHOST,
            default: "true",
        }],
        summary: "virtio interfaces use the in-kernel vhost-net backend (<driver name='vhost'/>)",
        takes_effect: Enforcement::XmlOnly,
        kind: RuleKind::Xml {
            plan: Some(PlanStep(vhost_multiqueue::plan)),
            conforms: vhost_multiqueue::conforms_vhost,
        },
    },
    RuleInfo {
        id: vhost_multiqueue::QUEUES_ID,
        title: "multiqueue",
        keys: &[PolicyKey {
            name: vhost_multiqueue::KEY_QUEUES,
            default: "8",
        }],
        summary: "virtio interfaces without a queue count get min(vCPUs, max_net_queues) queues",
        takes_effect: Enforcement::XmlOnly,
        kind: RuleKind::Xml {
            // The same pass over the interfaces as 4.1 plans the queues.
            plan: None,
            conforms: vhost_multiqueue::conforms_queues,
        },
    },
    RuleInfo {
        id: cpu_mode::ID,
        title: "CPU mode",
        keys: &[PolicyKey {
            name: cpu_mode::KEY,
            default: "host-model",
        }],
        summary: "no host-passthrough CPU mode: rewritten to host-model, or the guest refused",
        takes_effect: Enforcement::XmlOnly,
        kind: RuleKind::Xml {
            plan: Some(PlanStep(cpu_mode::plan)),
            conforms: cpu_mode::conforms,
        },
    },
];

/// Runs the XML-level rules' plan steps in table order. Guest NUMA cells (1.2,
/// placement code) are sized in whole huge pages, so they are planned right
/// after rule 3.2 has decided on huge pages, and before the NIC and CPU rules:
/// the order of the edits is the order of the explanation and of the rewrite.
pub(crate) fn plan_xml_rules(planner: &mut Planner<'_>) {
    for rule in RULES {
        if let RuleKind::Xml {
            plan: Some(step), ..
        } = rule.kind
        {
            (step.0)(planner);
        }
        if rule.id == hugepages::ID {
            planner.guest_numa();
        }
    }
}

/// `Err` listing every unmet item, or `Ok` when there is none.
fn all_met(unmet: Vec<String>) -> Result<(), String> {
    if unmet.is_empty() {
        Ok(())
    } else {
        Err(unmet.join("; "))
    }
}
