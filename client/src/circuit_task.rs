//! One task per circuit. It owns the circuit's sans-IO [`ClientCircuit`], reads the
//! circuit's cells from its channel, and multiplexes streams: each stream's connection task
//! talks to it through a [`CircuitHandle`] (commands in) and a [`Stream`] (data out).
//!
//! Flow control inside the client:
//! - toward the exit, each stream may have [`STREAM_WINDOW`] bytes waiting in the circuit
//!   task (a semaphore of bytes); the task moves them into cells only while
//!   [`ClientCircuit::can_send`] allows (congestion control and the exit's XOFF), so a
//!   fast application waits on the semaphore instead of filling memory;
//! - toward the application, bytes wait in the stream's buffer; above [`XOFF_HIGH`] the
//!   task asks the exit to stop (XOFF), and once the application took the buffered bytes
//!   the stream asks it to resume (XON).
//!
//! Cells are encrypted when taken from the state machine and sent in that order (the
//! ordering rule of `onionvpn_proto::circuit`).
//!
//! Stalls (issue 6, [`crate::stall`]): a stream whose BEGIN is not answered while nothing
//! arrives on the circuit for the stall timeout ends the circuit; so does any end, while
//! such a stream waits, of a circuit whose hops were paid. Either way the circuit is marked
//! [`CircuitInfo::stalled`] before its streams learn it closed, so the circuit manager
//! avoids every hop of it when the stream asks again for a circuit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use onionvpn_chan::{ChannelHandle, CircuitRx};
use onionvpn_proto::cell::{Cell, ChanCmd, CircId, DestroyReason};
use onionvpn_proto::circuit::{CircError, ClientCircuit, ClientEvent};
use onionvpn_proto::consts::CELL_BODY_LEN;
use onionvpn_proto::ext::PaymentTerms;
use onionvpn_proto::relaymsg::{EndReason, StreamId, Target};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tracing::debug;

use crate::stall::{StallConfig, StallWatch};

/// Bytes toward the exit that one stream may have waiting inside the circuit task.
pub const STREAM_WINDOW: usize = 1024 * 1024;
/// Bytes waiting for the application above which the client sends XOFF.
pub const XOFF_HIGH: usize = 4 * 1024 * 1024;
/// Commands queued toward one circuit task before senders wait.
const COMMAND_QUEUE: usize = 4096;
/// Cells handled per wake-up before the task flushes its output.
const BATCH: usize = 128;

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The exit (or a hop) closed the stream with this reason.
    #[error("stream closed by the exit: {0:?}")]
    Ended(EndReason),
    /// The circuit is gone (DESTROY, channel closed, protocol error, or shut down).
    #[error("circuit closed")]
    CircuitClosed,
    /// The circuit refused to open a stream (not built, or out of stream ids).
    #[error("circuit cannot open a stream: {0}")]
    Refused(&'static str),
}

/// What [`Stream::recv`] delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Bytes were appended to the buffer.
    Data,
    /// The exit sent FIN: no more data will come (the buffer may hold the last bytes).
    Fin,
}

#[derive(Default)]
struct InState {
    data: Vec<u8>,
    connected: bool,
    fin: bool,
    /// Set when the stream is over in both directions because of an END or the circuit.
    end: Option<StreamError>,
    xoff: bool,
}

/// State of one stream shared by the circuit task and the stream's owner.
struct StreamShared {
    state: Mutex<InState>,
    notify: Notify,
}

impl StreamShared {
    fn lock(&self) -> MutexGuard<'_, InState> {
        // A panic while holding this lock cannot leave it inconsistent (plain fields).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut InState)) {
        f(&mut self.lock());
        self.notify.notify_one();
    }
}

