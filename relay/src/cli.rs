//! Command line: `onionvpn-relay [--config FILE] [--data-dir DIR] [run]`,
//! `onionvpn-relay init [--data-dir DIR]`, `onionvpn-relay check`, `onionvpn-relay status`,
//! `onionvpn-relay earnings` and `onionvpn-relay wallet <command>`.
//!
//! This module resolves paths, loads the configuration and the keys; the binary's `main`
//! parses [`Cli`], calls [`init`] or [`prepare_run`], and hands a [`RunSetup`] to the runtime.
//!
//! Where things are:
//! - data directory: `--data-dir`, else the config's `data_dir`, else `$STATE_DIRECTORY`
//!   (systemd `StateDirectory=`), else `$XDG_DATA_HOME/onionvpn-relay`, else
//!   `$HOME/.local/share/onionvpn-relay`;
//! - config file: `--config`, else `<data dir>/relay.toml`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use onionvpn_directory::descriptor::IdentityKey;
use thiserror::Error;

use crate::config::{Config, ConfigError, CONFIG_FILE_NAME, EXAMPLE_CONFIG};
use crate::keys::{KeyError, KeyStore, RotationPolicy};

/// Directory name used under `$XDG_DATA_HOME` or `~/.local/share`.
pub const APP_DIR_NAME: &str = "onionvpn-relay";

/// Command-line arguments.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "onionvpn-relay",
    version,
    about = "onionvpn relay: carries onion circuits for paying clients"
)]
pub struct Cli {
    /// Config file [default: <data dir>/relay.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (keys, ledger, caches) [default: config's data_dir, $STATE_DIRECTORY,
    /// $XDG_DATA_HOME/onionvpn-relay or ~/.local/share/onionvpn-relay]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the loaded configuration as TOML (secrets shown as `[redacted]`) and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create the keys and a commented config file (what already exists is kept).
    Init,
    /// Run the relay (the default).
    Run,
    /// Show what the relay earned: total, per day, circuits paid (from the ledger in the
    /// data directory; while the relay runs, from the summary it keeps beside it).
    Earnings,
    /// Check what clients need, from outside the relay: the advertised addresses accept a
    /// link, the descriptor is in the DHT and verifies, the relay is announced, the exit
    /// policy; exits 1 if a check fails.
    Check,
    /// Show the running relay's uptime, circuits, traffic, prices, earnings and last errors.
    Status,
    /// The Lightning wallet: addresses, balances, channels, invoices, payouts (forwarded to
    /// the running relay; when it is not running, the node is started for the command).
    Wallet {
        /// What to do.
        #[command(subcommand)]
        command: onionvpn_pay::ldk::wallet_cmd::WalletCommand,
    },
}

impl Cli {
    /// The subcommand, `run` when none was given.
    pub fn action(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }
}

/// The environment variables that locate the default data directory (read once, passed in so
/// tests need not touch the process environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`; the first entry if several).
    pub state_directory: Option<PathBuf>,
    /// `$XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
}

impl Env {
    /// Reads the variables from the process environment.
    pub fn from_process() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty())
        };
        Self {
            state_directory: std::env::var_os("STATE_DIRECTORY").and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            }),
            xdg_data_home: var("XDG_DATA_HOME"),
            home: var("HOME"),
        }
    }

    /// The default data directory. Relative values are ignored (as the XDG spec requires).
    pub fn default_data_dir(&self) -> Option<PathBuf> {
        let abs = |p: &Option<PathBuf>| p.clone().filter(|p| p.is_absolute());
        abs(&self.state_directory)
            .or_else(|| abs(&self.xdg_data_home).map(|d| d.join(APP_DIR_NAME)))
            .or_else(|| abs(&self.home).map(|h| h.join(".local").join("share").join(APP_DIR_NAME)))
    }
}

