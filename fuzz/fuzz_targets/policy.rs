//! The policy loader on arbitrary text: never panics, and a policy that parses
//! selects settings for a guest without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = kvmtune_core::policy::Policy::parse(text, Path::new("fuzz.yaml")) {
        let domain = kvmtune_core::domain::Domain::parse(
            "<domain type='kvm'><name>web-1</name><memory unit='GiB'>4</memory><vcpu>4</vcpu></domain>",
        )
        .unwrap();
        let _ = policy.select(&kvmtune::plan::guest_facts(&domain));
    }
});
