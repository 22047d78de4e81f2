#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The link (Noise NK + framed cells) through its public, sans-IO API.

use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::link::{
    FrameDecoder, HandshakeStage, Link, LinkError, LinkInitiator, LinkResponder, LinkSecretKey,
    MAX_CELLS_PER_FRAME, MAX_FRAME_LEN,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A seeded RNG: every run sees the same keys, splits and cells.
type TestRng = StdRng;

fn below(rng: &mut TestRng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

const ID: [u8; 32] = [0x11; 32];

/// Feeds `bytes` to `dec` in random-size pieces, alternating the two feeding APIs, and
/// returns every frame body in order.
fn split_feed(rng: &mut TestRng, dec: &mut FrameDecoder, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let want = 1 + below(rng, 6000);
        if below(rng, 2) == 0 {
            let buf = dec.read_buf();
            let n = want.min(buf.len()).min(bytes.len() - pos);
            buf[..n].copy_from_slice(&bytes[pos..pos + n]);
            dec.commit(n).unwrap();
            pos += n;
        } else {
            let n = want
                .min(dec.capacity() - dec.buffered())
                .min(bytes.len() - pos);
            dec.push(&bytes[pos..pos + n]).unwrap();
            pos += n;
        }
        while let Some(f) = dec.next_frame().unwrap() {
            frames.push(f.to_vec());
        }
    }
    assert_eq!(dec.buffered(), 0, "bytes left over");
    frames
}

/// Runs a handshake through frame decoders; returns (initiator link, responder link).
fn handshake(rng: &mut TestRng) -> (Link, Link) {
    let secret = LinkSecretKey::generate(rng);
    let (init, f1) = LinkInitiator::new(rng, ID, secret.public()).unwrap();
    let resp = LinkResponder::new(rng, ID, &secret).unwrap();
    let mut rdec = FrameDecoder::new();
    rdec.push(&f1).unwrap();
    let (r, f2) = resp
        .read_frame(rdec.next_frame().unwrap().unwrap())
        .unwrap();
    let mut idec = FrameDecoder::new();
    idec.push(&f2).unwrap();
    let i = init
        .read_frame(idec.next_frame().unwrap().unwrap())
        .unwrap();
    (i, r)
}

fn numbered_cells(rng: &mut TestRng, n: usize) -> Vec<[u8; CELL_LEN]> {
    (0..n)
        .map(|i| {
            let mut c = [0u8; CELL_LEN];
            rand_core::Rng::fill_bytes(rng, &mut c);
            c[..8].copy_from_slice(&(i as u64).to_be_bytes());
            c
        })
        .collect()
}

/// Sends `cells` from `tx` to `rx` in random batch sizes, through a byte stream cut at
/// random points, and checks they arrive intact and in order.
fn transfer(
    rng: &mut TestRng,
    tx: &mut Link,
    rx: &mut Link,
    cells: &[[u8; CELL_LEN]],
    prefix: &[u8],
) {
    let mut wire = prefix.to_vec();
    let mut i = 0;
    while i < cells.len() {
        let k = (1 + below(rng, 200)).min(cells.len() - i);
        tx.encrypt_cells(&cells[i..i + k], &mut wire).unwrap();
        i += k;
    }
    let mut dec = FrameDecoder::new();
    let frames = split_feed(rng, &mut dec, &wire);
    let mut got = Vec::with_capacity(cells.len());
    for f in &frames {
        let k = rx.decrypt_frame(f, &mut got).unwrap();
        assert!((1..=MAX_CELLS_PER_FRAME).contains(&k));
    }
    assert_eq!(got.len(), cells.len());
    assert!(got == cells, "cells differ");
}

#[test]
fn handshake_then_10k_cells_each_way_with_random_splits() {
    let mut rng = StdRng::seed_from_u64(7);
    let secret = LinkSecretKey::generate(&mut rng);
    let (init, f1) = LinkInitiator::new(&mut rng, ID, secret.public()).unwrap();
    let resp = LinkResponder::new(&mut rng, ID, &secret).unwrap();

    // Message 1 arrives one byte at a time.
    let mut rdec = FrameDecoder::new();
    let mut m1 = None;
    for b in &f1 {
        rdec.push(&[*b]).unwrap();
        if let Some(f) = rdec.next_frame().unwrap() {
            m1 = Some(f.to_vec());
        }
    }
    let (mut r, f2) = resp.read_frame(&m1.unwrap()).unwrap();
    assert_eq!(r.version(), 1);
    assert!(!r.is_initiator());

    // The responder pipelines cells right behind message 2: one decoder carries both.
    let down = numbered_cells(&mut rng, 10_000);
    let mut wire = f2.clone();
    r.encrypt_cells(&down[..100], &mut wire).unwrap();
    let mut idec = FrameDecoder::new();
    let frames = split_feed(&mut rng, &mut idec, &wire);
    let mut i = init.read_frame(&frames[0]).unwrap();
    assert_eq!(i.version(), 1);
    assert!(i.is_initiator());
    assert_eq!(i.handshake_hash(), r.handshake_hash());
    let mut got = Vec::new();
    for f in &frames[1..] {
        i.decrypt_frame(f, &mut got).unwrap();
    }
    assert!(got == down[..100]);

    transfer(&mut rng, &mut r, &mut i, &down[100..], &[]);
    let up = numbered_cells(&mut rng, 10_000);
    transfer(&mut rng, &mut i, &mut r, &up, &[]);
}

#[test]
fn batches_split_at_64_cells() {
    let mut rng = StdRng::seed_from_u64(8);
    let (mut i, mut r) = handshake(&mut rng);
    let cells = numbered_cells(&mut rng, 2 * MAX_CELLS_PER_FRAME + 1);
    let mut wire = Vec::new();
    i.encrypt_cells(&cells, &mut wire).unwrap();
    // Three frames exceed the decoder's two-frame buffer: feed half, drain, feed the rest.
    let mut dec = FrameDecoder::new();
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    for part in wire.chunks(wire.len() / 2 + 1) {
        dec.push(part).unwrap();
        while let Some(f) = dec.next_frame().unwrap() {
            sizes.push(f.len());
            r.decrypt_frame(f, &mut got).unwrap();
        }
    }
    assert_eq!(sizes, vec![MAX_FRAME_LEN, MAX_FRAME_LEN, CELL_LEN + 16]);
    assert!(got == cells);
    // No cells, no bytes.
    let before = wire.len();
    i.encrypt_cells(&[], &mut wire).unwrap();
    assert_eq!(wire.len(), before);
}

#[test]
fn wrong_link_key_fails_the_handshake() {
    let mut rng = StdRng::seed_from_u64(9);
    let secret = LinkSecretKey::generate(&mut rng);
    let other = LinkSecretKey::generate(&mut rng);
    let (_init, f1) = LinkInitiator::new(&mut rng, ID, other.public()).unwrap();
    let resp = LinkResponder::new(&mut rng, ID, &secret).unwrap();
    let err = resp.read_frame(&f1[2..]).unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::HandshakeAuth {
                stage: HandshakeStage::Message1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_identity_in_prologue_fails_the_handshake() {
    let mut rng = StdRng::seed_from_u64(10);
    let secret = LinkSecretKey::generate(&mut rng);
    let (_init, f1) = LinkInitiator::new(&mut rng, [0x22; 32], secret.public()).unwrap();
    let resp = LinkResponder::new(&mut rng, ID, &secret).unwrap();
    let err = resp.read_frame(&f1[2..]).unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::HandshakeAuth {
                stage: HandshakeStage::Message1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn altered_message_2_fails_the_handshake() {
    let mut rng = StdRng::seed_from_u64(11);
    let secret = LinkSecretKey::generate(&mut rng);
    let (init, f1) = LinkInitiator::new(&mut rng, ID, secret.public()).unwrap();
    let resp = LinkResponder::new(&mut rng, ID, &secret).unwrap();
    let (_r, mut f2) = resp.read_frame(&f1[2..]).unwrap();
    let last = f2.len() - 1;
    f2[last] ^= 1;
    let err = init.read_frame(&f2[2..]).unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::HandshakeAuth {
                stage: HandshakeStage::Message2
            }
        ),
        "{err:?}"
    );
}

#[test]
fn short_or_long_handshake_messages_are_typed_errors() {
    let mut rng = StdRng::seed_from_u64(12);
    let secret = LinkSecretKey::generate(&mut rng);
    let resp = LinkResponder::new(&mut rng, ID, &secret).unwrap();
    assert!(matches!(
        resp.read_frame(&[0u8; 40]),
        Err(LinkError::HandshakeLength { .. })
    ));
    let (init, _) = LinkInitiator::new(&mut rng, ID, secret.public()).unwrap();
    assert!(matches!(
        init.read_frame(&[0u8; 50]),
        Err(LinkError::HandshakeLength { .. })
    ));
}

#[test]
fn version_negotiation() {
    let mut rng = StdRng::seed_from_u64(13);
    let secret = LinkSecretKey::generate(&mut rng);
    // No common version: typed error at the responder.
    let (_i, f1) = LinkInitiator::with_versions(&mut rng, ID, secret.public(), &[2, 3]).unwrap();
    let resp = LinkResponder::new(&mut rng, ID, &secret).unwrap();
    match resp.read_frame(&f1[2..]) {
        Err(LinkError::NoCommonVersion { offered }) => assert_eq!(offered, vec![2, 3]),
        other => panic!("{other:?}"),
    }
    // The highest common version wins.
    let (i, f1) = LinkInitiator::with_versions(&mut rng, ID, secret.public(), &[1, 2, 9]).unwrap();
    let resp = LinkResponder::with_versions(&mut rng, ID, &secret, &[1, 2, 3]).unwrap();
    let (r, f2) = resp.read_frame(&f1[2..]).unwrap();
    assert_eq!(r.version(), 2);
    assert_eq!(i.read_frame(&f2[2..]).unwrap().version(), 2);
    // An empty offer is refused before anything is sent.
    assert!(matches!(
        LinkInitiator::with_versions(&mut rng, ID, secret.public(), &[]),
        Err(LinkError::MalformedVersions { .. })
    ));
}

#[test]
fn flipped_byte_in_a_transport_frame_is_a_typed_error_and_closes_the_link() {
    let mut rng = StdRng::seed_from_u64(14);
    let (mut i, mut r) = handshake(&mut rng);
    let cells = numbered_cells(&mut rng, 3);
    for pos in [2usize, 700, 3 * CELL_LEN + 2 + 15] {
        let (mut i2, mut r2) = handshake(&mut rng);
        let mut wire = Vec::new();
        i2.encrypt_cells(&cells, &mut wire).unwrap();
        wire[pos] ^= 0x80;
        let mut out = Vec::new();
        let err = r2.decrypt_frame(&wire[2..], &mut out).unwrap_err();
        assert!(matches!(err, LinkError::Decrypt { .. }), "{err:?}");
        assert!(out.is_empty(), "unauthenticated cells were released");
        assert!(r2.is_failed());
        // The link refuses any further use, in both directions.
        assert!(matches!(
            r2.decrypt_frame(&wire[2..], &mut out),
            Err(LinkError::Closed)
        ));
        assert!(matches!(
            r2.encrypt_cells(&cells, &mut wire),
            Err(LinkError::Closed)
        ));
    }
    // An untouched pair still works.
    let mut wire = Vec::new();
    i.encrypt_cells(&cells, &mut wire).unwrap();
    let mut out = Vec::new();
    assert_eq!(r.decrypt_frame(&wire[2..], &mut out).unwrap(), 3);
}

#[test]
fn truncated_frames_are_typed_errors() {
    let mut rng = StdRng::seed_from_u64(15);
    let cells = numbered_cells(&mut rng, 2);
    // Cut by one byte: no longer whole cells.
    let (mut i, mut r) = handshake(&mut rng);
    let mut wire = Vec::new();
    i.encrypt_cells(&cells, &mut wire).unwrap();
    let body = &wire[2..];
    let err = r
        .decrypt_frame(&body[..body.len() - 1], &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, LinkError::PartialCell { .. }), "{err:?}");
    // Cut by one whole cell: the length is plausible, authentication fails.
    let (mut i, mut r) = handshake(&mut rng);
    let mut wire = Vec::new();
    i.encrypt_cells(&cells, &mut wire).unwrap();
    let body = &wire[2..];
    let err = r
        .decrypt_frame(&body[..body.len() - CELL_LEN], &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, LinkError::Decrypt { .. }), "{err:?}");
    // Shorter than one cell and a tag.
    let (_i, mut r) = handshake(&mut rng);
    let err = r.decrypt_frame(&[0u8; 100], &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, LinkError::FrameTooShort { len: 100 }),
        "{err:?}"
    );
    // A truncated byte stream is not an error: the decoder waits for the rest.
    let mut dec = FrameDecoder::new();
    dec.push(&wire[..wire.len() - 1]).unwrap();
    assert!(dec.next_frame().unwrap().is_none());
    dec.push(&wire[wire.len() - 1..]).unwrap();
    assert_eq!(dec.next_frame().unwrap().unwrap().len(), wire.len() - 2);
}

