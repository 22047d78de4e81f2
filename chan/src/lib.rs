#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onionvpn_proto::cell::{Cell, CellError, ChanCmd, CircId, DestroyReason, LinkSide};
use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::link::{
    FrameDecoder, Link, LinkError, LinkInitiator, LinkResponder, LinkSecretKey, MAX_CELLS_PER_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

pub use tokio::sync::mpsc::error::TryRecvError;

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
    /// The peer sent a cell that parses but has no place on this channel: a cell for a
    /// circuit id that was never opened on it, or a CREATE toward the side that opened the
    /// link. The channel is closed.
    #[error("out-of-context {cmd:?} cell from peer on circuit {circ_id:#010x}: {why}")]
    OutOfContext {
        /// The circuit id the cell named.
        circ_id: u32,
        /// Its command.
        cmd: ChanCmd,
        /// What was wrong.
        why: &'static str,
    },
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
    /// Circuit ids closed on this channel that are remembered, so that cells the peer sent
    /// before it learned of the close (DESTROY crossing them in flight) are dropped
    /// silently instead of closing the channel. Oldest forgotten first.
    pub closed_ids: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            handshake_timeout: Duration::from_secs(10),
            // Above the congestion window's slow-start cap (5,000 cells): a circuit that
            // obeys congestion control never fills it.
            circuit_queue: 8192,
            outgoing_queue: 1024,
            closed_ids: 4096,
        }
    }
}

/// The cells for one circuit on one channel, in the order the peer sent them.
///
/// The channel's reactor hands cells over in batches (every cell of the circuit that one
/// socket read produced, in one queue operation); this receiver gives them out one at a time
/// or as a batch. `None` from [`CircuitRx::recv`] means the channel closed, or the channel
/// dropped the circuit (its queue overflowed); every cell queued before that is delivered
/// first.
#[derive(Debug)]
pub struct CircuitRx {
    rx: mpsc::UnboundedReceiver<Vec<Cell>>,
    cur: VecDeque<Cell>,
    /// Cells in `rx`, not yet in `cur`.
    queued: Arc<AtomicUsize>,
}

impl CircuitRx {
    fn new() -> (CircuitTx, CircuitRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            CircuitTx {
                tx,
                queued: queued.clone(),
            },
            CircuitRx {
                rx,
                cur: VecDeque::new(),
                queued,
            },
        )
    }

    fn take(&mut self, batch: Vec<Cell>) {
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        if self.cur.is_empty() {
            // No copy: the deque takes over the vector's buffer.
            self.cur = VecDeque::from(batch);
        } else {
            self.cur.extend(batch);
        }
    }

    /// The next cell, waiting for one. Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> Option<Cell> {
        if let Some(c) = self.cur.pop_front() {
            return Some(c);
        }
        let batch = self.rx.recv().await?;
        self.take(batch);
        self.cur.pop_front()
    }

    /// The next cell if one is queued.
    pub fn try_recv(&mut self) -> Result<Cell, TryRecvError> {
        loop {
            if let Some(c) = self.cur.pop_front() {
                return Ok(c);
            }
            let batch = self.rx.try_recv()?;
            self.take(batch);
        }
    }

    /// Cells queued and not yet taken.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.cur.len()
    }

    /// Whether no cell is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reactor's side of a circuit queue.
struct CircuitTx {
    tx: mpsc::UnboundedSender<Vec<Cell>>,
    queued: Arc<AtomicUsize>,
}

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
    /// One cell, holding one credit.
    Send(Cell),
    /// Cells in order, holding this many credits.
    SendBatch(Vec<Cell>, u32),
    Register(CircId, CircuitTx),
    Release(CircId),
}

struct Shared {
    peer_addr: SocketAddr,
    peer_identity: Option<[u8; 32]>,
    side: LinkSide,
    closed: AtomicBool,
    circuit_queue: usize,
    /// Credits for cells queued toward the socket ([`ChannelConfig::outgoing_queue`]).
    credits: Semaphore,
    max_credits: u32,
}

