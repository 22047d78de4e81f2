//! The local control socket of the relay and of the client: a unix stream socket
//! `<data dir>/control.sock` (mode 0600, in the 0700 data directory) on which the running
//! daemon answers `status` with its status report as TOML, and `wallet <command>` with a
//! [`WalletAnswer`] as TOML. ldk-node's store is single-process, so `onionvpn-relay wallet`
//! and `onionvpn-client wallet` forward their command here while the daemon runs
//! ([`forward_or_run`]).
//!
//! Protocol: the client sends one line (`status\n`, `wallet balance\n`, at most
//! [`MAX_REQUEST`] bytes); the daemon answers and closes. Unknown, over-long or malformed
//! requests get `error = "..."`. Only the daemon's user can connect (file mode and
//! directory). A bounded number of clients is served at once, and reading a request is
//! bounded in time, so a slow or malformed peer holds one slot briefly and blocks nobody.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::endpoint::{self, Limits};
use super::wallet_cmd::{self, WalletAnswer, WalletCommand};
use super::LdkRail;

/// File name of the control socket in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line, bytes (a wallet command carrying a BOLT11 invoice is the longest).
pub const MAX_REQUEST: usize = 7 + wallet_cmd::MAX_LINE;
/// Time a client has to send its request (and, for `status`, to read the answer).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a wallet command may run (paying an invoice waits for the payment's outcome).
pub const WALLET_TIMEOUT: Duration = Duration::from_secs(180);
/// Clients served at once (a wallet command may hold its slot for [`WALLET_TIMEOUT`]).
const MAX_CONCURRENT: usize = 8;
/// Largest answer a client reads.
const MAX_ANSWER: u64 = 1 << 20;

/// Errors of the control socket (both sides).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nothing listens on the socket: the daemon is not running (or uses another data dir).
    #[error("nothing answers on {}: is the relay or client running with this data directory? ({source})", path.display())]
    NotRunning {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Another daemon already serves this data directory.
    #[error("{}: another process is running with this data directory", path.display())]
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
    /// The daemon answered with an error, or something that is not the expected answer.
    #[error("{0}")]
    BadAnswer(String),
}

/// The control socket path of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the control socket at `path`, replacing a stale socket file left by a daemon that
/// died (but not a socket a live daemon answers on, nor a file that is not a socket).
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

/// The daemon's Lightning node, for `wallet` requests.
#[derive(Clone, Debug)]
pub struct WalletAccess {
    /// The node.
    pub rail: Arc<LdkRail>,
    /// Where the node should accept Lightning peers besides its listening address (checked
    /// by `wallet receive-check`; a relay passes its advertised addresses).
    pub reach: Vec<SocketAddr>,
}

/// What a daemon serves on its control socket.
pub struct Served<S> {
    /// Builds the status report (sent as TOML).
    pub status: Arc<dyn Fn() -> S + Send + Sync>,
    /// The node `wallet` requests run against (`None`: the daemon has no wallet).
    pub wallet: Option<WalletAccess>,
    /// The answer to a `wallet` request when there is no wallet (why, and what to do).
    pub no_wallet: &'static str,
}

impl<S> std::fmt::Debug for Served<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("wallet", &self.wallet)
            .finish_non_exhaustive()
    }
}

fn error_answer(message: &str) -> String {
    format!("error = {:?}\n", message)
}

fn to_toml(v: &impl Serialize) -> String {
    toml::to_string(v).unwrap_or_else(|e| error_answer(&e.to_string()))
}

