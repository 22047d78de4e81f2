//! The link: a Noise NK handshake and the framed, encrypted cell stream after it (docs/spec.md, "Links").
//!
//! Sans-IO: every type here takes bytes (and randomness) in and gives bytes out; the tokio
//! shells in `relay` and `client` own the TCP socket.
//!
//! ```text
//! initiator (client, or a relay extending)            responder (relay)
//!   LinkInitiator::new(rng, identity, link_key)
//!       ── frame 1: LEN || Noise msg (e, es; payload = offered versions) ──▶
//!                                                     LinkResponder::new(rng, identity, &secret)
//!                                                     responder.read_frame(msg) → (Link, frame 2)
//!       ◀── frame 2: LEN || Noise msg (e, ee; payload = chosen version) ──
//!   initiator.read_frame(msg) → Link
//!       ◀═══ LEN || AEAD(k × 512-byte cells), 1 ≤ k ≤ 64 ═══▶
//! ```
//!
//! Incoming bytes go through a [`FrameDecoder`], which cuts the TCP byte stream into frame
//! bodies (the bytes after `LEN`); [`LinkInitiator::read_frame`], [`LinkResponder::read_frame`]
//! and [`Link::decrypt_frame`] take those bodies. Everything this module *produces* is ready
//! to write to the socket, `LEN` included.
//!
//! Any error from a [`Link`] is fatal: the link refuses all further use
//! ([`LinkError::Closed`]) and the caller must close the TCP connection.

mod noise;

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::consts::CELL_LEN;

/// The Noise protocol name of a link.
pub const NOISE_PARAMS: &str = "Noise_NK_25519_AESGCM_SHA256";
/// The label at the start of the Noise prologue; the relay's ed25519 identity follows it.
pub const PROLOGUE_LABEL: &[u8; 16] = b"onionvpn-link-v1";
/// Link protocol version 1: the framing and cell layout of this module.
pub const LINK_VERSION_1: u8 = 1;
/// The link versions this implementation speaks, in order of preference (most preferred last).
pub const SUPPORTED_LINK_VERSIONS: &[u8] = &[LINK_VERSION_1];
/// Length of the big-endian length prefix of every frame.
pub const FRAME_HEADER_LEN: usize = 2;
/// Length of the AEAD tag at the end of every Noise message.
pub const AEAD_TAG_LEN: usize = 16;
/// Most cells one transport frame may carry.
pub const MAX_CELLS_PER_FRAME: usize = 64;
/// Largest frame body (the value of `LEN`) on a link: 64 cells and a tag (32 784 bytes).
pub const MAX_FRAME_LEN: usize = MAX_CELLS_PER_FRAME * CELL_LEN + AEAD_TAG_LEN;
/// Smallest transport frame body: one cell and a tag.
pub const MIN_TRANSPORT_FRAME_LEN: usize = CELL_LEN + AEAD_TAG_LEN;
/// Length of an x25519 public key, the `e` token of a Noise message.
const DH_LEN: usize = 32;
/// Length of message 2 of the handshake: `e` || AEAD(chosen version).
const MSG2_LEN: usize = DH_LEN + 1 + AEAD_TAG_LEN;

