//! The one-round-trip circuit handshake (docs/spec.md, "Circuit handshake").
//!
//! ntor-v3 shaped: x25519, HKDF-SHA256, and an AES-256-GCM encrypted, authenticated
//! extension message in each direction.
//!
//! ```text
//! CLIENT_HANDSHAKE = ID(32) || B(32) || X(32) || ENC_c(ext_c) || tag_c(16)
//! SERVER_HANDSHAKE = Y(32) || ENC_s(ext_s) || tag_s(16)
//! ```
//!
//! The client message is authenticated but not forward secret (it depends only on `x·B`);
//! the server message and the hop keys depend on the ephemeral `x·y` and are.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::HkdfExtract;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::layer::{HopKeys, HOP_KEYS_LEN};
use crate::consts::MAX_EXTENSION_LEN;

/// HKDF salt of the handshake (also the protocol identifier).
pub const PROTOID: &[u8] = b"onionvpn-ntor3-v1";
/// HKDF-Expand info for the client message key `k_c`.
pub const INFO_CLIENT_MSG: &[u8] = b"onionvpn-ntor3-v1:client-msg";
/// HKDF-Expand info for `k_s || HopKeys`.
pub const INFO_KEYS: &[u8] = b"onionvpn-ntor3-v1:keys";
/// Length of a relay identity, an onion key and an ephemeral key.
pub const KEY_LEN: usize = 32;
/// Length of a GCM tag on an extension message.
pub const TAG_LEN: usize = 16;
/// CLIENT_HANDSHAKE length without the extension: ID, B, X, tag_c.
pub const CLIENT_HANDSHAKE_OVERHEAD: usize = 3 * KEY_LEN + TAG_LEN; // 112
/// SERVER_HANDSHAKE length without the extension: Y, tag_s.
pub const SERVER_HANDSHAKE_OVERHEAD: usize = KEY_LEN + TAG_LEN; // 48
/// Longest CLIENT_HANDSHAKE: 368 bytes.
pub const CLIENT_HANDSHAKE_MAX: usize = CLIENT_HANDSHAKE_OVERHEAD + MAX_EXTENSION_LEN;
/// Longest SERVER_HANDSHAKE: 304 bytes.
pub const SERVER_HANDSHAKE_MAX: usize = SERVER_HANDSHAKE_OVERHEAD + MAX_EXTENSION_LEN;

const ZERO_NONCE: [u8; 12] = [0; 12];

/// Errors of the circuit handshake. On the relay side each one means: refuse the circuit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A handshake message is shorter or longer than its layout allows.
    #[error("{message} is {len} bytes; expected {min}..={max}")]
    BadLength {
        /// `"CLIENT_HANDSHAKE"` or `"SERVER_HANDSHAKE"`.
        message: &'static str,
        /// Length received.
        len: usize,
        /// Shortest valid length.
        min: usize,
        /// Longest valid length.
        max: usize,
    },
    /// An extension message to send is longer than [`MAX_EXTENSION_LEN`].
    #[error("extension message of {len} bytes exceeds the maximum of {max}")]
    ExtensionTooLong {
        /// Its length.
        len: usize,
        /// [`MAX_EXTENSION_LEN`].
        max: usize,
    },
    /// The client addressed a relay identity that is not this relay's.
    #[error("handshake is for another relay identity")]
    WrongIdentity,
    /// The client used an onion key this relay does not hold (unknown or rotated out).
    #[error("handshake uses an unknown onion key")]
    UnknownOnionKey,
    /// This `X` was seen before within the replay window.
    #[error("replayed client handshake (X seen before)")]
    Replay,
    /// A Diffie-Hellman result was all zero: the peer sent a low-order point.
    #[error("{which} shared secret is all zero (low-order point)")]
    WeakSharedSecret {
        /// Which product: `"x·B"`, `"b·X"`, `"x·Y"` or `"y·X"`.
        which: &'static str,
    },
    /// The client's extension message failed authentication (relay side).
    #[error("client extension message failed authentication")]
    ClientAuthFailed,
    /// The relay's extension message failed authentication (client side): the reply is
    /// not from the holder of the onion key, or keys disagree.
    #[error("relay extension message failed authentication")]
    RelayAuthFailed,
}

