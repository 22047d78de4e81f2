//! The `[payments]` table of the client's config file: how the payer pays each hop (chunk
//! sizes, retries, jitter, fee cap, how long a new circuit's first payments may take).
//!
//! File only, like `[lightning]`: these are tuning knobs, not per-run choices. Every key is
//! optional; an absent key keeps [`PayerConfig::default`]'s value.

use std::time::Duration;

use onionvpn_pay::payer::PayerConfig;

use crate::config::{ConfigError, Origin};

/// Every `[payments]` key, with what it allows (errors, docs and the example file).
pub const PAYMENTS_KEYS: &[(&str, &str)] = &[
    ("payments.chunk_msat", "an integer from 1 (millisatoshi)"),
    (
        "payments.max_chunk_msat",
        "an integer from 1 (millisatoshi): the most ever at risk per hop",
    ),
    ("payments.max_attempts", "an integer from 1 to 100"),
    ("payments.retry_delay_ms", "an integer from 0 to 3600000"),
    ("payments.jitter_ms", "an integer from 0 to 3600000"),
    (
        "payments.max_fee_msat",
        "a non-negative integer (millisatoshi)",
    ),
    (
        "payments.first_payment_timeout_ms",
        "an integer from 100 to 3600000",
    ),
];

/// Longest delay a duration key accepts (one hour): anything longer is a typo.
const MAX_MS: u64 = 3_600_000;

fn allowed(key: &str) -> &'static str {
    PAYMENTS_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, a)| *a)
        .unwrap_or("a known key")
}

/// Parses the `[payments]` table over the payer's defaults.
pub fn payer_from_toml(v: &toml::Value, origin: &Origin) -> Result<PayerConfig, ConfigError> {
    let table = v.as_table().ok_or_else(|| ConfigError::Invalid {
        origin: origin.clone(),
        key: "payments",
        value: v.to_string(),
        allowed: "a table of payer settings",
    })?;
    let mut cfg = PayerConfig::default();
    for (key, v) in table {
        let full = PAYMENTS_KEYS
            .iter()
            .map(|(k, _)| *k)
            .find(|k| k.strip_prefix("payments.") == Some(key.as_str()))
            .ok_or_else(|| ConfigError::UnknownKey {
                origin: origin.clone(),
                key: format!("payments.{key}"),
                known: PAYMENTS_KEYS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let int = |lo: u64, hi: u64| {
            v.as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    origin: origin.clone(),
                    key: full,
                    value: v.to_string(),
                    allowed: allowed(full),
                })
        };
        match key.as_str() {
            "chunk_msat" => cfg.chunk_msat = int(1, u64::MAX)?,
            "max_chunk_msat" => cfg.max_chunk_msat = int(1, u64::MAX)?,
            "max_attempts" => cfg.max_attempts = int(1, 100)? as u32,
            "retry_delay_ms" => cfg.retry_delay = Duration::from_millis(int(0, MAX_MS)?),
            "jitter_ms" => cfg.jitter = Duration::from_millis(int(0, MAX_MS)?),
            "max_fee_msat" => cfg.max_fee_msat = int(0, u64::MAX)?,
            _ => cfg.first_payment_timeout = Duration::from_millis(int(100, MAX_MS)?),
        }
    }
    Ok(cfg)
}

/// The payer settings as a `[payments]` table (every key), the inverse of
/// [`payer_from_toml`].
pub fn payer_to_toml(cfg: &PayerConfig) -> toml::Table {
    let int = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let ms = |d: Duration| int(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut t = toml::Table::new();
    t.insert("chunk_msat".into(), int(cfg.chunk_msat));
    t.insert("max_chunk_msat".into(), int(cfg.max_chunk_msat));
    t.insert("max_attempts".into(), int(u64::from(cfg.max_attempts)));
    t.insert("retry_delay_ms".into(), ms(cfg.retry_delay));
    t.insert("jitter_ms".into(), ms(cfg.jitter));
    t.insert("max_fee_msat".into(), int(cfg.max_fee_msat));
    t.insert(
        "first_payment_timeout_ms".into(),
        ms(cfg.first_payment_timeout),
    );
    t
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PayerConfig, ConfigError> {
        let v: toml::Value = toml::Value::Table(text.parse().unwrap());
        payer_from_toml(&v, &Origin::CommandLine)
    }

    #[test]
    fn keys_override_defaults_and_round_trip() {
        let c = parse("chunk_msat = 5000\njitter_ms = 0\nfirst_payment_timeout_ms = 2500").unwrap();
        assert_eq!(c.chunk_msat, 5000);
        assert_eq!(c.jitter, Duration::ZERO);
        assert_eq!(c.first_payment_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_attempts, PayerConfig::default().max_attempts);
        let back = payer_from_toml(&toml::Value::Table(payer_to_toml(&c)), &Origin::CommandLine);
        assert_eq!(back.unwrap(), c);
        // Every key of the table is a documented key.
        for k in payer_to_toml(&c).keys() {
            assert!(PAYMENTS_KEYS
                .iter()
                .any(|(d, _)| *d == format!("payments.{k}")));
        }
        assert_eq!(payer_to_toml(&c).len(), PAYMENTS_KEYS.len());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("chunk_msat = 0", "payments.chunk_msat"),
            ("max_attempts = 0", "payments.max_attempts"),
            ("max_attempts = 1000", "payments.max_attempts"),
            ("jitter_ms = -1", "payments.jitter_ms"),
            ("retry_delay_ms = \"1s\"", "payments.retry_delay_ms"),
            (
                "first_payment_timeout_ms = 10",
                "payments.first_payment_timeout_ms",
            ),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        match parse("chunk = 5") {
            Err(ConfigError::UnknownKey { key, .. }) => assert_eq!(key, "payments.chunk"),
            other => panic!("{other:?}"),
        }
        let not_table = payer_from_toml(&toml::Value::Integer(1), &Origin::CommandLine);
        assert!(matches!(
            not_table,
            Err(ConfigError::Invalid {
                key: "payments",
                ..
            })
        ));
    }
}
