//! Relay descriptors: canonical binary encoding, inner ed25519 signature, and the
//! unchecked → checked pipeline.
//!
//! Byte layout: docs/spec.md. Every descriptor is self-authenticating: the identity
//! key inside it signs all preceding bytes, so it can travel through the DHT (BEP44, whose own
//! signature covers the same bytes as the value), over a link, through PEX or from the cache, and
//! every receiver verifies it the same way.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::network::NetworkId;
use crate::policy::{ExitPolicy, PolicyAction, PortRule, MAX_POLICY_RULES};

/// Largest encoded descriptor, signature included. BEP44 allows 1000 bytes of bencoded value;
/// 995 bytes of raw value interoperates with other DHT implementations (docs/spec.md).
pub const MAX_DESCRIPTOR_LEN: usize = 995;
/// Four magic bytes at the start of every descriptor: `"OVD1"`.
pub const DESCRIPTOR_MAGIC: [u8; 4] = *b"OVD1";
/// Domain-separation prefix of the inner signature's message.
pub const SIGNATURE_CONTEXT: &[u8] = b"onionvpn/descriptor/v1\0";
/// Length of the inner ed25519 signature at the end.
pub const SIGNATURE_LEN: usize = 64;
/// Most onion keys a descriptor may carry.
pub const MAX_ONION_KEYS: usize = 4;
/// Most addresses a descriptor may carry.
pub const MAX_ADDRESSES: usize = 4;
/// Most protocol (id, version) pairs.
pub const MAX_PROTOCOLS: usize = 16;
/// Most family ids.
pub const MAX_FAMILY: usize = 32;
/// Longest allowed `expires - published`, seconds (7 days).
pub const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// Lifetime a relay gives its descriptor by default, seconds (24 h); it re-signs hourly.
pub const DEFAULT_LIFETIME_SECS: u64 = 24 * 3600;
/// Tolerated clock skew for `published` in the future, seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

macro_rules! key_newtype {
    ($(#[$m:meta])* $name:ident, $len:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                for b in &self.0[..8] {
                    write!(f, "{b:02x}")?;
                }
                write!(f, "…)")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }
    };
}

key_newtype!(
    /// A relay's identity: ed25519 public key, also its BEP44 signing key.
    IdentityKey, 32
);
key_newtype!(
    /// The x25519 public key of the relay's Noise static key (link handshake).
    LinkKey, 32
);
key_newtype!(
    /// A declared family id (chosen by the operator, shared by all relays of one family).
    FamilyId, 32
);
key_newtype!(
    /// Lightning node id: 33-byte compressed secp256k1 public key (opaque here).
    LnNodeId, 33
);

impl IdentityKey {
    /// The identity key of a signing key.
    pub fn from_signing_key(sk: &SigningKey) -> Self {
        IdentityKey(sk.verifying_key().to_bytes())
    }
}

/// An x25519 onion key (circuit handshake) with its validity window in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionKey {
    /// x25519 public key.
    pub key: [u8; 32],
    /// First second of validity.
    pub valid_after: u64,
    /// Last second of validity (exclusive: valid while `now < valid_until`).
    pub valid_until: u64,
}

impl OnionKey {
    /// Whether the key may be used at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        self.valid_after <= now && now < self.valid_until
    }
}

/// Prices of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prices {
    /// Millisatoshi per MiB relayed.
    pub msat_per_mib: u64,
    /// Millisatoshi per minute of circuit life.
    pub msat_per_min: u64,
}

/// A protocol this relay speaks: sub-protocol id and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoVersion {
    /// Sub-protocol id (see docs/spec.md).
    pub id: u8,
    /// Version of that sub-protocol.
    pub version: u8,
}

