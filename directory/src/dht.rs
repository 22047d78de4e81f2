//! The thin async shell: publication into and discovery from the mainline DHT, and the
//! descriptor request served by relays until the link carries it (issue 4).
//!
//! Everything that decides (parsing, checking, seq order, path selection) is sans-IO in the
//! other modules; this module only moves bytes. The DHT sits behind [`DhtBackend`] so that the
//! simulator can put a simulated DHT under the same discovery code.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id, MutableItem, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, Semaphore};

use crate::descriptor::{IdentityKey, MAX_DESCRIPTOR_LEN};
use crate::network::Network;
use crate::pex::{verify_pex, MAX_PEX_LEN};
use crate::relays::{Offered, RelaySet, Source};

/// Re-put the BEP44 item this often (well inside the ~2 h expiry of other implementations).
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(3600);
/// Re-announce under the network infohash this often.
pub const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// Request magic of the descriptor request.
pub const DESCRIPTOR_REQUEST: [u8; 4] = *b"OVQ1";

/// Current unix time in seconds (the shell's only clock read).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Errors of the DHT shell.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// The descriptor exceeds the DHT limit (the DHT would answer with a timeout).
    #[error("descriptor of {len} bytes exceeds {max}")]
    Oversized {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The descriptor's seq does not fit BEP44's i64.
    #[error("seq {0} does not fit i64")]
    Seq(u64),
    /// `put_mutable` failed.
    #[error("put of descriptor failed: {0}")]
    Put(#[from] mainline::errors::PutMutableError),
    /// `announce_peer` failed.
    #[error("announce failed: {0}")]
    Announce(#[from] mainline::errors::PutQueryError),
}

/// Errors fetching a descriptor from a relay.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connect, read or write failed.
    #[error("descriptor fetch from {addr}: {source}")]
    Io {
        /// Relay address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("descriptor fetch from {0} timed out")]
    Timeout(SocketAddr),
    /// A length field exceeds its bound.
    #[error("descriptor response from {0} too long")]
    TooLong(SocketAddr),
}

/// What a relay answers to a descriptor request: its own descriptor and a PEX batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// The relay's own signed descriptor.
    pub own: Vec<u8>,
    /// A PEX batch of descriptors it knows (empty: none).
    pub pex: Vec<u8>,
}

/// The DHT operations discovery needs. Implemented for `mainline`'s [`AsyncDht`]; the simulator
/// implements it over its simulated DHT.
pub trait DhtBackend: Send + Sync {
    /// All peers announced under `infohash` (one whole lookup).
    fn get_peers(&self, infohash: [u8; 20]) -> impl Future<Output = Vec<SocketAddrV4>> + Send;
    /// The most recent BEP44 item under `(key, salt)`: value and seq.
    fn get_descriptor(
        &self,
        key: [u8; 32],
        salt: Vec<u8>,
    ) -> impl Future<Output = Option<(Vec<u8>, i64)>> + Send;
}

impl DhtBackend for AsyncDht {
    async fn get_peers(&self, infohash: [u8; 20]) -> Vec<SocketAddrV4> {
        let mut s = AsyncDht::get_peers(self, Id::from(infohash));
        let mut out = Vec::new();
        while let Some(batch) = s.next().await {
            out.extend(batch);
        }
        out
    }

    async fn get_descriptor(&self, key: [u8; 32], salt: Vec<u8>) -> Option<(Vec<u8>, i64)> {
        self.get_mutable_most_recent(&key, Some(&salt))
            .await
            .map(|item| (item.value().to_vec(), item.seq()))
    }
}

/// `mainline`'s adaptive mode promotes a node that is not firewalled to server mode after
/// 15 min; a client replaces its node before that, so that it never answers DHT requests.
pub const CLIENT_NODE_MAX_AGE: Duration = Duration::from_secs(14 * 60);

/// Settings of a client's DHT node.
#[derive(Debug, Clone)]
pub struct ClientNodeConfig {
    /// `host:port` bootstrap nodes.
    pub bootstrap: Vec<String>,
    /// Address to bind (default 0.0.0.0).
    pub bind: Option<Ipv4Addr>,
    /// Request timeout (300–500 ms on a LAN or test network, about 1 s on the WAN).
    pub request_timeout: Duration,
    /// Replace the node once it is this old ([`CLIENT_NODE_MAX_AGE`]).
    pub max_age: Duration,
}

impl ClientNodeConfig {
    /// Defaults for `bootstrap`: bind 0.0.0.0, 1 s timeout, [`CLIENT_NODE_MAX_AGE`].
    pub fn new(bootstrap: Vec<String>) -> Self {
        Self {
            bootstrap,
            bind: None,
            request_timeout: Duration::from_secs(1),
            max_age: CLIENT_NODE_MAX_AGE,
        }
    }
}

/// Builds a client-mode node: never `server_mode()`, so every request it sends carries BEP43's
/// `ro=1` and it answers no request.
pub fn client_node(cfg: &ClientNodeConfig) -> std::io::Result<AsyncDht> {
    let mut b = Dht::builder();
    b.bootstrap(&cfg.bootstrap)
        .request_timeout(cfg.request_timeout);
    if let Some(ip) = cfg.bind {
        b.bind_address(ip);
    }
    Ok(b.build()?.as_async())
}

/// A client's DHT node that replaces itself (new socket, new id) once older than
/// `max_age`, before `mainline`'s adaptive mode could promote it to server mode. Lookups in
/// flight keep the old node until they end.
#[derive(Debug)]
pub struct ClientDht {
    cfg: ClientNodeConfig,
    node: std::sync::Mutex<(AsyncDht, Instant)>,
    rebuilds: std::sync::atomic::AtomicU64,
}

impl ClientDht {
    /// Builds the first node.
    pub fn new(cfg: ClientNodeConfig) -> std::io::Result<Self> {
        let node = client_node(&cfg)?;
        Ok(Self {
            cfg,
            node: std::sync::Mutex::new((node, Instant::now())),
            rebuilds: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The current node, replaced first when too old (if the replacement cannot be built the
    /// old node goes on serving).
    pub fn node(&self) -> AsyncDht {
        let mut g = self.node.lock().unwrap_or_else(|e| e.into_inner());
        if g.1.elapsed() >= self.cfg.max_age {
            if let Ok(n) = client_node(&self.cfg) {
                *g = (n, Instant::now());
                self.rebuilds
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        g.0.clone()
    }

    /// How many times the node was replaced.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl DhtBackend for ClientDht {
    async fn get_peers(&self, infohash: [u8; 20]) -> Vec<SocketAddrV4> {
        DhtBackend::get_peers(&self.node(), infohash).await
    }

    async fn get_descriptor(&self, key: [u8; 32], salt: Vec<u8>) -> Option<(Vec<u8>, i64)> {
        self.node().get_descriptor(key, salt).await
    }
}

/// How a descriptor is fetched from a relay's address.
pub trait DescriptorFetcher: Send + Sync {
    /// Fetches what the relay at `addr` serves.
    fn fetch(&self, addr: SocketAddr) -> impl Future<Output = Result<Served, FetchError>> + Send;
}

/// Fetches over the plain TCP descriptor request (docs/spec.md, "Descriptor request").
#[derive(Debug, Clone, Copy)]
pub struct TcpFetcher {
    /// Whole-exchange timeout.
    pub timeout: Duration,
}

impl DescriptorFetcher for TcpFetcher {
    async fn fetch(&self, addr: SocketAddr) -> Result<Served, FetchError> {
        match tokio::time::timeout(self.timeout, fetch_inner(addr)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(addr)),
        }
    }
}

async fn fetch_inner(addr: SocketAddr) -> Result<Served, FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    s.write_all(&DESCRIPTOR_REQUEST).await.map_err(io)?;
    let own_len = usize::from(s.read_u16().await.map_err(io)?);
    if own_len > MAX_DESCRIPTOR_LEN {
        return Err(FetchError::TooLong(addr));
    }
    let mut own = vec![0u8; own_len];
    s.read_exact(&mut own).await.map_err(io)?;
    let pex_len = usize::try_from(s.read_u32().await.map_err(io)?).unwrap_or(usize::MAX);
    if pex_len > MAX_PEX_LEN {
        return Err(FetchError::TooLong(addr));
    }
    let mut pex = vec![0u8; pex_len];
    s.read_exact(&mut pex).await.map_err(io)?;
    Ok(Served { own, pex })
}

/// Serves descriptor requests on `listener` until the task is dropped: reads the 4-byte request,
/// answers `u16be(len) ‖ own ‖ u32be(len) ‖ pex`. Bad requests are closed; each connection has
/// 5 s in all.
pub async fn serve_descriptors(listener: TcpListener, content: Arc<RwLock<Served>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            // Out of descriptors, say: wait instead of spinning on the error.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let content = content.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async move {
                let mut req = [0u8; 4];
                s.read_exact(&mut req).await?;
                if req != DESCRIPTOR_REQUEST {
                    return Ok(());
                }
                let c = content.read().await.clone();
                // Lengths that do not fit their fields would desynchronise the reader: serve
                // nothing rather than a truncated length.
                let (Ok(own_len), Ok(pex_len)) =
                    (u16::try_from(c.own.len()), u32::try_from(c.pex.len()))
                else {
                    return Ok(());
                };
                let mut out = Vec::with_capacity(6 + c.own.len() + c.pex.len());
                out.extend_from_slice(&own_len.to_be_bytes());
                out.extend_from_slice(&c.own);
                out.extend_from_slice(&pex_len.to_be_bytes());
                out.extend_from_slice(&c.pex);
                s.write_all(&out).await?;
                s.shutdown().await
            })
            .await;
        });
    }
}

