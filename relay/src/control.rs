//! The local control socket: a unix stream socket `<data dir>/control.sock` (mode 0600, in
//! the 0700 data directory) on which the running relay answers `status` with a
//! [`StatusReport`] as TOML. `onionvpn-relay status` is its client.
//!
//! Protocol: the client sends one line (`status\n`); the relay answers and closes. Unknown
//! requests get `error = "..."`. Only the relay's user can connect (file mode and directory).

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

use crate::status::StatusReport;

/// File name of the control socket in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line, bytes.
const MAX_REQUEST: usize = 64;
/// Time a client has for its request and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// The answer was not a status report.
    #[error("control socket: unexpected answer: {0}")]
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

/// What the relay answers to one request line.
fn answer(request: &[u8], status: impl FnOnce() -> StatusReport) -> String {
    let line = String::from_utf8_lossy(request);
    match line.trim() {
        "status" => {
            toml::to_string(&status()).unwrap_or_else(|e| format!("error = {:?}\n", e.to_string()))
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            format!(
                "error = {:?}\n",
                format!("unknown request {shown:?}; known: status")
            )
        }
    }
}

/// Serves the control socket until `shutdown` turns true, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    status: Arc<dyn Fn() -> StatusReport + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = Limits {
        name: "control",
        concurrent: MAX_CONCURRENT,
        io_timeout: IO_TIMEOUT,
    };
    let handle = move |mut sock: UnixStream| {
        let status = status.clone();
        async move {
            let mut buf = Vec::with_capacity(MAX_REQUEST);
            let mut byte = [0u8; 1];
            while buf.len() < MAX_REQUEST {
                if sock.read(&mut byte).await? == 0 || byte[0] == b'\n' {
                    break;
                }
                buf.push(byte[0]);
            }
            sock.write_all(answer(&buf, || status()).as_bytes()).await?;
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

/// Asks the relay whose control socket is `path` for its status (blocking; for the CLI).
pub fn query_status(path: &Path) -> Result<StatusReport, ControlError> {
    let io = |context, source| ControlError::Io {
        path: path.to_path_buf(),
        context,
        source,
    };
    let mut s = StdUnixStream::connect(path).map_err(|source| ControlError::NotRunning {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| io("setting a timeout", e))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| io("setting a timeout", e))?;
    s.write_all(b"status\n").map_err(|e| io("sending", e))?;
    let mut text = String::new();
    s.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| io("reading", e))?;
    if let Ok(e) = toml::from_str::<ErrorAnswer>(&text) {
        return Err(ControlError::BadAnswer(e.error));
    }
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
        let task = tokio::spawn(serve(l, path.clone(), Arc::new(move || r2.clone()), rx));
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
