//! The relay runtime: the link listener, the circuit acceptor with its limits, one task per
//! circuit, descriptor publication, and clean shutdown.
//!
//! Each relay runs on its own multi-thread tokio runtime (one worker per core by default),
//! so that [`RelayHandle::kill`] can stop it abruptly, closing every socket at once, as a
//! crash would, while other relays and clients in the same process keep running.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use onionvpn_chan::{accept, ChannelConfig, IncomingCreate};
use onionvpn_directory::dht::{Served, DESCRIPTOR_REQUEST};
use onionvpn_directory::Descriptor;
use onionvpn_proto::cell::{Cell, ChanCmd, Create, DestroyReason};
use onionvpn_proto::circuit::{CircError, RelayCircuit, RelayKeys, RelayPolicy};
use onionvpn_proto::consts::{CELL_BODY_LEN, CELL_LEN};
use onionvpn_proto::crypto::handshake::{OnionSecretKey, ReplayCache, KEY_LEN};
use onionvpn_proto::link::LinkSecretKey;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::chanmgr::{ChanMgr, ExtendPolicy};
use crate::circuit_task::{Billing, CircuitTask};
use crate::config::{Config, ConfigError};
use crate::exit::ExitSettings;
use crate::keys::{KeyError, KeyStore};
use crate::limits::{CircuitCap, CircuitCreationLimiter, ConnectionLimiter, MemQuota};
use crate::metrics::MetricsInfo;
use crate::payments::{Payments, PaymentsSetup};
use crate::publish::{self, Publication};
use crate::redact::sensitive_addr;
use crate::status::{LastErrors, StatusReport};

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The keys could not be loaded or created.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// A socket or runtime operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The payment rail or the earnings ledger could not be set up.
    #[error("payments: {0}")]
    Payments(#[from] onionvpn_pay::PayError),
    /// The descriptor could not be built or signed.
    #[error("descriptor: {0}")]
    Descriptor(#[from] onionvpn_directory::DescriptorError),
    /// No usable address to publish.
    #[error("no address to publish: {0}")]
    NoAddress(String),
    /// The relay's start-up task failed.
    #[error("relay start-up task failed: {0}")]
    Startup(String),
}

/// Knobs of the runtime that are not in the operator's config file.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Worker threads of the relay's runtime (default: one per core).
    pub worker_threads: Option<usize>,
    /// Publish the descriptor in the DHT (put + announce) and re-publish on schedule.
    pub publish: bool,
    /// Bind the DHT socket to this address (default: 127.0.0.1 when every bootstrap node is on
    /// loopback, else 0.0.0.0).
    pub dht_bind: Option<std::net::Ipv4Addr>,
    /// Timeout of the destination DNS lookup and of the TCP connect, each.
    pub exit_connect_timeout: Duration,
    /// Timeout of extending: the connect and link handshake, then CREATED.
    pub extend_timeout: Duration,
    /// Channel settings (handshake timeout, queues).
    pub channel: ChannelConfig,
    /// Most circuit handshakes waiting at once (more CREATEs are refused).
    pub create_queue: usize,
    /// How long [`RelayHandle::shutdown`] waits for circuits to send their DESTROYs.
    pub shutdown_grace: Duration,
    /// The PEX batch served with the descriptor: background discovery on the relay's DHT node.
    pub pex: publish::PexOptions,
    /// How the relay is paid. `None`: circuits are not charged (the descriptor's prices are
    /// still announced, but nothing enforces them), as on a local test network.
    pub payments: Option<PaymentsSetup>,
    /// Serve the control socket (`<data dir>/control.sock`) that `onionvpn-relay status` reads.
    pub control_socket: bool,
    /// The Lightning node that `wallet` requests on the control socket run against (`None`:
    /// they are answered with an error).
    pub wallet: Option<crate::control::WalletAccess>,
    /// TEST HOOK, never set by the binary: the relay misbehaves as the "take payment and
    /// stop" adversary of issue 6. Once a payment for a circuit's hop has arrived, the relay
    /// silently drops every relay cell of that circuit in both directions (DESTROY still
    /// passes), so the circuit stalls. The integration tests use it to check the client's
    /// stall detection.
    pub test_stop_when_paid: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            worker_threads: None,
            publish: true,
            dht_bind: None,
            exit_connect_timeout: Duration::from_secs(10),
            extend_timeout: Duration::from_secs(10),
            channel: ChannelConfig::default(),
            create_queue: 1024,
            shutdown_grace: Duration::from_secs(2),
            pex: publish::PexOptions::default(),
            payments: None,
            control_socket: true,
            wallet: None,
            test_stop_when_paid: false,
        }
    }
}

