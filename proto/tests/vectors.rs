#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Our relay crypto and handshake reproduce the vectors computed independently by
//! tools/vectors/gen_vectors.py (Python `cryptography`).

use std::time::{Duration, Instant};

use onionvpn_proto::consts::{CELL_BODY_LEN, RELAY_TAG_LEN};
use onionvpn_proto::crypto::handshake::{
    client_handshake_with_ephemeral, relay_handshake_accept, OnionSecretKey, ReplayCache,
};
use onionvpn_proto::crypto::layer::{
    ClientCircuitCrypto, HopKeys, LayerState, Recognized, RelayCircuitCrypto,
};
use serde::Deserialize;

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0);
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    unhex(s).try_into().unwrap()
}

#[derive(Deserialize)]
struct RelayVectors {
    cell_body_len: usize,
    hops: Vec<String>,
    cells: Vec<CellVector>,
    single_layer: SingleLayer,
}

#[derive(Deserialize)]
struct CellVector {
    direction: String,
    hop: usize,
    message: String,
    wire: String,
    per_hop: Vec<String>,
}

#[derive(Deserialize)]
struct SingleLayer {
    k: String,
    u: String,
    counter: u64,
    prev: String,
    input: String,
    wrapped: String,
}

#[test]
fn relay_crypto_vectors() {
    let v: RelayVectors =
        serde_json::from_str(include_str!("../testdata/relay_crypto_vectors.json")).unwrap();
    assert_eq!(v.cell_body_len, CELL_BODY_LEN);
    let keys: Vec<HopKeys> = v
        .hops
        .iter()
        .map(|h| HopKeys::from_bytes(&arr(h)))
        .collect();
    let mut client = ClientCircuitCrypto::new();
    for k in &keys {
        client.add_hop(k).unwrap();
    }
    let mut relays: Vec<RelayCircuitCrypto> =
        keys.iter().map(RelayCircuitCrypto::from_keys).collect();
    assert!(v.cells.len() >= 16);
    for (i, cell) in v.cells.iter().enumerate() {
        let msg = unhex(&cell.message);
        let mut body = [0u8; CELL_BODY_LEN];
        body[RELAY_TAG_LEN..].copy_from_slice(&msg);
        match cell.direction.as_str() {
            "forward" => {
                client.encrypt_to(cell.hop, &mut body).unwrap();
                assert_eq!(body[..], unhex(&cell.wire)[..], "cell {i}: client output");
                for (j, relay) in relays.iter_mut().enumerate().take(cell.hop + 1) {
                    let r = relay.decrypt_forward(&mut body).unwrap();
                    assert_eq!(body[..], unhex(&cell.per_hop[j])[..], "cell {i}: hop {j}");
                    let want = if j == cell.hop {
                        Recognized::ForMe
                    } else {
                        Recognized::Forward
                    };
                    assert_eq!(r, want, "cell {i}: hop {j}");
                }
                assert_eq!(&body[RELAY_TAG_LEN..], &msg[..]);
            }
            "backward" => {
                relays[cell.hop].originate_backward(&mut body).unwrap();
                assert_eq!(body[..], unhex(&cell.per_hop[0])[..], "cell {i}: origin");
                for (n, j) in (0..cell.hop).rev().enumerate() {
                    relays[j].encrypt_backward(&mut body).unwrap();
                    assert_eq!(
                        body[..],
                        unhex(&cell.per_hop[n + 1])[..],
                        "cell {i}: hop {j}"
                    );
                }
                assert_eq!(body[..], unhex(&cell.wire)[..], "cell {i}: to client");
                assert_eq!(client.decrypt(&mut body).unwrap(), cell.hop, "cell {i}");
                assert_eq!(&body[RELAY_TAG_LEN..], &msg[..]);
            }
            other => panic!("unknown direction {other}"),
        }
    }

    // both ends of every layer end with the same chain value
    for (i, relay) in relays.iter_mut().enumerate() {
        let (cf, cb) = client.layers_mut_for_tests(i).unwrap();
        let (cf, cb) = (*cf.chain(), *cb.chain());
        let (rf, rb) = relay.layers_mut_for_tests();
        assert_eq!(&cf, rf.chain(), "hop {i} forward chain");
        assert_eq!(&cb, rb.chain(), "hop {i} backward chain");
    }

    let s = &v.single_layer;
    let input: [u8; CELL_BODY_LEN] = arr(&s.input);
    let mut layer = LayerState::new(&arr(&s.k), &arr(&s.u));
    layer.set_counter_for_tests(s.counter);
    layer.set_chain_for_tests(&arr(&s.prev));
    let mut body = input;
    layer.wrap(&mut body).unwrap();
    assert_eq!(body[..], unhex(&s.wrapped)[..]);
    assert_eq!(layer.chain()[..], input[..RELAY_TAG_LEN]);
    let mut peer = LayerState::new(&arr(&s.k), &arr(&s.u));
    peer.set_counter_for_tests(s.counter);
    peer.set_chain_for_tests(&arr(&s.prev));
    assert_eq!(peer.peel(&mut body), Some(false));
    assert_eq!(body, input);
}

#[derive(Deserialize)]
struct HandshakeVectors {
    vectors: Vec<HandshakeVector>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct HandshakeVector {
    name: String,
    x: String,
    y: String,
    b: String,
    id: String,
    B: String,
    ext_c: String,
    ext_s: String,
    client_handshake: String,
    server_handshake: String,
    hop_keys: String,
}

#[test]
fn handshake_vectors() {
    let v: HandshakeVectors =
        serde_json::from_str(include_str!("../testdata/handshake_vectors.json")).unwrap();
    assert!(v.vectors.len() >= 3);
    for hv in &v.vectors {
        let id: [u8; 32] = arr(&hv.id);
        let b = OnionSecretKey::from_bytes(&arr(&hv.b));
        assert_eq!(b.public().0, arr::<32>(&hv.B), "{}: B", hv.name);
        let (client, msg) =
            client_handshake_with_ephemeral(&arr(&hv.x), &id, &b.public(), &unhex(&hv.ext_c))
                .unwrap();
        assert_eq!(
            msg,
            unhex(&hv.client_handshake),
            "{}: CLIENT_HANDSHAKE",
            hv.name
        );
        let mut replay = ReplayCache::new(16, Duration::from_secs(60));
        let pending = relay_handshake_accept(&id, &[b], &mut replay, Instant::now(), &msg).unwrap();
        assert_eq!(pending.client_extensions(), &unhex(&hv.ext_c)[..]);
        let (reply, relay_keys) = pending
            .reply_with_ephemeral(&arr(&hv.y), &unhex(&hv.ext_s))
            .unwrap();
        assert_eq!(
            reply,
            unhex(&hv.server_handshake),
            "{}: SERVER_HANDSHAKE",
            hv.name
        );
        assert_eq!(
            relay_keys.to_bytes()[..],
            unhex(&hv.hop_keys)[..],
            "{}: keys",
            hv.name
        );
        let (ext_s, client_keys) = client.finish(&reply).unwrap();
        assert_eq!(ext_s, unhex(&hv.ext_s));
        assert_eq!(client_keys.to_bytes()[..], unhex(&hv.hop_keys)[..]);
    }
}
