//! The fake-address map of TUN mode (Tor's `AutomapHostsOnResolve`): each hostname a DNS
//! query names gets an address from a private range, and a connection to that address
//! becomes a stream to the hostname, which the exit resolves.
//!
//! Sans-IO: time is passed in. Bounds: a mapping expires `idle_ttl` after it was last used
//! (by a DNS answer or a connection), and at most `capacity` mappings exist; when full, the
//! least recently used one is dropped. The answer TTL given to resolvers is shorter than
//! `idle_ttl`, so a cached answer never outlives its mapping while it is in use. Addresses
//! are handed out round-robin through the range, so a freed address is reused as late as
//! possible (a stale cache entry is then unlikely to reach a new name).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use onionvpn_proto::relaymsg::Hostname;

use super::dns::{answer_a, answer_empty, error_reply, parse_query, Rcode, CLASS_IN, TYPE_A};

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    /// The network address (host bits zero after [`Ipv4Net::new`]).
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// A network; host bits of `addr` are cleared. `None` if `prefix` > 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        (prefix <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    /// Number of addresses (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{p}` is not a prefix length 0-32"))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| format!("bad network `{s}`"))
    }
}

/// Settings of the fake-address map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeIpConfig {
    /// The range handed out (at least a /30; the first and last addresses are never used).
    pub range: Ipv4Net,
    /// Most mappings kept at once.
    pub capacity: usize,
    /// How long an unused mapping lives.
    pub idle_ttl: Duration,
    /// TTL of DNS answers (kept well under `idle_ttl`).
    pub answer_ttl: Duration,
}

impl Default for FakeIpConfig {
    fn default() -> Self {
        FakeIpConfig {
            range: DEFAULT_FAKE_RANGE,
            capacity: 65_536,
            idle_ttl: Duration::from_secs(30 * 60),
            answer_ttl: Duration::from_secs(60),
        }
    }
}

/// Default fake range: 10.192.0.0/10, as transparent-proxy guides for Tor use.
pub const DEFAULT_FAKE_RANGE: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(10, 192, 0, 0),
    prefix: 10,
};

struct Entry {
    name: Hostname,
    last_used: Instant,
    /// Position in the LRU order.
    tick: u64,
}

/// Hostname ⇄ fake address map with TTL and LRU bounds.
pub struct FakeIpMap {
    cfg: FakeIpConfig,
    by_name: HashMap<Hostname, u32>,
    by_addr: HashMap<u32, Entry>,
    /// LRU order: tick → address.
    lru: BTreeMap<u64, u32>,
    next_tick: u64,
    /// Next offset to try in the range.
    cursor: u64,
}

impl std::fmt::Debug for FakeIpMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the names: they are destinations.
        f.debug_struct("FakeIpMap")
            .field("range", &self.cfg.range)
            .field("mappings", &self.by_addr.len())
            .finish()
    }
}

impl FakeIpMap {
    /// An empty map. The capacity is clamped to the usable addresses of the range.
    pub fn new(mut cfg: FakeIpConfig) -> FakeIpMap {
        let usable = cfg.range.size().saturating_sub(2).max(1);
        cfg.capacity = cfg
            .capacity
            .clamp(1, usize::try_from(usable).unwrap_or(usize::MAX));
        FakeIpMap {
            cfg,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            cursor: 1,
        }
    }

    /// The settings (capacity after clamping).
    pub fn config(&self) -> &FakeIpConfig {
        &self.cfg
    }

