//! The `onionvpn-client` command line (clap derive) and its merge into a [`ClientConfig`].
//!
//! Parsing only: nothing here opens a socket or starts a runtime. [`Cli::load`] reads the
//! config file (`--config`, else the default path if it exists) and merges
//! command line > file > defaults.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use onionvpn_proto::consts::MAX_HOPS;

use crate::config::{
    default_config_path, valid_bootstrap, valid_network_name, ClientConfig, ConfigError, Layer,
    NetworkChoice,
};
use crate::tun::fakeip::Ipv4Net;
use crate::tun::settings::{
    parse_fake_range, parse_mtu, valid_ifname, IfAddr, TunIsolation, TunLayer,
};

/// Command-line options of `onionvpn-client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Parser)]
#[command(
    name = "onionvpn-client",
    version,
    about = "onionvpn client: a SOCKS5 proxy into the paid onion overlay",
    long_about = "onionvpn client: a SOCKS5 proxy into the paid onion overlay.\n\n\
        Point applications at the SOCKS port with remote DNS, e.g.\n  \
        curl --socks5-hostname 127.0.0.1:9050 https://example.com/\n\n\
        Settings: command line over config file over defaults (see docs/client.md)."
)]
pub struct Cli {
    /// Circuit length in hops, 1 to 8 [default: 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=(MAX_HOPS as i64)))]
    pub hops: Option<u8>,

    /// SOCKS5 listen address [default: 127.0.0.1:9050]
    #[arg(long, value_name = "ADDR")]
    pub socks: Option<SocketAddr>,

    /// Config file [default: $XDG_CONFIG_HOME/onionvpn/client.toml if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Data directory [default: $XDG_STATE_HOME/onionvpn or ~/.local/state/onionvpn]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// DHT bootstrap node; repeat for several; replaces the list [default: public mainline DHT]
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_bootstrap)]
    pub bootstrap: Vec<String>,

    /// Public network name [default: main]
    #[arg(long, value_name = "NAME", value_parser = parse_network, conflicts_with = "network_key")]
    pub network: Option<String>,

    /// Private network key file (the network takes its name from it)
    #[arg(long, value_name = "FILE")]
    pub network_key: Option<PathBuf>,

    /// Highest price per MiB relayed, per hop, in millisatoshi [default: 2000]
    #[arg(long, value_name = "MSAT")]
    pub max_price_mib: Option<u64>,

    /// Highest price per minute of circuit life, per hop, in millisatoshi [default: 100]
    #[arg(long, value_name = "MSAT")]
    pub max_price_min: Option<u64>,

    /// Spending cap in millisatoshi: stop paying once this much is spent [default: 1000000]
    #[arg(long, value_name = "MSAT")]
    pub budget: Option<u64>,

    /// Log addresses and destinations unredacted (for debugging only)
    #[arg(long)]
    pub log_sensitive: bool,

    /// Print the merged configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,

    /// TUN mode: also serve a TUN interface (needs CAP_NET_ADMIN); see docs/client.md
    #[arg(long, help_heading = "TUN mode")]
    pub tun: bool,

    /// TUN interface name [default: ovpn0]
    #[arg(long, value_name = "NAME", value_parser = parse_ifname, help_heading = "TUN mode")]
    pub tun_name: Option<String>,

    /// TUN interface address with prefix [default: 10.190.0.1/24]
    #[arg(long, value_name = "ADDR/LEN", help_heading = "TUN mode")]
    pub tun_address: Option<IfAddr>,

    /// TUN MTU, 576 to 65535 [default: 1500]
    #[arg(long, value_name = "BYTES", value_parser = parse_mtu, help_heading = "TUN mode")]
    pub tun_mtu: Option<u16>,

    /// Route pointed at the TUN; repeat for several; replaces the list [default: the fake range]
    #[arg(long, value_name = "NET/LEN", help_heading = "TUN mode")]
    pub tun_route: Vec<Ipv4Net>,

    /// Range of fake addresses given in DNS answers [default: 10.192.0.0/10]
    #[arg(long, value_name = "NET/LEN", value_parser = parse_fake_range, help_heading = "TUN mode")]
    pub tun_fake_range: Option<Ipv4Net>,

    /// Which TUN streams may share a circuit: none (all) or destination [default: none]
    #[arg(long, value_name = "MODE", help_heading = "TUN mode")]
    pub tun_isolation: Option<TunIsolation>,

    /// What to do (default: run the client).
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
}

