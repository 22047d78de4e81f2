//! The opt-in Prometheus endpoint: the text exposition format (version 0.0.4) rendered by
//! hand from the relay's counters, served by a minimal HTTP/1.1 responder on a loopback
//! address (`[metrics]` in the config).
//!
//! Only aggregates are exported: no label carries a client address, a destination, a
//! hostname or a circuit. Labels are closed sets (`reason`, `direction`, `unit`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::runtime::RelayStats;
use crate::status::Earnings;
use onionvpn_pay::ldk::endpoint::{self as local_endpoint, Limits};

/// Largest HTTP request head read, bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once (more wait for a slot).
const MAX_CONCURRENT: usize = 8;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Values that are not counters of the relay runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsInfo {
    /// Now, unix seconds.
    pub now_unix: u64,
    /// When the relay started, unix seconds.
    pub started_unix: u64,
    /// Price per MiB, msat.
    pub msat_per_mib: u64,
    /// Price per minute, msat.
    pub msat_per_min: u64,
    /// Whether the relay is an exit.
    pub exit: bool,
    /// Payments, when the relay keeps a ledger.
    pub earnings: Option<Earnings>,
    /// Entries in the payments ledger, when there is one.
    pub ledger_entries: Option<u64>,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values are fixed identifiers of this module: nothing to escape.
                let _ = write!(self.0, "{k}=\"{val}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// Renders every metric in the text exposition format.
pub fn render(s: &RelayStats, info: &MetricsInfo) -> String {
    let mut o = Out(String::with_capacity(4096));
    let cell = onionvpn_proto::consts::CELL_LEN as u64;
    o.one(
        "onionvpn_relay_start_time_seconds",
        "gauge",
        "Start time of the relay, unix seconds.",
        info.started_unix,
    );
    o.one(
        "onionvpn_relay_exit",
        "gauge",
        "1 if the relay is an exit, else 0.",
        u64::from(info.exit),
    );
    o.one(
        "onionvpn_relay_circuits_open",
        "gauge",
        "Circuits open now.",
        s.circuits_open,
    );
    o.one(
        "onionvpn_relay_circuits_created_total",
        "counter",
        "Circuits accepted (handshake done).",
        s.circuits_total,
    );
    o.family(
        "onionvpn_relay_circuit_refusals_total",
        "counter",
        "Circuit creations refused, by reason.",
    );
    for (reason, v) in [
        ("rate_limit", s.refused_rate),
        ("circuit_limit", s.refused_cap),
        ("handshake", s.refused_handshake),
    ] {
        o.sample(
            "onionvpn_relay_circuit_refusals_total",
            &[("reason", reason)],
            v,
        );
    }
    o.family(
        "onionvpn_relay_circuits_destroyed_total",
        "counter",
        "Circuits destroyed by the relay, by reason.",
    );
    o.sample(
        "onionvpn_relay_circuits_destroyed_total",
        &[("reason", "protocol_error")],
        s.circuit_errors,
    );
    o.sample(
        "onionvpn_relay_circuits_destroyed_total",
        &[("reason", "memory_limit")],
        s.circuits_reclaimed,
    );
    o.one(
        "onionvpn_relay_links_accepted_total",
        "counter",
        "Link connections accepted (link handshake done).",
        s.links_accepted,
    );
    o.one(
        "onionvpn_relay_connection_refusals_total",
        "counter",
        "Link connections refused by the per-address limit.",
        s.connections_refused,
    );
    o.one(
        "onionvpn_relay_streams_opened_total",
        "counter",
        "Exit streams requested and allowed by the exit policy.",
        s.streams_total,
    );
    o.family(
        "onionvpn_relay_cells_total",
        "counter",
        "Cells relayed, by direction (forward: from the client side).",
    );
    o.sample(
        "onionvpn_relay_cells_total",
        &[("direction", "forward")],
        s.cells_forward,
    );
    o.sample(
        "onionvpn_relay_cells_total",
        &[("direction", "backward")],
        s.cells_backward,
    );
    o.family(
        "onionvpn_relay_cell_bytes_total",
        "counter",
        "Bytes of cells relayed (512 per cell), by direction.",
    );
    o.sample(
        "onionvpn_relay_cell_bytes_total",
        &[("direction", "forward")],
        s.cells_forward.saturating_mul(cell),
    );
    o.sample(
        "onionvpn_relay_cell_bytes_total",
        &[("direction", "backward")],
        s.cells_backward.saturating_mul(cell),
    );
    o.family(
        "onionvpn_relay_exit_bytes_total",
        "counter",
        "Bytes exchanged with destinations by exit streams, by direction.",
    );
    o.sample(
        "onionvpn_relay_exit_bytes_total",
        &[("direction", "to_destination")],
        s.exit_bytes_written,
    );
    o.sample(
        "onionvpn_relay_exit_bytes_total",
        &[("direction", "from_destination")],
        s.exit_bytes_read,
    );
    o.one(
        "onionvpn_relay_dht_publications_total",
        "counter",
        "Successful descriptor puts into the DHT.",
        s.descriptor_puts,
    );
    if s.last_publication_unix > 0 {
        o.one(
            "onionvpn_relay_dht_publication_age_seconds",
            "gauge",
            "Seconds since the last successful descriptor put into the DHT.",
            info.now_unix.saturating_sub(s.last_publication_unix),
        );
    }
    o.family(
        "onionvpn_relay_price_msat",
        "gauge",
        "Prices published in the descriptor, millisatoshi per unit.",
    );
    o.sample(
        "onionvpn_relay_price_msat",
        &[("unit", "mib")],
        info.msat_per_mib,
    );
    o.sample(
        "onionvpn_relay_price_msat",
        &[("unit", "minute")],
        info.msat_per_min,
    );
    if let Some(e) = info.earnings {
        o.one(
            "onionvpn_relay_payments_received_total",
            "counter",
            "Payments received.",
            e.payments,
        );
        o.one(
            "onionvpn_relay_payments_received_msat_total",
            "counter",
            "Millisatoshi received.",
            e.total_msat,
        );
        o.one(
            "onionvpn_relay_circuits_paid_total",
            "counter",
            "Circuits that paid at least once.",
            e.circuits_paid,
        );
    }
    if let Some(n) = info.ledger_entries {
        o.one(
            "onionvpn_relay_ledger_entries",
            "gauge",
            "Entries in the payments ledger.",
            n,
        );
    }
    o.0
}

/// What the endpoint answers to one request head.
fn respond(head: &[u8], body: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, text) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, body()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

async fn read_head(sock: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Serves scrapes on `listener` until `shutdown` turns true; `body` renders the metrics.
pub async fn serve(
    listener: TcpListener,
    body: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = Limits {
        name: "metrics",
        concurrent: MAX_CONCURRENT,
        io_timeout: IO_TIMEOUT,
    };
    let handle = move |mut sock: TcpStream| {
        let body = body.clone();
        async move {
            let head = read_head(&mut sock).await?;
            sock.write_all(&respond(&head, || body())).await?;
            sock.shutdown().await
        }
    };
    local_endpoint::serve(listener, limits, handle, shutdown).await;
}

/// Binds the endpoint; the address must be loopback (checked by the config too).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the metrics endpoint binds loopback addresses only",
        ));
    }
    TcpListener::bind(addr).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn exposition_is_well_formed_and_carries_the_values() {
        let s = RelayStats {
            circuits_open: 3,
            circuits_total: 10,
            refused_rate: 4,
            refused_handshake: 1,
            cells_forward: 2,
            cells_backward: 5,
            exit_bytes_read: 77,
            last_publication_unix: 900,
            descriptor_puts: 2,
            ..RelayStats::default()
        };
        let info = MetricsInfo {
            now_unix: 1000,
            started_unix: 500,
            msat_per_mib: 1000,
            msat_per_min: 10,
            exit: true,
            earnings: Some(Earnings {
                today_msat: 1,
                total_msat: 42,
                circuits_paid: 2,
                payments: 3,
            }),
            ledger_entries: Some(3),
        };
        let text = render(&s, &info);
        let samples = parse(&text);
        let get = |k: &str| samples.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("onionvpn_relay_circuits_open"), Some(3));
        assert_eq!(
            get("onionvpn_relay_circuit_refusals_total{reason=\"rate_limit\"}"),
            Some(4)
        );
        assert_eq!(
            get("onionvpn_relay_cell_bytes_total{direction=\"backward\"}"),
            Some(5 * 512)
        );
        assert_eq!(get("onionvpn_relay_dht_publication_age_seconds"), Some(100));
        assert_eq!(get("onionvpn_relay_payments_received_msat_total"), Some(42));
        assert_eq!(get("onionvpn_relay_ledger_entries"), Some(3));
        // Every sample belongs to a family declared with HELP and TYPE; counters end in _total.
        for (name, _) in &samples {
            let family = name.split('{').next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "undeclared {family}"
            );
            assert!(family.starts_with("onionvpn_relay_"), "{family}");
        }
        for l in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut w = l.split_whitespace().skip(2);
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            assert_eq!(kind == "counter", name.ends_with("_total"), "{l}");
        }
        // Never published: no age sample (an age of "now" would be a lie).
        let fresh = render(&RelayStats::default(), &MetricsInfo::default());
        assert!(!fresh.contains("publication_age"));
        assert!(!fresh.contains("payments_received"));
    }

    #[test]
    fn responder_serves_only_get_metrics() {
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\n\r\n", || "x 1\n".into()))
            .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(CONTENT_TYPE) && ok.ends_with("\r\n\r\nx 1\n"),
            "{ok}"
        );
        let nf = String::from_utf8(respond(b"GET / HTTP/1.1\r\n\r\n", String::new)).unwrap();
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let m = String::from_utf8(respond(b"POST /metrics HTTP/1.1\r\n\r\n", String::new)).unwrap();
        assert!(m.starts_with("HTTP/1.1 405"), "{m}");
        let junk = String::from_utf8(respond(b"\xff\xfe", String::new)).unwrap();
        assert!(junk.starts_with("HTTP/1.1 405"), "{junk}");
    }
}
