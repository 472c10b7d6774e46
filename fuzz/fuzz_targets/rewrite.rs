//! Plan + rewrite on arbitrary domain XML with the shipped policy on a fixture host:
//! never panics; a successful rewrite re-parses and is idempotent.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kvmtune_core::host::Host;
use kvmtune_core::placement::Occupancy;
use kvmtune_core::policy::Policy;
use libfuzzer_sys::fuzz_target;

fn setup() -> &'static (Policy, Vec<Host>) {
    static SETUP: OnceLock<(Policy, Vec<Host>)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/hosts");
        let hosts = [
            "intel-xeon-silver4108-2s8c2t-2node",
            "intel-core-i5-m560-laptop-1s2c2t",
            "amd-opteron-magnycours-4s-8node-sparse-ids",
        ]
        .iter()
        .map(|h| kvmtune_sys::sysfs::read_host(&dir.join(h)).expect("fixture host"))
        .collect();
        (Policy::shipped(), hosts)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let Ok(xml) = std::str::from_utf8(bytes) else {
        return;
    };
    let (policy, hosts) = setup();
    let host = &hosts[selector as usize % hosts.len()];
    let Ok((_, once)) = kvmtune::inputs::plan_and_rewrite(policy, host, &Occupancy::default(), xml)
    else {
        return;
    };
    kvmtune_core::domain::Domain::parse(&once).expect("rewritten XML re-parses");
    let (_, twice) = kvmtune::inputs::plan_and_rewrite(policy, host, &Occupancy::default(), &once)
        .expect("rewritten XML plans again");
    assert_eq!(once, twice, "rewrite is not idempotent");
});
