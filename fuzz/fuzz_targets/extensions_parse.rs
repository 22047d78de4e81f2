//! Parses arbitrary bytes as a handshake extension message. Whatever parses must
//! encode within the size limit and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onionvpn_proto::consts::MAX_EXTENSION_LEN;
use onionvpn_proto::ext::Extensions;

fuzz_target!(|data: &[u8]| {
    if let Ok(ext) = Extensions::parse(data) {
        let wire = ext.encode();
        assert!(wire.len() <= MAX_EXTENSION_LEN);
        assert!(wire.len() <= data.len(), "unknown items dropped, known ones kept");
        assert_eq!(Extensions::parse(&wire), Ok(ext));
    }
});
