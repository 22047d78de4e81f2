//! Relay messages: what travels, encrypted, inside RELAY cells (docs/spec.md, "Relay messages").
//!
//! The decrypted relay message area is [`RELAY_PAYLOAD_LEN`] bytes:
//! `RelayCmd (1) || StreamId (2, BE; 0 = circuit-level) || Length (2, BE) || Body || zeros`.
//! [`RelayMsg::decode`] parses an area into a typed message that borrows from it;
//! [`RelayMsg::encode_into`] writes one. DATA never copies on decode: its body is a slice of
//! the area. [`encode_data`] and [`decode_data`] are the fast paths for the data plane.
//!
//! [`ClientBound`] and [`RelayBound`] restrict messages to those a client, or a relay at its
//! own hop, may receive.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::num::{NonZeroU16, NonZeroU32};

use thiserror::Error;

use crate::cell::{CellError, HandshakeType};
use crate::consts::{RELAY_BODY_MAX, RELAY_PAYLOAD_LEN};

/// Version byte of the only SENDME format.
pub const SENDME_VERSION: u8 = 1;
/// Length of the authenticating tag in a SENDME (the `T` of the acknowledged cell).
pub const SENDME_TAG_LEN: usize = 16;
/// Length of an ed25519 identity or x25519 link key in EXTEND.
pub const EXTEND_KEY_LEN: usize = 32;

/// Errors from decoding or encoding relay messages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelayMsgError {
    /// The command byte is not a known [`RelayCmd`].
    #[error("unknown relay command {0}")]
    UnknownCommand(u8),
    /// The Length field exceeds [`RELAY_BODY_MAX`].
    #[error("relay message length {0} exceeds {RELAY_BODY_MAX}")]
    LengthTooLarge(usize),
    /// A stream-level command arrived with stream id 0.
    #[error("{0:?} needs a non-zero stream id")]
    StreamIdRequired(RelayCmd),
    /// A circuit-level command arrived with a non-zero stream id.
    #[error("{cmd:?} is circuit-level but has stream id {stream_id}")]
    StreamIdForbidden {
        /// The command.
        cmd: RelayCmd,
        /// The stream id it carried.
        stream_id: u16,
    },
    /// The body ended before a field of `cmd` was complete.
    #[error("{cmd:?} body truncated: needs {needed} bytes at offset {offset}, has {len}")]
    Truncated {
        /// The command whose body is short.
        cmd: RelayCmd,
        /// Where the incomplete field starts.
        offset: usize,
        /// How many bytes the field needs.
        needed: usize,
        /// The body length.
        len: usize,
    },
    /// Bytes remain in the body after the last field of `cmd`.
    #[error("{cmd:?} body has {extra} bytes after its last field")]
    TrailingBytes {
        /// The command.
        cmd: RelayCmd,
        /// How many bytes are left over.
        extra: usize,
    },
    /// An address type byte (BEGIN or CONNECTED) is unknown.
    #[error("{cmd:?}: unknown address type {atype}")]
    UnknownAddrType {
        /// The command.
        cmd: RelayCmd,
        /// The address type byte.
        atype: u8,
    },
    /// A hostname is invalid.
    #[error("invalid hostname: {0}")]
    Hostname(#[from] HostnameError),
    /// BEGIN with port 0.
    #[error("BEGIN with port 0")]
    ZeroPort,
    /// An END reason code is not in [`EndReason`].
    #[error("unknown END reason {0}")]
    UnknownEndReason(u8),
    /// A SENDME version other than [`SENDME_VERSION`].
    #[error("unknown SENDME version {0}")]
    UnknownSendmeVersion(u8),
    /// EXTEND link specifiers are inconsistent (missing or duplicated item, bad length).
    #[error("bad EXTEND link specifiers: {0}")]
    LinkSpec(&'static str),
    /// A handshake field (HTYPE) in EXTEND is unknown.
    #[error("EXTEND: {0}")]
    Handshake(#[from] CellError),
    /// A message body to encode does not fit in one relay message.
    #[error("{cmd:?} body of {len} bytes exceeds {RELAY_BODY_MAX}")]
    BodyTooLong {
        /// The command being encoded.
        cmd: RelayCmd,
        /// The body length it would need.
        len: usize,
    },
    /// A message arrived where it is not allowed (see [`ClientBound`], [`RelayBound`]).
    #[error("unexpected {cmd:?} message at the {context}")]
    Unexpected {
        /// The command of the message.
        cmd: RelayCmd,
        /// Where it arrived ("client" or "relay").
        context: &'static str,
    },
}

/// Errors from validating a hostname.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostnameError {
    /// The hostname has no bytes.
    #[error("empty")]
    Empty,
    /// The hostname is longer than 255 bytes.
    #[error("{0} bytes, more than 255")]
    TooLong(usize),
    /// A byte outside letters, digits, hyphen and dot.
    #[error("byte {byte:#04x} at offset {offset} is not a letter, digit, hyphen or dot")]
    BadByte {
        /// The offending byte.
        byte: u8,
        /// Its position.
        offset: usize,
    },
}

/// A relay command (the first byte of the relay message area).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RelayCmd {
    /// Open a stream to a target at the exit.
    Begin = 1,
    /// Stream bytes.
    Data = 2,
    /// Close a stream (both directions) with a reason.
    End = 3,
    /// The exit's answer to BEGIN: connected.
    Connected = 4,
    /// Circuit-level acknowledgement for congestion control.
    Sendme = 5,
    /// Extend the circuit by one hop.
    Extend = 6,
    /// The answer to EXTEND.
    Extended = 7,
    /// Half-close: the sender sends no more DATA on this stream.
    Fin = 8,
    /// Padding: discarded by its recipient.
    Drop = 10,
    /// Stream flow control: stop sending DATA on this stream.
    Xoff = 11,
    /// Stream flow control: resume sending DATA, at most at a rate.
    Xon = 12,
    /// Payment control (body opaque here; defined by the payments part of the spec).
    Payment = 13,
}

