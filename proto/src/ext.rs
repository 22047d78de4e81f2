//! Extension messages carried, encrypted, in the circuit handshake (docs/spec.md, "Extensions").
//!
//! An extension message is a list of items `TYPE u8 || LEN u8 || BODY (LEN bytes)`, at most
//! [`MAX_EXTENSION_LEN`] bytes in all. Unknown types are skipped; a known type given twice,
//! or with the wrong length, is an error. [`Extensions`] holds the typed items.

use thiserror::Error;

use crate::consts::MAX_EXTENSION_LEN;

/// Item type: [`PaymentOffer`] (client to relay).
pub const EXT_PAYMENT_OFFER: u8 = 1;
/// Item type: [`PaymentTerms`] (relay to client).
pub const EXT_PAYMENT_TERMS: u8 = 2;
/// Item type: [`CongestionControl`] (both ways).
pub const EXT_CONGESTION_CONTROL: u8 = 3;
/// Item type: [`ProtocolVersions`] (both ways).
pub const EXT_PROTOCOL_VERSIONS: u8 = 4;
/// Item type: [`WindowLimit`] (client's request in CREATE, the relay's value in CREATED).
pub const EXT_WINDOW_LIMIT: u8 = 5;

/// Body length of a [`PaymentOffer`] item.
pub const PAYMENT_OFFER_LEN: usize = 16;
/// Body length of a [`PaymentTerms`] item.
pub const PAYMENT_TERMS_LEN: usize = 8 + 8 + 4 + PAYMENT_TOKEN_LEN; // 36
/// Body length of a [`CongestionControl`] item.
pub const CONGESTION_CONTROL_LEN: usize = 1;
/// Body length of a [`WindowLimit`] item.
pub const WINDOW_LIMIT_LEN: usize = 4;
/// Length of a payment token.
pub const PAYMENT_TOKEN_LEN: usize = 16;
/// Most (protocol, version) pairs in a [`ProtocolVersions`] item. With it every
/// [`Extensions`] value encodes within [`MAX_EXTENSION_LEN`].
pub const MAX_PROTOCOL_VERSIONS: usize = 64;

/// Errors from parsing or building extension messages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtError {
    /// The message is longer than [`MAX_EXTENSION_LEN`].
    #[error("extension message of {0} bytes exceeds {MAX_EXTENSION_LEN}")]
    TooLong(usize),
    /// An item's header or body runs past the end of the message.
    #[error("item at offset {offset} truncated")]
    Truncated {
        /// Where the item starts.
        offset: usize,
    },
    /// A known item type appears twice.
    #[error("duplicate extension type {0}")]
    Duplicate(u8),
    /// A known item has the wrong body length.
    #[error("extension type {ty} has length {len}, expected {expected}")]
    BadLength {
        /// The item type.
        ty: u8,
        /// Its LEN field.
        len: usize,
        /// What the type requires.
        expected: usize,
    },
    /// A protocol versions item whose length is odd (it holds pairs).
    #[error("protocol versions item of odd length {0}")]
    OddVersionsLength(usize),
    /// A protocol versions list with more than [`MAX_PROTOCOL_VERSIONS`] pairs.
    #[error("{0} protocol versions, more than {MAX_PROTOCOL_VERSIONS}")]
    TooManyVersions(usize),
}

/// The prices a client accepts for a hop, copied from the relay's descriptor (type 1).
/// Body: `msat_per_mib u64 || msat_per_min u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaymentOffer {
    /// Millisatoshi per MiB relayed.
    pub msat_per_mib: u64,
    /// Millisatoshi per minute of circuit life.
    pub msat_per_min: u64,
}

/// An opaque per-hop payment token: random per circuit hop, chosen by the relay. The
/// client carries it in its keysend TLV so the relay credits this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaymentToken(pub [u8; PAYMENT_TOKEN_LEN]);

/// The relay's terms for a hop (type 2). Body:
/// `msat_per_mib u64 || msat_per_min u64 || grace_kib u32 || token [16]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaymentTerms {
    /// Millisatoshi per MiB relayed.
    pub msat_per_mib: u64,
    /// Millisatoshi per minute of circuit life.
    pub msat_per_min: u64,
    /// KiB the relay carries unpaid before it tears the circuit down.
    pub grace_kib: u32,
    /// The token that identifies this hop in payments.
    pub token: PaymentToken,
}

/// Congestion control parameters (type 3). Body: `sendme_inc u8`: the client's request
/// in CREATE, the relay's confirmation in CREATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CongestionControl {
    /// Cells between SENDMEs.
    pub sendme_inc: u8,
}

/// The largest congestion window, in DATA cells, the relay may use if it becomes the exit
/// (type 5). Body: `cells u32`. The client asks for it on circuits it pays for: it holds back
/// the SENDMEs past what it has paid, so what the exit sends beyond that — at most this
/// window — is what a hop's grace must cover (docs/spec.md, "Paying ahead"). The relay
/// answers with the window it applies (at least its smallest congestion window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowLimit {
    /// Most DATA cells in flight toward the client.
    pub cells: u32,
}

