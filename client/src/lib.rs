#![doc = include_str!("../README.md")]

pub mod buildtime;
pub mod circmgr;
pub mod circuit_task;
pub mod cli;
pub mod config;
pub mod payments;
pub mod runtime;
pub mod socks;
pub mod socks_server;
pub mod status;
pub mod tun;

pub use circmgr::{CircMgr, CircMgrError, CircuitSummary, MgrConfig};
pub use circuit_task::{CircuitHandle, Recv, Stream, StreamError};
pub use payments::PaymentsSetup;
pub use runtime::{start_client, start_client_with, ClientError, ClientHandle, RuntimeOptions};