/// Live counters of a relay.
#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    pub(crate) circuits_open: AtomicU64,
    pub(crate) circuits_total: AtomicU64,
    pub(crate) circuits_refused: AtomicU64,
    pub(crate) circuit_errors: AtomicU64,
    pub(crate) circuits_reclaimed: AtomicU64,
    pub(crate) links_accepted: AtomicU64,
    pub(crate) cells_forward: AtomicU64,
    pub(crate) cells_backward: AtomicU64,
    pub(crate) streams_total: AtomicU64,
    pub(crate) exit_bytes_read: AtomicU64,
    pub(crate) exit_bytes_written: AtomicU64,
    pub(crate) descriptor_puts: AtomicU64,
    pub(crate) circuits_payment_required: AtomicU64,
    pub(crate) refused_rate: AtomicU64,
    pub(crate) refused_cap: AtomicU64,
    pub(crate) refused_handshake: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) last_publication_unix: AtomicU64,
}

/// A snapshot of a relay's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Circuits open now.
    pub circuits_open: u64,
    /// Circuits accepted since start.
    pub circuits_total: u64,
    /// CREATEs refused by a limit (rate, cap) or a failed handshake.
    pub circuits_refused: u64,
    /// Circuits ended by a protocol or crypto error.
    pub circuit_errors: u64,
    /// Circuits killed to bring queued memory under the limit.
    pub circuits_reclaimed: u64,
    /// Links accepted (link handshake done).
    pub links_accepted: u64,
    /// Cells received from the client side.
    pub cells_forward: u64,
    /// Cells sent toward the client.
    pub cells_backward: u64,
    /// Exit streams requested.
    pub streams_total: u64,
    /// Bytes read from destinations (sent to clients).
    pub exit_bytes_read: u64,
    /// Bytes written to destinations (from clients).
    pub exit_bytes_written: u64,
    /// Successful descriptor puts into the DHT.
    pub descriptor_puts: u64,
    /// Circuits destroyed because their use passed what they paid plus the grace.
    pub circuits_payment_required: u64,
    /// CREATEs refused by the per-address creation rate limit.
    pub refused_rate: u64,
    /// CREATEs refused because `limits.max_circuits` circuits were open.
    pub refused_cap: u64,
    /// CREATEs refused by the circuit handshake (bad, replayed or for an unknown key).
    pub refused_handshake: u64,
    /// Link connections refused by the per-address connection limit.
    pub connections_refused: u64,
    /// Unix time of the last successful descriptor put (0: none yet).
    pub last_publication_unix: u64,
}

impl StatsInner {
    fn snapshot(&self) -> RelayStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            circuits_open: g(&self.circuits_open),
            circuits_total: g(&self.circuits_total),
            circuits_refused: g(&self.circuits_refused),
            circuit_errors: g(&self.circuit_errors),
            circuits_reclaimed: g(&self.circuits_reclaimed),
            links_accepted: g(&self.links_accepted),
            cells_forward: g(&self.cells_forward),
            cells_backward: g(&self.cells_backward),
            streams_total: g(&self.streams_total),
            exit_bytes_read: g(&self.exit_bytes_read),
            exit_bytes_written: g(&self.exit_bytes_written),
            descriptor_puts: g(&self.descriptor_puts),
            circuits_payment_required: g(&self.circuits_payment_required),
            refused_rate: g(&self.refused_rate),
            refused_cap: g(&self.refused_cap),
            refused_handshake: g(&self.refused_handshake),
            connections_refused: g(&self.connections_refused),
            last_publication_unix: g(&self.last_publication_unix),
        }
    }
}

/// Client ephemeral keys remembered against replayed CREATEs.
const REPLAY_CAPACITY: usize = 65_536;
/// How long a client ephemeral key is remembered.
const REPLAY_WINDOW: Duration = Duration::from_secs(3600);

/// Per-source and global circuit limits.
struct Limits {
    rate: CircuitCreationLimiter,
    cap: CircuitCap,
    conns: ConnectionLimiter,
}

