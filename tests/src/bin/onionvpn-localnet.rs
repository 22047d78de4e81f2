//! `onionvpn-localnet`: a whole onionvpn network on loopback in one command — a mainline
//! DHT testnet, 6 relays (2 exits allowed to reach loopback), an HTTP server with test
//! content and a client — then prints the SOCKS address and a curl line. Ctrl-C stops it.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use onionvpn_tests::{LocalNet, LocalNetConfig};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let socks_port: u16 = std::env::var("ONIONVPN_LOCALNET_SOCKS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9050);
    println!("starting a local onionvpn network: DHT testnet, 6 relays (2 exits), HTTP server, client ...");
    let cfg = LocalNetConfig {
        client: Some((3, SocketAddr::from((Ipv4Addr::LOCALHOST, socks_port)))),
        relay_threads: None,
        ..LocalNetConfig::default()
    };
    let net = match LocalNet::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("onionvpn-localnet: {e}");
            if socks_port != 0 {
                eprintln!("(is port {socks_port} busy? set ONIONVPN_LOCALNET_SOCKS_PORT=0 for any free port)");
            }
            return ExitCode::FAILURE;
        }
    };
    let (Some(socks), Some(http)) = (net.socks_addr(), net.http_addr()) else {
        return ExitCode::FAILURE;
    };
    println!();
    println!("relays:");
    for r in net.relays() {
        let d = r.descriptor();
        let exit = d.body().exit_policy.is_exit();
        println!(
            "  {}  {}",
            r.or_addr(),
            if exit {
                "exit (may reach loopback)"
            } else {
                "middle"
            }
        );
    }
    println!("HTTP test server: http://{http}/bytes/N  (N bytes; also /slow/N, POST /upload)");
    println!("SOCKS5 proxy (3 hops, remote DNS): {socks}");
    println!();
    println!("try:");
    println!("  curl --socks5-hostname {socks} http://{http}/bytes/1048576 | sha256sum");
    println!();
    println!("Ctrl-C stops everything.");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("onionvpn-localnet: cannot wait for Ctrl-C: {e}");
    }
    println!("stopping ...");
    net.shutdown().await;
    ExitCode::SUCCESS
}
