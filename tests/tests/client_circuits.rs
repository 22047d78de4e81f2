//! The client's circuit manager on a real local network: a restart builds circuits from the
//! relay cache without the DHT, circuits are retired after their maximum age, and the build
//! timeout is learned from the builds the client observed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use onionvpn_client::buildtime::BuildTimeConfig;
use onionvpn_client::socks::IsolationKey;
use onionvpn_client::{start_client_with, Recv, Stream};
use onionvpn_proto::relaymsg::{Host, Target};
use onionvpn_tests::{client_config, client_options, fetch, http, LocalNet, LocalNetConfig};

const WAIT: Duration = Duration::from_secs(30);

fn loopback0() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn target_of(addr: SocketAddr) -> Target {
    let SocketAddr::V4(v4) = addr else {
        panic!("loopback IPv4 expected")
    };
    Target {
        host: Host::V4(*v4.ip()),
        port: NonZeroU16::new(v4.port()).unwrap(),
    }
}

/// Sends `GET /bytes/n` on a circuit stream and reads the response until the exit's FIN.
async fn fetch_on(stream: &Stream, n: usize) -> Vec<u8> {
    let req = format!("GET /bytes/{n} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.send(req.into_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.recv(&mut buf))
            .await
            .expect("response hung")
            .unwrap()
        {
            Recv::Data => {}
            Recv::Fin => return buf,
        }
    }
}

/// Polls `cond` until it holds; fails after `WAIT`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_builds_from_the_cache_with_the_dht_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = LocalNet::start(LocalNetConfig {
        dir: Some(tmp.path().to_owned()),
        ..LocalNetConfig::default()
    })
    .await
    .unwrap();
    let first = net.client.take().unwrap();
    let mgr1 = first.circuit_manager().clone();
    first.shutdown().await;
    // Shut down: discovery stopped, the cache flushed and released.
    let known = mgr1.relay_count();
    assert!(known >= 4, "the first run learned {known} relays");
    drop(mgr1);

    // A DHT "bootstrap node" that swallows every query: no lookup can ever complete.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = vec![black_hole.local_addr().unwrap().to_string()];
    let cfg = client_config(3, loopback0(), &dead, tmp.path().join("client"));
    let client = start_client_with(cfg, client_options()).await.unwrap();
    // The relays are there at once, from the cache.
    assert_eq!(client.circuit_manager().relay_count(), known);
    client.wait_ready(WAIT).await.unwrap();

    // And the circuit carries traffic.
    let got = fetch::download(
        client.socks_addr(),
        net.http_addr().unwrap(),
        1024,
        WAIT,
        true,
    )
    .await
    .unwrap();
    assert_eq!(got.len, 1024);
    assert_eq!(got.sha256, http::content_sha256(1024));
    // Nothing was learned from the DHT: the relay set is the cached one.
    assert_eq!(client.circuit_manager().relay_count(), known);
    client.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_are_retired_after_their_maximum_age_and_closed_when_idle() {
    let net = LocalNet::start(LocalNetConfig {
        client: None,
        ..LocalNetConfig::default()
    })
    .await
    .unwrap();
    let mut opts = client_options();
    opts.mgr.max_dirtiness = Duration::from_secs(2);
    opts.mgr.maintenance_interval = Duration::from_millis(50);
    let client = net
        .start_client("aging", 3, loopback0(), opts)
        .await
        .unwrap();
    client.wait_ready(WAIT).await.unwrap();
    let mgr = client.circuit_manager().clone();
    let target = target_of(net.http_addr().unwrap());
    let key = IsolationKey::credentials(b"user", b"pw");

    let h1 = mgr.get_circuit(&key, &target).await.unwrap();
    let old = h1.info().clone();
    let stream = h1.begin(target.clone()).await.unwrap();
    drop(h1);
    // Young: the next stream of the same key shares the circuit.
    let again = mgr.get_circuit(&key, &target).await.unwrap();
    assert_eq!(again.info().id, old.id);
    drop(again);

    // Old: maintenance retires it from the pool...
    until("the old circuit retired", || {
        mgr.circuits().iter().all(|c| c.id != old.id)
    })
    .await;
    // ...and a new stream of the same key gets a new circuit, which works.
    let h2 = mgr.get_circuit(&key, &target).await.unwrap();
    assert_ne!(h2.info().id, old.id);
    let fresh = h2.begin(target.clone()).await.unwrap();
    let body = fetch_on(&fresh, 1000).await;
    assert!(body.len() > 1000, "{} bytes", body.len());
    drop(fresh);

    // The retired circuit still carries the stream it had...
    assert!(
        !old.is_dead(),
        "a retired circuit with a stream must stay up"
    );
    let body = fetch_on(&stream, 2000).await;
    assert!(body.len() > 2000, "{} bytes", body.len());
    assert!(!old.is_dead());
    // ...and closes once idle.
    drop(stream);
    until("the idle retired circuit closed", || old.is_dead()).await;
    assert!(!h2.is_dead(), "the new circuit is unaffected");
    drop(h2);
    client.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_timeout_is_learned_from_observed_builds() {
    let net = LocalNet::start(LocalNetConfig {
        client: None,
        ..LocalNetConfig::default()
    })
    .await
    .unwrap();
    let initial = Duration::from_secs(40);
    let mut opts = client_options();
    opts.mgr.preemptive = 0;
    opts.mgr.buildtime = BuildTimeConfig {
        initial,
        min_samples: 5,
        floor: Duration::from_micros(1),
        ..BuildTimeConfig::default()
    };
    let client = net
        .start_client("learning", 3, loopback0(), opts)
        .await
        .unwrap();
    let mgr = client.circuit_manager().clone();
    until("relays known", || mgr.relay_count() >= 4).await;
    for i in 0..5 {
        assert_eq!(mgr.build_timeout(), initial, "before sample {i}");
        mgr.build_circuit(None).await.unwrap();
    }
    let est = mgr.build_times();
    assert_eq!(est.counts(), (5, 0));
    assert_eq!(est.samples(), 5);
    // Learned: 3 × the 90th percentile of what was observed, far below the initial guess.
    let q90 = est.quantile(90).unwrap();
    let learned = mgr.build_timeout();
    assert_eq!(learned, q90 * 3);
    assert!(learned < initial, "{learned:?}");
    // Every further build moves it with the observations.
    mgr.build_circuit(None).await.unwrap();
    let est = mgr.build_times();
    assert_eq!(est.samples(), 6);
    assert_eq!(mgr.build_timeout(), est.quantile(90).unwrap() * 3);
    client.shutdown().await;
    net.shutdown().await;
}
