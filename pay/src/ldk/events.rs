//! The event pump: the one task that reads the node's event queue.
//!
//! ldk-node returns the same event until it is confirmed with `event_handled`, and keeps
//! unconfirmed events across restarts. The pump confirms a `PaymentReceived` only after the
//! rail's user acknowledged it (it has recorded the payment), so a crash between delivery and
//! recording redelivers the payment instead of losing it. While it waits for that
//! acknowledgement, later events wait too; the receiver is expected to record promptly.

use std::collections::VecDeque;
use std::sync::Arc;

use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::{Event, Node};
use tokio::sync::{mpsc, watch};

use super::{token_of, Shared};
use crate::rail::{NodeId, PaymentId, Received, Sent};
use crate::PayError;

/// A change of a channel's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    /// The funding transaction is broadcast; the channel waits for confirmations.
    Pending {
        /// Channel id.
        channel_id: [u8; 32],
        /// The peer.
        counterparty: NodeId,
    },
    /// The channel can carry payments.
    Ready {
        /// Channel id.
        channel_id: [u8; 32],
        /// The peer, if known.
        counterparty: Option<NodeId>,
    },
    /// The channel is closed.
    Closed {
        /// Channel id.
        channel_id: [u8; 32],
        /// The peer, if known.
        counterparty: Option<NodeId>,
        /// Why, as text.
        reason: String,
    },
}

fn nid(pk: &PublicKey) -> NodeId {
    NodeId(pk.serialize())
}

/// Received payment ids acknowledged in this run, remembered to drop duplicates.
const ACKED_MEMORY: usize = 1024;

/// What the pump does after handling one event.
enum Next {
    /// Confirm the event to the node and go on.
    Handled,
    /// Stop without confirming (the node will deliver the event again after a restart).
    Stop,
}

/// Runs until `stop` changes (or its sender is dropped).
pub(super) async fn pump(
    node: Arc<Node>,
    shared: Arc<Shared>,
    received_tx: mpsc::UnboundedSender<Received>,
    mut ack_rx: mpsc::UnboundedReceiver<PaymentId>,
    mut stop: watch::Receiver<bool>,
) {
    let mut acked: VecDeque<PaymentId> = VecDeque::with_capacity(ACKED_MEMORY);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            e = node.next_event_async() => e,
        };
        let next = handle(
            &event,
            &shared,
            &received_tx,
            &mut ack_rx,
            &mut stop,
            &mut acked,
        )
        .await;
        if let Next::Stop = next {
            return;
        }
        let n = node.clone();
        // `event_handled` persists the queue and blocks on the node's runtime.
        match tokio::task::spawn_blocking(move || n.event_handled()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Not confirmed: the node hands the same event out again, and every handler
                // is idempotent on it (waiters are removed, received ids are deduplicated
                // by the ledger), so retrying is safe.
                tracing::warn!(error = %e, "ldk: could not confirm event");
            }
            Err(e) => {
                tracing::warn!(error = %e, "ldk: event confirmation task failed");
                return;
            }
        }
    }
}

async fn handle(
    event: &Event,
    shared: &Shared,
    received_tx: &mpsc::UnboundedSender<Received>,
    ack_rx: &mut mpsc::UnboundedReceiver<PaymentId>,
    stop: &mut watch::Receiver<bool>,
    acked: &mut VecDeque<PaymentId>,
) -> Next {
    match event {
        Event::PaymentSuccessful {
            payment_id,
            payment_hash,
            fee_paid_msat,
            ..
        } => {
            let id = payment_id.map(|p| p.0).unwrap_or(payment_hash.0);
            let sent = Sent {
                id: PaymentId(id),
                fee_msat: fee_paid_msat.unwrap_or(0),
            };
            resolve(shared, id, Ok(sent));
        }
        Event::PaymentFailed {
            payment_id,
            payment_hash,
            reason,
        } => {
            let id = payment_id.map(|p| p.0).or(payment_hash.map(|h| h.0));
            if let Some(id) = id {
                let why = match reason {
                    Some(r) => format!("{r:?}"),
                    None => "unknown reason".to_owned(),
                };
                resolve(shared, id, Err(PayError::PaymentFailed(why)));
            }
        }
        Event::PaymentReceived {
            payment_id,
            payment_hash,
            amount_msat,
            custom_records,
        } => {
            let id = PaymentId(payment_id.map(|p| p.0).unwrap_or(payment_hash.0));
            // ldk-node can report one claim twice (its persisted event and a replay by the
            // channel manager after a restart); one acknowledged in this run is confirmed
            // without asking the user again (the ledger is idempotent on the id anyway).
            if acked.contains(&id) {
                return Next::Handled;
            }
            let r = Received {
                id,
                amount_msat: *amount_msat,
                token: token_of(custom_records),
            };
            tracing::debug!(
                amount_msat,
                has_token = r.token.is_some(),
                "ldk: payment received"
            );
            if received_tx.send(r).is_err() {
                return Next::Stop;
            }
            // Durable before ack: wait for the user's acknowledgement of this payment. Acks
            // of other ids are stale duplicates and are dropped.
            // Biased towards the ack: an ack given before `stop` is confirmed, not lost.
            loop {
                tokio::select! {
                    biased;
                    a = ack_rx.recv() => match a {
                        Some(a) if a == id => {
                            if acked.len() == ACKED_MEMORY {
                                acked.pop_front();
                            }
                            acked.push_back(id);
                            break;
                        }
                        Some(_) => continue,
                        None => return Next::Stop,
                    },
                    _ = stop.changed() => return Next::Stop,
                }
            }
        }
        Event::ChannelPending {
            channel_id,
            counterparty_node_id,
            ..
        } => {
            tracing::info!("ldk: channel pending");
            let _ = shared.channel_tx.send(ChannelEvent::Pending {
                channel_id: channel_id.0,
                counterparty: nid(counterparty_node_id),
            });
        }
        Event::ChannelReady {
            channel_id,
            counterparty_node_id,
            ..
        } => {
            tracing::info!("ldk: channel ready");
            let _ = shared.channel_tx.send(ChannelEvent::Ready {
                channel_id: channel_id.0,
                counterparty: counterparty_node_id.as_ref().map(nid),
            });
        }
        Event::ChannelClosed {
            channel_id,
            counterparty_node_id,
            reason,
            ..
        } => {
            let reason = match reason {
                Some(r) => r.to_string(),
                None => "unknown reason".to_owned(),
            };
            tracing::info!(%reason, "ldk: channel closed");
            let _ = shared.channel_tx.send(ChannelEvent::Closed {
                channel_id: channel_id.0,
                counterparty: counterparty_node_id.as_ref().map(nid),
                reason,
            });
        }
        other => tracing::debug!(event = ?std::mem::discriminant(other), "ldk: event ignored"),
    }
    Next::Handled
}

fn resolve(shared: &Shared, id: [u8; 32], outcome: Result<Sent, PayError>) {
    match shared.waiters().remove(&id) {
        // The waiter may have given up (its future was dropped); nothing to do then.
        Some(tx) => {
            let _ = tx.send(outcome);
        }
        // An outcome of a payment from before a restart, or made outside the rail.
        None => tracing::debug!("ldk: payment outcome without a waiter"),
    }
}
