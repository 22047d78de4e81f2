//! Payment-rail figures for docs/performance.md (ignored: run on demand).
//!
//! ```sh
//! cargo test -p onionvpn-tests --test ldk_bench -- --ignored --nocapture
//! ```
//!
//! Keysend latency over one direct channel, against a loopback TCP round trip measured in
//! the same run; and the LDK store's growth per payment with and without `forget`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use onionvpn_pay::ldk::LdkRail;
use onionvpn_pay::{KeysendRequest, PaymentRail};
use onionvpn_proto::ext::PaymentToken;
use onionvpn_tests::regtest::{Regtest, NODE_DEADLINE};

const LATENCY_N: usize = 50;
const STORE_N: usize = 200;
const TCP_N: usize = 1_000;

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Round trips of 1 byte over a loopback TCP connection (the baseline).
fn tcp_rtts(n: usize) -> Vec<Duration> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 1];
        for _ in 0..n {
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut b = [7u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        out.push(t.elapsed());
    }
    echo.join().unwrap();
    out
}

fn store_bytes(dir: &Path) -> u64 {
    ["ldk_node_data.sqlite", "ldk_node_data.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn pay(client: &LdkRail, relay: &LdkRail, i: usize, forget: bool) -> (Duration, Duration) {
    let req = KeysendRequest {
        to: relay.node_id(),
        amount_msat: 1_000,
        token: PaymentToken([(i % 251) as u8; 16]),
        max_fee_msat: 1_000,
    };
    let t = Instant::now();
    let (sent, got) = tokio::join!(client.keysend(req), async {
        let r = tokio::time::timeout(NODE_DEADLINE, relay.next_received()).await;
        (r, t.elapsed())
    });
    let sent = sent.expect("keysend");
    let done = t.elapsed();
    let (got, received_after) = got;
    let got = got.expect("deadline").expect("received");
    assert_eq!(got.id, sent.id);
    relay.ack_received(got.id).unwrap();
    if forget {
        client.forget(sent.id).unwrap();
        relay.forget(got.id).unwrap();
    }
    (received_after, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn keysend_latency_and_store_size() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Regtest::start().unwrap();
    let client = chain.start_rail(&dir.path().join("client")).await.unwrap();
    let relay = chain.start_rail(&dir.path().join("relay")).await.unwrap();
    chain.fund(&client).await.unwrap();
    chain
        .open_channel(&client, &relay, 1_000_000, None)
        .await
        .unwrap();

    // Warm-up: LDK delays HTLC processing for ~2 s right after start.
    for i in 0..5 {
        pay(&client, &relay, i, true).await;
    }

    let mut base = tcp_rtts(TCP_N);
    let (mut recv, mut done) = (Vec::new(), Vec::new());
    for i in 0..LATENCY_N {
        let (r, d) = pay(&client, &relay, i, true).await;
        recv.push(r);
        done.push(d);
    }
    let b50 = quantile(&mut base, 0.5);
    let b90 = quantile(&mut base, 0.9);
    let (r50, r90) = (quantile(&mut recv, 0.5), quantile(&mut recv, 0.9));
    let (d50, d90) = (quantile(&mut done, 0.5), quantile(&mut done, 0.9));
    println!(
        "baseline loopback TCP 1-byte RTT ({TCP_N}): median {:.3} ms, p90 {:.3} ms",
        ms(b50),
        ms(b90)
    );
    println!(
        "keysend 1000 msat, one direct channel ({LATENCY_N} sequential): received median {:.1} ms p90 {:.1} ms; \
         sender success median {:.1} ms p90 {:.1} ms; median ratio to TCP RTT {:.0}x",
        ms(r50),
        ms(r90),
        ms(d50),
        ms(d90),
        d50.as_secs_f64() / b50.as_secs_f64()
    );

    let cdir = client.storage_dir().to_path_buf();
    let rdir = relay.storage_dir().to_path_buf();
    let (c0, r0) = (store_bytes(&cdir), store_bytes(&rdir));
    let (n0c, n0r) = (
        client.node().list_payments().len(),
        relay.node().list_payments().len(),
    );
    for i in 0..STORE_N {
        pay(&client, &relay, i, false).await;
    }
    let (c1, r1) = (store_bytes(&cdir), store_bytes(&rdir));
    let (n1c, n1r) = (
        client.node().list_payments().len(),
        relay.node().list_payments().len(),
    );
    for i in 0..STORE_N {
        pay(&client, &relay, i, true).await;
    }
    let (c2, r2) = (store_bytes(&cdir), store_bytes(&rdir));
    let (n2c, n2r) = (
        client.node().list_payments().len(),
        relay.node().list_payments().len(),
    );
    println!(
        "store, {STORE_N} payments without forget: client +{} records +{} bytes, relay +{} records +{} bytes",
        n1c - n0c,
        c1 as i64 - c0 as i64,
        n1r - n0r,
        r1 as i64 - r0 as i64
    );
    println!(
        "store, {STORE_N} payments with forget: client {:+} records {:+} bytes, relay {:+} records {:+} bytes",
        n2c as i64 - n1c as i64,
        c2 as i64 - c1 as i64,
        n2r as i64 - n1r as i64,
        r2 as i64 - r1 as i64
    );
    client.stop().await.unwrap();
    relay.stop().await.unwrap();
}