/// Publishes one relay: BEP44 put of its descriptor and announce under its shard.
pub struct Publisher {
    dht: AsyncDht,
    network: Network,
    key: SigningKey,
}

impl Publisher {
    /// A publisher for the relay with identity `key`.
    pub fn new(dht: AsyncDht, network: Network, key: SigningKey) -> Self {
        Self { dht, network, key }
    }

    /// Stores `descriptor` (already signed, seq `seq`) as a BEP44 mutable item under the
    /// identity key with the network's salt. Returns how many nodes stored it.
    pub async fn put_descriptor(&self, descriptor: &[u8], seq: u64) -> Result<usize, DhtError> {
        if descriptor.len() > MAX_DESCRIPTOR_LEN {
            return Err(DhtError::Oversized {
                len: descriptor.len(),
                max: MAX_DESCRIPTOR_LEN,
            });
        }
        let seq = i64::try_from(seq).map_err(|_| DhtError::Seq(seq))?;
        let item = MutableItem::new(self.key.clone(), descriptor, seq, Some(self.network.salt()));
        Ok(self.dht.put_mutable(item, None).await?.stored_at as usize)
    }

    /// Announces `or_port` (on the DHT socket's IP) under this relay's shard infohash.
    pub async fn announce(&self, or_port: u16) -> Result<(), DhtError> {
        let id = IdentityKey::from_signing_key(&self.key);
        let ih = self.network.infohash(self.network.shard_of(&id));
        self.dht.announce_peer(Id::from(ih), Some(or_port)).await?;
        Ok(())
    }
}