/// Errors of the link. Each one ends the link: the caller closes the TCP connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A handshake message failed authentication: the relay does not hold the link key the
    /// initiator expected, the identity in the prologue differs, or the message was altered.
    #[error("link handshake failed at {stage}: authentication failed")]
    HandshakeAuth {
        /// Which handshake message failed.
        stage: HandshakeStage,
    },
    /// A handshake message had an impossible length.
    #[error("link handshake {stage}: message of {len} bytes (expected {expected})")]
    HandshakeLength {
        /// Which handshake message.
        stage: HandshakeStage,
        /// Its length.
        len: usize,
        /// What was expected (a minimum for message 1, exact for message 2).
        expected: usize,
    },
    /// The version list in message 1 was empty or shorter than its count.
    #[error("malformed version list in message 1 ({len} payload bytes)")]
    MalformedVersions {
        /// Length of the decrypted payload.
        len: usize,
    },
    /// The responder supports none of the offered link versions.
    #[error("no common link version (peer offered {offered:?})")]
    NoCommonVersion {
        /// The versions the initiator offered.
        offered: Vec<u8>,
    },
    /// The responder chose a version the initiator did not offer.
    #[error("responder chose link version {chosen}, which was not offered")]
    VersionNotOffered {
        /// The version it chose.
        chosen: u8,
    },
    /// A frame's `LEN` was zero.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame's `LEN` exceeded the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLong {
        /// The frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transport frame too short to hold one cell and a tag.
    #[error("transport frame of {len} bytes is shorter than one cell and a tag")]
    FrameTooShort {
        /// The frame length.
        len: usize,
    },
    /// A transport frame whose plaintext is not a whole number of cells.
    #[error("transport plaintext of {plaintext_len} bytes is not a whole number of cells")]
    PartialCell {
        /// Length of the plaintext (frame length minus the tag).
        plaintext_len: usize,
    },
    /// A transport frame failed authentication: altered, replayed, reordered or truncated.
    #[error("transport frame {frame_len} bytes long failed authentication")]
    Decrypt {
        /// The frame length.
        frame_len: usize,
    },
    /// A direction's 2^64 nonces are used up (never in practice); the link must be replaced.
    #[error("link nonces exhausted")]
    NonceExhausted,
    /// The frame decoder's bounded buffer cannot take more bytes until frames are consumed.
    #[error("frame decoder full: {buffered} bytes buffered, {incoming} more offered, capacity {capacity}")]
    BufferFull {
        /// Bytes already buffered.
        buffered: usize,
        /// Bytes offered.
        incoming: usize,
        /// The capacity.
        capacity: usize,
    },
    /// The link already failed; it must be closed.
    #[error("link already failed and must be closed")]
    Closed,
    /// The Noise engine refused an operation (a local bug or a bad key, not peer input).
    #[error("noise engine error during {context}")]
    Noise {
        /// What was being done.
        context: &'static str,
        /// The engine's error.
        #[source]
        source: snow::Error,
    },
}

/// The message of the link handshake an error refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStage {
    /// Message 1, initiator → responder.
    Message1,
    /// Message 2, responder → initiator.
    Message2,
}

impl core::fmt::Display for HandshakeStage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Message1 => "message 1",
            Self::Message2 => "message 2",
        })
    }
}

fn noise_err(context: &'static str) -> impl FnOnce(snow::Error) -> LinkError {
    move |source| LinkError::Noise { context, source }
}

/// A relay's static x25519 link key (the Noise `s` of the responder), listed in its descriptor.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct LinkSecretKey([u8; 32]);

impl LinkSecretKey {
    /// A fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key from its 32 stored bytes (any 32 bytes are a valid key; x25519 clamps).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes to store (in a file readable only by the relay).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    /// The public link key: `X25519(self, 9)`, as published in the descriptor.
    pub fn public(&self) -> [u8; 32] {
        curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(self.0).to_bytes()
    }
}

impl core::fmt::Debug for LinkSecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkSecretKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// The Noise prologue of a link to the relay with ed25519 identity `identity`.
pub fn prologue(identity: &[u8; 32]) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[..16].copy_from_slice(PROLOGUE_LABEL);
    p[16..].copy_from_slice(identity);
    p
}

fn params() -> Result<snow::params::NoiseParams, LinkError> {
    NOISE_PARAMS
        .parse()
        .map_err(noise_err("parsing the protocol name"))
}

fn resolver<R: CryptoRng + ?Sized>(rng: &mut R) -> Box<noise::LinkResolver> {
    let mut random = Zeroizing::new([0u8; noise::HANDSHAKE_RANDOM_LEN]);
    rng.fill_bytes(&mut random[..]);
    Box::new(noise::LinkResolver::new(random))
}

/// Prefixes `body` with its length and appends both to `out`.
fn push_frame(out: &mut Vec<u8>, body: &[u8]) {
    // Every body this module writes is at most MAX_FRAME_LEN < 2^16 bytes.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// The initiator's side of a link handshake, waiting for message 2.
pub struct LinkInitiator {
    hs: snow::HandshakeState,
    offered: Vec<u8>,
}

impl core::fmt::Debug for LinkInitiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkInitiator")
            .field("offered", &self.offered)
            .finish_non_exhaustive()
    }
}

