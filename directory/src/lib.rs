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

pub mod cache;
pub mod descriptor;
pub mod dht;
pub mod filter;
pub mod network;
pub mod path;
pub mod pex;
pub mod policy;
pub mod relays;

pub use descriptor::{
    Descriptor, DescriptorBody, DescriptorError, IdentityKey, RejectReason, RejectionCounters,
    UncheckedDescriptor,
};
pub use network::{Network, NetworkId, NetworkKey};
pub use policy::{ExitPolicy, Target};
pub use relays::{RelaySet, Source};
