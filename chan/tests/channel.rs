//! Channels over real loopback TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use onionvpn_chan::{accept, connect, ChanError, ChannelConfig, IncomingCreate};
use onionvpn_proto::cell::{Cell, ChanCmd, DestroyReason};
use onionvpn_proto::consts::CELL_BODY_LEN;
use onionvpn_proto::link::LinkSecretKey;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

struct TestRelay {
    addr: std::net::SocketAddr,
    identity: [u8; 32],
    link_key: [u8; 32],
    creates: mpsc::Receiver<IncomingCreate>,
}

async fn relay(config: ChannelConfig) -> TestRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secret = LinkSecretKey::generate(&mut rand::rng());
    let link_key = secret.public();
    let identity = [7u8; 32];
    let (tx, creates) = mpsc::channel(16);
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let _ = accept(sock, identity, &secret, &config, tx.clone()).await;
        }
    });
    TestRelay {
        addr,
        identity,
        link_key,
        creates,
    }
}

fn body_with(n: u32) -> [u8; CELL_BODY_LEN] {
    let mut b = [0u8; CELL_BODY_LEN];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[CELL_BODY_LEN - 1] = 0xee;
    b
}

#[tokio::test]
async fn cells_flow_both_ways_on_a_circuit() {
    let config = ChannelConfig::default();
    let mut r = relay(config.clone()).await;
    let chan = connect(r.addr, r.identity, r.link_key, &config)
        .await
        .unwrap();
    assert_eq!(chan.peer_identity(), Some(r.identity));
    let (id, mut rx) = chan.open_circuit().await.unwrap();
    chan.send(Cell::with_body(id, ChanCmd::Create, &body_with(0)))
        .await
        .unwrap();
    let mut inc = r.creates.recv().await.unwrap();
    assert_eq!(inc.cell.cmd(), ChanCmd::Create);
    assert_eq!(inc.cell.circ_id(), Some(id));

    const N: u32 = 5000;
    let relay_side = inc.channel.clone();
    let echo = tokio::spawn(async move {
        for i in 0..N {
            let cell = inc.rx.recv().await.unwrap();
            assert_eq!(cell.body(), &body_with(i), "cell {i} intact and in order");
            relay_side
                .send(Cell::with_body(id, ChanCmd::Relay, &body_with(i + 1)))
                .await
                .unwrap();
        }
    });
    let sender = chan.clone();
    tokio::spawn(async move {
        for i in 0..N {
            sender
                .send(Cell::with_body(id, ChanCmd::Relay, &body_with(i)))
                .await
                .unwrap();
        }
    });
    for i in 0..N {
        let cell = rx.recv().await.unwrap();
        assert_eq!(cell.cmd(), ChanCmd::Relay);
        assert_eq!(cell.body(), &body_with(i + 1));
    }
    echo.await.unwrap();
}

#[tokio::test]
async fn a_relay_without_the_expected_link_key_is_refused() {
    let config = ChannelConfig::default();
    let r = relay(config.clone()).await;
    let mut wrong = r.link_key;
    wrong[0] ^= 1;
    let err = connect(r.addr, r.identity, wrong, &config)
        .await
        .unwrap_err();
    assert!(matches!(err, ChanError::Link(_) | ChanError::Eof), "{err}");
    // The right identity with a different prologue (identity) fails too.
    let err = connect(r.addr, [8u8; 32], r.link_key, &config)
        .await
        .unwrap_err();
    assert!(matches!(err, ChanError::Link(_) | ChanError::Eof), "{err}");
}

#[tokio::test]
async fn a_circuit_that_does_not_keep_up_is_destroyed_not_the_channel() {
    let config = ChannelConfig {
        circuit_queue: 8,
        ..ChannelConfig::default()
    };
    let mut r = relay(config.clone()).await;
    let chan = connect(r.addr, r.identity, r.link_key, &config)
        .await
        .unwrap();
    let (slow, mut slow_rx) = chan.open_circuit().await.unwrap();
    chan.send(Cell::with_body(slow, ChanCmd::Create, &body_with(0)))
        .await
        .unwrap();
    let _slow_in = r.creates.recv().await.unwrap(); // never read
    for i in 0..20 {
        chan.send(Cell::with_body(slow, ChanCmd::Relay, &body_with(i)))
            .await
            .unwrap();
    }
    let cell = slow_rx.recv().await.unwrap();
    assert_eq!(cell.cmd(), ChanCmd::Destroy);
    assert_eq!(
        cell.as_destroy().unwrap().reason,
        DestroyReason::ResourceLimit
    );

    // Another circuit on the same channel still works.
    let (ok, _ok_rx) = chan.open_circuit().await.unwrap();
    chan.send(Cell::with_body(ok, ChanCmd::Create, &body_with(1)))
        .await
        .unwrap();
    let inc = r.creates.recv().await.unwrap();
    assert_eq!(inc.cell.circ_id(), Some(ok));
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_closes_only_that_connection() {
    use tokio::io::AsyncWriteExt;
    let config = ChannelConfig::default();
    let r = relay(config.clone()).await;
    let mut sock = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    sock.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    drop(sock);
    // The relay still accepts a proper channel afterwards.
    let chan = connect(r.addr, r.identity, r.link_key, &config)
        .await
        .unwrap();
    assert!(!chan.is_closed());
}

#[tokio::test]
async fn batches_and_single_cells_keep_their_order_even_above_the_queue_size() {
    let config = ChannelConfig {
        outgoing_queue: 16,
        ..ChannelConfig::default()
    };
    let mut r = relay(config.clone()).await;
    let chan = connect(r.addr, r.identity, r.link_key, &config)
        .await
        .unwrap();
    let (id, _rx) = chan.open_circuit().await.unwrap();
    chan.send(Cell::with_body(id, ChanCmd::Create, &body_with(0)))
        .await
        .unwrap();
    let mut inc = r.creates.recv().await.unwrap();
    let mut n = 0u32;
    for size in [1usize, 100, 3, 16, 17, 0, 64, 200] {
        let batch: Vec<Cell> = (0..size)
            .map(|i| Cell::with_body(id, ChanCmd::Relay, &body_with(n + i as u32)))
            .collect();
        n += size as u32;
        chan.send_batch(batch).await.unwrap();
        chan.send(Cell::with_body(id, ChanCmd::Relay, &body_with(n)))
            .await
            .unwrap();
        n += 1;
    }
    for i in 0..n {
        let cell = inc.rx.recv().await.unwrap();
        assert_eq!(cell.body(), &body_with(i), "cell {i} in order");
    }
    assert!(inc.rx.try_recv().is_err());
    assert_eq!(inc.rx.len(), 0);
}
