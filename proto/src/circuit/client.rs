//! The client's state machine for one circuit: building it hop by hop, opening streams
//! at the last hop, and moving data under congestion control.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use rand_core::CryptoRng;

use crate::cc::{Vegas, VegasParams};
use crate::cell::{ChanCmd, Create, Created, HandshakeType};
use crate::consts::{CELL_BODY_LEN, MAX_HOPS, RELAY_PAYLOAD_LEN, RELAY_TAG_LEN};
use crate::crypto::handshake::{client_handshake, ClientHandshake, OnionPublicKey};
use crate::crypto::layer::ClientCircuitCrypto;
use crate::ext::{CongestionControl, Extensions, PaymentOffer, PaymentTerms, WindowLimit};
use crate::relaymsg::{
    Begin, BeginFlags, ClientBound, EndReason, Extend, RelayMsg, Sendme, StreamId, Target,
};

use super::edge::{Edge, StreamMsg};
use super::{CircError, SendmeTag};

/// Everything the client needs about one hop, taken from its verified descriptor.
#[derive(Debug, Clone)]
pub struct HopTarget {
    /// The relay's ed25519 identity key.
    pub identity: [u8; 32],
    /// The relay's current onion key.
    pub onion_key: OnionPublicKey,
    /// The relay's link (Noise static) key.
    pub link_key: [u8; 32],
    /// Where the previous hop reaches it over IPv4.
    pub ipv4: Option<SocketAddrV4>,
    /// Where the previous hop reaches it over IPv6.
    pub ipv6: Option<SocketAddrV6>,
    /// The prices the client accepts for this hop (the descriptor's, within the cap).
    pub offer: PaymentOffer,
}

/// Client-side settings of a circuit.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Congestion-control parameters for data the client sends; `vegas.sendme_inc` is the
    /// SENDME increment the client asks for (the exit may clamp it).
    pub vegas: VegasParams,
    /// Most streams open at once on this circuit.
    pub max_streams: usize,
    /// The largest congestion window (DATA cells) to ask of the exit
    /// ([`crate::ext::WindowLimit`]); `None`: ask for none. A paying client asks for one so
    /// that what the exit sends past the SENDMEs it holds back is bounded
    /// ([`ClientCircuit::set_byte_allowance`]).
    pub window_limit: Option<u32>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            vegas: VegasParams::default(),
            max_streams: 1024,
            window_limit: None,
        }
    }
}

/// A cell for the shell to send to hop 1, already encrypted.
#[derive(Clone)]
pub struct OutCell {
    /// CREATE, RELAY or RELAY_EARLY.
    pub cmd: ChanCmd,
    /// The cell body.
    pub body: [u8; CELL_BODY_LEN],
}

impl std::fmt::Debug for OutCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutCell").field("cmd", &self.cmd).finish()
    }
}

/// What a cell from the circuit meant, for the shell.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent<'a> {
    /// A hop completed its handshake; `terms` are what it will charge.
    HopAdded {
        /// 0-based hop index.
        hop: usize,
        /// The hop's payment terms, if it charges.
        terms: Option<PaymentTerms>,
        /// Whether every hop of the path is now built.
        open: bool,
    },
    /// The exit connected a stream.
    Connected {
        /// The stream.
        stream: StreamId,
        /// The address it connected to, if it said.
        addr: Option<IpAddr>,
    },
    /// Bytes for a stream.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes, borrowed from the cell.
        data: &'a [u8],
    },
    /// The exit will send no more data on this stream.
    Fin {
        /// The stream.
        stream: StreamId,
    },
    /// The stream is closed.
    End {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: EndReason,
    },
    /// The exit asks us to stop sending on a stream, or lets us resume.
    FlowControl {
        /// The stream.
        stream: StreamId,
        /// `true` after XOFF, `false` after XON.
        paused: bool,
    },
    /// Nothing for the shell (padding, a SENDME, …).
    None,
}

/// A cell waiting to be encrypted and sent.
struct Queued {
    hop: usize,
    early_ok: bool,
    /// Record the tag as the one the next SENDME must carry.
    sendme_tracked: bool,
    area: [u8; RELAY_PAYLOAD_LEN],
}