#[test]
fn oversize_and_zero_len_are_typed_errors() {
    let mut dec = FrameDecoder::new();
    dec.push(&(MAX_FRAME_LEN as u16 + 1).to_be_bytes()).unwrap();
    let err = dec.next_frame().unwrap_err();
    assert!(
        matches!(err, LinkError::FrameTooLong { len, max: MAX_FRAME_LEN } if len == MAX_FRAME_LEN + 1)
    );
    let mut dec = FrameDecoder::new();
    dec.push(&[0, 0]).unwrap();
    assert!(matches!(dec.next_frame(), Err(LinkError::EmptyFrame)));
    // The link checks too (65 cells do not fit in a frame).
    let mut rng = StdRng::seed_from_u64(16);
    let (_i, mut r) = handshake(&mut rng);
    let big = vec![0u8; 65 * CELL_LEN + 16];
    assert!(matches!(
        r.decrypt_frame(&big, &mut Vec::new()),
        Err(LinkError::FrameTooLong { .. })
    ));
}

#[test]
fn non_multiple_of_512_plaintext_is_a_typed_error() {
    let mut rng = StdRng::seed_from_u64(17);
    let (_i, mut r) = handshake(&mut rng);
    let frame = vec![0u8; 3 * CELL_LEN + 100 + 16];
    let err = r.decrypt_frame(&frame, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, LinkError::PartialCell { plaintext_len } if plaintext_len == 3 * CELL_LEN + 100)
    );
}

