//! The relay operator's view of real traffic: a download through 3 hops on a local network
//! moves every relay's `status` (over its control socket) and its Prometheus metrics, and
//! neither shows an address or hostname.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use onionvpn_relay::control::query_status;
use onionvpn_relay::status::StatusReport;
use onionvpn_tests::metrics::scrape;
use onionvpn_tests::{fetch, LocalNet, LocalNetConfig};

const LIMIT: Duration = Duration::from_secs(120);
const LEN: u64 = 1 << 20;

struct View {
    status: Vec<StatusReport>,
    metrics: Vec<BTreeMap<String, u64>>,
    texts: Vec<String>,
}

async fn view(net: &LocalNet) -> View {
    let mut v = View {
        status: Vec::new(),
        metrics: Vec::new(),
        texts: Vec::new(),
    };
    for r in net.relays() {
        let path = r.control_path().unwrap().to_owned();
        let s = tokio::task::spawn_blocking(move || query_status(&path))
            .await
            .unwrap()
            .unwrap();
        v.texts.push(format!("{s:?}"));
        v.texts.push(s.render(onionvpn_relay::cli::unix_now()));
        v.status.push(s);
        let (samples, text) = scrape(r.metrics_addr().unwrap()).await.unwrap();
        v.metrics.push(samples);
        v.texts.push(text);
    }
    v
}

fn sum(v: &[BTreeMap<String, u64>], key: &str) -> u64 {
    v.iter().map(|m| m.get(key).copied().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_move_with_traffic_and_show_no_addresses() {
    let net = LocalNet::start(LocalNetConfig::default()).await.unwrap();
    let before = view(&net).await;

    let (socks, http) = (net.socks_addr().unwrap(), net.http_addr().unwrap());
    let d = fetch::download(socks, http, LEN, LIMIT, true)
        .await
        .unwrap();
    assert_eq!(d.len, LEN);
    let after = view(&net).await;

    // status: three relays carried the 1 MiB toward the client (cells of ≤ 486 data bytes,
    // 512 bytes each), the exit read it from the server, circuits were relayed.
    let st = |v: &View, f: fn(&StatusReport) -> u64| v.status.iter().map(f).sum::<u64>();
    let relayed = st(&after, |s| s.bytes_relayed) - st(&before, |s| s.bytes_relayed);
    assert!(relayed >= 3 * LEN, "relayed {relayed}");
    let exit_read = st(&after, |s| s.exit_bytes_read) - st(&before, |s| s.exit_bytes_read);
    assert!(exit_read >= LEN, "exit read {exit_read}");
    assert!(st(&after, |s| s.circuits_relayed) >= 3);
    assert!(st(&after, |s| s.streams) > st(&before, |s| s.streams));
    for s in &after.status {
        assert!(s.dht_publications >= 1 && s.dht_last_publication > 0);
        assert!(s.uptime_secs < 3600);
    }

    // metrics: the same movement, and every family the issue names.
    let m = |v: &View, k: &str| sum(&v.metrics, k);
    let cells = |v: &View| {
        m(v, "onionvpn_relay_cell_bytes_total{direction=\"backward\"}")
            + m(v, "onionvpn_relay_cell_bytes_total{direction=\"forward\"}")
    };
    assert!(cells(&after) - cells(&before) >= 3 * LEN);
    let from_dest = "onionvpn_relay_exit_bytes_total{direction=\"from_destination\"}";
    assert!(m(&after, from_dest) - m(&before, from_dest) >= LEN);
    assert!(
        m(&after, "onionvpn_relay_cells_total{direction=\"backward\"}")
            > m(
                &before,
                "onionvpn_relay_cells_total{direction=\"backward\"}"
            )
    );
    assert!(
        m(&after, "onionvpn_relay_streams_opened_total")
            > m(&before, "onionvpn_relay_streams_opened_total")
    );
    assert!(m(&after, "onionvpn_relay_circuits_created_total") >= 3);
    for family in [
        "onionvpn_relay_circuits_open",
        "onionvpn_relay_circuit_refusals_total{reason=\"rate_limit\"}",
        "onionvpn_relay_circuit_refusals_total{reason=\"circuit_limit\"}",
        "onionvpn_relay_circuit_refusals_total{reason=\"handshake\"}",
        "onionvpn_relay_dht_publications_total",
        "onionvpn_relay_dht_publication_age_seconds",
        "onionvpn_relay_price_msat{unit=\"mib\"}",
    ] {
        for r in &after.metrics {
            assert!(r.contains_key(family), "{family} missing");
        }
    }

    // No address or hostname anywhere: not the server's, not the client's, not the relays'.
    let mut forbidden = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "[::1]".to_owned(),
        format!(":{}", http.port()),
    ];
    for r in net.relays() {
        forbidden.push(format!(":{}", r.or_addr().port()));
    }
    for text in after.texts.iter().chain(&before.texts) {
        for f in &forbidden {
            assert!(!text.contains(f.as_str()), "{f} in:\n{text}");
        }
    }
    net.shutdown().await;
}
