//! Out-of-context cells close the channel; late cells for circuits closed on it do not.
//! A raw peer (the proto link state machine over a plain socket) plays the misbehaving side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use onionvpn_chan::{accept, connect, ChannelConfig, ChannelHandle, IncomingCreate};
use onionvpn_proto::cell::{Cell, ChanCmd, CircId, DestroyReason, LinkSide};
use onionvpn_proto::consts::{CELL_BODY_LEN, CELL_LEN};
use onionvpn_proto::link::{FrameDecoder, Link, LinkInitiator, LinkResponder, LinkSecretKey};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Upper bound on how long a peer may take to close a link; not a sleep.
const LIMIT: Duration = Duration::from_secs(10);

struct Raw {
    sock: TcpStream,
    link: Link,
    dec: FrameDecoder,
}

async fn read_frame(sock: &mut TcpStream, dec: &mut FrameDecoder) -> Vec<u8> {
    loop {
        if let Some(f) = dec.next_frame().unwrap() {
            return f.to_vec();
        }
        let n = sock.read(dec.read_buf()).await.unwrap();
        assert!(n > 0, "closed during the handshake");
        dec.commit(n).unwrap();
    }
}

impl Raw {
    async fn connect(addr: SocketAddr, identity: [u8; 32], link_key: [u8; 32]) -> Raw {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let (init, frame1) = LinkInitiator::new(&mut rand::rng(), identity, link_key).unwrap();
        sock.write_all(&frame1).await.unwrap();
        let mut dec = FrameDecoder::new();
        let frame2 = read_frame(&mut sock, &mut dec).await;
        let link = init.read_frame(&frame2).unwrap();
        Raw { sock, link, dec }
    }

    async fn accept(l: &TcpListener, identity: [u8; 32], secret: &LinkSecretKey) -> Raw {
        let (mut sock, _) = l.accept().await.unwrap();
        let resp = LinkResponder::new(&mut rand::rng(), identity, secret).unwrap();
        let mut dec = FrameDecoder::new();
        let frame1 = read_frame(&mut sock, &mut dec).await;
        let (link, frame2) = resp.read_frame(&frame1).unwrap();
        sock.write_all(&frame2).await.unwrap();
        Raw { sock, link, dec }
    }

    async fn send(&mut self, cells: &[[u8; CELL_LEN]]) {
        let mut out = Vec::new();
        self.link.encrypt_cells(cells, &mut out).unwrap();
        self.sock.write_all(&out).await.unwrap();
    }

    /// Reads cells until `want` says stop (returns true), or the peer closes the link
    /// (returns true as the second value), within [`LIMIT`].
    async fn read(&mut self, mut want: impl FnMut(&Cell) -> bool) -> (Vec<Cell>, bool) {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            while let Some(frame) = self.dec.next_frame().unwrap() {
                let mut cells = Vec::new();
                self.link.decrypt_frame(frame, &mut cells).unwrap();
                for raw in cells {
                    let c = Cell::from_bytes(raw).unwrap();
                    let stop = want(&c);
                    got.push(c);
                    if stop {
                        return (got, false);
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.sock.read(self.dec.read_buf())).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
                Ok(Ok(n)) => self.dec.commit(n).unwrap(),
                Err(_) => panic!("the peer neither closed the link nor sent what was awaited"),
            }
        }
    }

    async fn assert_closed(&mut self, what: &str) {
        let (cells, closed) = self.read(|_| false).await;
        assert!(closed, "the channel stayed open after {what}");
        assert!(
            cells.iter().all(|c| c.cmd() == ChanCmd::Destroy),
            "answered {what} with something other than DESTROY"
        );
    }
}

fn id(side: LinkSide) -> CircId {
    loop {
        if let Some(id) = CircId::from_random(rand::rng().random::<u32>(), side) {
            return id;
        }
    }
}

fn raw_cell(id: CircId, cmd: ChanCmd, fill: u8) -> [u8; CELL_LEN] {
    Cell::with_body(id, cmd, &[fill; CELL_BODY_LEN]).into_bytes()
}

struct Relay {
    addr: SocketAddr,
    identity: [u8; 32],
    link_key: [u8; 32],
    creates: mpsc::Receiver<IncomingCreate>,
}

async fn relay(config: ChannelConfig) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secret = LinkSecretKey::generate(&mut rand::rng());
    let link_key = secret.public();
    let identity = [3u8; 32];
    let (tx, creates) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = accept(sock, identity, &secret, &config, tx.clone()).await;
        }
    });
    Relay {
        addr,
        identity,
        link_key,
        creates,
    }
}

async fn next_create(r: &mut Relay) -> IncomingCreate {
    tokio::time::timeout(LIMIT, r.creates.recv())
        .await
        .expect("no CREATE reached the relay: the channel closed?")
        .unwrap()
}

#[tokio::test]
async fn cells_for_a_circuit_never_opened_close_the_channel() {
    let r = relay(ChannelConfig::default()).await;
    for cmd in [
        ChanCmd::Relay,
        ChanCmd::RelayEarly,
        ChanCmd::Created,
        ChanCmd::Destroy,
    ] {
        let mut peer = Raw::connect(r.addr, r.identity, r.link_key).await;
        peer.send(&[raw_cell(id(LinkSide::Initiator), cmd, 0x11)])
            .await;
        peer.assert_closed(&format!("{cmd:?} for a circuit never opened"))
            .await;
    }
}

