//! The LDK node's log file, redacted.
//!
//! ldk-node's own file logger writes peers' socket addresses and node ids in clear. On a
//! client those name the relays it pays, which is to say its circuits' hops, so by default
//! this writer replaces IP addresses (with their ports) and long hex strings (node ids,
//! channel ids, payment hashes, txids) with `[scrubbed]` before a line reaches the disk,
//! unless the operator set `lightning.log_sensitive = true`. The file is created 0600 and,
//! unlike ldk-node's writer, a failed write never panics a node worker: the line is lost.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ldk_node::logger::{LogLevel, LogRecord, LogWriter};

use crate::ledger::civil_from_days;

/// What a redacted value prints (the same marker as the relay's and client's own logs).
const SCRUBBED: &str = "[scrubbed]";

/// Hex runs at least this long are identifiers (a 32-byte hash is 64 digits).
const MIN_HEX_ID: usize = 32;

/// Writes the node's log lines to a file, redacted unless `sensitive`.
pub(crate) struct RedactingLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
    max_level: LogLevel,
    sensitive: bool,
}

impl RedactingLog {
    /// A writer to `path` for records at `max_level` and above.
    pub(crate) fn new(path: PathBuf, max_level: LogLevel, sensitive: bool) -> RedactingLog {
        RedactingLog {
            path,
            file: Mutex::new(None),
            max_level,
            sensitive,
        }
    }

    fn write_line(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = file.as_mut() {
            if f.write_all(line.as_bytes()).is_err() {
                // Reopen on the next line (the directory may have been recreated).
                *file = None;
            }
        }
    }
}

impl LogWriter for RedactingLog {
    fn log(&self, record: LogRecord<'_>) {
        if record.level < self.max_level {
            return;
        }
        let text = record.args.to_string();
        let text = if self.sensitive { text } else { redact(&text) };
        self.write_line(&format!(
            "{} {:<5} [{}:{}] {}\n",
            timestamp(SystemTime::now()),
            record.level,
            record.module_path,
            record.line,
            text
        ));
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// `text` with IPv4 and IPv6 addresses (and a following `:port`) and long hex identifiers
/// replaced by [`SCRUBBED`].
pub(crate) fn redact(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        // Tokens start at a boundary: not in the middle of a word, number or address.
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b"._:".contains(&b[i - 1]));
        let token = if boundary { sensitive_len(&b[i..]) } else { 0 };
        if token > 0 {
            out.push_str(SCRUBBED);
            i += token;
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
    }
    out
}

/// Length of the sensitive token at the start of `b`, or 0.
fn sensitive_len(b: &[u8]) -> usize {
    let run = |f: fn(u8) -> bool, from: usize| b[from..].iter().take_while(|&&c| f(c)).count();
    let hex = |c: u8| c.is_ascii_hexdigit();
    // An identifier: a long hex run, not followed by more word characters.
    let h = run(hex, 0);
    if h >= MIN_HEX_ID && !b.get(h).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return h;
    }
    // A bracketed IPv6 address, `[..]`, with an optional port.
    if b.first() == Some(&b'[') {
        let inner = run(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.', 1);
        if inner >= 2 && b.get(1 + inner) == Some(&b']') && b[1..1 + inner].contains(&b':') {
            return with_port(b, inner + 2);
        }
        return 0;
    }
    // A bare IPv6 address: hex groups with `::` or at least three colons (so that a time
    // of day, `12:30:45`, is not one).
    let v6 = run(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.', 0);
    let colons = b[..v6].iter().filter(|&&c| c == b':').count();
    let compressed = b[..v6].windows(2).any(|w| w == b"::");
    if (colons >= 3 || compressed) && b[..v6].iter().any(|c| c.is_ascii_hexdigit()) {
        return v6;
    }
    // An IPv4 address: four dotted decimal numbers, with an optional port.
    let mut n = 0;
    for part in 0..4 {
        let digits = run(|c| c.is_ascii_digit(), n);
        if digits == 0 || digits > 3 {
            return 0;
        }
        n += digits;
        if part < 3 {
            if b.get(n) != Some(&b'.') {
                return 0;
            }
            n += 1;
        }
    }
    if b.get(n)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.')
    {
        return 0;
    }
    with_port(b, n)
}

/// `len` extended over a `:port` that follows it.
fn with_port(b: &[u8], len: usize) -> usize {
    if b.get(len) == Some(&b':') {
        let digits = b[len + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if (1..=5).contains(&digits) {
            return len + 1 + digits;
        }
    }
    len
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn addresses_and_ids_are_scrubbed() {
        let id = "02".to_owned() + &"ab".repeat(32);
        let line = format!("Connected to peer {id}@192.0.2.7:9735 via [2001:db8::1]:9735");
        let r = redact(&line);
        assert_eq!(r, "Connected to peer [scrubbed]@[scrubbed] via [scrubbed]");
        assert_eq!(
            redact("peer 2001:db8::7 and ::1 went away"),
            "peer [scrubbed] and [scrubbed] went away"
        );
        let hash = "f".repeat(64);
        assert_eq!(
            redact(&format!("payment_hash: {hash}.")),
            "payment_hash: [scrubbed]."
        );
    }

    #[test]
    fn ordinary_text_is_kept() {
        for s in [
            "Synced 12 blocks at height 1234 in 1.5s",
            "version 0.7.1, 3 channels, fee 1000 msat",
            "channel abcdef opened at 10:30:59",
            "élan 1.2.3.4.5 v1.2.3.4x",
        ] {
            assert_eq!(redact(s), s);
        }
    }

    #[test]
    fn timestamps_are_utc_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_123 + 3_723_000);
        assert_eq!(timestamp(t), "2000-02-29 01:02:03.123");
    }

    #[test]
    fn the_file_is_private_and_lines_are_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ldk_node.log");
        let log = RedactingLog::new(path.clone(), LogLevel::Info, false);
        log.write_line(&format!("{}\n", redact("peer 198.51.100.9:9735")));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "peer [scrubbed]\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