/// Public facts about a circuit, shared by its task and everyone holding its handle.
#[derive(Debug)]
pub struct CircuitInfo {
    /// Client-local circuit number (not the circuit id on the wire).
    pub id: u64,
    /// Identity keys of the hops, first (guard) to last (exit).
    pub path: Vec<[u8; 32]>,
    /// When the build started.
    pub started: Instant,
    hops_built: AtomicUsize,
    open: AtomicBool,
    dead: AtomicBool,
    stalled: AtomicBool,
    streams_open: AtomicUsize,
    streams_total: AtomicU64,
    /// Relay cells sent and received (what the hops charge for).
    cells: AtomicU64,
    /// Each built hop's payment terms (`None`: the hop is free).
    terms: Mutex<Vec<Option<PaymentTerms>>>,
    /// Bytes of relay cell bodies (as counted in `cells`) the hops have been paid for
    /// (`CircuitPayer::allowance_bytes`); `u64::MAX`: no limit. The task stops
    /// acknowledging the exit's data and sending its own at this point.
    allowance: AtomicU64,
    /// Wakes the task when `allowance` changed.
    allowance_changed: Notify,
    /// The exit's confirmed window in bytes (`ClientCircuit::exit_window_bytes`);
    /// `u64::MAX`: none. Set once the circuit is open.
    exit_window: AtomicU64,
}

impl CircuitInfo {
    /// Hops whose handshake completed.
    pub fn hops_built(&self) -> usize {
        self.hops_built.load(Ordering::Relaxed)
    }
    /// Whether every hop is built.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
    /// Whether the circuit is gone (its task ended).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
    /// Whether the circuit ended stalled: a stream waited for an answer that did not come
    /// (or the circuit ended while one waited, after its hops were paid). Set before the
    /// circuit counts as dead.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
    /// Streams open now.
    pub fn streams_open(&self) -> usize {
        self.streams_open.load(Ordering::Relaxed)
    }
    /// Streams ever opened.
    pub fn streams_total(&self) -> u64 {
        self.streams_total.load(Ordering::Relaxed)
    }
    /// Takes the circuit out of use: it counts as dead for new streams and payments.
    pub(crate) fn retire(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }
    /// Relay cells sent and received on the circuit so far.
    pub fn cells(&self) -> u64 {
        self.cells.load(Ordering::Relaxed)
    }
    /// The payment terms of each built hop, guard first (`None`: free hop).
    pub fn terms(&self) -> Vec<Option<PaymentTerms>> {
        self.terms.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Bytes of relay cell bodies the circuit may carry in all before a hop is owed more than
    /// it has been paid (`None`: no limit).
    pub fn allowance(&self) -> Option<u64> {
        let a = self.allowance.load(Ordering::Relaxed);
        (a != u64::MAX).then_some(a)
    }
    /// Sets [`CircuitInfo::allowance`] (`None`: no limit) and wakes the circuit task if it
    /// changed.
    pub(crate) fn set_allowance(&self, bytes: Option<u64>) {
        let bytes = bytes.unwrap_or(u64::MAX);
        if self.allowance.swap(bytes, Ordering::Relaxed) != bytes {
            self.allowance_changed.notify_one();
        }
    }
    /// What the exit may send past the last acknowledged cell, in bytes of relay cell
    /// bodies, as it confirmed when the circuit opened (`None`: not confirmed).
    pub fn exit_window_bytes(&self) -> Option<u64> {
        let w = self.exit_window.load(Ordering::Relaxed);
        (w != u64::MAX).then_some(w)
    }
    /// Whether the circuit has used up what its hops have been paid for.
    fn over_allowance(&self) -> bool {
        self.cells().saturating_mul(CELL_BODY_LEN as u64) >= self.allowance.load(Ordering::Relaxed)
    }
}

enum Cmd {
    Begin {
        target: Target,
        shared: Arc<StreamShared>,
        credit: Arc<Semaphore>,
        reply: oneshot::Sender<Result<StreamId, StreamError>>,
    },
    Data {
        stream: StreamId,
        data: Vec<u8>,
    },
    Fin {
        stream: StreamId,
    },
    End {
        stream: StreamId,
        reason: EndReason,
    },
    Resume {
        stream: StreamId,
    },
}

/// A cloneable handle to a circuit task. The task ends (sending DESTROY) once every
/// handle and every stream is gone, or when the circuit fails.
#[derive(Clone)]
pub struct CircuitHandle {
    tx: mpsc::Sender<Cmd>,
    info: Arc<CircuitInfo>,
}

impl std::fmt::Debug for CircuitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitHandle")
            .field("id", &self.info.id)
            .field("hops_built", &self.info.hops_built())
            .field("dead", &self.info.is_dead())
            .finish()
    }
}

