//! Shared helpers for onionvpn's cross-crate integration tests, the `onionvpn-localnet`
//! command and the `onionvpn-bench` harness: a whole local network on loopback (a mainline
//! DHT testnet, relays, an HTTP server with test content, a client), a SOCKS5 client and
//! HTTP helpers.

pub mod cpu;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod rawlink;
pub mod regtest;
pub mod simcal;
pub mod socksc;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mainline::Testnet;
use onionvpn_client::config::{ClientConfig, NetworkChoice};
use onionvpn_client::PaymentsSetup as ClientPayments;
use onionvpn_client::{start_client_with, ClientHandle, RuntimeOptions as ClientOptions};
use onionvpn_directory::descriptor::Prices;
use onionvpn_pay::ldk::ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use onionvpn_pay::ledger::Ledger;
use onionvpn_pay::memory::MemoryNetwork;
use onionvpn_pay::payer::PayerConfig;
use onionvpn_pay::{NodeId, PaymentRail};
use onionvpn_relay::config::DefaultAction;
use onionvpn_relay::{
    start_relay_with, PaymentsSetup as RelayPayments, RelayConfig, RelayHandle,
    RuntimeOptions as RelayOptions,
};

pub use http::{start_http, HttpServer};

/// Name of the overlay network the local network runs.
pub const LOCAL_NETWORK: &str = "localnet";

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalNetConfig {
    /// Relays (at least 6 in the tests).
    pub relays: usize,
    /// How many of them are exits allowed to reach loopback.
    pub exits: usize,
    /// DHT testnet nodes.
    pub dht_nodes: usize,
    /// Start a client (hops, SOCKS address) or not.
    pub client: Option<(u8, SocketAddr)>,
    /// Start the HTTP server on this address.
    pub http: Option<SocketAddr>,
    /// Where relay and client state goes (a temporary directory if `None`).
    pub dir: Option<PathBuf>,
    /// Worker threads per relay runtime (`None`: one per core).
    pub relay_threads: Option<usize>,
    /// Charging relays, paid through the in-memory test rail or real LDK nodes (`None`: free
    /// relays).
    pub paid: Option<PaidNet>,
}

/// How the relays and the client of a paid local network are paid.
#[derive(Debug, Clone)]
pub enum Rails {
    /// The in-memory TEST rail (no Lightning): no fees, instant unless a latency is set.
    Memory(MemoryNetwork),
    /// Real ldk-node instances on a real regtest chain, with a channel from the client's
    /// node to every relay's ([`regtest::LdkNet`]; it needs at least as many relay nodes as
    /// the network has relays). Every paying client of the network shares the one client
    /// node.
    Ldk(Arc<regtest::LdkNet>),
}

impl Rails {
    /// The rail of relay `i` (`None`: no LDK node for it).
    pub fn relay(&self, i: usize) -> Option<Arc<dyn PaymentRail>> {
        match self {
            Rails::Memory(m) => Some(Arc::new(m.node(relay_node_id(i), 0))),
            Rails::Ldk(l) => l.relay(i).map(|r| r as Arc<dyn PaymentRail>),
        }
    }

    /// The rail of the paying client `name` (on the memory rail a node holding
    /// `balance_msat`; on LDK the one client node, funded by its channels).
    pub fn client(&self, name: &str, balance_msat: u64) -> Arc<dyn PaymentRail> {
        match self {
            Rails::Memory(m) => Arc::new(m.node(client_node_id(name), balance_msat)),
            Rails::Ldk(l) => l.client(),
        }
    }

    /// Outgoing payments of client `name`'s node still in flight.
    pub fn client_in_flight(&self, name: &str) -> usize {
        match self {
            Rails::Memory(m) => m.in_flight(client_node_id(name)),
            Rails::Ldk(l) => l
                .client()
                .node()
                .list_payments_with_filter(|p| {
                    p.direction == PaymentDirection::Outbound && p.status == PaymentStatus::Pending
                })
                .len(),
        }
    }

    /// Keysend payments still held in the store of client `name`'s node (sent, not yet
    /// forgotten; ldk-node also keeps a record per on-chain transaction, not counted here).
    pub fn client_stored(&self, name: &str) -> usize {
        match self {
            Rails::Memory(m) => m.stored(client_node_id(name)),
            Rails::Ldk(l) => l
                .client()
                .node()
                .list_payments_with_filter(|p| matches!(p.kind, PaymentKind::Spontaneous { .. }))
                .len(),
        }
    }
}

