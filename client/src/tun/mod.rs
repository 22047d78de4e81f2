//! TUN mode: the client as a whole-device (or split) VPN. Another front end to the same
//! circuit manager and stream API as the SOCKS listener.
//!
//! - TCP arriving on the interface is terminated by a userspace stack ([`stack`]); each
//!   connection becomes a circuit stream (BEGIN to its destination) relayed with half-close
//!   both ways by the same code as SOCKS ([`crate::socks_server::copy_both_ways`]).
//! - DNS (UDP port 53, any destination address) is answered here with fake addresses
//!   ([`fakeip`], [`dns`]); a connection to a fake address opens a stream to the hostname,
//!   which the exit resolves. No DNS query ever leaves the device.
//! - Other UDP is dropped (counted in [`TunStats::udp_dropped`]) until circuits carry
//!   datagrams; applications see a timeout (QUIC falls back to TCP).
//! - Kill switch: routes stay pointed at the interface whatever happens to circuits. A
//!   connection for which no circuit can be had is held while the manager tries, then
//!   closed; its bytes never leave except through a circuit.
//!
//! The sans-IO parts (DNS, fake map, settings) are unit-tested; this file and [`device`]
//! are the thin tokio shell.

pub mod device;
pub mod dns;
pub mod fakeip;
pub mod settings;
pub mod stack;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use onionvpn_proto::relaymsg::{EndReason, Host, Target};
use tokio::io::AsyncReadExt;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::circmgr::CircMgr;
use crate::circuit_task::{Stream as CircStream, StreamError};
use crate::socks::IsolationKey;
use crate::socks_server::{copy_both_ways, Half};

pub use fakeip::{FakeIpConfig, FakeIpMap, Ipv4Net};
pub use settings::{TunIsolation, TunLayer, TunSettings};

/// Errors starting TUN mode.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The interface could not be created or configured (not root, no /dev/net/tun, …).
    #[error("cannot open TUN interface {name}: {source} (needs CAP_NET_ADMIN and /dev/net/tun)")]
    Open {
        /// Interface name.
        name: String,
        /// The error.
        source: std::io::Error,
    },
    /// A route could not be added.
    #[error("cannot route {route} to the TUN interface: {detail}")]
    Route {
        /// The route.
        route: String,
        /// What `ip` said.
        detail: String,
    },
    /// The userspace stack did not start.
    #[error("TUN packet stack: {0}")]
    Stack(std::io::Error),
}

/// Counters of a running TUN front end (aggregates only: no destinations).
#[derive(Debug, Default)]
pub struct TunStats {
    /// DNS queries answered.
    pub dns_answered: AtomicU64,
    /// UDP datagrams dropped (not DNS).
    pub udp_dropped: AtomicU64,
    /// TCP connections accepted from the interface.
    pub tcp_accepted: AtomicU64,
    /// Connections that got a circuit stream.
    pub streams_opened: AtomicU64,
    /// Connections closed without a stream (no circuit, exit refused, unknown fake address).
    pub tcp_refused: AtomicU64,
}

