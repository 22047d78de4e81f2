//! One task per circuit: it owns the circuit's [`RelayCircuit`] and moves cells between the
//! previous hop's channel, the next hop's channel (after EXTEND) and the exit streams.
//!
//! Ordering: every cell toward the client leaves through this task, in the order the state
//! machine wrapped it (forwarded cells are wrapped in place by `handle_backward`, our own
//! by `poll_backward` at the moment they are sent), as `proto::circuit` requires.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onionvpn_chan::{ChannelHandle, CircuitRx};
use onionvpn_pay::account::{Account, Verdict};
use onionvpn_proto::cell::{Cell, ChanCmd, CircId, DestroyReason};
use onionvpn_proto::circuit::{CircError, ExtendRequest, FromClient, RelayCircuit};
use onionvpn_proto::consts::{CELL_BODY_LEN, CELL_LEN};
use onionvpn_proto::ext::{PaymentTerms, PaymentToken};
use onionvpn_proto::relaymsg::{BeginFlags, EndReason, StreamId, Target};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::exit::{self, StreamEvent, WriteMsg, READ_PERMITS, WRITE_QUEUE, XOFF_AT};
use crate::runtime::Shared;

/// Events from a circuit's exit streams, queued toward the circuit task.
const STREAM_EVENTS: usize = 64;
/// Cells handled between two updates of the memory accounting.
const QUOTA_EVERY: u32 = 64;
/// Cells taken from one queue in a row before looking at the others again (and before the
/// cells they produced are handed to the channels).
const BATCH: usize = 128;
/// Longest time between two updates of the memory accounting of a busy or idle circuit.
const QUOTA_TICK: Duration = Duration::from_millis(500);

