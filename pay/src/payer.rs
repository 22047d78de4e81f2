//! The client's payment schedule for one circuit (sans-IO).
//!
//! For each hop the payer keeps the hop paid a little ahead of use: use is priced as the
//! relay prices it ([`crate::account::price`]: bytes carried and circuit age by the hop's
//! terms). When a hop's unused credit falls to a threshold, the payer orders a payment that
//! tops it up to exactly one chunk ahead; it never orders another for that hop while one is
//! unconfirmed, so at most one chunk per hop is at risk (sent but unused, or in flight).
//!
//! Chunk size adapts to the link: a chunk must cover what the circuit uses while a payment
//! is on its way, or a fast download outruns its payments and the relay ends the circuit.
//! The payer measures the circuit's throughput and each hop's payment latency (order to
//! result) and sizes each hop's chunk to what the hop's terms charge for six times
//! (latency + jitter) of use at that throughput, never below [`PayerConfig::chunk_msat`]
//! and never above [`PayerConfig::max_chunk_msat`] (the most ever at risk per hop).
//!
//! Jitter: each hop's threshold is drawn afresh for every payment (between a quarter and
//! three quarters of its chunk) and each payment waits a random delay up to
//! [`PayerConfig::jitter`], so the hops of one circuit, which see the same bytes, do not pay
//! in lockstep (which would let one observer link them by timing).
//!
//! First payment: a circuit must not carry data before every hop holds its first chunk (a
//! stream started at once would pass the relay's grace while the keysends are still on
//! their way, ~0.1–0.5 s each, and the relay would cut the circuit). The payer orders the
//! first chunk of every hop as soon as it is polled, reports [`PayerEvent::Ready`] once all
//! of them succeeded, and gives the circuit up ([`PayerEvent::FirstPaymentFailed`]) if one
//! fails or they have not all succeeded [`PayerConfig::first_payment_timeout`] after the
//! payer was made. No retry here: a fresh circuit through another relay is quicker than a
//! retry delay, and the circuit never carried anything.
//!
//! Limits: terms above the [`PriceCap`] are refused when the payer is built; every order
//! reserves its amount in the shared [`Budget`] first, and when the budget cannot cover it
//! the payer stops paying and says so ([`PayerEvent::BudgetReached`]). A failed payment is
//! retried up to [`PayerConfig::max_attempts`] in all, then the payer reports
//! [`PayerEvent::Rebuild`] (build the circuit again through another relay) and stops.
//!
//! Inputs: bytes carried ([`CircuitPayer::carried`]), payment results
//! ([`CircuitPayer::on_result`]), the time. Outputs: events from [`CircuitPayer::poll`] and
//! the next time to poll ([`CircuitPayer::next_deadline`]). No clock, no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use onionvpn_proto::ext::PaymentTerms;
use rand_core::Rng;

use crate::account::{bytes_for, price, time_price};
use crate::rail::{KeysendRequest, NodeId};
use crate::PayError;

/// How the payer pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayerConfig {
    /// How far ahead of use each hop is paid at least, in msat.
    pub chunk_msat: u64,
    /// Largest chunk the payer grows to when throughput × payment latency needs more than
    /// `chunk_msat`: the most at risk per hop. At or below `chunk_msat` the chunk is fixed.
    pub max_chunk_msat: u64,
    /// Attempts per payment (first try included) before giving the hop up.
    pub max_attempts: u32,
    /// Wait before retrying a failed payment.
    pub retry_delay: Duration,
    /// Largest random delay added before each payment.
    pub jitter: Duration,
    /// Routing fee cap per payment, in msat.
    pub max_fee_msat: u64,
    /// How long the first payments of a new circuit (one chunk to every hop) may take before
    /// the circuit is given up.
    pub first_payment_timeout: Duration,
}

impl Default for PayerConfig {
    fn default() -> Self {
        PayerConfig {
            chunk_msat: 10_000,
            max_chunk_msat: 200_000,
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
            jitter: Duration::from_millis(500),
            max_fee_msat: 1_000,
            first_payment_timeout: Duration::from_secs(10),
        }
    }
}

/// The highest prices the client accepts for a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceCap {
    /// Millisatoshi per MiB.
    pub msat_per_mib: u64,
    /// Millisatoshi per minute.
    pub msat_per_min: u64,
}

impl PriceCap {
    /// Whether `terms` are within the cap.
    pub fn allows(&self, terms: &PaymentTerms) -> bool {
        terms.msat_per_mib <= self.msat_per_mib && terms.msat_per_min <= self.msat_per_min
    }
}

/// The client's spending budget, shared by all its circuits. Amounts are reserved when a
/// payment is ordered, then committed (sent) or released (failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    limit_msat: Option<u64>,
    spent_msat: u64,
    reserved_msat: u64,
}

impl Budget {
    /// A budget of `limit_msat` (`None`: unlimited) of which `spent_msat` is already spent
    /// (restored from the client's data dir).
    pub fn new(limit_msat: Option<u64>, spent_msat: u64) -> Budget {
        Budget {
            limit_msat,
            spent_msat,
            reserved_msat: 0,
        }
    }

    /// The limit, if any.
    pub fn limit_msat(&self) -> Option<u64> {
        self.limit_msat
    }

    /// Spent so far (payments and routing fees), in msat.
    pub fn spent_msat(&self) -> u64 {
        self.spent_msat
    }

    /// Reserved by payments in flight, in msat.
    pub fn reserved_msat(&self) -> u64 {
        self.reserved_msat
    }

    /// Reserves `amount_msat` plus `max_fee_msat` if the budget covers it.
    pub fn try_reserve(&mut self, amount_msat: u64, max_fee_msat: u64) -> bool {
        let want = amount_msat.saturating_add(max_fee_msat);
        let used = self.spent_msat.saturating_add(self.reserved_msat);
        match self.limit_msat {
            Some(limit) if used.saturating_add(want) > limit => false,
            _ => {
                self.reserved_msat = self.reserved_msat.saturating_add(want);
                true
            }
        }
    }

