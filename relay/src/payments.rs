//! The relay's payment task: takes received payments from the rail, credits the account of
//! the circuit whose token the payment carried, and records them in the earnings ledger
//! (durably, before acknowledging the rail).
//!
//! Routing by token: a charging circuit registers its token here before its CREATED is
//! sent (so the client cannot pay before the route exists) and removes it when it ends. A
//! credit is a counter the circuit task drains when it checks its account: no queue that
//! could grow, no message per payment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onionvpn_pay::ledger::{Ledger, Recorded};
use onionvpn_pay::{PayError, PaymentRail, Received};
use onionvpn_proto::ext::PaymentToken;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Wait before retrying after the ledger or the rail failed (the payment stays
/// unacknowledged, so nothing is lost).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How a relay gets paid: its rail and where its earnings ledger lives.
#[derive(Clone)]
pub struct PaymentsSetup {
    /// The relay's payment rail (the LDK rail in production; the in-memory test rail in
    /// tests without Lightning).
    pub rail: Arc<dyn PaymentRail>,
    /// Directory of the earnings ledger (sled), normally `<data dir>/earnings`.
    pub ledger_dir: PathBuf,
}

impl std::fmt::Debug for PaymentsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsSetup")
            .field("node_id", &self.rail.node_id())
            .field("ledger_dir", &self.ledger_dir)
            .finish()
    }
}

/// The ledger directory under a relay's data directory.
pub fn ledger_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("earnings")
}

/// The text summary the running relay rewrites after each new payment, next to its ledger
/// (`onionvpn-relay earnings` reads it while the relay holds the ledger).
pub fn summary_path(ledger_dir: &std::path::Path) -> PathBuf {
    ledger_dir.with_extension("summary")
}

/// How long start-up waits for the ledger's lock: a relay restarted in the same process
/// finds it held for up to half a second by the previous run's sled flusher (a blocking
/// wait, at start-up only).
const LEDGER_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Live payment state of a relay.
pub(crate) struct Payments {
    rail: Arc<dyn PaymentRail>,
    ledger: Ledger,
    routes: Mutex<HashMap<PaymentToken, Arc<AtomicU64>>>,
    summary: PathBuf,
}

impl Payments {
    pub(crate) fn open(setup: &PaymentsSetup) -> Result<Payments, PayError> {
        Ok(Payments {
            rail: setup.rail.clone(),
            ledger: Ledger::open_waiting(&setup.ledger_dir, LEDGER_LOCK_WAIT)?,
            routes: Mutex::new(HashMap::new()),
            summary: summary_path(&setup.ledger_dir),
        })
    }

    /// The earnings ledger (a handle on the same database).
    pub(crate) fn ledger(&self) -> Ledger {
        self.ledger.clone()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<PaymentToken, Arc<AtomicU64>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a circuit's token; payments carrying it are added to the returned counter.
    pub(crate) fn register(&self, token: PaymentToken) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        self.routes().insert(token, c.clone());
        c
    }

    /// Removes a circuit's token (the circuit ended).
    pub(crate) fn unregister(&self, token: &PaymentToken) {
        self.routes().remove(token);
    }

