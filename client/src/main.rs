//! `onionvpn-client`: a SOCKS5 proxy into the onionvpn overlay; `onionvpn-client wallet …`
//! manages the Lightning wallet that pays the relays (through the running client's control
//! socket, or on the node started for the command); `status` asks the running client.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use onionvpn_client::cli::{Cli, ClientCommand};
use onionvpn_client::config::ClientConfig;
use onionvpn_client::payments::PaymentsSetup;
use onionvpn_client::status::ClientStatus;
use onionvpn_client::{start_client_with, RuntimeOptions};
use onionvpn_pay::ldk::control::{self, forward_or_run, WalletAccess, WalletOutcome};
use onionvpn_pay::ldk::wallet_cmd::{self, WalletCommand};
use onionvpn_pay::ldk::{node_runtime, LdkConfig, LdkRail};
use onionvpn_pay::payer::PayerConfig;
use onionvpn_pay::{PayError, PaymentRail};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("onionvpn-client: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        #[allow(clippy::print_stdout)]
        {
            let source = cli.config_path(&|k| std::env::var_os(k));
            print!("{}", config.to_toml_string(source.as_deref()));
        }
        return ExitCode::SUCCESS;
    }
    // ldk-node needs a multi-threaded runtime; the client's is one.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onionvpn-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Some(ClientCommand::Wallet { command }) => return wallet(&rt, &config, command),
        Some(ClientCommand::Status) => return status(&config),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The Lightning node runs on a runtime of its own: its disk writes must not stall the
    // circuits (see `onionvpn_pay::ldk::node_runtime`).
    let ldk_rt = match config
        .lightning
        .as_ref()
        .map(|_| node_runtime())
        .transpose()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("onionvpn-client: cannot start the Lightning runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(config, ldk_rt.as_ref().map(|r| r.handle().clone())));
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Some(r) = ldk_rt {
        r.shutdown_timeout(Duration::from_secs(5));
    }
    code
}

/// `onionvpn-client wallet …`: sent to the running client over its control socket; when
/// no client answers there, run on the node started here.
fn wallet(rt: &tokio::runtime::Runtime, config: &ClientConfig, cmd: &WalletCommand) -> ExitCode {
    let socket = control::socket_path(&config.data_dir);
    let outcome = forward_or_run(&socket, cmd, || {
        let Some(ln) = &config.lightning else {
            return Err(
                "the config has no [lightning] table: this client has no wallet (see \
                 docs/client.md)"
                    .to_owned(),
            );
        };
        rt.block_on(wallet_cmd::run_standalone(ln, &config.data_dir, cmd, &[]))
            .map_err(|e| match e {
                PayError::StoreInUse { .. } => format!(
                    "{e}: a client holds the Lightning node but does not answer on {}",
                    socket.display()
                ),
                e => e.to_string(),
            })
    });
    let answer = match outcome {
        WalletOutcome::Forwarded(r) => r.map_err(|e| e.to_string()),
        WalletOutcome::Standalone(r) => r,
    };
    match answer {
        Ok(answer) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{answer}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onionvpn-client: wallet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `onionvpn-client status`: asks the running client over its control socket.
fn status(config: &ClientConfig) -> ExitCode {
    match control::query_status::<ClientStatus>(&control::socket_path(&config.data_dir)) {
        Ok(s) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{s}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onionvpn-client: status: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ClientConfig, ldk: Option<tokio::runtime::Handle>) -> ExitCode {
    let mut opts = RuntimeOptions::default();
    let rail = match (&config.lightning, ldk) {
        (Some(ln), Some(ldk)) => match start_node(ln, &config.data_dir, &ldk).await {
            Ok(r) => {
                tracing::info!(
                    node_id = %wallet_cmd::hex(&r.node_id().0),
                    "lightning node running"
                );
                Some(r)
            }
            Err(e) => {
                eprintln!("onionvpn-client: lightning node did not start: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            tracing::warn!(
                "no [lightning] table: the client pays nobody; relays that charge end its \
                 circuits after their grace"
            );
            None
        }
    };
    opts.control_socket = true;
    opts.wallet = rail.as_ref().map(|r| WalletAccess {
        rail: r.clone(),
        reach: Vec::new(),
    });
    if let (Some(r), Some(ln)) = (&rail, &config.lightning) {
        opts.payments = Some(PaymentsSetup {
            rail: r.clone() as Arc<dyn PaymentRail>,
            payer: PayerConfig {
                max_fee_msat: config.payer.max_fee_msat.min(ln.max_routing_fee_msat),
                ..config.payer.clone()
            },
        });
    }
    let code = serve(config, opts).await;
    if let Some(r) = rail {
        if let Err(e) = r.stop().await {
            tracing::warn!("stopping the lightning node: {e}");
        }
    }
    code
}

/// Starts the Lightning node on `ldk` (its own runtime).
async fn start_node(
    ln: &LdkConfig,
    data_dir: &std::path::Path,
    ldk: &tokio::runtime::Handle,
) -> Result<Arc<LdkRail>, PayError> {
    let (ln, data_dir) = (ln.clone(), data_dir.to_path_buf());
    ldk.spawn(async move { LdkRail::start(&ln, &data_dir).await })
        .await
        .map_err(|e| PayError::Node {
            context: "starting node",
            detail: e.to_string(),
        })?
}

async fn serve(config: ClientConfig, opts: RuntimeOptions) -> ExitCode {
    let client = match start_client_with(config, opts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("onionvpn-client: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "onionvpn-client: SOCKS5 on {} (use curl --socks5-hostname {} …); Ctrl-C stops",
        client.socks_addr(),
        client.socks_addr()
    );
    if let Some(tun) = client.tun() {
        eprintln!(
            "onionvpn-client: TUN interface {} up; point DNS at an address of its network \
             other than its own (e.g. {})",
            tun.name(),
            onionvpn_client::tun::settings::DEFAULT_TUN_DNS
        );
    }
    wait_for_stop().await;
    tracing::info!("shutting down");
    client.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("onionvpn-client: cannot wait for SIGTERM: {e}");
            if let Err(e) = tokio::signal::ctrl_c().await {
                eprintln!("onionvpn-client: cannot wait for Ctrl-C: {e}");
            }
            return;
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                eprintln!("onionvpn-client: cannot wait for Ctrl-C: {e}");
                let _ = term.recv().await;
            }
        }
        _ = term.recv() => {}
    }
}
