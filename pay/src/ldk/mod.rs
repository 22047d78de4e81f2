//! The real Lightning rail: an embedded [ldk-node](https://docs.rs/ldk-node/0.7.1) node.
//!
//! One task (the event pump, [`events`]) owns the node's event queue. It resolves the
//! futures of outgoing payments, hands received payments to [`PaymentRail::next_received`]
//! and confirms a received payment to the node only after [`PaymentRail::ack_received`]:
//! the node keeps an unconfirmed event in its persisted queue and delivers it again after a
//! restart, so the caller records a payment before acknowledging it and nothing is lost.
//!
//! ldk-node's synchronous calls enter its runtime with `block_in_place`, so the rail needs
//! a multi-threaded tokio runtime; blocking node calls are made from `spawn_blocking`.

pub mod config;
pub mod control;
pub mod endpoint;
mod events;
mod log;
mod wallet;
pub mod wallet_cmd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::bitcoin::Network;
use ldk_node::lightning::ln::channelmanager::PaymentId as LdkPaymentId;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning::routing::router::RouteParametersConfig;
use ldk_node::logger::LogLevel;
use ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::{Builder, CustomTlvRecord, Node, NodeError};
use onionvpn_proto::ext::PaymentToken;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use config::{
    BitcoindConfig, ChainSource, EsploraConfig, LdkConfig, LdkLogLevel, LdkNetwork, ValidConfig,
    REDACTED,
};
pub use events::ChannelEvent;
/// The ldk-node crate, for callers that need its types (addresses, keys) without a second
/// dependency that could skew versions.
pub use ldk_node;
pub use wallet::ChannelInfo;

use crate::rail::{Balances, KeysendRequest, NodeId, PaymentId, RailFuture, Received, Sent};
use crate::{PayError, PaymentRail, TOKEN_TLV_TYPE};

/// Name of the seed file ldk-node keeps in its storage directory.
const SEED_FILE: &str = "keys_seed";
/// Name of the node's own log file in its storage directory.
const LOG_FILE: &str = "ldk_node.log";
/// Lock file in the storage directory: held while a process runs the node, because
/// ldk-node's store must not be used by two processes at once.
const LOCK_FILE: &str = "onionvpn.lock";
/// Channel-event history kept for slow subscribers.
const CHANNEL_EVENT_BACKLOG: usize = 64;

/// Worker threads of a Lightning node's own runtime ([`node_runtime`]).
pub const NODE_RUNTIME_WORKERS: usize = 2;
/// Name of the threads of [`node_runtime`].
pub const NODE_RUNTIME_THREAD: &str = "onionvpn-ldk";

/// A runtime for a Lightning node of its own, apart from the runtime that carries circuits
/// (ldk-node persists channel updates synchronously on the thread that handles them).
pub fn node_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(NODE_RUNTIME_WORKERS)
        .thread_name(NODE_RUNTIME_THREAD)
        .enable_all()
        .build()
}

/// Where the outcome of an outgoing payment is delivered.
type WaiterMap = HashMap<[u8; 32], oneshot::Sender<Result<Sent, PayError>>>;

/// State shared between the rail and its event pump.
struct Shared {
    /// Outgoing payments waiting for PaymentSuccessful/PaymentFailed.
    waiters: Mutex<WaiterMap>,
    /// Channel lifecycle events, for tests and wallet commands.
    channel_tx: broadcast::Sender<ChannelEvent>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, WaiterMap> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`PaymentRail`] on an embedded ldk-node.
pub struct LdkRail {
    node: Arc<Node>,
    node_id: NodeId,
    listen: Option<SocketAddr>,
    storage_dir: PathBuf,
    max_routing_fee_msat: u64,
    shared: Arc<Shared>,
    received_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    ack_tx: mpsc::UnboundedSender<PaymentId>,
    stop_tx: watch::Sender<bool>,
    pump: Mutex<Option<JoinHandle<()>>>,
    /// Held (locked) for the rail's life; see [`LOCK_FILE`].
    _lock: std::fs::File,
}

