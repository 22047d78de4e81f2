//! The CPU model: what processing a cell, a handshake or a payment costs a node, and a
//! bounded number of cores per node (or per shared host) that this work queues for in
//! virtual time.
//!
//! Why: on networks with real latencies CPU time is a small share of build and transfer
//! times, but on one host (the loopback harness) it is everything; without it the
//! simulator was 6× too fast at building circuits and 11–21× too fast at moving bytes
//! (docs/performance.md, "simnet"). The costs are measured from the project's own code on
//! this machine by [`crate::calibrate`] (`onionvpn-simnet calibrate`), recorded in
//! `simnet/calibration.toml`, and a scenario's `[cpu]` section can override each one.
//!
//! The model: every piece of work belongs to a circuit (a key); a node runs each key's work
//! in order (like the circuit task of the binaries) on one of its `cores` lanes, so a
//! node's cells leave in the order it processed them. When nodes share a host
//! (`shared_host_cores`), every piece of work also holds one of the host's cores while it
//! runs (the earliest gap that fits, at or after its lane is free): a busy host makes
//! everybody on it wait, and never runs more at once than it has cores.

use serde::Deserialize;

use crate::SimError;

/// The calibration shipped with the simulator (measured by `onionvpn-simnet calibrate`).
pub const CALIBRATION_TOML: &str = include_str!("../calibration.toml");

/// What each kind of work costs, in nanoseconds of one core.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuCosts {
    /// One relay-crypto layer on one cell (AES-256-GCM pass with the tag chain): a relay
    /// pays one per cell it handles, the client one per hop the cell crosses.
    pub layer_ns: f64,
    /// Moving a lone cell over a link, per side: one frame, one system call and one wake-up
    /// at each end (measured by ping-pong over a real loopback TCP channel). The messages
    /// of a circuit's build and teardown pay this.
    pub link_msg_ns: f64,
    /// Moving one cell of a burst over a link, per side (Noise AES-256-GCM framing, the
    /// socket system calls and the runtime's hand-offs shared by up to 64 cells, measured
    /// over a real loopback TCP channel).
    pub link_cell_ns: f64,
    /// The client starting one hop's handshake (`ClientCircuit::new`, per hop: x25519 key
    /// generation and the first half of the key exchange).
    pub client_create_ns: f64,
    /// A relay answering a CREATE (`RelayCircuit::accept`: x25519 exchanges, HKDF,
    /// extensions, replay cache).
    pub relay_accept_ns: f64,
    /// The client finishing one hop's handshake (`handle_created`: x25519, HKDF, keys).
    pub client_finish_ns: f64,
    /// One side of a Noise link handshake, paid once per pair of nodes (links persist).
    pub link_handshake_ns: f64,
    /// The payment bookkeeping of one payment at one end (payer schedule or account
    /// credit). The Lightning node's own work is not included (not measured).
    pub payment_ns: f64,
    /// What the whole real stack spends on one cell of a stream per link side beyond the
    /// micro-operations above: task wake-ups, queue hand-offs, copies, and at the ends the
    /// application's sockets (the exit reading the destination, the client writing to the
    /// SOCKS application). Derived from a real loopback transfer (process CPU time per cell
    /// minus the model's per-cell costs, spread over the link sides a cell crosses).
    #[serde(default)]
    pub stack_cell_ns: f64,
    /// The same for a lone build or teardown message per link side, derived from a burst
    /// of real circuit builds (process CPU time per build minus the model's handshakes and
    /// messages, spread over the build's and teardown's message sides).
    #[serde(default)]
    pub stack_msg_ns: f64,
}

/// The period of the last host core's availability when it is shared
/// (`CpuLayout::last_core_share` < 1): long against a piece of work (≤ 0.3 ms: a circuit's
/// handshakes), short against a measured transfer (≥ 0.1 s).
const LAST_PERIOD_NS: u64 = 1_000_000;

/// The shipped calibration file: costs and the command that produced them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalibrationFile {
    #[allow(dead_code)]
    command: String,
    #[allow(dead_code)]
    measured: String,
    costs: CpuCosts,
}