/// When a relay must next put and announce (sans-IO; times in unix seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishSchedule {
    /// Last successful put.
    pub last_put: Option<u64>,
    /// Last successful announce.
    pub last_announce: Option<u64>,
}

impl PublishSchedule {
    /// `(put_due, announce_due)` at `now`.
    pub fn due(&self, now: u64) -> (bool, bool) {
        let due = |last: Option<u64>, every: Duration| {
            last.is_none_or(|t| now >= t.saturating_add(every.as_secs()))
        };
        (
            due(self.last_put, REPUBLISH_INTERVAL),
            due(self.last_announce, REANNOUNCE_INTERVAL),
        )
    }
}

/// Discovery limits.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryConfig {
    /// Most `get_peers` rounds.
    pub max_rounds: usize,
    /// Stop after this many consecutive rounds without a new address.
    pub quiet_rounds: usize,
    /// Concurrent DHT lookups (mainline loses packets above ~4 per node).
    pub dht_concurrency: usize,
    /// Concurrent descriptor fetches from relays.
    pub fetch_concurrency: usize,
    /// Overall deadline for one `discover` call.
    pub deadline: Duration,
    /// After the address pass, look up by key in the DHT every known relay whose held copy its
    /// own relay did not serve during this pass (learned through PEX or from the cache, or its
    /// relay did not answer). A copy served by the relay itself during the pass is skipped: the
    /// relay serves its current descriptor, so the DHT cannot hold a higher seq.
    pub refresh_from_dht: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            max_rounds: 12,
            quiet_rounds: 2,
            dht_concurrency: 4,
            fetch_concurrency: 16,
            deadline: Duration::from_secs(30),
            refresh_from_dht: true,
        }
    }
}

/// What a discovery pass did.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryReport {
    /// `get_peers` rounds run.
    pub rounds: usize,
    /// DHT lookups (get_peers and get_mutable).
    pub dht_lookups: usize,
    /// Distinct announced addresses seen.
    pub addresses: usize,
    /// Fetches that returned bytes.
    pub fetched: usize,
    /// Fetches that failed.
    pub fetch_failed: usize,
    /// Descriptor and PEX bytes received over fetches and DHT values.
    pub bytes: usize,
    /// Relays newly learned through PEX.
    pub via_pex: usize,
    /// Relays whose descriptor the DHT lookup by key returned and that verified.
    pub via_dht: usize,
    /// Relays not looked up by key because their relay served them during the pass.
    pub refresh_skipped: usize,
    /// Time from start until the set first held `first_circuit_relays` relays.
    pub time_to_first: Option<Duration>,
    /// Time until the address pass (get_peers rounds, fetches and PEX) ended.
    pub address_pass: Duration,
    /// Total time.
    pub elapsed: Duration,
}