impl std::fmt::Debug for LdkRail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdkRail")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Maps an ldk-node error to the crate's error, keeping payment failures distinct.
pub(crate) fn node_err(context: &'static str, e: NodeError) -> PayError {
    match e {
        NodeError::NotRunning => PayError::RailStopped,
        NodeError::PaymentSendingFailed
        | NodeError::InvalidCustomTlvs
        | NodeError::DuplicatePayment
        | NodeError::InsufficientFunds
        | NodeError::InvalidInvoice
        | NodeError::InvalidAmount => PayError::PaymentFailed(format!("{context}: {e}")),
        _ => PayError::Node {
            context,
            detail: e.to_string(),
        },
    }
}

fn io_err(context: &'static str, e: std::io::Error) -> PayError {
    PayError::Node {
        context,
        detail: e.to_string(),
    }
}

fn join_err(context: &'static str, e: tokio::task::JoinError) -> PayError {
    PayError::Node {
        context,
        detail: e.to_string(),
    }
}

/// Converts a rail node id to a secp256k1 key.
pub(crate) fn public_key(id: &NodeId) -> Result<PublicKey, PayError> {
    PublicKey::from_slice(&id.0).map_err(|e| PayError::Invalid {
        what: "node id",
        detail: e.to_string(),
    })
}

/// Reads the token from a payment's custom TLVs: `None` if absent or not exactly
/// [`onionvpn_proto::ext::PAYMENT_TOKEN_LEN`] bytes.
pub(crate) fn token_of(records: &[CustomTlvRecord]) -> Option<PaymentToken> {
    let r = records.iter().find(|r| r.type_num == TOKEN_TLV_TYPE)?;
    let bytes = r.value.as_slice().try_into().ok()?;
    Some(PaymentToken(bytes))
}

fn route_params(max_fee_msat: u64) -> RouteParametersConfig {
    RouteParametersConfig::default().with_max_total_routing_fee_msat(max_fee_msat)
}

impl LdkRail {
    /// Starts a node from `[lightning]` configuration. `data_dir` is the relay's or client's
    /// data directory (the node's storage lives inside it). Must be called on a
    /// multi-threaded tokio runtime, which the node then shares.
    pub async fn start(cfg: &LdkConfig, data_dir: &Path) -> Result<Arc<LdkRail>, PayError> {
        let cfg = cfg.validate(data_dir)?;
        Self::start_valid(cfg).await
    }

    /// Starts a node from an already validated configuration.
    pub async fn start_valid(cfg: ValidConfig) -> Result<Arc<LdkRail>, PayError> {
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(PayError::Invalid {
                what: "tokio runtime",
                detail: "the LDK rail needs a multi-threaded runtime".into(),
            });
        }
        let storage_dir = cfg.storage_dir.clone();
        let lock = lock_store(&storage_dir)?;
        let build_cfg = cfg.clone();
        let node = tokio::task::spawn_blocking(move || build_node(&build_cfg, handle))
            .await
            .map_err(|e| join_err("starting node", e))??;
        let node = Arc::new(node);
        let node_id = NodeId(node.node_id().serialize());

