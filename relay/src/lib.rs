#![doc = include_str!("../README.md")]

pub mod cli;
pub mod config;
pub mod keys;
pub mod limits;
pub mod redact;

pub mod chanmgr;
pub mod check;
mod circuit_task;
pub mod control;
pub mod exit;
pub mod metrics;
pub mod notify;
pub mod payments;
pub mod publish;
pub mod runtime;
pub mod status;

pub use config::Config as RelayConfig;
pub use payments::PaymentsSetup;
pub use runtime::{
    start_relay, start_relay_with, start_relay_with_keys, RelayError, RelayHandle, RelayStats,
    RuntimeOptions,
};