impl Rails {
    /// Keysend payments still held in the store of relay `i`'s node (received, not yet
    /// forgotten after the ledger recorded them).
    pub fn relay_stored(&self, i: usize) -> usize {
        match self {
            Rails::Memory(m) => m.stored(relay_node_id(i)),
            Rails::Ldk(l) => l.relay(i).map_or(0, |r| {
                r.node()
                    .list_payments_with_filter(|p| {
                        matches!(p.kind, PaymentKind::Spontaneous { .. })
                    })
                    .len()
            }),
        }
    }
}

/// A paid local network: every relay charges these prices and is paid through `rails`.
#[derive(Debug, Clone)]
pub struct PaidNet {
    /// The payment network relays and clients join.
    pub rails: Rails,
    /// Relay price per MiB, msat.
    pub msat_per_mib: u64,
    /// Relay price per minute, msat.
    pub msat_per_min: u64,
    /// Relay grace, KiB.
    pub grace_kib: u32,
    /// Relay indices that charge `overpriced` per MiB instead (above a client's cap).
    pub overpriced: Vec<usize>,
    /// Price per MiB of the overpriced relays, msat.
    pub overpriced_msat_per_mib: u64,
    /// Relay indices that take payment and stop relaying (the relay's test hook
    /// `RuntimeOptions::test_stop_when_paid`).
    pub stop_when_paid: Vec<usize>,
    /// The started client pays (with the budget of [`client_config`] unless changed).
    pub client_pays: bool,
    /// The started client's budget, msat.
    pub client_budget_msat: u64,
    /// How clients pay.
    pub payer: PayerConfig,
}

impl Default for PaidNet {
    fn default() -> Self {
        PaidNet {
            rails: Rails::Memory(MemoryNetwork::new()),
            msat_per_mib: 1_000,
            msat_per_min: 60,
            // Loopback moves tens of MiB/s: the grace and the chunk must cover what flows
            // while a payment is on its way.
            grace_kib: 2048,
            overpriced: Vec::new(),
            overpriced_msat_per_mib: 1_000_000,
            stop_when_paid: Vec::new(),
            client_pays: true,
            client_budget_msat: 1_000_000,
            payer: PayerConfig {
                chunk_msat: 4_000,
                jitter: Duration::from_millis(100),
                ..PayerConfig::default()
            },
        }
    }
}

/// A loopback address with port 0: listen on any free port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Polls `f` every 50 ms until it holds or `limit` passes (for states with no event to
/// await); whether it held.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// The test-rail node id of relay `i`.
pub fn relay_node_id(i: usize) -> NodeId {
    let mut id = [0u8; 33];
    id[0] = 2;
    id[1..9].copy_from_slice(&(i as u64).to_be_bytes());
    NodeId(id)
}

/// The test-rail node id of client `name`.
pub fn client_node_id(name: &str) -> NodeId {
    let mut id = [0u8; 33];
    id[0] = 3;
    for (d, b) in id[1..].iter_mut().zip(name.bytes()) {
        *d = b;
    }
    NodeId(id)
}

impl Default for LocalNetConfig {
    fn default() -> Self {
        LocalNetConfig {
            relays: 6,
            exits: 2,
            dht_nodes: 10,
            client: Some((3, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))),
            http: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            dir: None,
            relay_threads: Some(2),
            paid: None,
        }
    }
}

/// Why the local network did not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalNetError {
    /// I/O (temporary directory, HTTP server, DHT testnet).
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// A relay did not start.
    #[error("relay {0}: {1}")]
    Relay(usize, onionvpn_relay::RelayError),
    /// Relays did not publish in time.
    #[error("relays did not publish their descriptors within {0:?}")]
    Publish(Duration),
    /// The paid network has no payment node for this relay.
    #[error("no payment rail for relay {0}")]
    NoRail(usize),
    /// The client did not start or build a circuit.
    #[error("client: {0}")]
    Client(#[from] onionvpn_client::ClientError),
}