impl LinkInitiator {
    /// Starts a handshake with the relay whose descriptor lists ed25519 `relay_identity` and
    /// x25519 `relay_link_key`, offering [`SUPPORTED_LINK_VERSIONS`]. Returns the state and
    /// frame 1 (with its `LEN`), to be written to the TCP connection.
    ///
    /// `rng` supplies the ephemeral key (32 bytes); a seeded RNG makes the handshake
    /// reproducible, as the simulator needs.
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        relay_identity: [u8; 32],
        relay_link_key: [u8; 32],
    ) -> Result<(Self, Vec<u8>), LinkError> {
        Self::with_versions(rng, relay_identity, relay_link_key, SUPPORTED_LINK_VERSIONS)
    }

    /// As [`LinkInitiator::new`], offering `versions` (1 to 255 of them) instead.
    pub fn with_versions<R: CryptoRng + ?Sized>(
        rng: &mut R,
        relay_identity: [u8; 32],
        relay_link_key: [u8; 32],
        versions: &[u8],
    ) -> Result<(Self, Vec<u8>), LinkError> {
        let count = u8::try_from(versions.len()).ok().filter(|&c| c > 0).ok_or(
            LinkError::MalformedVersions {
                len: versions.len(),
            },
        )?;
        let prologue = prologue(&relay_identity);
        let mut hs = snow::Builder::with_resolver(params()?, resolver(rng))
            .prologue(&prologue)
            .and_then(|b| b.remote_public_key(&relay_link_key))
            .and_then(|b| b.build_initiator())
            .map_err(noise_err("building the initiator"))?;
        let mut payload = Vec::with_capacity(1 + versions.len());
        payload.push(count);
        payload.extend_from_slice(versions);
        let mut msg = vec![0u8; DH_LEN + payload.len() + AEAD_TAG_LEN];
        let n = hs
            .write_message(&payload, &mut msg)
            .map_err(noise_err("writing message 1"))?;
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + n);
        push_frame(&mut frame, &msg[..n]);
        Ok((
            Self {
                hs,
                offered: versions.to_vec(),
            },
            frame,
        ))
    }

    /// Reads message 2 (a frame body from the [`FrameDecoder`]) and finishes the handshake.
    pub fn read_frame(mut self, frame: &[u8]) -> Result<Link, LinkError> {
        let stage = HandshakeStage::Message2;
        if frame.len() != MSG2_LEN {
            return Err(LinkError::HandshakeLength {
                stage,
                len: frame.len(),
                expected: MSG2_LEN,
            });
        }
        let mut payload = [0u8; MSG2_LEN];
        let n = self
            .hs
            .read_message(frame, &mut payload)
            .map_err(|e| match e {
                snow::Error::Decrypt | snow::Error::Dh => LinkError::HandshakeAuth { stage },
                other => LinkError::Noise {
                    context: "reading message 2",
                    source: other,
                },
            })?;
        let chosen = match payload.get(..n) {
            Some(&[v]) => v,
            _ => {
                return Err(LinkError::HandshakeLength {
                    stage,
                    len: frame.len(),
                    expected: MSG2_LEN,
                })
            }
        };
        if !self.offered.contains(&chosen) {
            return Err(LinkError::VersionNotOffered { chosen });
        }
        Link::from_handshake(self.hs, chosen)
    }
}

/// The responder's side of a link handshake (a relay accepting a TCP connection).
pub struct LinkResponder {
    hs: snow::HandshakeState,
    supported: Vec<u8>,
}

impl core::fmt::Debug for LinkResponder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkResponder")
            .field("supported", &self.supported)
            .finish_non_exhaustive()
    }
}

