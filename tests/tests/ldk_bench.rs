//! Payment-rail figures for docs/performance.md (ignored: run on demand).
//!
//! ```sh
//! cargo test -p onionvpn-tests --test ldk_bench -- --ignored --nocapture
//! ```
//!
//! Keysend latency over one direct channel, against a loopback TCP round trip measured in
//! the same run; the LDK store's growth per payment with and without `forget`; and the
//! throughput of a paid circuit (real LDK nodes, a node per relay) against an unpaid one, in
//! alternating rounds of the same run, with the stores' growth over the paid gibibyte.
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

use std::sync::Arc;

use onionvpn_pay::ldk::LdkRail;
use onionvpn_pay::{KeysendRequest, PaymentRail};
use onionvpn_proto::ext::PaymentToken;
use onionvpn_tests::http::get;
use onionvpn_tests::regtest::{LdkNet, Regtest, NODE_DEADLINE};
use onionvpn_tests::{socksc, LocalNet, LocalNetConfig, PaidNet, Rails};

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

/// Rounds of the throughput comparison and MiB per round and mode (8 x 128 MiB = 1 GiB).
const ROUNDS: usize = 8;
const ROUND_MIB: u64 = 128;

/// Downloads `mib` MiB through `net`'s client; seconds taken.
async fn timed_download(net: &LocalNet, mib: u64) -> f64 {
    let http = net.http_addr().unwrap();
    let mut s = socksc::connect(
        net.socks_addr().unwrap(),
        &http.ip().to_string(),
        http.port(),
        None,
    )
    .await
    .unwrap();
    let t = Instant::now();
    let d = tokio::time::timeout(
        Duration::from_secs(600),
        get(&mut s, "bench", &format!("/bytes/{}", mib << 20), false),
    )
    .await
    .expect("download hung")
    .expect("download");
    assert_eq!(d.len, mib << 20, "the paid circuit was cut short");
    t.elapsed().as_secs_f64()
}

fn store_of(rail: &LdkRail) -> (usize, u64) {
    (
        rail.node().list_payments().len(),
        store_bytes(rail.storage_dir()),
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn paid_vs_unpaid_throughput_and_store_growth() {
    const RELAYS: usize = 3;
    let ldk = Arc::new(LdkNet::start(RELAYS, 1_000_000).await.unwrap());
    let local = |paid: Option<PaidNet>| LocalNetConfig {
        relays: RELAYS,
        exits: RELAYS,
        paid,
        ..LocalNetConfig::default()
    };
    let paid_cfg = PaidNet {
        rails: Rails::Ldk(ldk.clone()),
        client_budget_msat: 100_000_000,
        ..PaidNet::default()
    };
    let free = LocalNet::start(local(None)).await.unwrap();
    let paid = LocalNet::start(local(Some(paid_cfg.clone())))
        .await
        .unwrap();
    let client = ldk.client();
    let relays: Vec<Arc<LdkRail>> = (0..RELAYS).map(|i| ldk.relay(i).unwrap()).collect();
    let c0 = store_of(&client);
    let r0: Vec<(usize, u64)> = relays.iter().map(|r| store_of(r)).collect();
    let pays = paid
        .the_client()
        .unwrap()
        .circuit_manager()
        .payments()
        .unwrap()
        .clone();
    let spent0 = pays.spent_msat();

    // Warm-up (first payments, congestion windows), then alternate so that load from other
    // work on the machine hits both modes alike.
    timed_download(&free, 16).await;
    timed_download(&paid, 16).await;
    let (mut f, mut p) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        if i % 2 == 0 {
            f.push(ROUND_MIB as f64 / timed_download(&free, ROUND_MIB).await);
            p.push(ROUND_MIB as f64 / timed_download(&paid, ROUND_MIB).await);
        } else {
            p.push(ROUND_MIB as f64 / timed_download(&paid, ROUND_MIB).await);
            f.push(ROUND_MIB as f64 / timed_download(&free, ROUND_MIB).await);
        }
    }
    let (fm, pm) = (median(&mut f.clone()), median(&mut p.clone()));
    let (fs, ps): (f64, f64) = (
        f.iter().sum::<f64>() / f.len() as f64,
        p.iter().sum::<f64>() / p.len() as f64,
    );
    println!(
        "throughput, {ROUNDS} rounds of {ROUND_MIB} MiB each, 3 hops: unpaid median {fm:.1} MiB/s (mean {fs:.1}), \
         paid (LDK) median {pm:.1} MiB/s (mean {ps:.1}); paid/unpaid median {:.3}, mean {:.3}",
        pm / fm,
        ps / fs
    );
    println!("  unpaid rounds MiB/s: {f:.1?}");
    println!("  paid rounds MiB/s:   {p:.1?}");
    println!(
        "paid client: {} msat spent over {} MiB",
        pays.spent_msat() - spent0,
        16 + ROUNDS as u64 * ROUND_MIB
    );
    let payments: u64 = paid.ledgers().iter().map(|l| l.entries().unwrap()).sum();
    println!("  payments received by the relays (ledger entries): {payments}");
    paid.shutdown().await;
    free.shutdown().await;
    // Let payments still in flight finish before reading the stores.
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && paid_cfg.rails.client_in_flight("client") > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c1 = store_of(&client);
    println!(
        "store over the paid {} MiB, pruning (forget) on: client {} -> {} records, {} -> {} bytes",
        16 + ROUNDS as u64 * ROUND_MIB,
        c0.0,
        c1.0,
        c0.1,
        c1.1
    );
    for (i, r) in relays.iter().enumerate() {
        let r1 = store_of(r);
        println!(
            "  relay {i}: {} -> {} records, {} -> {} bytes",
            r0[i].0, r1.0, r0[i].1, r1.1
        );
    }
    ldk.stop().await;
}
