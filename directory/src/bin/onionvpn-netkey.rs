//! `onionvpn-netkey <file> <name> [shards]`: makes a private network key file (mode 0600).
//! Give the file to every relay and client of the private network.

use std::path::PathBuf;
use std::process::ExitCode;

use onionvpn_directory::{Network, NetworkKey};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: onionvpn-netkey <file> <name> [shards, default 1]");
        return ExitCode::from(2);
    }
    let shards = match args.get(2).map(|s| s.parse::<u16>()) {
        None => 1,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("shards must be a number in 1..=256");
            return ExitCode::from(2);
        }
    };
    let key = match NetworkKey::generate(&mut rand::rng(), &args[1], shards) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let path = PathBuf::from(&args[0]);
    if let Err(e) = key.write_new(&path) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wrote {} (network {:?}, id {}, {} shard(s))",
        path.display(),
        key.name(),
        Network::private(&key).id(),
        shards
    );
    ExitCode::SUCCESS
}
