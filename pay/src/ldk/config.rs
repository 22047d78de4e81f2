//! `[lightning]` configuration of the LDK rail, shared by the relay's and the client's TOML.
//!
//! Deserialising only checks shapes; [`LdkConfig::validate`] checks values and names the key
//! and the value it refused, so an operator can fix the file without reading code.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::PayError;

/// Every key of the `[lightning]` table, dotted from inside it (a test keeps this in step
/// with [`LdkConfig`]; the relay's and client's unknown-key checks use it).
pub const KEYS: &[&str] = &[
    "alias",
    "bitcoind.host",
    "bitcoind.password",
    "bitcoind.port",
    "bitcoind.user",
    "esplora.url",
    "listen",
    "log_level",
    "log_sensitive",
    "max_routing_fee_msat",
    "network",
    "storage",
];

/// Longest node alias BOLT 7 allows (32 bytes).
const MAX_ALIAS_LEN: usize = 32;

/// The `[lightning]` table.
///
/// ```toml
/// [lightning]
/// network = "regtest"
/// listen = "127.0.0.1:9735"    # relays need one; clients may omit it
/// alias = "relay-1"
/// storage = "lightning"        # a directory inside the data dir
/// log_level = "info"
/// max_routing_fee_msat = 5000
/// log_sensitive = false        # true: addresses and ids in the node's log in clear
/// [lightning.bitcoind]         # or [lightning.esplora] url = "https://…"
/// host = "127.0.0.1"
/// port = 18443
/// user = "u"
/// password = "p"
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LdkConfig {
    /// Which Bitcoin network the node runs on.
    pub network: LdkNetwork,
    /// Chain source: an Esplora server.
    #[serde(default)]
    pub esplora: Option<EsploraConfig>,
    /// Chain source: a bitcoind-compatible JSON-RPC server.
    #[serde(default)]
    pub bitcoind: Option<BitcoindConfig>,
    /// Address the node accepts Lightning peers on (`ip:port`). Relays need one, so that
    /// clients can open channels to them.
    #[serde(default)]
    pub listen: Option<String>,
    /// Node alias announced to peers (at most 32 bytes).
    #[serde(default)]
    pub alias: Option<String>,
    /// Node storage directory, relative to the relay's or client's data directory.
    #[serde(default = "default_storage")]
    pub storage: PathBuf,
    /// Level of the node's own log file (`storage/ldk_node.log`).
    #[serde(default)]
    pub log_level: LdkLogLevel,
    /// Upper bound on routing fees for any payment this node makes, in millisatoshi.
    #[serde(default = "default_max_routing_fee_msat")]
    pub max_routing_fee_msat: u64,
    /// Write peers' addresses and node, channel and payment ids to the node's log file in
    /// clear. Off by default: on a client they name the relays it pays.
    #[serde(default)]
    pub log_sensitive: bool,
}

fn default_storage() -> PathBuf {
    PathBuf::from("lightning")
}

/// Default routing-fee cap: enough for one intermediate hop at LDK's default 1,000 msat base
/// fee, small enough that a misconfigured route cannot drain the wallet.
fn default_max_routing_fee_msat() -> u64 {
    5_000
}

/// A Bitcoin network.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LdkNetwork {
    /// Mainnet.
    Bitcoin,
    /// Signet.
    Signet,
    /// Local regtest chain (tests).
    Regtest,
}

/// An Esplora chain source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EsploraConfig {
    /// Base URL of the Esplora HTTP API.
    pub url: String,
}

/// A bitcoind JSON-RPC chain source.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BitcoindConfig {
    /// RPC host name or address.
    pub host: String,
    /// RPC port.
    pub port: u16,
    /// RPC user.
    pub user: String,
    /// RPC password.
    pub password: String,
}

/// What `--print-config` shows in place of a secret.
pub const REDACTED: &str = "[redacted]";

impl LdkConfig {
    /// This configuration with its secrets replaced by [`REDACTED`], for printing: the
    /// bitcoind RPC password and any credentials in the Esplora URL (`https://user:pass@…`).
    pub fn redacted(&self) -> LdkConfig {
        let mut c = self.clone();
        if let Some(b) = c.bitcoind.as_mut() {
            b.password = REDACTED.to_owned();
        }
        if let Some(e) = c.esplora.as_mut() {
            e.url = redact_url_credentials(&e.url);
        }
        c
    }
}

