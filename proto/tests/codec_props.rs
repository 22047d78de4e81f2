#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Round trips and malformed inputs for cells, relay messages and extensions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::num::{NonZeroU16, NonZeroU32};

use onionvpn_proto::cell::{
    Cell, CellError, ChanCmd, CircId, Create, Created, Destroy, DestroyReason, HandshakeType,
    CREATED_HDATA_MAX, CREATE_HDATA_MAX,
};
use onionvpn_proto::consts::{
    CELL_BODY_LEN, CELL_LEN, MAX_EXTENSION_LEN, RELAY_BODY_MAX, RELAY_PAYLOAD_LEN,
};
use onionvpn_proto::ext::{
    CongestionControl, ExtError, Extensions, PaymentOffer, PaymentTerms, PaymentToken,
    ProtocolVersion, ProtocolVersions, MAX_PROTOCOL_VERSIONS,
};
use onionvpn_proto::relaymsg::{
    decode_data, encode_data, Begin, BeginFlags, ClientBound, Connected, EndReason, Extend,
    Extended, Host, Hostname, HostnameError, RelayBound, RelayCmd, RelayMsg, RelayMsgError, Sendme,
    StreamId, Target, Xon,
};
use proptest::prelude::*;

const DESTROY_REASONS: [DestroyReason; 14] = [
    DestroyReason::None,
    DestroyReason::Protocol,
    DestroyReason::Internal,
    DestroyReason::Requested,
    DestroyReason::Hibernating,
    DestroyReason::ResourceLimit,
    DestroyReason::ConnectFailed,
    DestroyReason::OnionKeyUnknown,
    DestroyReason::Finished,
    DestroyReason::Timeout,
    DestroyReason::Destroyed,
    DestroyReason::PaymentRequired,
    DestroyReason::PriceTooLow,
    DestroyReason::TooManyHops,
];

const END_REASONS: [EndReason; 14] = [
    EndReason::Misc,
    EndReason::ResolveFailed,
    EndReason::ConnectRefused,
    EndReason::ExitPolicy,
    EndReason::Destroy,
    EndReason::Done,
    EndReason::Timeout,
    EndReason::NoRoute,
    EndReason::Hibernating,
    EndReason::Internal,
    EndReason::ResourceLimit,
    EndReason::ConnReset,
    EndReason::Protocol,
    EndReason::PaymentRequired,
];

const CIRCUIT_CMDS: [ChanCmd; 5] = [
    ChanCmd::Create,
    ChanCmd::Created,
    ChanCmd::Relay,
    ChanCmd::RelayEarly,
    ChanCmd::Destroy,
];

fn circ_id() -> impl Strategy<Value = CircId> {
    (1..=u32::MAX).prop_map(|v| CircId::new(v).unwrap())
}

fn stream_id() -> impl Strategy<Value = StreamId> {
    (1..=u16::MAX).prop_map(|v| StreamId::new(v).unwrap())
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn body() -> impl Strategy<Value = [u8; CELL_BODY_LEN]> {
    prop::collection::vec(any::<u8>(), CELL_BODY_LEN).prop_map(|v| v.try_into().unwrap())
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-zA-Z0-9.-]{1,255}".prop_map(|s| Host::Name(s.parse().unwrap())),
        any::<[u8; 4]>().prop_map(|a| Host::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| Host::V6(Ipv6Addr::from(a))),
    ]
}

fn ip() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        Just(None),
        any::<[u8; 4]>().prop_map(|a| Some(IpAddr::from(a))),
        any::<[u8; 16]>().prop_map(|a| Some(IpAddr::from(a))),
    ]
}

/// An owned relay message, from which a borrowed [`RelayMsg`] is built.
#[derive(Debug, Clone)]
enum Owned {
    Begin(StreamId, Begin),
    Data(StreamId, Vec<u8>),
    End(StreamId, EndReason),
    Connected(StreamId, Connected),
    Sendme([u8; 16]),
    Extend {
        ipv4: Option<SocketAddrV4>,
        ipv6: Option<SocketAddrV6>,
        identity: [u8; 32],
        link_key: [u8; 32],
        hdata: Vec<u8>,
    },
    Extended(Vec<u8>),
    Fin(StreamId),
    Drop(Vec<u8>),
    Xoff(StreamId),
    Xon(StreamId, Option<NonZeroU32>),
    Payment(Vec<u8>),
}

