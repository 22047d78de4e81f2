//! TUN mode end to end, as root inside namespaces this test creates (tests/src/netns.rs;
//! skipped loudly without root or /dev/net/tun): relays, DHT testnet and HTTP server on the
//! namespace's loopback, the client's TUN `ovpn0` with every IPv4 route pointed at it.
//!
//! - `curl` resolves a hostname through the TUN's DNS (fake address), and fetches a page
//!   from the local HTTP server through the TUN and 3 hops; the exit resolves the name
//!   (only the exit's view of /etc/hosts maps it to 127.0.0.1).
//! - 64 MiB download and upload over the TUN with sha256 checks; small and large uploads
//!   half-close and still get their reply.
//! - DNS answers come from the client (fake range), and no route leads out of the
//!   namespace except the TUN: no DNS packet can leave except through a circuit.
//! - Kill switch: with every relay stopped, DNS is still answered locally, a connection
//!   gets no data and is closed, and still nothing but the TUN is routable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use onionvpn_client::tun::settings::TunLayer;
use onionvpn_client::tun::{Ipv4Net, TunIsolation};
use onionvpn_client::{start_client_with, ClientHandle};
use onionvpn_tests::http::{content_sha256, get, hex, upload};
use onionvpn_tests::netns::{run_inside, sh};
use onionvpn_tests::{client_options, LocalNet, LocalNetConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

const HOST: &str = "web.onionvpn.test";
const DNS: &str = "10.190.0.53:53";
const LIMIT: Duration = Duration::from_secs(120);

/// A DNS query for `name`, type A.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b
}

/// Asks the TUN's DNS for `name`; returns the one A record.
async fn resolve(name: &str) -> Ipv4Addr {
    let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    sock.send_to(&dns_query(0x4242, name), DNS).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("no DNS answer")
        .unwrap();
    assert_eq!(from.to_string(), DNS, "answered from the address asked");
    let a = &buf[..n];
    assert_eq!(&a[..2], &[0x42, 0x42]);
    assert_eq!(a[3] & 0x0f, 0, "NOERROR");
    assert_eq!(&a[6..8], &[0, 1], "one answer");
    Ipv4Addr::new(a[n - 4], a[n - 3], a[n - 2], a[n - 1])
}

/// Bind-mounts `text` over `target` (inside this test's private mount namespace).
fn overlay_file(dir: &Path, name: &str, text: &str, target: &str) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    sh("mount", &["--bind", p.to_str().unwrap(), target]);
}

/// Every route and interface of the namespace: only loopback and the TUN.
fn assert_no_way_out() {
    let links = sh("ip", &["-o", "link", "show"]);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    assert_eq!(names, vec!["lo", "ovpn0"], "interfaces: {links}");
    for dst in ["10.190.0.53", "1.1.1.1", "8.8.8.8", "192.168.1.1"] {
        let r = sh("ip", &["-4", "route", "get", dst]);
        assert!(r.contains("dev ovpn0"), "{dst} not routed to the TUN: {r}");
    }
    // No IPv6 route leaves either (IPv6 has only loopback here).
    let r6 = sh("ip", &["-6", "route", "show"]);
    assert!(
        r6.lines()
            .all(|l| l.contains("dev lo") || l.contains("dev ovpn0")),
        "{r6}"
    );
}

/// Files for name resolution: this process (where the exit runs) resolves [`HOST`] to
/// loopback through /etc/hosts; `hosts.plain` and `resolv.conf` in `dir` are what curl gets
/// (no such line; the TUN's DNS as nameserver).
fn setup_names(dir: &Path) {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    std::fs::write(dir.join("hosts.plain"), &hosts).unwrap();
    std::fs::write(
        dir.join("resolv.conf"),
        "nameserver 10.190.0.53\noptions attempts:2 timeout:3\n",
    )
    .unwrap();
    overlay_file(
        dir,
        "hosts.exit",
        &format!("{hosts}\n127.0.0.1 {HOST}\n"),
        "/etc/hosts",
    );
}