    /// A reserved payment was sent: `amount_msat + fee_msat` is spent.
    pub fn commit(&mut self, amount_msat: u64, max_fee_msat: u64, fee_msat: u64) {
        self.release(amount_msat, max_fee_msat);
        self.spent_msat = self
            .spent_msat
            .saturating_add(amount_msat.saturating_add(fee_msat));
    }

    /// A reserved payment failed: its reservation is returned.
    pub fn release(&mut self, amount_msat: u64, max_fee_msat: u64) {
        self.reserved_msat = self
            .reserved_msat
            .saturating_sub(amount_msat.saturating_add(max_fee_msat));
    }
}

/// One hop to pay: its Lightning node and the terms it confirmed in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopSpec {
    /// The relay's Lightning node (from its descriptor).
    pub node: NodeId,
    /// The terms (with the hop's token).
    pub terms: PaymentTerms,
}

/// Identifies an order of one payer, to report its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(pub u64);

/// A payment to make now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Order {
    /// Report the result with this id.
    pub id: OrderId,
    /// The hop (0 = guard).
    pub hop: usize,
    /// The keysend to send.
    pub req: KeysendRequest,
}

/// What the payer asks of its shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayerEvent {
    /// Send this payment and report the result with [`CircuitPayer::on_result`].
    Pay(Order),
    /// The budget cannot cover the next payment: the payer has stopped paying (the
    /// circuit will end when its grace runs out). Reported once.
    BudgetReached {
        /// Spent so far, in msat.
        spent_msat: u64,
        /// The limit, in msat.
        limit_msat: u64,
    },
    /// Payments to this hop failed `max_attempts` times: build the circuit again through
    /// another relay. The payer has stopped. Reported once.
    Rebuild {
        /// The hop that could not be paid.
        hop: usize,
    },
    /// Every hop has received its first chunk: the circuit may carry streams. Reported once.
    Ready,
    /// The first payment to this hop failed, or the first payments had not all succeeded
    /// within [`PayerConfig::first_payment_timeout`]: discard the circuit (it never carried
    /// a stream) and build another, avoiding this hop's relay. The payer has stopped.
    /// Reported once.
    FirstPaymentFailed {
        /// The (first) hop not paid.
        hop: usize,
        /// `true`: the time ran out (the payment may still be in flight); `false`: the
        /// payment failed.
        timed_out: bool,
    },
}

/// The result of an order, as the rail reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayResult {
    /// Delivered; routing fees paid.
    Sent {
        /// Fees in msat.
        fee_msat: u64,
    },
    /// Failed.
    Failed,
}

#[derive(Clone, Debug)]
struct InFlight {
    id: OrderId,
    amount_msat: u64,
    attempt: u32,
    /// When the order was handed out (its latency is measured from here).
    sent_at: Instant,
}

/// How often the throughput estimate takes a sample.
const RATE_WINDOW: Duration = Duration::from_millis(50);
/// How many (latency + jitter) of use a chunk covers: the payment is ordered when a quarter
/// to three quarters of the chunk is left, so a quarter must cover one payment's jitter and
/// latency, with a margin for a rising throughput.
const CHUNK_HORIZONS: u32 = 6;

/// The circuit's throughput, estimated from the bytes carried (sans-IO: sampled in `poll`).
#[derive(Clone, Debug)]
struct Throughput {
    at: Instant,
    bytes: u64,
    bytes_per_sec: f64,
}

impl Throughput {
    fn sample(&mut self, now: Instant, bytes: u64) {
        let dt = now.saturating_duration_since(self.at);
        if dt < RATE_WINDOW {
            return;
        }
        let inst = bytes.saturating_sub(self.bytes) as f64 / dt.as_secs_f64();
        // Rises at once (an outrun circuit is lost), decays over a few windows.
        self.bytes_per_sec = if inst >= self.bytes_per_sec {
            inst
        } else {
            (self.bytes_per_sec + inst) / 2.0
        };
        if self.bytes_per_sec < 1.0 {
            self.bytes_per_sec = 0.0;
        }
        self.at = now;
        self.bytes = bytes;
    }
}

#[derive(Clone, Debug)]
struct Hop {
    spec: HopSpec,
    /// Delivered to the relay, msat.
    confirmed_msat: u64,
    inflight: Option<InFlight>,
    /// A payment decided and waiting for its jitter delay or retry delay:
    /// (when, amount, attempt number).
    due: Option<(Instant, u64, u32)>,
    /// Pay when unused credit falls to this fraction of the chunk, in thousandths (drawn
    /// per payment).
    threshold_permille: u64,
    /// Payment latency seen on this hop (order to result; rises at once, decays slowly).
    latency: Option<Duration>,
}

/// The payment schedule of one circuit.
#[derive(Clone, Debug)]
pub struct CircuitPayer {
    cfg: PayerConfig,
    hops: Vec<Hop>,
    opened: Instant,
    bytes: u64,
    rate: Throughput,
    next_id: u64,
    events: VecDeque<PayerEvent>,
    stopped: bool,
    /// Every hop received its first chunk ([`PayerEvent::Ready`] reported).
    ready: bool,
}

