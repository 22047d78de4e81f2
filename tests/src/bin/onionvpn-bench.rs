//! `onionvpn-bench`: the loopback benchmark harness. On a local network (6 relays, one
//! client, 3 hops) it measures, in one run and next to a direct TCP transfer: 100 MiB
//! download throughput, time to first byte, circuit build time (median and p90 of 100
//! builds) and process CPU seconds per MiB (client, relays, HTTP server and the harness
//! itself, all in this process), then prints a table.
//!
//! `cargo run --release -p onionvpn-tests --bin onionvpn-bench [-- MiB]`
//!
//! `onionvpn-bench calibrate` instead prints simnet's CPU model calibration
//! (`simnet/calibration.toml`): the micro-operation costs of `onionvpn-simnet calibrate` plus
//! the stack terms from whole real operations on this network (50 circuit builds, three
//! 16 MiB downloads; `onionvpn_tests::simcal`).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use onionvpn_tests::http::{get, read_head};
use onionvpn_tests::{process_cpu_time, socksc, LocalNet, LocalNetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Transfer {
    secs: f64,
    cpu: f64,
    mib: f64,
}

async fn stream_to(
    direct: Option<SocketAddr>,
    socks: SocketAddr,
    http: SocketAddr,
) -> std::io::Result<TcpStream> {
    match direct {
        Some(a) => TcpStream::connect(a).await,
        None => socksc::connect(
            socks,
            &http.ip().to_string(),
            http.port(),
            Some(("bench", "x")),
        )
        .await
        .map_err(std::io::Error::other),
    }
}

async fn transfer(
    direct: bool,
    socks: SocketAddr,
    http: SocketAddr,
    bytes: u64,
) -> std::io::Result<Transfer> {
    let cpu0 = process_cpu_time();
    let t0 = Instant::now();
    let mut s = stream_to(direct.then_some(http), socks, http).await?;
    let d = get(&mut s, "bench", &format!("/bytes/{bytes}"), false).await?;
    let secs = t0.elapsed().as_secs_f64();
    if d.len != bytes {
        return Err(std::io::Error::other(format!(
            "got {} of {bytes} bytes",
            d.len
        )));
    }
    Ok(Transfer {
        secs,
        cpu: (process_cpu_time() - cpu0).as_secs_f64(),
        mib: bytes as f64 / (1024.0 * 1024.0),
    })
}

/// Time from sending the request to the first body byte (stream already open), median of `n`.
async fn ttfb(
    direct: bool,
    socks: SocketAddr,
    http: SocketAddr,
    n: usize,
) -> std::io::Result<(Duration, Duration)> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t_open = Instant::now();
        let mut s = stream_to(direct.then_some(http), socks, http).await?;
        let t0 = Instant::now();
        s.write_all(b"GET /bytes/1 HTTP/1.1\r\nHost: b\r\n\r\n")
            .await?;
        let (_, early) = read_head(&mut s).await?;
        if early.is_empty() {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
        }
        v.push((t0.elapsed(), t0.duration_since(t_open) + t0.elapsed()));
    }
    v.sort();
    let mid = v.len() / 2;
    let mut opens: Vec<Duration> = v.iter().map(|x| x.1).collect();
    opens.sort();
    Ok((v[mid].0, opens[mid]))
}

