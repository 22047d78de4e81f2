//! The relay's per-hop account (sans-IO): what a circuit has paid, what it has used, and
//! whether it may go on.
//!
//! Use is priced by the hop's [`PaymentTerms`]: `msat_per_mib` × MiB carried (both
//! directions) + `msat_per_min` × minutes since the circuit was accepted. The circuit may
//! run up to [`Account::grace_msat`] unpaid (the terms' `grace_kib` at the per-MiB price,
//! plus [`GRACE_TIME`] at the per-minute price, so that a time-only price also has a grace);
//! past that the relay destroys it with reason "payment required".
//!
//! All arithmetic is integer, in `u128` where products could overflow, and saturates at
//! `u64::MAX`: a huge credit or usage never wraps around into a small one.

use std::time::{Duration, Instant};

use onionvpn_proto::ext::PaymentTerms;

/// Bytes in a MiB.
const MIB: u128 = 1 << 20;
/// Milliseconds in a minute.
const MINUTE_MS: u128 = 60_000;
/// Circuit life granted unpaid at the per-minute price, on top of `grace_kib`.
pub const GRACE_TIME: Duration = Duration::from_secs(60);

/// Whether a circuit may carry more traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Paid (or within the grace): carry on.
    Allowed,
    /// Use has passed paid + grace: destroy the circuit with reason "payment required".
    PaymentRequired {
        /// What the circuit owes by the terms, in msat.
        owed_msat: u64,
        /// What it has paid, in msat.
        credited_msat: u64,
    },
}

/// The price of `bytes` at `msat_per_mib`, rounded down.
pub fn bytes_price(msat_per_mib: u64, bytes: u64) -> u64 {
    sat_u64(u128::from(msat_per_mib) * u128::from(bytes) / MIB)
}

/// The price of `age` of circuit life at `msat_per_min`, rounded down.
pub fn time_price(msat_per_min: u64, age: Duration) -> u64 {
    sat_u64(u128::from(msat_per_min) * age.as_millis() / MINUTE_MS)
}

/// What `bytes` carried over `age` cost by `terms`, in msat.
pub fn price(terms: &PaymentTerms, bytes: u64, age: Duration) -> u64 {
    bytes_price(terms.msat_per_mib, bytes).saturating_add(time_price(terms.msat_per_min, age))
}

/// How many bytes `msat` buys at `msat_per_mib` (rounded down; `None`: bytes are free).
pub fn bytes_for(msat_per_mib: u64, msat: u64) -> Option<u64> {
    (msat_per_mib > 0).then(|| sat_u64(u128::from(msat) * MIB / u128::from(msat_per_mib)))
}

fn sat_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// One circuit hop's account at the relay.
#[derive(Clone, Debug)]
pub struct Account {
    terms: PaymentTerms,
    opened: Instant,
    credited_msat: u64,
    bytes: u64,
}

impl Account {
    /// A new account for a circuit accepted at `now` under `terms`.
    pub fn new(terms: PaymentTerms, now: Instant) -> Account {
        Account {
            terms,
            opened: now,
            credited_msat: 0,
            bytes: 0,
        }
    }

    /// The terms this account charges by.
    pub fn terms(&self) -> &PaymentTerms {
        &self.terms
    }

    /// Adds a received payment.
    pub fn credit(&mut self, msat: u64) {
        self.credited_msat = self.credited_msat.saturating_add(msat);
    }

    /// Adds bytes carried (payload of relay cells, either direction).
    pub fn carry(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Total paid so far, in msat.
    pub fn credited_msat(&self) -> u64 {
        self.credited_msat
    }

    /// Bytes carried so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What the circuit owes by the terms at `now`, in msat.
    pub fn owed_msat(&self, now: Instant) -> u64 {
        price(
            &self.terms,
            self.bytes,
            now.saturating_duration_since(self.opened),
        )
    }

    /// What the circuit may use unpaid, in msat.
    pub fn grace_msat(&self) -> u64 {
        bytes_price(
            self.terms.msat_per_mib,
            u64::from(self.terms.grace_kib).saturating_mul(1024),
        )
        .saturating_add(time_price(self.terms.msat_per_min, GRACE_TIME))
    }

    /// Whether the circuit may go on at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let owed = self.owed_msat(now);
        if owed <= self.credited_msat.saturating_add(self.grace_msat()) {
            Verdict::Allowed
        } else {
            Verdict::PaymentRequired {
                owed_msat: owed,
                credited_msat: self.credited_msat,
            }
        }
    }