/// A running local network.
pub struct LocalNet {
    /// The DHT testnet (its nodes stop when dropped).
    pub testnet: Testnet,
    relays: Vec<Option<RelayHandle>>,
    identities: Vec<[u8; 32]>,
    /// The HTTP server.
    pub http: Option<HttpServer>,
    /// The client.
    pub client: Option<ClientHandle>,
    dir: PathBuf,
    paid: Option<PaidNet>,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for LocalNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNet")
            .field("relays", &self.relays.len())
            .finish_non_exhaustive()
    }
}

/// The relay configuration the local network uses for relay `i`.
pub fn relay_config(
    i: usize,
    exit: bool,
    bootstrap: &[String],
    dir: &std::path::Path,
) -> RelayConfig {
    let mut c = RelayConfig {
        data_dir: dir.join(format!("relay{i}")),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..RelayConfig::default()
    };
    c.dht.bootstrap = bootstrap.to_vec();
    c.network.name = LOCAL_NETWORK.to_owned();
    // Free relays: payments are not part of the local network yet.
    c.prices.msat_per_mib = 0;
    c.prices.msat_per_min = 0;
    c.exit.enabled = exit;
    c.exit.policy.rules = vec!["accept 1-65535".to_owned()];
    c.exit.policy.default = DefaultAction::Accept;
    c.exit.policy.allow_private_destinations = exit;
    // One client on loopback builds many circuits (benchmarks build hundreds).
    c.limits.circuit_rate = 10_000;
    c.limits.circuit_burst = 10_000;
    // Every relay serves metrics on loopback (tests/tests/operator.rs scrapes them).
    c.metrics.enabled = true;
    c.metrics.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    c
}

/// The client configuration the local network uses.
pub fn client_config(
    hops: u8,
    socks: SocketAddr,
    bootstrap: &[String],
    data_dir: PathBuf,
) -> ClientConfig {
    ClientConfig {
        hops,
        socks,
        data_dir,
        bootstrap: bootstrap.to_vec(),
        network: NetworkChoice::Public(LOCAL_NETWORK.to_owned()),
        price_cap: Prices {
            msat_per_mib: 2_000,
            msat_per_min: 100,
        },
        budget_msat: 1_000_000,
        log_sensitive: false,
        stall_timeout: Duration::from_secs(onionvpn_client::config::DEFAULT_STALL_TIMEOUT_S),
        stall_avoid: Duration::from_secs(onionvpn_client::config::DEFAULT_STALL_AVOID_S),
        tun: None,
        lightning: None,
        payer: Default::default(),
    }
}