/// Whether a relay command carries a stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamIdRule {
    /// The stream id must be non-zero.
    Stream,
    /// The stream id must be 0 (circuit-level).
    Circuit,
}

impl RelayCmd {
    /// Which stream ids this command may carry; fixed per command.
    pub const fn stream_id_rule(self) -> StreamIdRule {
        match self {
            RelayCmd::Begin
            | RelayCmd::Data
            | RelayCmd::End
            | RelayCmd::Connected
            | RelayCmd::Fin
            | RelayCmd::Xoff
            | RelayCmd::Xon => StreamIdRule::Stream,
            RelayCmd::Sendme
            | RelayCmd::Extend
            | RelayCmd::Extended
            | RelayCmd::Drop
            | RelayCmd::Payment => StreamIdRule::Circuit,
        }
    }
}

impl TryFrom<u8> for RelayCmd {
    type Error = RelayMsgError;

    fn try_from(v: u8) -> Result<Self, RelayMsgError> {
        Ok(match v {
            1 => RelayCmd::Begin,
            2 => RelayCmd::Data,
            3 => RelayCmd::End,
            4 => RelayCmd::Connected,
            5 => RelayCmd::Sendme,
            6 => RelayCmd::Extend,
            7 => RelayCmd::Extended,
            8 => RelayCmd::Fin,
            10 => RelayCmd::Drop,
            11 => RelayCmd::Xoff,
            12 => RelayCmd::Xon,
            13 => RelayCmd::Payment,
            other => return Err(RelayMsgError::UnknownCommand(other)),
        })
    }
}

/// A stream id: non-zero, chosen by the client, local to one hop of one circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(NonZeroU16);

impl StreamId {
    /// Wraps a raw id; `None` for 0.
    pub const fn new(raw: u16) -> Option<StreamId> {
        match NonZeroU16::new(raw) {
            Some(n) => Some(StreamId(n)),
            None => None,
        }
    }

    /// The raw value.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated hostname: 1 to 255 bytes of ASCII letters, digits, hyphens and dots.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Hostname(String);

impl Hostname {
    /// Longest hostname (it must fit the one-byte length in BEGIN).
    pub const MAX_LEN: usize = 255;

    /// Validates a hostname given as bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Hostname, HostnameError> {
        if b.is_empty() {
            return Err(HostnameError::Empty);
        }
        if b.len() > Self::MAX_LEN {
            return Err(HostnameError::TooLong(b.len()));
        }
        if let Some((offset, &byte)) = b
            .iter()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || **c == b'-' || **c == b'.'))
        {
            return Err(HostnameError::BadByte { byte, offset });
        }
        // Only ASCII remains, which is valid UTF-8.
        Ok(Hostname(b.iter().map(|&c| char::from(c)).collect()))
    }

    /// The hostname as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Hostname {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, HostnameError> {
        Hostname::from_bytes(s.as_bytes())
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({:?})", self.0)
    }
}

/// Shows the hostname itself. **Sensitive**: a destination; logs must redact it unless
/// the operator opts in.
impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host part of a stream target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A hostname the exit resolves (address type 1).
    Name(Hostname),
    /// An IPv4 address (address type 4).
    V4(Ipv4Addr),
    /// An IPv6 address (address type 6).
    V6(Ipv6Addr),
}