#[tokio::test]
async fn late_cells_for_a_closed_circuit_are_dropped_and_the_channel_stays() {
    let mut r = relay(ChannelConfig::default()).await;
    let mut peer = Raw::connect(r.addr, r.identity, r.link_key).await;
    let x = id(LinkSide::Initiator);
    peer.send(&[raw_cell(x, ChanCmd::Create, 0)]).await;
    let inc = next_create(&mut r).await;
    assert_eq!(inc.cell.circ_id(), Some(x));
    // The relay refuses the circuit; the peer, not knowing yet, keeps sending on it.
    inc.channel.destroy(x, DestroyReason::Protocol).await;
    let (cells, closed) = peer
        .read(|c| c.circ_id() == Some(x) && c.cmd() == ChanCmd::Destroy)
        .await;
    assert!(!closed && cells.last().map(Cell::cmd) == Some(ChanCmd::Destroy));
    // The channel handle is shared by every circuit on the link; nothing else holds it here.
    let chan = inc.channel.clone();
    peer.send(&[
        raw_cell(x, ChanCmd::Relay, 1),
        raw_cell(x, ChanCmd::Relay, 2),
        raw_cell(x, ChanCmd::Destroy, 0),
    ])
    .await;
    // A new circuit on the same link still works: the late cells did not close it.
    let y = id(LinkSide::Initiator);
    peer.send(&[raw_cell(y, ChanCmd::Create, 0)]).await;
    let inc_y = next_create(&mut r).await;
    assert_eq!(inc_y.cell.circ_id(), Some(y));
    assert!(!chan.is_closed());
    // And cells flow on it.
    inc_y
        .channel
        .send(Cell::with_body(y, ChanCmd::Created, &[7; CELL_BODY_LEN]))
        .await
        .unwrap();
    let (cells, closed) = peer.read(|c| c.circ_id() == Some(y)).await;
    assert!(!closed);
    assert_eq!(cells.last().map(Cell::cmd), Some(ChanCmd::Created));
}

#[tokio::test]
async fn closed_ids_are_forgotten_oldest_first() {
    // With room for one closed id, a late cell for the older of two closed circuits is out
    // of context again.
    let config = ChannelConfig {
        closed_ids: 1,
        ..ChannelConfig::default()
    };
    let mut r = relay(config).await;
    let mut peer = Raw::connect(r.addr, r.identity, r.link_key).await;
    let (a, b) = (id(LinkSide::Initiator), id(LinkSide::Initiator));
    for c in [a, b] {
        peer.send(&[raw_cell(c, ChanCmd::Create, 0)]).await;
        let inc = next_create(&mut r).await;
        inc.channel.destroy(c, DestroyReason::Finished).await;
        let (_, closed) = peer
            .read(|cell| cell.circ_id() == Some(c) && cell.cmd() == ChanCmd::Destroy)
            .await;
        assert!(!closed);
    }
    // `b` is remembered: dropped silently. A CREATE after it proves the link still works.
    let probe = id(LinkSide::Initiator);
    peer.send(&[
        raw_cell(b, ChanCmd::Relay, 1),
        raw_cell(probe, ChanCmd::Create, 0),
    ])
    .await;
    let inc = next_create(&mut r).await;
    assert_eq!(inc.cell.circ_id(), Some(probe));
    // `a` was forgotten: out of context.
    peer.send(&[raw_cell(a, ChanCmd::Relay, 1)]).await;
    peer.assert_closed("a cell for a circuit closed long ago")
        .await;
}

/// A channel we initiated (the client side, from `connect`) to a raw peer with `identity`.
async fn initiator_channel(identity: [u8; 32]) -> (ChannelHandle, Raw) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secret = LinkSecretKey::generate(&mut rand::rng());
    let link_key = secret.public();
    let config = ChannelConfig::default();
    let (chan, peer) = tokio::join!(
        connect(addr, identity, link_key, &config),
        Raw::accept(&listener, identity, &secret),
    );
    (chan.unwrap(), peer)
}

#[tokio::test]
async fn a_create_toward_the_link_initiator_closes_the_channel() {
    let (chan, mut peer) = initiator_channel([5u8; 32]).await;
    let (mine, mut rx) = chan.open_circuit().await.unwrap();
    chan.send(Cell::with_body(mine, ChanCmd::Create, &[0; CELL_BODY_LEN]))
        .await
        .unwrap();
    let (_, closed) = peer.read(|c| c.circ_id() == Some(mine)).await;
    assert!(!closed);
    // The relay side answers on our circuit: delivered.
    peer.send(&[raw_cell(mine, ChanCmd::Created, 9)]).await;
    let got = rx.recv().await.unwrap();
    assert_eq!(got.cmd(), ChanCmd::Created);
    assert_eq!(got.body(), &[9; CELL_BODY_LEN]);
    // Then it tries to create a circuit toward us: the channel closes, and with it every
    // circuit on it.
    peer.send(&[raw_cell(id(LinkSide::Responder), ChanCmd::Create, 0)])
        .await;
    assert!(
        rx.recv().await.is_none(),
        "the circuit outlived its channel"
    );
    assert!(chan.is_closed());
    peer.assert_closed("a CREATE toward the link initiator")
        .await;
}

#[tokio::test]
async fn a_relay_cell_for_an_unknown_circuit_closes_an_initiator_channel_too() {
    let (chan, mut peer) = initiator_channel([6u8; 32]).await;
    let (_mine, mut rx) = chan.open_circuit().await.unwrap();
    peer.send(&[raw_cell(id(LinkSide::Initiator), ChanCmd::Relay, 1)])
        .await;
    assert!(rx.recv().await.is_none(), "the channel stayed open");
    peer.assert_closed("a RELAY cell for an unknown circuit")
        .await;
}
