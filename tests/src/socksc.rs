//! A minimal SOCKS5 client for tests (CONNECT by hostname, optional username/password).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a SOCKS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SocksClientError {
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy answered with this REP code.
    #[error("SOCKS reply {0:#04x}")]
    Reply(u8),
    /// The proxy answered something that is not SOCKS5.
    #[error("bad SOCKS answer: {0:?}")]
    Bad(Vec<u8>),
}

/// Connects through the SOCKS5 proxy at `proxy` to `host:port`; `host` travels as a name
/// (ATYP 3), so the exit resolves it. `creds` selects username/password authentication.
pub async fn connect(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    creds: Option<(&str, &str)>,
) -> Result<TcpStream, SocksClientError> {
    let mut s = TcpStream::connect(proxy).await?;
    let _ = s.set_nodelay(true);
    let method = if creds.is_some() { 2u8 } else { 0u8 };
    s.write_all(&[5, 1, method]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    if m != [5, method] {
        return Err(SocksClientError::Bad(m.to_vec()));
    }
    if let Some((u, p)) = creds {
        let mut a = vec![1, u.len() as u8];
        a.extend_from_slice(u.as_bytes());
        a.push(p.len() as u8);
        a.extend_from_slice(p.as_bytes());
        s.write_all(&a).await?;
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await?;
        if r != [1, 0] {
            return Err(SocksClientError::Bad(r.to_vec()));
        }
    }
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let rep = read_reply(&mut s).await?;
    if rep != 0 {
        return Err(SocksClientError::Reply(rep));
    }
    Ok(s)
}

/// Reads a SOCKS5 reply and returns its REP code.
pub async fn read_reply(s: &mut TcpStream) -> Result<u8, SocksClientError> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    if h[0] != 5 {
        return Err(SocksClientError::Bad(h.to_vec()));
    }
    let rest = match h[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).await?;
            usize::from(l[0]) + 2
        }
        _ => return Err(SocksClientError::Bad(h.to_vec())),
    };
    let mut b = vec![0u8; rest];
    s.read_exact(&mut b).await?;
    Ok(h[1])
}
