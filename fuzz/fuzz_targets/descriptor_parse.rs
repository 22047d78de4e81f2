//! Parses arbitrary bytes as a relay descriptor and as a PEX batch. A parsed descriptor must
//! re-encode to exactly its input body, and checking it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onionvpn_directory::pex::split_pex;
use onionvpn_directory::{Network, UncheckedDescriptor};

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = UncheckedDescriptor::parse(data) {
        let net = Network::main();
        let _ = u.clone().check(None, &net.id(), 1_800_000_000);
        let _ = u.identity();
    }
    if let Ok(entries) = split_pex(data) {
        for e in entries {
            let _ = UncheckedDescriptor::parse(e);
        }
    }
});