        let (channel_tx, _) = broadcast::channel(CHANNEL_EVENT_BACKLOG);
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
            channel_tx,
        });
        let (received_tx, received_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let pump = tokio::spawn(events::pump(
            node.clone(),
            shared.clone(),
            received_tx,
            ack_rx,
            stop_rx,
        ));
        Ok(Arc::new(LdkRail {
            node,
            node_id,
            listen: cfg.listen,
            storage_dir,
            max_routing_fee_msat: cfg.max_routing_fee_msat,
            shared,
            received_rx: tokio::sync::Mutex::new(received_rx),
            ack_tx,
            stop_tx,
            pump: Mutex::new(Some(pump)),
            _lock: lock,
        }))
    }

    /// Stops the event pump and the node. Unacknowledged received payments stay in the
    /// node's persisted queue and are delivered again by the next start.
    pub async fn stop(&self) -> Result<(), PayError> {
        let _ = self.stop_tx.send(true);
        let pump = self.pump.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = pump {
            p.await.map_err(|e| join_err("stopping event pump", e))?;
        }
        let node = self.node.clone();
        match tokio::task::spawn_blocking(move || node.stop())
            .await
            .map_err(|e| join_err("stopping node", e))?
        {
            Ok(()) | Err(NodeError::NotRunning) => Ok(()),
            Err(e) => Err(node_err("stopping node", e)),
        }
    }

    /// The node's storage directory.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The address the node accepts Lightning peers on, if it listens.
    pub fn listening_address(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Subscribes to channel lifecycle events (pending, ready, closed).
    pub fn channel_events(&self) -> broadcast::Receiver<ChannelEvent> {
        self.shared.channel_tx.subscribe()
    }

    /// Whether the node's store still holds a record of payment `id` (see
    /// [`PaymentRail::forget`]).
    pub fn has_payment(&self, id: PaymentId) -> bool {
        self.node.payment(&LdkPaymentId(id.0)).is_some()
    }

    /// Removes the records of failed outgoing keysends from the node's store. ldk-node keeps
    /// one per failure (including sends refused at once, whose id the caller never learns),
    /// and nothing moved, so nothing needs them; successes are forgotten by the payer
    /// ([`PaymentRail::forget`]) once counted.
    fn forget_failed_keysends(&self) {
        let failed = self.node.list_payments_with_filter(|p| {
            p.direction == PaymentDirection::Outbound
                && p.status == PaymentStatus::Failed
                && matches!(p.kind, PaymentKind::Spontaneous { .. })
        });
        for p in failed {
            if let Err(e) = self.node.remove_payment(&p.id) {
                tracing::debug!("ldk: forgetting a failed keysend: {e}");
            }
        }
    }

    /// The underlying node, for operations the rail does not wrap.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Starts an outgoing payment with `send` (which returns the node's payment id) and
    /// resolves with its outcome. The waiter is registered under the lock before the event
    /// pump can see the outcome, so no outcome is missed.
    ///
    /// `send` runs on a blocking thread: ldk-node persists the channel update a payment
    /// makes (SQLite, synced to disk) on the calling thread, and on a runtime worker that
    /// would stall every task queued behind it (a client's circuits, for a few ms per
    /// payment).
    async fn track(
        &self,
        send: impl FnOnce(&Node) -> Result<LdkPaymentId, NodeError> + Send + 'static,
        context: &'static str,
    ) -> Result<Sent, PayError> {
        let node = self.node.clone();
        let shared = self.shared.clone();
        let rx = tokio::task::spawn_blocking(move || {
            let mut waiters = shared.waiters();
            let id = send(&node).map_err(|e| node_err(context, e))?;
            let (tx, rx) = oneshot::channel();
            waiters.insert(id.0, tx);
            Ok::<_, PayError>(rx)
        })
        .await
        .map_err(|e| join_err(context, e))??;
        rx.await.map_err(|_| PayError::RailStopped)?
    }
}

fn build_node(cfg: &ValidConfig, handle: tokio::runtime::Handle) -> Result<Node, PayError> {
    create_private_dir(&cfg.storage_dir)?;
    let storage = cfg.storage_dir.to_str().ok_or_else(|| PayError::Invalid {
        what: "lightning.storage",
        detail: format!("{:?}: not UTF-8", cfg.storage_dir),
    })?;
    let mut b = Builder::new();
    b.set_network(match cfg.network {
        LdkNetwork::Bitcoin => Network::Bitcoin,
        LdkNetwork::Signet => Network::Signet,
        LdkNetwork::Regtest => Network::Regtest,
    });
    b.set_storage_dir_path(storage.to_owned());
    let level = match cfg.log_level {
        LdkLogLevel::Trace => LogLevel::Trace,
        LdkLogLevel::Debug => LogLevel::Debug,
        LdkLogLevel::Info => LogLevel::Info,
        LdkLogLevel::Warn => LogLevel::Warn,
        LdkLogLevel::Error => LogLevel::Error,
    };
    b.set_custom_logger(Arc::new(log::RedactingLog::new(
        cfg.storage_dir.join(LOG_FILE),
        level,
        cfg.log_sensitive,
    )));
    match &cfg.chain {
        ChainSource::Esplora(url) => {
            b.set_chain_source_esplora(url.clone(), None);
        }
        ChainSource::Bitcoind(c) => {
            b.set_chain_source_bitcoind_rpc(
                c.host.clone(),
                c.port,
                c.user.clone(),
                c.password.clone(),
            );
        }
    }
    if let Some(a) = cfg.listen {
        b.set_listening_addresses(vec![SocketAddress::from(a)])
            .map_err(|e| PayError::Invalid {
                what: "lightning.listen",
                detail: e.to_string(),
            })?;
    }
    if let Some(alias) = &cfg.alias {
        b.set_node_alias(alias.clone())
            .map_err(|e| PayError::Invalid {
                what: "lightning.alias",
                detail: e.to_string(),
            })?;
    }
    b.set_runtime(handle);
    let node = b.build().map_err(|e| PayError::Node {
        context: "building node",
        detail: e.to_string(),
    })?;
    // ldk-node creates its seed read-only (0400); the project's rule for key files is 0600.
    set_mode(&cfg.storage_dir.join(SEED_FILE), 0o600)?;
    node.start().map_err(|e| node_err("starting node", e))?;
    Ok(node)
}

