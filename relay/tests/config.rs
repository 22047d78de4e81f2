#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::field_reassign_with_default)]

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use onionvpn_directory::network::{Network, NetworkKey};
use onionvpn_directory::policy::Target;
use onionvpn_relay::cli::{self, Cli, CliError, Env};
use onionvpn_relay::config::{key_paths, known_keys, Config, ConfigError, EXAMPLE_CONFIG};
use proptest::prelude::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn example_parses_to_the_default() {
    let cfg = parse(EXAMPLE_CONFIG).unwrap();
    assert_eq!(cfg, Config::default());
}

#[test]
fn example_covers_every_key() {
    let example: toml::Table = toml::from_str(EXAMPLE_CONFIG).unwrap();
    let documented = key_paths(&example);
    // `[lightning]` is off by default, so the example documents it commented out.
    let known: std::collections::BTreeSet<String> = known_keys()
        .into_iter()
        .filter(|k| !k.starts_with("lightning."))
        .collect();
    for k in onionvpn_pay::ldk::config::KEYS {
        let leaf = k.rsplit('.').next().unwrap();
        assert!(
            EXAMPLE_CONFIG.contains(&format!("# {leaf} = "))
                || EXAMPLE_CONFIG.contains(&format!("# # {leaf} = ")),
            "lightning.{k} not documented in relay.example.toml"
        );
    }
    // Uncommented, the example's lightning section parses (and names only known keys).
    let tail = &EXAMPLE_CONFIG[EXAMPLE_CONFIG.find("\n# [lightning]\n").unwrap()..];
    let uncommented: String = tail
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let lit = parse(&uncommented).unwrap();
    assert!(lit.lightning.is_some());
    assert!(known.len() >= 25, "{known:?}");
    let missing: Vec<_> = known.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&known).collect();
    assert!(
        missing.is_empty(),
        "keys missing from relay.example.toml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys in the example the config lacks: {extra:?}"
    );
    // Every key has a comment right above it (or above its table's first key).
    let lines: Vec<&str> = EXAMPLE_CONFIG.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let is_key = l.split('=').next().is_some_and(|k| {
            let k = k.trim();
            !k.is_empty() && !k.starts_with('#') && !k.starts_with('"') && l.contains('=')
        });
        if is_key {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "key without a comment: {l}"
            );
        }
    }
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.listen, "0.0.0.0:9001".parse::<SocketAddr>().unwrap());
    assert!(!c.exit.enabled);
    assert!(!c.exit.policy.allow_private_destinations);
    assert!(!c.logging.log_sensitive);
    assert_eq!(c.dht.bootstrap.len(), 4);
    assert_eq!(c.limits.circuit_rate, 3);
    assert_eq!(c.limits.circuit_burst, 90);
    assert_eq!(c.keys.onion_key_lifetime_days, 28);
    assert_eq!(c.keys.onion_key_grace_days, 7);
    assert_eq!(c.network().unwrap(), Network::main());
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let err = parse(
        "lisen = \"1.2.3.4:1\"\n[limits]\ncircuit_rat = 3\n[bogus]\nx = 1\n[metrics]\nport = 1\n",
    )
    .unwrap_err();
    match &err {
        ConfigError::UnknownKeys { keys, path } => {
            assert_eq!(
                keys,
                &["bogus.x", "limits.circuit_rat", "lisen", "metrics.port"]
            );
            assert_eq!(path, Path::new("test.toml"));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("limits.circuit_rat") && msg.contains("test.toml"),
        "{msg}"
    );
}