/// A running TUN front end.
pub struct TunHandle {
    name: String,
    stats: Arc<TunStats>,
    fake: Arc<Mutex<FakeIpMap>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TunHandle {
    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<TunStats> {
        &self.stats
    }

    /// Number of live fake-address mappings.
    pub fn fake_mappings(&self) -> usize {
        lock(&self.fake).len()
    }

    /// Stops the front end: closes every connection and removes the interface (with its
    /// routes, unless it was created persistently beforehand).
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for TunHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens the interface and starts serving it with circuits from `mgr`.
pub async fn start(mgr: Arc<CircMgr>, settings: TunSettings) -> Result<TunHandle, TunError> {
    let dev = Arc::new(device::open(&settings)?);
    let parts = stack::start(settings.mtu).map_err(TunError::Stack)?;
    let stats = Arc::new(TunStats::default());
    let fake = Arc::new(Mutex::new(FakeIpMap::new(settings.fake)));
    let settings = Arc::new(settings);
    let stack::StackParts {
        mut packets_in,
        mut packets_out,
        tcp,
        udp_in,
        udp_out,
        runner,
    } = parts;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = runner.await {
            warn!("TUN packet stack stopped: {e}");
        }
    }));
    let rx_dev = dev.clone();
    let mtu = usize::from(settings.mtu);
    tasks.push(tokio::spawn(async move {
        let mut buf = vec![0u8; mtu.max(1500) + 64];
        loop {
            match rx_dev.recv(&mut buf).await {
                Ok(n) => {
                    if packets_in.send(buf[..n].to_vec()).await.is_err() {
                        // A malformed packet is an error of `send` too: keep going.
                        debug!("TUN: a packet was refused by the stack");
                    }
                }
                Err(e) => {
                    warn!("TUN read failed, stopping: {e}");
                    return;
                }
            }
        }
    }));
    let tx_dev = dev.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(pkt) = packets_out.next().await {
            let Ok(pkt) = pkt else { continue };
            if let Err(e) = tx_dev.send(&pkt).await {
                debug!("TUN write failed: {e}");
            }
        }
    }));
    tasks.push(tokio::spawn(serve_udp(
        udp_in,
        udp_out,
        fake.clone(),
        stats.clone(),
    )));
    tasks.push(tokio::spawn(serve_tcp(
        tcp,
        mgr,
        settings.clone(),
        fake.clone(),
        stats.clone(),
    )));
    info!(
        "TUN interface {} up ({}, MTU {}, {} routes)",
        settings.name,
        settings.address,
        settings.mtu,
        settings.routes.len()
    );
    Ok(TunHandle {
        name: settings.name.clone(),
        stats,
        fake,
        tasks,
    })
}

