//! Denial-of-service limits, sans-IO: the caller passes the current time in.
//!
//! - [`CircuitCreationLimiter`]: a token bucket per source address for circuit creations
//!   (Tor's `dos.c` numbers: 3 per second, burst 90). An address that empties its bucket is
//!   refused for a defence period (1 h plus a random 0–30 min). The table is bounded; when full
//!   the least recently seen address is forgotten.
//! - [`CircuitCap`]: a global cap on open circuits.
//! - [`ConnectionLimiter`]: a cap on concurrent connections per source address.
//! - [`MemQuota`]: accounting of queued-cell memory per circuit; above the limit it names the
//!   circuits to kill, those holding the oldest queued data first, until usage is below 90 % of
//!   the limit (Tor's `MaxMemInQueues` rule).
//!
//! Addresses are grouped before counting: an IPv4 address counts alone, an IPv6 address counts
//! with its /64 (one host easily owns a whole /64). See [`AddrKey`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The unit a per-address limit counts: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// The key of `ip` (IPv4-mapped IPv6 addresses count as their IPv4 address).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    AddrKey(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }

    /// The address (for IPv6, the /64 prefix with the host part zeroed).
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

/// A limit refused something.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    /// The source address ran out of circuit-creation tokens and is in its defence period.
    #[error("circuit creation refused for {addr:?}: rate limit, refused for {remaining:?} more")]
    CircuitRate {
        /// The address (or /64) refused.
        addr: AddrKey,
        /// Time left in the defence period.
        remaining: Duration,
    },
    /// The relay carries as many circuits as it allows.
    #[error("circuit refused: {open} circuits open, cap is {max}")]
    CircuitCap {
        /// Circuits open now.
        open: usize,
        /// The configured cap.
        max: usize,
    },
    /// The source address already has as many connections as it may.
    #[error("connection refused for {addr:?}: {open} open, at most {max} per address")]
    ConnectionsPerAddr {
        /// The address (or /64) refused.
        addr: AddrKey,
        /// Connections open from it now.
        open: u32,
        /// The configured cap.
        max: u32,
    },
}

// ---------------------------------------------------------------------------------------------
// Circuit creation rate
// ---------------------------------------------------------------------------------------------

/// Parameters of [`CircuitCreationLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitRateConfig {
    /// Tokens (circuit creations) added per second. Tor: 3.
    pub rate_per_sec: u32,
    /// Bucket size: creations allowed in a burst. Tor: 90.
    pub burst: u32,
    /// Base defence period once an address empties its bucket. Tor: 1 h.
    pub defense_period: Duration,
    /// Largest random extra added to the defence period. Tor: half the period (30 min).
    pub defense_jitter: Duration,
    /// Most addresses tracked at once; the least recently seen is forgotten beyond it.
    pub max_tracked: usize,
}

impl Default for CircuitRateConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 3,
            burst: 90,
            defense_period: Duration::from_secs(3600),
            defense_jitter: Duration::from_secs(1800),
            max_tracked: 65_536,
        }
    }
}

/// One token in micro-tokens (the bucket counts in millionths so refill needs no floats).
const MICRO: u64 = 1_000_000;

#[derive(Debug, Clone)]
struct Bucket {
    micro_tokens: u64,
    refilled_at: Instant,
    last_seen: Instant,
    seq: u64,
    refused_until: Option<Instant>,
}

/// Per-address token bucket for circuit creations, with a defence period and a bounded table.
#[derive(Debug, Clone)]
pub struct CircuitCreationLimiter {
    cfg: CircuitRateConfig,
    table: HashMap<AddrKey, Bucket>,
    /// Recency index: (last_seen, seq) → address; its first entry is evicted when full.
    by_age: BTreeMap<(Instant, u64), AddrKey>,
    next_seq: u64,
    rng: u64,
}

