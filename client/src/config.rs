//! Client configuration: defaults, the TOML file, and the validated [`ClientConfig`].
//!
//! Precedence, per key: command line over config file over defaults. Each source is first
//! turned into a [`Layer`] (every key optional, every value already checked), then
//! [`ClientConfig::resolve`] merges the layers. The file format is documented key by key in
//! `client/client.example.toml` and docs/client.md.
//!
//! Unknown keys are errors that name the key; a bad value names the key, the value and what
//! is allowed. Relative paths in a file are relative to the file's directory; on the command
//! line they are relative to the working directory.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use onionvpn_directory::descriptor::Prices;
use onionvpn_directory::network::{Network, PUBLIC_NETWORK_NAME};
use onionvpn_pay::ldk::LdkConfig;
use onionvpn_pay::payer::PayerConfig;
use onionvpn_proto::consts::MAX_HOPS;
use onionvpn_proto::relaymsg::Hostname;
use thiserror::Error;

use crate::payer_settings::{payer_from_toml, payer_to_toml};
use crate::tun::settings::{TunLayer, TunSettings};

/// Default circuit length.
pub const DEFAULT_HOPS: u8 = 3;
/// Default SOCKS5 listen address: loopback only, Tor's port.
pub const DEFAULT_SOCKS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9050);
/// Default cap on a hop's price per MiB relayed, in millisatoshi.
pub const DEFAULT_MAX_PRICE_MIB: u64 = 2_000;
/// Default cap on a hop's price per minute of circuit life, in millisatoshi.
pub const DEFAULT_MAX_PRICE_MIN: u64 = 100;
/// Default spending cap, in millisatoshi (1000 sat).
pub const DEFAULT_BUDGET: u64 = 1_000_000;
/// Default least stall timeout, seconds (`crate::stall::StallConfig::min_timeout`).
pub const DEFAULT_STALL_TIMEOUT_S: u64 = 15;
/// Default time every hop of a stalled circuit is avoided, seconds.
pub const DEFAULT_STALL_AVOID_S: u64 = 3600;
/// Largest `stall_timeout_s`.
const MAX_STALL_TIMEOUT_S: u64 = 3600;
/// Largest `stall_avoid_s` (a week).
const MAX_STALL_AVOID_S: u64 = 7 * 24 * 3600;
/// Name of the client's directory under the XDG base directories.
pub const APP_DIR: &str = "onionvpn";
/// File name of the default config file under `$XDG_CONFIG_HOME/onionvpn/`.
pub const CONFIG_FILE_NAME: &str = "client.toml";

/// Every config file key, with what it allows (used in error messages and docs).
pub const KEYS: &[(&str, &str)] = &[
    ("hops", "an integer from 1 to 8"),
    (
        "socks",
        "an IP address and port, e.g. \"127.0.0.1:9050\" or \"[::1]:9050\"",
    ),
    ("data_dir", "a directory path"),
    (
        "bootstrap",
        "a non-empty list of \"host:port\" strings (hostname, IPv4 or [IPv6]; port 1-65535)",
    ),
    (
        "network",
        "a network name: 1 to 64 printable ASCII characters, no spaces",
    ),
    ("network_key", "a path to a network key file"),
    (
        "max_price_mib",
        "a non-negative integer (millisatoshi per MiB)",
    ),
    (
        "max_price_min",
        "a non-negative integer (millisatoshi per minute)",
    ),
    ("budget", "a non-negative integer (millisatoshi)"),
    ("log_sensitive", "true or false"),
    ("stall_timeout_s", "an integer from 1 to 3600 (seconds)"),
    ("stall_avoid_s", "an integer from 0 to 604800 (seconds)"),
    (
        "tun",
        "a table of TUN-mode settings: enabled, name, address, mtu, routes, fake_range, isolation",
    ),
    (
        "payments",
        "a table of payer settings: chunk_msat, max_chunk_msat, max_attempts, retry_delay_ms, jitter_ms, max_fee_msat, first_payment_timeout_ms",
    ),
    (
        "lightning",
        "a table of Lightning node settings: network, esplora.url or bitcoind.{host,port,user,password}, listen, alias, storage, log_level, log_sensitive, max_routing_fee_msat",
    ),
];

