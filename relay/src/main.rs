//! `onionvpn-relay`: `init` writes keys and a commented config; `run` (the default) runs the
//! relay until SIGTERM or SIGINT, then shuts down cleanly (the Lightning node last) and exits
//! 0; `check` runs the self-test from outside; `status` asks the running relay over its
//! control socket; `wallet` forwards a wallet command to it, or runs the node for the command
//! when the relay is not running.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use std::path::Path;
use std::sync::Arc;

use onionvpn_pay::ldk::control::{forward_or_run, WalletOutcome};
use onionvpn_pay::ldk::wallet_cmd::{self, WalletAnswer, WalletCommand};
use onionvpn_pay::ldk::{LdkConfig, LdkRail};
use onionvpn_relay::check::{check_dht, run_checks, CheckOptions, CheckTarget, LightningProbe};
use onionvpn_relay::cli::{
    control_socket, earnings, init, ln_reach, load_config, prepare_check, prepare_run,
    print_config, unix_now, Cli, CliError, Command, Env,
};
use onionvpn_relay::config::LogLevel;
use onionvpn_relay::control::WalletAccess;
use onionvpn_relay::notify::Notifier;
use onionvpn_relay::payments::{ledger_dir, PaymentsSetup};
use onionvpn_relay::{start_relay_with_keys, RelayHandle, RuntimeOptions};
use tracing::{error, info, warn};

/// Longest wait for the first descriptor publication before telling systemd we are ready
/// anyway (the listener is up; publication goes on retrying).
const READY_WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    if cli.print_config {
        return print_result(print_config(&cli, &env));
    }
    match cli.action() {
        Command::Init => print_result(init(&cli, &env, unix_now())),
        Command::Run => run(&cli, &env),
        Command::Earnings => print_result(earnings(&cli, &env)),
        Command::Check => check(&cli, &env),
        Command::Status => status(&cli, &env),
        Command::Wallet { command } => print_result(wallet(&cli, &env, &command)),
    }
}

/// Prints a command's text to stdout, or its error to stderr, and says how it went.
fn print_result<T: std::fmt::Display>(result: Result<T, CliError>) -> ExitCode {
    match result {
        Ok(text) => {
            let _ = write!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onionvpn-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The Lightning node's own runtime (ldk-node needs a multi-threaded one; apart from the
/// relay's so that its disk writes never stall cells).
fn ldk_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    onionvpn_pay::ldk::node_runtime()
        .map_err(|e| CliError::Wallet(format!("cannot start the Lightning runtime: {e}")))
}

/// Runs `cmd` against the relay's node, standalone (the relay is not running).
fn standalone(
    ln: &LdkConfig,
    data_dir: &Path,
    cmd: &WalletCommand,
    reach: &[std::net::SocketAddr],
) -> Result<WalletAnswer, CliError> {
    let rt = ldk_runtime()?;
    rt.block_on(wallet_cmd::run_standalone(ln, data_dir, cmd, reach))
        .map_err(|e| CliError::Wallet(e.to_string()))
}

/// `onionvpn-relay wallet …`: forwarded to the running relay over its control socket; when
/// no relay answers there, run on the node started here.
fn wallet(cli: &Cli, env: &Env, cmd: &WalletCommand) -> Result<WalletAnswer, CliError> {
    let path = control_socket(cli, env)?;
    let outcome = forward_or_run(&path, cmd, || {
        let (config, data_dir) = load_config(cli, env)?;
        let ln = config.lightning.as_ref().ok_or_else(|| {
            CliError::Wallet(
                "the config has no [lightning] section: this relay has no wallet".into(),
            )
        })?;
        let reach = ln_reach(&config.advertised().unwrap_or_default(), ln);
        standalone(ln, &data_dir, cmd, &reach)
    });
    match outcome {
        WalletOutcome::Forwarded(r) => r.map_err(|e| CliError::Wallet(e.to_string())),
        WalletOutcome::Standalone(r) => r,
    }
}

/// The Lightning receive check for `check`: asked of the running relay, else run on the node
/// started here; `None` without `[lightning]`.
fn lightning_probe(cli: &Cli, env: &Env) -> Option<LightningProbe> {
    let (config, _) = load_config(cli, env).ok()?;
    config.lightning.as_ref()?;
    Some(match wallet(cli, env, &WalletCommand::ReceiveCheck) {
        Ok(a) => LightningProbe::from_answer(&a),
        Err(e) => LightningProbe::Fail(e.to_string()),
    })
}

fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("onionvpn-relay: cannot start the runtime: {e}");
            None
        }
    }
}

