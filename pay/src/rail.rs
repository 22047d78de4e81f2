//! The payment rail: how the client sends keysend payments and how the relay learns of the
//! payments it receives. The LDK rail implements it for real use; tests and the simulator
//! use other implementations with the same semantics.
//!
//! The trait is deliberately narrow (reference/lightning.md: "pay(relay, msat, token) + a
//! received-payment stream"), so the credit logic above it never sees Lightning types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use onionvpn_proto::ext::PaymentToken;

use crate::PayError;

/// TLV type that carries the per-hop [`PaymentToken`] in a keysend. Odd (so a receiver that
/// does not know it ignores it rather than failing the payment) and ≥ 65537 (LDK refuses
/// custom types below 2^16).
pub const TOKEN_TLV_TYPE: u64 = 65537;

/// A boxed future, so that the trait is object-safe (`Arc<dyn PaymentRail>`).
pub type RailFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PayError>> + Send + 'a>>;

/// A Lightning node id: a compressed secp256k1 public key, as in the relay descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 33]);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Identifies one payment on a rail (for LDK: the payment hash).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PaymentId(pub [u8; 32]);

/// A payment the client asks the rail to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeysendRequest {
    /// The relay's Lightning node.
    pub to: NodeId,
    /// Amount delivered to the relay, in millisatoshi.
    pub amount_msat: u64,
    /// The hop's token, carried in TLV [`TOKEN_TLV_TYPE`].
    pub token: PaymentToken,
    /// The most the client pays in routing fees for this payment.
    pub max_fee_msat: u64,
}

/// A payment that reached its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The payment's id.
    pub id: PaymentId,
    /// Routing fees paid, in millisatoshi.
    pub fee_msat: u64,
}

/// A payment received by this node. The receiver must record it durably and then call
/// [`PaymentRail::ack_received`]; a rail redelivers unacknowledged payments after a
/// restart, so the receiver's record must be idempotent on [`Received::id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The payment's id (unique per payment; a redelivery has the same id).
    pub id: PaymentId,
    /// Amount received, in millisatoshi.
    pub amount_msat: u64,
    /// The token from TLV [`TOKEN_TLV_TYPE`], if the payment carried a well-formed one.
    pub token: Option<PaymentToken>,
}

/// Balances of the node behind a rail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    /// On-chain funds that can be spent, in satoshi.
    pub onchain_spendable_sat: u64,
    /// What the node can send over its channels now, in millisatoshi.
    pub lightning_outbound_msat: u64,
    /// What the node can receive over its channels now, in millisatoshi.
    pub lightning_inbound_msat: u64,
}

/// A payment rail. Implementations: the LDK rail (real Lightning), and rails with the same
/// semantics for tests and the simulator.
pub trait PaymentRail: Send + Sync + 'static {
    /// This node's id (what a relay puts in its descriptor).
    fn node_id(&self) -> NodeId;

    /// Sends a keysend and resolves when it has succeeded or failed for good.
    fn keysend(&self, req: KeysendRequest) -> RailFuture<'_, Sent>;

    /// The next received payment not yet acknowledged. Resolves when one arrives.
    fn next_received(&self) -> RailFuture<'_, Received>;

    /// Acknowledges a received payment after it has been recorded durably.
    fn ack_received(&self, id: PaymentId) -> Result<(), PayError>;

    /// Forgets a finished payment, so the node's store does not grow without bound.
    fn forget(&self, id: PaymentId) -> Result<(), PayError>;

    /// The node's balances.
    fn balances(&self) -> Result<Balances, PayError>;
}