/// State shared by the relay's tasks.
pub(crate) struct Shared {
    pub(crate) identity: [u8; 32],
    link: LinkSecretKey,
    pub(crate) onion: RwLock<Arc<Vec<OnionSecretKey>>>,
    replay: Mutex<ReplayCache>,
    policy: RelayPolicy,
    pub(crate) exit: Option<Arc<ExitSettings>>,
    pub(crate) chanmgr: ChanMgr,
    pub(crate) extend_timeout: Duration,
    /// The test hook [`RuntimeOptions::test_stop_when_paid`].
    pub(crate) test_stop_when_paid: bool,
    channel: ChannelConfig,
    pub(crate) stats: StatsInner,
    /// Payment routing and the earnings ledger, when the relay is paid.
    pub(crate) payments: Option<Arc<Payments>>,
    limits: Mutex<Limits>,
    quota: Mutex<MemQuota<u64>>,
    circuits: Mutex<HashMap<u64, Arc<Notify>>>,
    next_serial: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Signalled each time a circuit closes (shutdown waits on it).
    closed: Notify,
    /// The last errors, for `status`.
    errors: Mutex<LastErrors>,
    /// When the relay started.
    started: Instant,
    /// When the relay started, unix seconds.
    started_unix: u64,
    /// Turns true once the first descriptor publication was attempted (or publishing is off
    /// or impossible).
    pub(crate) first_publication: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data stays consistent for our uses.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Bookkeeping when a circuit task ends.
    pub(crate) fn circuit_closed(&self, serial: u64) {
        lock(&self.circuits).remove(&serial);
        lock(&self.quota).remove(&serial);
        lock(&self.limits).cap.close();
        self.stats.circuits_open.fetch_sub(1, Ordering::Relaxed);
        self.closed.notify_waiters();
    }

    /// A circuit's queued bytes went from `old` to `new`; kills the circuits holding the
    /// oldest data when the total passes the limit.
    pub(crate) fn quota_update(&self, serial: u64, old: usize, new: usize, now: Instant) {
        let victims = {
            let mut q = lock(&self.quota);
            if new > old {
                q.charge(serial, new - old, now);
            } else {
                q.release(&serial, old - new);
            }
            q.reclaim()
        };
        if victims.is_empty() {
            return;
        }
        let circuits = lock(&self.circuits);
        for v in victims {
            if let Some(kill) = circuits.get(&v) {
                warn!("queued-cell memory over the limit: killing a circuit");
                self.stats
                    .circuits_reclaimed
                    .fetch_add(1, Ordering::Relaxed);
                kill.notify_one();
            }
        }
    }

    /// Remembers an error for `status` (`message` must hold no client or destination address).
    pub(crate) fn record_error(&self, message: &str) {
        lock(&self.errors).record(crate::cli::unix_now(), message);
    }

    /// The status report of this relay now.
    fn status(&self) -> StatusReport {
        let s = self.stats.snapshot();
        let errors = lock(&self.errors).clone();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            identity: onionvpn_directory::IdentityKey(self.identity).to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            exit: self.exit.is_some(),
            circuits_open: s.circuits_open,
            circuits_relayed: s.circuits_total,
            circuits_refused: s.circuits_refused,
            links_accepted: s.links_accepted,
            streams: s.streams_total,
            cells_forward: s.cells_forward,
            cells_backward: s.cells_backward,
            bytes_relayed: s
                .cells_forward
                .saturating_add(s.cells_backward)
                .saturating_mul(CELL_LEN as u64),
            exit_bytes_read: s.exit_bytes_read,
            exit_bytes_written: s.exit_bytes_written,
            msat_per_mib: self.policy.msat_per_mib,
            msat_per_min: self.policy.msat_per_min,
            dht_publications: s.descriptor_puts,
            dht_last_publication: s.last_publication_unix,
            earnings: self.payments.as_ref().and_then(|p| {
                crate::status::Earnings::from_ledger(&p.ledger(), crate::cli::unix_now()).ok()
            }),
            errors_total: errors.total(),
            last_errors: errors.entries(),
        }
    }

    /// The metrics exposition now.
    fn metrics(&self) -> String {
        let info = MetricsInfo {
            now_unix: crate::cli::unix_now(),
            started_unix: self.started_unix,
            msat_per_mib: self.policy.msat_per_mib,
            msat_per_min: self.policy.msat_per_min,
            exit: self.exit.is_some(),
            earnings: self.payments.as_ref().and_then(|p| {
                crate::status::Earnings::from_ledger(&p.ledger(), crate::cli::unix_now()).ok()
            }),
            ledger_entries: self
                .payments
                .as_ref()
                .and_then(|p| p.ledger().entries().ok()),
        };
        crate::metrics::render(&self.stats.snapshot(), &info)
    }

    fn onion_keys(&self) -> Arc<Vec<OnionSecretKey>> {
        self.onion
            .read()
            .map_or_else(|e| e.into_inner().clone(), |g| g.clone())
    }
}

/// A running relay.
pub struct RelayHandle {
    runtime: Option<tokio::runtime::Runtime>,
    or_addr: SocketAddr,
    identity: [u8; 32],
    shared: Arc<Shared>,
    publication: Arc<Publication>,
    shutdown_tx: watch::Sender<bool>,
    grace: Duration,
    metrics_addr: Option<SocketAddr>,
    control_path: Option<PathBuf>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle").finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The link listener actually bound.
    pub fn or_addr(&self) -> SocketAddr {
        self.or_addr
    }

