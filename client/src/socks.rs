//! SOCKS5 server handshake, sans-IO (RFC 1928 with RFC 1929 username/password).
//!
//! [`SocksHandshake`] is a state machine for one accepted connection: the shell feeds it the
//! bytes it reads ([`SocksHandshake::feed`]), writes whatever [`SocksHandshake::take_output`]
//! returns, and ends with either a typed [`SocksRequest`] (a CONNECT target and the stream's
//! [`IsolationKey`]) or a typed [`SocksError`]. It opens no socket, reads no clock and never
//! resolves a name: a hostname stays a [`Hostname`] and travels to the exit.
//!
//! The subset (docs/client.md, "SOCKS5 details"):
//! - methods `0x02` (username/password, preferred when offered) and `0x00` (no auth);
//! - CONNECT only; BIND, UDP ASSOCIATE and unknown commands get reply `0x07`;
//! - address types IPv4 (`0x01`), domain name (`0x03`) and IPv6 (`0x04`); others get `0x08`;
//! - credentials are accepted whatever they are: they are an isolation key, not a login.
//!
//! After the request the machine stops: bytes that follow (optimistic data) are not consumed
//! and belong to the stream. The shell sends the final reply with [`reply`] once the exit
//! answers, mapping an END reason with [`reply_for_end`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU16;

use onionvpn_proto::relaymsg::{EndReason, Host, Hostname, HostnameError, Target};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SOCKS protocol version 5 (the first byte of a greeting, request and reply).
pub const SOCKS_VERSION: u8 = 5;
/// Version byte of the RFC 1929 username/password sub-negotiation.
pub const AUTH_VERSION: u8 = 1;
/// Method: no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USER_PASS: u8 = 0x02;
/// Method reply: no acceptable method.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// Command: CONNECT.
pub const CMD_CONNECT: u8 = 0x01;
/// Command: BIND (refused).
pub const CMD_BIND: u8 = 0x02;
/// Command: UDP ASSOCIATE (refused).
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;
/// Address type: IPv4, 4 bytes.
pub const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name, a length byte then the name.
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6, 16 bytes.
pub const ATYP_IPV6: u8 = 0x04;

/// Longest greeting: version, count, 255 methods.
const MAX_GREETING: usize = 2 + 255;
/// Longest RFC 1929 message: version, two lengths, 255-byte username and password.
const MAX_AUTH: usize = 3 + 255 + 255;
/// Longest request: header, length byte, 255-byte name, port.
const MAX_REQUEST: usize = 4 + 1 + 255 + 2;
/// Most bytes the handshake ever buffers (one message).
pub const MAX_BUFFERED: usize = max3(MAX_GREETING, MAX_AUTH, MAX_REQUEST);

const fn max3(a: usize, b: usize, c: usize) -> usize {
    let ab = if a > b { a } else { b };
    if ab > c {
        ab
    } else {
        c
    }
}

/// Written to a client that spoke HTTP to the SOCKS port, before closing.
pub const HTTP_RESPONSE: &[u8] = b"HTTP/1.0 501 Not Implemented\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 154\r\n\
Connection: close\r\n\
\r\n\
This is a SOCKS5 proxy (onionvpn), not an HTTP proxy.\n\
Use SOCKS5 with remote DNS, for example:\n\
curl --socks5-hostname 127.0.0.1:9050 https://example.com/\n";

/// A SOCKS5 reply code (the REP field of RFC 1928, section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyCode {
    /// `0x00` succeeded.
    Succeeded = 0x00,
    /// `0x01` general SOCKS server failure.
    GeneralFailure = 0x01,
    /// `0x02` connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// `0x03` network unreachable.
    NetworkUnreachable = 0x03,
    /// `0x04` host unreachable.
    HostUnreachable = 0x04,
    /// `0x05` connection refused.
    ConnectionRefused = 0x05,
    /// `0x06` TTL expired (used for timeouts, as Tor does).
    TtlExpired = 0x06,
    /// `0x07` command not supported.
    CommandNotSupported = 0x07,
    /// `0x08` address type not supported.
    AddressTypeNotSupported = 0x08,
}

impl From<ReplyCode> for u8 {
    fn from(c: ReplyCode) -> u8 {
        c as u8
    }
}

