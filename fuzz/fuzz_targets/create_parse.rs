//! Parses arbitrary bytes (zero-padded to 507) as CREATE, CREATED and DESTROY bodies;
//! whatever parses must re-encode to a body that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onionvpn_proto::cell::{Create, Created, Destroy};
use onionvpn_proto::consts::CELL_BODY_LEN;

fuzz_target!(|data: &[u8]| {
    let mut body = [0u8; CELL_BODY_LEN];
    let n = data.len().min(CELL_BODY_LEN);
    body[..n].copy_from_slice(&data[..n]);

    if let Ok(c) = Create::parse(&body) {
        let mut again = [0xffu8; CELL_BODY_LEN];
        c.encode_into(&mut again).expect("a parsed CREATE re-encodes");
        assert_eq!(Create::parse(&again), Ok(c));
    }
    if let Ok(c) = Created::parse(&body) {
        let mut again = [0xffu8; CELL_BODY_LEN];
        c.encode_into(&mut again).expect("a parsed CREATED re-encodes");
        assert_eq!(Created::parse(&again), Ok(c));
    }
    if let Ok(d) = Destroy::parse(&body) {
        let mut again = [0xffu8; CELL_BODY_LEN];
        d.encode_into(&mut again);
        assert_eq!(Destroy::parse(&again), Ok(d));
    }
});