impl CircuitHandle {
    /// Facts about the circuit.
    pub fn info(&self) -> &Arc<CircuitInfo> {
        &self.info
    }

    /// Whether the circuit can no longer carry streams.
    pub fn is_dead(&self) -> bool {
        self.info.is_dead() || self.tx.is_closed()
    }

    /// Opens a stream to `target` (the exit resolves hostnames) and waits for CONNECTED.
    pub async fn begin(&self, target: Target) -> Result<Stream, StreamError> {
        let shared = Arc::new(StreamShared {
            state: Mutex::new(InState::default()),
            notify: Notify::new(),
        });
        let credit = Arc::new(Semaphore::new(STREAM_WINDOW));
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Begin {
                target,
                shared: shared.clone(),
                credit: credit.clone(),
                reply,
            })
            .await
            .map_err(|_| StreamError::CircuitClosed)?;
        let id = rx.await.map_err(|_| StreamError::CircuitClosed)??;
        let stream = Stream {
            id,
            circ: self.clone(),
            shared,
            credit,
            local_fin: AtomicBool::new(false),
        };
        loop {
            let notified = stream.shared.notify.notified();
            {
                let st = stream.shared.lock();
                if let Some(e) = st.end {
                    return Err(e);
                }
                if st.connected {
                    break;
                }
            }
            notified.await;
        }
        Ok(stream)
    }
}

/// One stream on a circuit, owned by the application side (e.g. a SOCKS connection).
/// Dropping it without FIN in both directions ends the stream (END Misc).
pub struct Stream {
    id: StreamId,
    circ: CircuitHandle,
    shared: Arc<StreamShared>,
    credit: Arc<Semaphore>,
    local_fin: AtomicBool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("circuit", &self.circ.info.id)
            .finish()
    }
}

impl Stream {
    /// The stream id on its circuit.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The circuit carrying it.
    pub fn circuit(&self) -> &CircuitHandle {
        &self.circ
    }

    /// Queues bytes toward the exit, waiting while [`STREAM_WINDOW`] bytes already wait.
    pub async fn send(&self, data: Vec<u8>) -> Result<(), StreamError> {
        if data.is_empty() {
            return Ok(());
        }
        let n = u32::try_from(data.len().min(STREAM_WINDOW)).unwrap_or(u32::MAX);
        match self.credit.acquire_many(n).await {
            Ok(p) => p.forget(),
            Err(_) => return Err(self.end_error()),
        }
        self.circ
            .tx
            .send(Cmd::Data {
                stream: self.id,
                data,
            })
            .await
            .map_err(|_| StreamError::CircuitClosed)
    }

    /// Half-closes toward the exit (FIN) once every queued byte is sent.
    pub async fn send_fin(&self) -> Result<(), StreamError> {
        if self.local_fin.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.circ
            .tx
            .send(Cmd::Fin { stream: self.id })
            .await
            .map_err(|_| StreamError::CircuitClosed)
    }

    fn end_error(&self) -> StreamError {
        self.shared.lock().end.unwrap_or(StreamError::CircuitClosed)
    }

    /// Appends received bytes to `buf` (waiting for some). `Ok(Recv::Fin)` once the exit
    /// finished and nothing is left; an error if the stream or circuit ended.
    pub async fn recv(&self, buf: &mut Vec<u8>) -> Result<Recv, StreamError> {
        loop {
            let notified = self.shared.notify.notified();
            let resume = {
                let mut st = self.shared.lock();
                if !st.data.is_empty() {
                    if buf.is_empty() {
                        std::mem::swap(buf, &mut st.data);
                    } else {
                        buf.append(&mut st.data);
                    }
                    let resume = st.xoff;
                    st.xoff = false;
                    Some(resume)
                } else if let Some(e) = st.end {
                    return Err(e);
                } else if st.fin {
                    return Ok(Recv::Fin);
                } else {
                    None
                }
            };
            match resume {
                Some(resume) => {
                    if resume {
                        let _ = self.circ.tx.send(Cmd::Resume { stream: self.id }).await;
                    }
                    return Ok(Recv::Data);
                }
                None => notified.await,
            }
        }
    }

