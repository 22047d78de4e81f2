//! The circuit manager: which circuit carries a new stream, and building circuits.
//!
//! - **Paths** come from the relay set (discovery fills it) through
//!   `onionvpn_directory::path::select_path`: an exit whose policy accepts the target, every
//!   hop within the price cap, the persistent guard first.
//! - **Ahead of demand**: [`MgrConfig::preemptive`] clean circuits (no stream yet) are kept
//!   built, toward the last target's kind of exit, so a new stream rarely waits for a build.
//! - **Retries**: a build that fails or times out marks the hop that did not answer as
//!   failed for [`MgrConfig::failed_relay_ttl`] and is retried on another path, up to
//!   [`MgrConfig::build_attempts`] times.
//! - **Paid before use**: a circuit through charging relays joins the pool (or serves the
//!   stream that asked for it) only once every paid hop has received its first chunk, so a
//!   stream that starts at once cannot outrun the first keysends and be cut by a relay.
//!   First payments that fail or take longer than the payer's `first_payment_timeout`
//!   discard the circuit, note the relay as failed and build another (counted:
//!   [`CircMgr::first_payment_failures`]). Circuits built ahead pay as they are built, so
//!   this usually costs a stream nothing.
//! - **Stalls** ([`crate::stall`]): a circuit whose stream waited for an answer that never
//!   came (or that ended while one waited, after its hops were paid) counts as stalled; the
//!   client cannot tell which hop stopped, so every hop of it is avoided for
//!   [`MgrConfig::stall_avoid`], circuits through them that carry no stream are retired
//!   (their payers would keep paying), they are the last relays a path falls back to, and
//!   the stream retries on another circuit. A relay that takes payment and stops relaying so gets one
//!   chunk from the client, not one per circuit.
//! - **Timeout** learned from observed build times ([`crate::buildtime`]).
//! - **Isolation**: a circuit, once it carried a stream, belongs to that stream's
//!   [`IsolationKey`]; streams with another key never use it.
//! - **Retirement**: new streams stop using a circuit [`MgrConfig::max_dirtiness`] after its
//!   first stream (Tor's `MaxCircuitDirtiness`); it closes once its streams are done. Clean
//!   circuits are replaced after [`MgrConfig::max_clean_age`]. Dead circuits (DESTROY, channel
//!   closed) are dropped and the clean pool refilled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use onionvpn_chan::{ChannelConfig, ChannelHandle};
use onionvpn_directory::descriptor::Prices;
use onionvpn_directory::dht::unix_now;
use onionvpn_directory::path::{select_path, GuardSet, PathError, PathRequest};
use onionvpn_directory::{cache::Cache, policy, Descriptor, RelaySet};
use onionvpn_proto::circuit::{ClientCircuit, ClientConfig as CircConfig, HopTarget};
use onionvpn_proto::crypto::handshake::OnionPublicKey;
use onionvpn_proto::ext::PaymentOffer;
use onionvpn_proto::relaymsg::{Host, Target};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::buildtime::{BuildTimeConfig, BuildTimeEstimator};
use crate::circuit_task::{spawn_circuit, CircuitHandle, CircuitInfo};
use crate::payments::{ClientPayments, FirstPayment};
use crate::socks::IsolationKey;
use crate::stall::StallConfig;

