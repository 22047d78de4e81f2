//! The self-test (`onionvpn-relay check`, and once at start): does the relay look, from
//! outside, the way a client needs it to?
//!
//! - **reachable**: each advertised address accepts a TCP connection and completes the link
//!   handshake as this relay (a real Noise handshake against the relay's identity and link key,
//!   from a socket outside the relay);
//! - **descriptor**: the descriptor stored in the DHT under the relay's identity parses,
//!   verifies (signature, network, freshness) and matches the relay's keys and addresses;
//! - **discoverable**: the relay's address is announced under its shard's infohash, where
//!   discovery looks;
//! - **exit policy**: the effective policy, summarised, and what is dangerous about it;
//! - **lightning**: whether payments can be received (skipped where no node is configured).
//!
//! Each check ends OK, skipped, or failed with a one-line cause and a one-line fix. The
//! judgements are pure functions of what was observed (unit-tested); [`run_checks`] does the
//! I/O: the link handshake and two DHT lookups through any [`DhtBackend`].

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use onionvpn_chan::{ChanError, ChannelConfig};
use onionvpn_directory::dht::DhtBackend;
use onionvpn_directory::policy::PolicyAction;
use onionvpn_directory::{ExitPolicy, IdentityKey, Network, UncheckedDescriptor};

/// The checks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// The advertised addresses accept a link from outside.
    Reachable,
    /// The descriptor is in the DHT and verifies.
    Descriptor,
    /// The relay is announced where discovery looks.
    Discoverable,
    /// The exit policy is what the operator meant.
    ExitPolicy,
    /// The Lightning node can receive.
    Lightning,
}

impl CheckKind {
    fn label(self) -> &'static str {
        match self {
            CheckKind::Reachable => "reachable",
            CheckKind::Descriptor => "descriptor",
            CheckKind::Discoverable => "discoverable",
            CheckKind::ExitPolicy => "exit policy",
            CheckKind::Lightning => "lightning",
        }
    }
}

/// Why a check failed (one variant per distinct cause, so callers and tests can tell them
/// apart without parsing text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing accepts TCP connections at an advertised address (refused or no route).
    Unreachable,
    /// TCP connects but no handshake answer arrives in time (filtered, or another service).
    NoHandshake,
    /// Something answers but does not prove this relay's keys.
    NotThisRelay,
    /// No descriptor under the relay's identity in the DHT.
    DescriptorMissing,
    /// A descriptor is there but does not parse or verify.
    DescriptorInvalid,
    /// A valid descriptor, but with other keys or addresses than this relay has now.
    DescriptorStale,
    /// The relay's address is not announced under its shard.
    NotAnnounced,
    /// The exit is enabled but accepts no port.
    ExitAcceptsNothing,
    /// Private destinations are allowed on a relay reachable from the internet.
    PrivateDestinationsOpen,
    /// The Lightning node cannot receive payments.
    LightningCannotReceive,
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with a short detail.
    Ok(String),
    /// Not applicable here, with the reason.
    Skipped(String),
    /// Works, but not fully yet (e.g. a Lightning node without inbound capacity), with why.
    Warn(String),
    /// Failed.
    Failed {
        /// The kind of failure.
        failure: Failure,
        /// One line: what is wrong.
        cause: String,
        /// One line: what to do.
        fix: String,
    },
}

fn failed(failure: Failure, cause: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Failed {
        failure,
        cause: cause.into(),
        fix: fix.into(),
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Which check.
    pub kind: CheckKind,
    /// How it ended.
    pub outcome: Outcome,
}

/// All results, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The checks run.
    pub checks: Vec<Check>,
}

impl CheckReport {
    /// Whether no check failed.
    pub fn all_ok(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Failed { .. }))
    }

    /// The outcome of `kind`, if it ran.
    pub fn outcome(&self, kind: CheckKind) -> Option<&Outcome> {
        self.checks
            .iter()
            .find(|c| c.kind == kind)
            .map(|c| &c.outcome)
    }

    /// The failure of `kind`, if it failed.
    pub fn failure(&self, kind: CheckKind) -> Option<Failure> {
        match self.outcome(kind) {
            Some(Outcome::Failed { failure, .. }) => Some(*failure),
            _ => None,
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let l = c.kind.label();
            match &c.outcome {
                Outcome::Ok(d) => writeln!(f, "OK    {l:<13} {d}")?,
                Outcome::Skipped(d) => writeln!(f, "SKIP  {l:<13} {d}")?,
                Outcome::Warn(d) => writeln!(f, "WARN  {l:<13} {d}")?,
                Outcome::Failed { cause, fix, .. } => {
                    writeln!(f, "FAIL  {l:<13} {cause}")?;
                    writeln!(f, "      {:<13} fix: {fix}", "")?;
                }
            }
        }
        Ok(())
    }
}

