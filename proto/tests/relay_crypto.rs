#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Relay crypto through a client and three relays: delivery, leaky pipe, tagging
//! resistance, dropped/replayed/reordered cells, and the chain that makes one tampered
//! cell break every later one (so a colluding recipient cannot keep the circuit alive).

use onionvpn_proto::consts::{CELL_BODY_LEN, RELAY_TAG_LEN};
use onionvpn_proto::crypto::layer::{
    ClientCircuitCrypto, HopKeys, LayerError, Recognized, RelayCircuitCrypto,
};
use proptest::prelude::*;

type Body = [u8; CELL_BODY_LEN];

/// Deterministic key material (splitmix64) so that every run is the same.
fn keys(seed: u64) -> HopKeys {
    let mut s = seed;
    let mut bytes = [0u8; 128];
    for chunk in bytes.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    HopKeys::from_bytes(&bytes)
}

struct Circuit {
    client: ClientCircuitCrypto,
    relays: Vec<RelayCircuitCrypto>,
}

impl Circuit {
    fn new(seed: u64, hops: usize) -> Self {
        let mut client = ClientCircuitCrypto::new();
        let mut relays = Vec::new();
        for i in 0..hops {
            let k = keys(seed * 16 + i as u64);
            client.add_hop(&k).unwrap();
            relays.push(RelayCircuitCrypto::from_keys(&k));
        }
        Self { client, relays }
    }

    /// Runs a forward cell through relays `from..`; returns the hop that recognized it,
    /// or None if it fell off the end (circuit torn down). `tamper(i, body)` runs on the
    /// cell as relay i receives it.
    fn forward_from(
        &mut self,
        from: usize,
        body: &mut Body,
        mut tamper: impl FnMut(usize, &mut Body),
    ) -> Option<usize> {
        for i in from..self.relays.len() {
            tamper(i, body);
            if self.relays[i].decrypt_forward(body).unwrap() == Recognized::ForMe {
                return Some(i);
            }
        }
        None
    }

    fn send_forward(&mut self, hop: usize, msg: &Body) -> (Option<usize>, Body) {
        let mut body = *msg;
        self.client.encrypt_to(hop, &mut body).unwrap();
        let got = self.forward_from(0, &mut body, |_, _| {});
        (got, body)
    }

    /// Hop `hop` originates `msg`; relays hop-1..0 wrap it; `tamper(i, body)` runs on what
    /// relay i emits. Returns the client's verdict.
    fn send_backward(
        &mut self,
        hop: usize,
        msg: &Body,
        mut tamper: impl FnMut(usize, &mut Body),
    ) -> (Result<usize, LayerError>, Body) {
        let mut body = *msg;
        self.relays[hop].originate_backward(&mut body).unwrap();
        tamper(hop, &mut body);
        for i in (0..hop).rev() {
            self.relays[i].encrypt_backward(&mut body).unwrap();
            tamper(i, &mut body);
        }
        let r = self.client.decrypt(&mut body);
        (r, body)
    }
}

fn message(i: u64) -> Body {
    let mut b = [0u8; CELL_BODY_LEN];
    for (j, x) in b.iter_mut().enumerate() {
        *x = (i as usize * 131 + j * 7) as u8;
    }
    b
}

fn flip(body: &mut Body, bit: usize) {
    body[bit / 8] ^= 1 << (bit % 8);
}

#[test]
fn round_trip_three_hops_both_directions_leaky_pipe() {
    let mut c = Circuit::new(1, 3);
    for i in 0..3000u64 {
        let hop = (i % 3) as usize;
        let msg = message(i);
        let (got, body) = c.send_forward(hop, &msg);
        assert_eq!(got, Some(hop), "forward cell {i} to hop {hop}");
        assert_eq!(&body[RELAY_TAG_LEN..], &msg[RELAY_TAG_LEN..]);
        assert_eq!(&body[..RELAY_TAG_LEN], &[0u8; RELAY_TAG_LEN]);

        let from = ((i * 7 + 1) % 3) as usize;
        let (r, body) = c.send_backward(from, &msg, |_, _| {});
        assert_eq!(r, Ok(from), "backward cell {i} from hop {from}");
        assert_eq!(&body[RELAY_TAG_LEN..], &msg[RELAY_TAG_LEN..]);
    }
}

