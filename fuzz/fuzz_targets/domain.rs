//! The domain parser on arbitrary bytes (what the hook reads from stdin): never
//! panics, and what it accepts is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((domain, _)) = kvmtune_core::domain::Domain::parse_bytes(data) {
        assert!(!domain.name.is_empty());
        assert!(domain.vcpus_current >= 1 && domain.vcpus_current <= domain.vcpus_max);
        let _ = domain.pins_explicitly();
        let _ = domain.pinned_cpus();
    }
});
