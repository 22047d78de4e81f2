//! The channel manager: one open channel per next-hop relay identity, reused by every
//! circuit that extends to it, and the policy on which next-hop addresses EXTEND may reach.
//!
//! A relay connects wherever an EXTEND names. Without a check, any client could use it to
//! open TCP connections into the operator's own network (a router's admin page on
//! 192.168.0.1, services on 127.0.0.1, a cloud metadata service on 169.254.169.254) and learn
//! from the timing of the DESTROY whether something listens there. [`ExtendPolicy`] refuses
//! such addresses unless the operator opted in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use onionvpn_chan::{connect, ChanError, ChannelConfig, ChannelHandle};
use onionvpn_directory::policy::is_non_global;
use tracing::debug;

use crate::redact::sensitive_addr;

/// Which next-hop addresses an EXTEND may make this relay connect to.
///
/// Global unicast addresses with a non-zero port are always allowed. Non-global addresses
/// (private, loopback, link-local, CGNAT, unspecified, multicast, broadcast, and their
/// IPv4-mapped forms: [`is_non_global`]) are refused unless `allow_private` is set, except
/// that loopback addresses are allowed when `allow_loopback` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtendPolicy {
    /// Allow every non-global address: the operator's opt-in
    /// (`exit.policy.allow_private_destinations`), for local test networks.
    pub allow_private: bool,
    /// Allow loopback addresses. The runtime sets this when the relay's own link listener is
    /// bound to a loopback address: only processes on this host can reach such a relay, so
    /// extending to loopback gives them nothing they do not already have.
    pub allow_loopback: bool,
}

/// Whether `ip` is loopback, including its IPv4-mapped IPv6 form.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl ExtendPolicy {
    /// The policy of a relay whose link listener is bound to `listen`, with the operator's
    /// private-destination opt-in `allow_private`.
    pub fn for_listener(listen: SocketAddr, allow_private: bool) -> Self {
        ExtendPolicy {
            allow_private,
            allow_loopback: is_loopback(listen.ip()),
        }
    }

    /// Whether an EXTEND may connect to `addr`.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        if addr.port() == 0 {
            return false;
        }
        let ip = addr.ip();
        if !is_non_global(&ip) || self.allow_private {
            return true;
        }
        self.allow_loopback && is_loopback(ip)
    }
}

/// Why no channel to the next hop could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChanMgrError {
    /// Every address the EXTEND named is refused by the [`ExtendPolicy`].
    #[error("all {count} next-hop address(es) are private, loopback or link-local, which this relay does not extend to")]
    Refused {
        /// How many addresses were refused.
        count: usize,
    },
    /// The EXTEND named no address.
    #[error("the EXTEND named no address")]
    NoAddress,
    /// Connecting or the link handshake failed (the last address's error).
    #[error("connecting to the next hop: {0}")]
    Chan(#[from] ChanError),
}

/// Channels this relay opened toward other relays, keyed by the identity they proved.
#[derive(Debug)]
pub struct ChanMgr {
    cfg: ChannelConfig,
    policy: ExtendPolicy,
    open: Mutex<HashMap<[u8; 32], ChannelHandle>>,
}

impl ChanMgr {
    /// An empty manager opening channels with `cfg`, refusing every non-global address
    /// (the default [`ExtendPolicy`]).
    pub fn new(cfg: ChannelConfig) -> Self {
        Self::with_policy(cfg, ExtendPolicy::default())
    }

