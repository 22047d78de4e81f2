//! The world: every relay, client, link and payment of a run, and the event loop that
//! drives the real sans-IO state machines through them.
//!
//! What runs here is the project's code: `ClientCircuit` and `RelayCircuit` (handshake,
//! layered crypto, streams, Vegas congestion control), descriptor encoding, signing and
//! verification and `select_path` (onionvpn-directory), the client's build-time estimator,
//! hop targets and stall detection (onionvpn-client), and the simulated payment rail
//! (onionvpn-pay). What the world supplies is what the tokio shells supply in the binaries:
//! moving cells between nodes (here with virtual latency and bandwidth), timers, the
//! destination server and the decisions of the shells (which circuit a download uses, when
//! to pay).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use onionvpn_client::buildtime::{BuildTimeConfig, BuildTimeEstimator};
use onionvpn_client::circmgr::{circuit_config, hop_target};
use onionvpn_client::stall::{StallConfig, StallWatch};
use onionvpn_directory::descriptor::{
    DescriptorBody, IdentityKey, LinkKey, LnNodeId, OnionKey, Prices, ProtoVersion,
};
use onionvpn_directory::path::{select_path, GuardSet, PathRequest};
use onionvpn_directory::{policy, Descriptor, ExitPolicy, Network, RelaySet, Source};
use onionvpn_pay::account::{Account, Verdict};
use onionvpn_pay::payer::{
    Budget, CircuitPayer, HopSpec, OrderId, PayResult, PayerConfig, PayerEvent, PriceCap,
};
use onionvpn_pay::sim::{SimEvent, SimRail, SimRailConfig};
use onionvpn_pay::NodeId;
use onionvpn_proto::cell::{ChanCmd, DestroyReason};
use onionvpn_proto::circuit::{
    CircError, ClientCircuit, ClientConfig, ClientEvent, FromClient, RelayCircuit, RelayKeys,
    RelayPolicy,
};
use onionvpn_proto::consts::{CELL_BODY_LEN, RELAY_BODY_MAX};
use onionvpn_proto::crypto::handshake::{OnionSecretKey, ReplayCache};
use onionvpn_proto::ext::PaymentTerms;
use onionvpn_proto::relaymsg::{EndReason, Host, Hostname, StreamId, Target};
use onionvpn_relay::exit::{check_before_resolving, usable_addresses};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::cpu::{Cpu, CpuCosts, CpuLayout};
use crate::net::{Access, Net};
use crate::output::{CircuitRow, Outputs, PaymentRow, RelayRow, StreamRow};
use crate::queue::CalendarQueue;
use crate::scenario::{AdversaryKind, Scenario};
use crate::SimError;

/// Unix time at the start of every run: descriptors are signed and checked against
/// simulated unix time, which starts here (fixed, so outputs do not depend on the date).
pub const START_UNIX: u64 = 1_800_000_000;
/// Destination every download goes to (the exit "resolves" it to the simulated server).
const DEST_HOST: &str = "sim.example";
/// The address the simulated DNS gives `DEST_HOST` (a global one: exit policies refuse
/// private addresses).
const DEST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SEC: u64 = 1_000_000_000;
type Body = Box<[u8; CELL_BODY_LEN]>;

/// A cell in flight.
enum CellKind {
    Create(Body),
    Created(Body),
    /// `early`: the protocol's RELAY_EARLY command (forward only). `lone`: simulator
    /// bookkeeping, not on the wire: the cell is a message of a circuit's build (EXTEND,
    /// EXTENDED), sent alone, so every link side it crosses pays a whole message
    /// (`link_cost`), also where a relay passes it on backward (a relayed EXTENDED),
    /// which the protocol's `early` flag does not mark.
    Relay {
        early: bool,
        lone: bool,
        body: Body,
    },
    Destroy(DestroyReason),
}

/// A scheduled event.
enum Ev {
    /// A cell arrives at the far end of link-circuit `link`; `fwd`: toward the exit.
    Cell {
        link: u32,
        fwd: bool,
        kind: CellKind,
    },
    /// A client starts its next download.
    ClientNext(u32),
    /// A circuit build's deadline.
    BuildTimeout(u32),
    /// A download's deadline.
    StreamTimeout { ccirc: u32, dl: u64 },
    /// The exit's connection to the server is up.
    ExitConnected { rcirc: u32, stream: StreamId },
    /// The server's response starts arriving at the exit.
    ExitRespond { rcirc: u32, stream: StreamId },
    /// The payment rail has something due.
    Rail,
    /// A relay goes down (`false`) or comes back (`true`).
    Churn { relay: u32, up: bool },
    /// A circuit's payer asked to be polled now.
    PayerWake(u32),
    /// A circuit's stall deadline (onionvpn-client's `StallWatch`).
    StallCheck(u32),
}

/// Who holds an end of a link-circuit.
#[derive(Clone, Copy)]
enum End {
    Client(u32),
    Relay(u32),
}

/// One circuit on one link: the initiator's end and the responder's.
struct LinkCirc {
    a: u32,
    b: u32,
    a_end: End,
    b_end: Option<u32>,
}

struct Relay {
    identity: [u8; 32],
    onion: Vec<OnionSecretKey>,
    replay: ReplayCache,
    policy: RelayPolicy,
    rng: StdRng,
    ln: NodeId,
    adv: Option<(AdversaryKind, f64)>,
    up: bool,
    /// The policy this relay enforces on BEGIN (the one its descriptor advertises).
    exit_policy: ExitPolicy,
    row: RelayRow,
}

struct ExitStream {
    id: StreamId,
    remaining: u64,
    responding: bool,
}

struct RelayCirc {
    relay: u32,
    circ: RelayCircuit,
    prev: u32,
    next: Option<u32>,
    streams: Vec<ExitStream>,
    terms: Option<PaymentTerms>,
    /// onionvpn-pay's per-hop account (paid vs used, grace).
    acct: Option<Account>,
    cells: u64,
    stopped: bool,
}

struct Download {
    id: u64,
    class: usize,
    bytes: u64,
    started: u64,
    attempts: u32,
}

struct ClientCirc {
    client: u32,
    circ: ClientCircuit,
    link: u32,
    hops: Vec<u32>,
    started: u64,
    opened: Option<u64>,
    first_stream: Option<u64>,
    row: usize,
    /// onionvpn-pay's pay-ahead schedule, once the circuit is open (if any hop charges).
    payer: Option<CircuitPayer>,
    /// Circuit hop index of each hop the payer pays.
    payer_hops: Vec<usize>,
    /// When a PayerWake is scheduled, if one is.
    payer_wake: Option<u64>,
    cells: u64,
    /// The download on this circuit: (stream, download id, bytes received, first byte at).
    stream: Option<(StreamId, u64, u64, Option<u64>)>,
    /// The client's stall detection (onionvpn-client): a download not yet complete is a
    /// stream waiting for data.
    watch: StallWatch,
    /// When a StallCheck is scheduled, if one is.
    stall_check: Option<u64>,
    /// The payment tokens of its paid hops (for `World::unserved_at`).
    tokens: Vec<[u8; 16]>,
}

struct Client {
    node: u32,
    rng: StdRng,
    guards: GuardSet,
    avoid: BTreeMap<[u8; 32], u64>,
    est: BuildTimeEstimator,
    current: Option<u32>,
    building: Option<u32>,
    dl: Option<Download>,
    ln: NodeId,
    budget: Budget,
    /// msat paid per relay (what the adversary tests check).
    paid_to: BTreeMap<u32, u64>,
    /// msat paid per (relay, token): to compare with what the hop had carried.
    paid_tokens: BTreeMap<(u32, [u8; 16]), u64>,
}

/// Payment bookkeeping of one pending keysend.
struct PendingPay {
    ccirc: u32,
    order: OrderId,
    client: u32,
    relay: u32,
    token: [u8; 16],
    started: u64,
    row: usize,
}

/// The whole simulated network.
pub struct World {
    sc: Scenario,
    q: CalendarQueue<Ev>,
    net: Net,
    /// The CPU model: cores per node (or per shared host) and what work costs.
    cpu: Cpu,
    costs: CpuCosts,
    /// Pairs of nodes with a link up (a link handshake was paid), smaller index first.
    channels: HashSet<(u32, u32)>,
    /// Set while sending a lone build message (see `link_cost`).
    lone: bool,
    rng: StdRng,
    base: Instant,
    relays: Vec<Relay>,
    clients: Vec<Client>,
    descs: Vec<Descriptor>,
    by_identity: HashMap<[u8; 32], u32>,
    links: HashMap<u32, LinkCirc>,
    rcircs: HashMap<u32, RelayCirc>,
    ccircs: HashMap<u32, ClientCirc>,
    tokens: HashMap<[u8; 16], u32>,
    rail: SimRail,
    pending_pay: HashMap<onionvpn_pay::PaymentId, PendingPay>,
    ln_to_relay: HashMap<NodeId, u32>,
    /// What each stopped circuit (take-payment-and-stop) was owed when it stopped, and when
    /// it stopped, by token.
    owed_at_stop: HashMap<[u8; 16], (u64, u64)>,
    /// By token of a paid hop: the last time a download on the hop's circuit ended unserved
    /// (failed, stalled, timed out, or still waiting at the end).
    unserved_at: HashMap<[u8; 16], u64>,
    next_id: u32,
    next_dl: u64,
    /// Outputs collected during the run.
    pub out: Outputs,
    /// Events handled.
    pub events: u64,
    zeros: [u8; RELAY_BODY_MAX],
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return lo;
    }
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

