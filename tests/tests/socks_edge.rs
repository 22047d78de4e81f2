//! SOCKS5 edge cases over a real socket: each gets the correct reply or a clean close.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use onionvpn_tests::{LocalNet, LocalNetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn net() -> &'static LocalNet {
    static NET: OnceLock<LocalNet> = OnceLock::new();
    NET.get_or_init(|| {
        rt().block_on(LocalNet::start(LocalNetConfig::default()))
            .unwrap()
    })
}

/// Sends `bytes` (optionally half-closing), then reads everything until the proxy closes.
async fn exchange(socks: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("proxy neither answered nor closed")
        .unwrap();
    out
}

fn request(cmd: u8, atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
    let mut v = vec![5, 1, 0, 5, cmd, 0, atyp];
    v.extend_from_slice(addr);
    v.extend_from_slice(&port.to_be_bytes());
    v
}

fn rep(out: &[u8]) -> u8 {
    // [05 00] method choice, then [05 REP 00 ATYP ...].
    assert!(out.len() >= 12, "{out:?}");
    assert_eq!(&out[..2], &[5, 0]);
    assert_eq!(out[2], 5);
    out[3]
}

#[test]
fn wrong_version_is_closed_without_reply() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        // SOCKS4 CONNECT: not spoken, closed silently.
        assert!(exchange(socks, &[4, 1, 0, 80, 127, 0, 0, 1, 0], false)
            .await
            .is_empty());
        // Version 6 greeting.
        assert!(exchange(socks, &[6, 1, 0], false).await.is_empty());
        // Right greeting, wrong version in the request.
        let out = exchange(socks, &[5, 1, 0, 4, 1, 0, 1, 127, 0, 0, 1, 0, 80], false).await;
        assert_eq!(out, vec![5, 0]);
    });
}

#[test]
fn unsupported_commands_get_07() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        for cmd in [2u8, 3, 0x7f] {
            let out = exchange(socks, &request(cmd, 1, &[127, 0, 0, 1], 80), false).await;
            assert_eq!(rep(&out), 0x07, "command {cmd}");
        }
    });
}

#[test]
fn unsupported_address_type_gets_08() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        let out = exchange(socks, &request(1, 5, &[1, 2, 3, 4], 80), false).await;
        assert_eq!(rep(&out), 0x08);
    });
}

#[test]
fn bad_hostnames() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        // The longest name SOCKS can carry (255 bytes) travels to the exit, which cannot
        // resolve it: host unreachable, decided at the exit, not locally.
        let mut name = vec![255u8];
        name.extend(std::iter::repeat_n(b'a', 255));
        let out = exchange(socks, &request(1, 3, &name, 80), false).await;
        assert_eq!(rep(&out), 0x04);
        // Empty name: general failure.
        let out = exchange(socks, &request(1, 3, &[0], 80), false).await;
        assert_eq!(rep(&out), 0x01);
        // A name with bytes no hostname has: host unreachable, without reaching the exit.
        let out = exchange(socks, &request(1, 3, b"\x05a b\x00c", 80), false).await;
        assert_eq!(rep(&out), 0x04);
        // Name length claims more than is sent, then the client closes: clean close.
        let mut v = vec![5, 1, 0, 5, 1, 0, 3, 200];
        v.extend_from_slice(b"short");
        assert_eq!(exchange(socks, &v, true).await, vec![5, 0]);
    });
}

#[test]
fn early_close_is_clean() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        assert!(exchange(socks, &[], true).await.is_empty());
        assert!(exchange(socks, &[5], true).await.is_empty());
        assert!(exchange(socks, &[5, 2, 0], true).await.is_empty());
        assert_eq!(exchange(socks, &[5, 1, 0], true).await, vec![5, 0]);
        assert_eq!(
            exchange(socks, &[5, 1, 0, 5, 1, 0, 1, 127], true).await,
            vec![5, 0]
        );
    });
}

#[test]
fn http_on_the_socks_port_is_explained() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        let out = exchange(socks, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
        assert!(
            out.starts_with(b"HTTP/1.0 501"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    });
}

#[test]
fn refused_connection_gets_05_and_success_gets_00() {
    let net = net();
    rt().block_on(async {
        let socks = net.socks_addr().unwrap();
        // A loopback port nobody listens on: the exit's connect is refused.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let out = exchange(socks, &request(1, 1, &[127, 0, 0, 1], port), true).await;
        assert_eq!(rep(&out), 0x05);
        let http = net.http_addr().unwrap();
        let mut s = TcpStream::connect(socks).await.unwrap();
        s.write_all(&request(1, 1, &[127, 0, 0, 1], http.port()))
            .await
            .unwrap();
        let mut r = [0u8; 12];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(&r[..4], &[5, 0, 5, 0]);
    });
}