/// The content of a descriptor (everything the identity key signs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorBody {
    /// Network this relay belongs to.
    pub network: NetworkId,
    /// Identity key (ed25519), also the BEP44 key.
    pub identity: IdentityKey,
    /// Sequence number, also the BEP44 `seq`; relays use unix seconds at signing. ≤ `i64::MAX`.
    pub seq: u64,
    /// Signing time, unix seconds.
    pub published: u64,
    /// Expiry, unix seconds (`published < expires ≤ published + MAX_LIFETIME_SECS`).
    pub expires: u64,
    /// Link key (Noise static x25519 public key).
    pub link_key: LinkKey,
    /// Advertised bandwidth, bytes per second.
    pub bandwidth: u64,
    /// Hop prices.
    pub prices: Prices,
    /// Lightning node id receiving this relay's payments.
    pub ln_node_id: LnNodeId,
    /// Onion keys, 1..=`MAX_ONION_KEYS`.
    pub onion_keys: Vec<OnionKey>,
    /// OR addresses, 1..=`MAX_ADDRESSES`, port ≠ 0.
    pub addresses: Vec<SocketAddr>,
    /// Supported protocols, strictly ascending, ≤ `MAX_PROTOCOLS`.
    pub protocols: Vec<ProtoVersion>,
    /// Declared family ids, strictly ascending, ≤ `MAX_FAMILY`.
    pub family: Vec<FamilyId>,
    /// Exit policy summary.
    pub exit_policy: ExitPolicy,
}

/// Why a descriptor was rejected; one counter per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Larger than [`MAX_DESCRIPTOR_LEN`].
    Oversized,
    /// Not a canonical encoding.
    Malformed,
    /// Signature does not verify.
    BadSignature,
    /// Identity is not the key it was looked up or announced under.
    WrongKey,
    /// Belongs to another network.
    WrongNetwork,
    /// Expired, not yet valid, or with too long a lifetime.
    Expired,
    /// No onion key usable now or later.
    NoUsableOnionKey,
    /// Older sequence number than one already known (or same seq, other content).
    StaleSeq,
    /// BEP44 seq differs from the inner seq.
    SeqMismatch,
    /// Served from an address that is not in the descriptor.
    AddressMismatch,
}