impl CpuCosts {
    /// The costs of `simnet/calibration.toml`.
    pub fn shipped() -> Result<CpuCosts, SimError> {
        let f: CalibrationFile = toml::from_str(CALIBRATION_TOML)
            .map_err(|e| SimError::Scenario(format!("calibration.toml: {e}")))?;
        Ok(f.costs)
    }

    /// `self` with every cost multiplied by `k` (a slower or faster machine).
    pub fn scaled(&self, k: f64) -> CpuCosts {
        CpuCosts {
            layer_ns: self.layer_ns * k,
            link_msg_ns: self.link_msg_ns * k,
            link_cell_ns: self.link_cell_ns * k,
            client_create_ns: self.client_create_ns * k,
            relay_accept_ns: self.relay_accept_ns * k,
            client_finish_ns: self.client_finish_ns * k,
            link_handshake_ns: self.link_handshake_ns * k,
            payment_ns: self.payment_ns * k,
            stack_cell_ns: self.stack_cell_ns * k,
            stack_msg_ns: self.stack_msg_ns * k,
        }
    }

    /// The calibration file text for these costs (what `onionvpn-simnet calibrate` prints).
    pub fn to_calibration_toml(&self, command: &str, measured: &str) -> String {
        format!(
            "# CPU costs of the simulator's CPU model (simnet/src/cpu.rs), in ns of one core.\n\
             # Produced by the command below on the machine and date named; rerun it to\n\
             # recalibrate, or override single costs in a scenario's [cpu] section.\n\
             command = {command:?}\n\
             measured = {measured:?}\n\n\
             [costs]\n\
             layer_ns = {:.0}\n\
             link_msg_ns = {:.0}\n\
             link_cell_ns = {:.0}\n\
             client_create_ns = {:.0}\n\
             relay_accept_ns = {:.0}\n\
             client_finish_ns = {:.0}\n\
             link_handshake_ns = {:.0}\n\
             payment_ns = {:.0}\n\
             stack_cell_ns = {:.0}\n\
             stack_msg_ns = {:.0}\n",
            self.layer_ns,
            self.link_msg_ns,
            self.link_cell_ns,
            self.client_create_ns,
            self.relay_accept_ns,
            self.client_finish_ns,
            self.link_handshake_ns,
            self.payment_ns,
            self.stack_cell_ns,
            self.stack_msg_ns,
        )
    }
}

/// Cores and who shares them.
#[derive(Debug, Clone)]
pub struct CpuLayout {
    /// Lanes (cores) per node.
    pub cores: usize,
    /// When set, every node runs on one host with this many cores.
    pub shared_host_cores: Option<usize>,
    /// The share of time (0–1] the host's last core is available (see [`Cpu::run`]).
    pub last_core_share: f64,
}

/// The cores of every node (and of the shared host) in virtual time.
pub struct Cpu {
    costs: CpuCosts,
    /// Per node, when each of its lanes is free (ns).
    lanes: Vec<Vec<u64>>,
    /// The shared host's cores: per core, its reserved intervals `[start, end)` that end
    /// after the last call's `now`, in order (empty: nodes do not share a host).
    host: Vec<Vec<(u64, u64)>>,
    /// Total busy ns per node (for outputs and tests).
    busy: Vec<u64>,
    /// The last host core is available only in the first `last_len` ns of every
    /// `LAST_PERIOD_NS` (equal to the period: always).
    last_len: u64,
    /// The event time: no work is ready before it (the `now` of [`Cpu::run`] may be later,
    /// when a handler chains work after its own).
    clock: u64,
}

impl Cpu {
    /// `nodes` nodes laid out as `layout`, paying `costs`.
    pub fn new(nodes: usize, layout: &CpuLayout, costs: CpuCosts) -> Cpu {
        let cores = layout.cores.max(1);
        Cpu {
            costs,
            lanes: vec![vec![0; cores]; nodes],
            host: vec![Vec::new(); layout.shared_host_cores.unwrap_or(0)],
            busy: vec![0; nodes],
            last_len: (layout.last_core_share.clamp(0.0, 1.0) * LAST_PERIOD_NS as f64).round()
                as u64,
            clock: 0,
        }
    }

