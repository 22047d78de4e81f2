//! Scenarios: what to simulate, read from TOML (docs/simnet.md documents every field).
//! Unknown fields are refused, so a typo is an error rather than a silent default.

use serde::Deserialize;

use crate::cpu::CpuCosts;
use crate::SimError;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, for outputs.
    pub name: String,
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Simulated duration, seconds.
    pub duration_s: u64,
    /// Relays.
    pub relays: Relays,
    /// Clients.
    pub clients: Clients,
    /// Traffic classes clients draw their downloads from.
    pub traffic: Vec<TrafficClass>,
    /// Network topology.
    #[serde(default)]
    pub topology: Topology,
    /// Payments.
    #[serde(default)]
    pub payments: Payments,
    /// Adversarial relays.
    #[serde(default)]
    pub adversaries: Vec<Adversary>,
    /// Relay churn.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// The CPU model (on by default, with the shipped calibration).
    #[serde(default)]
    pub cpu: CpuSection,
}

/// The CPU model of a scenario: cores, who shares them, and overrides of the calibrated
/// costs (`simnet/calibration.toml`; any cost left out keeps its calibrated value).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSection {
    /// Whether work costs virtual time at all (off: every node is infinitely fast).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Cores of each node: a node runs one circuit's work in order on one of them.
    #[serde(default = "default_cores")]
    pub cores: usize,
    /// When set, every node runs on one host with this many cores (the loopback harness:
    /// six relays and the client in one process on one machine).
    #[serde(default)]
    pub shared_host_cores: Option<usize>,
    /// The share of time (0–1] the last of the shared host's cores is there for this
    /// network (the rest goes to others): a host that gives the network 1.4 cores on
    /// average is `shared_host_cores = 2`, `shared_host_last_core = 0.4`. Default 1.
    #[serde(default = "default_scale")]
    pub shared_host_last_core: f64,
    /// Every calibrated cost multiplied by this (a slower or faster machine).
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Override: ns per relay-crypto layer per cell.
    pub layer_ns: Option<f64>,
    /// Override: ns per lone cell per link side.
    pub link_msg_ns: Option<f64>,
    /// Override: ns per cell of a burst per link side.
    pub link_cell_ns: Option<f64>,
    /// Override: ns for the client to start one hop's handshake.
    pub client_create_ns: Option<f64>,
    /// Override: ns for a relay to answer a CREATE.
    pub relay_accept_ns: Option<f64>,
    /// Override: ns for the client to finish one hop's handshake.
    pub client_finish_ns: Option<f64>,
    /// Override: ns per side of a link handshake.
    pub link_handshake_ns: Option<f64>,
    /// Override: ns per payment per end.
    pub payment_ns: Option<f64>,
    /// Override: the real stack's own ns per cell of a stream per link side.
    pub stack_cell_ns: Option<f64>,
    /// Override: the real stack's own ns per build or teardown message per link side.
    pub stack_msg_ns: Option<f64>,
}

fn default_true() -> bool {
    true
}
fn default_cores() -> usize {
    2
}
fn default_scale() -> f64 {
    1.0
}

impl Default for CpuSection {
    fn default() -> Self {
        CpuSection {
            enabled: true,
            cores: default_cores(),
            shared_host_cores: None,
            shared_host_last_core: 1.0,
            scale: 1.0,
            layer_ns: None,
            link_msg_ns: None,
            link_cell_ns: None,
            client_create_ns: None,
            relay_accept_ns: None,
            client_finish_ns: None,
            link_handshake_ns: None,
            payment_ns: None,
            stack_cell_ns: None,
            stack_msg_ns: None,
        }
    }
}

impl CpuSection {
    /// The costs this section gives over `base` (the calibration).
    pub fn costs(&self, base: &CpuCosts) -> CpuCosts {
        let c = CpuCosts {
            layer_ns: self.layer_ns.unwrap_or(base.layer_ns),
            link_msg_ns: self.link_msg_ns.unwrap_or(base.link_msg_ns),
            link_cell_ns: self.link_cell_ns.unwrap_or(base.link_cell_ns),
            client_create_ns: self.client_create_ns.unwrap_or(base.client_create_ns),
            relay_accept_ns: self.relay_accept_ns.unwrap_or(base.relay_accept_ns),
            client_finish_ns: self.client_finish_ns.unwrap_or(base.client_finish_ns),
            link_handshake_ns: self.link_handshake_ns.unwrap_or(base.link_handshake_ns),
            payment_ns: self.payment_ns.unwrap_or(base.payment_ns),
            stack_cell_ns: self.stack_cell_ns.unwrap_or(base.stack_cell_ns),
            stack_msg_ns: self.stack_msg_ns.unwrap_or(base.stack_msg_ns),
        };
        if self.enabled {
            c.scaled(self.scale)
        } else {
            c.scaled(0.0)
        }
    }
}