async fn start_tun_client(net: &LocalNet, isolation: TunIsolation) -> ClientHandle {
    let mut cfg = net.client_config("tunclient", 3, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    cfg.tun = TunLayer {
        enabled: Some(true),
        name: Some("ovpn0".into()),
        address: Some("10.190.0.1/24".parse().unwrap()),
        mtu: Some(1500),
        routes: Some(vec!["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]),
        fake_range: None,
        isolation: Some(isolation),
    }
    .resolve(&TunLayer::default());
    let client = start_client_with(cfg, client_options()).await.unwrap();
    client.wait_ready(Duration::from_secs(60)).await.unwrap();
    client
}

fn curl(dir: &Path, url: &str, out: &Path) -> std::process::Output {
    // curl gets its own mount namespace where /etc/hosts lacks the name and resolv.conf
    // names the TUN's DNS: it must resolve through the TUN.
    let script = format!(
        "mount --bind {d}/hosts.plain /etc/hosts && mount --bind {d}/resolv.conf /etc/resolv.conf \
         && exec curl -sS --max-time 60 -o {o} -w '%{{http_code}} %{{remote_ip}}' {url}",
        d = dir.display(),
        o = out.display(),
    );
    Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap()
}

#[test]
fn tun_end_to_end() {
    if !run_inside("tun_end_to_end", Duration::from_secs(900)) {
        return;
    }
    sh("ip", &["link", "set", "lo", "up"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup_names(dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut net = LocalNet::start(LocalNetConfig {
            client: None,
            ..LocalNetConfig::default()
        })
        .await
        .unwrap();
        let port = net.http_addr().unwrap().port();
        let client = start_tun_client(&net, TunIsolation::None).await;
        let tun = client.tun().expect("TUN mode on");
        assert_no_way_out();

        // curl by hostname through the TUN's DNS and 3 hops.
        let out = dir.join("page");
        let r = tokio::task::spawn_blocking({
            let dir = dir.to_owned();
            let out = out.clone();
            move || curl(&dir, &format!("http://{HOST}:{port}/bytes/100000"), &out)
        })
        .await
        .unwrap();
        let said = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(
            r.status.success(),
            "curl: {said} {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let (code, ip) = said.split_once(' ').unwrap();
        assert_eq!(code, "200");
        let ip: Ipv4Addr = ip.parse().unwrap();
        assert!(
            "10.192.0.0/10".parse::<Ipv4Net>().unwrap().contains(ip),
            "curl connected to {ip}, not a fake address"
        );
        let body = std::fs::read(&out).unwrap();
        assert_eq!(body.len(), 100_000);
        assert_eq!(hex(&sha2_of(&body)), hex(&content_sha256(100_000)));
        assert!(tun.stats().dns_answered.load(Ordering::Relaxed) >= 1);
        assert!(tun.stats().streams_opened.load(Ordering::Relaxed) >= 1);

        // The same name maps to the same fake address; the exit resolves it.
        let fake = resolve(HOST).await;
        assert_eq!(fake, ip);
        let other = resolve("other.onionvpn.test").await;
        assert_ne!(other, fake);

        // 64 MiB down and up over the TUN, sha256 checked; uploads half-close.
        let len = 64 * 1024 * 1024;
        let mut s = TcpStream::connect((fake, port)).await.unwrap();
        let d = tokio::time::timeout(LIMIT, get(&mut s, HOST, &format!("/bytes/{len}"), true))
            .await
            .expect("download hung")
            .unwrap();
        assert_eq!(d.len, len);
        assert_eq!(hex(&d.sha256), hex(&content_sha256(len)));
        for n in [1000, len] {
            let mut s = TcpStream::connect((fake, port)).await.unwrap();
            let (sha, got) = tokio::time::timeout(LIMIT, upload(&mut s, HOST, n))
                .await
                .unwrap_or_else(|_| panic!("upload of {n} bytes hung"))
                .unwrap();
            assert_eq!(got, n);
            assert_eq!(sha, hex(&content_sha256(n)));
        }

        // A fake address nobody asked for is refused, not routed anywhere.
        let stray = Ipv4Addr::new(10, 200, 1, 1);
        let refused_before = tun.stats().tcp_refused.load(Ordering::Relaxed);
        if let Ok(mut s) = TcpStream::connect((stray, port)).await {
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
                .await
                .expect("stray hung");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        assert_eq!(
            tun.stats().tcp_refused.load(Ordering::Relaxed),
            refused_before + 1
        );

        // Kill switch: every relay stopped.
        for i in 0..LocalNetConfig::default().relays {
            let id = net.identity(i).unwrap();
            net.kill_relay(&id);
        }
        // DNS is still answered inside the client (nothing to leak).
        assert_eq!(resolve(HOST).await, fake);
        let refused_before = tun.stats().tcp_refused.load(Ordering::Relaxed);
        let mut s = TcpStream::connect((fake, port)).await.unwrap();
        let res = tokio::time::timeout(
            Duration::from_secs(300),
            get(&mut s, HOST, "/bytes/1000", false),
        )
        .await
        .expect("connection neither served nor closed");
        assert!(res.is_err(), "served without relays: {res:?}");
        assert_eq!(
            tun.stats().tcp_refused.load(Ordering::Relaxed),
            refused_before + 1
        );
        assert_no_way_out();
        client.shutdown().await;
        net.shutdown().await;
    });
}

fn sha2_of(b: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(b).into()
}

/// TUN against SOCKS throughput over the same circuit, in the same run (docs/performance.md):
/// `cargo test -p onionvpn-tests --test tun_e2e -- --ignored --nocapture tun_vs_socks`.
/// Alternates 5 downloads of 256 MiB each way, after one warm-up each, and prints MiB/s.
#[test]
#[ignore = "benchmark; run by hand (root)"]
fn tun_vs_socks_throughput() {
    if !run_inside("tun_vs_socks_throughput", Duration::from_secs(1800)) {
        return;
    }
    sh("ip", &["link", "set", "lo", "up"]);
    let tmp = tempfile::tempdir().unwrap();
    setup_names(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = LocalNet::start(LocalNetConfig {
            client: None,
            ..LocalNetConfig::default()
        })
        .await
        .unwrap();
        let http = net.http_addr().unwrap();
        let client = start_tun_client(&net, TunIsolation::None).await;
        let len: u64 = 256 * 1024 * 1024;
        let path = format!("/bytes/{len}");
        let socks = client.socks_addr();
        let (mut t_socks, mut t_tun) = (Vec::new(), Vec::new());
        for round in 0..6 {
            let start = std::time::Instant::now();
            let mut s = onionvpn_tests::socksc::connect(socks, "127.0.0.1", http.port(), None)
                .await
                .unwrap();
            let d = get(&mut s, "b", &path, false).await.unwrap();
            assert_eq!(d.len, len);
            let socks_s = start.elapsed().as_secs_f64();
            let start = std::time::Instant::now();
            // The same isolation key as SOCKS without credentials, so the same circuit.
            let fake = resolve(HOST).await;
            let mut s = TcpStream::connect((fake, http.port())).await.unwrap();
            let d = get(&mut s, "b", &path, false).await.unwrap();
            assert_eq!(d.len, len);
            let tun_s = start.elapsed().as_secs_f64();
            if round > 0 {
                t_socks.push(socks_s);
                t_tun.push(tun_s);
            }
        }
        let circuits = client.circuit_manager().circuits();
        let used: Vec<_> = circuits.iter().filter(|c| c.streams_total > 0).collect();
        let mib = (len / (1024 * 1024)) as f64;
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (s, t) = (mib / med(&mut t_socks), mib / med(&mut t_tun));
        eprintln!(
            "TUN vs SOCKS, {mib} MiB x {} each, median: SOCKS {s:.1} MiB/s, TUN {t:.1} MiB/s, \
             TUN/SOCKS {:.2}; circuits carrying streams: {}",
            t_socks.len(),
            t / s,
            used.len()
        );
        assert_eq!(used.len(), 1, "both front ends on one circuit");
        client.shutdown().await;
        net.shutdown().await;
    });
}
