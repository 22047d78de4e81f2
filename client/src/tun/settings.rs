//! TUN-mode settings: the `[tun]` table of the config file, the `--tun*` flags, and their
//! merge (command line over file over defaults, key by key).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::{ConfigError, Origin};

use super::fakeip::{FakeIpConfig, Ipv4Net, DEFAULT_FAKE_RANGE};

/// Default interface name.
pub const DEFAULT_TUN_NAME: &str = "ovpn0";
/// Default interface address: 10.190.0.1/24 (the DNS address to point resolvers at is any
/// other address of that /24, by convention 10.190.0.53).
pub const DEFAULT_TUN_ADDRESS: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 190, 0, 1), 24);
/// Conventional DNS server address inside the default TUN network.
pub const DEFAULT_TUN_DNS: Ipv4Addr = Ipv4Addr::new(10, 190, 0, 53);
/// Default MTU. TCP ends in the client, so the MTU is not tied to the cell size; larger
/// values cut per-packet cost.
pub const DEFAULT_TUN_MTU: u16 = 1500;

/// Keys of the `[tun]` table, with what they allow.
pub const TUN_KEYS: &[(&str, &str)] = &[
    ("tun.enabled", "true or false"),
    (
        "tun.name",
        "an interface name: 1 to 15 bytes of letters, digits, '-', '_' or '.'",
    ),
    (
        "tun.address",
        "an IPv4 address with prefix length, e.g. \"10.190.0.1/24\"",
    ),
    ("tun.mtu", "an integer from 576 to 65535"),
    (
        "tun.routes",
        "a list of IPv4 networks, e.g. [\"0.0.0.0/0\"] or [\"10.192.0.0/10\"]",
    ),
    (
        "tun.fake_range",
        "an IPv4 network of at least 4 addresses, e.g. \"10.192.0.0/10\"",
    ),
    ("tun.isolation", "\"none\" or \"destination\""),
];

fn allowed(key: &str) -> &'static str {
    TUN_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, a)| *a)
        .unwrap_or("a known key")
}

/// Which TUN streams may share a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunIsolation {
    /// All TUN streams share circuits (with SOCKS connections that sent no credentials).
    #[default]
    None,
    /// Streams to different destination hosts never share a circuit (Tor's
    /// `IsolateDestAddr`).
    Destination,
}

impl std::str::FromStr for TunIsolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(TunIsolation::None),
            "destination" => Ok(TunIsolation::Destination),
            _ => Err(format!("`{s}` is not \"none\" or \"destination\"")),
        }
    }
}

impl std::fmt::Display for TunIsolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunIsolation::None => "none",
            TunIsolation::Destination => "destination",
        })
    }
}

/// An interface address with its prefix length (host bits kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for IfAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` has no prefix length (e.g. 10.190.0.1/24)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=30).contains(p))
            .ok_or_else(|| format!("`{p}` is not a prefix length from 1 to 30"))?;
        Ok(IfAddr { addr, prefix })
    }
}

impl std::fmt::Display for IfAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `s` is a valid Linux interface name (IFNAMSIZ 16 with the NUL).
pub fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Parses a fake range: at least a /30.
pub fn parse_fake_range(s: &str) -> Result<Ipv4Net, String> {
    let n: Ipv4Net = s.parse()?;
    if n.prefix > 30 {
        return Err(format!("`{s}` has fewer than 4 addresses"));
    }
    Ok(n)
}

/// Parses an MTU from 576 to 65535.
pub fn parse_mtu(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|m| *m >= 576)
        .ok_or_else(|| format!("`{s}` is not an MTU from 576 to 65535"))
}

/// TUN settings from one source, every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunLayer {
    /// Run TUN mode.
    pub enabled: Option<bool>,
    /// Interface name.
    pub name: Option<String>,
    /// Interface address.
    pub address: Option<IfAddr>,
    /// MTU.
    pub mtu: Option<u16>,
    /// Routes pointed at the interface.
    pub routes: Option<Vec<Ipv4Net>>,
    /// Fake-address range for DNS answers.
    pub fake_range: Option<Ipv4Net>,
    /// Stream isolation.
    pub isolation: Option<TunIsolation>,
}

