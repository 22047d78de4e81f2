//! Descriptor publication: build and sign the descriptor, serve it on the OR port (the
//! descriptor request of docs/spec.md), put it in the DHT as a BEP44 mutable
//! item, announce the OR port under the network's shard infohash, and re-publish on the
//! directory's schedule. Onion-key rotation re-signs and re-publishes at once.
//!
//! The relay's DHT node runs in server mode with the directory's request filter installed, and
//! a background task runs the directory's discovery on that node on a backing-off schedule
//! (30 s while the view changes, up to every 10 min, ±20 % jitter) to fill the PEX batch served
//! with the descriptor: up to [`PEX_SERVE_ENTRIES`] descriptors of other relays that answered
//! this relay's own descriptor request within the last 3 intervals (docs/spec.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mainline::async_dht::AsyncDht;
use mainline::{Dht, ServerSettings};
use onionvpn_directory::descriptor::{LinkKey, LnNodeId, ProtoVersion, DEFAULT_LIFETIME_SECS};
use onionvpn_directory::dht::{
    discover, unix_now, DiscoveryConfig, PublishSchedule, Publisher, Served, TcpFetcher,
};
use onionvpn_directory::filter::{FilterConfig, RelayRequestFilter};
use onionvpn_directory::pex::{
    build_pex, select_pex, PexSchedule, PEX_INTERVAL, PEX_MIN_INTERVAL, PEX_SERVE_ENTRIES,
};
use onionvpn_directory::RelaySet;
use onionvpn_directory::{
    Descriptor, DescriptorBody, DescriptorError, ExitPolicy, IdentityKey, Network,
    UncheckedDescriptor,
};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::keys::KeyStore;
use crate::runtime::Shared;

/// Protocols a relay of this version speaks (docs/spec.md): link v1 (id 1) and
/// circuits with relay crypto v1 (id 2).
pub const PROTOCOLS: [ProtoVersion; 2] = [
    ProtoVersion { id: 1, version: 1 },
    ProtoVersion { id: 2, version: 1 },
];

/// How often the publication loop wakes up to check the schedule and key rotation.
const TICK: Duration = Duration::from_secs(60);

/// How the relay fills the PEX batch it serves.
#[derive(Debug, Clone)]
pub struct PexOptions {
    /// Run the background discovery and serve a PEX batch (needs `publish`: it uses the
    /// relay's DHT node).
    pub enabled: bool,
    /// Shortest wait between passes (after a pass that learned a new relay; also the first).
    pub min_interval: Duration,
    /// Longest wait between passes (the view is stable); the liveness window is 3 × this.
    pub interval: Duration,
    /// Most entries served (≤ 64, the batch's bound).
    pub entries: usize,
    /// Discovery limits of one pass.
    pub discovery: DiscoveryConfig,
}

impl Default for PexOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            min_interval: PEX_MIN_INTERVAL,
            interval: PEX_INTERVAL,
            entries: PEX_SERVE_ENTRIES,
            discovery: DiscoveryConfig {
                // Leave room on the shared DHT node for the relay's own puts and announces.
                dht_concurrency: 2,
                fetch_concurrency: 8,
                deadline: Duration::from_secs(60),
                // Only relays that answer this relay directly are served: no lookups by key.
                refresh_from_dht: false,
                ..DiscoveryConfig::default()
            },
        }
    }
}

/// The relay's current descriptor and what it serves on its OR port.
#[derive(Debug)]
pub struct Publication {
    current: RwLock<Descriptor>,
    served: Arc<tokio::sync::RwLock<Served>>,
}

impl Publication {
    /// The current descriptor.
    pub fn current(&self) -> Descriptor {
        self.current
            .read()
            .map_or_else(|e| e.into_inner().clone(), |g| g.clone())
    }

    /// What the descriptor request answers.
    pub fn served(&self) -> Arc<tokio::sync::RwLock<Served>> {
        self.served.clone()
    }

    async fn replace(&self, d: Descriptor) {
        self.served.write().await.own = d.raw().to_vec();
        match self.current.write() {
            Ok(mut g) => *g = d,
            Err(e) => *e.into_inner() = d,
        }
    }
}