impl CircuitPayer {
    /// A payer for a circuit opened at `now` through `hops` (only the hops that charge).
    /// Fails if a hop's terms are above `cap` or the config is unusable.
    pub fn new<R: Rng + ?Sized>(
        cfg: PayerConfig,
        hops: &[HopSpec],
        cap: &PriceCap,
        now: Instant,
        rng: &mut R,
    ) -> Result<CircuitPayer, PayError> {
        if cfg.chunk_msat == 0 || cfg.max_attempts == 0 {
            return Err(PayError::Invalid {
                what: "payer config",
                detail: "chunk_msat and max_attempts must be positive".into(),
            });
        }
        if let Some(h) = hops.iter().find(|h| !cap.allows(&h.terms)) {
            return Err(PayError::Invalid {
                what: "hop terms",
                detail: format!(
                    "{} msat/MiB, {} msat/min is above the cap of {} msat/MiB, {} msat/min",
                    h.terms.msat_per_mib, h.terms.msat_per_min, cap.msat_per_mib, cap.msat_per_min
                ),
            });
        }
        let empty = hops.is_empty();
        let hops = hops
            .iter()
            .map(|spec| Hop {
                spec: *spec,
                confirmed_msat: 0,
                inflight: None,
                due: None,
                threshold_permille: draw_threshold(rng),
                latency: None,
            })
            .collect();
        Ok(CircuitPayer {
            cfg,
            hops,
            opened: now,
            bytes: 0,
            rate: Throughput {
                at: now,
                bytes: 0,
                bytes_per_sec: 0.0,
            },
            next_id: 0,
            events: if empty {
                VecDeque::from([PayerEvent::Ready])
            } else {
                VecDeque::new()
            },
            stopped: false,
            ready: empty,
        })
    }

    /// Adds bytes carried by the circuit (counted as the relays count them: relay cell
    /// bodies, both directions).
    pub fn carried(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Whether the payer has stopped (budget reached or a hop given up).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether every hop has received its first chunk (the circuit may carry streams).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Delivered to hop `hop` so far, in msat.
    pub fn paid_msat(&self, hop: usize) -> u64 {
        self.hops.get(hop).map_or(0, |h| h.confirmed_msat)
    }

    /// Delivered to all hops so far, in msat.
    pub fn total_paid_msat(&self) -> u64 {
        self.hops
            .iter()
            .fold(0u64, |s, h| s.saturating_add(h.confirmed_msat))
    }

    /// What hop `hop` is owed by its terms at `now`, in msat.
    pub fn owed_msat(&self, hop: usize, now: Instant) -> u64 {
        self.hops.get(hop).map_or(0, |h| self.owed(h, now))
    }

    /// The chunk hop `hop` is paid ahead by now, in msat (see the module docs).
    pub fn chunk_msat(&self, hop: usize) -> u64 {
        self.hops.get(hop).map_or(0, |h| self.chunk_of(h))
    }

    /// The bytes the circuit may have carried in all (relay cell bodies, both directions, as
    /// the hops count them) at `now` before the exit's data still on its way could take some
    /// hop past what it has been paid (confirmed payments only) and half its grace; `None` if
    /// no hop charges by the byte or the payer has stopped (then the hops' own enforcement
    /// ends the circuit rather than leave it waiting for payments that will not come).
    ///
    /// The client stops acknowledging the exit's data at this point
    /// (`ClientCircuit::set_byte_allowance`), so a download waits for a payment still on its
    /// way instead of outrunning it and being torn down by the hop. The exit may still send
    /// a congestion window's worth past the last acknowledgement: `exit_window_bytes`, the
    /// window the exit confirmed (`ClientCircuit::exit_window`, in bytes). For a hop whose
    /// grace is twice that window this is exactly what it was paid; a smaller grace stops
    /// the download earlier. With no confirmed window the limit is what was paid, and the
    /// hops' grace must cover the exit's window (it does on loopback: ~330 cells, 165 KiB).
    pub fn allowance_bytes(&self, now: Instant, exit_window_bytes: Option<u64>) -> Option<u64> {
        if self.stopped {
            return None;
        }
        let age = now.saturating_duration_since(self.opened);
        self.hops
            .iter()
            .filter_map(|h| {
                let t = &h.spec.terms;
                let limit = h
                    .confirmed_msat
                    .saturating_sub(time_price(t.msat_per_min, age));
                let paid = bytes_for(t.msat_per_mib, limit)?;
                Some(match exit_window_bytes {
                    Some(window) => paid
                        .saturating_add(u64::from(t.grace_kib) * 512)
                        .saturating_sub(window),
                    None => paid,
                })
            })
            .min()
    }

    /// Estimated throughput of the circuit, bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.rate.bytes_per_sec
    }

    fn chunk_of(&self, h: &Hop) -> u64 {
        let base = self.cfg.chunk_msat;
        if self.cfg.max_chunk_msat <= base {
            return base;
        }
        let horizon =
            (h.latency.unwrap_or_default() + self.cfg.jitter).saturating_mul(CHUNK_HORIZONS);
        self.use_during(h, horizon)
            .clamp(base, self.cfg.max_chunk_msat)
    }

    /// What hop `h` charges for `d` of use at the estimated throughput, in msat.
    fn use_during(&self, h: &Hop, d: Duration) -> u64 {
        // Saturating float-to-int conversion: absurd rates end at max_chunk_msat.
        let bytes = (self.rate.bytes_per_sec * d.as_secs_f64()) as u64;
        price(&h.spec.terms, bytes, d)
    }

