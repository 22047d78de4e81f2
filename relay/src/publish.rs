//! Descriptor publication: build and sign the descriptor, serve it on the OR port (the
//! descriptor request of docs/spec/descriptor.md), put it in the DHT as a BEP44 mutable
//! item, announce the OR port under the network's shard infohash, and re-publish on the
//! directory's schedule. Onion-key rotation re-signs and re-publishes at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mainline::Dht;
use onionvpn_directory::descriptor::{LinkKey, LnNodeId, ProtoVersion, DEFAULT_LIFETIME_SECS};
use onionvpn_directory::dht::{unix_now, PublishSchedule, Publisher, Served};
use onionvpn_directory::{
    Descriptor, DescriptorBody, DescriptorError, ExitPolicy, IdentityKey, Network,
    UncheckedDescriptor,
};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::keys::KeyStore;
use crate::runtime::Shared;

/// Protocols a relay of this version speaks (docs/spec/relay-runtime.md): link v1 (id 1) and
/// circuits with relay crypto v1 (id 2).
pub const PROTOCOLS: [ProtoVersion; 2] = [
    ProtoVersion { id: 1, version: 1 },
    ProtoVersion { id: 2, version: 1 },
];

/// How often the publication loop wakes up to check the schedule and key rotation.
const TICK: Duration = Duration::from_secs(60);

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
        // No Lightning node yet (payments are a later issue): all zeros.
        ln_node_id: LnNodeId([0; 33]),
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
    let local = !bootstrap.is_empty()
        && bootstrap.iter().all(|s| {
            s.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
                || s.starts_with("localhost:")
        });
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
    shared: Arc<Shared>,
    publication: Arc<Publication>,
) {
    let mut shutdown = shared.shutdown_rx();
    let bootstrap = config.dht.bootstrap.clone();
    let dht = match tokio::task::spawn_blocking(move || build_dht(&bootstrap, dht_bind)).await {
        Ok(Ok(d)) => d.as_async(),
        Ok(Err(e)) => {
            warn!("DHT node failed to start, descriptor not published: {e}");
            return;
        }
        Err(e) => {
            warn!("DHT start-up task failed: {e}");
            return;
        }
    };
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
            Err(e) => warn!("onion key rotation failed: {e}"),
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
                Err(e) => warn!("descriptor re-signing failed: {e}"),
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
                }
                Err(e) => {
                    debug!("descriptor put failed: {e}");
                    failed = true;
                }
            }
        }
        if announce_due {
            match publisher.announce(announce_port).await {
                Ok(()) => sched.last_announce = Some(now),
                Err(e) => {
                    debug!("announce failed: {e}");
                    failed = true;
                }
            }
        }
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