fn pct(v: &[Duration], p: usize) -> Duration {
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// `onionvpn-bench calibrate`: the micro costs, then the whole operations, then the file.
async fn calibrate() -> ExitCode {
    use onionvpn_simnet::calibrate::{measure, with_stack, Effort};
    // `measure` runs its own runtime for the channel measurement: off this one's threads.
    let micro = match tokio::task::spawn_blocking(|| measure(Effort::NORMAL))
        .await
        .map_err(|e| onionvpn_simnet::SimError::Setup(e.to_string()))
        .and_then(|r| r)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("onionvpn-bench: calibrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let net = match LocalNet::start(LocalNetConfig::default()).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("onionvpn-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let m = onionvpn_tests::simcal::measure(&net, 50, 3, 16).await;
    net.shutdown().await;
    let m = match m {
        Ok(m) => m,
        Err(e) => {
            eprintln!("onionvpn-bench: calibrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let costs = with_stack(&micro, &m.whole);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let cmd = format!(
        "onionvpn-bench calibrate > simnet/calibration.toml ({} build)",
        if cfg!(debug_assertions) {
            "debug-assertions (dev or test profile)"
        } else {
            "release"
        }
    );
    let measured = format!(
        "{} ({cores} cores, load average {load} at the end; real network: {:.0} ns CPU per \
         cell, {:.0} ns per build, {:.2} cores busy in the downloads)",
        onionvpn_simnet::code_version(),
        m.whole.cell_ns,
        m.whole.build_ns,
        m.cores_busy
    );
    print!("{}", costs.to_calibration_toml(&cmd, &measured));
    ExitCode::SUCCESS
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("calibrate") {
        return calibrate().await;
    }
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let bytes = mib * 1024 * 1024;
    eprintln!("starting the local network ...");
    let net = match LocalNet::start(LocalNetConfig::default()).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("onionvpn-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Some(socks), Some(http), Some(client)) =
        (net.socks_addr(), net.http_addr(), net.client.as_ref())
    else {
        return ExitCode::FAILURE;
    };
    let run = async {
        // Warm up: the circuit for the benchmark's isolation key, and the page cache.
        transfer(false, socks, http, 1 << 20).await?;
        transfer(true, socks, http, 1 << 20).await?;
        eprintln!("{mib} MiB direct ...");
        let direct = transfer(true, socks, http, bytes).await?;
        eprintln!("{mib} MiB through 3 hops ...");
        let overlay = transfer(false, socks, http, bytes).await?;
        eprintln!("time to first byte ...");
        let (ttfb_direct, _) = ttfb(true, socks, http, 21).await?;
        let (ttfb_overlay, open_overlay) = ttfb(false, socks, http, 21).await?;
        eprintln!("100 circuit builds ...");
        let mgr = client.circuit_manager();
        let mut builds = Vec::new();
        for _ in 0..100 {
            let t0 = Instant::now();
            let (h, _) = mgr
                .build_circuit(None)
                .await
                .map_err(std::io::Error::other)?;
            builds.push(t0.elapsed());
            drop(h);
        }
        builds.sort();
        Ok::<_, std::io::Error>((
            direct,
            overlay,
            ttfb_direct,
            ttfb_overlay,
            open_overlay,
            builds,
        ))
    };
    let (direct, overlay, ttfb_direct, ttfb_overlay, open_overlay, builds) = match run.await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("onionvpn-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("onionvpn-bench: loopback, 6 relays, 3 hops, {cores} cores, {mib} MiB");
    println!("| measure | direct TCP | through 3 hops |");
    println!("|---|---|---|");
    println!(
        "| download throughput | {:.1} MiB/s | {:.1} MiB/s |",
        direct.mib / direct.secs,
        overlay.mib / overlay.secs
    );
    println!(
        "| CPU-seconds per MiB (whole process) | {:.5} | {:.5} |",
        direct.cpu / direct.mib,
        overlay.cpu / overlay.mib
    );
    println!(
        "| overlay CPU-seconds per MiB (difference) | | {:.5} |",
        (overlay.cpu - direct.cpu * overlay.mib / direct.mib) / overlay.mib
    );
    println!(
        "| time to first byte, open stream (median of 21) | {} | {} |",
        ms(ttfb_direct),
        ms(ttfb_overlay)
    );
    println!(
        "| SOCKS connect + BEGIN + first byte (median) | | {} |",
        ms(open_overlay)
    );
    println!(
        "| circuit build, 3 hops (100 builds) | | median {}, p90 {} |",
        ms(pct(&builds, 50)),
        ms(pct(&builds, 90))
    );
    net.shutdown().await;
    ExitCode::SUCCESS
}
