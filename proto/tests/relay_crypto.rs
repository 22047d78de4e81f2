#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Relay crypto through a client and three relays: delivery, leaky pipe, tagging
//! resistance, dropped/replayed/reordered cells.

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