/// Discovery: announced addresses → descriptors fetched from relays (+ their PEX) → refresh by
/// key from the DHT. Every descriptor is checked into `relays`; rejections are counted there.
pub async fn discover<B: DhtBackend, F: DescriptorFetcher + Clone + 'static>(
    dht: &B,
    fetcher: &F,
    relays: &mut RelaySet,
    cfg: &DiscoveryConfig,
    first_circuit_relays: usize,
) -> DiscoveryReport {
    let start = Instant::now();
    let pass_started = unix_now();
    let mut rep = DiscoveryReport::default();
    let network = relays.network().clone();
    let mut seen: HashSet<SocketAddrV4> = HashSet::new();
    let mut quiet = 0;
    let sem = Arc::new(Semaphore::new(cfg.fetch_concurrency.max(1)));
    let note_first = |rep: &mut DiscoveryReport, relays: &RelaySet| {
        if rep.time_to_first.is_none() && relays.len() >= first_circuit_relays {
            rep.time_to_first = Some(start.elapsed());
        }
    };
    while rep.rounds < cfg.max_rounds && quiet < cfg.quiet_rounds && start.elapsed() < cfg.deadline
    {
        rep.rounds += 1;
        let shards: Vec<u16> = (0..network.shards()).collect();
        let mut fresh = BTreeSet::new();
        for chunk in shards.chunks(cfg.dht_concurrency.max(1)) {
            let lookups = chunk.iter().map(|s| dht.get_peers(network.infohash(*s)));
            rep.dht_lookups += chunk.len();
            for peers in join_all(lookups).await {
                for p in peers {
                    if seen.insert(p) {
                        fresh.insert(p);
                    }
                }
            }
        }
        if fresh.is_empty() {
            quiet += 1;
            continue;
        }
        quiet = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for addr in fresh {
            let f = fetcher.clone();
            let sem = sem.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                (addr, f.fetch(SocketAddr::V4(addr)).await)
            });
        }
        while let Some(res) = tasks.join_next().await {
            let Ok((addr, res)) = res else { continue };
            let now = unix_now();
            match res {
                Ok(served) => {
                    rep.fetched += 1;
                    rep.bytes += served.own.len() + served.pex.len();
                    let _ =
                        relays.offer_bytes(&served.own, Source::Relay(SocketAddr::V4(addr)), now);
                    if !served.pex.is_empty() {
                        let mut counters = crate::descriptor::RejectionCounters::default();
                        if let Ok(out) = verify_pex(&served.pex, &network.id(), now, &mut counters)
                        {
                            for d in out.accepted {
                                if relays.insert_checked(d) == Ok(Offered::New) {
                                    rep.via_pex += 1;
                                }
                            }
                        }
                        relays.counters_mut().merge(&counters);
                    }
                }
                Err(_) => rep.fetch_failed += 1,
            }
            note_first(&mut rep, relays);
        }
    }
    rep.addresses = seen.len();
    rep.address_pass = start.elapsed();
    if cfg.refresh_from_dht {
        let keys = relays.unconfirmed_since(pass_started);
        rep.refresh_skipped = relays.len() - keys.len();
        let missed = refresh_pass(
            dht,
            relays,
            &keys,
            cfg.dht_concurrency,
            cfg,
            &mut rep,
            start,
        )
        .await;
        // Lookups lose packets under concurrency: retry the misses once, one at a time.
        if !missed.is_empty() {
            refresh_pass(dht, relays, &missed, 1, cfg, &mut rep, start).await;
        }
        note_first(&mut rep, relays);
    }
    note_first(&mut rep, relays);
    rep.elapsed = start.elapsed();
    rep
}

/// Looks up `keys` in the DHT, `width` at a time; returns the keys that found nothing.
async fn refresh_pass<B: DhtBackend>(
    dht: &B,
    relays: &mut RelaySet,
    keys: &[IdentityKey],
    width: usize,
    cfg: &DiscoveryConfig,
    rep: &mut DiscoveryReport,
    start: Instant,
) -> Vec<IdentityKey> {
    let salt = relays.network().salt().to_vec();
    let mut missed = Vec::new();
    for chunk in keys.chunks(width.max(1)) {
        if start.elapsed() >= cfg.deadline {
            break;
        }
        let lookups = chunk.iter().map(|k| dht.get_descriptor(k.0, salt.clone()));
        rep.dht_lookups += chunk.len();
        let results = join_all(lookups).await;
        let now = unix_now();
        for (k, r) in chunk.iter().zip(results) {
            let Some((value, seq)) = r else {
                missed.push(*k);
                continue;
            };
            rep.bytes += value.len();
            if relays
                .offer_bytes(&value, Source::Dht { key: *k, seq }, now)
                .is_ok()
            {
                rep.via_dht += 1;
            }
        }
    }
    missed
}

/// Runs futures concurrently on the current task and returns their outputs in order.
async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(outs.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}