#[test]
fn wire_bytes_differ_at_every_hop() {
    // Constant size, no visible constant: the T field is never R on the wire.
    let mut c = Circuit::new(2, 3);
    let mut body = message(0);
    c.client.encrypt_to(2, &mut body).unwrap();
    assert_ne!(&body[..RELAY_TAG_LEN], &[0u8; RELAY_TAG_LEN]);
    assert_eq!(
        c.relays[0].decrypt_forward(&mut body).unwrap(),
        Recognized::Forward
    );
    assert_ne!(&body[..RELAY_TAG_LEN], &[0u8; RELAY_TAG_LEN]);
}

#[test]
fn exit_cell_that_nobody_recognizes_falls_off_the_end() {
    let mut c = Circuit::new(3, 3);
    let mut body = message(1); // never encrypted by the client
    assert_eq!(c.forward_from(0, &mut body, |_, _| {}), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A bit flipped after hop 1 in a cell for the exit: hop 2 and the exit do not
    /// recognize it, also when the exit (colluding with hop 1) flips it back.
    #[test]
    fn tagging_forward_to_exit(bit in 0..CELL_BODY_LEN * 8, undo in any::<bool>(), seed in 0u64..1000) {
        let mut c = Circuit::new(seed, 3);
        // a few good cells first so counters are not all zero
        for i in 0..3 { prop_assert_eq!(c.send_forward(2, &message(i)).0, Some(2)); }
        let mut body = message(99);
        c.client.encrypt_to(2, &mut body).unwrap();
        prop_assert_eq!(c.relays[0].decrypt_forward(&mut body).unwrap(), Recognized::Forward);
        flip(&mut body, bit);
        prop_assert_eq!(c.relays[1].decrypt_forward(&mut body).unwrap(), Recognized::Forward);
        if undo { flip(&mut body, bit); }
        prop_assert_eq!(c.relays[2].decrypt_forward(&mut body).unwrap(), Recognized::Forward);
        // nor can the content be restored: the exit's view differs from the message
        prop_assert_ne!(&body[..], &message(99)[..]);
    }

    /// A bit flipped after hop 1 in a cell for hop 2: hop 2 does not recognize it, and
    /// neither does the exit, with or without undoing the flip.
    #[test]
    fn tagging_forward_to_middle(bit in 0..CELL_BODY_LEN * 8, undo in any::<bool>(), seed in 0u64..1000) {
        let mut c = Circuit::new(seed, 3);
        let mut body = message(7);
        c.client.encrypt_to(1, &mut body).unwrap();
        prop_assert_eq!(c.relays[0].decrypt_forward(&mut body).unwrap(), Recognized::Forward);
        flip(&mut body, bit);
        prop_assert_eq!(c.relays[1].decrypt_forward(&mut body).unwrap(), Recognized::Forward);
        if undo { flip(&mut body, bit); }
        prop_assert_eq!(c.relays[2].decrypt_forward(&mut body).unwrap(), Recognized::Forward);
    }

    /// The exit originates; a bit is flipped on the exit's output and flipped back on
    /// hop 1's output (collusion). The client recognizes nothing.
    #[test]
    fn tagging_backward(bit in 0..CELL_BODY_LEN * 8, undo in any::<bool>(), seed in 0u64..1000) {
        let mut c = Circuit::new(seed, 3);
        let (r, _) = c.send_backward(2, &message(5), |i, body| {
            if i == 2 { flip(body, bit); }
            if i == 0 && undo { flip(body, bit); }
        });
        prop_assert_eq!(r, Err(LayerError::Unrecognized { layers_tried: 3 }));
    }
}

/// Cells 0..8 to the exit; hop 1 misbehaves at cell 3; returns which cells the exit
/// recognized, as the exit receives them.
fn misbehave(kind: &str) -> Vec<bool> {
    let mut c = Circuit::new(42, 3);
    let mut after_hop1 = Vec::new();
    for i in 0..8u64 {
        let mut body = message(i);
        c.client.encrypt_to(2, &mut body).unwrap();
        assert_eq!(
            c.relays[0].decrypt_forward(&mut body).unwrap(),
            Recognized::Forward
        );
        after_hop1.push(body);
    }
    let stream: Vec<Body> = match kind {
        "drop" => after_hop1
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, b)| *b)
            .collect(),
        "replay" => {
            let mut v = after_hop1[..4].to_vec();
            v.push(after_hop1[3]);
            v.extend_from_slice(&after_hop1[4..]);
            v
        }
        "reorder" => {
            let mut v = after_hop1.clone();
            v.swap(3, 4);
            v
        }
        _ => after_hop1,
    };
    stream
        .into_iter()
        .map(|mut b| c.forward_from(1, &mut b, |_, _| {}) == Some(2))
        .collect()
}