impl LinkResponder {
    /// Prepares to answer a handshake as the relay with ed25519 `identity` and link key
    /// `static_secret`, speaking [`SUPPORTED_LINK_VERSIONS`]. `rng` supplies the ephemeral key.
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        identity: [u8; 32],
        static_secret: &LinkSecretKey,
    ) -> Result<Self, LinkError> {
        Self::with_versions(rng, identity, static_secret, SUPPORTED_LINK_VERSIONS)
    }

    /// As [`LinkResponder::new`], speaking `versions` instead (the highest common one wins).
    pub fn with_versions<R: CryptoRng + ?Sized>(
        rng: &mut R,
        identity: [u8; 32],
        static_secret: &LinkSecretKey,
        versions: &[u8],
    ) -> Result<Self, LinkError> {
        let prologue = prologue(&identity);
        let hs = snow::Builder::with_resolver(params()?, resolver(rng))
            .prologue(&prologue)
            .and_then(|b| b.local_private_key(&static_secret.0))
            .and_then(|b| b.build_responder())
            .map_err(noise_err("building the responder"))?;
        Ok(Self {
            hs,
            supported: versions.to_vec(),
        })
    }

    /// Reads message 1 (a frame body from the [`FrameDecoder`]); on success returns the
    /// transport [`Link`] and frame 2 (with its `LEN`), to be written before any cell.
    pub fn read_frame(mut self, frame: &[u8]) -> Result<(Link, Vec<u8>), LinkError> {
        let stage = HandshakeStage::Message1;
        let min = DH_LEN + 2 + AEAD_TAG_LEN;
        if frame.len() < min || frame.len() > MAX_FRAME_LEN {
            return Err(LinkError::HandshakeLength {
                stage,
                len: frame.len(),
                expected: min,
            });
        }
        let mut payload = vec![0u8; frame.len()];
        let n = self
            .hs
            .read_message(frame, &mut payload)
            .map_err(|e| match e {
                snow::Error::Decrypt | snow::Error::Dh => LinkError::HandshakeAuth { stage },
                other => LinkError::Noise {
                    context: "reading message 1",
                    source: other,
                },
            })?;
        let payload = &payload[..n];
        let offered = match payload.split_first() {
            // Bytes after the list are reserved for later versions and ignored.
            Some((&count, rest)) if count > 0 => rest
                .get(..usize::from(count))
                .ok_or(LinkError::MalformedVersions { len: n })?,
            _ => return Err(LinkError::MalformedVersions { len: n }),
        };
        let chosen = offered
            .iter()
            .copied()
            .filter(|v| self.supported.contains(v))
            .max()
            .ok_or_else(|| LinkError::NoCommonVersion {
                offered: offered.to_vec(),
            })?;
        let mut msg = [0u8; MSG2_LEN];
        let n = self
            .hs
            .write_message(&[chosen], &mut msg)
            .map_err(noise_err("writing message 2"))?;
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + n);
        push_frame(&mut frame, &msg[..n]);
        Ok((Link::from_handshake(self.hs, chosen)?, frame))
    }
}

/// An established link: encrypts batches of cells into frames and decrypts frames into cells.
///
/// Each direction has its own key and a 64-bit message counter as the nonce, so a replayed,
/// reordered, dropped or altered frame fails authentication.
pub struct Link {
    ts: snow::TransportState,
    version: u8,
    handshake_hash: [u8; 32],
    failed: bool,
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link")
            .field("version", &self.version)
            .field("initiator", &self.ts.is_initiator())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn from_handshake(hs: snow::HandshakeState, version: u8) -> Result<Self, LinkError> {
        let mut handshake_hash = [0u8; 32];
        let h = hs.get_handshake_hash();
        let n = h.len().min(32);
        handshake_hash[..n].copy_from_slice(&h[..n]);
        let ts = hs
            .into_transport_mode()
            .map_err(noise_err("entering transport mode"))?;
        Ok(Self {
            ts,
            version,
            handshake_hash,
            failed: false,
        })
    }

    /// The negotiated link version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whether this side opened the link (sent message 1).
    pub fn is_initiator(&self) -> bool {
        self.ts.is_initiator()
    }

