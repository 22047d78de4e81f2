//! Peer exchange: a relay hands out the signed descriptors of relays it knows.
//!
//! A PEX batch is `"OVP1" ‖ u16be(count) ‖ count × (u16be(len) ‖ descriptor)`, count ≤
//! [`MAX_PEX_ENTRIES`]. The serving relay cannot alter what it serves: every entry is a complete
//! descriptor signed by its own relay, and the receiver checks each one independently.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};

use crate::descriptor::{
    Descriptor, DescriptorError, IdentityKey, RejectionCounters, UncheckedDescriptor,
    MAX_DESCRIPTOR_LEN,
};
use crate::network::NetworkId;
use crate::relays::RelaySet;

/// Magic bytes of a PEX batch.
pub const PEX_MAGIC: [u8; 4] = *b"OVP1";
/// Most descriptors in one batch.
pub const MAX_PEX_ENTRIES: usize = 64;
/// Largest possible batch.
pub const MAX_PEX_LEN: usize = 6 + MAX_PEX_ENTRIES * (2 + MAX_DESCRIPTOR_LEN);
/// Most descriptors a relay serves in one batch: half the frame's bound, so one unauthenticated
/// 4-byte request costs the relay at most 32 × 997 + 6 = 31,910 bytes.
pub const PEX_SERVE_ENTRIES: usize = 32;
/// A relay serves in PEX only relays that answered its own descriptor request within this many
/// of its PEX intervals (liveness: dead relays drop out of batches).
pub const PEX_LIVE_INTERVALS: u32 = 3;
/// Entries expiring sooner than this are not served (the receiver could not use them).
pub const PEX_MIN_REMAINING_SECS: u64 = 600;
/// Default time between a relay's PEX discovery passes once its view is stable.
pub const PEX_INTERVAL: Duration = Duration::from_secs(600);
/// Default shortest time between passes (while passes keep learning new relays).
pub const PEX_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// Errors in the framing of a PEX batch (errors in single entries are per entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    /// Too many entries offered to [`build_pex`].
    #[error("{count} descriptors in a PEX batch, limit {max}")]
    TooMany {
        /// Entries given.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// The framing is broken.
    #[error("malformed PEX batch at byte {offset}: {what}")]
    Malformed {
        /// Offset of the problem.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// Encodes a batch of checked descriptors, byte for byte as their relays signed them.
pub fn build_pex<'a, I>(descriptors: I) -> Result<Vec<u8>, PexError>
where
    I: IntoIterator<Item = &'a Descriptor>,
{
    let items: Vec<&Descriptor> = descriptors.into_iter().collect();
    if items.len() > MAX_PEX_ENTRIES {
        return Err(PexError::TooMany {
            count: items.len(),
            max: MAX_PEX_ENTRIES,
        });
    }
    let mut out = Vec::with_capacity(6 + items.iter().map(|d| d.raw().len() + 2).sum::<usize>());
    out.extend_from_slice(&PEX_MAGIC);
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for d in items {
        out.extend_from_slice(&(d.raw().len() as u16).to_be_bytes());
        out.extend_from_slice(d.raw());
    }
    Ok(out)
}

/// Splits a batch into its raw entries (framing only, no descriptor parsing).
pub fn split_pex(bytes: &[u8]) -> Result<Vec<&[u8]>, PexError> {
    let mal = |offset, what| PexError::Malformed { offset, what };
    if bytes.len() > MAX_PEX_LEN {
        return Err(mal(MAX_PEX_LEN, "batch too long"));
    }
    if bytes.len() < 6 || bytes[..4] != PEX_MAGIC {
        return Err(mal(0, "magic"));
    }
    let count = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
    if count > MAX_PEX_ENTRIES {
        return Err(mal(4, "count"));
    }
    let mut pos = 6;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let hdr = bytes.get(pos..pos + 2).ok_or(mal(pos, "entry length"))?;
        let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
        if len > MAX_DESCRIPTOR_LEN {
            return Err(mal(pos, "entry too long"));
        }
        pos += 2;
        out.push(
            bytes
                .get(pos..pos + len)
                .ok_or(mal(pos, "entry truncated"))?,
        );
        pos += len;
    }
    if pos != bytes.len() {
        return Err(mal(pos, "trailing bytes"));
    }
    Ok(out)
}

/// Result of verifying a PEX batch.
#[derive(Debug, Default)]
pub struct PexOutcome {
    /// Entries that passed every check.
    pub accepted: Vec<Descriptor>,
    /// Entries that failed, by index in the batch.
    pub rejected: Vec<(usize, DescriptorError)>,
}

/// Parses a batch and checks every entry on its own (signature, network, freshness); rejected
/// entries are counted in `counters`. A broken frame rejects the whole batch.
pub fn verify_pex(
    bytes: &[u8],
    network: &NetworkId,
    now: u64,
    counters: &mut RejectionCounters,
) -> Result<PexOutcome, PexError> {
    let mut out = PexOutcome::default();
    for (i, raw) in split_pex(bytes)?.into_iter().enumerate() {
        match UncheckedDescriptor::parse(raw).and_then(|u| u.check(None, network, now)) {
            Ok(d) => out.accepted.push(d),
            Err(e) => {
                counters.record(&e);
                out.rejected.push((i, e));
            }
        }
    }
    Ok(out)
}

/// Picks what a relay serves in its PEX batch: up to `max` (≤ [`MAX_PEX_ENTRIES`]) descriptors
/// of other relays (not `own`) that served their held copy to this relay at or after
/// `live_since` and stay valid for [`PEX_MIN_REMAINING_SECS`] after `now`; a uniform random
/// sample when more qualify, so different relays hand out different parts of the network.
pub fn select_pex<'a, R: Rng + ?Sized>(
    relays: &'a RelaySet,
    own: &IdentityKey,
    live_since: u64,
    now: u64,
    max: usize,
    rng: &mut R,
) -> Vec<&'a Descriptor> {
    let mut out: Vec<&Descriptor> = relays
        .confirmed_since(live_since)
        .into_iter()
        .filter(|d| d.identity() != *own)
        .filter(|d| d.is_valid_at(now) && d.is_valid_at(now.saturating_add(PEX_MIN_REMAINING_SECS)))
        .collect();
    out.shuffle(rng);
    out.truncate(max.min(MAX_PEX_ENTRIES));
    out
}

/// When a relay runs its next PEX discovery pass (sans-IO). After a pass that learned a new
/// relay the next one comes after `min`; each pass that learned nothing doubles the wait, up to
/// `max`. Every wait is jittered uniformly over ±20 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PexSchedule {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl PexSchedule {
    /// A schedule between `min` and `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The wait before the first pass.
    pub fn first<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        jitter(self.min, rng)
    }

    /// The wait after a pass; `learned_new`: the pass added a relay not known before.
    pub fn after_pass<R: Rng + ?Sized>(&mut self, learned_new: bool, rng: &mut R) -> Duration {
        self.current = if learned_new {
            self.min
        } else {
            self.current.saturating_mul(2).min(self.max)
        };
        jitter(self.current, rng)
    }

    /// The un-jittered interval the schedule is at.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The liveness window for [`select_pex`]: [`PEX_LIVE_INTERVALS`] × the longest interval.
    pub fn live_window(&self) -> Duration {
        self.max.saturating_mul(PEX_LIVE_INTERVALS)
    }
}

/// `d` scaled by a uniform factor in [0.8, 1.2].
fn jitter<R: Rng + ?Sized>(d: Duration, rng: &mut R) -> Duration {
    let permille: u32 = rng.random_range(800..=1200);
    d.saturating_mul(permille) / 1000
}
