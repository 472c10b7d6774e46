//! The inputs of one hook call, loaded once: where the host is read and written
//! (`Roots`), the policy, the domain XML as libvirt passed it and its model. Its
//! own module so that every stage helper (`stage`, `moves`) can name it without
//! depending on the others.

use kvmtune_core::domain::Domain;
use kvmtune_core::policy::Policy;
use kvmtune_sys::roots::Roots;

/// Everything a stage needs, loaded once.
pub(super) struct Stage<'a> {
    pub(super) env: &'a Roots,
    pub(super) policy: Policy,
    pub(super) xml: &'a str,
    pub(super) domain: Domain,
}
