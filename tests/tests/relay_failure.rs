//! Killing a middle relay during a transfer: that stream fails cleanly (an error, not a
//! hang or a silently truncated success), and new streams succeed on a rebuilt circuit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use onionvpn_tests::http::{content_length, content_sha256, get, hex, read_head};
use onionvpn_tests::{socksc, LocalNet, LocalNetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_middle_relay_fails_its_stream_and_new_streams_recover() {
    let mut net = LocalNet::start(LocalNetConfig::default()).await.unwrap();
    let socks = net.socks_addr().unwrap();
    let http = net.http_addr().unwrap();
    let host = http.ip().to_string();

    // A transfer that lasts (16 KiB every 10 ms).
    let total: u64 = 64 * 1024 * 1024;
    let mut s = socksc::connect(socks, &host, http.port(), Some(("victim", "1")))
        .await
        .unwrap();
    s.write_all(format!("GET /slow/{total} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, early) = read_head(&mut s).await.unwrap();
    assert_eq!(content_length(&head), Some(total));
    let mut got = early.len() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 256 * 1024 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n as u64;
    }

    // The circuit carrying it, and its middle relay.
    let mgr = net.client.as_ref().unwrap().circuit_manager().clone();
    let busy: Vec<_> = mgr
        .circuits()
        .into_iter()
        .filter(|c| c.streams_open > 0)
        .collect();
    assert_eq!(busy.len(), 1, "{busy:?}");
    assert_eq!(busy[0].path.len(), 3);
    let middle = busy[0].path[1];
    assert!(net.kill_relay(&middle));

    // The stream fails: an error or an early end, well before the announced length.
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(got),
                Ok(n) => got += n as u64,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("stream hung after its middle relay was killed");
    match outcome {
        Ok(n) => assert!(n < total, "the whole body arrived through a dead relay"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
            "{e}"
        ),
    }

    // New streams (same isolation key and another) succeed on circuits avoiding the dead relay.
    for creds in [Some(("victim", "1")), None] {
        let d = tokio::time::timeout(Duration::from_secs(60), async {
            let mut s = socksc::connect(socks, &host, http.port(), creds).await?;
            get(&mut s, "t", "/bytes/1048576", true)
                .await
                .map_err(socksc::SocksClientError::Io)
        })
        .await
        .expect("no new stream within a minute of the relay's death")
        .unwrap();
        assert_eq!(d.len, 1048576);
        assert_eq!(hex(&d.sha256), hex(&content_sha256(1048576)));
    }
    let live: Vec<_> = mgr
        .circuits()
        .into_iter()
        .filter(|c| !c.dead && c.streams_total > 0)
        .collect();
    assert!(!live.is_empty());
    for c in &live {
        assert!(
            !c.path.contains(&middle),
            "a live circuit through the dead relay: {c:?}"
        );
    }
    net.shutdown().await;
}
