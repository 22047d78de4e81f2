//! Feeds arbitrary datagrams to TUN mode's DNS: the query parser and the fake-address map
//! that answers it. Nothing may panic; an answer keeps the query's id, is a response, is
//! small, and an `A` answer's address lies in the fake range and maps back to the name.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use onionvpn_client::tun::dns::{parse_query, TYPE_A};
use onionvpn_client::tun::{FakeIpConfig, FakeIpMap};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_query(data);
    let mut map = FakeIpMap::new(FakeIpConfig::default());
    let now = Instant::now();
    let Some(answer) = map.answer(data, now) else {
        return;
    };
    assert!(answer.len() >= 12 && answer.len() <= data.len() + 16);
    assert_eq!(&answer[..2], &data[..2], "id echoed");
    assert_eq!(answer[2] & 0x80, 0x80, "a response");
    if let Ok(q) = parsed {
        if q.qtype == TYPE_A && answer[7] == 1 {
            let n = answer.len();
            let ip = Ipv4Addr::new(answer[n - 4], answer[n - 3], answer[n - 2], answer[n - 1]);
            assert!(map.in_range(ip));
            assert_eq!(map.lookup(ip, now), q.hostname());
        }
    }
});
