//! A client state machine talks through three relay state machines, in memory: circuit
//! build, streams carrying megabytes both ways, half-close, and tagging attacks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddrV4;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use onionvpn_proto::cell::ChanCmd;
use onionvpn_proto::circuit::{
    CircError, ClientCircuit, ClientConfig, ClientEvent, FromClient, HopTarget, RelayCircuit,
    RelayKeys, RelayPolicy,
};
use onionvpn_proto::consts::CELL_BODY_LEN;
use onionvpn_proto::crypto::handshake::{OnionSecretKey, ReplayCache};
use onionvpn_proto::ext::PaymentOffer;
use onionvpn_proto::relaymsg::{EndReason, Host, StreamId, Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where an attacker may touch a cell in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// A hook run on every cell leaving relay `from` in `dir`; it may alter the body.
type Tamper = Box<dyn FnMut(usize, Direction, &mut [u8; CELL_BODY_LEN])>;

struct Relay {
    identity: [u8; 32],
    onion: Vec<OnionSecretKey>,
    replay: ReplayCache,
    policy: RelayPolicy,
    circ: Option<RelayCircuit>,
}

/// Everything the exit's "destination" and the client's application saw.
#[derive(Default)]
struct Apps {
    /// Bytes the exit delivered to the destination, per stream.
    at_exit: Vec<(StreamId, Vec<u8>)>,
    /// Bytes the client received, per stream.
    at_client: Vec<(StreamId, Vec<u8>)>,
    exit_fins: Vec<StreamId>,
    client_fins: Vec<StreamId>,
    client_ends: Vec<(StreamId, EndReason)>,
    connected: Vec<StreamId>,
    opened: bool,
}

fn append(buf: &mut Vec<(StreamId, Vec<u8>)>, s: StreamId, data: &[u8]) {
    match buf.iter_mut().find(|(id, _)| *id == s) {
        Some((_, v)) => v.extend_from_slice(data),
        None => buf.push((s, data.to_vec())),
    }
}

fn bytes_of(buf: &[(StreamId, Vec<u8>)], s: StreamId) -> &[u8] {
    buf.iter()
        .find(|(id, _)| *id == s)
        .map(|(_, v)| v.as_slice())
        .unwrap_or(&[])
}

struct Net {
    rng: StdRng,
    now: Instant,
    client: ClientCircuit,
    relays: Vec<Relay>,
    apps: Apps,
    tamper: Option<Tamper>,
    /// First error any party reported (the circuit is then torn down).
    failed: Option<(String, CircError)>,
}

impl Net {
    /// Three relays; the client starts building through them.
    fn new(seed: u64, policy: RelayPolicy) -> Net {
        Net::with_config(seed, policy, ClientConfig::default())
    }

    fn with_config(seed: u64, policy: RelayPolicy, config: ClientConfig) -> Net {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut relays = Vec::new();
        let mut path = Vec::new();
        for i in 0..3u8 {
            let mut identity = [0u8; 32];
            rng.fill_bytes(&mut identity);
            let onion = OnionSecretKey::generate(&mut rng);
            path.push(HopTarget {
                identity,
                onion_key: onion.public(),
                link_key: [i + 1; 32],
                ipv4: Some(SocketAddrV4::new([127, 0, 0, i + 1].into(), 9000)),
                ipv6: None,
                offer: PaymentOffer {
                    msat_per_mib: policy.msat_per_mib,
                    msat_per_min: policy.msat_per_min,
                },
            });
            relays.push(Relay {
                identity,
                onion: vec![onion],
                replay: ReplayCache::new(4096, Duration::from_secs(3600)),
                policy: policy.clone(),
                circ: None,
            });
        }
        let (client, create) = ClientCircuit::new(&mut rng, path, config).unwrap();
        let mut net = Net {
            rng,
            now: Instant::now(),
            client,
            relays,
            apps: Apps::default(),
            tamper: None,
            failed: None,
        };
        net.create_at(0, &create);
        net
    }

    fn fail(&mut self, who: String, e: CircError) {
        if self.failed.is_none() {
            self.failed = Some((who, e));
        }
    }

    /// Relay `i` answers a CREATE; the reply goes to the client (i = 0) or to relay i-1.
    fn create_at(&mut self, i: usize, create: &[u8; CELL_BODY_LEN]) {
        let r = &mut self.relays[i];
        let keys = RelayKeys {
            identity: r.identity,
            onion_keys: &r.onion,
        };
        match RelayCircuit::accept(
            &mut self.rng,
            &keys,
            &mut r.replay,
            &r.policy,
            create,
            self.now,
        ) {
            Ok((circ, created)) => {
                r.circ = Some(circ);
                if i == 0 {
                    match self.client.handle_created(&created) {
                        Ok(ev) => self.client_event(ev),
                        Err(e) => self.fail("client".into(), e),
                    }
                } else if let Err(e) = self.relays[i - 1].circ.as_mut().unwrap().extended(&created)
                {
                    self.fail(format!("relay {}", i - 1), e);
                }
            }
            Err(e) => self.fail(format!("relay {i} accept"), e),
        }
    }

    fn client_event(&mut self, ev: ClientEvent<'_>) {
        match ev {
            ClientEvent::HopAdded { open, .. } => self.apps.opened |= open,
            ClientEvent::Connected { stream, .. } => self.apps.connected.push(stream),
            ClientEvent::Data { stream, data } => append(&mut self.apps.at_client, stream, data),
            ClientEvent::Fin { stream } => self.apps.client_fins.push(stream),
            ClientEvent::End { stream, reason } => self.apps.client_ends.push((stream, reason)),
            _ => {}
        }
    }

    /// A cell arrives at relay `i` from the client side.
    fn forward(&mut self, i: usize, cmd: ChanCmd, mut body: [u8; CELL_BODY_LEN]) {
        if self.failed.is_some() {
            return;
        }
        let now = self.now;
        let Some(circ) = self.relays.get_mut(i).and_then(|r| r.circ.as_mut()) else {
            panic!("cell forwarded to relay {i}, which has no circuit");
        };
        let ev = match circ.handle_forward(cmd, &mut body, now) {
            Ok(ev) => ev,
            Err(e) => return self.fail(format!("relay {i}"), e),
        };
        match ev {
            FromClient::Forward { .. } => {
                if let Some(t) = self.tamper.as_mut() {
                    t(i, Direction::Forward, &mut body);
                }
                self.forward(i + 1, cmd, body);
            }
            FromClient::Extend(req) => self.create_at(i + 1, &req.create_body),
            FromClient::Begin { stream, .. } => {
                let r = circ.stream_connected(stream, None, 60);
                if let Err(e) = r {
                    self.fail(format!("relay {i}"), e);
                }
            }
            FromClient::Data { stream, data } => append(&mut self.apps.at_exit, stream, data),
            FromClient::Fin { stream } => self.apps.exit_fins.push(stream),
            _ => {}
        }
    }

    /// A cell leaves relay `i` toward the client.
    fn backward(&mut self, i: usize, mut body: [u8; CELL_BODY_LEN]) {
        if let Some(t) = self.tamper.as_mut() {
            t(i, Direction::Backward, &mut body);
        }
        for j in (0..i).rev() {
            if let Err(e) = self.relays[j]
                .circ
                .as_mut()
                .unwrap()
                .handle_backward(&mut body)
            {
                return self.fail(format!("relay {j}"), e);
            }
            if let Some(t) = self.tamper.as_mut() {
                t(j, Direction::Backward, &mut body);
            }
        }
        let now = self.now;
        match self.client.handle_relay(&mut body, now) {
            Ok(ev) => self.client_event(ev),
            Err(e) => self.fail("client".into(), e),
        }
    }

    /// Moves every queued cell until nothing moves; time advances 1 ms per round.
    fn pump(&mut self) {
        for _round in 0..10_000 {
            self.now += Duration::from_millis(1);
            let mut moved = false;
            while let Some(cell) = self.client.poll_cell().unwrap() {
                moved = true;
                self.forward(0, cell.cmd, cell.body);
            }
            for i in (0..self.relays.len()).rev() {
                while let Some(body) = self.relays[i]
                    .circ
                    .as_mut()
                    .and_then(|c| c.poll_backward().unwrap())
                {
                    moved = true;
                    self.backward(i, body);
                }
            }
            if !moved || self.failed.is_some() {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn exit(&mut self) -> &mut RelayCircuit {
        self.relays[2].circ.as_mut().unwrap()
    }

    fn open_stream(&mut self) -> StreamId {
        let target = Target {
            host: Host::Name("example.com".parse().unwrap()),
            port: NonZeroU16::new(443).unwrap(),
        };
        let s = self.client.begin_stream(target).unwrap();
        self.pump();
        assert!(self.apps.connected.contains(&s), "stream {s} connected");
        s
    }

    /// Sends `up` from the client and `down` from the exit on `s`, interleaved, with
    /// congestion control deciding how much may be in flight.
    fn transfer(&mut self, s: StreamId, up: &[u8], down: &[u8]) {
        let (mut u, mut d) = (0, 0);
        for _ in 0..1_000_000 {
            if self.failed.is_some() || (u == up.len() && d == down.len()) {
                break;
            }
            let now = self.now;
            while u < up.len() && self.client.can_send(s) {
                u += self.client.send_data(s, &up[u..], now).unwrap();
            }
            while d < down.len() && self.exit().can_send(s) {
                d += self.exit().send_data(s, &down[d..], now).unwrap();
            }
            self.pump();
        }
        assert!(self.failed.is_none(), "transfer failed: {:?}", self.failed);
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

impl Net {
    /// The exit sends `down` on stream `s` while its congestion window lets it, delivering
    /// everything in between, until it can send no more (or all is sent); the bytes sent.
    fn exit_sends_while_it_may(&mut self, s: StreamId, down: &[u8]) -> usize {
        let mut d = 0;
        for _ in 0..10_000 {
            let now = self.now;
            let before = d;
            while d < down.len() && self.exit().can_send(s) {
                d += self.exit().send_data(s, &down[d..], now).unwrap();
            }
            self.pump();
            if d == before {
                break;
            }
        }
        d
    }
}

fn built_net(seed: u64) -> Net {
    let mut net = Net::new(seed, RelayPolicy::default());
    net.pump();
    assert!(net.failed.is_none(), "{:?}", net.failed);
    assert!(net.apps.opened && net.client.is_open());
    assert_eq!(net.client.hops_built(), 3);
    net
}

#[test]
fn ten_mib_each_way_arrive_intact() {
    let mut net = built_net(1);
    let s = net.open_stream();
    let up = random_bytes(&mut net.rng, 10 << 20);
    let down = random_bytes(&mut net.rng, 10 << 20);
    net.transfer(s, &up, &down);
    assert!(
        bytes_of(&net.apps.at_exit, s) == up.as_slice(),
        "upload intact"
    );
    assert!(
        bytes_of(&net.apps.at_client, s) == down.as_slice(),
        "download intact"
    );
    // Congestion control left slow start above its initial window: no fixed cap.
    assert!(
        net.client.cc().cwnd() > 124,
        "cwnd {}",
        net.client.cc().cwnd()
    );
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let mut net = built_net(2);
    let s = net.open_stream();
    net.transfer(s, b"request, then FIN", b"");
    net.client.send_fin(s).unwrap();
    net.pump();
    assert_eq!(net.apps.exit_fins, vec![s]);
    // The exit still answers after the client half-closed.
    let reply = random_bytes(&mut net.rng, 100_000);
    net.transfer(s, b"", &reply);
    net.exit().send_fin(s).unwrap();
    net.pump();
    assert!(bytes_of(&net.apps.at_client, s) == reply.as_slice());
    assert_eq!(net.apps.client_fins, vec![s]);
    // Both directions finished: the stream is gone at both ends.
    assert_eq!(net.client.n_streams(), 0);
    assert!(net.exit().stream_ids().is_empty());
}

#[test]
fn many_streams_share_a_circuit() {
    let mut net = built_net(3);
    let streams: Vec<StreamId> = (0..20).map(|_| net.open_stream()).collect();
    let payloads: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 3000 + i * 7]).collect();
    for (s, p) in streams.iter().zip(&payloads) {
        net.transfer(*s, p, p);
    }
    for (s, p) in streams.iter().zip(&payloads) {
        assert!(bytes_of(&net.apps.at_exit, *s) == p.as_slice());
        assert!(bytes_of(&net.apps.at_client, *s) == p.as_slice());
    }
}

/// Flips one bit of cells leaving hop 1 toward hop 2 and, if `undo_at_exit`, flips it
/// back before the exit peels (hops 1 and 3 collude). The exit must never deliver
/// altered data, and the circuit must fail.
fn forward_tagging(bit: usize, undo_at_exit: bool) {
    let mut net = built_net(4);
    let s = net.open_stream();
    let byte = bit / 8;
    let mask = 1u8 << (bit % 8);
    net.tamper = Some(Box::new(move |from, dir, body| {
        if dir == Direction::Forward && from == 0 {
            body[byte] ^= mask;
        }
        if dir == Direction::Forward && from == 1 && undo_at_exit {
            body[byte] ^= mask;
        }
    }));
    let data = vec![0x5a; 5000];
    net.transfer_allowing_failure(s, &data);
    let (who, err) = net.failed.as_ref().expect("the circuit must fail");
    assert_eq!(who, "relay 2", "the exit detects it: {err}");
    assert!(
        bytes_of(&net.apps.at_exit, s).is_empty(),
        "the exit delivered nothing after tampering"
    );
}

impl Net {
    fn transfer_allowing_failure(&mut self, s: StreamId, up: &[u8]) {
        let mut u = 0;
        for _ in 0..10_000 {
            if self.failed.is_some() || u == up.len() {
                break;
            }
            let now = self.now;
            while u < up.len() && self.client.can_send(s) {
                u += self.client.send_data(s, &up[u..], now).unwrap();
            }
            self.pump();
        }
    }
}

#[test]
fn tagging_at_hop_one_is_detected_before_delivery() {
    for bit in [0, 7, 8 * 16, 8 * 16 + 3, 8 * 300, 8 * 506 + 7] {
        forward_tagging(bit, false);
    }
}

#[test]
fn tagging_undone_by_a_colluding_exit_is_still_detected() {
    for bit in [0, 8 * 16, 8 * 17 + 1, 8 * 400 + 5, 8 * 506] {
        forward_tagging(bit, true);
    }
}

#[test]
fn backward_tagging_undone_by_the_guard_is_detected_by_the_client() {
    let mut net = built_net(5);
    let s = net.open_stream();
    let received_before = bytes_of(&net.apps.at_client, s).len();
    net.tamper = Some(Box::new(|from, dir, body| {
        if dir == Direction::Backward && from == 2 {
            body[100] ^= 0x10;
        }
        if dir == Direction::Backward && from == 0 {
            body[100] ^= 0x10;
        }
    }));
    let now = net.now;
    let d = net.exit().send_data(s, b"tagged reply", now).unwrap();
    assert_eq!(d, 12);
    net.pump();
    let (who, err) = net.failed.as_ref().expect("the circuit must fail");
    assert_eq!(who, "client", "{err}");
    assert!(matches!(err, CircError::Layer(_)), "{err}");
    assert_eq!(bytes_of(&net.apps.at_client, s).len(), received_before);
}

#[test]
fn a_cell_replaced_at_hop_one_breaks_the_circuit() {
    let mut net = built_net(6);
    let s = net.open_stream();
    let mut dropped = false;
    net.tamper = Some(Box::new(move |from, dir, body| {
        // Hop 1 swaps the first cell it forwards for one of its own making.
        if dir == Direction::Forward && from == 0 && !dropped {
            dropped = true;
            body.copy_from_slice(&[0u8; CELL_BODY_LEN]);
        }
    }));
    net.transfer_allowing_failure(s, &[1u8; 4000]);
    assert!(net.failed.is_some());
    assert!(bytes_of(&net.apps.at_exit, s).is_empty());
}

#[test]
fn a_client_cannot_extend_past_the_length_bound() {
    // A relay counts RELAY_EARLY cells: the ninth on one circuit destroys it.
    let mut net = built_net(7);
    let s = net.open_stream();
    net.transfer(s, b"x", b"");
    let mut body = [0u8; CELL_BODY_LEN];
    let mut last = Ok(FromClient::None);
    for _ in 0..9 {
        body.iter_mut().for_each(|b| *b = 0);
        let r = net.relays[0].circ.as_mut().unwrap();
        last = r
            .handle_forward(ChanCmd::RelayEarly, &mut body, net.now)
            .map(|_| FromClient::None);
        if last.is_err() {
            break;
        }
    }
    assert!(
        matches!(last, Err(CircError::TooManyEarly { max: 8 })),
        "the ninth RELAY_EARLY cell is refused: {last:?}"
    );
}

#[test]
fn relay_refuses_offers_below_its_prices() {
    let policy = RelayPolicy {
        msat_per_mib: 1000,
        msat_per_min: 10,
        ..RelayPolicy::default()
    };
    // The client offers exactly the prices: accepted, and every hop states its terms.
    let mut net = Net::new(8, policy.clone());
    net.pump();
    assert!(net.failed.is_none(), "{:?}", net.failed);
    assert!(net.client.terms().iter().all(|t| t
        .as_ref()
        .is_some_and(|t| t.msat_per_mib == 1000 && t.msat_per_min == 10)));
    // Tokens of different hops differ (they cannot be linked by content).
    let tokens: Vec<_> = net
        .client
        .terms()
        .iter()
        .map(|t| t.as_ref().unwrap().token.0)
        .collect();
    assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2] && tokens[0] != tokens[2]);

    // A relay whose prices are above the client's offer refuses the circuit.
    let mut net = Net::new(10, policy);
    net.relays[1].policy.msat_per_mib = 5000;
    net.pump();
    let (who, err) = net.failed.as_ref().expect("relay 1 refuses");
    assert_eq!(who, "relay 1 accept");
    assert!(matches!(err, CircError::PriceTooLow));
}

#[test]
fn both_edges_use_the_sendme_increment_the_exit_confirmed() {
    // The client asks for 31; the relays only allow 20. If either edge kept 31, SENDMEs
    // would acknowledge the wrong cells and the transfer would fail.
    let policy = RelayPolicy {
        sendme_inc_range: (20, 20),
        ..RelayPolicy::default()
    };
    let mut net = Net::new(11, policy);
    net.pump();
    assert!(net.client.is_open(), "{:?}", net.failed);
    assert_eq!(net.client.cc().params().sendme_inc, 20);
    assert_eq!(net.exit().cc().params().sendme_inc, 20);
    let s = net.open_stream();
    let up = random_bytes(&mut net.rng, 1 << 20);
    let down = random_bytes(&mut net.rng, 1 << 20);
    net.transfer(s, &up, &down);
    assert!(bytes_of(&net.apps.at_exit, s) == up.as_slice());
    assert!(bytes_of(&net.apps.at_client, s) == down.as_slice());
}

#[test]
fn held_acknowledgements_stop_the_exit_within_its_window_and_release_in_order() {
    const LIMIT: u64 = 100;
    let mut net = built_net(9);
    let s = net.open_stream();
    net.client.set_ack_limit(Some(LIMIT)).unwrap();
    let down = random_bytes(&mut net.rng, 4 << 20);
    // Send while the exit's congestion window allows: it must run out.
    let d = net.exit_sends_while_it_may(s, &down);
    assert!(net.failed.is_none(), "{:?}", net.failed);
    assert!(d < down.len(), "the exit stopped before the end");
    let received = net.client.data_cells_received();
    let window = net.exit().cc().cwnd();
    assert!(
        received <= LIMIT + window,
        "{received} DATA cells arrived: past the limit by more than one window ({window})"
    );
    assert!(received > LIMIT, "the exit used its window past the limit");
    assert!(net.client.sendmes_held() > 0, "SENDMEs past the limit held");

    // Lifting the limit releases the held SENDMEs (tags in order, or the exit would fail
    // the circuit) and the download completes intact.
    net.client.set_ack_limit(None).unwrap();
    assert_eq!(net.client.sendmes_held(), 0);
    net.transfer(s, &[], &down[d..]);
    assert!(
        bytes_of(&net.apps.at_client, s) == down.as_slice(),
        "download intact"
    );
}

#[test]
fn the_exit_keeps_to_the_window_the_client_asked_for() {
    let asking = |seed, cells| {
        let config = ClientConfig {
            window_limit: Some(cells),
            ..ClientConfig::default()
        };
        let mut net = Net::with_config(seed, RelayPolicy::default(), config);
        net.pump();
        assert!(net.client.is_open(), "{:?}", net.failed);
        net
    };
    // Below the initial window (124 cells), so the cap shows at once.
    let mut net = asking(12, 64);
    assert_eq!(
        net.client.exit_window_bytes(),
        Some(64 * CELL_BODY_LEN as u64)
    );
    assert_eq!(net.exit().cc().params().cwnd_max, 64);
    // With every acknowledgement held, the exit sends exactly its window.
    let s = net.open_stream();
    net.client.set_ack_limit(Some(0)).unwrap();
    let down = random_bytes(&mut net.rng, 1 << 20);
    net.exit_sends_while_it_may(s, &down);
    assert!(net.failed.is_none(), "{:?}", net.failed);
    assert_eq!(net.client.data_cells_received(), 64);

    // A window below the exit's smallest is raised to it, and the client learns so.
    let net = asking(13, 1);
    let floor = RelayPolicy::default().vegas.cwnd_min;
    assert_eq!(
        net.client.exit_window_bytes(),
        Some(floor * CELL_BODY_LEN as u64)
    );
    // Not asked: none confirmed, and the exit keeps its own.
    let mut net = Net::new(14, RelayPolicy::default());
    net.pump();
    assert_eq!(net.client.exit_window_bytes(), None);
    assert_eq!(
        net.exit().cc().params().cwnd_max,
        RelayPolicy::default().vegas.cwnd_max
    );
}
