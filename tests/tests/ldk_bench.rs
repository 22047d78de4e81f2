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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::Arc;

use onionvpn_pay::ldk::LdkRail;
use onionvpn_pay::{KeysendRequest, PaymentRail};
use onionvpn_proto::ext::PaymentToken;
use onionvpn_tests::cpu::{pid_cpu, CpuSnapshot};
use onionvpn_tests::http::get;
use onionvpn_tests::regtest::{LdkNet, Regtest, NODE_DEADLINE};
use onionvpn_tests::{socksc, LocalNet, LocalNetConfig, PaidNet, Rails};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
/// A pause between two reads of the download longer than this counts as a stall.
const STALL: Duration = Duration::from_millis(50);
/// Idle time over which the LDK nodes' background CPU is measured.
const IDLE: Duration = Duration::from_secs(10);
/// Sequential keysends over which the CPU of one keysend is measured.
const KEYSENDS: usize = 30;

/// A stream that records the pauses between reads that return data.
struct GapMeter<S> {
    inner: S,
    last: Option<Instant>,
    gaps: Gaps,
}

/// Pauses of a download between reads that returned data.
#[derive(Clone, Copy, Debug, Default)]
struct Gaps {
    /// Pauses longer than [`STALL`].
    stalls: u32,
    /// Their total length.
    stalled: Duration,
    /// The longest pause.
    max: Duration,
}

