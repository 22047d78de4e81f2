//! Reading a relay's Prometheus endpoint in tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `/metrics` from `addr` and returns the exposition's samples by name with labels
/// (e.g. `onionvpn_relay_cells_total{direction="forward"}`), and the raw text.
pub async fn scrape(addr: SocketAddr) -> Result<(BTreeMap<String, u64>, String), String> {
    let read = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| "metrics endpoint did not answer".to_owned())??;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no end of headers".to_owned())?;
    if !head.starts_with("HTTP/1.1 200 OK") {
        return Err(format!("status line: {head}"));
    }
    Ok((samples(body)?, body.to_owned()))
}

/// The samples of an exposition text, by name with labels.
pub fn samples(text: &str) -> Result<BTreeMap<String, u64>, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .ok_or_else(|| format!("malformed line {l:?}"))?;
            let v = v.parse().map_err(|_| format!("bad value in {l:?}"))?;
            Ok((k.to_owned(), v))
        })
        .collect()
}
