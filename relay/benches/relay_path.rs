//! Three relays on loopback (each on its own runtime, as in production) and a minimal client:
//! 3-hop circuit build time, and 3-hop download throughput from a local TCP source.
//!
//! `cargo bench -p onionvpn-relay --bench relay_path`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onionvpn_chan::{connect, ChannelConfig, ChannelHandle};
use onionvpn_directory::Descriptor;
use onionvpn_proto::cell::{Cell, ChanCmd};
use onionvpn_proto::circuit::{ClientCircuit, ClientConfig, ClientEvent, HopTarget};
use onionvpn_proto::crypto::handshake::OnionPublicKey;
use onionvpn_proto::ext::PaymentOffer;
use onionvpn_proto::relaymsg::{Host, Target};
use onionvpn_relay::{start_relay_with, RelayConfig, RelayHandle, RuntimeOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const DOWNLOAD: usize = 32 * 1024 * 1024;

fn hop(d: &Descriptor) -> HopTarget {
    let now = onionvpn_directory::dht::unix_now();
    let b = d.body();
    HopTarget {
        identity: b.identity.0,
        onion_key: OnionPublicKey(d.onion_key_at(now).unwrap().key),
        link_key: b.link_key.0,
        ipv4: d.ipv4(),
        ipv6: None,
        offer: PaymentOffer {
            msat_per_mib: b.prices.msat_per_mib,
            msat_per_min: b.prices.msat_per_min,
        },
    }
}

struct Net {
    relays: Vec<RelayHandle>,
    path: Vec<HopTarget>,
    chan: ChannelHandle,
    _dirs: Vec<tempfile::TempDir>,
}

async fn network() -> Net {
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RelayConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..RelayConfig::default()
        };
        cfg.dht.bootstrap = Vec::new();
        cfg.exit.enabled = i == 2;
        cfg.exit.policy.allow_private_destinations = true;
        cfg.limits.circuit_burst = 1_000_000;
        cfg.limits.circuit_rate = 10_000;
        let opts = RuntimeOptions {
            publish: false,
            ..RuntimeOptions::default()
        };
        relays.push(
            start_relay_with(cfg, dir.path().join("r"), opts)
                .await
                .unwrap(),
        );
        dirs.push(dir);
    }
    let path: Vec<HopTarget> = relays.iter().map(|r| hop(&r.descriptor())).collect();
    let chan = connect(
        relays[0].or_addr(),
        path[0].identity,
        path[0].link_key,
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    Net {
        relays,
        path,
        chan,
        _dirs: dirs,
    }
}

/// Builds a circuit; returns it with its channel id and queue.
async fn build(
    net: &Net,
) -> (
    ClientCircuit,
    onionvpn_proto::cell::CircId,
    onionvpn_chan::CircuitRx,
) {
    let (id, mut rx) = net.chan.open_circuit().await.unwrap();
    let (mut circ, create) =
        ClientCircuit::new(&mut rand::rng(), net.path.clone(), ClientConfig::default()).unwrap();
    net.chan
        .send(Cell::with_body(id, ChanCmd::Create, &create))
        .await
        .unwrap();
    while !circ.is_open() {
        let mut cell = rx.recv().await.unwrap();
        match cell.cmd() {
            ChanCmd::Created => {
                circ.handle_created(cell.body()).unwrap();
            }
            ChanCmd::Relay => {
                circ.handle_relay(cell.body_mut(), Instant::now()).unwrap();
            }
            c => panic!(
                "{c:?} {:?} after {} hops",
                cell.as_destroy().map(|d| d.reason),
                circ.hops_built()
            ),
        }
        while let Some(out) = circ.poll_cell().unwrap() {
            net.chan
                .send(Cell::with_body(id, out.cmd, &out.body))
                .await
                .unwrap();
        }
    }
    (circ, id, rx)
}

/// A source that writes `DOWNLOAD` bytes to every connection.
async fn source() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let buf = vec![0x5au8; 64 * 1024];
                let mut left = DOWNLOAD;
                while left > 0 {
                    let n = left.min(buf.len());
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn download(net: &Net, src: SocketAddr) -> usize {
    let (mut circ, id, mut rx) = build(net).await;
    let s = circ
        .begin_stream(Target {
            host: Host::V4(Ipv4Addr::LOCALHOST),
            port: NonZeroU16::new(src.port()).unwrap(),
        })
        .unwrap();
    let mut got = 0usize;
    let mut fin = false;
    while !fin {
        while let Some(out) = circ.poll_cell().unwrap() {
            net.chan
                .send(Cell::with_body(id, out.cmd, &out.body))
                .await
                .unwrap();
        }
        let mut cell = rx.recv().await.unwrap();
        assert_eq!(cell.cmd(), ChanCmd::Relay);
        match circ.handle_relay(cell.body_mut(), Instant::now()).unwrap() {
            ClientEvent::Data { data, .. } => got += data.len(),
            ClientEvent::Fin { .. } => fin = true,
            ClientEvent::End { reason, .. } => panic!("END {reason:?}"),
            _ => {}
        }
    }
    circ.send_end(s, onionvpn_proto::relaymsg::EndReason::Done)
        .unwrap();
    while let Some(out) = circ.poll_cell().unwrap() {
        net.chan
            .send(Cell::with_body(id, out.cmd, &out.body))
            .await
            .unwrap();
    }
    net.chan
        .destroy(id, onionvpn_proto::cell::DestroyReason::Finished)
        .await;
    got
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let net = rt.block_on(network());
    let src = rt.block_on(source());

    let mut g = c.benchmark_group("relay_path");
    g.sample_size(20);
    g.bench_function("circuit_build_3_hops", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let (_c, id, _rx) = build(&net).await;
                    net.chan
                        .destroy(id, onionvpn_proto::cell::DestroyReason::Finished)
                        .await;
                }
                t.elapsed()
            })
        })
    });
    g.throughput(Throughput::Bytes(DOWNLOAD as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("download_3_hops_32MiB", |b| {
        b.iter(|| {
            let n = rt.block_on(download(&net, src));
            assert_eq!(n, DOWNLOAD);
        })
    });
    g.finish();
    for r in net.relays {
        r.kill();
    }
}

criterion_group!(relay, benches);
criterion_main!(relay);