    /// Number of live mappings (expired ones may still count until the next call that
    /// expires them).
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether there is no mapping.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Whether `ip` is in the fake range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.cfg.range.contains(ip)
    }

    fn touch(&mut self, addr: u32, now: Instant) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(e) = self.by_addr.get_mut(&addr) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            e.last_used = now;
            self.lru.insert(tick, addr);
        }
    }

    fn remove(&mut self, addr: u32) {
        if let Some(e) = self.by_addr.remove(&addr) {
            self.lru.remove(&e.tick);
            self.by_name.remove(&e.name);
        }
    }

    /// Drops every mapping unused for `idle_ttl`.
    pub fn expire(&mut self, now: Instant) {
        // The LRU order is also last-use order, so expired entries are at its front.
        while let Some((_, &addr)) = self.lru.first_key_value() {
            let stale = self
                .by_addr
                .get(&addr)
                .is_none_or(|e| now.saturating_duration_since(e.last_used) >= self.cfg.idle_ttl);
            if !stale {
                break;
            }
            self.remove(addr);
        }
    }

    /// The fake address of `name`, allocating one if needed (evicting the least recently
    /// used mapping when full).
    pub fn address_for(&mut self, name: &Hostname, now: Instant) -> Ipv4Addr {
        self.expire(now);
        if let Some(&addr) = self.by_name.get(name) {
            self.touch(addr, now);
            return Ipv4Addr::from(addr);
        }
        if self.by_addr.len() >= self.cfg.capacity {
            if let Some((_, &oldest)) = self.lru.first_key_value() {
                self.remove(oldest);
            }
        }
        let base = u32::from(self.cfg.range.addr);
        let size = self.cfg.range.size();
        // Usable offsets are 1..size-1 (not the network or broadcast address); fewer than
        // `capacity` are taken, so this finds one within capacity + 1 steps.
        let span = size.saturating_sub(2).max(1);
        let mut addr = base;
        for _ in 0..=self.cfg.capacity {
            let off = 1 + (self.cursor - 1) % span;
            self.cursor = off % span + 1;
            addr = base.wrapping_add(off as u32);
            if !self.by_addr.contains_key(&addr) {
                break;
            }
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.by_addr.insert(
            addr,
            Entry {
                name: name.clone(),
                last_used: now,
                tick,
            },
        );
        self.lru.insert(tick, addr);
        self.by_name.insert(name.clone(), addr);
        Ipv4Addr::from(addr)
    }

    /// The hostname mapped to `ip`, refreshing the mapping; `None` if none (or expired).
    pub fn lookup(&mut self, ip: Ipv4Addr, now: Instant) -> Option<Hostname> {
        self.expire(now);
        let addr = u32::from(ip);
        let name = self.by_addr.get(&addr)?.name.clone();
        self.touch(addr, now);
        Some(name)
    }

    /// Answers one DNS query datagram: an `A` record from the map for a hostname, an empty
    /// answer for other types, NXDOMAIN for names a BEGIN cannot carry, an error answer or
    /// nothing for malformed datagrams.
    pub fn answer(&mut self, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        let q = match parse_query(datagram) {
            Ok(q) => q,
            Err(e) => return error_reply(datagram, &e),
        };
        if q.qclass != CLASS_IN {
            return Some(answer_empty(&q, Rcode::Refused));
        }
        let Some(name) = q.hostname() else {
            return Some(answer_empty(&q, Rcode::NxDomain));
        };
        if q.qtype != TYPE_A {
            return Some(answer_empty(&q, Rcode::NoError));
        }
        let addr = self.address_for(&name, now);
        let ttl = u32::try_from(self.cfg.answer_ttl.as_secs()).unwrap_or(u32::MAX);
        Some(answer_a(&q, addr, ttl))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::dns::TYPE_AAAA;
    use super::*;

    fn name(s: &str) -> Hostname {
        s.parse().unwrap()
    }

    fn small(capacity: usize) -> FakeIpMap {
        FakeIpMap::new(FakeIpConfig {
            range: "10.99.0.0/24".parse().unwrap(),
            capacity,
            idle_ttl: Duration::from_secs(100),
            answer_ttl: Duration::from_secs(10),
        })
    }

    #[test]
    fn same_name_same_address_and_back() {
        let mut m = small(10);
        let t = Instant::now();
        let a = m.address_for(&name("a.test"), t);
        let b = m.address_for(&name("b.test"), t);
        assert_ne!(a, b);
        assert!(m.in_range(a) && m.in_range(b));
        assert_eq!(m.address_for(&name("a.test"), t), a);
        assert_eq!(m.lookup(a, t), Some(name("a.test")));
        assert_eq!(m.lookup(b, t), Some(name("b.test")));
        assert_eq!(m.lookup(Ipv4Addr::new(10, 99, 0, 200), t), None);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn mappings_expire_when_idle_and_use_refreshes_them() {
        let mut m = small(10);
        let t0 = Instant::now();
        let a = m.address_for(&name("a.test"), t0);
        let b = m.address_for(&name("b.test"), t0);
        // A connection to `a` at 90 s keeps it; `b` is idle.
        assert!(m.lookup(a, t0 + Duration::from_secs(90)).is_some());
        let t1 = t0 + Duration::from_secs(150);
        assert_eq!(m.lookup(b, t1), None, "idle mapping expired");
        assert_eq!(m.lookup(a, t1), Some(name("a.test")), "used mapping kept");
        assert_eq!(m.len(), 1);
        assert_eq!(m.lookup(a, t1 + Duration::from_secs(100)), None);
        assert!(m.is_empty());
    }

    #[test]
    fn capacity_evicts_least_recently_used() {
        let mut m = small(3);
        let t = Instant::now();
        let a = m.address_for(&name("a.test"), t);
        let b = m.address_for(&name("b.test"), t);
        let c = m.address_for(&name("c.test"), t);
        // Use `a` again: `b` is now the least recently used.
        m.lookup(a, t);
        let d = m.address_for(&name("d.test"), t);
        assert_eq!(m.len(), 3);
        assert_eq!(m.lookup(b, t), None);
        assert_eq!(m.lookup(a, t), Some(name("a.test")));
        assert_eq!(m.lookup(c, t), Some(name("c.test")));
        assert_eq!(m.lookup(d, t), Some(name("d.test")));
        assert_ne!(d, a);
        assert_ne!(d, c);
    }

    #[test]
    fn never_hands_out_network_or_broadcast_and_wraps() {
        let mut m = small(1000); // clamped to 254
        assert_eq!(m.config().capacity, 254);
        let t = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for i in 0..600 {
            let a = m.address_for(&name(&format!("h{i}.test")), t);
            let last = a.octets()[3];
            assert!(last != 0 && last != 255, "{a}");
            assert!(m.in_range(a));
            seen.insert(a);
        }
        assert_eq!(seen.len(), 254);
        assert_eq!(m.len(), 254);
        // A /32 range still works (one address, reused).
        let mut one = FakeIpMap::new(FakeIpConfig {
            range: "10.1.2.3/32".parse().unwrap(),
            ..FakeIpConfig::default()
        });
        let x = one.address_for(&name("x.test"), t);
        let y = one.address_for(&name("y.test"), t);
        assert_eq!(x, y);
        assert_eq!(one.lookup(y, t), Some(name("y.test")));
    }

    #[test]
    fn dns_answers() {
        let mut m = small(10);
        let t = Instant::now();
        let q = super::super::dns::tests::query(9, "Web.Test", TYPE_A);
        let a = m.answer(&q, t).unwrap();
        let ip = Ipv4Addr::new(
            a[a.len() - 4],
            a[a.len() - 3],
            a[a.len() - 2],
            a[a.len() - 1],
        );
        assert!(m.in_range(ip));
        assert_eq!(m.lookup(ip, t), Some(name("web.test")));
        // AAAA: NOERROR, no answer; no mapping needed.
        let q6 = super::super::dns::tests::query(10, "v6.test", TYPE_AAAA);
        let a6 = m.answer(&q6, t).unwrap();
        assert_eq!(a6[3] & 0x0f, 0);
        assert_eq!(&a6[6..8], &[0, 0]);
        // A name a BEGIN cannot carry: NXDOMAIN.
        let qb = super::super::dns::tests::query(11, "bad_name.test", TYPE_A);
        assert_eq!(m.answer(&qb, t).unwrap()[3] & 0x0f, Rcode::NxDomain as u8);
        // Garbage: nothing.
        assert!(m.answer(&[1, 2, 3], t).is_none());
        assert_eq!(m.len(), 1);
    }

    proptest::proptest! {
        /// Whatever arrives on UDP/53, the responder does not panic, and an answer echoes the
        /// id, is a response, stays small; an A answer maps back to the queried name.
        #[test]
        fn any_datagram_gets_a_sane_answer_or_none(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut m = small(4);
            let t = Instant::now();
            if let Some(a) = m.answer(&data, t) {
                proptest::prop_assert!(a.len() >= 12 && a.len() <= data.len() + 16);
                proptest::prop_assert_eq!(&a[..2], &data[..2]);
                proptest::prop_assert_eq!(a[2] & 0x80, 0x80);
                if let Ok(q) = parse_query(&data) {
                    if q.qtype == TYPE_A && a[7] == 1 {
                        let n = a.len();
                        let ip = Ipv4Addr::new(a[n - 4], a[n - 3], a[n - 2], a[n - 1]);
                        proptest::prop_assert_eq!(m.lookup(ip, t), q.hostname());
                    }
                }
            }
        }
    }
}
