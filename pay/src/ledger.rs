//! The relay's earnings ledger, in sled.
//!
//! [`Ledger::record`] stores a received payment keyed by its [`PaymentId`] and flushes to
//! disk before it returns, so the caller acknowledges the rail only after the payment is
//! durable: a crash before the acknowledgement makes the rail redeliver it, and the record
//! of a redelivered id is a no-op, so no payment is lost or counted twice.
//!
//! Trees: `payments` (id → amount, token, day), `days` (day → msat), `tokens`
//! (token → msat), `meta` (counters: total msat, circuits paid, entries). One sled
//! transaction updates all four, so the aggregates always match the entries and every query
//! but [`Ledger::per_day`] is a single read. Days are UTC days since the Unix epoch; the caller passes the time in.

use std::path::Path;
use std::time::{Duration, Instant};

use onionvpn_proto::ext::{PaymentToken, PAYMENT_TOKEN_LEN};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::rail::{PaymentId, Received};
use crate::PayError;

const PAYMENTS: &str = "payments";
const DAYS: &str = "days";
const TOKENS: &str = "tokens";
const META: &str = "meta";
const META_TOTAL: &[u8] = b"total_msat";
const META_CIRCUITS: &[u8] = b"circuits";
const META_ENTRIES: &[u8] = b"entries";
/// Key in `tokens` for payments that carried no (well-formed) token.
const NO_TOKEN: [u8; PAYMENT_TOKEN_LEN] = [0; PAYMENT_TOKEN_LEN];
/// Seconds in a day.
const DAY_SECS: u64 = 86_400;
/// Entry value: amount u64 BE || day u32 BE || has_token u8 || token [16].
const ENTRY_LEN: usize = 8 + 4 + 1 + PAYMENT_TOKEN_LEN;

/// What recording a payment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new payment: counted.
    New,
    /// Already in the ledger (a redelivery): nothing changed.
    Duplicate,
}

/// Earnings of one UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayTotal {
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    /// Received that day, in msat.
    pub msat: u64,
}

/// The earnings ledger of a relay.
#[derive(Clone, Debug)]
pub struct Ledger {
    db: sled::Db,
    payments: sled::Tree,
    days: sled::Tree,
    tokens: sled::Tree,
    meta: sled::Tree,
}

/// Everything the ledger knows, in one read (for `onionvpn-relay earnings` and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Total received, in msat.
    pub total_msat: u64,
    /// Received per UTC day, oldest first.
    pub per_day: Vec<DayTotal>,
    /// Circuits (tokens) that paid anything.
    pub circuits_paid: u64,
    /// Payments recorded.
    pub entries: u64,
}

/// Pause between attempts to take a held lock.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// Whether sled refused to open because another handle holds the database's file lock.
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn ledger_err(context: &'static str) -> impl FnOnce(sled::Error) -> PayError {
    move |source| PayError::Ledger { context, source }
}

fn u64_of(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = v.get(..8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "total: {} msat ({} sat)",
            self.total_msat,
            self.total_msat / 1000
        )?;
        writeln!(f, "circuits paid: {}", self.circuits_paid)?;
        writeln!(f, "payments: {}", self.entries)?;
        writeln!(f, "per day (UTC):")?;
        for d in &self.per_day {
            let (y, m, dd) = civil_from_days(i64::from(d.day));
            writeln!(f, "  {y:04}-{m:02}-{dd:02}  {} msat", d.msat)?;
        }
        Ok(())
    }
}

/// (year, month, day) of `days` since 1970-01-01 in the proleptic Gregorian calendar
/// (the well-known days-to-civil algorithm: 400-year eras of 146097 days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// The UTC day of `unix_secs`.
pub fn day_of(unix_secs: u64) -> u32 {
    u32::try_from(unix_secs / DAY_SECS).unwrap_or(u32::MAX)
}

impl Ledger {
    /// Opens (or creates) the ledger in directory `path`.
    pub fn open(path: &Path) -> Result<Ledger, PayError> {
        let db = sled::open(path).map_err(ledger_err("opening"))?;
        Self::from_db(db)
    }

