//! Wallet operations for the CLI: addresses, channels, BOLT11 invoices.

use std::net::SocketAddr;

use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};

use super::{join_err, node_err, public_key, route_params, LdkRail};
use crate::rail::{NodeId, Sent};
use crate::PayError;

/// One channel of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Channel id.
    pub channel_id: [u8; 32],
    /// The node's local id for the channel (what closing it takes).
    pub user_channel_id: u128,
    /// The peer.
    pub counterparty: NodeId,
    /// Channel size in satoshi.
    pub value_sat: u64,
    /// What we can send now, in millisatoshi.
    pub outbound_msat: u64,
    /// What we can receive now, in millisatoshi.
    pub inbound_msat: u64,
    /// Largest single payment we can send now, in millisatoshi.
    pub next_outbound_htlc_limit_msat: u64,
    /// Funding confirmed and both sides agreed the channel is open.
    pub ready: bool,
    /// Ready and the peer is connected: payments can go through it now.
    pub usable: bool,
    /// This node opened (and funded) the channel.
    pub outbound: bool,
    /// Confirmations of the funding transaction (0: not confirmed, or not broadcast yet).
    pub confirmations: u32,
}

impl LdkRail {
    /// A new on-chain receive address (P2WPKH), as text.
    pub fn new_address(&self) -> Result<String, PayError> {
        let a = self
            .node
            .onchain_payment()
            .new_address()
            .map_err(|e| node_err("new address", e))?;
        Ok(a.to_string())
    }

    /// Syncs the on-chain and Lightning wallets with the chain source now (they also sync
    /// in the background).
    pub async fn sync(&self) -> Result<(), PayError> {
        let n = self.node.clone();
        tokio::task::spawn_blocking(move || n.sync_wallets())
            .await
            .map_err(|e| join_err("sync", e))?
            .map_err(|e| node_err("sync", e))
    }

    /// The node's channels.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.node
            .list_channels()
            .into_iter()
            .map(|c| ChannelInfo {
                channel_id: c.channel_id.0,
                user_channel_id: c.user_channel_id.0,
                counterparty: NodeId(c.counterparty_node_id.serialize()),
                value_sat: c.channel_value_sats,
                outbound_msat: c.outbound_capacity_msat,
                inbound_msat: c.inbound_capacity_msat,
                next_outbound_htlc_limit_msat: c.next_outbound_htlc_limit_msat,
                ready: c.is_channel_ready,
                usable: c.is_usable,
                outbound: c.is_outbound,
                confirmations: c.confirmations.unwrap_or(0),
            })
            .collect()
    }

    /// Connects to `peer` at `addr` and opens an unannounced channel of `sats`, pushing
    /// `push_msat` to the peer. Returns the local channel id (`user_channel_id`); watch
    /// [`LdkRail::channel_events`] for the channel becoming ready.
    pub async fn open_channel(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        sats: u64,
        push_msat: Option<u64>,
    ) -> Result<u128, PayError> {
        let pk = public_key(&peer)?;
        let n = self.node.clone();
        let id = tokio::task::spawn_blocking(move || {
            n.open_channel(pk, SocketAddress::from(addr), sats, push_msat, None)
        })
        .await
        .map_err(|e| join_err("open channel", e))?
        .map_err(|e| node_err("open channel", e))?;
        Ok(id.0)
    }

    /// Closes the channel with `channel_id` to `peer` cooperatively.
    pub fn close_channel(&self, peer: NodeId, user_channel_id: u128) -> Result<(), PayError> {
        let pk = public_key(&peer)?;
        self.node
            .close_channel(&ldk_node::UserChannelId(user_channel_id), pk)
            .map_err(|e| node_err("close channel", e))
    }

    /// Creates a BOLT11 invoice for `amount_msat`, valid for `expiry_secs`.
    pub fn create_invoice(
        &self,
        amount_msat: u64,
        description: &str,
        expiry_secs: u32,
    ) -> Result<String, PayError> {
        let d = Description::new(description.to_owned()).map_err(|e| PayError::Invalid {
            what: "invoice description",
            detail: e.to_string(),
        })?;
        let inv = self
            .node
            .bolt11_payment()
            .receive(
                amount_msat,
                &Bolt11InvoiceDescription::Direct(d),
                expiry_secs,
            )
            .map_err(|e| node_err("create invoice", e))?;
        Ok(inv.to_string())
    }

    /// Pays a BOLT11 invoice (with the node's routing-fee cap) and resolves with the outcome.
    pub async fn pay_invoice(&self, invoice: &str) -> Result<Sent, PayError> {
        let inv: Bolt11Invoice = invoice.trim().parse().map_err(|e| PayError::Invalid {
            what: "invoice",
            detail: format!("{e}"),
        })?;
        let fee = self.max_routing_fee_msat;
        self.track(
            move |node| node.bolt11_payment().send(&inv, Some(route_params(fee))),
            "pay invoice",
        )
        .await
    }
}
