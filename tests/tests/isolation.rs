//! Stream isolation over a real SOCKS port: different credentials never share a circuit;
//! equal credentials do. And the simulator agrees with this loopback network: circuit build
//! time and per-circuit throughput of simnet's loopback topology, with its CPU model
//! calibrated in the same run, are within ±25 % of the real network's.
//!
//! The tests of this file run one at a time (`SERIAL`): the agreement test measures a
//! CPU-bound network and must not share the machine with the other one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use onionvpn_simnet::calibrate::{cpu_share, loopback_scenario, measure, with_stack, Effort};
use onionvpn_simnet::cpu::CpuCosts;
use onionvpn_tests::{simcal, socksc, LocalNet, LocalNetConfig};
use tokio::io::AsyncWriteExt;

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn different_usernames_get_different_circuits() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(different_usernames());
}

async fn different_usernames() {
    let net = LocalNet::start(LocalNetConfig::default()).await.unwrap();
    let socks = net.socks_addr().unwrap();
    let http = net.http_addr().unwrap();
    let host = http.ip().to_string();
    let creds: [Option<(&str, &str)>; 6] = [
        Some(("alice", "x")),
        Some(("bob", "x")),
        Some(("alice", "x")),
        None,
        Some(("carol", "1")),
        Some(("carol", "2")),
    ];
    let mut held = Vec::new();
    for c in creds {
        let mut s = tokio::time::timeout(
            Duration::from_secs(60),
            socksc::connect(socks, &host, http.port(), c),
        )
        .await
        .expect("SOCKS connect hung")
        .unwrap();
        // The server waits on /hold until we close: the stream stays open.
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    let mgr = net.client.as_ref().unwrap().circuit_manager();
    let busy: Vec<_> = mgr
        .circuits()
        .into_iter()
        .filter(|c| !c.dead && c.streams_open > 0)
        .collect();
    // alice (2 streams), bob, no-auth, carol/1, carol/2.
    assert_eq!(busy.len(), 5, "{busy:?}");
    assert_eq!(busy.iter().map(|c| c.streams_open).sum::<usize>(), 6);
    assert_eq!(busy.iter().map(|c| c.streams_open).max(), Some(2));
    let ids: BTreeSet<u64> = busy.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 5);
    let groups: BTreeSet<Option<u64>> = busy.iter().map(|c| c.isolation_group).collect();
    assert_eq!(groups.len(), 5);
    assert!(!groups.contains(&None), "a used circuit belongs to a key");
    drop(held);
    net.shutdown().await;
}

/// The simulated host for a real network that kept `busy` cores busy on a machine of
/// `cores`: (host cores, the share of time its last core is there). `busy` cores on
/// average, at least one whole core, at most the machine's.
fn host_cores(busy: f64, cores: usize) -> (usize, f64) {
    let busy = busy.clamp(1.0, cores.max(1) as f64);
    let n = busy.ceil().max(1.0) as usize;
    let last = if n > 1 { busy - (n - 1) as f64 } else { 1.0 };
    (n, last.clamp(0.05, 1.0))
}

