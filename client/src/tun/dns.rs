//! Sans-IO DNS for TUN mode: parses a query datagram and builds the answer.
//!
//! Only what a stub resolver sends is understood: a standard query (opcode 0) with exactly
//! one question of class IN. An `A` question for a valid hostname gets one `A` record from
//! the fake range ([`crate::tun::fakeip`]); `AAAA` and other types get an empty NOERROR
//! answer ("no data", so resolvers fall back to `A` rather than fail); names that cannot be
//! carried in a BEGIN cell get NXDOMAIN. Nothing is ever resolved here: the exit resolves
//! the name when a connection to the fake address opens a stream.
//!
//! Bad input never panics: [`parse_query`] returns a typed error, and [`error_reply`]
//! builds a FORMERR/NOTIMP answer when the header at least is readable.

use std::net::Ipv4Addr;

use onionvpn_proto::relaymsg::Hostname;

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;
/// Largest DNS message handled over UDP (a query is much smaller; EDNS allows 4096).
pub const MAX_MESSAGE: usize = 4096;
/// Record type `A`.
pub const TYPE_A: u16 = 1;
/// Record type `AAAA`.
pub const TYPE_AAAA: u16 = 28;
/// Class `IN`.
pub const CLASS_IN: u16 = 1;

/// Response codes used in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// No error.
    NoError = 0,
    /// The query could not be understood.
    FormErr = 1,
    /// The name does not exist (used for names a BEGIN cannot carry).
    NxDomain = 3,
    /// The opcode is not supported.
    NotImp = 4,
    /// Refused (a class other than IN).
    Refused = 5,
}

/// Why a datagram is not a query this resolver answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than the 12-byte header.
    #[error("datagram of {0} bytes is shorter than a DNS header")]
    Short(usize),
    /// Longer than [`MAX_MESSAGE`].
    #[error("datagram of {0} bytes is longer than {MAX_MESSAGE}")]
    TooLong(usize),
    /// The QR bit is set: a response, not a query.
    #[error("a response, not a query")]
    NotAQuery,
    /// An opcode other than QUERY.
    #[error("opcode {0} is not supported")]
    Opcode(u8),
    /// Not exactly one question.
    #[error("{0} questions; exactly one is supported")]
    QuestionCount(u16),
    /// The question name is malformed (label too long, compression pointer, truncated).
    #[error("malformed question name at offset {0}")]
    BadName(usize),
    /// The question ends before its type and class.
    #[error("question truncated")]
    Truncated,
}

impl DnsError {
    /// The response code an answer to this error carries, if it deserves one.
    pub fn rcode(&self) -> Option<Rcode> {
        match self {
            // Not worth answering: no usable header, or not a query at all.
            DnsError::Short(_) | DnsError::TooLong(_) | DnsError::NotAQuery => None,
            DnsError::Opcode(_) => Some(Rcode::NotImp),
            DnsError::QuestionCount(_) | DnsError::BadName(_) | DnsError::Truncated => {
                Some(Rcode::FormErr)
            }
        }
    }
}

/// A parsed query: the header fields an answer echoes and its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// Recursion desired (echoed).
    pub rd: bool,
    /// Question name in lower case without the trailing dot, as bytes (may be empty: the
    /// root). **Sensitive**: a destination.
    pub name: Vec<u8>,
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The question exactly as sent (name, type, class), echoed in the answer.
    question: Vec<u8>,
}

impl Query {
    /// The question name as a hostname a BEGIN can carry, if it is one.
    pub fn hostname(&self) -> Option<Hostname> {
        Hostname::from_bytes(&self.name).ok()
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses a DNS query datagram.
pub fn parse_query(b: &[u8]) -> Result<Query, DnsError> {
    if b.len() < HEADER_LEN {
        return Err(DnsError::Short(b.len()));
    }
    if b.len() > MAX_MESSAGE {
        return Err(DnsError::TooLong(b.len()));
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotAQuery);
    }
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    let qdcount = u16::from_be_bytes([b[4], b[5]]);
    if qdcount != 1 {
        return Err(DnsError::QuestionCount(qdcount));
    }
    // The question name: labels, no compression (nothing precedes it to point to).
    let mut at = HEADER_LEN;
    let mut name = Vec::new();
    loop {
        let len = usize::from(*b.get(at).ok_or(DnsError::BadName(at))?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return Err(DnsError::BadName(at));
        }
        let label = b.get(at + 1..at + 1 + len).ok_or(DnsError::BadName(at))?;
        if !name.is_empty() {
            name.push(b'.');
        }
        name.extend(label.iter().map(u8::to_ascii_lowercase));
        // 255 bytes in wire form, i.e. 253 as dotted text.
        if name.len() > 253 {
            return Err(DnsError::BadName(at));
        }
        at += 1 + len;
    }
    let qtype = u16_at(b, at).ok_or(DnsError::Truncated)?;
    let qclass = u16_at(b, at + 2).ok_or(DnsError::Truncated)?;
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name,
        qtype,
        qclass,
        question: b[HEADER_LEN..at + 4].to_vec(),
    })
}