#[test]
fn honest_stream_is_recognized() {
    assert_eq!(misbehave("none"), vec![true; 8]);
}

#[test]
fn dropped_cell_breaks_every_later_cell() {
    let got = misbehave("drop");
    assert_eq!(&got[..3], &[true; 3]);
    assert!(got[3..].iter().all(|r| !r), "{got:?}");
}

#[test]
fn replayed_cell_breaks_it_and_every_later_cell() {
    let got = misbehave("replay");
    assert_eq!(&got[..4], &[true; 4]);
    assert!(got[4..].iter().all(|r| !r), "{got:?}");
}

#[test]
fn reordered_cells_are_not_recognized() {
    // The first unrecognized cell makes the exit tear the circuit down, so nothing after
    // the swap is delivered.
    let got = misbehave("reorder");
    assert_eq!(&got[..3], &[true; 3]);
    assert!(!got[3] && !got[4], "{got:?}");
}

#[test]
fn backward_drop_at_hop1_is_unrecognized_by_client() {
    let mut c = Circuit::new(9, 3);
    let mut emitted = Vec::new();
    for i in 0..5u64 {
        let mut body = message(i);
        c.relays[2].originate_backward(&mut body).unwrap();
        c.relays[1].encrypt_backward(&mut body).unwrap();
        c.relays[0].encrypt_backward(&mut body).unwrap();
        emitted.push(body);
    }
    // the client misses cell 1
    let mut b0 = emitted[0];
    assert_eq!(c.client.decrypt(&mut b0), Ok(2));
    for b in &emitted[2..] {
        let mut b = *b;
        assert!(matches!(
            c.client.decrypt(&mut b),
            Err(LayerError::Unrecognized { .. })
        ));
    }
}

// ------------------------------------------------------------------------------------
// Chaining: one tampered cell breaks every later cell at the next honest hop, so a
// colluding recipient cannot keep a tagged circuit alive.

/// Cells sent in each chaining scenario: the attack at cell `k` plus at least 101 after.
const AFTER: usize = 110;

/// What the attacker does to the stream of cells between the tagging hop and the next
/// (honest) hop, starting at cell `k`.
#[derive(Debug, Clone, Copy)]
enum Attack {
    None,
    /// Flip one bit of cell k; the colluding recipient side flips it back if `undo`.
    Flip {
        bit: usize,
        undo: bool,
    },
    /// Drop cell k.
    Drop,
    /// Counter resync: hold cell k back, deliver k+1..=k+3, then k, then the rest in order
    /// (from k+4 on the honest hop's counter matches the sender's again).
    DropThenLate,
    /// Deliver cell k twice.
    Duplicate,
    /// Counter resync: deliver k twice, then drop k+3.
    DuplicateThenDrop,
    /// Swap cells k and k+1.
    Swap,
}

