//! The primitives behind the link's Noise session, plugged into `snow` as a resolver.
//!
//! `snow` is used with its default features off: it contributes the Noise state machine,
//! and this module contributes `25519`, `AESGCM` and `SHA256` on the same crates the rest of
//! `proto` uses (`curve25519-dalek` 5, `aes-gcm` 0.11, `sha2` 0.11), plus a randomness source
//! filled from the caller's RNG. That keeps one version of each primitive in the build, keeps
//! the AES key schedule across messages (snow's default AESGCM re-expands the key for every
//! message), and makes a handshake deterministic for a given RNG (the simulator relies on it).

use core::cell::Cell;

use aes_gcm::aead::array::Array;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::{Zeroize, Zeroizing};

/// Bytes of randomness one side of an NK handshake consumes: one ephemeral x25519 key.
pub(super) const HANDSHAKE_RANDOM_LEN: usize = 32;

/// Length of an x25519 key (public or private) and of a DH output.
const X25519_LEN: usize = 32;
/// Length of an AES-GCM tag.
const TAG_LEN: usize = 16;

/// The resolver handed to `snow::Builder::with_resolver`.
pub(super) struct LinkResolver {
    /// Randomness for the one ephemeral key, moved out on the first `resolve_rng`.
    random: Cell<Option<Zeroizing<[u8; HANDSHAKE_RANDOM_LEN]>>>,
}

impl LinkResolver {
    /// A resolver whose randomness source yields exactly `random` and then fails.
    pub(super) fn new(random: Zeroizing<[u8; HANDSHAKE_RANDOM_LEN]>) -> Self {
        Self {
            random: Cell::new(Some(random)),
        }
    }
}

impl CryptoResolver for LinkResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let bytes = self.random.take()?;
        Some(Box::new(Preloaded { bytes, used: 0 }))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::SHA256 => Some(Box::new(Sha256Hash(Sha256::new()))),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::AESGCM => Some(Box::new(AesGcmCipher::new(&[0; 32]))),
            _ => None,
        }
    }
}

/// A randomness source that serves a fixed buffer once, then refuses.
struct Preloaded {
    bytes: Zeroizing<[u8; HANDSHAKE_RANDOM_LEN]>,
    used: usize,
}

impl Random for Preloaded {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        let end = self.used.checked_add(dest.len()).ok_or(snow::Error::Rng)?;
        let src = self.bytes.get(self.used..end).ok_or(snow::Error::Rng)?;
        dest.copy_from_slice(src);
        self.bytes[self.used..end].zeroize();
        self.used = end;
        Ok(())
    }
}

/// x25519 (RFC 7748) for Noise's `25519`.
#[derive(Default)]
struct X25519 {
    private: Zeroizing<[u8; X25519_LEN]>,
    public: [u8; X25519_LEN],
}

impl X25519 {
    fn set_private(&mut self, private: [u8; X25519_LEN]) {
        *self.private = private;
        self.public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        X25519_LEN
    }

    fn priv_len(&self) -> usize {
        X25519_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut key = Zeroizing::new([0u8; X25519_LEN]);
        let n = privkey.len().min(X25519_LEN);
        key[..n].copy_from_slice(&privkey[..n]);
        self.set_private(*key);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut key = Zeroizing::new([0u8; X25519_LEN]);
        rng.try_fill_bytes(&mut key[..])?;
        self.set_private(*key);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; X25519_LEN] = pubkey
            .get(..X25519_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = Zeroizing::new(MontgomeryPoint(peer).mul_clamped(*self.private).to_bytes());
        // A low-order peer key gives the all-zero output: refuse it (the Noise spec allows
        // either; refusing keeps every DH contributory).
        if shared.iter().all(|&b| b == 0) {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..X25519_LEN)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(&shared[..]);
        Ok(())
    }
}

/// SHA-256 for Noise's `SHA256`.
struct Sha256Hash(Sha256);

impl Hash for Sha256Hash {
    fn name(&self) -> &'static str {
        "SHA256"
    }

    fn block_len(&self) -> usize {
        64
    }

    fn hash_len(&self) -> usize {
        32
    }

    fn reset(&mut self) {
        self.0 = Sha256::new();
    }

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        let digest = self.0.finalize_reset();
        let n = out.len().min(digest.len());
        out[..n].copy_from_slice(&digest[..n]);
    }
}

/// AES-256-GCM for Noise's `AESGCM`: nonce = 32 zero bits || counter as u64 big-endian.
///
/// The key schedule is expanded once per `set`, not per message.
struct AesGcmCipher(Aes256Gcm);

impl AesGcmCipher {
    fn new(key: &[u8; 32]) -> Self {
        Self(Aes256Gcm::new(&Array::from(*key)))
    }

    fn nonce(n: u64) -> Array<u8, aes_gcm::aead::consts::U12> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Array::from(nonce)
    }
}