fn uniform_u64(rng: &mut StdRng, r: [u64; 2]) -> u64 {
    if r[1] <= r[0] {
        r[0]
    } else {
        rng.random_range(r[0]..=r[1])
    }
}

fn pick_weighted(rng: &mut StdRng, w: &[f64]) -> usize {
    let total: f64 = w.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, v) in w.iter().enumerate() {
        if x < *v {
            return i;
        }
        x -= v;
    }
    w.len().saturating_sub(1)
}

impl World {
    /// Builds the world of `sc`: relays with real keys and signed descriptors published to
    /// the simulated DHT, and clients that discovered them (with real verification).
    pub fn new(sc: Scenario) -> Result<World, SimError> {
        let mut rng = StdRng::seed_from_u64(sc.seed);
        let nr = sc.relays.count as usize;
        let nc = sc.clients.count as usize;
        let mut access = Vec::with_capacity(nr + nc);
        let network =
            Network::public("simnet", 1).map_err(|e| SimError::Setup(format!("network: {e}")))?;
        let n_exits = ((nr as f64 * sc.relays.exit_fraction).round() as usize).clamp(1, nr);
        // Adversaries: exits from the front of the exit range, middles from its back.
        let mut adv: Vec<Option<(AdversaryKind, f64)>> = vec![None; nr];
        let (mut next_exit, mut next_mid) = (0usize, nr);
        for a in &sc.adversaries {
            for _ in 0..a.count {
                let i = if a.exit && next_exit < n_exits {
                    next_exit += 1;
                    next_exit - 1
                } else {
                    next_mid -= 1;
                    next_mid
                };
                adv[i] = Some((a.kind, a.param));
            }
        }
        let mut dht: BTreeMap<IdentityKey, (u64, Vec<u8>)> = BTreeMap::new();
        let mut relays = Vec::with_capacity(nr);
        let mut by_identity = HashMap::new();
        let mut ln_to_relay = HashMap::new();
        for (i, adv) in adv.iter().enumerate() {
            let region = pick_weighted(&mut rng, &sc.topology.regions);
            let mbit = log_uniform(
                &mut rng,
                sc.relays.bandwidth_mbit[0],
                sc.relays.bandwidth_mbit[1],
            );
            let bps = mbit * 1e6 / 8.0;
            access.push(Access::new(region, bps));
            let mut seed = [0u8; 32];
            rng.fill(&mut seed);
            let sk = SigningKey::from_bytes(&seed);
            let identity = IdentityKey::from_signing_key(&sk);
            let onion = OnionSecretKey::generate(&mut rng);
            let mut link_key = [0u8; 32];
            rng.fill(&mut link_key);
            let (per_mib, per_min) = if sc.payments.enabled {
                (
                    uniform_u64(&mut rng, sc.relays.msat_per_mib),
                    uniform_u64(&mut rng, sc.relays.msat_per_min),
                )
            } else {
                (0, 0)
            };
            // An overcharging relay advertises less than it asks in the handshake.
            let advertised = match adv {
                Some((AdversaryKind::Overcharge, f)) if *f > 1.0 => Prices {
                    msat_per_mib: (per_mib as f64 / f) as u64,
                    msat_per_min: (per_min as f64 / f) as u64,
                },
                _ => Prices {
                    msat_per_mib: per_mib,
                    msat_per_min: per_min,
                },
            };
            let mut ln = [2u8; 33];
            ln[1..5].copy_from_slice(&(i as u32).to_be_bytes());
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(11 + (i % 200) as u8, (i / 200) as u8, 0, 1)),
                9001,
            );
            let exit_policy = match (&sc.relays.exit_ports, i < n_exits) {
                (_, false) => ExitPolicy::reject_all(),
                (None, true) => ExitPolicy::accept_all(),
                (Some(ports), true) => {
                    let r: Vec<(u16, u16)> = ports.iter().map(|p| (p[0], p[1])).collect();
                    ExitPolicy::accept_ports(&r)
                }
            };
            let body = DescriptorBody {
                network: network.id(),
                identity,
                seq: START_UNIX,
                published: START_UNIX,
                expires: START_UNIX + 3 * 3600,
                link_key: LinkKey(link_key),
                bandwidth: bps as u64,
                prices: advertised,
                ln_node_id: LnNodeId(ln),
                onion_keys: vec![OnionKey {
                    key: onion.public().to_bytes(),
                    valid_after: START_UNIX - 60,
                    valid_until: START_UNIX + 7 * 24 * 3600,
                }],
                addresses: vec![addr],
                protocols: vec![
                    ProtoVersion { id: 1, version: 1 },
                    ProtoVersion { id: 2, version: 1 },
                ],
                family: Vec::new(),
                exit_policy: exit_policy.clone(),
            };
            let raw = body
                .sign(&sk)
                .map_err(|e| SimError::Setup(format!("descriptor of relay {i}: {e}")))?;
            dht.insert(identity, (START_UNIX, raw));
            by_identity.insert(identity.0, i as u32);
            ln_to_relay.insert(NodeId(ln), i as u32);
            let policy = RelayPolicy {
                msat_per_mib: per_mib,
                msat_per_min: per_min,
                grace_kib: sc.relays.grace_kib,
                ..RelayPolicy::default()
            };
            relays.push(Relay {
                identity: identity.0,
                onion: vec![onion],
                replay: ReplayCache::new(4096, Duration::from_secs(600)),
                policy,
                rng: StdRng::seed_from_u64(sc.seed ^ (0x5eed_0000_0000 + i as u64)),
                ln: NodeId(ln),
                adv: *adv,
                up: true,
                exit_policy,
                row: RelayRow {
                    relay: i as u32,
                    exit: i < n_exits,
                    bandwidth_bps: bps as u64,
                    msat_per_mib: per_mib,
                    msat_per_min: per_min,
                    adversary: adv.map(|(k, _)| format!("{k:?}")).unwrap_or_default(),
                    ..RelayRow::default()
                },
            });
        }
        // Discovery: every client looks the same descriptors up in the simulated DHT and
        // verifies them; verification is a pure function of the bytes and the time, so it
        // is done once and the verified set shared (docs/simnet.md, "DHT").
        let mut set = RelaySet::new(network);
        for (key, (seq, raw)) in &dht {
            set.offer_bytes(
                raw,
                Source::Dht {
                    key: *key,
                    seq: *seq as i64,
                },
                START_UNIX,
            )
            .map_err(|e| SimError::Setup(format!("descriptor verification: {e}")))?;
        }
        let descs: Vec<Descriptor> = set.usable(START_UNIX).into_iter().cloned().collect();

        let client_bps = sc.clients.bandwidth_mbit * 1e6 / 8.0;
        let mut clients = Vec::with_capacity(nc);
        let mut q = CalendarQueue::new(1_000_000, 1 << 13);
        for c in 0..nc {
            let region = pick_weighted(&mut rng, &sc.topology.regions);
            access.push(Access::new(region, client_bps));
            let mut ln = [3u8; 33];
            ln[1..5].copy_from_slice(&(c as u32).to_be_bytes());
            clients.push(Client {
                node: (nr + c) as u32,
                rng: StdRng::seed_from_u64(sc.seed ^ (0xc11e_0000_0000 + c as u64)),
                guards: GuardSet::default(),
                avoid: BTreeMap::new(),
                est: BuildTimeEstimator::new(BuildTimeConfig::default()),
                current: None,
                building: None,
                dl: None,
                ln: NodeId(ln),
                budget: Budget::new(sc.clients.budget_msat, 0),
                paid_to: BTreeMap::new(),
                paid_tokens: BTreeMap::new(),
            });
            let start = (rng.random::<f64>() * sc.clients.start_spread_s * 1e9) as u64;
            q.push(start, Ev::ClientNext(c as u32));
        }
        if let Some(ch) = &sc.churn {
            for r in 0..nr {
                let t = exp_ns(&mut rng, ch.mean_up_s);
                q.push(
                    t,
                    Ev::Churn {
                        relay: r as u32,
                        up: false,
                    },
                );
            }
        }
        let costs = sc.cpu.costs(&CpuCosts::shipped()?);
        let cpu = Cpu::new(
            access.len(),
            &CpuLayout {
                cores: sc.cpu.cores,
                shared_host_cores: sc.cpu.shared_host_cores,
                last_core_share: sc.cpu.shared_host_last_core,
            },
            costs,
        );
        let net = Net::new(access, &sc.topology.latency_ms, sc.topology.loss);
        let p = &sc.payments;
        let rail = SimRail::new(SimRailConfig {
            seed: sc.seed ^ 0x9a1_0000,
            latency_min_ns: (p.latency_ms[0] * 1e6) as u64,
            latency_max_ns: (p.latency_ms[1] * 1e6) as u64,
            failure_ppm: (p.failure * 1e6) as u32,
            fee_base_msat: p.fee_base_msat,
            fee_ppm: p.fee_ppm,
        });
        Ok(World {
            q,
            net,
            cpu,
            costs,
            channels: HashSet::new(),
            lone: false,
            rng,
            // The state machines take `Instant`s; virtual time is an offset from this one
            // origin, and only differences of instants are ever used.
            base: Instant::now(),
            relays,
            clients,
            descs,
            by_identity,
            links: HashMap::new(),
            rcircs: HashMap::new(),
            ccircs: HashMap::new(),
            tokens: HashMap::new(),
            rail,
            pending_pay: HashMap::new(),
            ln_to_relay,
            owed_at_stop: HashMap::new(),
            unserved_at: HashMap::new(),
            next_id: 1,
            next_dl: 0,
            out: Outputs::default(),
            events: 0,
            zeros: [0u8; RELAY_BODY_MAX],
            sc,
        })
    }

    /// Runs until the scenario's end; `progress(sim_ns)` is called now and then.
    pub fn run(&mut self, mut progress: impl FnMut(u64)) {
        let end = self.sc.duration_s * SEC;
        let mut next_report = 0u64;
        while let Some((t, ev)) = self.q.pop() {
            if t > end {
                break;
            }
            self.events += 1;
            self.cpu.advance(t);
            if t >= next_report {
                progress(t);
                next_report = t + SEC;
            }
            self.handle(t, ev);
        }
        progress(end);
        self.finish(end);
    }

    fn inst(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn unix(&self, t: u64) -> u64 {
        START_UNIX + t / SEC
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn handle(&mut self, now: u64, ev: Ev) {
        match ev {
            Ev::Cell { link, fwd, kind } => self.on_cell(now, link, fwd, kind),
            Ev::ClientNext(c) => self.client_next(now, c),
            Ev::BuildTimeout(cc) => self.build_timeout(now, cc),
            Ev::StreamTimeout { ccirc, dl } => self.stream_timeout(now, ccirc, dl),
            Ev::ExitConnected { rcirc, stream } => self.exit_connected(now, rcirc, stream),
            Ev::ExitRespond { rcirc, stream } => {
                if let Some(rc) = self.rcircs.get_mut(&rcirc) {
                    if let Some(s) = rc.streams.iter_mut().find(|s| s.id == stream) {
                        s.responding = true;
                    }
                }
                self.exit_pump(now, rcirc);
            }
            Ev::Rail => self.on_rail(now),
            Ev::Churn { relay, up } => self.churn(now, relay, up),
            Ev::StallCheck(cc) => self.stall_check(now, cc),
            Ev::PayerWake(cc) => {
                if let Some(c) = self.ccircs.get_mut(&cc) {
                    if c.payer_wake == Some(now) {
                        c.payer_wake = None;
                    }
                }
                self.client_pay(now, cc);
            }
        }
    }

    // ----- sending -----------------------------------------------------------------

    /// Sends a cell over link-circuit `link` (forward: from its initiator).
    fn send(&mut self, now: u64, link: u32, fwd: bool, kind: CellKind) {
        self.send_cost(now, link, fwd, kind, 0.0);
    }

    /// Sends a cell after `work_ns` of CPU work on it at the sender (relay-crypto layers of
    /// a cell it originates); the link's cost is added here.
    fn send_cost(&mut self, now: u64, link: u32, fwd: bool, kind: CellKind, work_ns: f64) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let (from, to) = if fwd { (l.a, l.b) } else { (l.b, l.a) };
        // The sender's circuit: its work runs in order on one of the sender's lanes.
        let key = if fwd {
            match l.a_end {
                End::Client(cc) | End::Relay(cc) => cc,
            }
        } else {
            l.b_end.unwrap_or(link)
        };
        let lone = match &kind {
            CellKind::Relay { lone, .. } => *lone,
            _ => true,
        };
        let mut cost = work_ns + self.link_cost(lone);
        if self.channels.insert((from.min(to), from.max(to))) {
            // First cell between these nodes: both ends run the link handshake.
            cost += self.costs.link_handshake_ns;
            self.cpu.run(to, key, now, self.costs.link_handshake_ns);
        }
        let now = self.cpu.run(from, key, now, cost);
        let extra = match self.relays.get(from as usize).and_then(|r| r.adv) {
            Some((AdversaryKind::Delay, ms)) => (ms * 1e6) as u64,
            _ => 0,
        };
        if let Some(r) = self.relays.get_mut(from as usize) {
            r.row.cells += 1;
        }
        let at = self.net.send(&mut self.rng, now, from, to, extra);
        self.q.push(at, Ev::Cell { link, fwd, kind });
    }

    /// A link's cost for one cell: a lone message of a circuit's build or teardown (CREATE,
    /// CREATED, DESTROY, RELAY_EARLY and the answers to EXTEND) pays a whole message (a
    /// system call and a wake-up at each end); a cell of a stream's traffic, which the
    /// binaries move in batches, its share of one.
    ///
    /// Each side also pays the real stack's own share (`stack_*_ns`, from whole real
    /// operations): what the micro-measured costs do not see.
    fn link_cost(&self, lone: bool) -> f64 {
        if lone {
            self.costs.link_msg_ns + self.costs.stack_msg_ns
        } else {
            self.costs.link_cell_ns + self.costs.stack_cell_ns
        }
    }

    // ----- cells -------------------------------------------------------------------

    fn on_cell(&mut self, now: u64, link: u32, fwd: bool, kind: CellKind) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let (a, b, a_end, b_end) = (l.a, l.b, l.a_end, l.b_end);
        let to = if fwd { b } else { a };
        // A link-circuit ends when a DESTROY on it is delivered (or lost with its relay).
        if matches!(kind, CellKind::Destroy(_)) {
            self.links.remove(&link);
        }
        if (to as usize) < self.relays.len() && !self.relays[to as usize].up {
            return; // a relay that is down receives nothing
        }
        // The receiver's CPU: the link's share, and what a relay does with the cell (the
        // client charges its own work in `client_cell`, once it knows what the cell was).
        let c = &self.costs;
        let (key, work) = match (fwd, &kind, b_end, a_end) {
            (true, CellKind::Create(_), None, _) => (link, c.relay_accept_ns),
            (true, CellKind::Relay { .. }, Some(rc), _) => (rc, c.layer_ns),
            (true, _, Some(rc), _) => (rc, 0.0),
            (true, _, None, _) => (link, 0.0),
            (false, CellKind::Relay { .. }, _, End::Relay(rc)) => (rc, c.layer_ns),
            (false, _, _, End::Relay(rc) | End::Client(rc)) => (rc, 0.0),
        };
        let now = if matches!(a_end, End::Client(_)) && !fwd {
            now
        } else {
            let lone = match &kind {
                CellKind::Relay { lone, .. } => *lone,
                _ => true,
            };
            let link = self.link_cost(lone);
            self.cpu.run(to, key, now, work + link)
        };
        if fwd {
            match (kind, b_end) {
                (CellKind::Create(body), None) => self.relay_create(now, link, b, &body),
                (CellKind::Relay { early, lone, body }, Some(rc)) => {
                    self.relay_forward(now, rc, early, lone, body)
                }
                (CellKind::Destroy(_), Some(rc)) => self.relay_destroy(now, rc, false),
                _ => {}
            }
        } else {
            match a_end {
                End::Client(cc) => self.client_cell(now, cc, kind),
                End::Relay(rc) => match kind {
                    CellKind::Created(body) => self.relay_extended(now, rc, &body),
                    CellKind::Relay { lone, body, .. } => self.relay_backward(now, rc, lone, body),
                    CellKind::Destroy(_) => self.relay_destroy(now, rc, true),
                    CellKind::Create(_) => {}
                },
            }
        }
    }

    // ----- relays ------------------------------------------------------------------

    fn relay_create(&mut self, now: u64, link: u32, relay: u32, body: &[u8; CELL_BODY_LEN]) {
        let inst = self.inst(now);
        let r = &mut self.relays[relay as usize];
        let keys = RelayKeys {
            identity: r.identity,
            onion_keys: &r.onion,
        };
        match RelayCircuit::accept(&mut r.rng, &keys, &mut r.replay, &r.policy, body, inst) {
            Ok((circ, created)) => {
                r.row.circuits += 1;
                let id = self.id();
                let terms = circ.terms().copied();
                if let Some(t) = &terms {
                    self.tokens.insert(t.token.0, id);
                }
                let acct = terms.map(|t| Account::new(t, inst));
                self.rcircs.insert(
                    id,
                    RelayCirc {
                        relay,
                        circ,
                        prev: link,
                        next: None,
                        streams: Vec::new(),
                        terms,
                        acct,
                        cells: 0,
                        stopped: false,
                    },
                );
                if let Some(l) = self.links.get_mut(&link) {
                    l.b_end = Some(id);
                }
                self.send(now, link, false, CellKind::Created(Box::new(created)));
            }
            Err(e) => {
                r.row.refused += 1;
                self.send(now, link, false, CellKind::Destroy(e.destroy_reason()));
            }
        }
    }

    /// Charges a cell to a relay circuit; whether the circuit may go on (paid enough).
    fn relay_charge(&mut self, now: u64, rc: u32) -> bool {
        let Some(c) = self.rcircs.get_mut(&rc) else {
            return false;
        };
        c.cells += 1;
        let Some(acct) = c.acct.as_mut() else {
            return true;
        };
        acct.carry(CELL_BODY_LEN as u64);
        // Check every 16 cells: the arithmetic is cheap but not free at millions of cells.
        if c.cells % 16 != 0 {
            return true;
        }
        let inst = self.base + Duration::from_nanos(now);
        matches!(acct.check(inst), Verdict::Allowed)
    }

    fn relay_forward(&mut self, now: u64, rc: u32, early: bool, lone: bool, mut body: Body) {
        let inst = self.inst(now);
        let Some(c) = self.rcircs.get_mut(&rc) else {
            return;
        };
        if c.stopped {
            return;
        }
        let relay = c.relay as usize;
        match self.relays[relay].adv {
            Some((AdversaryKind::Drop, p)) if self.rng.random_bool(p.clamp(0.0, 1.0)) => return,
            _ => {}
        }
        let cmd = if early {
            ChanCmd::RelayEarly
        } else {
            ChanCmd::Relay
        };
        let res = c.circ.handle_forward(cmd, &mut body, inst);
        let action = match res {
            Ok(FromClient::Forward { early }) => Fwd::Forward(early),
            Ok(FromClient::Extend(req)) => Fwd::Extend(req.identity, req.create_body),
            Ok(FromClient::Begin {
                stream,
                target,
                flags,
            }) => {
                // The real exit's policy check (onionvpn-relay's exit module), with the
                // simulated DNS answer for the destination.
                let policy = &self.relays[relay].exit_policy;
                let port = target.port.get();
                let checked = check_before_resolving(&target, policy).and_then(|()| {
                    let ip = match &target.host {
                        Host::V4(ip) => IpAddr::V4(*ip),
                        Host::V6(ip) => IpAddr::V6(*ip),
                        Host::Name(_) => IpAddr::V4(DEST_IP),
                    };
                    usable_addresses(vec![ip], port, flags, policy)
                });
                match checked {
                    Ok(_) => Fwd::Begin(stream),
                    Err(reason) => Fwd::Refuse(stream, reason),
                }
            }
            Ok(FromClient::Data { stream, data }) => {
                let mut n = [0u8; 8];
                let k = data.len().min(8);
                n[..k].copy_from_slice(&data[..k]);
                Fwd::Request(stream, u64::from_le_bytes(n))
            }
            Ok(FromClient::End { stream, .. }) => {
                c.streams.retain(|s| s.id != stream);
                Fwd::Nothing
            }
            Ok(_) => Fwd::Nothing,
            Err(e) => Fwd::Fail(e),
        };
        if !self.relay_charge(now, rc) {
            self.relays[relay].row.payment_required += 1;
            self.relay_kill(now, rc, DestroyReason::PaymentRequired);
            return;
        }
        let server = (self.sc.topology.server_latency_ms * 1e6) as u64;
        match action {
            Fwd::Forward(early) => {
                if let Some((AdversaryKind::Tag, _)) = self.relays[relay].adv {
                    body[CELL_BODY_LEN - 1] ^= 1;
                }
                if let Some(next) = self.rcircs.get(&rc).and_then(|c| c.next) {
                    self.send(now, next, true, CellKind::Relay { early, lone, body });
                }
            }
            Fwd::Extend(identity, create) => match self.by_identity.get(&identity).copied() {
                Some(to) => {
                    let link = self.id();
                    self.links.insert(
                        link,
                        LinkCirc {
                            a: relay as u32,
                            b: to,
                            a_end: End::Relay(rc),
                            b_end: None,
                        },
                    );
                    if let Some(c) = self.rcircs.get_mut(&rc) {
                        c.next = Some(link);
                    }
                    self.send(now, link, true, CellKind::Create(create));
                }
                None => self.relay_kill(now, rc, DestroyReason::ConnectFailed),
            },
            Fwd::Begin(stream) => {
                if let Some(c) = self.rcircs.get_mut(&rc) {
                    c.streams.push(ExitStream {
                        id: stream,
                        remaining: 0,
                        responding: false,
                    });
                }
                // TCP connect to the server: one round trip.
                self.q
                    .push(now + 2 * server, Ev::ExitConnected { rcirc: rc, stream });
            }
            Fwd::Request(stream, bytes) => {
                if let Some(c) = self.rcircs.get_mut(&rc) {
                    if let Some(s) = c.streams.iter_mut().find(|s| s.id == stream) {
                        s.remaining = bytes;
                    }
                }
                // The request reaches the server and the first byte comes back.
                self.q
                    .push(now + 2 * server, Ev::ExitRespond { rcirc: rc, stream });
            }
            Fwd::Refuse(stream, reason) => {
                self.relays[relay].row.refused_streams += 1;
                if let Some(c) = self.rcircs.get_mut(&rc) {
                    if let Err(e) = c.circ.stream_refused(stream, reason) {
                        self.relay_kill(now, rc, e.destroy_reason());
                        return;
                    }
                }
            }
            Fwd::Nothing => {}
            Fwd::Fail(e) => {
                self.relays[relay].row.protocol_errors += 1;
                self.relay_kill(now, rc, e.destroy_reason());
                return;
            }
        }
        // A SENDME may have opened the window: send what waits, then what is queued.
        self.exit_pump(now, rc);
    }

    fn relay_backward(&mut self, now: u64, rc: u32, lone: bool, mut body: Body) {
        let Some(c) = self.rcircs.get_mut(&rc) else {
            return;
        };
        if c.stopped {
            return;
        }
        if let Err(e) = c.circ.handle_backward(&mut body) {
            let r = e.destroy_reason();
            self.relay_kill(now, rc, r);
            return;
        }
        let prev = c.prev;
        if !self.relay_charge(now, rc) {
            let relay = self.rcircs.get(&rc).map_or(0, |c| c.relay as usize);
            self.relays[relay].row.payment_required += 1;
            self.relay_kill(now, rc, DestroyReason::PaymentRequired);
            return;
        }
        self.send(
            now,
            prev,
            false,
            CellKind::Relay {
                early: false,
                lone,
                body,
            },
        );
    }

    fn relay_extended(&mut self, now: u64, rc: u32, body: &[u8; CELL_BODY_LEN]) {
        let Some(c) = self.rcircs.get_mut(&rc) else {
            return;
        };
        if c.stopped {
            return;
        }
        if let Err(e) = c.circ.extended(body) {
            self.relay_kill(now, rc, e.destroy_reason());
            return;
        }
        // The EXTENDED answer is a lone message.
        self.lone = true;
        self.relay_flush(now, rc);
        self.lone = false;
    }

    /// Sends the cells this hop originated, in the order it encrypts them.
    fn relay_flush(&mut self, now: u64, rc: u32) {
        loop {
            let Some(c) = self.rcircs.get_mut(&rc) else {
                return;
            };
            let prev = c.prev;
            match c.circ.poll_backward() {
                Ok(Some(body)) => {
                    if !self.relay_charge(now, rc) {
                        self.relay_kill(now, rc, DestroyReason::PaymentRequired);
                        return;
                    }
                    // A cell this hop originates: it wraps its own layer.
                    let layer = self.costs.layer_ns;
                    self.send_cost(
                        now,
                        prev,
                        false,
                        CellKind::Relay {
                            early: false,
                            lone: self.lone,
                            body: Box::new(body),
                        },
                        layer,
                    )
                }
                Ok(None) => return,
                Err(e) => {
                    self.relay_kill(now, rc, e.destroy_reason());
                    return;
                }
            }
        }
    }

    fn exit_connected(&mut self, now: u64, rc: u32, stream: StreamId) {
        let Some(c) = self.rcircs.get_mut(&rc) else {
            return;
        };
        if c.stopped {
            return;
        }
        let addr = Some(IpAddr::V4(DEST_IP));
        if c.circ.stream_connected(stream, addr, 300).is_err() {
            c.streams.retain(|s| s.id != stream);
        }
        self.relay_flush(now, rc);
    }

    /// The exit sends the server's bytes as far as congestion control allows.
    fn exit_pump(&mut self, now: u64, rc: u32) {
        let inst = self.inst(now);
        if let Some(c) = self.rcircs.get_mut(&rc) {
            if c.stopped {
                return;
            }
            let mut fins = Vec::new();
            for s in c.streams.iter_mut().filter(|s| s.responding) {
                while s.remaining > 0 && c.circ.can_send(s.id) {
                    let n = (s.remaining as usize).min(RELAY_BODY_MAX);
                    match c.circ.send_data(s.id, &self.zeros[..n], inst) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => s.remaining -= k as u64,
                    }
                }
                if s.remaining == 0 {
                    fins.push(s.id);
                }
            }
            for id in fins {
                // The server closed: FIN toward the client, and the stream is done here.
                let _ = c.circ.send_fin(id);
                c.streams.retain(|s| s.id != id);
            }
        }
        self.relay_flush(now, rc);
    }

    /// Tears a relay circuit down both ways with `reason`.
    fn relay_kill(&mut self, now: u64, rc: u32, reason: DestroyReason) {
        let Some(c) = self.rcircs.remove(&rc) else {
            return;
        };
        if let Some(t) = c.terms {
            self.tokens.remove(&t.token.0);
        }
        self.send(now, c.prev, false, CellKind::Destroy(reason));
        if let Some(n) = c.next {
            self.send(now, n, true, CellKind::Destroy(DestroyReason::Destroyed));
        }
    }

    /// DESTROY from the previous hop or (`from_next`) the next one.
    fn relay_destroy(&mut self, now: u64, rc: u32, from_next: bool) {
        let Some(c) = self.rcircs.remove(&rc) else {
            return;
        };
        if let Some(t) = c.terms {
            self.tokens.remove(&t.token.0);
        }
        if from_next {
            self.send(
                now,
                c.prev,
                false,
                CellKind::Destroy(DestroyReason::Destroyed),
            );
        } else if let Some(n) = c.next {
            self.send(now, n, true, CellKind::Destroy(DestroyReason::Destroyed));
        }
    }

    fn churn(&mut self, now: u64, relay: u32, up: bool) {
        let Some(ch) = self.sc.churn.clone() else {
            return;
        };
        self.relays[relay as usize].up = up;
        self.out.churn.push((now as f64 / 1e6, relay, up));
        if !up {
            // Its circuits vanish with it; neighbours see the links close.
            let mut ids: Vec<u32> = self
                .rcircs
                .iter()
                .filter(|(_, c)| c.relay == relay)
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            for id in ids {
                self.relay_kill(now, id, DestroyReason::Hibernating);
            }
        }
        let mean = if up { ch.mean_up_s } else { ch.mean_down_s };
        let t = now + exp_ns(&mut self.rng, mean);
        self.q.push(t, Ev::Churn { relay, up: !up });
    }

    // ----- clients -----------------------------------------------------------------

    fn client_next(&mut self, now: u64, c: u32) {
        let cl = &mut self.clients[c as usize];
        if cl.dl.is_some() {
            return;
        }
        let w: Vec<f64> = self
            .sc
            .traffic
            .iter()
            .map(|t| f64::from(t.weight))
            .collect();
        let class = pick_weighted(&mut cl.rng, &w);
        let t = &self.sc.traffic[class];
        let bytes = log_uniform(&mut cl.rng, t.bytes[0] as f64, t.bytes[1] as f64) as u64;
        let id = self.next_dl;
        self.next_dl += 1;
        cl.dl = Some(Download {
            id,
            class,
            bytes,
            started: now,
            attempts: 0,
        });
        let timeout = (t.timeout_s * 1e9) as u64;
        let port = t.port;
        let dirty = self.sc.clients.max_dirtiness_s * SEC;
        let ignore_policy = self.sc.clients.ignore_exit_policy;
        let relays = &self.relays;
        // A circuit is reused only if its exit's (advertised) policy allows the destination,
        // as the client's circuit manager does.
        let reuse = cl.current.filter(|cc| {
            self.ccircs.get(cc).is_some_and(|x| {
                x.opened.is_some()
                    && x.first_stream.is_none_or(|f| now < f + dirty)
                    && (ignore_policy
                        || x.hops.last().is_some_and(|e| {
                            relays[*e as usize]
                                .exit_policy
                                .allows(&policy::Target::Host(DEST_HOST), port)
                        }))
            })
        });
        match reuse {
            Some(cc) => {
                self.q
                    .push(now + timeout, Ev::StreamTimeout { ccirc: cc, dl: id });
                self.client_begin(now, cc);
            }
            None => {
                if let Some(old) = cl.current.take() {
                    self.client_close(now, old);
                }
                self.client_build(now, c);
            }
        }
    }

    fn client_build(&mut self, now: u64, c: u32) {
        let unix = self.unix(now);
        let cl = &mut self.clients[c as usize];
        let Some(dl) = cl.dl.as_mut() else {
            return;
        };
        dl.attempts += 1;
        let port = self.sc.traffic[dl.class].port;
        let avoid = &cl.avoid;
        let cands: Vec<&Descriptor> = self
            .descs
            .iter()
            .filter(|d| avoid.get(&d.identity().0).is_none_or(|until| *until <= now))
            .collect();
        let req = PathRequest {
            hops: self.sc.clients.hops,
            // A client that ignores exit policies (scenario) lets any exit be chosen; the
            // exit's own check then refuses what its policy does not allow.
            target: (!self.sc.clients.ignore_exit_policy)
                .then_some((policy::Target::Host(DEST_HOST), port)),
            price_cap: Some(Prices {
                msat_per_mib: self.sc.clients.price_cap_msat_per_mib,
                msat_per_min: self.sc.clients.price_cap_msat_per_min,
            }),
            use_guards: true,
        };
        let path = match select_path(&cands, &req, &mut cl.guards, unix, &mut cl.rng) {
            Ok(p) => p,
            Err(e) => {
                self.client_dl_failed(now, c, &format!("path: {e}"));
                return;
            }
        };
        let targets: Option<Vec<_>> = path.hops.iter().map(|d| hop_target(d, unix)).collect();
        let hops: Vec<u32> = path
            .hops
            .iter()
            .filter_map(|d| self.by_identity.get(&d.identity().0).copied())
            .collect();
        let Some(targets) = targets else {
            self.client_dl_failed(now, c, "path: no valid onion key");
            return;
        };
        // Simulated clients pay every hop that charges, as the client with a wallet does.
        let config = circuit_config(&ClientConfig::default(), &targets, true);
        let (circ, create) = match ClientCircuit::new(&mut cl.rng, targets, config) {
            Ok(x) => x,
            Err(e) => {
                self.client_dl_failed(now, c, &format!("circuit: {e}"));
                return;
            }
        };
        let timeout = cl.est.timeout().as_nanos() as u64;
        let node = cl.node;
        let id = self.id();
        let link = self.id();
        self.links.insert(
            link,
            LinkCirc {
                a: node,
                b: hops[0],
                a_end: End::Client(id),
                b_end: None,
            },
        );
        let row = self.out.circuits.len();
        self.out.circuits.push(CircuitRow {
            circuit: id,
            client: c,
            start_ms: now as f64 / 1e6,
            build_ms: None,
            outcome: "building".into(),
            path: hops
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join("-"),
        });
        self.ccircs.insert(
            id,
            ClientCirc {
                client: c,
                circ,
                link,
                payer: None,
                payer_hops: Vec::new(),
                payer_wake: None,
                hops,
                started: now,
                opened: None,
                first_stream: None,
                row,
                cells: 0,
                stream: None,
                // Replaced when the circuit opens, with the timeout its build time gives.
                watch: StallWatch::new(StallConfig::default().min_timeout),
                stall_check: None,
                tokens: Vec::new(),
            },
        );
        self.clients[c as usize].building = Some(id);
        self.q.push(now + timeout, Ev::BuildTimeout(id));
        // `ClientCircuit::new` started every hop's handshake.
        let n_hops = self.ccircs.get(&id).map_or(0, |c| c.hops.len());
        let work = n_hops as f64 * self.costs.client_create_ns;
        self.send_cost(now, link, true, CellKind::Create(Box::new(create)), work);
    }

    fn client_cell(&mut self, now: u64, cc: u32, kind: CellKind) {
        let inst = self.inst(now);
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        c.cells += 1;
        if let Some(p) = c.payer.as_mut() {
            p.carried(CELL_BODY_LEN as u64);
        }
        if matches!(kind, CellKind::Relay { .. }) {
            c.watch.received(inst);
        }
        let layers = c.circ.hops_built();
        let client = c.client;
        let is_relay = matches!(kind, CellKind::Relay { .. });
        // A lone build message (CREATED, EXTENDED, DESTROY) pays a whole message here.
        let lone = match &kind {
            CellKind::Relay { lone, .. } => *lone,
            _ => true,
        };
        let mut added = false;
        let mut opened = false;
        let mut connected = None;
        let mut got = 0usize;
        let mut fin = false;
        let mut end = None;
        let res: Result<(), CircError> = match kind {
            CellKind::Created(body) => c.circ.handle_created(&body).map(|ev| {
                if let ClientEvent::HopAdded { open, .. } = ev {
                    opened = open;
                    added = true;
                }
            }),
            CellKind::Relay { mut body, .. } => match c.circ.handle_relay(&mut body, inst) {
                Ok(ClientEvent::HopAdded { open, .. }) => {
                    opened = open;
                    added = true;
                    Ok(())
                }
                Ok(ClientEvent::Connected { stream, .. }) => {
                    connected = Some(stream);
                    Ok(())
                }
                Ok(ClientEvent::Data { data, .. }) => {
                    got = data.len();
                    Ok(())
                }
                Ok(ClientEvent::Fin { .. }) => {
                    fin = true;
                    Ok(())
                }
                Ok(ClientEvent::End { reason, .. }) => {
                    end = Some(reason);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            CellKind::Destroy(r) => Err(CircError::Destroyed(r)),
            CellKind::Create(_) => Ok(()),
        };
        // The client's CPU: the link, one layer per hop the cell crossed, a handshake's end.
        let node = self.clients[client as usize].node;
        let mut work = self.link_cost(lone);
        if is_relay {
            work += layers as f64 * self.costs.layer_ns;
        }
        if added {
            work += self.costs.client_finish_ns;
        }
        let now = self.cpu.run(node, cc, now, work);
        if let Err(e) = res {
            self.client_circ_failed(now, cc, &e);
            return;
        }
        if opened {
            self.client_opened(now, cc);
        }
        if let Some(stream) = connected {
            self.client_connected(now, cc, stream);
        }
        if got > 0 {
            if let Some(c) = self.ccircs.get_mut(&cc) {
                if let Some(s) = c.stream.as_mut() {
                    s.2 += got as u64;
                    s.3.get_or_insert(now);
                }
            }
            self.client_pay(now, cc);
        }
        if fin {
            self.client_stream_done(now, cc, None);
        }
        if let Some(r) = end {
            self.client_stream_done(now, cc, Some(format!("end: {r:?}")));
        }
        self.client_flush(now, cc);
    }

    fn client_flush(&mut self, now: u64, cc: u32) {
        loop {
            let Some(c) = self.ccircs.get_mut(&cc) else {
                return;
            };
            match c.circ.poll_cell() {
                Ok(Some(oc)) => {
                    c.cells += 1;
                    if let Some(p) = c.payer.as_mut() {
                        p.carried(CELL_BODY_LEN as u64);
                    }
                    let link = c.link;
                    let early = oc.cmd == ChanCmd::RelayEarly;
                    // One layer per hop the cell is wrapped for.
                    let work = c.circ.hops_built().max(1) as f64 * self.costs.layer_ns;
                    self.send_cost(
                        now,
                        link,
                        true,
                        CellKind::Relay {
                            early,
                            lone: early,
                            body: Box::new(oc.body),
                        },
                        work,
                    );
                }
                Ok(None) => return,
                Err(e) => {
                    self.client_circ_failed(now, cc, &e);
                    return;
                }
            }
        }
    }

    fn client_opened(&mut self, now: u64, cc: u32) {
        let inst = self.inst(now);
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        c.opened = Some(now);
        let took = now - c.started;
        c.watch = StallWatch::new(StallConfig::default().timeout(Duration::from_nanos(took)));
        let row = c.row;
        let client = c.client;
        // The hops that charge, for onionvpn-pay's payer.
        let mut specs = Vec::new();
        let mut payer_hops = Vec::new();
        c.tokens = c.circ.terms().iter().flatten().map(|t| t.token.0).collect();
        for (i, t) in c.circ.terms().iter().enumerate() {
            if let (Some(t), Some(r)) = (t, c.hops.get(i)) {
                specs.push(HopSpec {
                    node: self.relays[*r as usize].ln,
                    terms: *t,
                });
                payer_hops.push(i);
            }
        }
        let cl = &mut self.clients[client as usize];
        let mut failed = None;
        if !specs.is_empty() {
            let p = &self.sc.payments;
            let cfg = PayerConfig {
                chunk_msat: p.chunk_msat,
                // The scenario's chunk is the fixed amount at risk per hop (no adaptation
                // to throughput: the simulator reports risk against this figure).
                max_chunk_msat: p.chunk_msat,
                max_fee_msat: p.max_fee_msat,
                ..PayerConfig::default()
            };
            let cap = PriceCap {
                msat_per_mib: self.sc.clients.price_cap_msat_per_mib,
                msat_per_min: self.sc.clients.price_cap_msat_per_min,
            };
            match CircuitPayer::new(cfg, &specs, &cap, inst, &mut cl.rng) {
                Ok(payer) => {
                    c.payer = Some(payer);
                    c.payer_hops = payer_hops;
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        self.out.circuits[row].build_ms = Some(took as f64 / 1e6);
        self.out.circuits[row].outcome = "built".into();
        cl.est.record_success(Duration::from_nanos(took));
        cl.building = None;
        if let Some(why) = failed {
            self.out.circuits[row].outcome = format!("closed: payer: {why}");
            self.client_close(now, cc);
            self.client_retry(now, client);
            return;
        }
        cl.current = Some(cc);
        // Pay ahead: the payer orders one chunk per hop before the first byte.
        self.client_pay(now, cc);
        let Some(dl) = self.clients[client as usize].dl.as_ref() else {
            return;
        };
        let timeout = (self.sc.traffic[dl.class].timeout_s * 1e9) as u64;
        let dl_id = dl.id;
        let started = dl.started;
        self.q.push(
            started.max(now) + timeout,
            Ev::StreamTimeout {
                ccirc: cc,
                dl: dl_id,
            },
        );
        self.client_begin(now, cc);
    }

    fn client_begin(&mut self, now: u64, cc: u32) {
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        let Some(dl) = self.clients[c.client as usize].dl.as_ref() else {
            return;
        };
        let port = self.sc.traffic[dl.class].port;
        let target = match (
            Hostname::from_bytes(DEST_HOST.as_bytes()),
            NonZeroU16::new(port),
        ) {
            (Ok(h), Some(port)) => Target {
                host: Host::Name(h),
                port,
            },
            _ => return,
        };
        match c.circ.begin_stream(target) {
            Ok(s) => {
                c.first_stream.get_or_insert(now);
                c.stream = Some((s, dl.id, 0, None));
                c.watch.wait(self.base + Duration::from_nanos(now));
            }
            Err(e) => {
                self.client_circ_failed(now, cc, &e);
                return;
            }
        }
        self.client_flush(now, cc);
        self.arm_stall(cc);
    }

    fn client_connected(&mut self, now: u64, cc: u32, stream: StreamId) {
        let inst = self.inst(now);
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        let Some(dl) = self.clients[c.client as usize].dl.as_ref() else {
            return;
        };
        // The request: how many bytes the server should send.
        let req = dl.bytes.to_le_bytes();
        let r = c
            .circ
            .send_data(stream, &req, inst)
            .and_then(|_| c.circ.send_fin(stream));
        if let Err(e) = r {
            self.client_circ_failed(now, cc, &e);
            return;
        }
        self.client_flush(now, cc);
    }

    /// The download on `cc` finished (`err` None) or failed.
    fn client_stream_done(&mut self, now: u64, cc: u32, err: Option<String>) {
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        let Some((stream, dl_id, got, first)) = c.stream.take() else {
            return;
        };
        c.watch.stop_waiting();
        if err.is_some() {
            for t in &c.tokens {
                self.unserved_at.insert(*t, now);
            }
        }
        let _ = c.circ.send_end(stream, EndReason::Done);
        let client = c.client;
        let circuit = cc;
        let cl = &mut self.clients[client as usize];
        let Some(dl) = cl.dl.take().filter(|d| d.id == dl_id) else {
            return;
        };
        let ok = err.is_none() && got >= dl.bytes;
        self.out.streams.push(StreamRow {
            client,
            circuit,
            class: self.sc.traffic[dl.class].name.clone(),
            bytes: dl.bytes,
            received: got,
            start_ms: dl.started as f64 / 1e6,
            ttfb_ms: first.map(|f| (f - dl.started) as f64 / 1e6),
            ttlb_ms: ok.then(|| (now - dl.started) as f64 / 1e6),
            outcome: err.unwrap_or_else(|| if ok { "ok".into() } else { "short".into() }),
        });
        self.schedule_next(now, client);
        self.client_flush(now, cc);
        // Like the real client's circuit manager, a circuit past its dirtiness closes once
        // its stream is done, not when the next download needs a circuit (then its
        // teardown would run beside that build and be counted in it).
        let dirty = self.sc.clients.max_dirtiness_s * SEC;
        let retired = self
            .ccircs
            .get(&cc)
            .is_some_and(|c| c.first_stream.is_some_and(|f| now >= f + dirty));
        if retired && self.clients[client as usize].current == Some(cc) {
            self.clients[client as usize].current = None;
            self.client_close(now, cc);
        }
    }

    fn schedule_next(&mut self, now: u64, client: u32) {
        let th = self.sc.clients.think_s;
        let cl = &mut self.clients[client as usize];
        let pause = th[0] + cl.rng.random::<f64>() * (th[1] - th[0]).max(0.0);
        self.q
            .push(now + (pause * 1e9) as u64, Ev::ClientNext(client));
    }

    fn client_dl_failed(&mut self, now: u64, client: u32, why: &str) {
        let cl = &mut self.clients[client as usize];
        let Some(dl) = cl.dl.take() else {
            return;
        };
        self.out.streams.push(StreamRow {
            client,
            circuit: 0,
            class: self.sc.traffic[dl.class].name.clone(),
            bytes: dl.bytes,
            received: 0,
            start_ms: dl.started as f64 / 1e6,
            ttfb_ms: None,
            ttlb_ms: None,
            outcome: why.to_string(),
        });
        self.schedule_next(now, client);
    }

    fn avoid(&mut self, now: u64, client: u32, relays: &[u32]) {
        let until = now + self.sc.clients.avoid_s * SEC;
        let ids: Vec<[u8; 32]> = relays
            .iter()
            .map(|r| self.relays[*r as usize].identity)
            .collect();
        let cl = &mut self.clients[client as usize];
        for id in ids {
            cl.avoid.insert(id, until);
            cl.guards.guards.retain(|g| g.identity.0 != id);
        }
    }

    /// A circuit failed (error from the state machine or DESTROY from hop 0).
    fn client_circ_failed(&mut self, now: u64, cc: u32, e: &CircError) {
        let Some(c) = self.ccircs.remove(&cc) else {
            return;
        };
        let client = c.client;
        let building = c.opened.is_none();
        let reason = match e {
            CircError::Destroyed(r) => format!("destroyed: {r:?}"),
            CircError::PriceAboveOffer { hop, .. } => format!("price above offer at hop {hop}"),
            other => format!("{other}"),
        };
        self.out.circuits[c.row].outcome = if building {
            format!("build failed at hop {}: {reason}", c.circ.hops_built())
        } else {
            format!("closed: {reason}")
        };
        // Tell the first hop, unless it is what destroyed us.
        if !matches!(e, CircError::Destroyed(_)) {
            self.send(now, c.link, true, CellKind::Destroy(e.destroy_reason()));
        }
        if building {
            // The hop being built did not answer properly: avoid it (circmgr does the same).
            let hop = match e {
                CircError::PriceAboveOffer { hop, .. } => *hop,
                _ => c.circ.hops_built(),
            };
            if let Some(r) = c.hops.get(hop).copied() {
                self.avoid(now, client, &[r]);
            }
        } else if c.watch.blame_on_end() {
            // It died while its download waited, after its hops were paid: a hop may have
            // taken the payment and stopped; blame all of them as for a stall.
            self.avoid(now, client, &c.hops);
        }
        if c.stream.is_some() {
            for t in &c.tokens {
                self.unserved_at.insert(*t, now);
            }
        }
        let cl = &mut self.clients[client as usize];
        if cl.current == Some(cc) {
            cl.current = None;
        }
        if cl.building == Some(cc) {
            cl.building = None;
        }
        let mut ended = c.stream.is_some();
        if let Some((_, dl_id, got, first)) = c.stream {
            if let Some(dl) = cl.dl.take().filter(|d| d.id == dl_id) {
                self.out.streams.push(StreamRow {
                    client,
                    circuit: cc,
                    class: self.sc.traffic[dl.class].name.clone(),
                    bytes: dl.bytes,
                    received: got,
                    start_ms: dl.started as f64 / 1e6,
                    ttfb_ms: first.map(|f| (f - dl.started) as f64 / 1e6),
                    ttlb_ms: None,
                    outcome: format!("circuit {reason}"),
                });
            } else {
                ended = false;
            }
        }
        if ended {
            self.schedule_next(now, client);
        } else if building && self.clients[client as usize].dl.is_some() {
            self.client_retry(now, client);
        }
    }

    fn client_retry(&mut self, now: u64, client: u32) {
        let attempts = self.clients[client as usize]
            .dl
            .as_ref()
            .map_or(0, |d| d.attempts);
        if attempts < self.sc.clients.build_attempts {
            self.client_build(now, client);
        } else {
            self.client_dl_failed(now, client, "build attempts exhausted");
        }
    }

    fn client_close(&mut self, now: u64, cc: u32) {
        if let Some(c) = self.ccircs.remove(&cc) {
            if self.out.circuits[c.row].outcome == "built" {
                self.out.circuits[c.row].outcome = "retired".into();
            }
            self.send(
                now,
                c.link,
                true,
                CellKind::Destroy(DestroyReason::Finished),
            );
        }
    }

    fn build_timeout(&mut self, now: u64, cc: u32) {
        let Some(c) = self.ccircs.get(&cc) else {
            return;
        };
        if c.opened.is_some() {
            return;
        }
        let (client, row, link) = (c.client, c.row, c.link);
        let hop = c.circ.hops_built();
        let blamed = c.hops.get(hop).copied();
        let took = now - c.started;
        self.ccircs.remove(&cc);
        self.out.circuits[row].outcome = format!("build timeout at hop {hop}");
        self.send(now, link, true, CellKind::Destroy(DestroyReason::Timeout));
        let cl = &mut self.clients[client as usize];
        cl.est.record_timeout(Duration::from_nanos(took));
        cl.building = None;
        if let Some(r) = blamed {
            self.avoid(now, client, &[r]);
        }
        self.client_retry(now, client);
    }

    fn stream_timeout(&mut self, now: u64, cc: u32, dl: u64) {
        let Some(c) = self.ccircs.get(&cc) else {
            return;
        };
        if c.stream.as_ref().is_none_or(|s| s.1 != dl) {
            return;
        }
        // A stalled circuit: the client cannot tell which hop stopped, so it avoids all
        // of them and stops paying them (the circuit closes).
        let hops = c.hops.clone();
        let client = c.client;
        self.client_stream_done(now, cc, Some("timeout".into()));
        self.avoid(now, client, &hops);
        if self.clients[client as usize].current == Some(cc) {
            self.clients[client as usize].current = None;
        }
        self.client_close(now, cc);
    }

    /// Schedules a StallCheck at the circuit's stall deadline, unless one comes sooner.
    fn arm_stall(&mut self, cc: u32) {
        let base = self.base;
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        let Some(d) = c.watch.deadline() else {
            return;
        };
        let at = d.saturating_duration_since(base).as_nanos() as u64;
        if c.stall_check.is_none_or(|t| at < t) {
            c.stall_check = Some(at);
            self.q.push(at, Ev::StallCheck(cc));
        }
    }

    /// A circuit's stall deadline came: if nothing arrived while its download waited, give
    /// it up and avoid all its hops (the client cannot tell which one stopped), as the
    /// client's circuit task does; else wait for the next deadline.
    fn stall_check(&mut self, now: u64, cc: u32) {
        let inst = self.inst(now);
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        if c.stall_check == Some(now) {
            c.stall_check = None;
        }
        if !c.watch.is_stalled(inst) {
            self.arm_stall(cc);
            return;
        }
        let (hops, client, row) = (c.hops.clone(), c.client, c.row);
        self.out.circuits[row].outcome = "closed: stalled".into();
        self.client_stream_done(now, cc, Some("stalled".into()));
        self.avoid(now, client, &hops);
        if self.clients[client as usize].current == Some(cc) {
            self.clients[client as usize].current = None;
        }
        self.client_close(now, cc);
    }

    // ----- payments ----------------------------------------------------------------

    /// Polls the circuit's payer (onionvpn-pay) and sends what it orders through the rail.
    fn client_pay(&mut self, now: u64, cc: u32) {
        let inst = self.inst(now);
        let Some(c) = self.ccircs.get_mut(&cc) else {
            return;
        };
        let Some(payer) = c.payer.as_mut() else {
            return;
        };
        let client = c.client;
        let cl = &mut self.clients[client as usize];
        let events = payer.poll(inst, &mut cl.budget, &mut cl.rng);
        // As the client does: past what is paid, wait for the payment on its way.
        if let Err(e) = c.circ.set_byte_allowance(
            payer.allowance_bytes(inst, c.circ.exit_window_bytes()),
            c.cells,
        ) {
            self.client_circ_failed(now, cc, &e);
            return;
        }
        let wake = payer
            .next_deadline(inst)
            .map(|d| now + d.saturating_duration_since(inst).as_nanos() as u64);
        if let Some(w) = wake {
            if c.payer_wake.is_none_or(|p| w < p) {
                c.payer_wake = Some(w);
                self.q.push(w, Ev::PayerWake(cc));
            }
        }
        if events.is_empty() {
            return;
        }
        let payer_hops = c.payer_hops.clone();
        let hops = c.hops.clone();
        for ev in events {
            match ev {
                PayerEvent::Pay(order) => {
                    if let Some(c) = self.ccircs.get_mut(&cc) {
                        c.watch.paid();
                    }
                    let node = self.clients[client as usize].node;
                    let now = self.cpu.run(node, cc, now, self.costs.payment_ns);
                    let hop = payer_hops.get(order.hop).copied().unwrap_or(0);
                    let relay = hops.get(hop).copied().unwrap_or(0);
                    let from = self.clients[client as usize].ln;
                    let s = self.rail.keysend(now, from, order.req);
                    let row = self.out.payments.len();
                    self.out.payments.push(PaymentRow {
                        start_ms: now as f64 / 1e6,
                        client,
                        circuit: cc,
                        relay,
                        hop,
                        amount_msat: order.req.amount_msat,
                        fee_msat: 0,
                        latency_ms: None,
                        outcome: "pending".into(),
                    });
                    self.pending_pay.insert(
                        s.id,
                        PendingPay {
                            ccirc: cc,
                            order: order.id,
                            client,
                            relay,
                            token: order.req.token.0,
                            started: now,
                            row,
                        },
                    );
                    if let Some(t) = s.receive_at {
                        self.q.push(t, Ev::Rail);
                    }
                    self.q.push(s.settle_at, Ev::Rail);
                }
                PayerEvent::BudgetReached { .. } => {
                    // The payer stopped; the relays will end the circuit when grace runs out.
                    let row = self.ccircs.get(&cc).map(|c| c.row);
                    if let Some(r) = row {
                        self.out.circuits[r].outcome = "built; budget reached".into();
                    }
                }
                // The circuit carries its stream from the build on (the client waits for
                // `Ready` before handing a circuit to a stream; the simulator does not), but
                // the payer's allowance holds the download at one congestion window, which
                // the grace covers, until the first payments are confirmed.
                PayerEvent::Ready => {}
                PayerEvent::Rebuild { hop } | PayerEvent::FirstPaymentFailed { hop, .. } => {
                    // Payments to a hop keep failing: avoid it and build elsewhere.
                    let relay = payer_hops.get(hop).and_then(|h| hops.get(*h)).copied();
                    if let Some(r) = relay {
                        self.avoid(now, client, &[r]);
                    }
                    // Another hop may have taken its payment and stopped before this
                    // showed (StallWatch::blame_on_end): avoid them all.
                    if self.ccircs.get(&cc).is_some_and(|c| c.watch.blame_on_end()) {
                        self.avoid(now, client, &hops);
                    }
                    if self.clients[client as usize].current == Some(cc) {
                        self.clients[client as usize].current = None;
                    }
                    let streaming = self.ccircs.get(&cc).is_some_and(|c| c.stream.is_some());
                    if streaming {
                        self.client_stream_done(now, cc, Some("payments failed".into()));
                    }
                    self.client_close(now, cc);
                    return;
                }
            }
        }
    }

    fn on_rail(&mut self, now: u64) {
        while let Some(ev) = self.rail.poll(now) {
            match ev {
                SimEvent::Received { to, payment } => {
                    self.rail.ack_received(payment.id);
                    let Some(relay) = self.ln_to_relay.get(&to).copied() else {
                        continue;
                    };
                    self.relays[relay as usize].row.earnings_msat += payment.amount_msat;
                    self.relays[relay as usize].row.payments += 1;
                    let Some(rc) = payment.token.and_then(|t| self.tokens.get(&t.0).copied())
                    else {
                        continue;
                    };
                    let stop = matches!(
                        self.relays[relay as usize].adv,
                        Some((AdversaryKind::TakePaymentAndStop, _))
                    );
                    self.cpu.run(relay, rc, now, self.costs.payment_ns);
                    let inst = self.inst(now);
                    if let Some(c) = self.rcircs.get_mut(&rc) {
                        if let Some(a) = c.acct.as_mut() {
                            a.credit(payment.amount_msat);
                            if stop && !c.stopped {
                                // Everything paid beyond this is the client's loss.
                                if let Some(t) = payment.token {
                                    self.owed_at_stop.insert(t.0, (a.owed_msat(inst), now));
                                }
                            }
                        }
                        if stop {
                            c.stopped = true;
                        }
                    }
                }
                SimEvent::Sent { sent, req, .. } => {
                    let Some(p) = self.pending_pay.remove(&sent.id) else {
                        continue;
                    };
                    let row = &mut self.out.payments[p.row];
                    row.fee_msat = sent.fee_msat;
                    row.latency_ms = Some((now - p.started) as f64 / 1e6);
                    row.outcome = "ok".into();
                    let cl = &mut self.clients[p.client as usize];
                    *cl.paid_to.entry(p.relay).or_insert(0) += req.amount_msat;
                    *cl.paid_tokens.entry((p.relay, p.token)).or_insert(0) += req.amount_msat;
                    self.payer_result(
                        now,
                        &p,
                        PayResult::Sent {
                            fee_msat: sent.fee_msat,
                        },
                    );
                }
                SimEvent::Failed { id, reason, .. } => {
                    let Some(p) = self.pending_pay.remove(&id) else {
                        continue;
                    };
                    let row = &mut self.out.payments[p.row];
                    row.latency_ms = Some((now - p.started) as f64 / 1e6);
                    row.outcome = format!("failed: {reason:?}");
                    self.payer_result(now, &p, PayResult::Failed);
                }
            }
        }
    }

    /// Hands a payment's result to its circuit's payer (and the client's budget).
    fn payer_result(&mut self, now: u64, p: &PendingPay, result: PayResult) {
        let inst = self.inst(now);
        let cl = &mut self.clients[p.client as usize];
        match self.ccircs.get_mut(&p.ccirc).and_then(|c| c.payer.as_mut()) {
            Some(payer) => {
                payer.on_result(p.order, result, inst, &mut cl.budget, &mut cl.rng);
                self.client_pay(now, p.ccirc);
                // A confirmed payment may release acknowledgements held for it.
                self.client_flush(now, p.ccirc);
            }
            None => {
                // The circuit is gone; settle the reservation in the budget all the same.
                let max_fee = self.sc.payments.max_fee_msat;
                let amount = self.out.payments[p.row].amount_msat;
                match result {
                    PayResult::Sent { fee_msat } => {
                        cl.budget.commit(amount, max_fee, fee_msat.min(max_fee))
                    }
                    PayResult::Failed => cl.budget.release(amount, max_fee),
                }
            }
        }
    }

    fn finish(&mut self, end: u64) {
        // Circuits still building at the end.
        let mut open: Vec<u32> = self.ccircs.keys().copied().collect();
        open.sort_unstable();
        for cc in open {
            if let Some(c) = self.ccircs.get(&cc) {
                if c.opened.is_none() {
                    self.out.circuits[c.row].outcome = "unfinished".into();
                }
            }
        }
        // Downloads still waiting at the end were not served.
        for c in self.ccircs.values().filter(|c| c.stream.is_some()) {
            for t in &c.tokens {
                self.unserved_at.insert(*t, end);
            }
        }
        for (i, r) in self.relays.iter_mut().enumerate() {
            r.row.cpu_ms = self.cpu.busy(i as u32) as f64 / 1e6;
        }
        self.out.relays = self.relays.iter().map(|r| r.row.clone()).collect();
        self.out.paid_to = self
            .clients
            .iter()
            .map(|c| c.paid_to.clone().into_iter().collect())
            .collect();
        self.out.events = self.events;
        self.out.cells = self.net.cells;
        self.out.chunk_msat = self.sc.payments.chunk_msat;
        // Per client and relay: what was paid on circuits the relay stopped, beyond what
        // those circuits had carried when it stopped, if a download on the circuit went
        // unserved at the stop or later. (A circuit whose downloads were all served lost
        // its client nothing an honest relay would not keep as well: the paid-ahead rest of
        // a chunk is never refunded when a circuit closes.)
        let owed = &self.owed_at_stop;
        let unserved = &self.unserved_at;
        self.out.lost_to = self
            .clients
            .iter()
            .map(|c| {
                let mut lost: BTreeMap<u32, u64> = BTreeMap::new();
                for ((relay, token), paid) in &c.paid_tokens {
                    let Some((o, at)) = owed.get(token) else {
                        continue;
                    };
                    if unserved.get(token).is_some_and(|w| w >= at) {
                        *lost.entry(*relay).or_insert(0) += paid.saturating_sub(*o);
                    }
                }
                lost.into_iter().collect()
            })
            .collect();
    }
}

enum Fwd {
    Forward(bool),
    Extend([u8; 32], Body),
    Begin(StreamId),
    Refuse(StreamId, EndReason),
    Request(StreamId, u64),
    Nothing,
    Fail(CircError),
}

fn exp_ns(rng: &mut StdRng, mean_s: f64) -> u64 {
    let u: f64 = rng.random::<f64>().max(1e-12);
    (-u.ln() * mean_s * 1e9) as u64
}
