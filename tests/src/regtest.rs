//! A real Bitcoin regtest chain for the Lightning tests, and helpers to run LDK rails on it.
//!
//! The chain is bcoin 1.0.2 (`tools/regtest`, installed by `npm ci --ignore-scripts --prefix
//! tools/regtest`), in memory, RPC on a free loopback port, no P2P. ldk-node talks to it
//! through its unmodified bitcoind-RPC chain source; the launcher adapts the few replies
//! whose shape differs from Bitcoin Core's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onionvpn_pay::ldk::ldk_node::bitcoin::bech32::{self, Hrp};
use onionvpn_pay::ldk::ldk_node::bitcoin::{Address, Network};
use onionvpn_pay::ldk::{
    node_runtime, BitcoindConfig, ChannelEvent, LdkConfig, LdkRail, ValidConfig,
};
use onionvpn_pay::{PayError, PaymentRail};
use serde_json::{json, Value};

/// SegWit activates on bcoin's regtest by BIP9 signalling at height 432; funding
/// transactions are refused before that. A few blocks of margin.
pub const SEGWIT_HEIGHT: u64 = 441;
/// Blocks a coinbase output needs before it can be spent.
pub const COINBASE_MATURITY: u64 = 100;
/// Confirmations LDK waits for before a channel is ready.
pub const CHANNEL_DEPTH: u64 = 6;

/// How long the chain may take to come up (Node.js start + bcoin open; slow under load).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Per-RPC socket timeout.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to see funds or a channel become usable.
pub const NODE_DEADLINE: Duration = Duration::from_secs(120);
/// Poll interval where ldk-node offers no event (wallet balance, channel usable).
const POLL: Duration = Duration::from_millis(100);
/// Largest HTTP reply we accept from the chain (blocks are small on regtest).
const MAX_REPLY: u64 = 16 << 20;

/// Errors of the regtest harness.
#[derive(Debug, thiserror::Error)]
pub enum RegtestError {
    /// bcoin is not installed.
    #[error(
        "bcoin regtest chain not installed ({0} missing): run `npm ci --ignore-scripts --prefix tools/regtest`"
    )]
    NotInstalled(PathBuf),
    /// An I/O error.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The chain did not come up.
    #[error("regtest chain did not start: {0}")]
    Start(String),
    /// An RPC call failed.
    #[error("rpc {method}: {detail}")]
    Rpc {
        /// The method.
        method: String,
        /// What went wrong.
        detail: String,
    },
    /// The payments layer failed.
    #[error("lightning: {0}")]
    Pay(#[from] PayError),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An address could not be converted.
    #[error("address {0}")]
    Address(String),
}

/// The repository's `tools/regtest` directory.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/regtest")
}

/// A free TCP port on loopback (bound then released; the caller binds it soon after).
pub fn free_port() -> Result<u16, RegtestError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| RegtestError::Io("binding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| RegtestError::Io("free port address", e))?
        .port())
}

/// A running regtest chain. Killed on drop; it also exits by itself when this process dies
/// (its stdin closes).
pub struct Regtest {
    child: Child,
    // Held so the chain's stdin stays open for as long as we live.
    _stdin: Option<ChildStdin>,
    port: u16,
    password: String,
    burn: String,
}