/// Aborts a task when dropped (exit stream tasks, extend attempts).
struct AbortOnDrop<T>(Option<JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    fn new(h: JoinHandle<T>) -> Self {
        AbortOnDrop(Some(h))
    }

    /// The task, no longer aborted on drop.
    fn into_inner(mut self) -> Option<JoinHandle<T>> {
        self.0.take()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// What the next hop is.
enum Next {
    /// Last hop (or not extended yet).
    None,
    /// EXTEND in progress.
    Pending(AbortOnDrop<Result<Extended, DestroyReason>>),
    /// Extended.
    Open {
        chan: ChannelHandle,
        id: CircId,
        rx: CircuitRx,
    },
}

/// A successful extension.
struct Extended {
    chan: ChannelHandle,
    id: CircId,
    rx: CircuitRx,
    created: Box<[u8; CELL_BODY_LEN]>,
}

/// Data from a destination waiting for congestion control.
enum Pending {
    Data {
        chunk: Vec<u8>,
        off: usize,
        _permit: OwnedSemaphorePermit,
    },
    Fin,
    End(EndReason),
}

/// An exit stream's I/O side.
struct ExitStream {
    writer_tx: Option<mpsc::Sender<WriteMsg>>,
    xoff_sent: Arc<AtomicBool>,
    pending: VecDeque<Pending>,
    /// The client sent FIN / we sent FIN: with both, the stream is over.
    peer_fin: bool,
    local_fin: bool,
    _tasks: Vec<AbortOnDrop<()>>,
}

impl ExitStream {
    fn connecting(task: JoinHandle<()>) -> Self {
        ExitStream {
            writer_tx: None,
            xoff_sent: Arc::new(AtomicBool::new(false)),
            pending: VecDeque::new(),
            peer_fin: false,
            local_fin: false,
            _tasks: vec![AbortOnDrop::new(task)],
        }
    }
}

/// A charging circuit's account and where its payments arrive.
pub(crate) struct Billing {
    account: Account,
    /// Credited by the payment task, drained into `account` when it is checked.
    credits: Arc<AtomicU64>,
}

impl Billing {
    pub(crate) fn new(terms: PaymentTerms, credits: Arc<AtomicU64>, now: Instant) -> Self {
        Billing {
            account: Account::new(terms, now),
            credits,
        }
    }

    pub(crate) fn token(&self) -> PaymentToken {
        self.account.terms().token
    }

    /// Whether any payment for this hop has arrived (for the test hook
    /// `RuntimeOptions::test_stop_when_paid`).
    fn paid_any(&self) -> bool {
        self.credits.load(Ordering::Acquire) > 0 || self.account.credited_msat() > 0
    }

    /// Counts `cells` relay cells carried through this hop.
    fn carry(&mut self, cells: usize) {
        self.account
            .carry((cells as u64).saturating_mul(CELL_BODY_LEN as u64));
    }

    /// Whether the circuit may go on at `now`, with payments received so far.
    fn allowed(&mut self, now: Instant) -> bool {
        let c = self.credits.swap(0, Ordering::AcqRel);
        if c > 0 {
            self.account.credit(c);
        }
        match self.account.check(now) {
            Verdict::Allowed => true,
            Verdict::PaymentRequired {
                owed_msat,
                credited_msat,
            } => {
                debug!(owed_msat, credited_msat, "circuit unpaid: destroying it");
                false
            }
        }
    }
}

/// How a circuit ended.
enum Stop {
    /// Tell both sides with this reason.
    Both(DestroyReason),
    /// The previous hop destroyed it (or its channel closed): tell the next hop.
    FromPrev,
    /// The next hop destroyed it (or its channel closed): tell the previous hop.
    FromNext,
}

/// A circuit task.
pub(crate) struct CircuitTask {
    shared: Arc<Shared>,
    serial: u64,
    prev: ChannelHandle,
    prev_id: CircId,
    prev_rx: CircuitRx,
    circ: RelayCircuit,
    next: Next,
    streams: HashMap<StreamId, ExitStream>,
    ready: VecDeque<StreamId>,
    events_tx: mpsc::Sender<StreamEvent>,
    events_rx: mpsc::Receiver<StreamEvent>,
    kill: Arc<tokio::sync::Notify>,
    quota_charged: usize,
    since_quota: u32,
    /// Cells for the previous hop, in the order they were wrapped (forwarded from the next
    /// hop, or our own from `poll_backward`); handed to the channel in one batch per turn.
    to_prev: Vec<Cell>,
    /// Cells for the next hop, in the order they were peeled.
    to_next: Vec<Cell>,
    /// The hop's account, when the relay charges this circuit.
    billing: Option<Billing>,
    /// Set by `flush` when use passed paid + grace.
    unpaid: bool,
}

impl CircuitTask {
    /// A task for an accepted circuit (CREATED already sent).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        serial: u64,
        prev: ChannelHandle,
        prev_id: CircId,
        prev_rx: CircuitRx,
        circ: RelayCircuit,
        kill: Arc<tokio::sync::Notify>,
        billing: Option<Billing>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(STREAM_EVENTS);
        CircuitTask {
            shared,
            serial,
            prev,
            prev_id,
            prev_rx,
            circ,
            next: Next::None,
            streams: HashMap::new(),
            ready: VecDeque::new(),
            events_tx,
            events_rx,
            kill,
            quota_charged: 0,
            since_quota: 0,
            to_prev: Vec::with_capacity(BATCH),
            to_next: Vec::with_capacity(BATCH),
            billing,
            unpaid: false,
        }
    }

    /// Runs the circuit until it ends, then tears it down on both sides.
    pub(crate) async fn run(mut self) {
        let mut shutdown = self.shared.shutdown_rx();
        let stop = self.run_inner(&mut shutdown).await;
        // Cells handled before the end still go out, ahead of the DESTROY.
        self.send_batches().await;
        let (to_prev, to_next) = match stop {
            Stop::Both(r) => (Some(r), Some(r)),
            Stop::FromPrev => (None, Some(DestroyReason::Destroyed)),
            Stop::FromNext => (Some(DestroyReason::Destroyed), None),
        };
        match to_prev {
            Some(r) => self.prev.destroy(self.prev_id, r).await,
            None => self.prev.release(self.prev_id).await,
        }
        match std::mem::replace(&mut self.next, Next::None) {
            Next::Open { chan, id, .. } => match to_next {
                Some(r) => chan.destroy(id, r).await,
                None => chan.release(id).await,
            },
            // An extension in flight: let it finish, then destroy what it built.
            Next::Pending(task) => {
                if let Some(h) = task.into_inner() {
                    tokio::spawn(async move {
                        if let Ok(Ok(ext)) = h.await {
                            ext.chan.destroy(ext.id, DestroyReason::Destroyed).await;
                        }
                    });
                }
            }
            Next::None => {}
        }
        // Dropping the streams aborts their tasks and closes their sockets.
        self.streams.clear();
        if let (Some(p), Some(b)) = (&self.shared.payments, &self.billing) {
            p.unregister(&b.token());
        }
        self.shared.circuit_closed(self.serial);
    }

    async fn run_inner(&mut self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Stop {
        let mut quota_tick = tokio::time::interval(QUOTA_TICK);
        quota_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                return Stop::Both(DestroyReason::Hibernating);
            }
            let r = tokio::select! {
                biased;
                _ = self.kill.notified() => return Stop::Both(DestroyReason::ResourceLimit),
                _ = shutdown.changed() => return Stop::Both(DestroyReason::Hibernating),
                cell = self.prev_rx.recv() => match cell {
                    Some(cell) => self.on_prev_batch(cell).await,
                    None => return Stop::FromPrev,
                },
                ev = next_event(&mut self.next) => match ev {
                    NextEvent::Extended(res) => self.on_extended(res),
                    NextEvent::Cell(Some(cell)) => self.on_next_batch(cell).await,
                    NextEvent::Cell(None) => return Stop::FromNext,
                },
                _ = quota_tick.tick() => {
                    self.since_quota = QUOTA_EVERY;
                    Ok(Flow::Continue)
                }
                ev = self.events_rx.recv() => match ev {
                    Some(ev) => self.on_stream_event(ev),
                    // We hold a sender: never closes.
                    None => Ok(Flow::Continue),
                },
            };
            match r {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop(s)) => return s,
                Err(e) => {
                    debug!("circuit error: {e}");
                    self.shared
                        .stats
                        .circuit_errors
                        .fetch_add(1, Ordering::Relaxed);
                    return Stop::Both(e.destroy_reason());
                }
            }
            if let Err(e) = self.flush(Instant::now()).await {
                debug!("circuit error: {e}");
                self.shared
                    .stats
                    .circuit_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Stop::Both(e.destroy_reason());
            }
            if self.unpaid {
                self.shared
                    .stats
                    .circuits_payment_required
                    .fetch_add(1, Ordering::Relaxed);
                return Stop::Both(DestroyReason::PaymentRequired);
            }
            self.since_quota += 1;
            if self.since_quota >= QUOTA_EVERY {
                self.since_quota = 0;
                self.update_quota();
            }
        }
    }

    /// Moves pending destination data into cells while congestion control allows, then sends
    /// every cell the state machine has queued toward the client.
    async fn flush(&mut self, now: Instant) -> Result<(), CircError> {
        let mut rounds = self.ready.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(sid) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&sid) else {
                continue;
            };
            let mut ended = false;
            while let Some(front) = s.pending.front_mut() {
                match front {
                    Pending::Data { chunk, off, .. } => {
                        if !self.circ.can_send(sid) {
                            break;
                        }
                        let n = self.circ.send_data(sid, &chunk[*off..], now)?;
                        if n == 0 {
                            break;
                        }
                        *off += n;
                        self.shared
                            .stats
                            .exit_bytes_read
                            .fetch_add(n as u64, Ordering::Relaxed);
                        if *off >= chunk.len() {
                            s.pending.pop_front();
                        }
                    }
                    Pending::Fin => {
                        self.circ.send_fin(sid)?;
                        s.pending.pop_front();
                        s.local_fin = true;
                    }
                    Pending::End(reason) => {
                        self.circ.send_end(sid, *reason)?;
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                self.streams.remove(&sid);
            } else if s.local_fin && s.peer_fin {
                finish(&mut self.streams, sid);
            } else if !s.pending.is_empty() {
                self.ready.push_back(sid);
            }
        }
        let before = self.to_prev.len();
        while let Some(body) = self.circ.poll_backward()? {
            self.to_prev
                .push(Cell::with_body(self.prev_id, ChanCmd::Relay, &body));
        }
        if let Some(b) = &mut self.billing {
            b.carry(self.to_prev.len() - before);
            // Over paid + grace: what this turn produced is not relayed.
            if !b.allowed(now) {
                self.to_prev.clear();
                self.to_next.clear();
                self.unpaid = true;
                return Ok(());
            }
        }
        self.send_batches().await;
        Ok(())
    }

    /// Hands the cells gathered this turn to the channels, one batch per direction, in the
    /// order they were encrypted.
    async fn send_batches(&mut self) {
        if !self.to_next.is_empty() {
            let batch = std::mem::replace(&mut self.to_next, Vec::with_capacity(BATCH));
            if let Next::Open { chan, .. } = &self.next {
                // A closed channel shows up as the end of its queue on the next turn.
                let _ = chan.send_batch(batch).await;
            }
        }
        if !self.to_prev.is_empty() {
            let batch = std::mem::replace(&mut self.to_prev, Vec::with_capacity(BATCH));
            self.shared
                .stats
                .cells_backward
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let _ = self.prev.send_batch(batch).await;
        }
    }

    /// Handles `first` and up to [`BATCH`]` - 1` more cells already queued from the previous
    /// hop, without going back through `select!` for each.
    async fn on_prev_batch(&mut self, first: Cell) -> Result<Flow, CircError> {
        let mut cell = first;
        for _ in 1..BATCH {
            if let Flow::Stop(s) = self.on_prev(cell).await? {
                return Ok(Flow::Stop(s));
            }
            match self.prev_rx.try_recv() {
                Ok(c) => cell = c,
                Err(_) => return Ok(Flow::Continue),
            }
        }
        self.on_prev(cell).await
    }

    /// Like [`Self::on_prev_batch`], for cells from the next hop.
    async fn on_next_batch(&mut self, first: Cell) -> Result<Flow, CircError> {
        let mut cell = first;
        for _ in 1..BATCH {
            if let Flow::Stop(s) = self.on_next(cell).await? {
                return Ok(Flow::Stop(s));
            }
            let next = match &mut self.next {
                Next::Open { rx, .. } => rx.try_recv().ok(),
                _ => None,
            };
            match next {
                Some(c) => cell = c,
                None => return Ok(Flow::Continue),
            }
        }
        self.on_next(cell).await
    }

    async fn on_prev(&mut self, mut cell: Cell) -> Result<Flow, CircError> {
        let cmd = cell.cmd();
        match cmd {
            ChanCmd::Relay | ChanCmd::RelayEarly => {}
            ChanCmd::Destroy => return Ok(Flow::Stop(Stop::FromPrev)),
            _ => {
                return Err(CircError::Protocol {
                    what: "unexpected cell command from the previous hop",
                })
            }
        }
        if self.stopped_by_test_hook() {
            return Ok(Flow::Continue);
        }
        self.shared
            .stats
            .cells_forward
            .fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &mut self.billing {
            b.carry(1);
        }
        let now = Instant::now();
        let ev = self.circ.handle_forward(cmd, cell.body_mut(), now)?;
        match ev {
            FromClient::Forward { .. } => {
                if let Next::Open { id, .. } = &self.next {
                    cell.set_circ_id(*id);
                    // RELAY_EARLY stays RELAY_EARLY: `cmd` is unchanged in the cell.
                    self.to_next.push(cell);
                }
            }
            FromClient::Extend(req) => self.start_extend(req),
            FromClient::Begin {
                stream,
                target,
                flags,
            } => self.begin(stream, target, flags)?,
            FromClient::Data { stream, data } => {
                let n = data.len();
                self.write_to_stream(stream, WriteMsg::data(data))?;
                self.shared
                    .stats
                    .exit_bytes_written
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            FromClient::Fin { stream } => {
                self.write_to_stream(stream, WriteMsg::Fin)?;
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.peer_fin = true;
                    if s.local_fin {
                        finish(&mut self.streams, stream);
                    }
                }
            }
            FromClient::End { stream, .. } => {
                self.streams.remove(&stream);
            }
            // The state machine records XOFF: `can_send` stays false for the stream, so its
            // pending chunks stay, its reader runs out of permits and stops reading the socket.
            FromClient::FlowControl { .. } => {}
            FromClient::Payment(_) => debug!("PAYMENT message ignored: payments arrive by keysend"),
            _ => {}
        }
        Ok(Flow::Continue)
    }

    async fn on_next(&mut self, mut cell: Cell) -> Result<Flow, CircError> {
        match cell.cmd() {
            ChanCmd::Relay | ChanCmd::RelayEarly => {}
            ChanCmd::Destroy => return Ok(Flow::Stop(Stop::FromNext)),
            _ => {
                return Err(CircError::Protocol {
                    what: "unexpected cell command from the next hop",
                })
            }
        }
        if self.stopped_by_test_hook() {
            return Ok(Flow::Continue);
        }
        self.circ.handle_backward(cell.body_mut())?;
        if let Some(b) = &mut self.billing {
            b.carry(1);
        }
        cell.set_circ_id(self.prev_id);
        // Toward the client every cell is RELAY (RELAY_EARLY only goes forward).
        cell.set_cmd(ChanCmd::Relay);
        self.to_prev.push(cell);
        Ok(Flow::Continue)
    }

    /// The test hook `RuntimeOptions::test_stop_when_paid`: paid, this circuit relays
    /// nothing more.
    fn stopped_by_test_hook(&self) -> bool {
        self.shared.test_stop_when_paid && self.billing.as_ref().is_some_and(Billing::paid_any)
    }

    fn start_extend(&mut self, req: Box<ExtendRequest>) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move { extend(shared, req).await });
        self.next = Next::Pending(AbortOnDrop::new(task));
    }

    fn on_extended(&mut self, res: Result<Extended, DestroyReason>) -> Result<Flow, CircError> {
        match res {
            Ok(ext) => {
                // Open first, so that an error below destroys the new hop too.
                self.next = Next::Open {
                    chan: ext.chan,
                    id: ext.id,
                    rx: ext.rx,
                };
                self.circ.extended(&ext.created)?;
                Ok(Flow::Continue)
            }
            Err(reason) => {
                self.next = Next::None;
                Ok(Flow::Stop(Stop::Both(reason)))
            }
        }
    }

    fn begin(
        &mut self,
        stream: StreamId,
        target: Target,
        flags: BeginFlags,
    ) -> Result<(), CircError> {
        let Some(settings) = self.shared.exit.clone() else {
            return self.circ.stream_refused(stream, EndReason::ExitPolicy);
        };
        self.shared
            .stats
            .streams_total
            .fetch_add(1, Ordering::Relaxed);
        let events = self.events_tx.clone();
        let task = tokio::spawn(async move {
            let ev = match exit::connect(&target, flags, &settings).await {
                Ok((sock, addr)) => StreamEvent::Connected { stream, sock, addr },
                Err(reason) => {
                    debug!(
                        dest = %crate::redact::sensitive_dest(&target.host.to_string(), target.port.get()),
                        "stream refused: {reason:?}"
                    );
                    StreamEvent::Refused { stream, reason }
                }
            };
            let _ = events.send(ev).await;
        });
        self.streams.insert(stream, ExitStream::connecting(task));
        Ok(())
    }

    fn write_to_stream(&mut self, stream: StreamId, msg: WriteMsg) -> Result<(), CircError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        let Some(tx) = &s.writer_tx else {
            return Ok(());
        };
        match tx.try_send(msg) {
            Ok(()) => {
                if WRITE_QUEUE - tx.capacity() > XOFF_AT
                    && !s.xoff_sent.swap(true, Ordering::AcqRel)
                {
                    self.circ.send_flow_control(stream, true)?;
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The client ignored XOFF: end the stream rather than buffer without bound.
                self.streams.remove(&stream);
                self.circ.send_end(stream, EndReason::ResourceLimit)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.streams.remove(&stream);
                self.circ.send_end(stream, EndReason::ConnReset)
            }
        }
    }

    fn on_stream_event(&mut self, ev: StreamEvent) -> Result<Flow, CircError> {
        match ev {
            StreamEvent::Connected { stream, sock, addr } => self.connected(stream, sock, addr)?,
            StreamEvent::Refused { stream, reason } => {
                self.streams.remove(&stream);
                self.circ.stream_refused(stream, reason)?;
            }
            StreamEvent::Data {
                stream,
                chunk,
                permit,
            } => self.push_pending(
                stream,
                Pending::Data {
                    chunk,
                    off: 0,
                    _permit: permit,
                },
            ),
            StreamEvent::Eof { stream } => self.push_pending(stream, Pending::Fin),
            StreamEvent::Failed { stream } => {
                self.push_pending(stream, Pending::End(EndReason::ConnReset))
            }
            StreamEvent::Drained { stream } => {
                if self.streams.contains_key(&stream) {
                    self.circ.send_flow_control(stream, false)?;
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn push_pending(&mut self, stream: StreamId, p: Pending) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.pending.is_empty() {
                self.ready.push_back(stream);
            }
            s.pending.push_back(p);
        }
    }

    fn connected(
        &mut self,
        stream: StreamId,
        sock: tokio::net::TcpStream,
        addr: IpAddr,
    ) -> Result<(), CircError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            // The client ended the stream while we connected: the socket just closes.
            return Ok(());
        };
        let (rd, wr) = sock.into_split();
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        let permits = Arc::new(Semaphore::new(READ_PERMITS));
        let reader = tokio::spawn(exit::reader(stream, rd, permits, self.events_tx.clone()));
        let writer = tokio::spawn(exit::writer(
            stream,
            wr,
            wrx,
            s.xoff_sent.clone(),
            self.events_tx.clone(),
        ));
        s.writer_tx = Some(wtx);
        s._tasks = vec![AbortOnDrop::new(reader), AbortOnDrop::new(writer)];
        // The address is not told to the client: it could reveal the exit's resolver view.
        let _ = addr;
        self.circ.stream_connected(stream, None, 60)
    }

    /// Charges or releases the memory this circuit holds in queues (cells waiting in its
    /// channel queues, destination data waiting for congestion control).
    fn update_quota(&mut self) {
        let mut bytes = self.prev_rx.len() * CELL_LEN;
        if let Next::Open { rx, .. } = &self.next {
            bytes += rx.len() * CELL_LEN;
        }
        for s in self.streams.values() {
            for p in &s.pending {
                if let Pending::Data { chunk, off, .. } = p {
                    bytes += chunk.len() - off;
                }
            }
            if let Some(tx) = &s.writer_tx {
                bytes += (WRITE_QUEUE - tx.capacity()) * CELL_LEN;
            }
        }
        if bytes != self.quota_charged {
            self.shared
                .quota_update(self.serial, self.quota_charged, bytes, Instant::now());
            self.quota_charged = bytes;
        }
    }
}