#[test]
fn replayed_or_reordered_frames_fail() {
    let mut rng = StdRng::seed_from_u64(18);
    let cells = numbered_cells(&mut rng, 4);
    // Replay.
    let (mut i, mut r) = handshake(&mut rng);
    let mut a = Vec::new();
    i.encrypt_cells(&cells, &mut a).unwrap();
    let mut out = Vec::new();
    r.decrypt_frame(&a[2..], &mut out).unwrap();
    let err = r.decrypt_frame(&a[2..], &mut out).unwrap_err();
    assert!(matches!(err, LinkError::Decrypt { .. }), "{err:?}");
    assert_eq!(out.len(), 4, "the replay added cells");
    // Reorder.
    let (mut i, mut r) = handshake(&mut rng);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    i.encrypt_cells(&cells[..2], &mut a).unwrap();
    i.encrypt_cells(&cells[2..], &mut b).unwrap();
    assert!(matches!(
        r.decrypt_frame(&b[2..], &mut Vec::new()),
        Err(LinkError::Decrypt { .. })
    ));
    // A frame reflected back to its sender fails too (each direction has its own key).
    let (mut i, _r) = handshake(&mut rng);
    let mut a = Vec::new();
    i.encrypt_cells(&cells, &mut a).unwrap();
    assert!(matches!(
        i.decrypt_frame(&a[2..], &mut Vec::new()),
        Err(LinkError::Decrypt { .. })
    ));
}