impl Owned {
    fn msg(&self) -> RelayMsg<'_> {
        match self {
            Owned::Begin(s, b) => RelayMsg::Begin(*s, b.clone()),
            Owned::Data(s, d) => RelayMsg::Data(*s, d),
            Owned::End(s, r) => RelayMsg::End(*s, *r),
            Owned::Connected(s, c) => RelayMsg::Connected(*s, *c),
            Owned::Sendme(tag) => RelayMsg::Sendme(Sendme { tag: *tag }),
            Owned::Extend {
                ipv4,
                ipv6,
                identity,
                link_key,
                hdata,
            } => RelayMsg::Extend(Extend {
                ipv4: *ipv4,
                ipv6: *ipv6,
                identity: *identity,
                link_key: *link_key,
                htype: HandshakeType::Ntor3V1,
                hdata,
            }),
            Owned::Extended(h) => RelayMsg::Extended(Extended { hdata: h }),
            Owned::Fin(s) => RelayMsg::Fin(*s),
            Owned::Drop(d) => RelayMsg::Drop(d),
            Owned::Xoff(s) => RelayMsg::Xoff(*s),
            Owned::Xon(s, r) => RelayMsg::Xon(*s, Xon { kib_per_sec: *r }),
            Owned::Payment(d) => RelayMsg::Payment(d),
        }
    }
}

fn extend() -> impl Strategy<Value = Owned> {
    let v4 = (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddrV4::new(a.into(), p));
    let v6 =
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddrV6::new(a.into(), p, 0, 0));
    let addrs = prop_oneof![
        v4.clone().prop_map(|a| (Some(a), None)),
        v6.clone().prop_map(|a| (None, Some(a))),
        (v4, v6).prop_map(|(a, b)| (Some(a), Some(b))),
    ];
    // Largest header: NSPEC 1 + 8 + 20 + 34 + 34 + HTYPE 2 + HLEN 2 = 101.
    (
        addrs,
        any::<[u8; 32]>().prop_filter("non-zero identity", |k| k != &[0; 32]),
        any::<[u8; 32]>(),
        bytes(RELAY_BODY_MAX - 101),
    )
        .prop_map(|((ipv4, ipv6), identity, link_key, hdata)| Owned::Extend {
            ipv4,
            ipv6,
            identity,
            link_key,
            hdata,
        })
}

fn owned_msg() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (stream_id(), host(), any::<u16>(), any::<u32>()).prop_map(|(s, host, port, f)| {
            Owned::Begin(
                s,
                Begin {
                    target: Target {
                        host,
                        port: NonZeroU16::new(port.max(1)).unwrap(),
                    },
                    flags: BeginFlags(f),
                },
            )
        }),
        (stream_id(), bytes(RELAY_BODY_MAX)).prop_map(|(s, d)| Owned::Data(s, d)),
        (stream_id(), prop::sample::select(&END_REASONS[..])).prop_map(|(s, r)| Owned::End(s, r)),
        (stream_id(), ip(), any::<u32>())
            .prop_map(|(s, addr, ttl)| Owned::Connected(s, Connected { addr, ttl })),
        any::<[u8; 16]>().prop_map(Owned::Sendme),
        extend(),
        bytes(RELAY_BODY_MAX - 2).prop_map(Owned::Extended),
        stream_id().prop_map(Owned::Fin),
        bytes(RELAY_BODY_MAX).prop_map(Owned::Drop),
        stream_id().prop_map(Owned::Xoff),
        (stream_id(), any::<u32>()).prop_map(|(s, r)| Owned::Xon(s, NonZeroU32::new(r))),
        bytes(RELAY_BODY_MAX).prop_map(Owned::Payment),
    ]
}

