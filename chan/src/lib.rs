#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onionvpn_proto::cell::{Cell, CellError, ChanCmd, CircId, DestroyReason, LinkSide};
use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::link::{
    FrameDecoder, Link, LinkError, LinkInitiator, LinkResponder, LinkSecretKey, MAX_CELLS_PER_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

/// Errors of channel setup and use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChanError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The link handshake or transport failed (wrong key, altered frame, …).
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The peer sent a cell that does not parse.
    #[error("bad cell from peer: {0}")]
    Cell(#[from] CellError),
    /// The handshake did not finish in time.
    #[error("link handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection during the handshake.
    #[error("connection closed during the link handshake")]
    Eof,
    /// The channel is closed.
    #[error("channel closed")]
    Closed,
    /// No free circuit id could be found.
    #[error("no free circuit id on this channel")]
    NoCircId,
}

/// Settings of a channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// How long the TCP connect and the link handshake may take together.
    pub handshake_timeout: Duration,
    /// Cells queued toward one circuit before it is destroyed for not keeping up.
    pub circuit_queue: usize,
    /// Cells queued toward the socket before senders wait.
    pub outgoing_queue: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            handshake_timeout: Duration::from_secs(10),
            // Above the congestion window's slow-start cap (5,000 cells): a circuit that
            // obeys congestion control never fills it.
            circuit_queue: 8192,
            outgoing_queue: 1024,
        }
    }
}

/// Cells for one circuit on one channel.
pub type CircuitRx = mpsc::Receiver<Cell>;

/// A CREATE from the peer of an accepted channel, for the relay's circuit acceptor.
#[derive(Debug)]
pub struct IncomingCreate {
    /// The channel it came on (to answer, and to send later cells of the circuit on).
    pub channel: ChannelHandle,
    /// The CREATE cell.
    pub cell: Cell,
    /// Later cells of this circuit. If the acceptor refuses the circuit it sends DESTROY
    /// and calls [`ChannelHandle::release`].
    pub rx: CircuitRx,
}

// Cells are the common case: boxing them would allocate per cell.
#[allow(clippy::large_enum_variant)]
enum Command {
    Send(Cell),
    Register(CircId, mpsc::Sender<Cell>),
    Release(CircId),
}

struct Shared {
    peer_addr: SocketAddr,
    peer_identity: Option<[u8; 32]>,
    side: LinkSide,
    closed: AtomicBool,
    circuit_queue: usize,
}

/// A cloneable handle to a channel's reactor task.
#[derive(Clone)]
pub struct ChannelHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The peer address is sensitive: not printed.
        f.debug_struct("ChannelHandle")
            .field("side", &self.shared.side)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl ChannelHandle {
    /// Queues a cell for the peer, waiting while the outgoing queue is full.
    pub async fn send(&self, cell: Cell) -> Result<(), ChanError> {
        self.tx
            .send(Command::Send(cell))
            .await
            .map_err(|_| ChanError::Closed)
    }

    /// Picks a fresh circuit id for a circuit we create on this channel, and registers
    /// it. Send the CREATE with it next.
    pub async fn open_circuit(&self) -> Result<(CircId, CircuitRx), ChanError> {
        let id = (0..64)
            .find_map(|_| CircId::from_random(rand::random::<u32>(), self.shared.side))
            .ok_or(ChanError::NoCircId)?;
        let (tx, rx) = mpsc::channel(self.shared.circuit_queue);
        self.tx
            .send(Command::Register(id, tx))
            .await
            .map_err(|_| ChanError::Closed)?;
        Ok((id, rx))
    }

    /// Forgets a circuit: later cells for it are dropped.
    pub async fn release(&self, id: CircId) {
        let _ = self.tx.send(Command::Release(id)).await;
    }

    /// Sends DESTROY for `id` and forgets it.
    pub async fn destroy(&self, id: CircId, reason: DestroyReason) {
        let _ = self.send(Cell::destroy(id, reason)).await;
        self.release(id).await;
    }

    /// The peer's socket address. Sensitive: do not log it unredacted.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// The relay identity the peer proved, on channels we opened.
    pub fn peer_identity(&self) -> Option<[u8; 32]> {
        self.shared.peer_identity
    }

    /// Whether the reactor has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed) || self.tx.is_closed()
    }
}