/// A relay's public onion key `B` (x25519), as listed in its descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OnionPublicKey(pub [u8; KEY_LEN]);

impl OnionPublicKey {
    /// The 32-byte x25519 encoding.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }
}

/// A relay's secret onion key `b` (x25519 scalar, clamped when used). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct OnionSecretKey {
    secret: [u8; KEY_LEN],
    #[zeroize(skip)]
    public: OnionPublicKey,
}

impl OnionSecretKey {
    /// A fresh random onion key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(secret.as_mut_slice());
        Self::from_bytes(&secret)
    }

    /// From its 32-byte encoding (any 32 bytes; clamped as in RFC 7748 when used).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let public = OnionPublicKey(MontgomeryPoint::mul_base_clamped(*bytes).to_bytes());
        Self {
            secret: *bytes,
            public,
        }
    }

    /// The 32-byte encoding of the secret.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret)
    }

    /// The public key `B`.
    pub fn public(&self) -> OnionPublicKey {
        self.public
    }
}

impl core::fmt::Debug for OnionSecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OnionSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// x25519(scalar, point), refusing an all-zero result.
fn dh(
    scalar: &[u8; KEY_LEN],
    point: &[u8; KEY_LEN],
    which: &'static str,
) -> Result<Zeroizing<[u8; KEY_LEN]>, HandshakeError> {
    let shared = Zeroizing::new(MontgomeryPoint(*point).mul_clamped(*scalar).to_bytes());
    if shared.iter().fold(0u8, |a, b| a | b) == 0 {
        return Err(HandshakeError::WeakSharedSecret { which });
    }
    Ok(shared)
}

/// HKDF-Extract(salt = PROTOID, ikm = concatenation of `parts`), then Expand(info) into `out`.
fn kdf(parts: &[&[u8]], info: &[u8], out: &mut [u8]) {
    let mut ext = HkdfExtract::<Sha256>::new(Some(PROTOID));
    for p in parts {
        ext.input_ikm(p);
    }
    let (_, hk) = ext.finalize();
    // Output lengths used here (32, 160) are far below HKDF-SHA256's 8160-byte limit.
    if hk.expand(info, out).is_err() {
        out.zeroize();
    }
}

fn seal(key: &[u8; 32], aad: &[&[u8]], msg: &[u8], out: &mut Vec<u8>) {
    let aad = aad.concat();
    let start = out.len();
    out.extend_from_slice(msg);
    let cipher = Aes256Gcm::new(key.into());
    let buf = out.get_mut(start..).unwrap_or_default();
    // Encryption only fails for inputs beyond GCM's limits (2^36 bytes); ours are ≤ 256.
    match cipher.encrypt_inout_detached(&ZERO_NONCE.into(), &aad, buf.into()) {
        Ok(tag) => out.extend_from_slice(&tag),
        Err(_) => out.extend_from_slice(&[0u8; TAG_LEN]),
    }
}

fn open(key: &[u8; 32], aad: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
    let aad = aad.concat();
    let (ct, tag) = sealed.split_at_checked(sealed.len().checked_sub(TAG_LEN)?)?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let mut buf = ct.to_vec();
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt_inout_detached(
            &ZERO_NONCE.into(),
            &aad,
            buf.as_mut_slice().into(),
            &tag.into(),
        )
        .ok()?;
    Some(buf)
}

fn take32(bytes: &[u8], at: usize) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    if let Some(s) = bytes.get(at..at + KEY_LEN) {
        out.copy_from_slice(s);
    }
    out
}