    /// The ed25519 identity public key.
    pub fn identity(&self) -> [u8; 32] {
        self.identity
    }

    /// The current signed, checked descriptor.
    pub fn descriptor(&self) -> Descriptor {
        self.publication.current()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RelayStats {
        self.shared.stats.snapshot()
    }

    /// The earnings ledger, when the relay is paid (read it for totals, per day, circuits
    /// paid).
    pub fn ledger(&self) -> Option<onionvpn_pay::ledger::Ledger> {
        self.shared.payments.as_ref().map(|p| p.ledger())
    }

    /// What `onionvpn-relay status` shows, from this handle.
    pub fn status(&self) -> StatusReport {
        self.shared.status()
    }

    /// The metrics exposition, as the endpoint would serve it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics()
    }

    /// Where the metrics endpoint listens (`None`: `metrics.enabled = false`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The control socket (`None`: not served).
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control_path.as_deref()
    }

    /// Waits until the first descriptor publication was attempted (put and announce, each
    /// done or failed), at most `limit`; true if it was. Immediately true when publishing is
    /// off.
    pub async fn first_publication(&self, limit: Duration) -> bool {
        let mut rx = self.shared.first_publication.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the relay's runtime still runs tasks: a no-op task must complete within
    /// `limit` (the systemd watchdog asks this).
    pub async fn alive(&self, limit: Duration) -> bool {
        let Some(rt) = &self.runtime else {
            return false;
        };
        let t = rt.spawn(async {});
        matches!(tokio::time::timeout(limit, t).await, Ok(Ok(())))
    }

    /// Remembers an error for `status` (from the binary's own start-up work, e.g. the
    /// self-test). `message` must hold no client or destination address.
    pub fn record_error(&self, message: &str) {
        self.shared.record_error(message);
    }

    /// Clean stop, as on SIGTERM: stops accepting, destroys every circuit (both ways), waits
    /// up to the grace period for the DESTROYs to go out, then closes every socket.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        let deadline = Instant::now() + self.grace;
        while self.shared.stats.circuits_open.load(Ordering::Relaxed) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let notified = self.shared.closed.notified();
            // Re-check after registering, so a close in between is not missed.
            if self.shared.stats.circuits_open.load(Ordering::Relaxed) == 0 {
                break;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
        // Give the channel reactors a moment to write the DESTROYs they were handed.
        let _ = tokio::time::timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
        self.shared.chanmgr.clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        info!("relay stopped");
    }

    /// Abrupt stop for tests: aborts every task and closes every socket at once.
    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts a relay from its configuration, with keys under `data_dir`.
pub async fn start_relay(config: Config, data_dir: PathBuf) -> Result<RelayHandle, RelayError> {
    start_relay_with(config, data_dir, RuntimeOptions::default()).await
}

/// [`start_relay`] with runtime options.
pub async fn start_relay_with(
    config: Config,
    data_dir: PathBuf,
    opts: RuntimeOptions,
) -> Result<RelayHandle, RelayError> {
    let now = crate::cli::unix_now();
    let keys = KeyStore::load_or_create_with(&data_dir, config.keys.rotation_policy(), now)?;
    start_relay_with_keys(config, keys, opts).await
}

/// Starts a relay with keys already loaded (the binary loads them in `prepare_run`).
pub async fn start_relay_with_keys(
    config: Config,
    keys: KeyStore,
    opts: RuntimeOptions,
) -> Result<RelayHandle, RelayError> {
    config.validate()?;
    let exit_policy = config.exit_policy()?;
    let network = config.network()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("onionvpn-relay");
    if let Some(n) = opts.worker_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.build().map_err(|source| RelayError::Io {
        context: "starting the relay runtime",
        source,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let grace = opts.shutdown_grace;
    let started = runtime.spawn(async move {
        start_inner(config, keys, opts, exit_policy, network, shutdown_rx).await
    });
    let (or_addr, shared, publication, metrics_addr, control_path) = match started.await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            runtime.shutdown_background();
            return Err(e);
        }
        Err(e) => {
            runtime.shutdown_background();
            return Err(RelayError::Startup(e.to_string()));
        }
    };
    Ok(RelayHandle {
        runtime: Some(runtime),
        or_addr,
        identity: shared.identity,
        shared,
        publication,
        shutdown_tx,
        grace,
        metrics_addr,
        control_path,
    })
}

/// What the start-up task hands back: the bound link address, the shared state, the
/// publication, the metrics address and the control socket path.
type Started = (
    SocketAddr,
    Arc<Shared>,
    Arc<Publication>,
    Option<SocketAddr>,
    Option<PathBuf>,
);

async fn start_inner(
    mut config: Config,
    keys: KeyStore,
    opts: RuntimeOptions,
    exit_policy: onionvpn_directory::ExitPolicy,
    network: onionvpn_directory::Network,
    shutdown: watch::Receiver<bool>,
) -> Result<Started, RelayError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RelayError::Io {
            context: "binding the link listener",
            source,
        })?;
    let or_addr = listener.local_addr().map_err(|source| RelayError::Io {
        context: "reading the bound address",
        source,
    })?;
    let addresses = advertised_addresses(&config, or_addr)?;
    let payments = match &opts.payments {
        Some(setup) => {
            // The descriptor names the node that gets paid.
            config.ln_node_id = Some(setup.rail.node_id().0);
            Some(Arc::new(Payments::open(setup)?))
        }
        None => None,
    };
    let l = &config.limits;
    let seed = rand::random::<u64>();
    let shared = Arc::new(Shared {
        identity: keys.identity_public().0,
        link: LinkSecretKey::from_bytes(*keys.link().to_bytes()),
        onion: RwLock::new(Arc::new(keys.onion().secrets().to_vec())),
        replay: Mutex::new(ReplayCache::new(REPLAY_CAPACITY, REPLAY_WINDOW)),
        policy: RelayPolicy {
            msat_per_mib: config.prices.msat_per_mib,
            msat_per_min: config.prices.msat_per_min,
            grace_kib: config.prices.grace_kib,
            ..RelayPolicy::default()
        },
        exit: config.exit.enabled.then(|| {
            Arc::new(ExitSettings {
                policy: exit_policy.clone(),
                connect_timeout: opts.exit_connect_timeout,
            })
        }),
        chanmgr: ChanMgr::with_policy(
            opts.channel.clone(),
            ExtendPolicy::for_listener(or_addr, config.exit.policy.allow_private_destinations),
        ),
        extend_timeout: opts.extend_timeout,
        test_stop_when_paid: opts.test_stop_when_paid,
        channel: opts.channel.clone(),
        stats: StatsInner::default(),
        payments: payments.clone(),
        limits: Mutex::new(Limits {
            rate: CircuitCreationLimiter::new(l.circuit_rate_config(), seed),
            cap: CircuitCap::new(l.max_circuits),
            conns: ConnectionLimiter::new(l.max_connections_per_address),
        }),
        quota: Mutex::new(MemQuota::new(l.max_queued_bytes())),
        circuits: Mutex::new(HashMap::new()),
        next_serial: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        closed: Notify::new(),
        errors: Mutex::new(LastErrors::default()),
        started: Instant::now(),
        started_unix: crate::cli::unix_now(),
        first_publication: watch::channel(!opts.publish).0,
    });
    let metrics_addr = if config.metrics.enabled {
        let l = crate::metrics::bind(config.metrics.listen)
            .await
            .map_err(|source| RelayError::Io {
                context: "binding the metrics endpoint (metrics.listen)",
                source,
            })?;
        let addr = l.local_addr().map_err(|source| RelayError::Io {
            context: "reading the metrics address",
            source,
        })?;
        let s = shared.clone();
        tokio::spawn(crate::metrics::serve(
            l,
            Arc::new(move || s.metrics()),
            shutdown.clone(),
        ));
        Some(addr)
    } else {
        None
    };
    let control_path = match (opts.control_socket, keys.dir().parent()) {
        (true, Some(data_dir)) => {
            let path = crate::control::socket_path(data_dir);
            match crate::control::bind(&path) {
                Ok(l) => {
                    let s = shared.clone();
                    tokio::spawn(crate::control::serve(
                        l,
                        path.clone(),
                        Arc::new(move || s.status()),
                        opts.wallet.clone(),
                        shutdown.clone(),
                    ));
                    Some(path)
                }
                Err(e @ crate::control::ControlError::InUse { .. }) => {
                    return Err(RelayError::Startup(e.to_string()));
                }
                Err(e) => {
                    warn!("control socket not served, `status` will not work: {e}");
                    shared.record_error("control socket not served: `status` will not work");
                    None
                }
            }
        }
        _ => None,
    };
    let publication = Arc::new(publish::first_descriptor(
        &keys,
        &config,
        &network,
        &exit_policy,
        &addresses,
    )?);
    info!(
        identity = %onionvpn_directory::IdentityKey(shared.identity),
        or_addr = %sensitive_addr(or_addr),
        exit = config.exit.enabled,
        "relay started"
    );
    let (create_tx, create_rx) = mpsc::channel(opts.create_queue);
    tokio::spawn(accept_loop(
        listener,
        shared.clone(),
        create_tx,
        publication.served(),
    ));
    tokio::spawn(create_loop(create_rx, shared.clone()));
    if let Some(p) = payments {
        tokio::spawn(p.run(shutdown.clone()));
    }
    if opts.publish {
        tokio::spawn(publish::publish_loop(
            keys,
            config,
            network,
            exit_policy,
            addresses,
            or_addr.port(),
            opts.dht_bind,
            opts.pex.clone(),
            shared.clone(),
            publication.clone(),
        ));
    }
    Ok((or_addr, shared, publication, metrics_addr, control_path))
}

