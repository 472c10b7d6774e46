//! Rules 4.1 (vhost-net: the in-kernel virtio-net backend, `<driver
//! name='vhost'/>`) and 4.2 (multiqueue: `queues='N'`, N = min(vCPUs,
//! `max_net_queues`)) on the guest's virtio interfaces of type network, bridge,
//! ethernet or direct. Both land on the same `<interface><driver>`, so one pass
//! decides both and one change carries both; the change counts as 4.2 when it
//! sets queues, else 4.1. Owns the keys, the per-interface decision shared by
//! the plan step and the conformance checks, the reason texts and the edit.

use roxmltree::Node;

use super::all_met;
use crate::domain::{Domain, Interface};
use crate::plan_model::{Change, Planner};
use crate::policy::Settings;
use crate::rewrite::order;
use crate::rewrite::shared::{RewriteError, device, same_number, same_text};
use crate::rewrite::splice::{Editor, Elem, anchor_in, attribute, child};

pub const VHOST_ID: &str = "4.1";
pub const QUEUES_ID: &str = "4.2";
pub const KEY_VHOST: &str = "defaults.vhost_net";
pub const KEY_QUEUES: &str = "defaults.max_net_queues";

/// What the rules want of one interface.
enum Decision {
    /// Not an interface the rules apply to, or already conforming.
    Nothing,
    /// Left alone on purpose (4.1 note).
    Note(String),
    Change {
        vhost: bool,
        queues: Option<u32>,
        text: String,
    },
}

fn decide(domain: &Domain, settings: &Settings, iface: &Interface) -> Decision {
    if !settings.vhost_net
        || !matches!(
            iface.kind.as_str(),
            "network" | "bridge" | "ethernet" | "direct"
        )
    {
        return Decision::Nothing;
    }
    if iface.model.as_deref() != Some("virtio") {
        return Decision::Note(format!(
            "interface {}: model {} is not virtio; changing the model changes the guest's hardware, left alone",
            iface.label,
            iface.model.as_deref().unwrap_or("default")
        ));
    }
    if iface.driver_name.as_deref().is_some_and(|n| n != "vhost") {
        return Decision::Note(format!(
            "interface {}: driver '{}' chosen explicitly; left alone",
            iface.label,
            iface.driver_name.as_deref().unwrap_or("")
        ));
    }
    let queues_wanted = domain.vcpus_max.min(settings.max_net_queues);
    let vhost = iface.driver_name.is_none();
    let queues = (iface.queues.is_none() && queues_wanted > 1).then_some(queues_wanted);
    if !vhost && queues.is_none() {
        return Decision::Nothing;
    }
    let mut what = Vec::new();
    if vhost {
        what.push("vhost-net backend".to_string());
    }
    if let Some(q) = queues {
        what.push(format!(
            "{q} queues (min of {} vCPUs and max_net_queues {})",
            domain.vcpus_max, settings.max_net_queues
        ));
    }
    Decision::Change {
        vhost,
        queues,
        text: format!("interface {}: {}", iface.label, what.join(", ")),
    }
}

/// The plan step for both rules: one `InterfaceDriver` change per interface
/// that needs the vhost backend and/or a queue count.
pub(crate) fn plan(p: &mut Planner<'_>) {
    let (domain, settings) = (p.domain, p.settings);
    for (index, iface) in domain.interfaces.iter().enumerate() {
        match decide(domain, settings, iface) {
            Decision::Nothing => {}
            Decision::Note(text) => p.note(VHOST_ID, text),
            Decision::Change {
                vhost,
                queues,
                text,
            } => p.edit(
                if queues.is_some() {
                    QUEUES_ID
                } else {
                    VHOST_ID
                },
                Change::InterfaceDriver {
                    index,
                    target: iface.label.clone(),
                    vhost,
                    queues,
                },
                text,
            ),
        }
    }
}

/// The reasons of the changes `select` picks (by their vhost and queues parts).
fn unmet(
    domain: &Domain,
    settings: &Settings,
    select: fn(bool, Option<u32>) -> bool,
) -> Vec<String> {
    domain
        .interfaces
        .iter()
        .filter_map(|iface| match decide(domain, settings, iface) {
            Decision::Change {
                vhost,
                queues,
                text,
            } if select(vhost, queues) => Some(text),
            _ => None,
        })
        .collect()
}

/// 4.1: no interface the rule applies to lacks the vhost backend.
pub fn conforms_vhost(domain: &Domain, settings: &Settings) -> Result<(), String> {
    all_met(unmet(domain, settings, |vhost, _| vhost))
}

/// 4.2: no interface the rule applies to lacks a queue count.
pub fn conforms_queues(domain: &Domain, settings: &Settings) -> Result<(), String> {
    all_met(unmet(domain, settings, |_, queues| queues.is_some()))
}

/// The XML edit: `name='vhost'` and/or `queues='N'` on the interface's
/// `<driver>`, created after `<model>` when missing. `target` (the interface's
/// target dev or MAC, as the plan labels it) guards against other XML.
pub(crate) fn rewrite(
    ed: &mut Editor<'_>,
    root: Node<'_, '_>,
    index: usize,
    target: &str,
    vhost: bool,
    queues: Option<u32>,
) -> Result<(), RewriteError> {
    let interface = device(root, "interface", index, target)?;
    check_label(interface, index, target)?;
    if queues == Some(0) {
        return Err(RewriteError::Invalid(format!(
            "interface #{index}: 0 queues"
        )));
    }
    if !vhost && queues.is_none() {
        return Ok(());
    }
    match child(interface, "driver") {
        Some(driver) => {
            if vhost {
                ed.set_attr(driver, "name", "vhost", same_text("vhost"))?;
            }
            if let Some(queues) = queues {
                ed.set_attr(
                    driver,
                    "queues",
                    &queues.to_string(),
                    same_number(u64::from(queues)),
                )?;
            }
        }
        None => {
            let mut driver = Elem::new("driver");
            if vhost {
                driver = driver.attr("name", "vhost");
            }
            if let Some(queues) = queues {
                driver = driver.attr("queues", queues.to_string());
            }
            ed.insert(
                anchor_in(interface, order::INTERFACE, "driver", |_| false),
                &[driver],
            );
        }
    }
    Ok(())
}

/// Refuses an interface that is not the one the plan named: the plan labels an
/// interface by its target dev, else its MAC address (`interface #N` when it
/// has neither, which cannot be checked).
fn check_label(interface: Node<'_, '_>, index: usize, target: &str) -> Result<(), RewriteError> {
    let label = |elem: &str, attr: &str| {
        child(interface, elem)
            .and_then(|e| attribute(e, attr))
            .map(|a| a.value().to_owned())
    };
    let (dev, mac) = (label("target", "dev"), label("mac", "address"));
    if !target.is_empty()
        && !target.starts_with("interface #")
        && (dev.is_some() || mac.is_some())
        && dev.as_deref() != Some(target)
        && !mac
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(target))
    {
        return Err(RewriteError::Missing(format!(
            "interface #{index} ({target}): that interface is {}",
            dev.or(mac).unwrap_or_default()
        )));
    }
    Ok(())
}