fn extensions() -> impl Strategy<Value = Extensions> {
    let offer = (any::<u64>(), any::<u64>()).prop_map(|(a, b)| PaymentOffer {
        msat_per_mib: a,
        msat_per_min: b,
    });
    let terms =
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<[u8; 16]>()).prop_map(|(a, b, g, t)| {
            PaymentTerms {
                msat_per_mib: a,
                msat_per_min: b,
                grace_kib: g,
                token: PaymentToken(t),
            }
        });
    let versions = prop::collection::vec(
        (any::<u8>(), any::<u8>()).prop_map(|(id, version)| ProtocolVersion { id, version }),
        0..=MAX_PROTOCOL_VERSIONS,
    )
    .prop_map(|v| ProtocolVersions::new(v).unwrap());
    (
        prop::option::of(offer),
        prop::option::of(terms),
        prop::option::of(any::<u8>().prop_map(|sendme_inc| CongestionControl { sendme_inc })),
        prop::option::of(versions),
    )
        .prop_map(|(o, t, c, v)| {
            let mut e = Extensions::new();
            e.set_payment_offer(o)
                .set_payment_terms(t)
                .set_congestion_control(c)
                .set_protocol_versions(v);
            e
        })
}

/// A relay area with a well-formed header (known command, length in range) and random
/// body, so that decoding reaches the body parsers.
fn plausible_area() -> impl Strategy<Value = [u8; RELAY_PAYLOAD_LEN]> {
    (
        prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]),
        prop_oneof![Just(0u16), any::<u16>()],
        0..=RELAY_BODY_MAX,
        prop::collection::vec(any::<u8>(), RELAY_BODY_MAX),
    )
        .prop_map(|(cmd, sid, len, body)| {
            let mut a = [0u8; RELAY_PAYLOAD_LEN];
            a[0] = cmd;
            a[1..3].copy_from_slice(&sid.to_be_bytes());
            a[3..5].copy_from_slice(&(len as u16).to_be_bytes());
            a[5..].copy_from_slice(&body);
            a
        })
}

fn area_of(msg: &RelayMsg<'_>) -> [u8; RELAY_PAYLOAD_LEN] {
    let mut area = [0xa5u8; RELAY_PAYLOAD_LEN];
    msg.encode_into(&mut area).unwrap();
    area
}