/// Errors of the command line.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CliError {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// No data directory was given and none could be derived from the environment.
    #[error("no data directory: pass --data-dir, set data_dir in the config, or set HOME")]
    NoDataDir,
    /// `run` found no config file.
    #[error("no config file at {}: run `onionvpn-relay init` first, or pass --config", path.display())]
    NoConfig {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The earnings ledger could not be read.
    #[error("earnings: {0}")]
    Earnings(String),
    /// `check` found no keys.
    #[error("no relay keys under {}: run `onionvpn-relay init` first", dir.display())]
    NoKeys {
        /// The data directory.
        dir: PathBuf,
    },
    /// `status` could not ask the relay.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// A wallet command failed, or the relay has no `[lightning]` section.
    #[error("wallet: {0}")]
    Wallet(String),
    /// `--print-config` could not render the configuration.
    #[error("printing the configuration: {0}")]
    PrintConfig(String),
    /// `init` could not write the config file.
    #[error("{}: cannot write config: {source}", path.display())]
    WriteConfig {
        /// Config file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The data directory used.
    pub data_dir: PathBuf,
    /// The config file.
    pub config_path: PathBuf,
    /// Whether the config file was written (false: it existed and was kept).
    pub config_written: bool,
    /// Key files created (empty: all existed).
    pub keys_created: Vec<PathBuf>,
    /// The relay's identity.
    pub identity: IdentityKey,
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data directory: {}", self.data_dir.display())?;
        if self.keys_created.is_empty() {
            writeln!(f, "keys:           existing keys kept")?;
        } else {
            for k in &self.keys_created {
                writeln!(f, "created key:    {}", k.display())?;
            }
        }
        let verb = if self.config_written {
            "written"
        } else {
            "existing, kept"
        };
        writeln!(f, "config:         {} ({verb})", self.config_path.display())?;
        writeln!(f, "identity:       {}", self.identity)?;
        writeln!(
            f,
            "next: set advertised_addresses in the config, back up {}, then run `onionvpn-relay{}`",
            self.data_dir.join(crate::keys::KEYS_DIR).display(),
            if self.config_path == self.data_dir.join(CONFIG_FILE_NAME) {
                format!(" --data-dir {}", self.data_dir.display())
            } else {
                format!(" --config {}", self.config_path.display())
            }
        )
    }
}

/// Everything the runtime needs to start.
#[derive(Debug)]
pub struct RunSetup {
    /// The validated configuration.
    pub config: Config,
    /// Where it was read from.
    pub config_path: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The relay's keys (onion key rotated if it was due).
    pub keys: KeyStore,
}

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn resolve_data_dir(cli: &Cli, config: Option<&Config>, env: &Env) -> Result<PathBuf, CliError> {
    if let Some(d) = &cli.data_dir {
        return Ok(d.clone());
    }
    if let Some(c) = config {
        if !c.data_dir.as_os_str().is_empty() {
            return Ok(c.data_dir.clone());
        }
    }
    env.default_data_dir().ok_or(CliError::NoDataDir)
}

/// `onionvpn-relay init`: creates the data directory, the keys and a commented config file
/// (the example config, with `data_dir` filled in when `--data-dir` was given). Keeps what
/// exists; running it twice changes nothing.
pub fn init(cli: &Cli, env: &Env, now: u64) -> Result<InitReport, CliError> {
    // An existing config given with --config may name the data directory and key policy.
    let existing = match &cli.config {
        Some(p) if p.exists() => Some(Config::load(p)?),
        _ => None,
    };
    let data_dir = resolve_data_dir(cli, existing.as_ref(), env)?;
    let policy = existing
        .as_ref()
        .map_or_else(RotationPolicy::default, |c| c.keys.rotation_policy());
    let keys = KeyStore::load_or_create_with(&data_dir, policy, now)?;
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| data_dir.join(CONFIG_FILE_NAME));
    let config_written = if config_path.exists() {
        // Check it: init should not leave a broken config behind unnoticed.
        Config::load(&config_path)?;
        false
    } else {
        let text = config_text(cli.data_dir.as_deref());
        write_new_file(&config_path, text.as_bytes())?;
        true
    };
    Ok(InitReport {
        data_dir,
        config_path,
        config_written,
        keys_created: keys.changes().created.clone(),
        identity: keys.identity_public(),
    })
}

