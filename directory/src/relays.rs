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
#[derive(Debug, Clone)]
pub struct RelaySet {
    network: Network,
    relays: BTreeMap<IdentityKey, Descriptor>,
    counters: RejectionCounters,
}

impl RelaySet {
    /// An empty set for `network`.
    pub fn new(network: Network) -> Self {
        Self {
            network,
            relays: BTreeMap::new(),
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
        self.insert_checked(d)
    }

    /// Inserts an already checked descriptor, enforcing seq order: a lower seq, or the same
    /// seq with other bytes, is [`DescriptorError::StaleSeq`].
    pub fn insert_checked(&mut self, d: Descriptor) -> Result<Offered, DescriptorError> {
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
