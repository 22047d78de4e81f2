//! Layered relay crypto: one layer per hop and direction (docs/spec.md, "Relay crypto").
//!
//! A RELAY cell body is `T (16) || C (491)`. Every hop and direction has a [`LayerState`]
//! with an AES-256-GCM key `K`, an AES-256 key `U` for the tag permutation `E_U`, a cell
//! counter `n`, and the chain value `prev` (16 bytes, initially `R = 0^16`): the inner tag
//! `T'` of the previous cell this layer processed. The GCM nonce of a cell is
//! `N = prev[0..4] || n (u64 BE)` and its associated data is `prev`:
//!
//! ```text
//! wrap(T', C') -> (T, C):  C  = ctr_K,N(C');  t = tag_K,N,prev(C);  T  = E_U(T' ^ t);  prev = T'
//! peel(T, C)  -> (T', C'): t  = tag_K,N,prev(C);  C' = ctr_K,N(C);  T' = D_U(T) ^ t;  prev = T'
//! ```
//!
//! `ctr` and `tag` are exactly the CTR part and the tag of standard AES-256-GCM with a
//! 96-bit nonce and 16 bytes of associated data, where the tag is computed over the
//! ciphertext. A cell is *recognized* by a hop when its peel yields `T' == 0^16`.
//!
//! The chain makes tampering permanent: once a cell reaching an honest layer was altered,
//! dropped, replayed or reordered, that layer's `prev` differs from the sender's, so every
//! later cell there gets a different tag (garbled `T'`) *and* a different keystream
//! (garbled `C'`); nobody without the layer's keys can repair it. Everything works in place
//! on a cell body, with no allocation per cell; AES key schedules and the GHASH key are
//! expanded once.
//!
//! Every error is fatal for the circuit: the caller must tear it down.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, InnerIvInit, KeyInit, StreamCipherCore};
use aes::{Aes256, Block};
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::consts::{CELL_BODY_LEN, MAX_HOPS, RELAY_TAG_LEN};

/// Length of the key material of one hop: `Kf || Uf || Kb || Ub`, 32 bytes each.
pub const HOP_KEYS_LEN: usize = 128;

/// The all-zero "recognized" marker `R` a hop finds in `T'` after peeling a cell meant for it.
const RECOGNIZED: [u8; RELAY_TAG_LEN] = [0; RELAY_TAG_LEN];

/// GCM nonce length (96 bits).
const NONCE_LEN: usize = 12;

/// Errors of the layered relay crypto. Every one of them means: tear the circuit down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    /// No layer recognized the cell (`T' != 0^16` after every peel): it was modified,
    /// dropped, replayed or reordered somewhere on the path, or is not for this circuit.
    #[error("relay cell not recognized by any of the {layers_tried} layer(s) tried")]
    Unrecognized {
        /// How many layers were peeled before giving up.
        layers_tried: usize,
    },
    /// The layer's cell counter reached `u64::MAX`; using it again would repeat a nonce.
    #[error("cell counter of the {direction} layer of hop {hop} is exhausted")]
    CounterExhausted {
        /// 0-based hop index (0 for a relay's own layers).
        hop: usize,
        /// `"forward"` or `"backward"`.
        direction: &'static str,
    },
    /// The client asked for a hop the circuit does not have.
    #[error("no hop {hop} in a circuit of {n_hops} hop(s)")]
    NoSuchHop {
        /// Requested 0-based hop.
        hop: usize,
        /// Hops in the circuit.
        n_hops: usize,
    },
    /// The circuit already has [`MAX_HOPS`] hops.
    #[error("circuit already has the maximum of {max} hops")]
    TooManyHops {
        /// [`MAX_HOPS`].
        max: usize,
    },
}

/// Key material of one hop, as produced by the circuit handshake:
/// `Kf (32) || Uf (32) || Kb (32) || Ub (32)`.
///
/// `Kf`/`Uf` key the forward (client → relay) layer, `Kb`/`Ub` the backward one.
/// Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HopKeys {
    kf: [u8; 32],
    uf: [u8; 32],
    kb: [u8; 32],
    ub: [u8; 32],
}

