//! `onionvpn-client`: a SOCKS5 proxy into the onionvpn overlay.

use std::process::ExitCode;

use clap::Parser;
use onionvpn_client::cli::Cli;
use onionvpn_client::start_client;
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
            print!("{}", config.to_toml_string());
        }
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    rt.block_on(async move {
        let client = match start_client(config).await {
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
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("onionvpn-client: cannot wait for Ctrl-C: {e}");
        }
        tracing::info!("shutting down");
        client.shutdown().await;
        ExitCode::SUCCESS
    })
}
