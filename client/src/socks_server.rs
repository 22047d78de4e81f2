//! The SOCKS5 listener: one task per connection runs the sans-IO handshake
//! ([`crate::socks`]), gets a circuit for the connection's isolation key, opens the stream
//! (the exit resolves hostnames: nothing is resolved here), answers with the reply code for
//! the outcome, then relays bytes both ways with half-close.
//!
//! Failure semantics toward the application: a handshake error gets its SOCKS reply (if the
//! protocol has one) and a clean close; a stream that the exit or the circuit ends after
//! CONNECTED is reset (TCP RST), so the application sees an error rather than a clean but
//! truncated end of data.

use std::sync::Arc;
use std::time::Duration;

use onionvpn_proto::relaymsg::EndReason;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::debug;

use crate::circmgr::CircMgr;
use crate::circuit_task::{Recv, Stream, StreamError};
use crate::socks::{reply, ReplyCode, SocksHandshake, SocksRequest, UNSPECIFIED_BOUND};

/// Settings of the SOCKS listener.
#[derive(Debug, Clone)]
pub struct SocksSettings {
    /// How long a client may take to finish the SOCKS handshake.
    pub handshake_timeout: Duration,
    /// How long the exit may take to answer BEGIN (then reply `06` TTL expired).
    pub connect_timeout: Duration,
    /// Circuits tried for one stream when a circuit dies before the exit answers.
    pub stream_attempts: usize,
    /// Bytes read from the application per DATA batch.
    pub read_chunk: usize,
}

impl Default for SocksSettings {
    fn default() -> Self {
        SocksSettings {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            stream_attempts: 2,
            read_chunk: 64 * 1024,
        }
    }
}

/// Accepts SOCKS connections on `listener` until the task is dropped (which also ends every
/// connection it started).
pub async fn serve(listener: TcpListener, mgr: Arc<CircMgr>, settings: SocksSettings) {
    let settings = Arc::new(settings);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    conns.spawn(handle(sock, mgr.clone(), settings.clone()));
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    debug!("SOCKS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn write_and_close(sock: &mut TcpStream, bytes: &[u8]) {
    if !bytes.is_empty() {
        let _ = sock.write_all(bytes).await;
    }
    let _ = sock.shutdown().await;
}

/// Runs the handshake; returns the request and any bytes the client sent after it.
async fn handshake(
    sock: &mut TcpStream,
    settings: &SocksSettings,
) -> Option<(SocksRequest, Vec<u8>)> {
    let mut hs = SocksHandshake::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return None,
            Err(_) => {
                debug!("SOCKS handshake timed out");
                write_and_close(sock, &[]).await;
                return None;
            }
        };
        if n == 0 {
            // Early close: nothing to answer.
            let _ = hs.eof();
            return None;
        }
        match hs.feed(&buf[..n]) {
            Ok(progress) => {
                let out = hs.take_output();
                if !out.is_empty() && sock.write_all(&out).await.is_err() {
                    return None;
                }
                if let Some(req) = progress.request {
                    let early = buf[progress.consumed.min(n)..n].to_vec();
                    return Some((req, early));
                }
            }
            Err(e) => {
                debug!("SOCKS handshake refused: {e}");
                let out = hs.take_output();
                write_and_close(sock, &out).await;
                return None;
            }
        }
    }
}

async fn handle(mut sock: TcpStream, mgr: Arc<CircMgr>, settings: Arc<SocksSettings>) {
    let _ = sock.set_nodelay(true);
    let Some((req, early)) = handshake(&mut sock, &settings).await else {
        return;
    };
    let mut code = ReplyCode::GeneralFailure;
    let mut stream = None;
    for _ in 0..settings.stream_attempts.max(1) {
        let circ = match mgr.get_circuit(&req.isolation, &req.target).await {
            Ok(c) => c,
            Err(e) => {
                debug!("no circuit for a SOCKS request: {e}");
                code = ReplyCode::NetworkUnreachable;
                break;
            }
        };
        match tokio::time::timeout(settings.connect_timeout, circ.begin(req.target.clone())).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(StreamError::Ended(reason))) => {
                code = ReplyCode::for_end(reason);
                break;
            }
            // The circuit died under us: try another.
            Ok(Err(StreamError::CircuitClosed | StreamError::Refused(_))) => {
                code = ReplyCode::GeneralFailure;
            }
            Err(_) => {
                code = ReplyCode::TtlExpired;
                break;
            }
        }
    }
    let Some(stream) = stream else {
        write_and_close(&mut sock, &reply(code.into(), UNSPECIFIED_BOUND)).await;
        return;
    };
    if sock
        .write_all(&reply(ReplyCode::Succeeded.into(), UNSPECIFIED_BOUND))
        .await
        .is_err()
    {
        stream.end(EndReason::Misc).await;
        return;
    }
    if !early.is_empty() && stream.send(early).await.is_err() {
        let _ = sock.set_zero_linger();
        return;
    }
    relay(sock, stream, settings.read_chunk).await;
}

/// How one direction of a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// Finished normally (EOF passed on as FIN, or FIN passed on as shutdown).
    Done,
    /// The application's socket failed.
    AppError,
    /// The stream or circuit ended.
    StreamEnded,
}

/// Copies bytes both ways until both directions finished, or either failed.
pub async fn relay(mut sock: TcpStream, stream: Stream, chunk: usize) {
    let (rd, wr) = sock.split();
    let outcome = copy_both_ways(rd, wr, &stream, chunk).await;
    match outcome {
        Half::Done => {}
        Half::AppError => {
            stream.end(EndReason::ConnReset).await;
            let _ = sock.set_zero_linger();
        }
        Half::StreamEnded => {
            drop(stream);
            let _ = sock.set_zero_linger();
        }
    }
}

/// Copies bytes between an application byte stream (its read and write halves) and a
/// circuit stream, both ways with half-close, until both directions finished
/// ([`Half::Done`]) or either failed. Shared by the SOCKS and TUN front ends; the caller
/// decides how to abort the application side.
pub async fn copy_both_ways<R, W>(mut rd: R, mut wr: W, stream: &Stream, chunk: usize) -> Half
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let up = async {
        loop {
            // Read into spare capacity: no zeroing of a fresh buffer per read.
            let mut buf = Vec::with_capacity(chunk.max(1));
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    return match stream.send_fin().await {
                        Ok(()) => Half::Done,
                        Err(_) => Half::StreamEnded,
                    };
                }
                Ok(_) => {
                    if stream.send(buf).await.is_err() {
                        return Half::StreamEnded;
                    }
                }
                Err(_) => return Half::AppError,
            }
        }
    };
    let down = async {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stream.recv(&mut buf).await {
                Ok(Recv::Data) => {
                    if wr.write_all(&buf).await.is_err() {
                        return Half::AppError;
                    }
                }
                Ok(Recv::Fin) => {
                    let _ = wr.shutdown().await;
                    return Half::Done;
                }
                Err(_) => return Half::StreamEnded,
            }
        }
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let half = tokio::select! {
            h = &mut up, if !up_done => { up_done = true; h }
            h = &mut down, if !down_done => { down_done = true; h }
        };
        match half {
            Half::Done if up_done && down_done => return Half::Done,
            Half::Done => {}
            other => return other,
        }
    }
}