/// The config text `init` writes: the example, with `data_dir` set when one was given.
pub fn config_text(data_dir: Option<&Path>) -> String {
    match data_dir {
        Some(d) => {
            // Absolute so that the config works from any working directory.
            let abs = std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf());
            let value = toml::Value::String(abs.to_string_lossy().into_owned());
            EXAMPLE_CONFIG.replacen("\ndata_dir = \"\"\n", &format!("\ndata_dir = {value}\n"), 1)
        }
        None => EXAMPLE_CONFIG.to_owned(),
    }
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let err = |source| CliError::WriteConfig {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// `onionvpn-relay [run]`: loads and checks the config (including the advertised addresses,
/// the exit policy and the network), turns log redaction on or off, and loads the keys
/// (creating missing ones, rotating the onion key if due).
pub fn prepare_run(cli: &Cli, env: &Env, now: u64) -> Result<RunSetup, CliError> {
    let (config, config_path) = read_config(cli, env)?;
    config.advertised()?;
    config.exit_policy()?;
    config.network()?;
    crate::redact::set_log_sensitive(config.logging.log_sensitive);
    let data_dir = resolve_data_dir(cli, Some(&config), env)?;
    let keys = KeyStore::load_or_create_with(&data_dir, config.keys.rotation_policy(), now)?;
    Ok(RunSetup {
        config,
        config_path,
        data_dir,
        keys,
    })
}

/// `onionvpn-relay earnings`: the ledger's summary as text. The ledger is a single-process
/// database: while the relay runs it holds it, and this reads the summary the relay rewrites
/// after each payment instead (saying so).
pub fn earnings(cli: &Cli, env: &Env) -> Result<String, CliError> {
    let config_path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => resolve_data_dir(cli, None, env)
            .ok()
            .map(|d| d.join(CONFIG_FILE_NAME)),
    };
    let config = match config_path {
        Some(p) if p.exists() => Some(Config::load(&p)?),
        _ => None,
    };
    let data_dir = resolve_data_dir(cli, config.as_ref(), env)?;
    let ledger_dir = crate::payments::ledger_dir(&data_dir);
    if !ledger_dir.exists() {
        return Err(CliError::Earnings(format!(
            "no earnings ledger in {}: this relay has not run with payments \
             (a [lightning] section) yet",
            data_dir.display()
        )));
    }
    match onionvpn_pay::ledger::Ledger::open(&ledger_dir) {
        Ok(l) => l
            .summary()
            .map(|s| s.to_string())
            .map_err(|e| CliError::Earnings(e.to_string())),
        Err(e) => {
            let summary = crate::payments::summary_path(&ledger_dir);
            match std::fs::read_to_string(&summary) {
                Ok(text) => Ok(format!(
                    "the relay is running (it holds the ledger); its summary after the last \
                     payment:\n{text}"
                )),
                Err(_) => Err(CliError::Earnings(format!(
                    "cannot open the ledger ({e}); if the relay is running it holds the \
                     ledger and has written no summary yet (no payment since it started)"
                ))),
            }
        }
    }
}

/// What `check` runs with: the validated config, its data directory and the relay's public
/// keys (read without writing anything, so `check` may run beside the relay).
#[derive(Debug)]
pub struct CheckSetup {
    /// The configuration.
    pub config: Config,
    /// The data directory.
    pub data_dir: PathBuf,
    /// What the checks compare against.
    pub target: crate::check::CheckTarget,
}

/// `onionvpn-relay check`: loads the config and the public keys and builds the check target.
/// A config whose `listen` port is 0 and that has no `advertised_addresses` cannot be
/// checked from outside (the port is only known to the running relay).
pub fn prepare_check(cli: &Cli, env: &Env) -> Result<CheckSetup, CliError> {
    let config_path = match &cli.config {
        Some(p) => p.clone(),
        None => resolve_data_dir(cli, None, env)?.join(CONFIG_FILE_NAME),
    };
    if !config_path.exists() {
        return Err(CliError::NoConfig { path: config_path });
    }
    let config = Config::load(&config_path)?;
    let addresses = config.advertised()?;
    let exit_policy = config.exit_policy()?;
    let network = config.network()?;
    let data_dir = resolve_data_dir(cli, Some(&config), env)?;
    let (identity, link_key) =
        crate::keys::read_public_keys(&data_dir)?.ok_or_else(|| CliError::NoKeys {
            dir: data_dir.clone(),
        })?;
    let target = crate::check::CheckTarget {
        identity: identity.0,
        link_key,
        network,
        addresses,
        exit_enabled: config.exit.enabled,
        exit_policy,
        lightning: None,
    };
    Ok(CheckSetup {
        config,
        data_dir,
        target,
    })
}

/// `onionvpn-relay status`: the control socket of the relay using this data directory.
pub fn control_socket(cli: &Cli, env: &Env) -> Result<PathBuf, CliError> {
    let config = match &cli.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let data_dir = match (config.as_ref(), &cli.data_dir) {
        (Some(_), _) | (None, Some(_)) => resolve_data_dir(cli, config.as_ref(), env)?,
        (None, None) => {
            // The default config may name another data directory.
            let d = resolve_data_dir(cli, None, env)?;
            let p = d.join(CONFIG_FILE_NAME);
            let c = if p.exists() {
                Some(Config::load(&p)?)
            } else {
                None
            };
            resolve_data_dir(cli, c.as_ref(), env)?
        }
    };
    Ok(crate::control::socket_path(&data_dir))
}