/// Where the build stands.
enum Build {
    /// Waiting for CREATED (hop 0) or EXTENDED (hop `hop`).
    Waiting {
        hop: usize,
        pending: ClientHandshake,
    },
    /// All hops built.
    Open,
}

/// The client's state machine for one circuit.
pub struct ClientCircuit {
    path: Vec<HopTarget>,
    crypto: ClientCircuitCrypto,
    terms: Vec<Option<PaymentTerms>>,
    build: Build,
    /// Handshakes for every hop, made up front from the caller's RNG (so a seeded RNG
    /// makes the whole build deterministic); each is taken when its hop is extended to.
    handshakes: Vec<Option<(ClientHandshake, Vec<u8>)>>,
    /// RELAY_EARLY cells still to send (the first [`MAX_HOPS`] relay cells use it).
    early_left: usize,
    queue: VecDeque<Queued>,
    next_stream: u16,
    /// The exit's largest congestion window, as it confirmed it (`None`: it gave none).
    exit_window: Option<u64>,
    /// Congestion-control parameters; `sendme_inc` is replaced by the exit's confirmed value.
    vegas: VegasParams,
    /// Streams and congestion control toward the exit.
    edge: Edge,
    /// DATA cells from the exit the client may acknowledge in all (`None`: no limit); see
    /// [`ClientCircuit::set_ack_limit`].
    ack_limit: Option<u64>,
    /// SENDMEs held back by `ack_limit`, oldest first: (DATA cells received when it fell
    /// due, the tag it carries).
    held_sendmes: VecDeque<(u64, SendmeTag)>,
}

/// SENDMEs the client holds back at most. The exit may not send past its congestion window
/// without acknowledgements, so an honest exit leaves a few dozen held at most; more is an
/// exit ignoring congestion control, and the circuit is torn down rather than the queue
/// growing without bound.
pub const MAX_HELD_SENDMES: usize = 1024;

impl std::fmt::Debug for ClientCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCircuit")
            .field("hops_built", &self.crypto.n_hops())
            .field("path_len", &self.path.len())
            .field("streams", &self.edge.streams.len())
            .finish_non_exhaustive()
    }
}

