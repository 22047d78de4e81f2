//! The operator's tools against real relays on loopback and a mainline DHT testnet: the
//! self-test's failure modes, `status` over the control socket, the metrics endpoint, and the
//! binary under a systemd-style notify socket (READY=1, STOPPING=1 on SIGTERM).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mainline::Testnet;
use onionvpn_directory::dht::{unix_now, Publisher};
use onionvpn_relay::check::{
    check_dht, run_checks, CheckKind, CheckOptions, CheckReport, CheckTarget, Failure, Outcome,
};
use onionvpn_relay::keys::KeyStore;
use onionvpn_relay::{start_relay_with, RelayConfig, RelayHandle, RuntimeOptions};

const WAIT: Duration = Duration::from_secs(60);
const NETWORK: &str = "opsnet";

fn config(boot: &[String]) -> RelayConfig {
    let mut c = RelayConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..RelayConfig::default()
    };
    c.dht.bootstrap = boot.to_vec();
    c.network.name = NETWORK.to_owned();
    c
}

async fn relay(boot: &[String], data: &Path, publish: bool) -> RelayHandle {
    let opts = RuntimeOptions {
        worker_threads: Some(1),
        publish,
        ..RuntimeOptions::default()
    };
    start_relay_with(config(boot), data.to_path_buf(), opts)
        .await
        .unwrap()
}

fn opts() -> CheckOptions {
    CheckOptions {
        link_timeout: Duration::from_secs(5),
        dht_timeout: Duration::from_secs(20),
    }
}

fn target(r: &RelayHandle) -> CheckTarget {
    let network = config(&[]).network().unwrap();
    CheckTarget::from_descriptor(&r.descriptor(), network, false)
}

