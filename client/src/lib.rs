#![doc = include_str!("../README.md")]

pub mod buildtime;
pub mod circmgr;
pub mod circuit_task;
// The command line runs wallet commands on ldk-node: it needs the `ldk` feature (default on;
// off for the simulator, which uses the circuit manager and build-time estimator).
#[cfg(feature = "ldk")]
pub mod cli;
pub mod config;
pub mod payer_settings;
pub mod payments;
// The running client serves `wallet` requests on its control socket against its ldk-node
// (onionvpn_pay::ldk::control): like the command line, it needs the `ldk` feature.
#[cfg(feature = "ldk")]
pub mod runtime;
pub mod socks;
pub mod socks_server;
pub mod stall;
pub mod status;
pub mod tun;

pub use circmgr::{CircMgr, CircMgrError, CircuitSummary, MgrConfig};
pub use circuit_task::{CircuitHandle, Recv, Stream, StreamError};
pub use payments::PaymentsSetup;
#[cfg(feature = "ldk")]
pub use runtime::{start_client, start_client_with, ClientError, ClientHandle, RuntimeOptions};