/// Applies `attack` at cell `k`: the delivered stream as (original index, body, bit to
/// undo at the colluding side) and the first delivered position that differs from the
/// honest stream.
fn attack_stream(
    cells: &[Body],
    k: usize,
    attack: Attack,
) -> (Vec<(usize, Body, Option<usize>)>, usize) {
    let mut order: Vec<usize> = (0..cells.len()).collect();
    let mut first = k;
    match attack {
        Attack::None => first = cells.len(),
        Attack::Flip { .. } => {}
        Attack::Drop => {
            order.remove(k);
        }
        Attack::DropThenLate => {
            order.remove(k);
            order.insert(k + 3, k);
        }
        Attack::Duplicate => {
            order.insert(k + 1, k);
            first = k + 1;
        }
        Attack::DuplicateThenDrop => {
            order.insert(k + 1, k);
            order.remove(k + 4); // original k+3
            first = k + 1;
        }
        Attack::Swap => order.swap(k, k + 1),
    }
    let stream = order
        .into_iter()
        .enumerate()
        .map(|(pos, i)| {
            let mut body = cells[i];
            let mut undo = None;
            if let Attack::Flip { bit, undo: u } = attack {
                if pos == k {
                    flip(&mut body, bit);
                    undo = u.then_some(bit);
                }
            }
            (i, body, undo)
        })
        .collect();
    (stream, first)
}

/// What the recipient got at one delivered position.
#[derive(Debug)]
struct Seen {
    /// The recipient's layer recognized the cell.
    recognized: bool,
    /// The whole message area equals the message of the cell at this position.
    content_intact: bool,
    /// Some 16-byte block of the message area equals that block of the message.
    some_block_intact: bool,
    /// (forward) `T` as the exit received it equals `T` the client expects the exit to
    /// echo in a SENDME (`encrypt_to_tagged`); always false backward.
    tag_intact: bool,
}

fn seen(area: &[u8], msg: &Body, recognized: bool, tag_intact: bool) -> Seen {
    let want = &msg[RELAY_TAG_LEN..];
    Seen {
        recognized,
        content_intact: area == want,
        some_block_intact: area.chunks(16).zip(want.chunks(16)).any(|(a, b)| a == b),
        tag_intact,
    }
}

/// Forward: the client sends cells to the exit; the guard (hop 1) tampers with the stream
/// it passes to the honest middle; the colluding exit undoes flips, ignores every failed
/// recognition and keeps peeling, and (if `exit_resyncs`) even resets its own chain to
/// `R` after each cell, as if all of them had been recognized.
fn forward_chain_attack(
    seed: u64,
    k: usize,
    attack: Attack,
    exit_resyncs: bool,
) -> (Vec<Seen>, usize) {
    let mut c = Circuit::new(seed, 3);
    let mut sent = Vec::new();
    let mut tags = Vec::new();
    for i in 0..k + AFTER {
        let mut body = message(i as u64);
        tags.push(c.client.encrypt_to_tagged(2, &mut body).unwrap());
        assert_eq!(
            c.relays[0].decrypt_forward(&mut body).unwrap(),
            Recognized::Forward
        );
        sent.push(body);
    }
    let (stream, first) = attack_stream(&sent, k, attack);
    let mut out = Vec::new();
    for (i, mut body, undo) in stream {
        // the middle is honest: it peels and passes the cell on
        assert_eq!(
            c.relays[1].decrypt_forward(&mut body).unwrap(),
            Recognized::Forward
        );
        if let Some(bit) = undo {
            flip(&mut body, bit);
        }
        let tag_intact = body[..RELAY_TAG_LEN] == tags[i];
        let recognized = c.relays[2].decrypt_forward(&mut body).unwrap() == Recognized::ForMe;
        if exit_resyncs {
            c.relays[2]
                .layers_mut_for_tests()
                .0
                .set_chain_for_tests(&[0; RELAY_TAG_LEN]);
        }
        out.push(seen(
            &body[RELAY_TAG_LEN..],
            &message(i as u64),
            recognized,
            tag_intact,
        ));
    }
    (out, first)
}

/// Backward: the exit originates cells; the exit (tagging) tampers with the stream it
/// sends to the honest middle; the colluding guard undoes flips on what it receives
/// before wrapping; the client keeps peeling after every failure.
fn backward_chain_attack(seed: u64, k: usize, attack: Attack) -> (Vec<Seen>, usize) {
    let mut c = Circuit::new(seed, 3);
    let mut sent = Vec::new();
    for i in 0..k + AFTER {
        let mut body = message(i as u64);
        c.relays[2].originate_backward(&mut body).unwrap();
        sent.push(body);
    }
    let (stream, first) = attack_stream(&sent, k, attack);
    let mut out = Vec::new();
    for (i, mut body, undo) in stream {
        c.relays[1].encrypt_backward(&mut body).unwrap();
        if let Some(bit) = undo {
            flip(&mut body, bit);
        }
        c.relays[0].encrypt_backward(&mut body).unwrap();
        let r = c.client.decrypt(&mut body);
        assert!(
            matches!(r, Ok(2) | Err(LayerError::Unrecognized { layers_tried: 3 })),
            "{r:?}"
        );
        out.push(seen(
            &body[RELAY_TAG_LEN..],
            &message(i as u64),
            r.is_ok(),
            false,
        ));
    }
    (out, first)
}