/// Client runtime options for a loopback network (short DHT timeouts).
pub fn client_options() -> ClientOptions {
    let mut o = ClientOptions {
        dht_request_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    o.discovery.deadline = Duration::from_secs(15);
    o
}

impl LocalNet {
    /// Starts the DHT testnet, the relays (exits first), waits until every relay published
    /// its descriptor, then the HTTP server and the client (waiting for its first circuit).
    pub async fn start(cfg: LocalNetConfig) -> Result<LocalNet, LocalNetError> {
        let (dir, tmp) = match &cfg.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t =
                    tempfile::tempdir().map_err(|e| LocalNetError::Io("temporary directory", e))?;
                (t.path().to_owned(), Some(t))
            }
        };
        let testnet = Testnet::builder(cfg.dht_nodes.max(2))
            .build()
            .map_err(|e| LocalNetError::Io("DHT testnet", e))?;
        let mut relays = Vec::new();
        let mut identities = Vec::new();
        for i in 0..cfg.relays {
            let mut rc = relay_config(i, i < cfg.exits, &testnet.bootstrap, &dir);
            let data_dir = rc.data_dir.clone();
            let mut opts = RelayOptions {
                worker_threads: cfg.relay_threads,
                ..RelayOptions::default()
            };
            if let Some(p) = &cfg.paid {
                rc.prices.msat_per_mib = if p.overpriced.contains(&i) {
                    p.overpriced_msat_per_mib
                } else {
                    p.msat_per_mib
                };
                rc.prices.msat_per_min = p.msat_per_min;
                rc.prices.grace_kib = p.grace_kib;
                opts.test_stop_when_paid = p.stop_when_paid.contains(&i);
                opts.payments = Some(RelayPayments {
                    rail: p.rails.relay(i).ok_or(LocalNetError::NoRail(i))?,
                    ledger_dir: onionvpn_relay::payments::ledger_dir(&data_dir),
                });
            }
            let r = start_relay_with(rc, data_dir, opts)
                .await
                .map_err(|e| LocalNetError::Relay(i, e))?;
            identities.push(r.identity());
            relays.push(Some(r));
        }
        let limit = Duration::from_secs(30);
        let start = Instant::now();
        while relays
            .iter()
            .flatten()
            .any(|r| r.stats().descriptor_puts == 0)
        {
            if start.elapsed() > limit {
                return Err(LocalNetError::Publish(limit));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let http = match cfg.http {
            Some(a) => Some(
                start_http(a)
                    .await
                    .map_err(|e| LocalNetError::Io("HTTP server", e))?,
            ),
            None => None,
        };
        let mut net = LocalNet {
            testnet,
            relays,
            identities,
            http,
            client: None,
            dir,
            paid: cfg.paid.clone(),
            _tmp: tmp,
        };
        if let Some((hops, socks)) = cfg.client {
            let opts = match &cfg.paid {
                Some(p) if p.client_pays => net.paying_options("client", 10_000_000_000),
                _ => client_options(),
            };
            let client = match &cfg.paid {
                Some(p) => {
                    let mut c =
                        client_config(hops, socks, &net.testnet.bootstrap, net.dir.join("client"));
                    c.budget_msat = p.client_budget_msat;
                    start_client_with(c, opts).await?
                }
                None => net.start_client("client", hops, socks, opts).await?,
            };
            client.wait_ready(Duration::from_secs(60)).await?;
            net.client = Some(client);
        }
        Ok(net)
    }

    /// The configuration of a client on this network with state under `name` in the
    /// network's directory (to adjust before [`start_client_with`], e.g. TUN mode).
    pub fn client_config(&self, name: &str, hops: u8, socks: SocketAddr) -> ClientConfig {
        client_config(hops, socks, &self.testnet.bootstrap, self.dir.join(name))
    }

    /// Starts another client on this network (state under `name` in the network's directory).
    pub async fn start_client(
        &self,
        name: &str,
        hops: u8,
        socks: SocketAddr,
        opts: ClientOptions,
    ) -> Result<ClientHandle, LocalNetError> {
        let c = client_config(hops, socks, &self.testnet.bootstrap, self.dir.join(name));
        Ok(start_client_with(c, opts).await?)
    }

    /// Client options that pay through the network's test rail from a node named `name`
    /// holding `balance_msat` ([`client_options`] if the network is free).
    pub fn paying_options(&self, name: &str, balance_msat: u64) -> ClientOptions {
        let mut o = client_options();
        if let Some(p) = &self.paid {
            o.payments = Some(ClientPayments {
                rail: p.rails.client(name, balance_msat),
                payer: p.payer.clone(),
            });
        }
        o
    }

    /// The earnings ledger of every running paid relay.
    pub fn ledgers(&self) -> Vec<Ledger> {
        self.relays().filter_map(RelayHandle::ledger).collect()
    }

    /// The directory holding relay and client state.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The client (panics in tests if none was started; use `client` otherwise).
    pub fn the_client(&self) -> Option<&ClientHandle> {
        self.client.as_ref()
    }

    /// The SOCKS address of the client.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.client.as_ref().map(ClientHandle::socks_addr)
    }

    /// The HTTP server's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    /// Relays still running.
    pub fn relays(&self) -> impl Iterator<Item = &RelayHandle> {
        self.relays.iter().flatten()
    }

    /// Identity of relay `i` (as started).
    pub fn identity(&self, i: usize) -> Option<[u8; 32]> {
        self.identities.get(i).copied()
    }

    /// Kills the relay with this identity abruptly ([`RelayHandle::kill`]); false if unknown.
    pub fn kill_relay(&mut self, identity: &[u8; 32]) -> bool {
        for r in &mut self.relays {
            if r.as_ref().is_some_and(|h| &h.identity() == identity) {
                if let Some(h) = r.take() {
                    h.kill();
                    return true;
                }
            }
        }
        false
    }

    /// Stops the client, then every relay, cleanly.
    pub async fn shutdown(mut self) {
        if let Some(c) = self.client.take() {
            c.shutdown().await;
        }
        for r in self.relays.iter_mut() {
            if let Some(h) = r.take() {
                h.shutdown().await;
            }
        }
        if let Some(h) = &self.http {
            h.stop();
        }
    }
}

/// CPU time used by this whole process so far (every thread, including finished ones).
pub fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}
