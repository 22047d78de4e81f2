//! The local control socket: a unix stream socket `<data dir>/control.sock` (mode 0600, in
//! the 0700 data directory) on which the running relay answers `status` with a
//! [`StatusReport`] as TOML, and `wallet <command>` with a [`WalletAnswer`] as TOML (the
//! Lightning node's store is single-process, so `onionvpn-relay wallet` forwards its command
//! to the running relay). `onionvpn-relay status` and `wallet` are its clients.
//!
//! Protocol: the client sends one line (`status\n`, `wallet balance\n`); the relay answers
//! and closes. Unknown or malformed requests get `error = "..."`. Only the relay's user can
//! connect (file mode and directory).

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::local_endpoint::{self, Limits};

use onionvpn_pay::ldk::wallet_cmd::{self, WalletAnswer, WalletCommand};
use onionvpn_pay::ldk::LdkRail;

use crate::status::StatusReport;

/// File name of the control socket in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line, bytes (a wallet command carrying a BOLT11 invoice is the longest).
const MAX_REQUEST: usize = 7 + wallet_cmd::MAX_LINE;
/// Time a client has for its request and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a wallet command may run (paying an invoice waits for the payment's outcome).
pub const WALLET_TIMEOUT: Duration = Duration::from_secs(180);
/// Clients served at once.
const MAX_CONCURRENT: usize = 4;

/// Errors of the control socket (both sides).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nothing listens on the socket: the relay is not running (or uses another data dir).
    #[error("no relay answers on {}: is it running with this data directory? ({source})", path.display())]
    NotRunning {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Another relay already serves this data directory.
    #[error("{}: another relay is running with this data directory", path.display())]
    InUse {
        /// Socket path.
        path: PathBuf,
    },
    /// Reading, writing or binding failed.
    #[error("control socket {}: {context}: {source}", path.display())]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The relay answered with an error, or something that is not the expected answer.
    #[error("{0}")]
    BadAnswer(String),
}

/// The control socket path of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the control socket at `path`, replacing a stale socket file left by a relay that
/// died (but not a socket a live relay answers on, nor a file that is not a socket).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |context, source| ControlError::Io {
        path: path.to_path_buf(),
        context,
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io(
                "exists and is not a socket",
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
        if StdUnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    // The data directory is 0700, so nobody else could connect before this narrows it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600", e))?;
    Ok(l)
}

/// The relay's Lightning node, for `wallet` requests.
#[derive(Clone, Debug)]
pub struct WalletAccess {
    /// The node.
    pub rail: Arc<LdkRail>,
    /// Where the node should accept Lightning peers besides its listening address (checked
    /// by `wallet receive-check`).
    pub reach: Vec<std::net::SocketAddr>,
}

fn error_answer(message: &str) -> String {
    format!("error = {:?}\n", message)
}

/// What the relay answers to one request line.
async fn answer(
    request: &[u8],
    status: impl FnOnce() -> StatusReport,
    wallet: Option<&WalletAccess>,
) -> String {
    let line = String::from_utf8_lossy(request);
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("wallet ") {
        let Some(w) = wallet else {
            return error_answer("this relay runs without a [lightning] section: it has no wallet");
        };
        let cmd = match WalletCommand::parse_line(rest) {
            Ok(c) => c,
            Err(e) => return error_answer(&e.to_string()),
        };
        let run = wallet_cmd::execute(&w.rail, &cmd, &w.reach);
        return match tokio::time::timeout(WALLET_TIMEOUT, run).await {
            Ok(Ok(a)) => toml::to_string(&a).unwrap_or_else(|e| error_answer(&e.to_string())),
            Ok(Err(e)) => error_answer(&e.to_string()),
            Err(_) => error_answer(&format!(
                "no outcome within {WALLET_TIMEOUT:?}; see `wallet channels` / `balance`"
            )),
        };
    }
    match line {
        "status" => toml::to_string(&status()).unwrap_or_else(|e| error_answer(&e.to_string())),
        other => {
            let shown: String = other.chars().take(32).collect();
            error_answer(&format!(
                "unknown request {shown:?}; known: status, wallet <command>"
            ))
        }
    }
}

