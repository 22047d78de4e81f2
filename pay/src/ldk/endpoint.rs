//! The accept loop shared by the local endpoints of the relay and the client (their control
//! sockets, the relay's metrics listener): a bounded number of clients at once, each with a
//! time limit for its whole exchange, until shutdown. A slow or hostile local client can
//! hold one slot for at most the time limit and never stops the daemon.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::debug;

/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener of a local endpoint.
pub trait Listener: Send + 'static {
    /// The accepted connection.
    type Stream: Send + 'static;
    /// Waits for the next connection.
    fn accept_stream(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept_stream(&self) -> io::Result<TcpStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Limits of one endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Name in logs.
    pub name: &'static str,
    /// Clients served at once; further ones wait in the listen backlog.
    pub concurrent: usize,
    /// Time a client has for its whole exchange.
    pub io_timeout: Duration,
}

/// Serves `listener` with `handle` until `shutdown` turns true (or its sender goes away).
pub async fn serve<L, F, Fut>(
    listener: L,
    limits: Limits,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    L: Listener,
    F: Fn(L::Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.concurrent));
    let handle = Arc::new(handle);
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let sock = tokio::select! {
            _ = shutdown.changed() => return,
            acc = listener.accept_stream() => match acc {
                Ok(s) => s,
                Err(e) => {
                    debug!("{} accept failed: {e}", limits.name);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Err(e)) = tokio::time::timeout(limits.io_timeout, handle(sock)).await {
                debug!("{} client: {e}", limits.name);
            }
        });
    }
}
