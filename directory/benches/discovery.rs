#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    clippy::print_stdout
)]
//! Cold discovery on a loopback `mainline` testnet.
//!
//! `cargo bench -p onionvpn-directory --bench discovery -- [relays ...]` (default: 50 300).
//! Env: `DHT_NODES` (default 300), `SEEDED` (default 1).
//! Prints, per run: time to enough verified descriptors for a first circuit (3), time until all are
//! known (address pass, then all refreshed by key from the DHT), DHT lookups and bytes received.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Testnet};
use onionvpn_directory::descriptor::{
    DescriptorBody, IdentityKey, LinkKey, LnNodeId, OnionKey, Prices,
};
use onionvpn_directory::dht::{
    discover, serve_descriptors, unix_now, DiscoveryConfig, Publisher, Served, TcpFetcher,
};
use onionvpn_directory::{ExitPolicy, Network, RelaySet};
use tokio::net::TcpListener;
use tokio::sync::RwLock;

fn node(boot: &[String], server: bool, ms: u64) -> AsyncDht {
    let mut b = Dht::builder();
    if server {
        b.server_mode();
    }
    b.bootstrap(boot)
        .bind_address(Ipv4Addr::LOCALHOST)
        .request_timeout(Duration::from_millis(ms));
    b.build().unwrap().as_async()
}

async fn run(testnet: &Testnet, relays: u32, tag: u32) {
    // A network per run, so that one run's announcements do not show up in the next.
    let net = Network::public(&format!("bench{tag}"), 1).unwrap();
    let now = unix_now();
    let boot: Vec<String> = testnet.bootstrap.iter().take(16).cloned().collect();
    let mut keep = Vec::new();
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..relays {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&(i + tag * 100_000).to_be_bytes());
        let sk = SigningKey::from_bytes(&seed);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let body = DescriptorBody {
            network: net.id(),
            identity: IdentityKey::from_signing_key(&sk),
            seq: now,
            published: now,
            expires: now + 86400,
            link_key: LinkKey([1; 32]),
            bandwidth: 1_000_000,
            prices: Prices {
                msat_per_mib: 1000,
                msat_per_min: 100,
            },
            ln_node_id: LnNodeId([2; 33]),
            onion_keys: vec![OnionKey {
                key: [3; 32],
                valid_after: now - 1,
                valid_until: now + 86400,
            }],
            addresses: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)],
            protocols: vec![],
            family: vec![],
            exit_policy: ExitPolicy::accept_all(),
        };
        let raw = body.sign(&sk).unwrap();
        let served = Arc::new(RwLock::new(Served {
            own: raw.clone(),
            pex: Vec::new(),
        }));
        keep.push(tokio::spawn(serve_descriptors(l, served)));
        let p = Publisher::new(node(&boot, true, 500), net.clone(), sk);
        jobs.spawn(async move {
            for _ in 0..3 {
                if p.put_descriptor(&raw, now).await.is_ok() && p.announce(port).await.is_ok() {
                    break;
                }
            }
            p
        });
    }
    let t = Instant::now();
    let publishers = jobs.join_all().await;
    let publish = t.elapsed();
    let client = node(&boot, false, 300);
    let t = Instant::now();
    client.bootstrapped().await;
    let bootstrap = t.elapsed();
    let mut set = RelaySet::new(net);
    let rep = discover(
        &client,
        &TcpFetcher {
            timeout: Duration::from_secs(2),
        },
        &mut set,
        &DiscoveryConfig {
            deadline: Duration::from_secs(60),
            ..DiscoveryConfig::default()
        },
        3,
    )
    .await;
    println!(
        "relays={relays} dht_nodes={} publish={publish:.2?} client_bootstrap={bootstrap:.2?} first3={:.2?} \
         address_pass={:.2?} all={:.2?} found={} via_dht={} rounds={} dht_lookups={} addresses={} fetched={} bytes={} rejected={}",
        testnet.nodes.len(), rep.time_to_first.unwrap_or_default(), rep.address_pass, rep.elapsed, set.len(), rep.via_dht,
        rep.rounds, rep.dht_lookups, rep.addresses, rep.fetched, rep.bytes, set.counters().total()
    );
    drop(publishers);
    for k in keep {
        k.abort();
    }
}

fn main() {
    let counts: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![50, 300]
    } else {
        counts
    };
    let n: usize = std::env::var("DHT_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seeded = std::env::var("SEEDED").map_or(true, |v| v != "0");
    let t = Instant::now();
    let testnet = Testnet::builder(n).seeded(seeded).build().unwrap();
    println!(
        "testnet nodes={n} seeded={seeded} built in {:.1?}",
        t.elapsed()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for (tag, c) in counts.into_iter().enumerate() {
        rt.block_on(run(&testnet, c, tag as u32));
    }
}
