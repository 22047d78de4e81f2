//! A relay's state machine for its own hop of one circuit: accepting the CREATE,
//! peeling or forwarding cells, extending, and, at the last hop, exit streams.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use rand_core::CryptoRng;

use crate::cc::{Vegas, VegasParams};
use crate::cell::{ChanCmd, Create, Created};
use crate::consts::{CELL_BODY_LEN, MAX_HOPS, RELAY_PAYLOAD_LEN, RELAY_TAG_LEN};
use crate::crypto::handshake::{relay_handshake_accept, OnionSecretKey, ReplayCache};
use crate::crypto::layer::{Recognized, RelayCircuitCrypto};
use crate::ext::{
    CongestionControl, Extensions, PaymentTerms, PaymentToken, WindowLimit, PAYMENT_TOKEN_LEN,
};
use crate::relaymsg::{
    BeginFlags, Connected, EndReason, Extended, RelayBound, RelayMsg, Sendme, StreamId, Target,
};

use super::edge::{Edge, StreamMsg};
use super::{area_of, CircError, SendmeTag};

/// The keys a relay answers circuit handshakes with.
pub struct RelayKeys<'a> {
    /// The relay's ed25519 identity (public) key.
    pub identity: [u8; 32],
    /// Its onion keys: the current one and, during rotation, the previous one.
    pub onion_keys: &'a [OnionSecretKey],
}

/// What a relay charges and allows on circuits it accepts.
#[derive(Debug, Clone)]
pub struct RelayPolicy {
    /// Price per MiB relayed, in millisatoshi (0 = free).
    pub msat_per_mib: u64,
    /// Price per minute of circuit life, in millisatoshi (0 = free).
    pub msat_per_min: u64,
    /// Traffic allowed beyond what was paid, in KiB.
    pub grace_kib: u32,
    /// Congestion-control parameters for data this relay sends as an exit.
    pub vegas: VegasParams,
    /// Smallest and largest SENDME increment a client may ask for.
    pub sendme_inc_range: (u8, u8),
    /// Most streams open at once on one circuit.
    pub max_streams: usize,
}

impl Default for RelayPolicy {
    fn default() -> Self {
        RelayPolicy {
            msat_per_mib: 0,
            msat_per_min: 0,
            grace_kib: 512,
            vegas: VegasParams::default(),
            sendme_inc_range: (16, 64),
            max_streams: 1024,
        }
    }
}

impl RelayPolicy {
    fn charges(&self) -> bool {
        self.msat_per_mib > 0 || self.msat_per_min > 0
    }
}

/// A request from the client to extend the circuit to another relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendRequest {
    /// The next relay over IPv4.
    pub ipv4: Option<SocketAddrV4>,
    /// The next relay over IPv6.
    pub ipv6: Option<SocketAddrV6>,
    /// The identity the next relay must prove (checked by the link's prologue).
    pub identity: [u8; 32],
    /// The next relay's link key, for the Noise handshake.
    pub link_key: [u8; 32],
    /// The CREATE body to send it, ready as is.
    pub create_body: Box<[u8; CELL_BODY_LEN]>,
}

/// What a cell from the client side meant, for the shell.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FromClient<'a> {
    /// Not for this hop: send the (peeled) body to the next hop, with the same command.
    Forward {
        /// Whether it arrived as RELAY_EARLY (and must be forwarded as such).
        early: bool,
    },
    /// Open a link to the next relay and send it the CREATE; then call
    /// [`RelayCircuit::extended`] or destroy the circuit.
    Extend(Box<ExtendRequest>),
    /// Open a stream: resolve and connect (if the exit policy allows), then call
    /// [`RelayCircuit::stream_connected`] or [`RelayCircuit::stream_refused`].
    Begin {
        /// The stream.
        stream: StreamId,
        /// Where to.
        target: Target,
        /// Address-family preferences.
        flags: BeginFlags,
    },
    /// Bytes to write to a stream's connection.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes, borrowed from the cell.
        data: &'a [u8],
    },
    /// The client sends no more data on this stream: shut down the write half.
    Fin {
        /// The stream.
        stream: StreamId,
    },
    /// The client closed the stream.
    End {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: EndReason,
    },
    /// The client asks us to stop (`paused`) or resume reading a stream's connection.
    FlowControl {
        /// The stream.
        stream: StreamId,
        /// `true` after XOFF.
        paused: bool,
    },
    /// A PAYMENT message for the payments layer.
    Payment(&'a [u8]),
    /// Nothing for the shell.
    None,
}

