//! Persistent cache (sled): descriptors and guard state per network.
//!
//! The cache is a file, so everything read from it is parsed and checked again like network
//! input; expired descriptors are dropped on load.

use std::path::Path as FsPath;

use crate::descriptor::{Descriptor, IdentityKey};
use crate::network::Network;
use crate::path::{Guard, GuardSet};
use crate::relays::{RelaySet, Source};

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// sled failed.
    #[error("cache database ({context}): {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// Underlying error.
        source: sled::Error,
    },
    /// Stored guard state is corrupt.
    #[error("cache guard record corrupt: {0}")]
    CorruptGuards(&'static str),
}

fn db(context: &'static str) -> impl FnOnce(sled::Error) -> CacheError {
    move |source| CacheError::Db { context, source }
}

/// Bytes per stored guard: identity (32), added (u64be), expires (u64be).
const GUARD_RECORD_LEN: usize = 48;

/// The on-disk cache of one network.
#[derive(Debug, Clone)]
pub struct Cache {
    descs: sled::Tree,
    state: sled::Tree,
}

/// What loading the cache found.
#[derive(Debug)]
pub struct CacheLoad {
    /// Checked descriptors still valid.
    pub relays: RelaySet,
    /// Entries dropped (expired or failing checks).
    pub dropped: usize,
}

impl Cache {
    /// Opens (or creates) the cache at `dir` for `network`.
    pub fn open(dir: &FsPath, network: &Network) -> Result<Self, CacheError> {
        let db_ = sled::open(dir).map_err(db("open"))?;
        Self::with_db(&db_, network)
    }

    /// Uses an already open sled database (e.g. shared with other state of the process).
    pub fn with_db(database: &sled::Db, network: &Network) -> Result<Self, CacheError> {
        let id = network.id().to_string();
        Ok(Self {
            descs: database
                .open_tree(format!("desc/{id}"))
                .map_err(db("open descriptor tree"))?,
            state: database
                .open_tree(format!("state/{id}"))
                .map_err(db("open state tree"))?,
        })
    }

    /// Stores (or replaces) a checked descriptor.
    pub fn store_descriptor(&self, d: &Descriptor) -> Result<(), CacheError> {
        self.descs
            .insert(d.identity().0, d.raw())
            .map_err(db("store descriptor"))?;
        Ok(())
    }

    /// Removes a relay's descriptor.
    pub fn remove_descriptor(&self, id: &IdentityKey) -> Result<(), CacheError> {
        self.descs.remove(id.0).map_err(db("remove descriptor"))?;
        Ok(())
    }

    /// Loads every stored descriptor, re-checking each at `now`; invalid ones are deleted.
    pub fn load(&self, network: &Network, now: u64) -> Result<CacheLoad, CacheError> {
        let mut relays = RelaySet::new(network.clone());
        let mut bad = Vec::new();
        for item in self.descs.iter() {
            let (k, v) = item.map_err(db("read descriptor"))?;
            let key_ok = |d: &Descriptor| d.identity().0[..] == k[..];
            match relays.offer_bytes(&v, Source::Cache, now) {
                Ok(_) if relays.iter().any(key_ok) => {}
                _ => bad.push(k),
            }
        }
        for k in &bad {
            self.descs.remove(k).map_err(db("drop descriptor"))?;
        }
        Ok(CacheLoad {
            relays,
            dropped: bad.len(),
        })
    }

    /// Stores the guard set.
    pub fn store_guards(&self, g: &GuardSet) -> Result<(), CacheError> {
        let mut v = Vec::with_capacity(g.guards.len() * GUARD_RECORD_LEN);
        for x in &g.guards {
            v.extend_from_slice(&x.identity.0);
            v.extend_from_slice(&x.added.to_be_bytes());
            v.extend_from_slice(&x.expires.to_be_bytes());
        }
        self.state.insert("guards", v).map_err(db("store guards"))?;
        Ok(())
    }

    /// Loads the guard set (empty if none stored).
    pub fn load_guards(&self) -> Result<GuardSet, CacheError> {
        let Some(v) = self.state.get("guards").map_err(db("load guards"))? else {
            return Ok(GuardSet::default());
        };
        if v.len() % GUARD_RECORD_LEN != 0 {
            return Err(CacheError::CorruptGuards("length"));
        }
        let mut guards = Vec::new();
        for c in v.chunks_exact(GUARD_RECORD_LEN) {
            let mut id = [0u8; 32];
            id.copy_from_slice(&c[..32]);
            let mut a = [0u8; 8];
            a.copy_from_slice(&c[32..40]);
            let mut e = [0u8; 8];
            e.copy_from_slice(&c[40..48]);
            guards.push(Guard {
                identity: IdentityKey(id),
                added: u64::from_be_bytes(a),
                expires: u64::from_be_bytes(e),
            });
        }
        Ok(GuardSet { guards })
    }

    /// Flushes to disk.
    pub fn flush(&self) -> Result<(), CacheError> {
        self.descs.flush().map_err(db("flush"))?;
        self.state.flush().map_err(db("flush"))?;
        Ok(())
    }
}