/// Creates the storage directory and takes its lock, or says who holds it.
fn lock_store(dir: &Path) -> Result<std::fs::File, PayError> {
    create_private_dir(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| io_err("opening the store lock", e))?;
    // flock(2), not `File::try_lock`: the crate's MSRV (1.85) predates it.
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(PayError::StoreInUse {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(io_err("locking the store", e.into())),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), PayError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err("creating lightning storage dir", e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), PayError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating lightning storage dir", e))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), PayError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("setting seed file mode", e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), PayError> {
    Ok(())
}

impl PaymentRail for LdkRail {
    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn keysend(&self, req: KeysendRequest) -> RailFuture<'_, Sent> {
        Box::pin(async move {
            let to = public_key(&req.to)?;
            let fee_cap = req.max_fee_msat.min(self.max_routing_fee_msat);
            let tlv = CustomTlvRecord {
                type_num: TOKEN_TLV_TYPE,
                value: req.token.0.to_vec(),
            };
            let r = self
                .track(
                    move |node| {
                        node.spontaneous_payment().send_with_custom_tlvs(
                            req.amount_msat,
                            to,
                            Some(route_params(fee_cap)),
                            vec![tlv],
                        )
                    },
                    "keysend",
                )
                .await;
            if r.is_err() {
                self.forget_failed_keysends();
            }
            r
        })
    }

    fn next_received(&self) -> RailFuture<'_, Received> {
        Box::pin(async move {
            self.received_rx
                .lock()
                .await
                .recv()
                .await
                .ok_or(PayError::RailStopped)
        })
    }

    fn ack_received(&self, id: PaymentId) -> Result<(), PayError> {
        self.ack_tx.send(id).map_err(|_| PayError::RailStopped)
    }

    fn forget(&self, id: PaymentId) -> Result<(), PayError> {
        self.node
            .remove_payment(&LdkPaymentId(id.0))
            .map_err(|e| node_err("forget", e))
    }

    fn balances(&self) -> Result<Balances, PayError> {
        let b = self.node.list_balances();
        let (mut out, mut inb) = (0u64, 0u64);
        for c in self.node.list_channels().iter().filter(|c| c.is_usable) {
            out = out.saturating_add(c.outbound_capacity_msat);
            inb = inb.saturating_add(c.inbound_capacity_msat);
        }
        Ok(Balances {
            onchain_spendable_sat: b.spendable_onchain_balance_sats,
            lightning_outbound_msat: out,
            lightning_inbound_msat: inb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parsed_only_with_exact_length() {
        let ok = CustomTlvRecord {
            type_num: TOKEN_TLV_TYPE,
            value: vec![7; 16],
        };
        assert_eq!(token_of(&[ok]), Some(PaymentToken([7; 16])));
        let short = CustomTlvRecord {
            type_num: TOKEN_TLV_TYPE,
            value: vec![7; 15],
        };
        assert_eq!(token_of(&[short]), None);
        let other = CustomTlvRecord {
            type_num: TOKEN_TLV_TYPE + 2,
            value: vec![7; 16],
        };
        assert_eq!(token_of(&[other]), None);
        assert_eq!(token_of(&[]), None);
    }

    #[test]
    fn token_tlv_type_is_odd_and_custom() {
        const { assert!(TOKEN_TLV_TYPE % 2 == 1 && TOKEN_TLV_TYPE >= 1 << 16) };
    }

    #[test]
    fn bad_node_id_is_typed_error() {
        assert!(matches!(
            public_key(&NodeId([0; 33])),
            Err(PayError::Invalid { .. })
        ));
    }
}
