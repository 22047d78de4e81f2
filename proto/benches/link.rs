#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Link transport throughput: 64-cell batches (one AEAD operation each).
//!
//! `cargo bench -p onionvpn-proto --bench link`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::link::{
    Link, LinkInitiator, LinkResponder, LinkSecretKey, MAX_CELLS_PER_FRAME,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::hint::black_box;

fn pair() -> (Link, Link) {
    let mut rng = StdRng::seed_from_u64(1);
    let secret = LinkSecretKey::generate(&mut rng);
    let (init, f1) = LinkInitiator::new(&mut rng, [1; 32], secret.public()).unwrap();
    let resp = LinkResponder::new(&mut rng, [1; 32], &secret).unwrap();
    let (r, f2) = resp.read_frame(&f1[2..]).unwrap();
    (init.read_frame(&f2[2..]).unwrap(), r)
}

fn link(c: &mut Criterion) {
    let cells = vec![[0x5au8; CELL_LEN]; MAX_CELLS_PER_FRAME];
    let mut g = c.benchmark_group("link");
    g.throughput(Throughput::Bytes((MAX_CELLS_PER_FRAME * CELL_LEN) as u64));

    let (mut tx, mut rx) = pair();
    let mut wire = Vec::with_capacity(40_000);
    let mut out = Vec::with_capacity(MAX_CELLS_PER_FRAME);
    g.bench_function("encrypt+decrypt 64 cells", |b| {
        b.iter(|| {
            wire.clear();
            out.clear();
            tx.encrypt_cells(black_box(&cells), &mut wire).unwrap();
            rx.decrypt_frame(&wire[2..], &mut out).unwrap();
            black_box(&out);
        })
    });

    let (mut tx, _rx) = pair();
    g.bench_function("encrypt 64 cells", |b| {
        b.iter(|| {
            wire.clear();
            tx.encrypt_cells(black_box(&cells), &mut wire).unwrap();
            black_box(&wire);
        })
    });

    g.finish();

    c.bench_function("link handshake (both sides)", |b| {
        b.iter(|| black_box(pair()));
    });
}

criterion_group!(benches, link);
criterion_main!(benches);
