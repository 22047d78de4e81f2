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