    /// Handles received payments until shutdown.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // A payment the ledger could not record, retried before anything else: the rail
        // hands it out once and waits for its acknowledgement (the LDK rail's event pump
        // holds the node's later events until then), so asking for the next one instead
        // would wait forever.
        let mut unrecorded: Option<Received> = None;
        loop {
            let (p, fresh) = match unrecorded.take() {
                Some(p) => (Ok(p), false),
                None => tokio::select! {
                    _ = shutdown.changed() => return,
                    p = self.rail.next_received() => (p, true),
                },
            };
            let p = match p {
                Ok(p) => p,
                Err(PayError::RailStopped) => {
                    warn!("payment rail stopped: no more payments are credited");
                    return;
                }
                Err(e) => {
                    warn!("receiving a payment: {e}");
                    if sleep_or_shutdown(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            // Credit first, then record: the client learns that its payment succeeded as
            // soon as this node claims it, and a download waiting for it resumes at full
            // speed at once; while the ledger flushes to disk the circuit would run past its
            // grace. A payment already in the ledger (redelivered after a crash between
            // record and ack) is not credited again (the lookup reads sled's cache, no disk
            // write); one retried after a ledger failure was credited already.
            if fresh {
                match self.ledger.contains(&p.id) {
                    Ok(false) => self.credit(&p),
                    Ok(true) => {}
                    Err(e) => warn!("earnings ledger lookup: {e}; payment not credited"),
                }
            }
            // The ledger flushes to disk and the rail's `forget` writes to the node's store:
            // on a blocking thread, not on a worker of the runtime that relays cells.
            let this = self.clone();
            let settled = tokio::task::spawn_blocking(move || this.settle(&p)).await;
            let failure = match settled {
                Ok(Ok(Recorded::New)) => continue,
                Ok(Ok(Recorded::Duplicate)) => {
                    debug!("payment redelivered: already recorded");
                    continue;
                }
                Ok(Err(e)) => format!("earnings ledger: {e}"),
                Err(e) => format!("recording a payment: {e}"),
            };
            // Durable before acknowledged: keep it and retry before anything new.
            warn!("{failure}; payment left unacknowledged, retrying");
            unrecorded = Some(p);
            if sleep_or_shutdown(&mut shutdown).await {
                return;
            }
        }
    }
}

impl Payments {
    /// Adds `p` to the account of the circuit whose token it carries, if that circuit is
    /// still open.
    fn credit(&self, p: &Received) {
        let Some(token) = p.token else {
            info!(
                msat = p.amount_msat,
                "payment without a token: nothing to credit"
            );
            return;
        };
        let route = self.routes().get(&token).cloned();
        match route {
            Some(c) => {
                c.fetch_add(p.amount_msat, Ordering::AcqRel);
                debug!(msat = p.amount_msat, "payment credited");
            }
            None => info!(
                msat = p.amount_msat,
                "payment for a circuit that is gone: not credited"
            ),
        }
    }

    /// Records `p` durably, then acknowledges it to the rail and prunes the node's record
    /// of it (blocking: disk writes).
    fn settle(&self, p: &Received) -> Result<Recorded, PayError> {
        // Durable first: a crash after this and before the ack makes the rail
        // redeliver, and the ledger then reports a duplicate.
        let recorded = self.ledger.record(p, crate::cli::unix_now())?;
        if let Err(e) = self.rail.ack_received(p.id) {
            warn!("acknowledging a payment: {e}");
        }
        // The ledger holds it now: prune the node's own record (one per payment, the
        // store would otherwise grow with every payment the relay ever received).
        if let Err(e) = self.rail.forget(p.id) {
            debug!("forgetting a received payment: {e}");
        }
        if recorded == Recorded::New {
            self.write_summary();
        }
        Ok(recorded)
    }

    fn write_summary(&self) {
        let text = match self.ledger.summary() {
            Ok(s) => format!("as of unix time {}\n{s}", crate::cli::unix_now()),
            Err(e) => {
                debug!("earnings summary: {e}");
                return;
            }
        };
        let tmp = self.summary.with_extension("summary.tmp");
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.summary));
        if let Err(e) = r {
            debug!("writing the earnings summary: {e}");
        }
    }
}

/// Waits [`RETRY_AFTER`]; true if the relay is shutting down instead.
async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(RETRY_AFTER) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use onionvpn_pay::memory::MemoryNetwork;
    use onionvpn_pay::{KeysendRequest, NodeId};

    fn req(token: u8, msat: u64) -> KeysendRequest {
        KeysendRequest {
            to: NodeId([2; 33]),
            amount_msat: msat,
            token: PaymentToken([token; 16]),
            max_fee_msat: 0,
        }
    }

    async fn until(f: impl Fn() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < end, "condition not reached");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn credits_the_token_and_survives_a_crash_between_record_and_ack() {
        let dir = tempfile::tempdir().unwrap();
        let net = MemoryNetwork::new();
        let relay = Arc::new(net.node(NodeId([2; 33]), 0));
        let client = net.node(NodeId([3; 33]), 10_000);
        let setup = PaymentsSetup {
            rail: relay.clone(),
            ledger_dir: ledger_dir(dir.path()),
        };

        // A payment recorded, then the relay "crashed" before acknowledging it.
        let first = client.keysend(req(1, 700)).await.unwrap();
        {
            let p = Payments::open(&setup).unwrap();
            let got = relay.next_received().await.unwrap();
            assert_eq!(got.id, first.id);
            p.ledger.record(&got, 0).unwrap();
        }

        // Restarted: the rail redelivers it; it is not counted again.
        let p = Arc::new(Payments::open(&setup).unwrap());
        let credits = p.register(PaymentToken([1; 16]));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(p.clone().run(rx));
        client.keysend(req(1, 300)).await.unwrap();
        client.keysend(req(9, 50)).await.unwrap(); // a circuit that is gone
        until(|| p.ledger.entries().unwrap() == 3).await;
        until(|| credits.load(Ordering::Acquire) == 300).await;
        assert_eq!(p.ledger.total_msat().unwrap(), 1050);
        assert_eq!(p.ledger.token_msat(&PaymentToken([1; 16])).unwrap(), 1000);
        // Everything acknowledged: nothing left to deliver.
        until(|| futures_ready(relay.next_received()).is_none()).await;
        // Recorded payments are pruned from the node's store.
        until(|| net.stored(NodeId([2; 33])) == 0).await;
        let summary = std::fs::read_to_string(summary_path(&setup.ledger_dir)).unwrap();
        assert!(summary.contains("total: 1050 msat"), "{summary}");
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// The value of `f` if it is ready at once.
    fn futures_ready<T>(f: onionvpn_pay::RailFuture<'_, T>) -> Option<T> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = f;
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.ok(),
            std::task::Poll::Pending => None,
        }
    }
}