/// The addresses to publish: the configured ones (a port of 0 means the bound port), or the
/// bound listen address when it is a specific address.
fn advertised_addresses(config: &Config, bound: SocketAddr) -> Result<Vec<SocketAddr>, RelayError> {
    if config.advertised_addresses.is_empty() {
        if bound.ip().is_unspecified() {
            return Err(RelayError::NoAddress(
                "listen is 0.0.0.0 or [::]: set advertised_addresses".into(),
            ));
        }
        return Ok(vec![bound]);
    }
    Ok(config
        .advertised_addresses
        .iter()
        .map(|a| {
            if a.port() == 0 {
                SocketAddr::new(a.ip(), bound.port())
            } else {
                *a
            }
        })
        .collect())
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    creates: mpsc::Sender<IncomingCreate>,
    served: Arc<tokio::sync::RwLock<Served>>,
) {
    let mut shutdown = shared.shutdown_rx();
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            acc = listener.accept() => match acc {
                Ok(v) => v,
                Err(e) => {
                    debug!("accept failed: {e}");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip();
        if let Err(e) = lock(&shared.limits).conns.try_open(ip) {
            shared
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer = %sensitive_addr(peer), "connection refused: {e}");
            continue;
        }
        let shared2 = shared.clone();
        let creates = creates.clone();
        let served = served.clone();
        tokio::spawn(async move {
            handle_connection(sock, &shared2, creates, served).await;
            lock(&shared2.limits).conns.close(ip);
        });
    }
}