    /// Whether the stream ended abnormally (END before both FINs, or circuit lost).
    pub fn ended(&self) -> Option<StreamError> {
        self.shared.lock().end
    }

    /// Closes the stream in both directions with `reason`.
    pub async fn end(self, reason: EndReason) {
        let _ = self
            .circ
            .tx
            .send(Cmd::End {
                stream: self.id,
                reason,
            })
            .await;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Finished both ways: the circuit task closes it once our FIN is out.
        if self.local_fin.load(Ordering::Relaxed) && self.shared.lock().fin {
            return;
        }
        // Tells the task this owner is gone; a stream already closed ignores it.
        let _ = self.circ.tx.try_send(Cmd::End {
            stream: self.id,
            reason: EndReason::Misc,
        });
    }
}

/// Why a circuit build did not complete.
#[derive(Debug)]
pub struct BuildFailure {
    /// Hops built when it failed (the hop at this index did not answer or refused).
    pub hops_built: usize,
    /// What happened.
    pub error: String,
}

/// Starts a circuit task: sends CREATE on `chan` and builds along the circuit's path. The
/// returned receiver yields the build time once every hop answered, or the failure.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_circuit(
    id: u64,
    path: Vec<[u8; 32]>,
    circ: ClientCircuit,
    create: [u8; CELL_BODY_LEN],
    chan: ChannelHandle,
    circ_id: CircId,
    rx: CircuitRx,
    started: Instant,
    stall: StallConfig,
) -> (
    CircuitHandle,
    oneshot::Receiver<Result<Duration, BuildFailure>>,
) {
    let info = Arc::new(CircuitInfo {
        id,
        path,
        started,
        hops_built: AtomicUsize::new(0),
        open: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        stalled: AtomicBool::new(false),
        streams_open: AtomicUsize::new(0),
        streams_total: AtomicU64::new(0),
        cells: AtomicU64::new(0),
        terms: Mutex::new(Vec::new()),
        allowance: AtomicU64::new(u64::MAX),
        allowance_changed: Notify::new(),
        exit_window: AtomicU64::new(u64::MAX),
    });
    let (tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (build_tx, build_rx) = oneshot::channel();
    let task = Task {
        circ,
        chan,
        circ_id,
        rx,
        cmd_rx,
        info: info.clone(),
        streams: HashMap::new(),
        ready: VecDeque::new(),
        build_tx: Some(build_tx),
        // Replaced once the circuit is built, with the timeout its build time gives.
        watch: StallWatch::new(stall.min_timeout),
        stall,
    };
    tokio::spawn(task.run(create));
    (CircuitHandle { tx, info }, build_rx)
}

struct Entry {
    shared: Arc<StreamShared>,
    credit: Arc<Semaphore>,
    pending: VecDeque<Vec<u8>>,
    /// Bytes of `pending.front()` already sent.
    offset: usize,
    /// The owner asked for FIN; sent once `pending` is empty.
    fin_wanted: bool,
    fin_sent: bool,
    peer_fin: bool,
    connected: bool,
    xoff_sent: bool,
    in_ready: bool,
    /// BEGIN sent, no answer yet: the stream waits for data (the stall watch counts it).
    awaiting: bool,
}

enum Stop {
    /// Every handle is gone.
    Unused,
    /// The channel to the first hop closed.
    ChannelClosed,
    /// A hop destroyed the circuit.
    Destroyed(Option<DestroyReason>),
    /// The state machine refused input.
    Error(CircError),
    /// A stream waited and nothing arrived for the stall timeout.
    Stalled,
}

impl From<CircError> for Stop {
    fn from(e: CircError) -> Self {
        Stop::Error(e)
    }
}

struct Task {
    circ: ClientCircuit,
    chan: ChannelHandle,
    circ_id: CircId,
    rx: CircuitRx,
    cmd_rx: mpsc::Receiver<Cmd>,
    info: Arc<CircuitInfo>,
    streams: HashMap<StreamId, Entry>,
    /// Streams with bytes (or a FIN) waiting, round-robin.
    ready: VecDeque<StreamId>,
    build_tx: Option<oneshot::Sender<Result<Duration, BuildFailure>>>,
    watch: StallWatch,
    stall: StallConfig,
}

impl Task {
    async fn run(mut self, create: [u8; CELL_BODY_LEN]) {
        let stop = match self
            .chan
            .send(Cell::with_body(self.circ_id, ChanCmd::Create, &create))
            .await
        {
            Ok(()) => self.run_inner().await,
            Err(_) => Stop::ChannelClosed,
        };
        // Blamed before it counts as dead: a stream retrying sees the mark.
        let stalled = match &stop {
            Stop::Stalled => true,
            Stop::Unused => false,
            _ => self.watch.blame_on_end(),
        };
        if stalled {
            self.info.stalled.store(true, Ordering::Relaxed);
        }
        self.info.dead.store(true, Ordering::Relaxed);
        let what = match &stop {
            Stop::Unused => "no longer used".to_owned(),
            Stop::ChannelClosed => "channel closed".to_owned(),
            Stop::Destroyed(r) => format!("destroyed by a hop ({r:?})"),
            Stop::Error(e) => format!("error: {e}"),
            Stop::Stalled => format!("stalled: nothing arrived for {:?}", self.watch.timeout()),
        };
        debug!(circuit = self.info.id, "circuit ends: {what}");
        match &stop {
            Stop::Unused => {
                self.chan
                    .destroy(self.circ_id, DestroyReason::Finished)
                    .await
            }
            Stop::Error(e) => self.chan.destroy(self.circ_id, e.destroy_reason()).await,
            Stop::Stalled => {
                self.chan
                    .destroy(self.circ_id, DestroyReason::Timeout)
                    .await
            }
            Stop::Destroyed(_) => self.chan.release(self.circ_id).await,
            Stop::ChannelClosed => {}
        }
        if let Some(tx) = self.build_tx.take() {
            let _ = tx.send(Err(BuildFailure {
                hops_built: self.info.hops_built(),
                error: what,
            }));
        }
        for (_, e) in self.streams.drain() {
            e.credit.close();
            e.shared.update(|st| {
                if st.end.is_none() {
                    st.end = Some(StreamError::CircuitClosed);
                }
            });
        }
        self.info.streams_open.store(0, Ordering::Relaxed);
        // Commands still queued (a Begin waiting for its reply) are dropped with the
        // receiver: their senders see the circuit closed.
    }

    async fn run_inner(&mut self) -> Stop {
        loop {
            if let Err(e) = self.pump() {
                return e.into();
            }
            if let Err(stop) = self.flush().await {
                return stop;
            }
            let deadline = self.watch.deadline();
            tokio::select! {
                biased;
                cell = self.rx.recv() => match cell {
                    Some(cell) => {
                        if let Err(stop) = self.on_cell(cell) {
                            return stop;
                        }
                    }
                    None => return Stop::ChannelClosed,
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => {
                        if let Err(stop) = self.on_cmd(cmd) {
                            return stop;
                        }
                    }
                    None => return Stop::Unused,
                },
                () = self.info.allowance_changed.notified() => {
                    if let Err(e) = self.apply_allowance() {
                        return e.into();
                    }
                }
                () = sleep_until_opt(deadline) => {
                    if self.watch.is_stalled(Instant::now()) {
                        return Stop::Stalled;
                    }
                }
            }
            // Batch whatever else is already waiting before flushing.
            for _ in 0..BATCH {
                match self.rx.try_recv() {
                    Ok(cell) => {
                        if let Err(stop) = self.on_cell(cell) {
                            return stop;
                        }
                    }
                    Err(_) => break,
                }
            }
            for _ in 0..BATCH {
                match self.cmd_rx.try_recv() {
                    Ok(cmd) => {
                        if let Err(stop) = self.on_cmd(cmd) {
                            return stop;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Sends every cell the state machine has queued, in order, as one batch.
    async fn flush(&mut self) -> Result<(), Stop> {
        let mut batch = Vec::new();
        while let Some(out) = self.circ.poll_cell()? {
            if batch.is_empty() {
                batch.reserve(BATCH);
            }
            batch.push(Cell::with_body(self.circ_id, out.cmd, &out.body));
        }
        self.info
            .cells
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.chan
            .send_batch(batch)
            .await
            .map_err(|_| Stop::ChannelClosed)
    }

    fn on_cell(&mut self, mut cell: Cell) -> Result<(), Stop> {
        match cell.cmd() {
            ChanCmd::Created => {
                let ev = self.circ.handle_created(cell.body())?;
                self.on_event(ev)
            }
            ChanCmd::Relay | ChanCmd::RelayEarly => {
                self.info.cells.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                self.watch.received(now);
                let ev = self.circ.handle_relay(cell.body_mut(), now)?;
                self.on_event(ev)
            }
            ChanCmd::Destroy => Err(Stop::Destroyed(cell.as_destroy().ok().map(|d| d.reason))),
            ChanCmd::Create | ChanCmd::Padding => Err(Stop::Error(CircError::Protocol {
                what: "CREATE or PADDING on a client circuit",
            })),
        }
    }

    fn on_event(&mut self, ev: ClientEvent<'_>) -> Result<(), Stop> {
        match ev {
            ClientEvent::HopAdded { hop, open, terms } => {
                self.info
                    .terms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(terms);
                self.info.hops_built.store(hop + 1, Ordering::Relaxed);
                if open {
                    let window = self.circ.exit_window_bytes().unwrap_or(u64::MAX);
                    self.info.exit_window.store(window, Ordering::Relaxed);
                    self.info.open.store(true, Ordering::Relaxed);
                    let took = self.info.started.elapsed();
                    self.watch = StallWatch::new(self.stall.timeout(took));
                    if let Some(tx) = self.build_tx.take() {
                        let _ = tx.send(Ok(took));
                    }
                }
            }
            ClientEvent::Connected { stream, .. } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    e.connected = true;
                    if std::mem::take(&mut e.awaiting) {
                        self.watch.stop_waiting();
                    }
                    e.shared.update(|st| st.connected = true);
                    if !e.pending.is_empty() || e.fin_wanted {
                        self.mark_ready(stream);
                    }
                }
            }
            ClientEvent::Data { stream, data } => {
                let mut xoff = false;
                if let Some(e) = self.streams.get_mut(&stream) {
                    let mut st = e.shared.lock();
                    st.data.extend_from_slice(data);
                    if st.data.len() > XOFF_HIGH && !e.xoff_sent {
                        e.xoff_sent = true;
                        st.xoff = true;
                        xoff = true;
                    }
                    drop(st);
                    e.shared.notify.notify_one();
                }
                if xoff {
                    self.circ.send_flow_control(stream, true)?;
                }
            }
            ClientEvent::Fin { stream } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    e.peer_fin = true;
                    e.shared.update(|st| st.fin = true);
                    if e.fin_sent {
                        self.remove(stream, None);
                    }
                }
            }
            ClientEvent::End { stream, reason } => {
                self.remove(stream, Some(StreamError::Ended(reason)));
            }
            ClientEvent::FlowControl {
                stream,
                paused: false,
            } => self.mark_ready(stream),
            _ => {}
        }
        Ok(())
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Result<(), Stop> {
        match cmd {
            Cmd::Begin {
                target,
                shared,
                credit,
                reply,
            } => {
                if !self.circ.is_open() {
                    let _ = reply.send(Err(StreamError::Refused("circuit not built")));
                    return Ok(());
                }
                match self.circ.begin_stream(target) {
                    Ok(id) => {
                        self.streams.insert(
                            id,
                            Entry {
                                shared,
                                credit,
                                pending: VecDeque::new(),
                                offset: 0,
                                fin_wanted: false,
                                fin_sent: false,
                                peer_fin: false,
                                connected: false,
                                xoff_sent: false,
                                in_ready: false,
                                awaiting: true,
                            },
                        );
                        self.watch.wait(Instant::now());
                        self.info.streams_open.fetch_add(1, Ordering::Relaxed);
                        self.info.streams_total.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Ok(id));
                    }
                    Err(CircError::StreamIdsExhausted) => {
                        let _ = reply.send(Err(StreamError::Refused("no free stream id")));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Cmd::Data { stream, data } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    if !e.fin_wanted {
                        e.pending.push_back(data);
                        self.mark_ready(stream);
                    }
                }
            }
            Cmd::Fin { stream } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    e.fin_wanted = true;
                    self.mark_ready(stream);
                }
            }
            Cmd::End { stream, reason } => {
                if self.streams.contains_key(&stream) {
                    self.circ.send_end(stream, reason)?;
                    self.remove(stream, Some(StreamError::Ended(reason)));
                }
            }
            Cmd::Resume { stream } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    if e.xoff_sent {
                        e.xoff_sent = false;
                        self.circ.send_flow_control(stream, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn mark_ready(&mut self, stream: StreamId) {
        if let Some(e) = self.streams.get_mut(&stream) {
            if !e.in_ready {
                e.in_ready = true;
                self.ready.push_back(stream);
            }
        }
    }

    /// Forgets a stream; `end` marks it ended abnormally for its owner.
    fn remove(&mut self, stream: StreamId, end: Option<StreamError>) {
        if let Some(e) = self.streams.remove(&stream) {
            if e.awaiting {
                self.watch.stop_waiting();
            }
            e.credit.close();
            e.shared.update(|st| {
                if let Some(end) = end {
                    st.end.get_or_insert(end);
                }
            });
            self.info.streams_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Holds back acknowledgements of the exit's data past the circuit's allowance.
    fn apply_allowance(&mut self) -> Result<(), CircError> {
        // An allowance comes from the payer: the hops are being paid.
        if self.info.allowance().is_some() {
            self.watch.paid();
        }
        self.circ
            .set_byte_allowance(self.info.allowance(), self.info.cells())
    }

    /// Moves waiting bytes into cells while congestion and flow control allow,
    /// round-robin over streams, a few cells per stream per turn.
    fn pump(&mut self) -> Result<(), CircError> {
        const CELLS_PER_TURN: usize = 8;
        let now = Instant::now();
        let mut idle_turns = 0;
        while idle_turns < self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(e) = self.streams.get_mut(&id) else {
                continue;
            };
            if !e.connected {
                // Keep it; it becomes ready again on CONNECTED.
                e.in_ready = false;
                continue;
            }
            let mut sent = 0;
            let mut released = 0usize;
            while sent < CELLS_PER_TURN && self.circ.can_send(id) && !self.info.over_allowance() {
                let Some(front) = e.pending.front() else {
                    break;
                };
                let n = self.circ.send_data(id, &front[e.offset..], now)?;
                if n == 0 {
                    break;
                }
                sent += 1;
                released += n;
                e.offset += n;
                if e.offset >= front.len() {
                    e.pending.pop_front();
                    e.offset = 0;
                }
            }
            if released > 0 {
                e.credit.add_permits(released);
            }
            let mut finished = false;
            if e.pending.is_empty() && e.fin_wanted && !e.fin_sent {
                e.fin_sent = true;
                self.circ.send_fin(id)?;
                finished = e.peer_fin;
            }
            if finished {
                self.remove(id, None);
                continue;
            }
            let more = !e.pending.is_empty();
            if more && self.circ.can_send(id) {
                self.ready.push_back(id);
                idle_turns = 0;
            } else if more {
                // Blocked by congestion or XOFF: retried after the next cell or command.
                self.ready.push_back(id);
                idle_turns += 1;
            } else {
                e.in_ready = false;
            }
            if !self.circ.cc().can_send() {
                break;
            }
        }
        Ok(())
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