    /// Opens the ledger at `path` like [`Ledger::open`], waiting up to `limit` while its lock
    /// is held. sled's background flusher keeps the lock of a dropped database until its next
    /// tick (up to half a second), so a relay restarted within one process must wait for it;
    /// a lock held longer belongs to another process and is reported as an error.
    pub fn open_waiting(path: &Path, limit: Duration) -> Result<Ledger, PayError> {
        let end = Instant::now() + limit;
        loop {
            match sled::open(path) {
                Ok(db) => return Self::from_db(db),
                Err(e) if is_locked(&e) && Instant::now() < end => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(e) => return Err(ledger_err("opening")(e)),
            }
        }
    }

    /// A ledger in a temporary directory that sled deletes when dropped (tests, simulator).
    pub fn temporary() -> Result<Ledger, PayError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(ledger_err("opening"))?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Ledger, PayError> {
        let tree = |name: &str| db.open_tree(name).map_err(ledger_err("opening a tree"));
        Ok(Ledger {
            payments: tree(PAYMENTS)?,
            days: tree(DAYS)?,
            tokens: tree(TOKENS)?,
            meta: tree(META)?,
            db,
        })
    }

    /// Records `p`, received at `unix_secs`, and flushes it to disk. Idempotent on `p.id`.
    pub fn record(&self, p: &Received, unix_secs: u64) -> Result<Recorded, PayError> {
        let day = day_of(unix_secs);
        let mut entry = [0u8; ENTRY_LEN];
        entry[..8].copy_from_slice(&p.amount_msat.to_be_bytes());
        entry[8..12].copy_from_slice(&day.to_be_bytes());
        let token = match p.token {
            Some(PaymentToken(t)) => {
                entry[12] = 1;
                entry[13..].copy_from_slice(&t);
                t
            }
            None => NO_TOKEN,
        };
        let trees = (&self.payments, &self.days, &self.tokens, &self.meta);
        let res = trees.transaction(|(pay, days, toks, meta)| {
            if pay.get(p.id.0)?.is_some() {
                return Ok(Recorded::Duplicate);
            }
            pay.insert(&p.id.0, &entry)?;
            let dk = day.to_be_bytes();
            let d = days.get(dk)?.map_or(0, |v| u64_of(&v));
            days.insert(&dk, &d.saturating_add(p.amount_msat).to_be_bytes())?;
            let old = toks.get(token)?;
            let t = old.as_ref().map_or(0, |v| u64_of(v));
            toks.insert(&token, &t.saturating_add(p.amount_msat).to_be_bytes())?;
            let bump = |key: &[u8], by: u64| -> Result<(), ConflictableTransactionError<()>> {
                let v = meta.get(key)?.map_or(0, |v| u64_of(&v));
                meta.insert(key, &v.saturating_add(by).to_be_bytes())?;
                Ok(())
            };
            bump(META_TOTAL, p.amount_msat)?;
            bump(META_ENTRIES, 1)?;
            if old.is_none() && token != NO_TOKEN {
                bump(META_CIRCUITS, 1)?;
            }
            Ok::<_, ConflictableTransactionError<()>>(Recorded::New)
        });
        let r = match res {
            Ok(r) => r,
            Err(TransactionError::Storage(e)) => return Err(ledger_err("recording")(e)),
            Err(TransactionError::Abort(())) => {
                return Err(PayError::Invalid {
                    what: "ledger transaction",
                    detail: "aborted".into(),
                })
            }
        };
        self.db.flush().map_err(ledger_err("flushing"))?;
        Ok(r)
    }

    /// Whether payment `id` is in the ledger.
    pub fn contains(&self, id: &PaymentId) -> Result<bool, PayError> {
        self.payments
            .contains_key(id.0)
            .map_err(ledger_err("reading"))
    }

    fn counter(&self, key: &[u8]) -> Result<u64, PayError> {
        Ok(self
            .meta
            .get(key)
            .map_err(ledger_err("reading"))?
            .map_or(0, |v| u64_of(&v)))
    }

    /// Total received, in msat.
    pub fn total_msat(&self) -> Result<u64, PayError> {
        self.counter(META_TOTAL)
    }

    /// Everything at once.
    pub fn summary(&self) -> Result<Summary, PayError> {
        Ok(Summary {
            total_msat: self.total_msat()?,
            per_day: self.per_day()?,
            circuits_paid: self.circuits_paid()?,
            entries: self.entries()?,
        })
    }