proptest! {
    #[test]
    fn cell_round_trip(id in circ_id(), cmd in prop::sample::select(&CIRCUIT_CMDS[..]), b in body()) {
        let cell = Cell::with_body(id, cmd, &b);
        let parsed = Cell::parse(cell.as_bytes()).unwrap();
        prop_assert_eq!(parsed.circ_id(), Some(id));
        prop_assert_eq!(parsed.cmd(), cmd);
        prop_assert_eq!(parsed.body(), &b);
        prop_assert_eq!(parsed, cell);
    }

    #[test]
    fn create_round_trip(id in circ_id(), hdata in bytes(CREATE_HDATA_MAX)) {
        let c = Create { htype: HandshakeType::Ntor3V1, hdata: &hdata };
        let cell = Cell::create(id, &c).unwrap();
        let parsed = Cell::parse(cell.as_bytes()).unwrap();
        prop_assert_eq!(parsed.as_create().unwrap(), c);
        // Everything after HDATA is zero.
        prop_assert!(cell.body()[4 + hdata.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn created_round_trip(id in circ_id(), hdata in bytes(CREATED_HDATA_MAX)) {
        let c = Created { hdata: &hdata };
        let cell = Cell::created(id, &c).unwrap();
        let parsed = Cell::parse(cell.as_bytes()).unwrap();
        prop_assert_eq!(parsed.as_created().unwrap(), c);
    }

    #[test]
    fn destroy_round_trip(id in circ_id(), reason in prop::sample::select(&DESTROY_REASONS[..])) {
        let cell = Cell::destroy(id, reason);
        prop_assert_eq!(Cell::parse(cell.as_bytes()).unwrap().as_destroy().unwrap(), Destroy { reason });
        prop_assert_eq!(cell.body()[0], reason as u8);
    }

    #[test]
    fn relay_msg_round_trip(owned in owned_msg()) {
        let msg = owned.msg();
        let area = area_of(&msg);
        let decoded = RelayMsg::decode(&area).unwrap();
        prop_assert_eq!(&decoded, &msg);
        let len = usize::from(u16::from_be_bytes([area[3], area[4]]));
        prop_assert!(area[5 + len..].iter().all(|&b| b == 0), "padding not zeroed");
        // Exactly one of the two contexts, or both, accepts each message as specified.
        let client = ClientBound::try_from(decoded.clone());
        let relay = RelayBound::try_from(decoded.clone());
        let cmd = msg.cmd();
        let client_ok = matches!(cmd, RelayCmd::Connected | RelayCmd::Data | RelayCmd::End
            | RelayCmd::Fin | RelayCmd::Sendme | RelayCmd::Extended | RelayCmd::Xoff
            | RelayCmd::Xon | RelayCmd::Drop);
        let relay_ok = matches!(cmd, RelayCmd::Begin | RelayCmd::Data | RelayCmd::End
            | RelayCmd::Fin | RelayCmd::Sendme | RelayCmd::Extend | RelayCmd::Xoff
            | RelayCmd::Xon | RelayCmd::Drop | RelayCmd::Payment);
        prop_assert_eq!(client.is_ok(), client_ok);
        prop_assert_eq!(relay.is_ok(), relay_ok);
        if let Ok(c) = client {
            prop_assert_eq!(RelayMsg::from(c), msg.clone());
        }
        if let Ok(r) = relay {
            prop_assert_eq!(RelayMsg::from(r), msg);
        }
    }

    #[test]
    fn data_fast_path_matches_enum(s in stream_id(), data in bytes(RELAY_BODY_MAX)) {
        let mut fast = [0xffu8; RELAY_PAYLOAD_LEN];
        encode_data(&mut fast, s, &data).unwrap();
        prop_assert_eq!(fast, area_of(&RelayMsg::Data(s, &data)));
        prop_assert_eq!(decode_data(&fast).unwrap(), Some((s, &data[..])));
    }

    #[test]
    fn extensions_round_trip(e in extensions()) {
        let wire = e.encode();
        prop_assert!(wire.len() <= MAX_EXTENSION_LEN);
        prop_assert_eq!(Extensions::parse(&wire).unwrap(), e);
    }

    #[test]
    fn random_cells_never_panic(raw in prop::collection::vec(any::<u8>(), CELL_LEN)) {
        let raw: [u8; CELL_LEN] = raw.try_into().unwrap();
        match Cell::parse(&raw) {
            Ok(cell) => {
                prop_assert_eq!(cell.as_bytes(), &raw);
                let _ = cell.as_create();
                let _ = cell.as_created();
                let _ = cell.as_destroy();
            }
            Err(e) => prop_assert!(matches!(e, CellError::UnknownCommand(_)
                | CellError::PaddingWithCircId(_) | CellError::ZeroCircId(_))),
        }
    }

    #[test]
    fn random_bodies_never_panic(b in body()) {
        if let Ok(c) = Create::parse(&b) {
            prop_assert!(c.hdata.len() <= CREATE_HDATA_MAX);
        }
        if let Ok(c) = Created::parse(&b) {
            prop_assert!(c.hdata.len() <= CREATED_HDATA_MAX);
        }
        prop_assert_eq!(Destroy::parse(&b).is_ok(), b[0] <= 13);
    }

    #[test]
    fn random_areas_never_panic(raw in prop::collection::vec(any::<u8>(), RELAY_PAYLOAD_LEN)) {
        let area: [u8; RELAY_PAYLOAD_LEN] = raw.try_into().unwrap();
        check_decode_canonical(&area)?;
    }

    #[test]
    fn plausible_areas_decode_canonically(area in plausible_area()) {
        check_decode_canonical(&area)?;
    }

    #[test]
    fn random_extensions_never_panic(raw in bytes(MAX_EXTENSION_LEN + 8)) {
        if let Ok(e) = Extensions::parse(&raw) {
            // Re-encoding keeps the known items (unknown ones are dropped).
            prop_assert_eq!(Extensions::parse(&e.encode()).unwrap(), e);
        }
    }
}

/// Decoding is Ok or a typed error; an Ok message re-encodes to one that decodes equal.
fn check_decode_canonical(area: &[u8; RELAY_PAYLOAD_LEN]) -> Result<(), TestCaseError> {
    if let Ok(msg) = RelayMsg::decode(area) {
        let again = area_of(&msg);
        prop_assert_eq!(RelayMsg::decode(&again).unwrap(), msg);
    }
    Ok(())
}

// ---- specific malformed inputs ----------------------------------------------------------

fn header(cmd: u8, sid: u16, len: u16) -> [u8; RELAY_PAYLOAD_LEN] {
    let mut a = [0u8; RELAY_PAYLOAD_LEN];
    a[0] = cmd;
    a[1..3].copy_from_slice(&sid.to_be_bytes());
    a[3..5].copy_from_slice(&len.to_be_bytes());
    a
}

fn with_body(cmd: u8, sid: u16, body: &[u8]) -> [u8; RELAY_PAYLOAD_LEN] {
    let mut a = header(cmd, sid, body.len() as u16);
    a[5..5 + body.len()].copy_from_slice(body);
    a
}

fn begin_name(name: &[u8], port: u16) -> Vec<u8> {
    let mut b = vec![1, name.len() as u8];
    b.extend_from_slice(name);
    b.extend_from_slice(&port.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b
}

#[test]
fn cell_bad_command() {
    let mut raw = [0u8; CELL_LEN];
    raw[3] = 1;
    raw[4] = 6;
    assert_eq!(Cell::parse(&raw), Err(CellError::UnknownCommand(6)));
    raw[4] = 0xff;
    assert_eq!(Cell::parse(&raw), Err(CellError::UnknownCommand(0xff)));
}

#[test]
fn cell_circ_id_rules() {
    let mut raw = [0u8; CELL_LEN];
    raw[4] = ChanCmd::Relay as u8;
    assert_eq!(
        Cell::parse(&raw),
        Err(CellError::ZeroCircId(ChanCmd::Relay))
    );
    raw[4] = ChanCmd::Padding as u8;
    raw[0] = 0x80;
    assert_eq!(
        Cell::parse(&raw),
        Err(CellError::PaddingWithCircId(0x8000_0000))
    );
    raw[0] = 0;
    let pad = Cell::parse(&raw).unwrap();
    assert_eq!(pad.circ_id(), None);
    assert_eq!(pad.cmd(), ChanCmd::Padding);
}

#[test]
fn create_hlen_beyond_body() {
    let mut body = [0u8; CELL_BODY_LEN];
    body[..4].copy_from_slice(&[0, 1, 0x01, 0xf8]); // HLEN 504 > 503
    assert_eq!(
        Create::parse(&body),
        Err(CellError::HandshakeTooLong {
            hlen: 504,
            max: 503
        })
    );
    body[2..4].copy_from_slice(&503u16.to_be_bytes());
    assert_eq!(Create::parse(&body).unwrap().hdata.len(), 503);
    let mut created = [0u8; CELL_BODY_LEN];
    created[..2].copy_from_slice(&506u16.to_be_bytes());
    assert_eq!(
        Created::parse(&created),
        Err(CellError::HandshakeTooLong {
            hlen: 506,
            max: 505
        })
    );
    let big = vec![0u8; 504];
    let c = Create {
        htype: HandshakeType::Ntor3V1,
        hdata: &big,
    };
    assert_eq!(
        c.encode_into(&mut [0u8; CELL_BODY_LEN]),
        Err(CellError::HandshakeTooLong {
            hlen: 504,
            max: 503
        })
    );
}

#[test]
fn create_unknown_handshake_type() {
    let mut body = [0u8; CELL_BODY_LEN];
    body[..2].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(
        Create::parse(&body),
        Err(CellError::UnknownHandshakeType(2))
    );
}

#[test]
fn destroy_unknown_reason_and_wrong_command() {
    let mut body = [0u8; CELL_BODY_LEN];
    body[0] = 14;
    assert_eq!(
        Destroy::parse(&body),
        Err(CellError::UnknownDestroyReason(14))
    );
    let cell = Cell::destroy(CircId::new(1).unwrap(), DestroyReason::Finished);
    assert_eq!(
        cell.as_create(),
        Err(CellError::WrongCommand {
            expected: ChanCmd::Create,
            got: ChanCmd::Destroy
        })
    );
}

#[test]
fn relay_bad_command() {
    assert_eq!(
        RelayMsg::decode(&header(9, 1, 0)),
        Err(RelayMsgError::UnknownCommand(9))
    );
    assert_eq!(
        RelayMsg::decode(&header(0, 0, 0)),
        Err(RelayMsgError::UnknownCommand(0))
    );
}

#[test]
fn relay_length_over_max() {
    assert_eq!(
        RelayMsg::decode(&header(2, 1, 487)),
        Err(RelayMsgError::LengthTooLarge(487))
    );
    assert!(RelayMsg::decode(&header(2, 1, 486)).is_ok());
    let big = vec![0u8; 487];
    assert_eq!(
        encode_data(
            &mut [0u8; RELAY_PAYLOAD_LEN],
            StreamId::new(1).unwrap(),
            &big
        ),
        Err(RelayMsgError::BodyTooLong {
            cmd: RelayCmd::Data,
            len: 487
        })
    );
}

#[test]
fn hostname_with_space() {
    let a = with_body(1, 1, &begin_name(b"exa mple.com", 443));
    assert_eq!(
        RelayMsg::decode(&a),
        Err(RelayMsgError::Hostname(HostnameError::BadByte {
            byte: b' ',
            offset: 3
        }))
    );
    assert!("under_score.com".parse::<Hostname>().is_err());
    assert!("a.b-c.D9.".parse::<Hostname>().is_ok());
}

#[test]
fn hostname_of_zero_bytes() {
    let a = with_body(1, 1, &begin_name(b"", 443));
    assert_eq!(
        RelayMsg::decode(&a),
        Err(RelayMsgError::Hostname(HostnameError::Empty))
    );
    assert_eq!(
        Hostname::from_bytes(&[b'a'; 256]),
        Err(HostnameError::TooLong(256))
    );
}

#[test]
fn begin_port_zero() {
    let a = with_body(1, 1, &begin_name(b"example.com", 0));
    assert_eq!(RelayMsg::decode(&a), Err(RelayMsgError::ZeroPort));
}

#[test]
fn begin_unknown_address_type_and_truncation() {
    let a = with_body(1, 1, &[5, 1, 2, 3, 4, 0, 80, 0, 0, 0, 0]);
    assert_eq!(
        RelayMsg::decode(&a),
        Err(RelayMsgError::UnknownAddrType {
            cmd: RelayCmd::Begin,
            atype: 5
        })
    );
    let a = with_body(1, 1, &[4, 1, 2, 3, 4, 0, 80, 0, 0]);
    assert_eq!(
        RelayMsg::decode(&a),
        Err(RelayMsgError::Truncated {
            cmd: RelayCmd::Begin,
            offset: 7,
            needed: 4,
            len: 9
        })
    );
}

#[test]
fn stream_id_zero_on_data() {
    assert_eq!(
        RelayMsg::decode(&with_body(2, 0, b"hi")),
        Err(RelayMsgError::StreamIdRequired(RelayCmd::Data))
    );
    assert_eq!(
        decode_data(&with_body(2, 0, b"hi")),
        Err(RelayMsgError::StreamIdRequired(RelayCmd::Data))
    );
}

#[test]
fn stream_id_nonzero_on_extend() {
    assert_eq!(
        RelayMsg::decode(&header(6, 7, 0)),
        Err(RelayMsgError::StreamIdForbidden {
            cmd: RelayCmd::Extend,
            stream_id: 7
        })
    );
}

fn extend_body(specs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![specs.len() as u8];
    for (t, body) in specs {
        b.push(*t);
        b.push(body.len() as u8);
        b.extend_from_slice(body);
    }
    b.extend_from_slice(&[0, 1, 0, 3, 9, 9, 9]);
    b
}

#[test]
fn extend_link_specifier_rules() {
    let v4 = (1u8, vec![10, 0, 0, 1, 0x1f, 0x90]);
    let id = (3u8, vec![7u8; 32]);
    let key = (4u8, vec![8u8; 32]);
    let unknown = (99u8, vec![1, 2, 3]);
    // Valid, with an unknown specifier skipped.
    let ok = with_body(
        6,
        0,
        &extend_body(&[unknown.clone(), v4.clone(), id.clone(), key.clone()]),
    );
    match RelayMsg::decode(&ok).unwrap() {
        RelayMsg::Extend(e) => {
            assert_eq!(e.ipv4, Some("10.0.0.1:8080".parse().unwrap()));
            assert_eq!(e.ipv6, None);
            assert_eq!(e.identity, [7; 32]);
            assert_eq!(e.hdata, &[9, 9, 9]);
        }
        other => panic!("{other:?}"),
    }
    let cases = [
        (vec![v4.clone(), key.clone()], "no identity"),
        (vec![v4.clone(), id.clone()], "no link key"),
        (vec![id.clone(), key.clone()], "no address"),
        (
            vec![v4.clone(), id.clone(), id.clone(), key.clone()],
            "duplicate identity",
        ),
        (
            vec![v4.clone(), (3, vec![0; 32]), key.clone()],
            "all-zero identity",
        ),
    ];
    for (specs, why) in cases {
        assert_eq!(
            RelayMsg::decode(&with_body(6, 0, &extend_body(&specs))),
            Err(RelayMsgError::LinkSpec(why)),
            "{why}"
        );
    }
    // A specifier shorter than its type needs.
    assert!(matches!(
        RelayMsg::decode(&with_body(
            6,
            0,
            &extend_body(&[(1, vec![1, 2, 3]), id, key])
        )),
        Err(RelayMsgError::Truncated {
            cmd: RelayCmd::Extend,
            ..
        })
    ));
}

#[test]
fn trailing_bytes_and_sendme_version() {
    assert_eq!(
        RelayMsg::decode(&with_body(3, 1, &[6, 0])),
        Err(RelayMsgError::TrailingBytes {
            cmd: RelayCmd::End,
            extra: 1
        })
    );
    assert_eq!(
        RelayMsg::decode(&with_body(3, 1, &[15])),
        Err(RelayMsgError::UnknownEndReason(15))
    );
    let mut sendme = vec![2u8];
    sendme.extend_from_slice(&[0; 16]);
    assert_eq!(
        RelayMsg::decode(&with_body(5, 0, &sendme)),
        Err(RelayMsgError::UnknownSendmeVersion(2))
    );
}

#[test]
fn contexts_reject_misdirected_messages() {
    let begin = with_body(1, 1, &begin_name(b"example.com", 443));
    assert_eq!(
        ClientBound::decode(&begin),
        Err(RelayMsgError::Unexpected {
            cmd: RelayCmd::Begin,
            context: "client"
        })
    );
    assert!(RelayBound::decode(&begin).is_ok());
    let connected = with_body(4, 1, &[0, 0, 0, 0, 60]);
    assert_eq!(
        RelayBound::decode(&connected),
        Err(RelayMsgError::Unexpected {
            cmd: RelayCmd::Connected,
            context: "relay"
        })
    );
    assert_eq!(
        ClientBound::decode(&connected),
        Ok(ClientBound::Connected(
            StreamId::new(1).unwrap(),
            Connected {
                addr: None,
                ttl: 60
            }
        ))
    );
    assert!(matches!(
        ClientBound::decode(&with_body(13, 0, b"pay")),
        Err(RelayMsgError::Unexpected {
            cmd: RelayCmd::Payment,
            ..
        })
    ));
}

#[test]
fn target_display_formats() {
    let t = Target {
        host: Host::V6(Ipv6Addr::LOCALHOST),
        port: NonZeroU16::new(80).unwrap(),
    };
    assert_eq!(t.to_string(), "[::1]:80");
    let t = Target {
        host: Host::Name("a.example".parse().unwrap()),
        port: NonZeroU16::new(443).unwrap(),
    };
    assert_eq!(t.to_string(), "a.example:443");
}

#[test]
fn extensions_over_limit() {
    let raw = [99u8, 0].repeat(129); // 258 bytes of unknown empty items
    assert_eq!(Extensions::parse(&raw), Err(ExtError::TooLong(258)));
    assert!(Extensions::parse(&raw[..256]).unwrap() == Extensions::new());
}

#[test]
fn extensions_malformed_items() {
    assert_eq!(
        Extensions::parse(&[1, 15]),
        Err(ExtError::Truncated { offset: 0 })
    );
    assert_eq!(
        Extensions::parse(&[3, 0, 9]),
        Err(ExtError::BadLength {
            ty: 3,
            len: 0,
            expected: 1
        })
    );
    assert_eq!(
        Extensions::parse(&[3, 1, 1, 7]),
        Err(ExtError::Truncated { offset: 3 })
    );
    assert_eq!(
        Extensions::parse(&[4, 3, 1, 1, 1]),
        Err(ExtError::OddVersionsLength(3))
    );
    let mut many = vec![4u8, 130];
    many.extend_from_slice(&[1; 130]);
    assert_eq!(Extensions::parse(&many), Err(ExtError::TooManyVersions(65)));
    let mut terms = vec![2u8, 36];
    terms.extend_from_slice(&[0; 36]);
    let twice = [terms.clone(), terms].concat();
    assert_eq!(Extensions::parse(&twice), Err(ExtError::Duplicate(2)));
    assert_eq!(
        ProtocolVersions::new(vec![ProtocolVersion { id: 1, version: 1 }; 65]),
        Err(ExtError::TooManyVersions(65))
    );
}
