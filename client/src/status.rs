//! What `onionvpn-client status` shows: a [`ClientStatus`] built from the running client's
//! circuit manager and payments, and [`PaidTally`], the rail wrapper that counts what each
//! relay was paid.
//!
//! The report travels over the control socket as TOML
//! ([`onionvpn_pay::ldk::control`]), so the running client and the `status` command agree on
//! one typed structure. It holds no destination: counts, amounts, and the relays' public
//! Lightning node ids.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use onionvpn_pay::rail::{Balances, KeysendRequest, PaymentId, RailFuture, Received, Sent};
use onionvpn_pay::{NodeId, PayError, PaymentRail};
use serde::{Deserialize, Serialize};

/// What one relay (by its Lightning node) was paid since the client started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPaid {
    /// The relay's Lightning node id, hex.
    pub node_id: String,
    /// Delivered to the relay, msat.
    pub paid_msat: u64,
    /// Routing fees on top, msat.
    pub fees_msat: u64,
    /// Successful payments.
    pub payments: u64,
}

/// The client's payments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentStatus {
    /// The spending cap, msat.
    pub budget_msat: u64,
    /// Spent so far, payments and fees, msat (persisted: counts earlier runs too).
    pub spent_msat: u64,
    /// What is left of the budget, msat.
    pub budget_left_msat: u64,
    /// Whether the budget was reached (the client no longer pays).
    pub budget_reached: bool,
    /// Per relay, since this start, most paid first.
    pub relays: Vec<RelayPaid>,
}

/// The running client's state as `status` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Client software version.
    pub version: String,
    /// Seconds since the client started.
    pub uptime_secs: u64,
    /// Relays known (discovered or cached).
    pub relays_known: u64,
    /// Circuits open now.
    pub circuits_open: u64,
    /// Circuits built since start.
    pub circuits_built: u64,
    /// Streams open now.
    pub streams_open: u64,
    /// Payments (absent: the client pays nobody).
    pub payments: Option<PaymentStatus>,
}

impl fmt::Display for ClientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "onionvpn-client {}, up {} s",
            self.version, self.uptime_secs
        )?;
        writeln!(f, "relays known:   {}", self.relays_known)?;
        writeln!(
            f,
            "circuits:       {} open, {} built since start; {} streams open",
            self.circuits_open, self.circuits_built, self.streams_open
        )?;
        let Some(p) = &self.payments else {
            return writeln!(f, "payments:       off (no [lightning] table)");
        };
        writeln!(
            f,
            "spent:          {} msat of a {} msat budget; {} msat left{}",
            p.spent_msat,
            p.budget_msat,
            p.budget_left_msat,
            if p.budget_reached {
                " (budget reached: paying nobody)"
            } else {
                ""
            }
        )?;
        if p.relays.is_empty() {
            return writeln!(f, "paid relays:    none since start");
        }
        writeln!(f, "paid since start, per relay (Lightning node):")?;
        for r in &p.relays {
            writeln!(
                f,
                "  {}  {} msat + {} msat fees in {} payments",
                r.node_id, r.paid_msat, r.fees_msat, r.payments
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    msat: u64,
    fees: u64,
    payments: u64,
}

/// A [`PaymentRail`] that passes everything to the client's rail and counts the keysends
/// that succeeded, per destination node (for `status`).
pub struct PaidTally {
    inner: Arc<dyn PaymentRail>,
    paid: Mutex<BTreeMap<[u8; 33], Tally>>,
}

impl fmt::Debug for PaidTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaidTally").finish_non_exhaustive()
    }
}

impl PaidTally {
    /// Counts the payments made through `inner`.
    pub fn new(inner: Arc<dyn PaymentRail>) -> Self {
        PaidTally {
            inner,
            paid: Mutex::new(BTreeMap::new()),
        }
    }

