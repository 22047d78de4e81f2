//! Downloads and uploads through 3 hops via SOCKS on a local network of 6 relays: 1 KiB,
//! 1 MiB and 100 MiB, sha256 identical; 50 concurrent streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::OnceLock;
use std::time::Duration;

use onionvpn_tests::http::{content_sha256, hex};
use onionvpn_tests::{fetch, LocalNet, LocalNetConfig};
use tokio::runtime::Runtime;

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn net() -> &'static LocalNet {
    static NET: OnceLock<LocalNet> = OnceLock::new();
    NET.get_or_init(|| {
        rt().block_on(async {
            assert!(LocalNetConfig::default().relays >= 6);
            LocalNet::start(LocalNetConfig::default()).await.unwrap()
        })
    })
}

const LIMIT: Duration = Duration::from_secs(120);

async fn download(net: &LocalNet, len: u64) {
    let (socks, http) = (net.socks_addr().unwrap(), net.http_addr().unwrap());
    let d = fetch::download(socks, http, len, LIMIT, true)
        .await
        .unwrap();
    assert_eq!(d.announced, Some(len));
    assert_eq!(d.len, len);
    assert_eq!(hex(&d.sha256), hex(&content_sha256(len)));
}

async fn upload_len(net: &LocalNet, len: u64) {
    let (socks, http) = (net.socks_addr().unwrap(), net.http_addr().unwrap());
    let (sha, n) = fetch::upload(socks, http, len, LIMIT).await.unwrap();
    assert_eq!(n, len);
    assert_eq!(sha, hex(&content_sha256(len)));
}

#[test]
fn download_1kib() {
    rt().block_on(download(net(), 1024));
}

#[test]
fn download_1mib() {
    rt().block_on(download(net(), 1024 * 1024));
}

#[test]
fn download_100mib() {
    rt().block_on(download(net(), 100 * 1024 * 1024));
}

#[test]
fn upload_1kib() {
    rt().block_on(upload_len(net(), 1024));
}

#[test]
fn upload_1mib() {
    rt().block_on(upload_len(net(), 1024 * 1024));
}

#[test]
fn upload_100mib() {
    rt().block_on(upload_len(net(), 100 * 1024 * 1024));
}

#[test]
fn fifty_concurrent_streams() {
    let net = net();
    rt().block_on(async {
        let mut jobs = tokio::task::JoinSet::new();
        for i in 0..50u64 {
            // Mixed sizes, some uploads: every stream's bytes must arrive intact.
            let len = 10_000 + i * 7_919;
            if i % 5 == 0 {
                jobs.spawn(upload_len(net, len));
            } else {
                jobs.spawn(download(net, len));
            }
        }
        let mut done = 0;
        while let Some(r) = jobs.join_next().await {
            r.unwrap();
            done += 1;
        }
        assert_eq!(done, 50);
    });
}
