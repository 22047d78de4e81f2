//! Transfers to the tests' HTTP server through a SOCKS proxy, each bounded in time: the one
//! way the integration tests move bytes through a circuit.

use std::net::SocketAddr;
use std::time::Duration;

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