    /// The Noise handshake hash: a value unique to this link that both ends share, usable
    /// for channel binding.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Whether an earlier error closed the link.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Appends to `out` the frames (with `LEN`) carrying `cells`, in order: one frame per
    /// [`MAX_CELLS_PER_FRAME`] cells, so one AEAD operation per batch. No cells, no output.
    ///
    /// Allocates only when `out` must grow; pass the same buffer each time.
    pub fn encrypt_cells(
        &mut self,
        cells: &[[u8; CELL_LEN]],
        out: &mut Vec<u8>,
    ) -> Result<(), LinkError> {
        if self.failed {
            return Err(LinkError::Closed);
        }
        let frames = cells.len().div_ceil(MAX_CELLS_PER_FRAME);
        out.reserve(cells.len() * CELL_LEN + frames * (FRAME_HEADER_LEN + AEAD_TAG_LEN));
        for batch in cells.chunks(MAX_CELLS_PER_FRAME) {
            let plaintext = batch.as_flattened();
            let len = plaintext.len() + AEAD_TAG_LEN;
            out.extend_from_slice(&(len as u16).to_be_bytes());
            let start = out.len();
            out.resize(start + len, 0);
            let written = self.ts.write_message(plaintext, &mut out[start..]);
            match written {
                Ok(n) if n == len => {}
                Ok(_) | Err(_) => {
                    self.failed = true;
                    out.truncate(start - FRAME_HEADER_LEN);
                    return Err(match written {
                        Err(snow::Error::State(snow::error::StateProblem::Exhausted)) => {
                            LinkError::NonceExhausted
                        }
                        Err(source) => LinkError::Noise {
                            context: "encrypting cells",
                            source,
                        },
                        Ok(_) => LinkError::Noise {
                            context: "encrypting cells",
                            source: snow::Error::Input,
                        },
                    });
                }
            }
        }
        Ok(())
    }