    /// The simulation reached `t` (events run in time order): host reservations that ended
    /// by then can be forgotten.
    pub fn advance(&mut self, t: u64) {
        if t > self.clock {
            self.clock = t;
        }
    }

    /// The costs in use.
    pub fn costs(&self) -> &CpuCosts {
        &self.costs
    }

    /// Runs `cost_ns` of work of circuit `key` on `node`, ready at `now`; returns when it
    /// is done. Work of one key on one node runs in order.
    ///
    /// On a shared host the work also needs one of the host's cores for its whole length:
    /// it takes the earliest gap of a core, at or after the time its lane is free, that
    /// fits it (work is not preempted). Gaps left before work reserved ahead of time stay
    /// usable by work that is ready earlier, so no core idles while work waits, and the
    /// host never runs more work at once than it has cores. (Processor sharing computed
    /// once at the start, as before, let a 1-core host run 1.9 cores of work.)
    pub fn run(&mut self, node: u32, key: u32, now: u64, cost_ns: f64) -> u64 {
        let cost = cost_ns.max(0.0);
        let Some(lanes) = self.lanes.get(node as usize) else {
            return now;
        };
        let n = lanes.len();
        let li = key as usize % n;
        let start = now.max(lanes[li]);
        if cost == 0.0 {
            // Nothing to do, but stay behind the key's earlier work (order).
            return start;
        }
        let len = cost.round() as u64;
        let done = if self.host.is_empty() {
            start + len
        } else {
            self.host_place(start, len)
        };
        self.lanes[node as usize][li] = done;
        self.busy[node as usize] += len;
        done
    }

    /// Reserves `len` ns on the host core that can start it first at or after `ready`;
    /// returns its end. Intervals that ended by the event clock are dropped (no work is
    /// ready before it).
    fn host_place(&mut self, ready: u64, len: u64) -> u64 {
        let now = self.clock;
        let n = self.host.len();
        let last_len = self.last_len;
        let mut best: Option<(u64, usize, usize)> = None; // (start, core, insert index)
        for (ci, core) in self.host.iter_mut().enumerate() {
            let gone = core.iter().take_while(|&&(_, end)| end <= now).count();
            core.drain(..gone);
            let windowed = ci + 1 == n && n > 1 && last_len < LAST_PERIOD_NS;
            if windowed && len > last_len {
                continue; // never fits in the last core's window
            }
            let mut at = ready;
            let mut i = 0;
            let idx = loop {
                if windowed {
                    // Into the window of the period `at` falls in, or the next one.
                    let start = at - at % LAST_PERIOD_NS;
                    if at + len > start + last_len {
                        at = start + LAST_PERIOD_NS;
                    }
                }
                while i < core.len() && core[i].1 <= at {
                    i += 1;
                }
                match core.get(i) {
                    Some(&(s, e)) if at + len > s => {
                        at = at.max(e);
                        i += 1;
                    }
                    _ => break i,
                }
            };
            if best.is_none_or(|(b, _, _)| at < b) {
                best = Some((at, ci, idx));
            }
        }
        let Some((at, ci, idx)) = best else {
            return ready + len;
        };
        if let Some(core) = self.host.get_mut(ci) {
            core.insert(idx, (at, at + len));
        }
        at + len
    }