/// `okm = HKDF(salt, xy || xb || ID || B || X || Y || ENC_c || tag_c, info = keys, 160)`,
/// split into `k_s (32) || HopKeys (128)`.
fn derive_keys(
    xy: &[u8; KEY_LEN],
    xb: &[u8; KEY_LEN],
    id: &[u8; KEY_LEN],
    b: &[u8; KEY_LEN],
    x: &[u8; KEY_LEN],
    y: &[u8; KEY_LEN],
    enc_c_and_tag: &[u8],
) -> (Zeroizing<[u8; 32]>, HopKeys) {
    let mut okm = Zeroizing::new([0u8; 32 + HOP_KEYS_LEN]);
    kdf(
        &[xy, xb, id, b, x, y, enc_c_and_tag],
        INFO_KEYS,
        okm.as_mut_slice(),
    );
    let mut k_s = Zeroizing::new([0u8; 32]);
    k_s.copy_from_slice(&okm[..32]);
    let mut hop = Zeroizing::new([0u8; HOP_KEYS_LEN]);
    hop.copy_from_slice(&okm[32..]);
    (k_s, HopKeys::from_bytes(&hop))
}

/// `k_c = HKDF(salt, Bx || ID || B || X, info = client-msg, 32)`.
fn client_msg_key(
    bx: &[u8; KEY_LEN],
    id: &[u8; KEY_LEN],
    b: &[u8; KEY_LEN],
    x: &[u8; KEY_LEN],
) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    kdf(&[bx, id, b, x], INFO_CLIENT_MSG, k.as_mut_slice());
    k
}

fn check_ext_len(ext: &[u8]) -> Result<(), HandshakeError> {
    if ext.len() > MAX_EXTENSION_LEN {
        return Err(HandshakeError::ExtensionTooLong {
            len: ext.len(),
            max: MAX_EXTENSION_LEN,
        });
    }
    Ok(())
}

/// The client's state between CLIENT_HANDSHAKE and SERVER_HANDSHAKE. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ClientHandshake {
    x_secret: [u8; KEY_LEN],
    bx: [u8; KEY_LEN],
    id: [u8; KEY_LEN],
    b: [u8; KEY_LEN],
    x_public: [u8; KEY_LEN],
    enc_c_and_tag: Vec<u8>,
}

impl core::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHandshake").finish_non_exhaustive()
    }
}

/// Starts a handshake with the relay whose identity is `id` and onion key `onion_key`
/// (both from its verified descriptor), sending the extension message `ext_c`.
/// Returns the state to keep and the CLIENT_HANDSHAKE message.
pub fn client_handshake<R: CryptoRng + ?Sized>(
    rng: &mut R,
    id: &[u8; KEY_LEN],
    onion_key: &OnionPublicKey,
    ext_c: &[u8],
) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
    let mut x = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(x.as_mut_slice());
    client_handshake_with_ephemeral(&x, id, onion_key, ext_c)
}

/// [`client_handshake`] with an explicit ephemeral secret `x` (test vectors only: `x`
/// must be fresh and secret for every handshake).
#[doc(hidden)]
pub fn client_handshake_with_ephemeral(
    x: &[u8; KEY_LEN],
    id: &[u8; KEY_LEN],
    onion_key: &OnionPublicKey,
    ext_c: &[u8],
) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
    check_ext_len(ext_c)?;
    let b = onion_key.0;
    let x_public = MontgomeryPoint::mul_base_clamped(*x).to_bytes();
    let bx = dh(x, &b, "x·B")?;
    let k_c = client_msg_key(&bx, id, &b, &x_public);
    let mut msg = Vec::with_capacity(CLIENT_HANDSHAKE_OVERHEAD + ext_c.len());
    msg.extend_from_slice(id);
    msg.extend_from_slice(&b);
    msg.extend_from_slice(&x_public);
    seal(&k_c, &[id, &b, &x_public], ext_c, &mut msg);
    let state = ClientHandshake {
        x_secret: *x,
        bx: *bx,
        id: *id,
        b,
        x_public,
        enc_c_and_tag: msg.get(3 * KEY_LEN..).unwrap_or_default().to_vec(),
    };
    Ok((state, msg))
}