/// Forgets a stream finished both ways, letting its writer flush and shut down the socket.
fn finish(streams: &mut HashMap<StreamId, ExitStream>, sid: StreamId) {
    if let Some(s) = streams.remove(&sid) {
        for t in s._tasks {
            // Detached: the reader already saw EOF; the writer ends after the FIN.
            let _ = t.into_inner();
        }
    }
}

/// What to do after an event.
enum Flow {
    Continue,
    Stop(Stop),
}

/// Something from the next hop's side.
// Cells are the common case: boxing them would allocate per cell.
#[allow(clippy::large_enum_variant)]
enum NextEvent {
    /// The extension finished.
    Extended(Result<Extended, DestroyReason>),
    /// A cell, or `None` when the next hop's channel closed.
    Cell(Option<Cell>),
}

/// Waits for the extension result or the next hop's next cell (forever when neither can
/// come).
async fn next_event(next: &mut Next) -> NextEvent {
    match next {
        Next::Pending(AbortOnDrop(Some(task))) => NextEvent::Extended(match task.await {
            Ok(r) => r,
            Err(_) => Err(DestroyReason::Internal),
        }),
        Next::Pending(AbortOnDrop(None)) => std::future::pending().await,
        Next::Open { rx, .. } => NextEvent::Cell(rx.recv().await),
        Next::None => std::future::pending().await,
    }
}