impl ReplyCode {
    /// The reply for a stream the exit (or a hop) closed with `reason` before CONNECTED.
    ///
    /// Follows Tor's `stream_end_reason_to_socks5_response`, so that applications see the
    /// codes they see behind Tor; [`EndReason::PaymentRequired`], which Tor lacks, maps to
    /// "not allowed".
    pub fn for_end(reason: EndReason) -> ReplyCode {
        match reason {
            EndReason::ResolveFailed | EndReason::NoRoute => ReplyCode::HostUnreachable,
            EndReason::ConnectRefused | EndReason::ConnReset | EndReason::Done => {
                ReplyCode::ConnectionRefused
            }
            EndReason::ExitPolicy | EndReason::PaymentRequired => ReplyCode::NotAllowed,
            EndReason::Timeout => ReplyCode::TtlExpired,
            EndReason::Misc
            | EndReason::Destroy
            | EndReason::Hibernating
            | EndReason::Internal
            | EndReason::ResourceLimit
            | EndReason::Protocol => ReplyCode::GeneralFailure,
        }
    }
}

/// The SOCKS5 reply code (REP byte) for a stream closed with `reason` before CONNECTED.
///
/// See [`ReplyCode::for_end`] for the table.
pub fn reply_for_end(reason: EndReason) -> u8 {
    ReplyCode::for_end(reason).into()
}

/// The bound address to put in replies when there is none to report: `0.0.0.0:0`.
pub const UNSPECIFIED_BOUND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Encodes a reply: `VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT` (10 bytes for an IPv4 bound
/// address, 22 for IPv6). `code` is a REP byte ([`ReplyCode`] converts with `.into()`).
///
/// The exit's own address is never known to the client; pass [`UNSPECIFIED_BOUND`].
pub fn reply(code: u8, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[SOCKS_VERSION, code, 0]);
    match bound.ip() {
        IpAddr::V4(a) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// The stream-isolation key a SOCKS connection presented: its RFC 1929 credentials, or none.
///
/// Streams with unequal keys never share a circuit (Tor's `IsolateSOCKSAuth`). No-auth and
/// username/password with empty fields are different keys. `Debug` never prints the
/// credentials; the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq, Hash, Default, Zeroize, ZeroizeOnDrop)]
pub struct IsolationKey {
    /// `None` for method `0x00`, else `(username, password)`.
    creds: Option<(Vec<u8>, Vec<u8>)>,
}

impl IsolationKey {
    /// The key of a connection that chose "no authentication".
    pub fn no_auth() -> Self {
        Self { creds: None }
    }

    /// The key of a connection that sent `username` and `password`.
    pub fn credentials(username: &[u8], password: &[u8]) -> Self {
        Self {
            creds: Some((username.to_vec(), password.to_vec())),
        }
    }

    /// Whether the client authenticated with username/password.
    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// The username, if any. **Sensitive** (may name a site, as Tor Browser's does).
    pub fn username(&self) -> Option<&[u8]> {
        self.creds.as_ref().map(|(u, _)| u.as_slice())
    }

    /// The password, if any. **Sensitive**.
    pub fn password(&self) -> Option<&[u8]> {
        self.creds.as_ref().map(|(_, p)| p.as_slice())
    }
}

impl fmt::Debug for IsolationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.creds {
            None => f.write_str("IsolationKey(no-auth)"),
            Some(_) => f.write_str("IsolationKey(credentials: [scrubbed])"),
        }
    }
}

/// A completed SOCKS5 request: CONNECT to `target`, isolated by `isolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// Where to connect. A hostname is kept as a name for the exit to resolve, except an IP
    /// literal sent as a name (`"192.0.2.1"`), which becomes an address.
    pub target: Target,
    /// The stream-isolation key.
    pub isolation: IsolationKey,
}

/// Where a handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Waiting for (the rest of) the method greeting.
    Greeting,
    /// Waiting for (the rest of) the RFC 1929 username/password message.
    Auth,
    /// Waiting for (the rest of) the request.
    Request,
    /// The request has been returned; the shell owes the final reply.
    Done,
    /// The handshake failed; the shell writes any pending output and closes.
    Failed,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "greeting",
            Stage::Auth => "username/password",
            Stage::Request => "request",
            Stage::Done => "done",
            Stage::Failed => "failed",
        })
    }
}

