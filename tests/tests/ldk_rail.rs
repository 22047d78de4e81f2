//! The LDK rail on real ldk-node instances over a real (bcoin) regtest chain, on loopback.
//!
//! Needs `npm ci --ignore-scripts --prefix tools/regtest` (CI does it); fails otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use onionvpn_pay::ldk::LdkRail;
use onionvpn_pay::{KeysendRequest, PayError, PaymentRail, Received};
use onionvpn_proto::ext::PaymentToken;
use onionvpn_tests::http::hex;
use onionvpn_tests::regtest::{wait_usable, Regtest, NODE_DEADLINE};

/// Channel size for the tests, in satoshi.
const CHANNEL_SAT: u64 = 1_000_000;

fn keysend(to: &LdkRail, amount_msat: u64, token: [u8; 16]) -> KeysendRequest {
    KeysendRequest {
        to: to.node_id(),
        amount_msat,
        token: PaymentToken(token),
        max_fee_msat: 1_000,
    }
}

async fn next(rail: &LdkRail) -> Received {
    tokio::time::timeout(NODE_DEADLINE, rail.next_received())
        .await
        .expect("a payment within the deadline")
        .expect("rail running")
}

/// Chain, a client and a relay rail with a funded channel client → relay.
async fn setup(dir: &std::path::Path) -> (Regtest, Arc<LdkRail>, Arc<LdkRail>) {
    let chain = Regtest::start().expect("regtest chain");
    let client = chain
        .start_rail(&dir.join("client"))
        .await
        .expect("client rail");
    let relay = chain
        .start_rail(&dir.join("relay"))
        .await
        .expect("relay rail");
    chain.fund(&client).await.expect("fund client");
    chain
        .open_channel(&client, &relay, CHANNEL_SAT, None)
        .await
        .expect("channel");
    (chain, client, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keysend_carries_token_and_amount_and_forget_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let (_chain, client, relay) = setup(dir.path()).await;

    // The seed file ldk-node writes read-only is 0600 (project rule for key files).
    #[cfg(unix)]
    for who in ["client", "relay"] {
        let seed = dir.path().join(who).join("lightning/keys_seed");
        let mode = std::fs::metadata(&seed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{who} seed mode {mode:o}");
    }

    let token = *b"hop-token-16byte";
    let sent = client
        .keysend(keysend(&relay, 10_000, token))
        .await
        .expect("keysend");
    assert_eq!(sent.fee_msat, 0, "direct channel: no routing fee");
    let got = next(&relay).await;
    assert_eq!(got.id, sent.id);
    assert_eq!(got.amount_msat, 10_000);
    assert_eq!(got.token, Some(PaymentToken(token)));
    relay.ack_received(got.id).unwrap();

    // Both stores hold the payment until it is forgotten.
    assert!(client.has_payment(sent.id));
    assert!(relay.has_payment(got.id));
    client.forget(sent.id).unwrap();
    relay.forget(got.id).unwrap();
    assert!(!client.has_payment(sent.id));
    assert!(!relay.has_payment(got.id));

    // More than the channel holds fails with a typed payment error, and the rail goes on.
    let too_much = (CHANNEL_SAT + 1) * 1_000;
    match client.keysend(keysend(&relay, too_much, token)).await {
        Err(PayError::PaymentFailed(_)) => {}
        other => panic!("expected PaymentFailed, got {other:?}"),
    }
    let sent = client
        .keysend(keysend(&relay, 1, token))
        .await
        .expect("1 msat keysend");
    assert_eq!(next(&relay).await.id, sent.id);

    // The nodes' own logs say what happened (connections, payments) without naming the
    // peer: no address, no node id.
    let relay_id = hex(&relay.node_id().0);
    for who in ["client", "relay"] {
        let log =
            std::fs::read_to_string(dir.path().join(who).join("lightning/ldk_node.log")).unwrap();
        assert!(log.lines().count() > 10, "{who}: log too short:\n{log}");
        assert!(log.contains("[scrubbed]"), "{who}: nothing was redacted");
        assert!(!log.contains("127.0.0.1"), "{who}: an address in the log");
        assert!(
            !log.contains(&relay_id),
            "{who}: the relay's node id in the log"
        );
        let mode = std::fs::metadata(dir.path().join(who).join("lightning/ldk_node.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{who} log mode {mode:o}");
    }

    client.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_payment_is_redelivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, client, relay) = setup(dir.path()).await;
    let relay_dir = dir.path().join("relay");

    let first = client
        .keysend(keysend(&relay, 5_000, [1; 16]))
        .await
        .expect("keysend 1");
    let got = next(&relay).await;
    assert_eq!(got.id, first.id);
    // Not acknowledged: the relay "crashes" before recording it.
    let relay = chain
        .restart_rail(relay, &relay_dir)
        .await
        .expect("restart 1");
    let again = next(&relay).await;
    assert_eq!(
        again, got,
        "the unacknowledged payment comes back, same id and token"
    );
    relay.ack_received(again.id).unwrap();

    // Acknowledged now. After another restart ldk-node may still replay the claim of the
    // first payment (same id: the rail's contract is that receivers record idempotently on
    // the id), but nothing else: the next payment with another id is the new one.
    let relay = chain
        .restart_rail(relay, &relay_dir)
        .await
        .expect("restart 2");
    wait_usable(&client, &relay).await.expect("reconnected");
    let second = client
        .keysend(keysend(&relay, 6_000, [2; 16]))
        .await
        .expect("keysend 2");
    let mut replays = 0;
    let got = loop {
        let got = next(&relay).await;
        if got.id != first.id {
            break got;
        }
        replays += 1;
        assert!(replays <= 2, "the acknowledged payment keeps coming back");
        relay.ack_received(got.id).unwrap();
    };
    assert_eq!(got.id, second.id, "only the new payment besides replays");
    assert_eq!(got.amount_msat, 6_000);
    assert_eq!(got.token, Some(PaymentToken([2; 16])));
    relay.ack_received(got.id).unwrap();

    client.stop().await.unwrap();
    relay.stop().await.unwrap();
}
