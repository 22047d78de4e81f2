//! What `onionvpn-relay status` shows: a [`StatusReport`] built from the running relay's
//! counters, and the ring of its last errors ([`LastErrors`]).
//!
//! The report travels over the control socket as TOML (see [`crate::control`]), so the
//! running relay and the `status` command agree on one typed structure. It holds no client
//! or destination address: only counts, prices and the relay's own public identity.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many recent errors a relay remembers for `status`.
pub const LAST_ERRORS: usize = 16;

/// Longest error message kept, bytes (messages are fixed texts plus a short cause).
const MAX_ERROR_LEN: usize = 200;

/// One remembered error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// When it happened, unix seconds.
    pub unix: u64,
    /// What happened (never contains a client or destination address).
    pub message: String,
}

/// The last [`LAST_ERRORS`] errors, oldest first, with a count of all errors since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastErrors {
    entries: VecDeque<ErrorEntry>,
    total: u64,
}

impl LastErrors {
    /// Remembers `message` at `unix`, dropping the oldest entry when full. Callers pass texts
    /// without addresses; the message is cut to a bounded length.
    pub fn record(&mut self, unix: u64, message: &str) {
        let mut m = message.to_owned();
        if m.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        if self.entries.len() == LAST_ERRORS {
            self.entries.pop_front();
        }
        self.entries.push_back(ErrorEntry { unix, message: m });
        self.total = self.total.saturating_add(1);
    }

    /// The remembered errors, oldest first.
    pub fn entries(&self) -> Vec<ErrorEntry> {
        self.entries.iter().cloned().collect()
    }

    /// Errors recorded since start (including those no longer remembered).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Earnings from the payments ledger (absent when the relay has no ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earnings {
    /// Millisatoshi received today (UTC).
    pub today_msat: u64,
    /// Millisatoshi received in total.
    pub total_msat: u64,
    /// Circuits that paid at least once, in total.
    pub circuits_paid: u64,
    /// Payments received in total.
    pub payments: u64,
}

impl Earnings {
    /// The earnings in `ledger` at `now` (unix seconds; "today" is the UTC day).
    pub fn from_ledger(
        ledger: &onionvpn_pay::ledger::Ledger,
        now: u64,
    ) -> Result<Self, onionvpn_pay::PayError> {
        let today = onionvpn_pay::ledger::day_of(now);
        let days = ledger.per_day()?;
        Ok(Self {
            today_msat: days.iter().find(|d| d.day == today).map_or(0, |d| d.msat),
            total_msat: days.iter().fold(0u64, |s, d| s.saturating_add(d.msat)),
            circuits_paid: ledger.circuits_paid()?,
            payments: ledger.entries()?,
        })
    }
}

/// The running relay's state as `status` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Relay software version.
    pub version: String,
    /// The relay's identity (64 hex digits; public).
    pub identity: String,
    /// Seconds since the relay started.
    pub uptime_secs: u64,
    /// Whether this relay is an exit.
    pub exit: bool,
    /// Circuits open now.
    pub circuits_open: u64,
    /// Circuits carried since start.
    pub circuits_relayed: u64,
    /// CREATEs refused since start (every reason).
    pub circuits_refused: u64,
    /// Links (TCP + link handshake) accepted since start.
    pub links_accepted: u64,
    /// Exit streams opened since start.
    pub streams: u64,
    /// Cells received from the client side.
    pub cells_forward: u64,
    /// Cells sent toward clients.
    pub cells_backward: u64,
    /// Bytes of cells relayed in both directions (cells × 512).
    pub bytes_relayed: u64,
    /// Bytes read from destinations (exit only).
    pub exit_bytes_read: u64,
    /// Bytes written to destinations (exit only).
    pub exit_bytes_written: u64,
    /// Price per MiB relayed, millisatoshi.
    pub msat_per_mib: u64,
    /// Price per minute of circuit life, millisatoshi.
    pub msat_per_min: u64,
    /// Successful descriptor publications into the DHT since start.
    pub dht_publications: u64,
    /// Unix time of the last successful publication (0: none yet).
    pub dht_last_publication: u64,
    /// Earnings, when the relay keeps a payments ledger.
    pub earnings: Option<Earnings>,
    /// Errors since start.
    pub errors_total: u64,
    /// The last errors, oldest first.
    pub last_errors: Vec<ErrorEntry>,
}