/// What the checks compare against: the relay's public keys and its configuration.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    /// Identity public key.
    pub identity: [u8; 32],
    /// Link public key.
    pub link_key: [u8; 32],
    /// The network the relay joins.
    pub network: Network,
    /// The addresses it publishes.
    pub addresses: Vec<SocketAddr>,
    /// Whether it is an exit.
    pub exit_enabled: bool,
    /// Its exit policy (as configured; used when `exit_enabled`).
    pub exit_policy: ExitPolicy,
    /// Whether a Lightning node is configured (payments).
    pub lightning: Option<LightningProbe>,
}

/// The result of probing the Lightning node, gathered by the caller (the node lives in the
/// payments layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LightningProbe {
    /// The node can receive now, with the detail (capacity, channels).
    Pass(String),
    /// The node runs but cannot receive yet (no channel, no inbound capacity), with why.
    Warn(String),
    /// The node is broken (not running, listening port closed), with why.
    Fail(String),
}

impl LightningProbe {
    /// The probe from a `wallet receive-check` answer (any other answer is a failure).
    pub fn from_answer(a: &onionvpn_pay::ldk::wallet_cmd::WalletAnswer) -> Self {
        use onionvpn_pay::ldk::wallet_cmd::{CheckLevel, WalletAnswer};
        match a {
            WalletAnswer::ReceiveCheck { level, detail } => match level {
                CheckLevel::Pass => LightningProbe::Pass(detail.clone()),
                CheckLevel::Warn => LightningProbe::Warn(detail.clone()),
                CheckLevel::Fail => LightningProbe::Fail(detail.clone()),
            },
            other => LightningProbe::Fail(format!("unexpected answer: {other:?}")),
        }
    }
}

/// Timeouts of the checks.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// TCP connect plus link handshake, per address.
    pub link_timeout: Duration,
    /// Each DHT lookup.
    pub dht_timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            link_timeout: Duration::from_secs(10),
            dht_timeout: Duration::from_secs(60),
        }
    }
}

impl CheckTarget {
    /// The target for a running relay: keys and addresses from its current descriptor (so a
    /// `listen` port of 0 is checked at the port actually bound), policy as configured.
    pub fn from_descriptor(
        d: &onionvpn_directory::Descriptor,
        network: Network,
        exit_enabled: bool,
    ) -> Self {
        let b = d.body();
        Self {
            identity: b.identity.0,
            link_key: b.link_key.0,
            network,
            addresses: b.addresses.clone(),
            exit_enabled,
            exit_policy: b.exit_policy.clone(),
            lightning: None,
        }
    }
}

/// Whether every bootstrap node is on loopback (a local test network): DHT sockets then
/// bind 127.0.0.1.
pub fn local_bootstrap(bootstrap: &[String]) -> bool {
    !bootstrap.is_empty()
        && bootstrap.iter().all(|s| {
            s.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
                || s.starts_with("localhost:")
        })
}

/// A client-mode DHT node for the checks (it answers no request and is not the relay's).
pub fn check_dht(bootstrap: &[String]) -> std::io::Result<mainline::async_dht::AsyncDht> {
    let mut c = onionvpn_directory::dht::ClientNodeConfig::new(bootstrap.to_vec());
    if local_bootstrap(bootstrap) {
        c.bind = Some(std::net::Ipv4Addr::LOCALHOST);
        c.request_timeout = Duration::from_millis(500);
    }
    onionvpn_directory::dht::client_node(&c)
}

/// Judges one link attempt to `addr`.
pub fn judge_link(addr: SocketAddr, r: Result<(), ChanError>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok(format!("{addr} completed the link handshake as this relay")),
        Err(ChanError::Io { source, .. }) => failed(
            Failure::Unreachable,
            format!("{addr} does not accept connections ({source})"),
            "start the relay; open this TCP port in the firewall and forward it on the router; \
             check advertised_addresses",
        ),
        Err(ChanError::Timeout(_)) => failed(
            Failure::NoHandshake,
            format!("{addr} accepted TCP but did not answer the link handshake in time"),
            "a firewall or another service holds this port: make it reach the relay's `listen`",
        ),
        Err(e) => failed(
            Failure::NotThisRelay,
            format!("{addr} answered but is not this relay ({e})"),
            "another program or relay uses this address: fix advertised_addresses or the port \
             forwarding; restart the relay if its keys changed",
        ),
    }
}

