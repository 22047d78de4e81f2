//! The client runtime: [`start_client`] wires discovery, the circuit manager and the SOCKS
//! listener together and returns a [`ClientHandle`].
//!
//! Discovery runs the directory crate's `discover` over a client-mode mainline DHT node
//! bootstrapped from the configured list; relays found are verified, merged into the
//! manager's relay set and stored in the cache under the data directory (so a restart
//! builds circuits from the cache at once, then refreshes in the background).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use onionvpn_directory::cache::Cache;
use onionvpn_directory::dht::{
    discover, unix_now, ClientDht, ClientNodeConfig, DiscoveryConfig, TcpFetcher,
};
use onionvpn_directory::network::{NetworkKey, PUBLIC_NETWORK_NAME};
use onionvpn_directory::path::GuardSet;
use onionvpn_directory::{Descriptor, Network, RelaySet};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::circmgr::{CircMgr, MgrConfig};
use crate::config::{ClientConfig, NetworkChoice};
use crate::payments::{ClientPayments, PaymentsSetup};
use crate::socks_server::{serve, SocksSettings};
use crate::tun::{TunError, TunHandle};
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
        }
    }
}

/// A running client.
pub struct ClientHandle {
    socks_addr: SocketAddr,
    mgr: Arc<CircMgr>,
    tasks: Vec<JoinHandle<()>>,
    tun: Option<TunHandle>,
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

    /// Waits until at least one circuit is built.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        tokio::time::timeout(timeout, self.mgr.wait_built(1))
            .await
            .map_err(|_| ClientError::NotReady(timeout, self.mgr.relay_count()))
    }

    /// Stops the listener, discovery and maintenance, closes every circuit, and flushes and
    /// releases the relay cache (a new client may open the same data directory at once).
    pub async fn shutdown(self) {
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
    let mut mgr = CircMgr::new(mgr_cfg, relays, guards, cache);
    if let Some(setup) = &opts.payments {
        make_private_dir(&config.data_dir)?;
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
    Ok(ClientHandle {
        socks_addr,
        mgr,
        tasks,
        tun,
    })
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
