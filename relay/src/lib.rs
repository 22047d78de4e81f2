#![doc = include_str!("../README.md")]

// Without the `ldk` feature (default on) the library is its sans-IO and network parts that
// do not reach the Lightning node: what the simulator (onionvpn-simnet) uses. The relay
// runtime, its configuration, control socket and command line reach ldk-node through the
// wallet, so they need the feature (and so does the binary).

pub mod keys;
pub mod limits;
pub mod redact;

pub mod chanmgr;
pub mod exit;
pub mod notify;

#[cfg(feature = "ldk")]
pub mod check;
#[cfg(feature = "ldk")]
mod circuit_task;
#[cfg(feature = "ldk")]
pub mod cli;
#[cfg(feature = "ldk")]
pub mod config;
#[cfg(feature = "ldk")]
pub mod control;
#[cfg(feature = "ldk")]
pub mod metrics;
#[cfg(feature = "ldk")]
pub mod payments;
#[cfg(feature = "ldk")]
pub mod publish;
#[cfg(feature = "ldk")]
pub mod runtime;
#[cfg(feature = "ldk")]
pub mod status;

#[cfg(feature = "ldk")]
pub use config::Config as RelayConfig;
#[cfg(feature = "ldk")]
pub use payments::PaymentsSetup;
#[cfg(feature = "ldk")]
pub use runtime::{
    start_relay, start_relay_with, start_relay_with_keys, RelayError, RelayHandle, RelayStats,
    RuntimeOptions,
};
