//! `onionvpn-relay`: `init` writes keys and a commented config; `run` (the default) runs the
//! relay until SIGTERM or SIGINT, then shuts down cleanly and exits 0.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use onionvpn_relay::cli::{earnings, init, prepare_run, unix_now, Cli, Command, Env};
use onionvpn_relay::config::LogLevel;
use onionvpn_relay::{start_relay_with_keys, RuntimeOptions};
use tracing::{error, info};

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
    // This small runtime only waits for signals; the relay runs on its own multi-thread
    // runtime with one worker per core (see onionvpn_relay::runtime).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onionvpn-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
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
        match wait_for_signal().await {
            Ok(name) => info!("{name}: shutting down"),
            Err(e) => error!("cannot listen for signals ({e}): shutting down"),
        }
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
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