/// Settings of the circuit manager.
#[derive(Debug, Clone)]
pub struct MgrConfig {
    /// Hops per circuit.
    pub hops: usize,
    /// Highest per-hop prices accepted.
    pub price_cap: Prices,
    /// Clean circuits kept built ahead of demand.
    pub preemptive: usize,
    /// New streams stop using a circuit this long after its first stream.
    pub max_dirtiness: Duration,
    /// A clean circuit unused this long is replaced.
    pub max_clean_age: Duration,
    /// Paths tried for one circuit before giving up.
    pub build_attempts: usize,
    /// How long a relay that failed a build is avoided.
    pub failed_relay_ttl: Duration,
    /// When a circuit whose stream waits counts as stalled (the runtime sets `min_timeout`
    /// from the config file's `stall_timeout_s`).
    pub stall: StallConfig,
    /// How long every hop of a stalled circuit is avoided (long: a relay that took a
    /// payment and stopped would take another on the next circuit through it). The runtime
    /// sets it from the config file's `stall_avoid_s`.
    pub stall_avoid: Duration,
    /// Use persistent guards for the first hop.
    pub use_guards: bool,
    /// Build-timeout estimator settings.
    pub buildtime: BuildTimeConfig,
    /// Channel settings.
    pub channel: ChannelConfig,
    /// Circuit state-machine settings.
    pub circuit: CircConfig,
    /// How often maintenance runs (retire, replace, refill).
    pub maintenance_interval: Duration,
}

impl Default for MgrConfig {
    fn default() -> Self {
        MgrConfig {
            hops: 3,
            price_cap: Prices {
                msat_per_mib: crate::config::DEFAULT_MAX_PRICE_MIB,
                msat_per_min: crate::config::DEFAULT_MAX_PRICE_MIN,
            },
            preemptive: 2,
            max_dirtiness: Duration::from_secs(600),
            max_clean_age: Duration::from_secs(3600),
            build_attempts: 4,
            failed_relay_ttl: Duration::from_secs(60),
            stall: StallConfig::default(),
            stall_avoid: Duration::from_secs(3600),
            use_guards: true,
            buildtime: BuildTimeConfig::default(),
            channel: ChannelConfig::default(),
            circuit: CircConfig::default(),
            maintenance_interval: Duration::from_millis(500),
        }
    }
}

/// Why no circuit could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CircMgrError {
    /// No path: too few relays known, or none whose exit policy accepts the target.
    #[error("no path: {0}")]
    NoPath(#[from] PathError),
    /// Every attempt failed; the last failure is given.
    #[error("circuit build failed after {attempts} attempts; last: {last}")]
    BuildFailed {
        /// Attempts made.
        attempts: usize,
        /// What the last attempt hit.
        last: String,
    },
    /// The manager is shutting down.
    #[error("client shutting down")]
    ShuttingDown,
    /// The payment budget is spent: the client no longer pays relays (raise `--budget`).
    #[error("payment budget reached: the client no longer pays relays")]
    BudgetReached,
}

/// A snapshot of one managed circuit (for tests, metrics and the benchmark harness).
#[derive(Debug, Clone)]
pub struct CircuitSummary {
    /// Client-local circuit number.
    pub id: u64,
    /// Hop identities, guard first.
    pub path: Vec<[u8; 32]>,
    /// Isolation group: `None` while clean, else a number per distinct key (not the key).
    pub isolation_group: Option<u64>,
    /// Streams open now.
    pub streams_open: usize,
    /// Streams ever opened.
    pub streams_total: u64,
    /// Whether the circuit is gone.
    pub dead: bool,
    /// Relay cells sent and received.
    pub cells: u64,
    /// Each hop's payment terms (`None`: free hop).
    pub terms: Vec<Option<onionvpn_proto::ext::PaymentTerms>>,
}

struct PoolEntry {
    handle: CircuitHandle,
    exit: Descriptor,
    isolation: Option<(IsolationKey, u64)>,
    built: Instant,
    dirty_since: Option<Instant>,
}

struct State {
    pool: Vec<PoolEntry>,
    guards: GuardSet,
    /// Relays to avoid, until when.
    failed: HashMap<[u8; 32], Instant>,
    /// Hops of stalled circuits, until when: avoided like `failed`, and still when too few
    /// relays are left and the failed ones are tried again (one may take payment and stop).
    stalled: HashMap<[u8; 32], Instant>,
    groups: HashMap<IsolationKey, u64>,
    predicted: Option<Target>,
}

