//! Drives the client's SOCKS5 server handshake with arbitrary bytes. The first input byte
//! picks a chunk size (1..=64); the rest is fed in chunks of that size. The outcome must not
//! depend on the split, consumption never exceeds the input, and replies stay small.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onionvpn_client::socks::{SocksError, SocksHandshake, SocksRequest, HTTP_RESPONSE};

type Outcome = (Result<Option<SocksRequest>, SocksError>, Vec<u8>, usize);

fn drive(input: &[u8], chunk: usize) -> Outcome {
    let mut hs = SocksHandshake::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        let r = hs.feed(piece);
        out.extend(hs.take_output());
        match r {
            Ok(p) => {
                assert!(p.consumed <= piece.len());
                if p.request.is_some() {
                    return (Ok(p.request), out, hs.total_consumed());
                }
            }
            Err(e) => return (Err(e), out, hs.total_consumed()),
        }
    }
    let _ = hs.eof();
    (Ok(None), out, hs.total_consumed())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let split = drive(input, chunk);
    let whole = drive(input, input.len().max(1));
    assert_eq!(split, whole);
    assert!(whole.2 <= input.len());
    assert!(whole.1.len() <= HTTP_RESPONSE.len().max(26));
});