/// Shows the host itself. **Sensitive**: see [`Target`].
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => n.fmt(f),
            Host::V4(a) => a.fmt(f),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Where a stream goes: a host and a non-zero port.
///
/// `Display` prints the destination in clear (`host:port`, IPv6 in brackets). A
/// destination is sensitive: never pass it to a log unredacted; redaction is the job of
/// the relay and client shells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host.
    pub host: Host,
    /// The port.
    pub port: NonZeroU16,
}

/// Shows the destination in clear. **Sensitive**: see [`Target`].
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// BEGIN flags (a `u32`); bits not defined here are carried but ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BeginFlags(pub u32);

impl BeginFlags {
    /// Bit 0: the client accepts an IPv6 connection.
    pub const IPV6_OK: u32 = 1 << 0;
    /// Bit 1: the client does not accept an IPv4 connection.
    pub const IPV4_NOT_OK: u32 = 1 << 1;
    /// Bit 2: the client prefers IPv6 when both are possible.
    pub const IPV6_PREFERRED: u32 = 1 << 2;

    /// Whether IPv6 is acceptable.
    pub const fn ipv6_ok(self) -> bool {
        self.0 & Self::IPV6_OK != 0
    }
    /// Whether IPv4 is acceptable.
    pub const fn ipv4_ok(self) -> bool {
        self.0 & Self::IPV4_NOT_OK == 0
    }
    /// Whether IPv6 is preferred.
    pub const fn ipv6_preferred(self) -> bool {
        self.0 & Self::IPV6_PREFERRED != 0
    }
}

/// The body of BEGIN: the target and flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Begin {
    /// Where to connect.
    pub target: Target,
    /// Address family preferences.
    pub flags: BeginFlags,
}

/// The body of CONNECTED: the address connected to (if disclosed) and its DNS TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connected {
    /// The address the exit connected to; `None` (address type 0) if not disclosed.
    pub addr: Option<IpAddr>,
    /// How long, in seconds, the client may cache the address.
    pub ttl: u32,
}

/// Why a stream was closed (the body of END).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EndReason {
    /// Other.
    Misc = 1,
    /// The exit could not resolve the hostname.
    ResolveFailed = 2,
    /// The destination refused the connection.
    ConnectRefused = 3,
    /// The exit policy refuses the target.
    ExitPolicy = 4,
    /// The circuit is being destroyed.
    Destroy = 5,
    /// The stream finished normally.
    Done = 6,
    /// Connecting timed out.
    Timeout = 7,
    /// No route to the destination.
    NoRoute = 8,
    /// The exit is hibernating.
    Hibernating = 9,
    /// An internal error at the sender.
    Internal = 10,
    /// Out of resources.
    ResourceLimit = 11,
    /// The destination reset the connection.
    ConnReset = 12,
    /// Protocol violation on this stream.
    Protocol = 13,
    /// The hop is not paid enough to open or continue the stream.
    PaymentRequired = 14,
}

impl TryFrom<u8> for EndReason {
    type Error = RelayMsgError;

    fn try_from(v: u8) -> Result<Self, RelayMsgError> {
        use EndReason::*;
        Ok(match v {
            1 => Misc,
            2 => ResolveFailed,
            3 => ConnectRefused,
            4 => ExitPolicy,
            5 => Destroy,
            6 => Done,
            7 => Timeout,
            8 => NoRoute,
            9 => Hibernating,
            10 => Internal,
            11 => ResourceLimit,
            12 => ConnReset,
            13 => Protocol,
            14 => PaymentRequired,
            other => return Err(RelayMsgError::UnknownEndReason(other)),
        })
    }
}

/// The body of SENDME: version 1 and the tag of the acknowledged cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sendme {
    /// The `T` field of the RELAY cell that triggered this SENDME.
    pub tag: [u8; SENDME_TAG_LEN],
}

/// The body of XON: the rate the receiver may send at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Xon {
    /// Most KiB per second; `None` (0 on the wire) for unlimited.
    pub kib_per_sec: Option<NonZeroU32>,
}