async fn serve_udp(
    mut udp_in: std::pin::Pin<Box<dyn futures::Stream<Item = stack::Datagram> + Send>>,
    mut udp_out: std::pin::Pin<
        Box<dyn futures::Sink<stack::Datagram, Error = std::io::Error> + Send>,
    >,
    fake: Arc<Mutex<FakeIpMap>>,
    stats: Arc<TunStats>,
) {
    while let Some((payload, src, dst)) = udp_in.next().await {
        if dst.port() != 53 {
            stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let answer = lock(&fake).answer(&payload, Instant::now());
        let Some(answer) = answer else {
            stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.dns_answered.fetch_add(1, Ordering::Relaxed);
        // The answer comes "from" the address the query went to.
        if let Err(e) = udp_out.send((answer, dst, src)).await {
            debug!("TUN: DNS answer not sent: {e}");
        }
    }
}

async fn serve_tcp(
    mut tcp: std::pin::Pin<Box<dyn futures::Stream<Item = stack::Accepted> + Send>>,
    mgr: Arc<CircMgr>,
    settings: Arc<TunSettings>,
    fake: Arc<Mutex<FakeIpMap>>,
    stats: Arc<TunStats>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = tcp.next() => {
                let Some((conn, _src, dst)) = accepted else { return };
                stats.tcp_accepted.fetch_add(1, Ordering::Relaxed);
                let target = target_for(dst, &fake);
                conns.spawn(handle(conn, target, mgr.clone(), settings.clone(), stats.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The stream target for a connection to `dst`: the hostname behind a fake address, else
/// the address itself. `None` for a fake address without a mapping or port 0.
fn target_for(dst: SocketAddr, fake: &Mutex<FakeIpMap>) -> Option<Target> {
    let port = NonZeroU16::new(dst.port())?;
    let host = match dst.ip() {
        IpAddr::V4(ip) => {
            let mut map = lock(fake);
            if map.in_range(ip) {
                Host::Name(map.lookup(ip, Instant::now())?)
            } else {
                Host::V4(ip)
            }
        }
        IpAddr::V6(ip) => Host::V6(ip),
    };
    Some(Target { host, port })
}

/// How long a refused connection is kept open at most, waiting for its handshake to finish.
const REFUSE_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes a connection that gets no stream. Closing is all the refusal the stack offers (it
/// cannot send RST); what the application sent stays here. netstack-smoltcp accepts a
/// connection at its SYN, and a close before the handshake finished leaves the application
/// without a FIN (it waits for data forever), so first wait, boundedly, for a sign that the
/// handshake is done: the application's first bytes or FIN.
async fn refuse(mut conn: Box<dyn stack::AppConn>, stats: &TunStats) {
    stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
    let mut first = [0u8; 1];
    let _ = tokio::time::timeout(REFUSE_SETTLE, conn.read(&mut first)).await;
    drop(conn);
}

/// The isolation key of a TUN stream.
pub fn isolation_key(mode: TunIsolation, target: &Target) -> IsolationKey {
    match mode {
        // The same key as a SOCKS connection without credentials: TUN and plain SOCKS
        // traffic of one device may share circuits.
        TunIsolation::None => IsolationKey::no_auth(),
        TunIsolation::Destination => IsolationKey::credentials(
            b"onionvpn-tun-destination",
            target.host.to_string().as_bytes(),
        ),
    }
}

async fn open_stream(
    mgr: &Arc<CircMgr>,
    settings: &TunSettings,
    target: Target,
) -> Option<CircStream> {
    let key = isolation_key(settings.isolation, &target);
    for _ in 0..settings.stream_attempts.max(1) {
        let circ = match mgr.get_circuit(&key, &target).await {
            Ok(c) => c,
            Err(e) => {
                debug!("TUN: no circuit for a connection: {e}");
                return None;
            }
        };
        match tokio::time::timeout(settings.connect_timeout, circ.begin(target.clone())).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(StreamError::Ended(reason))) => {
                debug!("TUN: the exit refused a stream: {reason:?}");
                return None;
            }
            // The circuit died under us: try another.
            Ok(Err(StreamError::CircuitClosed | StreamError::Refused(_))) => {}
            Err(_) => return None,
        }
    }
    None
}

async fn handle(
    conn: Box<dyn stack::AppConn>,
    target: Option<Target>,
    mgr: Arc<CircMgr>,
    settings: Arc<TunSettings>,
    stats: Arc<TunStats>,
) {
    let stream = match target {
        Some(t) => open_stream(&mgr, &settings, t).await,
        None => None,
    };
    let Some(stream) = stream else {
        refuse(conn, &stats).await;
        return;
    };
    stats.streams_opened.fetch_add(1, Ordering::Relaxed);
    let (rd, wr) = tokio::io::split(conn);
    match copy_both_ways(rd, wr, &stream, settings.read_chunk).await {
        Half::Done => {}
        Half::AppError => stream.end(EndReason::ConnReset).await,
        Half::StreamEnded => drop(stream),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    fn target(host: Host, port: u16) -> Target {
        Target {
            host,
            port: NonZeroU16::new(port).unwrap(),
        }
    }

    #[test]
    fn isolation_by_destination_separates_hosts_not_ports() {
        let a80 = target(Host::Name("a.test".parse().unwrap()), 80);
        let a443 = target(Host::Name("a.test".parse().unwrap()), 443);
        let b80 = target(Host::Name("b.test".parse().unwrap()), 80);
        let ip = target(Host::V4(Ipv4Addr::new(192, 0, 2, 1)), 80);
        let d = TunIsolation::Destination;
        assert_eq!(isolation_key(d, &a80), isolation_key(d, &a443));
        assert_ne!(isolation_key(d, &a80), isolation_key(d, &b80));
        assert_ne!(isolation_key(d, &a80), isolation_key(d, &ip));
        // Never the key of SOCKS without credentials.
        assert_ne!(isolation_key(d, &a80), IsolationKey::no_auth());
        // Without isolation every destination shares the SOCKS no-auth key.
        let n = TunIsolation::None;
        assert_eq!(isolation_key(n, &a80), isolation_key(n, &b80));
        assert_eq!(isolation_key(n, &ip), IsolationKey::no_auth());
    }

    #[test]
    fn targets_from_fake_and_real_addresses() {
        let fake = Mutex::new(FakeIpMap::new(FakeIpConfig {
            range: "10.99.0.0/24".parse().unwrap(),
            capacity: 8,
            idle_ttl: Duration::from_secs(600),
            answer_ttl: Duration::from_secs(60),
        }));
        let ip = lock(&fake).address_for(&"web.test".parse().unwrap(), Instant::now());
        let t = target_for(SocketAddr::from((ip, 8080)), &fake).unwrap();
        assert_eq!(t, target(Host::Name("web.test".parse().unwrap()), 8080));
        // An unmapped fake address and port 0 give no target (the connection is refused).
        assert!(target_for(SocketAddr::from(([10, 99, 0, 200], 80)), &fake).is_none());
        assert!(target_for(SocketAddr::from((ip, 0)), &fake).is_none());
        // A real address is carried as itself.
        let real = target_for(SocketAddr::from(([192, 0, 2, 7], 443)), &fake).unwrap();
        assert_eq!(real, target(Host::V4(Ipv4Addr::new(192, 0, 2, 7)), 443));
    }
}