/// Where the circuit goes after this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// This is the last hop.
    None,
    /// EXTEND seen, waiting for the next relay's CREATED.
    Pending,
    /// Extended: cells not for us go on.
    Open,
}

/// A cell this hop originates, waiting to be encrypted and sent toward the client.
struct Queued {
    sendme_tracked: bool,
    area: [u8; RELAY_PAYLOAD_LEN],
}

/// A relay's state machine for its hop of one circuit.
pub struct RelayCircuit {
    crypto: RelayCircuitCrypto,
    identity: [u8; 32],
    terms: Option<PaymentTerms>,
    early_seen: usize,
    next: Next,
    queue: VecDeque<Queued>,
    /// Streams exiting here, and congestion control toward the client.
    edge: Edge,
    cells_forward: u64,
    cells_backward: u64,
}

impl std::fmt::Debug for RelayCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCircuit")
            .field("next", &self.next)
            .field("streams", &self.edge.streams.len())
            .finish_non_exhaustive()
    }
}

impl RelayCircuit {
    /// Answers a CREATE: runs the handshake, checks the client's offer against `policy`,
    /// and returns the new circuit with the CREATED body to send back.
    pub fn accept<R: CryptoRng + ?Sized>(
        rng: &mut R,
        keys: &RelayKeys<'_>,
        replay: &mut ReplayCache,
        policy: &RelayPolicy,
        create_body: &[u8; CELL_BODY_LEN],
        now: Instant,
    ) -> Result<(RelayCircuit, [u8; CELL_BODY_LEN]), CircError> {
        let create = Create::parse(create_body)?;
        let pending =
            relay_handshake_accept(&keys.identity, keys.onion_keys, replay, now, create.hdata)
                .map_err(|source| CircError::Handshake { hop: 0, source })?;
        let ext_c = Extensions::parse(pending.client_extensions())
            .map_err(|source| CircError::Ext { hop: 0, source })?;

        let terms = if policy.charges() {
            let offer = ext_c.payment_offer().ok_or(CircError::PriceTooLow)?;
            if offer.msat_per_mib < policy.msat_per_mib || offer.msat_per_min < policy.msat_per_min
            {
                return Err(CircError::PriceTooLow);
            }
            let mut token = [0u8; PAYMENT_TOKEN_LEN];
            rng.fill_bytes(&mut token);
            Some(PaymentTerms {
                msat_per_mib: policy.msat_per_mib,
                msat_per_min: policy.msat_per_min,
                grace_kib: policy.grace_kib,
                token: PaymentToken(token),
            })
        } else {
            None
        };
        let (lo, hi) = policy.sendme_inc_range;
        let sendme_inc = ext_c
            .congestion_control()
            .map_or(crate::cc::DEFAULT_SENDME_INC, |c| c.sendme_inc)
            .clamp(lo, hi);
        // A window the client asked for, within ours and never below the smallest window.
        let cwnd_max = ext_c.window_limit().map(|w| {
            let floor = policy.vegas.cwnd_min.max(u64::from(sendme_inc));
            u64::from(w.cells).min(policy.vegas.cwnd_max).max(floor)
        });

        let mut ext_s = Extensions::new();
        ext_s
            .set_payment_terms(terms)
            .set_congestion_control(Some(CongestionControl { sendme_inc }))
            .set_window_limit(cwnd_max.map(|c| WindowLimit {
                cells: u32::try_from(c).unwrap_or(u32::MAX),
            }));
        let (hdata, hop_keys) = pending
            .reply(rng, &ext_s.encode())
            .map_err(|source| CircError::Handshake { hop: 0, source })?;
        let mut body = [0u8; CELL_BODY_LEN];
        Created { hdata: &hdata }.encode_into(&mut body)?;

        let circ = RelayCircuit {
            crypto: RelayCircuitCrypto::from_keys(&hop_keys),
            identity: keys.identity,
            terms,
            early_seen: 0,
            next: Next::None,
            queue: VecDeque::new(),
            // Both edges must agree on which cells a SENDME acknowledges.
            edge: Edge::new(
                VegasParams {
                    sendme_inc,
                    cwnd_max: cwnd_max.unwrap_or(policy.vegas.cwnd_max),
                    ..policy.vegas.clone()
                },
                policy.max_streams,
            ),
            cells_forward: 0,
            cells_backward: 0,
        };
        Ok((circ, body))
    }

