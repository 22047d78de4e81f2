//! An in-memory payment network, for tests that do not need Lightning.
//!
//! This is a TEST rail, not a product feature: payments move between [`MemoryRail`]s of one
//! [`MemoryNetwork`] in the same process, with no fees, instantly or after a set latency
//! ([`MemoryNetwork::set_latency`]: the keysend lands and resolves that long after it is
//! made, like a slow Lightning path). It keeps the semantics
//! the rail trait promises: a received payment stays pending (and is returned again by
//! `next_received`) until acknowledged, so a receiver that "crashes" before `ack_received`
//! sees it again; a keysend fails if the sender's balance is short, the recipient is
//! unknown, or the test made the recipient refuse payments.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::rail::{
    Balances, KeysendRequest, NodeId, PaymentId, PaymentRail, RailFuture, Received, Sent,
};
use crate::PayError;

#[derive(Default)]
struct Node {
    balance_msat: u64,
    /// Received, not yet acknowledged, in arrival order.
    pending: VecDeque<Received>,
    /// Sent and received payments not yet forgotten (what a real node's store holds).
    stored: HashSet<PaymentId>,
    refuse: bool,
    /// Keysends sent by this node and not yet resolved.
    in_flight: usize,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Net {
    nodes: HashMap<NodeId, Node>,
    next_payment: u64,
    latency: Duration,
}

/// A set of in-memory nodes that can pay each other (test rail).
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Net>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("nodes", &self.lock().nodes.len())
            .finish()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        // A panic while holding the lock leaves consistent data (every update is one step).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or returns) the node `id` with `balance_msat` to spend.
    pub fn node(&self, id: NodeId, balance_msat: u64) -> MemoryRail {
        let mut net = self.lock();
        let n = net.nodes.entry(id).or_default();
        n.balance_msat = balance_msat;
        MemoryRail {
            net: self.clone(),
            id,
        }
    }

    /// Makes node `id` refuse (or accept again) incoming payments.
    pub fn set_refusing(&self, id: NodeId, refuse: bool) {
        if let Some(n) = self.lock().nodes.get_mut(&id) {
            n.refuse = refuse;
        }
    }

    /// Makes every keysend from now on take `latency` to land and resolve.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Keysends sent by node `id` and not yet resolved.
    pub fn in_flight(&self, id: NodeId) -> usize {
        self.lock().nodes.get(&id).map_or(0, |n| n.in_flight)
    }

    /// Payments held in node `id`'s store (sent or received, not forgotten).
    pub fn stored(&self, id: NodeId) -> usize {
        self.lock().nodes.get(&id).map_or(0, |n| n.stored.len())
    }
}

/// One node of a [`MemoryNetwork`] (test rail).
#[derive(Clone)]
pub struct MemoryRail {
    net: MemoryNetwork,
    id: NodeId,
}

impl MemoryRail {
    fn send(&self, req: KeysendRequest) -> Result<Sent, PayError> {
        let mut net = self.net.lock();
        let recipient_ok = net.nodes.get(&req.to).is_some_and(|n| !n.refuse);
        if !recipient_ok || req.to == self.id {
            return Err(PayError::PaymentFailed(
                "recipient unreachable or refused".into(),
            ));
        }
        let balance = net.nodes.get(&self.id).map_or(0, |n| n.balance_msat);
        if balance < req.amount_msat {
            return Err(PayError::PaymentFailed("insufficient balance".into()));
        }
        net.next_payment += 1;
        let mut idb = [0u8; 32];
        idb[..8].copy_from_slice(&net.next_payment.to_be_bytes());
        let id = PaymentId(idb);
        if let Some(me) = net.nodes.get_mut(&self.id) {
            me.balance_msat -= req.amount_msat;
            me.stored.insert(id);
        }
        if let Some(to) = net.nodes.get_mut(&req.to) {
            to.balance_msat = to.balance_msat.saturating_add(req.amount_msat);
            to.stored.insert(id);
            to.pending.push_back(Received {
                id,
                amount_msat: req.amount_msat,
                token: Some(req.token),
            });
            to.notify.notify_waiters();
        }
        Ok(Sent { id, fee_msat: 0 })
    }
}

impl MemoryRail {
    fn count_in_flight(&self, up: bool) {
        if let Some(n) = self.net.lock().nodes.get_mut(&self.id) {
            n.in_flight = if up {
                n.in_flight + 1
            } else {
                n.in_flight.saturating_sub(1)
            };
        }
    }
}

struct InFlightGuard<'a>(&'a MemoryRail);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.count_in_flight(false);
    }
}

