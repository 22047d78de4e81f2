//! Relays fill their PEX batch from their own background discovery: a fresh client that asks one
//! relay's OR port learns the others, every entry verifies, a tampered entry is rejected, and a
//! dead relay drops out of the batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mainline::Testnet;
use onionvpn_directory::dht::{unix_now, DescriptorFetcher, Served, TcpFetcher};
use onionvpn_directory::pex::{split_pex, verify_pex, PexOutcome, PEX_MAGIC};
use onionvpn_directory::{DescriptorError, IdentityKey, RejectionCounters, RelaySet, Source};
use onionvpn_relay::publish::PexOptions;
use onionvpn_relay::{start_relay_with, RelayConfig, RelayHandle, RuntimeOptions};

const WAIT: Duration = Duration::from_secs(30);

async fn start(boot: &[String], dir: &tempfile::TempDir, i: usize) -> RelayHandle {
    let mut c = RelayConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..RelayConfig::default()
    };
    c.dht.bootstrap = boot.to_vec();
    let opts = RuntimeOptions {
        worker_threads: Some(1),
        pex: PexOptions {
            min_interval: Duration::from_millis(200),
            interval: Duration::from_secs(1),
            ..PexOptions::default()
        },
        ..RuntimeOptions::default()
    };
    start_relay_with(c, dir.path().join(format!("relay{i}")), opts)
        .await
        .unwrap()
}

async fn fetch(r: &RelayHandle) -> Served {
    TcpFetcher {
        timeout: Duration::from_secs(5),
    }
    .fetch(r.or_addr())
    .await
    .unwrap()
}

fn verify(pex: &[u8]) -> PexOutcome {
    let net = RelayConfig::default().network().unwrap();
    verify_pex(
        pex,
        &net.id(),
        unix_now(),
        &mut RejectionCounters::default(),
    )
    .unwrap()
}

fn served_ids(pex: &[u8]) -> BTreeSet<IdentityKey> {
    if pex.is_empty() {
        return BTreeSet::new();
    }
    verify(pex).accepted.iter().map(|d| d.identity()).collect()
}

/// Polls `r`'s PEX batch until `done` holds for the identities it serves.
async fn until_served(r: &RelayHandle, done: impl Fn(&BTreeSet<IdentityKey>) -> bool) -> Served {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = fetch(r).await;
        if done(&served_ids(&s.pex)) {
            return s;
        }
        assert!(Instant::now() < deadline, "PEX batch never matched");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn frame(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PEX_MAGIC.to_vec();
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_client_learns_the_network_from_one_relays_pex_batch() {
    let testnet = Testnet::builder(6).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut relays = Vec::new();
    for i in 0..4 {
        relays.push(start(&testnet.bootstrap, &dir, i).await);
    }
    let id = |r: &RelayHandle| IdentityKey(r.identity());
    let others: BTreeSet<IdentityKey> = relays[1..].iter().map(id).collect();
    let r0 = &relays[0];

    // The relay's own background discovery fills the batch with the three others.
    let served = until_served(r0, |s| *s == others).await;
    let out = verify(&served.pex);
    assert!(out.rejected.is_empty());
    assert!(!served_ids(&served.pex).contains(&id(r0)), "never itself");
    for d in &out.accepted {
        let r = relays.iter().find(|r| id(r) == d.identity()).unwrap();
        assert_eq!(d.raw(), r.descriptor().raw(), "served byte for byte");
    }

    // A fresh client that contacted only relay 0 knows all four relays, all checked.
    let net = RelayConfig::default().network().unwrap();
    let mut client = RelaySet::new(net.clone());
    client
        .offer_bytes(&served.own, Source::Relay(r0.or_addr()), unix_now())
        .unwrap();
    for d in out.accepted {
        client.insert_checked(d).unwrap();
    }
    let all: BTreeSet<IdentityKey> = relays.iter().map(id).collect();
    assert_eq!(
        client.iter().map(|d| d.identity()).collect::<BTreeSet<_>>(),
        all
    );
    assert_eq!(client.counters().total(), 0);

    // A relay (or anyone on the path) that alters one entry only loses that entry.
    let mut entries: Vec<Vec<u8>> = split_pex(&served.pex)
        .unwrap()
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let n = entries[1].len();
    entries[1][n - 1] ^= 0x01; // the last byte of the entry's signature
    let mut counters = RejectionCounters::default();
    let tampered = verify_pex(&frame(&entries), &net.id(), unix_now(), &mut counters).unwrap();
    assert_eq!(tampered.accepted.len(), 2);
    assert_eq!(tampered.rejected.len(), 1);
    assert_eq!(tampered.rejected[0].0, 1);
    assert!(
        matches!(tampered.rejected[0].1, DescriptorError::BadSignature { .. }),
        "{:?}",
        tampered.rejected[0].1
    );
    assert_eq!(counters.total(), 1);

    // A dead relay drops out of the batch once the liveness window (3 intervals) has passed.
    let dead = relays.pop().unwrap();
    let dead_id = id(&dead);
    dead.kill();
    let alive: BTreeSet<IdentityKey> = relays[1..].iter().map(id).collect();
    until_served(&relays[0], |s| !s.contains(&dead_id) && *s == alive).await;
}