    /// The earliest time at which, with no more bytes and no more payments, the account
    /// stops being [`Verdict::Allowed`]; `None` if time alone never ends it (no per-minute
    /// price) or it is already over. Lets a shell arm one timer instead of polling.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if self.terms.msat_per_min == 0 {
            return None;
        }
        let limit = self.credited_msat.saturating_add(self.grace_msat());
        let by_bytes = bytes_price(self.terms.msat_per_mib, self.bytes);
        let room = limit.checked_sub(by_bytes)?;
        // The age at which the time price first exceeds `room`: (room + 1) minutes-msat.
        let ms = (u128::from(room) + 1) * MINUTE_MS;
        let ms = ms.div_ceil(u128::from(self.terms.msat_per_min));
        let at = self
            .opened
            .checked_add(Duration::from_millis(sat_u64(ms)))?;
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionvpn_proto::ext::PaymentToken;

    fn terms(mib: u64, min: u64, grace_kib: u32) -> PaymentTerms {
        PaymentTerms {
            msat_per_mib: mib,
            msat_per_min: min,
            grace_kib,
            token: PaymentToken([7; 16]),
        }
    }

    #[test]
    fn owed_is_bytes_plus_minutes() {
        let t0 = Instant::now();
        let mut a = Account::new(terms(1000, 60, 0), t0);
        a.carry(3 << 20);
        assert_eq!(a.owed_msat(t0), 3000);
        assert_eq!(a.owed_msat(t0 + Duration::from_secs(120)), 3000 + 120);
        // Half a MiB is half the price, rounded down.
        a.carry(1 << 19);
        assert_eq!(a.owed_msat(t0), 3500);
    }

    #[test]
    fn payment_required_once_use_passes_paid_plus_grace() {
        let t0 = Instant::now();
        // Grace: 512 KiB at 1000 msat/MiB = 500 msat; no time price.
        let mut a = Account::new(terms(1000, 0, 512), t0);
        assert_eq!(a.grace_msat(), 500);
        a.credit(1000);
        a.carry(3 << 19); // 1.5 MiB = 1500 msat = paid + grace exactly
        assert_eq!(a.check(t0), Verdict::Allowed);
        a.carry(2048); // +~2 msat
        assert_eq!(
            a.check(t0),
            Verdict::PaymentRequired {
                owed_msat: 1501,
                credited_msat: 1000
            }
        );
        a.credit(10);
        assert_eq!(a.check(t0), Verdict::Allowed);
    }

    #[test]
    fn time_alone_ends_an_unpaid_circuit_at_its_deadline() {
        let t0 = Instant::now();
        // 600 msat/min: grace = one minute = 600 msat; paid 600 → allowed for 2 minutes.
        let mut a = Account::new(terms(0, 600, 0), t0);
        a.credit(600);
        let d = a.deadline(t0).unwrap();
        assert_eq!(a.check(d - Duration::from_millis(200)), Verdict::Allowed);
        assert!(matches!(a.check(d), Verdict::PaymentRequired { .. }));
        assert!(d > t0 + Duration::from_secs(119) && d <= t0 + Duration::from_secs(121));
        // No per-minute price: time never ends it.
        assert_eq!(Account::new(terms(5, 0, 0), t0).deadline(t0), None);
    }

    #[test]
    fn huge_values_saturate_instead_of_wrapping() {
        let t0 = Instant::now();
        let mut a = Account::new(terms(u64::MAX, u64::MAX, u32::MAX), t0);
        a.carry(u64::MAX);
        a.carry(u64::MAX);
        assert_eq!(a.bytes(), u64::MAX);
        assert_eq!(a.owed_msat(t0 + Duration::from_secs(1 << 40)), u64::MAX);
        a.credit(u64::MAX);
        a.credit(1);
        assert_eq!(a.credited_msat(), u64::MAX);
        assert_eq!(a.check(t0), Verdict::Allowed);
    }

    #[test]
    fn free_terms_never_require_payment() {
        let t0 = Instant::now();
        let mut a = Account::new(terms(0, 0, 0), t0);
        a.carry(1 << 40);
        assert_eq!(a.check(t0 + Duration::from_secs(1 << 30)), Verdict::Allowed);
    }
}
