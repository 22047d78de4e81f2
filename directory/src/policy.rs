//! Exit policy summary carried in a descriptor, and the check used by exits and by path selection.
//!
//! A policy is a first-match list of port-range rules with a default action, plus one flag that
//! decides whether private, loopback and link-local destinations are allowed. The default policy
//! (and every policy without the flag) refuses those destinations whatever the port rules say,
//! so an exit never reaches into its operator's own network by accident.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most port rules a policy may carry (bounded so that a descriptor stays within its size limit).
pub const MAX_POLICY_RULES: usize = 32;

/// What a rule does with a matching port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyAction {
    /// Refuse the connection.
    Reject,
    /// Allow the connection.
    Accept,
}

impl PolicyAction {
    /// Wire byte: 0 = reject, 1 = accept.
    pub fn to_byte(self) -> u8 {
        match self {
            PolicyAction::Reject => 0,
            PolicyAction::Accept => 1,
        }
    }

    /// Parses a wire byte; `None` for anything but 0 or 1.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(PolicyAction::Reject),
            1 => Some(PolicyAction::Accept),
            _ => None,
        }
    }
}

/// One rule: an inclusive port range `lo..=hi` (1 ≤ lo ≤ hi) and its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRule {
    /// Action taken when the port is in range.
    pub action: PolicyAction,
    /// First port of the range (≥ 1).
    pub lo: u16,
    /// Last port of the range (≥ `lo`).
    pub hi: u16,
}

/// Where a client wants to go: an address, or a hostname that the exit resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A literal IP address.
    Ip(IpAddr),
    /// A hostname; resolution happens at the exit, which checks the resolved address again.
    Host(&'a str),
}

/// Exit policy summary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExitPolicy {
    /// Port rules, first match wins.
    pub rules: Vec<PortRule>,
    /// Action for ports that no rule matches.
    pub default: PolicyAction,
    /// Allow private, loopback, link-local and other non-global destinations. Off by default.
    pub allow_private: bool,
}

impl Default for ExitPolicy {
    /// The non-exit policy: rejects everything, private ranges refused.
    fn default() -> Self {
        Self::reject_all()
    }
}

impl ExitPolicy {
    /// A relay that is not an exit.
    pub fn reject_all() -> Self {
        Self {
            rules: Vec::new(),
            default: PolicyAction::Reject,
            allow_private: false,
        }
    }

    /// An exit that accepts every port on public destinations.
    pub fn accept_all() -> Self {
        Self {
            rules: Vec::new(),
            default: PolicyAction::Accept,
            allow_private: false,
        }
    }

    /// An exit that accepts only the given inclusive port ranges on public destinations.
    pub fn accept_ports(ranges: &[(u16, u16)]) -> Self {
        Self {
            rules: ranges
                .iter()
                .map(|&(lo, hi)| PortRule {
                    action: PolicyAction::Accept,
                    lo,
                    hi,
                })
                .collect(),
            default: PolicyAction::Reject,
            allow_private: false,
        }
    }

    /// Action for `port` from the rules alone (no address check).
    pub fn port_action(&self, port: u16) -> PolicyAction {
        self.rules
            .iter()
            .find(|r| r.lo <= port && port <= r.hi)
            .map_or(self.default, |r| r.action)
    }

    /// Whether this relay can exit to anything at all.
    pub fn is_exit(&self) -> bool {
        self.default == PolicyAction::Accept
            || self.rules.iter().any(|r| r.action == PolicyAction::Accept)
    }

    /// Whether the policy allows a connection to `target` on `port`.
    ///
    /// Port 0 is never allowed. A literal address in a non-global range (see
    /// [`is_non_global`]) is refused unless `allow_private` is set. A hostname passes the address
    /// check here; the exit must call this again with the resolved address.
    pub fn allows(&self, target: &Target<'_>, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        if let Target::Ip(ip) = target {
            if !self.allow_private && is_non_global(ip) {
                return false;
            }
        }
        self.port_action(port) == PolicyAction::Accept
    }
}

/// Addresses that the default policy refuses: unspecified, loopback, private (RFC 1918, IPv6
/// ULA fc00::/7), link-local (169.254/16, fe80::/10), shared address space 100.64/10, broadcast,
/// multicast, "this network" 0/8, and IPv4-mapped/compatible IPv6 forms of those.
pub fn is_non_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_non_global(v4),
        IpAddr::V6(v6) => v6_non_global(v6),
    }
}

fn v4_non_global(ip: &Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

fn v6_non_global(ip: &Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_non_global(&v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        // IPv4-compatible (deprecated) ::a.b.c.d
        || (s[0..6] == [0, 0, 0, 0, 0, 0] && v4_non_global(&Ipv4Addr::new(
            (s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_exit_refuses_private_loopback_link_local() {
        let p = ExitPolicy::accept_all();
        for a in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.1.1",
            "192.168.0.1",
            "172.16.5.5",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!p.allows(&Target::Ip(ip), 443), "{a} allowed");
        }
        assert!(p.allows(&Target::Ip("1.1.1.1".parse().unwrap()), 443));
        assert!(p.allows(&Target::Ip("2606:4700::1111".parse().unwrap()), 443));
        assert!(p.allows(&Target::Host("example.com"), 80));
        assert!(!p.allows(&Target::Host("example.com"), 0));
        let mut open = p.clone();
        open.allow_private = true;
        assert!(open.allows(&Target::Ip("10.1.2.3".parse().unwrap()), 443));
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let p = ExitPolicy {
            rules: vec![
                PortRule {
                    action: PolicyAction::Reject,
                    lo: 25,
                    hi: 25,
                },
                PortRule {
                    action: PolicyAction::Accept,
                    lo: 1,
                    hi: 1024,
                },
            ],
            default: PolicyAction::Reject,
            allow_private: false,
        };
        let t = Target::Host("mail.example");
        assert!(!p.allows(&t, 25));
        assert!(p.allows(&t, 80));
        assert!(!p.allows(&t, 8080));
        assert!(p.is_exit());
        assert!(!ExitPolicy::reject_all().is_exit());
    }
}
