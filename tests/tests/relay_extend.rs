//! Relay hardening on real sockets: EXTEND never reaches the operator's own network unless
//! the operator opted in, a replayed CREATE is refused while handshakes run in parallel, and
//! a relay listening on `127.0.0.1:0` publishes the port it bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use onionvpn_chan::{connect, ChannelConfig, ChannelHandle, CircuitRx};
use onionvpn_directory::Descriptor;
use onionvpn_proto::cell::{Cell, ChanCmd, CircId, DestroyReason};
use onionvpn_proto::circuit::{ClientCircuit, ClientConfig, HopTarget};
use onionvpn_proto::consts::CELL_BODY_LEN;
use onionvpn_proto::crypto::handshake::OnionPublicKey;
use onionvpn_proto::ext::PaymentOffer;
use onionvpn_relay::{start_relay_with, RelayConfig, RelayHandle, RuntimeOptions};

const WAIT: Duration = Duration::from_secs(20);

/// A free relay that does not publish (no DHT needed), listening on `listen`.
async fn relay(listen: SocketAddr, allow_private: bool, dir: &tempfile::TempDir) -> RelayHandle {
    let mut c = RelayConfig {
        listen,
        ..RelayConfig::default()
    };
    if listen.ip().is_unspecified() {
        // Published only: the test reaches the relay on loopback.
        c.advertised_addresses = vec!["198.51.100.7:9001".parse().unwrap()];
    }
    c.dht.bootstrap = Vec::new();
    c.prices.msat_per_mib = 0;
    c.prices.msat_per_min = 0;
    c.exit.policy.allow_private_destinations = allow_private;
    let opts = RuntimeOptions {
        worker_threads: Some(2),
        publish: false,
        extend_timeout: Duration::from_secs(5),
        ..RuntimeOptions::default()
    };
    start_relay_with(c, dir.path().join("relay"), opts)
        .await
        .unwrap()
}

fn hop(d: &Descriptor, ipv4: Option<SocketAddrV4>) -> HopTarget {
    let now = onionvpn_directory::dht::unix_now();
    let b = d.body();
    HopTarget {
        identity: b.identity.0,
        onion_key: OnionPublicKey(d.onion_key_at(now).unwrap().key),
        link_key: b.link_key.0,
        ipv4,
        ipv6: None,
        offer: PaymentOffer {
            msat_per_mib: 0,
            msat_per_min: 0,
        },
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// The address to reach relay `r` at from this host.
fn reach(r: &RelayHandle) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, r.or_addr().port()))
}

async fn channel_to(r: &RelayHandle) -> ChannelHandle {
    let d = r.descriptor();
    connect(
        reach(r),
        r.identity(),
        d.body().link_key.0,
        &ChannelConfig::default(),
    )
    .await
    .unwrap()
}

/// Sends a CREATE with `body` on a new circuit of `chan`; returns the circuit and the
/// answer (CREATED or DESTROY).
async fn create(chan: &ChannelHandle, body: &[u8; CELL_BODY_LEN]) -> (CircId, CircuitRx, Cell) {
    let (id, mut rx) = chan.open_circuit().await.unwrap();
    chan.send(Cell::with_body(id, ChanCmd::Create, body))
        .await
        .unwrap();
    let cell = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no answer to CREATE")
        .expect("channel closed");
    (id, rx, cell)
}