impl Cipher for AesGcmCipher {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        *self = Self::new(key);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        // snow sizes `out` before calling; a short buffer yields 0 bytes, which every caller
        // in this crate treats as a failure.
        let Some(total) = len.checked_add(TAG_LEN).filter(|&t| t <= out.len()) else {
            return 0;
        };
        let (body, rest) = out.split_at_mut(len);
        body.copy_from_slice(plaintext);
        match self
            .0
            .encrypt_inout_detached(&Self::nonce(nonce), authtext, body.into())
        {
            Ok(tag) => {
                rest[..TAG_LEN].copy_from_slice(&tag);
                total
            }
            Err(_) => {
                // Only reachable for messages far beyond Noise's 65535-byte limit.
                body.zeroize();
                0
            }
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let (ct, tag) = ciphertext.split_at(len);
        let body = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        body.copy_from_slice(ct);
        let tag = Array::try_from(tag).map_err(|_| snow::Error::Decrypt)?;
        match self
            .0
            .decrypt_inout_detached(&Self::nonce(nonce), authtext, body.into(), &tag)
        {
            Ok(()) => Ok(len),
            Err(_) => {
                body.zeroize();
                Err(snow::Error::Decrypt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn arr(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }

    /// The published Noise test vector for `Noise_NK_25519_AESGCM_SHA256` (cacophony), run
    /// through snow's state machine with this module's primitives: ties them to the spec.
    #[test]
    fn cacophony_nk_aesgcm_sha256_vector() {
        let params: snow::params::NoiseParams = "Noise_NK_25519_AESGCM_SHA256".parse().unwrap();
        let prologue = hex("4a6f686e2047616c74");
        let resp_static = arr("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893");
        let resp_public = MontgomeryPoint::mul_base_clamped(resp_static).to_bytes();
        let init_e = arr("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a");
        let resp_e = arr("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b");
        let mut init = snow::Builder::with_resolver(
            params.clone(),
            Box::new(LinkResolver::new(Zeroizing::new(init_e))),
        )
        .prologue(&prologue)
        .unwrap()
        .remote_public_key(&resp_public)
        .unwrap()
        .build_initiator()
        .unwrap();
        let mut resp = snow::Builder::with_resolver(
            params,
            Box::new(LinkResolver::new(Zeroizing::new(resp_e))),
        )
        .prologue(&prologue)
        .unwrap()
        .local_private_key(&resp_static)
        .unwrap()
        .build_responder()
        .unwrap();
        let msgs = [
            ("4c756477696720766f6e204d69736573", "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c794475ab4d66d222457dd414bc5f296bc7b4078cc7d72af5192628b68bca7d28844b"),
            ("4d757272617920526f746862617264", "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884303c7d89310502baa8299520ba451624c3c0492e2698f8d457c32400b91fd8a"),
            ("462e20412e20486179656b", "304f70c37c93573099228016d54cb15213af94eb598d1b17df1153"),
            ("4361726c204d656e676572", "a1bf6c954529f29b31d8ae9f67d2c18dbd332aa1a0918690c6d80b"),
            ("4a65616e2d426170746973746520536179", "2e8f3e51888360b2b2d83a64dde9943c7dd3c5e84ac7c4b4e2d5cfc025b6c854d3"),
            ("457567656e2042f6686d20766f6e2042617765726b", "8498bf41212a8b87c9eeb408274c75b3558fd0530865b5a7932d4b3af812d85b3df27e6f33"),
        ];
        let mut buf = [0u8; 256];
        let mut pt = [0u8; 256];
        // Handshake: message 0 initiator → responder, message 1 back.
        let n = init.write_message(&hex(msgs[0].0), &mut buf).unwrap();
        assert_eq!(&buf[..n], &hex(msgs[0].1)[..]);
        let m = resp.read_message(&buf[..n], &mut pt).unwrap();
        assert_eq!(&pt[..m], &hex(msgs[0].0)[..]);
        let n = resp.write_message(&hex(msgs[1].0), &mut buf).unwrap();
        assert_eq!(&buf[..n], &hex(msgs[1].1)[..]);
        let m = init.read_message(&buf[..n], &mut pt).unwrap();
        assert_eq!(&pt[..m], &hex(msgs[1].0)[..]);
        assert_eq!(
            init.get_handshake_hash(),
            &hex("f8a87aa8add4fea6e33365b89637486c2f6564546ce29d1df9ce9abf78c507d7")[..]
        );
        let mut init = init.into_transport_mode().unwrap();
        let mut resp = resp.into_transport_mode().unwrap();
        for (i, (p, c)) in msgs[2..].iter().enumerate() {
            let (tx, rx) = if i % 2 == 0 {
                (&mut init, &mut resp)
            } else {
                (&mut resp, &mut init)
            };
            let n = tx.write_message(&hex(p), &mut buf).unwrap();
            assert_eq!(&buf[..n], &hex(c)[..]);
            let m = rx.read_message(&buf[..n], &mut pt).unwrap();
            assert_eq!(&pt[..m], &hex(p)[..]);
        }
    }

    #[test]
    fn preloaded_random_serves_once() {
        let mut r = Preloaded {
            bytes: Zeroizing::new([7; 32]),
            used: 0,
        };
        let mut a = [0u8; 32];
        r.try_fill_bytes(&mut a).unwrap();
        assert_eq!(a, [7; 32]);
        assert!(r.try_fill_bytes(&mut [0u8; 1]).is_err());
    }

    #[test]
    fn low_order_point_is_refused() {
        let mut dh = X25519::default();
        dh.set(&[9; 32]);
        let mut out = [0u8; 32];
        // The identity point (u = 0) has order 1: the output would be all zero.
        assert!(dh.dh(&[0; 32], &mut out).is_err());
        assert!(dh
            .dh(
                &MontgomeryPoint::mul_base_clamped([5; 32]).to_bytes(),
                &mut out
            )
            .is_ok());
    }
}