impl CircuitCreationLimiter {
    /// A limiter; `seed` drives the random part of defence periods (deterministic per seed).
    pub fn new(cfg: CircuitRateConfig, seed: u64) -> Self {
        Self {
            cfg,
            table: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            rng: seed,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CircuitRateConfig {
        &self.cfg
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// Whether `ip` is refused at `now` (without spending a token).
    pub fn is_refused(&self, ip: IpAddr, now: Instant) -> bool {
        self.table
            .get(&AddrKey::of(ip))
            .and_then(|b| b.refused_until)
            .is_some_and(|until| now < until)
    }

    fn jitter(&mut self) -> Duration {
        // splitmix64: small, deterministic, good enough for a jitter.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let max = self.cfg.defense_jitter.as_secs();
        if max == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(z % (max + 1))
        }
    }

    /// A circuit creation from `ip` at `now`: spends one token, or refuses.
    ///
    /// The creation that finds the bucket empty marks the address refused for the defence
    /// period; every creation during the period is refused. After the period the address starts
    /// again with a full bucket.
    pub fn on_create(&mut self, ip: IpAddr, now: Instant) -> Result<(), LimitError> {
        let key = AddrKey::of(ip);
        let cap = u64::from(self.cfg.burst) * MICRO;
        let rate = u64::from(self.cfg.rate_per_sec);
        if !self.table.contains_key(&key) {
            self.make_room();
            let seq = self.bump_seq();
            self.table.insert(
                key,
                Bucket {
                    micro_tokens: cap,
                    refilled_at: now,
                    last_seen: now,
                    seq,
                    refused_until: None,
                },
            );
            self.by_age.insert((now, seq), key);
        }
        let seq = self.bump_seq();
        let jitter = self.jitter();
        let Some(b) = self.table.get_mut(&key) else {
            return Ok(()); // unreachable: inserted above
        };
        // Refresh the recency index.
        self.by_age.remove(&(b.last_seen, b.seq));
        b.last_seen = b.last_seen.max(now);
        b.seq = seq;
        self.by_age.insert((b.last_seen, b.seq), key);

        if let Some(until) = b.refused_until {
            if now < until {
                return Err(LimitError::CircuitRate {
                    addr: key,
                    remaining: until - now,
                });
            }
            b.refused_until = None;
            b.micro_tokens = cap;
            b.refilled_at = now;
        }
        // Refill (time never runs backwards here: an earlier `now` adds nothing).
        let elapsed = now.saturating_duration_since(b.refilled_at);
        let add = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(rate);
        b.micro_tokens = b.micro_tokens.saturating_add(add).min(cap);
        b.refilled_at = b.refilled_at.max(now);

        if b.micro_tokens >= MICRO {
            b.micro_tokens -= MICRO;
            Ok(())
        } else {
            let period = self.cfg.defense_period + jitter;
            let until = now + period;
            b.refused_until = Some(until);
            Err(LimitError::CircuitRate {
                addr: key,
                remaining: period,
            })
        }
    }

    fn bump_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    fn make_room(&mut self) {
        while self.table.len() >= self.cfg.max_tracked.max(1) {
            let Some((_, key)) = self.by_age.pop_first() else {
                break;
            };
            self.table.remove(&key);
        }
    }

    /// Forgets addresses whose bucket is full again and that are not refused at `now` (they
    /// carry no state worth keeping). Call it now and then, e.g. once a minute.
    pub fn prune(&mut self, now: Instant) {
        let rate = u64::from(self.cfg.rate_per_sec);
        let cap = u64::from(self.cfg.burst) * MICRO;
        let by_age = &mut self.by_age;
        self.table.retain(|_, b| {
            if b.refused_until.is_some_and(|u| now < u) {
                return true;
            }
            let elapsed = now.saturating_duration_since(b.refilled_at);
            let add = u64::try_from(elapsed.as_micros())
                .unwrap_or(u64::MAX)
                .saturating_mul(rate);
            let keep = b.micro_tokens.saturating_add(add) < cap;
            if !keep {
                by_age.remove(&(b.last_seen, b.seq));
            }
            keep
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Global circuit cap
// ---------------------------------------------------------------------------------------------

/// A global cap on open circuits.
#[derive(Debug, Clone)]
pub struct CircuitCap {
    max: usize,
    open: usize,
}

impl CircuitCap {
    /// A cap of `max` circuits.
    pub fn new(max: usize) -> Self {
        Self { max, open: 0 }
    }

    /// Circuits open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Counts a new circuit, or refuses it at the cap.
    pub fn try_open(&mut self) -> Result<(), LimitError> {
        if self.open >= self.max {
            return Err(LimitError::CircuitCap {
                open: self.open,
                max: self.max,
            });
        }
        self.open += 1;
        Ok(())
    }

    /// A circuit closed.
    pub fn close(&mut self) {
        self.open = self.open.saturating_sub(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent connections per address
// ---------------------------------------------------------------------------------------------

/// A cap on concurrent connections per source address (or IPv6 /64).
///
/// The table holds only addresses with open connections, so its size is bounded by the number
/// of open connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    max_per_addr: u32,
    open: HashMap<AddrKey, u32>,
}

impl ConnectionLimiter {
    /// At most `max_per_addr` concurrent connections per address.
    pub fn new(max_per_addr: u32) -> Self {
        Self {
            max_per_addr,
            open: HashMap::new(),
        }
    }

    /// Connections open from `ip`'s address key.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.open.get(&AddrKey::of(ip)).copied().unwrap_or(0)
    }

    /// Addresses with at least one open connection.
    pub fn tracked(&self) -> usize {
        self.open.len()
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn try_open(&mut self, ip: IpAddr) -> Result<(), LimitError> {
        let key = AddrKey::of(ip);
        let n = self.open.entry(key).or_insert(0);
        if *n >= self.max_per_addr {
            let open = *n;
            if open == 0 {
                self.open.remove(&key);
            }
            return Err(LimitError::ConnectionsPerAddr {
                addr: key,
                open,
                max: self.max_per_addr,
            });
        }
        *n += 1;
        Ok(())
    }

    /// A connection from `ip` closed.
    pub fn close(&mut self, ip: IpAddr) {
        let key = AddrKey::of(ip);
        if let Some(n) = self.open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&key);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queued-cell memory
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct CircQueue {
    /// FIFO of (time queued, bytes); adjacent charges at the same instant are merged.
    chunks: VecDeque<(Instant, usize)>,
    bytes: usize,
}

/// Memory accounting for queued cells, keyed by circuit.
///
/// Circuits [`charge`](MemQuota::charge) bytes when they queue cells and
/// [`release`](MemQuota::release) them when the cells leave (oldest first: a queue is FIFO).
/// When the total passes the limit, [`reclaim`](MemQuota::reclaim) names the circuits to kill:
/// those whose oldest queued byte is oldest go first, until the total is at most 90 % of the
/// limit. The named circuits are dropped from the accounting. Call
/// [`remove`](MemQuota::remove) when a circuit closes.
#[derive(Debug, Clone)]
pub struct MemQuota<K> {
    limit: usize,
    total: usize,
    peak: usize,
    circuits: HashMap<K, CircQueue>,
}

impl<K: Eq + Hash + Clone> MemQuota<K> {
    /// A quota of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            total: 0,
            peak: 0,
            circuits: HashMap::new(),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The level `reclaim` brings usage down to: 90 % of the limit.
    pub fn low_water(&self) -> usize {
        self.limit / 10 * 9 + self.limit % 10 * 9 / 10
    }

    /// Bytes queued now, over all circuits.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Highest total seen (high-water mark), for metrics.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Bytes queued on one circuit.
    pub fn queued(&self, circuit: &K) -> usize {
        self.circuits.get(circuit).map_or(0, |q| q.bytes)
    }

    /// When the oldest byte still queued on `circuit` was queued.
    pub fn oldest(&self, circuit: &K) -> Option<Instant> {
        self.circuits
            .get(circuit)
            .and_then(|q| q.chunks.front().map(|c| c.0))
    }

    /// Whether usage is above the limit (time to call [`reclaim`](Self::reclaim)).
    pub fn is_over_limit(&self) -> bool {
        self.total > self.limit
    }

    /// `circuit` queued `bytes` at `now`. Returns whether usage is now above the limit.
    pub fn charge(&mut self, circuit: K, bytes: usize, now: Instant) -> bool {
        if bytes > 0 {
            let q = self.circuits.entry(circuit).or_default();
            match q.chunks.back_mut() {
                Some((t, n)) if *t == now => *n = n.saturating_add(bytes),
                _ => q.chunks.push_back((now, bytes)),
            }
            q.bytes = q.bytes.saturating_add(bytes);
            self.total = self.total.saturating_add(bytes);
            self.peak = self.peak.max(self.total);
        }
        self.is_over_limit()
    }

    /// `circuit` sent `bytes` of its queue (the oldest bytes). Releasing more than is queued
    /// releases what is queued.
    pub fn release(&mut self, circuit: &K, mut bytes: usize) {
        let Some(q) = self.circuits.get_mut(circuit) else {
            return;
        };
        let freed = bytes.min(q.bytes);
        while bytes > 0 {
            let Some(front) = q.chunks.front_mut() else {
                break;
            };
            if front.1 > bytes {
                front.1 -= bytes;
                bytes = 0;
            } else {
                bytes -= front.1;
                q.chunks.pop_front();
            }
        }
        q.bytes -= freed;
        self.total -= freed;
        // The entry (and its queue's allocation) stays until `remove`: a circuit whose queue
        // empties and refills on every cell costs no allocation.
    }

    /// The circuit closed: its queue is gone. Returns the bytes it held.
    pub fn remove(&mut self, circuit: &K) -> usize {
        match self.circuits.remove(circuit) {
            Some(q) => {
                self.total -= q.bytes;
                q.bytes
            }
            None => 0,
        }
    }

    /// If usage is above the limit: the circuits to kill, oldest queued data first, until usage
    /// is at most [`low_water`](Self::low_water). They are removed from the accounting; the
    /// caller destroys them (both directions). Empty when usage is within the limit.
    pub fn reclaim(&mut self) -> Vec<K> {
        if !self.is_over_limit() {
            return Vec::new();
        }
        let mut by_age: Vec<(Instant, K)> = self
            .circuits
            .iter()
            .filter_map(|(k, q)| q.chunks.front().map(|c| (c.0, k.clone())))
            .collect();
        by_age.sort_by_key(|(t, _)| *t);
        let target = self.low_water();
        let mut killed = Vec::new();
        for (_, k) in by_age {
            if self.total <= target {
                break;
            }
            self.remove(&k);
            killed.push(k);
        }
        killed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refusal_then_recovery() {
        let t0 = Instant::now();
        let mut l = CircuitCreationLimiter::new(CircuitRateConfig::default(), 7);
        let a = ip("203.0.113.5");
        for i in 0..90 {
            assert!(l.on_create(a, t0).is_ok(), "creation {i} of the burst");
        }
        let err = l.on_create(a, t0).unwrap_err();
        let LimitError::CircuitRate { remaining, .. } = err else {
            panic!("wrong error {err:?}");
        };
        assert!(remaining >= Duration::from_secs(3600));
        assert!(remaining <= Duration::from_secs(5400));
        assert!(l.is_refused(a, t0));
        // Another address is unaffected.
        assert!(l.on_create(ip("203.0.113.6"), t0).is_ok());
        // Still refused well inside the period even though tokens would have refilled.
        assert!(l.on_create(a, t0 + Duration::from_secs(600)).is_err());
        // After the longest possible period: a full bucket again.
        let later = t0 + Duration::from_secs(5401);
        assert!(!l.is_refused(a, later));
        for _ in 0..90 {
            assert!(l.on_create(a, later).is_ok());
        }
        assert!(l.on_create(a, later).is_err());
    }

    #[test]
    fn steady_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut l = CircuitCreationLimiter::new(CircuitRateConfig::default(), 1);
        let a = ip("198.51.100.1");
        // 3 per second for 10 minutes after spending the burst.
        for _ in 0..90 {
            l.on_create(a, t0).unwrap();
        }
        for s in 1..=600u64 {
            let t = t0 + Duration::from_secs(s);
            for _ in 0..3 {
                assert!(l.on_create(a, t).is_ok(), "refused at second {s}");
            }
        }
        // A 4th in the same second empties the bucket.
        assert!(l.on_create(a, t0 + Duration::from_secs(600)).is_err());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t0 = Instant::now();
        let cfg = CircuitRateConfig {
            burst: 2,
            ..CircuitRateConfig::default()
        };
        let mut l = CircuitCreationLimiter::new(cfg, 1);
        l.on_create(ip("2001:db8:1:2::1"), t0).unwrap();
        l.on_create(ip("2001:db8:1:2::ffff"), t0).unwrap();
        assert!(l.on_create(ip("2001:db8:1:2:3::9"), t0).is_err());
        assert!(l.on_create(ip("2001:db8:1:3::1"), t0).is_ok());
        assert_eq!(
            AddrKey::of(ip("::ffff:192.0.2.1")),
            AddrKey::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn table_is_bounded_and_evicts_least_recently_seen() {
        let t0 = Instant::now();
        let cfg = CircuitRateConfig {
            max_tracked: 100,
            ..CircuitRateConfig::default()
        };
        let mut l = CircuitCreationLimiter::new(cfg, 3);
        let first = ip("10.0.0.1");
        l.on_create(first, t0).unwrap();
        for i in 0..1000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            let t = t0 + Duration::from_millis(u64::from(i) + 1);
            l.on_create(a, t).unwrap();
            // Keep `first` recent (refused or not): it must survive eviction.
            let _ = l.on_create(first, t);
            assert!(l.tracked() <= 100);
        }
        assert_eq!(l.tracked(), 100);
        assert!(l.table.contains_key(&AddrKey::of(first)));
        assert_eq!(l.by_age.len(), l.table.len());
        // The oldest of the 1000 is gone, the newest is kept.
        assert!(!l.table.contains_key(&AddrKey::of(ip("11.0.0.0"))));
        assert!(l.table.contains_key(&AddrKey::of(ip("11.0.3.231"))));
    }

    #[test]
    fn prune_drops_idle_but_keeps_refused() {
        let t0 = Instant::now();
        let cfg = CircuitRateConfig {
            burst: 3,
            ..CircuitRateConfig::default()
        };
        let mut l = CircuitCreationLimiter::new(cfg, 3);
        l.on_create(ip("192.0.2.1"), t0).unwrap();
        for _ in 0..3 {
            l.on_create(ip("192.0.2.2"), t0).unwrap();
        }
        assert!(l.on_create(ip("192.0.2.2"), t0).is_err());
        l.prune(t0 + Duration::from_secs(10));
        assert_eq!(l.tracked(), 1);
        assert!(l.is_refused(ip("192.0.2.2"), t0 + Duration::from_secs(10)));
        assert_eq!(l.by_age.len(), 1);
    }

    #[test]
    fn defence_period_jitter_depends_on_seed_only() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut l = CircuitCreationLimiter::new(
                CircuitRateConfig {
                    burst: 1,
                    ..CircuitRateConfig::default()
                },
                seed,
            );
            (0..20u8)
                .map(|i| {
                    let a = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i));
                    l.on_create(a, t0).unwrap();
                    match l.on_create(a, t0) {
                        Err(LimitError::CircuitRate { remaining, .. }) => remaining,
                        other => panic!("{other:?}"),
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        let periods = run(42);
        assert!(periods.iter().any(|p| *p != periods[0]), "no jitter");
    }

    #[test]
    fn circuit_cap_refuses_at_max_and_recovers() {
        let mut c = CircuitCap::new(2);
        c.try_open().unwrap();
        c.try_open().unwrap();
        assert_eq!(
            c.try_open(),
            Err(LimitError::CircuitCap { open: 2, max: 2 })
        );
        c.close();
        assert!(c.try_open().is_ok());
        assert_eq!(c.open(), 2);
    }

    #[test]
    fn connections_per_address() {
        let mut c = ConnectionLimiter::new(2);
        let a = ip("192.0.2.1");
        c.try_open(a).unwrap();
        c.try_open(a).unwrap();
        assert!(matches!(
            c.try_open(a),
            Err(LimitError::ConnectionsPerAddr {
                open: 2,
                max: 2,
                ..
            })
        ));
        assert!(c.try_open(ip("192.0.2.2")).is_ok());
        c.close(a);
        assert!(c.try_open(a).is_ok());
        c.close(a);
        c.close(a);
        c.close(a); // extra close is harmless
        assert_eq!(c.open_from(a), 0);
        assert_eq!(c.tracked(), 1);
    }

    #[test]
    fn memquota_kills_oldest_data_first_until_below_90_percent() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut q: MemQuota<u32> = MemQuota::new(1000);
        assert!(!q.charge(1, 300, t0)); // oldest
        assert!(!q.charge(2, 300, t0 + s(1)));
        assert!(!q.charge(3, 300, t0 + s(2)));
        // Circuit 1 drains its old data and queues new: its oldest byte is now the newest.
        q.release(&1, 300);
        assert_eq!(q.queued(&1), 0);
        assert!(!q.charge(1, 300, t0 + s(5)));
        assert!(q.charge(4, 500, t0 + s(3)));
        assert_eq!(q.total(), 1400);
        assert_eq!(q.peak(), 1400);
        // 1400 > 1000: kill oldest-first (2, then 3) until ≤ 900; 4 and 1 survive.
        let killed = q.reclaim();
        assert_eq!(killed, vec![2, 3]);
        assert_eq!(q.total(), 800);
        assert_eq!(q.queued(&4), 500);
        assert!(q.total() <= q.low_water());
        assert_eq!(q.queued(&2), 0);
        assert!(q.reclaim().is_empty());
    }

    #[test]
    fn memquota_partial_release_keeps_fifo_age() {
        let t0 = Instant::now();
        let mut q: MemQuota<&str> = MemQuota::new(10_000);
        q.charge("a", 100, t0);
        q.charge("a", 100, t0 + Duration::from_secs(1));
        q.release(&"a", 150);
        assert_eq!(q.queued(&"a"), 50);
        assert_eq!(q.oldest(&"a"), Some(t0 + Duration::from_secs(1)));
        q.release(&"a", 1_000); // more than queued
        assert_eq!(q.total(), 0);
        assert_eq!(q.oldest(&"a"), None);
        q.charge("b", 10, t0);
        assert_eq!(q.remove(&"b"), 10);
        assert_eq!(q.total(), 0);
        assert_eq!(MemQuota::<u8>::new(1000).low_water(), 900);
    }
}