impl HopKeys {
    /// Key material from its 128-byte encoding `Kf || Uf || Kb || Ub`.
    pub fn from_bytes(bytes: &[u8; HOP_KEYS_LEN]) -> Self {
        let mut keys = Self {
            kf: [0; 32],
            uf: [0; 32],
            kb: [0; 32],
            ub: [0; 32],
        };
        keys.kf.copy_from_slice(&bytes[0..32]);
        keys.uf.copy_from_slice(&bytes[32..64]);
        keys.kb.copy_from_slice(&bytes[64..96]);
        keys.ub.copy_from_slice(&bytes[96..128]);
        keys
    }

    /// The 128-byte encoding `Kf || Uf || Kb || Ub` (zeroized when dropped).
    pub fn to_bytes(&self) -> Zeroizing<[u8; HOP_KEYS_LEN]> {
        let mut out = Zeroizing::new([0u8; HOP_KEYS_LEN]);
        out[0..32].copy_from_slice(&self.kf);
        out[32..64].copy_from_slice(&self.uf);
        out[64..96].copy_from_slice(&self.kb);
        out[96..128].copy_from_slice(&self.ub);
        out
    }

    fn forward(&self) -> LayerState {
        LayerState::new(&self.kf, &self.uf)
    }

    fn backward(&self) -> LayerState {
        LayerState::new(&self.kb, &self.ub)
    }
}

impl core::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HopKeys(..)")
    }
}

/// Bytes of the chain value `prev` that enter the GCM nonce (the rest is the counter).
pub const NONCE_CHAIN_LEN: usize = 4;