impl ClientHandshake {
    /// Processes SERVER_HANDSHAKE: derives the keys and authenticates the relay's
    /// extension message. Returns `ext_s` and the hop's keys.
    pub fn finish(self, reply: &[u8]) -> Result<(Vec<u8>, HopKeys), HandshakeError> {
        if !(SERVER_HANDSHAKE_OVERHEAD..=SERVER_HANDSHAKE_MAX).contains(&reply.len()) {
            return Err(HandshakeError::BadLength {
                message: "SERVER_HANDSHAKE",
                len: reply.len(),
                min: SERVER_HANDSHAKE_OVERHEAD,
                max: SERVER_HANDSHAKE_MAX,
            });
        }
        let y = take32(reply, 0);
        let xy = dh(&self.x_secret, &y, "x·Y")?;
        let (k_s, keys) = derive_keys(
            &xy,
            &self.bx,
            &self.id,
            &self.b,
            &self.x_public,
            &y,
            &self.enc_c_and_tag,
        );
        let ext_s = open(
            &k_s,
            &[&self.id, &self.b, &self.x_public, &y],
            reply.get(KEY_LEN..).unwrap_or_default(),
        )
        .ok_or(HandshakeError::RelayAuthFailed)?;
        Ok((ext_s, keys))
    }
}

/// A CLIENT_HANDSHAKE the relay has accepted: its extension message is authenticated and
/// awaits the caller's decision on the reply. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PendingHandshake {
    xb: [u8; KEY_LEN],
    id: [u8; KEY_LEN],
    b: [u8; KEY_LEN],
    x_public: [u8; KEY_LEN],
    enc_c_and_tag: Vec<u8>,
    ext_c: Vec<u8>,
}

impl core::fmt::Debug for PendingHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingHandshake")
            .field("onion_key", &OnionPublicKey(self.b))
            .finish_non_exhaustive()
    }
}

/// Relay side: parses and checks a CLIENT_HANDSHAKE (identity, onion key, replay,
/// authentication of `ext_c`). `keys` are this relay's onion keys (current and, during
/// rotation, previous). On success `X` is remembered in `replay`.
pub fn relay_handshake_accept(
    id: &[u8; KEY_LEN],
    keys: &[OnionSecretKey],
    replay: &mut ReplayCache,
    now: Instant,
    msg: &[u8],
) -> Result<PendingHandshake, HandshakeError> {
    if !(CLIENT_HANDSHAKE_OVERHEAD..=CLIENT_HANDSHAKE_MAX).contains(&msg.len()) {
        return Err(HandshakeError::BadLength {
            message: "CLIENT_HANDSHAKE",
            len: msg.len(),
            min: CLIENT_HANDSHAKE_OVERHEAD,
            max: CLIENT_HANDSHAKE_MAX,
        });
    }
    let msg_id = take32(msg, 0);
    let b = take32(msg, KEY_LEN);
    let x_public = take32(msg, 2 * KEY_LEN);
    if msg_id != *id {
        return Err(HandshakeError::WrongIdentity);
    }
    let key = keys
        .iter()
        .find(|k| k.public.0 == b)
        .ok_or(HandshakeError::UnknownOnionKey)?;
    replay.check(&x_public, now)?;
    let xb = dh(&key.secret, &x_public, "b·X")?;
    let k_c = client_msg_key(&xb, id, &b, &x_public);
    let enc_c_and_tag = msg.get(3 * KEY_LEN..).unwrap_or_default();
    let ext_c =
        open(&k_c, &[id, &b, &x_public], enc_c_and_tag).ok_or(HandshakeError::ClientAuthFailed)?;
    replay.insert(x_public, now);
    Ok(PendingHandshake {
        xb: *xb,
        id: *id,
        b,
        x_public,
        enc_c_and_tag: enc_c_and_tag.to_vec(),
        ext_c,
    })
}

impl PendingHandshake {
    /// The client's authenticated extension message.
    pub fn client_extensions(&self) -> &[u8] {
        &self.ext_c
    }

    /// The onion key the client used (current or previous).
    pub fn onion_key(&self) -> OnionPublicKey {
        OnionPublicKey(self.b)
    }

    /// Completes the handshake with the reply extension `ext_s`: returns SERVER_HANDSHAKE
    /// and the hop's keys.
    pub fn reply<R: CryptoRng + ?Sized>(
        self,
        rng: &mut R,
        ext_s: &[u8],
    ) -> Result<(Vec<u8>, HopKeys), HandshakeError> {
        let mut y = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(y.as_mut_slice());
        self.reply_with_ephemeral(&y, ext_s)
    }

