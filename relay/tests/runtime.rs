//! Three in-process relays on loopback with a mainline testnet, driven by a minimal client
//! made from `ClientCircuit` and `chan::connect`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use mainline::{Dht, Testnet};
use onionvpn_chan::{connect, ChannelConfig, ChannelHandle, CircuitRx};
use onionvpn_directory::dht::{DescriptorFetcher, TcpFetcher};
use onionvpn_directory::{Descriptor, UncheckedDescriptor};
use onionvpn_proto::cell::{Cell, ChanCmd, CircId, DestroyReason};
use onionvpn_proto::circuit::{ClientCircuit, ClientConfig, ClientEvent, HopTarget};
use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::crypto::handshake::OnionPublicKey;
use onionvpn_proto::ext::PaymentOffer;
use onionvpn_proto::link::{FrameDecoder, LinkInitiator};
use onionvpn_proto::relaymsg::{EndReason, Host, StreamId, Target};
use onionvpn_relay::{start_relay, start_relay_with, RelayConfig, RelayHandle, RuntimeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn config(boot: &[String], exit: bool, allow_private: bool) -> RelayConfig {
    let mut c = RelayConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..RelayConfig::default()
    };
    c.dht.bootstrap = boot.to_vec();
    c.exit.enabled = exit;
    c.exit.policy.allow_private_destinations = allow_private;
    c
}

struct Net {
    _testnet: Testnet,
    boot: Vec<String>,
    relays: Vec<RelayHandle>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Three relays; the last is an exit (allowed to reach loopback when `allow_private`).
async fn network(allow_private: bool) -> Net {
    let testnet = Testnet::builder(6).build().unwrap();
    let boot = testnet.bootstrap.clone();
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("relay");
        let cfg = config(&boot, i == 2, allow_private);
        let r = if i == 0 {
            // The contract's entry point.
            start_relay(cfg, data).await.unwrap()
        } else {
            let opts = RuntimeOptions {
                worker_threads: Some(2),
                ..RuntimeOptions::default()
            };
            start_relay_with(cfg, data, opts).await.unwrap()
        };
        relays.push(r);
        dirs.push(dir);
    }
    Net {
        _testnet: testnet,
        boot,
        relays,
        _dirs: dirs,
    }
}

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

/// A minimal client: one circuit over one channel.
struct Client {
    chan: ChannelHandle,
    id: CircId,
    rx: CircuitRx,
    circ: ClientCircuit,
    received: Vec<u8>,
    connected: bool,
    fin: bool,
    ended: Option<EndReason>,
    destroyed: bool,
    destroy_reason: Option<DestroyReason>,
    /// Last XOFF (true) / XON (false) from the exit.
    paused: Option<bool>,
}

impl Client {
    async fn build(relays: &[&RelayHandle]) -> Client {
        let path: Vec<HopTarget> = relays.iter().map(|r| hop(&r.descriptor())).collect();
        let mut c = Client::start(relays[0], path).await;
        c.until(|c| c.circ.is_open()).await;
        c
    }

    /// Sends the CREATE for `path` through `guard`; the build goes on in `step`.
    async fn start(guard: &RelayHandle, path: Vec<HopTarget>) -> Client {
        let relays = [guard];
        let first = &path[0];
        let chan = connect(
            relays[0].or_addr(),
            first.identity,
            first.link_key,
            &ChannelConfig::default(),
        )
        .await
        .unwrap();
        let (id, rx) = chan.open_circuit().await.unwrap();
        let (circ, create) =
            ClientCircuit::new(&mut rand::rng(), path, ClientConfig::default()).unwrap();
        chan.send(Cell::with_body(id, ChanCmd::Create, &create))
            .await
            .unwrap();
        Client {
            chan,
            id,
            rx,
            circ,
            received: Vec::new(),
            connected: false,
            fin: false,
            ended: None,
            destroyed: false,
            destroy_reason: None,
            paused: None,
        }
    }