/// `--print-config`: the loaded configuration as TOML. Secrets (the `[lightning]` bitcoind
/// RPC password, credentials in an Esplora URL) are printed as `[redacted]`; the first line
/// names the file that holds them. Parsing the text back gives the same configuration but
/// for those values.
pub fn print_config(cli: &Cli, env: &Env) -> Result<String, CliError> {
    let (mut config, path) = read_config(cli, env)?;
    config.lightning = config.lightning.map(|l| l.redacted());
    let body = toml::to_string(&config).map_err(|e| CliError::PrintConfig(e.to_string()))?;
    Ok(format!(
        "# Secrets are printed as {}: see them in {}.\n{body}",
        onionvpn_pay::ldk::REDACTED,
        path.display()
    ))
}

/// The config file (`--config`, else `<data dir>/relay.toml`), loaded, with its data
/// directory.
pub fn load_config(cli: &Cli, env: &Env) -> Result<(Config, PathBuf), CliError> {
    let (config, _) = read_config(cli, env)?;
    let data_dir = resolve_data_dir(cli, Some(&config), env)?;
    Ok((config, data_dir))
}

/// Reads the configuration `--config` names, or the one in the data directory, and says
/// where it was.
fn read_config(cli: &Cli, env: &Env) -> Result<(Config, PathBuf), CliError> {
    let config_path = match &cli.config {
        Some(p) => p.clone(),
        None => resolve_data_dir(cli, None, env)?.join(CONFIG_FILE_NAME),
    };
    if !config_path.exists() {
        return Err(CliError::NoConfig { path: config_path });
    }
    let config = Config::load(&config_path)?;
    Ok((config, config_path))
}

/// Where clients should reach the relay's Lightning node besides its configured listening
/// address: when the node listens on a wildcard address, the relay's advertised IPs at the
/// node's port (what the self-test probes; behind NAT without hairpinning it fails from
/// inside even when it works from outside).
pub fn ln_reach(
    advertised: &[std::net::SocketAddr],
    ln: &onionvpn_pay::ldk::LdkConfig,
) -> Vec<std::net::SocketAddr> {
    let listen = ln
        .listen
        .as_deref()
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok());
    match listen {
        Some(l) if l.ip().is_unspecified() => advertised
            .iter()
            .map(|a| std::net::SocketAddr::new(a.ip(), l.port()))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        <Cli as CommandFactory>::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let c = Cli::try_parse_from(["onionvpn-relay"]).unwrap();
        assert_eq!(c.action(), Command::Run);
        let c = Cli::try_parse_from(["onionvpn-relay", "--config", "r.toml", "run"]).unwrap();
        assert_eq!(c.config, Some(PathBuf::from("r.toml")));
        assert_eq!(c.action(), Command::Run);
        let c = Cli::try_parse_from(["onionvpn-relay", "init", "--data-dir", "/d"]).unwrap();
        assert_eq!(c.action(), Command::Init);
        assert_eq!(c.data_dir, Some(PathBuf::from("/d")));
        let c = Cli::try_parse_from(["onionvpn-relay", "--data-dir", "/d", "init"]).unwrap();
        assert_eq!(c.data_dir, Some(PathBuf::from("/d")));
        let c = Cli::try_parse_from(["onionvpn-relay", "status"]).unwrap();
        assert_eq!(c.action(), Command::Status);
        let c = Cli::try_parse_from(["onionvpn-relay", "--config", "r.toml", "check"]).unwrap();
        assert_eq!(c.action(), Command::Check);
        let c =
            Cli::try_parse_from(["onionvpn-relay", "wallet", "invoice", "5000", "payout"]).unwrap();
        assert_eq!(
            c.action(),
            Command::Wallet {
                command: onionvpn_pay::ldk::wallet_cmd::WalletCommand::Invoice {
                    msat: 5000,
                    description: "payout".into()
                }
            }
        );
        assert!(
            Cli::try_parse_from(["onionvpn-relay", "wallet", "open-channel", "x", "1"]).is_err()
        );
        assert!(Cli::try_parse_from(["onionvpn-relay", "statuss"]).is_err());
        assert!(Cli::try_parse_from(["onionvpn-relay", "--bogus"]).is_err());
    }

    #[test]
    fn default_data_dir_order() {
        let mut env = Env {
            state_directory: Some("/var/lib/onionvpn-relay".into()),
            xdg_data_home: Some("/x".into()),
            home: Some("/h".into()),
        };
        assert_eq!(
            env.default_data_dir(),
            Some(PathBuf::from("/var/lib/onionvpn-relay"))
        );
        env.state_directory = None;
        assert_eq!(
            env.default_data_dir(),
            Some(PathBuf::from("/x/onionvpn-relay"))
        );
        env.xdg_data_home = Some("relative".into());
        assert_eq!(
            env.default_data_dir(),
            Some(PathBuf::from("/h/.local/share/onionvpn-relay"))
        );
        env.home = None;
        assert_eq!(env.default_data_dir(), None);
    }
}