fn status(cli: &Cli, env: &Env) -> ExitCode {
    let report = control_socket(cli, env).and_then(|p| {
        onionvpn_relay::control::query_status(&p).map_err(onionvpn_relay::cli::CliError::from)
    });
    match report {
        Ok(r) => {
            let _ = write!(std::io::stdout().lock(), "{}", r.render(unix_now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onionvpn-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli, env: &Env) -> ExitCode {
    let mut setup = match prepare_check(cli, env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("onionvpn-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    setup.target.lightning = lightning_probe(cli, env);
    let Some(rt) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let ok = rt.block_on(async move {
        let dht = match check_dht(&setup.config.dht.bootstrap) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("onionvpn-relay: cannot start a DHT node for the checks: {e}");
                return false;
            }
        };
        let report = run_checks(&setup.target, &dht, &CheckOptions::default(), unix_now()).await;
        let _ = write!(std::io::stdout().lock(), "{report}");
        report.all_ok()
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The start-up self-test: the same checks as `check`, from a separate DHT node and a
/// separate socket; failures are logged and kept for `status`.
async fn self_test(
    handle: &RelayHandle,
    mut target: CheckTarget,
    bootstrap: &[String],
    wallet: Option<&WalletAccess>,
) {
    if let Some(w) = wallet {
        target.lightning = Some(
            match wallet_cmd::execute(&w.rail, &WalletCommand::ReceiveCheck, &w.reach).await {
                Ok(a) => LightningProbe::from_answer(&a),
                Err(e) => LightningProbe::Fail(e.to_string()),
            },
        );
    }
    let dht = match check_dht(bootstrap) {
        Ok(d) => d,
        Err(e) => {
            warn!("self-test skipped: no DHT node: {e}");
            return;
        }
    };
    let report = run_checks(&target, &dht, &CheckOptions::default(), unix_now()).await;
    for line in report.to_string().lines() {
        if line.starts_with("FAIL") || line.starts_with("WARN") {
            warn!("self-test: {line}");
            handle.record_error(&format!("self-test: {line}"));
        } else {
            info!("self-test: {line}");
        }
    }
}

fn init_tracing(level: &LogLevel) {
    let default = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    // RUST_LOG overrides the config's level. Addresses are redacted by the code that logs them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: &Cli, env: &Env) -> ExitCode {
    let setup = match prepare_run(cli, env, unix_now()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("onionvpn-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(&setup.config.logging.level);
    // This small runtime only waits for signals, notifies systemd and runs the self-test; the
    // relay runs on its own multi-thread runtime with one worker per core (see
    // onionvpn_relay::runtime).
    let Some(rt) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let notifier = Notifier::from_env();
    let network = setup.config.network();
    let exit_enabled = setup.config.exit.enabled;
    let bootstrap = setup.config.dht.bootstrap.clone();
    // The Lightning node runs on its own runtime, started before the relay and stopped after
    // it, so that no payment arrives while nobody records it.
    let (ldk_rt, wallet) = match start_lightning(&setup) {
        Ok(v) => v,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut opts = RuntimeOptions::default();
    if let Some(w) = &wallet {
        opts.payments = Some(PaymentsSetup {
            rail: w.rail.clone(),
            ledger_dir: ledger_dir(&setup.data_dir),
        });
        opts.wallet = Some(w.clone());
    }
    let rail = wallet.as_ref().map(|w| w.rail.clone());
    let code = rt.block_on(async move {
        let handle = match start_relay_with_keys(setup.config, setup.keys, opts).await {
            Ok(h) => h,
            Err(e) => {
                error!("relay failed to start: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(
            "relay running; identity {}",
            onionvpn_directory::IdentityKey(handle.identity())
        );
        // Signals are set up before READY so that a stop right after start is clean.
        let signals = wait_for_signal();
        tokio::pin!(signals);
        let published = tokio::select! {
            p = handle.first_publication(READY_WAIT) => p,
            r = &mut signals => return stop(handle, &notifier, r).await,
        };
        if !published {
            warn!("descriptor not yet published after {READY_WAIT:?}; still trying");
        }
        if let Err(e) = notifier.notify("READY=1\nSTATUS=relaying") {
            warn!("cannot notify systemd: {e}");
        }
        let test = async {
            match network {
                Ok(n) => {
                    let target =
                        CheckTarget::from_descriptor(&handle.descriptor(), n, exit_enabled);
                    self_test(&handle, target, &bootstrap, wallet.as_ref()).await;
                }
                Err(e) => warn!("self-test skipped: {e}"),
            }
            std::future::pending::<()>().await
        };
        let watchdog = async {
            let Some(every) = notifier.watchdog_interval() else {
                return std::future::pending::<()>().await;
            };
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Only a relay runtime that still runs tasks keeps systemd's watchdog fed.
                if handle.alive(every).await {
                    let _ = notifier.notify("WATCHDOG=1");
                } else {
                    error!("relay runtime unresponsive; not feeding the watchdog");
                }
            }
        };
        let r = tokio::select! {
            r = &mut signals => r,
            _ = test => unreachable_pending(),
            _ = watchdog => unreachable_pending(),
        };
        stop(handle, &notifier, r).await
    });
    if let (Some(rt), Some(rail)) = (ldk_rt, rail) {
        // Unacknowledged payments stay in the node's queue and come again at the next start.
        match rt.block_on(rail.stop()) {
            Ok(()) => info!("lightning node stopped"),
            Err(e) => warn!("stopping the lightning node: {e}"),
        }
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    code
}

/// Starts the Lightning node of `[lightning]` on its own runtime, or warns that the relay
/// charges nothing without one.
fn start_lightning(
    setup: &onionvpn_relay::cli::RunSetup,
) -> Result<(Option<tokio::runtime::Runtime>, Option<WalletAccess>), CliError> {
    let Some(ln) = &setup.config.lightning else {
        if setup.config.charges() {
            warn!(
                "prices are set but there is no [lightning] section: this relay charges \
                 nothing and enforces no payment (add [lightning] to get paid; see \
                 docs/operator.md)"
            );
        }
        return Ok((None, None));
    };
    let rt = ldk_runtime()?;
    let rail: Arc<LdkRail> = rt
        .block_on(LdkRail::start(ln, &setup.data_dir))
        .map_err(|e| CliError::Wallet(format!("lightning node did not start: {e}")))?;
    info!(
        node_id = %wallet_cmd::hex(&onionvpn_pay::PaymentRail::node_id(&*rail).0),
        "lightning node running"
    );
    let reach = ln_reach(&setup.config.advertised().unwrap_or_default(), ln);
    Ok((Some(rt), Some(WalletAccess { rail, reach })))
}

/// Never called: the futures it stands for never complete.
fn unreachable_pending() -> std::io::Result<&'static str> {
    Ok("internal")
}

async fn stop(
    handle: RelayHandle,
    notifier: &Notifier,
    signal: std::io::Result<&'static str>,
) -> ExitCode {
    match signal {
        Ok(name) => info!("{name}: shutting down"),
        Err(e) => error!("cannot listen for signals ({e}): shutting down"),
    }
    let _ = notifier.notify("STOPPING=1");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for SIGTERM or SIGINT.
async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
