#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod account;
mod error;
pub mod ledger;
pub mod memory;
pub mod payer;
pub mod rail;
pub mod sim;

pub use error::PayError;
pub use rail::{
    Balances, KeysendRequest, NodeId, PaymentId, PaymentRail, RailFuture, Received, Sent,
    TOKEN_TLV_TYPE,
};

#[cfg(feature = "ldk")]
pub mod ldk;

/// Without the `ldk` feature: only the Lightning node's configuration (`[lightning]` of the
/// relay's and client's config files), so that crates which read those files build without
/// ldk-node (the simulator). The node itself, its wallet commands and its log need `ldk`.
#[cfg(not(feature = "ldk"))]
pub mod ldk {
    pub mod config;
    pub use config::{
        BitcoindConfig, ChainSource, EsploraConfig, LdkConfig, LdkLogLevel, LdkNetwork,
        ValidConfig, REDACTED,
    };
}