    /// Received per UTC day, oldest first.
    pub fn per_day(&self) -> Result<Vec<DayTotal>, PayError> {
        self.days
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(ledger_err("reading"))?;
                let mut d = [0u8; 4];
                if let Some(s) = k.get(..4) {
                    d.copy_from_slice(s);
                }
                Ok(DayTotal {
                    day: u32::from_be_bytes(d),
                    msat: u64_of(&v),
                })
            })
            .collect()
    }

    /// Circuits paid: distinct tokens that paid anything (payments without a token are
    /// not a circuit).
    pub fn circuits_paid(&self) -> Result<u64, PayError> {
        self.counter(META_CIRCUITS)
    }

    /// Received with token `token`, in msat.
    pub fn token_msat(&self, token: &PaymentToken) -> Result<u64, PayError> {
        Ok(self
            .tokens
            .get(token.0)
            .map_err(ledger_err("reading"))?
            .map_or(0, |v| u64_of(&v)))
    }

    /// Number of payments recorded.
    pub fn entries(&self) -> Result<u64, PayError> {
        self.counter(META_ENTRIES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rx(id: u8, msat: u64, token: Option<u8>) -> Received {
        Received {
            id: PaymentId([id; 32]),
            amount_msat: msat,
            token: token.map(|t| PaymentToken([t; 16])),
        }
    }

    #[test]
    fn records_once_and_aggregates() {
        let l = Ledger::temporary().unwrap();
        let day1 = 20_000 * DAY_SECS + 5;
        let day2 = 20_001 * DAY_SECS;
        assert_eq!(l.record(&rx(1, 100, Some(1)), day1).unwrap(), Recorded::New);
        assert_eq!(l.record(&rx(2, 50, Some(1)), day1).unwrap(), Recorded::New);
        assert_eq!(l.record(&rx(3, 7, Some(2)), day2).unwrap(), Recorded::New);
        assert_eq!(l.record(&rx(4, 1, None), day2).unwrap(), Recorded::New);
        // A redelivery (same id) changes nothing, even with another amount.
        assert_eq!(
            l.record(&rx(1, 100, Some(1)), day2).unwrap(),
            Recorded::Duplicate
        );
        assert_eq!(
            l.record(&rx(3, 999, Some(3)), day2).unwrap(),
            Recorded::Duplicate
        );
        assert_eq!(l.total_msat().unwrap(), 158);
        assert_eq!(
            l.per_day().unwrap(),
            vec![
                DayTotal {
                    day: 20_000,
                    msat: 150
                },
                DayTotal {
                    day: 20_001,
                    msat: 8
                }
            ]
        );
        assert_eq!(l.circuits_paid().unwrap(), 2);
        assert_eq!(l.token_msat(&PaymentToken([1; 16])).unwrap(), 150);
        assert_eq!(l.entries().unwrap(), 4);
        let sum = l.summary().unwrap();
        assert_eq!(sum.total_msat, 158);
        assert_eq!(sum.circuits_paid, 2);
        assert_eq!(sum.entries, 4);
        assert_eq!(sum.per_day.len(), 2);
        assert!(l.contains(&PaymentId([3; 32])).unwrap());
        assert!(!l.contains(&PaymentId([9; 32])).unwrap());
    }

    #[test]
    fn days_print_as_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let text = Summary {
            total_msat: 1500,
            per_day: vec![DayTotal { day: 0, msat: 1500 }],
            circuits_paid: 1,
            entries: 2,
        }
        .to_string();
        assert!(text.contains("1970-01-01  1500 msat"), "{text}");
        assert!(text.contains("circuits paid: 1"));
    }

    #[test]
    fn survives_reopening() {
        let dir = std::env::temp_dir().join(format!("ledger-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let l = Ledger::open(&dir).unwrap();
            l.record(&rx(1, 100, Some(1)), 0).unwrap();
            l.record(&rx(2, 200, Some(2)), 0).unwrap();
        }
        // Reopened at once, as an in-process restart does.
        let l = Ledger::open_waiting(&dir, Duration::from_secs(10)).unwrap();
        assert_eq!(
            l.record(&rx(2, 200, Some(2)), 0).unwrap(),
            Recorded::Duplicate
        );
        assert_eq!(l.total_msat().unwrap(), 300);
        assert_eq!(l.entries().unwrap(), 2);
        assert_eq!(l.circuits_paid().unwrap(), 2);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