/// The circuit manager. Shared as `Arc<CircMgr>` by the SOCKS server, maintenance and
/// discovery tasks.
pub struct CircMgr {
    cfg: MgrConfig,
    state: Mutex<State>,
    relays: RwLock<RelaySet>,
    channels: tokio::sync::Mutex<HashMap<[u8; 32], ChannelHandle>>,
    buildtime: Mutex<BuildTimeEstimator>,
    key_locks: Mutex<HashMap<IsolationKey, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
    built: watch::Sender<u64>,
    /// Woken when path selection lacks relays: discovery should run now.
    pub(crate) need_relays: Notify,
    refilling: AtomicBool,
    closing: AtomicBool,
    /// Taken (flushed and dropped, releasing the database) by [`CircMgr::close`].
    cache: Mutex<Option<Cache>>,
    /// Paying relays, when the client has a rail.
    payments: Option<Arc<ClientPayments>>,
    /// Relays whose payments kept failing, to avoid in the next paths.
    pay_failed: Arc<Mutex<Vec<[u8; 32]>>>,
    /// Circuits discarded because their first payments failed or timed out.
    first_payment_failures: AtomicU64,
    /// Circuits given up as stalled (their hops then avoided).
    stalled_circuits: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory's view of a stream target (for exit policies).
fn policy_target(t: &Target) -> (policy::Target<'_>, u16) {
    let host = match &t.host {
        Host::Name(n) => policy::Target::Host(n.as_str()),
        Host::V4(a) => policy::Target::Ip(IpAddr::V4(*a)),
        Host::V6(a) => policy::Target::Ip(IpAddr::V6(*a)),
    };
    (host, t.port.get())
}

fn exit_allows(exit: &Descriptor, t: &Target) -> bool {
    let (host, port) = policy_target(t);
    exit.body().exit_policy.allows(&host, port)
}

/// The circuit handshake's view of a hop, from its verified descriptor.
pub fn hop_target(d: &Descriptor, now: u64) -> Option<HopTarget> {
    let b = d.body();
    let onion = d.onion_key_at(now)?;
    Some(HopTarget {
        identity: b.identity.0,
        onion_key: OnionPublicKey(onion.key),
        link_key: b.link_key.0,
        ipv4: d.ipv4(),
        ipv6: b.addresses.iter().find_map(|a| match a {
            SocketAddr::V6(v6) => Some(*v6),
            SocketAddr::V4(_) => None,
        }),
        offer: PaymentOffer {
            msat_per_mib: b.prices.msat_per_mib,
            msat_per_min: b.prices.msat_per_min,
        },
    })
}

/// The exit's largest congestion window a paying client asks for, in DATA cells (~510 KB of
/// cell bodies): what the exit may send past the SENDMEs the client holds back at what it
/// has paid (`ClientCircuit::set_byte_allowance`), so what a hop's grace must cover. Three
/// times the window measured on loopback at full speed (~330 cells); it limits one circuit
/// to ~5 MB/s at a 100 ms round trip.
pub const PAID_WINDOW_CELLS: u32 = 1024;

/// The circuit settings for a path of `hops`: `base`, asking the exit for
/// [`PAID_WINDOW_CELLS`] if the client `pays` and some hop charges by the byte.
pub fn circuit_config(base: &CircConfig, hops: &[HopTarget], pays: bool) -> CircConfig {
    let charged = hops.iter().any(|h| h.offer.msat_per_mib > 0);
    CircConfig {
        window_limit: base
            .window_limit
            .or((pays && charged).then_some(PAID_WINDOW_CELLS)),
        ..base.clone()
    }
}

impl CircMgr {
    /// A manager over `relays` (may be empty: discovery adds to it), with the persisted
    /// `guards` and an optional cache to store new guards and descriptors in.
    pub fn new(cfg: MgrConfig, relays: RelaySet, guards: GuardSet, cache: Option<Cache>) -> Self {
        CircMgr {
            buildtime: Mutex::new(BuildTimeEstimator::new(cfg.buildtime.clone())),
            cfg,
            state: Mutex::new(State {
                pool: Vec::new(),
                guards,
                failed: HashMap::new(),
                stalled: HashMap::new(),
                groups: HashMap::new(),
                predicted: None,
            }),
            relays: RwLock::new(relays),
            channels: tokio::sync::Mutex::new(HashMap::new()),
            key_locks: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            built: watch::channel(0).0,
            need_relays: Notify::new(),
            refilling: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            cache: Mutex::new(cache),
            payments: None,
            pay_failed: Arc::new(Mutex::new(Vec::new())),
            first_payment_failures: AtomicU64::new(0),
            stalled_circuits: AtomicU64::new(0),
        }
    }

