//! The simulated payment rail: keysend with the semantics of [`crate::PaymentRail`] (a payment
//! carries a token; the payer learns success or failure after a latency; the receiver sees
//! [`Received`] with the amount and token), but sans-IO and under virtual time, so that the
//! simulator (onionvpn-simnet) can run thousands of payers deterministically.
//!
//! Nothing here reads a clock or spawns: the caller passes the current virtual time (in
//! nanoseconds since the start of the run) and polls for the outcomes that are due. All
//! randomness (latency, failures) comes from a seeded RNG owned by the rail, so the same seed
//! and the same calls give the same outcomes.
//!
//! Model (after SimLN's keysend activity, reduced to what the credit logic observes):
//! - a payment reaches its receiver after `latency × receive_fraction` and the payer learns
//!   the outcome after the full latency (the preimage travels back);
//! - latency is uniform in `[latency_min, latency_max]`;
//! - a payment fails with probability `failure_ppm / 10⁶`, or `receiver_failure_ppm` for a
//!   receiver that was set to fail more often; a failed payment never reaches the receiver;
//! - routing fee = `fee_base_msat + amount × fee_ppm / 10⁶`; a payment whose fee exceeds its
//!   `max_fee_msat` fails at once (as LDK does when no route is cheap enough);
//! - a payer's outbound balance, when set, is debited by amount + fee; a payment that does not
//!   fit fails at once.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::rail::{KeysendRequest, NodeId, PaymentId, Received, Sent};

/// Settings of a simulated rail.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRailConfig {
    /// Seed of the rail's RNG.
    pub seed: u64,
    /// Shortest end-to-end payment latency, nanoseconds.
    pub latency_min_ns: u64,
    /// Longest end-to-end payment latency, nanoseconds.
    pub latency_max_ns: u64,
    /// Probability that a payment fails, in parts per million.
    pub failure_ppm: u32,
    /// Base routing fee per payment, millisatoshi.
    pub fee_base_msat: u64,
    /// Proportional routing fee, parts per million of the amount.
    pub fee_ppm: u64,
}

impl Default for SimRailConfig {
    fn default() -> Self {
        SimRailConfig {
            seed: 0,
            // Lightning keysend over 2–4 hops: a few hundred milliseconds.
            latency_min_ns: 200_000_000,
            latency_max_ns: 800_000_000,
            failure_ppm: 0,
            fee_base_msat: 1,
            fee_ppm: 1000,
        }
    }
}

/// Why a simulated payment failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimFailure {
    /// The route failed (drawn with the configured failure probability).
    RouteFailed,
    /// The fee would exceed the payment's `max_fee_msat`.
    FeeTooHigh,
    /// The payer's outbound balance does not cover amount + fee.
    InsufficientBalance,
}

/// An outcome the rail reports when its time has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimEvent {
    /// A receiver got a payment (it must record it, then [`SimRail::ack_received`]).
    Received {
        /// The receiving node.
        to: NodeId,
        /// What it received, as [`crate::PaymentRail::next_received`] reports it.
        payment: Received,
    },
    /// A payer's payment succeeded.
    Sent {
        /// The paying node.
        from: NodeId,
        /// The payment as the rail reports it to the payer.
        sent: Sent,
        /// The request it answers.
        req: KeysendRequest,
    },
    /// A payer's payment failed for good.
    Failed {
        /// The paying node.
        from: NodeId,
        /// The payment's id.
        id: PaymentId,
        /// The request it answers.
        req: KeysendRequest,
        /// Why.
        reason: SimFailure,
    },
}

/// A keysend the rail accepted, with when its outcomes are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// The payment's id.
    pub id: PaymentId,
    /// When the receiver learns of it (virtual ns), if it will.
    pub receive_at: Option<u64>,
    /// When the payer learns the outcome (virtual ns).
    pub settle_at: u64,
}

/// Per-node totals kept by the rail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTotals {
    /// Payments sent that succeeded.
    pub sent_ok: u64,
    /// Payments sent that failed.
    pub sent_failed: u64,
    /// Millisatoshi delivered to receivers by this payer.
    pub sent_msat: u64,
    /// Fees this payer paid, millisatoshi.
    pub fees_msat: u64,
    /// Millisatoshi this node received.
    pub received_msat: u64,
}

