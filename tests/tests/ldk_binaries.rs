//! The `onionvpn-relay` binary with a `[lightning]` section, on a real (bcoin) regtest chain
//! and a real mainline DHT testnet, all on loopback:
//! - `wallet address` / `wallet balance` go through the running relay's control socket and
//!   reflect an on-chain funding;
//! - `check` reports the Lightning receive check as WARN without a channel, OK with one;
//! - a client node (in-process LdkRail) opens a channel to the relay and keysends payments
//!   carrying tokens; the relay is SIGKILLed right after they succeed, restarted, and its
//!   ledger then holds every payment the sender saw succeed, each exactly once (issue 5);
//! - SIGTERM stops the relay and its Lightning node cleanly, after which `wallet balance`
//!   runs the node standalone and `earnings` reads the ledger.
//!
//!
//! The `onionvpn-client` binary with a `[lightning]` table, running, with every wallet
//! command sent through its control socket (issue 5): `wallet address`, `balance`,
//! `open-channel` to a Lightning node standing in for a relay's, a second `open-channel` before
//! the first funding confirmed refused with a clear message, `pay` of the node's BOLT11
//! invoice (a payout), `invoice`, `close-channel`, and `status`; after SIGTERM the socket is
//! gone and `wallet` runs the node itself.
//!
//! The binaries are not visible to this crate's tests (`CARGO_BIN_EXE_*` is per package),
//! so it is taken from the target directory; `cargo test --workspace` builds it. Needs
//! `npm ci --ignore-scripts --prefix tools/regtest` (CI does it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use onionvpn_client::status::ClientStatus;
use onionvpn_pay::ldk::control;
use onionvpn_pay::ldk::wallet_cmd::{WalletAnswer, WalletCommand};
use onionvpn_pay::ldk::ChannelEvent;
use onionvpn_pay::ledger::Ledger;
use onionvpn_pay::{KeysendRequest, NodeId, PaymentRail};
use onionvpn_proto::ext::PaymentToken;
use onionvpn_relay::control::{query_status, query_wallet, socket_path};
use onionvpn_tests::regtest::{
    free_port, wait_event, Regtest, CHANNEL_DEPTH, COINBASE_MATURITY, NODE_DEADLINE, SEGWIT_HEIGHT,
};

/// Channel size, sat.
const CHANNEL_SAT: u64 = 500_000;
/// Payments made before the relay is killed, and their amount.
const PAYMENTS: usize = 6;
const PAYMENT_MSAT: u64 = 7_000;
/// Longest wait for the relay process to come up or go down.
const PROCESS_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

/// A binary next to this test's directory (target/<profile>/<name>).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build -p {name}` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

fn relay_bin() -> PathBuf {
    bin("onionvpn-relay")
}

/// A daemon binary (relay or client) run with `--config`, and its control socket.
struct Daemon {
    bin: PathBuf,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Arguments that run the daemon (`run` for the relay, none for the client).
    run: &'static [&'static str],
}