    /// Pays the hops of every circuit built from now on through `payments`.
    pub fn with_payments(mut self, payments: Arc<ClientPayments>) -> Self {
        self.payments = Some(payments);
        self
    }

    /// The client's payment state, if it pays.
    pub fn payments(&self) -> Option<&Arc<ClientPayments>> {
        self.payments.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &MgrConfig {
        &self.cfg
    }

    /// Adds checked descriptors (from discovery); returns how many relays are known.
    pub fn add_relays<'a>(&self, descs: impl IntoIterator<Item = &'a Descriptor>) -> usize {
        let mut set = self.relays.write().unwrap_or_else(|e| e.into_inner());
        for d in descs {
            if set.insert_checked(d.clone()).is_ok() {
                if let Some(c) = lock(&self.cache).as_ref() {
                    let _ = c.store_descriptor(d);
                }
            }
        }
        set.expire(unix_now());
        set.len()
    }

    /// Relays known now.
    pub fn relay_count(&self) -> usize {
        self.relays.read().map_or(0, |s| s.len())
    }

    /// The build timeout the next build gets.
    pub fn build_timeout(&self) -> Duration {
        lock(&self.buildtime).timeout()
    }

    /// A snapshot of the build-timeout estimator (samples, quantiles, success and timeout
    /// counts) behind [`CircMgr::build_timeout`].
    pub fn build_times(&self) -> BuildTimeEstimator {
        lock(&self.buildtime).clone()
    }

    /// Circuits discarded since the start because their first payments failed or did not
    /// succeed in time (each was replaced by another build).
    pub fn first_payment_failures(&self) -> u64 {
        self.first_payment_failures.load(Ordering::Relaxed)
    }

    /// Circuits given up as stalled since the start (see [`crate::stall`]); every hop of each
    /// is avoided for [`MgrConfig::stall_avoid`].
    pub fn stalled_circuits(&self) -> u64 {
        self.stalled_circuits.load(Ordering::Relaxed)
    }

    /// Circuits built (and, if paid, paid their first chunks) since the start.
    pub fn circuits_built(&self) -> u64 {
        *self.built.borrow()
    }

    /// Waits until at least `n` circuits were built since the start.
    pub async fn wait_built(&self, n: u64) {
        let mut rx = self.built.subscribe();
        let _ = rx.wait_for(|b| *b >= n).await;
    }

    /// A snapshot of the managed circuits.
    pub fn circuits(&self) -> Vec<CircuitSummary> {
        let st = lock(&self.state);
        st.pool
            .iter()
            .map(|e| {
                let i: &CircuitInfo = e.handle.info();
                CircuitSummary {
                    id: i.id,
                    path: i.path.clone(),
                    isolation_group: e.isolation.as_ref().map(|(_, g)| *g),
                    streams_open: i.streams_open(),
                    streams_total: i.streams_total(),
                    dead: e.handle.is_dead(),
                    cells: i.cells(),
                    terms: i.terms(),
                }
            })
            .collect()
    }

    /// Stops building and drops every circuit (their tasks send DESTROY).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        lock(&self.state).pool.clear();
        if let Some(c) = lock(&self.cache).take() {
            if let Err(e) = c.flush() {
                warn!("flushing the relay cache: {e}");
            }
        }
    }

