//! A raw link to a relay for adversarial tests: the real link handshake, then whatever
//! cells (or bytes) the test wants to send, including ones no honest peer would.

use std::net::SocketAddr;
use std::time::Duration;

use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::link::{FrameDecoder, Link, LinkInitiator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An authenticated link to a relay that sends raw cells.
pub struct RawLink {
    /// The socket.
    pub sock: TcpStream,
    link: Link,
    decoder: FrameDecoder,
}

impl std::fmt::Debug for RawLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawLink").finish_non_exhaustive()
    }
}

/// Link setup errors.
#[derive(Debug, thiserror::Error)]
pub enum RawLinkError {
    /// Socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Link handshake.
    #[error("link: {0}")]
    Link(#[from] onionvpn_proto::link::LinkError),
    /// Closed during the handshake.
    #[error("closed during the handshake")]
    Eof,
}

impl RawLink {
    /// Connects and runs the link handshake with the relay `identity`/`link_key` at `addr`.
    pub async fn connect(
        addr: SocketAddr,
        identity: [u8; 32],
        link_key: [u8; 32],
    ) -> Result<RawLink, RawLinkError> {
        let mut sock = TcpStream::connect(addr).await?;
        let (init, frame1) = {
            let mut rng = rand::rng();
            LinkInitiator::new(&mut rng, identity, link_key)?
        };
        sock.write_all(&frame1).await?;
        let mut decoder = FrameDecoder::new();
        let frame2 = loop {
            if let Some(f) = decoder.next_frame()? {
                break f.to_vec();
            }
            let n = sock.read(decoder.read_buf()).await?;
            if n == 0 {
                return Err(RawLinkError::Eof);
            }
            decoder.commit(n)?;
        };
        let link = init.read_frame(&frame2)?;
        Ok(RawLink {
            sock,
            link,
            decoder,
        })
    }

    /// Encrypts and sends raw cells (any bytes: invalid commands included).
    pub async fn send_raw_cells(&mut self, cells: &[[u8; CELL_LEN]]) -> Result<(), RawLinkError> {
        let mut out = Vec::new();
        self.link.encrypt_cells(cells, &mut out)?;
        self.sock.write_all(&out).await?;
        Ok(())
    }

    /// Sends the first `n` bytes of an encrypted frame of `cells` (a truncated frame).
    pub async fn send_truncated(
        &mut self,
        cells: &[[u8; CELL_LEN]],
        n: usize,
    ) -> Result<(), RawLinkError> {
        let mut out = Vec::new();
        self.link.encrypt_cells(cells, &mut out)?;
        out.truncate(n);
        self.sock.write_all(&out).await?;
        Ok(())
    }

    /// Reads cells until the relay closes the connection or `limit` passes; returns the
    /// cells read and whether the connection was closed.
    pub async fn read_until_closed(&mut self, limit: Duration) -> (Vec<[u8; CELL_LEN]>, bool) {
        let mut cells = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(f)) => {
                        let f = f.to_vec();
                        if self.link.decrypt_frame(&f, &mut cells).is_err() {
                            return (cells, true);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return (cells, true),
                }
            }
            match tokio::time::timeout_at(deadline, self.sock.read(self.decoder.read_buf())).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (cells, true),
                Ok(Ok(n)) => {
                    if self.decoder.commit(n).is_err() {
                        return (cells, true);
                    }
                }
                Err(_) => return (cells, false),
            }
        }
    }
}
