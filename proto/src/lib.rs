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

pub mod cc;
pub mod cell;
pub mod circuit;
pub mod consts;
pub mod crypto;
pub mod ext;
pub mod link;
pub mod relaymsg;