impl ClientCircuit {
    /// Starts building a circuit along `path` (hop 0 first) and returns the state machine
    /// with the body of the CREATE cell to send to hop 0.
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        path: Vec<HopTarget>,
        config: ClientConfig,
    ) -> Result<(ClientCircuit, [u8; CELL_BODY_LEN]), CircError> {
        if path.is_empty() || path.len() > MAX_HOPS {
            return Err(CircError::Protocol {
                what: "a circuit has between 1 and MAX_HOPS hops",
            });
        }
        let mut handshakes = Vec::with_capacity(path.len());
        for (hop, target) in path.iter().enumerate() {
            let is_exit = hop + 1 == path.len();
            handshakes.push(Some(start_handshake(rng, target, &config, hop, is_exit)?));
        }
        let (pending, hdata) = take_handshake(&mut handshakes, 0)?;
        let mut body = [0u8; CELL_BODY_LEN];
        Create {
            htype: HandshakeType::Ntor3V1,
            hdata: &hdata,
        }
        .encode_into(&mut body)?;
        let circ = ClientCircuit {
            terms: Vec::with_capacity(path.len()),
            crypto: ClientCircuitCrypto::new(),
            build: Build::Waiting { hop: 0, pending },
            early_left: MAX_HOPS,
            queue: VecDeque::new(),
            next_stream: 1,
            edge: Edge::new(config.vegas.clone(), config.max_streams),
            vegas: config.vegas.clone(),
            handshakes,
            path,
            ack_limit: None,
            held_sendmes: VecDeque::new(),
            exit_window: None,
        };
        Ok((circ, body))
    }

    /// Whether every hop is built.
    pub fn is_open(&self) -> bool {
        matches!(self.build, Build::Open)
    }

    /// Hops built so far.
    pub fn hops_built(&self) -> usize {
        self.crypto.n_hops()
    }

    /// The payment terms each built hop announced.
    pub fn terms(&self) -> &[Option<PaymentTerms>] {
        &self.terms
    }

    /// The congestion-control state of data toward the exit.
    pub fn cc(&self) -> &Vegas {
        &self.edge.cc
    }

    /// Number of open streams.
    pub fn n_streams(&self) -> usize {
        self.edge.streams.len()
    }

    /// Handles hop 0's CREATED cell.
    pub fn handle_created(
        &mut self,
        body: &[u8; CELL_BODY_LEN],
    ) -> Result<ClientEvent<'static>, CircError> {
        let created = Created::parse(body)?;
        self.finish_hop(0, created.hdata)
    }

    /// Handles a RELAY cell from hop 0, decrypting it in place.
    pub fn handle_relay<'a>(
        &mut self,
        body: &'a mut [u8; CELL_BODY_LEN],
        now: Instant,
    ) -> Result<ClientEvent<'a>, CircError> {
        let (hop, tag) = self.crypto.decrypt_tagged(body)?;
        let area = super::area_of(body);
        let msg = RelayMsg::decode(area).map_err(|source| CircError::Msg { hop, source })?;
        let msg = ClientBound::try_from(msg).map_err(|source| CircError::Msg { hop, source })?;
        let last = self.crypto.n_hops() - 1;
        if !matches!(msg, ClientBound::Extended(_) | ClientBound::Drop(_)) && hop != last {
            return Err(CircError::Protocol {
                what: "stream or flow message from a hop other than the last",
            });
        }
        match msg {
            ClientBound::Extended(ext) => {
                if hop != last {
                    return Err(CircError::Protocol {
                        what: "EXTENDED from a hop other than the last",
                    });
                }
                self.finish_hop(hop + 1, ext.hdata)
            }
            ClientBound::Drop(_) => Ok(ClientEvent::None),
            ClientBound::Sendme(Sendme { tag: got }) => {
                self.edge.on_sendme(&got, now)?;
                Ok(ClientEvent::None)
            }
            ClientBound::Data(stream, data) => {
                if self.edge.on_data_cell() {
                    self.acknowledge(tag)?;
                }
                Ok(match self.edge.on_stream_msg(stream, StreamMsg::Data)? {
                    true => ClientEvent::Data { stream, data },
                    false => ClientEvent::None,
                })
            }
            ClientBound::Connected(stream, c) => {
                if !self.edge.on_connected(stream)? {
                    return Ok(ClientEvent::None);
                }
                Ok(ClientEvent::Connected {
                    stream,
                    addr: c.addr,
                })
            }
            ClientBound::Fin(stream) => {
                Ok(match self.edge.on_stream_msg(stream, StreamMsg::Fin)? {
                    true => ClientEvent::Fin { stream },
                    false => ClientEvent::None,
                })
            }
            ClientBound::End(stream, reason) => {
                Ok(match self.edge.on_stream_msg(stream, StreamMsg::End)? {
                    true => ClientEvent::End { stream, reason },
                    false => ClientEvent::None,
                })
            }
            ClientBound::Xoff(stream) | ClientBound::Xon(stream, _) => {
                let paused = matches!(msg, ClientBound::Xoff(_));
                Ok(
                    match self.edge.on_stream_msg(stream, StreamMsg::Flow(paused))? {
                        true => ClientEvent::FlowControl { stream, paused },
                        false => ClientEvent::None,
                    },
                )
            }
        }
    }

    /// Opens a stream to `target` at the last hop. Data may be sent once the exit
    /// answers CONNECTED ([`ClientEvent::Connected`]).
    pub fn begin_stream(&mut self, target: Target) -> Result<StreamId, CircError> {
        self.require_open()?;
        let id = self.edge.streams.allocate(&mut self.next_stream)?;
        let begin = RelayMsg::Begin(
            id,
            Begin {
                target,
                flags: BeginFlags(BeginFlags::IPV6_OK),
            },
        );
        self.queue_msg(self.last_hop(), &begin, false)?;
        Ok(id)
    }

    /// Whether congestion control and the stream's flow control let `stream` send now.
    pub fn can_send(&self, stream: StreamId) -> bool {
        self.edge.can_send(stream)
    }

    /// Queues up to one cell of `data` on `stream`; returns how many bytes it took
    /// (0 when congestion or flow control says wait).
    pub fn send_data(
        &mut self,
        stream: StreamId,
        data: &[u8],
        now: Instant,
    ) -> Result<usize, CircError> {
        self.require_open()?;
        self.edge.check_may_send(stream)?;
        let hop = self.last_hop();
        let Some(cell) = self
            .edge
            .data_cell(stream, data, now)
            .map_err(|source| CircError::Msg { hop, source })?
        else {
            return Ok(0);
        };
        self.push(hop, cell.area, false, cell.sendme_tracked);
        Ok(cell.taken)
    }

    /// Half-closes `stream`: we send no more data on it.
    pub fn send_fin(&mut self, stream: StreamId) -> Result<(), CircError> {
        let msg = self.edge.fin(stream)?;
        self.queue_msg(self.last_hop(), &msg, false)
    }

    /// Closes `stream` in both directions.
    pub fn send_end(&mut self, stream: StreamId, reason: EndReason) -> Result<(), CircError> {
        if self.edge.end(stream) {
            self.queue_msg(self.last_hop(), &RelayMsg::End(stream, reason), false)?;
        }
        Ok(())
    }

    /// Asks the exit to stop (`paused`) or resume sending on `stream`.
    pub fn send_flow_control(&mut self, stream: StreamId, paused: bool) -> Result<(), CircError> {
        let msg = self.edge.flow(stream, paused)?;
        self.queue_msg(self.last_hop(), &msg, false)
    }

    /// Sends an opaque PAYMENT message to `hop` (the payments layer defines its body).
    pub fn send_payment_msg(&mut self, hop: usize, body: &[u8]) -> Result<(), CircError> {
        if hop >= self.crypto.n_hops() {
            return Err(CircError::Protocol {
                what: "PAYMENT to a hop not built",
            });
        }
        self.queue_msg(hop, &RelayMsg::Payment(body), false)
    }

    /// Limits the DATA cells from the exit the client acknowledges (SENDMEs) to `limit` in
    /// all, counted from the start of the circuit (`None`: no limit); SENDMEs that fall due
    /// beyond it are held, in order, and queued as soon as a later call allows them.
    ///
    /// Why: the exit sends only within its congestion window of unacknowledged cells, so
    /// holding SENDMEs stops a download within one window. The client's payments use it to
    /// keep a circuit from carrying more than its hops have been paid for while a payment is
    /// still on its way, instead of a hop tearing the circuit down.
    pub fn set_ack_limit(&mut self, limit: Option<u64>) -> Result<(), CircError> {
        self.ack_limit = limit;
        while let Some(&(due_at, tag)) = self.held_sendmes.front() {
            if limit.is_some_and(|l| due_at > l) {
                break;
            }
            self.held_sendmes.pop_front();
            self.queue_circuit_msg(&RelayMsg::Sendme(Sendme { tag }))?;
        }
        Ok(())
    }

    /// Limits what the circuit carries to `allowance` bytes of relay cell bodies in all
    /// (both directions, from its start; `None`: no limit), of which `carried_cells` cells
    /// have been carried: the room left, less the SENDMEs it takes, is applied to the exit's
    /// DATA cells the client acknowledges ([`ClientCircuit::set_ack_limit`]). What the
    /// client itself sends is the shell's to hold back.
    pub fn set_byte_allowance(
        &mut self,
        allowance: Option<u64>,
        carried_cells: u64,
    ) -> Result<(), CircError> {
        let data = self.edge.data_received();
        // Every `sendme_inc` DATA cells acknowledged cost one SENDME cell of the room too.
        let inc = u64::from(self.vegas.sendme_inc.max(1));
        let limit = allowance.map(|bytes| {
            let allowed = bytes / CELL_BODY_LEN as u64;
            match allowed.checked_sub(carried_cells) {
                Some(room) => data.saturating_add(room.saturating_mul(inc) / (inc + 1)),
                None => data.saturating_sub(carried_cells - allowed),
            }
        });
        self.set_ack_limit(limit)
    }

    /// The most the exit may have in flight toward the client, in relay cell bodies' bytes
    /// (as [`ClientCircuit::set_byte_allowance`] counts): the window the exit confirmed when
    /// the circuit opened (`None`: not asked for, or not confirmed).
    pub fn exit_window_bytes(&self) -> Option<u64> {
        self.exit_window
            .map(|cells| cells.saturating_mul(CELL_BODY_LEN as u64))
    }

    /// DATA cells received from the exit so far (whatever their stream).
    pub fn data_cells_received(&self) -> u64 {
        self.edge.data_received()
    }

    /// SENDMEs held back by [`ClientCircuit::set_ack_limit`] now.
    pub fn sendmes_held(&self) -> usize {
        self.held_sendmes.len()
    }

    /// Queues the SENDME for the DATA received so far, or holds it past the ack limit.
    fn acknowledge(&mut self, tag: SendmeTag) -> Result<(), CircError> {
        let due_at = self.edge.data_received();
        if self.held_sendmes.is_empty() && self.ack_limit.is_none_or(|l| due_at <= l) {
            return self.queue_circuit_msg(&RelayMsg::Sendme(Sendme { tag }));
        }
        if self.held_sendmes.len() >= MAX_HELD_SENDMES {
            return Err(CircError::Protocol {
                what: "exit sent far past the acknowledged window",
            });
        }
        self.held_sendmes.push_back((due_at, tag));
        Ok(())
    }

    /// Whether cells are waiting for [`ClientCircuit::poll_cell`].
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the next cell to send to hop 0, encrypting it now (see the module docs on
    /// ordering). `None` when nothing is queued.
    pub fn poll_cell(&mut self) -> Result<Option<OutCell>, CircError> {
        let Some(q) = self.queue.pop_front() else {
            return Ok(None);
        };
        let mut body = [0u8; CELL_BODY_LEN];
        body[RELAY_TAG_LEN..].copy_from_slice(&q.area);
        let tag = self.crypto.encrypt_to_tagged(q.hop, &mut body)?;
        if q.sendme_tracked {
            self.edge.track_sent(tag);
        }
        let cmd = if self.early_left > 0 {
            self.early_left -= 1;
            ChanCmd::RelayEarly
        } else if q.early_ok {
            return Err(CircError::TooManyEarly { max: MAX_HOPS });
        } else {
            ChanCmd::Relay
        };
        Ok(Some(OutCell { cmd, body }))
    }

    fn last_hop(&self) -> usize {
        self.crypto.n_hops().saturating_sub(1)
    }

    fn require_open(&self) -> Result<(), CircError> {
        if self.is_open() {
            Ok(())
        } else {
            Err(CircError::Protocol {
                what: "stream operation on a circuit still being built",
            })
        }
    }

    /// Completes the handshake with `hop` and, if the path goes on, queues EXTEND.
    fn finish_hop(&mut self, hop: usize, reply: &[u8]) -> Result<ClientEvent<'static>, CircError> {
        let pending = match std::mem::replace(&mut self.build, Build::Open) {
            Build::Waiting { hop: h, pending } if h == hop => pending,
            other => {
                self.build = other;
                return Err(CircError::Protocol {
                    what: "CREATED or EXTENDED without a handshake in progress",
                });
            }
        };
        let (ext_s, keys) = pending
            .finish(reply)
            .map_err(|source| CircError::Handshake { hop, source })?;
        let ext = Extensions::parse(&ext_s).map_err(|source| CircError::Ext { hop, source })?;
        let terms = ext.payment_terms();
        if let Some(t) = &terms {
            let offer = &self.path[hop].offer;
            if t.msat_per_mib > offer.msat_per_mib || t.msat_per_min > offer.msat_per_min {
                return Err(CircError::PriceAboveOffer {
                    hop,
                    asked_msat_per_mib: t.msat_per_mib,
                    asked_msat_per_min: t.msat_per_min,
                });
            }
        }
        self.crypto.add_hop(&keys)?;
        self.terms.push(terms);
        let open = hop + 1 == self.path.len();
        if open {
            // The exit is the other edge of congestion control: use the SENDME increment
            // it confirmed (it may have clamped ours), so both count the same cells.
            let inc = ext
                .congestion_control()
                .map_or(crate::cc::DEFAULT_SENDME_INC, |c| c.sendme_inc);
            if inc == 0 {
                return Err(CircError::Protocol {
                    what: "exit confirmed a SENDME increment of 0",
                });
            }
            self.edge.reset_cc(VegasParams {
                sendme_inc: inc,
                ..self.vegas.clone()
            });
            self.exit_window = match ext.window_limit() {
                Some(w) if w.cells == 0 => {
                    return Err(CircError::Protocol {
                        what: "exit confirmed a window of 0 cells",
                    })
                }
                w => w.map(|w| u64::from(w.cells)),
            };
        } else {
            self.extend_to(hop + 1)?;
        }
        Ok(ClientEvent::HopAdded { hop, terms, open })
    }

    /// Queues EXTEND toward `hop` (sent to hop `hop - 1`, in a RELAY_EARLY cell).
    fn extend_to(&mut self, hop: usize) -> Result<(), CircError> {
        let (pending, hdata) = take_handshake(&mut self.handshakes, hop)?;
        let target = &self.path[hop];
        let msg = RelayMsg::Extend(Extend {
            ipv4: target.ipv4,
            ipv6: target.ipv6,
            identity: target.identity,
            link_key: target.link_key,
            htype: HandshakeType::Ntor3V1,
            hdata: &hdata,
        });
        let mut area = [0u8; RELAY_PAYLOAD_LEN];
        msg.encode_into(&mut area)
            .map_err(|source| CircError::Msg { hop, source })?;
        self.push(hop - 1, area, true, false);
        self.build = Build::Waiting { hop, pending };
        Ok(())
    }

    fn queue_circuit_msg(&mut self, msg: &RelayMsg<'_>) -> Result<(), CircError> {
        self.queue_msg(self.last_hop(), msg, false)
    }

    fn queue_msg(&mut self, hop: usize, msg: &RelayMsg<'_>, early: bool) -> Result<(), CircError> {
        let mut area = [0u8; RELAY_PAYLOAD_LEN];
        msg.encode_into(&mut area)
            .map_err(|source| CircError::Msg { hop, source })?;
        self.push(hop, area, early, false);
        Ok(())
    }

    fn push(&mut self, hop: usize, area: [u8; RELAY_PAYLOAD_LEN], early: bool, tracked: bool) {
        self.queue.push_back(Queued {
            hop,
            early_ok: early,
            sendme_tracked: tracked,
            area,
        });
    }
}

/// Starts the handshake with one hop, offering its prices and our SENDME increment.
fn start_handshake<R: CryptoRng + ?Sized>(
    rng: &mut R,
    target: &HopTarget,
    config: &ClientConfig,
    hop: usize,
    is_exit: bool,
) -> Result<(ClientHandshake, Vec<u8>), CircError> {
    let mut ext = Extensions::new();
    ext.set_payment_offer(Some(target.offer))
        .set_congestion_control(Some(CongestionControl {
            sendme_inc: config.vegas.sendme_inc,
        }))
        // Only the exit sends DATA toward the client.
        .set_window_limit(
            config
                .window_limit
                .filter(|_| is_exit)
                .map(|cells| WindowLimit { cells }),
        );
    client_handshake(rng, &target.identity, &target.onion_key, &ext.encode())
        .map_err(|source| CircError::Handshake { hop, source })
}

fn take_handshake(
    handshakes: &mut [Option<(ClientHandshake, Vec<u8>)>],
    hop: usize,
) -> Result<(ClientHandshake, Vec<u8>), CircError> {
    handshakes
        .get_mut(hop)
        .and_then(Option::take)
        .ok_or(CircError::Protocol {
            what: "a hop's handshake was already used",
        })
}