/// `scheme://user:pass@host/…` → `scheme://[redacted]@host/…`; other URLs unchanged.
fn redact_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl fmt::Debug for BitcoindConfig {
    // The password must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BitcoindConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Log level of the node's log file.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LdkLogLevel {
    /// Everything, including per-message traces.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Only problems.
    Warn,
    /// Only errors.
    Error,
}

/// The chain source after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainSource {
    /// Esplora at this URL.
    Esplora(String),
    /// bitcoind RPC.
    Bitcoind(BitcoindConfig),
}

/// A validated configuration, ready for [`crate::ldk::LdkRail::start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidConfig {
    /// Network.
    pub network: LdkNetwork,
    /// Chain source.
    pub chain: ChainSource,
    /// Listening address.
    pub listen: Option<SocketAddr>,
    /// Node alias.
    pub alias: Option<String>,
    /// Absolute storage directory.
    pub storage_dir: PathBuf,
    /// Log level.
    pub log_level: LdkLogLevel,
    /// Routing-fee cap in millisatoshi.
    pub max_routing_fee_msat: u64,
    /// Log addresses and ids in clear.
    pub log_sensitive: bool,
}

fn invalid(what: &'static str, detail: String) -> PayError {
    PayError::Invalid { what, detail }
}

impl LdkConfig {
    /// A regtest configuration against a bitcoind-RPC source (used by tests and examples).
    pub fn regtest(bitcoind: BitcoindConfig, listen: Option<SocketAddr>) -> Self {
        LdkConfig {
            network: LdkNetwork::Regtest,
            esplora: None,
            bitcoind: Some(bitcoind),
            listen: listen.map(|a| a.to_string()),
            alias: None,
            storage: default_storage(),
            log_level: LdkLogLevel::Info,
            max_routing_fee_msat: default_max_routing_fee_msat(),
            log_sensitive: false,
        }
    }