impl TunLayer {
    /// Parses the `[tun]` table of a config file.
    pub fn from_toml(v: &toml::Value, origin: &Origin) -> Result<TunLayer, ConfigError> {
        let invalid = |key: &'static str, v: &toml::Value| ConfigError::Invalid {
            origin: origin.clone(),
            key,
            value: v.to_string(),
            allowed: allowed(key),
        };
        let table = v.as_table().ok_or_else(|| invalid("tun", v))?;
        let mut l = TunLayer::default();
        let text = |key: &'static str, v: &toml::Value| -> Result<String, ConfigError> {
            v.as_str().map(str::to_owned).ok_or_else(|| invalid(key, v))
        };
        for (key, v) in table {
            match key.as_str() {
                "enabled" => {
                    l.enabled = Some(v.as_bool().ok_or_else(|| invalid("tun.enabled", v))?)
                }
                "name" => {
                    let s = text("tun.name", v)?;
                    if !valid_ifname(&s) {
                        return Err(invalid("tun.name", v));
                    }
                    l.name = Some(s);
                }
                "address" => {
                    l.address = Some(
                        text("tun.address", v)?
                            .parse()
                            .map_err(|_| invalid("tun.address", v))?,
                    )
                }
                "mtu" => {
                    l.mtu = Some(
                        v.as_integer()
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|m| *m >= 576)
                            .ok_or_else(|| invalid("tun.mtu", v))?,
                    )
                }
                "routes" => {
                    let list = v.as_array().ok_or_else(|| invalid("tun.routes", v))?;
                    l.routes = Some(
                        list.iter()
                            .map(|r| {
                                r.as_str()
                                    .and_then(|s| s.parse().ok())
                                    .ok_or_else(|| invalid("tun.routes", r))
                            })
                            .collect::<Result<_, _>>()?,
                    );
                }
                "fake_range" => {
                    l.fake_range = Some(
                        parse_fake_range(&text("tun.fake_range", v)?)
                            .map_err(|_| invalid("tun.fake_range", v))?,
                    )
                }
                "isolation" => {
                    l.isolation = Some(
                        text("tun.isolation", v)?
                            .parse()
                            .map_err(|_| invalid("tun.isolation", v))?,
                    )
                }
                other => {
                    return Err(ConfigError::UnknownKey {
                        origin: origin.clone(),
                        key: format!("tun.{other}"),
                        known: TUN_KEYS
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        Ok(l)
    }

    /// Merges `self` (higher precedence) over `lower` and the defaults; `None` when TUN
    /// mode is off.
    pub fn resolve(&self, lower: &TunLayer) -> Option<TunSettings> {
        macro_rules! pick {
            ($f:ident) => {
                self.$f.clone().or_else(|| lower.$f.clone())
            };
        }
        if !pick!(enabled).unwrap_or(false) {
            return None;
        }
        let fake_range = pick!(fake_range).unwrap_or(DEFAULT_FAKE_RANGE);
        let address = pick!(address).unwrap_or(IfAddr {
            addr: DEFAULT_TUN_ADDRESS.0,
            prefix: DEFAULT_TUN_ADDRESS.1,
        });
        Some(TunSettings {
            name: pick!(name).unwrap_or_else(|| DEFAULT_TUN_NAME.to_owned()),
            address,
            mtu: pick!(mtu).unwrap_or(DEFAULT_TUN_MTU),
            // Default: only the fake range, i.e. hostnames resolved through the TUN's DNS.
            // Whole-device mode routes 0.0.0.0/0 (see docs/client.md on relay bypass).
            routes: pick!(routes).unwrap_or_else(|| vec![fake_range]),
            fake: FakeIpConfig {
                range: fake_range,
                ..FakeIpConfig::default()
            },
            isolation: pick!(isolation).unwrap_or_default(),
            connect_timeout: Duration::from_secs(30),
            stream_attempts: 2,
            read_chunk: 64 * 1024,
        })
    }
}

/// Validated TUN settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunSettings {
    /// Interface name.
    pub name: String,
    /// Interface address and prefix.
    pub address: IfAddr,
    /// MTU of the interface and of the userspace stack.
    pub mtu: u16,
    /// Routes pointed at the interface (besides the interface's own network).
    pub routes: Vec<Ipv4Net>,
    /// Fake-address map settings.
    pub fake: FakeIpConfig,
    /// Stream isolation.
    pub isolation: TunIsolation,
    /// How long the exit may take to answer BEGIN.
    pub connect_timeout: Duration,
    /// Circuits tried for one stream when a circuit dies before the exit answers.
    pub stream_attempts: usize,
    /// Bytes read from the application per DATA batch.
    pub read_chunk: usize,
}

impl TunSettings {
    /// The `[tun]` table for `--print-config`.
    pub fn to_toml_table(&self) -> toml::Table {
        let s = |v: String| toml::Value::String(v);
        let mut t = toml::Table::new();
        t.insert("enabled".into(), toml::Value::Boolean(true));
        t.insert("name".into(), s(self.name.clone()));
        t.insert("address".into(), s(self.address.to_string()));
        t.insert("mtu".into(), toml::Value::Integer(i64::from(self.mtu)));
        t.insert(
            "routes".into(),
            toml::Value::Array(self.routes.iter().map(|r| s(r.to_string())).collect()),
        );
        t.insert("fake_range".into(), s(self.fake.range.to_string()));
        t.insert("isolation".into(), s(self.isolation.to_string()));
        t
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn origin() -> Origin {
        Origin::File(PathBuf::from("/etc/onionvpn/client.toml"))
    }

    fn parse(text: &str) -> Result<TunLayer, ConfigError> {
        let t: toml::Table = text.parse().unwrap();
        TunLayer::from_toml(&toml::Value::Table(t), &origin())
    }

    #[test]
    fn off_unless_enabled_and_defaults() {
        assert_eq!(TunLayer::default().resolve(&TunLayer::default()), None);
        let on = TunLayer {
            enabled: Some(true),
            ..TunLayer::default()
        };
        let s = on.resolve(&TunLayer::default()).unwrap();
        assert_eq!(s.name, "ovpn0");
        assert_eq!(s.address.to_string(), "10.190.0.1/24");
        assert_eq!(s.mtu, 1500);
        assert_eq!(s.routes, vec![DEFAULT_FAKE_RANGE]);
        assert_eq!(s.isolation, TunIsolation::None);
    }

    #[test]
    fn file_keys_and_precedence() {
        let file = parse(
            "enabled = true\nname = \"tun7\"\naddress = \"10.5.0.1/16\"\nmtu = 9000\n\
             routes = [\"0.0.0.0/0\"]\nfake_range = \"10.64.0.0/12\"\nisolation = \"destination\"",
        )
        .unwrap();
        let s = TunLayer::default().resolve(&file).unwrap();
        assert_eq!(s.name, "tun7");
        assert_eq!(s.mtu, 9000);
        assert_eq!(s.routes, vec!["0.0.0.0/0".parse().unwrap()]);
        assert_eq!(s.fake.range.to_string(), "10.64.0.0/12");
        assert_eq!(s.isolation, TunIsolation::Destination);
        let cli = TunLayer {
            mtu: Some(1400),
            ..TunLayer::default()
        };
        let s = cli.resolve(&file).unwrap();
        assert_eq!(s.mtu, 1400, "CLI beats file");
        assert_eq!(s.name, "tun7");
        // Round trip through --print-config's table.
        let back = TunLayer::from_toml(&toml::Value::Table(s.to_toml_table()), &origin())
            .unwrap()
            .resolve(&TunLayer::default())
            .unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("name = \"much-too-long-name0\"", "tun.name"),
            ("name = \"a b\"", "tun.name"),
            ("address = \"10.0.0.1\"", "tun.address"),
            ("address = \"10.0.0.1/31\"", "tun.address"),
            ("mtu = 100", "tun.mtu"),
            ("mtu = 70000", "tun.mtu"),
            ("routes = [\"10.0.0.0/33\"]", "tun.routes"),
            ("routes = \"0.0.0.0/0\"", "tun.routes"),
            ("fake_range = \"10.0.0.0/31\"", "tun.fake_range"),
            ("isolation = \"app\"", "tun.isolation"),
            ("enabled = 1", "tun.enabled"),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        match parse("device = \"x\"") {
            Err(ConfigError::UnknownKey { key, .. }) => assert_eq!(key, "tun.device"),
            other => panic!("{other:?}"),
        }
    }
}