    fn threshold_of(&self, h: &Hop) -> u64 {
        let t = u128::from(self.chunk_of(h)) * u128::from(h.threshold_permille) / 1000;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn owed(&self, h: &Hop, now: Instant) -> u64 {
        price(
            &h.spec.terms,
            self.bytes,
            now.saturating_duration_since(self.opened),
        )
    }

    /// Decides what to do at `now`: the payments to send, and events to report.
    pub fn poll<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        budget: &mut Budget,
        rng: &mut R,
    ) -> Vec<PayerEvent> {
        let mut out: Vec<PayerEvent> = self.events.drain(..).collect();
        if self.stopped {
            return out;
        }
        if !self.ready && now >= self.first_deadline() {
            let hop = self
                .hops
                .iter()
                .position(|h| h.confirmed_msat == 0)
                .unwrap_or(0);
            self.stopped = true;
            out.push(PayerEvent::FirstPaymentFailed {
                hop,
                timed_out: true,
            });
            return out;
        }
        self.rate.sample(now, self.bytes);
        for i in 0..self.hops.len() {
            let owed = self.owed(&self.hops[i], now);
            let chunk = self.chunk_of(&self.hops[i]);
            let threshold = self.threshold_of(&self.hops[i]);
            let jitter = self.cfg.jitter;
            // What the circuit uses while a jittered payment waits and travels: credit below
            // it runs out before the payment lands, so such a payment goes at once.
            let urgent_below = self.use_during(
                &self.hops[i],
                self.hops[i].latency.unwrap_or_default() + jitter,
            );
            let h = &mut self.hops[i];
            if h.inflight.is_some() {
                continue;
            }
            if h.due.is_none() {
                // Unused credit (negative: behind).
                let unused = i128::from(h.confirmed_msat) - i128::from(owed);
                if unused > i128::from(threshold) {
                    continue;
                }
                // Behind (using unpaid grace) or about to be: pay at once; ahead: after a
                // random delay.
                let delay = if unused >= i128::from(urgent_below) {
                    random_duration(jitter, rng)
                } else {
                    Duration::ZERO
                };
                h.due = Some((now + delay, 0, 1));
            }
            let Some((at, retry_amount, attempt)) = h.due else {
                continue;
            };
            if at > now {
                continue;
            }
            // A first attempt tops up to one chunk ahead of use as it is now; a retry
            // sends what failed.
            let amount = if retry_amount > 0 {
                retry_amount
            } else {
                let target = owed.saturating_add(chunk);
                target.saturating_sub(h.confirmed_msat)
            };
            if amount == 0 {
                h.due = None;
                continue;
            }
            if !budget.try_reserve(amount, self.cfg.max_fee_msat) {
                self.stopped = true;
                out.push(PayerEvent::BudgetReached {
                    spent_msat: budget.spent_msat(),
                    limit_msat: budget.limit_msat().unwrap_or(u64::MAX),
                });
                return out;
            }
            let id = OrderId(self.next_id);
            self.next_id += 1;
            h.due = None;
            h.inflight = Some(InFlight {
                id,
                amount_msat: amount,
                attempt,
                sent_at: now,
            });
            out.push(PayerEvent::Pay(Order {
                id,
                hop: i,
                req: KeysendRequest {
                    to: h.spec.node,
                    amount_msat: amount,
                    token: h.spec.terms.token,
                    max_fee_msat: self.cfg.max_fee_msat,
                },
            }));
        }
        out
    }

    /// Reports the result of order `id` (unknown ids are ignored). Call [`Self::poll`]
    /// afterwards.
    pub fn on_result<R: Rng + ?Sized>(
        &mut self,
        id: OrderId,
        result: PayResult,
        now: Instant,
        budget: &mut Budget,
        rng: &mut R,
    ) {
        let max_fee = self.cfg.max_fee_msat;
        let Some((i, h)) = self
            .hops
            .iter_mut()
            .enumerate()
            .find(|(_, h)| h.inflight.as_ref().is_some_and(|f| f.id == id))
        else {
            return;
        };
        let Some(f) = h.inflight.take() else {
            return;
        };
        match result {
            PayResult::Sent { fee_msat } => {
                budget.commit(f.amount_msat, max_fee, fee_msat.min(max_fee));
                h.confirmed_msat = h.confirmed_msat.saturating_add(f.amount_msat);
                h.threshold_permille = draw_threshold(rng);
                let took = now.saturating_duration_since(f.sent_at);
                h.latency = Some(match h.latency {
                    Some(l) if l > took => (l * 7 + took) / 8,
                    _ => took,
                });
                if !self.ready && !self.stopped && self.hops.iter().all(|h| h.confirmed_msat > 0) {
                    self.ready = true;
                    self.events.push_back(PayerEvent::Ready);
                }
            }
            PayResult::Failed => {
                budget.release(f.amount_msat, max_fee);
                if self.stopped {
                    return;
                }
                if !self.ready {
                    self.stopped = true;
                    self.events.push_back(PayerEvent::FirstPaymentFailed {
                        hop: i,
                        timed_out: false,
                    });
                } else if f.attempt >= self.cfg.max_attempts {
                    self.stopped = true;
                    self.events.push_back(PayerEvent::Rebuild { hop: i });
                } else {
                    h.due = Some((now + self.cfg.retry_delay, f.amount_msat, f.attempt + 1));
                }
            }
        }
    }

    /// When [`Self::poll`] should next be called if nothing else happens (no bytes, no
    /// results): a due payment, the time at which the per-minute price alone brings a
    /// hop to its threshold, or the next throughput sample while bytes flow. `None`: only new bytes or results can change anything.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        // Events to report (a stopped payer's last one included) are due at once.
        if !self.events.is_empty() {
            return Some(now);
        }
        if self.stopped {
            return None;
        }
        let mut best: Option<Instant> = (!self.ready).then(|| self.first_deadline());
        for h in &self.hops {
            if h.inflight.is_some() {
                continue;
            }
            let at = match h.due {
                Some((at, _, _)) => Some(at),
                None => self.threshold_time(h),
            };
            if let Some(at) = at {
                best = Some(best.map_or(at, |b| b.min(at)));
            }
        }
        // While bytes flow the chunk follows the throughput estimate: sample it again.
        if self.cfg.max_chunk_msat > self.cfg.chunk_msat && self.rate.bytes_per_sec > 0.0 {
            let at = self.rate.at + RATE_WINDOW;
            best = Some(best.map_or(at, |b| b.min(at)));
        }
        best.map(|b| b.max(now))
    }

    /// When the first payments must all have succeeded.
    fn first_deadline(&self) -> Instant {
        self.opened
            .checked_add(self.cfg.first_payment_timeout)
            .unwrap_or(self.opened)
    }

    /// The circuit age at which hop `h`'s unused credit reaches its threshold by time alone.
    fn threshold_time(&self, h: &Hop) -> Option<Instant> {
        let per_min = h.spec.terms.msat_per_min;
        if per_min == 0 {
            return None;
        }
        let by_bytes = price(&h.spec.terms, self.bytes, Duration::ZERO);
        let room = h
            .confirmed_msat
            .saturating_sub(self.threshold_of(h))
            .saturating_sub(by_bytes);
        // Smallest age whose time price reaches `room`.
        let ms = (u128::from(room) * 60_000).div_ceil(u128::from(per_min));
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        self.opened.checked_add(Duration::from_millis(ms))
    }
}