/// The simulated rail: every node's payments in one sans-IO state machine.
#[derive(Debug)]
pub struct SimRail {
    cfg: SimRailConfig,
    rng: StdRng,
    next_seq: u64,
    /// Outcomes by (due time, sequence): deterministic order among equal times.
    due: BTreeMap<(u64, u64), SimEvent>,
    /// Received payments not yet acknowledged, per receiver.
    unacked: HashMap<PaymentId, NodeId>,
    balances: HashMap<NodeId, u64>,
    receiver_failure_ppm: HashMap<NodeId, u32>,
    totals: HashMap<NodeId, NodeTotals>,
}

impl SimRail {
    /// A rail with `cfg`.
    pub fn new(cfg: SimRailConfig) -> Self {
        SimRail {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            next_seq: 0,
            due: BTreeMap::new(),
            unacked: HashMap::new(),
            balances: HashMap::new(),
            receiver_failure_ppm: HashMap::new(),
            totals: HashMap::new(),
        }
    }

    /// Gives `node` an outbound balance (msat); nodes without one have no limit.
    pub fn set_balance(&mut self, node: NodeId, msat: u64) {
        self.balances.insert(node, msat);
    }

    /// The outbound balance of `node`, if it has a limit.
    pub fn balance(&self, node: &NodeId) -> Option<u64> {
        self.balances.get(node).copied()
    }

    /// Makes payments to `node` fail with probability `ppm / 10⁶` (instead of the default).
    pub fn set_receiver_failure(&mut self, node: NodeId, ppm: u32) {
        self.receiver_failure_ppm.insert(node, ppm);
    }

    /// Totals of `node` so far.
    pub fn totals(&self, node: &NodeId) -> NodeTotals {
        self.totals.get(node).copied().unwrap_or_default()
    }

    /// Starts a keysend from `from` at virtual time `now` (ns). The outcomes become due at the
    /// returned times; [`SimRail::poll`] hands them out.
    pub fn keysend(&mut self, now: u64, from: NodeId, req: KeysendRequest) -> Scheduled {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = payment_id(self.cfg.seed, seq);
        let (lo, hi) = (
            self.cfg.latency_min_ns,
            self.cfg.latency_max_ns.max(self.cfg.latency_min_ns),
        );
        let latency = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        let fail_ppm = self
            .receiver_failure_ppm
            .get(&req.to)
            .copied()
            .unwrap_or(self.cfg.failure_ppm);
        let roll: u32 = self.rng.random_range(0..1_000_000);
        let fee = self
            .cfg
            .fee_base_msat
            .saturating_add(req.amount_msat.saturating_mul(self.cfg.fee_ppm) / 1_000_000);
        let failure = if fee > req.max_fee_msat {
            Some((SimFailure::FeeTooHigh, now))
        } else if self
            .balances
            .get(&from)
            .is_some_and(|b| *b < req.amount_msat.saturating_add(fee))
        {
            Some((SimFailure::InsufficientBalance, now))
        } else if roll < fail_ppm {
            Some((SimFailure::RouteFailed, now.saturating_add(latency)))
        } else {
            None
        };
        let t = self.totals.entry(from).or_default();
        match failure {
            Some((reason, at)) => {
                t.sent_failed += 1;
                self.due.insert(
                    (at, seq),
                    SimEvent::Failed {
                        from,
                        id,
                        req,
                        reason,
                    },
                );
                Scheduled {
                    id,
                    receive_at: None,
                    settle_at: at,
                }
            }
            None => {
                t.sent_ok += 1;
                t.sent_msat += req.amount_msat;
                t.fees_msat += fee;
                if let Some(b) = self.balances.get_mut(&from) {
                    *b -= req.amount_msat + fee;
                }
                self.totals.entry(req.to).or_default().received_msat += req.amount_msat;
                // The HTLC reaches the receiver before the preimage is back at the payer.
                let receive_at = now.saturating_add(latency / 2);
                let settle_at = now.saturating_add(latency);
                self.due.insert(
                    (receive_at, seq),
                    SimEvent::Received {
                        to: req.to,
                        payment: Received {
                            id,
                            amount_msat: req.amount_msat,
                            token: Some(req.token),
                        },
                    },
                );
                self.due.insert(
                    (settle_at, seq),
                    SimEvent::Sent {
                        from,
                        sent: Sent { id, fee_msat: fee },
                        req,
                    },
                );
                Scheduled {
                    id,
                    receive_at: Some(receive_at),
                    settle_at,
                }
            }
        }
    }