/// Serves a descriptor request or runs a link on one accepted connection.
async fn handle_connection(
    sock: TcpStream,
    shared: &Arc<Shared>,
    creates: mpsc::Sender<IncomingCreate>,
    served: Arc<tokio::sync::RwLock<Served>>,
) {
    match tokio::time::timeout(Duration::from_secs(5), is_descriptor_request(&sock)).await {
        Ok(Ok(true)) => {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), serve_descriptor(sock, served)).await;
            return;
        }
        Ok(Ok(false)) => {}
        _ => return,
    }
    let channel = match accept(
        sock,
        shared.identity,
        &shared.link,
        &shared.channel,
        creates,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            debug!("link handshake failed: {e}");
            return;
        }
    };
    shared.stats.links_accepted.fetch_add(1, Ordering::Relaxed);
    // Hold the per-address connection slot while the channel lives.
    let mut shutdown = shared.shutdown_rx();
    while !channel.is_closed() && !*shutdown.borrow() {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Whether the connection starts with the descriptor request magic (it never starts a link
/// handshake: the first frame's length prefix `"OV"` would be far beyond a handshake frame).
async fn is_descriptor_request(sock: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 4];
    loop {
        let n = sock.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != DESCRIPTOR_REQUEST[..n] {
            return Ok(false);
        }
        if n == DESCRIPTOR_REQUEST.len() {
            return Ok(true);
        }
        // A prefix of the magic arrived alone: wait briefly for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Answers one descriptor request (docs/spec.md, "Descriptor request").
async fn serve_descriptor(
    mut sock: TcpStream,
    served: Arc<tokio::sync::RwLock<Served>>,
) -> std::io::Result<()> {
    let mut req = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut sock, &mut req).await?;
    let c = served.read().await.clone();
    let own_len = u16::try_from(c.own.len()).unwrap_or(0);
    let pex_len = u32::try_from(c.pex.len()).unwrap_or(0);
    let mut out = Vec::with_capacity(6 + c.own.len() + c.pex.len());
    out.extend_from_slice(&own_len.to_be_bytes());
    out.extend_from_slice(&c.own[..usize::from(own_len)]);
    out.extend_from_slice(&pex_len.to_be_bytes());
    out.extend_from_slice(&c.pex[..pex_len as usize]);
    sock.write_all(&out).await?;
    sock.shutdown().await
}

/// Takes CREATEs from every link: applies the limits, then starts a circuit task that runs
/// the handshake (on whichever core is free) and carries the circuit.
async fn create_loop(mut rx: mpsc::Receiver<IncomingCreate>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown_rx();
    loop {
        let inc = tokio::select! {
            _ = shutdown.changed() => return,
            inc = rx.recv() => match inc {
                Some(inc) => inc,
                None => return,
            },
        };
        let Some(id) = inc.cell.circ_id() else {
            continue;
        };
        let ip: IpAddr = inc.channel.peer_addr().ip();
        let now = Instant::now();
        let refused = {
            let mut l = lock(&shared.limits);
            match l.rate.on_create(ip, now) {
                Err(e) => Some((e, &shared.stats.refused_rate)),
                Ok(()) => l
                    .cap
                    .try_open()
                    .err()
                    .map(|e| (e, &shared.stats.refused_cap)),
            }
        };
        if let Some((e, by_reason)) = refused {
            debug!("CREATE refused: {e}");
            by_reason.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .circuits_refused
                .fetch_add(1, Ordering::Relaxed);
            inc.channel.destroy(id, DestroyReason::ResourceLimit).await;
            continue;
        }
        tokio::spawn(accept_circuit(shared.clone(), inc, now));
    }
}

/// The client's ephemeral public key `X` of a CREATE body, when its handshake is addressed
/// to `identity` and one of `onion` (the cheap checks the handshake repeats). `None` for
/// anything else: the handshake then fails on its own, with the precise error.
///
/// HDATA layout (docs/spec.md, circuit handshake): `ID (32) || B (32) || X (32) || ...`.
fn create_ephemeral(
    body: &[u8; CELL_BODY_LEN],
    identity: &[u8; 32],
    onion: &[OnionSecretKey],
) -> Option<[u8; KEY_LEN]> {
    let hdata = Create::parse(body).ok()?.hdata;
    let id = hdata.get(..KEY_LEN)?;
    let b = hdata.get(KEY_LEN..2 * KEY_LEN)?;
    let x = hdata.get(2 * KEY_LEN..3 * KEY_LEN)?;
    if id != identity || !onion.iter().any(|k| k.public().0 == b) {
        return None;
    }
    x.try_into().ok()
}

/// Runs the relay side of the circuit handshake for one CREATE body.
///
/// The shared replay cache is locked only to check and remember the client's `X` (a hash
/// lookup); the x25519 work and the AEAD run outside the lock, so handshakes proceed in
/// parallel on every core. `X` is remembered before the handshake is verified: a CREATE
/// whose authentication then fails still burns its `X` (honest clients never reuse one), and
/// two concurrent CREATEs with the same `X` cannot both pass.
fn accept_handshake(
    keys: &RelayKeys<'_>,
    replay: &Mutex<ReplayCache>,
    policy: &RelayPolicy,
    body: &[u8; CELL_BODY_LEN],
    now: Instant,
) -> Result<(RelayCircuit, [u8; CELL_BODY_LEN]), CircError> {
    if let Some(x) = create_ephemeral(body, &keys.identity, keys.onion_keys) {
        lock(replay)
            .check_and_insert(x, now)
            .map_err(|source| CircError::Handshake { hop: 0, source })?;
    }
    // `X` is already in the shared cache (or the handshake is about to fail before its replay
    // check): the handshake's own check-and-insert goes to a cache of its own.
    let mut scratch = ReplayCache::new(1, REPLAY_WINDOW);
    RelayCircuit::accept(&mut rand::rng(), keys, &mut scratch, policy, body, now)
}

/// Runs the circuit handshake for one CREATE, then the circuit.
async fn accept_circuit(shared: Arc<Shared>, inc: IncomingCreate, now: Instant) {
    let IncomingCreate { channel, cell, rx } = inc;
    let Some(id) = cell.circ_id() else {
        lock(&shared.limits).cap.close();
        return;
    };
    let onion = shared.onion_keys();
    let keys = RelayKeys {
        identity: shared.identity,
        onion_keys: &onion,
    };
    let accepted = accept_handshake(&keys, &shared.replay, &shared.policy, cell.body(), now);
    let (circ, created) = match accepted {
        Ok(v) => v,
        Err(e) => {
            debug!("circuit handshake refused: {e}");
            lock(&shared.limits).cap.close();
            shared
                .stats
                .refused_handshake
                .fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .circuits_refused
                .fetch_add(1, Ordering::Relaxed);
            channel.destroy(id, e.destroy_reason()).await;
            return;
        }
    };
    // Route the hop's payments to this circuit before the client can learn its token.
    let billing = match (&shared.payments, circ.terms()) {
        (Some(p), Some(terms)) => Some(Billing::new(*terms, p.register(terms.token), now)),
        _ => None,
    };
    if channel
        .send(Cell::with_body(id, ChanCmd::Created, &created))
        .await
        .is_err()
    {
        if let (Some(p), Some(b)) = (&shared.payments, &billing) {
            p.unregister(&b.token());
        }
        lock(&shared.limits).cap.close();
        return;
    }
    let serial = shared.next_serial.fetch_add(1, Ordering::Relaxed);
    let kill = Arc::new(Notify::new());
    lock(&shared.circuits).insert(serial, kill.clone());
    shared.stats.circuits_open.fetch_add(1, Ordering::Relaxed);
    shared.stats.circuits_total.fetch_add(1, Ordering::Relaxed);
    CircuitTask::new(shared.clone(), serial, channel, id, rx, circ, kill, billing)
        .run()
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use onionvpn_proto::circuit::{ClientCircuit, ClientConfig, HopTarget};
    use onionvpn_proto::crypto::handshake::HandshakeError;
    use onionvpn_proto::ext::PaymentOffer;

    struct Relay {
        identity: [u8; 32],
        onion: Vec<OnionSecretKey>,
        replay: Mutex<ReplayCache>,
        policy: RelayPolicy,
    }

    impl Relay {
        fn new() -> Self {
            Relay {
                identity: [5; 32],
                onion: vec![OnionSecretKey::generate(&mut rand::rng())],
                replay: Mutex::new(ReplayCache::new(16, REPLAY_WINDOW)),
                policy: RelayPolicy {
                    msat_per_mib: 0,
                    msat_per_min: 0,
                    ..RelayPolicy::default()
                },
            }
        }

        fn create(&self) -> [u8; CELL_BODY_LEN] {
            let hop = HopTarget {
                identity: self.identity,
                onion_key: self.onion[0].public(),
                link_key: [6; 32],
                ipv4: None,
                ipv6: None,
                offer: PaymentOffer {
                    msat_per_mib: 0,
                    msat_per_min: 0,
                },
            };
            ClientCircuit::new(&mut rand::rng(), vec![hop], ClientConfig::default())
                .unwrap()
                .1
        }

        fn accept(&self, body: &[u8; CELL_BODY_LEN]) -> Result<(), CircError> {
            let keys = RelayKeys {
                identity: self.identity,
                onion_keys: &self.onion,
            };
            accept_handshake(&keys, &self.replay, &self.policy, body, Instant::now()).map(|_| ())
        }
    }

    #[test]
    fn ephemeral_key_is_read_only_from_a_create_for_this_relay() {
        let r = Relay::new();
        let body = r.create();
        let x = create_ephemeral(&body, &r.identity, &r.onion).unwrap();
        let hdata = Create::parse(&body).unwrap().hdata;
        assert_eq!(&hdata[64..96], &x);
        assert_eq!(create_ephemeral(&body, &[1; 32], &r.onion), None);
        let other = [OnionSecretKey::generate(&mut rand::rng())];
        assert_eq!(create_ephemeral(&body, &r.identity, &other), None);
        assert_eq!(
            create_ephemeral(&[0; CELL_BODY_LEN], &r.identity, &r.onion),
            None
        );
    }

    #[test]
    fn a_replayed_create_is_refused_and_fresh_ones_pass() {
        let r = Relay::new();
        let body = r.create();
        r.accept(&body).unwrap();
        assert_eq!(lock(&r.replay).len(), 1);
        let err = r.accept(&body).unwrap_err();
        assert!(
            matches!(
                err,
                CircError::Handshake {
                    source: HandshakeError::Replay,
                    ..
                }
            ),
            "{err}"
        );
        r.accept(&r.create()).unwrap();
        assert_eq!(lock(&r.replay).len(), 2);
    }

    #[test]
    fn a_create_for_another_relay_keeps_its_precise_error_and_is_not_remembered() {
        let r = Relay::new();
        let mut other = Relay::new();
        other.identity = [8; 32];
        let err = r.accept(&other.create()).unwrap_err();
        assert!(
            matches!(
                err,
                CircError::Handshake {
                    source: HandshakeError::WrongIdentity,
                    ..
                }
            ),
            "{err}"
        );
        other.identity = r.identity;
        let err = r.accept(&other.create()).unwrap_err();
        assert_eq!(err.destroy_reason(), DestroyReason::OnionKeyUnknown);
        assert!(lock(&r.replay).is_empty());
    }

    #[test]
    fn a_tampered_create_burns_its_ephemeral_key() {
        let r = Relay::new();
        let body = r.create();
        let mut bad = body;
        // Flip a bit of the authentication tag area (after ID, B, X).
        bad[4 + 100] ^= 1;
        let err = r.accept(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                CircError::Handshake {
                    source: HandshakeError::ClientAuthFailed,
                    ..
                }
            ),
            "{err}"
        );
        // The genuine CREATE with the same X is now a replay.
        assert!(r.accept(&body).is_err());
    }

    #[test]
    fn concurrent_handshakes_with_one_key_let_exactly_one_through() {
        let r = std::sync::Arc::new(Relay::new());
        let body = r.create();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || r.accept(&body).is_ok())
            })
            .collect();
        let ok = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 1);
    }
}
