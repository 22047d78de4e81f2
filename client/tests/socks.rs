#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! SOCKS5 handshake: every RFC 1928 / RFC 1929 path, byte-at-a-time feeding, the refusals
//! and their reply codes, early close, isolation keys, and properties over arbitrary input.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU16;

use onionvpn_client::socks::*;
use onionvpn_proto::relaymsg::{EndReason, Host, Hostname, Target};
use proptest::prelude::*;

/// The outcome of driving a handshake over some input.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    result: Result<Option<SocksRequest>, SocksError>,
    /// Everything the handshake queued for the client.
    output: Vec<u8>,
    /// Input bytes the handshake consumed.
    consumed: usize,
}

/// Feeds `input` in chunks of the given sizes (cycled; 0 is treated as 1), stopping at the
/// request or the first error.
fn drive_chunks(input: &[u8], chunks: &[usize]) -> Outcome {
    let mut hs = SocksHandshake::new();
    let mut output = Vec::new();
    let mut consumed = 0;
    let mut sizes = chunks.iter().cycle();
    let mut pos = 0;
    while pos < input.len() {
        let n = sizes.next().copied().unwrap_or(1).max(1);
        let end = (pos + n).min(input.len());
        let r = hs.feed(&input[pos..end]);
        output.extend(hs.take_output());
        match r {
            Ok(p) => {
                assert!(p.consumed <= end - pos);
                consumed += p.consumed;
                assert_eq!(hs.total_consumed(), consumed);
                if p.request.is_some() {
                    assert_eq!(hs.stage(), Stage::Done);
                    return Outcome {
                        result: Ok(p.request),
                        output,
                        consumed,
                    };
                }
                assert_eq!(p.consumed, end - pos, "unfinished handshake consumes all");
            }
            Err(e) => {
                assert_eq!(hs.stage(), Stage::Failed);
                assert!(hs.total_consumed() >= consumed);
                assert!(hs.total_consumed() <= end);
                return Outcome {
                    result: Err(e),
                    output,
                    consumed: hs.total_consumed(),
                };
            }
        }
        pos = end;
    }
    Outcome {
        result: Ok(None),
        output,
        consumed,
    }
}

fn drive(input: &[u8]) -> Outcome {
    drive_chunks(input, &[usize::MAX])
}

fn drive_bytewise(input: &[u8]) -> Outcome {
    drive_chunks(input, &[1])
}

/// Drives whole and byte by byte, checks both agree, returns the outcome.
fn run(input: &[u8]) -> Outcome {
    let whole = drive(input);
    let bytewise = drive_bytewise(input);
    assert_eq!(whole, bytewise, "splitting changed the outcome");
    whole
}

// --- Client-side encoders (written from RFC 1928/1929, independent of the server). ---

fn greeting(methods: &[u8]) -> Vec<u8> {
    let mut v = vec![5, methods.len() as u8];
    v.extend_from_slice(methods);
    v
}

fn auth(user: &[u8], pass: &[u8]) -> Vec<u8> {
    let mut v = vec![1, user.len() as u8];
    v.extend_from_slice(user);
    v.push(pass.len() as u8);
    v.extend_from_slice(pass);
    v
}

fn request_v4(cmd: u8, a: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = vec![5, cmd, 0, 1];
    v.extend_from_slice(&a);
    v.extend_from_slice(&port.to_be_bytes());
    v
}

fn request_v6(cmd: u8, a: [u8; 16], port: u16) -> Vec<u8> {
    let mut v = vec![5, cmd, 0, 4];
    v.extend_from_slice(&a);
    v.extend_from_slice(&port.to_be_bytes());
    v
}