impl Drop for Regtest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static PASSWORD_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Regtest {
    /// Starts a chain on a free loopback port and waits for its ready line.
    pub fn start() -> Result<Regtest, RegtestError> {
        let dir = tools_dir();
        let bcoin = dir.join("node_modules/bcoin/package.json");
        if !bcoin.exists() {
            return Err(RegtestError::NotInstalled(bcoin));
        }
        let port = free_port()?;
        let password = format!(
            "onionvpn-{}-{}",
            std::process::id(),
            PASSWORD_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut child = Command::new("node")
            .arg(dir.join("bcoin-regtest.js"))
            .arg(port.to_string())
            .arg(&password)
            .env("NODE_BACKEND", "js")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| RegtestError::Io("starting node (Node.js)", e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        // Built before waiting, so an early failure still kills the child.
        let mut chain = Regtest {
            child,
            _stdin: stdin,
            port,
            password,
            burn: burn_address(),
        };
        let stdout = stdout.ok_or_else(|| RegtestError::Start("no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        match rx.recv_timeout(START_DEADLINE) {
            Ok(Ok(l)) if l.trim() == format!("ready {port}") => {}
            Ok(Ok(l)) => return Err(RegtestError::Start(format!("unexpected output {l:?}"))),
            Ok(Err(e)) => return Err(RegtestError::Io("reading chain output", e)),
            Err(_) => {
                let status = chain.child.try_wait().ok().flatten();
                return Err(RegtestError::Start(format!(
                    "no ready line (exit: {status:?})"
                )));
            }
        }
        Ok(chain)
    }

    /// The chain process's id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The RPC port.
    pub fn rpc_port(&self) -> u16 {
        self.port
    }

    /// The chain source configuration for an LDK node.
    pub fn bitcoind_config(&self) -> BitcoindConfig {
        BitcoindConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "onionvpn".into(),
            password: self.password.clone(),
        }
    }

    /// One JSON-RPC call over HTTP/1.1 (one connection per call).
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RegtestError> {
        let rpc = |detail: String| RegtestError::Rpc {
            method: method.to_owned(),
            detail,
        };
        let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params});
        let body = body.to_string();
        let auth = base64(format!("onionvpn:{}", self.password).as_bytes());
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .map_err(|e| rpc(format!("connect: {e}")))?;
        s.set_read_timeout(Some(RPC_TIMEOUT))
            .map_err(|e| rpc(e.to_string()))?;
        s.set_write_timeout(Some(RPC_TIMEOUT))
            .map_err(|e| rpc(e.to_string()))?;
        let req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| rpc(format!("write: {e}")))?;
        let mut reply = Vec::new();
        s.take(MAX_REPLY)
            .read_to_end(&mut reply)
            .map_err(|e| rpc(format!("read: {e}")))?;
        let reply = String::from_utf8_lossy(&reply);
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| rpc("no HTTP header end".into()))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body).ok_or_else(|| rpc("bad chunked body".into()))?
        } else {
            body.to_owned()
        };
        let v: Value =
            serde_json::from_str(&body).map_err(|e| rpc(format!("{e}: {head} {body}")))?;
        if !v["error"].is_null() {
            return Err(rpc(v["error"].to_string()));
        }
        Ok(v["result"].clone())
    }

    /// Current block height.
    pub fn height(&self) -> Result<u64, RegtestError> {
        let v = self.call("getblockcount", json!([]))?;
        v.as_u64().ok_or_else(|| RegtestError::Rpc {
            method: "getblockcount".into(),
            detail: format!("not a number: {v}"),
        })
    }

    /// Mines `n` blocks paying to `address` (either HRP: `bcrt1…` is re-encoded as bcoin's
    /// `rb1…`).
    pub fn mine_to(&self, n: u64, address: &str) -> Result<(), RegtestError> {
        let a = to_bcoin_address(address)?;
        // Batches keep each RPC short.
        let mut left = n;
        while left > 0 {
            let k = left.min(100);
            self.call("generatetoaddress", json!([k, a]))?;
            left -= k;
        }
        Ok(())
    }

    /// Mines `n` blocks to an address nobody controls.
    pub fn mine(&self, n: u64) -> Result<(), RegtestError> {
        let burn = self.burn.clone();
        self.mine_to(n, &burn)
    }

    /// Number of transactions in the chain's mempool.
    pub fn mempool_len(&self) -> Result<usize, RegtestError> {
        let v = self.call("getrawmempool", json!([]))?;
        v.as_array().map(Vec::len).ok_or_else(|| RegtestError::Rpc {
            method: "getrawmempool".into(),
            detail: format!("not an array: {v}"),
        })
    }

    /// Waits (bounded) until the mempool holds more than `before` transactions. A channel's
    /// opener reports `ChannelPending` (and its peer even earlier) before its funding
    /// transaction reaches the chain: ldk-node hands it to a background broadcast queue.
    /// Blocks mined before it arrives do not confirm it, and the channel never opens.
    pub async fn wait_mempool_above(&self, before: usize) -> Result<(), RegtestError> {
        wait_until(NODE_DEADLINE, "a transaction in the mempool", || {
            Ok(self.mempool_len()? > before)
        })
        .await
    }

    /// Gives the rail's wallet one 50 BTC coinbase output and makes it spendable: mines a
    /// block to the wallet, then enough blocks for coinbase maturity and SegWit activation,
    /// and waits until the wallet sees the funds.
    pub async fn fund(&self, rail: &LdkRail) -> Result<(), RegtestError> {
        self.fund_many(&[rail]).await
    }

    /// [`Regtest::fund`] for several rails at once (one maturity wait for all).
    pub async fn fund_many(&self, rails: &[&LdkRail]) -> Result<(), RegtestError> {
        for r in rails {
            let a = r.new_address()?;
            self.mine_to(1, &a)?;
        }
        let h = self.height()?;
        let target = (h + COINBASE_MATURITY).max(SEGWIT_HEIGHT);
        self.mine(target.saturating_sub(h))?;
        for r in rails {
            sync(r).await?;
            wait_until(NODE_DEADLINE, "funds to be spendable", || {
                Ok(r.balances()?.onchain_spendable_sat > 0)
            })
            .await?;
        }
        Ok(())
    }

    /// Starts an LDK rail on this chain in `dir`, listening on a free loopback port.
    pub async fn start_rail(&self, dir: &Path) -> Result<Arc<LdkRail>, RegtestError> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let cfg = LdkConfig::regtest(self.bitcoind_config(), Some(listen));
        Ok(LdkRail::start(&cfg, dir).await?)
    }

    /// Like [`Regtest::start_rail`], with the node on the runtime of `rt` (as the relay and
    /// client binaries run theirs, apart from the circuits' runtime).
    pub async fn start_rail_on(
        &self,
        dir: &Path,
        rt: &tokio::runtime::Handle,
    ) -> Result<Arc<LdkRail>, RegtestError> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let cfg = LdkConfig::regtest(self.bitcoind_config(), Some(listen));
        let dir = dir.to_path_buf();
        let started = rt
            .spawn(async move { LdkRail::start(&cfg, &dir).await })
            .await
            .map_err(|e| RegtestError::Start(format!("LDK node task: {e}")))?;
        Ok(started?)
    }

    /// Restarts a rail from the same storage (same keys, same port).
    pub async fn restart_rail(
        &self,
        rail: Arc<LdkRail>,
        dir: &Path,
    ) -> Result<Arc<LdkRail>, RegtestError> {
        let listen = rail.listening_address();
        rail.stop().await?;
        drop(rail);
        let cfg = LdkConfig::regtest(self.bitcoind_config(), listen);
        Ok(LdkRail::start(&cfg, dir).await?)
    }

    /// Opens a channel of `sats` from `from` to each of `to` (confirming each funding
    /// transaction before the next open), mines them deep enough and waits until every
    /// channel is usable on both sides.
    pub async fn open_channels(
        &self,
        from: &LdkRail,
        to: &[&LdkRail],
        sats: u64,
    ) -> Result<(), RegtestError> {
        for peer in to {
            let before = self.mempool_len()?;
            open_pending(from, peer, sats, None).await?;
            self.wait_mempool_above(before).await?;
            // ldk-node's wallet does not count its own unconfirmed funding transaction as
            // spending its input: the next open would pick the same coin (a double spend
            // the chain refuses). One block and a sync make the spend known.
            self.mine(1)?;
            sync(from).await?;
        }
        self.mine(CHANNEL_DEPTH)?;
        for peer in to {
            wait_usable(from, peer).await?;
        }
        Ok(())
    }

    /// Gives `rail` `n` coinbase outputs (one per channel it will open before any confirms)
    /// and makes them spendable, as [`Regtest::fund`] does.
    pub async fn fund_outputs(&self, rail: &LdkRail, n: u64) -> Result<(), RegtestError> {
        let a = rail.new_address()?;
        self.mine_to(n.max(1), &a)?;
        let h = self.height()?;
        let target = (h + COINBASE_MATURITY).max(SEGWIT_HEIGHT);
        self.mine(target.saturating_sub(h))?;
        sync(rail).await?;
        // Coinbase outputs mature one block apart: wait for all of them.
        let want = n.max(1) * 50 * 100_000_000 * 9 / 10;
        wait_until(NODE_DEADLINE, "funds to be spendable", || {
            Ok(rail.balances()?.onchain_spendable_sat >= want)
        })
        .await
    }

    /// Opens a channel of `sats` from `from` to `to` (pushing `push_msat` to `to`), mines it
    /// deep enough and waits until both sides can use it.
    pub async fn open_channel(
        &self,
        from: &LdkRail,
        to: &LdkRail,
        sats: u64,
        push_msat: Option<u64>,
    ) -> Result<(), RegtestError> {
        let before = self.mempool_len()?;
        let (mut ev_from, mut ev_to) = open_pending(from, to, sats, push_msat).await?;
        self.wait_mempool_above(before).await?;
        self.mine(CHANNEL_DEPTH)?;
        wait_event(&mut ev_from, "channel ready", |e| {
            matches!(e, ChannelEvent::Ready { .. })
        })
        .await?;
        wait_event(&mut ev_to, "channel ready at peer", |e| {
            matches!(e, ChannelEvent::Ready { .. })
        })
        .await?;
        wait_usable(from, to).await
    }
}