/// Connects to the next relay (or reuses a channel), sends CREATE and waits for CREATED.
async fn extend(shared: Arc<Shared>, req: Box<ExtendRequest>) -> Result<Extended, DestroyReason> {
    let timeout: Duration = shared.extend_timeout;
    let addrs: Vec<std::net::SocketAddr> = req
        .ipv4
        .map(std::net::SocketAddr::V4)
        .into_iter()
        .chain(req.ipv6.map(std::net::SocketAddr::V6))
        .collect();
    let chan = match tokio::time::timeout(
        timeout,
        shared.chanmgr.get(req.identity, &addrs, req.link_key),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => return Err(DestroyReason::ConnectFailed),
        Err(_) => return Err(DestroyReason::Timeout),
    };
    let (id, mut rx) = chan
        .open_circuit()
        .await
        .map_err(|_| DestroyReason::ConnectFailed)?;
    if chan
        .send(Cell::with_body(id, ChanCmd::Create, &req.create_body))
        .await
        .is_err()
    {
        chan.release(id).await;
        return Err(DestroyReason::ConnectFailed);
    }
    let reply = tokio::time::timeout(timeout, rx.recv()).await;
    match reply {
        Ok(Some(cell)) if cell.cmd() == ChanCmd::Created => Ok(Extended {
            chan,
            id,
            rx,
            created: Box::new(*cell.body()),
        }),
        Ok(Some(cell)) if cell.cmd() == ChanCmd::Destroy => {
            chan.release(id).await;
            Err(DestroyReason::ConnectFailed)
        }
        Ok(Some(_)) => {
            chan.destroy(id, DestroyReason::Protocol).await;
            Err(DestroyReason::Protocol)
        }
        Ok(None) => Err(DestroyReason::ConnectFailed),
        Err(_) => {
            chan.destroy(id, DestroyReason::Timeout).await;
            Err(DestroyReason::Timeout)
        }
    }
}