/// Before `first` everything is delivered; from `first` on, neither the cell at `first`
/// nor any of the next 100 is recognized, and after `first` not even one 16-byte block of
/// any message survives (the recipient cannot read on while ignoring the failures).
fn assert_chain_broken(seen: &[Seen], first: usize, what: &str) {
    assert!(
        seen.len() >= first + 101,
        "{what}: only {} cells",
        seen.len()
    );
    for (p, s) in seen[..first].iter().enumerate() {
        assert!(
            s.recognized && s.content_intact,
            "{what}: honest cell {p}: {s:?}"
        );
    }
    for (p, s) in seen.iter().enumerate().skip(first) {
        assert!(
            !s.recognized,
            "{what}: cell {p} recognized after the attack at {first}"
        );
        assert!(
            !s.tag_intact,
            "{what}: cell {p} has the expected SENDME tag"
        );
        if p > first {
            assert!(
                !s.some_block_intact,
                "{what}: cell {p} partly readable: {s:?}"
            );
        }
    }
}

#[test]
fn chaining_honest_streams_are_delivered() {
    let (fwd, first) = forward_chain_attack(5, 3, Attack::None, false);
    assert_eq!(first, fwd.len());
    assert!(fwd
        .iter()
        .all(|s| s.recognized && s.content_intact && s.tag_intact));
    let (bwd, first) = backward_chain_attack(5, 3, Attack::None);
    assert_eq!(first, bwd.len());
    assert!(bwd.iter().all(|s| s.recognized && s.content_intact));
}

const STREAM_ATTACKS: [Attack; 5] = [
    Attack::Drop,
    Attack::DropThenLate,
    Attack::Duplicate,
    Attack::DuplicateThenDrop,
    Attack::Swap,
];

#[test]
fn chaining_forward_drop_replay_resync_never_recovers() {
    for attack in STREAM_ATTACKS {
        for exit_resyncs in [false, true] {
            for k in [0, 1, 6] {
                let (seen, first) = forward_chain_attack(11 + k as u64, k, attack, exit_resyncs);
                assert_chain_broken(
                    &seen,
                    first,
                    &format!("{attack:?} at {k}, resync {exit_resyncs}"),
                );
            }
        }
    }
}

