//! The request filter relays install on their mainline DHT node: `mainline`'s server has no rate
//! limiting of its own (docs/spec.md, "DHT request filter").
//!
//! [`RequestLimiter`] is sans-IO (time passed in): token buckets per source IPv4 and one global
//! bucket, request kinds weighted by cost, immutable puts refused (onionvpn never uses them).
//! [`RelayRequestFilter`] wraps it as a `mainline::RequestFilter`, the only place that reads the
//! clock.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mainline::{RequestFilter, RequestSpecific};

/// The kind of an incoming DHT request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `ping`.
    Ping,
    /// `find_node`.
    FindNode,
    /// `get_peers`.
    GetPeers,
    /// `get` (BEP44, mutable or immutable).
    GetValue,
    /// `announce_peer`.
    AnnouncePeer,
    /// `put` of a mutable item (an ed25519 verification and a store).
    PutMutable,
    /// `put` of an immutable item.
    PutImmutable,
    /// A kind this version cannot tell (a newer `mainline`): treated as a put.
    Unknown,
}

impl RequestKind {
    /// Tokens the request costs in a bucket.
    pub fn cost(self) -> u32 {
        match self {
            RequestKind::Ping | RequestKind::FindNode | RequestKind::GetPeers => 1,
            RequestKind::GetValue => 2,
            RequestKind::AnnouncePeer
            | RequestKind::PutMutable
            | RequestKind::PutImmutable
            | RequestKind::Unknown => 5,
        }
    }

    /// The kind of a `mainline` request.
    ///
    /// `mainline` 8.0.1 does not export the request-type enum, so its variant is read from the
    /// start of the request's `Debug` form (at most 256 characters are formatted; the put's
    /// value is never rendered). A test on a live testnet pins this to the crate's output.
    pub fn of(request: &RequestSpecific) -> RequestKind {
        let mut head = Head(String::with_capacity(Head::MAX));
        // The sink refuses input past its bound, which ends the formatting early.
        let _ = write!(head, "{:?}", request.request_type);
        let h = head.0.as_str();
        if h.starts_with("Ping") {
            RequestKind::Ping
        } else if h.starts_with("FindNode") {
            RequestKind::FindNode
        } else if h.starts_with("GetPeers") {
            RequestKind::GetPeers
        } else if h.starts_with("GetValue") {
            RequestKind::GetValue
        } else if h.starts_with("Put") {
            if h.contains("put_request_type: AnnouncePeer") {
                RequestKind::AnnouncePeer
            } else if h.contains("put_request_type: PutMutable") {
                RequestKind::PutMutable
            } else if h.contains("put_request_type: PutImmutable") {
                RequestKind::PutImmutable
            } else {
                RequestKind::Unknown
            }
        } else {
            RequestKind::Unknown
        }
    }
}

/// A `fmt::Write` sink that keeps the first [`Head::MAX`] bytes and then fails.
struct Head(String);

impl Head {
    const MAX: usize = 256;
}

impl std::fmt::Write for Head {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = Self::MAX.saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
            Ok(())
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(s.get(..cut).unwrap_or(""));
            Err(std::fmt::Error)
        }
    }
}

/// Limits of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterConfig {
    /// Tokens per second per source IPv4.
    pub per_ip_rate: u32,
    /// Bucket size per source IPv4.
    pub per_ip_burst: u32,
    /// Tokens per second for all sources together.
    pub global_rate: u32,
    /// Global bucket size.
    pub global_burst: u32,
    /// Most source addresses tracked; beyond it idle entries are dropped, and a source that
    /// still finds no room is limited by the global bucket only.
    pub max_tracked: usize,
    /// Answer immutable puts (onionvpn never makes them).
    pub allow_immutable_puts: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            per_ip_rate: 20,
            per_ip_burst: 100,
            global_rate: 2_000,
            global_burst: 4_000,
            max_tracked: 4_096,
            allow_immutable_puts: false,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Immutable puts are not answered.
    Immutable,
    /// The source's bucket is empty.
    PerIp,
    /// The global bucket is empty.
    Global,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: u32, burst: u32, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst));
        self.at = now;
    }

    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * f64::from(rate) >= f64::from(burst)
    }
}

/// Token buckets per source IPv4 and global (sans-IO). Loopback sources (local test networks,
/// the operator's own tools) pass the per-source check and only draw from the global bucket.
#[derive(Debug)]
pub struct RequestLimiter {
    cfg: FilterConfig,
    global: Bucket,
    per_ip: HashMap<Ipv4Addr, Bucket>,
}

impl RequestLimiter {
    /// A limiter with full buckets at `now`.
    pub fn new(cfg: FilterConfig, now: Instant) -> Self {
        Self {
            cfg,
            global: Bucket::full(cfg.global_burst, now),
            per_ip: HashMap::new(),
        }
    }

    /// Decides on one request of `kind` from `ip` at `now`; an allowed request is charged.
    pub fn check(&mut self, kind: RequestKind, ip: Ipv4Addr, now: Instant) -> Result<(), Refusal> {
        if kind == RequestKind::PutImmutable && !self.cfg.allow_immutable_puts {
            return Err(Refusal::Immutable);
        }
        let cost = f64::from(kind.cost());
        let c = self.cfg;
        if !ip.is_loopback() {
            if !self.per_ip.contains_key(&ip) && self.per_ip.len() >= c.max_tracked {
                self.per_ip
                    .retain(|_, b| !b.is_full(c.per_ip_rate, c.per_ip_burst, now));
            }
            if self.per_ip.len() < c.max_tracked || self.per_ip.contains_key(&ip) {
                let b = self
                    .per_ip
                    .entry(ip)
                    .or_insert_with(|| Bucket::full(c.per_ip_burst, now));
                b.refill(c.per_ip_rate, c.per_ip_burst, now);
                if b.tokens < cost {
                    return Err(Refusal::PerIp);
                }
                self.global.refill(c.global_rate, c.global_burst, now);
                if self.global.tokens < cost {
                    return Err(Refusal::Global);
                }
                b.tokens -= cost;
                self.global.tokens -= cost;
                return Ok(());
            }
        }
        self.global.refill(c.global_rate, c.global_burst, now);
        if self.global.tokens < cost {
            return Err(Refusal::Global);
        }
        self.global.tokens -= cost;
        Ok(())
    }

