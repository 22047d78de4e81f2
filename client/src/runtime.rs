//! The client runtime: [`start_client`] wires discovery, the circuit manager and the SOCKS
//! listener together and returns a [`ClientHandle`].
//!
//! Discovery runs the directory crate's `discover` over a client-mode mainline DHT node
//! bootstrapped from the configured list; relays found are verified, merged into the
//! manager's relay set and stored in the cache under the data directory (so a restart
//! builds circuits from the cache at once, then refreshes in the background).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onionvpn_directory::cache::Cache;
use onionvpn_directory::dht::{
    discover, unix_now, ClientDht, ClientNodeConfig, DiscoveryConfig, TcpFetcher,
};
use onionvpn_directory::network::{NetworkKey, PUBLIC_NETWORK_NAME};
use onionvpn_directory::path::GuardSet;
use onionvpn_directory::{Descriptor, Network, RelaySet};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::circmgr::{CircMgr, MgrConfig};
use crate::config::{ClientConfig, NetworkChoice};
use crate::payments::{ClientPayments, PaymentsSetup};
use crate::socks_server::{serve, SocksSettings};
use crate::status::{ClientStatus, PaidTally, PaymentStatus};
use crate::tun::{TunError, TunHandle};
use onionvpn_pay::ldk::control::{self, ControlError, Served, WalletAccess};
use onionvpn_pay::payer::PriceCap;

/// Errors starting or waiting for the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The SOCKS listener could not bind.
    #[error("cannot listen for SOCKS on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The private network key file could not be read.
    #[error("network key: {0}")]
    NetworkKey(String),
    /// The public network name is invalid.
    #[error("network name {0:?} is invalid")]
    NetworkName(String),
    /// The relay cache could not be opened.
    #[error("relay cache: {0}")]
    Cache(String),
    /// The DHT node could not start.
    #[error("DHT node: {0}")]
    Dht(String),
    /// The payment state could not be set up (spend file).
    #[error("payments: {0}")]
    Payments(String),
    /// No circuit was built in time.
    #[error("no circuit built within {0:?} ({1} relays known)")]
    NotReady(Duration, usize),
    /// TUN mode did not start.
    #[error("TUN mode: {0}")]
    Tun(#[from] TunError),
    /// The control socket could not be served (another client runs on the data directory,
    /// or the socket could not be bound).
    #[error("control socket: {0}")]
    Control(#[from] ControlError),
}

/// Runtime settings that are not part of the config file (tests, the local network and the
/// simulator adjust them).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Circuit manager settings; `hops` and `price_cap` are taken from the [`ClientConfig`].
    /// The maximum circuit age is `mgr.max_dirtiness` (new streams stop using a circuit this
    /// long after its first stream; it closes once idle) and `mgr.max_clean_age` (an unused
    /// circuit is replaced); the build timeout is learned within `mgr.buildtime`.
    pub mgr: MgrConfig,
    /// SOCKS listener settings.
    pub socks: SocksSettings,
    /// Discovery limits per pass.
    pub discovery: DiscoveryConfig,
    /// DHT request timeout (300–500 ms on a local network, about 1 s on the WAN).
    pub dht_request_timeout: Duration,
    /// Time between discovery passes once enough relays are known.
    pub rediscover_every: Duration,
    /// Use these relays instead of DHT discovery (no DHT node is started).
    pub relays: Option<Vec<Descriptor>>,
    /// Keep the relay cache and guards in the data directory.
    pub use_cache: bool,
    /// Pay the hops that charge (`None`: the client pays nobody; charging relays that
    /// enforce payment then end its circuits after their grace).
    pub payments: Option<PaymentsSetup>,
    /// Serve the control socket (`<data dir>/control.sock`) that `onionvpn-client status`
    /// and `wallet` use while the client runs.
    pub control_socket: bool,
    /// The Lightning node that `wallet` requests on the control socket run against (`None`:
    /// they are answered with an error).
    pub wallet: Option<WalletAccess>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            mgr: MgrConfig::default(),
            socks: SocksSettings::default(),
            discovery: DiscoveryConfig::default(),
            dht_request_timeout: Duration::from_secs(1),
            rediscover_every: Duration::from_secs(600),
            relays: None,
            use_cache: true,
            payments: None,
            control_socket: false,
            wallet: None,
        }
    }
}

/// A running client.
pub struct ClientHandle {
    socks_addr: SocketAddr,
    mgr: Arc<CircMgr>,
    tasks: Vec<JoinHandle<()>>,
    tun: Option<TunHandle>,
    status: Arc<StatusSource>,
    control: Option<(watch::Sender<bool>, JoinHandle<()>, PathBuf)>,
}

/// What the status report is made from.
struct StatusSource {
    started: Instant,
    mgr: Arc<CircMgr>,
    budget_msat: u64,
    tally: Option<Arc<PaidTally>>,
}