fn allowed(key: &str) -> &'static str {
    KEYS.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, a)| *a)
        .unwrap_or("a known key")
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command line.
    CommandLine,
    /// A config file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
        }
    }
}

/// Errors loading or validating the client configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key the client does not know (often a typo).
    #[error("{origin}: unknown key `{key}`; known keys: {known}")]
    UnknownKey {
        /// Where.
        origin: Origin,
        /// The unknown key, with its table path if nested (`a.b`).
        key: String,
        /// The known keys, comma-separated.
        known: String,
    },
    /// A `[lightning]` value is malformed or not allowed.
    #[error("{origin}: key `{key}`: {detail}")]
    Lightning {
        /// Where.
        origin: Origin,
        /// The dotted key, e.g. `lightning.listen` (`lightning` for the table as a whole).
        key: String,
        /// What is wrong and what is allowed.
        detail: String,
    },
    /// A value outside what its key allows.
    #[error("{origin}: key `{key}`: invalid value {value}: expected {allowed}")]
    Invalid {
        /// Where.
        origin: Origin,
        /// The key.
        key: &'static str,
        /// The value as written (TOML syntax).
        value: String,
        /// What the key allows.
        allowed: &'static str,
    },
    /// `network` and `network_key` were both set in the same place.
    #[error("{origin}: `network` and `network_key` are exclusive: a private network takes its name from its key file")]
    NetworkConflict {
        /// Where.
        origin: Origin,
    },
    /// A path starts with `~` but `$HOME` is not set (or not absolute).
    #[error("key `{key}`: the path starts with ~ but $HOME is not set")]
    NoHome {
        /// The key whose path it is.
        key: &'static str,
    },
    /// No data directory given, and neither `$XDG_STATE_HOME` nor `$HOME` is set.
    #[error("no data directory: pass --data-dir, set data_dir in the config file, or set $XDG_STATE_HOME or $HOME")]
    NoDataDir,
}

/// Which overlay network to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkChoice {
    /// A public network by name (normally [`PUBLIC_NETWORK_NAME`], "main").
    Public(String),
    /// A private network whose key file is at this path (read by the runtime).
    KeyFile(PathBuf),
}

/// One source of settings: every key optional, every present value valid on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    /// Circuit length, 1..=[`MAX_HOPS`].
    pub hops: Option<u8>,
    /// SOCKS5 listen address.
    pub socks: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// DHT bootstrap nodes (`host:port`), non-empty when present.
    pub bootstrap: Option<Vec<String>>,
    /// Network choice (from `network` or `network_key`).
    pub network: Option<NetworkChoice>,
    /// Per-hop price cap per MiB, msat.
    pub max_price_mib: Option<u64>,
    /// Per-hop price cap per minute, msat.
    pub max_price_min: Option<u64>,
    /// Spending cap, msat.
    pub budget: Option<u64>,
    /// Log addresses and destinations unredacted.
    pub log_sensitive: Option<bool>,
    /// Least stall timeout, seconds (1..=3600).
    pub stall_timeout_s: Option<u64>,
    /// How long every hop of a stalled circuit is avoided, seconds (0..=604800).
    pub stall_avoid_s: Option<u64>,
    /// TUN-mode settings (the `[tun]` table, `--tun*` flags).
    pub tun: TunLayer,
    /// The embedded Lightning node that pays the relays (the `[lightning]` table).
    pub lightning: Option<LdkConfig>,
    /// How the payer pays each hop (the `[payments]` table).
    pub payments: Option<PayerConfig>,
}