    /// Decrypts one transport frame body (from the [`FrameDecoder`]) and appends its cells to
    /// `out`, returning how many. On error nothing is appended and the link is closed.
    ///
    /// Allocates only when `out` must grow; clear and reuse the same vector.
    pub fn decrypt_frame(
        &mut self,
        frame: &[u8],
        out: &mut Vec<[u8; CELL_LEN]>,
    ) -> Result<usize, LinkError> {
        if self.failed {
            return Err(LinkError::Closed);
        }
        let result = self.decrypt_inner(frame, out);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn decrypt_inner(
        &mut self,
        frame: &[u8],
        out: &mut Vec<[u8; CELL_LEN]>,
    ) -> Result<usize, LinkError> {
        let len = frame.len();
        if len > MAX_FRAME_LEN {
            return Err(LinkError::FrameTooLong {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if len < MIN_TRANSPORT_FRAME_LEN {
            return Err(LinkError::FrameTooShort { len });
        }
        let plaintext_len = len - AEAD_TAG_LEN;
        if plaintext_len % CELL_LEN != 0 {
            return Err(LinkError::PartialCell { plaintext_len });
        }
        let k = plaintext_len / CELL_LEN;
        let start = out.len();
        out.resize(start + k, [0u8; CELL_LEN]);
        match self.ts.read_message(frame, out[start..].as_flattened_mut()) {
            Ok(n) if n == plaintext_len => Ok(k),
            other => {
                out.truncate(start);
                Err(match other {
                    Err(snow::Error::State(snow::error::StateProblem::Exhausted)) => {
                        LinkError::NonceExhausted
                    }
                    _ => LinkError::Decrypt { frame_len: len },
                })
            }
        }
    }

    #[cfg(test)]
    fn encrypt_raw_for_test(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut msg = vec![0u8; plaintext.len() + AEAD_TAG_LEN];
        let n = self.ts.write_message(plaintext, &mut msg).unwrap();
        push_frame(out, &msg[..n]);
    }
}

/// Cuts a TCP byte stream into frame bodies, with a fixed, bounded buffer.
///
/// Feed it with [`FrameDecoder::read_buf`] + [`FrameDecoder::commit`] (read from the socket
/// straight into the buffer) or [`FrameDecoder::push`]; then take every complete frame with
/// [`FrameDecoder::next_frame`] before feeding more. A `LEN` of zero or above the limit is an
/// error as soon as the two `LEN` bytes arrive, before any of the body is awaited.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_frame_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for frames up to [`MAX_FRAME_LEN`], buffering up to two whole frames.
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A decoder for frames up to `max_frame_len` bytes (at most [`MAX_FRAME_LEN`]),
    /// buffering up to two whole frames.
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        let max_frame_len = max_frame_len.clamp(1, MAX_FRAME_LEN);
        let capacity = 2 * (FRAME_HEADER_LEN + max_frame_len);
        Self {
            buf: vec![0u8; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame_len,
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The buffer's fixed capacity.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The free space to read socket bytes into; then call [`FrameDecoder::commit`] with the
    /// count read. Empty only when the buffer is full of unconsumed frames.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`FrameDecoder::read_buf`].
    pub fn commit(&mut self, n: usize) -> Result<(), LinkError> {
        let free = self.buf.len() - self.end;
        if n > free {
            return Err(LinkError::BufferFull {
                buffered: self.buffered(),
                incoming: n,
                capacity: self.capacity(),
            });
        }
        self.end += n;
        Ok(())
    }

    /// Copies `data` in. Fails, taking nothing, when it does not fit beside the bytes still
    /// buffered: take the complete frames first.
    pub fn push(&mut self, data: &[u8]) -> Result<(), LinkError> {
        if data.len() > self.buf.len() - self.buffered() {
            return Err(LinkError::BufferFull {
                buffered: self.buffered(),
                incoming: data.len(),
                capacity: self.capacity(),
            });
        }
        if data.len() > self.buf.len() - self.end {
            self.compact();
        }
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
        Ok(())
    }

    /// The next complete frame body, if one is buffered. An error (zero or oversize `LEN`)
    /// means the stream is corrupt: close the link.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, LinkError> {
        let avail = &self.buf[self.start..self.end];
        let Some(&[hi, lo]) = avail.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(LinkError::EmptyFrame);
        }
        if len > self.max_frame_len {
            return Err(LinkError::FrameTooLong {
                len,
                max: self.max_frame_len,
            });
        }
        if avail.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + FRAME_HEADER_LEN;
        self.start = body_start + len;
        Ok(Some(&self.buf[body_start..body_start + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn pair() -> (Link, Link) {
        let mut rng = StdRng::seed_from_u64(1);
        let secret = LinkSecretKey::generate(&mut rng);
        let id = [3u8; 32];
        let (init, f1) = LinkInitiator::new(&mut rng, id, secret.public()).unwrap();
        let resp = LinkResponder::new(&mut rng, id, &secret).unwrap();
        let (r, f2) = resp.read_frame(&f1[2..]).unwrap();
        let i = init.read_frame(&f2[2..]).unwrap();
        (i, r)
    }

    #[test]
    fn authentic_partial_cell_plaintext_is_refused() {
        let (mut i, mut r) = pair();
        let mut wire = Vec::new();
        i.encrypt_raw_for_test(&[0u8; CELL_LEN + 1], &mut wire);
        let mut out = Vec::new();
        let err = r.decrypt_frame(&wire[2..], &mut out).unwrap_err();
        assert!(
            matches!(err, LinkError::PartialCell { plaintext_len: 513 }),
            "{err:?}"
        );
        assert!(out.is_empty());
        assert!(matches!(
            r.decrypt_frame(&wire[2..], &mut out),
            Err(LinkError::Closed)
        ));
    }

    #[test]
    fn same_rng_seed_same_bytes() {
        let run = || {
            let mut rng = StdRng::seed_from_u64(9);
            let secret = LinkSecretKey::generate(&mut rng);
            let (_, f1) = LinkInitiator::new(&mut rng, [1; 32], secret.public()).unwrap();
            f1
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn secret_key_round_trips_and_debug_hides_it() {
        let k = LinkSecretKey::from_bytes([0x42; 32]);
        assert_eq!(*k.to_bytes(), [0x42; 32]);
        assert!(!format!("{k:?}").contains("66, 66"));
        assert_ne!(k.public(), [0x42; 32]);
    }
}
