//! systemd readiness notification (`sd_notify(3)`): a datagram with `READY=1`, `STOPPING=1`,
//! `WATCHDOG=1` or `STATUS=...` sent to `$NOTIFY_SOCKET`. A few lines instead of a crate:
//! the protocol is one `sendto` on a unix datagram socket (path or abstract `@name`).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to notify, read once from the environment (`None`: not started by systemd with
/// `Type=notify`, and every call does nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Self::new(
            var("NOTIFY_SOCKET"),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// From the variables' values (`pid`: this process). The watchdog applies only when
    /// `WATCHDOG_PID` is absent or names this process.
    pub fn new(
        socket: Option<String>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Self {
        let for_us = watchdog_pid.is_none_or(|p| p.parse::<u32>().ok() == Some(pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1` (half the watchdog timeout), if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Whether a notify socket is set.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (e.g. `"READY=1"`); `Ok(false)` when there is no notify socket.
    pub fn notify(&self, state: &str) -> std::io::Result<bool> {
        let Some(path) = &self.socket else {
            return Ok(false);
        };
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sends_states_to_a_path_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier::new(Some(p.to_string_lossy().into_owned()), None, None, 1);
        assert!(n.enabled());
        assert!(n.notify("READY=1").unwrap());
        assert!(n.notify("STOPPING=1").unwrap());
        let mut buf = [0u8; 64];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("onionvpn-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(format!("@{name}")), None, None, 1);
        assert!(n.notify("READY=1").unwrap());
        let mut buf = [0u8; 16];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_the_watchdog_is_ours_only() {
        let n = Notifier::new(None, Some("60000000"), None, 7);
        assert!(!n.notify("READY=1").unwrap());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(30)));
        let other = Notifier::new(None, Some("60000000"), Some("8"), 7);
        assert_eq!(other.watchdog_interval(), None);
        let ours = Notifier::new(None, Some("60000000"), Some("7"), 7);
        assert!(ours.watchdog_interval().is_some());
        assert_eq!(
            Notifier::new(None, Some("x"), None, 7).watchdog_interval(),
            None
        );
    }
}
