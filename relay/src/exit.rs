//! Exit streams: the exit policy check, DNS resolution at the exit, the TCP connect, and
//! one reader and one writer task per connected stream.
//!
//! Every buffer is bounded: a reader holds at most [`READ_PERMITS`] chunks of
//! [`READ_CHUNK`] bytes in flight toward its circuit (it waits for a permit before reading
//! the socket again), and a writer queue holds at most [`WRITE_QUEUE`] cells of data.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onionvpn_directory::policy::Target as PolicyTarget;
use onionvpn_directory::ExitPolicy;
use onionvpn_proto::consts::RELAY_BODY_MAX;
use onionvpn_proto::relaymsg::{BeginFlags, EndReason, Host, StreamId, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes a reader takes from the destination socket at once (at most; one read call).
pub const READ_CHUNK: usize = 32 * 1024;
/// Chunks a reader may have waiting at its circuit before it stops reading.
pub const READ_PERMITS: usize = 2;
/// Queue fill (cells) above which the exit asks the client to pause (XOFF).
pub const XOFF_AT: usize = 256;
/// Cells the client may still send after the exit's XOFF: what it had in flight when the XOFF
/// reached it, up to its whole congestion window. Vegas windows of several hundred cells are
/// common (slow start alone reaches `limited_ss_cap` = 600), so this must be well above them:
/// with only 256 cells of room a 100 MiB upload to a briefly slow destination was ended.
pub const AFTER_XOFF: usize = 4096;
/// Cells of client data queued toward one destination socket before the stream is ended
/// (a client that ignores XOFF). About 2 MB per stream at most; the relay's memory quota
/// bounds the sum.
pub const WRITE_QUEUE: usize = XOFF_AT + AFTER_XOFF;
/// Bytes a writer gathers from its queue into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// What an exit stream's tasks tell their circuit task.
#[derive(Debug)]
pub enum StreamEvent {
    /// The connect succeeded.
    Connected {
        /// The stream.
        stream: StreamId,
        /// The connected socket.
        sock: TcpStream,
        /// The address connected to.
        addr: IpAddr,
    },
    /// The connect was refused (policy, DNS, TCP).
    Refused {
        /// The stream.
        stream: StreamId,
        /// Why, for END.
        reason: EndReason,
    },
    /// Bytes read from the destination; `permit` returns to the reader when dropped.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        chunk: Vec<u8>,
        /// The reader's permit for this chunk.
        permit: OwnedSemaphorePermit,
    },
    /// The destination closed its sending side.
    Eof {
        /// The stream.
        stream: StreamId,
    },
    /// Reading or writing the destination failed.
    Failed {
        /// The stream.
        stream: StreamId,
    },
    /// The writer's queue emptied after the circuit task sent XOFF.
    Drained {
        /// The stream.
        stream: StreamId,
    },
}

/// Data for a destination socket, one cell's worth, without allocation.
// Data is the common case: boxing it would allocate per cell.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WriteMsg {
    /// Bytes: the first `len` of the array.
    Data {
        /// Buffer.
        buf: [u8; RELAY_BODY_MAX],
        /// Used length.
        len: u16,
    },
    /// The client will send no more: shut down the write half.
    Fin,
}

impl WriteMsg {
    /// A data message with a copy of `data` (at most one cell's worth).
    pub fn data(data: &[u8]) -> WriteMsg {
        let mut buf = [0u8; RELAY_BODY_MAX];
        let n = data.len().min(RELAY_BODY_MAX);
        buf[..n].copy_from_slice(&data[..n]);
        WriteMsg::Data { buf, len: n as u16 }
    }
}

/// Settings of the exit.
#[derive(Debug, Clone)]
pub struct ExitSettings {
    /// Which destinations are allowed.
    pub policy: ExitPolicy,
    /// DNS resolution and TCP connect timeout, each.
    pub connect_timeout: Duration,
}

/// The exit policy's check of a BEGIN before any resolution: a hostname is checked by port
/// (its addresses are checked again by [`usable_addresses`]). Sans-IO: the simulator's
/// exits run this same check.
pub fn check_before_resolving(target: &Target, policy: &ExitPolicy) -> Result<(), EndReason> {
    if let Host::Name(name) = &target.host {
        if !policy.allows(&PolicyTarget::Host(name.as_str()), target.port.get()) {
            return Err(EndReason::ExitPolicy);
        }
    }
    Ok(())
}