/// The body of EXTEND: the next relay and the client's handshake for it.
///
/// The relay extends to `ipv4` or `ipv6` (at least one is present), authenticates the
/// link with `link_key` and checks that the relay there is `identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extend<'a> {
    /// IPv4 address and port of the next relay (link specifier 1).
    pub ipv4: Option<SocketAddrV4>,
    /// IPv6 address and port of the next relay (link specifier 2).
    pub ipv6: Option<SocketAddrV6>,
    /// The next relay's ed25519 identity key (link specifier 3); never all zero.
    pub identity: [u8; EXTEND_KEY_LEN],
    /// The next relay's x25519 link (Noise static) key (link specifier 4).
    pub link_key: [u8; EXTEND_KEY_LEN],
    /// The handshake type, copied into the CREATE.
    pub htype: HandshakeType,
    /// The client's handshake message, copied into the CREATE.
    pub hdata: &'a [u8],
}

/// Link specifier type: IPv4 address and port (6 bytes).
pub const LSPEC_IPV4: u8 = 1;
/// Link specifier type: IPv6 address and port (18 bytes).
pub const LSPEC_IPV6: u8 = 2;
/// Link specifier type: ed25519 identity (32 bytes).
pub const LSPEC_ED25519: u8 = 3;
/// Link specifier type: x25519 link key (32 bytes).
pub const LSPEC_LINK_KEY: u8 = 4;

/// The body of EXTENDED: the next relay's handshake reply (from its CREATED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extended<'a> {
    /// The handshake message.
    pub hdata: &'a [u8],
}

