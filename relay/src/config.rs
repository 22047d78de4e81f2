//! The relay's TOML configuration.
//!
//! Every key has a default (see `relay/relay.example.toml`, which documents each one and is
//! checked against [`Config::default`] by a test). Loading is strict: an unknown key is an error
//! naming its full dotted path ([`ConfigError::UnknownKeys`]); a value out of range names the
//! key, the value and the allowed range ([`ConfigError::Invalid`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use onionvpn_directory::descriptor::{Prices, MAX_ADDRESSES};
use onionvpn_directory::network::{Network, NetworkKey, NetworkKeyError, MAX_SHARDS};
use onionvpn_directory::policy::{ExitPolicy, PolicyAction, PortRule, MAX_POLICY_RULES};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use onionvpn_pay::ldk::LdkConfig;

use crate::keys::RotationPolicy;
use crate::limits::CircuitRateConfig;

/// The example configuration shipped with the relay: every key, commented, with its default.
/// `onionvpn-relay init` writes this text.
pub const EXAMPLE_CONFIG: &str = include_str!("../relay.example.toml");

/// Name of the config file `init` writes into the data directory.
pub const CONFIG_FILE_NAME: &str = "relay.toml";

/// Largest config file read, bytes (a config is a few KiB; this stops a wrong path early).
pub const MAX_CONFIG_LEN: u64 = 1 << 20;

/// Errors loading or checking a configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// Config file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Larger than [`MAX_CONFIG_LEN`].
    #[error("{}: config file is {len} bytes, larger than the {MAX_CONFIG_LEN} allowed", path.display())]
    TooLarge {
        /// Config file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// Not valid TOML, or a value of the wrong type (the message names the key and line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// Config file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Keys that the relay does not know (typos, or options of another version).
    #[error("{}: unknown config key(s): {}", path.display(), keys.join(", "))]
    UnknownKeys {
        /// Config file.
        path: PathBuf,
        /// Full dotted paths of the unknown keys, e.g. `limits.circuit_rat`.
        keys: Vec<String>,
    },
    /// A value outside what is allowed.
    #[error("config key `{key}`: value {value} is not allowed; allowed: {allowed}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// The offending value, as written.
        value: String,
        /// The allowed range or form.
        allowed: String,
    },
    /// A `[lightning]` value is not allowed (the key is named from inside `[lightning]`).
    #[error("config key `{key}`: {detail}")]
    Lightning {
        /// Dotted key path, e.g. `lightning.listen`.
        key: String,
        /// What is wrong and what is allowed.
        detail: String,
    },
    /// The network key file could not be read or parsed.
    #[error("config key `network.key_file` = {}: {source}", path.display())]
    NetworkKey {
        /// Key file.
        path: PathBuf,
        /// The error.
        source: NetworkKeyError,
    },
}