/// What the daemon answers to one request line.
async fn answer<S: Serialize>(request: &[u8], served: &Served<S>) -> String {
    let Ok(line) = std::str::from_utf8(request) else {
        return error_answer("the request is not UTF-8 text");
    };
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("wallet ") {
        let Some(w) = &served.wallet else {
            return error_answer(served.no_wallet);
        };
        let cmd = match WalletCommand::parse_line(rest) {
            Ok(c) => c,
            Err(e) => return error_answer(&e.to_string()),
        };
        let run = wallet_cmd::execute(&w.rail, &cmd, &w.reach);
        return match tokio::time::timeout(WALLET_TIMEOUT, run).await {
            Ok(Ok(a)) => to_toml(&a),
            Ok(Err(e)) => error_answer(&e.to_string()),
            Err(_) => error_answer(&format!(
                "no outcome within {WALLET_TIMEOUT:?}; see `wallet channels` / `balance`"
            )),
        };
    }
    match line {
        "status" => to_toml(&(served.status)()),
        other => {
            let shown: String = other.chars().take(32).collect();
            error_answer(&format!(
                "unknown request {shown:?}; known: status, wallet <command>"
            ))
        }
    }
}

/// Reads one request line (without its newline), at most [`MAX_REQUEST`] bytes, within
/// [`IO_TIMEOUT`]. `Ok(None)`: the line was longer than allowed.
async fn read_request(sock: &mut UnixStream) -> std::io::Result<Option<Vec<u8>>> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut buf = Vec::with_capacity(64);
        let mut limited = BufReader::new((&mut *sock).take(MAX_REQUEST as u64 + 1));
        limited.read_until(b'\n', &mut buf).await?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        Ok::<_, std::io::Error>(Some(buf))
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Serves the control socket until `shutdown` turns true, then removes the socket file.
pub async fn serve<S: Serialize + 'static>(
    listener: UnixListener,
    path: PathBuf,
    served: Served<S>,
    shutdown: watch::Receiver<bool>,
) {
    // The whole exchange may last as long as a wallet command; reading the request line is
    // bounded by IO_TIMEOUT (read_request), so a client that sends nothing frees its slot.
    let limits = Limits {
        name: "control",
        concurrent: MAX_CONCURRENT,
        io_timeout: WALLET_TIMEOUT + IO_TIMEOUT,
    };
    let served = Arc::new(served);
    let handle = move |mut sock: UnixStream| {
        let served = served.clone();
        async move {
            let text = match read_request(&mut sock).await? {
                Some(req) => answer(&req, &served).await,
                None => error_answer(&format!("request longer than {MAX_REQUEST} bytes")),
            };
            sock.write_all(text.as_bytes()).await?;
            sock.shutdown().await
        }
    };
    endpoint::serve(listener, limits, handle, shutdown).await;
    let _ = std::fs::remove_file(&path);
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// Sends one request line to the daemon whose control socket is `path` and returns its
/// answer (blocking; for the CLI). An `error = ...` answer is [`ControlError::BadAnswer`].
pub fn request(path: &Path, line: &str, read_timeout: Duration) -> Result<String, ControlError> {
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
    s.take(MAX_ANSWER)
        .read_to_string(&mut text)
        .map_err(|e| io("reading", e))?;
    if let Ok(e) = toml::from_str::<ErrorAnswer>(&text) {
        return Err(ControlError::BadAnswer(e.error));
    }
    Ok(text)
}

/// Asks the daemon whose control socket is `path` for its status report (blocking).
pub fn query_status<S: DeserializeOwned>(path: &Path) -> Result<S, ControlError> {
    let text = request(path, "status", IO_TIMEOUT)?;
    toml::from_str(&text).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// Runs a wallet command in the daemon whose control socket is `path` (blocking).
/// [`ControlError::NotRunning`] means nothing answers: the caller may then run the command
/// on the node itself.
pub fn query_wallet(path: &Path, cmd: &WalletCommand) -> Result<WalletAnswer, ControlError> {
    let text = request(
        path,
        &format!("wallet {}", cmd.to_line()),
        WALLET_TIMEOUT + IO_TIMEOUT,
    )?;
    toml::from_str(&text).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// How `wallet` was run by [`forward_or_run`].
#[derive(Debug)]
pub enum WalletOutcome<E> {
    /// The running daemon answered over its control socket.
    Forwarded(Result<WalletAnswer, ControlError>),
    /// Nothing answered on the socket, so `standalone` ran (the node started here).
    Standalone(Result<WalletAnswer, E>),
}

/// The `wallet` subcommand of both binaries: forwards `cmd` to the daemon on `socket` when
/// one runs, else runs `standalone` (which starts the node itself). Blocking.
pub fn forward_or_run<E>(
    socket: &Path,
    cmd: &WalletCommand,
    standalone: impl FnOnce() -> Result<WalletAnswer, E>,
) -> WalletOutcome<E> {
    match query_wallet(socket, cmd) {
        Err(ControlError::NotRunning { .. }) => WalletOutcome::Standalone(standalone()),
        other => WalletOutcome::Forwarded(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    struct Report {
        circuits: u64,
        name: String,
    }

    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = StdUnixStream::connect(path).unwrap();
        s.write_all(bytes).unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        t
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_errors_slow_peers_and_stale_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path());
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon on the same data directory is refused while the first answers.
        assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
        let (tx, rx) = watch::channel(false);
        let report = Report {
            circuits: 4,
            name: "x".into(),
        };
        let r2 = report.clone();
        let task = tokio::spawn(serve(
            l,
            path.clone(),
            Served {
                status: Arc::new(move || r2.clone()),
                wallet: None,
                no_wallet: "no [lightning] here",
            },
            rx,
        ));
        // Peers that connect and send nothing (or half a line) hold a slot each, as long
        // as the request timeout at most; every other client is served meanwhile.
        let mut slow = Vec::new();
        for i in 0..MAX_CONCURRENT - 1 {
            let mut s = StdUnixStream::connect(&path).unwrap();
            if i % 2 == 0 {
                s.write_all(b"stat").unwrap();
            }
            slow.push(s);
        }
        let p = path.clone();
        let got: Report = tokio::task::spawn_blocking(move || query_status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, report);
        // Malformed requests are answered with typed errors; the server keeps serving.
        let p = path.clone();
        let answers = tokio::task::spawn_blocking(move || {
            [
                raw(&p, b"reboot\n"),
                raw(&p, b"\xff\xfe\n"),
                // Exactly one byte too many: more unread input would reset the connection.
                raw(&p, &vec![b'a'; MAX_REQUEST + 1]),
                raw(&p, b"wallet balance\n"),
            ]
        })
        .await
        .unwrap();
        assert!(answers[0].contains("unknown request"), "{}", answers[0]);
        assert!(answers[1].contains("not UTF-8"), "{}", answers[1]);
        assert!(answers[2].contains("longer than"), "{}", answers[2]);
        assert!(answers[3].contains("no [lightning] here"), "{}", answers[3]);
        // The typed client side: a wallet request to a daemon without a wallet.
        let p = path.clone();
        let e = tokio::task::spawn_blocking(move || query_wallet(&p, &WalletCommand::Balance))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::BadAnswer(m) if m.contains("[lightning]")),
            "{e}"
        );
        // A slow peer's slot is freed after the request timeout: it gets no answer.
        let mut s = slow.pop().unwrap();
        let t = tokio::task::spawn_blocking(move || {
            s.set_read_timeout(Some(IO_TIMEOUT * 4)).unwrap();
            let mut t = Vec::new();
            s.read_to_end(&mut t).map(|_| t)
        })
        .await
        .unwrap();
        assert!(t.is_ok_and(|t| t.is_empty()), "closed without an answer");
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
        assert!(matches!(
            query_status::<Report>(&path),
            Err(ControlError::NotRunning { .. })
        ));
        // Without a daemon, forward_or_run runs the standalone path.
        match forward_or_run(&path, &WalletCommand::Address, || {
            Ok::<_, String>(WalletAnswer::Address {
                address: "here".into(),
            })
        }) {
            WalletOutcome::Standalone(Ok(WalletAnswer::Address { address })) => {
                assert_eq!(address, "here")
            }
            other => panic!("{other:?}"),
        }
        // A stale socket (its daemon died) is replaced; a regular file is not touched.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        drop(bind(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(bind(&path), Err(ControlError::Io { .. })));
    }
}