    /// The terms this hop announced, if it charges.
    pub fn terms(&self) -> Option<&PaymentTerms> {
        self.terms.as_ref()
    }

    /// Whether this hop is (still) the last of the circuit.
    pub fn is_last_hop(&self) -> bool {
        self.next == Next::None
    }

    /// Cells this hop has carried so far: (toward the exit, toward the client).
    pub fn cells_carried(&self) -> (u64, u64) {
        (self.cells_forward, self.cells_backward)
    }

    /// The congestion-control state of data this hop sends as an exit.
    pub fn cc(&self) -> &Vegas {
        &self.edge.cc
    }

    /// Handles a RELAY or RELAY_EARLY cell from the client side, peeling our layer in
    /// place.
    pub fn handle_forward<'a>(
        &mut self,
        cmd: ChanCmd,
        body: &'a mut [u8; CELL_BODY_LEN],
        now: Instant,
    ) -> Result<FromClient<'a>, CircError> {
        let early = match cmd {
            ChanCmd::RelayEarly => true,
            ChanCmd::Relay => false,
            _ => {
                return Err(CircError::Protocol {
                    what: "handle_forward takes RELAY and RELAY_EARLY cells only",
                })
            }
        };
        if early {
            self.early_seen += 1;
            if self.early_seen > MAX_HOPS {
                return Err(CircError::TooManyEarly { max: MAX_HOPS });
            }
        }
        self.cells_forward += 1;
        let mut tag_in: SendmeTag = [0; RELAY_TAG_LEN];
        tag_in.copy_from_slice(&body[..RELAY_TAG_LEN]);
        match self.crypto.decrypt_forward(body)? {
            Recognized::Forward => match self.next {
                Next::Open => Ok(FromClient::Forward { early }),
                Next::None | Next::Pending => Err(CircError::Protocol {
                    what: "relay cell recognized by no hop (altered, replayed or forged)",
                }),
            },
            Recognized::ForMe => self.handle_own(early, tag_in, area_of(body), now),
        }
    }

    fn handle_own<'a>(
        &mut self,
        early: bool,
        tag_in: SendmeTag,
        area: &'a [u8; RELAY_PAYLOAD_LEN],
        now: Instant,
    ) -> Result<FromClient<'a>, CircError> {
        let msg = RelayBound::decode(area).map_err(|source| CircError::Msg { hop: 0, source })?;
        let is_stream_msg = !matches!(
            msg,
            RelayBound::Extend(_)
                | RelayBound::Drop(_)
                | RelayBound::Payment(_)
                | RelayBound::Sendme(_)
        );
        if is_stream_msg && self.next != Next::None {
            return Err(CircError::Protocol {
                what: "stream message at a hop that is not the last",
            });
        }
        match msg {
            RelayBound::Extend(e) => {
                if !early {
                    return Err(CircError::Protocol {
                        what: "EXTEND outside a RELAY_EARLY cell",
                    });
                }
                if self.next != Next::None {
                    return Err(CircError::Protocol {
                        what: "EXTEND on a circuit already extended",
                    });
                }
                if e.identity == self.identity {
                    return Err(CircError::Protocol {
                        what: "EXTEND back to this relay",
                    });
                }
                let mut create_body = Box::new([0u8; CELL_BODY_LEN]);
                Create {
                    htype: e.htype,
                    hdata: e.hdata,
                }
                .encode_into(&mut create_body)?;
                self.next = Next::Pending;
                Ok(FromClient::Extend(Box::new(ExtendRequest {
                    ipv4: e.ipv4,
                    ipv6: e.ipv6,
                    identity: e.identity,
                    link_key: e.link_key,
                    create_body,
                })))
            }
            RelayBound::Begin(stream, begin) => {
                self.edge.streams.insert(stream)?;
                Ok(FromClient::Begin {
                    stream,
                    target: begin.target,
                    flags: begin.flags,
                })
            }
            RelayBound::Data(stream, data) => {
                if self.edge.on_data_cell() {
                    self.queue_msg(&RelayMsg::Sendme(Sendme { tag: tag_in }))?;
                }
                Ok(match self.edge.on_stream_msg(stream, StreamMsg::Data)? {
                    true => FromClient::Data { stream, data },
                    false => FromClient::None,
                })
            }
            RelayBound::Fin(stream) => {
                Ok(match self.edge.on_stream_msg(stream, StreamMsg::Fin)? {
                    true => FromClient::Fin { stream },
                    false => FromClient::None,
                })
            }
            RelayBound::End(stream, reason) => {
                Ok(match self.edge.on_stream_msg(stream, StreamMsg::End)? {
                    true => FromClient::End { stream, reason },
                    false => FromClient::None,
                })
            }
            RelayBound::Xoff(stream) | RelayBound::Xon(stream, _) => {
                let paused = matches!(msg, RelayBound::Xoff(_));
                Ok(
                    match self.edge.on_stream_msg(stream, StreamMsg::Flow(paused))? {
                        true => FromClient::FlowControl { stream, paused },
                        false => FromClient::None,
                    },
                )
            }
            RelayBound::Sendme(Sendme { tag: got }) => {
                self.edge.on_sendme(&got, now)?;
                Ok(FromClient::None)
            }
            RelayBound::Drop(_) => Ok(FromClient::None),
            RelayBound::Payment(body) => Ok(FromClient::Payment(body)),
        }
    }

    /// Wraps a RELAY cell from the next hop (going toward the client) in place; the shell
    /// sends it on at once.
    pub fn handle_backward(&mut self, body: &mut [u8; CELL_BODY_LEN]) -> Result<(), CircError> {
        if self.next != Next::Open {
            return Err(CircError::Protocol {
                what: "relay cell from a next hop that is not open",
            });
        }
        self.cells_backward += 1;
        self.crypto.encrypt_backward(body)?;
        Ok(())
    }

    /// The next relay answered our CREATE: queues EXTENDED for the client.
    pub fn extended(&mut self, created_body: &[u8; CELL_BODY_LEN]) -> Result<(), CircError> {
        if self.next != Next::Pending {
            return Err(CircError::Protocol {
                what: "CREATED from a next hop we did not ask",
            });
        }
        let created = Created::parse(created_body)?;
        self.queue_msg(&RelayMsg::Extended(Extended {
            hdata: created.hdata,
        }))?;
        self.next = Next::Open;
        Ok(())
    }

    /// The exit connected `stream`: queues CONNECTED.
    pub fn stream_connected(
        &mut self,
        stream: StreamId,
        addr: Option<IpAddr>,
        ttl: u32,
    ) -> Result<(), CircError> {
        if !self.edge.on_connected(stream)? {
            // The client ended the stream while we connected.
            return Err(CircError::UnknownStream(stream));
        }
        self.queue_msg(&RelayMsg::Connected(stream, Connected { addr, ttl }))
    }

    /// The exit could not (or would not) connect `stream`: queues END.
    pub fn stream_refused(&mut self, stream: StreamId, reason: EndReason) -> Result<(), CircError> {
        self.send_end(stream, reason)
    }

    /// Whether congestion and flow control let `stream` send now.
    pub fn can_send(&self, stream: StreamId) -> bool {
        self.edge.can_send(stream)
    }

    /// Queues up to one cell of `data` from the destination on `stream`; returns how many
    /// bytes it took (0 when congestion or flow control says wait).
    pub fn send_data(
        &mut self,
        stream: StreamId,
        data: &[u8],
        now: Instant,
    ) -> Result<usize, CircError> {
        self.edge.check_may_send(stream)?;
        let Some(cell) = self
            .edge
            .data_cell(stream, data, now)
            .map_err(|source| CircError::Msg { hop: 0, source })?
        else {
            return Ok(0);
        };
        self.queue.push_back(Queued {
            sendme_tracked: cell.sendme_tracked,
            area: cell.area,
        });
        Ok(cell.taken)
    }

    /// The destination closed its side: queues FIN.
    pub fn send_fin(&mut self, stream: StreamId) -> Result<(), CircError> {
        let msg = self.edge.fin(stream)?;
        self.queue_msg(&msg)
    }

    /// Closes `stream` both ways: queues END.
    pub fn send_end(&mut self, stream: StreamId, reason: EndReason) -> Result<(), CircError> {
        if self.edge.end(stream) {
            self.queue_msg(&RelayMsg::End(stream, reason))?;
        }
        Ok(())
    }

    /// Asks the client to stop (`paused`) or resume sending on `stream`.
    pub fn send_flow_control(&mut self, stream: StreamId, paused: bool) -> Result<(), CircError> {
        let msg = self.edge.flow(stream, paused)?;
        self.queue_msg(&msg)
    }

    /// Sends an opaque PAYMENT message to the client (the payments layer defines it).
    pub fn send_payment_msg(&mut self, body: &[u8]) -> Result<(), CircError> {
        self.queue_msg(&RelayMsg::Payment(body))
    }

    /// Ids of the open streams (to close their connections when the circuit goes).
    pub fn stream_ids(&self) -> Vec<StreamId> {
        self.edge.streams.ids().collect()
    }

    /// Whether cells are waiting for [`RelayCircuit::poll_backward`].
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the next cell this hop originates toward the client, encrypting it now
    /// (see the module docs on ordering). `None` when nothing is queued.
    pub fn poll_backward(&mut self) -> Result<Option<[u8; CELL_BODY_LEN]>, CircError> {
        let Some(q) = self.queue.pop_front() else {
            return Ok(None);
        };
        let mut body = [0u8; CELL_BODY_LEN];
        body[RELAY_TAG_LEN..].copy_from_slice(&q.area);
        self.crypto.originate_backward(&mut body)?;
        if q.sendme_tracked {
            let mut tag: SendmeTag = [0; RELAY_TAG_LEN];
            tag.copy_from_slice(&body[..RELAY_TAG_LEN]);
            self.edge.track_sent(tag);
        }
        self.cells_backward += 1;
        Ok(Some(body))
    }

    fn queue_msg(&mut self, msg: &RelayMsg<'_>) -> Result<(), CircError> {
        let mut area = [0u8; RELAY_PAYLOAD_LEN];
        msg.encode_into(&mut area)
            .map_err(|source| CircError::Msg { hop: 0, source })?;
        self.queue.push_back(Queued {
            sendme_tracked: false,
            area,
        });
        Ok(())
    }
}
