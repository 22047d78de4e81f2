//! The crate's error type.

/// Errors of the payments layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayError {
    /// The payment failed for good (no route, recipient rejected, retries exhausted...).
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// The rail has stopped (node shut down, event stream closed).
    #[error("payment rail stopped")]
    RailStopped,
    /// The payments node reported an error.
    #[error("payments node: {context}: {detail}")]
    Node {
        /// What we were doing.
        context: &'static str,
        /// The node's error, as text.
        detail: String,
    },
    /// The earnings ledger failed.
    #[error("earnings ledger: {context}: {source}")]
    Ledger {
        /// What we were doing.
        context: &'static str,
        /// The storage error.
        #[source]
        source: sled::Error,
    },
    /// Another process (the running relay or client) holds the Lightning node's store.
    #[error("the Lightning store {} is in use by another process (is the relay or client running?)", path.display())]
    StoreInUse {
        /// The store directory.
        path: std::path::PathBuf,
    },
    /// A value out of range or malformed (config, amount, invoice).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        detail: String,
    },
}