    /// Sends what the circuit queued, then handles one incoming cell (or times out).
    async fn step(&mut self, wait: Duration) -> bool {
        while let Some(out) = self.circ.poll_cell().unwrap() {
            self.chan
                .send(Cell::with_body(self.id, out.cmd, &out.body))
                .await
                .unwrap();
        }
        let cell = match tokio::time::timeout(wait, self.rx.recv()).await {
            Err(_) => return false,
            Ok(None) => {
                self.destroyed = true;
                return true;
            }
            Ok(Some(c)) => c,
        };
        let mut cell = cell;
        match cell.cmd() {
            ChanCmd::Created => {
                self.circ.handle_created(cell.body()).unwrap();
            }
            ChanCmd::Relay | ChanCmd::RelayEarly => {
                match self
                    .circ
                    .handle_relay(cell.body_mut(), Instant::now())
                    .unwrap()
                {
                    ClientEvent::Connected { .. } => self.connected = true,
                    ClientEvent::Data { data, .. } => self.received.extend_from_slice(data),
                    ClientEvent::Fin { .. } => self.fin = true,
                    ClientEvent::End { reason, .. } => self.ended = Some(reason),
                    ClientEvent::FlowControl { paused, .. } => self.paused = Some(paused),
                    _ => {}
                }
            }
            ChanCmd::Destroy => {
                self.destroyed = true;
                self.destroy_reason = Some(cell.as_destroy().unwrap().reason);
            }
            other => panic!("unexpected {other:?}"),
        }
        true
    }

    async fn until(&mut self, mut done: impl FnMut(&Client) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out");
            assert!(!self.destroyed, "circuit destroyed");
            self.step(Duration::from_millis(200)).await;
        }
    }

    async fn begin(&mut self, addr: SocketAddr) -> StreamId {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4,
            _ => unreachable!(),
        };
        self.begin_host(Host::V4(ip), addr.port()).await
    }

    async fn begin_host(&mut self, host: Host, port: u16) -> StreamId {
        let s = self
            .circ
            .begin_stream(Target {
                host,
                port: NonZeroU16::new(port).unwrap(),
            })
            .unwrap();
        self.connected = false;
        self.ended = None;
        s
    }

    /// Sends `data` on `s` and waits until as many bytes came back.
    async fn echo(&mut self, s: StreamId, data: &[u8]) -> Vec<u8> {
        self.received.clear();
        let mut off = 0;
        let deadline = Instant::now() + WAIT;
        while self.received.len() < data.len() {
            assert!(Instant::now() < deadline, "echo timed out");
            assert!(!self.destroyed && self.ended.is_none(), "stream closed");
            while off < data.len() && self.circ.can_send(s) {
                off += self
                    .circ
                    .send_data(s, &data[off..], Instant::now())
                    .unwrap();
            }
            self.step(Duration::from_millis(100)).await;
        }
        std::mem::take(&mut self.received)
    }
}

