//! The client's payments: one task per paid circuit drives the sans-IO
//! [`CircuitPayer`] with the circuit's cell count and the time, sends the keysends it orders
//! through the client's rail, and prunes each finished payment from the node's store.
//!
//! A new circuit is handed to streams only once its first payments have all succeeded
//! ([`ClientPayments::start`] returns a [`FirstPayment`] receiver the circuit manager waits
//! on); the payer orders them as soon as the task starts, i.e. as the circuit is built.
//!
//! The [`Budget`] is shared by every circuit and its spend is persisted in the data
//! directory (`spend`, written atomically after each payment), so a restart does not reset
//! it. Once the budget cannot cover a payment the client stops paying, logs it, and new
//! streams fail with [`crate::circmgr::CircMgrError::BudgetReached`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use onionvpn_pay::payer::{
    Budget, CircuitPayer, HopSpec, OrderId, PayResult, PayerConfig, PayerEvent, PriceCap,
};
use onionvpn_pay::{NodeId, PayError, PaymentRail};
use onionvpn_proto::consts::CELL_BODY_LEN;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::circuit_task::CircuitInfo;

/// How often a payment task looks at the circuit's cell count when nothing else wakes it.
const TICK: Duration = Duration::from_millis(25);
/// How long a payment task waits for keysends still in flight after its circuit ended.
const DRAIN: Duration = Duration::from_secs(60);
/// File (in the data directory) holding the msat spent so far.
pub const SPEND_FILE: &str = "spend";

/// How a new circuit's first payments ended (what the circuit manager waits for before
/// handing the circuit to streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstPayment {
    /// Every paid hop received its first chunk.
    Paid,
    /// The first payment to circuit hop `hop` failed.
    Failed {
        /// The hop (0 = guard).
        hop: usize,
    },
    /// Circuit hop `hop` had not been paid within the first-payment timeout.
    TimedOut {
        /// The hop (0 = guard).
        hop: usize,
    },
    /// The budget cannot cover the first chunks.
    BudgetReached,
}

/// How the client pays: its rail and payment settings.
#[derive(Clone)]
pub struct PaymentsSetup {
    /// The client's rail (the LDK rail in production; the in-memory test rail in tests
    /// without Lightning).
    pub rail: Arc<dyn PaymentRail>,
    /// Chunk size, retries, jitter and fee cap.
    pub payer: PayerConfig,
}

impl std::fmt::Debug for PaymentsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsSetup")
            .field("node_id", &self.rail.node_id())
            .field("payer", &self.payer)
            .finish()
    }
}

