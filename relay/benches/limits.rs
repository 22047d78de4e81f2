#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

//! Cost of the DoS limits on the paths that call them: `MemQuota` charge + release per cell
//! (data path), circuit-creation check per CREATE, and a reclaim over many circuits.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onionvpn_relay::limits::{CircuitCreationLimiter, CircuitRateConfig, MemQuota};

fn memquota(c: &mut Criterion) {
    let mut g = c.benchmark_group("memquota");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let mut q: MemQuota<u32> = MemQuota::new(256 << 20);
    // 10,000 circuits with some data queued each.
    for i in 0..10_000u32 {
        q.charge(i, 4 * 512, t0);
    }
    let mut n = 0u32;
    let mut now = t0;
    g.bench_function("charge_release_cell_10k_circuits", |b| {
        b.iter(|| {
            n = (n + 7919) % 10_000;
            now += Duration::from_nanos(100);
            black_box(q.charge(n, 512, now));
            q.release(&n, 512);
        })
    });
    let mut e: MemQuota<u32> = MemQuota::new(256 << 20);
    g.bench_function("charge_release_cell_empty_queue", |b| {
        b.iter(|| {
            n = (n + 7919) % 10_000;
            now += Duration::from_nanos(100);
            black_box(e.charge(n, 512, now));
            e.release(&n, 512);
        })
    });
    g.bench_function("reclaim_10k_circuits", |b| {
        b.iter_batched(
            || {
                let mut q: MemQuota<u32> = MemQuota::new(10_000 * 2048 - 1);
                for i in 0..10_000u32 {
                    q.charge(
                        i,
                        2048,
                        t0 + Duration::from_micros(u64::from(i * 7919 % 10_000)),
                    );
                }
                q
            },
            |mut q| black_box(q.reclaim()),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn circuit_rate(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_rate");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let mut l = CircuitCreationLimiter::new(CircuitRateConfig::default(), 1);
    let mut i = 0u32;
    let mut now = t0;
    g.bench_function("on_create_65k_addresses", |b| {
        b.iter(|| {
            i = i.wrapping_add(40_503);
            now += Duration::from_micros(10);
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0xffff)));
            black_box(l.on_create(ip, now).is_ok())
        })
    });
    g.finish();
}

criterion_group!(benches, memquota, circuit_rate);
criterion_main!(benches);