impl Layer {
    /// Parses a config file's text. `path` names the file in errors and anchors relative
    /// paths (`data_dir`, `network_key`) at its directory.
    pub fn from_toml(text: &str, path: &Path) -> Result<Layer, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        let origin = Origin::File(path.to_owned());
        let base = path.parent().unwrap_or(Path::new(""));
        let invalid = |key: &'static str, v: &toml::Value| ConfigError::Invalid {
            origin: origin.clone(),
            key,
            value: v.to_string(),
            allowed: allowed(key),
        };
        let mut layer = Layer::default();
        let mut network_name = None;
        let mut network_key = None;
        for (key, v) in &table {
            match key.as_str() {
                "hops" => {
                    layer.hops = Some(
                        v.as_integer()
                            .and_then(|n| u8::try_from(n).ok())
                            .filter(|n| (1..=MAX_HOPS).contains(&usize::from(*n)))
                            .ok_or_else(|| invalid("hops", v))?,
                    )
                }
                "socks" => {
                    layer.socks = Some(
                        v.as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| invalid("socks", v))?,
                    )
                }
                "data_dir" => {
                    layer.data_dir = Some(
                        v.as_str()
                            .filter(|s| !s.is_empty())
                            .map(|s| file_path(base, s))
                            .ok_or_else(|| invalid("data_dir", v))?,
                    )
                }
                "bootstrap" => {
                    let list = v.as_array().ok_or_else(|| invalid("bootstrap", v))?;
                    let nodes = list
                        .iter()
                        .map(|n| {
                            n.as_str()
                                .filter(|s| valid_bootstrap(s))
                                .map(str::to_owned)
                                .ok_or_else(|| invalid("bootstrap", n))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if nodes.is_empty() {
                        return Err(invalid("bootstrap", v));
                    }
                    layer.bootstrap = Some(nodes);
                }
                "network" => {
                    network_name = Some(
                        v.as_str()
                            .filter(|s| valid_network_name(s))
                            .map(str::to_owned)
                            .ok_or_else(|| invalid("network", v))?,
                    )
                }
                "network_key" => {
                    network_key = Some(
                        v.as_str()
                            .filter(|s| !s.is_empty())
                            .map(|s| file_path(base, s))
                            .ok_or_else(|| invalid("network_key", v))?,
                    )
                }
                "max_price_mib" => {
                    layer.max_price_mib = Some(msat(v).ok_or_else(|| invalid("max_price_mib", v))?)
                }
                "max_price_min" => {
                    layer.max_price_min = Some(msat(v).ok_or_else(|| invalid("max_price_min", v))?)
                }
                "budget" => layer.budget = Some(msat(v).ok_or_else(|| invalid("budget", v))?),
                "log_sensitive" => {
                    layer.log_sensitive =
                        Some(v.as_bool().ok_or_else(|| invalid("log_sensitive", v))?)
                }
                "stall_timeout_s" => {
                    layer.stall_timeout_s = Some(
                        msat(v)
                            .filter(|s| (1..=MAX_STALL_TIMEOUT_S).contains(s))
                            .ok_or_else(|| invalid("stall_timeout_s", v))?,
                    )
                }
                "stall_avoid_s" => {
                    layer.stall_avoid_s = Some(
                        msat(v)
                            .filter(|s| *s <= MAX_STALL_AVOID_S)
                            .ok_or_else(|| invalid("stall_avoid_s", v))?,
                    )
                }
                "tun" => layer.tun = TunLayer::from_toml(v, &origin)?,
                "lightning" => layer.lightning = Some(lightning_from_toml(v, &origin)?),
                "payments" => layer.payments = Some(payer_from_toml(v, &origin)?),
                other => {
                    return Err(ConfigError::UnknownKey {
                        origin,
                        key: other.to_owned(),
                        known: KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
                    })
                }
            }
        }
        layer.network = match (network_name, network_key) {
            (Some(_), Some(_)) => return Err(ConfigError::NetworkConflict { origin }),
            (Some(n), None) => Some(NetworkChoice::Public(n)),
            (None, Some(k)) => Some(NetworkChoice::KeyFile(k)),
            (None, None) => None,
        };
        Ok(layer)
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }
}