/// `secs` as e.g. `3d 4h 5m 6s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// `bytes` with a binary unit, e.g. `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl StatusReport {
    /// Formats the report with `now` (unix seconds) for relative times.
    pub fn render(&self, now: u64) -> String {
        let mut s = String::new();
        let _ = self.write_to(&mut s, now);
        s
    }

    fn write_to(&self, f: &mut impl fmt::Write, now: u64) -> fmt::Result {
        let role = if self.exit { "exit" } else { "middle" };
        writeln!(
            f,
            "relay:        {} ({role}, v{})",
            self.identity, self.version
        )?;
        writeln!(f, "uptime:       {}", human_duration(self.uptime_secs))?;
        writeln!(
            f,
            "circuits:     {} open, {} relayed, {} refused",
            self.circuits_open, self.circuits_relayed, self.circuits_refused
        )?;
        writeln!(
            f,
            "traffic:      {} relayed ({} cells in, {} out), {} links",
            human_bytes(self.bytes_relayed),
            self.cells_forward,
            self.cells_backward,
            self.links_accepted
        )?;
        if self.exit {
            writeln!(
                f,
                "exit:         {} streams, {} to destinations, {} from them",
                self.streams,
                human_bytes(self.exit_bytes_written),
                human_bytes(self.exit_bytes_read)
            )?;
        }
        writeln!(
            f,
            "prices:       {} msat/MiB, {} msat/min",
            self.msat_per_mib, self.msat_per_min
        )?;
        match &self.earnings {
            Some(e) => writeln!(
                f,
                "earnings:     {} msat today, {} msat total ({} payments, {} circuits paid)",
                e.today_msat, e.total_msat, e.payments, e.circuits_paid
            )?,
            None => writeln!(f, "earnings:     no payments ledger")?,
        }
        if self.dht_last_publication == 0 {
            writeln!(f, "descriptor:   not yet published in the DHT")?;
        } else {
            writeln!(
                f,
                "descriptor:   published {} ago ({} publications)",
                human_duration(now.saturating_sub(self.dht_last_publication)),
                self.dht_publications
            )?;
        }
        if self.last_errors.is_empty() {
            writeln!(f, "last errors:  none")?;
        } else {
            writeln!(f, "last errors:  ({} since start)", self.errors_total)?;
            for e in &self.last_errors {
                writeln!(
                    f,
                    "  {} ago: {}",
                    human_duration(now.saturating_sub(e.unix)),
                    e.message
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn last_errors_keep_the_newest_and_count_all() {
        let mut e = LastErrors::default();
        for i in 0..(LAST_ERRORS as u64 + 5) {
            e.record(i, &format!("error {i}"));
        }
        let v = e.entries();
        assert_eq!(v.len(), LAST_ERRORS);
        assert_eq!(v[0].message, "error 5");
        assert_eq!(v[LAST_ERRORS - 1].unix, LAST_ERRORS as u64 + 4);
        assert_eq!(e.total(), LAST_ERRORS as u64 + 5);
        e.record(0, &"é".repeat(300));
        assert!(e.entries().last().unwrap().message.len() <= MAX_ERROR_LEN);
    }

    #[test]
    fn report_round_trips_through_toml_and_renders() {
        let mut errs = LastErrors::default();
        errs.record(990, "descriptor put into the DHT failed");
        let r = StatusReport {
            version: "0.1.0".into(),
            identity: "ab".repeat(32),
            uptime_secs: 93_784,
            exit: true,
            circuits_open: 2,
            circuits_relayed: 7,
            bytes_relayed: 3 << 20,
            msat_per_mib: 1000,
            msat_per_min: 10,
            dht_publications: 1,
            dht_last_publication: 940,
            earnings: Some(Earnings {
                today_msat: 5,
                total_msat: 9,
                circuits_paid: 1,
                payments: 2,
            }),
            errors_total: errs.total(),
            last_errors: errs.entries(),
            ..StatusReport::default()
        };
        let text = toml::to_string(&r).unwrap();
        let back: StatusReport = toml::from_str(&text).unwrap();
        assert_eq!(back, r);
        let out = r.render(1000);
        assert!(out.contains("1d 2h 3m 4s"), "{out}");
        assert!(out.contains("2 open, 7 relayed"), "{out}");
        assert!(out.contains("3.0 MiB"), "{out}");
        assert!(out.contains("5 msat today, 9 msat total"), "{out}");
        assert!(out.contains("published 1m 0s ago"), "{out}");
        assert!(out.contains("10s ago: descriptor put"), "{out}");
        let none = StatusReport::default();
        let text = toml::to_string(&none).unwrap();
        assert_eq!(toml::from_str::<StatusReport>(&text).unwrap(), none);
        assert!(none.render(0).contains("no payments ledger"));
    }

    #[test]
    fn earnings_from_a_ledger() {
        use onionvpn_pay::ledger::Ledger;
        use onionvpn_pay::rail::{PaymentId, Received};
        use onionvpn_proto::ext::PaymentToken;
        let l = Ledger::temporary().unwrap();
        let day = 86_400 * 20_000;
        let pay = |id: u8, msat: u64, token: Option<u8>| Received {
            id: PaymentId([id; 32]),
            amount_msat: msat,
            token: token.map(|t| PaymentToken([t; 16])),
        };
        l.record(&pay(1, 100, Some(1)), day - 10).unwrap();
        l.record(&pay(2, 30, Some(1)), day + 5).unwrap();
        l.record(&pay(3, 7, Some(2)), day + 6).unwrap();
        l.record(&pay(4, 1, None), day + 7).unwrap();
        let e = Earnings::from_ledger(&l, day + 100).unwrap();
        assert_eq!(
            e,
            Earnings {
                today_msat: 38,
                total_msat: 138,
                circuits_paid: 2,
                payments: 4,
            }
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3600), "1h 0m 0s");
    }
}