impl Gaps {
    fn add(&mut self, o: &Gaps) {
        self.stalls += o.stalls;
        self.stalled += o.stalled;
        self.max = self.max.max(o.max);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GapMeter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now();
            if let Some(last) = self.last {
                let g = now - last;
                self.gaps.max = self.gaps.max.max(g);
                if g > STALL {
                    self.gaps.stalls += 1;
                    self.gaps.stalled += g;
                }
            }
            self.last = Some(now);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GapMeter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One download: its time, pauses, and the CPU this process (by thread group) and the
/// chain process used meanwhile.
struct Round {
    secs: f64,
    gaps: Gaps,
    cpu: BTreeMap<String, Duration>,
    chain_cpu: Duration,
}

/// Downloads `mib` MiB through `net`'s client.
async fn timed_download(net: &LocalNet, mib: u64, chain_pid: u32) -> Round {
    let http = net.http_addr().unwrap();
    let s = socksc::connect(
        net.socks_addr().unwrap(),
        &http.ip().to_string(),
        http.port(),
        None,
    )
    .await
    .unwrap();
    let mut s = GapMeter {
        inner: s,
        last: None,
        gaps: Gaps::default(),
    };
    let cpu0 = CpuSnapshot::now();
    let chain0 = pid_cpu(chain_pid).unwrap_or_default();
    let t = Instant::now();
    let d = tokio::time::timeout(
        Duration::from_secs(600),
        get(&mut s, "bench", &format!("/bytes/{}", mib << 20), false),
    )
    .await
    .expect("download hung")
    .expect("download");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(d.len, mib << 20, "the paid circuit was cut short");
    Round {
        secs,
        gaps: s.gaps,
        cpu: CpuSnapshot::now().delta(&cpu0),
        chain_cpu: pid_cpu(chain_pid).unwrap_or_default() - chain0,
    }
}

/// Sums of a mode's rounds.
#[derive(Default)]
struct Totals {
    rates: Vec<f64>,
    secs: f64,
    gaps: Gaps,
    cpu: BTreeMap<String, Duration>,
    chain_cpu: Duration,
}

impl Totals {
    fn add(&mut self, r: Round) {
        self.rates.push(ROUND_MIB as f64 / r.secs);
        self.secs += r.secs;
        self.gaps.add(&r.gaps);
        for (k, v) in r.cpu {
            *self.cpu.entry(k).or_default() += v;
        }
        self.chain_cpu += r.chain_cpu;
    }

    fn report(&self, name: &str) {
        let total: Duration = self.cpu.values().sum();
        let mib = (ROUND_MIB * self.rates.len() as u64) as f64;
        println!(
            "  {name}: {:.1} s for {mib} MiB; CPU of this process {:.2} s ({:.1} ms/MiB), chain process {:.2} s; \
             stalls > {} ms: {} totalling {} ms, longest pause {} ms",
            self.secs,
            total.as_secs_f64(),
            total.as_secs_f64() * 1e3 / mib,
            self.chain_cpu.as_secs_f64(),
            STALL.as_millis(),
            self.gaps.stalls,
            self.gaps.stalled.as_millis(),
            self.gaps.max.as_millis()
        );
        for (k, v) in &self.cpu {
            println!("    {k:<18} {:>7.2} s", v.as_secs_f64());
        }
    }
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

fn cpu_line(d: &BTreeMap<String, Duration>) -> String {
    d.iter()
        .map(|(k, v)| format!("{k} {:.3} s", v.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keysends `n` payments from `client` to `relays` in turn, one at a time, each waited for
/// at both ends and pruned; returns the CPU used (this process by group, chain process) and
/// the wall time.
async fn keysend_burst(
    client: &LdkRail,
    relays: &[Arc<LdkRail>],
    n: usize,
    chain_pid: u32,
) -> (BTreeMap<String, Duration>, Duration, Duration) {
    let cpu0 = CpuSnapshot::now();
    let chain0 = pid_cpu(chain_pid).unwrap_or_default();
    let t = Instant::now();
    for i in 0..n {
        let relay = &relays[i % relays.len()];
        let sent = client
            .keysend(KeysendRequest {
                to: relay.node_id(),
                amount_msat: 1_000,
                token: PaymentToken([0xee; 16]),
                max_fee_msat: 1_000,
            })
            .await
            .expect("keysend");
        // Payments left over from the paid network may come first: skip them.
        let end = Instant::now() + NODE_DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(left, relay.next_received())
                .await
                .expect("deadline")
                .expect("received");
            relay.ack_received(got.id).unwrap();
            relay.forget(got.id).unwrap();
            if got.id == sent.id {
                break;
            }
        }
        client.forget(sent.id).unwrap();
    }
    let wall = t.elapsed();
    (
        CpuSnapshot::now().delta(&cpu0),
        pid_cpu(chain_pid).unwrap_or_default() - chain0,
        wall,
    )
}

/// Payments the relays of `net` have received (their ledgers' entries).
fn received(net: &LocalNet) -> u64 {
    net.ledgers().iter().map(|l| l.entries().unwrap()).sum()
}

/// A round of the paid network; the keysends its relays received meanwhile.
async fn paid_round(paid: &LocalNet, totals: &mut Totals, chain_pid: u32) -> u64 {
    let n0 = received(paid);
    totals.add(timed_download(paid, ROUND_MIB, chain_pid).await);
    received(paid) - n0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn paid_vs_unpaid_throughput_and_store_growth() {
    const RELAYS: usize = 3;
    let ldk = Arc::new(LdkNet::start(RELAYS, 1_000_000).await.unwrap());
    let chain_pid = ldk.chain.pid();
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
    timed_download(&free, 16, chain_pid).await;
    timed_download(&paid, 16, chain_pid).await;
    let load0 = loadavg();
    let (mut f, mut p) = (Totals::default(), Totals::default());
    let mut keysends = 0u64;
    for i in 0..ROUNDS {
        if i % 2 == 0 {
            f.add(timed_download(&free, ROUND_MIB, chain_pid).await);
            keysends += paid_round(&paid, &mut p, chain_pid).await;
        } else {
            keysends += paid_round(&paid, &mut p, chain_pid).await;
            f.add(timed_download(&free, ROUND_MIB, chain_pid).await);
        }
    }
    let load1 = loadavg();
    let (fm, pm) = (median(&mut f.rates.clone()), median(&mut p.rates.clone()));
    let (fs, ps): (f64, f64) = (
        f.rates.iter().sum::<f64>() / f.rates.len() as f64,
        p.rates.iter().sum::<f64>() / p.rates.len() as f64,
    );
    println!(
        "throughput, {ROUNDS} rounds of {ROUND_MIB} MiB each, 3 hops (load average {load0} before, {load1} after): \
         unpaid median {fm:.1} MiB/s (mean {fs:.1}), \
         paid (LDK) median {pm:.1} MiB/s (mean {ps:.1}); paid/unpaid median {:.3}, mean {:.3}",
        pm / fm,
        ps / fs
    );
    println!("  unpaid rounds MiB/s: {:.1?}", f.rates);
    println!("  paid rounds MiB/s:   {:.1?}", p.rates);
    println!("CPU and pauses over the rounds, by mode (threads by name; the LDK nodes run on the test's runtime unless named):");
    f.report("unpaid");
    p.report("paid");
    let (fc, pc): (Duration, Duration) = (f.cpu.values().sum(), p.cpu.values().sum());
    println!(
        "  paid − unpaid: CPU {:+.2} s, chain {:+.2} s, over {keysends} keysends received by the relays ({:.1} ms of extra CPU per keysend)",
        pc.as_secs_f64() - fc.as_secs_f64(),
        p.chain_cpu.as_secs_f64() - f.chain_cpu.as_secs_f64(),
        (pc.as_secs_f64() - fc.as_secs_f64()) * 1e3 / keysends.max(1) as f64
    );
    println!(
        "paid client: {} msat spent over {} MiB",
        pays.spent_msat() - spent0,
        16 + ROUNDS as u64 * ROUND_MIB
    );
    println!(
        "  payments received by the relays (ledger entries): {}",
        received(&paid)
    );
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

    // The LDK nodes alone: idle (chain polling, timers), then sequential keysends.
    let cpu0 = CpuSnapshot::now();
    let chain0 = pid_cpu(chain_pid).unwrap_or_default();
    tokio::time::sleep(IDLE).await;
    let idle = CpuSnapshot::now().delta(&cpu0);
    let idle_chain = pid_cpu(chain_pid).unwrap_or_default() - chain0;
    let idle_total: Duration = idle.values().sum();
    println!(
        "LDK nodes idle ({RELAYS} relays + client, {} s): this process {:.3} s ({:.1} ms/s: {}), chain process {:.3} s",
        IDLE.as_secs(),
        idle_total.as_secs_f64(),
        idle_total.as_secs_f64() * 1e3 / IDLE.as_secs_f64(),
        cpu_line(&idle),
        idle_chain.as_secs_f64()
    );
    let (burst, burst_chain, wall) = keysend_burst(&client, &relays, KEYSENDS, chain_pid).await;
    let burst_total: Duration = burst.values().sum();
    let background = idle_total.as_secs_f64() * wall.as_secs_f64() / IDLE.as_secs_f64();
    println!(
        "{KEYSENDS} sequential keysends (both ends waited for, pruned): {:.1} s wall, this process {:.3} s ({}), chain {:.3} s; \
         minus idle background: {:.1} ms CPU per keysend (sender and receiver)",
        wall.as_secs_f64(),
        burst_total.as_secs_f64(),
        cpu_line(&burst),
        burst_chain.as_secs_f64(),
        (burst_total.as_secs_f64() - background) * 1e3 / KEYSENDS as f64
    );
    ldk.stop().await;
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}
