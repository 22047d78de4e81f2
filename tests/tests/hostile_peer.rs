//! A peer that sends garbage, truncated or out-of-context cells (for a circuit never opened
//! on the link) is cut off, while transfers
//! on other circuits through the same relays finish intact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use onionvpn_proto::cell::{ChanCmd, CircId, LinkSide};
use onionvpn_proto::consts::{CELL_BODY_LEN, CELL_LEN};
use onionvpn_tests::http::{content_sha256, get, hex};
use onionvpn_tests::rawlink::RawLink;
use onionvpn_tests::{socksc, LocalNet, LocalNetConfig};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

fn cell(circ: u32, cmd: u8) -> [u8; CELL_LEN] {
    let mut c = [0u8; CELL_LEN];
    c[..4].copy_from_slice(&circ.to_be_bytes());
    c[4] = cmd;
    c
}

/// A circuit id a client may pick (initiator side).
fn client_circ_id() -> u32 {
    CircId::from_random(rand::rng().random::<u32>(), LinkSide::Initiator)
        .unwrap()
        .get()
}

async fn assert_cut_off(l: &mut RawLink, what: &str) {
    let (_, closed) = l.read_until_closed(LIMIT).await;
    assert!(closed, "relay kept the link open after {what}");
}

async fn attack(addr: std::net::SocketAddr, id: [u8; 32], link_key: [u8; 32]) {
    // Garbage instead of a link handshake.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let junk: Vec<u8> = (0..600).map(|_| rand::rng().random()).collect();
    let _ = s.write_all(&junk).await;
    let mut b = Vec::new();
    let r = tokio::time::timeout(LIMIT, s.read_to_end(&mut b)).await;
    assert!(r.is_ok(), "relay kept a garbage connection open");

    // A valid link, then a cell with a command no cell has.
    let mut l = RawLink::connect(addr, id, link_key).await.unwrap();
    l.send_raw_cells(&[cell(client_circ_id(), 0xEE)])
        .await
        .unwrap();
    assert_cut_off(&mut l, "an unknown cell command").await;

    // A valid link, then a cell with circuit id 0 that is not padding.
    let mut l = RawLink::connect(addr, id, link_key).await.unwrap();
    l.send_raw_cells(&[cell(0, 3)]).await.unwrap();
    assert_cut_off(&mut l, "a RELAY cell on circuit 0").await;

    // A valid link, then a truncated frame and an early close: nothing to answer;
    // the relay must just forget the connection.
    let mut l = RawLink::connect(addr, id, link_key).await.unwrap();
    l.send_truncated(&[cell(client_circ_id(), 3)], 100)
        .await
        .unwrap();
    l.sock.shutdown().await.unwrap();
    let (_, closed) = l.read_until_closed(LIMIT).await;
    assert!(closed, "relay kept a truncated link open after EOF");

    // A valid link, then a frame whose length field is valid but whose body is garbage
    // (fails authentication).
    let mut l = RawLink::connect(addr, id, link_key).await.unwrap();
    let mut frame = ((CELL_LEN + 16) as u16).to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(0x41u8, CELL_LEN + 16));
    l.sock.write_all(&frame).await.unwrap();
    assert_cut_off(&mut l, "a frame that fails authentication").await;

    // Out of context: RELAY, RELAY_EARLY, CREATED or DESTROY for a circuit that was never
    // opened on the link cut the link off, each on its own link.
    for cmd in [
        ChanCmd::Relay,
        ChanCmd::RelayEarly,
        ChanCmd::Created,
        ChanCmd::Destroy,
    ] {
        let mut l = RawLink::connect(addr, id, link_key).await.unwrap();
        l.send_raw_cells(&[cell(client_circ_id(), cmd as u8)])
            .await
            .unwrap();
        assert_cut_off(&mut l, &format!("{cmd:?} for a circuit never opened")).await;
    }

    // A CREATE whose handshake is garbage is refused (DESTROY on that circuit, or the link
    // closed); nothing but DESTROY ever comes back.
    let mut l = RawLink::connect(addr, id, link_key).await.unwrap();
    let circ = client_circ_id();
    let mut create = cell(circ, 1);
    create[5..5 + CELL_BODY_LEN].fill(0x5A);
    l.send_raw_cells(&[create]).await.unwrap();
    let (cells, closed) = l.read_until_closed(Duration::from_secs(3)).await;
    let destroyed = cells
        .iter()
        .any(|c| c[..4] == circ.to_be_bytes() && c[4] == ChanCmd::Destroy as u8);
    assert!(
        destroyed || closed,
        "a garbage CREATE was neither destroyed nor cut off"
    );
    assert!(
        cells
            .iter()
            .all(|c| c[4] == ChanCmd::Destroy as u8 || c[4] == 0),
        "the relay answered a garbage CREATE with something other than DESTROY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_and_other_circuits_finish() {
    let net = LocalNet::start(LocalNetConfig::default()).await.unwrap();
    let socks = net.socks_addr().unwrap();
    let http = net.http_addr().unwrap();
    let host = http.ip().to_string();

    // Honest transfers on several circuits (distinct isolation keys) for the whole test.
    let len: u64 = 8 * 1024 * 1024;
    let mut transfers = tokio::task::JoinSet::new();
    for i in 0..4 {
        let host = host.clone();
        transfers.spawn(async move {
            let user = format!("honest{i}");
            let mut s = socksc::connect(socks, &host, http.port(), Some((&user, "p")))
                .await
                .unwrap();
            get(&mut s, "t", &format!("/slow/{len}"), true)
                .await
                .unwrap()
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let targets: Vec<_> = net
        .relays()
        .map(|r| (r.or_addr(), r.identity(), r.descriptor().body().link_key.0))
        .collect();
    let mut attacks = tokio::task::JoinSet::new();
    for (addr, id, link_key) in targets {
        attacks.spawn(attack(addr, id, link_key));
    }
    while let Some(r) = attacks.join_next().await {
        r.unwrap();
    }

    // Every honest transfer finished intact.
    let want = hex(&content_sha256(len));
    let mut n = 0;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(120), transfers.join_next())
        .await
        .expect("honest transfer hung")
    {
        let d = r.unwrap();
        assert_eq!(d.len, len);
        assert_eq!(hex(&d.sha256), want);
        n += 1;
    }
    assert_eq!(n, 4);
    // The relays are still serving: a new stream works.
    let mut s = socksc::connect(socks, &host, http.port(), Some(("after", "p")))
        .await
        .unwrap();
    let d = get(&mut s, "t", "/bytes/65536", true).await.unwrap();
    assert_eq!(hex(&d.sha256), hex(&content_sha256(65536)));
    net.shutdown().await;
}
