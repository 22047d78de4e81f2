//! The in-memory network: when a cell sent now arrives.
//!
//! Each node has an access link (up and down, bytes per second) that serialises its cells;
//! a pair of nodes adds the one-way latency between their regions; a lost cell is
//! recovered by TCP after a retransmission timeout, and a link delivers in order (a
//! retransmission delays the cells behind it, as on TCP). Randomness (loss) comes from the
//! world's seeded RNG, so the timings are deterministic.

use std::collections::HashMap;

use onionvpn_proto::consts::CELL_LEN;
use rand::rngs::StdRng;
use rand::RngExt;

/// Timing state of one node's access link.
#[derive(Debug, Clone)]
pub struct Access {
    /// Region index.
    pub region: usize,
    /// Nanoseconds to serialise one cell up.
    pub up_ns_per_cell: u64,
    /// Nanoseconds to serialise one cell down.
    pub down_ns_per_cell: u64,
    up_free: u64,
    down_free: u64,
}

impl Access {
    /// An access link of `bytes_per_sec` both ways in `region`.
    pub fn new(region: usize, bytes_per_sec: f64) -> Self {
        let ns = (CELL_LEN as f64 * 1e9 / bytes_per_sec.max(1.0)).ceil() as u64;
        Access {
            region,
            up_ns_per_cell: ns.max(1),
            down_ns_per_cell: ns.max(1),
            up_free: 0,
            down_free: 0,
        }
    }
}

/// The network: access links, latencies, loss, and per-link ordering.
pub struct Net {
    /// Access link per node.
    pub nodes: Vec<Access>,
    latency_ns: Vec<Vec<u64>>,
    loss: f64,
    /// Last arrival per directed (from, to) link, to keep each link in order.
    last: HashMap<(u32, u32), u64>,
    /// Cells sent.
    pub cells: u64,
}

impl Net {
    /// A network of `nodes` with the region latency matrix (ms) and loss probability.
    pub fn new(nodes: Vec<Access>, latency_ms: &[Vec<f64>], loss: f64) -> Self {
        Net {
            nodes,
            latency_ns: latency_ms
                .iter()
                .map(|r| r.iter().map(|ms| (ms * 1e6) as u64).collect())
                .collect(),
            loss,
            last: HashMap::new(),
            cells: 0,
        }
    }

    /// One-way latency between two nodes.
    pub fn latency(&self, a: u32, b: u32) -> u64 {
        let ra = self.nodes[a as usize].region;
        let rb = self.nodes[b as usize].region;
        self.latency_ns[ra][rb]
    }

    /// A cell leaves `from` for `to` at `now` (plus `extra` ns of sender-side delay); when
    /// does it arrive?
    pub fn send(&mut self, rng: &mut StdRng, now: u64, from: u32, to: u32, extra: u64) -> u64 {
        self.cells += 1;
        let lat = self.latency(from, to);
        let a = &mut self.nodes[from as usize];
        let dep = now.max(a.up_free) + a.up_ns_per_cell;
        a.up_free = dep;
        let mut arr = dep + lat + extra;
        if self.loss > 0.0 && rng.random_bool(self.loss) {
            // TCP's retransmission timeout: at least 200 ms, else twice the RTT.
            arr += (4 * lat).max(200_000_000);
        }
        let last = self.last.entry((from, to)).or_insert(0);
        arr = arr.max(*last);
        *last = arr;
        let b = &mut self.nodes[to as usize];
        let done = arr.max(b.down_free) + b.down_ns_per_cell;
        b.down_free = done;
        done
    }
}