impl Daemon {
    /// Runs the binary with `args` (blocking, off the runtime's worker).
    fn cmd(&self, args: &[&str]) -> Output {
        tokio::task::block_in_place(|| {
            Command::new(&self.bin)
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn socket(&self) -> PathBuf {
        socket_path(&self.data)
    }

    fn spawn(&self) -> Child {
        tokio::task::block_in_place(|| self.spawn_blocking())
    }

    fn spawn_blocking(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(self.run)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Up when its control socket answers (the Lightning node starts before it).
        let start = Instant::now();
        while control::request(&self.socket(), "status", control::IO_TIMEOUT).is_err() {
            assert!(
                start.elapsed() < PROCESS_DEADLINE,
                "{} did not come up: {}",
                self.bin.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(POLL);
        }
        child
    }

    fn wallet(&self, cmd: &WalletCommand) -> WalletAnswer {
        tokio::task::block_in_place(|| query_wallet(&self.socket(), cmd).unwrap())
    }

    fn client_status(&self) -> ClientStatus {
        tokio::task::block_in_place(|| control::query_status(&self.socket()).unwrap())
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < PROCESS_DEADLINE, "relay did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn write_config(path: &Path, data: &Path, boot: &[String], chain: &Regtest, ln_listen: SocketAddr) {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
    let b = chain.bitcoind_config();
    let boot: Vec<String> = boot.iter().map(|b| format!("{b:?}")).collect();
    let text = format!(
        "data_dir = {data:?}\nlisten = \"{listen}\"\n\
         [prices]\nmsat_per_mib = 1000\nmsat_per_min = 10\n\
         [network]\nname = \"ldk-binaries\"\n\
         [dht]\nbootstrap = [{}]\n\
         [lightning]\nnetwork = \"regtest\"\nlisten = \"{ln_listen}\"\n\
         [lightning.bitcoind]\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword = \"{}\"\n",
        boot.join(", "),
        b.host,
        b.port,
        b.user,
        b.password
    );
    std::fs::write(path, text).unwrap();
}

fn hex_node(s: &str) -> NodeId {
    let mut out = [0u8; 33];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    NodeId(out)
}

/// Polls `f` (blocking) until it holds; bounded.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < NODE_DEADLINE,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Funds a running daemon's wallet with one coinbase output mined to the address `wallet
/// address` gives (through its control socket), makes it spendable, waits until `wallet
/// balance` shows it, and returns the node id.
async fn fund_with_cli(chain: &Regtest, d: &Daemon) -> String {
    let address = d.ok(&["wallet", "address"]).trim().to_owned();
    assert!(address.starts_with("bcrt1"), "{address}");
    chain.mine_to(1, &address).unwrap();
    let h = chain.height().unwrap();
    chain
        .mine((h + COINBASE_MATURITY).max(SEGWIT_HEIGHT).saturating_sub(h))
        .unwrap();
    let mut id = String::new();
    until("the balance to show the funding", || {
        match d.wallet(&WalletCommand::Balance) {
            WalletAnswer::Balance {
                onchain_spendable_sat,
                node_id,
                ..
            } => {
                id = node_id;
                onchain_spendable_sat > 0
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
    let text = d.ok(&["wallet", "balance"]);
    assert!(
        text.contains("sat spendable") && !text.contains(" 0 sat spendable"),
        "{text}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_binary_wallet_check_and_ledger_survive_sigkill() {
    let bin = relay_bin();
    let chain = Regtest::start().expect("regtest chain");
    let testnet = mainline::Testnet::builder(3).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let ln_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
    let relay = Daemon {
        bin,
        config: dir.path().join("relay.toml"),
        data: data.clone(),
        log: dir.path().join("relay.log"),
        run: &["run"],
    };
    write_config(&relay.config, &data, &testnet.bootstrap, &chain, ln_listen);
    let mut child = relay.spawn();
    let sock = socket_path(&data);
    until("the descriptor to be published", || {
        query_status(&sock).is_ok_and(|s| s.dht_publications > 0)
    })
    .await;

    // Funding the relay's wallet, with the address `wallet address` (forwarded) gave.
    let relay_id = hex_node(&fund_with_cli(&chain, &relay).await);

    // No channel yet: the Lightning check warns (and `check` passes: a warning is no failure).
    let text = relay.ok(&["check"]);
    assert!(
        text.contains("WARN  lightning     no channel yet"),
        "{text}"
    );

    // A client node opens a channel to the relay's advertised Lightning address.
    let client = chain
        .start_rail(&dir.path().join("client"))
        .await
        .expect("client rail");
    chain.fund(&client).await.expect("fund client");
    let mut events = client.channel_events();
    client
        .open_channel(relay_id, ln_listen, CHANNEL_SAT, None)
        .await
        .expect("open channel");
    wait_event(&mut events, "channel pending", |e| {
        matches!(e, ChannelEvent::Pending { .. })
    })
    .await
    .unwrap();
    chain.mine(CHANNEL_DEPTH).unwrap();
    until("the channel to be usable at the client", || {
        client
            .channels()
            .iter()
            .any(|c| c.counterparty == relay_id && c.usable)
    })
    .await;
    until("the channel to be usable at the relay", || {
        match relay.wallet(&WalletCommand::Channels) {
            WalletAnswer::Channels { channels } => channels.iter().any(|c| c.usable),
            other => panic!("{other:?}"),
        }
    })
    .await;
    let text = relay.ok(&["check"]);
    assert!(
        text.contains("OK    lightning     can receive up to"),
        "{text}"
    );

    // Payments carrying tokens; the relay is killed as soon as the last one succeeded.
    let mut sent = Vec::new();
    for i in 0..PAYMENTS {
        let token = PaymentToken([i as u8 + 1; 16]);
        let s = client
            .keysend(KeysendRequest {
                to: relay_id,
                amount_msat: PAYMENT_MSAT,
                token,
                max_fee_msat: 1_000,
            })
            .await
            .expect("keysend");
        sent.push(s.id);
    }
    signal(&child, "-KILL");
    assert!(!wait_exit(&mut child).success());

    // Restarted: it records what it had not (the node redelivers unacknowledged payments),
    // and nothing twice.
    let mut child = relay.spawn();
    until("the restarted relay's ledger to hold every payment", || {
        query_status(&sock)
            .ok()
            .and_then(|s| s.earnings)
            .is_some_and(|e| e.payments >= PAYMENTS as u64)
    })
    .await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child);
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&relay.log).unwrap_or_default()
    );
    assert!(!sock.exists(), "control socket removed on SIGTERM");

    let ledger = Ledger::open(&onionvpn_relay::payments::ledger_dir(&data)).unwrap();
    for id in &sent {
        assert!(ledger.contains(id).unwrap(), "payment {id:?} missing");
    }
    assert_eq!(
        ledger.entries().unwrap(),
        PAYMENTS as u64,
        "a payment counted twice"
    );
    assert_eq!(ledger.total_msat().unwrap(), PAYMENTS as u64 * PAYMENT_MSAT);
    for i in 0..PAYMENTS {
        assert_eq!(
            ledger.token_msat(&PaymentToken([i as u8 + 1; 16])).unwrap(),
            PAYMENT_MSAT
        );
    }
    drop(ledger);
    let text = relay.ok(&["earnings"]);
    assert!(
        text.contains(&format!("total: {} msat", PAYMENTS as u64 * PAYMENT_MSAT))
            && text.contains(&format!("payments: {PAYMENTS}")),
        "{text}"
    );

    // Stopped cleanly: the node's store is free, so `wallet` runs the node itself, and the
    // relay's side of the channel holds what it was paid.
    let text = relay.ok(&["wallet", "channels"]);
    assert!(text.contains(&format!("{CHANNEL_SAT} sat")), "{text}");
    let text = relay.ok(&["wallet", "invoice", "2500", "payout test"]);
    assert!(text.trim().starts_with("lnbcrt"), "{text}");
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_binary_wallet_and_status_over_its_control_socket() {
    let chain = Regtest::start().expect("regtest chain");
    let testnet = mainline::Testnet::builder(3).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The Lightning node the client opens a channel to, as a relay's node would be.
    let peer = chain
        .start_rail(&dir.path().join("peer"))
        .await
        .expect("peer rail");
    let peer_addr = peer.listening_address().unwrap();
    let peer_hex: String = peer
        .node_id()
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let client = Daemon {
        bin: bin("onionvpn-client"),
        config: dir.path().join("client.toml"),
        data: dir.path().join("client"),
        log: dir.path().join("client.log"),
        run: &[],
    };
    let b = chain.bitcoind_config();
    let boot: Vec<String> = testnet.bootstrap.iter().map(|b| format!("{b:?}")).collect();
    std::fs::write(
        &client.config,
        format!(
            "data_dir = {:?}\nsocks = \"127.0.0.1:0\"\nnetwork = \"ldk-binaries\"\n\
             bootstrap = [{}]\n\
             [lightning]\nnetwork = \"regtest\"\n\
             [lightning.bitcoind]\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword = \"{}\"\n",
            client.data,
            boot.join(", "),
            b.host,
            b.port,
            b.user,
            b.password
        ),
    )
    .unwrap();
    let mut child = client.spawn();
    let mode = std::fs::metadata(client.socket()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let s = client.client_status();
    assert_eq!(s.payments.as_ref().map(|p| p.spent_msat), Some(0));

    // Funding, with the address `wallet address` gave while the client runs.
    fund_with_cli(&chain, &client).await;

    // Open a channel; a second open before the funding confirmed is refused, with advice.
    let mut peer_events = peer.channel_events();
    let target = format!("{peer_hex}@{peer_addr}");
    let mempool = chain.mempool_len().unwrap();
    let text = client.ok(&["wallet", "open-channel", &target, &CHANNEL_SAT.to_string()]);
    assert!(text.contains("channel opening"), "{text}");
    let out = client.cmd(&["wallet", "open-channel", &target, "100000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second open accepted: {err}");
    assert!(err.contains("Wait for one confirmation"), "{err}");
    wait_event(&mut peer_events, "channel pending at the peer", |e| {
        matches!(e, ChannelEvent::Pending { .. })
    })
    .await
    .unwrap();
    // The peer reports the channel pending before the client (another process) has even
    // queued the funding transaction for broadcast: blocks mined now could miss it, and the
    // channel would never open.
    chain.wait_mempool_above(mempool).await.unwrap();
    chain.mine(CHANNEL_DEPTH).unwrap();
    let mut channel_id = String::new();
    until("the channel to be usable at the client", || {
        match client.wallet(&WalletCommand::Channels) {
            WalletAnswer::Channels { channels } => {
                // Only the first open went through.
                assert!(channels.len() <= 1, "{channels:?}");
                match channels.iter().find(|c| c.usable) {
                    Some(c) => {
                        channel_id = c.channel_id.clone();
                        true
                    }
                    None => false,
                }
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
    until("the channel to be usable at the peer", || {
        peer.channels().iter().any(|c| c.usable)
    })
    .await;

    // A payout: the peer's BOLT11 invoice, paid by the running client.
    let invoice = peer.create_invoice(12_000, "payout", 600).unwrap();
    let text = client.ok(&["wallet", "pay", &invoice]);
    assert!(text.starts_with("paid: payment"), "{text}");
    let got = tokio::time::timeout(NODE_DEADLINE, peer.next_received())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.amount_msat, 12_000);
    peer.ack_received(got.id).unwrap();
    // A top-up invoice (paid by whoever tops the client up).
    let text = client.ok(&["wallet", "invoice", "3000", "top up"]);
    assert!(text.trim().starts_with("lnbcrt"), "{text}");

    // Status: circuits and budget (wallet payments are not circuit spend).
    let text = client.ok(&["status"]);
    assert!(
        text.contains("circuits:") && text.contains("0 msat of a 1000000 msat budget"),
        "{text}"
    );

    // Cooperative close through the socket; the peer sees it.
    let text = client.ok(&["wallet", "close-channel", &channel_id]);
    assert!(text.contains("closing channel"), "{text}");
    wait_event(&mut peer_events, "channel closed at the peer", |e| {
        matches!(e, ChannelEvent::Closed { .. })
    })
    .await
    .unwrap();

    // Stopped: the socket is gone and `wallet` runs the node itself.
    signal(&child, "-TERM");
    let status = wait_exit(&mut child);
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&client.log).unwrap_or_default()
    );
    assert!(
        !client.socket().exists(),
        "control socket removed on SIGTERM"
    );
    let out = client.cmd(&["status"]);
    assert!(!out.status.success());
    let text = client.ok(&["wallet", "channels"]);
    assert!(
        text.contains("no channels") || text.contains("sat"),
        "{text}"
    );
    peer.stop().await.unwrap();
}