impl RejectReason {
    /// All reasons, in counter order.
    pub const ALL: [RejectReason; 10] = [
        RejectReason::Oversized,
        RejectReason::Malformed,
        RejectReason::BadSignature,
        RejectReason::WrongKey,
        RejectReason::WrongNetwork,
        RejectReason::Expired,
        RejectReason::NoUsableOnionKey,
        RejectReason::StaleSeq,
        RejectReason::SeqMismatch,
        RejectReason::AddressMismatch,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Errors building, parsing or checking a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// Encoded size exceeds the limit (when building: the relay must drop addresses, family
    /// ids, rules or onion keys).
    #[error("descriptor is {len} bytes, limit {max}")]
    Oversized {
        /// Actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a canonical encoding.
    #[error("malformed descriptor at byte {offset}: {what}")]
    Malformed {
        /// Offset where parsing failed.
        offset: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// A field is outside its allowed range when building.
    #[error("invalid descriptor field: {0}")]
    InvalidField(&'static str),
    /// The signing key does not match the body's identity.
    #[error("signing key {signer:?} does not match identity {identity:?}")]
    SignerMismatch {
        /// Identity in the body.
        identity: IdentityKey,
        /// Key of the signer.
        signer: IdentityKey,
    },
    /// The signature does not verify under the descriptor's identity key (forged or altered).
    #[error("bad signature on descriptor of {identity:?}")]
    BadSignature {
        /// Claimed identity.
        identity: IdentityKey,
    },
    /// The descriptor is for another identity than expected.
    #[error("descriptor of {found:?} where {expected:?} was expected")]
    WrongKey {
        /// Key it was fetched under.
        expected: IdentityKey,
        /// Key inside.
        found: IdentityKey,
    },
    /// The descriptor belongs to another network.
    #[error("descriptor of {identity:?} is for network {found}, expected {expected}")]
    WrongNetwork {
        /// Relay identity.
        identity: IdentityKey,
        /// Our network.
        expected: NetworkId,
        /// Its network.
        found: NetworkId,
    },
    /// Expired at `now`.
    #[error("descriptor of {identity:?} expired at {expires}, now {now}")]
    Expired {
        /// Relay identity.
        identity: IdentityKey,
        /// Its expiry.
        expires: u64,
        /// Current time.
        now: u64,
    },
    /// Published in the future beyond the allowed skew.
    #[error("descriptor of {identity:?} published at {published}, now {now}")]
    NotYetValid {
        /// Relay identity.
        identity: IdentityKey,
        /// Claimed publication time.
        published: u64,
        /// Current time.
        now: u64,
    },
    /// `expires` not after `published`, or lifetime longer than allowed.
    #[error("descriptor of {identity:?} has invalid lifetime {published}..{expires}")]
    BadLifetime {
        /// Relay identity.
        identity: IdentityKey,
        /// Publication time.
        published: u64,
        /// Expiry.
        expires: u64,
    },
    /// Every onion key has expired.
    #[error("descriptor of {identity:?} has no onion key valid at or after {now}")]
    NoUsableOnionKey {
        /// Relay identity.
        identity: IdentityKey,
        /// Current time.
        now: u64,
    },
    /// A descriptor with a higher seq (or the same seq and other content) is already known.
    #[error("stale descriptor of {identity:?}: seq {got}, known {known}")]
    StaleSeq {
        /// Relay identity.
        identity: IdentityKey,
        /// Seq already known.
        known: u64,
        /// Seq received.
        got: u64,
    },
    /// The BEP44 item's seq differs from the descriptor's own seq.
    #[error("BEP44 seq {dht_seq} differs from descriptor seq {inner_seq}")]
    SeqMismatch {
        /// Seq of the DHT item.
        dht_seq: i64,
        /// Seq inside the descriptor.
        inner_seq: u64,
    },
    /// The descriptor was served from an address it does not list.
    #[error("descriptor of {identity:?} served from {addr}, which it does not list")]
    AddressMismatch {
        /// Relay identity.
        identity: IdentityKey,
        /// Address it came from.
        addr: SocketAddr,
    },
}

impl DescriptorError {
    /// The counter this error falls under (`None` for errors building one's own descriptor).
    pub fn reason(&self) -> Option<RejectReason> {
        Some(match self {
            DescriptorError::Oversized { .. } => RejectReason::Oversized,
            DescriptorError::Malformed { .. } => RejectReason::Malformed,
            DescriptorError::BadSignature { .. } => RejectReason::BadSignature,
            DescriptorError::WrongKey { .. } => RejectReason::WrongKey,
            DescriptorError::WrongNetwork { .. } => RejectReason::WrongNetwork,
            DescriptorError::Expired { .. }
            | DescriptorError::NotYetValid { .. }
            | DescriptorError::BadLifetime { .. } => RejectReason::Expired,
            DescriptorError::NoUsableOnionKey { .. } => RejectReason::NoUsableOnionKey,
            DescriptorError::StaleSeq { .. } => RejectReason::StaleSeq,
            DescriptorError::SeqMismatch { .. } => RejectReason::SeqMismatch,
            DescriptorError::AddressMismatch { .. } => RejectReason::AddressMismatch,
            DescriptorError::InvalidField(_) | DescriptorError::SignerMismatch { .. } => {
                return None
            }
        })
    }
}

/// Counters of rejected descriptors, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectionCounters {
    counts: [u64; RejectReason::ALL.len()],
}

impl RejectionCounters {
    /// Counts one rejection for `err` (errors without a reason are not counted).
    pub fn record(&mut self, err: &DescriptorError) {
        if let Some(r) = err.reason() {
            self.counts[r.index()] = self.counts[r.index()].saturating_add(1);
        }
    }

    /// Rejections counted for `reason`.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.counts[reason.index()]
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another set of counters into this one.
    pub fn merge(&mut self, other: &RejectionCounters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }
}

// ---------------------------------------------------------------- encoding

impl DescriptorBody {
    /// Encodes the body (without signature), checking field bounds.
    pub fn encode_body(&self) -> Result<Vec<u8>, DescriptorError> {
        self.validate_fields()?;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&DESCRIPTOR_MAGIC);
        out.extend_from_slice(&self.network.0);
        out.extend_from_slice(&self.identity.0);
        for v in [self.seq, self.published, self.expires] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.link_key.0);
        for v in [
            self.bandwidth,
            self.prices.msat_per_mib,
            self.prices.msat_per_min,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.ln_node_id.0);
        out.push(self.onion_keys.len() as u8);
        for k in &self.onion_keys {
            out.extend_from_slice(&k.key);
            out.extend_from_slice(&k.valid_after.to_be_bytes());
            out.extend_from_slice(&k.valid_until.to_be_bytes());
        }
        out.push(self.addresses.len() as u8);
        for a in &self.addresses {
            match a.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        out.push(self.protocols.len() as u8);
        for p in &self.protocols {
            out.push(p.id);
            out.push(p.version);
        }
        out.push(self.family.len() as u8);
        for f in &self.family {
            out.extend_from_slice(&f.0);
        }
        out.push(u8::from(self.exit_policy.allow_private));
        out.push(self.exit_policy.default.to_byte());
        out.push(self.exit_policy.rules.len() as u8);
        for r in &self.exit_policy.rules {
            out.push(r.action.to_byte());
            out.extend_from_slice(&r.lo.to_be_bytes());
            out.extend_from_slice(&r.hi.to_be_bytes());
        }
        Ok(out)
    }

    fn validate_fields(&self) -> Result<(), DescriptorError> {
        let bad = DescriptorError::InvalidField;
        if self.seq > i64::MAX as u64 {
            return Err(bad("seq above i64::MAX"));
        }
        if self.onion_keys.is_empty() || self.onion_keys.len() > MAX_ONION_KEYS {
            return Err(bad("onion key count"));
        }
        if self
            .onion_keys
            .iter()
            .any(|k| k.valid_after >= k.valid_until)
        {
            return Err(bad("onion key window"));
        }
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(bad("address count"));
        }
        if self.addresses.iter().any(|a| a.port() == 0) {
            return Err(bad("address port 0"));
        }
        if self.protocols.len() > MAX_PROTOCOLS || !strictly_ascending(&self.protocols) {
            return Err(bad("protocols: count or order"));
        }
        if self.family.len() > MAX_FAMILY || !strictly_ascending(&self.family) {
            return Err(bad("family: count or order"));
        }
        let rules = &self.exit_policy.rules;
        if rules.len() > MAX_POLICY_RULES || rules.iter().any(|r| r.lo == 0 || r.lo > r.hi) {
            return Err(bad("exit policy rules"));
        }
        Ok(())
    }

    /// Encodes and signs: returns the complete descriptor bytes.
    ///
    /// Fails with [`DescriptorError::Oversized`] when the result would exceed
    /// [`MAX_DESCRIPTOR_LEN`], and with [`DescriptorError::SignerMismatch`] when `key` is not
    /// the body's identity.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, DescriptorError> {
        let signer = IdentityKey::from_signing_key(key);
        if signer != self.identity {
            return Err(DescriptorError::SignerMismatch {
                identity: self.identity,
                signer,
            });
        }
        let mut out = self.encode_body()?;
        let len = out.len() + SIGNATURE_LEN;
        if len > MAX_DESCRIPTOR_LEN {
            return Err(DescriptorError::Oversized {
                len,
                max: MAX_DESCRIPTOR_LEN,
            });
        }
        let sig = key.sign(&signed_message(&out));
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

fn strictly_ascending<T: Ord>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(body);
    m
}

// ---------------------------------------------------------------- parsing

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &'static str) -> DescriptorError {
        DescriptorError::Malformed {
            offset: self.pos,
            what,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DescriptorError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(what)),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DescriptorError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DescriptorError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DescriptorError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DescriptorError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn count(
        &mut self,
        max: usize,
        min: usize,
        what: &'static str,
    ) -> Result<usize, DescriptorError> {
        let at = self.pos;
        let n = usize::from(self.u8(what)?);
        if n < min || n > max {
            return Err(DescriptorError::Malformed { offset: at, what });
        }
        Ok(n)
    }
}