/// A threshold between a quarter and three quarters of a chunk, in thousandths.
fn draw_threshold<R: Rng + ?Sized>(rng: &mut R) -> u64 {
    250 + rng.next_u64() % 500
}

fn random_duration<R: Rng + ?Sized>(max: Duration, rng: &mut R) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.next_u64() % ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionvpn_proto::ext::PaymentToken;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const CAP: PriceCap = PriceCap {
        msat_per_mib: 2000,
        msat_per_min: 100,
    };

    fn hop(n: u8, mib: u64, min: u64) -> HopSpec {
        HopSpec {
            node: NodeId([n; 33]),
            terms: PaymentTerms {
                msat_per_mib: mib,
                msat_per_min: min,
                grace_kib: 256,
                token: PaymentToken([n; 16]),
            },
        }
    }

    fn cfg() -> PayerConfig {
        PayerConfig {
            chunk_msat: 1000,
            max_chunk_msat: 1000,
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
            jitter: Duration::from_millis(300),
            max_fee_msat: 10,
            first_payment_timeout: Duration::from_secs(3600),
        }
    }

    fn orders(ev: &[PayerEvent]) -> Vec<Order> {
        ev.iter()
            .filter_map(|e| match e {
                PayerEvent::Pay(o) => Some(*o),
                _ => None,
            })
            .collect()
    }

    /// Runs a payer over a transfer: `mib` MiB in steps of 64 KiB, one step per 10 ms,
    /// every order succeeding at once. Returns the payer, the budget and the largest
    /// at-risk amount seen on any hop.
    fn run(
        hops: &[HopSpec],
        mib: u64,
        budget: Option<u64>,
        seed: u64,
    ) -> (CircuitPayer, Budget, u64, Vec<PayerEvent>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let mut p = CircuitPayer::new(cfg(), hops, &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(budget, 0);
        let mut max_risk = 0;
        let mut all = Vec::new();
        let steps = mib * 16;
        for s in 0..=steps + 100 {
            let now = t0 + Duration::from_millis(10 * s);
            if s > 0 && s <= steps {
                p.carried(64 * 1024);
            }
            let ev = p.poll(now, &mut b, &mut rng);
            for o in orders(&ev) {
                let risk = (p.paid_msat(o.hop) + o.req.amount_msat)
                    .saturating_sub(p.owed_msat(o.hop, now));
                max_risk = max_risk.max(risk);
                p.on_result(o.id, PayResult::Sent { fee_msat: 1 }, now, &mut b, &mut rng);
            }
            all.extend(ev);
        }
        (p, b, max_risk, all)
    }

    #[test]
    fn pays_each_hop_ahead_within_one_chunk() {
        let hops = [hop(1, 1000, 0), hop(2, 500, 0), hop(3, 2000, 0)];
        let (p, b, max_risk, _) = run(&hops, 10, None, 1);
        let end = Instant::now() + Duration::from_secs(3600);
        for (i, h) in hops.iter().enumerate() {
            let owed = h.terms.msat_per_mib * 10;
            let paid = p.paid_msat(i);
            assert!(paid >= owed, "hop {i}: paid {paid} < owed {owed}");
            assert!(
                paid <= owed + 1000,
                "hop {i}: paid {paid} > owed {owed} + chunk"
            );
            let _ = end;
        }
        assert!(max_risk <= 1000, "at risk {max_risk} > one chunk");
        // Spend = payments + fees (1 msat per payment).
        assert!(b.spent_msat() > p.total_paid_msat());
        assert_eq!(b.reserved_msat(), 0);
    }

    #[test]
    fn allowance_is_what_the_least_paid_hop_was_paid() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        // 256 KiB grace each; hop 1 charges twice as much per MiB, hop 2 only by the minute.
        let hops = [hop(1, 1000, 0), hop(2, 2000, 0), hop(3, 0, 60)];
        let mut p = CircuitPayer::new(cfg(), &hops, &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        // Nothing confirmed: nothing.
        assert_eq!(p.allowance_bytes(t0, None), Some(0));
        // First payments go after their jitter (≤ 300 ms).
        let t1 = t0 + Duration::from_secs(1);
        p.poll(t0, &mut b, &mut rng);
        let ev = p.poll(t1, &mut b, &mut rng);
        assert_eq!(orders(&ev).len(), 3);
        for o in orders(&ev) {
            p.on_result(o.id, PayResult::Sent { fee_msat: 0 }, t1, &mut b, &mut rng);
        }
        // One chunk (1000 msat) each: 1 MiB at hop 0, 0.5 MiB at hop 1.
        assert_eq!(p.allowance_bytes(t1, None), Some(1 << 19));
        // The exit's window must fit in half a hop's grace (128 KiB here): a 64 KiB window
        // leaves 64 KiB of it to use; a 256 KiB one stops 128 KiB short of what was paid.
        assert_eq!(
            p.allowance_bytes(t1, Some(64 << 10)),
            Some((1 << 19) + (64 << 10))
        );
        assert_eq!(
            p.allowance_bytes(t1, Some(256 << 10)),
            Some((1 << 19) - (128 << 10))
        );
        // A window past what was paid and half the grace: nothing.
        assert_eq!(p.allowance_bytes(t1, Some(1 << 20)), Some(0));
        // A free-by-the-byte circuit has no allowance.
        let free = CircuitPayer::new(cfg(), &[hop(4, 0, 60)], &CAP, t0, &mut rng).unwrap();
        assert_eq!(free.allowance_bytes(t0, Some(1 << 20)), None);
        // The per-minute price eats into it: a minute at 60 msat/min is 60 msat less.
        let per_min = [hop(5, 1000, 60)];
        let mut q = CircuitPayer::new(cfg(), &per_min, &CAP, t0, &mut rng).unwrap();
        q.poll(t0, &mut b, &mut rng);
        for o in orders(&q.poll(t1, &mut b, &mut rng)) {
            q.on_result(o.id, PayResult::Sent { fee_msat: 0 }, t1, &mut b, &mut rng);
        }
        let a0 = q.allowance_bytes(t1, None).unwrap();
        let a1 = q
            .allowance_bytes(t1 + Duration::from_secs(60), None)
            .unwrap();
        assert!(a1 > 0);
        // (Each side rounds down on its own: one byte either way.)
        assert!(
            (a0 - a1).abs_diff(60 * (1 << 20) / 1000) <= 1,
            "{a0} - {a1}"
        );
    }

    #[test]
    fn hops_do_not_pay_in_lockstep() {
        let hops = [hop(1, 1000, 0), hop(2, 1000, 0), hop(3, 1000, 0)];
        let (_, _, _, ev) = run(&hops, 10, None, 7);
        // Same prices, same bytes: without jitter every hop would pay at the same steps.
        let per_hop = |k: usize| -> Vec<u64> {
            orders(&ev)
                .iter()
                .filter(|o| o.hop == k)
                .map(|o| o.req.amount_msat)
                .collect()
        };
        assert_ne!(per_hop(0), per_hop(1));
        assert_ne!(per_hop(1), per_hop(2));
    }

    #[test]
    fn one_payment_in_flight_per_hop() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut c = cfg();
        c.jitter = Duration::ZERO;
        let mut p = CircuitPayer::new(c, &[hop(1, 1000, 0)], &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        let later = t0 + Duration::from_secs(1);
        let first = orders(&p.poll(later, &mut b, &mut rng));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].req.amount_msat, 1000);
        assert_eq!(first[0].req.token, PaymentToken([1; 16]));
        // Lots of use, still unconfirmed: nothing more.
        p.carried(50 << 20);
        assert!(orders(&p.poll(later, &mut b, &mut rng)).is_empty());
        p.on_result(
            first[0].id,
            PayResult::Sent { fee_msat: 0 },
            later,
            &mut b,
            &mut rng,
        );
        let t = later + Duration::from_secs(1);
        let next = orders(&p.poll(t, &mut b, &mut rng));
        // Catches up the 50 MiB used and goes one chunk ahead.
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].req.amount_msat, 50_000);
    }

    #[test]
    fn refuses_terms_above_the_cap() {
        let mut rng = StdRng::seed_from_u64(0);
        let t0 = Instant::now();
        for h in [hop(1, 2001, 0), hop(1, 0, 101)] {
            let r = CircuitPayer::new(cfg(), &[hop(2, 1, 1), h], &CAP, t0, &mut rng);
            assert!(matches!(
                r,
                Err(PayError::Invalid {
                    what: "hop terms",
                    ..
                })
            ));
        }
        assert!(CircuitPayer::new(cfg(), &[hop(1, 2000, 100)], &CAP, t0, &mut rng).is_ok());
    }

    #[test]
    fn stops_and_says_so_when_the_budget_is_reached() {
        let hops = [hop(1, 1000, 0), hop(2, 1000, 0)];
        let (p, b, _, ev) = run(&hops, 10, Some(5_000), 5);
        let reached: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e, PayerEvent::BudgetReached { .. }))
            .collect();
        assert_eq!(reached.len(), 1);
        assert!(p.stopped());
        assert!(b.spent_msat() <= 5_000, "spent {}", b.spent_msat());
        assert!(p.total_paid_msat() < 20_000);
    }

    #[test]
    fn a_budget_restored_from_disk_counts_earlier_spend() {
        let mut b = Budget::new(Some(1000), 990);
        assert!(!b.try_reserve(5, 10));
        assert!(b.try_reserve(5, 5));
        b.commit(5, 5, 2);
        assert_eq!(b.spent_msat(), 997);
        assert_eq!(b.reserved_msat(), 0);
        assert!(Budget::new(None, u64::MAX).try_reserve(u64::MAX, 1));
    }

    #[test]
    fn retries_then_asks_for_a_rebuild() {
        let mut rng = StdRng::seed_from_u64(9);
        let t0 = Instant::now();
        let mut c = cfg();
        c.jitter = Duration::ZERO;
        let mut p = CircuitPayer::new(c, &[hop(1, 1000, 0)], &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        let mut now = t0 + Duration::from_secs(1);
        // The first chunk lands (the circuit is ready); then 1 MiB is used.
        let first = orders(&p.poll(now, &mut b, &mut rng));
        p.on_result(
            first[0].id,
            PayResult::Sent { fee_msat: 0 },
            now,
            &mut b,
            &mut rng,
        );
        assert_eq!(p.poll(now, &mut b, &mut rng), vec![PayerEvent::Ready]);
        p.carried(1 << 20);
        let mut attempts = 0;
        let mut rebuild = None;
        for _ in 0..20 {
            for e in p.poll(now, &mut b, &mut rng) {
                match e {
                    PayerEvent::Pay(o) => {
                        attempts += 1;
                        assert_eq!(o.req.amount_msat, 1000);
                        p.on_result(o.id, PayResult::Failed, now, &mut b, &mut rng);
                    }
                    PayerEvent::Rebuild { hop } => rebuild = Some(hop),
                    e => panic!("unexpected {e:?}"),
                }
            }
            now = p.next_deadline(now).unwrap_or(now + Duration::from_secs(1));
        }
        assert_eq!(attempts, 3);
        assert_eq!(rebuild, Some(0));
        assert!(p.stopped());
        assert_eq!(b.reserved_msat(), 0);
        assert_eq!(b.spent_msat(), 1000);
    }

    #[test]
    fn time_price_sets_the_next_deadline() {
        let mut rng = StdRng::seed_from_u64(11);
        let t0 = Instant::now();
        let mut c = cfg();
        c.jitter = Duration::ZERO;
        let mut p = CircuitPayer::new(c, &[hop(1, 0, 60)], &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        let o = orders(&p.poll(t0, &mut b, &mut rng));
        assert_eq!(o.len(), 1);
        p.on_result(
            o[0].id,
            PayResult::Sent { fee_msat: 0 },
            t0,
            &mut b,
            &mut rng,
        );
        assert_eq!(p.poll(t0, &mut b, &mut rng), vec![PayerEvent::Ready]);
        // 1000 msat ahead at 60 msat/min (1 msat/s): the threshold (250..750 msat) is
        // reached by time alone between 250 and 750 s.
        let d = p.next_deadline(t0).unwrap();
        let age = d - t0;
        assert!(
            age >= Duration::from_secs(250) && age <= Duration::from_secs(750),
            "{age:?}"
        );
        assert!(orders(&p.poll(d - Duration::from_secs(2), &mut b, &mut rng)).is_empty());
        assert_eq!(orders(&p.poll(d, &mut b, &mut rng)).len(), 1);
    }

    /// Runs one hop at 1000 msat/MiB over `secs` seconds of a 10 MiB/s transfer (100 KiB
    /// every 10 ms) where each payment takes `latency` to confirm. Returns the payer, the
    /// largest shortfall (owed − paid) after the first second, and the largest amount at
    /// risk (paid + in flight − owed) seen.
    fn run_with_latency(
        cfg: PayerConfig,
        latency: Duration,
        secs: u64,
    ) -> (CircuitPayer, u64, u64) {
        let mut rng = StdRng::seed_from_u64(21);
        let t0 = Instant::now();
        let mut p = CircuitPayer::new(cfg, &[hop(1, 1000, 0)], &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        let mut pending: Vec<(Instant, OrderId, u64)> = Vec::new();
        let (mut short, mut risk) = (0u64, 0u64);
        for s in 0..secs * 100 {
            let now = t0 + Duration::from_millis(10 * s);
            p.carried(100 * 1024);
            let (done, wait): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(at, _, _)| *at <= now);
            pending = wait;
            for (_, id, _) in done {
                p.on_result(id, PayResult::Sent { fee_msat: 0 }, now, &mut b, &mut rng);
            }
            for o in orders(&p.poll(now, &mut b, &mut rng)) {
                pending.push((now + latency, o.id, o.req.amount_msat));
            }
            let owed = p.owed_msat(0, now);
            let flying: u64 = pending.iter().map(|(_, _, a)| a).sum();
            risk = risk.max((p.paid_msat(0) + flying).saturating_sub(owed));
            if s >= 100 {
                short = short.max(owed.saturating_sub(p.paid_msat(0)));
            }
        }
        (p, short, risk)
    }

    #[test]
    fn chunk_grows_with_throughput_times_latency_and_keeps_ahead() {
        let latency = Duration::from_millis(300);
        let mut c = cfg();
        c.jitter = Duration::from_millis(100);
        // Fixed chunk of 1000 msat (1 MiB at 1000 msat/MiB): at 10 MiB/s a 300 ms payment
        // arrives MiBs late.
        let (_, fixed_short, _) = run_with_latency(c.clone(), latency, 5);
        assert!(
            fixed_short > 2_000,
            "fixed chunk short by only {fixed_short}"
        );
        // Adaptive: 6 x (300 + 100) ms at ~10 MiB/s = ~23 MiB = ~23,000 msat ahead; the hop
        // is never behind after the first second and never more than the cap is at risk.
        c.max_chunk_msat = 50_000;
        let (p, short, risk) = run_with_latency(c.clone(), latency, 5);
        assert_eq!(short, 0, "adaptive chunk fell behind by {short} msat");
        assert!(risk <= 50_000, "at risk {risk} > max chunk");
        let chunk = p.chunk_msat(0);
        assert!((18_000..=30_000).contains(&chunk), "chunk {chunk}");
        let rate = p.bytes_per_sec();
        assert!((9e6..12e6).contains(&rate), "rate {rate}");
        // A low cap bounds what is at risk (and the hop falls behind instead).
        c.max_chunk_msat = 3_000;
        let (p, _, risk) = run_with_latency(c, latency, 5);
        assert_eq!(p.chunk_msat(0), 3_000);
        assert!(risk <= 3_000, "at risk {risk} > max chunk");
    }

    #[test]
    fn idle_circuit_keeps_the_base_chunk() {
        let mut rng = StdRng::seed_from_u64(4);
        let t0 = Instant::now();
        let mut c = cfg();
        c.max_chunk_msat = 100_000;
        c.jitter = Duration::ZERO;
        let mut p = CircuitPayer::new(c, &[hop(1, 1000, 60)], &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        let o = orders(&p.poll(t0, &mut b, &mut rng));
        let t1 = t0 + Duration::from_secs(2);
        p.on_result(
            o[0].id,
            PayResult::Sent { fee_msat: 0 },
            t1,
            &mut b,
            &mut rng,
        );
        assert!(orders(&p.poll(t1, &mut b, &mut rng)).is_empty());
        // A 2 s latency with no bytes flowing: only the per-minute price for 12 s (12 msat),
        // below the base chunk.
        assert_eq!(p.chunk_msat(0), 1000);
        assert_eq!(p.bytes_per_sec(), 0.0);
    }

    fn events_until(
        p: &mut CircuitPayer,
        b: &mut Budget,
        rng: &mut StdRng,
        mut now: Instant,
        until: Instant,
        mut answer: impl FnMut(&Order) -> Option<PayResult>,
    ) -> Vec<PayerEvent> {
        let mut all = Vec::new();
        for _ in 0..50 {
            let ev = p.poll(now, b, rng);
            for o in orders(&ev) {
                if let Some(r) = answer(&o) {
                    p.on_result(o.id, r, now, b, rng);
                }
            }
            all.extend(ev);
            match p.next_deadline(now) {
                Some(d) if d <= until => now = d.max(now + Duration::from_millis(1)),
                _ => break,
            }
        }
        all
    }

    #[test]
    fn ready_once_every_hop_has_its_first_chunk() {
        let mut rng = StdRng::seed_from_u64(31);
        let t0 = Instant::now();
        let hops = [hop(1, 1000, 0), hop(2, 1000, 0), hop(3, 1000, 0)];
        let mut p = CircuitPayer::new(cfg(), &hops, &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        assert!(!p.ready());
        // The first chunks are ordered from the first polls (within the jitter), nothing
        // carried yet; hop 2's result is held back.
        let mut held = None;
        let soon = t0 + Duration::from_secs(1);
        let ev = events_until(&mut p, &mut b, &mut rng, t0, soon, |o| {
            assert_eq!(o.req.amount_msat, 1000);
            if o.hop == 2 {
                held = Some(o.id);
                None
            } else {
                Some(PayResult::Sent { fee_msat: 0 })
            }
        });
        assert_eq!(orders(&ev).len(), 3);
        assert!(!ev.contains(&PayerEvent::Ready));
        assert!(!p.ready());
        let now = t0 + Duration::from_millis(400);
        p.on_result(
            held.unwrap(),
            PayResult::Sent { fee_msat: 0 },
            now,
            &mut b,
            &mut rng,
        );
        assert!(p.ready());
        let ev = p.poll(now, &mut b, &mut rng);
        assert_eq!(ev, vec![PayerEvent::Ready]);
        assert!(!p.poll(now, &mut b, &mut rng).contains(&PayerEvent::Ready));
        assert_eq!(b.spent_msat(), 3000);
    }

    #[test]
    fn a_failed_first_payment_gives_the_circuit_up_without_retry() {
        let mut rng = StdRng::seed_from_u64(32);
        let t0 = Instant::now();
        let hops = [hop(1, 1000, 0), hop(2, 1000, 0)];
        let mut p = CircuitPayer::new(cfg(), &hops, &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        let soon = t0 + Duration::from_secs(1);
        let ev = events_until(&mut p, &mut b, &mut rng, t0, soon, |o| {
            Some(if o.hop == 1 {
                PayResult::Failed
            } else {
                PayResult::Sent { fee_msat: 0 }
            })
        });
        let failed: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e, PayerEvent::FirstPaymentFailed { .. }))
            .collect();
        assert_eq!(
            failed,
            vec![&PayerEvent::FirstPaymentFailed {
                hop: 1,
                timed_out: false
            }]
        );
        // One order per hop: no retry of the failed one, no Ready, no Rebuild.
        assert_eq!(orders(&ev).iter().filter(|o| o.hop == 1).count(), 1);
        assert!(!ev.contains(&PayerEvent::Ready));
        assert!(!ev.iter().any(|e| matches!(e, PayerEvent::Rebuild { .. })));
        assert!(p.stopped());
        assert_eq!(b.reserved_msat(), 0);
    }

    #[test]
    fn first_payments_that_take_too_long_give_the_circuit_up() {
        let mut rng = StdRng::seed_from_u64(33);
        let t0 = Instant::now();
        let mut c = cfg();
        c.first_payment_timeout = Duration::from_secs(5);
        let hops = [hop(1, 1000, 0), hop(2, 1000, 0)];
        let mut p = CircuitPayer::new(c.clone(), &hops, &CAP, t0, &mut rng).unwrap();
        let mut b = Budget::new(None, 0);
        // Hop 0 is paid, hop 1's payment never resolves: the deadline wakes the shell.
        let later = t0 + Duration::from_secs(10);
        let ev = events_until(&mut p, &mut b, &mut rng, t0, later, |o| {
            (o.hop == 0).then_some(PayResult::Sent { fee_msat: 0 })
        });
        assert!(ev.contains(&PayerEvent::FirstPaymentFailed {
            hop: 1,
            timed_out: true
        }));
        assert!(p.stopped() && !p.ready());
        assert_eq!(p.next_deadline(t0 + Duration::from_secs(6)), None);
        // Not before the timeout.
        let mut q = CircuitPayer::new(c, &hops, &CAP, t0, &mut rng).unwrap();
        let ev = q.poll(t0 + Duration::from_secs(4), &mut b, &mut rng);
        assert!(!ev
            .iter()
            .any(|e| matches!(e, PayerEvent::FirstPaymentFailed { .. })));
    }

    #[test]
    fn a_budget_short_of_the_first_chunks_stops_before_ready() {
        let mut rng = StdRng::seed_from_u64(34);
        let t0 = Instant::now();
        let hops = [hop(1, 1000, 0), hop(2, 1000, 0)];
        let mut p = CircuitPayer::new(cfg(), &hops, &CAP, t0, &mut rng).unwrap();
        // Room for one chunk and its fee cap, not two.
        let mut b = Budget::new(Some(1500), 0);
        let soon = t0 + Duration::from_secs(1);
        let ev = events_until(&mut p, &mut b, &mut rng, t0, soon, |_| {
            Some(PayResult::Sent { fee_msat: 0 })
        });
        assert!(ev
            .iter()
            .any(|e| matches!(e, PayerEvent::BudgetReached { .. })));
        assert!(!ev.contains(&PayerEvent::Ready));
        assert!(b.spent_msat() <= 1500);
    }
}
