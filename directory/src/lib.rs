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

pub mod descriptor;
pub mod network;
pub mod policy;

pub use descriptor::{
    Descriptor, DescriptorBody, DescriptorError, IdentityKey, RejectReason, RejectionCounters,
    UncheckedDescriptor,
};
pub use network::{Network, NetworkId, NetworkKey};
pub use policy::{ExitPolicy, Target};