impl StatusSource {
    fn report(&self) -> ClientStatus {
        let circuits = self.mgr.circuits();
        let open: Vec<_> = circuits.iter().filter(|c| !c.dead).collect();
        let payments = self.mgr.payments().map(|p| {
            let spent = p.spent_msat();
            PaymentStatus {
                budget_msat: self.budget_msat,
                spent_msat: spent,
                budget_left_msat: self.budget_msat.saturating_sub(spent),
                budget_reached: p.budget_reached(),
                relays: self
                    .tally
                    .as_ref()
                    .map(|t| t.per_relay())
                    .unwrap_or_default(),
            }
        });
        ClientStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            relays_known: self.mgr.relay_count() as u64,
            circuits_open: open.len() as u64,
            circuits_built: self.mgr.circuits_built(),
            streams_open: open.iter().map(|c| c.streams_open as u64).sum(),
            payments,
        }
    }
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("socks_addr", &self.socks_addr)
            .finish_non_exhaustive()
    }
}

impl ClientHandle {
    /// The SOCKS5 listener actually bound (port 0 in the config picks a free one).
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks_addr
    }

    /// The TUN front end, when TUN mode is on.
    pub fn tun(&self) -> Option<&TunHandle> {
        self.tun.as_ref()
    }

    /// The circuit manager (circuit snapshots, build timeout, direct circuit builds).
    pub fn circuit_manager(&self) -> &Arc<CircMgr> {
        &self.mgr
    }

    /// The status report (what `onionvpn-client status` shows).
    pub fn status(&self) -> ClientStatus {
        self.status.report()
    }

    /// The control socket (`None`: not served).
    pub fn control_path(&self) -> Option<&Path> {
        self.control.as_ref().map(|(_, _, p)| p.as_path())
    }

    /// Waits until at least one circuit is built.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        tokio::time::timeout(timeout, self.mgr.wait_built(1))
            .await
            .map_err(|_| ClientError::NotReady(timeout, self.mgr.relay_count()))
    }

    /// Stops the listener, discovery and maintenance, closes every circuit, and flushes and
    /// releases the relay cache (a new client may open the same data directory at once).
    pub async fn shutdown(self) {
        // The control socket first: its file is removed, so `wallet` no longer forwards.
        if let Some((tx, task, _)) = self.control {
            let _ = tx.send(true);
            let _ = task.await;
        }
        if let Some(tun) = self.tun {
            tun.shutdown().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.mgr.close();
    }
}

/// The overlay network a configuration names.
pub fn network_of(config: &ClientConfig) -> Result<Network, ClientError> {
    match &config.network {
        NetworkChoice::Public(name) if name == PUBLIC_NETWORK_NAME => Ok(Network::main()),
        NetworkChoice::Public(name) => {
            Network::public(name, 1).map_err(|_| ClientError::NetworkName(name.clone()))
        }
        NetworkChoice::KeyFile(path) => NetworkKey::read(path)
            .map(|k| Network::private(&k))
            .map_err(|e| ClientError::NetworkKey(format!("{}: {e}", path.display()))),
    }
}