/// The relays of the network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relays {
    /// Number of relays.
    pub count: u32,
    /// Fraction of relays that are exits (at least one is).
    pub exit_fraction: f64,
    /// Bandwidth range (Mbit/s), drawn log-uniformly per relay; it is both the relay's
    /// access link and the bandwidth its descriptor advertises.
    pub bandwidth_mbit: [f64; 2],
    /// Price per MiB range (msat), uniform per relay.
    #[serde(default)]
    pub msat_per_mib: [u64; 2],
    /// Price per minute range (msat), uniform per relay.
    #[serde(default)]
    pub msat_per_min: [u64; 2],
    /// KiB a relay carries unpaid before it destroys a circuit.
    #[serde(default = "default_grace")]
    pub grace_kib: u32,
    /// Ports exits accept (inclusive ranges), in their descriptors and enforced on BEGIN;
    /// every port when absent.
    #[serde(default)]
    pub exit_ports: Option<Vec<[u16; 2]>>,
}

fn default_grace() -> u32 {
    512
}

/// The clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// Number of clients.
    pub count: u32,
    /// Clients start uniformly over this many seconds.
    #[serde(default)]
    pub start_spread_s: f64,
    /// Hops per circuit.
    #[serde(default = "default_hops")]
    pub hops: usize,
    /// Client access bandwidth, Mbit/s (both ways).
    pub bandwidth_mbit: f64,
    /// Pause between downloads, seconds (uniform in the range).
    pub think_s: [f64; 2],
    /// A circuit takes no new stream this long after its first (Tor's MaxCircuitDirtiness).
    #[serde(default = "default_dirtiness")]
    pub max_dirtiness_s: u64,
    /// Highest price per MiB a client accepts (msat).
    #[serde(default = "default_cap")]
    pub price_cap_msat_per_mib: u64,
    /// Highest price per minute a client accepts (msat).
    #[serde(default = "default_cap")]
    pub price_cap_msat_per_min: u64,
    /// Total a client may pay over the run (msat); none by default.
    #[serde(default)]
    pub budget_msat: Option<u64>,
    /// Paths tried per download before it fails.
    #[serde(default = "default_attempts")]
    pub build_attempts: u32,
    /// How long a relay that failed a build or stalled a stream is avoided, seconds.
    #[serde(default = "default_avoid")]
    pub avoid_s: u64,
    /// Clients that pick exits without looking at their policies (an old or broken client):
    /// the exits' own check is then what refuses streams they do not allow.
    #[serde(default)]
    pub ignore_exit_policy: bool,
}

fn default_hops() -> usize {
    3
}
fn default_dirtiness() -> u64 {
    600
}
fn default_cap() -> u64 {
    u64::MAX / 4
}
fn default_attempts() -> u32 {
    3
}
fn default_avoid() -> u64 {
    3600
}

/// One kind of download (web page, bulk file, OnionPerf probe).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficClass {
    /// Name in outputs ("web", "bulk", "50KiB", ...).
    pub name: String,
    /// Relative weight among classes.
    pub weight: u32,
    /// Bytes to download: a fixed size, or a range drawn log-uniformly.
    pub bytes: [u64; 2],
    /// The download fails if not finished within this many seconds.
    pub timeout_s: f64,
    /// Destination port (the destination host is always `sim.example`).
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    443
}

/// Where nodes are and how links behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Region weights; every node is placed in one region by weight.
    pub regions: Vec<f64>,
    /// One-way latency between regions, ms (square matrix, symmetric in practice).
    pub latency_ms: Vec<Vec<f64>>,
    /// Probability that a cell is lost on a link; TCP recovers it after a retransmission
    /// timeout, delaying it and every later cell of that link.
    #[serde(default)]
    pub loss: f64,
    /// One-way latency from an exit to the destination server, ms.
    #[serde(default = "default_server_ms")]
    pub server_latency_ms: f64,
}

fn default_server_ms() -> f64 {
    10.0
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            regions: vec![1.0],
            latency_ms: vec![vec![20.0]],
            loss: 0.0,
            server_latency_ms: default_server_ms(),
        }
    }
}

/// Payments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payments {
    /// Whether relays charge (their prices) and clients pay.
    pub enabled: bool,
    /// How far ahead of use the client pays each hop, msat (onionvpn-pay's
    /// `PayerConfig::chunk_msat`): the most a client has at risk per hop.
    pub chunk_msat: u64,
    /// Routing fee cap per payment, msat.
    #[serde(default = "default_max_fee")]
    pub max_fee_msat: u64,
    /// Payment latency range, ms.
    pub latency_ms: [f64; 2],
    /// Probability that a payment fails.
    #[serde(default)]
    pub failure: f64,
    /// Base routing fee, msat.
    #[serde(default)]
    pub fee_base_msat: u64,
    /// Proportional routing fee, ppm.
    #[serde(default)]
    pub fee_ppm: u64,
}