/// Why a SOCKS handshake failed. Each variant says whether a reply was queued
/// ([`SocksError::reply_code`]); the shell writes [`SocksHandshake::take_output`] and closes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SocksError {
    /// The client speaks SOCKS4 or SOCKS4a (first byte 4). Nothing is replied.
    #[error("SOCKS4 is not supported: use SOCKS5 (e.g. curl --socks5-hostname)")]
    Socks4,
    /// The client sent an HTTP request (first byte an ASCII capital, as in `GET`,
    /// `CONNECT`). [`HTTP_RESPONSE`] was queued.
    #[error("HTTP request on the SOCKS port: this is a SOCKS5 proxy, not an HTTP proxy")]
    Http,
    /// A SOCKS message started with a version byte other than 5.
    #[error("SOCKS version {got} in the {stage}, expected 5")]
    WrongVersion {
        /// Which message.
        stage: Stage,
        /// The version byte received.
        got: u8,
    },
    /// The greeting offered neither no-auth nor username/password; `05 FF` was queued.
    #[error("no acceptable authentication method among {offered} offered (need 0x00 or 0x02)")]
    NoAcceptableMethod {
        /// How many methods the client offered.
        offered: u8,
    },
    /// The username/password message had a version other than 1; `01 01` was queued.
    #[error("username/password sub-negotiation version {got}, expected 1")]
    AuthVersion {
        /// The version byte received.
        got: u8,
    },
    /// The command is not CONNECT; reply `0x07` was queued.
    #[error("SOCKS command {cmd:#04x} not supported (only CONNECT)")]
    UnsupportedCommand {
        /// The command byte (2 BIND, 3 UDP ASSOCIATE, or unknown).
        cmd: u8,
    },
    /// The address type is not 1, 3 or 4; reply `0x08` was queued.
    #[error("SOCKS address type {atyp:#04x} not supported")]
    UnsupportedAddressType {
        /// The ATYP byte.
        atyp: u8,
    },
    /// A domain-name address of length 0; reply `0x01` was queued.
    #[error("empty hostname in SOCKS request")]
    EmptyHostname,
    /// A domain-name address that is not a valid hostname; reply `0x04` was queued.
    #[error("invalid hostname in SOCKS request: {0}")]
    BadHostname(HostnameError),
    /// Destination port 0; reply `0x02` was queued.
    #[error("destination port 0")]
    PortZero,
    /// The client closed the connection before finishing the handshake.
    #[error("connection closed during the SOCKS {stage} with {buffered} bytes of it received")]
    Closed {
        /// The stage the handshake was in.
        stage: Stage,
        /// Bytes of the unfinished message already received.
        buffered: usize,
    },
    /// Input was fed after the handshake finished or failed.
    #[error("SOCKS handshake already {stage}: no more input expected")]
    Finished {
        /// [`Stage::Done`] or [`Stage::Failed`].
        stage: Stage,
    },
}

impl SocksError {
    /// The REP code queued for this error, if a SOCKS5 request reply was queued.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            SocksError::UnsupportedCommand { .. } => Some(ReplyCode::CommandNotSupported),
            SocksError::UnsupportedAddressType { .. } => Some(ReplyCode::AddressTypeNotSupported),
            SocksError::EmptyHostname => Some(ReplyCode::GeneralFailure),
            SocksError::BadHostname(_) => Some(ReplyCode::HostUnreachable),
            SocksError::PortZero => Some(ReplyCode::NotAllowed),
            _ => None,
        }
    }
}

/// What one call to [`SocksHandshake::feed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// How many bytes of the input belong to the handshake. Bytes after them (only possible
    /// once `request` is `Some`) are stream data the client sent early.
    pub consumed: usize,
    /// The request, once the handshake is complete.
    pub request: Option<SocksRequest>,
}

/// How much of the current message is known.
enum Frame {
    /// At least this many bytes (more than are buffered) make up the message.
    Need(usize),
    /// The buffer holds exactly one complete message.
    Complete,
}

/// The server side of one SOCKS5 handshake. See the [module docs](self).
#[derive(Clone)]
pub struct SocksHandshake {
    stage: Stage,
    /// The current, incomplete message; never more than [`MAX_BUFFERED`] bytes.
    buf: Vec<u8>,
    /// Reply bytes not yet taken by the shell.
    out: Vec<u8>,
    isolation: IsolationKey,
    /// Bytes consumed over all calls to `feed`.
    consumed: usize,
}

impl fmt::Debug for SocksHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocksHandshake")
            .field("stage", &self.stage)
            .field("buffered", &self.buf.len())
            .field("pending_output", &self.out.len())
            .field("consumed", &self.consumed)
            .finish_non_exhaustive()
    }
}