fn invalid(key: &str, value: impl ToString, allowed: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

fn check_range<T: PartialOrd + ToString>(key: &str, v: T, lo: T, hi: T) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        let range = format!("{}..={}", lo.to_string(), hi.to_string());
        return Err(invalid(key, v, range));
    }
    Ok(())
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory (keys, ledger, caches). Empty: `--data-dir`, else the platform default.
    pub data_dir: PathBuf,
    /// Address the relay listens on for links.
    pub listen: SocketAddr,
    /// Addresses published in the descriptor (1..=4). Empty: the listen address, which must
    /// then be a specific address (not 0.0.0.0 or ::).
    pub advertised_addresses: Vec<SocketAddr>,
    /// Bandwidth published in the descriptor, bytes per second.
    pub advertised_bandwidth: u64,
    /// Prices and payment grace.
    pub prices: PricesConfig,
    /// Which overlay network to join.
    pub network: NetworkConfig,
    /// DHT bootstrap.
    pub dht: DhtConfig,
    /// Exit function and policy.
    pub exit: ExitConfig,
    /// Denial-of-service limits.
    pub limits: LimitsConfig,
    /// Key rotation.
    pub keys: KeysConfig,
    /// Logging.
    pub logging: LoggingConfig,
    /// The Lightning node id published in the descriptor. Not read from the file: the
    /// runtime sets it from the payment rail (`None`: all zeros, the relay is not paid).
    #[serde(skip)]
    pub ln_node_id: Option<[u8; 33]>,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[lightning]`: the embedded Lightning node that gets paid (absent: the relay charges
    /// nothing, whatever its prices; see docs/operator.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lightning: Option<LdkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 9001)),
            advertised_addresses: Vec::new(),
            advertised_bandwidth: 10 * 1024 * 1024,
            prices: PricesConfig::default(),
            network: NetworkConfig::default(),
            dht: DhtConfig::default(),
            exit: ExitConfig::default(),
            limits: LimitsConfig::default(),
            keys: KeysConfig::default(),
            logging: LoggingConfig::default(),
            ln_node_id: None,
            metrics: MetricsConfig::default(),
            lightning: None,
        }
    }
}

/// `[prices]`: what a hop costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricesConfig {
    /// Millisatoshi per MiB relayed (0 = free).
    pub msat_per_mib: u64,
    /// Millisatoshi per minute of circuit life (0 = free).
    pub msat_per_min: u64,
    /// Traffic allowed past what was paid before the circuit is destroyed, KiB.
    pub grace_kib: u32,
}

impl Default for PricesConfig {
    fn default() -> Self {
        Self {
            msat_per_mib: 1_000,
            msat_per_min: 10,
            grace_kib: 512,
        }
    }
}

/// `[network]`: the public network by name, or a private one from a key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Public network name (ignored when `key_file` is set).
    pub name: String,
    /// Announce shards of the public network (ignored when `key_file` is set).
    pub shards: u16,
    /// Private network key file; empty for the public network. Relative paths are relative to
    /// the config file's directory.
    pub key_file: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            name: onionvpn_directory::network::PUBLIC_NETWORK_NAME.to_owned(),
            shards: 1,
            key_file: PathBuf::new(),
        }
    }
}

/// `[dht]`: mainline DHT bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhtConfig {
    /// `host:port` bootstrap nodes. Default: the public mainline bootstrap nodes. Empty: start
    /// a new DHT (local test networks only).
    pub bootstrap: Vec<String>,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            bootstrap: mainline::DEFAULT_BOOTSTRAP_NODES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// `[exit]`: whether this relay opens streams to the internet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExitConfig {
    /// Act as an exit. Off by default: a middle relay never connects out for clients.
    pub enabled: bool,
    /// The exit policy (used only when `enabled`).
    pub policy: PolicyConfig,
}

/// Action for ports that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Allow.
    Accept,
    /// Refuse.
    Reject,
}

/// `[exit.policy]`: first-match port rules plus the private-destination switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Rules `"accept PORTS"` / `"reject PORTS"`, PORTS = `N`, `LO-HI` or `*`; first match
    /// wins; at most 32.
    pub rules: Vec<String>,
    /// Action for ports no rule matches.
    pub default: DefaultAction,
    /// Allow private, loopback, link-local and other non-global destinations (the operator's
    /// own network). Only for local test networks.
    pub allow_private_destinations: bool,
}

/// Tor's default exit policy: reject the ports of mail, NNTP, Windows file sharing and some
/// file-sharing protocols, accept the rest.
pub const DEFAULT_EXIT_RULES: &[&str] = &[
    "reject 25",
    "reject 119",
    "reject 135-139",
    "reject 445",
    "reject 563",
    "reject 1214",
    "reject 4661-4666",
    "reject 6346-6429",
    "reject 6699",
    "reject 6881-6999",
    "accept 1-65535",
];

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rules: DEFAULT_EXIT_RULES.iter().map(|s| (*s).to_owned()).collect(),
            default: DefaultAction::Reject,
            allow_private_destinations: false,
        }
    }
}

/// Parses one rule, e.g. `"accept 80"`, `"reject 6881-6999"`, `"accept *"`.
pub fn parse_port_rule(s: &str) -> Option<PortRule> {
    let mut it = s.split_whitespace();
    let action = match it.next()? {
        "accept" => PolicyAction::Accept,
        "reject" => PolicyAction::Reject,
        _ => return None,
    };
    let ports = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let (lo, hi) = if ports == "*" {
        (1, u16::MAX)
    } else if let Some((a, b)) = ports.split_once('-') {
        (a.parse().ok()?, b.parse().ok()?)
    } else {
        let p: u16 = ports.parse().ok()?;
        (p, p)
    };
    if lo == 0 || lo > hi {
        return None;
    }
    Some(PortRule { action, lo, hi })
}

impl PolicyConfig {
    /// The policy this section describes (validated).
    pub fn to_policy(&self) -> Result<ExitPolicy, ConfigError> {
        if self.rules.len() > MAX_POLICY_RULES {
            return Err(invalid(
                "exit.policy.rules",
                format!("{} rules", self.rules.len()),
                format!("at most {MAX_POLICY_RULES} rules"),
            ));
        }
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                parse_port_rule(r).ok_or_else(|| {
                    invalid(
                        &format!("exit.policy.rules[{i}]"),
                        format!("{r:?}"),
                        "\"accept PORTS\" or \"reject PORTS\", PORTS = N, LO-HI (1 ≤ LO ≤ HI ≤ 65535) or *",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExitPolicy {
            rules,
            default: match self.default {
                DefaultAction::Accept => PolicyAction::Accept,
                DefaultAction::Reject => PolicyAction::Reject,
            },
            allow_private: self.allow_private_destinations,
        })
    }
}

/// `[limits]`: denial-of-service limits (see [`crate::limits`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Circuit creations per second per source address (IPv6: per /64).
    pub circuit_rate: u32,
    /// Circuit creations allowed in a burst per source address.
    pub circuit_burst: u32,
    /// Seconds an address that exceeded the rate is refused.
    pub defense_period_secs: u64,
    /// Largest random number of seconds added to the defence period.
    pub defense_jitter_secs: u64,
    /// Most source addresses tracked by the rate limiter.
    pub max_tracked_addresses: usize,
    /// Most circuits open at once.
    pub max_circuits: usize,
    /// Most concurrent link connections from one source address (IPv6: per /64).
    pub max_connections_per_address: u32,
    /// Memory for queued cells, MiB; above it the circuits with the oldest queued data die.
    pub max_queued_mib: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let r = CircuitRateConfig::default();
        Self {
            circuit_rate: r.rate_per_sec,
            circuit_burst: r.burst,
            defense_period_secs: r.defense_period.as_secs(),
            defense_jitter_secs: r.defense_jitter.as_secs(),
            max_tracked_addresses: r.max_tracked,
            max_circuits: 50_000,
            max_connections_per_address: 100,
            max_queued_mib: 256,
        }
    }
}

impl LimitsConfig {
    /// Parameters of the circuit-creation limiter.
    pub fn circuit_rate_config(&self) -> CircuitRateConfig {
        CircuitRateConfig {
            rate_per_sec: self.circuit_rate,
            burst: self.circuit_burst,
            defense_period: Duration::from_secs(self.defense_period_secs),
            defense_jitter: Duration::from_secs(self.defense_jitter_secs),
            max_tracked: self.max_tracked_addresses,
        }
    }

    /// The queued-cell memory limit in bytes.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_mib.saturating_mul(1 << 20)
    }
}

/// `[keys]`: onion-key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Days before the onion key is replaced.
    pub onion_key_lifetime_days: u64,
    /// Days the replaced onion key stays usable.
    pub onion_key_grace_days: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        let p = RotationPolicy::default();
        Self {
            onion_key_lifetime_days: p.lifetime_secs / 86_400,
            onion_key_grace_days: p.grace_secs / 86_400,
        }
    }
}

impl KeysConfig {
    /// The rotation policy.
    pub fn rotation_policy(&self) -> RotationPolicy {
        RotationPolicy {
            lifetime_secs: self.onion_key_lifetime_days.saturating_mul(86_400),
            grace_secs: self.onion_key_grace_days.saturating_mul(86_400),
        }
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation.
    Info,
    /// Debugging.
    Debug,
    /// Everything.
    Trace,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Log verbosity.
    pub level: LogLevel,
    /// Log client and destination addresses and hostnames in clear. Off by default; turning it
    /// on makes the logs dangerous to keep or share.
    pub log_sensitive: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            log_sensitive: false,
        }
    }
}

/// `[metrics]`: the opt-in Prometheus endpoint (see [`crate::metrics`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` over HTTP.
    pub enabled: bool,
    /// Where; a loopback address (the endpoint has no authentication). Port 0 picks one.
    pub listen: SocketAddr,
}