impl Default for Payments {
    fn default() -> Self {
        Payments {
            enabled: false,
            chunk_msat: 10_000,
            max_fee_msat: default_max_fee(),
            latency_ms: [200.0, 800.0],
            failure: 0.0,
            fee_base_msat: 0,
            fee_ppm: 0,
        }
    }
}

fn default_max_fee() -> u64 {
    1_000
}

/// What an adversarial relay does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdversaryKind {
    /// Drops a fraction (`param`) of the relay cells it forwards.
    Drop,
    /// Delays every cell it sends by `param` ms.
    Delay,
    /// Flips a bit in every relay cell it forwards toward the exit (a tagging attack).
    Tag,
    /// Advertises `1/param` of the price it then asks in the handshake.
    Overcharge,
    /// Stops relaying a circuit as soon as it has been paid on it.
    TakePaymentAndStop,
}

/// A group of adversarial relays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adversary {
    /// Behaviour.
    pub kind: AdversaryKind,
    /// How many relays (the first ones after sorting by index, after exits are placed).
    pub count: u32,
    /// Parameter of the behaviour (see [`AdversaryKind`]).
    #[serde(default)]
    pub param: f64,
    /// Whether the adversaries are exits (they are middles otherwise).
    #[serde(default)]
    pub exit: bool,
}

/// Relay churn: each relay alternates up and down with exponential durations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Mean time a relay stays up, seconds.
    pub mean_up_s: f64,
    /// Mean time a relay stays down, seconds.
    pub mean_down_s: f64,
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Scenario, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Scenario(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Scenario(m.to_string()));
        if self.relays.count < self.clients.hops as u32 || self.clients.hops == 0 {
            return bad("need at least `hops` relays and hops ≥ 1");
        }
        if self.clients.hops > onionvpn_proto::consts::MAX_HOPS {
            return bad("hops above the protocol's limit");
        }
        if self.traffic.is_empty() || self.traffic.iter().all(|t| t.weight == 0) {
            return bad("at least one traffic class with weight > 0");
        }
        if self
            .traffic
            .iter()
            .any(|t| t.bytes[0] == 0 || t.bytes[1] < t.bytes[0])
        {
            return bad("traffic bytes must be [min, max] with 0 < min ≤ max");
        }
        let r = self.topology.regions.len();
        if r == 0
            || self.topology.latency_ms.len() != r
            || self.topology.latency_ms.iter().any(|row| row.len() != r)
        {
            return bad("topology: latency_ms must be a square matrix, one row per region");
        }
        if !(0.0..1.0).contains(&self.topology.loss) {
            return bad("topology.loss in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.relays.exit_fraction) {
            return bad("relays.exit_fraction in [0, 1]");
        }
        if self.relays.bandwidth_mbit[0] <= 0.0
            || self.relays.bandwidth_mbit[1] < self.relays.bandwidth_mbit[0]
            || self.clients.bandwidth_mbit <= 0.0
        {
            return bad("bandwidths must be positive ranges");
        }
        let adv: u32 = self.adversaries.iter().map(|a| a.count).sum();
        if adv > self.relays.count {
            return bad("more adversaries than relays");
        }
        if self.traffic.iter().any(|t| t.port == 0) {
            return bad("traffic port ≥ 1");
        }
        if self.cpu.cores == 0
            || self.cpu.shared_host_cores == Some(0)
            || !(self.cpu.shared_host_last_core > 0.0 && self.cpu.shared_host_last_core <= 1.0)
        {
            return bad("cpu: cores ≥ 1");
        }
        if !(self.cpu.scale >= 0.0 && self.cpu.scale.is_finite()) {
            return bad("cpu.scale ≥ 0");
        }
        if self.payments.enabled && self.payments.chunk_msat == 0 {
            return bad("payments.chunk_msat > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = include_str!("../scenarios/smoke.toml");

    #[test]
    fn shipped_scenarios_parse() {
        for s in [
            SMOKE,
            include_str!("../scenarios/research-1k.toml"),
            include_str!("../scenarios/loopback.toml"),
            include_str!("../scenarios/adv-overcharge.toml"),
            include_str!("../scenarios/adv-take-payment.toml"),
            include_str!("../scenarios/adv-tag.toml"),
            include_str!("../scenarios/adv-drop.toml"),
            include_str!("../scenarios/adv-delay.toml"),
        ] {
            Scenario::parse(s).unwrap();
        }
    }

    #[test]
    fn typos_and_inconsistencies_are_typed_errors() {
        let typo = SMOKE.replace("think_s", "thinks_s");
        assert!(matches!(Scenario::parse(&typo), Err(SimError::Scenario(_))));
        let bad_matrix = SMOKE.replace("[120.0, 90.0, 20.0]]", "[120.0, 90.0]]");
        assert!(matches!(
            Scenario::parse(&bad_matrix),
            Err(SimError::Scenario(m)) if m.contains("square")
        ));
        let too_many = SMOKE.replace("count = 50\n", "count = 2\n");
        assert!(Scenario::parse(&too_many).is_err());
        assert!(Scenario::parse("not toml [").is_err());
    }
}
