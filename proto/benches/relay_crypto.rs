#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Relay crypto throughput per cell (507-byte body).
//!
//! `cargo bench -p onionvpn-proto --bench relay_crypto -- --warm-up-time 1 --measurement-time 3`
//!
//! After the criterion groups, a short summary converts throughput to cycles/byte using
//! the CPU frequency from /proc/cpuinfo ("cpu MHz"; nominal on most VMs).

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use onionvpn_proto::consts::CELL_BODY_LEN;
use onionvpn_proto::crypto::layer::{ClientCircuitCrypto, HopKeys, Recognized, RelayCircuitCrypto};

type Body = [u8; CELL_BODY_LEN];

fn keys(i: u8) -> HopKeys {
    let mut b = [0u8; 128];
    for (j, x) in b.iter_mut().enumerate() {
        *x = (j as u8).wrapping_mul(31).wrapping_add(i.wrapping_mul(97));
    }
    HopKeys::from_bytes(&b)
}

struct Net {
    client: ClientCircuitCrypto,
    relays: Vec<RelayCircuitCrypto>,
}

fn net() -> Net {
    let mut client = ClientCircuitCrypto::new();
    let mut relays = Vec::new();
    for i in 0..3 {
        client.add_hop(&keys(i)).unwrap();
        relays.push(RelayCircuitCrypto::from_keys(&keys(i)));
    }
    Net { client, relays }
}

/// A forward cell for the exit, as the exit receives it (relays 0 and 1 peeled it).
fn cell_for_exit(n: &mut Net) -> Body {
    let mut b = [7u8; CELL_BODY_LEN];
    n.client.encrypt_to(2, &mut b).unwrap();
    assert_eq!(
        n.relays[0].decrypt_forward(&mut b).unwrap(),
        Recognized::Forward
    );
    assert_eq!(
        n.relays[1].decrypt_forward(&mut b).unwrap(),
        Recognized::Forward
    );
    b
}

/// A backward cell from the exit, as the client receives it.
fn cell_from_exit(n: &mut Net) -> Body {
    let mut b = [9u8; CELL_BODY_LEN];
    n.relays[2].originate_backward(&mut b).unwrap();
    n.relays[1].encrypt_backward(&mut b).unwrap();
    n.relays[0].encrypt_backward(&mut b).unwrap();
    b
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_crypto");
    g.throughput(Throughput::Bytes(CELL_BODY_LEN as u64));

    let mut relay = RelayCircuitCrypto::from_keys(&keys(1));
    let mut body = [1u8; CELL_BODY_LEN];
    g.bench_function("middle_forward_peel", |b| {
        b.iter(|| black_box(relay.decrypt_forward(black_box(&mut body)).unwrap()))
    });
    g.bench_function("middle_backward_wrap", |b| {
        b.iter(|| relay.encrypt_backward(black_box(&mut body)).unwrap())
    });

    let mut n = net();
    g.bench_function("client_encrypt_to_hop3", |b| {
        b.iter(|| n.client.encrypt_to(2, black_box(&mut body)).unwrap())
    });

    // Recognition needs genuine cells, generated in order outside the timed routine.
    let mut gen_fwd = net();
    let mut exit = net().relays.remove(2);
    g.bench_function("exit_recognize", |b| {
        b.iter_batched_ref(
            || cell_for_exit(&mut gen_fwd),
            |cell| {
                let r = exit.decrypt_forward(cell).unwrap();
                assert_eq!(r, Recognized::ForMe);
            },
            BatchSize::SmallInput,
        )
    });

    let mut gen_bwd = net();
    let mut client = net().client;
    g.bench_function("client_decrypt_from_hop3", |b| {
        b.iter_batched_ref(
            || cell_from_exit(&mut gen_bwd),
            |cell| assert_eq!(client.decrypt(cell).unwrap(), 2),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn cpu_mhz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// This thread's on-CPU time in ns (Linux schedstat), robust against a loaded machine.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Times `cells` cells through `op` and prints MB/s and cycles/byte, from wall-clock time
/// and from the thread's on-CPU time (the latter is what to compare with targets when
/// other processes share the cores).
fn report(name: &str, cells: &mut [Body], mhz: Option<f64>, mut op: impl FnMut(&mut Body)) {
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    for cell in cells.iter_mut() {
        op(cell);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a) as f64 / 1e9);
    let bytes = (cells.len() * CELL_BODY_LEN) as f64;
    let cpb = |secs: f64| {
        mhz.map_or("n/a".to_string(), |m| {
            format!("{:5.2}", m * 1e6 * secs / bytes)
        })
    };
    eprintln!(
        "  {name:<26} wall {:7.1} MB/s {:6.0} ns/cell {} c/B | on-cpu {:6.0} ns/cell {} c/B",
        bytes / wall / 1e6,
        wall * 1e9 / cells.len() as f64,
        cpb(wall),
        cpu.map_or(f64::NAN, |c| c * 1e9 / cells.len() as f64),
        cpu.map_or("n/a".to_string(), cpb),
    );
}

fn summary(_: &mut Criterion) {
    const N: usize = 100_000;
    let mhz = cpu_mhz();
    eprintln!(
        "\nrelay_crypto summary ({N} cells each, cpu MHz {}):",
        mhz.map_or("unknown".into(), |m| format!("{m:.0}"))
    );
    // aes and polyval pick AES-NI / PCLMULQDQ at run time (cpufeatures); no RUSTFLAGS needed.
    eprintln!(
        "  aes::hardware_accelerated() = {}",
        aes::hardware_accelerated()
    );
    let mut relay = RelayCircuitCrypto::from_keys(&keys(1));
    let mut cells = vec![[1u8; CELL_BODY_LEN]; N];
    // Baseline: the aes-gcm crate itself on one 491-byte message area.
    let aead = Aes256Gcm::new(&[3u8; 32].into());
    let mut ctr = 0u64;
    report("aes-gcm crate (baseline)", &mut cells, mhz, |c| {
        ctr += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&ctr.to_be_bytes());
        let tag = aead
            .encrypt_inout_detached(&nonce.into(), &[], (&mut c[16..]).into())
            .unwrap();
        c[..16].copy_from_slice(&tag);
    });
    report("middle_forward_peel", &mut cells, mhz, |c| {
        black_box(relay.decrypt_forward(c).unwrap());
    });
    report("middle_backward_wrap", &mut cells, mhz, |c| {
        relay.encrypt_backward(c).unwrap()
    });
    let mut n = net();
    report("client_encrypt_to_hop3", &mut cells, mhz, |c| {
        n.client.encrypt_to(2, c).unwrap()
    });
    let mut g = net();
    let mut fwd: Vec<Body> = (0..N).map(|_| cell_for_exit(&mut g)).collect();
    let mut exit = net().relays.remove(2);
    report("exit_recognize", &mut fwd, mhz, |c| {
        assert_eq!(exit.decrypt_forward(c).unwrap(), Recognized::ForMe)
    });
    let mut g = net();
    let mut bwd: Vec<Body> = (0..N).map(|_| cell_from_exit(&mut g)).collect();
    let mut client = net().client;
    report("client_decrypt_from_hop3", &mut bwd, mhz, |c| {
        assert_eq!(client.decrypt(c).unwrap(), 2)
    });
}

criterion_group!(benches, bench, summary);
criterion_main!(benches);