/// Opens a channel to the relay at `addr`, which must prove the link key `link_key`
/// bound to `identity` (both from its verified descriptor).
pub async fn connect(
    addr: SocketAddr,
    identity: [u8; 32],
    link_key: [u8; 32],
    config: &ChannelConfig,
) -> Result<ChannelHandle, ChanError> {
    let limit = config.handshake_timeout;
    let (sock, link, decoder) = tokio::time::timeout(limit, async {
        let mut sock = TcpStream::connect(addr)
            .await
            .map_err(|source| ChanError::Io {
                context: "connecting to relay",
                source,
            })?;
        let _ = sock.set_nodelay(true);
        let (init, frame1) = {
            let mut rng = rand::rng();
            LinkInitiator::new(&mut rng, identity, link_key)?
        };
        write_all(&mut sock, &frame1, "sending link handshake").await?;
        let mut decoder = FrameDecoder::new();
        let frame2 = read_frame(&mut sock, &mut decoder).await?;
        let link = init.read_frame(&frame2)?;
        Ok::<_, ChanError>((sock, link, decoder))
    })
    .await
    .map_err(|_| ChanError::Timeout(limit))??;
    Ok(spawn_reactor(
        sock,
        link,
        decoder,
        addr,
        Some(identity),
        LinkSide::Initiator,
        None,
        config,
    ))
}

/// Answers a channel on an accepted TCP connection, as the relay with `identity` and
/// link key `secret`. CREATE cells from the peer go to `incoming`.
pub async fn accept(
    mut sock: TcpStream,
    identity: [u8; 32],
    secret: &LinkSecretKey,
    config: &ChannelConfig,
    incoming: mpsc::Sender<IncomingCreate>,
) -> Result<ChannelHandle, ChanError> {
    let limit = config.handshake_timeout;
    let peer_addr = sock.peer_addr().map_err(|source| ChanError::Io {
        context: "reading peer address",
        source,
    })?;
    let _ = sock.set_nodelay(true);
    let (link, decoder) = tokio::time::timeout(limit, async {
        let responder = {
            let mut rng = rand::rng();
            LinkResponder::new(&mut rng, identity, secret)?
        };
        let mut decoder = FrameDecoder::new();
        let frame1 = read_frame(&mut sock, &mut decoder).await?;
        let (link, frame2) = responder.read_frame(&frame1)?;
        write_all(&mut sock, &frame2, "answering link handshake").await?;
        Ok::<_, ChanError>((link, decoder))
    })
    .await
    .map_err(|_| ChanError::Timeout(limit))??;
    Ok(spawn_reactor(
        sock,
        link,
        decoder,
        peer_addr,
        None,
        LinkSide::Responder,
        Some(incoming),
        config,
    ))
}

async fn write_all(
    sock: &mut TcpStream,
    buf: &[u8],
    context: &'static str,
) -> Result<(), ChanError> {
    sock.write_all(buf)
        .await
        .map_err(|source| ChanError::Io { context, source })
}

/// Reads until one whole frame is buffered and returns a copy of it (handshake only).
async fn read_frame(
    sock: &mut TcpStream,
    decoder: &mut FrameDecoder,
) -> Result<Vec<u8>, ChanError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(frame.to_vec());
        }
        let buf = decoder.read_buf();
        let n = sock.read(buf).await.map_err(|source| ChanError::Io {
            context: "reading link handshake",
            source,
        })?;
        if n == 0 {
            return Err(ChanError::Eof);
        }
        decoder.commit(n)?;
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_reactor(
    sock: TcpStream,
    link: Link,
    decoder: FrameDecoder,
    peer_addr: SocketAddr,
    peer_identity: Option<[u8; 32]>,
    side: LinkSide,
    incoming: Option<mpsc::Sender<IncomingCreate>>,
    config: &ChannelConfig,
) -> ChannelHandle {
    let (tx, rx) = mpsc::channel(config.outgoing_queue);
    let shared = Arc::new(Shared {
        peer_addr,
        peer_identity,
        side,
        closed: AtomicBool::new(false),
        circuit_queue: config.circuit_queue,
    });
    let handle = ChannelHandle {
        tx: tx.clone(),
        shared: shared.clone(),
    };
    // An accepted channel lives as long as its peer keeps the connection open, even
    // while no circuit uses it; a channel we opened closes when we drop every handle.
    let _keepalive = (side == LinkSide::Responder).then(|| tx.clone());
    let reactor = Reactor {
        _keepalive,
        sock,
        link,
        decoder,
        rx,
        self_tx: tx.downgrade(),
        shared,
        incoming,
        circuits: HashMap::new(),
        in_cells: Vec::with_capacity(MAX_CELLS_PER_FRAME),
        out_cells: Vec::with_capacity(MAX_CELLS_PER_FRAME),
        out_bytes: Vec::new(),
    };
    tokio::spawn(reactor.run());
    handle
}

/// Why the reactor stopped.
#[derive(Debug)]
enum Stop {
    /// The peer closed the connection, or every handle and circuit is gone.
    Done,
    /// An error; the channel closes.
    Error(ChanError),
}

