#![doc = include_str!("../README.md")]

mod error;
pub mod rail;

pub use error::PayError;
pub use rail::{
    Balances, KeysendRequest, NodeId, PaymentId, PaymentRail, RailFuture, Received, Sent,
    TOKEN_TLV_TYPE,
};

#[cfg(feature = "ldk")]
pub mod ldk;
