//! Log redaction: addresses, hostnames and destinations are printed as `[scrubbed]` unless the
//! operator opted in with `logging.log_sensitive = true`.
//!
//! Wrap anything that could identify a user or a destination in [`Sensitive`] before it reaches
//! a `tracing` macro. Its `Display` and `Debug` print [`SCRUBBED`] while the process-wide switch
//! is off (the default) and the inner value once [`set_log_sensitive`] turned it on.
//!
//! ```
//! use onionvpn_relay::redact::{sensitive_addr, Sensitive};
//! let peer: std::net::SocketAddr = "192.0.2.7:443".parse().unwrap();
//! assert_eq!(sensitive_addr(peer).to_string(), "[scrubbed]");
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a redacted value prints.
pub const SCRUBBED: &str = "[scrubbed]";

static LOG_SENSITIVE: AtomicBool = AtomicBool::new(false);

/// Sets the process-wide switch: `true` logs sensitive values in clear.
///
/// Call it once at start-up from the config's `logging.log_sensitive`.
pub fn set_log_sensitive(on: bool) {
    LOG_SENSITIVE.store(on, Ordering::Relaxed);
}

/// Whether sensitive values are currently logged in clear.
pub fn log_sensitive() -> bool {
    LOG_SENSITIVE.load(Ordering::Relaxed)
}

/// A value that is scrubbed from logs unless the operator opted in.
///
/// Only formatting is affected; the value itself stays reachable with [`Sensitive::as_inner`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Sensitive(value)
    }

    /// The wrapped value.
    pub fn as_inner(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// A view that formats in clear (`reveal = true`) or scrubbed, whatever the global switch
    /// says. For tests and for operator-facing output that is never logged.
    pub fn display_with(&self, reveal: bool) -> Redacted<'_, T> {
        Redacted {
            inner: &self.0,
            reveal,
        }
    }
}

impl<T> From<T> for Sensitive<T> {
    fn from(value: T) -> Self {
        Sensitive(value)
    }
}

impl<T: fmt::Display> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.display_with(log_sensitive()), f)
    }
}

impl<T: fmt::Debug> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.display_with(log_sensitive()), f)
    }
}

/// A [`Sensitive`] value with the redaction decision already taken (see
/// [`Sensitive::display_with`]).
#[derive(Clone, Copy)]
pub struct Redacted<'a, T> {
    inner: &'a T,
    reveal: bool,
}

impl<T: fmt::Display> fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reveal {
            fmt::Display::fmt(self.inner, f)
        } else {
            f.write_str(SCRUBBED)
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reveal {
            fmt::Debug::fmt(self.inner, f)
        } else {
            f.write_str(SCRUBBED)
        }
    }
}

/// A socket address (peer or destination) for logging.
pub fn sensitive_addr(addr: SocketAddr) -> Sensitive<SocketAddr> {
    Sensitive(addr)
}

/// An IP address for logging.
pub fn sensitive_ip(ip: IpAddr) -> Sensitive<IpAddr> {
    Sensitive(ip)
}

/// A hostname (a stream's destination) for logging.
pub fn sensitive_host(host: &str) -> Sensitive<&str> {
    Sensitive(host)
}

/// A destination `host:port` for logging (IPv6 literals in brackets).
pub fn sensitive_dest(host: &str, port: u16) -> Sensitive<String> {
    if host.contains(':') && !host.starts_with('[') {
        Sensitive(format!("[{host}]:{port}"))
    } else {
        Sensitive(format!("{host}:{port}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn scrubbed_view_hides_every_kind() {
        let a: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let s = sensitive_addr(a);
        assert_eq!(s.display_with(false).to_string(), SCRUBBED);
        assert_eq!(format!("{:?}", s.display_with(false)), SCRUBBED);
        assert_eq!(sensitive_ip(ip).display_with(false).to_string(), SCRUBBED);
        assert_eq!(
            sensitive_host("example.com")
                .display_with(false)
                .to_string(),
            SCRUBBED
        );
        let d = sensitive_dest("example.com", 80);
        assert!(!format!("{:?}", d.display_with(false)).contains("example"));
    }

    #[test]
    fn revealed_view_prints_the_value() {
        let a: SocketAddr = "192.0.2.7:443".parse().unwrap();
        assert_eq!(
            sensitive_addr(a).display_with(true).to_string(),
            "192.0.2.7:443"
        );
        assert_eq!(
            format!("{:?}", sensitive_host("example.com").display_with(true)),
            "\"example.com\""
        );
        assert_eq!(
            sensitive_dest("2001:db8::1", 443)
                .display_with(true)
                .to_string(),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            sensitive_dest("example.com", 80).into_inner(),
            "example.com:80"
        );
    }

    // The only test that touches the process-wide switch (tests run in parallel).
    #[test]
    fn global_switch_controls_display_and_debug() {
        let ip = sensitive_ip("198.51.100.9".parse().unwrap());
        set_log_sensitive(false);
        assert!(!log_sensitive());
        assert_eq!(ip.to_string(), SCRUBBED);
        assert_eq!(format!("{ip:?}"), SCRUBBED);
        assert_eq!(format!("peer {ip}"), "peer [scrubbed]");
        set_log_sensitive(true);
        assert_eq!(ip.to_string(), "198.51.100.9");
        assert_eq!(format!("{ip:?}"), "198.51.100.9");
        set_log_sensitive(false);
        assert_eq!(ip.to_string(), SCRUBBED);
    }
}