/// The GCM nonce of the cell with counter `n` at a layer whose chain value is `prev`:
/// `prev[0..4] || n` (8 bytes big-endian). It never repeats under one key, because `n`
/// never does; `prev` only makes the keystream depend on the chain.
pub fn chained_nonce(n: u64, prev: &[u8; RELAY_TAG_LEN]) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..NONCE_CHAIN_LEN].copy_from_slice(&prev[..NONCE_CHAIN_LEN]);
    nonce[NONCE_CHAIN_LEN..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// AES-256-GCM with 16 bytes of associated data split into its CTR part and its tag, in
/// place, without allocation. The key schedule and the GHASH key `H = E_K(0^128)` are
/// expanded once.
struct Gcm {
    cipher: Aes256,
    ghash: GHash,
}

type Ctr32<'a> = ctr::CtrCore<&'a Aes256, ctr::flavors::Ctr32BE>;

impl Gcm {
    fn new(key: &[u8; 32]) -> Self {
        let cipher = Aes256::new(key.into());
        let mut h = Block::default();
        cipher.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        h.zeroize();
        Self { cipher, ghash }
    }

    /// The CTR keystream positioned at `J0 + 1`, and the tag mask `E_K(J0)`,
    /// where `J0 = nonce || 0x00000001` (GCM with a 96-bit nonce).
    fn init(&self, nonce: &[u8; NONCE_LEN]) -> (Ctr32<'_>, Block) {
        let mut j0 = Block::default();
        j0[..NONCE_LEN].copy_from_slice(nonce);
        j0[15] = 1;
        let mut ctr = Ctr32::inner_iv_init(&self.cipher, &j0);
        let mut mask = Block::default();
        ctr.write_keystream_block(&mut mask);
        (ctr, mask)
    }

    /// `GHASH_H(A, C, lengths) XOR mask` for the one-block associated data `A`.
    fn tag(&self, mask: &Block, aad: &[u8; 16], ciphertext: &[u8]) -> [u8; 16] {
        let mut gh = self.ghash.clone();
        let aad_block = Block::from(*aad);
        gh.update(core::slice::from_ref(&aad_block));
        gh.update_padded(ciphertext);
        let mut lens = Block::default();
        // AAD length and ciphertext length in bits, big-endian, 8 bytes each.
        lens[..8].copy_from_slice(&(8 * aad.len() as u64).to_be_bytes());
        let bits = (ciphertext.len() as u64).wrapping_mul(8);
        lens[8..].copy_from_slice(&bits.to_be_bytes());
        gh.update(core::slice::from_ref(&lens));
        let mut out = [0u8; 16];
        for ((o, g), m) in out.iter_mut().zip(gh.finalize().iter()).zip(mask.iter()) {
            *o = g ^ m;
        }
        out
    }

    /// GCM encryption in place; returns the tag over `aad` and the resulting ciphertext.
    fn encrypt(&self, nonce: &[u8; NONCE_LEN], aad: &[u8; 16], buf: &mut [u8]) -> [u8; 16] {
        let (ctr, mask) = self.init(nonce);
        ctr.apply_keystream_partial(buf.into());
        self.tag(&mask, aad, buf)
    }

    /// GCM decryption in place (no verification); returns the tag over `aad` and the
    /// ciphertext as it was before decryption.
    fn decrypt(&self, nonce: &[u8; NONCE_LEN], aad: &[u8; 16], buf: &mut [u8]) -> [u8; 16] {
        let (ctr, mask) = self.init(nonce);
        let t = self.tag(&mask, aad, buf);
        ctr.apply_keystream_partial(buf.into());
        t
    }
}

/// One layer of one hop in one direction: GCM key `K`, tag-permutation key `U`, the cell
/// counter `n` and the chain value `prev` (`T'` of the previous cell). Key schedules are
/// zeroized on drop by `aes` and `ghash`, `prev` by our `Drop`.
pub struct LayerState {
    gcm: Gcm,
    u: Aes256,
    n: u64,
    prev: [u8; RELAY_TAG_LEN],
}

impl LayerState {
    /// A fresh layer (counter 0, chain value `R = 0^16`) from its GCM key `K` and tag key `U`.
    pub fn new(k: &[u8; 32], u: &[u8; 32]) -> Self {
        Self {
            gcm: Gcm::new(k),
            u: Aes256::new(u.into()),
            n: 0,
            prev: RECOGNIZED,
        }
    }

    /// The counter of the next cell this layer will process.
    pub fn counter(&self) -> u64 {
        self.n
    }

    /// Whether this layer can process another cell (its counter is below `u64::MAX`).
    pub fn is_exhausted(&self) -> bool {
        self.n == u64::MAX
    }

    /// The chain value `prev`: `T'` of the previous cell this layer processed (`0^16` before
    /// the first). Both ends of a layer hold the same value as long as no cell was tampered with.
    pub fn chain(&self) -> &[u8; RELAY_TAG_LEN] {
        &self.prev
    }

    /// Test support: set the counter (e.g. near `u64::MAX`).
    #[doc(hidden)]
    pub fn set_counter_for_tests(&mut self, n: u64) {
        self.n = n;
    }

    /// Test support: set the chain value `prev`.
    #[doc(hidden)]
    pub fn set_chain_for_tests(&mut self, prev: &[u8; RELAY_TAG_LEN]) {
        self.prev = *prev;
    }

    /// The nonce for the next cell, advancing the counter; refuses at `u64::MAX` (then
    /// nothing changes).
    fn next_nonce(&mut self) -> Option<[u8; NONCE_LEN]> {
        if self.n == u64::MAX {
            return None;
        }
        let nonce = chained_nonce(self.n, &self.prev);
        self.n += 1;
        Some(nonce)
    }

    /// `wrap(T', C') -> (T, C)` in place, then `prev = T'`. `None` if the counter is
    /// exhausted (body and state untouched).
    pub fn wrap(&mut self, body: &mut [u8; CELL_BODY_LEN]) -> Option<()> {
        let nonce = self.next_nonce()?;
        let tag = self
            .gcm
            .encrypt(&nonce, &self.prev, &mut body[RELAY_TAG_LEN..]);
        let mut t = Block::default();
        t.copy_from_slice(&body[..RELAY_TAG_LEN]);
        self.prev.copy_from_slice(&t);
        xor_into(&mut t, &tag);
        self.u.encrypt_block(&mut t);
        body[..RELAY_TAG_LEN].copy_from_slice(&t);
        t.zeroize();
        Some(())
    }

    /// `peel(T, C) -> (T', C')` in place, then `prev = T'`; returns whether `T' == 0^16`
    /// (recognized). `None` if the counter is exhausted (body and state untouched).
    pub fn peel(&mut self, body: &mut [u8; CELL_BODY_LEN]) -> Option<bool> {
        let nonce = self.next_nonce()?;
        let tag = self
            .gcm
            .decrypt(&nonce, &self.prev, &mut body[RELAY_TAG_LEN..]);
        let mut t = Block::default();
        t.copy_from_slice(&body[..RELAY_TAG_LEN]);
        self.u.decrypt_block(&mut t);
        xor_into(&mut t, &tag);
        body[..RELAY_TAG_LEN].copy_from_slice(&t);
        self.prev.copy_from_slice(&t);
        let recognized = is_recognized(&t);
        t.zeroize();
        Some(recognized)
    }
}

impl Drop for LayerState {
    fn drop(&mut self) {
        self.prev.zeroize();
    }
}

impl ZeroizeOnDrop for LayerState {}

impl core::fmt::Debug for LayerState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LayerState")
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

fn xor_into(t: &mut Block, x: &[u8; 16]) {
    for (a, b) in t.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// Branch-free comparison of `T'` with `R = 0^16`.
fn is_recognized(t: &Block) -> bool {
    t.iter()
        .zip(RECOGNIZED.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// What a relay does with a forward cell after peeling its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognized {
    /// `T' == 0^16`: the relay message in `C'` is for this hop.
    ForMe,
    /// Not for this hop: pass `(T', C')` to the next hop. If there is no next hop the
    /// cell is a protocol violation and the circuit must be torn down.
    Forward,
}

/// The client's relay crypto for one circuit: a (forward, backward) layer pair per hop.
#[derive(Debug, Default)]
pub struct ClientCircuitCrypto {
    hops: Vec<(LayerState, LayerState)>,
}

impl ClientCircuitCrypto {
    /// A circuit with no hops yet.
    pub fn new() -> Self {
        Self {
            hops: Vec::with_capacity(MAX_HOPS),
        }
    }

    /// Appends the layers of a newly extended hop (hop index `n_hops()` before the call).
    pub fn add_hop(&mut self, keys: &HopKeys) -> Result<(), LayerError> {
        if self.hops.len() >= MAX_HOPS {
            return Err(LayerError::TooManyHops { max: MAX_HOPS });
        }
        self.hops.push((keys.forward(), keys.backward()));
        Ok(())
    }

    /// Number of hops (layer pairs).
    pub fn n_hops(&self) -> usize {
        self.hops.len()
    }

    /// Addresses the message area already in `body[16..]` to `hop` (0-based): sets
    /// `T = 0^16` and wraps with the forward layers of `hop, hop-1, …, 0`.
    ///
    /// Nothing is changed if any of those layers is exhausted.
    pub fn encrypt_to(
        &mut self,
        hop: usize,
        body: &mut [u8; CELL_BODY_LEN],
    ) -> Result<(), LayerError> {
        self.encrypt_to_tagged(hop, body).map(|_| ())
    }

    /// As [`ClientCircuitCrypto::encrypt_to`], also returning `T` as `hop` will see it
    /// (after wrapping with `hop`'s own layer, before the layers of earlier hops): SENDME
    /// authentication needs it, since only that hop and the client know it.
    pub fn encrypt_to_tagged(
        &mut self,
        hop: usize,
        body: &mut [u8; CELL_BODY_LEN],
    ) -> Result<[u8; RELAY_TAG_LEN], LayerError> {
        let n_hops = self.hops.len();
        let layers = self
            .hops
            .get_mut(..=hop)
            .ok_or(LayerError::NoSuchHop { hop, n_hops })?;
        if let Some(i) = layers.iter().position(|(f, _)| f.is_exhausted()) {
            return Err(LayerError::CounterExhausted {
                hop: i,
                direction: "forward",
            });
        }
        body[..RELAY_TAG_LEN].copy_from_slice(&RECOGNIZED);
        let mut tag = [0u8; RELAY_TAG_LEN];
        for (i, (fwd, _)) in layers.iter_mut().enumerate().rev() {
            fwd.wrap(body).ok_or(LayerError::CounterExhausted {
                hop: i,
                direction: "forward",
            })?;
            if i == hop {
                tag.copy_from_slice(&body[..RELAY_TAG_LEN]);
            }
        }
        Ok(tag)
    }

    /// Peels backward layers `0, 1, …` in place until one recognizes the cell, and returns
    /// that (0-based) originating hop; the message is then in `body[16..]`.
    ///
    /// Nothing is changed if any backward layer is exhausted. After `Unrecognized` every
    /// layer's chain has absorbed the garbled cell: the circuit must be torn down.
    pub fn decrypt(&mut self, body: &mut [u8; CELL_BODY_LEN]) -> Result<usize, LayerError> {
        self.decrypt_tagged(body).map(|(hop, _)| hop)
    }

    /// As [`ClientCircuitCrypto::decrypt`], also returning `T` as the originating hop sent
    /// it (before peeling that hop's layer).
    pub fn decrypt_tagged(
        &mut self,
        body: &mut [u8; CELL_BODY_LEN],
    ) -> Result<(usize, [u8; RELAY_TAG_LEN]), LayerError> {
        if let Some(i) = self.hops.iter().position(|(_, b)| b.is_exhausted()) {
            return Err(LayerError::CounterExhausted {
                hop: i,
                direction: "backward",
            });
        }
        let mut tag = [0u8; RELAY_TAG_LEN];
        for (i, (_, bwd)) in self.hops.iter_mut().enumerate() {
            tag.copy_from_slice(&body[..RELAY_TAG_LEN]);
            let recognized = bwd.peel(body).ok_or(LayerError::CounterExhausted {
                hop: i,
                direction: "backward",
            })?;
            if recognized {
                return Ok((i, tag));
            }
        }
        Err(LayerError::Unrecognized {
            layers_tried: self.hops.len(),
        })
    }

    /// Test support: the layers of one hop.
    #[doc(hidden)]
    pub fn layers_mut_for_tests(&mut self, hop: usize) -> Option<&mut (LayerState, LayerState)> {
        self.hops.get_mut(hop)
    }
}

/// A relay's relay crypto for one circuit: its own forward and backward layers.
#[derive(Debug)]
pub struct RelayCircuitCrypto {
    fwd: LayerState,
    bwd: LayerState,
}

impl RelayCircuitCrypto {
    /// The layers keyed by this hop's handshake output.
    pub fn from_keys(keys: &HopKeys) -> Self {
        Self {
            fwd: keys.forward(),
            bwd: keys.backward(),
        }
    }

    /// Peels this hop's forward layer from a cell arriving from the client side, in place.
    pub fn decrypt_forward(
        &mut self,
        body: &mut [u8; CELL_BODY_LEN],
    ) -> Result<Recognized, LayerError> {
        match self.fwd.peel(body) {
            Some(true) => Ok(Recognized::ForMe),
            Some(false) => Ok(Recognized::Forward),
            None => Err(LayerError::CounterExhausted {
                hop: 0,
                direction: "forward",
            }),
        }
    }

    /// Wraps a cell arriving from the next hop (going toward the client) with this hop's
    /// backward layer, in place.
    pub fn encrypt_backward(&mut self, body: &mut [u8; CELL_BODY_LEN]) -> Result<(), LayerError> {
        self.bwd.wrap(body).ok_or(LayerError::CounterExhausted {
            hop: 0,
            direction: "backward",
        })
    }

    /// Originates a cell toward the client: sets `T = 0^16` over the message already in
    /// `body[16..]`, then wraps it with this hop's backward layer.
    pub fn originate_backward(&mut self, body: &mut [u8; CELL_BODY_LEN]) -> Result<(), LayerError> {
        if self.bwd.is_exhausted() {
            return Err(LayerError::CounterExhausted {
                hop: 0,
                direction: "backward",
            });
        }
        body[..RELAY_TAG_LEN].copy_from_slice(&RECOGNIZED);
        self.encrypt_backward(body)
    }

    /// Test support: the (forward, backward) layers.
    #[doc(hidden)]
    pub fn layers_mut_for_tests(&mut self) -> (&mut LayerState, &mut LayerState) {
        (&mut self.fwd, &mut self.bwd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::Aes256Gcm;
    use proptest::prelude::*;

    fn aes_gcm_reference(
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> (Vec<u8>, [u8; 16]) {
        let aead = Aes256Gcm::new(key.into());
        let mut buf = data.to_vec();
        let tag = aead
            .encrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into())
            .unwrap();
        (buf, tag.into())
    }

    proptest! {
        /// Our (ctr, tag) split is standard AES-256-GCM with 16 bytes of associated data,
        /// for any key, nonce, associated data and length.
        #[test]
        fn gcm_split_equals_aes_gcm(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            aad in any::<[u8; 16]>(),
            data in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let (want_ct, want_tag) = aes_gcm_reference(&key, &nonce, &aad, &data);
            let gcm = Gcm::new(&key);
            let mut buf = data.clone();
            let tag = gcm.encrypt(&nonce, &aad, &mut buf);
            prop_assert_eq!(&buf, &want_ct);
            prop_assert_eq!(tag, want_tag);
            // decrypt: same tag (over the ciphertext), plaintext restored
            let tag2 = gcm.decrypt(&nonce, &aad, &mut buf);
            prop_assert_eq!(tag2, want_tag);
            prop_assert_eq!(buf, data);
        }

        /// peel is the exact inverse of wrap at the same (counter, chain), and both ends
        /// then chain the same value: T' (the inner tag).
        #[test]
        fn peel_inverts_wrap(
            k in any::<[u8; 32]>(),
            u in any::<[u8; 32]>(),
            start in 0u64..u64::MAX - 4,
            prev in any::<[u8; 16]>(),
            body in proptest::collection::vec(any::<u8>(), CELL_BODY_LEN),
        ) {
            let mut a = LayerState::new(&k, &u);
            let mut b = LayerState::new(&k, &u);
            a.set_counter_for_tests(start);
            b.set_counter_for_tests(start);
            a.set_chain_for_tests(&prev);
            b.set_chain_for_tests(&prev);
            let orig: [u8; CELL_BODY_LEN] = body.try_into().unwrap();
            let mut cell = orig;
            a.wrap(&mut cell).unwrap();
            prop_assert_ne!(cell, orig);
            let rec = b.peel(&mut cell).unwrap();
            prop_assert_eq!(cell, orig);
            prop_assert_eq!(rec, orig[..16] == [0u8; 16]);
            prop_assert_eq!(a.counter(), start + 1);
            prop_assert_eq!(b.counter(), start + 1);
            prop_assert_eq!(&a.chain()[..], &orig[..16]);
            prop_assert_eq!(b.chain(), a.chain());
        }

        /// A peel with a different chain value (a tampered earlier cell) garbles the whole
        /// cell: the tag and, through the nonce, the message area.
        #[test]
        fn wrong_chain_garbles_tag_and_content(
            k in any::<[u8; 32]>(),
            u in any::<[u8; 32]>(),
            prev in any::<[u8; 16]>(),
            delta in any::<[u8; 16]>().prop_filter("nonzero", |d| d[..4] != [0u8; 4]),
        ) {
            let mut a = LayerState::new(&k, &u);
            let mut b = LayerState::new(&k, &u);
            a.set_chain_for_tests(&prev);
            let mut wrong = prev;
            for (w, d) in wrong.iter_mut().zip(delta) {
                *w ^= d;
            }
            b.set_chain_for_tests(&wrong);
            let orig = [0u8; CELL_BODY_LEN];
            let mut cell = orig;
            a.wrap(&mut cell).unwrap();
            prop_assert_eq!(b.peel(&mut cell), Some(false));
            // no 16-byte block of the message area survives
            for (got, want) in cell[16..].chunks(16).zip(orig[16..].chunks(16)) {
                prop_assert_ne!(got, want);
            }
        }
    }

    /// wrap follows the spec literally: N = prev[0..4] || n, C = GCM-CTR_K,N(C'),
    /// T = E_U(T' ^ GCM-tag_K,N(aad = prev, C)), then prev = T'.
    #[test]
    fn wrap_matches_spec_with_counter_nonce_and_chain() {
        let k = [7u8; 32];
        let u = [9u8; 32];
        let mut chain = [0u8; 16];
        for (i, b) in chain.iter_mut().enumerate() {
            *b = 0xA0 + i as u8;
        }
        for (n, prev) in [
            (0u64, [0u8; 16]),
            (1, chain),
            (2, [0xFF; 16]),
            (0x0102_0304_0506_0708, chain),
            (u64::MAX - 1, chain),
        ] {
            let mut layer = LayerState::new(&k, &u);
            layer.set_counter_for_tests(n);
            layer.set_chain_for_tests(&prev);
            let mut cell = [0u8; CELL_BODY_LEN];
            for (i, b) in cell.iter_mut().enumerate() {
                *b = (i * 31 % 251) as u8;
            }
            let orig = cell;
            layer.wrap(&mut cell).unwrap();
            let nonce = chained_nonce(n, &prev);
            assert_eq!(&nonce[..4], &prev[..4]);
            assert_eq!(&nonce[4..], &n.to_be_bytes());
            let (ct, tag) = aes_gcm_reference(&k, &nonce, &prev, &orig[16..]);
            assert_eq!(&cell[16..], &ct[..]);
            let mut t = Block::default();
            for i in 0..16 {
                t[i] = orig[i] ^ tag[i];
            }
            Aes256::new((&u).into()).encrypt_block(&mut t);
            assert_eq!(&cell[..16], t.as_slice());
            assert_eq!(&layer.chain()[..], &orig[..16]);
        }
    }

    /// Nonces never repeat under one key: the last 8 bytes are the counter, which strictly
    /// increases over 2^20 cells per direction whatever the chain value is; also over real
    /// cells, where the chain changes every cell.
    #[test]
    fn nonces_never_repeat() {
        let keys = HopKeys::from_bytes(&[3u8; HOP_KEYS_LEN]);
        let mut relay = RelayCircuitCrypto::from_keys(&keys);
        let (fwd, bwd) = relay.layers_mut_for_tests();
        for layer in [fwd, bwd] {
            let mut prev_ctr: Option<u64> = None;
            let mut x = 0x1234_5678_9ABC_DEF0u64;
            for i in 0..(1u64 << 20) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut chain = [0u8; 16];
                chain[..8].copy_from_slice(&x.to_le_bytes());
                layer.set_chain_for_tests(&chain);
                let nonce = layer.next_nonce().unwrap();
                assert_eq!(nonce, chained_nonce(i, &chain));
                assert_eq!(&nonce[..4], &chain[..4]);
                let ctr = u64::from_be_bytes(nonce[4..].try_into().unwrap());
                if let Some(p) = prev_ctr {
                    assert!(ctr > p, "counter did not strictly increase at cell {i}");
                }
                prev_ctr = Some(ctr);
            }
            assert_eq!(layer.counter(), 1 << 20);
        }
        // real cells through the public API advance each counter by exactly one
        let mut client = ClientCircuitCrypto::new();
        client.add_hop(&keys).unwrap();
        let mut relay = RelayCircuitCrypto::from_keys(&keys);
        let mut seen = std::collections::HashSet::new();
        let mut chains = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let mut cell = [i as u8; CELL_BODY_LEN];
            let layer = &client.layers_mut_for_tests(0).unwrap().0;
            let before = layer.counter();
            assert_eq!(before, i);
            assert!(seen.insert(chained_nonce(before, layer.chain())));
            client.encrypt_to(0, &mut cell).unwrap();
            assert_eq!(
                client.layers_mut_for_tests(0).unwrap().0.counter(),
                before + 1
            );
            assert_eq!(relay.decrypt_forward(&mut cell).unwrap(), Recognized::ForMe);
            assert_eq!(relay.layers_mut_for_tests().0.counter(), i + 1);
            relay.originate_backward(&mut cell).unwrap();
            chains.insert(*relay.layers_mut_for_tests().1.chain());
            assert_eq!(client.decrypt(&mut cell).unwrap(), 0);
            assert_eq!(relay.layers_mut_for_tests().1.counter(), i + 1);
            // both ends of each layer hold the same chain value
            let (cf, cb) = client.layers_mut_for_tests(0).unwrap();
            let (cf, cb) = (*cf.chain(), *cb.chain());
            let (rf, rb) = relay.layers_mut_for_tests();
            assert_eq!(&cf, rf.chain());
            assert_eq!(&cb, rb.chain());
        }
        assert_eq!(seen.len(), 4096);
        // a cell for the hop itself chains R, as the recognition rule says
        assert_eq!(chains.len(), 1);
        assert!(chains.contains(&RECOGNIZED));
    }

    /// At u64::MAX every operation refuses with CounterExhausted and leaves the body alone.
    #[test]
    fn counter_exhaustion_is_an_error() {
        let keys = HopKeys::from_bytes(&[5u8; HOP_KEYS_LEN]);
        let mut relay = RelayCircuitCrypto::from_keys(&keys);
        let (fwd, bwd) = relay.layers_mut_for_tests();
        fwd.set_counter_for_tests(u64::MAX - 1);
        bwd.set_counter_for_tests(u64::MAX - 1);
        let mut cell = [1u8; CELL_BODY_LEN];
        assert!(relay.decrypt_forward(&mut cell).is_ok());
        assert!(relay.encrypt_backward(&mut cell).is_ok());
        let snapshot = cell;
        let fwd_err = LayerError::CounterExhausted {
            hop: 0,
            direction: "forward",
        };
        let bwd_err = LayerError::CounterExhausted {
            hop: 0,
            direction: "backward",
        };
        assert_eq!(relay.decrypt_forward(&mut cell), Err(fwd_err.clone()));
        assert_eq!(relay.encrypt_backward(&mut cell), Err(bwd_err.clone()));
        assert_eq!(relay.originate_backward(&mut cell), Err(bwd_err));
        assert_eq!(cell, snapshot);
        assert_eq!(relay.layers_mut_for_tests().0.counter(), u64::MAX);
        // the chains are untouched by the refused cells
        let chain_f = *relay.layers_mut_for_tests().0.chain();
        let chain_b = *relay.layers_mut_for_tests().1.chain();
        assert_ne!(chain_f, RECOGNIZED);
        let _ = relay.decrypt_forward(&mut cell);
        let _ = relay.encrypt_backward(&mut cell);
        let _ = relay.originate_backward(&mut cell);
        assert_eq!(relay.layers_mut_for_tests().0.chain(), &chain_f);
        assert_eq!(relay.layers_mut_for_tests().1.chain(), &chain_b);

        let mut client = ClientCircuitCrypto::new();
        client.add_hop(&keys).unwrap();
        client.add_hop(&keys).unwrap();
        client
            .layers_mut_for_tests(1)
            .unwrap()
            .0
            .set_counter_for_tests(u64::MAX);
        let err = client.encrypt_to(1, &mut cell).unwrap_err();
        assert_eq!(
            err,
            LayerError::CounterExhausted {
                hop: 1,
                direction: "forward"
            }
        );
        assert_eq!(cell, snapshot);
        // hop 0 untouched by the refused cell
        assert_eq!(client.layers_mut_for_tests(0).unwrap().0.counter(), 0);
        client
            .layers_mut_for_tests(0)
            .unwrap()
            .1
            .set_counter_for_tests(u64::MAX);
        assert!(matches!(
            client.decrypt(&mut cell),
            Err(LayerError::CounterExhausted { hop: 0, .. })
        ));

        // decrypt checks every backward layer first: an exhausted later layer leaves the
        // earlier layers' counters and chains, and the cell, unchanged
        let mut client = ClientCircuitCrypto::new();
        client.add_hop(&keys).unwrap();
        client.add_hop(&keys).unwrap();
        let (_, b1) = client.layers_mut_for_tests(1).unwrap();
        b1.set_counter_for_tests(u64::MAX);
        assert_eq!(
            client.decrypt(&mut cell),
            Err(LayerError::CounterExhausted {
                hop: 1,
                direction: "backward"
            })
        );
        assert_eq!(cell, snapshot);
        let (_, b0) = client.layers_mut_for_tests(0).unwrap();
        assert_eq!(b0.counter(), 0);
        assert_eq!(b0.chain(), &RECOGNIZED);
    }

    #[test]
    fn hop_bounds() {
        let keys = HopKeys::from_bytes(&[0u8; HOP_KEYS_LEN]);
        let mut client = ClientCircuitCrypto::new();
        let mut cell = [0u8; CELL_BODY_LEN];
        assert_eq!(
            client.encrypt_to(0, &mut cell),
            Err(LayerError::NoSuchHop { hop: 0, n_hops: 0 })
        );
        assert_eq!(
            client.decrypt(&mut cell),
            Err(LayerError::Unrecognized { layers_tried: 0 })
        );
        for _ in 0..MAX_HOPS {
            client.add_hop(&keys).unwrap();
        }
        assert_eq!(
            client.add_hop(&keys),
            Err(LayerError::TooManyHops { max: MAX_HOPS })
        );
        assert_eq!(client.n_hops(), MAX_HOPS);
        assert_eq!(keys.to_bytes().as_slice(), &[0u8; HOP_KEYS_LEN][..]);
    }
}