/// Judges the DHT item found under the relay's identity (`None`: none found).
pub fn judge_descriptor(item: Option<&[u8]>, t: &CheckTarget, now: u64) -> Outcome {
    let Some(raw) = item else {
        return failed(
            Failure::DescriptorMissing,
            "no descriptor under this relay's identity in the DHT",
            "keep the relay running (it publishes within a minute of start); allow UDP to the \
             internet; check dht.bootstrap",
        );
    };
    let id = IdentityKey(t.identity);
    let d = match UncheckedDescriptor::parse(raw)
        .and_then(|u| u.check(Some(&id), &t.network.id(), now))
    {
        Ok(d) => d,
        Err(e) => {
            return failed(
                Failure::DescriptorInvalid,
                format!("the descriptor in the DHT does not verify: {e}"),
                "restart the relay so that it publishes a fresh descriptor; check the clock \
                 (NTP) and network.name/key_file",
            )
        }
    };
    let b = d.body();
    if b.link_key.0 != t.link_key {
        return failed(
            Failure::DescriptorStale,
            "the descriptor in the DHT has another link key than this relay's keys",
            "restart the relay so that it republishes (were the keys restored or replaced?)",
        );
    }
    let missing: Vec<String> = t
        .addresses
        .iter()
        .filter(|a| !b.addresses.contains(a))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return failed(
            Failure::DescriptorStale,
            format!(
                "the descriptor in the DHT lacks {} (published before a config change?)",
                missing.join(", ")
            ),
            "restart the relay so that it republishes with the current advertised_addresses",
        );
    }
    let age = now.saturating_sub(b.published);
    Outcome::Ok(format!(
        "seq {}, published {age}s ago, expires in {}s",
        b.seq,
        b.expires.saturating_sub(now)
    ))
}

/// The port the relay announces (that of its first IPv4 address; the DHT is IPv4-only).
pub fn announce_addr(addresses: &[SocketAddr]) -> Option<SocketAddrV4> {
    addresses.iter().find_map(|a| match a {
        SocketAddr::V4(v4) => Some(*v4),
        SocketAddr::V6(_) => None,
    })
}

/// Judges the peers announced under the relay's shard infohash.
pub fn judge_announce(peers: &[SocketAddrV4], t: &CheckTarget) -> Outcome {
    let Some(want) = announce_addr(&t.addresses) else {
        return Outcome::Skipped(
            "no IPv4 address: DHT announces are IPv4-only; clients find IPv6-only relays \
             through peer exchange"
                .into(),
        );
    };
    if peers.contains(&want) {
        return Outcome::Ok(format!(
            "announced at {want} ({} relays in the shard)",
            peers.len()
        ));
    }
    let port_elsewhere = peers.iter().any(|p| p.port() == want.port());
    let cause = if port_elsewhere {
        format!(
            "{want} is not announced; the port is announced from another IP (the DHT sees \
             your traffic from a different address: NAT or a second uplink?)"
        )
    } else {
        format!(
            "{want} is not announced under this relay's shard ({} others are)",
            peers.len()
        )
    };
    failed(
        Failure::NotAnnounced,
        cause,
        "keep the relay running (it announces within a minute, then every 20 min); allow UDP; \
         make advertised_addresses the address your traffic leaves from",
    )
}

/// Accepted port ranges of a policy, after first-match evaluation.
fn accepted_ranges(p: &ExitPolicy) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    let mut port: u32 = 1;
    while port <= u32::from(u16::MAX) {
        let p16 = port as u16;
        // The first rule covering this port decides it, up to where that rule or an earlier
        // one's boundary ends; stepping rule by rule keeps this to at most 2 × 32 steps.
        let (action, end) = match p.rules.iter().find(|r| r.lo <= p16 && p16 <= r.hi) {
            Some(r) => (r.action, r.hi),
            None => (p.default, u16::MAX),
        };
        let end = p
            .rules
            .iter()
            .filter(|r| r.lo > p16)
            .map(|r| r.lo - 1)
            .fold(end, u16::min);
        if action == PolicyAction::Accept {
            match out.last_mut() {
                Some(last) if u32::from(last.1) + 1 == port => last.1 = end,
                _ => out.push((p16, end)),
            }
        }
        port = u32::from(end) + 1;
    }
    out
}