fn header(id: u16, rd: bool, rcode: Rcode, qd: u16, an: u16) -> Vec<u8> {
    // QR=1, opcode 0, AA=1 (we are the authority for fake names), RD echoed, RA=1.
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | rcode as u16;
    if rd {
        flags |= 0x0100;
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qd.to_be_bytes());
    out.extend_from_slice(&an.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// An answer with one `A` record `addr` (TTL `ttl` seconds) for `q`.
pub fn answer_a(q: &Query, addr: Ipv4Addr, ttl: u32) -> Vec<u8> {
    let mut out = header(q.id, q.rd, Rcode::NoError, 1, 1);
    out.extend_from_slice(&q.question);
    // Name: a pointer to the question name at offset 12.
    out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&addr.octets());
    out
}

/// An answer without records for `q`, with `rcode`.
pub fn answer_empty(q: &Query, rcode: Rcode) -> Vec<u8> {
    let mut out = header(q.id, q.rd, rcode, 1, 0);
    out.extend_from_slice(&q.question);
    out
}

/// A header-only error answer to a datagram that failed to parse, when it deserves one.
pub fn error_reply(b: &[u8], err: &DnsError) -> Option<Vec<u8>> {
    let rcode = err.rcode()?;
    let id = u16_at(b, 0)?;
    let rd = b.get(2).is_some_and(|f| f & 0x01 != 0);
    Some(header(id, rd, rcode, 0, 0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;

    /// A query as a stub resolver sends it (with an EDNS OPT record after the question).
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.push(0);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        // OPT: root name, type 41, payload size 1232, no options.
        b.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn parses_a_query_and_lowercases() {
        let q = parse_query(&query(0x1234, "WWW.Example.com.", TYPE_A)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        assert_eq!(q.name, b"www.example.com");
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.qclass, CLASS_IN);
        assert_eq!(q.hostname().unwrap().as_str(), "www.example.com");
    }

    #[test]
    fn a_answer_is_well_formed() {
        let raw = query(7, "web.test", TYPE_A);
        let q = parse_query(&raw).unwrap();
        let a = answer_a(&q, Ipv4Addr::new(10, 192, 0, 5), 60);
        assert_eq!(&a[..2], &7u16.to_be_bytes());
        assert_eq!(a[2] & 0x80, 0x80, "QR set");
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&a[4..8], &[0, 1, 0, 1], "one question, one answer");
        // The question is echoed byte for byte; the record ends with the address.
        let qlen = "web.test".len() + 2 + 4;
        assert_eq!(&a[12..12 + qlen], &raw[12..12 + qlen]);
        assert_eq!(&a[a.len() - 4..], &[10, 192, 0, 5]);
        assert_eq!(&a[a.len() - 10..a.len() - 6], &60u32.to_be_bytes());
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Short(5)));
        let mut r = query(1, "a.b", TYPE_A);
        r[2] |= 0x80;
        assert_eq!(parse_query(&r), Err(DnsError::NotAQuery));
        let mut r = query(1, "a.b", TYPE_A);
        r[2] |= 0x10; // opcode 2 (STATUS)
        assert_eq!(parse_query(&r), Err(DnsError::Opcode(2)));
        let e = parse_query(&r).unwrap_err();
        let reply = error_reply(&r, &e).unwrap();
        assert_eq!(reply[3] & 0x0f, Rcode::NotImp as u8);
        let mut r = query(1, "a.b", TYPE_A);
        r[5] = 2;
        assert_eq!(parse_query(&r), Err(DnsError::QuestionCount(2)));
        // A compression pointer in the question.
        let mut r = query(1, "a.b", TYPE_A);
        r[12] = 0xc0;
        assert!(matches!(parse_query(&r), Err(DnsError::BadName(12))));
        // Truncated inside the name and inside type/class.
        let r = query(1, "abc.def", TYPE_A);
        assert!(matches!(parse_query(&r[..15]), Err(DnsError::BadName(_))));
        assert_eq!(parse_query(&r[..22]), Err(DnsError::Truncated));
        // A name longer than 253 bytes.
        let long = vec!["a".repeat(63); 5].join(".");
        assert!(matches!(
            parse_query(&query(1, &long, TYPE_A)),
            Err(DnsError::BadName(_))
        ));
        assert!(error_reply(&[0; 5], &DnsError::Short(5)).is_none());
    }

    #[test]
    fn names_a_begin_cannot_carry_have_no_hostname() {
        let q = parse_query(&query(1, "under_score.test", TYPE_A)).unwrap();
        assert!(q.hostname().is_none());
        let root = parse_query(&query(1, "", TYPE_A)).unwrap();
        assert!(root.hostname().is_none());
    }
}