/// Parses and checks the `[lightning]` table (values only: its storage directory is resolved
/// against the data directory when the node starts).
fn lightning_from_toml(v: &toml::Value, origin: &Origin) -> Result<LdkConfig, ConfigError> {
    let err = |key: &str, detail: String| ConfigError::Lightning {
        origin: origin.clone(),
        key: key.to_owned(),
        detail,
    };
    let cfg: LdkConfig = v
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| err("lightning", e.message().to_owned()))?;
    cfg.validate(Path::new("/")).map_err(|e| match e {
        onionvpn_pay::PayError::Invalid { what, detail } => err(what, detail),
        other => err("lightning", other.to_string()),
    })?;
    Ok(cfg)
}

/// A path written in a config file: `~/…` is kept for [`expand_home`], a relative path is
/// anchored at the file's directory.
fn file_path(base: &Path, s: &str) -> PathBuf {
    if s == "~" || s.starts_with("~/") {
        PathBuf::from(s)
    } else {
        base.join(s)
    }
}

/// Replaces a leading `~` component with `$HOME`; other paths are returned unchanged.
pub fn expand_home(
    key: &'static str,
    p: PathBuf,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, ConfigError> {
    match p.strip_prefix("~") {
        Ok(rest) => env_dir(env, "HOME")
            .map(|h| h.join(rest))
            .ok_or(ConfigError::NoHome { key }),
        Err(_) => Ok(p),
    }
}

fn msat(v: &toml::Value) -> Option<u64> {
    v.as_integer().and_then(|n| u64::try_from(n).ok())
}

/// Whether `s` is a valid network name (the directory crate's rule).
pub fn valid_network_name(s: &str) -> bool {
    Network::public(s, 1).is_ok()
}

/// Whether `s` is a valid bootstrap node: `host:port` with a hostname, an IPv4 address or
/// a bracketed IPv6 address, and a port from 1 to 65535.
pub fn valid_bootstrap(s: &str) -> bool {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.port() != 0;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    port_ok && !host.starts_with('[') && Hostname::from_bytes(host.as_bytes()).is_ok()
}

/// The validated client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Circuit length, 1..=[`MAX_HOPS`]; default [`DEFAULT_HOPS`].
    pub hops: u8,
    /// SOCKS5 listen address; default [`DEFAULT_SOCKS`].
    pub socks: SocketAddr,
    /// Where the client keeps state (guards, directory cache); default
    /// `$XDG_STATE_HOME/onionvpn` or `~/.local/state/onionvpn`.
    pub data_dir: PathBuf,
    /// DHT bootstrap nodes; default the public mainline DHT's ([`default_bootstrap`]).
    pub bootstrap: Vec<String>,
    /// The overlay network; default the public network "main".
    pub network: NetworkChoice,
    /// Highest per-hop prices the client accepts (path selection filters on them).
    pub price_cap: Prices,
    /// Spending cap in msat: the client stops paying once it has paid this much.
    pub budget_msat: u64,
    /// Log addresses and destinations unredacted (default false).
    pub log_sensitive: bool,
    /// A circuit whose stream's BEGIN gets no answer for this long (or 4 × its build time,
    /// if longer) is given up as stalled (docs/client.md, "Stalled circuits"); default
    /// [`DEFAULT_STALL_TIMEOUT_S`].
    pub stall_timeout: Duration,
    /// How long every hop of a stalled circuit is avoided; default [`DEFAULT_STALL_AVOID_S`].
    pub stall_avoid: Duration,
    /// TUN mode, when enabled (`None`: SOCKS only).
    pub tun: Option<TunSettings>,
    /// The Lightning node that pays the relays (`None`: the client pays nobody, and relays
    /// that enforce payment end its circuits after their grace).
    pub lightning: Option<LdkConfig>,
    /// How the payer pays each hop: chunk sizes, retries, jitter, fee cap, first-payment
    /// timeout (`[payments]`; default [`PayerConfig::default`]).
    pub payer: PayerConfig,
}