impl Default for SocksHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl SocksHandshake {
    /// A handshake waiting for the client's greeting.
    pub fn new() -> Self {
        Self {
            stage: Stage::Greeting,
            buf: Vec::with_capacity(MAX_BUFFERED),
            out: Vec::new(),
            isolation: IsolationKey::no_auth(),
            consumed: 0,
        }
    }

    /// Bytes consumed over all calls to [`SocksHandshake::feed`], including those of a
    /// message that failed.
    pub fn total_consumed(&self) -> usize {
        self.consumed
    }

    /// Where the handshake is.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Reply bytes queued for the client (method choice, auth status, error reply or
    /// [`HTTP_RESPONSE`]); empties the queue. Write them all, even after an error.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether reply bytes are queued.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Consumes bytes the client sent; any number at a time, including one.
    ///
    /// Returns the request once the handshake completes; bytes after it are not consumed.
    /// On error the handshake is [`Stage::Failed`]: write any queued output and close.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, SocksError> {
        if matches!(self.stage, Stage::Done | Stage::Failed) {
            return Err(SocksError::Finished { stage: self.stage });
        }
        let mut consumed = 0;
        loop {
            let frame = match self.frame() {
                Ok(f) => f,
                Err(e) => return Err(self.fail(e)),
            };
            match frame {
                Frame::Need(n) => {
                    let rest = &input[consumed..];
                    if rest.is_empty() {
                        return Ok(Progress {
                            consumed,
                            request: None,
                        });
                    }
                    let take = (n - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    consumed += take;
                    self.consumed += take;
                }
                Frame::Complete => {
                    let done = match self.process() {
                        Ok(d) => d,
                        Err(e) => return Err(self.fail(e)),
                    };
                    self.buf.clear();
                    if let Some(request) = done {
                        return Ok(Progress {
                            consumed,
                            request: Some(request),
                        });
                    }
                }
            }
        }
    }