/// One supported version of one subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolVersion {
    /// The subprotocol.
    pub id: u8,
    /// A version of it the sender supports.
    pub version: u8,
}

/// The subprotocol versions a side supports (type 4): a list of `(id u8, version u8)`
/// pairs, at most [`MAX_PROTOCOL_VERSIONS`] of them, in the sender's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProtocolVersions(Vec<ProtocolVersion>);

impl ProtocolVersions {
    /// Builds a list; fails beyond [`MAX_PROTOCOL_VERSIONS`] pairs.
    pub fn new(pairs: Vec<ProtocolVersion>) -> Result<ProtocolVersions, ExtError> {
        if pairs.len() > MAX_PROTOCOL_VERSIONS {
            return Err(ExtError::TooManyVersions(pairs.len()));
        }
        Ok(ProtocolVersions(pairs))
    }

    /// The pairs.
    pub fn pairs(&self) -> &[ProtocolVersion] {
        &self.0
    }

    /// Whether the list names `version` of subprotocol `id`.
    pub fn supports(&self, id: u8, version: u8) -> bool {
        self.0.contains(&ProtocolVersion { id, version })
    }

    /// The highest version of `id` in the list.
    pub fn highest(&self, id: u8) -> Option<u8> {
        self.0
            .iter()
            .filter(|p| p.id == id)
            .map(|p| p.version)
            .max()
    }
}

/// The typed content of one extension message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Extensions {
    payment_offer: Option<PaymentOffer>,
    payment_terms: Option<PaymentTerms>,
    congestion_control: Option<CongestionControl>,
    protocol_versions: Option<ProtocolVersions>,
    window_limit: Option<WindowLimit>,
}

impl Extensions {
    /// An empty message (encodes to zero bytes).
    pub fn new() -> Extensions {
        Extensions::default()
    }

    /// The payment offer, if present.
    pub fn payment_offer(&self) -> Option<PaymentOffer> {
        self.payment_offer
    }

    /// The payment terms, if present.
    pub fn payment_terms(&self) -> Option<PaymentTerms> {
        self.payment_terms
    }

    /// The congestion control item, if present.
    pub fn congestion_control(&self) -> Option<CongestionControl> {
        self.congestion_control
    }

    /// The protocol versions, if present.
    pub fn protocol_versions(&self) -> Option<&ProtocolVersions> {
        self.protocol_versions.as_ref()
    }

    /// The window limit, if present.
    pub fn window_limit(&self) -> Option<WindowLimit> {
        self.window_limit
    }

    /// Sets (or clears) the payment offer.
    pub fn set_payment_offer(&mut self, v: Option<PaymentOffer>) -> &mut Self {
        self.payment_offer = v;
        self
    }

    /// Sets (or clears) the payment terms.
    pub fn set_payment_terms(&mut self, v: Option<PaymentTerms>) -> &mut Self {
        self.payment_terms = v;
        self
    }

    /// Sets (or clears) the congestion control item.
    pub fn set_congestion_control(&mut self, v: Option<CongestionControl>) -> &mut Self {
        self.congestion_control = v;
        self
    }

    /// Sets (or clears) the protocol versions.
    pub fn set_protocol_versions(&mut self, v: Option<ProtocolVersions>) -> &mut Self {
        self.protocol_versions = v;
        self
    }

    /// Sets (or clears) the window limit.
    pub fn set_window_limit(&mut self, v: Option<WindowLimit>) -> &mut Self {
        self.window_limit = v;
        self
    }

