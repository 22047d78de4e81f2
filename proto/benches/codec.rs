#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Cost of the cell and relay message codecs, per cell.
//!
//! `cargo bench -p onionvpn-proto --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onionvpn_proto::cell::{Cell, ChanCmd, CircId};
use onionvpn_proto::consts::{RELAY_BODY_MAX, RELAY_PAYLOAD_LEN};
use onionvpn_proto::ext::{
    CongestionControl, Extensions, PaymentOffer, ProtocolVersion, ProtocolVersions,
};
use onionvpn_proto::relaymsg::{
    decode_data, encode_data, Begin, BeginFlags, Host, RelayMsg, StreamId, Target,
};

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    let cell = Cell::new(CircId::new(0x8000_0001).unwrap(), ChanCmd::Relay);
    let raw = cell.into_bytes();
    g.bench_function("cell_from_bytes", |b| {
        b.iter(|| Cell::from_bytes(black_box(raw)).unwrap().cmd())
    });

    let sid = StreamId::new(7).unwrap();
    let data = [0x5au8; RELAY_BODY_MAX];
    let mut area = [0u8; RELAY_PAYLOAD_LEN];
    g.bench_function("encode_data_486", |b| {
        b.iter(|| encode_data(black_box(&mut area), sid, black_box(&data)).unwrap())
    });
    encode_data(&mut area, sid, &data).unwrap();
    g.bench_function("decode_data_486", |b| {
        b.iter(|| decode_data(black_box(&area)).unwrap().map(|(_, d)| d.len()))
    });
    g.bench_function("relay_msg_decode_data_486", |b| {
        b.iter(|| matches!(RelayMsg::decode(black_box(&area)), Ok(RelayMsg::Data(..))))
    });

    let begin = RelayMsg::Begin(
        sid,
        Begin {
            target: Target {
                host: Host::Name("www.example.com".parse().unwrap()),
                port: 443.try_into().unwrap(),
            },
            flags: BeginFlags(BeginFlags::IPV6_OK),
        },
    );
    let mut begin_area = [0u8; RELAY_PAYLOAD_LEN];
    begin.encode_into(&mut begin_area).unwrap();
    g.bench_function("relay_msg_decode_begin_hostname", |b| {
        b.iter(|| RelayMsg::decode(black_box(&begin_area)).unwrap())
    });

    let mut ext = Extensions::new();
    ext.set_payment_offer(Some(PaymentOffer {
        msat_per_mib: 1000,
        msat_per_min: 10,
    }))
    .set_congestion_control(Some(CongestionControl { sendme_inc: 31 }))
    .set_protocol_versions(Some(
        ProtocolVersions::new(vec![ProtocolVersion { id: 1, version: 1 }; 4]).unwrap(),
    ));
    let wire = ext.encode();
    g.bench_function("extensions_parse", |b| {
        b.iter(|| Extensions::parse(black_box(&wire)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