/// Default port of the metrics endpoint.
pub const DEFAULT_METRICS_PORT: u16 = 9477;

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
        }
    }
}

/// Dotted paths of every key of the configuration (from the serialised default), e.g.
/// `listen`, `exit.policy.rules`.
pub fn known_keys() -> BTreeSet<String> {
    let mut keys = match toml::Table::try_from(Config::default()) {
        Ok(t) => key_paths(&t),
        Err(_) => BTreeSet::new(),
    };
    // `[lightning]` is absent by default; its keys come from the payments crate.
    keys.extend(
        onionvpn_pay::ldk::config::KEYS
            .iter()
            .map(|k| format!("lightning.{k}")),
    );
    keys
}

/// Dotted paths of the keys of a TOML table (tables are descended into, arrays are leaves).
pub fn key_paths(table: &toml::Table) -> BTreeSet<String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(sub) => walk(&path, sub, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", table, &mut out);
    out
}

fn is_valid_host_port(s: &str) -> bool {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.port() != 0;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

impl Config {
    /// Reads, parses and validates a config file. A relative `network.key_file` is resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                len: meta.len(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut cfg = Self::parse(&text, path)?;
        let kf = &cfg.network.key_file;
        if !kf.as_os_str().is_empty() && kf.is_relative() {
            if let Some(dir) = path.parent() {
                cfg.network.key_file = dir.join(kf);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        };
        let table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let known = known_keys();
        let unknown: Vec<String> = key_paths(&table)
            .into_iter()
            .filter(|k| !known.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownKeys {
                path: origin.to_path_buf(),
                keys: unknown,
            });
        }
        let cfg: Config = toml::from_str(text).map_err(parse_err)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.advertised_addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                "advertised_addresses",
                format!("{} addresses", self.advertised_addresses.len()),
                format!("at most {MAX_ADDRESSES} addresses"),
            ));
        }
        for (i, a) in self.advertised_addresses.iter().enumerate() {
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                return Err(invalid(
                    &format!("advertised_addresses[{i}]"),
                    a,
                    "a reachable unicast address with a non-zero port",
                ));
            }
        }
        check_range(
            "advertised_bandwidth",
            self.advertised_bandwidth,
            1024,
            1 << 40,
        )?;
        check_range(
            "prices.msat_per_mib",
            self.prices.msat_per_mib,
            0,
            100_000_000,
        )?;
        check_range(
            "prices.msat_per_min",
            self.prices.msat_per_min,
            0,
            100_000_000,
        )?;
        check_range("prices.grace_kib", self.prices.grace_kib, 0, 1 << 20)?;
        check_range("network.shards", self.network.shards, 1, MAX_SHARDS)?;
        if self.network.key_file.as_os_str().is_empty() {
            Network::public(&self.network.name, self.network.shards).map_err(|_| {
                invalid(
                    "network.name",
                    format!("{:?}", self.network.name),
                    "1..=64 printable ASCII characters, no spaces",
                )
            })?;
        }
        for (i, b) in self.dht.bootstrap.iter().enumerate() {
            if !is_valid_host_port(b) {
                return Err(invalid(
                    &format!("dht.bootstrap[{i}]"),
                    format!("{b:?}"),
                    "\"host:port\" or \"ip:port\" with a non-zero port",
                ));
            }
        }
        self.exit.policy.to_policy()?;
        let l = &self.limits;
        check_range("limits.circuit_rate", l.circuit_rate, 1, 10_000)?;
        check_range("limits.circuit_burst", l.circuit_burst, 1, 1_000_000)?;
        check_range(
            "limits.defense_period_secs",
            l.defense_period_secs,
            0,
            7 * 86_400,
        )?;
        check_range(
            "limits.defense_jitter_secs",
            l.defense_jitter_secs,
            0,
            86_400,
        )?;
        check_range(
            "limits.max_tracked_addresses",
            l.max_tracked_addresses,
            1024,
            1 << 24,
        )?;
        check_range("limits.max_circuits", l.max_circuits, 1, 10_000_000)?;
        check_range(
            "limits.max_connections_per_address",
            l.max_connections_per_address,
            1,
            100_000,
        )?;
        check_range("limits.max_queued_mib", l.max_queued_mib, 16, 1 << 20)?;
        check_range(
            "keys.onion_key_lifetime_days",
            self.keys.onion_key_lifetime_days,
            1,
            365,
        )?;
        check_range(
            "keys.onion_key_grace_days",
            self.keys.onion_key_grace_days,
            1,
            90,
        )?;
        if let Some(l) = &self.lightning {
            // Values only: the storage directory is resolved against the data dir at start.
            l.validate(Path::new("/")).map_err(|e| match e {
                onionvpn_pay::PayError::Invalid { what, detail } => ConfigError::Lightning {
                    key: what.to_owned(),
                    detail,
                },
                other => ConfigError::Lightning {
                    key: "lightning".into(),
                    detail: other.to_string(),
                },
            })?;
        }
        if !self.metrics.listen.ip().is_loopback() {
            return Err(invalid(
                "metrics.listen",
                self.metrics.listen,
                "a loopback address such as \"127.0.0.1:9477\" or \"[::1]:9477\" (the endpoint \
                 has no authentication; scrape it through an SSH tunnel or a local agent)",
            ));
        }
        Ok(())
    }

    /// The exit policy to publish and enforce: the non-exit policy unless `exit.enabled`.
    pub fn exit_policy(&self) -> Result<ExitPolicy, ConfigError> {
        if self.exit.enabled {
            self.exit.policy.to_policy()
        } else {
            Ok(ExitPolicy::reject_all())
        }
    }

    /// The addresses to publish: `advertised_addresses`, or the listen address if it is a
    /// specific address.
    ///
    /// A specific listen address with port 0 (e.g. `127.0.0.1:0`, for local use: tests, a
    /// local network) is accepted: it is returned as is, and the runtime publishes the port
    /// the listener actually bound. A wildcard listen address (`0.0.0.0`, `::`) needs
    /// `advertised_addresses`, whatever its port: it says nothing about where clients can
    /// reach the relay.
    pub fn advertised(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        if !self.advertised_addresses.is_empty() {
            return Ok(self.advertised_addresses.clone());
        }
        if self.listen.ip().is_unspecified() {
            return Err(invalid(
                "advertised_addresses",
                "[]",
                format!(
                    "a list of public addresses (required because listen = {} is not a \
                     specific address), e.g. [\"203.0.113.7:{}\"]",
                    self.listen,
                    if self.listen.port() == 0 {
                        9001
                    } else {
                        self.listen.port()
                    }
                ),
            ));
        }
        Ok(vec![self.listen])
    }

    /// Whether the relay's prices charge anything.
    pub fn charges(&self) -> bool {
        self.prices.msat_per_mib > 0 || self.prices.msat_per_min > 0
    }

    /// Descriptor prices.
    pub fn prices(&self) -> Prices {
        Prices {
            msat_per_mib: self.prices.msat_per_mib,
            msat_per_min: self.prices.msat_per_min,
        }
    }

    /// The network to join: private from `network.key_file`, else the public one named
    /// `network.name`.
    pub fn network(&self) -> Result<Network, ConfigError> {
        let kf = &self.network.key_file;
        if !kf.as_os_str().is_empty() {
            let key = NetworkKey::read(kf).map_err(|source| ConfigError::NetworkKey {
                path: kf.clone(),
                source,
            })?;
            return Ok(Network::private(&key));
        }
        if self.network.name == onionvpn_directory::network::PUBLIC_NETWORK_NAME
            && self.network.shards == 1
        {
            return Ok(Network::main());
        }
        Network::public(&self.network.name, self.network.shards).map_err(|_| {
            invalid(
                "network.name",
                format!("{:?}", self.network.name),
                "1..=64 printable ASCII characters, no spaces",
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn port_rule_syntax() {
        assert_eq!(
            parse_port_rule("accept 80"),
            Some(PortRule {
                action: PolicyAction::Accept,
                lo: 80,
                hi: 80
            })
        );
        assert_eq!(
            parse_port_rule("reject  6881-6999").map(|r| (r.lo, r.hi)),
            Some((6881, 6999))
        );
        assert_eq!(
            parse_port_rule("accept *").map(|r| (r.lo, r.hi)),
            Some((1, 65535))
        );
        for bad in [
            "",
            "accept",
            "allow 80",
            "accept 0",
            "accept 90-80",
            "accept 70000",
            "accept 1 2",
            "accept -5",
        ] {
            assert_eq!(parse_port_rule(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_specific_listen_address_with_port_0_is_accepted_for_local_use() {
        let c = Config::parse("listen = \"127.0.0.1:0\"", Path::new("t")).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.advertised().unwrap(), vec![c.listen]);
        // A wildcard address still needs advertised addresses, port 0 or not.
        for listen in ["0.0.0.0:0", "[::]:0", "0.0.0.0:9001"] {
            let c = Config::parse(&format!("listen = \"{listen}\""), Path::new("t")).unwrap();
            let err = c.advertised().unwrap_err();
            assert!(err.to_string().contains("advertised_addresses"), "{err}");
            assert!(!err.to_string().contains(":0\"]"), "{err}");
        }
    }

    #[test]
    fn host_port_forms() {
        for ok in ["router.bittorrent.com:6881", "127.0.0.1:6881", "[::1]:6881"] {
            assert!(is_valid_host_port(ok), "{ok}");
        }
        for bad in ["router", "host:0", ":6881", "a b:1", "host:99999"] {
            assert!(!is_valid_host_port(bad), "{bad}");
        }
    }
}