#[test]
fn host_cores_follow_the_real_network() {
    assert_eq!(host_cores(0.93, 2), (1, 1.0));
    assert_eq!(host_cores(1.0, 2), (1, 1.0));
    let (n, last) = host_cores(1.62, 2);
    assert_eq!(n, 2);
    assert!((last - 0.62).abs() < 1e-9);
    assert_eq!(host_cores(3.4, 2), (2, 1.0));
    assert_eq!(host_cores(0.2, 8), (1, 1.0));
    assert_eq!(host_cores(1.01, 2), (2, 0.05));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The same topology in simnet (simnet/scenarios/loopback.toml: no propagation delay, as
/// crossing a loopback link is CPU time, which the link costs carry), with `host` and
/// `costs` as its `[cpu]` section: one run of 1-byte downloads, each on a new circuit (build
/// times), one of `mib` MiB downloads (throughput). (build ms, MiB/s), medians.
fn measure_sim(host: &str, costs: &CpuCosts, mib: u64) -> (f64, f64) {
    let run = |duration: u64, bytes: u64| {
        let scenario = loopback_scenario(duration, bytes, 10_000.0, host, costs).unwrap();
        onionvpn_simnet::run(&scenario, None, |_| {})
            .unwrap()
            .outputs
    };
    let o = run(1, 1);
    let builds: Vec<f64> = o.circuits.iter().filter_map(|c| c.build_ms).collect();
    let o = run(20, mib << 20);
    let rates: Vec<f64> = o
        .streams
        .iter()
        .filter(|s| s.outcome == "ok")
        .filter_map(|s| {
            s.ttlb_ms
                .map(|t| s.bytes as f64 / (1u64 << 20) as f64 / (t / 1e3))
        })
        .collect();
    assert!(builds.len() >= 20, "simnet built {} circuits", builds.len());
    assert!(
        !rates.is_empty(),
        "simnet finished no transfer: {:?}",
        o.streams.first()
    );
    (median(builds), median(rates))
}

/// Issue 6: "for a small network, simnet's circuit build time and throughput agree within
/// ±25 % with the real loopback network under the same topology". Both are measured here,
/// in one run, on this machine: the real network (six relays, a client and an HTTP server in
/// this process) and simnet on the same topology with its CPU model calibrated now: the
/// micro-operations (relay crypto, handshakes, a real channel on loopback) around the real
/// run, plus the real stack's own CPU per cell and per build taken from the real run's
/// process CPU time (`simcal`, `calibrate::with_stack`). What is compared is wall time:
/// simnet turns CPU costs into build times and throughput through its model of cores shared
/// by all nodes of one host, per-circuit ordering, latency and congestion control. Only
/// ratios are asserted.
#[test]
fn simnet_agrees_with_the_loopback_network() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const MIB: u64 = 16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let share0 = cpu_share(cores, 200);
    let before = measure(Effort::QUICK).unwrap();
    let real = rt
        .block_on(async {
            let net = LocalNet::start(LocalNetConfig::default()).await.unwrap();
            let m = simcal::measure(&net, 30, 3, MIB).await;
            net.shutdown().await;
            m
        })
        .unwrap();
    drop(rt);
    let after = measure(Effort::QUICK).unwrap();
    let share1 = cpu_share(cores, 200);
    // The micro costs: the mean of two calibrations around the real run; the stack terms:
    // from the real run's own CPU time. The loopback network is one host; how many of the
    // machine's cores it gets is not a property of the code but of the machine in this
    // run: on a loaded machine one circuit's chain of wake-ups runs on about one core
    // (tokio runs a woken task next on the same worker, its LIFO slot), on an idle one the
    // other worker steals part of the pipeline (CI, idle: 1.62 cores). So the simulated
    // host gets the cores the real network kept busy in the same run's downloads: whole
    // cores and a last one that is there that share of the time (1.62: two cores, the
    // second 62 % of the time), at least one core and at most the machine's (`host_cores`).
    // The costs are CPU time and are not scaled by the
    // machine's load: a wake-up-driven chain gets its core on a busy machine long before a
    // spinning thread gets its share, and its CPU time per cell grows with the load as the
    // real network's does (both are measured in this run). `share` only decides whether
    // the machine is quiet enough to assert.
    let share = ((share0 + share1) / 2.0).clamp(0.05, 1.0);
    let mean = |f: fn(&CpuCosts) -> f64| (f(&before) + f(&after)) / 2.0;
    let micro = CpuCosts {
        layer_ns: mean(|x| x.layer_ns),
        link_msg_ns: mean(|x| x.link_msg_ns),
        link_cell_ns: mean(|x| x.link_cell_ns),
        client_create_ns: mean(|x| x.client_create_ns),
        relay_accept_ns: mean(|x| x.relay_accept_ns),
        client_finish_ns: mean(|x| x.client_finish_ns),
        link_handshake_ns: mean(|x| x.link_handshake_ns),
        payment_ns: mean(|x| x.payment_ns),
        stack_cell_ns: 0.0,
        stack_msg_ns: 0.0,
    };
    let c = with_stack(&micro, &real.whole);
    let (host, last) = host_cores(real.cores_busy, cores);
    let cpu =
        format!("cores = {cores}\nshared_host_cores = {host}\nshared_host_last_core = {last}");
    let (sim_build, sim_rate) = measure_sim(&cpu, &c, MIB);
    let (real_build, real_rate) = (real.build_ms, real.rate_mib_s);
    let (rb, rr) = (sim_build / real_build, sim_rate / real_rate);
    eprintln!(
        "agreement: build real {real_build:.3} ms sim {sim_build:.3} ms (ratio {rb:.2}); \
         throughput real {real_rate:.1} MiB/s sim {sim_rate:.1} MiB/s (ratio {rr:.2}); \
         CPU share {share:.2}; real CPU per cell {:.0} ns (model without stack {:.0}), \
         per build {:.0} ns (model without stack {:.0}; wall {:.0} ns); cores busy in the \
         transfers {:.2} (simulated host cores {host}, the last one {last:.2} of the time); costs {c:?}",
        real.whole.cell_ns,
        real.whole.model_cell_ns(&micro),
        real.whole.build_ns,
        real.whole.model_build_ns(&micro),
        real_build * 1e6,
        real.cores_busy,
    );
    // The comparison needs the machine: when other processes take most of the cores
    // (a developer machine building beside the tests), both figures are set by the
    // scheduler more than by the code, and they are printed but not compared.
    if share < 0.6 {
        eprintln!("agreement: machine too loaded (CPU share {share:.2} < 0.6): not asserted");
        return;
    }
    assert!(
        (0.75..=1.25).contains(&rb),
        "circuit build: simnet/real = {rb:.2}"
    );
    assert!(
        (0.75..=1.25).contains(&rr),
        "throughput: simnet/real = {rr:.2}"
    );
}