    /// [`PendingHandshake::reply`] with an explicit ephemeral secret `y` (test vectors
    /// only: `y` must be fresh and secret for every handshake).
    #[doc(hidden)]
    pub fn reply_with_ephemeral(
        self,
        y: &[u8; KEY_LEN],
        ext_s: &[u8],
    ) -> Result<(Vec<u8>, HopKeys), HandshakeError> {
        check_ext_len(ext_s)?;
        let y_public = MontgomeryPoint::mul_base_clamped(*y).to_bytes();
        let xy = dh(y, &self.x_public, "y·X")?;
        let (k_s, keys) = derive_keys(
            &xy,
            &self.xb,
            &self.id,
            &self.b,
            &self.x_public,
            &y_public,
            &self.enc_c_and_tag,
        );
        let mut msg = Vec::with_capacity(SERVER_HANDSHAKE_OVERHEAD + ext_s.len());
        msg.extend_from_slice(&y_public);
        seal(
            &k_s,
            &[&self.id, &self.b, &self.x_public, &y_public],
            ext_s,
            &mut msg,
        );
        Ok((msg, keys))
    }
}

/// Replay cache of client ephemeral keys `X`, sans-IO: the caller passes the time.
///
/// Bounded: at capacity the oldest entry is evicted. Entries older than `window` (set it
/// to how long an onion key stays accepted: a rotation period plus the overlap with the
/// previous key) expire, because a handshake for a retired onion key fails anyway.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    window: Duration,
    seen: HashMap<[u8; KEY_LEN], Instant>,
    order: VecDeque<([u8; KEY_LEN], Instant)>,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` (≥ 1) entries for at most `window`.
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            window,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Number of remembered entries.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((x, t)) = self.order.front() {
            if now.saturating_duration_since(*t) < self.window {
                break;
            }
            if self.seen.get(x) == Some(t) {
                self.seen.remove(x);
            }
            self.order.pop_front();
        }
    }

    /// Fails with [`HandshakeError::Replay`] if `x` is remembered (after expiring old entries).
    pub fn check(&mut self, x: &[u8; KEY_LEN], now: Instant) -> Result<(), HandshakeError> {
        self.expire(now);
        if self.seen.contains_key(x) {
            return Err(HandshakeError::Replay);
        }
        Ok(())
    }

    /// Remembers `x` seen at `now`, evicting the oldest entry at capacity.
    pub fn insert(&mut self, x: [u8; KEY_LEN], now: Instant) {
        self.expire(now);
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((old, t)) => {
                    if self.seen.get(&old) == Some(&t) {
                        self.seen.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.seen.insert(x, now);
        self.order.push_back((x, now));
    }

    /// [`ReplayCache::check`] then [`ReplayCache::insert`].
    pub fn check_and_insert(
        &mut self,
        x: [u8; KEY_LEN],
        now: Instant,
    ) -> Result<(), HandshakeError> {
        self.check(&x, now)?;
        self.insert(x, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::CELL_BODY_LEN;
    use crate::crypto::layer::{ClientCircuitCrypto, Recognized, RelayCircuitCrypto};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const ID: [u8; 32] = [0x11; 32];

    struct Setup {
        rng: StdRng,
        keys: Vec<OnionSecretKey>,
        replay: ReplayCache,
        now: Instant,
    }

    fn setup(seed: u64) -> Setup {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = vec![
            OnionSecretKey::generate(&mut rng),
            OnionSecretKey::generate(&mut rng),
        ];
        Setup {
            rng,
            keys,
            replay: ReplayCache::new(1024, Duration::from_secs(3600)),
            now: Instant::now(),
        }
    }

    #[test]
    fn round_trip_agrees_on_keys_and_extensions() {
        let mut s = setup(1);
        for (i, key) in [0usize, 1].into_iter().enumerate() {
            let b = s.keys[key].public();
            let ext_c = vec![i as u8; 200];
            let (client, msg) = client_handshake(&mut s.rng, &ID, &b, &ext_c).unwrap();
            assert_eq!(msg.len(), CLIENT_HANDSHAKE_OVERHEAD + 200);
            let pending = relay_handshake_accept(&ID, &s.keys, &mut s.replay, s.now, &msg).unwrap();
            assert_eq!(pending.client_extensions(), &ext_c[..]);
            assert_eq!(pending.onion_key(), b);
            let (reply, relay_keys) = pending.reply(&mut s.rng, b"terms").unwrap();
            assert_eq!(reply.len(), SERVER_HANDSHAKE_OVERHEAD + 5);
            let (ext_s, client_keys) = client.finish(&reply).unwrap();
            assert_eq!(ext_s, b"terms");
            assert_eq!(client_keys.to_bytes(), relay_keys.to_bytes());
            // and the keys work as a circuit hop
            let mut c = ClientCircuitCrypto::new();
            c.add_hop(&client_keys).unwrap();
            let mut r = RelayCircuitCrypto::from_keys(&relay_keys);
            let mut cell = [9u8; CELL_BODY_LEN];
            c.encrypt_to(0, &mut cell).unwrap();
            assert_eq!(r.decrypt_forward(&mut cell).unwrap(), Recognized::ForMe);
        }
        assert_eq!(s.replay.len(), 2);
    }

    #[test]
    fn empty_and_maximal_extensions() {
        let mut s = setup(2);
        let b = s.keys[0].public();
        for len in [0, MAX_EXTENSION_LEN] {
            let ext = vec![0xA5; len];
            let (client, msg) = client_handshake(&mut s.rng, &ID, &b, &ext).unwrap();
            assert!(msg.len() <= CLIENT_HANDSHAKE_MAX);
            let pending = relay_handshake_accept(&ID, &s.keys, &mut s.replay, s.now, &msg).unwrap();
            let (reply, _) = pending.reply(&mut s.rng, &ext).unwrap();
            assert!(reply.len() <= SERVER_HANDSHAKE_MAX);
            assert_eq!(client.finish(&reply).unwrap().0, ext);
        }
        let too_long = vec![0; MAX_EXTENSION_LEN + 1];
        assert_eq!(
            client_handshake(&mut s.rng, &ID, &b, &too_long).unwrap_err(),
            HandshakeError::ExtensionTooLong {
                len: MAX_EXTENSION_LEN + 1,
                max: MAX_EXTENSION_LEN
            }
        );
    }

    #[test]
    fn relay_refuses_bad_client_messages() {
        let mut s = setup(3);
        let b = s.keys[0].public();
        let (_, msg) = client_handshake(&mut s.rng, &ID, &b, b"hi").unwrap();
        let accept = |s: &mut Setup, m: &[u8]| {
            relay_handshake_accept(&ID, &s.keys, &mut s.replay, s.now, m).map(|_| ())
        };
        // wrong identity
        assert_eq!(
            relay_handshake_accept(&[0x22; 32], &s.keys, &mut s.replay, s.now, &msg).unwrap_err(),
            HandshakeError::WrongIdentity
        );
        // unknown onion key (rotated out)
        let only_other = vec![OnionSecretKey::from_bytes(&s.keys[1].to_bytes())];
        assert_eq!(
            relay_handshake_accept(&ID, &only_other, &mut s.replay, s.now, &msg).unwrap_err(),
            HandshakeError::UnknownOnionKey
        );
        // lengths
        for len in [
            0,
            50,
            CLIENT_HANDSHAKE_OVERHEAD - 1,
            CLIENT_HANDSHAKE_MAX + 1,
        ] {
            let m = vec![0u8; len];
            assert!(matches!(
                accept(&mut s, &m),
                Err(HandshakeError::BadLength { len: l, .. }) if l == len
            ));
        }
        // any flipped bit in X, the ciphertext or the tag fails authentication
        for byte in [2 * KEY_LEN, 3 * KEY_LEN, msg.len() - 1] {
            let mut m = msg.clone();
            m[byte] ^= 0x40;
            let err = accept(&mut s, &m).unwrap_err();
            assert!(
                matches!(
                    err,
                    HandshakeError::ClientAuthFailed | HandshakeError::WeakSharedSecret { .. }
                ),
                "{err:?}"
            );
        }
        // low-order X (the identity point, u = 0, and u = 1) → weak shared secret
        for low in [[0u8; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }] {
            let mut m = msg.clone();
            m[2 * KEY_LEN..3 * KEY_LEN].copy_from_slice(&low);
            assert!(matches!(
                accept(&mut s, &m),
                Err(HandshakeError::WeakSharedSecret { .. })
            ));
        }
        // failures do not poison the replay cache; success does, then replay is refused
        assert!(accept(&mut s, &msg).is_ok());
        assert_eq!(accept(&mut s, &msg).unwrap_err(), HandshakeError::Replay);
    }

    #[test]
    fn client_refuses_bad_replies() {
        let mut s = setup(4);
        let b = s.keys[0].public();
        let make = |s: &mut Setup| {
            let (client, msg) = client_handshake(&mut s.rng, &ID, &b, b"c").unwrap();
            let pending = relay_handshake_accept(&ID, &s.keys, &mut s.replay, s.now, &msg).unwrap();
            let (reply, _) = pending.reply(&mut s.rng, b"server").unwrap();
            (client, reply)
        };
        for byte in [0usize, 31, 32, 40] {
            let (client, mut reply) = make(&mut s);
            reply[byte] ^= 1;
            assert!(client.finish(&reply).is_err());
        }
        let (client, reply) = make(&mut s);
        assert!(matches!(
            client.finish(&reply[..SERVER_HANDSHAKE_OVERHEAD - 1]),
            Err(HandshakeError::BadLength { .. })
        ));
        let (client, mut reply) = make(&mut s);
        reply[..32].copy_from_slice(&[0u8; 32]);
        assert_eq!(
            client.finish(&reply).unwrap_err(),
            HandshakeError::WeakSharedSecret { which: "x·Y" }
        );
        // a reply made by someone without b: a relay holding a different key
        let (client, msg) = client_handshake(&mut s.rng, &ID, &b, b"c").unwrap();
        let mut forged = msg.clone();
        let impostor = OnionSecretKey::generate(&mut s.rng);
        forged[KEY_LEN..2 * KEY_LEN].copy_from_slice(&impostor.public().0);
        // the impostor cannot even read ext_c
        assert_eq!(
            relay_handshake_accept(&ID, &[impostor], &mut s.replay, s.now, &forged).unwrap_err(),
            HandshakeError::ClientAuthFailed
        );
        let (client2, _) = make(&mut s);
        let (_, other_reply) = make(&mut s);
        assert_eq!(
            client2.finish(&other_reply).unwrap_err(),
            HandshakeError::RelayAuthFailed
        );
        drop(client);
    }

    #[test]
    fn replay_cache_expires_and_is_bounded() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut cache = ReplayCache::new(3, window);
        cache.check_and_insert([1; 32], t0).unwrap();
        assert_eq!(
            cache.check_and_insert([1; 32], t0 + Duration::from_secs(59)),
            Err(HandshakeError::Replay)
        );
        // expired after the window
        cache.check_and_insert([1; 32], t0 + window).unwrap();
        // capacity 3: the oldest is evicted
        let t1 = t0 + window;
        cache.check_and_insert([2; 32], t1).unwrap();
        cache.check_and_insert([3; 32], t1).unwrap();
        assert_eq!(cache.len(), 3);
        cache.check_and_insert([4; 32], t1).unwrap();
        assert_eq!(cache.len(), 3);
        assert!(cache.check(&[1; 32], t1).is_ok());
        assert_eq!(cache.check(&[4; 32], t1), Err(HandshakeError::Replay));
        assert_eq!(cache.check(&[2; 32], t1), Err(HandshakeError::Replay));
        // everything expires
        assert!(cache.check(&[4; 32], t1 + window).is_ok());
        assert!(cache.is_empty());
    }

    #[test]
    fn onion_key_round_trips_bytes() {
        let mut rng = StdRng::seed_from_u64(5);
        let k = OnionSecretKey::generate(&mut rng);
        let k2 = OnionSecretKey::from_bytes(&k.to_bytes());
        assert_eq!(k.public(), k2.public());
        assert_ne!(k.public().to_bytes(), [0u8; 32]);
    }
}