struct Reactor {
    _keepalive: Option<mpsc::Sender<Command>>,
    sock: TcpStream,
    link: Link,
    decoder: FrameDecoder,
    rx: mpsc::Receiver<Command>,
    /// To give the acceptor a handle without keeping ourselves alive.
    self_tx: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    incoming: Option<mpsc::Sender<IncomingCreate>>,
    circuits: HashMap<CircId, mpsc::Sender<Cell>>,
    in_cells: Vec<[u8; CELL_LEN]>,
    out_cells: Vec<[u8; CELL_LEN]>,
    out_bytes: Vec<u8>,
}

impl Reactor {
    async fn run(mut self) {
        let stop = self.run_inner().await;
        self.shared.closed.store(true, Ordering::Relaxed);
        match stop {
            Stop::Done => debug!("channel closed"),
            Stop::Error(e) => debug!("channel closed: {e}"),
        }
        // Dropping `circuits` closes every circuit's queue: their tasks see the channel
        // is gone and tear down the other side.
    }

    async fn run_inner(&mut self) -> Stop {
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        if let Err(e) = self.handle_commands(cmd).await {
                            return Stop::Error(e);
                        }
                    }
                    // Every handle is gone: nobody can send on this channel any more.
                    None => return Stop::Done,
                },
                read = self.sock.read(self.decoder.read_buf()) => match read {
                    Ok(0) => return Stop::Done,
                    Ok(n) => {
                        if let Err(e) = self.handle_read(n).await {
                            return Stop::Error(e);
                        }
                    }
                    Err(source) => return Stop::Error(ChanError::Io { context: "reading channel", source }),
                },
            }
        }
    }

    /// Handles `first` and whatever else is queued, batching cells into frames.
    async fn handle_commands(&mut self, first: Command) -> Result<(), ChanError> {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Send(cell) => self.out_cells.push(cell.into_bytes()),
                Command::Register(id, tx) => {
                    self.circuits.insert(id, tx);
                }
                Command::Release(id) => {
                    self.circuits.remove(&id);
                }
            }
            if self.out_cells.len() < MAX_CELLS_PER_FRAME * 4 {
                next = self.rx.try_recv().ok();
            }
        }
        self.flush().await
    }

    /// Encrypts and writes every queued outgoing cell.
    async fn flush(&mut self) -> Result<(), ChanError> {
        if self.out_cells.is_empty() {
            return Ok(());
        }
        self.out_bytes.clear();
        self.link
            .encrypt_cells(&self.out_cells, &mut self.out_bytes)?;
        self.out_cells.clear();
        self.sock
            .write_all(&self.out_bytes)
            .await
            .map_err(|source| ChanError::Io {
                context: "writing channel",
                source,
            })
    }

    async fn handle_read(&mut self, n: usize) -> Result<(), ChanError> {
        self.decoder.commit(n)?;
        loop {
            self.in_cells.clear();
            match self.decoder.next_frame()? {
                Some(frame) => {
                    self.link.decrypt_frame(frame, &mut self.in_cells)?;
                }
                None => return self.flush().await,
            }
            let cells = std::mem::take(&mut self.in_cells);
            for raw in &cells {
                self.dispatch(Cell::from_bytes(*raw)?);
            }
            self.in_cells = cells;
        }
    }

    /// Gives a cell to its circuit; never waits on the circuit. Answers (DESTROY) go to
    /// the outgoing batch, flushed after the frame.
    fn dispatch(&mut self, cell: Cell) {
        let Some(id) = cell.circ_id() else {
            return; // link padding
        };
        if let Some(tx) = self.circuits.get(&id) {
            match tx.try_send(cell) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    debug!("circuit queue full: destroying the circuit");
                    self.circuits.remove(&id);
                    self.out_cells
                        .push(Cell::destroy(id, DestroyReason::ResourceLimit).into_bytes());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.circuits.remove(&id);
                }
            }
            return;
        }
        match (cell.cmd(), &self.incoming) {
            (ChanCmd::Create, Some(incoming)) if id.may_be_created_by_peer_of(self.shared.side) => {
                let Some(tx) = self.self_tx.upgrade() else {
                    return;
                };
                let (ctx, crx) = mpsc::channel(self.shared.circuit_queue);
                self.circuits.insert(id, ctx);
                let channel = ChannelHandle {
                    tx,
                    shared: self.shared.clone(),
                };
                let req = IncomingCreate {
                    channel,
                    cell,
                    rx: crx,
                };
                if incoming.try_send(req).is_err() {
                    // The acceptor is overloaded or gone: refuse rather than wait.
                    self.circuits.remove(&id);
                    self.out_cells
                        .push(Cell::destroy(id, DestroyReason::ResourceLimit).into_bytes());
                }
            }
            // A CREATE with the wrong id bit, or on a channel we opened.
            (ChanCmd::Create, _) => {
                self.out_cells
                    .push(Cell::destroy(id, DestroyReason::Protocol).into_bytes());
            }
            // Cells for circuits already gone (DESTROY crossing, late data): dropped.
            _ => {}
        }
    }
}