/// A node's channel events, as [`LdkRail::channel_events`] gives them.
type ChannelEvents = tokio::sync::broadcast::Receiver<ChannelEvent>;

/// Opens a channel from `from` to `to` and waits until both sides see it pending; returns
/// both sides' channel event receivers, subscribed before the open so no event is missed.
async fn open_pending(
    from: &LdkRail,
    to: &LdkRail,
    sats: u64,
    push_msat: Option<u64>,
) -> Result<(ChannelEvents, ChannelEvents), RegtestError> {
    let mut ev_from = from.channel_events();
    let mut ev_to = to.channel_events();
    let addr = to
        .listening_address()
        .ok_or(RegtestError::Address("peer does not listen".into()))?;
    from.open_channel(to.node_id(), addr, sats, push_msat)
        .await?;
    wait_event(&mut ev_from, "channel pending", |e| {
        matches!(e, ChannelEvent::Pending { .. })
    })
    .await?;
    wait_event(&mut ev_to, "channel pending at peer", |e| {
        matches!(e, ChannelEvent::Pending { .. })
    })
    .await?;
    Ok((ev_from, ev_to))
}

/// Waits until `from` has a usable channel to `to` and `to` one to `from` (after a restart
/// the peers must reconnect first).
pub async fn wait_usable(from: &LdkRail, to: &LdkRail) -> Result<(), RegtestError> {
    let (a, b) = (from.node_id(), to.node_id());
    wait_until(NODE_DEADLINE, "channel usable on both sides", || {
        Ok(from
            .channels()
            .iter()
            .any(|c| c.counterparty == b && c.usable)
            && to
                .channels()
                .iter()
                .any(|c| c.counterparty == a && c.usable))
    })
    .await
}