#[test]
fn out_of_range_values_name_key_value_and_range() {
    let cases = [
        (
            "[limits]\ncircuit_rate = 0",
            "limits.circuit_rate",
            "0",
            "1..=10000",
        ),
        (
            "[limits]\nmax_queued_mib = 1",
            "limits.max_queued_mib",
            "1",
            "16..=1048576",
        ),
        (
            "advertised_bandwidth = 10",
            "advertised_bandwidth",
            "10",
            "1024..=",
        ),
        ("[network]\nshards = 0", "network.shards", "0", "1..=256"),
        (
            "[keys]\nonion_key_lifetime_days = 400",
            "keys.onion_key_lifetime_days",
            "400",
            "1..=365",
        ),
        (
            "[exit.policy]\nrules = [\"accept 80\", \"allow 443\"]",
            "exit.policy.rules[1]",
            "allow 443",
            "accept PORTS",
        ),
        (
            "[dht]\nbootstrap = [\"nohost\"]",
            "dht.bootstrap[0]",
            "nohost",
            "host:port",
        ),
        (
            "advertised_addresses = [\"0.0.0.0:9001\"]",
            "advertised_addresses[0]",
            "0.0.0.0:9001",
            "unicast",
        ),
        (
            "[network]\nname = \"has space\"",
            "network.name",
            "has space",
            "printable",
        ),
        (
            "[metrics]\nlisten = \"0.0.0.0:9477\"",
            "metrics.listen",
            "0.0.0.0:9477",
            "loopback",
        ),
    ];
    for (text, key, value, allowed) in cases {
        match parse(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let ConfigError::Invalid {
                    key: k,
                    value: v,
                    allowed: a,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(k, key, "{text}");
                assert!(v.contains(value), "{text}: value {v}");
                assert!(a.contains(allowed), "{text}: allowed {a}");
                let msg = e.to_string();
                assert!(msg.contains(key) && msg.contains(value), "{msg}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn wrong_types_and_syntax_name_the_key() {
    for (text, needle) in [
        ("[limits]\ncircuit_rate = \"three\"", "circuit_rate"),
        ("listen = \"not an address\"", "listen"),
        ("[exit.policy]\ndefault = \"allow\"", "default"),
        ("[logging]\nlevel = \"loud\"", "level"),
    ] {
        match parse(text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains(needle), "{text}: {message}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(parse("listen = "), Err(ConfigError::Parse { .. })));
}

#[test]
fn exit_policy_defaults_protect_the_operator_network() {
    let c = Config::default();
    // Not an exit unless enabled.
    assert!(!c.exit_policy().unwrap().is_exit());
    let c = parse("[exit]\nenabled = true").unwrap();
    let p = c.exit_policy().unwrap();
    assert!(p.is_exit());
    let ip = |s: &str| Target::Ip(s.parse::<IpAddr>().unwrap());
    assert!(p.allows(&ip("93.184.216.34"), 443));
    assert!(
        !p.allows(&ip("93.184.216.34"), 25),
        "SMTP rejected by default"
    );
    for private in [
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "169.254.0.1",
        "::1",
        "fe80::1",
    ] {
        assert!(!p.allows(&ip(private), 443), "{private}");
    }
    // The explicit opt-in local tests use.
    let c = parse("[exit]\nenabled = true\n[exit.policy]\nallow_private_destinations = true\nrules = [\"accept *\"]")
        .unwrap();
    assert!(c.exit_policy().unwrap().allows(&ip("127.0.0.1"), 8080));
    // A restrictive policy.
    let c = parse("[exit]\nenabled = true\n[exit.policy]\nrules = [\"accept 80\", \"accept 443\"]")
        .unwrap();
    let p = c.exit_policy().unwrap();
    assert!(p.allows(&Target::Host("example.com"), 443));
    assert!(!p.allows(&Target::Host("example.com"), 22));
    // Too many rules.
    let many: Vec<String> = (1..=33).map(|i| format!("\"accept {i}\"")).collect();
    let text = format!("[exit.policy]\nrules = [{}]", many.join(","));
    assert!(
        matches!(parse(&text), Err(ConfigError::Invalid { key, .. }) if key == "exit.policy.rules")
    );
}

#[test]
fn advertised_addresses_fall_back_to_a_specific_listen_address() {
    let c = Config::default();
    let err = c.advertised().unwrap_err();
    assert!(err.to_string().contains("advertised_addresses"), "{err}");
    let c = parse("listen = \"127.0.0.1:9101\"").unwrap();
    assert_eq!(
        c.advertised().unwrap(),
        vec!["127.0.0.1:9101".parse().unwrap()]
    );
    let c = parse("advertised_addresses = [\"203.0.113.7:9001\", \"[2001:db8::7]:9001\"]").unwrap();
    assert_eq!(c.advertised().unwrap().len(), 2);
    let five = "advertised_addresses = [\"1.1.1.1:1\",\"1.1.1.2:1\",\"1.1.1.3:1\",\"1.1.1.4:1\",\"1.1.1.5:1\"]";
    assert!(
        matches!(parse(five), Err(ConfigError::Invalid { key, .. }) if key == "advertised_addresses")
    );
}

#[test]
fn private_network_key_file_relative_to_config() {
    let tmp = tempfile::tempdir().unwrap();
    let key = NetworkKey::generate(&mut rand::rng(), "lab", 2).unwrap();
    key.write_new(&tmp.path().join("lab.key")).unwrap();
    let cfg_path = tmp.path().join("relay.toml");
    std::fs::write(&cfg_path, "[network]\nkey_file = \"lab.key\"\n").unwrap();
    let c = Config::load(&cfg_path).unwrap();
    assert_eq!(c.network.key_file, tmp.path().join("lab.key"));
    let n = c.network().unwrap();
    assert_eq!(n, Network::private(&key));
    assert_ne!(n, Network::main());
    // A missing key file names the key and the file.
    std::fs::write(&cfg_path, "[network]\nkey_file = \"nope.key\"\n").unwrap();
    let err = Config::load(&cfg_path).unwrap().network().unwrap_err();
    assert!(matches!(err, ConfigError::NetworkKey { ref path, .. } if path.ends_with("nope.key")));
    assert!(err.to_string().contains("network.key_file"));
}

#[test]
fn limits_and_keys_convert() {
    let c = parse("[limits]\ncircuit_rate = 5\ncircuit_burst = 50\ndefense_period_secs = 60\nmax_queued_mib = 64\n[keys]\nonion_key_lifetime_days = 2\nonion_key_grace_days = 1").unwrap();
    let r = c.limits.circuit_rate_config();
    assert_eq!((r.rate_per_sec, r.burst), (5, 50));
    assert_eq!(r.defense_period.as_secs(), 60);
    assert_eq!(c.limits.max_queued_bytes(), 64 << 20);
    let p = c.keys.rotation_policy();
    assert_eq!((p.lifetime_secs, p.grace_secs), (2 * 86_400, 86_400));
}

fn env_in(dir: &Path) -> Env {
    Env {
        state_directory: None,
        xdg_data_home: Some(dir.join("xdg")),
        home: None,
    }
}

fn cli(args: &[&str]) -> Cli {
    use clap::Parser;
    let mut v = vec!["onionvpn-relay"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap()
}

#[test]
fn init_writes_keys_and_a_commented_config_then_run_loads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay1");
    let d = data.to_str().unwrap();
    let env = env_in(tmp.path());
    let now = 1_800_000_000;

    let report = cli::init(&cli(&["init", "--data-dir", d]), &env, now).unwrap();
    assert!(report.config_written);
    assert_eq!(report.keys_created.len(), 3);
    assert_eq!(report.config_path, data.join("relay.toml"));
    let text = std::fs::read_to_string(&report.config_path).unwrap();
    assert!(text.contains("# ") && text.contains("[exit.policy]"));
    let cfg = Config::load(&report.config_path).unwrap();
    assert_eq!(cfg.data_dir, std::path::absolute(&data).unwrap());
    assert!(report.to_string().contains(&report.identity.to_string()));

    // Idempotent: a second init keeps everything.
    let again = cli::init(&cli(&["init", "--data-dir", d]), &env, now + 10).unwrap();
    assert!(!again.config_written);
    assert!(again.keys_created.is_empty());
    assert_eq!(again.identity, report.identity);

    // run refuses the default config (no advertised address for 0.0.0.0) with a clear error.
    let err = cli::prepare_run(&cli(&["--data-dir", d]), &env, now).unwrap_err();
    assert!(err.to_string().contains("advertised_addresses"), "{err}");

    // After the operator sets an address, `run --config` finds the data dir from the config.
    let edited = text.replace(
        "advertised_addresses = []",
        "advertised_addresses = [\"198.51.100.4:9001\"]",
    );
    std::fs::write(&report.config_path, edited).unwrap();
    let cfg_arg = report.config_path.to_str().unwrap();
    let setup = cli::prepare_run(&cli(&["--config", cfg_arg, "run"]), &env, now).unwrap();
    assert_eq!(setup.data_dir, std::path::absolute(&data).unwrap());
    assert_eq!(setup.keys.identity_public(), report.identity);
    assert!(setup.keys.changes().created.is_empty());
}

#[test]
fn init_with_default_data_dir_and_run_without_config() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path());
    let now = 1_800_000_000;
    let err = cli::prepare_run(&cli(&[]), &env, now).unwrap_err();
    assert!(
        matches!(err, CliError::NoConfig { ref path } if path.ends_with("onionvpn-relay/relay.toml"))
    );
    let r = cli::init(&cli(&["init"]), &env, now).unwrap();
    assert_eq!(r.data_dir, tmp.path().join("xdg").join("onionvpn-relay"));
    let mode = std::fs::metadata(&r.data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // The config written without --data-dir leaves data_dir empty (default lookup).
    assert_eq!(
        Config::load(&r.config_path).unwrap().data_dir,
        PathBuf::new()
    );
    assert!(matches!(
        cli::init(&cli(&["init"]), &Env::default(), now),
        Err(CliError::NoDataDir)
    ));
}

#[test]
fn init_refuses_to_bless_a_broken_existing_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("my.toml");
    std::fs::write(&cfg, "[limits]\ncircuit_rate = 0\n").unwrap();
    let d = tmp.path().join("d");
    let err = cli::init(
        &cli(&[
            "init",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            d.to_str().unwrap(),
        ]),
        &env_in(tmp.path()),
        1,
    )
    .unwrap_err();
    assert!(
        matches!(err, CliError::Config(ConfigError::Invalid { ref key, .. }) if key == "limits.circuit_rate")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any valid config serialises to TOML and parses back to itself.
    #[test]
    fn serialise_parse_round_trip(
        bw in 1024u64..=(1u64 << 40),
        mib in 0u64..=100_000_000,
        min in 0u64..=100_000_000,
        grace in 0u32..=(1 << 20),
        rate in 1u32..=10_000,
        burst in 1u32..=1_000_000,
        circuits in 1usize..=10_000_000,
        per_addr in 1u32..=100_000,
        queued in 16usize..=(1 << 20),
        exit in any::<bool>(),
        private in any::<bool>(),
        ports in proptest::collection::vec((1u16..=65535, 0u16..100, any::<bool>()), 0..32),
        port in any::<u16>(),
        sensitive in any::<bool>(),
    ) {
        let mut c = Config::default();
        c.advertised_bandwidth = bw;
        c.prices.msat_per_mib = mib;
        c.prices.msat_per_min = min;
        c.prices.grace_kib = grace;
        c.limits.circuit_rate = rate;
        c.limits.circuit_burst = burst;
        c.limits.max_circuits = circuits;
        c.limits.max_connections_per_address = per_addr;
        c.limits.max_queued_mib = queued;
        c.exit.enabled = exit;
        c.exit.policy.allow_private_destinations = private;
        c.exit.policy.rules = ports
            .iter()
            .map(|&(lo, w, acc)| {
                let hi = lo.saturating_add(w);
                format!("{} {lo}-{hi}", if acc { "accept" } else { "reject" })
            })
            .collect();
        c.listen = SocketAddr::from(([127, 0, 0, 1], port));
        c.logging.log_sensitive = sensitive;
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back = parse(&text).unwrap();
        prop_assert_eq!(&back, &c);
        let policy = back.exit_policy().unwrap();
        prop_assert_eq!(policy.is_exit(), exit && ports.iter().any(|p| p.2));
    }
}

#[test]
fn config_files_larger_than_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("big.toml");
    std::fs::write(&p, vec![b'#'; 2 << 20]).unwrap();
    assert!(matches!(
        Config::load(&p),
        Err(ConfigError::TooLarge { .. })
    ));
    let missing = tmp.path().join("missing.toml");
    assert!(
        matches!(Config::load(&missing), Err(ConfigError::Read { ref path, .. }) if *path == missing)
    );
}

#[test]
fn print_config_redacts_the_rpc_password() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("relay.toml");
    let text = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:9001\"\n[lightning]\nnetwork = \"regtest\"\n\
         listen = \"127.0.0.1:9735\"\n[lightning.bitcoind]\nhost = \"127.0.0.1\"\nport = 18443\n\
         user = \"u\"\npassword = \"hunter2-secret\"\n",
        tmp.path().display()
    );
    std::fs::write(&path, text).unwrap();
    let env = env_in(tmp.path());
    let out = cli::print_config(
        &cli(&["--print-config", "--config", path.to_str().unwrap()]),
        &env,
    )
    .unwrap();
    assert!(!out.contains("hunter2"), "{out}");
    assert!(
        out.starts_with(&format!(
            "# Secrets are printed as [redacted]: see them in {}.",
            path.display()
        )),
        "{out}"
    );
    // The rest is the configuration, the password replaced.
    let back = parse(&out).unwrap();
    let orig = Config::load(&path).unwrap();
    let bitcoind = |c: &Config| c.lightning.clone().unwrap().bitcoind.unwrap();
    assert_eq!(bitcoind(&back).password, "[redacted]");
    assert_eq!(bitcoind(&back).user, bitcoind(&orig).user);
    assert_eq!(back.listen, orig.listen);
    assert_eq!(back.prices, orig.prices);
}