    /// When the next outcome is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.due.keys().next().map(|(t, _)| *t)
    }

    /// The next outcome due at or before `now`, in (time, sequence) order.
    pub fn poll(&mut self, now: u64) -> Option<SimEvent> {
        let (&key, _) = self.due.iter().next()?;
        if key.0 > now {
            return None;
        }
        let ev = self.due.remove(&key)?;
        if let SimEvent::Received { to, payment } = &ev {
            self.unacked.insert(payment.id, *to);
        }
        Some(ev)
    }

    /// The receiver recorded the payment; it will not be reported again.
    pub fn ack_received(&mut self, id: PaymentId) {
        self.unacked.remove(&id);
    }

    /// Received payments not yet acknowledged by `node`, in id order (what a restarted
    /// receiver would be handed again).
    pub fn unacked(&self, node: &NodeId) -> Vec<PaymentId> {
        let mut v: Vec<PaymentId> = self
            .unacked
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }
}

/// A payment id from the rail's seed and the payment's sequence number: unique per rail.
fn payment_id(seed: u64, seq: u64) -> PaymentId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&seed.to_be_bytes());
    id[8..16].copy_from_slice(&seq.to_be_bytes());
    PaymentId(id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use onionvpn_proto::ext::PaymentToken;

    fn node(b: u8) -> NodeId {
        NodeId([b; 33])
    }

    fn req(to: u8, amount: u64) -> KeysendRequest {
        KeysendRequest {
            to: node(to),
            amount_msat: amount,
            token: PaymentToken([to; 16]),
            max_fee_msat: 1_000,
        }
    }

    fn drain(rail: &mut SimRail, now: u64) -> Vec<SimEvent> {
        let mut v = Vec::new();
        while let Some(e) = rail.poll(now) {
            v.push(e);
        }
        v
    }

    #[test]
    fn receiver_sees_token_before_payer_sees_success() {
        let mut rail = SimRail::new(SimRailConfig::default());
        let s = rail.keysend(1_000, node(1), req(2, 5_000));
        let recv_at = s.receive_at.unwrap();
        assert!(recv_at < s.settle_at);
        assert!(drain(&mut rail, recv_at - 1).is_empty());
        let evs = drain(&mut rail, recv_at);
        assert_eq!(
            evs,
            vec![SimEvent::Received {
                to: node(2),
                payment: Received {
                    id: s.id,
                    amount_msat: 5_000,
                    token: Some(PaymentToken([2; 16])),
                },
            }]
        );
        assert_eq!(rail.unacked(&node(2)), vec![s.id]);
        rail.ack_received(s.id);
        assert!(rail.unacked(&node(2)).is_empty());
        let evs = drain(&mut rail, s.settle_at);
        assert!(
            matches!(evs.as_slice(), [SimEvent::Sent { sent, .. }] if sent.id == s.id && sent.fee_msat == 1 + 5)
        );
        assert_eq!(rail.totals(&node(2)).received_msat, 5_000);
    }

    #[test]
    fn failures_never_reach_the_receiver() {
        let mut rail = SimRail::new(SimRailConfig::default());
        rail.set_receiver_failure(node(3), 1_000_000);
        let s = rail.keysend(0, node(1), req(3, 5_000));
        assert_eq!(s.receive_at, None);
        let evs = drain(&mut rail, u64::MAX);
        assert!(matches!(
            evs.as_slice(),
            [SimEvent::Failed {
                reason: SimFailure::RouteFailed,
                ..
            }]
        ));
        assert_eq!(rail.totals(&node(3)).received_msat, 0);
    }

    #[test]
    fn fee_cap_and_balance_are_enforced() {
        let mut rail = SimRail::new(SimRailConfig::default());
        let mut r = req(2, 10_000_000);
        r.max_fee_msat = 10;
        rail.keysend(0, node(1), r);
        rail.set_balance(node(4), 100);
        rail.keysend(0, node(4), req(2, 5_000));
        let evs = drain(&mut rail, 0);
        let reasons: Vec<SimFailure> = evs
            .iter()
            .filter_map(|e| match e {
                SimEvent::Failed { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![SimFailure::FeeTooHigh, SimFailure::InsufficientBalance]
        );
        assert_eq!(rail.balance(&node(4)), Some(100));
    }

    #[test]
    fn same_seed_same_outcomes() {
        let run = |seed| {
            let mut rail = SimRail::new(SimRailConfig {
                seed,
                failure_ppm: 300_000,
                ..SimRailConfig::default()
            });
            let mut out = Vec::new();
            for i in 0..50u64 {
                out.push(rail.keysend(i * 1000, node(1), req(2, 1000 + i)));
            }
            (out, drain(&mut rail, u64::MAX))
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).0, run(8).0);
    }
}