    /// Checks every value; `data_dir` is the relay's or client's data directory that
    /// `storage` is relative to.
    pub fn validate(&self, data_dir: &Path) -> Result<ValidConfig, PayError> {
        let chain = match (&self.esplora, &self.bitcoind) {
            (Some(e), None) => {
                let url = e.url.trim();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "lightning.esplora.url",
                        format!("{url:?}: must start with http:// or https://"),
                    ));
                }
                ChainSource::Esplora(url.to_owned())
            }
            (None, Some(b)) => {
                if b.host.is_empty() {
                    return Err(invalid("lightning.bitcoind.host", "\"\": empty".into()));
                }
                if b.port == 0 {
                    return Err(invalid("lightning.bitcoind.port", "0: not a port".into()));
                }
                ChainSource::Bitcoind(b.clone())
            }
            (None, None) => {
                return Err(invalid(
                    "lightning",
                    "no chain source: set [lightning.esplora] or [lightning.bitcoind]".into(),
                ))
            }
            (Some(_), Some(_)) => return Err(invalid(
                "lightning",
                "two chain sources: set only one of [lightning.esplora] and [lightning.bitcoind]"
                    .into(),
            )),
        };
        let listen = match &self.listen {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                invalid("lightning.listen", format!("{s:?}: {e} (expected ip:port)"))
            })?),
        };
        if let Some(a) = &self.alias {
            if a.is_empty() || a.len() > MAX_ALIAS_LEN {
                return Err(invalid(
                    "lightning.alias",
                    format!("{a:?}: must be 1 to {MAX_ALIAS_LEN} bytes"),
                ));
            }
        }
        // The node's keys live under storage; keep it inside the data dir.
        let escapes = self.storage.as_os_str().is_empty()
            || self
                .storage
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(invalid(
                "lightning.storage",
                format!(
                    "{:?}: must be a relative directory inside the data dir (no '..')",
                    self.storage
                ),
            ));
        }
        Ok(ValidConfig {
            network: self.network,
            chain,
            listen,
            alias: self.alias.clone(),
            storage_dir: data_dir.join(&self.storage),
            log_level: self.log_level,
            max_routing_fee_msat: self.max_routing_fee_msat,
            log_sensitive: self.log_sensitive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> LdkConfig {
        toml::from_str(s).unwrap()
    }

    const BASE: &str = r#"
network = "regtest"
listen = "127.0.0.1:9735"
alias = "relay-1"
[bitcoind]
host = "127.0.0.1"
port = 18443
user = "u"
password = "secret"
"#;

    #[test]
    fn valid_regtest_config() {
        let v = parse(BASE).validate(Path::new("/data")).unwrap();
        assert_eq!(v.network, LdkNetwork::Regtest);
        assert_eq!(v.listen, Some("127.0.0.1:9735".parse().unwrap()));
        assert_eq!(v.storage_dir, PathBuf::from("/data/lightning"));
        assert_eq!(v.max_routing_fee_msat, 5_000);
        assert_eq!(v.log_level, LdkLogLevel::Info);
        assert!(matches!(v.chain, ChainSource::Bitcoind(ref b) if b.port == 18443));
    }

    #[test]
    fn redacted_hides_the_password_and_url_credentials() {
        let mut c = parse(BASE);
        let r = c.redacted();
        assert_eq!(r.bitcoind.as_ref().unwrap().password, REDACTED);
        assert_eq!(
            r.bitcoind.as_ref().unwrap().user,
            c.bitcoind.as_ref().unwrap().user
        );
        assert_ne!(c.bitcoind.as_ref().unwrap().password, REDACTED);
        c.bitcoind = None;
        for (url, shown) in [
            (
                "https://u:secret@esplora.example/api",
                "https://[redacted]@esplora.example/api",
            ),
            ("https://esplora.example/a@b", "https://esplora.example/a@b"),
            ("https://esplora.example", "https://esplora.example"),
        ] {
            c.esplora = Some(EsploraConfig { url: url.into() });
            assert_eq!(c.redacted().esplora.unwrap().url, shown);
        }
    }

    #[test]
    fn password_not_in_debug() {
        let c = parse(BASE);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn unknown_network_rejected_by_parser() {
        let s = BASE.replace("\"regtest\"", "\"testnet4\"");
        assert!(toml::from_str::<LdkConfig>(&s).is_err());
    }

    fn err_of(c: &LdkConfig) -> (&'static str, String) {
        match c.validate(Path::new("/data")) {
            Err(PayError::Invalid { what, detail }) => (what, detail),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn bad_listen_names_key_and_value() {
        let mut c = parse(BASE);
        c.listen = Some("localhost".into());
        let (what, detail) = err_of(&c);
        assert_eq!(what, "lightning.listen");
        assert!(detail.contains("localhost"));
    }

    #[test]
    fn storage_must_stay_inside_data_dir() {
        for bad in ["../x", "/etc", ""] {
            let mut c = parse(BASE);
            c.storage = PathBuf::from(bad);
            assert_eq!(err_of(&c).0, "lightning.storage", "{bad}");
        }
    }

    #[test]
    fn exactly_one_chain_source() {
        let mut c = parse(BASE);
        c.bitcoind = None;
        assert_eq!(err_of(&c).0, "lightning");
        let mut c = parse(BASE);
        c.esplora = Some(EsploraConfig {
            url: "https://e.invalid".into(),
        });
        assert_eq!(err_of(&c).0, "lightning");
        c.bitcoind = None;
        assert!(c.validate(Path::new("/d")).is_ok());
        c.esplora = Some(EsploraConfig {
            url: "ftp://e".into(),
        });
        assert_eq!(err_of(&c).0, "lightning.esplora.url");
    }

    #[test]
    fn keys_list_matches_the_struct() {
        let mut c = parse(BASE);
        c.esplora = Some(EsploraConfig { url: "u".into() });
        let t = toml::Table::try_from(&c).unwrap();
        let mut got = Vec::new();
        for (k, v) in &t {
            match v {
                toml::Value::Table(sub) => got.extend(sub.keys().map(|s| format!("{k}.{s}"))),
                _ => got.push(k.clone()),
            }
        }
        got.sort();
        assert_eq!(got, KEYS);
    }

    #[test]
    fn alias_length_checked() {
        let mut c = parse(BASE);
        c.alias = Some("x".repeat(33));
        assert_eq!(err_of(&c).0, "lightning.alias");
    }
}