    /// The client closed its side. `Ok` if the handshake had already finished or failed,
    /// else [`SocksError::Closed`] (and the handshake is failed).
    pub fn eof(&mut self) -> Result<(), SocksError> {
        match self.stage {
            Stage::Done | Stage::Failed => Ok(()),
            stage => {
                let e = SocksError::Closed {
                    stage,
                    buffered: self.buf.len(),
                };
                self.stage = Stage::Failed;
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: SocksError) -> SocksError {
        match &e {
            SocksError::Http => self.out.extend_from_slice(HTTP_RESPONSE),
            SocksError::NoAcceptableMethod { .. } => self
                .out
                .extend_from_slice(&[SOCKS_VERSION, METHOD_NONE_ACCEPTABLE]),
            SocksError::AuthVersion { .. } => self.out.extend_from_slice(&[AUTH_VERSION, 0x01]),
            other => {
                if let Some(code) = other.reply_code() {
                    self.out
                        .extend_from_slice(&reply(code.into(), UNSPECIFIED_BOUND));
                }
            }
        }
        self.stage = Stage::Failed;
        self.buf.clear();
        e
    }

    /// Frames the buffered bytes of the current message; rejects what can be rejected early.
    fn frame(&self) -> Result<Frame, SocksError> {
        let b = &self.buf;
        let complete_at = |total: usize| {
            if b.len() < total {
                Frame::Need(total)
            } else {
                Frame::Complete
            }
        };
        match self.stage {
            Stage::Greeting => {
                match b.first() {
                    None => return Ok(Frame::Need(1)),
                    Some(&SOCKS_VERSION) => {}
                    Some(4) => return Err(SocksError::Socks4),
                    Some(c) if c.is_ascii_uppercase() => return Err(SocksError::Http),
                    Some(&got) => {
                        return Err(SocksError::WrongVersion {
                            stage: Stage::Greeting,
                            got,
                        })
                    }
                }
                match b.get(1) {
                    None => Ok(Frame::Need(2)),
                    Some(&n) => Ok(complete_at(2 + usize::from(n))),
                }
            }
            Stage::Auth => {
                match b.first() {
                    None => return Ok(Frame::Need(1)),
                    Some(&AUTH_VERSION) => {}
                    Some(&got) => return Err(SocksError::AuthVersion { got }),
                }
                let Some(&ulen) = b.get(1) else {
                    return Ok(Frame::Need(2));
                };
                let plen_at = 2 + usize::from(ulen);
                match b.get(plen_at) {
                    None => Ok(Frame::Need(plen_at + 1)),
                    Some(&plen) => Ok(complete_at(plen_at + 1 + usize::from(plen))),
                }
            }
            Stage::Request => {
                match b.first() {
                    None => return Ok(Frame::Need(1)),
                    Some(&SOCKS_VERSION) => {}
                    Some(&got) => {
                        return Err(SocksError::WrongVersion {
                            stage: Stage::Request,
                            got,
                        })
                    }
                }
                let (Some(&cmd), Some(&atyp)) = (b.get(1), b.get(3)) else {
                    return Ok(Frame::Need(4));
                };
                match atyp {
                    ATYP_IPV4 => Ok(complete_at(4 + 4 + 2)),
                    ATYP_IPV6 => Ok(complete_at(4 + 16 + 2)),
                    ATYP_DOMAIN => match b.get(4) {
                        None => Ok(Frame::Need(5)),
                        Some(&len) => Ok(complete_at(5 + usize::from(len) + 2)),
                    },
                    // The rest of the request cannot be framed: reply now. A bad command is
                    // the earlier field, so it takes precedence.
                    _ if cmd != CMD_CONNECT => Err(SocksError::UnsupportedCommand { cmd }),
                    _ => Err(SocksError::UnsupportedAddressType { atyp }),
                }
            }
            Stage::Done | Stage::Failed => Err(SocksError::Finished { stage: self.stage }),
        }
    }

    /// Acts on one complete message in `buf`.
    fn process(&mut self) -> Result<Option<SocksRequest>, SocksError> {
        match self.stage {
            Stage::Greeting => {
                let methods = self.buf.get(2..).unwrap_or_default();
                if methods.contains(&METHOD_USER_PASS) {
                    self.out
                        .extend_from_slice(&[SOCKS_VERSION, METHOD_USER_PASS]);
                    self.stage = Stage::Auth;
                } else if methods.contains(&METHOD_NO_AUTH) {
                    self.out.extend_from_slice(&[SOCKS_VERSION, METHOD_NO_AUTH]);
                    self.isolation = IsolationKey::no_auth();
                    self.stage = Stage::Request;
                } else {
                    return Err(SocksError::NoAcceptableMethod {
                        offered: self.buf.get(1).copied().unwrap_or(0),
                    });
                }
                Ok(None)
            }
            Stage::Auth => {
                let b = &self.buf;
                let ulen = usize::from(b.get(1).copied().unwrap_or(0));
                let uname = b.get(2..2 + ulen).unwrap_or_default();
                let passwd = b.get(3 + ulen..).unwrap_or_default();
                self.isolation = IsolationKey::credentials(uname, passwd);
                self.out.extend_from_slice(&[AUTH_VERSION, 0x00]);
                self.stage = Stage::Request;
                Ok(None)
            }
            Stage::Request => {
                let target = parse_request(&self.buf)?;
                self.stage = Stage::Done;
                Ok(Some(SocksRequest {
                    target,
                    isolation: std::mem::take(&mut self.isolation),
                }))
            }
            Stage::Done | Stage::Failed => Err(SocksError::Finished { stage: self.stage }),
        }
    }
}

/// Parses a complete, framed request (`b` holds exactly one request with a known ATYP).
fn parse_request(b: &[u8]) -> Result<Target, SocksError> {
    let cmd = b.get(1).copied().unwrap_or(0);
    if cmd != CMD_CONNECT {
        return Err(SocksError::UnsupportedCommand { cmd });
    }
    let atyp = b.get(3).copied().unwrap_or(0);
    let addr = b.get(4..b.len().saturating_sub(2)).unwrap_or_default();
    let host = match atyp {
        ATYP_IPV4 => {
            let o: [u8; 4] = addr
                .try_into()
                .map_err(|_| SocksError::UnsupportedAddressType { atyp })?;
            Host::V4(Ipv4Addr::from(o))
        }
        ATYP_IPV6 => {
            let o: [u8; 16] = addr
                .try_into()
                .map_err(|_| SocksError::UnsupportedAddressType { atyp })?;
            Host::V6(Ipv6Addr::from(o))
        }
        ATYP_DOMAIN => host_from_name(addr.get(1..).unwrap_or_default())?,
        _ => return Err(SocksError::UnsupportedAddressType { atyp }),
    };
    let port_bytes: [u8; 2] = b
        .get(b.len().saturating_sub(2)..)
        .and_then(|p| p.try_into().ok())
        .unwrap_or([0, 0]);
    let port = NonZeroU16::new(u16::from_be_bytes(port_bytes)).ok_or(SocksError::PortZero)?;
    Ok(Target { host, port })
}

/// A domain-name address: an IP literal becomes an address, anything else must be a valid
/// hostname (it is never resolved here).
fn host_from_name(name: &[u8]) -> Result<Host, SocksError> {
    if name.is_empty() {
        return Err(SocksError::EmptyHostname);
    }
    if let Ok(s) = std::str::from_utf8(name) {
        let literal = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(match ip {
                IpAddr::V4(a) => Host::V4(a),
                IpAddr::V6(a) => Host::V6(a),
            });
        }
    }
    Hostname::from_bytes(name)
        .map(Host::Name)
        .map_err(SocksError::BadHostname)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn http_response_content_length_is_right() {
        let text = std::str::from_utf8(HTTP_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
    }

    #[test]
    fn max_buffered_is_the_auth_message() {
        assert_eq!(MAX_BUFFERED, 513);
    }

    #[test]
    fn buffer_never_exceeds_bound_on_longest_messages() {
        let mut hs = SocksHandshake::new();
        let mut greeting = vec![5, 255];
        greeting.extend(std::iter::repeat_n(2u8, 255));
        for b in &greeting {
            hs.feed(std::slice::from_ref(b)).unwrap();
            assert!(hs.buf.len() <= MAX_BUFFERED);
        }
        assert_eq!(hs.take_output(), vec![5, 2]);
        let mut auth = vec![1, 255];
        auth.extend([b'u'; 255]);
        auth.push(255);
        auth.extend([b'p'; 255]);
        for b in &auth {
            hs.feed(std::slice::from_ref(b)).unwrap();
            assert!(hs.buf.len() <= MAX_BUFFERED);
        }
        assert_eq!(hs.take_output(), vec![1, 0]);
        assert_eq!(hs.stage(), Stage::Request);
    }

    #[test]
    fn reply_encodes_ipv4_and_ipv6() {
        assert_eq!(
            reply(0, UNSPECIFIED_BOUND),
            vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let v6: SocketAddr = "[::1]:258".parse().unwrap();
        let r = reply(ReplyCode::HostUnreachable.into(), v6);
        assert_eq!(r.len(), 22);
        assert_eq!(&r[..4], &[5, 4, 0, 4]);
        assert_eq!(r[19], 1);
        assert_eq!(&r[20..], &[1, 2]);
    }

    #[test]
    fn end_reason_table() {
        use EndReason::*;
        let table = [
            (Misc, 0x01),
            (ResolveFailed, 0x04),
            (ConnectRefused, 0x05),
            (ExitPolicy, 0x02),
            (Destroy, 0x01),
            (Done, 0x05),
            (Timeout, 0x06),
            (NoRoute, 0x04),
            (Hibernating, 0x01),
            (Internal, 0x01),
            (ResourceLimit, 0x01),
            (ConnReset, 0x05),
            (Protocol, 0x01),
            (PaymentRequired, 0x02),
        ];
        for (reason, code) in table {
            assert_eq!(reply_for_end(reason), code, "{reason:?}");
        }
        // Every END reason on the wire (1..=14) is covered by the table above.
        for v in 0..=255u8 {
            if let Ok(r) = EndReason::try_from(v) {
                assert!(table.iter().any(|(t, _)| *t == r), "{r:?} missing");
            }
        }
    }

    #[test]
    fn isolation_debug_hides_credentials() {
        let k = IsolationKey::credentials(b"alice-secret", b"nonce123");
        let d = format!("{k:?}");
        assert!(!d.contains("alice") && !d.contains("nonce"), "{d}");
        assert_ne!(k, IsolationKey::no_auth());
        assert_ne!(IsolationKey::credentials(b"", b""), IsolationKey::no_auth());
        assert_eq!(k.username(), Some(&b"alice-secret"[..]));
    }

    #[test]
    fn ip_literal_names_become_addresses() {
        assert_eq!(
            host_from_name(b"192.0.2.7").unwrap(),
            Host::V4(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(
            host_from_name(b"[2001:db8::1]").unwrap(),
            Host::V6("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            host_from_name(b"::1").unwrap(),
            Host::V6(Ipv6Addr::LOCALHOST)
        );
        assert!(matches!(
            host_from_name(b"example.com").unwrap(),
            Host::Name(_)
        ));
    }
}