fn make_private_dir(path: &Path) -> Result<(), ClientError> {
    let err = |source| ClientError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Starts a client with default runtime options.
pub async fn start_client(config: ClientConfig) -> Result<ClientHandle, ClientError> {
    start_client_with(config, RuntimeOptions::default()).await
}

/// Starts a client: binds the SOCKS listener, loads the cache, starts discovery (or takes
/// the given relays), circuit maintenance and the SOCKS server.
pub async fn start_client_with(
    config: ClientConfig,
    opts: RuntimeOptions,
) -> Result<ClientHandle, ClientError> {
    let network = network_of(&config)?;
    let listener = TcpListener::bind(config.socks)
        .await
        .map_err(|source| ClientError::Listen {
            addr: config.socks,
            source,
        })?;
    let socks_addr = listener
        .local_addr()
        .map_err(|source| ClientError::Listen {
            addr: config.socks,
            source,
        })?;

    let mut relays = RelaySet::new(network.clone());
    let mut guards = GuardSet::default();
    let cache = if opts.use_cache {
        make_private_dir(&config.data_dir)?;
        let cache = Cache::open(&config.data_dir.join("relays.sled"), &network)
            .map_err(|e| ClientError::Cache(e.to_string()))?;
        match cache.load(&network, unix_now()) {
            Ok(load) => relays = load.relays,
            Err(e) => warn!("relay cache unreadable, starting empty: {e}"),
        }
        match cache.load_guards() {
            Ok(g) => guards = g,
            Err(e) => warn!("guard set unreadable, choosing new guards: {e}"),
        }
        Some(cache)
    } else {
        None
    };
    if !relays.is_empty() {
        info!("{} relays from the cache", relays.len());
    }
    let mut mgr_cfg = opts.mgr.clone();
    mgr_cfg.hops = usize::from(config.hops);
    mgr_cfg.price_cap = config.price_cap;
    mgr_cfg.stall.min_timeout = config.stall_timeout;
    mgr_cfg.stall_avoid = config.stall_avoid;
    let mut mgr = CircMgr::new(mgr_cfg, relays, guards, cache);
    let mut tally = None;
    if let Some(setup) = &opts.payments {
        make_private_dir(&config.data_dir)?;
        // Every keysend goes through the tally, which counts what each relay was paid.
        let t = Arc::new(PaidTally::new(setup.rail.clone()));
        tally = Some(t.clone());
        let setup = PaymentsSetup {
            rail: t,
            payer: setup.payer.clone(),
        };
        let setup = &setup;
        let cap = PriceCap {
            msat_per_mib: config.price_cap.msat_per_mib,
            msat_per_min: config.price_cap.msat_per_min,
        };
        let p = ClientPayments::new(setup, cap, config.budget_msat, &config.data_dir)
            .map_err(|e| ClientError::Payments(e.to_string()))?;
        info!(
            budget_msat = config.budget_msat,
            spent_msat = p.spent_msat(),
            "paying relays"
        );
        mgr = mgr.with_payments(Arc::new(p));
    }
    let mgr = Arc::new(mgr);
    let status = Arc::new(StatusSource {
        started: Instant::now(),
        mgr: mgr.clone(),
        budget_msat: config.budget_msat,
        tally,
    });
    let mut tasks = Vec::new();
    match &opts.relays {
        Some(list) => {
            mgr.add_relays(list.iter());
        }
        None => {
            // A client-mode node that replaces itself before mainline could promote it to
            // server mode: clients never answer DHT requests or sit in routing tables.
            let mut node_cfg = ClientNodeConfig::new(config.bootstrap.clone());
            node_cfg.request_timeout = opts.dht_request_timeout;
            let dht = ClientDht::new(node_cfg).map_err(|e| ClientError::Dht(e.to_string()))?;
            tasks.push(tokio::spawn(discovery_loop(
                dht,
                network.clone(),
                mgr.clone(),
                opts.clone(),
            )));
        }
    }
    if let Some(setup) = &opts.payments {
        tasks.push(tokio::spawn(take_received(setup.rail.clone())));
    }
    tasks.push(tokio::spawn(mgr.clone().run_maintenance()));
    tasks.push(tokio::spawn(serve(
        listener,
        mgr.clone(),
        opts.socks.clone(),
    )));
    info!("SOCKS5 listening on {socks_addr}");
    let tun = match &config.tun {
        Some(settings) => match crate::tun::start(mgr.clone(), settings.clone()).await {
            Ok(t) => Some(t),
            Err(e) => {
                for t in &tasks {
                    t.abort();
                }
                mgr.close();
                return Err(e.into());
            }
        },
        None => None,
    };
    // Last: nothing after it can fail, so the socket never outlives a failed start.
    let control = if opts.control_socket {
        make_private_dir(&config.data_dir)?;
        let path = control::socket_path(&config.data_dir);
        let listener = match control::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                for t in &tasks {
                    t.abort();
                }
                mgr.close();
                if let Some(tun) = tun {
                    tun.shutdown().await;
                }
                return Err(e.into());
            }
        };
        let (tx, rx) = watch::channel(false);
        let s = status.clone();
        let served = Served {
            status: Arc::new(move || s.report()),
            wallet: opts.wallet.clone(),
            no_wallet: "this client runs without a [lightning] table: it has no wallet",
        };
        let task = tokio::spawn(control::serve(listener, path.clone(), served, rx));
        Some((tx, task, path))
    } else {
        None
    };

    Ok(ClientHandle {
        socks_addr,
        mgr,
        tasks,
        tun,
        status,
        control,
    })
}

/// Acknowledges every payment the client's node receives (a top-up paid to a `wallet
/// invoice`). The client keeps no ledger of them (the node's store has them), but the LDK
/// rail delivers later events only after a received payment is acknowledged: unacknowledged,
/// one top-up would stall the outcome of every keysend after it.
async fn take_received(rail: Arc<dyn onionvpn_pay::PaymentRail>) {
    while let Ok(p) = rail.next_received().await {
        info!(amount_msat = p.amount_msat, "payment received");
        if let Err(e) = rail.ack_received(p.id) {
            warn!("acknowledging a received payment: {e}");
            return;
        }
    }
}

/// Runs discovery passes: at once, again quickly while too few relays are known, then every
/// `rediscover_every` or when path selection asks for more relays.
async fn discovery_loop(dht: ClientDht, network: Network, mgr: Arc<CircMgr>, opts: RuntimeOptions) {
    dht.node().bootstrapped().await;
    let fetcher = TcpFetcher {
        timeout: Duration::from_secs(3),
    };
    let enough = mgr.config().hops + 1;
    loop {
        let mut set = RelaySet::new(network.clone());
        let rep = discover(&dht, &fetcher, &mut set, &opts.discovery, enough).await;
        let known = mgr.add_relays(set.iter());
        debug!(
            "discovery pass: {} found, {} known, {} fetched, {} failed, {:?}",
            set.len(),
            known,
            rep.fetched,
            rep.fetch_failed,
            rep.elapsed
        );
        let wait = if known < enough {
            Duration::from_secs(1)
        } else {
            opts.rediscover_every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = mgr.need_relays.notified() => {
                // Do not hammer the DHT when path selection keeps failing.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
