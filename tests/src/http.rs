//! A small HTTP/1.1 server on loopback serving deterministic test content, and the matching
//! client side (over any stream, e.g. a SOCKS connection).
//!
//! Routes (one request per connection, `Connection: close`):
//! - `GET /bytes/N`: N bytes of [`fill_content`];
//! - `GET /slow/N`: the same bytes, 16 KiB every 10 ms (a transfer that lasts);
//! - `GET /hold`: answers nothing until the client closes (keeps a stream open);
//! - `POST /upload` with `Content-Length`: reads the body, answers `hex(sha256(body))\n`.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes written per write call.
pub const CHUNK: usize = 64 * 1024;

/// Fills `buf` with the test content starting at byte `offset` (a multiple of 8).
pub fn fill_content(offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut z = (offset / 8 + i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// SHA-256 of the first `len` bytes of the test content.
pub fn content_sha256(len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        fill_content(off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The running server.
#[derive(Debug)]
pub struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Stops accepting (open connections end with the runtime).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the server on `bind` (port 0: any free port).
pub async fn start_http(bind: SocketAddr) -> std::io::Result<HttpServer> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = serve_one(sock).await;
            });
        }
    });
    Ok(HttpServer { addr, task })
}

/// Reads a request or response head (up to the blank line); returns it and any body bytes
/// read past it.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            return Ok((head, buf[pos + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("head too long"));
        }
        let n = r.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the end of the head",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// The `Content-Length` of a head, if any.
pub fn content_length(head: &str) -> Option<u64> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

async fn send_content<W: AsyncWrite + Unpin>(
    w: &mut W,
    len: u64,
    slow: bool,
) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    w.write_all(head.as_bytes()).await?;
    let step = if slow { 16 * 1024 } else { CHUNK };
    let mut buf = vec![0u8; step];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(step as u64) as usize;
        fill_content(off, &mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        off += n as u64;
        if slow {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    w.shutdown().await
}

async fn serve_one(mut sock: TcpStream) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (head, early) = read_head(&mut sock).await?;
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("");
    let num = |p: &str, prefix: &str| p.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok());
    match (method, path) {
        ("GET", p) if num(p, "/bytes/").is_some() => {
            send_content(&mut sock, num(p, "/bytes/").unwrap_or(0), false).await
        }
        ("GET", p) if num(p, "/slow/").is_some() => {
            send_content(&mut sock, num(p, "/slow/").unwrap_or(0), true).await
        }
        ("GET", "/hold") => {
            let mut b = [0u8; 1024];
            while sock.read(&mut b).await? > 0 {}
            Ok(())
        }
        ("POST", "/upload") => {
            let len = content_length(&head).unwrap_or(0);
            let mut h = Sha256::new();
            let mut got = early.len() as u64;
            h.update(&early);
            let mut buf = vec![0u8; CHUNK];
            while got < len {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                got += n as u64;
            }
            let body = format!("{} {got}\n", hex(&h.finalize()));
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await?;
            sock.shutdown().await
        }
        _ => {
            sock.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
            sock.shutdown().await
        }
    }
}

/// What a download delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// Body bytes received.
    pub len: u64,
    /// SHA-256 of the body (all zero when hashing was off).
    pub sha256: [u8; 32],
    /// Content-Length announced.
    pub announced: Option<u64>,
}

/// Sends `GET path` on `s` and reads the whole response; the body is hashed if `hash`.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
    hash: bool,
) -> std::io::Result<Download> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let (head, early) = read_head(s).await?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("HTTP status: {head}")));
    }
    let announced = content_length(&head);
    let mut h = Sha256::new();
    let mut len = early.len() as u64;
    if hash {
        h.update(&early);
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if hash {
            h.update(&buf[..n]);
        }
        len += n as u64;
    }
    Ok(Download {
        len,
        sha256: if hash { h.finalize().into() } else { [0; 32] },
        announced,
    })
}

/// Uploads `len` bytes of the test content with `POST /upload`, half-closes, and returns the
/// server's answer: the hex SHA-256 and the byte count it received.
pub async fn upload<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    len: u64,
) -> std::io::Result<(String, u64)> {
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        fill_content(off, &mut buf[..n]);
        s.write_all(&buf[..n]).await?;
        off += n as u64;
    }
    s.shutdown().await?;
    let (head, mut body) = read_head(s).await?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("HTTP status: {head}")));
    }
    s.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    let mut it = text.split_whitespace();
    let sha = it.next().unwrap_or("").to_owned();
    let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Ok((sha, n))
}