    /// Busy ns of `node` so far.
    pub fn busy(&self, node: u32) -> u64 {
        self.busy.get(node as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> CpuCosts {
        CpuCosts::shipped().unwrap()
    }

    #[test]
    fn one_lane_queues_work_in_order() {
        let mut cpu = Cpu::new(
            2,
            &CpuLayout {
                cores: 1,
                shared_host_cores: None,
                last_core_share: 1.0,
            },
            costs(),
        );
        assert_eq!(cpu.run(0, 7, 100, 50.0), 150);
        // Ready earlier, but the lane is busy until 150.
        assert_eq!(cpu.run(0, 8, 120, 10.0), 160);
        // Another node is independent.
        assert_eq!(cpu.run(1, 7, 120, 10.0), 130);
        // Zero-cost work still waits behind the key's earlier work.
        assert_eq!(cpu.run(0, 7, 100, 0.0), 160);
        assert_eq!(cpu.busy(0), 60);
    }

    #[test]
    fn shared_host_bounds_parallel_work_across_nodes() {
        let mut cpu = Cpu::new(
            4,
            &CpuLayout {
                cores: 2,
                shared_host_cores: Some(2),
                last_core_share: 1.0,
            },
            costs(),
        );
        // Four nodes ready at 0, 100 ns each, two host cores: two run at once, the others
        // wait for a core.
        let done: Vec<u64> = (0..4).map(|n| cpu.run(n, 0, 0, 100.0)).collect();
        assert_eq!(done, vec![100, 100, 200, 200]);
        // Later, alone on the host: full speed again.
        assert_eq!(cpu.run(0, 0, 1000, 100.0), 1100);
        let mut one = Cpu::new(
            2,
            &CpuLayout {
                cores: 1,
                shared_host_cores: Some(1),
                last_core_share: 1.0,
            },
            costs(),
        );
        assert_eq!(one.run(0, 0, 0, 500.0), 500);
        assert_eq!(one.run(0, 0, 0, 200.0), 700); // the lane: after 500
                                                  // Node 1, ready at 10: the only core is reserved 0–700.
        assert_eq!(one.run(1, 0, 10, 100.0), 800);
        // Work chained ahead by a handler (ready at 2000) leaves the gap before it to work
        // that is ready earlier.
        assert_eq!(one.run(1, 1, 2000, 100.0), 2100);
        assert_eq!(one.run(0, 1, 1000, 100.0), 1100);
        assert_eq!(one.run(0, 2, 1950, 100.0), 2200);
        one.advance(3000);
        assert_eq!(one.run(0, 3, 3000, 100.0), 3100);
    }

    /// A host whose last core is there a share of the time runs 1 + share cores of work on
    /// average, and work longer than that core's window runs on the others.
    #[test]
    fn a_shared_last_core_gives_its_share() {
        let end = |share: f64| {
            let mut cpu = Cpu::new(
                2,
                &CpuLayout {
                    cores: 1,
                    shared_host_cores: Some(2),
                    last_core_share: share,
                },
                costs(),
            );
            // Two nodes, each a chain of 400 pieces of 10 µs (4 ms each, 8 ms in all).
            let mut t = [0u64; 2];
            for _ in 0..400 {
                for (n, tn) in (0u32..).zip(t.iter_mut()) {
                    *tn = cpu.run(n, 0, *tn, 10_000.0);
                }
                cpu.advance(t[0].min(t[1]));
            }
            t[0].max(t[1])
        };
        assert_eq!(end(1.0), 4_000_000);
        // 1.5 cores: 8 ms of work in about 5.3 ms.
        let half = end(0.5);
        assert!((5_200_000..=5_500_000).contains(&half), "{half}");
        let mut one = Cpu::new(
            2,
            &CpuLayout {
                cores: 2,
                shared_host_cores: Some(2),
                last_core_share: 0.25,
            },
            costs(),
        );
        // Core 0 busy until 1 ms; 0.3 ms does not fit the last core's 0.25 ms window.
        assert_eq!(one.run(0, 0, 0, 1_000_000.0), 1_000_000);
        assert_eq!(one.run(1, 0, 0, 300_000.0), 1_300_000);
        // 0.2 ms does, at once.
        assert_eq!(one.run(1, 1, 0, 200_000.0), 200_000);
    }

    #[test]
    fn shipped_calibration_parses_and_is_plausible() {
        let c = costs();
        assert!(c.layer_ns > 0.0 && c.link_cell_ns > 0.0);
        // A handshake costs far more than a cell.
        assert!(c.relay_accept_ns > 10.0 * c.layer_ns);
        let text = c.to_calibration_toml("cmd", "when");
        let back: CalibrationFile = toml::from_str(&text).unwrap();
        assert!((back.costs.layer_ns - c.layer_ns.round()).abs() < 1.0);
    }
}