    /// Encodes the items in type order. The result is at most [`MAX_EXTENSION_LEN`]
    /// bytes by construction (the version list is bounded).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_EXTENSION_LEN);
        if let Some(o) = self.payment_offer {
            item(
                &mut out,
                EXT_PAYMENT_OFFER,
                &[&o.msat_per_mib.to_be_bytes(), &o.msat_per_min.to_be_bytes()],
            );
        }
        if let Some(t) = self.payment_terms {
            item(
                &mut out,
                EXT_PAYMENT_TERMS,
                &[
                    &t.msat_per_mib.to_be_bytes(),
                    &t.msat_per_min.to_be_bytes(),
                    &t.grace_kib.to_be_bytes(),
                    &t.token.0,
                ],
            );
        }
        if let Some(c) = self.congestion_control {
            item(&mut out, EXT_CONGESTION_CONTROL, &[&[c.sendme_inc]]);
        }
        if let Some(v) = &self.protocol_versions {
            let flat: Vec<u8> = v.0.iter().flat_map(|p| [p.id, p.version]).collect();
            item(&mut out, EXT_PROTOCOL_VERSIONS, &[&flat]);
        }
        if let Some(w) = self.window_limit {
            item(&mut out, EXT_WINDOW_LIMIT, &[&w.cells.to_be_bytes()]);
        }
        out
    }

    /// Parses an extension message. Unknown item types are skipped.
    pub fn parse(msg: &[u8]) -> Result<Extensions, ExtError> {
        if msg.len() > MAX_EXTENSION_LEN {
            return Err(ExtError::TooLong(msg.len()));
        }
        let mut ext = Extensions::default();
        let mut pos = 0;
        while pos < msg.len() {
            let offset = pos;
            let (ty, len) = match msg.get(pos..pos + 2) {
                Some(&[ty, len]) => (ty, usize::from(len)),
                _ => return Err(ExtError::Truncated { offset }),
            };
            let body = msg
                .get(pos + 2..pos + 2 + len)
                .ok_or(ExtError::Truncated { offset })?;
            pos += 2 + len;
            match ty {
                EXT_PAYMENT_OFFER => {
                    let b: [u8; PAYMENT_OFFER_LEN] = fixed(ty, body)?;
                    let mut r = Split(&b);
                    let offer = PaymentOffer {
                        msat_per_mib: u64::from_be_bytes(r.take()),
                        msat_per_min: u64::from_be_bytes(r.take()),
                    };
                    once(&mut ext.payment_offer, ty, offer)?;
                }
                EXT_PAYMENT_TERMS => {
                    let b: [u8; PAYMENT_TERMS_LEN] = fixed(ty, body)?;
                    let mut r = Split(&b);
                    let terms = PaymentTerms {
                        msat_per_mib: u64::from_be_bytes(r.take()),
                        msat_per_min: u64::from_be_bytes(r.take()),
                        grace_kib: u32::from_be_bytes(r.take()),
                        token: PaymentToken(r.take()),
                    };
                    once(&mut ext.payment_terms, ty, terms)?;
                }
                EXT_CONGESTION_CONTROL => {
                    let [sendme_inc]: [u8; CONGESTION_CONTROL_LEN] = fixed(ty, body)?;
                    once(
                        &mut ext.congestion_control,
                        ty,
                        CongestionControl { sendme_inc },
                    )?;
                }
                EXT_PROTOCOL_VERSIONS => {
                    if len % 2 != 0 {
                        return Err(ExtError::OddVersionsLength(len));
                    }
                    let pairs = body
                        .chunks_exact(2)
                        .map(|p| ProtocolVersion {
                            id: p[0],
                            version: p[1],
                        })
                        .collect();
                    once(
                        &mut ext.protocol_versions,
                        ty,
                        ProtocolVersions::new(pairs)?,
                    )?;
                }
                EXT_WINDOW_LIMIT => {
                    let b: [u8; WINDOW_LIMIT_LEN] = fixed(ty, body)?;
                    let cells = u32::from_be_bytes(b);
                    once(&mut ext.window_limit, ty, WindowLimit { cells })?;
                }
                _ => {} // unknown: skipped
            }
        }
        Ok(ext)
    }
}

fn item(out: &mut Vec<u8>, ty: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(ty);
    // Every item's body is at most 2 * MAX_PROTOCOL_VERSIONS = 128 bytes.
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn fixed<const N: usize>(ty: u8, body: &[u8]) -> Result<[u8; N], ExtError> {
    <[u8; N]>::try_from(body).map_err(|_| ExtError::BadLength {
        ty,
        len: body.len(),
        expected: N,
    })
}

fn once<T>(slot: &mut Option<T>, ty: u8, v: T) -> Result<(), ExtError> {
    if slot.is_some() {
        return Err(ExtError::Duplicate(ty));
    }
    *slot = Some(v);
    Ok(())
}

/// Splits fixed-size arrays off the front of a byte slice whose length the caller
/// checked; short reads yield zeros rather than panicking.
struct Split<'a>(&'a [u8]);

impl Split<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_layout_is_two_big_endian_u64() {
        let mut e = Extensions::new();
        e.set_payment_offer(Some(PaymentOffer {
            msat_per_mib: 0x0102,
            msat_per_min: 3,
        }));
        let b = e.encode();
        assert_eq!(b, [1, 16, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(Extensions::parse(&b), Ok(e));
    }

    #[test]
    fn unknown_items_are_skipped_and_duplicates_rejected() {
        let msg = [9, 2, 0xaa, 0xbb, 3, 1, 5];
        let e = Extensions::parse(&msg).unwrap();
        assert_eq!(
            e.congestion_control(),
            Some(CongestionControl { sendme_inc: 5 })
        );
        assert_eq!(
            Extensions::parse(&[3, 1, 5, 3, 1, 6]),
            Err(ExtError::Duplicate(3))
        );
    }

    #[test]
    fn window_limit_is_a_big_endian_u32_of_fixed_length() {
        let mut e = Extensions::new();
        e.set_window_limit(Some(WindowLimit { cells: 0x0102_0304 }));
        let b = e.encode();
        assert_eq!(b, [5, 4, 1, 2, 3, 4]);
        assert_eq!(Extensions::parse(&b), Ok(e));
        assert_eq!(
            Extensions::parse(&[5, 2, 1, 2]),
            Err(ExtError::BadLength {
                ty: 5,
                len: 2,
                expected: 4
            })
        );
        assert_eq!(
            Extensions::parse(&[5, 4, 0, 0, 1, 0, 5, 4, 0, 0, 2, 0]),
            Err(ExtError::Duplicate(5))
        );
    }
}
