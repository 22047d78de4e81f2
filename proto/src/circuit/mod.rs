//! Circuit state machines: the client's view of a whole circuit and a relay's view of
//! its own hop (docs/spec.md, "Circuits").
//!
//! Both are sans-IO. Cells and the current time go in; what to send, and events for the
//! shell (stream data, connect requests, extension requests), come out. The shell owns
//! sockets and timers; the state machines own the keys, counters, streams and congestion
//! state, so the simulator drives exactly the code the binaries run.
//!
//! Ordering rule: relay crypto layers count cells, so a cell must be sent in the order it
//! was encrypted. Both machines therefore encrypt queued cells only when the shell takes
//! them ([`ClientCircuit::poll_cell`], [`RelayCircuit::poll_backward`]), and the shell
//! must send cells in the order it takes them, interleaved with forwarded cells in the
//! order it handled those.

mod client;
mod edge;
mod relay;
mod streams;

pub use client::{ClientCircuit, ClientConfig, ClientEvent, HopTarget, OutCell};
pub use relay::{ExtendRequest, FromClient, RelayCircuit, RelayKeys, RelayPolicy};

use crate::cc::CcError;
use crate::cell::{CellError, DestroyReason};
use crate::crypto::handshake::HandshakeError;
use crate::crypto::layer::LayerError;
use crate::ext::ExtError;
use crate::relaymsg::{RelayMsgError, StreamId};

/// Why a circuit state machine refused input. Every variant ends the circuit: the shell
/// sends DESTROY with [`CircError::destroy_reason`] and forgets it; other circuits are
/// unaffected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CircError {
    /// The relay crypto refused the cell (not recognized, or a counter exhausted).
    #[error("relay crypto: {0}")]
    Layer(#[from] LayerError),
    /// A relay message could not be decoded, or is not valid in this context.
    #[error("relay message at hop {hop}: {source}")]
    Msg {
        /// 0-based hop the message came from (client) or 0 (relay).
        hop: usize,
        /// What was wrong with it.
        source: RelayMsgError,
    },
    /// A CREATE, CREATED or EXTENDED cell was malformed.
    #[error("cell: {0}")]
    Cell(#[from] CellError),
    /// The circuit handshake with a hop failed.
    #[error("circuit handshake with hop {hop}: {source}")]
    Handshake {
        /// 0-based hop.
        hop: usize,
        /// What failed.
        source: HandshakeError,
    },
    /// A handshake's extension message was malformed or incomplete.
    #[error("extension message of hop {hop}: {source}")]
    Ext {
        /// 0-based hop.
        hop: usize,
        /// What was wrong with it.
        source: ExtError,
    },
    /// A well-formed message that the protocol does not allow in this state.
    #[error("protocol violation: {what}")]
    Protocol {
        /// What happened, for logs.
        what: &'static str,
    },
    /// A stream message named a stream that is not open.
    #[error("relay message for unknown stream {0}")]
    UnknownStream(StreamId),
    /// More RELAY_EARLY cells than the circuit length bound allows.
    #[error("more than {max} RELAY_EARLY cells on one circuit")]
    TooManyEarly {
        /// The bound ([`crate::consts::MAX_HOPS`]).
        max: usize,
    },
    /// Congestion control saw something impossible (a SENDME nobody asked for).
    #[error("congestion control: {0}")]
    Cc(#[from] CcError),
    /// A hop asks more than the client agreed to pay.
    #[error("hop {hop} asks {asked_msat_per_mib} msat/MiB and {asked_msat_per_min} msat/min, above the offer")]
    PriceAboveOffer {
        /// 0-based hop.
        hop: usize,
        /// Price per MiB it asks.
        asked_msat_per_mib: u64,
        /// Price per minute it asks.
        asked_msat_per_min: u64,
    },
    /// The client offers less than this relay's prices.
    #[error("client offers less than the relay's prices")]
    PriceTooLow,
    /// The client has no more stream ids, or the relay no room for another stream.
    #[error("no free stream id")]
    StreamIdsExhausted,
    /// The circuit was destroyed by a hop (client side) or by the previous hop.
    #[error("destroyed: {0:?}")]
    Destroyed(DestroyReason),
}

impl CircError {
    /// The DESTROY reason to send for this error.
    pub fn destroy_reason(&self) -> DestroyReason {
        match self {
            CircError::Layer(LayerError::CounterExhausted { .. }) => DestroyReason::Finished,
            CircError::Layer(LayerError::TooManyHops { .. }) | CircError::TooManyEarly { .. } => {
                DestroyReason::TooManyHops
            }
            CircError::Handshake {
                source: HandshakeError::UnknownOnionKey,
                ..
            } => DestroyReason::OnionKeyUnknown,
            CircError::PriceTooLow | CircError::PriceAboveOffer { .. } => {
                DestroyReason::PriceTooLow
            }
            CircError::StreamIdsExhausted => DestroyReason::ResourceLimit,
            CircError::Destroyed(_) => DestroyReason::Destroyed,
            _ => DestroyReason::Protocol,
        }
    }
}

/// A SENDME tag: the `T` field of the cell a SENDME acknowledges, as the acknowledging
/// hop saw it. Only a hop that really received the cell knows it, so a client cannot
/// acknowledge data it has not received to make an exit send faster.
pub(crate) type SendmeTag = [u8; crate::consts::RELAY_TAG_LEN];

/// Compares two SENDME tags in constant time.
pub(crate) fn tags_equal(a: &SendmeTag, b: &SendmeTag) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const _: () = assert!(
    crate::consts::CELL_BODY_LEN == crate::consts::RELAY_TAG_LEN + crate::consts::RELAY_PAYLOAD_LEN
);

/// The relay message area `C` of a RELAY cell body (after its tag `T`).
pub(crate) fn area_of(
    body: &[u8; crate::consts::CELL_BODY_LEN],
) -> &[u8; crate::consts::RELAY_PAYLOAD_LEN] {
    match body.split_last_chunk::<{ crate::consts::RELAY_PAYLOAD_LEN }>() {
        Some((_, area)) => area,
        // The body is exactly tag + area (checked at compile time above).
        None => unreachable!(),
    }
}