/// Reads the persisted spend (0 if the file does not exist).
pub fn load_spend(data_dir: &Path) -> Result<u64, PayError> {
    let path = data_dir.join(SPEND_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|_| PayError::Invalid {
            what: "spend file",
            detail: format!("{} is not a number", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(PayError::Invalid {
            what: "spend file",
            detail: e.to_string(),
        }),
    }
}

fn store_spend(path: &Path, msat: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{msat}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The client's payment state, shared by its circuits' payment tasks.
pub struct ClientPayments {
    rail: Arc<dyn PaymentRail>,
    cfg: PayerConfig,
    cap: PriceCap,
    budget: Mutex<Budget>,
    spend_file: PathBuf,
    budget_reached: AtomicBool,
}

impl std::fmt::Debug for ClientPayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPayments")
            .field("budget", &*self.budget())
            .finish_non_exhaustive()
    }
}

impl ClientPayments {
    /// Payment state with a budget of `budget_msat`, resuming the spend persisted in
    /// `data_dir`.
    pub fn new(
        setup: &PaymentsSetup,
        cap: PriceCap,
        budget_msat: u64,
        data_dir: &Path,
    ) -> Result<ClientPayments, PayError> {
        let spent = load_spend(data_dir)?;
        let budget = Budget::new(Some(budget_msat), spent);
        // Not flagged as reached yet: free relays need no budget. The first payment the
        // budget cannot cover flags it.
        if spent >= budget_msat {
            warn!(
                spent,
                budget_msat, "payment budget already spent: paid relays unusable"
            );
        }
        Ok(ClientPayments {
            rail: setup.rail.clone(),
            cfg: setup.payer.clone(),
            cap,
            budget: Mutex::new(budget),
            spend_file: data_dir.join(SPEND_FILE),
            budget_reached: AtomicBool::new(false),
        })
    }

    fn budget(&self) -> MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spent so far (payments and fees), in msat.
    pub fn spent_msat(&self) -> u64 {
        self.budget().spent_msat()
    }

    /// Whether the budget was reached (the client no longer pays).
    pub fn budget_reached(&self) -> bool {
        self.budget_reached.load(Ordering::Relaxed)
    }

    /// The price cap payments honour.
    pub fn cap(&self) -> PriceCap {
        self.cap
    }

    /// How long a new circuit's first payments may take.
    pub fn first_payment_timeout(&self) -> Duration {
        self.cfg.first_payment_timeout
    }

    /// Starts paying for a built circuit whose hops have Lightning nodes `nodes` (from their
    /// descriptors): the first chunk of every paid hop is ordered at once. Returns `Ok(None)`
    /// if no hop charges, else a receiver of the first payments' outcome (closed without a
    /// value if the circuit ended first); an error if a charging hop has no node or terms
    /// above the cap (the caller drops the circuit). `on_rebuild` is called if payments to a
    /// hop keep failing later.
    pub fn start(
        self: &Arc<Self>,
        info: Arc<CircuitInfo>,
        nodes: &[[u8; 33]],
        on_rebuild: impl FnOnce(usize) + Send + 'static,
    ) -> Result<Option<oneshot::Receiver<FirstPayment>>, PayError> {
        let mut hops = Vec::new();
        for (i, t) in info.terms().iter().enumerate() {
            let Some(terms) = t else { continue };
            let node = nodes.get(i).copied().unwrap_or([0; 33]);
            if node == [0; 33] {
                return Err(PayError::Invalid {
                    what: "hop",
                    detail: format!("hop {i} charges but publishes no Lightning node"),
                });
            }
            hops.push((
                i,
                HopSpec {
                    node: NodeId(node),
                    terms: *terms,
                },
            ));
        }
        if hops.is_empty() {
            return Ok(None);
        }
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let specs: Vec<HopSpec> = hops.iter().map(|(_, h)| *h).collect();
        let payer = CircuitPayer::new(
            self.cfg.clone(),
            &specs,
            &self.cap,
            Instant::now(),
            &mut rng,
        )?;
        let index: Vec<usize> = hops.iter().map(|(i, _)| *i).collect();
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(
            self.clone()
                .run(info, payer, rng, index, first_tx, on_rebuild),
        );
        Ok(Some(first_rx))
    }

    fn persist(&self, spent: u64) {
        if let Err(e) = store_spend(&self.spend_file, spent) {
            warn!("cannot persist the payment spend: {e}");
        }
    }

    async fn run(
        self: Arc<Self>,
        info: Arc<CircuitInfo>,
        mut payer: CircuitPayer,
        mut rng: StdRng,
        index: Vec<usize>,
        first_tx: oneshot::Sender<FirstPayment>,
        on_rebuild: impl FnOnce(usize) + Send + 'static,
    ) {
        let mut on_rebuild = Some(on_rebuild);
        let mut first_tx = Some(first_tx);
        let mut first = |outcome: FirstPayment| {
            if let Some(tx) = first_tx.take() {
                // The manager may have stopped waiting (shut down): nothing to tell.
                let _ = tx.send(outcome);
            }
        };
        let mut inflight: JoinSet<(OrderId, Result<onionvpn_pay::Sent, PayError>)> = JoinSet::new();
        let mut counted = 0u64;
        let circ = info.id;
        loop {
            if info.is_dead() {
                break;
            }
            let cells = info.cells();
            payer.carried(
                cells
                    .saturating_sub(counted)
                    .saturating_mul(CELL_BODY_LEN as u64),
            );
            counted = cells;
            let now = Instant::now();
            let events = {
                let mut b = self.budget();
                payer.poll(now, &mut b, &mut rng)
            };
            for ev in events {
                match ev {
                    PayerEvent::Pay(order) => {
                        let rail = self.rail.clone();
                        inflight.spawn(async move { (order.id, rail.keysend(order.req).await) });
                    }
                    PayerEvent::BudgetReached {
                        spent_msat,
                        limit_msat,
                    } => {
                        if !self.budget_reached.swap(true, Ordering::Relaxed) {
                            warn!(
                                spent_msat,
                                limit_msat, "payment budget reached: the client stops paying"
                            );
                        }
                        first(FirstPayment::BudgetReached);
                    }
                    PayerEvent::Ready => first(FirstPayment::Paid),
                    PayerEvent::FirstPaymentFailed { hop, timed_out } => {
                        let hop = index.get(hop).copied().unwrap_or(hop);
                        first(if timed_out {
                            FirstPayment::TimedOut { hop }
                        } else {
                            FirstPayment::Failed { hop }
                        });
                    }
                    PayerEvent::Rebuild { hop } => {
                        let hop = index.get(hop).copied().unwrap_or(hop);
                        warn!(
                            circuit = circ,
                            hop, "payments to a hop keep failing: rebuilding elsewhere"
                        );
                        if let Some(f) = on_rebuild.take() {
                            f(hop);
                        }
                    }
                }
            }
            // Past what is paid the circuit waits for the payment on its way rather than
            // outrun it (and be torn down by the hop).
            info.set_allowance(payer.allowance_bytes(now, info.exit_window_bytes()));
            let wait = payer
                .next_deadline(now)
                .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
            tokio::select! {
                Some(res) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok((id, r)) = res {
                        self.on_result(&mut payer, &mut rng, id, r);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // The circuit ended: a manager still waiting for the first payments learns it now.
        drop(first_tx.take());
        // Payments already sent still complete: count them.
        let deadline = tokio::time::Instant::now() + DRAIN;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, inflight.join_next()).await {
                Ok(Some(Ok((id, r)))) => self.on_result(&mut payer, &mut rng, id, r),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        debug!(
            circuit = circ,
            paid_msat = payer.total_paid_msat(),
            "circuit payments done"
        );
    }

    fn on_result(
        &self,
        payer: &mut CircuitPayer,
        rng: &mut StdRng,
        id: OrderId,
        r: Result<onionvpn_pay::Sent, PayError>,
    ) {
        let now = Instant::now();
        let result = match &r {
            Ok(sent) => PayResult::Sent {
                fee_msat: sent.fee_msat,
            },
            Err(e) => {
                info!("payment failed: {e}");
                PayResult::Failed
            }
        };
        let spent = {
            let mut b = self.budget();
            payer.on_result(id, result, now, &mut b, rng);
            b.spent_msat()
        };
        if let Ok(sent) = r {
            self.persist(spent);
            // Prune: the node's store would otherwise keep one record per payment. On a
            // blocking thread: the rail deletes from its store on disk, which must not stall
            // the runtime that carries the circuits.
            let rail = self.rail.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = rail.forget(sent.id) {
                    debug!("forgetting a payment: {e}");
                }
            });
        }
    }
}