/// A descriptor that has been parsed but not verified. Nothing in it may be trusted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncheckedDescriptor {
    body: DescriptorBody,
    signature: [u8; SIGNATURE_LEN],
    raw: Vec<u8>,
}

impl UncheckedDescriptor {
    /// Parses a canonical encoding. Rejects oversized input, bad magic, counts out of range,
    /// non-ascending lists, reserved bits, unknown tags and trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return Err(DescriptorError::Oversized {
                len: bytes.len(),
                max: MAX_DESCRIPTOR_LEN,
            });
        }
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.array::<4>("magic")? != DESCRIPTOR_MAGIC {
            return Err(DescriptorError::Malformed {
                offset: 0,
                what: "magic",
            });
        }
        let network = NetworkId(r.array("network id")?);
        let identity = IdentityKey(r.array("identity")?);
        let seq_at = r.pos;
        let seq = r.u64("seq")?;
        if seq > i64::MAX as u64 {
            return Err(DescriptorError::Malformed {
                offset: seq_at,
                what: "seq above i64::MAX",
            });
        }
        let published = r.u64("published")?;
        let expires = r.u64("expires")?;
        let link_key = LinkKey(r.array("link key")?);
        let bandwidth = r.u64("bandwidth")?;
        let prices = Prices {
            msat_per_mib: r.u64("price per MiB")?,
            msat_per_min: r.u64("price per min")?,
        };
        let ln_node_id = LnNodeId(r.array("lightning node id")?);

        let n = r.count(MAX_ONION_KEYS, 1, "onion key count")?;
        let mut onion_keys = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.array("onion key")?;
            let valid_after = r.u64("onion key valid_after")?;
            let at = r.pos;
            let valid_until = r.u64("onion key valid_until")?;
            if valid_after >= valid_until {
                return Err(DescriptorError::Malformed {
                    offset: at,
                    what: "onion key window",
                });
            }
            onion_keys.push(OnionKey {
                key,
                valid_after,
                valid_until,
            });
        }

        let n = r.count(MAX_ADDRESSES, 1, "address count")?;
        let mut addresses = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos;
            let ip = match r.u8("address type")? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("ipv4")?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("ipv6")?)),
                _ => {
                    return Err(DescriptorError::Malformed {
                        offset: at,
                        what: "address type",
                    })
                }
            };
            let at = r.pos;
            let port = r.u16("port")?;
            if port == 0 {
                return Err(DescriptorError::Malformed {
                    offset: at,
                    what: "port 0",
                });
            }
            addresses.push(SocketAddr::new(ip, port));
        }

        let at = r.pos;
        let n = r.count(MAX_PROTOCOLS, 0, "protocol count")?;
        let mut protocols = Vec::with_capacity(n);
        for _ in 0..n {
            protocols.push(ProtoVersion {
                id: r.u8("protocol id")?,
                version: r.u8("protocol version")?,
            });
        }
        if !strictly_ascending(&protocols) {
            return Err(DescriptorError::Malformed {
                offset: at,
                what: "protocols not ascending",
            });
        }

        let at = r.pos;
        let n = r.count(MAX_FAMILY, 0, "family count")?;
        let mut family = Vec::with_capacity(n);
        for _ in 0..n {
            family.push(FamilyId(r.array("family id")?));
        }
        if !strictly_ascending(&family) {
            return Err(DescriptorError::Malformed {
                offset: at,
                what: "family not ascending",
            });
        }

        let at = r.pos;
        let allow_private = match r.u8("policy flags")? {
            0 => false,
            1 => true,
            _ => {
                return Err(DescriptorError::Malformed {
                    offset: at,
                    what: "policy flags",
                })
            }
        };
        let at = r.pos;
        let default =
            PolicyAction::from_byte(r.u8("policy default")?).ok_or(DescriptorError::Malformed {
                offset: at,
                what: "policy default",
            })?;
        let n = r.count(MAX_POLICY_RULES, 0, "policy rule count")?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos;
            let action = PolicyAction::from_byte(r.u8("rule action")?).ok_or(
                DescriptorError::Malformed {
                    offset: at,
                    what: "rule action",
                },
            )?;
            let lo = r.u16("rule lo")?;
            let hi = r.u16("rule hi")?;
            if lo == 0 || lo > hi {
                return Err(DescriptorError::Malformed {
                    offset: at,
                    what: "rule range",
                });
            }
            rules.push(PortRule { action, lo, hi });
        }
        let signature = r.array::<SIGNATURE_LEN>("signature")?;
        if r.pos != bytes.len() {
            return Err(r.err("trailing bytes"));
        }
        Ok(UncheckedDescriptor {
            body: DescriptorBody {
                network,
                identity,
                seq,
                published,
                expires,
                link_key,
                bandwidth,
                prices,
                ln_node_id,
                onion_keys,
                addresses,
                protocols,
                family,
                exit_policy: ExitPolicy {
                    rules,
                    default,
                    allow_private,
                },
            },
            signature,
            raw: bytes.to_vec(),
        })
    }

    /// Claimed identity (unverified).
    pub fn identity(&self) -> IdentityKey {
        self.body.identity
    }

    /// Claimed seq (unverified).
    pub fn seq(&self) -> u64 {
        self.body.seq
    }

    /// Verifies the descriptor: identity equals `expected_key` when given, network equals
    /// `network`, the signature verifies (strict ed25519), `published ≤ now + skew`,
    /// `now < expires`, lifetime within bounds, and at least one onion key not yet expired.
    pub fn check(
        self,
        expected_key: Option<&IdentityKey>,
        network: &NetworkId,
        now: u64,
    ) -> Result<Descriptor, DescriptorError> {
        let b = &self.body;
        if let Some(expected) = expected_key {
            if *expected != b.identity {
                return Err(DescriptorError::WrongKey {
                    expected: *expected,
                    found: b.identity,
                });
            }
        }
        if b.network != *network {
            return Err(DescriptorError::WrongNetwork {
                identity: b.identity,
                expected: *network,
                found: b.network,
            });
        }
        let bad_sig = DescriptorError::BadSignature {
            identity: b.identity,
        };
        let vk = VerifyingKey::from_bytes(&b.identity.0).map_err(|_| bad_sig.clone())?;
        let body_len = self.raw.len() - SIGNATURE_LEN;
        let sig = Signature::from_bytes(&self.signature);
        vk.verify_strict(&signed_message(&self.raw[..body_len]), &sig)
            .map_err(|_| bad_sig)?;
        if b.expires <= b.published || b.expires - b.published > MAX_LIFETIME_SECS {
            return Err(DescriptorError::BadLifetime {
                identity: b.identity,
                published: b.published,
                expires: b.expires,
            });
        }
        if b.published > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(DescriptorError::NotYetValid {
                identity: b.identity,
                published: b.published,
                now,
            });
        }
        if now >= b.expires {
            return Err(DescriptorError::Expired {
                identity: b.identity,
                expires: b.expires,
                now,
            });
        }
        if !b.onion_keys.iter().any(|k| now < k.valid_until) {
            return Err(DescriptorError::NoUsableOnionKey {
                identity: b.identity,
                now,
            });
        }
        Ok(Descriptor {
            body: self.body,
            raw: self.raw,
        })
    }
}