    fn paid(&self) -> MutexGuard<'_, BTreeMap<[u8; 33], Tally>> {
        // Single inserts and additions: a poisoned map is still consistent.
        self.paid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What each node was paid so far, most paid first.
    pub fn per_relay(&self) -> Vec<RelayPaid> {
        let mut v: Vec<RelayPaid> = self
            .paid()
            .iter()
            .map(|(node, t)| RelayPaid {
                node_id: node.iter().map(|b| format!("{b:02x}")).collect(),
                paid_msat: t.msat,
                fees_msat: t.fees,
                payments: t.payments,
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.paid_msat));
        v
    }
}

impl PaymentRail for PaidTally {
    fn node_id(&self) -> NodeId {
        self.inner.node_id()
    }

    fn keysend(&self, req: KeysendRequest) -> RailFuture<'_, Sent> {
        let (to, amount) = (req.to.0, req.amount_msat);
        Box::pin(async move {
            let sent = self.inner.keysend(req).await?;
            let mut paid = self.paid();
            let t = paid.entry(to).or_default();
            t.msat = t.msat.saturating_add(amount);
            t.fees = t.fees.saturating_add(sent.fee_msat);
            t.payments = t.payments.saturating_add(1);
            Ok(sent)
        })
    }

    fn next_received(&self) -> RailFuture<'_, Received> {
        self.inner.next_received()
    }

    fn ack_received(&self, id: PaymentId) -> Result<(), PayError> {
        self.inner.ack_received(id)
    }

    fn forget(&self, id: PaymentId) -> Result<(), PayError> {
        self.inner.forget(id)
    }

    fn balances(&self) -> Result<Balances, PayError> {
        self.inner.balances()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use onionvpn_pay::memory::MemoryNetwork;
    use onionvpn_proto::ext::PaymentToken;

    #[test]
    fn report_round_trips_as_toml_and_renders() {
        let s = ClientStatus {
            version: "0.1.0".into(),
            uptime_secs: 5,
            relays_known: 3,
            circuits_open: 1,
            circuits_built: 2,
            streams_open: 1,
            payments: Some(PaymentStatus {
                budget_msat: 1000,
                spent_msat: 300,
                budget_left_msat: 700,
                budget_reached: false,
                relays: vec![RelayPaid {
                    node_id: "02ab".into(),
                    paid_msat: 290,
                    fees_msat: 10,
                    payments: 2,
                }],
            }),
        };
        let text = toml::to_string(&s).unwrap();
        assert_eq!(toml::from_str::<ClientStatus>(&text).unwrap(), s, "{text}");
        let shown = s.to_string();
        assert!(shown.contains("300 msat of a 1000 msat budget; 700 msat left"));
        assert!(shown.contains("02ab  290 msat + 10 msat fees in 2 payments"));
        let off = ClientStatus::default();
        let text = toml::to_string(&off).unwrap();
        assert_eq!(toml::from_str::<ClientStatus>(&text).unwrap(), off);
        assert!(off.to_string().contains("payments:       off"));
    }

    #[tokio::test]
    async fn tally_counts_successful_keysends_per_node() {
        let net = MemoryNetwork::new();
        let payer = net.node(NodeId([1; 33]), 10_000_000);
        let relay = net.node(NodeId([2; 33]), 0);
        let tally = PaidTally::new(Arc::new(payer));
        for amount in [1_000, 2_500] {
            tally
                .keysend(KeysendRequest {
                    to: relay.node_id(),
                    amount_msat: amount,
                    token: PaymentToken([7; 16]),
                    max_fee_msat: 100,
                })
                .await
                .unwrap();
        }
        // A failed payment (no channel to this node) is not counted.
        assert!(tally
            .keysend(KeysendRequest {
                to: NodeId([9; 33]),
                amount_msat: 5,
                token: PaymentToken([7; 16]),
                max_fee_msat: 100,
            })
            .await
            .is_err());
        let per = tally.per_relay();
        assert_eq!(per.len(), 1);
        assert_eq!(per[0].paid_msat, 3_500);
        assert_eq!(per[0].payments, 2);
        assert!(per[0].node_id.starts_with("0202"));
    }
}