/// Builds, signs and checks the descriptor for `keys` and `config` at `now` with `seq`.
pub fn build_descriptor(
    keys: &KeyStore,
    config: &Config,
    network: &Network,
    exit_policy: &ExitPolicy,
    addresses: &[SocketAddr],
    seq: u64,
    now: u64,
) -> Result<Descriptor, DescriptorError> {
    let body = DescriptorBody {
        network: network.id(),
        identity: keys.identity_public(),
        seq,
        published: now,
        expires: now + DEFAULT_LIFETIME_SECS,
        link_key: LinkKey(keys.link().public()),
        bandwidth: config.advertised_bandwidth,
        prices: config.prices(),
        // The rail's node when the relay is paid; all zeros otherwise.
        ln_node_id: LnNodeId(config.ln_node_id.unwrap_or([0; 33])),
        onion_keys: keys.descriptor_onion_keys(),
        addresses: addresses.to_vec(),
        protocols: PROTOCOLS.to_vec(),
        family: Vec::new(),
        exit_policy: exit_policy.clone(),
    };
    let raw = body.sign(keys.identity())?;
    let id: IdentityKey = keys.identity_public();
    UncheckedDescriptor::parse(&raw)?.check(Some(&id), &network.id(), now)
}

/// The descriptor at start-up.
pub(crate) fn first_descriptor(
    keys: &KeyStore,
    config: &Config,
    network: &Network,
    exit_policy: &ExitPolicy,
    addresses: &[SocketAddr],
) -> Result<Publication, DescriptorError> {
    let now = unix_now();
    let d = build_descriptor(keys, config, network, exit_policy, addresses, now, now)?;
    Ok(Publication {
        served: Arc::new(tokio::sync::RwLock::new(Served {
            own: d.raw().to_vec(),
            pex: Vec::new(),
        })),
        current: RwLock::new(d),
    })
}

/// The DHT node of a relay: server mode (relays are reachable), bound to loopback when every
/// bootstrap node is on loopback (a local test network).
fn build_dht(bootstrap: &[String], bind: Option<Ipv4Addr>) -> std::io::Result<Dht> {
    let mut b = Dht::builder();
    b.server_mode();
    b.bootstrap(bootstrap);
    // mainline's server has no rate limiting of its own.
    b.server_settings(ServerSettings {
        filter: Box::new(RelayRequestFilter::new(FilterConfig::default())),
        ..ServerSettings::default()
    });
    let local = crate::check::local_bootstrap(bootstrap);
    match bind {
        Some(ip) => {
            b.bind_address(ip);
        }
        None if local => {
            b.bind_address(Ipv4Addr::LOCALHOST);
        }
        None => {}
    }
    b.build()
}

