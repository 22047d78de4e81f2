//! The set of checked descriptors a node knows, with seq tracking and rejection counters.
//! Sans-IO: time is passed in; usable by the simulator under virtual time.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::descriptor::{
    Descriptor, DescriptorError, IdentityKey, RejectionCounters, UncheckedDescriptor,
};
use crate::network::Network;

/// Where a descriptor came from (decides which extra checks apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fetched from the relay at this address: the descriptor must list it.
    Relay(SocketAddr),
    /// BEP44 item looked up under `key` with this seq.
    Dht {
        /// Key the item was looked up under.
        key: IdentityKey,
        /// The item's BEP44 seq.
        seq: i64,
    },
    /// Received in a PEX batch.
    Pex,
    /// Loaded from the local cache.
    Cache,
}

/// What [`RelaySet::offer`] did with a valid descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// First descriptor of this relay.
    New,
    /// Replaced an older seq.
    Updated,
    /// Identical to the one held.
    Unchanged,
}

/// Checked descriptors of one network, keyed by identity (ordered, so iteration is deterministic).
///
/// For each relay it also remembers when the relay itself last served the copy held
/// ("confirmed"): discovery skips the DHT lookup of relays confirmed during the pass, and a relay
/// serves in PEX only relays it confirmed recently (docs/spec.md).
#[derive(Debug, Clone)]
pub struct RelaySet {
    network: Network,
    relays: BTreeMap<IdentityKey, Descriptor>,
    /// Unix time at which the relay served the held copy itself (source [`Source::Relay`]).
    confirmed: BTreeMap<IdentityKey, u64>,
    counters: RejectionCounters,
}

impl RelaySet {
    /// An empty set for `network`.
    pub fn new(network: Network) -> Self {
        Self {
            network,
            relays: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            counters: RejectionCounters::default(),
        }
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Rejections counted so far.
    pub fn counters(&self) -> &RejectionCounters {
        &self.counters
    }

    /// Mutable counters (for rejections found outside `offer`, e.g. PEX framing).
    pub fn counters_mut(&mut self) -> &mut RejectionCounters {
        &mut self.counters
    }

    /// Parses, checks and inserts raw descriptor bytes from `source`.
    pub fn offer_bytes(
        &mut self,
        bytes: &[u8],
        source: Source,
        now: u64,
    ) -> Result<Offered, DescriptorError> {
        let r = UncheckedDescriptor::parse(bytes).and_then(|u| self.offer(u, source, now));
        if let Err(e) = &r {
            if matches!(
                e,
                DescriptorError::Oversized { .. } | DescriptorError::Malformed { .. }
            ) {
                self.counters.record(e);
            }
        }
        r
    }

    /// Checks an unchecked descriptor from `source` and inserts it; every failure is counted.
    pub fn offer(
        &mut self,
        d: UncheckedDescriptor,
        source: Source,
        now: u64,
    ) -> Result<Offered, DescriptorError> {
        let r = self.offer_inner(d, source, now);
        if let Err(e) = &r {
            self.counters.record(e);
        }
        r
    }

    fn offer_inner(
        &mut self,
        d: UncheckedDescriptor,
        source: Source,
        now: u64,
    ) -> Result<Offered, DescriptorError> {
        let expected = match source {
            Source::Dht { key, .. } => Some(key),
            _ => None,
        };
        let d = d.check(expected.as_ref(), &self.network.id(), now)?;
        match source {
            Source::Relay(addr) => d.check_served_from(addr)?,
            Source::Dht { seq, .. } => d.check_dht_seq(seq)?,
            Source::Pex | Source::Cache => {}
        }
        let id = d.identity();
        let r = self.insert_checked(d)?;
        if matches!(source, Source::Relay(_)) {
            self.confirmed.insert(id, now);
        }
        Ok(r)
    }

    /// Inserts an already checked descriptor, enforcing seq order: a lower seq, or the same
    /// seq with other bytes, is [`DescriptorError::StaleSeq`]. A new or newer copy is not
    /// confirmed (its relay has not served it to us).
    pub fn insert_checked(&mut self, d: Descriptor) -> Result<Offered, DescriptorError> {
        let id = d.identity();
        let r = self.insert_inner(d);
        if let Ok(Offered::New | Offered::Updated) = &r {
            // Any confirmation was of the copy held before, not of this one.
            self.confirmed.remove(&id);
        }
        r
    }

    fn insert_inner(&mut self, d: Descriptor) -> Result<Offered, DescriptorError> {
        if d.body().network != self.network.id() {
            return Err(DescriptorError::WrongNetwork {
                identity: d.identity(),
                expected: self.network.id(),
                found: d.body().network,
            });
        }
        match self.relays.get(&d.identity()) {
            Some(old) if old.seq() > d.seq() || (old.seq() == d.seq() && old.raw() != d.raw()) => {
                Err(DescriptorError::StaleSeq {
                    identity: d.identity(),
                    known: old.seq(),
                    got: d.seq(),
                })
            }
            Some(old) if old.raw() == d.raw() => Ok(Offered::Unchanged),
            Some(_) => {
                self.relays.insert(d.identity(), d);
                Ok(Offered::Updated)
            }
            None => {
                self.relays.insert(d.identity(), d);
                Ok(Offered::New)
            }
        }
    }

    /// Drops descriptors no longer valid at `now`; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.relays.len();
        self.relays.retain(|_, d| d.is_valid_at(now));
        let relays = &self.relays;
        self.confirmed.retain(|id, _| relays.contains_key(id));
        before - self.relays.len()
    }

    /// When the relay itself last served the copy held (unix seconds), if ever.
    pub fn confirmed_at(&self, id: &IdentityKey) -> Option<u64> {
        self.confirmed.get(id).copied()
    }

    /// Identities whose held copy its own relay has not served at or after `since`, in
    /// identity order: the relays a DHT lookup by key could still tell something new about.
    pub fn unconfirmed_since(&self, since: u64) -> Vec<IdentityKey> {
        self.relays
            .keys()
            .filter(|id| self.confirmed.get(id).is_none_or(|t| *t < since))
            .copied()
            .collect()
    }

    /// Descriptors whose relay served the held copy at or after `since`, in identity order.
    pub fn confirmed_since(&self, since: u64) -> Vec<&Descriptor> {
        self.relays
            .iter()
            .filter(|(id, _)| self.confirmed.get(id).is_some_and(|t| *t >= since))
            .map(|(_, d)| d)
            .collect()
    }

    /// Drops relays not confirmed by themselves at or after `since`; returns how many.
    pub fn forget_unconfirmed(&mut self, since: u64) -> usize {
        let before = self.relays.len();
        let confirmed = &self.confirmed;
        self.relays
            .retain(|id, _| confirmed.get(id).is_some_and(|t| *t >= since));
        self.confirmed.retain(|_, t| *t >= since);
        before - self.relays.len()
    }

    /// Descriptor of a relay.
    pub fn get(&self, id: &IdentityKey) -> Option<&Descriptor> {
        self.relays.get(id)
    }

    /// Number of relays held.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether no relay is held.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// All descriptors, in identity order.
    pub fn iter(&self) -> impl Iterator<Item = &Descriptor> {
        self.relays.values()
    }

    /// Descriptors usable at `now`, in identity order.
    pub fn usable(&self, now: u64) -> Vec<&Descriptor> {
        self.relays
            .values()
            .filter(|d| d.is_valid_at(now))
            .collect()
    }
}