/// Serves the control socket until `shutdown` turns true, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    status: Arc<dyn Fn() -> StatusReport + Send + Sync>,
    wallet: Option<WalletAccess>,
    shutdown: watch::Receiver<bool>,
) {
    // The whole exchange may last as long as a wallet command; reading the request line is
    // bounded by IO_TIMEOUT below, so a client that sends nothing frees its slot as before.
    let limits = Limits {
        name: "control",
        concurrent: MAX_CONCURRENT,
        io_timeout: WALLET_TIMEOUT + IO_TIMEOUT,
    };
    let wallet = wallet.map(Arc::new);
    let handle = move |mut sock: UnixStream| {
        let status = status.clone();
        let wallet = wallet.clone();
        async move {
            let buf = tokio::time::timeout(IO_TIMEOUT, async {
                let mut buf = Vec::with_capacity(64);
                let mut byte = [0u8; 1];
                while buf.len() < MAX_REQUEST {
                    if sock.read(&mut byte).await? == 0 || byte[0] == b'\n' {
                        break;
                    }
                    buf.push(byte[0]);
                }
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let text = answer(&buf, || status(), wallet.as_deref()).await;
            sock.write_all(text.as_bytes()).await?;
            sock.shutdown().await
        }
    };
    local_endpoint::serve(listener, limits, handle, shutdown).await;
    let _ = std::fs::remove_file(&path);
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// Sends one request line to the relay whose control socket is `path` and returns its
/// answer (blocking; for the CLI). An `error = ...` answer is [`ControlError::BadAnswer`].
fn request(path: &Path, line: &str, read_timeout: Duration) -> Result<String, ControlError> {
    let io = |context, source| ControlError::Io {
        path: path.to_path_buf(),
        context,
        source,
    };
    let mut s = StdUnixStream::connect(path).map_err(|source| ControlError::NotRunning {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(read_timeout))
        .map_err(|e| io("setting a timeout", e))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| io("setting a timeout", e))?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| io("sending", e))?;
    let mut text = String::new();
    s.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| io("reading", e))?;
    if let Ok(e) = toml::from_str::<ErrorAnswer>(&text) {
        return Err(ControlError::BadAnswer(e.error));
    }
    Ok(text)
}

/// Asks the relay whose control socket is `path` for its status (blocking; for the CLI).
pub fn query_status(path: &Path) -> Result<StatusReport, ControlError> {
    let text = request(path, "status", IO_TIMEOUT)?;
    toml::from_str(&text).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// Runs a wallet command in the relay whose control socket is `path` (blocking; for the
/// CLI). [`ControlError::NotRunning`] means no relay answers: the caller may then run the
/// command on the node itself.
pub fn query_wallet(path: &Path, cmd: &WalletCommand) -> Result<WalletAnswer, ControlError> {
    let text = request(
        path,
        &format!("wallet {}", cmd.to_line()),
        WALLET_TIMEOUT + IO_TIMEOUT,
    )?;
    toml::from_str(&text).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_over_the_socket_and_stale_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path());
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second relay on the same data directory is refused while the first answers.
        assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
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
        // Unknown requests are answered with an error, and the server keeps serving.
        let p = path.clone();
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = StdUnixStream::connect(&p).unwrap();
            s.write_all(b"reboot\n").unwrap();
            let mut t = String::new();
            s.read_to_string(&mut t).unwrap();
            t
        })
        .await
        .unwrap();
        assert!(raw.contains("unknown request"), "{raw}");
        // A wallet request to a relay without [lightning] is a typed error, not a hang.
        let p = path.clone();
        let e = tokio::task::spawn_blocking(move || query_wallet(&p, &WalletCommand::Balance))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("[lightning]"), "{e}");
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
        assert!(matches!(
            query_status(&path),
            Err(ControlError::NotRunning { .. })
        ));
        // A stale socket (its relay died) is replaced; a regular file is not touched.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        drop(bind(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(bind(&path), Err(ControlError::Io { .. })));
    }
}