    /// Source addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

/// Counters of a [`RelayRequestFilter`] (shared by its clones).
#[derive(Debug, Default)]
pub struct FilterStats {
    /// Requests answered.
    pub allowed: AtomicU64,
    /// Requests dropped by a rate limit.
    pub rate_limited: AtomicU64,
    /// Immutable puts dropped.
    pub immutable_refused: AtomicU64,
    /// Allowed `announce_peer` requests.
    pub announces: AtomicU64,
    /// Allowed mutable puts.
    pub mutable_puts: AtomicU64,
}

/// The relay's `mainline::RequestFilter`: a [`RequestLimiter`] behind a mutex (the DHT actor
/// calls it from its one thread; clones share state). Install with
/// `DhtBuilder::server_settings(ServerSettings { filter: Box::new(f), .. })`.
#[derive(Debug, Clone)]
pub struct RelayRequestFilter {
    limiter: Arc<Mutex<RequestLimiter>>,
    stats: Arc<FilterStats>,
}

impl RelayRequestFilter {
    /// A filter with `cfg`.
    pub fn new(cfg: FilterConfig) -> Self {
        Self {
            limiter: Arc::new(Mutex::new(RequestLimiter::new(cfg, Instant::now()))),
            stats: Arc::new(FilterStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<FilterStats> {
        self.stats.clone()
    }
}

impl RequestFilter for RelayRequestFilter {
    fn allow_request(&self, request: &RequestSpecific, from: SocketAddrV4) -> bool {
        let kind = RequestKind::of(request);
        let r = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(kind, *from.ip(), Instant::now());
        let s = &self.stats;
        match r {
            Ok(()) => {
                s.allowed.fetch_add(1, Ordering::Relaxed);
                match kind {
                    RequestKind::AnnouncePeer => s.announces.fetch_add(1, Ordering::Relaxed),
                    RequestKind::PutMutable => s.mutable_puts.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                true
            }
            Err(Refusal::Immutable) => {
                s.immutable_refused.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(_) => {
                s.rate_limited.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> FilterConfig {
        FilterConfig {
            per_ip_rate: 10,
            per_ip_burst: 20,
            global_rate: 100,
            global_burst: 50,
            max_tracked: 3,
            allow_immutable_puts: false,
        }
    }

    #[test]
    fn per_ip_bucket_limits_one_source_and_refills() {
        let t0 = Instant::now();
        let mut l = RequestLimiter::new(cfg(), t0);
        let a = Ipv4Addr::new(1, 2, 3, 4);
        let b = Ipv4Addr::new(5, 6, 7, 8);
        for _ in 0..20 {
            l.check(RequestKind::GetPeers, a, t0).unwrap();
        }
        assert_eq!(l.check(RequestKind::GetPeers, a, t0), Err(Refusal::PerIp));
        // Another source is not affected.
        l.check(RequestKind::GetPeers, b, t0).unwrap();
        // Puts cost 5: after 0.5 s (5 tokens) one put passes, a second does not.
        let t1 = t0 + Duration::from_millis(500);
        l.check(RequestKind::PutMutable, a, t1).unwrap();
        assert_eq!(
            l.check(RequestKind::AnnouncePeer, a, t1),
            Err(Refusal::PerIp)
        );
    }

    #[test]
    fn global_bucket_limits_many_sources_and_loopback() {
        let t0 = Instant::now();
        let mut l = RequestLimiter::new(
            FilterConfig {
                max_tracked: 1000,
                ..cfg()
            },
            t0,
        );
        let mut ok = 0;
        for i in 0..200u8 {
            if l.check(RequestKind::Ping, Ipv4Addr::new(10, 0, 0, i), t0)
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 50, "global burst");
        assert_eq!(
            l.check(RequestKind::Ping, Ipv4Addr::LOCALHOST, t0),
            Err(Refusal::Global)
        );
        let t1 = t0 + Duration::from_secs(1);
        // Loopback skips the per-source bucket: 50 (the refilled global burst) in a row.
        for _ in 0..50 {
            l.check(RequestKind::Ping, Ipv4Addr::LOCALHOST, t1).unwrap();
        }
        assert_eq!(l.tracked(), 200);
    }

    #[test]
    fn immutable_puts_are_refused_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut l = RequestLimiter::new(cfg(), t0);
        assert_eq!(
            l.check(RequestKind::PutImmutable, Ipv4Addr::new(1, 1, 1, 1), t0),
            Err(Refusal::Immutable)
        );
        for i in 0..10u8 {
            let _ = l.check(RequestKind::Ping, Ipv4Addr::new(9, 9, 9, i), t0);
            assert!(l.tracked() <= 3);
        }
        // Once idle entries have refilled they make room for new sources.
        let t1 = t0 + Duration::from_secs(10);
        l.check(RequestKind::Ping, Ipv4Addr::new(8, 8, 8, 8), t1)
            .unwrap();
        assert!(l.tracked() <= 3);
    }
}
