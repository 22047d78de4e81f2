#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Publication and discovery on `mainline`'s in-process testnet (loopback).
//! The tests share one lock so that only one testnet runs at a time on the 2-core CI machine.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, MutableItem, Testnet};
use onionvpn_directory::cache::Cache;
use onionvpn_directory::dht::{
    discover, serve_descriptors, unix_now, DhtBackend, DiscoveryConfig, Publisher, Served,
    TcpFetcher,
};
use onionvpn_directory::path::{select_path, PathRequest};
use onionvpn_directory::pex::build_pex;
use onionvpn_directory::{
    Descriptor, IdentityKey, Network, NetworkKey, RelaySet, UncheckedDescriptor,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::sync::{RwLock, Semaphore};

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Relay {
    dht: Option<AsyncDht>,
    desc: Descriptor,
    served: Arc<RwLock<Served>>,
    _task: tokio::task::JoinHandle<()>,
}

fn dht_node(boot: &[String], server: bool, timeout_ms: u64) -> AsyncDht {
    let mut b = Dht::builder();
    if server {
        b.server_mode();
    }
    b.bootstrap(boot)
        .bind_address(Ipv4Addr::LOCALHOST)
        .request_timeout(Duration::from_millis(timeout_ms));
    b.build().unwrap().as_async()
}

/// Starts `count` relays (ids from `first`), publishes and announces them all at once, and gives
/// each a PEX batch of the next `pex` relays in the ring (what it would have learned).
async fn start_relays(
    boot: &[String],
    net: &Network,
    first: u32,
    count: u32,
    pex: usize,
) -> Vec<Relay> {
    start_relays_with(boot, net, first, count, pex, 0).await
}

/// [`start_relays`] where the last `unannounced` relays put their descriptor but do not announce
/// (a client can learn them only through PEX, then refresh them by key).
async fn start_relays_with(
    boot: &[String],
    net: &Network,
    first: u32,
    count: u32,
    pex: usize,
    unannounced: u32,
) -> Vec<Relay> {
    let now = unix_now();
    let mut relays = Vec::new();
    let mut keys: Vec<SigningKey> = Vec::new();
    for i in first..first + count {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let b = common::body(
            i,
            net,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            now,
        );
        let desc = UncheckedDescriptor::parse(&common::signed(i, &b))
            .unwrap()
            .check(None, &net.id(), now)
            .unwrap();
        let served = Arc::new(RwLock::new(Served {
            own: desc.raw().to_vec(),
            pex: Vec::new(),
        }));
        let task = tokio::spawn(serve_descriptors(listener, served.clone()));
        relays.push(Relay {
            dht: Some(dht_node(boot, true, 500)),
            desc,
            served,
            _task: task,
        });
        keys.push(common::key(i));
    }
    let mut jobs = tokio::task::JoinSet::new();
    for (j, (r, k)) in relays.iter().zip(keys).enumerate() {
        let p = Publisher::new(r.dht.clone().unwrap(), net.clone(), k);
        let raw = r.desc.raw().to_vec();
        let seq = r.desc.seq();
        let port = r.desc.body().addresses[0].port();
        let announce = (j as u32) < count - unannounced;
        jobs.spawn(async move {
            for _ in 0..3 {
                if p.put_descriptor(&raw, seq).await.is_ok()
                    && (!announce || p.announce(port).await.is_ok())
                {
                    return true;
                }
            }
            false
        });
    }
    assert!(
        jobs.join_all().await.into_iter().all(|ok| ok),
        "a relay failed to publish"
    );
    let n = relays.len();
    for i in 0..n {
        let known: Vec<&Descriptor> = (1..=pex.min(n - 1))
            .map(|d| &relays[(i + d) % n].desc)
            .collect();
        relays[i].served.write().await.pex = build_pex(known).unwrap();
    }
    relays
}

fn cfg() -> DiscoveryConfig {
    DiscoveryConfig {
        deadline: Duration::from_secs(20),
        ..DiscoveryConfig::default()
    }
}

async fn fresh_client_discovers(
    boot: &[String],
    net: &Network,
    refresh: bool,
) -> (RelaySet, onionvpn_directory::dht::DiscoveryReport) {
    let client = dht_node(boot, false, 300);
    client.bootstrapped().await;
    let mut set = RelaySet::new(net.clone());
    let c = DiscoveryConfig {
        refresh_from_dht: refresh,
        ..cfg()
    };
    let rep = discover(
        &client,
        &TcpFetcher {
            timeout: Duration::from_secs(2),
        },
        &mut set,
        &c,
        3,
    )
    .await;
    (set, rep)
}

fn ids(v: &[Relay]) -> Vec<IdentityKey> {
    let mut x: Vec<_> = v.iter().map(|r| r.desc.identity()).collect();
    x.sort();
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_relays_discovered_and_verified_also_with_30pct_dht_nodes_killed() {
    let _g = LOCK.lock().await;
    let mut testnet = Testnet::builder(20).build().unwrap();
    let net = Network::main();
    let mut relays = start_relays(&testnet.bootstrap, &net, 0, 50, 5).await;

    let (set, rep) = fresh_client_discovers(&testnet.bootstrap, &net, true).await;
    let found: Vec<_> = set.iter().map(|d| d.identity()).collect();
    assert_eq!(found, ids(&relays), "report {rep:?}");
    // Every relay served its own descriptor during the pass: no lookup by key is needed.
    assert_eq!(rep.refresh_skipped, 50, "report {rep:?}");
    assert_eq!(rep.via_dht, 0);
    assert_eq!(rep.dht_lookups, rep.rounds, "only get_peers lookups");
    assert_eq!(set.counters().total(), 0);
    for (d, r) in set.iter().zip({
        let mut v: Vec<_> = relays.iter().collect();
        v.sort_by_key(|r| r.desc.identity());
        v
    }) {
        assert_eq!(d.raw(), r.desc.raw());
    }

    // Kill 30 % of the 70 DHT nodes: 6 testnet nodes and the DHT nodes of 15 relays (which keep
    // serving their descriptors on their OR port).
    let killed_boot: Vec<String> = testnet.bootstrap.drain(..6).collect();
    testnet.nodes.drain(..6);
    for r in relays.iter_mut().step_by(3).take(15) {
        r.dht = None;
    }
    assert!(killed_boot.iter().all(|a| !testnet.bootstrap.contains(a)));
    let (set, rep) = fresh_client_discovers(&testnet.bootstrap, &net, false).await;
    let found: Vec<_> = set.iter().map(|d| d.identity()).collect();
    assert_eq!(found, ids(&relays), "after kill: report {rep:?}");
    assert_eq!(set.counters().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_learned_only_through_pex_are_refreshed_by_key_from_the_dht() {
    let _g = LOCK.lock().await;
    let testnet = Testnet::builder(12).build().unwrap();
    let net = Network::main();
    // 12 relays, the last 4 not announced; each serves the next 4 in the ring through PEX.
    let relays = start_relays_with(&testnet.bootstrap, &net, 400, 12, 4, 4).await;
    // One unannounced relay re-signs with a higher seq and puts it in the DHT only: the PEX
    // copies others serve are now stale.
    let last = relays.last().unwrap();
    let mut newer = last.desc.body().clone();
    newer.seq += 1;
    let newer = common::checked(411, &newer, &net, unix_now());
    Publisher::new(last.dht.clone().unwrap(), net.clone(), common::key(411))
        .put_descriptor(newer.raw(), newer.seq())
        .await
        .unwrap();

    let (set, rep) = fresh_client_discovers(&testnet.bootstrap, &net, true).await;
    assert_eq!(
        set.iter().map(|d| d.identity()).collect::<Vec<_>>(),
        ids(&relays),
        "report {rep:?}"
    );
    assert_eq!(rep.refresh_skipped, 8, "announced relays served themselves");
    assert_eq!(
        rep.via_dht, 4,
        "PEX-learned relays looked up by key: {rep:?}"
    );
    // Four lookups by key (plus at most one sequential retry each).
    assert!(
        (rep.rounds + 4..=rep.rounds + 8).contains(&rep.dht_lookups),
        "{rep:?}"
    );
    assert_eq!(set.get(&newer.identity()).unwrap().seq(), newer.seq());
    assert_eq!(set.counters().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_private_networks_on_one_dht_never_see_each_other() {
    let _g = LOCK.lock().await;
    let testnet = Testnet::builder(12).build().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let a = Network::private(&NetworkKey::generate(&mut rng, "alpha", 1).unwrap());
    let b = Network::private(&NetworkKey::generate(&mut rng, "beta", 1).unwrap());
    let ra = start_relays(&testnet.bootstrap, &a, 100, 8, 3).await;
    let rb = start_relays(&testnet.bootstrap, &b, 200, 8, 3).await;
    // A relay of network B that also serves network A's descriptors through PEX (a mixer).
    rb[0].served.write().await.pex = build_pex(ra.iter().map(|r| &r.desc)).unwrap();

    let (sa, _) = fresh_client_discovers(&testnet.bootstrap, &a, true).await;
    let (sb, _) = fresh_client_discovers(&testnet.bootstrap, &b, true).await;
    assert_eq!(
        sa.iter().map(|d| d.identity()).collect::<Vec<_>>(),
        ids(&ra)
    );
    assert_eq!(
        sb.iter().map(|d| d.identity()).collect::<Vec<_>>(),
        ids(&rb)
    );
    assert!(
        sb.counters()
            .get(onionvpn_directory::RejectReason::WrongNetwork)
            >= 8,
        "mixed-in descriptors rejected"
    );
    // The public network sees neither.
    let (sp, rep) = fresh_client_discovers(&testnet.bootstrap, &Network::main(), false).await;
    assert_eq!(sp.len(), 0);
    assert_eq!(rep.addresses, 0);
}

/// A `DhtBackend` whose lookups wait for a gate, counting completions.
struct Gated {
    inner: AsyncDht,
    gate: Arc<Semaphore>,
    completed: Arc<AtomicUsize>,
}

impl DhtBackend for Gated {
    async fn get_peers(&self, ih: [u8; 20]) -> Vec<std::net::SocketAddrV4> {
        let _p = self.gate.acquire().await;
        let r = DhtBackend::get_peers(&self.inner, ih).await;
        self.completed.fetch_add(1, Ordering::SeqCst);
        r
    }
    async fn get_descriptor(&self, key: [u8; 32], salt: Vec<u8>) -> Option<(Vec<u8>, i64)> {
        let _p = self.gate.acquire().await;
        let r = self.inner.get_descriptor(key, salt).await;
        self.completed.fetch_add(1, Ordering::SeqCst);
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_cache_gives_a_path_before_any_dht_lookup_completes() {
    let _g = LOCK.lock().await;
    let testnet = Testnet::builder(10).build().unwrap();
    let net = Network::main();
    let relays = start_relays(&testnet.bootstrap, &net, 300, 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let req = PathRequest {
        hops: 3,
        target: None,
        price_cap: None,
        use_guards: true,
    };

    // First run: discover, cache, choose a path (which picks a guard), persist.
    let guard = {
        let (set, _) = fresh_client_discovers(&testnet.bootstrap, &net, false).await;
        assert_eq!(set.len(), 8);
        let cache = Cache::open(dir.path(), &net).unwrap();
        for d in set.iter() {
            cache.store_descriptor(d).unwrap();
        }
        let mut guards = cache.load_guards().unwrap();
        let refs: Vec<&Descriptor> = set.iter().collect();
        let p = select_path(
            &refs,
            &req,
            &mut guards,
            unix_now(),
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        cache.store_guards(&guards).unwrap();
        cache.flush().unwrap();
        p.hops[0].identity()
    };

    // Restart: background refresh starts at once but its lookups are held at a gate.
    let gate = Arc::new(Semaphore::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let backend = Gated {
        inner: dht_node(&testnet.bootstrap, false, 300),
        gate: gate.clone(),
        completed: completed.clone(),
    };
    let net2 = net.clone();
    let refresh = tokio::spawn(async move {
        let mut set = RelaySet::new(net2);
        let rep = discover(
            &backend,
            &TcpFetcher {
                timeout: Duration::from_secs(2),
            },
            &mut set,
            &cfg(),
            3,
        )
        .await;
        (set.len(), rep)
    });
    let cache = Cache::open(dir.path(), &net).unwrap();
    let now = unix_now();
    let load = cache.load(&net, now).unwrap();
    assert_eq!(load.relays.len(), 8);
    assert_eq!(load.dropped, 0);
    let mut guards = cache.load_guards().unwrap();
    let refs: Vec<&Descriptor> = load.relays.iter().collect();
    let p = select_path(&refs, &req, &mut guards, now, &mut StdRng::seed_from_u64(2)).unwrap();
    assert_eq!(p.hops.len(), 3);
    assert_eq!(p.hops[0].identity(), guard, "persisted guard reused");
    assert!(!p.new_guard);
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "path was ready before any DHT lookup completed"
    );
    assert_eq!(relays.len(), 8);

    gate.add_permits(1 << 20);
    let (n, rep) = refresh.await.unwrap();
    assert_eq!(n, 8, "background refresh found the network: {rep:?}");
    assert!(completed.load(Ordering::SeqCst) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_filter_sees_real_requests_and_client_nodes_stay_out_of_routing_tables() {
    use mainline::ServerSettings;
    use onionvpn_directory::dht::{ClientDht, ClientNodeConfig};
    use onionvpn_directory::filter::{FilterConfig, RelayRequestFilter};

    let _g = LOCK.lock().await;
    let testnet = Testnet::builder(4).build().unwrap();
    let filter = RelayRequestFilter::new(FilterConfig::default());
    let stats = filter.stats();
    let server = {
        let mut b = Dht::builder();
        b.server_mode()
            .bootstrap(&testnet.bootstrap)
            .bind_address(Ipv4Addr::LOCALHOST)
            .request_timeout(Duration::from_millis(500))
            .server_settings(ServerSettings {
                filter: Box::new(filter),
                ..ServerSettings::default()
            });
        b.build().unwrap().as_async()
    };
    assert!(server.bootstrapped().await);
    let server_addr = server.info().await.local_addr().to_string();
    let mut boot = vec![server_addr];
    boot.extend(testnet.bootstrap.iter().cloned());
    // max_age zero: every use replaces the node.
    let client = ClientDht::new(ClientNodeConfig {
        bind: Some(Ipv4Addr::LOCALHOST),
        request_timeout: Duration::from_millis(300),
        max_age: Duration::ZERO,
        ..ClientNodeConfig::new(boot)
    })
    .unwrap();
    let mut client_addrs = Vec::new();

    let sk = mainline::SigningKey::from_bytes(&[7; 32]);
    let n = client.node();
    client_addrs.push(n.info().await.local_addr());
    n.put_mutable(MutableItem::new(sk, b"v", 1, Some(b"s")), None)
        .await
        .unwrap();
    let n = client.node();
    client_addrs.push(n.info().await.local_addr());
    let ih = [9u8; 20];
    n.announce_peer(mainline::Id::from(ih), Some(4242))
        .await
        .unwrap();
    let n = client.node();
    client_addrs.push(n.info().await.local_addr());
    let _ = n.put_immutable(b"not for onionvpn relays").await;

    // The filter classified the live requests (pins the Debug-based classification).
    assert!(stats.mutable_puts.load(Ordering::Relaxed) >= 1);
    assert!(stats.announces.load(Ordering::Relaxed) >= 1);
    assert!(stats.immutable_refused.load(Ordering::Relaxed) >= 1);
    assert!(stats.allowed.load(Ordering::Relaxed) >= 3);

    // Lookups through the replacing client node still work.
    let peers = DhtBackend::get_peers(&client, ih).await;
    assert!(peers.iter().any(|p| p.port() == 4242), "{peers:?}");
    assert!(client.rebuilds() >= 3);
    client_addrs.dedup();
    assert!(client_addrs.len() >= 3, "a new socket each time");

    // A server node with a bootstrap list never put a read-only client in its routing table.
    let table = server.to_bootstrap().await;
    for a in &client_addrs {
        assert!(!table.contains(&a.to_string()), "{a} in {table:?}");
    }
}