fn request_name(cmd: u8, name: &[u8], port: u16) -> Vec<u8> {
    let mut v = vec![5, cmd, 0, 3, name.len() as u8];
    v.extend_from_slice(name);
    v.extend_from_slice(&port.to_be_bytes());
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn error_reply(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

fn port(p: u16) -> NonZeroU16 {
    NonZeroU16::new(p).unwrap()
}

// --- RFC paths. ---

#[test]
fn no_auth_connect_ipv4() {
    let input = cat(&[&greeting(&[0]), &request_v4(1, [192, 0, 2, 1], 443)]);
    let o = run(&input);
    let req = o.result.unwrap().unwrap();
    assert_eq!(
        req.target,
        Target {
            host: Host::V4(Ipv4Addr::new(192, 0, 2, 1)),
            port: port(443)
        }
    );
    assert_eq!(req.isolation, IsolationKey::no_auth());
    assert!(!req.isolation.has_credentials());
    assert_eq!(
        o.output,
        vec![5, 0],
        "method reply only; the final reply is the shell's"
    );
    assert_eq!(o.consumed, input.len());
}

#[test]
fn username_password_connect_hostname() {
    let input = cat(&[
        &greeting(&[0, 2]),
        &auth(b"alice", b"tab-1"),
        &request_name(1, b"example.com", 80),
    ]);
    let o = run(&input);
    let req = o.result.unwrap().unwrap();
    // The hostname is kept as a name: nothing is resolved locally.
    assert_eq!(
        req.target,
        Target {
            host: Host::Name(Hostname::from_bytes(b"example.com").unwrap()),
            port: port(80)
        }
    );
    assert_eq!(req.isolation, IsolationKey::credentials(b"alice", b"tab-1"));
    assert_eq!(o.output, vec![5, 2, 1, 0]);
}

#[test]
fn connect_ipv6() {
    let addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
    let o = run(&cat(&[
        &greeting(&[0]),
        &request_v6(1, addr.octets(), 8080),
    ]));
    assert_eq!(
        o.result.unwrap().unwrap().target,
        Target {
            host: Host::V6(addr),
            port: port(8080)
        }
    );
}

#[test]
fn username_password_preferred_whatever_the_order() {
    for methods in [&[2u8, 0][..], &[0, 1, 2], &[2], &[0x80, 2, 0xFE]] {
        let o = run(&greeting(methods));
        assert_eq!(o.output, vec![5, 2], "{methods:?}");
        assert_eq!(o.result, Ok(None));
    }
    let o = run(&greeting(&[1, 0]));
    assert_eq!(o.output, vec![5, 0]);
}

#[test]
fn empty_credentials_are_accepted_and_distinct_from_no_auth() {
    let o = run(&cat(&[
        &greeting(&[2]),
        &auth(b"", b""),
        &request_v4(1, [10, 0, 0, 1], 1),
    ]));
    let req = o.result.unwrap().unwrap();
    assert_eq!(req.isolation, IsolationKey::credentials(b"", b""));
    assert_ne!(req.isolation, IsolationKey::no_auth());
}

#[test]
fn longest_fields_are_accepted() {
    let user = [0xAAu8; 255];
    let pass = [0u8; 255];
    let name = [b'a'; 255];
    let o = run(&cat(&[
        &greeting(&[2; 255]),
        &auth(&user, &pass),
        &request_name(1, &name, 65535),
    ]));
    let req = o.result.unwrap().unwrap();
    assert_eq!(req.isolation.username(), Some(&user[..]));
    assert_eq!(req.isolation.password(), Some(&pass[..]));
    assert_eq!(req.target.port.get(), 65535);
    match req.target.host {
        Host::Name(n) => assert_eq!(n.as_str().len(), 255),
        other => panic!("{other:?}"),
    }
}

#[test]
fn optimistic_data_is_left_unconsumed() {
    let hs_bytes = cat(&[&greeting(&[0]), &request_name(1, b"example.org", 80)]);
    let input = cat(&[&hs_bytes, b"GET / HTTP/1.1\r\n\r\n"]);
    let mut hs = SocksHandshake::new();
    let p = hs.feed(&input).unwrap();
    assert!(p.request.is_some());
    assert_eq!(p.consumed, hs_bytes.len());
    assert_eq!(&input[p.consumed..], b"GET / HTTP/1.1\r\n\r\n");
    // More input after the request is a caller error, not a new handshake.
    assert_eq!(
        hs.feed(b"x"),
        Err(SocksError::Finished { stage: Stage::Done })
    );
    assert_eq!(hs.eof(), Ok(()));
}

#[test]
fn ip_literal_sent_as_name_becomes_an_address() {
    let o = run(&cat(&[&greeting(&[0]), &request_name(1, b"127.0.0.1", 22)]));
    assert_eq!(
        o.result.unwrap().unwrap().target.host,
        Host::V4(Ipv4Addr::LOCALHOST)
    );
}

// --- Wrong versions and methods. ---

#[test]
fn wrong_version_is_typed_and_unanswered() {
    for v in [0u8, 1, 6, 0xFF] {
        let o = run(&[v, 1, 0]);
        assert_eq!(
            o.result,
            Err(SocksError::WrongVersion {
                stage: Stage::Greeting,
                got: v
            })
        );
        assert!(o.output.is_empty());
        assert_eq!(o.consumed, 1, "rejected on its first byte");
    }
}

#[test]
fn socks4_is_refused_clearly_without_reply() {
    // SOCKS4a CONNECT to example.com:80.
    let input = b"\x04\x01\x00\x50\x00\x00\x00\x01user\x00example.com\x00";
    let o = run(input);
    assert_eq!(o.result, Err(SocksError::Socks4));
    assert!(o.output.is_empty());
    assert!(SocksError::Socks4
        .to_string()
        .contains("SOCKS4 is not supported"));
}

#[test]
fn http_on_the_socks_port_gets_an_explanation() {
    for req in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"CONNECT example.com:443 HTTP/1.1\r\n",
    ] {
        let o = run(req);
        assert_eq!(o.result, Err(SocksError::Http));
        assert_eq!(o.output, HTTP_RESPONSE);
        assert!(std::str::from_utf8(&o.output)
            .unwrap()
            .starts_with("HTTP/1.0 501"));
    }
}

#[test]
fn no_acceptable_method_gets_ff() {
    for methods in [&[][..], &[1u8], &[1, 3, 0x80]] {
        let o = run(&greeting(methods));
        assert_eq!(
            o.result,
            Err(SocksError::NoAcceptableMethod {
                offered: methods.len() as u8
            })
        );
        assert_eq!(o.output, vec![5, 0xFF]);
    }
}

#[test]
fn wrong_auth_version_gets_failure_status() {
    let o = run(&cat(&[&greeting(&[2]), &[5, 1, b'a', 1, b'b']]));
    assert_eq!(o.result, Err(SocksError::AuthVersion { got: 5 }));
    assert_eq!(o.output, vec![5, 2, 1, 1]);
}

#[test]
fn wrong_request_version_is_typed() {
    let mut req = request_v4(1, [1, 2, 3, 4], 80);
    req[0] = 4;
    let o = run(&cat(&[&greeting(&[0]), &req]));
    assert_eq!(
        o.result,
        Err(SocksError::WrongVersion {
            stage: Stage::Request,
            got: 4
        })
    );
    assert_eq!(o.output, vec![5, 0]);
}

// --- Refused requests and their reply codes. ---

fn after_no_auth(req: &[u8]) -> Outcome {
    run(&cat(&[&greeting(&[0]), req]))
}

#[test]
fn bind_and_udp_associate_get_07() {
    for cmd in [CMD_BIND, CMD_UDP_ASSOCIATE] {
        for req in [
            request_v4(cmd, [0, 0, 0, 0], 0),
            request_v6(cmd, [0; 16], 5353),
            request_name(cmd, b"example.com", 53),
        ] {
            let o = after_no_auth(&req);
            assert_eq!(o.result, Err(SocksError::UnsupportedCommand { cmd }));
            assert_eq!(o.output, cat(&[&[5, 0], &error_reply(0x07)]));
            // The whole request was read before replying, so closing does not reset.
            assert_eq!(o.consumed, 3 + req.len());
        }
    }
}

#[test]
fn unknown_commands_get_07() {
    for cmd in [0u8, 4, 0xF0, 0xF1, 0xFF] {
        let o = after_no_auth(&request_v4(cmd, [1, 1, 1, 1], 80));
        assert_eq!(o.result, Err(SocksError::UnsupportedCommand { cmd }));
        assert_eq!(o.output[2..], error_reply(0x07));
        assert_eq!(
            o.result.unwrap_err().reply_code(),
            Some(ReplyCode::CommandNotSupported)
        );
    }
}

#[test]
fn unsupported_address_types_get_08() {
    for atyp in [0u8, 2, 5, 0xFF] {
        let req = [5, 1, 0, atyp, 1, 2, 3, 4, 0, 80];
        let o = after_no_auth(&req);
        assert_eq!(o.result, Err(SocksError::UnsupportedAddressType { atyp }));
        assert_eq!(o.output, cat(&[&[5, 0], &error_reply(0x08)]));
        // The header alone decides: nothing past ATYP is read.
        assert_eq!(o.consumed, 3 + 4);
    }
    // With an unsupported command too, the command (the earlier field) is reported.
    let o = after_no_auth(&[5, 2, 0, 9]);
    assert_eq!(o.result, Err(SocksError::UnsupportedCommand { cmd: 2 }));
    assert_eq!(o.output[2..], error_reply(0x07));
}

#[test]
fn empty_hostname_gets_01() {
    let o = after_no_auth(&request_name(1, b"", 80));
    assert_eq!(o.result, Err(SocksError::EmptyHostname));
    assert_eq!(o.output[2..], error_reply(0x01));
}

#[test]
fn invalid_hostnames_get_04() {
    for name in [
        &b"exa mple.com"[..],
        b"under_score.example",
        b"nul\0.example",
        b"caf\xc3\xa9.example",
        b"example.com:80",
        b"[::1",
        &[0xFF; 255],
    ] {
        let o = after_no_auth(&request_name(1, name, 80));
        assert!(
            matches!(o.result, Err(SocksError::BadHostname(_))),
            "{name:?}: {:?}",
            o.result
        );
        assert_eq!(o.output[2..], error_reply(0x04), "{name:?}");
    }
}

#[test]
fn port_zero_gets_02() {
    for req in [
        request_v4(1, [192, 0, 2, 1], 0),
        request_name(1, b"example.com", 0),
    ] {
        let o = after_no_auth(&req);
        assert_eq!(o.result, Err(SocksError::PortZero));
        assert_eq!(o.output[2..], error_reply(0x02));
    }
}

// --- Truncation and early close. ---

#[test]
fn early_close_in_every_stage_is_typed() {
    let full = cat(&[
        &greeting(&[2]),
        &auth(b"u", b"p"),
        &request_name(1, b"example.com", 80),
    ]);
    let greeting_len = 3;
    let auth_len = 5;
    for cut in 0..full.len() {
        let mut hs = SocksHandshake::new();
        let p = hs.feed(&full[..cut]).unwrap();
        assert!(p.request.is_none());
        assert_eq!(p.consumed, cut);
        let (stage, buffered) = if cut < greeting_len {
            (Stage::Greeting, cut)
        } else if cut < greeting_len + auth_len {
            (Stage::Auth, cut - greeting_len)
        } else {
            (Stage::Request, cut - greeting_len - auth_len)
        };
        assert_eq!(hs.eof(), Err(SocksError::Closed { stage, buffered }));
        assert_eq!(hs.stage(), Stage::Failed);
        assert_eq!(hs.eof(), Ok(()), "a second EOF is not a new error");
    }
    let mut hs = SocksHandshake::new();
    assert!(hs.feed(&full).unwrap().request.is_some());
    assert_eq!(hs.eof(), Ok(()));
}

#[test]
fn failed_handshake_takes_no_more_input() {
    let mut hs = SocksHandshake::new();
    assert_eq!(hs.feed(&[4]), Err(SocksError::Socks4));
    assert_eq!(
        hs.feed(&[5, 1, 0]),
        Err(SocksError::Finished {
            stage: Stage::Failed
        })
    );
    assert!(!hs.has_output());
}

#[test]
fn empty_feed_is_harmless() {
    let mut hs = SocksHandshake::new();
    let p = hs.feed(&[]).unwrap();
    assert_eq!(p.consumed, 0);
    assert!(p.request.is_none());
    assert_eq!(hs.stage(), Stage::Greeting);
}

// --- Isolation keys. ---

fn isolation_of(user: &[u8], pass: &[u8]) -> IsolationKey {
    run(&cat(&[
        &greeting(&[0, 2]),
        &auth(user, pass),
        &request_v4(1, [1, 2, 3, 4], 80),
    ]))
    .result
    .unwrap()
    .unwrap()
    .isolation
}

#[test]
fn isolation_keys_follow_credentials() {
    assert_ne!(isolation_of(b"alice", b"x"), isolation_of(b"bob", b"x"));
    assert_ne!(isolation_of(b"alice", b"1"), isolation_of(b"alice", b"2"));
    assert_eq!(isolation_of(b"alice", b"x"), isolation_of(b"alice", b"x"));
    // Field boundaries count: ("ab", "c") is not ("a", "bc").
    assert_ne!(isolation_of(b"ab", b"c"), isolation_of(b"a", b"bc"));
    let k = isolation_of(b"example.com", b"nonce-42");
    let shown = format!("{k:?}");
    assert!(
        !shown.contains("example") && !shown.contains("nonce"),
        "{shown}"
    );
}

// --- Replies. ---

#[test]
fn success_and_error_replies() {
    assert_eq!(
        reply(ReplyCode::Succeeded.into(), UNSPECIFIED_BOUND),
        vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        reply(reply_for_end(EndReason::ConnectRefused), UNSPECIFIED_BOUND),
        error_reply(0x05)
    );
    assert_eq!(reply_for_end(EndReason::ResolveFailed), 0x04);
    assert_eq!(reply_for_end(EndReason::ExitPolicy), 0x02);
    assert_eq!(reply_for_end(EndReason::Timeout), 0x06);
    assert_eq!(reply_for_end(EndReason::NoRoute), 0x04);
    assert_eq!(reply_for_end(EndReason::Internal), 0x01);
}

// --- Properties. ---

fn target_strategy() -> impl Strategy<Value = (Vec<u8>, Host, u16)> {
    let v4 = any::<[u8; 4]>().prop_map(|a| {
        let mut r = vec![1];
        r.extend_from_slice(&a);
        (r, Host::V4(Ipv4Addr::from(a)))
    });
    let v6 = any::<[u8; 16]>().prop_map(|a| {
        let mut r = vec![4];
        r.extend_from_slice(&a);
        (r, Host::V6(Ipv6Addr::from(a)))
    });
    let name = "[a-zA-Z0-9-]{1,30}(\\.[a-zA-Z0-9-]{1,30}){0,4}"
        .prop_filter("not an IP literal", |s| {
            s.parse::<std::net::IpAddr>().is_err()
        })
        .prop_map(|s| {
            let mut r = vec![3, s.len() as u8];
            r.extend_from_slice(s.as_bytes());
            (r, Host::Name(Hostname::from_bytes(s.as_bytes()).unwrap()))
        });
    (prop_oneof![v4, v6, name], 1u16..).prop_map(|((addr, host), p)| (addr, host, p))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes, split anywhere: an outcome (never a panic), the same whatever the split,
    /// bounded output, and consumption never beyond the input.
    #[test]
    fn any_input_any_split_never_panics(
        input in prop::collection::vec(any::<u8>(), 0..700),
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        let whole = drive(&input);
        let split = drive_chunks(&input, &chunks);
        prop_assert_eq!(&whole, &split);
        prop_assert!(whole.consumed <= input.len());
        prop_assert!(whole.output.len() <= HTTP_RESPONSE.len().max(2 + 2 + 22));
    }

    /// Inputs that look like SOCKS5 (a valid greeting, then anything) exercise the later
    /// stages; still never a panic, and the split does not matter.
    #[test]
    fn socks_shaped_input_never_panics(
        method in prop_oneof![Just(0u8), Just(2u8)],
        rest in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let input = cat(&[&greeting(&[method]), &rest]);
        prop_assert_eq!(drive(&input), drive_bytewise(&input));
    }

    /// Every valid CONNECT round-trips: target and credentials come out as sent, and the
    /// bytes after the request are left for the stream.
    #[test]
    fn valid_connect_round_trips(
        creds in proptest::option::of((
            prop::collection::vec(any::<u8>(), 0..=255),
            prop::collection::vec(any::<u8>(), 0..=255),
        )),
        (addr, host, p) in target_strategy(),
        early in prop::collection::vec(any::<u8>(), 0..32),
        chunks in prop::collection::vec(1usize..40, 1..6),
    ) {
        let mut input = match &creds {
            Some((u, pw)) => cat(&[&greeting(&[0, 2]), &auth(u, pw)]),
            None => greeting(&[0]),
        };
        let hs_start = input.len();
        input.extend_from_slice(&[5, 1, 0]);
        input.extend_from_slice(&addr);
        input.extend_from_slice(&p.to_be_bytes());
        let hs_len = input.len();
        prop_assert!(hs_len - hs_start <= 262);
        input.extend_from_slice(&early);

        let o = drive_chunks(&input, &chunks);
        let req = o.result.unwrap().unwrap();
        prop_assert_eq!(req.target, Target { host, port: NonZeroU16::new(p).unwrap() });
        let expected = match &creds {
            Some((u, pw)) => IsolationKey::credentials(u, pw),
            None => IsolationKey::no_auth(),
        };
        prop_assert_eq!(req.isolation, expected);
        prop_assert_eq!(o.consumed, hs_len);
        let method_reply: &[u8] = if creds.is_some() { &[5, 2, 1, 0] } else { &[5, 0] };
        prop_assert_eq!(&o.output[..], method_reply);
    }
}