/// Publishes on schedule until shutdown; rotates onion keys when due.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish_loop(
    mut keys: KeyStore,
    config: Config,
    network: Network,
    exit_policy: ExitPolicy,
    addresses: Vec<SocketAddr>,
    or_port: u16,
    dht_bind: Option<Ipv4Addr>,
    pex: PexOptions,
    shared: Arc<Shared>,
    publication: Arc<Publication>,
) {
    let mut shutdown = shared.shutdown_rx();
    let bootstrap = config.dht.bootstrap.clone();
    let dht = match tokio::task::spawn_blocking(move || build_dht(&bootstrap, dht_bind)).await {
        Ok(Ok(d)) => d.as_async(),
        Ok(Err(e)) => {
            warn!("DHT node failed to start, descriptor not published: {e}");
            shared.record_error(&format!(
                "DHT node failed to start, descriptor not published: {}",
                e.kind()
            ));
            shared.first_publication.send_replace(true);
            return;
        }
        Err(e) => {
            warn!("DHT start-up task failed: {e}");
            shared.record_error("DHT start-up task failed, descriptor not published");
            shared.first_publication.send_replace(true);
            return;
        }
    };
    if pex.enabled {
        tokio::spawn(pex_loop(
            dht.clone(),
            network.clone(),
            keys.identity_public(),
            publication.served(),
            pex,
            shared.clone(),
        ));
    }
    // The announced port: that of the first IPv4 address published (the DHT is IPv4-only).
    let announce_port = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .map_or(or_port, |a| a.port());
    let publisher = Publisher::new(dht.clone(), network.clone(), keys.identity().clone());
    let mut sched = PublishSchedule::default();
    let mut backoff = Duration::from_secs(1);
    loop {
        let now = unix_now();
        let mut rebuild = false;
        match keys.rotate_if_due(now) {
            Ok(plan) if !plan.is_noop() => {
                info!("onion key rotated");
                let secrets = Arc::new(keys.onion().secrets().to_vec());
                match shared.onion.write() {
                    Ok(mut g) => *g = secrets,
                    Err(e) => *e.into_inner() = secrets,
                }
                rebuild = true;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("onion key rotation failed: {e}");
                shared.record_error(&format!("onion key rotation failed: {e}"));
            }
        }
        let current = publication.current();
        if now >= current.body().published + DEFAULT_LIFETIME_SECS / 2 {
            rebuild = true;
        }
        if rebuild {
            let seq = now.max(current.seq() + 1);
            match build_descriptor(&keys, &config, &network, &exit_policy, &addresses, seq, now) {
                Ok(d) => {
                    publication.replace(d).await;
                    sched.last_put = None;
                }
                Err(e) => {
                    warn!("descriptor re-signing failed: {e}");
                    shared.record_error(&format!("descriptor re-signing failed: {e}"));
                }
            }
        }
        let (put_due, announce_due) = sched.due(now);
        let mut failed = false;
        if put_due {
            let d = publication.current();
            match publisher.put_descriptor(d.raw(), d.seq()).await {
                Ok(n) => {
                    debug!("descriptor stored at {n} DHT nodes");
                    sched.last_put = Some(now);
                    shared.stats.descriptor_puts.fetch_add(1, Ordering::Relaxed);
                    shared
                        .stats
                        .last_publication_unix
                        .store(now, Ordering::Relaxed);
                }
                Err(e) => {
                    debug!("descriptor put failed: {e}");
                    shared.record_error("descriptor put into the DHT failed (will retry)");
                    failed = true;
                }
            }
        }
        if announce_due {
            match publisher.announce(announce_port).await {
                Ok(()) => sched.last_announce = Some(now),
                Err(e) => {
                    debug!("announce failed: {e}");
                    shared.record_error("announce in the DHT failed (will retry)");
                    failed = true;
                }
            }
        }
        shared.first_publication.send_replace(true);
        let wait = if failed {
            let w = backoff;
            backoff = (backoff * 2).min(TICK);
            w
        } else {
            backoff = Duration::from_secs(1);
            TICK
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Discovers the relay's network on its own DHT node on the PEX schedule and serves what it
/// confirmed as the PEX batch, until shutdown.
async fn pex_loop(
    dht: AsyncDht,
    network: Network,
    own: IdentityKey,
    served: Arc<tokio::sync::RwLock<Served>>,
    opts: PexOptions,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown_rx();
    let mut sched = PexSchedule::new(opts.min_interval, opts.interval);
    let live = sched.live_window().as_secs().max(1);
    let fetcher = TcpFetcher {
        timeout: Duration::from_secs(3),
    };
    let mut set = RelaySet::new(network);
    let mut wait = sched.first(&mut rand::rng());
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let before: std::collections::BTreeSet<IdentityKey> =
            set.iter().map(|d| d.identity()).collect();
        // Liveness counts from the pass's start: a slow pass must not age out what it confirmed.
        let live_since = unix_now().saturating_sub(live);
        let rep = discover(&dht, &fetcher, &mut set, &opts.discovery, 1).await;
        let now = unix_now();
        set.expire(now);
        set.forget_unconfirmed(live_since);
        let learned_new = set.iter().any(|d| !before.contains(&d.identity()));
        let batch = {
            let sel = select_pex(&set, &own, live_since, now, opts.entries, &mut rand::rng());
            let n = sel.len();
            if n == 0 {
                Ok((Vec::new(), 0))
            } else {
                build_pex(sel).map(|b| (b, n))
            }
        };
        match batch {
            Ok((b, n)) => {
                served.write().await.pex = b;
                debug!(
                    "PEX pass: {} relays known, {n} served, {} addresses, {} fetched, {:?}",
                    set.len(),
                    rep.addresses,
                    rep.fetched,
                    rep.elapsed
                );
            }
            Err(e) => warn!("PEX batch not built: {e}"),
        }
        wait = sched.after_pass(learned_new, &mut rand::rng());
    }
}