/// Builds `guard → next` where the EXTEND names `next_addr`: the hops built, and the DESTROY
/// reason if the circuit was destroyed instead of opening.
async fn extend_through(
    guard: &RelayHandle,
    next: &RelayHandle,
    next_addr: SocketAddr,
) -> (usize, Option<DestroyReason>) {
    let path = vec![
        hop(&guard.descriptor(), None),
        hop(&next.descriptor(), Some(v4(next_addr))),
    ];
    let (mut circ, first) =
        ClientCircuit::new(&mut rand::rng(), path, ClientConfig::default()).unwrap();
    let chan = channel_to(guard).await;
    let (id, mut rx, created) = create(&chan, &first).await;
    assert_eq!(created.cmd(), ChanCmd::Created);
    circ.handle_created(created.body()).unwrap();
    loop {
        while let Some(out) = circ.poll_cell().unwrap() {
            chan.send(Cell::with_body(id, out.cmd, &out.body))
                .await
                .unwrap();
        }
        if circ.is_open() {
            return (circ.hops_built(), None);
        }
        let mut cell = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("neither EXTENDED nor DESTROY")
            .expect("channel closed");
        match cell.cmd() {
            ChanCmd::Destroy => {
                return (circ.hops_built(), Some(cell.as_destroy().unwrap().reason));
            }
            ChanCmd::Relay | ChanCmd::RelayEarly => {
                circ.handle_relay(cell.body_mut(), Instant::now()).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_to_the_operators_network_is_refused_unless_opted_in() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    // Reachable from anywhere (0.0.0.0), no opt-in: the relay an attacker would use.
    let public = relay(any, false, &dirs[0]).await;
    // The same, with the operator's opt-in (a local test network on a LAN).
    let opted_in = relay(any, true, &dirs[1]).await;
    // The target, a real relay on loopback.
    let target = relay(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false, &dirs[2]).await;
    let t = target.or_addr();

    // Loopback: refused, without even connecting.
    let (hops, reason) = extend_through(&public, &target, t).await;
    assert_eq!(hops, 1);
    assert_eq!(reason, Some(DestroyReason::ConnectFailed));
    assert_eq!(target.stats().links_accepted, 0, "the target was contacted");
    // Private and link-local: refused at once (a connect would hang until the timeout).
    for addr in [
        "10.255.255.1:9001",
        "192.168.255.254:22",
        "169.254.169.254:80",
    ] {
        let (hops, reason) = extend_through(&public, &target, addr.parse().unwrap()).await;
        assert_eq!(
            (hops, reason),
            (1, Some(DestroyReason::ConnectFailed)),
            "{addr}"
        );
    }
    // Every refused extension left nothing open on the relay.
    let deadline = Instant::now() + WAIT;
    while public.stats().circuits_open != 0 {
        assert!(Instant::now() < deadline, "circuits left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With the opt-in, the same extension succeeds.
    let (hops, reason) = extend_through(&opted_in, &target, t).await;
    assert_eq!((hops, reason), (2, None));
    assert_eq!(target.stats().links_accepted, 1);
    // A relay that itself listens on loopback may extend to loopback (local networks).
    let (hops, reason) = extend_through(&target, &opted_in, reach(&opted_in)).await;
    assert_eq!((hops, reason), (2, None));

    for r in [public, opted_in, target] {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_create_is_refused_and_parallel_creates_all_pass() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false, &dir).await;
    let path = || vec![hop(&r.descriptor(), None)];
    let chan = channel_to(&r).await;
    let (_, body) = ClientCircuit::new(&mut rand::rng(), path(), ClientConfig::default()).unwrap();
    let (_, _rx1, first) = create(&chan, &body).await;
    assert_eq!(first.cmd(), ChanCmd::Created);
    // The same CREATE again, on another circuit and on another link.
    let (_, _rx2, again) = create(&chan, &body).await;
    assert_eq!(again.cmd(), ChanCmd::Destroy);
    let other = channel_to(&r).await;
    let (_, _rx3, again) = create(&other, &body).await;
    assert_eq!(again.cmd(), ChanCmd::Destroy);
    assert_eq!(r.stats().circuits_total, 1);
    assert_eq!(r.stats().circuits_refused, 2);

    // 32 distinct CREATEs at once: every one is answered CREATED.
    let bodies: Vec<_> = (0..32)
        .map(|_| {
            ClientCircuit::new(&mut rand::rng(), path(), ClientConfig::default())
                .unwrap()
                .1
        })
        .collect();
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let chan = chan.clone();
            tokio::spawn(async move {
                let (_, rx, answer) = create(&chan, &b).await;
                (rx, answer.cmd())
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        let (rx, cmd) = t.await.unwrap();
        assert_eq!(cmd, ChanCmd::Created);
        held.push(rx);
    }
    assert_eq!(r.stats().circuits_total, 33);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_listening_on_port_0_publishes_the_bound_port() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listen = \"127.0.0.1:0\"\n[dht]\nbootstrap = []\n";
    let c = RelayConfig::parse(text, std::path::Path::new("relay.toml")).unwrap();
    assert_eq!(c.advertised().unwrap(), vec![c.listen]);
    let opts = RuntimeOptions {
        worker_threads: Some(1),
        publish: false,
        ..RuntimeOptions::default()
    };
    let r = start_relay_with(c, dir.path().join("relay"), opts)
        .await
        .unwrap();
    assert_ne!(r.or_addr().port(), 0);
    assert_eq!(r.descriptor().body().addresses, vec![r.or_addr()]);
    r.shutdown().await;
}