/// A cloneable handle to a channel's reactor task.
#[derive(Clone)]
pub struct ChannelHandle {
    tx: mpsc::UnboundedSender<Command>,
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
        self.shared
            .credits
            .acquire()
            .await
            .map_err(|_| ChanError::Closed)?
            .forget();
        self.tx
            .send(Command::Send(cell))
            .map_err(|_| ChanError::Closed)
    }

    /// Queues cells for the peer in one operation, in order, waiting while the outgoing
    /// queue is full. Cheaper per cell than [`ChannelHandle::send`]: a circuit task
    /// gathers what it has ready and sends it at once. Cells sent by one task, through
    /// either method, leave in the order they were sent.
    pub async fn send_batch(&self, cells: Vec<Cell>) -> Result<(), ChanError> {
        if cells.is_empty() {
            return Ok(());
        }
        // A batch larger than the whole queue waits for the whole queue.
        let n = u32::try_from(cells.len())
            .unwrap_or(u32::MAX)
            .min(self.shared.max_credits);
        self.shared
            .credits
            .acquire_many(n)
            .await
            .map_err(|_| ChanError::Closed)?
            .forget();
        self.tx
            .send(Command::SendBatch(cells, n))
            .map_err(|_| ChanError::Closed)
    }

    /// Picks a fresh circuit id for a circuit we create on this channel, and registers
    /// it. Send the CREATE with it next.
    pub async fn open_circuit(&self) -> Result<(CircId, CircuitRx), ChanError> {
        let id = (0..64)
            .find_map(|_| CircId::from_random(rand::random::<u32>(), self.shared.side))
            .ok_or(ChanError::NoCircId)?;
        let (tx, rx) = CircuitRx::new();
        self.tx
            .send(Command::Register(id, tx))
            .map_err(|_| ChanError::Closed)?;
        Ok((id, rx))
    }

    /// Forgets a circuit: later cells for it are dropped.
    pub async fn release(&self, id: CircId) {
        let _ = self.tx.send(Command::Release(id));
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
    let (tx, rx) = mpsc::unbounded_channel();
    let max_credits =
        u32::try_from(config.outgoing_queue.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let shared = Arc::new(Shared {
        peer_addr,
        peer_identity,
        side,
        closed: AtomicBool::new(false),
        circuit_queue: config.circuit_queue,
        credits: Semaphore::new(max_credits as usize),
        max_credits,
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
        closed: ClosedIds::new(config.closed_ids),
        pending: Vec::new(),
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

/// A bounded memory of circuit ids closed on this channel, oldest forgotten first.
struct ClosedIds {
    /// Id → the generation it was closed in (an id closed, reopened and closed again has
    /// one live entry: the newest).
    ids: HashMap<CircId, u64>,
    order: VecDeque<(CircId, u64)>,
    generation: u64,
    cap: usize,
}

impl ClosedIds {
    fn new(cap: usize) -> Self {
        ClosedIds {
            ids: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
            cap,
        }
    }

    fn insert(&mut self, id: CircId) {
        if self.cap == 0 {
            return;
        }
        self.generation += 1;
        self.ids.insert(id, self.generation);
        self.order.push_back((id, self.generation));
        while self.order.len() > self.cap {
            if let Some((old, generation)) = self.order.pop_front() {
                if self.ids.get(&old) == Some(&generation) {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn remove(&mut self, id: CircId) {
        // The stale entry in `order` is skipped when it comes up.
        self.ids.remove(&id);
    }

    fn contains(&self, id: CircId) -> bool {
        self.ids.contains_key(&id)
    }
}

struct Reactor {
    _keepalive: Option<mpsc::UnboundedSender<Command>>,
    sock: TcpStream,
    link: Link,
    decoder: FrameDecoder,
    rx: mpsc::UnboundedReceiver<Command>,
    /// To give the acceptor a handle without keeping ourselves alive.
    self_tx: mpsc::WeakUnboundedSender<Command>,
    shared: Arc<Shared>,
    incoming: Option<mpsc::Sender<IncomingCreate>>,
    circuits: HashMap<CircId, CircuitTx>,
    closed: ClosedIds,
    /// Cells received in the current read, grouped per circuit in arrival order.
    pending: Vec<(CircId, Vec<Cell>)>,
    in_cells: Vec<[u8; CELL_LEN]>,
    out_cells: Vec<[u8; CELL_LEN]>,
    out_bytes: Vec<u8>,
}

impl Reactor {
    async fn run(mut self) {
        let stop = self.run_inner().await;
        self.shared.closed.store(true, Ordering::Relaxed);
        // Senders waiting for queue room see the channel closed.
        self.shared.credits.close();
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

    /// Forgets a circuit, remembering its id so that late cells for it are dropped.
    fn forget(&mut self, id: CircId) {
        self.circuits.remove(&id);
        self.closed.insert(id);
    }

    /// Handles `first` and whatever else is queued, batching cells into frames.
    async fn handle_commands(&mut self, first: Command) -> Result<(), ChanError> {
        let mut next = Some(first);
        let mut credits = 0u32;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Send(cell) => {
                    self.out_cells.push(cell.into_bytes());
                    credits += 1;
                }
                Command::SendBatch(cells, n) => {
                    self.out_cells
                        .extend(cells.into_iter().map(Cell::into_bytes));
                    credits += n;
                }
                Command::Register(id, tx) => {
                    self.closed.remove(id);
                    self.circuits.insert(id, tx);
                }
                Command::Release(id) => self.forget(id),
            }
            if self.out_cells.len() < MAX_CELLS_PER_FRAME * 4 {
                next = self.rx.try_recv().ok();
            }
        }
        // The cells left the queue: their senders may queue more while we write.
        self.shared.credits.add_permits(credits as usize);
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
        let result = self.decode_frames();
        // Cells of the frames that authenticated are delivered even if a later one failed
        // (they were valid when they arrived); then the error closes the channel.
        self.deliver();
        result?;
        self.flush().await
    }

    fn decode_frames(&mut self) -> Result<(), ChanError> {
        loop {
            self.in_cells.clear();
            match self.decoder.next_frame()? {
                Some(frame) => {
                    self.link.decrypt_frame(frame, &mut self.in_cells)?;
                }
                None => return Ok(()),
            }
            let cells = std::mem::take(&mut self.in_cells);
            let result = cells
                .iter()
                .try_for_each(|raw| self.dispatch(Cell::from_bytes(*raw)?));
            self.in_cells = cells;
            result?;
        }
    }

    /// Gives every batch gathered by [`Self::dispatch`] to its circuit, one queue operation
    /// per circuit; never waits on a circuit. A circuit whose queue would overflow is
    /// destroyed (DESTROY goes to the outgoing batch, flushed after the read).
    fn deliver(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        for (id, batch) in pending.drain(..) {
            let Some(tx) = self.circuits.get(&id) else {
                continue;
            };
            let n = batch.len();
            if tx.queued.load(Ordering::Relaxed) + n > self.shared.circuit_queue {
                debug!("circuit queue full: destroying the circuit");
                self.forget(id);
                self.out_cells
                    .push(Cell::destroy(id, DestroyReason::ResourceLimit).into_bytes());
                continue;
            }
            tx.queued.fetch_add(n, Ordering::Relaxed);
            if tx.tx.send(batch).is_err() {
                // The circuit's task is gone without releasing it.
                self.forget(id);
            }
        }
        self.pending = pending;
    }

    /// Sorts one received cell: into its circuit's batch, to the circuit acceptor (CREATE),
    /// or away (late cells for circuits closed here). A cell that has no place on this
    /// channel is an error that closes it.
    fn dispatch(&mut self, cell: Cell) -> Result<(), ChanError> {
        let Some(id) = cell.circ_id() else {
            return Ok(()); // link padding
        };
        if self.circuits.contains_key(&id) {
            match self.pending.iter_mut().find(|(pid, _)| *pid == id) {
                Some((_, batch)) => batch.push(cell),
                None => {
                    let mut batch = Vec::with_capacity(MAX_CELLS_PER_FRAME);
                    batch.push(cell);
                    self.pending.push((id, batch));
                }
            }
            return Ok(());
        }
        let out_of_context = |why| ChanError::OutOfContext {
            circ_id: id.get(),
            cmd: cell.cmd(),
            why,
        };
        match (cell.cmd(), &self.incoming) {
            (ChanCmd::Create, None) => Err(out_of_context(
                "CREATE toward the side that opened the link",
            )),
            (ChanCmd::Create, Some(_)) if !id.may_be_created_by_peer_of(self.shared.side) => {
                // The id's top bit belongs to our side (docs/spec.md, "Circuit ids").
                self.closed.insert(id);
                self.out_cells
                    .push(Cell::destroy(id, DestroyReason::Protocol).into_bytes());
                Ok(())
            }
            (ChanCmd::Create, Some(incoming)) => {
                let Some(tx) = self.self_tx.upgrade() else {
                    return Ok(());
                };
                let (ctx, crx) = CircuitRx::new();
                self.closed.remove(id);
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
                    self.forget(id);
                    self.out_cells
                        .push(Cell::destroy(id, DestroyReason::ResourceLimit).into_bytes());
                }
                Ok(())
            }
            // Cells for circuits closed here (DESTROY crossing them, late data): dropped.
            _ if self.closed.contains(id) => Ok(()),
            _ => Err(out_of_context(
                "no circuit with this id was opened on the link",
            )),
        }
    }
}