/// The public mainline DHT bootstrap nodes.
pub fn default_bootstrap() -> Vec<String> {
    mainline::DEFAULT_BOOTSTRAP_NODES
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// An absolute path from an environment variable (the XDG spec ignores relative ones).
fn env_dir(env: &dyn Fn(&str) -> Option<OsString>, var: &str) -> Option<PathBuf> {
    env(var).map(PathBuf::from).filter(|p| p.is_absolute())
}

/// The default data directory: `$XDG_STATE_HOME/onionvpn`, else `$HOME/.local/state/onionvpn`.
pub fn default_data_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    env_dir(env, "XDG_STATE_HOME")
        .or_else(|| env_dir(env, "HOME").map(|h| h.join(".local").join("state")))
        .map(|d| d.join(APP_DIR))
}

/// The default config file: `$XDG_CONFIG_HOME/onionvpn/client.toml`, else
/// `$HOME/.config/onionvpn/client.toml`. Read only if it exists.
pub fn default_config_path(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    env_dir(env, "XDG_CONFIG_HOME")
        .or_else(|| env_dir(env, "HOME").map(|h| h.join(".config")))
        .map(|d| d.join(APP_DIR).join(CONFIG_FILE_NAME))
}

impl ClientConfig {
    /// Merges the command line over the file over the defaults. `env` looks up environment
    /// variables (for the default data directory and `~` in paths); pass
    /// `&|k| std::env::var_os(k)`.
    pub fn resolve(
        cli: &Layer,
        file: Option<&Layer>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<ClientConfig, ConfigError> {
        let empty = Layer::default();
        let file = file.unwrap_or(&empty);
        macro_rules! pick {
            ($f:ident) => {
                cli.$f.clone().or_else(|| file.$f.clone())
            };
        }
        let data_dir = match pick!(data_dir) {
            Some(d) => expand_home("data_dir", d, env)?,
            None => default_data_dir(env).ok_or(ConfigError::NoDataDir)?,
        };
        let network = match pick!(network) {
            Some(NetworkChoice::KeyFile(k)) => {
                NetworkChoice::KeyFile(expand_home("network_key", k, env)?)
            }
            Some(public) => public,
            None => NetworkChoice::Public(PUBLIC_NETWORK_NAME.to_owned()),
        };
        Ok(ClientConfig {
            hops: pick!(hops).unwrap_or(DEFAULT_HOPS),
            socks: pick!(socks).unwrap_or(DEFAULT_SOCKS),
            data_dir,
            bootstrap: pick!(bootstrap).unwrap_or_else(default_bootstrap),
            network,
            price_cap: Prices {
                msat_per_mib: pick!(max_price_mib).unwrap_or(DEFAULT_MAX_PRICE_MIB),
                msat_per_min: pick!(max_price_min).unwrap_or(DEFAULT_MAX_PRICE_MIN),
            },
            budget_msat: pick!(budget).unwrap_or(DEFAULT_BUDGET),
            log_sensitive: pick!(log_sensitive).unwrap_or(false),
            // File only, like `[payments]`: tuning, not a per-run choice.
            stall_timeout: Duration::from_secs(
                file.stall_timeout_s.unwrap_or(DEFAULT_STALL_TIMEOUT_S),
            ),
            stall_avoid: Duration::from_secs(file.stall_avoid_s.unwrap_or(DEFAULT_STALL_AVOID_S)),
            tun: cli.tun.resolve(&file.tun),
            // File only: the node's settings (and its RPC password) do not belong on a
            // command line.
            lightning: file.lightning.clone(),
            // File only, like `[lightning]`: tuning, not a per-run choice.
            payer: file.payments.clone().unwrap_or_default(),
        })
    }

    /// The configuration as a config file (every key set; `network_key` only for a private
    /// network). Parsing it back with [`Layer::from_toml`] gives the same configuration.
    pub fn to_toml_table(&self) -> toml::Table {
        let ClientConfig {
            hops,
            socks,
            data_dir,
            bootstrap,
            network,
            price_cap,
            budget_msat,
            log_sensitive,
            stall_timeout,
            stall_avoid,
            tun,
            lightning,
            payer,
        } = self;
        let mut t = toml::Table::new();
        let int = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let path = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
        t.insert("hops".into(), int(u64::from(*hops)));
        t.insert("socks".into(), toml::Value::String(socks.to_string()));
        t.insert("data_dir".into(), path(data_dir));
        t.insert(
            "bootstrap".into(),
            toml::Value::Array(bootstrap.iter().cloned().map(toml::Value::String).collect()),
        );
        match network {
            NetworkChoice::Public(n) => t.insert("network".into(), toml::Value::String(n.clone())),
            NetworkChoice::KeyFile(p) => t.insert("network_key".into(), path(p)),
        };
        t.insert("max_price_mib".into(), int(price_cap.msat_per_mib));
        t.insert("max_price_min".into(), int(price_cap.msat_per_min));
        t.insert("budget".into(), int(*budget_msat));
        t.insert("log_sensitive".into(), toml::Value::Boolean(*log_sensitive));
        t.insert("stall_timeout_s".into(), int(stall_timeout.as_secs()));
        t.insert("stall_avoid_s".into(), int(stall_avoid.as_secs()));
        if let Some(tun) = tun {
            t.insert("tun".into(), toml::Value::Table(tun.to_toml_table()));
        }
        if let Some(l) = lightning {
            if let Ok(v) = toml::Value::try_from(l) {
                t.insert("lightning".into(), v);
            }
        }
        t.insert("payments".into(), toml::Value::Table(payer_to_toml(payer)));
        t
    }

    /// The configuration as TOML text (for `--print-config`), secrets shown as
    /// `[redacted]` (the bitcoind RPC password, credentials in an Esplora URL), with a first
    /// comment line saying where they are. `source`: the config file, if one was read.
    pub fn to_toml_string(&self, source: Option<&Path>) -> String {
        let mut t = self.to_toml_table();
        if let Some(l) = &self.lightning {
            if let Ok(v) = toml::Value::try_from(l.redacted()) {
                t.insert("lightning".into(), v);
            }
        }
        let see = match source {
            Some(p) => format!("see them in {}", p.display()),
            None => "see them in the config file".to_owned(),
        };
        format!(
            "# Secrets are printed as {}: {see}.\n{t}",
            onionvpn_pay::ldk::REDACTED
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn home_env(k: &str) -> Option<OsString> {
        (k == "HOME").then(|| OsString::from("/home/u"))
    }

    #[test]
    fn data_dir_follows_xdg_then_home() {
        assert_eq!(default_data_dir(&no_env), None);
        assert_eq!(
            default_data_dir(&home_env),
            Some(PathBuf::from("/home/u/.local/state/onionvpn"))
        );
        let xdg = |k: &str| match k {
            "XDG_STATE_HOME" => Some(OsString::from("/s")),
            "HOME" => Some(OsString::from("/home/u")),
            _ => None,
        };
        assert_eq!(default_data_dir(&xdg), Some(PathBuf::from("/s/onionvpn")));
        // A relative XDG value is ignored, as the XDG spec says.
        let rel = |k: &str| match k {
            "XDG_STATE_HOME" => Some(OsString::from("rel")),
            "HOME" => Some(OsString::from("/home/u")),
            _ => None,
        };
        assert_eq!(
            default_data_dir(&rel),
            Some(PathBuf::from("/home/u/.local/state/onionvpn"))
        );
        assert_eq!(
            default_config_path(&home_env),
            Some(PathBuf::from("/home/u/.config/onionvpn/client.toml"))
        );
    }

    #[test]
    fn no_data_dir_is_an_error() {
        let e = ClientConfig::resolve(&Layer::default(), None, &no_env).unwrap_err();
        assert!(matches!(e, ConfigError::NoDataDir));
    }

    #[test]
    fn bootstrap_validation() {
        for ok in [
            "router.bittorrent.com:6881",
            "127.0.0.1:6881",
            "[::1]:6881",
            "localhost:1",
        ] {
            assert!(valid_bootstrap(ok), "{ok}");
        }
        for bad in [
            "",
            "host",
            "host:0",
            "host:65536",
            ":6881",
            "bad_host:1",
            "[::1:6881",
            "127.0.0.1:0",
            "::1:6881x",
        ] {
            assert!(!valid_bootstrap(bad), "{bad}");
        }
        for n in default_bootstrap() {
            assert!(valid_bootstrap(&n), "{n}");
        }
    }

    #[test]
    fn tilde_expands_to_home() {
        let file = Layer::from_toml(
            "data_dir = \"~/.local/state/onionvpn\"\nnetwork_key = \"~/net.key\"",
            Path::new("/etc/onionvpn/client.toml"),
        )
        .unwrap();
        let c = ClientConfig::resolve(&Layer::default(), Some(&file), &home_env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/home/u/.local/state/onionvpn"));
        assert_eq!(
            c.network,
            NetworkChoice::KeyFile(PathBuf::from("/home/u/net.key"))
        );
        let e = ClientConfig::resolve(&Layer::default(), Some(&file), &no_env).unwrap_err();
        assert!(matches!(e, ConfigError::NoHome { key: "data_dir" }), "{e}");
    }

    #[test]
    fn lightning_table_is_checked_and_errors_name_the_key() {
        let ok = "[lightning]\nnetwork = \"regtest\"\nlisten = \"127.0.0.1:9735\"\n\
                  [lightning.bitcoind]\nhost = \"127.0.0.1\"\nport = 18443\nuser = \"u\"\n\
                  password = \"p\"\n";
        let l = Layer::from_toml(ok, Path::new("/c.toml")).unwrap();
        let c = ClientConfig::resolve(&Layer::default(), Some(&l), &home_env).unwrap();
        assert_eq!(
            c.lightning.as_ref().unwrap().listen.as_deref(),
            Some("127.0.0.1:9735")
        );
        // --print-config round trip keeps it, the password redacted.
        let printed = c.to_toml_string(Some(Path::new("/c.toml")));
        assert!(!printed.contains("\"p\""), "{printed}");
        assert!(printed.starts_with("# Secrets are printed as [redacted]: see them in /c.toml"));
        let back = Layer::from_toml(&printed, Path::new("/c.toml")).unwrap();
        assert_eq!(back.lightning, c.lightning.as_ref().map(|l| l.redacted()));
        assert_eq!(
            back.lightning.unwrap().bitcoind.unwrap().password,
            "[redacted]"
        );
        let bad_listen = ok.replace("127.0.0.1:9735", "nowhere");
        let e = Layer::from_toml(&bad_listen, Path::new("/c.toml")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Lightning { key, .. } if key == "lightning.listen"),
            "{e}"
        );
        assert!(e.to_string().contains("nowhere"), "{e}");
        let unknown = ok.replace("network = ", "netwrk = \"x\"\nnetwork = ");
        let e = Layer::from_toml(&unknown, Path::new("/c.toml")).unwrap_err();
        assert!(e.to_string().contains("netwrk"), "{e}");
    }

    #[test]
    fn relative_paths_in_file_are_relative_to_the_file() {
        let l = Layer::from_toml(
            "data_dir = \"state\"\nnetwork_key = \"/abs/net.key\"",
            Path::new("/etc/onionvpn/client.toml"),
        )
        .unwrap();
        assert_eq!(l.data_dir, Some(PathBuf::from("/etc/onionvpn/state")));
        assert_eq!(
            l.network,
            Some(NetworkChoice::KeyFile(PathBuf::from("/abs/net.key")))
        );
    }
}