/// A one-line summary of an effective policy, e.g. `accepts 1-24, 26-65535`.
pub fn policy_summary(p: &ExitPolicy) -> String {
    let r = accepted_ranges(p);
    if r.is_empty() {
        return "accepts no port".into();
    }
    let total: u32 = r
        .iter()
        .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
        .sum();
    let shown: Vec<String> = r
        .iter()
        .take(12)
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let more = if r.len() > 12 {
        format!(", … ({} ranges)", r.len())
    } else {
        String::new()
    };
    format!("accepts {total} ports: {}{more}", shown.join(", "))
}

/// Judges the exit policy; `public` is whether the relay is reachable beyond loopback.
pub fn judge_exit_policy(exit_enabled: bool, p: &ExitPolicy, public: bool) -> Outcome {
    if !exit_enabled {
        return Outcome::Ok("middle relay: opens no connections for clients".into());
    }
    if accepted_ranges(p).is_empty() {
        return failed(
            Failure::ExitAcceptsNothing,
            "exit.enabled = true but the policy accepts no port: no client will pick this exit",
            "add accept rules to exit.policy.rules, or set exit.enabled = false",
        );
    }
    if p.allow_private && public {
        return failed(
            Failure::PrivateDestinationsOpen,
            "exit.policy.allow_private_destinations = true on a public relay: clients can reach \
             your LAN, localhost and cloud metadata services",
            "set exit.policy.allow_private_destinations = false",
        );
    }
    let private = if p.allow_private {
        "private destinations allowed (local network)"
    } else {
        "private destinations refused"
    };
    Outcome::Ok(format!("exit, {}; {private}", policy_summary(p)))
}

/// Judges the Lightning node probe.
pub fn judge_lightning(probe: Option<&LightningProbe>) -> Outcome {
    match probe {
        None => Outcome::Skipped(
            "no [lightning] section: the relay charges nothing (see docs/operator.md)".into(),
        ),
        Some(LightningProbe::Pass(d)) => Outcome::Ok(d.clone()),
        Some(LightningProbe::Warn(d)) => Outcome::Warn(d.clone()),
        Some(LightningProbe::Fail(why)) => failed(
            Failure::LightningCannotReceive,
            format!("the Lightning node cannot receive: {why}"),
            "see docs/operator.md, \"Getting paid\"",
        ),
    }
}