/// The addresses of a destination (literal or resolved) a stream may connect to, in the
/// order to try them: those of a family the client accepts (`flags`) and that the policy
/// allows on `port` (a hostname must not reach the operator's network), preferred family
/// first. Sans-IO: the simulator's exits run this same check.
pub fn usable_addresses(
    candidates: Vec<IpAddr>,
    port: u16,
    flags: BeginFlags,
    policy: &ExitPolicy,
) -> Result<Vec<IpAddr>, EndReason> {
    let mut usable: Vec<IpAddr> = candidates
        .into_iter()
        .filter(|ip| match ip {
            IpAddr::V4(_) => flags.ipv4_ok(),
            IpAddr::V6(_) => flags.ipv6_ok(),
        })
        .collect();
    if usable.is_empty() {
        return Err(EndReason::ResolveFailed);
    }
    usable.retain(|ip| policy.allows(&PolicyTarget::Ip(*ip), port));
    if usable.is_empty() {
        return Err(EndReason::ExitPolicy);
    }
    let prefer_v6 = flags.ipv6_preferred();
    usable.sort_by_key(|ip| ip.is_ipv6() != prefer_v6);
    Ok(usable)
}

/// Resolves (if needed), checks the policy against every candidate address, and connects.
pub async fn connect(
    target: &Target,
    flags: BeginFlags,
    settings: &ExitSettings,
) -> Result<(TcpStream, IpAddr), EndReason> {
    let port = target.port.get();
    let policy = &settings.policy;
    check_before_resolving(target, policy)?;
    let candidates: Vec<IpAddr> = match &target.host {
        Host::V4(ip) => vec![IpAddr::V4(*ip)],
        Host::V6(ip) => vec![IpAddr::V6(*ip)],
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(settings.connect_timeout, lookup).await {
                Err(_) => return Err(EndReason::Timeout),
                Ok(Err(_)) => return Err(EndReason::ResolveFailed),
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            }
        }
    };
    let usable = usable_addresses(candidates, port, flags, policy)?;
    let mut reason = EndReason::ConnectRefused;
    for ip in usable {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(sock)) => {
                let _ = sock.set_nodelay(true);
                return Ok((sock, ip));
            }
            Ok(Err(e)) => {
                reason = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => EndReason::ConnectRefused,
                    _ => EndReason::NoRoute,
                }
            }
            Err(_) => reason = EndReason::Timeout,
        }
    }
    Err(reason)
}

/// Reads the destination into chunks for the circuit task, one permit per chunk.
pub async fn reader(
    stream: StreamId,
    mut rd: OwnedReadHalf,
    permits: Arc<Semaphore>,
    events: mpsc::Sender<StreamEvent>,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Read into the spare capacity: no zeroing of the buffer first.
        let mut chunk = Vec::with_capacity(READ_CHUNK);
        let ev = match rd.read_buf(&mut chunk).await {
            Ok(0) => StreamEvent::Eof { stream },
            Ok(_) => StreamEvent::Data {
                stream,
                chunk,
                permit,
            },
            Err(_) => StreamEvent::Failed { stream },
        };
        let last = !matches!(ev, StreamEvent::Data { .. });
        if events.send(ev).await.is_err() || last {
            return;
        }
    }
}

/// Writes client data to the destination, batching whatever is queued into one write.
pub async fn writer(
    stream: StreamId,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<WriteMsg>,
    xoff_sent: Arc<AtomicBool>,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut fin = false;
        while let Some(msg) = next.take() {
            match msg {
                WriteMsg::Data { buf, len } => batch.extend_from_slice(&buf[..usize::from(len)]),
                WriteMsg::Fin => {
                    fin = true;
                    break;
                }
            }
            if batch.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if wr.write_all(&batch).await.is_err() {
                let _ = events.send(StreamEvent::Failed { stream }).await;
                return;
            }
            batch.clear();
        }
        if fin {
            let _ = wr.shutdown().await;
            // Later data would be a protocol violation, already refused by the state machine.
            return;
        }
        if rx.is_empty() && xoff_sent.swap(false, Ordering::AcqRel) {
            let _ = events.send(StreamEvent::Drained { stream }).await;
        }
    }
}