/// Subcommands of `onionvpn-client`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ClientCommand {
    /// The Lightning wallet that pays the relays: addresses, balances, channels, invoices.
    /// Sent to the running client over its control socket; when no client runs, the node is
    /// started for the command.
    Wallet {
        /// What to do.
        #[command(subcommand)]
        command: onionvpn_pay::ldk::wallet_cmd::WalletCommand,
    },
    /// The running client's state: circuits, spend, budget left, what each relay was paid
    /// (asked over its control socket).
    Status,
}

fn parse_ifname(s: &str) -> Result<String, String> {
    if valid_ifname(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not an interface name (1 to 15 letters, digits, '-', '_' or '.')"
        ))
    }
}

fn parse_bootstrap(s: &str) -> Result<String, String> {
    if valid_bootstrap(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not HOST:PORT (hostname, IPv4 or [IPv6], port 1-65535)"
        ))
    }
}

fn parse_network(s: &str) -> Result<String, String> {
    if valid_network_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a network name (1 to 64 printable ASCII characters, no spaces)"
        ))
    }
}

impl Cli {
    /// The settings given on the command line, as a layer.
    pub fn layer(&self) -> Layer {
        Layer {
            hops: self.hops,
            socks: self.socks,
            data_dir: self.data_dir.clone(),
            bootstrap: (!self.bootstrap.is_empty()).then(|| self.bootstrap.clone()),
            network: match (&self.network, &self.network_key) {
                (Some(n), _) => Some(NetworkChoice::Public(n.clone())),
                (None, Some(k)) => Some(NetworkChoice::KeyFile(k.clone())),
                (None, None) => None,
            },
            max_price_mib: self.max_price_mib,
            max_price_min: self.max_price_min,
            budget: self.budget,
            // A flag can only switch it on; absent, the file decides.
            log_sensitive: self.log_sensitive.then_some(true),
            // File only (see ClientConfig::stall_timeout).
            stall_timeout_s: None,
            stall_avoid_s: None,
            tun: TunLayer {
                // A flag can only switch it on; absent, the file decides.
                enabled: self.tun.then_some(true),
                name: self.tun_name.clone(),
                address: self.tun_address,
                mtu: self.tun_mtu,
                routes: (!self.tun_route.is_empty()).then(|| self.tun_route.clone()),
                fake_range: self.tun_fake_range,
                isolation: self.tun_isolation,
            },
            // File only (see ClientConfig::lightning).
            lightning: None,
            payments: None,
        }
    }

