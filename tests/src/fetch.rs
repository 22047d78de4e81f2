//! Transfers to the tests' HTTP server through a SOCKS proxy, each bounded in time: the one
//! way the integration tests move bytes through a circuit.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{self, Download};
use crate::socksc::{self, SocksClientError};

/// Why a transfer did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The SOCKS proxy refused or failed the connection.
    #[error("socks: {0}")]
    Socks(#[from] SocksClientError),
    /// The HTTP exchange failed (reset, bad status).
    #[error("http: {0}")]
    Http(std::io::Error),
    /// Nothing finished within the limit.
    #[error("transfer hung for {0:?}")]
    Hung(Duration),
}

/// Opens a stream through the SOCKS proxy `socks` to the HTTP server `http`, named by its IP
/// so that the exit resolves it.
pub async fn open(
    socks: SocketAddr,
    http: SocketAddr,
    creds: Option<(&str, &str)>,
) -> Result<TcpStream, SocksClientError> {
    socksc::connect(socks, &http.ip().to_string(), http.port(), creds).await
}

/// Downloads `/bytes/{len}` through `socks` within `limit`; the body is hashed if `hash`.
pub async fn download(
    socks: SocketAddr,
    http: SocketAddr,
    len: u64,
    limit: Duration,
    hash: bool,
) -> Result<Download, TransferError> {
    tokio::time::timeout(limit, async {
        let mut s = open(socks, http, None).await?;
        http::get(&mut s, "test", &format!("/bytes/{len}"), hash)
            .await
            .map_err(TransferError::Http)
    })
    .await
    .map_err(|_| TransferError::Hung(limit))?
}

/// Uploads `len` bytes of the test content through `socks` within `limit`; returns the
/// server's hex SHA-256 of what it received and its byte count.
pub async fn upload(
    socks: SocketAddr,
    http: SocketAddr,
    len: u64,
    limit: Duration,
) -> Result<(String, u64), TransferError> {
    tokio::time::timeout(limit, async {
        let mut s = open(socks, http, None).await?;
        http::upload(&mut s, "test", len)
            .await
            .map_err(TransferError::Http)
    })
    .await
    .map_err(|_| TransferError::Hung(limit))?
}

/// Asks for `/bytes/{len}` through `socks` (SOCKS credentials `creds` pick the circuit's
/// isolation) and counts the body bytes that arrive before the stream ends for whatever
/// reason: 0 if it never started, `None` if it was still open after `limit`.
pub async fn count_body(
    socks: SocketAddr,
    http: SocketAddr,
    len: u64,
    creds: Option<(&str, &str)>,
    limit: Duration,
) -> Option<u64> {
    let count = async {
        let Ok(mut s) = open(socks, http, creds).await else {
            return 0;
        };
        let req = format!("GET /bytes/{len} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            return 0;
        }
        let Ok((_, early)) = http::read_head(&mut s).await else {
            return 0;
        };
        let mut n = early.len() as u64;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(k) = s.read(&mut buf).await {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    };
    tokio::time::timeout(limit, count).await.ok()
}