/// Runs the checks until `done` holds (the DHT converges within seconds on loopback).
async fn checks_until(
    t: &CheckTarget,
    dht: &mainline::async_dht::AsyncDht,
    done: impl Fn(&CheckReport) -> bool,
) -> CheckReport {
    let start = Instant::now();
    loop {
        let r = run_checks(t, dht, &opts(), unix_now()).await;
        if done(&r) || start.elapsed() > WAIT {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_each_failure_mode_apart() {
    let testnet = Testnet::builder(5).build().unwrap();
    let boot = testnet.bootstrap.clone();
    let dir = tempfile::tempdir().unwrap();
    let dht = check_dht(&boot).unwrap();

    // A published relay passes every check.
    let a = relay(&boot, &dir.path().join("a"), true).await;
    assert!(a.first_publication(WAIT).await);
    let ta = target(&a);
    let r = checks_until(&ta, &dht, CheckReport::all_ok).await;
    assert!(r.all_ok(), "{r}");
    assert!(r.to_string().contains("OK    reachable"), "{r}");
    assert!(matches!(
        r.outcome(CheckKind::Lightning),
        Some(Outcome::Skipped(_))
    ));

    // Address not reachable: nothing listens at the advertised address.
    let mut t = ta.clone();
    t.addresses = vec![closed_port()];
    let r = run_checks(&t, &dht, &opts(), unix_now()).await;
    assert_eq!(
        r.failure(CheckKind::Reachable),
        Some(Failure::Unreachable),
        "{r}"
    );
    // ... and the descriptor in the DHT does not carry that address.
    assert_eq!(
        r.failure(CheckKind::Descriptor),
        Some(Failure::DescriptorStale),
        "{r}"
    );

    // Something answers, but not with this relay's keys.
    let mut t = ta.clone();
    t.link_key = [7; 32];
    let r = run_checks(&t, &dht, &opts(), unix_now()).await;
    assert_eq!(
        r.failure(CheckKind::Reachable),
        Some(Failure::NotThisRelay),
        "{r}"
    );

    // Descriptor missing and not discoverable: a relay that never published.
    let b_dir = dir.path().join("b");
    let b = relay(&boot, &b_dir, false).await;
    let tb = target(&b);
    let r = run_checks(&tb, &dht, &opts(), unix_now()).await;
    assert!(
        matches!(r.outcome(CheckKind::Reachable), Some(Outcome::Ok(_))),
        "{r}"
    );
    assert_eq!(
        r.failure(CheckKind::Descriptor),
        Some(Failure::DescriptorMissing),
        "{r}"
    );
    assert_eq!(
        r.failure(CheckKind::Discoverable),
        Some(Failure::NotAnnounced),
        "{r}"
    );

    // Descriptor stored but never announced: found and valid, yet not discoverable.
    let keys = KeyStore::load_or_create(&b_dir, unix_now()).unwrap();
    let network = config(&[]).network().unwrap();
    let publisher = Publisher::new(dht.clone(), network, keys.identity().clone());
    let d = b.descriptor();
    publisher.put_descriptor(d.raw(), d.seq()).await.unwrap();
    let r = checks_until(&tb, &dht, |r| {
        matches!(r.outcome(CheckKind::Descriptor), Some(Outcome::Ok(_)))
    })
    .await;
    assert!(
        matches!(r.outcome(CheckKind::Descriptor), Some(Outcome::Ok(_))),
        "{r}"
    );
    assert_eq!(
        r.failure(CheckKind::Discoverable),
        Some(Failure::NotAnnounced),
        "{r}"
    );

    // Descriptor invalid: a newer item under the identity that is not a valid descriptor.
    publisher
        .put_descriptor(b"not a descriptor", d.seq() + 1)
        .await
        .unwrap();
    let r = checks_until(&tb, &dht, |r| {
        r.failure(CheckKind::Descriptor) == Some(Failure::DescriptorInvalid)
    })
    .await;
    assert_eq!(
        r.failure(CheckKind::Descriptor),
        Some(Failure::DescriptorInvalid),
        "{r}"
    );
    let text = r.to_string();
    assert!(
        text.contains("FAIL  descriptor") && text.contains("fix: restart the relay"),
        "{text}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A GET of the metrics endpoint: (status line, body).
async fn scrape(addr: SocketAddr) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_are_served_and_count_refusals() {
    let testnet = Testnet::builder(3).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&testnet.bootstrap);
    cfg.metrics.enabled = true;
    cfg.metrics.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let data = dir.path().join("r");
    let opts = RuntimeOptions {
        worker_threads: Some(1),
        publish: false,
        ..RuntimeOptions::default()
    };
    let r = start_relay_with(cfg, data.clone(), opts).await.unwrap();
    let addr = r.metrics_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let (status, body) = scrape(addr).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("onionvpn_relay_circuits_open 0"), "{body}");

    // A CREATE that fails its handshake is counted under its reason.
    let mut link = rawlink(&r).await;
    link.send_garbage_create().await;
    let deadline = Instant::now() + WAIT;
    while r.stats().refused_handshake == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = scrape(addr).await;
    assert!(
        body.contains("onionvpn_relay_circuit_refusals_total{reason=\"handshake\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("onionvpn_relay_links_accepted_total 1"),
        "{body}"
    );

    // `status` from the binary, over the control socket.
    let sock = r.control_path().unwrap().to_owned();
    assert_eq!(sock, data.join("control.sock"));
    let out = Command::new(env!("CARGO_BIN_EXE_onionvpn-relay"))
        .arg("--data-dir")
        .arg(&data)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {:?}", out.stderr);
    assert!(text.contains("0 open, 0 relayed, 1 refused"), "{text}");
    assert!(text.contains("msat/MiB"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    r.shutdown().await;
    assert!(!sock.exists(), "control socket removed at shutdown");
    let out = Command::new(env!("CARGO_BIN_EXE_onionvpn-relay"))
        .arg("--data-dir")
        .arg(&data)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing answers on"), "{err}");
    assert!(err.contains("running with this data directory"), "{err}");
}

/// A raw link to a relay (the client's side of the link handshake), to send odd cells.
struct RawLink {
    chan: onionvpn_chan::ChannelHandle,
}

async fn rawlink(r: &RelayHandle) -> RawLink {
    let d = r.descriptor();
    let chan = onionvpn_chan::connect(
        r.or_addr(),
        d.body().identity.0,
        d.body().link_key.0,
        &onionvpn_chan::ChannelConfig::default(),
    )
    .await
    .unwrap();
    RawLink { chan }
}

impl RawLink {
    async fn send_garbage_create(&mut self) {
        use onionvpn_proto::cell::{Cell, ChanCmd};
        let (id, _rx) = self.chan.open_circuit().await.unwrap();
        let body = [0x5a; onionvpn_proto::consts::CELL_BODY_LEN];
        self.chan
            .send(Cell::with_body(id, ChanCmd::Create, &body))
            .await
            .unwrap();
    }
}

fn write_config(path: &Path, boot: &[String], listen: SocketAddr, data: &Path) {
    let boot: Vec<String> = boot.iter().map(|b| format!("{b:?}")).collect();
    let text = format!(
        "data_dir = {data:?}\nlisten = \"{listen}\"\n[network]\nname = \"{NETWORK}\"\n\
         [dht]\nbootstrap = [{}]\n",
        boot.join(", ")
    );
    std::fs::File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn free_port() -> SocketAddr {
    closed_port()
}

#[test]
fn binary_notifies_systemd_checks_itself_and_stops_on_sigterm() {
    let testnet = Testnet::builder(5).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("relay.toml");
    let listen = free_port();
    write_config(&cfg, &testnet.bootstrap, listen, &data);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let bin = env!("CARGO_BIN_EXE_onionvpn-relay");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 from the relay");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");

    // Once ready, the listener is up and `check` from another process passes.
    let start = Instant::now();
    let out = loop {
        let out = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("check")
            .output()
            .unwrap();
        if out.status.success() || start.elapsed() > WAIT {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for l in ["OK    reachable", "OK    descriptor", "OK    discoverable"] {
        assert!(text.contains(l), "{text}");
    }
    assert!(text.contains("OK    exit policy   middle relay"), "{text}");

    // SIGTERM: STOPPING=1, then a clean exit 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let n = notify.recv(&mut buf).expect("no STOPPING=1 from the relay");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert!(!data.join("control.sock").exists());
}

#[test]
fn check_without_keys_or_config_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_onionvpn-relay");
    let out = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("onionvpn-relay init"));
    let cfg = dir.path().join("relay.toml");
    write_config(
        &cfg,
        &["127.0.0.1:1".into()],
        free_port(),
        &dir.path().join("d"),
    );
    let out = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no relay keys") && err.contains("init"),
        "{err}"
    );
}

#[test]
fn shipped_systemd_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/onionvpn-relay.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=onionvpn-relay",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "WatchdogSec=",
    ] {
        assert!(text.contains(needle), "unit lacks {needle}");
    }
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        // CI installs systemd (see .ci/run) and sets this to make the check mandatory.
        assert!(
            std::env::var_os("ONIONVPN_REQUIRE_SYSTEMD_ANALYZE").is_none(),
            "systemd-analyze is required but missing"
        );
        eprintln!("systemd-analyze not installed: unit not verified");
        return;
    }
    // Verify the unit as shipped, with ExecStart pointing at the binary built here.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("onionvpn-relay.service");
    std::fs::write(
        &copy,
        text.replace(
            "/usr/local/bin/onionvpn-relay",
            env!("CARGO_BIN_EXE_onionvpn-relay"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("onionvpn-relay.service:"), "warnings: {err}");
}