/// A TCP echo server on loopback.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_round_trips_through_three_hops_to_an_echo_server() {
    let net = network(true).await;
    let echo = echo_server().await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    let s = c.begin(echo).await;
    c.until(|c| c.connected || c.ended.is_some()).await;
    assert!(c.connected, "stream refused: {:?}", c.ended);
    let data = pattern(300 * 1024, 7);
    let back = c.echo(s, &data).await;
    assert_eq!(back, data);
    // Half-close: our FIN reaches the echo server, which closes its side: FIN comes back.
    c.circ.send_fin(s).unwrap();
    c.until(|c| c.fin).await;
    let exit = net.relays[2].stats();
    assert_eq!(exit.exit_bytes_written, data.len() as u64);
    assert_eq!(exit.exit_bytes_read, data.len() as u64);
    assert_eq!(exit.circuits_open, 1);
    assert!(net.relays[0].stats().cells_forward > 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_policy_refuses_loopback_by_default() {
    let net = network(false).await;
    let echo = echo_server().await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    c.begin(echo).await;
    c.until(|c| c.connected || c.ended.is_some()).await;
    assert_eq!(c.ended, Some(EndReason::ExitPolicy));
    assert!(!c.connected);
    // The circuit survives a refused stream.
    assert!(!c.destroyed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_exit_refuses_streams() {
    let net = network(true).await;
    let echo = echo_server().await;
    // Two hops: the middle relay (not an exit) is last.
    let rs: Vec<&RelayHandle> = net.relays[..2].iter().collect();
    let mut c = Client::build(&rs).await;
    c.begin(echo).await;
    c.until(|c| c.connected || c.ended.is_some()).await;
    assert_eq!(c.ended, Some(EndReason::ExitPolicy));
}

/// Completes a link handshake with relay `r` on a raw socket.
async fn raw_link(r: &RelayHandle) -> (TcpStream, onionvpn_proto::link::Link) {
    let d = r.descriptor();
    let mut sock = TcpStream::connect(r.or_addr()).await.unwrap();
    let (init, frame1) =
        LinkInitiator::new(&mut rand::rng(), d.body().identity.0, d.body().link_key.0).unwrap();
    sock.write_all(&frame1).await.unwrap();
    let mut dec = FrameDecoder::new();
    let frame2 = loop {
        if let Some(f) = dec.next_frame().unwrap() {
            break f.to_vec();
        }
        let n = sock.read(dec.read_buf()).await.unwrap();
        assert!(n > 0, "relay closed during handshake");
        dec.commit(n).unwrap();
    };
    (sock, init.read_frame(&frame2).unwrap())
}

/// Waits until the relay closes `sock` (EOF or reset), reading and discarding anything.
async fn closed_by_relay(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_peer_is_cut_off_while_other_circuits_flow() {
    let net = network(true).await;
    let echo = echo_server().await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    let s = c.begin(echo).await;
    c.until(|c| c.connected).await;
    let first = pattern(64 * 1024, 1);
    assert_eq!(c.echo(s, &first).await, first);

    // 1. Bytes that are not a frame of the link (AEAD fails).
    let (mut sock, _link) = raw_link(&net.relays[0]).await;
    sock.write_all(&[0x00, 0x40]).await.unwrap();
    sock.write_all(&[0xAB; 64]).await.unwrap();
    assert!(
        closed_by_relay(&mut sock).await,
        "garbage frame: link kept open"
    );

    // 2. A well-encrypted frame carrying a cell with an unknown command.
    let (mut sock, mut link) = raw_link(&net.relays[0]).await;
    let mut bad = [0u8; CELL_LEN];
    bad[..4].copy_from_slice(&0x8000_0001u32.to_be_bytes());
    bad[4] = 0xEE;
    let mut out = Vec::new();
    link.encrypt_cells(&[bad], &mut out).unwrap();
    sock.write_all(&out).await.unwrap();
    assert!(closed_by_relay(&mut sock).await, "bad cell: link kept open");

    // 3. A truncated frame, then EOF.
    let (mut sock, _link) = raw_link(&net.relays[0]).await;
    sock.write_all(&[0x02, 0x10, 1, 2, 3]).await.unwrap();
    sock.shutdown().await.unwrap();
    assert!(
        closed_by_relay(&mut sock).await,
        "truncated frame: link kept open"
    );

    // The honest circuit through the same relay still carries data.
    let second = pattern(128 * 1024, 2);
    assert_eq!(c.echo(s, &second).await, second);
    assert!(!c.destroyed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_middle_relay_destroys_the_circuit_toward_the_client() {
    let mut net = network(true).await;
    let echo = echo_server().await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    let s = c.begin(echo).await;
    c.until(|c| c.connected).await;
    let middle = net.relays.remove(1);
    middle.kill();
    let deadline = Instant::now() + WAIT;
    while !c.destroyed {
        assert!(
            Instant::now() < deadline,
            "no DESTROY after the middle relay died"
        );
        if c.circ.can_send(s) {
            let _ = c.circ.send_data(s, b"ping", Instant::now());
        }
        c.step(Duration::from_millis(100)).await;
    }
    // The guard forgot the circuit.
    let deadline = Instant::now() + WAIT;
    while net.relays[0].stats().circuits_open != 0 {
        assert!(Instant::now() < deadline, "guard kept the circuit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_destroys_circuits_and_stops_listening() {
    let mut net = network(true).await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    let guard = net.relays.remove(0);
    let addr = guard.or_addr();
    tokio::time::timeout(WAIT, guard.shutdown())
        .await
        .expect("shutdown hung");
    let deadline = Instant::now() + WAIT;
    while !c.destroyed {
        assert!(Instant::now() < deadline, "no DESTROY on shutdown");
        c.step(Duration::from_millis(100)).await;
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open after shutdown"
    );
    // The middle relay saw the DESTROY (or the closed link) and dropped its circuit.
    let deadline = Instant::now() + WAIT;
    while net.relays[0].stats().circuits_open != 0 {
        assert!(Instant::now() < deadline, "middle kept the circuit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_is_served_on_the_or_port_and_published_in_the_dht() {
    let net = network(true).await;
    let r = &net.relays[2];
    let d = r.descriptor();
    assert_eq!(d.body().identity.0, r.identity());
    assert_eq!(d.body().addresses, vec![r.or_addr()]);
    assert!(d.body().exit_policy.is_exit());
    assert!(d.body().exit_policy.allow_private);
    assert!(!net.relays[0].descriptor().body().exit_policy.is_exit());

    // Descriptor request on the OR port.
    let served = TcpFetcher { timeout: WAIT }
        .fetch(r.or_addr())
        .await
        .unwrap();
    assert_eq!(served.own, d.raw());

    // BEP44 item under the identity key, with the network's salt.
    let network = RelayConfig::default().network().unwrap();
    let client = {
        let mut b = Dht::builder();
        b.bootstrap(&net.boot).bind_address(Ipv4Addr::LOCALHOST);
        b.build().unwrap().as_async()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(item) = client
            .get_mutable_most_recent(&r.identity(), Some(network.salt()))
            .await
        {
            let got = UncheckedDescriptor::parse(item.value())
                .unwrap()
                .check(None, &network.id(), onionvpn_directory::dht::unix_now())
                .unwrap();
            assert_eq!(got, d);
            break;
        }
        assert!(Instant::now() < deadline, "descriptor not in the DHT");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(r.stats().descriptor_puts >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_creations_beyond_the_burst_are_refused() {
    let testnet = Testnet::builder(4).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&testnet.bootstrap, false, false);
    cfg.limits.circuit_rate = 1;
    cfg.limits.circuit_burst = 2;
    let opts = RuntimeOptions {
        worker_threads: Some(1),
        publish: false,
        ..RuntimeOptions::default()
    };
    let r = start_relay_with(cfg, dir.path().join("r"), opts)
        .await
        .unwrap();
    // Two one-hop circuits fit in the burst.
    let a = Client::build(&[&r]).await;
    let b = Client::build(&[&r]).await;
    assert!(a.circ.is_open() && b.circ.is_open());
    // The third CREATE from the same address is refused with DESTROY(ResourceLimit).
    let d = r.descriptor();
    let chan = connect(
        r.or_addr(),
        r.identity(),
        d.body().link_key.0,
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    let (id, mut rx) = chan.open_circuit().await.unwrap();
    let (_circ, create) =
        ClientCircuit::new(&mut rand::rng(), vec![hop(&d)], ClientConfig::default()).unwrap();
    chan.send(Cell::with_body(id, ChanCmd::Create, &create))
        .await
        .unwrap();
    let cell = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cell.cmd(), ChanCmd::Destroy);
    assert_eq!(
        cell.as_destroy().unwrap().reason,
        onionvpn_proto::cell::DestroyReason::ResourceLimit
    );
    assert_eq!(r.stats().circuits_refused, 1);
    assert_eq!(r.stats().circuits_open, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_resolve_at_the_exit_and_the_resolved_address_is_checked() {
    let echo = echo_server().await;
    let localhost = || Host::Name("localhost".parse().unwrap());
    // Allowed to reach loopback: "localhost" resolves at the exit and connects.
    let net = network(true).await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    let s = c.begin_host(localhost(), echo.port()).await;
    c.until(|c| c.connected || c.ended.is_some()).await;
    assert!(c.connected, "refused: {:?}", c.ended);
    assert_eq!(c.echo(s, b"resolved").await, b"resolved");
    drop(c);
    drop(net);
    // Default policy: the name passes the port rules, but its address is loopback.
    let net = network(false).await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    c.begin_host(localhost(), echo.port()).await;
    c.until(|c| c.connected || c.ended.is_some()).await;
    assert_eq!(c.ended, Some(EndReason::ExitPolicy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_to_an_unreachable_relay_destroys_the_circuit() {
    let net = network(true).await;
    let mut path: Vec<HopTarget> = net.relays.iter().map(|r| hop(&r.descriptor())).collect();
    // The exit's keys, but an address where nothing listens.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    path[2].ipv4 = match dead {
        SocketAddr::V4(v4) => Some(v4),
        SocketAddr::V6(_) => unreachable!(),
    };
    let mut c = Client::start(&net.relays[0], path).await;
    let deadline = Instant::now() + WAIT;
    while !c.destroyed {
        assert!(Instant::now() < deadline, "no DESTROY");
        c.step(Duration::from_millis(100)).await;
    }
    assert_eq!(c.circ.hops_built(), 2);
    assert_eq!(c.destroy_reason, Some(DestroyReason::Destroyed));
    // The middle relay sent ConnectFailed to the guard, which passed DESTROY(Destroyed) on.
    let deadline = Instant::now() + WAIT;
    while net.relays[0].stats().circuits_open + net.relays[1].stats().circuits_open != 0 {
        assert!(Instant::now() < deadline, "circuits left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_sends_xoff_when_the_destination_stalls_and_xon_when_it_drains() {
    // A destination that reads nothing until told to, then counts everything.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest = l.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (count_tx, mut count_rx) = tokio::sync::mpsc::channel::<usize>(1024);
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = go_rx.await;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = count_tx.send(n).await;
                }
            }
        }
    });
    let net = network(true).await;
    let rs: Vec<&RelayHandle> = net.relays.iter().collect();
    let mut c = Client::build(&rs).await;
    let s = c.begin(dest).await;
    c.until(|c| c.connected).await;
    let chunk = pattern(64 * 1024, 3);
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.paused != Some(true) {
        assert!(Instant::now() < deadline, "no XOFF after {sent} bytes");
        assert!(
            c.ended.is_none() && !c.destroyed,
            "stream closed: {:?}",
            c.ended
        );
        while c.circ.can_send(s) {
            sent += c.circ.send_data(s, &chunk[..1000], Instant::now()).unwrap();
        }
        c.step(Duration::from_millis(20)).await;
    }
    // Paused: the client must not send on the stream.
    assert!(!c.circ.can_send(s));
    // The destination starts reading: the exit drains its queue and sends XON.
    go_tx.send(()).unwrap();
    c.until(|c| c.paused == Some(false)).await;
    assert!(c.ended.is_none());
    // Everything sent before and after the pause arrives.
    let more = 100_000;
    let mut off = 0;
    while off < more {
        while off < more && c.circ.can_send(s) {
            off += c
                .circ
                .send_data(s, &chunk[..(more - off).min(1000)], Instant::now())
                .unwrap();
        }
        c.step(Duration::from_millis(20)).await;
    }
    let total = sent + more;
    let mut got = 0usize;
    while got < total {
        c.step(Duration::from_millis(10)).await;
        match tokio::time::timeout(WAIT, count_rx.recv()).await {
            Ok(Some(n)) => got += n,
            _ => panic!("destination got {got} of {total} bytes"),
        }
    }
    assert_eq!(got, total);
}