    fn key_lock(&self, key: &IsolationKey) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.key_locks)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// A circuit for a stream to `target` isolated by `key`: an open circuit of that key
    /// whose exit accepts the target, else a clean one (which then belongs to the key), else
    /// a new one.
    pub async fn get_circuit(
        self: &Arc<Self>,
        key: &IsolationKey,
        target: &Target,
    ) -> Result<CircuitHandle, CircMgrError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(CircMgrError::ShuttingDown);
        }
        if self.payments.as_ref().is_some_and(|p| p.budget_reached()) {
            return Err(CircMgrError::BudgetReached);
        }
        let key_lock = self.key_lock(key);
        let _serialised = key_lock.lock().await;
        let now = Instant::now();
        let took_clean = {
            let mut st = lock(&self.state);
            st.predicted = Some(target.clone());
            let max_dirty = self.cfg.max_dirtiness;
            if let Some(e) = st.pool.iter().find(|e| {
                e.isolation.as_ref().is_some_and(|(k, _)| k == key)
                    && !e.handle.is_dead()
                    && e.dirty_since
                        .is_none_or(|t| now.duration_since(t) < max_dirty)
                    && exit_allows(&e.exit, target)
            }) {
                return Ok(e.handle.clone());
            }
            let group = Self::group_of(&mut st, key);
            match st.pool.iter_mut().find(|e| {
                e.isolation.is_none() && !e.handle.is_dead() && exit_allows(&e.exit, target)
            }) {
                Some(e) => {
                    e.isolation = Some((key.clone(), group));
                    e.dirty_since = Some(now);
                    Some(e.handle.clone())
                }
                None => None,
            }
        };
        if let Some(h) = took_clean {
            self.spawn_refill();
            return Ok(h);
        }
        let (handle, exit) = self.build_circuit(Some(target)).await?;
        let mut st = lock(&self.state);
        let group = Self::group_of(&mut st, key);
        st.pool.push(PoolEntry {
            handle: handle.clone(),
            exit,
            isolation: Some((key.clone(), group)),
            built: Instant::now(),
            dirty_since: Some(Instant::now()),
        });
        drop(st);
        self.spawn_refill();
        Ok(handle)
    }

    fn group_of(st: &mut State, key: &IsolationKey) -> u64 {
        let next = st.groups.len() as u64 + 1;
        *st.groups.entry(key.clone()).or_insert(next)
    }

    /// Builds one circuit toward an exit accepting `target` (any exit if `None`), retrying
    /// other paths on failure. The circuit is not added to the pool.
    pub async fn build_circuit(
        &self,
        target: Option<&Target>,
    ) -> Result<(CircuitHandle, Descriptor), CircMgrError> {
        let mut last = String::from("no attempt");
        let attempts = self.cfg.build_attempts.max(1);
        for attempt in 0..attempts {
            if self.closing.load(Ordering::Relaxed) {
                return Err(CircMgrError::ShuttingDown);
            }
            match self.build_once(target).await {
                Ok(x) => return Ok(x),
                Err(Attempt::NoPath(e)) => {
                    self.need_relays.notify_one();
                    last = e.to_string();
                    if attempt + 1 == attempts {
                        return Err(CircMgrError::NoPath(e));
                    }
                    // Discovery may be filling the relay set.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(Attempt::Failed(why)) => {
                    debug!("circuit build attempt {attempt} failed: {why}");
                    last = why;
                }
                Err(Attempt::Budget) => return Err(CircMgrError::BudgetReached),
            }
        }
        Err(CircMgrError::BuildFailed { attempts, last })
    }

    fn choose_path(&self, target: Option<&Target>) -> Result<(Vec<Descriptor>, bool), PathError> {
        let now = unix_now();
        let relays = self.relays.read().unwrap_or_else(|e| e.into_inner());
        let mut st = lock(&self.state);
        let until = Instant::now() + self.cfg.failed_relay_ttl;
        for id in lock(&self.pay_failed).drain(..) {
            avoid_until(&mut st.failed, id, until);
        }
        self.note_stalls(&mut st);
        let at = Instant::now();
        st.failed.retain(|_, until| *until > at);
        st.stalled.retain(|_, until| *until > at);
        let all = relays.usable(now);
        let not_stalled: Vec<&Descriptor> = all
            .iter()
            .copied()
            .filter(|d| !st.stalled.contains_key(&d.identity().0))
            .collect();
        let healthy: Vec<&Descriptor> = not_stalled
            .iter()
            .copied()
            .filter(|d| !st.failed.contains_key(&d.identity().0))
            .collect();
        let req = PathRequest {
            hops: self.cfg.hops,
            target: target.map(policy_target),
            price_cap: Some(self.cfg.price_cap),
            use_guards: self.cfg.use_guards,
        };
        let mut rng = rand::rng();
        // Too few healthy relays: the failed ones may have recovered; the hops of stalled
        // circuits are tried again only if no path exists without them.
        let mut path = select_path(&healthy, &req, &mut st.guards, now, &mut rng);
        if path.is_err() && healthy.len() < not_stalled.len() {
            path = select_path(&not_stalled, &req, &mut st.guards, now, &mut rng);
        }
        if path.is_err() && not_stalled.len() < all.len() {
            path = select_path(&all, &req, &mut st.guards, now, &mut rng);
        }
        let path = path?;
        let hops = path.hops.iter().map(|d| (*d).clone()).collect();
        Ok((hops, path.new_guard))
    }

    async fn channel_to(&self, d: &Descriptor) -> Result<ChannelHandle, String> {
        let id = d.identity().0;
        let mut chans = self.channels.lock().await;
        if let Some(c) = chans.get(&id) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        chans.remove(&id);
        let addr = d
            .body()
            .addresses
            .first()
            .copied()
            .ok_or_else(|| "guard has no address".to_owned())?;
        let c = onionvpn_chan::connect(addr, id, d.body().link_key.0, &self.cfg.channel)
            .await
            .map_err(|e| format!("channel to the first hop: {e}"))?;
        chans.insert(id, c.clone());
        Ok(c)
    }

    fn mark_failed(&self, id: [u8; 32]) {
        let until = Instant::now() + self.cfg.failed_relay_ttl;
        avoid_until(&mut lock(&self.state).failed, id, until);
    }

    /// Avoids every hop of each stalled circuit in the pool for [`MgrConfig::stall_avoid`],
    /// and retires the circuits through them that carry no stream (each may pay a hop that
    /// stopped).
    fn note_stalls(&self, st: &mut State) {
        let until = Instant::now() + self.cfg.stall_avoid;
        let mut blamed = Vec::new();
        for e in &st.pool {
            let info = e.handle.info();
            if info.stalled() {
                blamed.extend_from_slice(&info.path);
                self.stalled_circuits.fetch_add(1, Ordering::Relaxed);
            }
        }
        if blamed.is_empty() {
            return;
        }
        for id in &blamed {
            avoid_until(&mut st.stalled, *id, until);
        }
        // Circuits through them that carry no stream now go too: an idle circuit's payer
        // would keep paying a hop that stopped relaying (the per-minute price, the next
        // chunk). One that carries a stream is evidently served: it runs its course.
        for e in &st.pool {
            let info = e.handle.info();
            let idle = e.isolation.is_none() || info.streams_open() == 0;
            if idle && info.path.iter().any(|h| blamed.contains(h)) {
                info.retire();
            }
        }
        debug!(
            relays = blamed.len(),
            "a circuit stalled: avoiding its hops"
        );
        // Marked: dropped from the pool now so they are not counted again.
        st.pool.retain(|e| !e.handle.info().stalled());
    }

    async fn build_once(
        &self,
        target: Option<&Target>,
    ) -> Result<(CircuitHandle, Descriptor), Attempt> {
        let started = Instant::now();
        let (path, new_guard) = self.choose_path(target).map_err(Attempt::NoPath)?;
        if new_guard {
            let guards = lock(&self.state).guards.clone();
            if let Some(c) = lock(&self.cache).as_ref() {
                let _ = c.store_guards(&guards);
            }
        }
        let now = unix_now();
        let hops: Vec<HopTarget> = path
            .iter()
            .map(|d| hop_target(d, now))
            .collect::<Option<_>>()
            .ok_or_else(|| Attempt::Failed("a hop has no valid onion key".into()))?;
        let ids: Vec<[u8; 32]> = path.iter().map(|d| d.identity().0).collect();
        let exit = path
            .last()
            .cloned()
            .ok_or_else(|| Attempt::Failed("empty path".into()))?;
        let timeout = self.build_timeout();
        let first = &path[0];
        let chan = match tokio::time::timeout(timeout, self.channel_to(first)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.mark_failed(ids[0]);
                return Err(Attempt::Failed(e));
            }
            Err(_) => {
                self.mark_failed(ids[0]);
                lock(&self.buildtime).record_timeout(timeout);
                return Err(Attempt::Failed("channel to the first hop timed out".into()));
            }
        };
        let (circ_id, rx) = chan
            .open_circuit()
            .await
            .map_err(|e| Attempt::Failed(format!("open circuit: {e}")))?;
        let (circ, create) = {
            let mut rng = rand::rng();
            let config = circuit_config(&self.cfg.circuit, &hops, self.payments.is_some());
            ClientCircuit::new(&mut rng, hops, config)
                .map_err(|e| Attempt::Failed(format!("circuit state: {e}")))?
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (handle, build_rx) = spawn_circuit(
            id,
            ids.clone(),
            circ,
            create,
            chan,
            circ_id,
            rx,
            started,
            self.cfg.stall.clone(),
        );
        let remaining = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, build_rx).await {
            Ok(Ok(Ok(took))) => {
                lock(&self.buildtime).record_success(took);
                if let Some(p) = &self.payments {
                    let nodes: Vec<[u8; 33]> = path.iter().map(|d| d.body().ln_node_id.0).collect();
                    let info = handle.info().clone();
                    let failed = self.pay_failed.clone();
                    let ids2 = ids.clone();
                    let info2 = info.clone();
                    let on_rebuild = move |hop: usize| {
                        if let Some(id) = ids2.get(hop) {
                            lock(&failed).push(*id);
                        }
                        // New streams go to another circuit; this one ends with its streams.
                        info2.retire();
                    };
                    match p.start(info.clone(), &nodes, on_rebuild) {
                        // Dropping the handle ends the task, which destroys the circuit.
                        Err(e) => {
                            return Err(Attempt::Failed(format!("cannot pay this path: {e}")))
                        }
                        Ok(None) => {}
                        Ok(Some(first)) => {
                            self.await_first_payments(
                                &info,
                                &ids,
                                first,
                                p.first_payment_timeout(),
                            )
                            .await?;
                        }
                    }
                }
                self.built.send_modify(|b| *b += 1);
                Ok((handle, exit))
            }
            Ok(Ok(Err(f))) => {
                if let Some(id) = ids.get(f.hops_built.min(ids.len() - 1)) {
                    self.mark_failed(*id);
                }
                Err(Attempt::Failed(format!(
                    "hop {} did not join: {}",
                    f.hops_built, f.error
                )))
            }
            Ok(Err(_)) => Err(Attempt::Failed("circuit task ended".into())),
            Err(_) => {
                let k = handle.info().hops_built();
                if let Some(id) = ids.get(k.min(ids.len() - 1)) {
                    self.mark_failed(*id);
                }
                lock(&self.buildtime).record_timeout(timeout);
                // Dropping the handle ends the task, which destroys the circuit.
                Err(Attempt::Failed(format!(
                    "build timed out after {timeout:?} at hop {k}"
                )))
            }
        }
    }

    /// Waits for a new circuit's first payments. On anything but success the circuit is
    /// taken out of use (its payment task stops; dropping the handle destroys it), the relay
    /// not paid is avoided by the next paths, and the failure is counted.
    async fn await_first_payments(
        &self,
        info: &CircuitInfo,
        ids: &[[u8; 32]],
        first: tokio::sync::oneshot::Receiver<FirstPayment>,
        timeout: Duration,
    ) -> Result<(), Attempt> {
        let started = Instant::now();
        // The payer enforces `timeout` itself; this bound only guards against a task that
        // never answers.
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(1), first).await;
        let (hop, why) = match outcome {
            Ok(Ok(FirstPayment::Paid)) => {
                debug!(
                    circuit = info.id,
                    took_ms = started.elapsed().as_millis() as u64,
                    "first payments landed"
                );
                return Ok(());
            }
            Ok(Ok(FirstPayment::BudgetReached)) => {
                info.retire();
                return Err(Attempt::Budget);
            }
            Ok(Ok(FirstPayment::Failed { hop })) => (Some(hop), "failed"),
            Ok(Ok(FirstPayment::TimedOut { hop })) => (Some(hop), "timed out"),
            Ok(Err(_)) => (None, "ended with the circuit"),
            Err(_) => (None, "got no answer"),
        };
        info.retire();
        let n = self.first_payment_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(id) = hop.and_then(|h| ids.get(h)) {
            lock(&self.pay_failed).push(*id);
        }
        warn!(
            circuit = info.id,
            hop,
            discarded = n,
            "first payments {why}: circuit discarded, building another"
        );
        Err(Attempt::Failed(format!("first payments {why}")))
    }

    fn spawn_refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.refill().await;
            me.refilling.store(false, Ordering::Release);
        });
    }

    /// Builds clean circuits until [`MgrConfig::preemptive`] are ready.
    async fn refill(&self) {
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            let (clean, predicted) = {
                let st = lock(&self.state);
                let clean = st
                    .pool
                    .iter()
                    .filter(|e| e.isolation.is_none() && !e.handle.is_dead())
                    .count();
                (clean, st.predicted.clone())
            };
            if clean >= self.cfg.preemptive {
                return;
            }
            match self.build_circuit(predicted.as_ref()).await {
                Ok((handle, exit)) => lock(&self.state).pool.push(PoolEntry {
                    handle,
                    exit,
                    isolation: None,
                    built: Instant::now(),
                    dirty_since: None,
                }),
                Err(e) => {
                    debug!("building a circuit ahead of demand failed: {e}");
                    return;
                }
            }
        }
    }

    /// One maintenance pass: drop dead circuits, retire old ones, refill the clean pool.
    pub fn maintain(self: &Arc<Self>) {
        let now = Instant::now();
        {
            let mut st = lock(&self.state);
            self.note_stalls(&mut st);
            let before = st.pool.len();
            let max_dirty = self.cfg.max_dirtiness;
            let max_clean = self.cfg.max_clean_age;
            st.pool.retain(|e| {
                if e.handle.is_dead() {
                    return false;
                }
                match e.dirty_since {
                    Some(t) => now.duration_since(t) < max_dirty,
                    None => now.duration_since(e.built) < max_clean,
                }
            });
            if st.pool.len() != before {
                debug!("retired {} circuits", before - st.pool.len());
            }
        }
        lock(&self.key_locks).retain(|_, l| Arc::strong_count(l) > 1);
        self.spawn_refill();
    }

    /// Runs [`CircMgr::maintain`] every [`MgrConfig::maintenance_interval`] until closed.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.maintenance_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.closing.load(Ordering::Relaxed) {
            tick.tick().await;
            self.maintain();
        }
    }
}

/// Avoids relay `id` until `until` (or longer, if it already is).
fn avoid_until(failed: &mut HashMap<[u8; 32], Instant>, id: [u8; 32], until: Instant) {
    let e = failed.entry(id).or_insert(until);
    *e = (*e).max(until);
}

enum Attempt {
    NoPath(PathError),
    Failed(String),
    /// The budget cannot pay the circuit's first chunks: no other path helps.
    Budget,
}

impl Drop for CircMgr {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.cache).as_ref() {
            if let Err(e) = c.flush() {
                warn!("flushing the relay cache: {e}");
            }
        }
    }
}
