//! `onionvpn-relay`: `init` writes keys and a commented config; `run` (the default) runs the
//! relay until SIGTERM or SIGINT, then shuts down cleanly and exits 0; `check` runs the
//! self-test from outside; `status` asks the running relay over its control socket.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use onionvpn_relay::check::{check_dht, run_checks, CheckOptions, CheckTarget};
use onionvpn_relay::cli::{
    control_socket, earnings, init, prepare_check, prepare_run, unix_now, Cli, Command, Env,
};
use onionvpn_relay::config::LogLevel;
use onionvpn_relay::notify::Notifier;
use onionvpn_relay::{start_relay_with_keys, RelayHandle, RuntimeOptions};
use tracing::{error, info, warn};

/// Longest wait for the first descriptor publication before telling systemd we are ready
/// anyway (the listener is up; publication goes on retrying).
const READY_WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    match cli.command.unwrap_or(Command::Run) {
        Command::Init => match init(&cli, &env, unix_now()) {
            Ok(report) => {
                let _ = write!(std::io::stdout().lock(), "{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("onionvpn-relay: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run => run(&cli, &env),
        Command::Earnings => match earnings(&cli, &env) {
            Ok(text) => {
                let _ = write!(std::io::stdout().lock(), "{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("onionvpn-relay: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check => check(&cli, &env),
        Command::Status => status(&cli, &env),
    }
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
    let setup = match prepare_check(cli, env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("onionvpn-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
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
async fn self_test(handle: &RelayHandle, target: CheckTarget, bootstrap: &[String]) {
    let dht = match check_dht(bootstrap) {
        Ok(d) => d,
        Err(e) => {
            warn!("self-test skipped: no DHT node: {e}");
            return;
        }
    };
    let report = run_checks(&target, &dht, &CheckOptions::default(), unix_now()).await;
    for line in report.to_string().lines() {
        if line.starts_with("FAIL") {
            warn!("self-test: {line}");
            handle.record_error(&format!("self-test: {}", line.trim_start_matches("FAIL  ")));
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
    rt.block_on(async move {
        let handle = match start_relay_with_keys(
            setup.config,
            setup.keys,
            RuntimeOptions::default(),
        )
        .await
        {
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
                    self_test(&handle, target, &bootstrap).await;
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
    })
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
