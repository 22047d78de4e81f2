//! Stream isolation over a real SOCKS port: different credentials never share a circuit;
//! equal credentials do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use onionvpn_tests::{socksc, LocalNet, LocalNetConfig};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_usernames_get_different_circuits() {
    let net = LocalNet::start(LocalNetConfig::default()).await.unwrap();
    let socks = net.socks_addr().unwrap();
    let http = net.http_addr().unwrap();
    let host = http.ip().to_string();
    let creds: [Option<(&str, &str)>; 6] = [
        Some(("alice", "x")),
        Some(("bob", "x")),
        Some(("alice", "x")),
        None,
        Some(("carol", "1")),
        Some(("carol", "2")),
    ];
    let mut held = Vec::new();
    for c in creds {
        let mut s = tokio::time::timeout(
            Duration::from_secs(60),
            socksc::connect(socks, &host, http.port(), c),
        )
        .await
        .expect("SOCKS connect hung")
        .unwrap();
        // The server waits on /hold until we close: the stream stays open.
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    let mgr = net.client.as_ref().unwrap().circuit_manager();
    let busy: Vec<_> = mgr
        .circuits()
        .into_iter()
        .filter(|c| !c.dead && c.streams_open > 0)
        .collect();
    // alice (2 streams), bob, no-auth, carol/1, carol/2.
    assert_eq!(busy.len(), 5, "{busy:?}");
    assert_eq!(busy.iter().map(|c| c.streams_open).sum::<usize>(), 6);
    assert_eq!(busy.iter().map(|c| c.streams_open).max(), Some(2));
    let ids: BTreeSet<u64> = busy.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 5);
    let groups: BTreeSet<Option<u64>> = busy.iter().map(|c| c.isolation_group).collect();
    assert_eq!(groups.len(), 5);
    assert!(!groups.contains(&None), "a used circuit belongs to a key");
    drop(held);
    net.shutdown().await;
}