/// Runs every check against the relay described by `t`, looking it up through `dht`.
pub async fn run_checks<B: DhtBackend>(
    t: &CheckTarget,
    dht: &B,
    opts: &CheckOptions,
    now: u64,
) -> CheckReport {
    let mut checks = Vec::new();
    let chan = ChannelConfig {
        handshake_timeout: opts.link_timeout,
        ..ChannelConfig::default()
    };
    let mut reach = Vec::new();
    for &addr in &t.addresses {
        let r = onionvpn_chan::connect(addr, t.identity, t.link_key, &chan)
            .await
            .map(drop);
        reach.push(judge_link(addr, r));
    }
    // One line: the first failure, else every address's success.
    let reach = reach
        .iter()
        .find(|o| matches!(o, Outcome::Failed { .. }))
        .cloned()
        .unwrap_or_else(|| match reach.len() {
            0 => Outcome::Skipped("no advertised address".into()),
            1 => reach.remove(0),
            n => Outcome::Ok(format!("all {n} addresses completed the link handshake")),
        });
    checks.push(Check {
        kind: CheckKind::Reachable,
        outcome: reach,
    });

    let salt = t.network.salt().to_vec();
    let item = tokio::time::timeout(opts.dht_timeout, dht.get_descriptor(t.identity, salt))
        .await
        .ok()
        .flatten();
    checks.push(Check {
        kind: CheckKind::Descriptor,
        outcome: judge_descriptor(item.as_ref().map(|(v, _)| v.as_slice()), t, now),
    });

    let id = IdentityKey(t.identity);
    let ih = t.network.infohash(t.network.shard_of(&id));
    let peers = tokio::time::timeout(opts.dht_timeout, dht.get_peers(ih))
        .await
        .unwrap_or_default();
    checks.push(Check {
        kind: CheckKind::Discoverable,
        outcome: judge_announce(&peers, t),
    });

    let public = t.addresses.iter().any(|a| !a.ip().is_loopback());
    checks.push(Check {
        kind: CheckKind::ExitPolicy,
        outcome: judge_exit_policy(t.exit_enabled, &t.exit_policy, public),
    });
    checks.push(Check {
        kind: CheckKind::Lightning,
        outcome: judge_lightning(t.lightning.as_ref()),
    });
    CheckReport { checks }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use onionvpn_directory::policy::PortRule;

    fn policy(rules: &[(PolicyAction, u16, u16)], default: PolicyAction) -> ExitPolicy {
        ExitPolicy {
            rules: rules
                .iter()
                .map(|&(action, lo, hi)| PortRule { action, lo, hi })
                .collect(),
            default,
            allow_private: false,
        }
    }

    #[test]
    fn accepted_ranges_follow_first_match() {
        use PolicyAction::{Accept as A, Reject as R};
        let p = policy(&[(R, 25, 25), (A, 1, 65535)], R);
        assert_eq!(accepted_ranges(&p), vec![(1, 24), (26, 65535)]);
        let p = policy(&[(A, 80, 80), (A, 443, 443)], R);
        assert_eq!(accepted_ranges(&p), vec![(80, 80), (443, 443)]);
        assert_eq!(policy_summary(&p), "accepts 2 ports: 80, 443");
        // Overlapping: the earlier rule wins inside the later one's range.
        let p = policy(&[(R, 100, 200), (A, 50, 150)], A);
        assert_eq!(accepted_ranges(&p), vec![(1, 99), (201, 65535)]);
        assert_eq!(accepted_ranges(&policy(&[], R)), vec![]);
        assert_eq!(accepted_ranges(&policy(&[], A)), vec![(1, 65535)]);
        // Agrees with the policy's own evaluation on every port.
        let p = policy(&[(R, 6881, 6999), (A, 80, 9000), (R, 1, 1000)], A);
        let r = accepted_ranges(&p);
        for port in 1..=u16::MAX {
            let inside = r.iter().any(|&(a, b)| a <= port && port <= b);
            assert_eq!(inside, p.port_action(port) == A, "port {port}");
        }
    }

    #[test]
    fn exit_policy_judgements() {
        use PolicyAction::{Accept as A, Reject as R};
        let none = policy(&[], R);
        assert!(matches!(
            judge_exit_policy(false, &none, true),
            Outcome::Ok(_)
        ));
        assert!(matches!(
            judge_exit_policy(true, &none, true),
            Outcome::Failed {
                failure: Failure::ExitAcceptsNothing,
                ..
            }
        ));
        let mut open = policy(&[(A, 1, 65535)], R);
        open.allow_private = true;
        assert!(matches!(
            judge_exit_policy(true, &open, true),
            Outcome::Failed {
                failure: Failure::PrivateDestinationsOpen,
                ..
            }
        ));
        match judge_exit_policy(true, &open, false) {
            Outcome::Ok(s) => assert!(s.contains("65535 ports") && s.contains("allowed"), "{s}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn link_failures_are_told_apart() {
        let a: SocketAddr = "192.0.2.1:9001".parse().unwrap();
        let io = ChanError::Io {
            context: "connecting to relay",
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let kinds = [
            (Err(io), Failure::Unreachable),
            (
                Err(ChanError::Timeout(Duration::from_secs(1))),
                Failure::NoHandshake,
            ),
            (Err(ChanError::Eof), Failure::NotThisRelay),
        ];
        for (r, want) in kinds {
            match judge_link(a, r) {
                Outcome::Failed {
                    failure,
                    cause,
                    fix,
                } => {
                    assert_eq!(failure, want);
                    assert!(cause.contains("192.0.2.1:9001") && !fix.is_empty());
                }
                o => panic!("{o:?}"),
            }
        }
        assert!(matches!(judge_link(a, Ok(())), Outcome::Ok(_)));
    }

    #[test]
    fn report_prints_ok_or_cause_and_fix() {
        let r = CheckReport {
            checks: vec![
                Check {
                    kind: CheckKind::Reachable,
                    outcome: Outcome::Ok("fine".into()),
                },
                Check {
                    kind: CheckKind::Descriptor,
                    outcome: failed(Failure::DescriptorMissing, "gone", "wait"),
                },
            ],
        };
        let s = r.to_string();
        assert!(s.contains("OK    reachable"), "{s}");
        assert!(
            s.contains("FAIL  descriptor    gone") && s.contains("fix: wait"),
            "{s}"
        );
        assert!(!r.all_ok());
        assert_eq!(
            r.failure(CheckKind::Descriptor),
            Some(Failure::DescriptorMissing)
        );
        assert_eq!(r.failure(CheckKind::Reachable), None);
    }
}
