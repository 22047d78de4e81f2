//! Paid circuits on a local network, paid through the in-memory TEST rail (no Lightning;
//! the same relay and client code paths as with the LDK rail): credit per hop, enforcement
//! of paid + grace, the budget and the price cap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use onionvpn_pay::account::price;
use onionvpn_proto::consts::CELL_BODY_LEN;
use onionvpn_relay::control::query_status;
use onionvpn_tests::fetch::{self, TransferError};
use onionvpn_tests::metrics::scrape;
use onionvpn_tests::{LocalNet, LocalNetConfig, PaidNet};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

fn config(paid: PaidNet) -> LocalNetConfig {
    LocalNetConfig {
        relays: 5,
        exits: 2,
        paid: Some(paid),
        ..LocalNetConfig::default()
    }
}

/// Downloads `len` bytes through the client; returns the bytes received (an error or an
/// early end of the stream counts what arrived before it).
async fn download(net: &LocalNet, len: u64) -> Result<u64, TransferError> {
    let (socks, http) = (net.socks_addr().unwrap(), net.http_addr().unwrap());
    Ok(fetch::download(socks, http, len, LIMIT, false).await?.len)
}

/// Polls `f` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

fn total_earned(net: &LocalNet) -> u64 {
    net.ledgers().iter().map(|l| l.total_msat().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_download_credits_each_hop_by_its_terms() {
    let paid = PaidNet::default();
    let chunk = paid.payer.chunk_msat;
    let started = Instant::now();
    let net = LocalNet::start(config(paid.clone())).await.unwrap();
    let got = download(&net, 10 * MIB).await.unwrap();
    assert_eq!(got, 10 * MIB);
    let client = net.the_client().unwrap();
    let pays = client.circuit_manager().payments().unwrap().clone();

    // The circuit that carried the download: each of its hops was credited, under its own
    // token, what the terms say for the cells carried and the circuit's age, within one chunk.
    let circ = client
        .circuit_manager()
        .circuits()
        .into_iter()
        .find(|c| c.streams_total > 0)
        .expect("the download's circuit");
    assert_eq!(circ.terms.len(), 3);
    let carried = circ.cells * CELL_BODY_LEN as u64;
    assert!(carried >= 10 * MIB);
    let ledgers = net.ledgers();
    let ok = eventually(Duration::from_secs(30), || {
        circ.terms.iter().all(|t| {
            let t = t.expect("every hop charges");
            let paid: u64 = ledgers
                .iter()
                .map(|l| l.token_msat(&t.token).unwrap())
                .sum();
            let owed_min = price(&t, 10 * MIB, Duration::ZERO);
            let owed_max = price(&t, carried, started.elapsed());
            paid >= owed_min && paid <= owed_max + chunk
        })
    })
    .await;
    for t in circ.terms.iter().flatten() {
        let paid: u64 = ledgers
            .iter()
            .map(|l| l.token_msat(&t.token).unwrap())
            .sum();
        eprintln!(
            "hop paid {paid} msat; owed by bytes {} msat",
            price(t, carried, Duration::ZERO)
        );
    }
    assert!(
        ok,
        "a hop's credit is outside [price x MiB, owed + one chunk]"
    );

    // What the client spent (zero fees on the test rail) is what the relays recorded.
    assert!(
        eventually(Duration::from_secs(30), || total_earned(&net)
            == pays.spent_msat())
        .await,
        "client spent {} msat, relays recorded {}",
        pays.spent_msat(),
        total_earned(&net)
    );
    assert!(net
        .relays()
        .all(|r| r.stats().circuits_payment_required == 0));
    // The operator sees the same earnings: `status` (control socket) and the metrics
    // endpoint of every relay agree with its ledger. Payments may still arrive meanwhile
    // (the per-minute price keeps accruing), so each figure must lie between the ledger's
    // total read before and after it.
    for r in net.relays() {
        let ledger = r.ledger().unwrap();
        let before = ledger.total_msat().unwrap();
        let path = r.control_path().unwrap().to_owned();
        let status = tokio::task::spawn_blocking(move || query_status(&path))
            .await
            .unwrap()
            .unwrap();
        let (m, _) = scrape(r.metrics_addr().unwrap()).await.unwrap();
        let after = ledger.total_msat().unwrap();
        if after > 0 {
            let from_status = status.earnings.map_or(0, |e| e.total_msat);
            let from_metrics = m
                .get("onionvpn_relay_payments_received_msat_total")
                .copied()
                .unwrap_or(0);
            assert!(
                (before..=after).contains(&from_status),
                "status says {from_status} msat, ledger {before}..={after}"
            );
            assert!(
                (before..=after).contains(&from_metrics),
                "metrics say {from_metrics} msat, ledger {before}..={after}"
            );
        }
    }
    // The client prunes what it paid from its node's store.
    let stored = paid.rails.stored(onionvpn_tests::client_node_id("client"));
    assert!(
        stored <= 3 * client.circuit_manager().circuits().len(),
        "{stored} payments kept"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_pay_loses_its_circuit_within_the_grace() {
    let paid = PaidNet {
        client_pays: false,
        ..PaidNet::default()
    };
    let grace = u64::from(paid.grace_kib) * 1024;
    let net = LocalNet::start(config(paid)).await.unwrap();
    let got = match download(&net, 10 * MIB).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("download ended: {e}");
            0
        }
    };
    // The guard stops relaying once use passes paid (0) + grace: the bytes that reached the
    // client are bounded by the grace plus one batch of cells in flight per hop.
    assert!(got < 10 * MIB, "the whole download went through unpaid");
    assert!(
        got <= grace + 3 * 128 * CELL_BODY_LEN as u64 + MIB / 2,
        "{got} bytes unpaid"
    );
    assert!(
        eventually(Duration::from_secs(30), || net
            .relays()
            .any(|r| r.stats().circuits_payment_required > 0))
        .await
    );
    assert_eq!(total_earned(&net), 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stops_paying_at_its_budget_and_never_above_its_cap() {
    let budget = 40_000;
    let paid = PaidNet {
        client_budget_msat: budget,
        // Relay 4 asks far more than the client's cap (2000 msat/MiB in client_config).
        overpriced: vec![4],
        ..PaidNet::default()
    };
    let net = LocalNet::start(config(paid)).await.unwrap();
    let client = net.the_client().unwrap();
    let pays = client.circuit_manager().payments().unwrap().clone();
    let _ = download(&net, 20 * MIB).await;
    assert!(
        eventually(Duration::from_secs(60), || pays.budget_reached()).await,
        "budget never reached; spent {}",
        pays.spent_msat()
    );
    assert!(
        pays.spent_msat() <= budget,
        "spent {} > budget",
        pays.spent_msat()
    );
    // New streams are refused with an error.
    let r = fetch::open(client.socks_addr(), net.http_addr().unwrap(), None).await;
    assert!(
        r.is_err(),
        "a new stream was accepted after the budget was reached"
    );
    // The overpriced relay was never used, so never paid.
    let over = net.relays().nth(4).unwrap().ledger().unwrap();
    assert_eq!(over.total_msat().unwrap(), 0);
    assert!(total_earned(&net) <= budget);
    net.shutdown().await;
}
