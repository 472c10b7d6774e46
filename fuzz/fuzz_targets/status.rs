//! libvirt status-file parsing (`runstate::parse_status`): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kvmtune_core::runstate::parse_status(text);
    }
});