impl PaymentRail for MemoryRail {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn keysend(&self, req: KeysendRequest) -> RailFuture<'_, Sent> {
        let latency = self.net.lock().latency;
        if latency.is_zero() {
            let r = self.send(req);
            return Box::pin(async move { r });
        }
        self.count_in_flight(true);
        // Counted down however the future ends, even dropped before its first poll.
        let done = InFlightGuard(self);
        Box::pin(async move {
            let _done = done;
            tokio::time::sleep(latency).await;
            self.send(req)
        })
    }

    fn next_received(&self) -> RailFuture<'_, Received> {
        Box::pin(async move {
            loop {
                let notify = {
                    let net = self.net.lock();
                    let n = net.nodes.get(&self.id).ok_or(PayError::RailStopped)?;
                    if let Some(p) = n.pending.front() {
                        return Ok(*p);
                    }
                    n.notify.clone()
                };
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let again = {
                    let net = self.net.lock();
                    net.nodes
                        .get(&self.id)
                        .and_then(|n| n.pending.front().copied())
                };
                if let Some(p) = again {
                    return Ok(p);
                }
                notified.await;
            }
        })
    }

    fn ack_received(&self, id: PaymentId) -> Result<(), PayError> {
        let mut net = self.net.lock();
        if let Some(n) = net.nodes.get_mut(&self.id) {
            n.pending.retain(|p| p.id != id);
        }
        Ok(())
    }

    fn forget(&self, id: PaymentId) -> Result<(), PayError> {
        let mut net = self.net.lock();
        if let Some(n) = net.nodes.get_mut(&self.id) {
            n.stored.remove(&id);
        }
        Ok(())
    }

    fn balances(&self) -> Result<Balances, PayError> {
        let net = self.net.lock();
        let n = net.nodes.get(&self.id).ok_or(PayError::RailStopped)?;
        Ok(Balances {
            onchain_spendable_sat: 0,
            lightning_outbound_msat: n.balance_msat,
            lightning_inbound_msat: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionvpn_proto::ext::PaymentToken;

    fn req(to: u8, msat: u64) -> KeysendRequest {
        KeysendRequest {
            to: NodeId([to; 33]),
            amount_msat: msat,
            token: PaymentToken([to; 16]),
            max_fee_msat: 0,
        }
    }

    #[tokio::test]
    async fn pays_and_redelivers_until_acked() {
        let net = MemoryNetwork::new();
        let a = net.node(NodeId([1; 33]), 1000);
        let b = net.node(NodeId([2; 33]), 0);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.next_received().await })
        };
        let sent = a.keysend(req(2, 400)).await.unwrap();
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.id, sent.id);
        assert_eq!(got.amount_msat, 400);
        assert_eq!(got.token, Some(PaymentToken([2; 16])));
        // Not acked: delivered again.
        assert_eq!(b.next_received().await.unwrap().id, sent.id);
        b.ack_received(sent.id).unwrap();
        let second = a.keysend(req(2, 600)).await.unwrap();
        assert_eq!(b.next_received().await.unwrap().id, second.id);
        assert_ne!(second.id, sent.id);
        assert_eq!(a.balances().unwrap().lightning_outbound_msat, 0);
        // Short balance, unknown or refusing recipient: typed failure.
        assert!(matches!(
            a.keysend(req(2, 1)).await,
            Err(PayError::PaymentFailed(_))
        ));
        let c = net.node(NodeId([3; 33]), 10);
        assert!(c.keysend(req(9, 1)).await.is_err());
        net.set_refusing(NodeId([2; 33]), true);
        assert!(c.keysend(req(2, 1)).await.is_err());
        assert_eq!(net.stored(NodeId([1; 33])), 2);
        a.forget(sent.id).unwrap();
        assert_eq!(net.stored(NodeId([1; 33])), 1);
    }

    #[tokio::test]
    async fn a_slow_rail_lands_payments_after_its_latency() {
        let net = MemoryNetwork::new();
        net.set_latency(std::time::Duration::from_millis(50));
        let a = net.node(NodeId([1; 33]), 1000);
        let b = net.node(NodeId([2; 33]), 0);
        let send = {
            let a = a.clone();
            tokio::spawn(async move { a.keysend(req(2, 400)).await })
        };
        // Until the latency has passed the payment is in flight and not received.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(5), b.next_received()).await;
        if pending.is_err() {
            assert_eq!(net.in_flight(NodeId([1; 33])), 1);
        }
        let sent = send.await.unwrap().unwrap();
        assert_eq!(b.next_received().await.unwrap().id, sent.id);
        assert_eq!(net.in_flight(NodeId([1; 33])), 0);
        // A dropped keysend is no longer counted in flight (and never lands).
        let f = a.keysend(req(2, 100));
        assert_eq!(net.in_flight(NodeId([1; 33])), 1);
        drop(f);
        assert_eq!(net.in_flight(NodeId([1; 33])), 0);
        assert_eq!(a.balances().unwrap().lightning_outbound_msat, 600);
    }
}