#[test]
fn decoder_buffer_is_bounded() {
    let mut dec = FrameDecoder::new();
    let cap = dec.capacity();
    assert_eq!(cap, 2 * (2 + MAX_FRAME_LEN));
    // Two whole maximum frames fit; a third byte beyond does not, until frames are taken.
    let mut frame = (MAX_FRAME_LEN as u16).to_be_bytes().to_vec();
    frame.resize(2 + MAX_FRAME_LEN, 7);
    dec.push(&frame).unwrap();
    dec.push(&frame).unwrap();
    assert!(dec.read_buf().is_empty());
    let err = dec.push(&[1]).unwrap_err();
    assert!(matches!(err, LinkError::BufferFull { .. }), "{err:?}");
    assert!(dec.commit(1).is_err());
    assert_eq!(dec.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
    dec.push(&frame[..100]).unwrap();
    assert_eq!(dec.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
    assert!(dec.next_frame().unwrap().is_none());
    assert_eq!(dec.buffered(), 100);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any batching of cells and any cutting of the byte stream delivers the same cells.
    #[test]
    fn any_batching_and_split_round_trips(
        seed in any::<u64>(),
        batches in proptest::collection::vec(1usize..150, 1..8),
        cuts in proptest::collection::vec(1usize..3000, 1..40),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut i, mut r) = handshake(&mut rng);
        let total: usize = batches.iter().sum();
        let cells = numbered_cells(&mut rng, total);
        let mut wire = Vec::new();
        let mut at = 0;
        for k in &batches {
            i.encrypt_cells(&cells[at..at + k], &mut wire).unwrap();
            at += k;
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let (mut pos, mut c) = (0, 0);
        while pos < wire.len() {
            let n = cuts[c % cuts.len()].min(wire.len() - pos);
            c += 1;
            dec.push(&wire[pos..pos + n]).unwrap();
            pos += n;
            while let Some(f) = dec.next_frame().unwrap() {
                r.decrypt_frame(f, &mut got).unwrap();
            }
        }
        prop_assert!(got == cells);
    }
}

#[test]
fn link_types_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Link>();
    assert_send::<LinkInitiator>();
    assert_send::<LinkResponder>();
    assert_send::<FrameDecoder>();
    assert_send::<LinkSecretKey>();
}