/// Waits (bounded) for a channel event matching `f`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<ChannelEvent>,
    what: &'static str,
    f: impl Fn(&ChannelEvent) -> bool,
) -> Result<(), RegtestError> {
    let deadline = tokio::time::Instant::now() + NODE_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(RegtestError::Timeout(what)),
            Ok(Ok(e)) if f(&e) => return Ok(()),
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                return Err(RegtestError::Pay(PayError::RailStopped))
            }
        }
    }
}

/// Syncs `rail`'s wallets with the chain, trying again (at most 10 times in all) when a
/// sync fails: on a loaded machine ldk-node's RPC polls of the chain time out now and then
/// ("Failed to sync transactions"), and its background sync would catch up later anyway.
pub async fn sync(rail: &LdkRail) -> Result<(), RegtestError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match rail.sync().await {
            Err(PayError::Node {
                context: "sync", ..
            }) if tries < 10 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return Ok(r?),
        }
    }
}

/// Polls `cond` until it holds, for at most `limit` (for states ldk-node has no event for).
pub async fn wait_until(
    limit: Duration,
    what: &'static str,
    mut cond: impl FnMut() -> Result<bool, RegtestError>,
) -> Result<(), RegtestError> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond()? {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    Err(RegtestError::Timeout(what))
}

/// Re-encodes a regtest address with bcoin's `rb` HRP (bcoin 1.0.2 predates `bcrt`).
pub fn to_bcoin_address(address: &str) -> Result<String, RegtestError> {
    if address.starts_with("rb1") {
        return Ok(address.to_owned());
    }
    let a: Address = address
        .parse::<Address<_>>()
        .map_err(|e| RegtestError::Address(format!("{address}: {e}")))?
        .require_network(Network::Regtest)
        .map_err(|e| RegtestError::Address(format!("{address}: {e}")))?;
    let spk = a.script_pubkey();
    let b = spk.as_bytes();
    // P2WPKH/P2WSH: OP_0 <push len> <program>.
    if b.len() < 2 || b[0] != 0 {
        return Err(RegtestError::Address(format!(
            "{address}: not a v0 witness address"
        )));
    }
    let hrp = Hrp::parse("rb").map_err(|e| RegtestError::Address(e.to_string()))?;
    bech32::segwit::encode_v0(hrp, &b[2..]).map_err(|e| RegtestError::Address(e.to_string()))
}

