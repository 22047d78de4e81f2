//! The relay's local control socket, `<data dir>/control.sock`: `status` answers a
//! [`StatusReport`], `wallet <command>` runs against the relay's Lightning node. The socket,
//! its protocol and its limits are shared with the client
//! ([`onionvpn_pay::ldk::control`]); this module binds them to the relay's report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;

use onionvpn_pay::ldk::control::{self as shared, Served};
pub use onionvpn_pay::ldk::control::{
    bind, query_wallet, socket_path, ControlError, WalletAccess, SOCKET_NAME, WALLET_TIMEOUT,
};

use crate::status::StatusReport;

/// What a wallet request gets from a relay without a wallet.
const NO_WALLET: &str = "this relay runs without a [lightning] section: it has no wallet";

/// Serves the control socket until `shutdown` turns true, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    status: Arc<dyn Fn() -> StatusReport + Send + Sync>,
    wallet: Option<WalletAccess>,
    shutdown: watch::Receiver<bool>,
) {
    let served = Served {
        status,
        wallet,
        no_wallet: NO_WALLET,
    };
    shared::serve(listener, path, served, shutdown).await;
}

/// Asks the relay whose control socket is `path` for its status (blocking; for the CLI).
pub fn query_status(path: &Path) -> Result<StatusReport, ControlError> {
    shared::query_status(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use onionvpn_pay::ldk::wallet_cmd::WalletCommand;

    #[tokio::test]
    async fn the_relay_report_over_the_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path());
        let l = bind(&path).unwrap();
        let (tx, rx) = watch::channel(false);
        let report = StatusReport {
            circuits_open: 4,
            identity: "id".into(),
            ..StatusReport::default()
        };
        let r2 = report.clone();
        let task = tokio::spawn(serve(
            l,
            path.clone(),
            Arc::new(move || r2.clone()),
            None,
            rx,
        ));
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || query_status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, report);
        let p = path.clone();
        let e = tokio::task::spawn_blocking(move || query_wallet(&p, &WalletCommand::Balance))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("[lightning] section"), "{e}");
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
    }
}