#[test]
fn chaining_backward_drop_replay_resync_never_recovers() {
    for attack in STREAM_ATTACKS {
        for k in [0, 1, 6] {
            let (seen, first) = backward_chain_attack(23 + k as u64, k, attack);
            assert_chain_broken(&seen, first, &format!("{attack:?} at {k}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Forward tagging by the guard, undone (or not) by a colluding exit that ignores the
    /// failures: cell k and the next 100 are never recognized, no later cell is readable
    /// even in part, and the exit never sees the tag the client expects in a SENDME.
    #[test]
    fn chaining_forward_tag_kills_every_later_cell(
        bit in 0..CELL_BODY_LEN * 8,
        undo in any::<bool>(),
        exit_resyncs in any::<bool>(),
        k in 0usize..5,
        seed in 0u64..1000,
    ) {
        let (seen, first) = forward_chain_attack(seed, k, Attack::Flip { bit, undo }, exit_resyncs);
        assert_chain_broken(&seen, first, &format!("bit {bit}"));
        // The limit, stated honestly: GCM's CTR part is malleable, so a flip in C that
        // the exit undoes leaves the tagged cell's own content readable there. Only its
        // tag, and every later cell, are lost.
        if undo && bit >= RELAY_TAG_LEN * 8 {
            prop_assert!(seen[first].content_intact);
        }
    }

    /// Backward tagging by the exit, undone (or not) by the guard: the client recognizes
    /// neither cell k nor any of the next 100, and can read none of the later ones.
    #[test]
    fn chaining_backward_tag_kills_every_later_cell(
        bit in 0..CELL_BODY_LEN * 8,
        undo in any::<bool>(),
        k in 0usize..5,
        seed in 0u64..1000,
    ) {
        let (seen, first) = backward_chain_attack(seed, k, Attack::Flip { bit, undo });
        assert_chain_broken(&seen, first, &format!("bit {bit}"));
    }
}

/// `x · H` in GHASH's field: GHASH_H over the single block `x`.
fn ghash_mul_h(h: &[u8; 16], x: &[u8; 16]) -> [u8; 16] {
    use ghash::universal_hash::UniversalHash;
    let mut g = ghash::GHash::new(&(*h).into());
    g.update(&[(*x).into()]);
    g.finalize().into()
}

/// The attack that a chain through the GCM associated data alone would not stop: GHASH is
/// linear in the associated data, so a wrong `prev` at the middle shifts the middle's next
/// tag by `delta · H^33` (`delta` = chain error, 33 = blocks after it), which the guard
/// cancels by adding `e = delta · H` to C's first block (power `H^32`) of the next cell;
/// the exit learns `delta` from the tagged cell and the middle's `H` from `delta` and the
/// flip, and undoes `e`. Because `prev` also enters the nonce, the middle's next keystream
/// and tag mask are different altogether and the repair fails. (The test hands the
/// attackers `H` and `delta` directly: the strongest version of the attack.)
#[test]
fn chaining_linear_repair_of_the_middle_chain_fails() {
    for seed in 0..8u64 {
        let k = (seed % 3) as usize;
        let mut c = Circuit::new(seed, 3);
        let middle_keys = keys(seed * 16 + 1);
        let mut shadow = RelayCircuitCrypto::from_keys(&middle_keys);
        let h: [u8; 16] = {
            use aes::cipher::{BlockCipherEncrypt, KeyInit};
            let kf: [u8; 32] = middle_keys.to_bytes()[..32].try_into().unwrap();
            let mut b = aes::Block::default();
            aes::Aes256::new(&kf.into()).encrypt_block(&mut b);
            b.into()
        };
        let bit = (RELAY_TAG_LEN + 32) * 8 + 5; // a bit of C's third block
        let mut e = [0u8; 16];
        let mut recognized = Vec::new();
        for i in 0..k + AFTER {
            let mut body = message(i as u64);
            c.client.encrypt_to(2, &mut body).unwrap();
            c.relays[0].decrypt_forward(&mut body).unwrap();
            let mut honest = body;
            shadow.decrypt_forward(&mut honest).unwrap();
            if i == k {
                flip(&mut body, bit);
            }
            if i == k + 1 {
                for (b, x) in body[RELAY_TAG_LEN..RELAY_TAG_LEN + 16].iter_mut().zip(e) {
                    *b ^= x;
                }
            }
            c.relays[1].decrypt_forward(&mut body).unwrap();
            if i == k {
                flip(&mut body, bit);
                // delta = the middle's chain error, as the colluding exit can compute it
                let mut delta = *c.relays[1].layers_mut_for_tests().0.chain();
                let (sf, _) = shadow.layers_mut_for_tests();
                for (d, s) in delta.iter_mut().zip(sf.chain()) {
                    *d ^= s;
                }
                assert_ne!(delta, [0u8; 16]);
                e = ghash_mul_h(&h, &delta);
            }
            if i == k + 1 {
                for (b, x) in body[RELAY_TAG_LEN..RELAY_TAG_LEN + 16].iter_mut().zip(e) {
                    *b ^= x;
                }
            }
            let r = c.relays[2].decrypt_forward(&mut body).unwrap();
            c.relays[2]
                .layers_mut_for_tests()
                .0
                .set_chain_for_tests(&[0; RELAY_TAG_LEN]);
            recognized.push(r == Recognized::ForMe);
        }
        assert!(recognized[..k].iter().all(|r| *r), "seed {seed}");
        assert!(
            recognized[k..].iter().all(|r| !r),
            "seed {seed}: the chain was repaired: {recognized:?}"
        );
    }
}