    /// The config file to read: `--config` (which must exist), else the default path if a
    /// file is there.
    pub fn config_path(&self, env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| default_config_path(env).filter(|p| p.is_file()))
    }

    /// Reads the config file and merges command line > file > defaults, with `env` for the
    /// XDG variables.
    pub fn load_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<ClientConfig, ConfigError> {
        let file = self
            .config_path(env)
            .map(|p| Layer::from_file(&p))
            .transpose()?;
        ClientConfig::resolve(&self.layer(), file.as_ref(), env)
    }

    /// [`Cli::load_with_env`] with the process environment.
    pub fn load(&self) -> Result<ClientConfig, ConfigError> {
        self.load_with_env(&|k| std::env::var_os(k))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::config::{
        default_bootstrap, ClientConfig, DEFAULT_BUDGET, DEFAULT_MAX_PRICE_MIB,
        DEFAULT_MAX_PRICE_MIN, DEFAULT_SOCKS, KEYS,
    };

    const EXAMPLE: &str = include_str!("../client.example.toml");

    fn home_env(k: &str) -> Option<OsString> {
        (k == "HOME").then(|| OsString::from("/home/u"))
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("onionvpn-client").chain(args.iter().copied()))
    }

    fn file(text: &str) -> Result<Layer, ConfigError> {
        Layer::from_toml(text, Path::new("/etc/onionvpn/client.toml"))
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).unwrap();
        let c = ClientConfig::resolve(&cli.layer(), None, &home_env).unwrap();
        assert_eq!(c.hops, 3);
        assert_eq!(c.socks, DEFAULT_SOCKS);
        assert_eq!(c.socks.to_string(), "127.0.0.1:9050");
        assert_eq!(c.data_dir, PathBuf::from("/home/u/.local/state/onionvpn"));
        assert_eq!(c.bootstrap, default_bootstrap());
        assert!(c
            .bootstrap
            .iter()
            .any(|b| b == "router.bittorrent.com:6881"));
        assert_eq!(c.network, NetworkChoice::Public("main".into()));
        assert_eq!(c.price_cap.msat_per_mib, DEFAULT_MAX_PRICE_MIB);
        assert_eq!(c.price_cap.msat_per_min, DEFAULT_MAX_PRICE_MIN);
        assert_eq!(c.budget_msat, DEFAULT_BUDGET);
        assert!(!c.log_sensitive);
        assert!(!cli.print_config);
    }

    #[test]
    fn cli_overrides_file_overrides_defaults() {
        let f = file(
            "hops = 2\nsocks = \"127.0.0.1:9150\"\nbudget = 5\nbootstrap = [\"a.example:1\"]\n\
             log_sensitive = true\nnetwork_key = \"net.key\"",
        )
        .unwrap();
        let cli = parse(&[
            "--hops",
            "5",
            "--bootstrap",
            "127.0.0.1:6881",
            "--bootstrap",
            "[::1]:6882",
            "--network",
            "testnet",
            "--max-price-mib",
            "7",
        ])
        .unwrap();
        let c = ClientConfig::resolve(&cli.layer(), Some(&f), &home_env).unwrap();
        assert_eq!(c.hops, 5, "CLI beats file");
        assert_eq!(c.socks.port(), 9150, "file beats default");
        assert_eq!(c.budget_msat, 5);
        assert_eq!(c.bootstrap, vec!["127.0.0.1:6881", "[::1]:6882"]);
        assert_eq!(c.network, NetworkChoice::Public("testnet".into()));
        assert_eq!(c.price_cap.msat_per_mib, 7);
        assert_eq!(c.price_cap.msat_per_min, DEFAULT_MAX_PRICE_MIN);
        assert!(c.log_sensitive, "absent flag leaves the file's value");
        // Without CLI network, the file's key file wins, anchored at the file's directory.
        let c = ClientConfig::resolve(&Layer::default(), Some(&f), &home_env).unwrap();
        assert_eq!(
            c.network,
            NetworkChoice::KeyFile(PathBuf::from("/etc/onionvpn/net.key"))
        );
    }

    #[test]
    fn hops_bounds_on_the_command_line() {
        for bad in ["0", "9", "-1", "three"] {
            let e = parse(&[&format!("--hops={bad}")]).unwrap_err().to_string();
            assert!(e.contains("--hops"), "{e}");
        }
        let e = parse(&["--hops", "9"]).unwrap_err().to_string();
        assert!(e.contains("1..=8"), "{e}");
        for ok in 1..=8u8 {
            assert_eq!(parse(&["--hops", &ok.to_string()]).unwrap().hops, Some(ok));
        }
    }

    #[test]
    fn hops_bounds_in_the_file() {
        for bad in ["0", "9", "-3", "\"3\"", "3.0"] {
            let e = file(&format!("hops = {bad}")).unwrap_err();
            assert!(
                matches!(e, ConfigError::Invalid { key: "hops", .. }),
                "{bad}: {e}"
            );
            let msg = e.to_string();
            assert!(msg.contains("`hops`") && msg.contains(bad) && msg.contains("1 to 8"));
        }
        assert_eq!(file("hops = 8").unwrap().hops, Some(8));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = file("hops = 3\nsocks_port = 9050").unwrap_err();
        match &e {
            ConfigError::UnknownKey { key, .. } => assert_eq!(key, "socks_port"),
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("`socks_port`") && msg.contains("/etc/onionvpn/client.toml"));
        // A table is an unknown key too, named by its table name.
        let e = file("[exit]\nenabled = true").unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { ref key, .. } if key == "exit"));
    }

    #[test]
    fn bad_socks_address_names_key_and_value() {
        for bad in [
            "\"localhost:9050\"",
            "\"127.0.0.1\"",
            "9050",
            "\"1.2.3.4:99999\"",
        ] {
            let e = file(&format!("socks = {bad}")).unwrap_err();
            assert!(
                matches!(e, ConfigError::Invalid { key: "socks", .. }),
                "{bad}: {e}"
            );
            let msg = e.to_string();
            assert!(msg.contains("`socks`"), "{msg}");
            assert!(msg.contains(bad), "{msg}");
            assert!(msg.contains("IP address and port"), "{msg}");
        }
        assert!(parse(&["--socks", "localhost:9050"]).is_err());
        assert_eq!(
            parse(&["--socks", "[::1]:1080"]).unwrap().socks,
            Some("[::1]:1080".parse().unwrap())
        );
    }

    #[test]
    fn other_bad_values_name_their_key() {
        for (text, key) in [
            ("budget = -1", "budget"),
            ("max_price_mib = \"cheap\"", "max_price_mib"),
            ("max_price_min = true", "max_price_min"),
            ("bootstrap = []", "bootstrap"),
            ("bootstrap = [\"nohostport\"]", "bootstrap"),
            ("bootstrap = \"a:1\"", "bootstrap"),
            ("network = \"has space\"", "network"),
            ("network = \"\"", "network"),
            ("log_sensitive = 1", "log_sensitive"),
            ("data_dir = \"\"", "data_dir"),
            ("network_key = 3", "network_key"),
            ("stall_timeout_s = 0", "stall_timeout_s"),
            ("stall_timeout_s = 3601", "stall_timeout_s"),
            ("stall_timeout_s = 1.5", "stall_timeout_s"),
            ("stall_avoid_s = -1", "stall_avoid_s"),
            ("stall_avoid_s = 604801", "stall_avoid_s"),
        ] {
            match file(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(file("hops = "), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn stall_settings_come_from_the_file() {
        let layer = file("stall_timeout_s = 30\nstall_avoid_s = 0").unwrap();
        let c = ClientConfig::resolve(&Layer::default(), Some(&layer), &home_env).unwrap();
        assert_eq!(c.stall_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.stall_avoid, std::time::Duration::ZERO);
        let d = ClientConfig::resolve(&Layer::default(), None, &home_env).unwrap();
        assert_eq!(d.stall_timeout, std::time::Duration::from_secs(15));
        assert_eq!(d.stall_avoid, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn network_and_key_are_exclusive() {
        assert!(matches!(
            file("network = \"a\"\nnetwork_key = \"k\""),
            Err(ConfigError::NetworkConflict { .. })
        ));
        let e = parse(&["--network", "a", "--network-key", "k"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(parse(&["--network", "bad name"]).is_err());
        assert!(parse(&["--bootstrap", "host"]).is_err());
    }

    /// The example file, with every `# key = value` line uncommented.
    fn example_uncommented() -> toml::Table {
        let text: String = EXAMPLE
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("# ")?;
                // Table headers (`# [tun]`) too, so the table's keys land in it.
                if rest.starts_with('[') && rest.ends_with(']') {
                    return Some(format!("{rest}\n"));
                }
                let (key, _) = rest.split_once(" = ")?;
                key.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
                    .then(|| format!("{rest}\n"))
            })
            .collect();
        text.parse().unwrap()
    }

    #[test]
    fn example_covers_every_key_with_its_default() {
        let example = example_uncommented();
        let example_keys: BTreeSet<&str> = example.keys().map(String::as_str).collect();
        let known: BTreeSet<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(example_keys, known);

        let default = ClientConfig::resolve(&Layer::default(), None, &home_env).unwrap();
        let table = default.to_toml_table();
        let mut serialised: BTreeSet<&str> = table.keys().map(String::as_str).collect();
        // Only a private network serialises `network_key`; it has no default. The `[tun]`
        // table is serialised only when TUN mode is on (checked below).
        serialised.insert("network_key");
        serialised.insert("tun");
        // `[lightning]` has no default: serialised only when configured.
        serialised.insert("lightning");
        assert_eq!(serialised, known, "KEYS and ClientConfig out of sync");
        for k in onionvpn_pay::ldk::config::KEYS {
            let leaf = k.rsplit('.').next().unwrap();
            assert!(
                EXAMPLE.contains(&format!("# {leaf} = ")),
                "lightning.{k} not documented in client.example.toml"
            );
        }
        let ln = example.get("lightning").and_then(|t| t.as_table()).unwrap();
        let mut only_ln = toml::Table::new();
        only_ln.insert("lightning".into(), toml::Value::Table(ln.clone()));
        assert!(file(&only_ln.to_string()).unwrap().lightning.is_some());

        for (k, v) in &table {
            if k == "data_dir" {
                continue; // depends on $HOME; the example spells it with ~
            }
            assert_eq!(example.get(k), Some(v), "default of `{k}` in the example");
        }
        // With its private-network line left out, the uncommented example is a valid file
        // that yields the defaults (data_dir via ~).
        let mut valid = example.clone();
        valid.remove("network_key");
        valid.remove("lightning");
        let layer = file(&valid.to_string()).unwrap();
        let c = ClientConfig::resolve(&Layer::default(), Some(&layer), &home_env).unwrap();
        assert_eq!(c, default);
        // The `[tun]` table: every key, with the defaults TUN mode gets when switched on.
        let tun_example = example.get("tun").and_then(|t| t.as_table()).unwrap();
        let tun_keys: BTreeSet<String> = tun_example.keys().map(|k| format!("tun.{k}")).collect();
        let tun_known: BTreeSet<String> = crate::tun::settings::TUN_KEYS
            .iter()
            .map(|(k, _)| (*k).to_owned())
            .collect();
        assert_eq!(tun_keys, tun_known);
        let on = parse(&["--tun"]).unwrap();
        let c = ClientConfig::resolve(&on.layer(), Some(&layer), &home_env).unwrap();
        let mut tun_default = c.tun.unwrap().to_toml_table();
        tun_default.insert("enabled".into(), toml::Value::Boolean(false));
        assert_eq!(tun_example, &tun_default, "TUN defaults in the example");
    }

    #[test]
    fn wallet_subcommand() {
        let cli = parse(&["--data-dir", "/d", "wallet", "balance"]).unwrap();
        assert_eq!(
            cli.command,
            Some(ClientCommand::Wallet {
                command: onionvpn_pay::ldk::wallet_cmd::WalletCommand::Balance
            })
        );
        assert!(parse(&["wallet", "invoice", "many"]).is_err());
        assert_eq!(parse(&[]).unwrap().command, None);
    }

    #[test]
    fn tun_flags() {
        let cli = parse(&[
            "--tun",
            "--tun-name",
            "vpn1",
            "--tun-address",
            "10.9.0.1/16",
            "--tun-mtu",
            "9000",
            "--tun-route",
            "0.0.0.0/0",
            "--tun-route",
            "10.0.0.0/8",
            "--tun-fake-range",
            "10.128.0.0/12",
            "--tun-isolation",
            "destination",
        ])
        .unwrap();
        let c = ClientConfig::resolve(&cli.layer(), None, &home_env).unwrap();
        let t = c.tun.clone().unwrap();
        assert_eq!(t.name, "vpn1");
        assert_eq!(t.address.to_string(), "10.9.0.1/16");
        assert_eq!(t.mtu, 9000);
        assert_eq!(t.routes.len(), 2);
        assert_eq!(t.fake.range.to_string(), "10.128.0.0/12");
        assert_eq!(t.isolation, crate::tun::TunIsolation::Destination);
        // --print-config output parses back to the same settings.
        let back = file(&c.to_toml_string(None)).unwrap();
        let again = ClientConfig::resolve(&Layer::default(), Some(&back), &home_env).unwrap();
        assert_eq!(again.tun, c.tun);
        // Without --tun the other flags do not switch TUN mode on.
        let off = parse(&["--tun-mtu", "9000"]).unwrap();
        assert!(ClientConfig::resolve(&off.layer(), None, &home_env)
            .unwrap()
            .tun
            .is_none());
        for bad in [
            &["--tun-name", "way-too-long-ifname"][..],
            &["--tun-mtu", "100"],
            &["--tun-address", "10.0.0.1"],
            &["--tun-route", "1.2.3.4/40"],
            &["--tun-isolation", "app"],
            &["--tun-fake-range", "10.0.0.0/31"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn printed_config_parses_back_to_itself() {
        let cli = parse(&[
            "--hops",
            "1",
            "--socks",
            "[::1]:9999",
            "--data-dir",
            "/var/lib/x",
            "--network-key",
            "/k",
            "--budget",
            "0",
            "--log-sensitive",
        ])
        .unwrap();
        let c = ClientConfig::resolve(&cli.layer(), None, &home_env).unwrap();
        let text = c.to_toml_string(None);
        let back = Layer::from_toml(&text, Path::new("/elsewhere/c.toml")).unwrap();
        let c2 = ClientConfig::resolve(&Layer::default(), Some(&back), &home_env).unwrap();
        assert_eq!(c, c2);
    }

    #[test]
    fn load_reads_given_and_default_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_dir = dir.path().join("onionvpn");
        std::fs::create_dir(&cfg_dir).unwrap();
        let default_file = cfg_dir.join("client.toml");
        std::fs::write(&default_file, "hops = 2\ndata_dir = \"state\"").unwrap();
        let xdg = dir.path().to_owned();
        let env = move |k: &str| match k {
            "XDG_CONFIG_HOME" => Some(xdg.clone().into_os_string()),
            "HOME" => Some(OsString::from("/home/u")),
            _ => None,
        };

        // No --config: the default file is read.
        let c = parse(&[]).unwrap().load_with_env(&env).unwrap();
        assert_eq!(c.hops, 2);
        assert_eq!(c.data_dir, cfg_dir.join("state"));

        // --config wins over the default file.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "hops = 4").unwrap();
        let cli = parse(&["--config", other.to_str().unwrap()]).unwrap();
        assert_eq!(cli.load_with_env(&env).unwrap().hops, 4);

        // A missing --config file is an error naming it; a missing default file is not.
        let missing = dir.path().join("missing.toml");
        let cli = parse(&["--config", missing.to_str().unwrap()]).unwrap();
        let e = cli.load_with_env(&env).unwrap_err();
        assert!(matches!(e, ConfigError::Read { ref path, .. } if *path == missing));
        assert!(e.to_string().contains("missing.toml"));
        let c = parse(&[]).unwrap().load_with_env(&home_env).unwrap();
        assert_eq!(c.hops, 3);
    }
}