    /// An empty manager opening channels with `cfg` to the addresses `policy` allows.
    pub fn with_policy(cfg: ChannelConfig, policy: ExtendPolicy) -> Self {
        ChanMgr {
            cfg,
            policy,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The address policy.
    pub fn policy(&self) -> ExtendPolicy {
        self.policy
    }

    /// Channels open now (closed ones are pruned first).
    pub fn len(&self) -> usize {
        let mut map = self.lock();
        map.retain(|_, h| !h.is_closed());
        map.len()
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], ChannelHandle>> {
        // A poisoned map only means a panic elsewhere; the handles in it are still valid.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An open channel to the relay `identity`: the existing one, or a new one to the first
    /// of `addrs` that the policy allows, answers and proves `identity` with `link_key`.
    /// Refused addresses are never connected to.
    pub async fn get(
        &self,
        identity: [u8; 32],
        addrs: &[SocketAddr],
        link_key: [u8; 32],
    ) -> Result<ChannelHandle, ChanMgrError> {
        if let Some(h) = self.lock().get(&identity) {
            if !h.is_closed() {
                return Ok(h.clone());
            }
        }
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.policy.allows(*a))
            .collect();
        if allowed.is_empty() {
            if addrs.is_empty() {
                return Err(ChanMgrError::NoAddress);
            }
            debug!("extending: every next-hop address refused by the extend policy");
            return Err(ChanMgrError::Refused { count: addrs.len() });
        }
        let mut last = ChanError::Closed;
        for addr in allowed {
            match connect(addr, identity, link_key, &self.cfg).await {
                Ok(h) => {
                    let mut map = self.lock();
                    map.retain(|_, h| !h.is_closed());
                    // Two circuits may have raced to connect: both channels work; keep one.
                    map.insert(identity, h.clone());
                    return Ok(h);
                }
                Err(e) => {
                    debug!(addr = %sensitive_addr(addr), "extending: connect failed: {e}");
                    last = e;
                }
            }
        }
        Err(last.into())
    }

    /// Forgets every channel (they close once no circuit uses them).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const NON_GLOBAL: &[&str] = &[
        "10.0.0.1:9001",
        "172.16.0.1:9001",
        "192.168.1.1:80",
        "169.254.169.254:80",
        "100.64.0.1:9001",
        "0.0.0.0:9001",
        "[fd00::1]:9001",
        "[fe80::1]:9001",
        "[::ffff:192.168.0.1]:9001",
        "[::]:9001",
    ];
    const LOOPBACK: &[&str] = &[
        "127.0.0.1:9001",
        "127.3.4.5:22",
        "[::1]:9001",
        "[::ffff:127.0.0.1]:9001",
    ];
    const GLOBAL: &[&str] = &["1.1.1.1:443", "198.51.100.1:9001", "[2001:db8::1]:9001"];

    #[test]
    fn default_refuses_private_loopback_and_link_local() {
        let p = ExtendPolicy::default();
        for s in NON_GLOBAL.iter().chain(LOOPBACK) {
            assert!(!p.allows(a(s)), "{s}");
        }
        for s in GLOBAL {
            assert!(p.allows(a(s)), "{s}");
        }
        assert!(!p.allows(a("1.1.1.1:0")), "port 0");
    }

    #[test]
    fn loopback_listener_allows_loopback_only() {
        let p = ExtendPolicy::for_listener(a("127.0.0.1:0"), false);
        assert!(p.allow_loopback && !p.allow_private);
        for s in LOOPBACK.iter().chain(GLOBAL) {
            assert!(p.allows(a(s)), "{s}");
        }
        for s in NON_GLOBAL {
            assert!(!p.allows(a(s)), "{s}");
        }
        for listen in [
            "0.0.0.0:9001",
            "[::]:9001",
            "192.168.1.5:9001",
            "1.2.3.4:9001",
        ] {
            let p = ExtendPolicy::for_listener(a(listen), false);
            assert!(!p.allows(a("127.0.0.1:9001")), "{listen}");
        }
    }

    #[test]
    fn opt_in_allows_every_non_global_address() {
        let p = ExtendPolicy::for_listener(a("0.0.0.0:9001"), true);
        for s in NON_GLOBAL.iter().chain(LOOPBACK).chain(GLOBAL) {
            assert!(p.allows(a(s)), "{s}");
        }
        assert!(!p.allows(a("10.0.0.1:0")), "port 0");
    }

    #[tokio::test]
    async fn refused_addresses_are_never_connected_to() {
        // Something listens on loopback; the default policy must not even connect.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let mgr = ChanMgr::new(ChannelConfig::default());
        let err = mgr.get([7; 32], &[addr], [9; 32]).await.unwrap_err();
        assert!(matches!(err, ChanMgrError::Refused { count: 1 }), "{err}");
        // A connect would have completed (kernel handshake) before `get` returned.
        let pending = l.accept();
        assert!(
            matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the relay connected to a refused address: {pending:?}"
        );
        assert!(matches!(
            mgr.get([7; 32], &[], [9; 32]).await,
            Err(ChanMgrError::NoAddress)
        ));
        assert!(mgr.is_empty());
    }
}
