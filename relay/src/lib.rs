#![doc = include_str!("../README.md")]

pub mod cli;
pub mod config;
pub mod keys;
pub mod limits;
pub mod redact;

pub mod chanmgr;
mod circuit_task;
pub mod exit;
pub mod payments;
pub mod publish;
pub mod runtime;

pub use config::Config as RelayConfig;
pub use payments::PaymentsSetup;
pub use runtime::{
    start_relay, start_relay_with, start_relay_with_keys, RelayError, RelayHandle, RelayStats,
    RuntimeOptions,
};
