//! The channel manager: one open channel per next-hop relay identity, reused by every
//! circuit that extends to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use onionvpn_chan::{connect, ChanError, ChannelConfig, ChannelHandle};
use tracing::debug;

use crate::redact::sensitive_addr;

/// Channels this relay opened toward other relays, keyed by the identity they proved.
#[derive(Debug)]
pub struct ChanMgr {
    cfg: ChannelConfig,
    open: Mutex<HashMap<[u8; 32], ChannelHandle>>,
}

impl ChanMgr {
    /// An empty manager opening channels with `cfg`.
    pub fn new(cfg: ChannelConfig) -> Self {
        ChanMgr {
            cfg,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Channels open now (closed ones are pruned first).
    pub fn len(&self) -> usize {
        let mut map = self.lock();
        map.retain(|_, h| !h.is_closed());
        map.len()
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], ChannelHandle>> {
        // A poisoned map only means a panic elsewhere; the handles in it are still valid.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An open channel to the relay `identity`: the existing one, or a new one to the first
    /// of `addrs` that answers and proves `identity` with `link_key`.
    pub async fn get(
        &self,
        identity: [u8; 32],
        addrs: &[SocketAddr],
        link_key: [u8; 32],
    ) -> Result<ChannelHandle, ChanError> {
        if let Some(h) = self.lock().get(&identity) {
            if !h.is_closed() {
                return Ok(h.clone());
            }
        }
        let mut last = ChanError::Closed;
        for addr in addrs {
            match connect(*addr, identity, link_key, &self.cfg).await {
                Ok(h) => {
                    let mut map = self.lock();
                    map.retain(|_, h| !h.is_closed());
                    // Two circuits may have raced to connect: both channels work; keep one.
                    map.insert(identity, h.clone());
                    return Ok(h);
                }
                Err(e) => {
                    debug!(addr = %sensitive_addr(*addr), "extending: connect failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Forgets every channel (they close once no circuit uses them).
    pub fn clear(&self) {
        self.lock().clear();
    }
}