/// A decoded relay message, borrowing from the relay message area.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelayMsg<'a> {
    /// BEGIN on a new stream.
    Begin(StreamId, Begin),
    /// DATA: the bytes, borrowed from the area (at most [`RELAY_BODY_MAX`]).
    Data(StreamId, &'a [u8]),
    /// END with a reason.
    End(StreamId, EndReason),
    /// CONNECTED.
    Connected(StreamId, Connected),
    /// SENDME (circuit-level).
    Sendme(Sendme),
    /// EXTEND (circuit-level).
    Extend(Extend<'a>),
    /// EXTENDED (circuit-level).
    Extended(Extended<'a>),
    /// FIN: half-close of the sender's direction.
    Fin(StreamId),
    /// DROP: padding, with whatever body it had; its recipient discards it.
    Drop(&'a [u8]),
    /// XOFF.
    Xoff(StreamId),
    /// XON.
    Xon(StreamId, Xon),
    /// PAYMENT (circuit-level), opaque body.
    Payment(&'a [u8]),
}

/// The header of a relay message, parsed and checked without looking at the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayHeader {
    /// The command.
    pub cmd: RelayCmd,
    /// The stream id, checked against the command's [`StreamIdRule`].
    pub stream_id: Option<StreamId>,
    /// The body length (at most [`RELAY_BODY_MAX`]).
    pub len: usize,
}

impl RelayHeader {
    /// Parses and checks the header of an area; returns it with the body.
    pub fn parse(area: &[u8; RELAY_PAYLOAD_LEN]) -> Result<(RelayHeader, &[u8]), RelayMsgError> {
        let [cmd, s0, s1, l0, l1, rest @ ..] = area;
        let cmd = RelayCmd::try_from(*cmd)?;
        let raw_sid = u16::from_be_bytes([*s0, *s1]);
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let body = rest.get(..len).ok_or(RelayMsgError::LengthTooLarge(len))?;
        let stream_id = StreamId::new(raw_sid);
        match (cmd.stream_id_rule(), stream_id) {
            (StreamIdRule::Stream, None) => return Err(RelayMsgError::StreamIdRequired(cmd)),
            (StreamIdRule::Circuit, Some(_)) => {
                return Err(RelayMsgError::StreamIdForbidden {
                    cmd,
                    stream_id: raw_sid,
                })
            }
            _ => {}
        }
        Ok((
            RelayHeader {
                cmd,
                stream_id,
                len,
            },
            body,
        ))
    }
}

/// Fast path: if `area` holds a DATA message, its stream id and bytes (borrowed).
/// `Ok(None)` for any other valid header; the caller then uses [`RelayMsg::decode`].
pub fn decode_data(
    area: &[u8; RELAY_PAYLOAD_LEN],
) -> Result<Option<(StreamId, &[u8])>, RelayMsgError> {
    let (hdr, body) = RelayHeader::parse(area)?;
    Ok(match (hdr.cmd, hdr.stream_id) {
        (RelayCmd::Data, Some(sid)) => Some((sid, body)),
        _ => None,
    })
}

/// Fast path: writes a DATA message for `stream_id` carrying `data` (at most
/// [`RELAY_BODY_MAX`] bytes) into `area`, zero-filling the rest.
pub fn encode_data(
    area: &mut [u8; RELAY_PAYLOAD_LEN],
    stream_id: StreamId,
    data: &[u8],
) -> Result<(), RelayMsgError> {
    write_msg(area, RelayCmd::Data, stream_id.get(), |body| {
        put(body, 0, data, RelayCmd::Data).map(|()| data.len())
    })
}

/// Writes header and body; `fill` writes the body into the 486-byte slot and returns its
/// length. Zero-fills everything after the body.
fn write_msg(
    area: &mut [u8; RELAY_PAYLOAD_LEN],
    cmd: RelayCmd,
    stream_id: u16,
    fill: impl FnOnce(&mut [u8; RELAY_BODY_MAX]) -> Result<usize, RelayMsgError>,
) -> Result<(), RelayMsgError> {
    let [c, s0, s1, l0, l1, rest @ ..] = area;
    let len = fill(rest)?;
    let len16 = u16::try_from(len).map_err(|_| RelayMsgError::BodyTooLong { cmd, len })?;
    if let Some(tail) = rest.get_mut(len..) {
        tail.fill(0);
    }
    *c = cmd as u8;
    [*s0, *s1] = stream_id.to_be_bytes();
    [*l0, *l1] = len16.to_be_bytes();
    Ok(())
}

/// Copies `src` into `body` at `at`, or fails with `BodyTooLong`.
fn put(body: &mut [u8], at: usize, src: &[u8], cmd: RelayCmd) -> Result<(), RelayMsgError> {
    let end = at.saturating_add(src.len());
    body.get_mut(at..end)
        .ok_or(RelayMsgError::BodyTooLong { cmd, len: end })?
        .copy_from_slice(src);
    Ok(())
}

/// A cursor over a message body that yields typed truncation errors.
struct Reader<'a> {
    cmd: RelayCmd,
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(cmd: RelayCmd, body: &'a [u8]) -> Self {
        Reader { cmd, body, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RelayMsgError> {
        let end = self.pos.saturating_add(n);
        let s = self
            .body
            .get(self.pos..end)
            .ok_or(RelayMsgError::Truncated {
                cmd: self.cmd,
                offset: self.pos,
                needed: n,
                len: self.body.len(),
            })?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RelayMsgError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, RelayMsgError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, RelayMsgError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, RelayMsgError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn finish(&self) -> Result<(), RelayMsgError> {
        let extra = self.body.len().saturating_sub(self.pos);
        if extra == 0 {
            Ok(())
        } else {
            Err(RelayMsgError::TrailingBytes {
                cmd: self.cmd,
                extra,
            })
        }
    }
}

/// A cursor writing a message body, failing with `BodyTooLong` when it overflows.
struct Writer<'b> {
    cmd: RelayCmd,
    body: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    fn new(cmd: RelayCmd, body: &'b mut [u8]) -> Self {
        Writer { cmd, body, pos: 0 }
    }

    fn bytes(&mut self, src: &[u8]) -> Result<(), RelayMsgError> {
        put(self.body, self.pos, src, self.cmd)?;
        self.pos += src.len();
        Ok(())
    }

    fn u8(&mut self, v: u8) -> Result<(), RelayMsgError> {
        self.bytes(&[v])
    }

    fn u16(&mut self, v: u16) -> Result<(), RelayMsgError> {
        self.bytes(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> Result<(), RelayMsgError> {
        self.bytes(&v.to_be_bytes())
    }
}

const ATYPE_NONE: u8 = 0;
const ATYPE_NAME: u8 = 1;
const ATYPE_V4: u8 = 4;
const ATYPE_V6: u8 = 6;

fn decode_begin(r: &mut Reader<'_>) -> Result<Begin, RelayMsgError> {
    let atype = r.u8()?;
    let host = match atype {
        ATYPE_NAME => {
            let n = usize::from(r.u8()?);
            Host::Name(Hostname::from_bytes(r.take(n)?)?)
        }
        ATYPE_V4 => Host::V4(Ipv4Addr::from(r.array::<4>()?)),
        ATYPE_V6 => Host::V6(Ipv6Addr::from(r.array::<16>()?)),
        atype => {
            return Err(RelayMsgError::UnknownAddrType {
                cmd: RelayCmd::Begin,
                atype,
            })
        }
    };
    let port = NonZeroU16::new(r.u16()?).ok_or(RelayMsgError::ZeroPort)?;
    let flags = BeginFlags(r.u32()?);
    Ok(Begin {
        target: Target { host, port },
        flags,
    })
}

fn encode_begin(w: &mut Writer<'_>, b: &Begin) -> Result<(), RelayMsgError> {
    match &b.target.host {
        Host::Name(n) => {
            w.u8(ATYPE_NAME)?;
            let bytes = n.as_str().as_bytes();
            let len = u8::try_from(bytes.len())
                .map_err(|_| RelayMsgError::Hostname(HostnameError::TooLong(bytes.len())))?;
            w.u8(len)?;
            w.bytes(bytes)?;
        }
        Host::V4(a) => {
            w.u8(ATYPE_V4)?;
            w.bytes(&a.octets())?;
        }
        Host::V6(a) => {
            w.u8(ATYPE_V6)?;
            w.bytes(&a.octets())?;
        }
    }
    w.u16(b.target.port.get())?;
    w.u32(b.flags.0)
}

fn decode_connected(r: &mut Reader<'_>) -> Result<Connected, RelayMsgError> {
    let addr = match r.u8()? {
        ATYPE_NONE => None,
        ATYPE_V4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
        ATYPE_V6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
        atype => {
            return Err(RelayMsgError::UnknownAddrType {
                cmd: RelayCmd::Connected,
                atype,
            })
        }
    };
    Ok(Connected {
        addr,
        ttl: r.u32()?,
    })
}

fn encode_connected(w: &mut Writer<'_>, c: &Connected) -> Result<(), RelayMsgError> {
    match c.addr {
        None => w.u8(ATYPE_NONE)?,
        Some(IpAddr::V4(a)) => {
            w.u8(ATYPE_V4)?;
            w.bytes(&a.octets())?;
        }
        Some(IpAddr::V6(a)) => {
            w.u8(ATYPE_V6)?;
            w.bytes(&a.octets())?;
        }
    }
    w.u32(c.ttl)
}

fn decode_extend<'a>(r: &mut Reader<'a>) -> Result<Extend<'a>, RelayMsgError> {
    let nspec = r.u8()?;
    let mut ipv4 = None;
    let mut ipv6 = None;
    let mut identity = None;
    let mut link_key = None;
    for _ in 0..nspec {
        let ty = r.u8()?;
        let len = usize::from(r.u8()?);
        let spec = r.take(len)?;
        let mut s = Reader::new(RelayCmd::Extend, spec);
        match ty {
            LSPEC_IPV4 => {
                let a = Ipv4Addr::from(s.array::<4>()?);
                let port = s.u16()?;
                set_once(&mut ipv4, SocketAddrV4::new(a, port), "duplicate IPv4")?;
            }
            LSPEC_IPV6 => {
                let a = Ipv6Addr::from(s.array::<16>()?);
                let port = s.u16()?;
                set_once(
                    &mut ipv6,
                    SocketAddrV6::new(a, port, 0, 0),
                    "duplicate IPv6",
                )?;
            }
            LSPEC_ED25519 => set_once(&mut identity, s.array()?, "duplicate identity")?,
            LSPEC_LINK_KEY => set_once(&mut link_key, s.array()?, "duplicate link key")?,
            _ => continue, // unknown specifier: skipped
        }
        if s.finish().is_err() {
            return Err(RelayMsgError::LinkSpec("specifier longer than its type"));
        }
    }
    let identity = identity.ok_or(RelayMsgError::LinkSpec("no identity"))?;
    let link_key = link_key.ok_or(RelayMsgError::LinkSpec("no link key"))?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err(RelayMsgError::LinkSpec("no address"));
    }
    if identity == [0; EXTEND_KEY_LEN] {
        return Err(RelayMsgError::LinkSpec("all-zero identity"));
    }
    let htype = HandshakeType::try_from(r.u16()?)?;
    let hlen = usize::from(r.u16()?);
    let hdata = r.take(hlen)?;
    Ok(Extend {
        ipv4,
        ipv6,
        identity,
        link_key,
        htype,
        hdata,
    })
}

fn set_once<T>(slot: &mut Option<T>, v: T, dup: &'static str) -> Result<(), RelayMsgError> {
    if slot.is_some() {
        return Err(RelayMsgError::LinkSpec(dup));
    }
    *slot = Some(v);
    Ok(())
}

fn encode_extend(w: &mut Writer<'_>, e: &Extend<'_>) -> Result<(), RelayMsgError> {
    if e.ipv4.is_none() && e.ipv6.is_none() {
        return Err(RelayMsgError::LinkSpec("no address"));
    }
    if e.identity == [0; EXTEND_KEY_LEN] {
        return Err(RelayMsgError::LinkSpec("all-zero identity"));
    }
    let nspec = 2 + u8::from(e.ipv4.is_some()) + u8::from(e.ipv6.is_some());
    w.u8(nspec)?;
    if let Some(a) = e.ipv4 {
        w.bytes(&[LSPEC_IPV4, 6])?;
        w.bytes(&a.ip().octets())?;
        w.u16(a.port())?;
    }
    if let Some(a) = e.ipv6 {
        w.bytes(&[LSPEC_IPV6, 18])?;
        w.bytes(&a.ip().octets())?;
        w.u16(a.port())?;
    }
    w.bytes(&[LSPEC_ED25519, 32])?;
    w.bytes(&e.identity)?;
    w.bytes(&[LSPEC_LINK_KEY, 32])?;
    w.bytes(&e.link_key)?;
    w.u16(e.htype as u16)?;
    hlen_and_data(w, e.hdata)
}

fn hlen_and_data(w: &mut Writer<'_>, hdata: &[u8]) -> Result<(), RelayMsgError> {
    let len = u16::try_from(hdata.len()).map_err(|_| RelayMsgError::BodyTooLong {
        cmd: w.cmd,
        len: hdata.len(),
    })?;
    w.u16(len)?;
    w.bytes(hdata)
}

impl<'a> RelayMsg<'a> {
    /// Decodes a decrypted relay message area. Never panics; every malformation is a
    /// typed error. Bytes after the body (the padding) are ignored.
    pub fn decode(area: &'a [u8; RELAY_PAYLOAD_LEN]) -> Result<RelayMsg<'a>, RelayMsgError> {
        let (hdr, body) = RelayHeader::parse(area)?;
        let cmd = hdr.cmd;
        let mut r = Reader::new(cmd, body);
        // The header check guarantees a stream id for stream-level commands.
        let sid = || hdr.stream_id.ok_or(RelayMsgError::StreamIdRequired(cmd));
        let msg = match cmd {
            RelayCmd::Data => return Ok(RelayMsg::Data(sid()?, body)),
            RelayCmd::Drop => return Ok(RelayMsg::Drop(body)),
            RelayCmd::Payment => return Ok(RelayMsg::Payment(body)),
            RelayCmd::Begin => RelayMsg::Begin(sid()?, decode_begin(&mut r)?),
            RelayCmd::End => RelayMsg::End(sid()?, EndReason::try_from(r.u8()?)?),
            RelayCmd::Connected => RelayMsg::Connected(sid()?, decode_connected(&mut r)?),
            RelayCmd::Sendme => {
                let v = r.u8()?;
                if v != SENDME_VERSION {
                    return Err(RelayMsgError::UnknownSendmeVersion(v));
                }
                RelayMsg::Sendme(Sendme { tag: r.array()? })
            }
            RelayCmd::Extend => RelayMsg::Extend(decode_extend(&mut r)?),
            RelayCmd::Extended => {
                let hlen = usize::from(r.u16()?);
                RelayMsg::Extended(Extended {
                    hdata: r.take(hlen)?,
                })
            }
            RelayCmd::Fin => RelayMsg::Fin(sid()?),
            RelayCmd::Xoff => RelayMsg::Xoff(sid()?),
            RelayCmd::Xon => RelayMsg::Xon(
                sid()?,
                Xon {
                    kib_per_sec: NonZeroU32::new(r.u32()?),
                },
            ),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The command of this message.
    pub fn cmd(&self) -> RelayCmd {
        match self {
            RelayMsg::Begin(..) => RelayCmd::Begin,
            RelayMsg::Data(..) => RelayCmd::Data,
            RelayMsg::End(..) => RelayCmd::End,
            RelayMsg::Connected(..) => RelayCmd::Connected,
            RelayMsg::Sendme(..) => RelayCmd::Sendme,
            RelayMsg::Extend(..) => RelayCmd::Extend,
            RelayMsg::Extended(..) => RelayCmd::Extended,
            RelayMsg::Fin(..) => RelayCmd::Fin,
            RelayMsg::Drop(..) => RelayCmd::Drop,
            RelayMsg::Xoff(..) => RelayCmd::Xoff,
            RelayMsg::Xon(..) => RelayCmd::Xon,
            RelayMsg::Payment(..) => RelayCmd::Payment,
        }
    }

    /// The stream id; `None` for circuit-level messages.
    pub fn stream_id(&self) -> Option<StreamId> {
        match self {
            RelayMsg::Begin(s, _)
            | RelayMsg::Data(s, _)
            | RelayMsg::End(s, _)
            | RelayMsg::Connected(s, _)
            | RelayMsg::Fin(s)
            | RelayMsg::Xoff(s)
            | RelayMsg::Xon(s, _) => Some(*s),
            RelayMsg::Sendme(_)
            | RelayMsg::Extend(_)
            | RelayMsg::Extended(_)
            | RelayMsg::Drop(_)
            | RelayMsg::Payment(_) => None,
        }
    }

    /// Encodes this message into `area`, zero-filling everything after the body.
    /// On error `area` may hold a partial body and must not be sent.
    pub fn encode_into(&self, area: &mut [u8; RELAY_PAYLOAD_LEN]) -> Result<(), RelayMsgError> {
        let cmd = self.cmd();
        let sid = self.stream_id().map_or(0, StreamId::get);
        write_msg(area, cmd, sid, |body| {
            let mut w = Writer::new(cmd, body);
            match self {
                RelayMsg::Begin(_, b) => encode_begin(&mut w, b)?,
                RelayMsg::Data(_, d) | RelayMsg::Drop(d) | RelayMsg::Payment(d) => w.bytes(d)?,
                RelayMsg::End(_, reason) => w.u8(*reason as u8)?,
                RelayMsg::Connected(_, c) => encode_connected(&mut w, c)?,
                RelayMsg::Sendme(s) => {
                    w.u8(SENDME_VERSION)?;
                    w.bytes(&s.tag)?;
                }
                RelayMsg::Extend(e) => encode_extend(&mut w, e)?,
                RelayMsg::Extended(e) => hlen_and_data(&mut w, e.hdata)?,
                RelayMsg::Fin(_) | RelayMsg::Xoff(_) => {}
                RelayMsg::Xon(_, x) => w.u32(x.kib_per_sec.map_or(0, NonZeroU32::get))?,
            }
            Ok(w.pos)
        })
    }
}

macro_rules! restricted {
    (
        $(#[$meta:meta])*
        $name:ident, $context:literal,
        { $( $variant:ident ( $($f:ident : $ty:ty),* ) ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name<'a> {
            $(
                #[doc = concat!("See [`RelayMsg::", stringify!($variant), "`].")]
                $variant($($ty),*),
            )*
        }

        impl<'a> TryFrom<RelayMsg<'a>> for $name<'a> {
            type Error = RelayMsgError;

            fn try_from(m: RelayMsg<'a>) -> Result<Self, RelayMsgError> {
                match m {
                    $( RelayMsg::$variant($($f),*) => Ok($name::$variant($($f),*)), )*
                    #[allow(unreachable_patterns)]
                    other => Err(RelayMsgError::Unexpected {
                        cmd: other.cmd(),
                        context: $context,
                    }),
                }
            }
        }

        impl<'a> From<$name<'a>> for RelayMsg<'a> {
            fn from(m: $name<'a>) -> RelayMsg<'a> {
                match m {
                    $( $name::$variant($($f),*) => RelayMsg::$variant($($f),*), )*
                }
            }
        }

        impl<'a> $name<'a> {
            /// Decodes an area and checks that the message is allowed here.
            pub fn decode(area: &'a [u8; RELAY_PAYLOAD_LEN]) -> Result<Self, RelayMsgError> {
                Self::try_from(RelayMsg::decode(area)?)
            }

            /// Encodes this message into `area` (see [`RelayMsg::encode_into`]).
            pub fn encode_into(
                &self,
                area: &mut [u8; RELAY_PAYLOAD_LEN],
            ) -> Result<(), RelayMsgError> {
                RelayMsg::from(self.clone()).encode_into(area)
            }
        }
    };
}

restricted! {
    /// A relay message a client may receive (from any hop of its circuit). Anything
    /// else is a protocol violation: `TryFrom<RelayMsg>` fails with
    /// [`RelayMsgError::Unexpected`].
    ClientBound, "client", {
        Connected(s: StreamId, c: Connected),
        Data(s: StreamId, d: &'a [u8]),
        End(s: StreamId, r: EndReason),
        Fin(s: StreamId),
        Sendme(m: Sendme),
        Extended(e: Extended<'a>),
        Xoff(s: StreamId),
        Xon(s: StreamId, x: Xon),
        Drop(d: &'a [u8]),
    }
}

restricted! {
    /// A relay message a relay may receive at its own hop (from the client). Anything
    /// else is a protocol violation: `TryFrom<RelayMsg>` fails with
    /// [`RelayMsgError::Unexpected`].
    RelayBound, "relay", {
        Begin(s: StreamId, b: Begin),
        Data(s: StreamId, d: &'a [u8]),
        End(s: StreamId, r: EndReason),
        Fin(s: StreamId),
        Sendme(m: Sendme),
        Extend(e: Extend<'a>),
        Xoff(s: StreamId),
        Xon(s: StreamId, x: Xon),
        Drop(d: &'a [u8]),
        Payment(p: &'a [u8]),
    }
}