/// A verified descriptor: signature, key, network and freshness were checked at `check` time.
/// Only these reach path selection. Re-check expiry with [`Descriptor::is_valid_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    body: DescriptorBody,
    raw: Vec<u8>,
}

impl Descriptor {
    /// The content.
    pub fn body(&self) -> &DescriptorBody {
        &self.body
    }

    /// The signed bytes, exactly as received (for serving, PEX and the cache).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Identity key.
    pub fn identity(&self) -> IdentityKey {
        self.body.identity
    }

    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.body.seq
    }

    /// Not expired at `now` and has an onion key valid at `now`.
    pub fn is_valid_at(&self, now: u64) -> bool {
        now < self.body.expires && self.onion_key_at(now).is_some()
    }

    /// The onion key to use at `now`: the valid one with the latest `valid_until`.
    pub fn onion_key_at(&self, now: u64) -> Option<&OnionKey> {
        self.body
            .onion_keys
            .iter()
            .filter(|k| k.valid_at(now))
            .max_by_key(|k| k.valid_until)
    }

    /// First IPv4 OR address, if any (the DHT is IPv4-only, so every announced relay has one).
    pub fn ipv4(&self) -> Option<std::net::SocketAddrV4> {
        self.body.addresses.iter().find_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        })
    }

    /// Checks that a descriptor fetched from `addr` lists that address (a relay cannot make
    /// clients attribute its descriptor to another host's announcement).
    pub fn check_served_from(&self, addr: SocketAddr) -> Result<(), DescriptorError> {
        if self.body.addresses.contains(&addr) {
            Ok(())
        } else {
            Err(DescriptorError::AddressMismatch {
                identity: self.body.identity,
                addr,
            })
        }
    }

    /// Checks that the BEP44 item's seq equals the inner seq.
    pub fn check_dht_seq(&self, dht_seq: i64) -> Result<(), DescriptorError> {
        if u64::try_from(dht_seq).ok() == Some(self.body.seq) {
            Ok(())
        } else {
            Err(DescriptorError::SeqMismatch {
                dht_seq,
                inner_seq: self.body.seq,
            })
        }
    }
}