/// A P2WPKH address with a program nobody has a key for.
fn burn_address() -> String {
    // Ok: "rb" is a valid HRP and 20 bytes a valid v0 program.
    match Hrp::parse("rb").map(|h| bech32::segwit::encode_v0(h, &[0x42; 20])) {
        Ok(Ok(a)) => a,
        _ => String::new(),
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(len.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n + 2..)?;
    }
}

/// A validated regtest config (for tests that tweak fields before starting).
pub fn regtest_config(
    chain: &Regtest,
    dir: &Path,
    listen: Option<SocketAddr>,
) -> Result<ValidConfig, RegtestError> {
    Ok(LdkConfig::regtest(chain.bitcoind_config(), listen).validate(dir)?)
}

/// Real Lightning nodes for a paid local network: a regtest chain, one LDK node per relay
/// and one for the client, and a funded channel from the client to every relay (direct
/// channels: an ldk-node without an alias opens only unannounced channels and does not route
/// to them, and a routing relay would learn which later hops the client pays).
pub struct LdkNet {
    /// The chain (kept running as long as the nodes).
    pub chain: Regtest,
    relays: Vec<Arc<LdkRail>>,
    client: Arc<LdkRail>,
    /// The nodes' runtime (threads named [`onionvpn_pay::ldk::NODE_RUNTIME_THREAD`]), apart
    /// from the relays' and the client's as in the binaries.
    _rt: NodeRuntime,
    _dir: tempfile::TempDir,
}

/// A runtime that may be dropped inside another runtime (async tests): it shuts down in
/// the background instead of blocking.
struct NodeRuntime(Option<tokio::runtime::Runtime>);

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for LdkNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdkNet")
            .field("relays", &self.relays.len())
            .finish_non_exhaustive()
    }
}

impl LdkNet {
    /// Starts the chain and `relays` + 1 nodes, funds the client and opens a channel of
    /// `channel_sat` from it to every relay; returns when every channel is usable.
    pub async fn start(relays: usize, channel_sat: u64) -> Result<LdkNet, RegtestError> {
        let dir = tempfile::tempdir().map_err(|e| RegtestError::Io("temporary directory", e))?;
        let chain = Regtest::start()?;
        let rt = NodeRuntime(Some(
            node_runtime().map_err(|e| RegtestError::Io("LDK runtime", e))?,
        ));
        let h = match &rt.0 {
            Some(r) => r.handle().clone(),
            None => return Err(RegtestError::Start("no LDK runtime".into())),
        };
        let client = chain.start_rail_on(&dir.path().join("client"), &h).await?;
        let mut rs = Vec::new();
        for i in 0..relays {
            rs.push(
                chain
                    .start_rail_on(&dir.path().join(format!("relay{i}")), &h)
                    .await?,
            );
        }
        chain.fund_outputs(&client, relays as u64).await?;
        let peers: Vec<&LdkRail> = rs.iter().map(|r| r.as_ref()).collect();
        chain.open_channels(&client, &peers, channel_sat).await?;
        Ok(LdkNet {
            chain,
            relays: rs,
            client,
            _rt: rt,
            _dir: dir,
        })
    }

    /// Relay `i`'s node.
    pub fn relay(&self, i: usize) -> Option<Arc<LdkRail>> {
        self.relays.get(i).cloned()
    }

    /// The client's node.
    pub fn client(&self) -> Arc<LdkRail> {
        self.client.clone()
    }

    /// Stops every node.
    pub async fn stop(&self) {
        for r in self.relays.iter().chain(std::iter::once(&self.client)) {
            if let Err(e) = r.stop().await {
                eprintln!("stopping an LDK node: {e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(dechunk("zz\r\n"), None);
    }

    #[test]
    fn bcrt_address_reencoded_with_rb() {
        let a = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        let rb = to_bcoin_address(a).unwrap();
        assert!(rb.starts_with("rb1q"));
        assert!(burn_address().starts_with("rb1q"));
    }
}
