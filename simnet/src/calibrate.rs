//! Calibration of the CPU model: times the project's own code on this machine and returns
//! the [`CpuCosts`] the simulator charges (`onionvpn-simnet calibrate` prints them as
//! `simnet/calibration.toml`; the agreement test measures them in its own run).
//!
//! Every figure is this thread's CPU time per operation (`CLOCK_THREAD_CPUTIME_ID`, which
//! counts time in system calls too), the median over
//! several batches: CPU time does not grow when other processes load the machine, while
//! wall time does. How much of the machine a process gets is measured apart
//! ([`cpu_share`]). What is timed:
//! - `layer_ns`: half of a client wrapping one layer (`ClientCircuitCrypto::encrypt_to`)
//!   plus a relay peeling it (`RelayCircuitCrypto::decrypt_forward`), 507-byte bodies;
//! - handshakes: `ClientCircuit::new` for one hop, `RelayCircuit::accept`,
//!   `ClientCircuit::handle_created`, with real keys;
//! - `link_handshake_ns`: half of a full Noise NK handshake (`LinkInitiator`/`LinkResponder`);
//! - `link_msg_ns`: half of what a lone cell costs to cross a real channel and be answered
//!   (ping-pong of one cell each way: a system call and a wake-up per cell at each end);
//! - `link_cell_ns`: half of what one cell costs to cross a real channel
//!   (`onionvpn_chan::connect`/`accept` over loopback TCP, batches of 64 cells as circuit
//!   tasks send them, read from the circuit's queue), both ends on one thread;
//! - `payment_ns`: onionvpn-pay's `Account::credit` + `check` (the Lightning node's own
//!   work is not measured).
//!
//! Those micro-operations miss what the real stack spends around them (on CI's idle machine
//! the model moved bytes twice as fast as the loopback network and built circuits 29 %
//! faster). [`with_stack`] adds that from whole real operations on a loopback network
//! ([`Whole`]: process CPU time per cell of a transfer and per circuit build, measured by
//! `onionvpn-bench calibrate` in the tests crate, which has the network): the difference
//! between the real figure and the model's sum, spread over the link sides the work
//! crosses (`stack_cell_ns`, `stack_msg_ns`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use onionvpn_chan::{ChannelConfig, IncomingCreate};
use onionvpn_pay::account::Account;
use onionvpn_proto::cell::{Cell, ChanCmd};
use onionvpn_proto::circuit::RelayPolicy;
use onionvpn_proto::circuit::{ClientCircuit, ClientConfig, HopTarget, RelayCircuit, RelayKeys};
use onionvpn_proto::consts::{CELL_BODY_LEN, CELL_LEN};
use onionvpn_proto::crypto::handshake::{OnionSecretKey, ReplayCache};
use onionvpn_proto::crypto::layer::{ClientCircuitCrypto, HopKeys, RelayCircuitCrypto};
use onionvpn_proto::ext::{PaymentOffer, PaymentTerms, PaymentToken};
use onionvpn_proto::link::{LinkInitiator, LinkResponder, LinkSecretKey};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cpu::CpuCosts;
use crate::SimError;

/// How much measuring to do.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    /// Batches per figure (the median is taken).
    pub batches: usize,
    /// Cells per batch for the per-cell figures.
    pub cells: usize,
    /// Handshakes per batch.
    pub handshakes: usize,
}

impl Effort {
    /// About a second of measuring on an idle 2-core machine.
    pub const NORMAL: Effort = Effort {
        batches: 7,
        cells: 20_000,
        handshakes: 60,
    };
    /// A fraction of that, for tests.
    pub const QUICK: Effort = Effort {
        batches: 5,
        cells: 6_000,
        handshakes: 20,
    };
}

/// This thread's time on a CPU, with the wall clock beside it.
struct Clock {
    wall: Instant,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            wall: Instant::now(),
        }
    }

    fn thread_cpu() -> Option<u64> {
        // CLOCK_THREAD_CPUTIME_ID: precise to the nanosecond (schedstat is only updated at
        // scheduler ticks, too coarse for one handshake).
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        u64::try_from(t.tv_sec)
            .ok()?
            .checked_mul(1_000_000_000)?
            .checked_add(u64::try_from(t.tv_nsec).ok()?)
    }

    /// Starts a measurement: (thread CPU ns, wall).
    fn start() -> (Option<u64>, Clock) {
        (Clock::thread_cpu(), Clock::now())
    }

    /// Elapsed since `start`: CPU time if both readings exist, wall time otherwise.
    fn elapsed(start: &(Option<u64>, Clock)) -> Duration {
        match (start.0, Clock::thread_cpu()) {
            (Some(a), Some(b)) if b >= a => Duration::from_nanos(b - a),
            _ => start.1.wall.elapsed(),
        }
    }
}

/// The share of each of `threads` cores this process gets now (0–1]: `threads` threads spin
/// for `ms` and compare their CPU time with the wall time. On an idle machine ≈ 1; when
/// other processes compete for the cores, less. The CPU model's costs are CPU time; divided
/// by this share they are the wall time the same work takes here now.
pub fn cpu_share(threads: usize, ms: u64) -> f64 {
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let t = Clock::start();
                let mut x = 0u64;
                while t.1.wall.elapsed() < Duration::from_millis(ms) {
                    for i in 0..1000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                let wall = t.1.wall.elapsed().as_nanos() as f64;
                let cpu = Clock::elapsed(&t).as_nanos() as f64;
                (cpu / wall.max(1.0)).min(1.0)
            })
        })
        .collect();
    let shares: Vec<f64> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    if shares.is_empty() {
        return 1.0;
    }
    shares.iter().sum::<f64>() / shares.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Median over `batches` of the ns per op of `f(ops)` (which does `ops` operations).
fn per_op(batches: usize, ops: usize, mut f: impl FnMut(usize) -> Duration) -> f64 {
    let _ = f(ops.div_ceil(4)); // warm up
    median(
        (0..batches.max(1))
            .map(|_| f(ops).as_nanos() as f64 / ops.max(1) as f64)
            .collect(),
    )
}

fn hop_keys(i: u8) -> HopKeys {
    let mut b = [0u8; 128];
    for (j, x) in b.iter_mut().enumerate() {
        *x = (j as u8).wrapping_mul(31).wrapping_add(i.wrapping_mul(97));
    }
    HopKeys::from_bytes(&b)
}

fn layer(e: Effort) -> Result<f64, SimError> {
    let mut client = ClientCircuitCrypto::new();
    client
        .add_hop(&hop_keys(1))
        .map_err(|err| SimError::Setup(format!("calibration: {err}")))?;
    let mut relay = RelayCircuitCrypto::from_keys(&hop_keys(1));
    let mut body = [7u8; CELL_BODY_LEN];
    let mut failed = false;
    let ns = per_op(e.batches, e.cells, |n| {
        let t = Clock::start();
        for _ in 0..n {
            body[CELL_BODY_LEN - 1] = 0;
            failed |= client.encrypt_to(0, &mut body).is_err();
            failed |= relay.decrypt_forward(&mut body).is_err();
        }
        Clock::elapsed(&t)
    });
    if failed {
        return Err(SimError::Setup("calibration: relay crypto failed".into()));
    }
    Ok(ns / 2.0)
}

/// (client create per hop, relay accept, client finish).
fn handshakes(e: Effort) -> Result<(f64, f64, f64), SimError> {
    let mut rng = StdRng::seed_from_u64(7);
    let onion = OnionSecretKey::generate(&mut rng);
    let identity = [9u8; 32];
    let target = HopTarget {
        identity,
        onion_key: onion.public(),
        link_key: [1u8; 32],
        ipv4: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9001)),
        ipv6: None,
        offer: PaymentOffer {
            msat_per_mib: 0,
            msat_per_min: 0,
        },
    };
    let onion_keys = [onion];
    let keys = RelayKeys {
        identity,
        onion_keys: &onion_keys,
    };
    let policy = RelayPolicy::default();
    let mut replay = ReplayCache::new(1 << 16, Duration::from_secs(600));
    let (mut create, mut accept, mut finish) = (Vec::new(), Vec::new(), Vec::new());
    let base = Instant::now();
    for _ in 0..e.batches.max(1) {
        let (mut c, mut a, mut f) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..e.handshakes.max(1) {
            let t0 = Clock::start();
            let (mut circ, body) =
                ClientCircuit::new(&mut rng, vec![target.clone()], ClientConfig::default())
                    .map_err(|err| SimError::Setup(format!("calibration: {err}")))?;
            let d0 = Clock::elapsed(&t0);
            let t1 = Clock::start();
            let (_relay, created) =
                RelayCircuit::accept(&mut rng, &keys, &mut replay, &policy, &body, base)
                    .map_err(|err| SimError::Setup(format!("calibration: {err}")))?;
            let d1 = Clock::elapsed(&t1);
            let t2 = Clock::start();
            circ.handle_created(&created)
                .map_err(|err| SimError::Setup(format!("calibration: {err}")))?;
            c += d0;
            a += d1;
            f += Clock::elapsed(&t2);
        }
        let n = e.handshakes.max(1) as f64;
        create.push(c.as_nanos() as f64 / n);
        accept.push(a.as_nanos() as f64 / n);
        finish.push(f.as_nanos() as f64 / n);
    }
    Ok((median(create), median(accept), median(finish)))
}

fn link_handshake(e: Effort) -> Result<f64, SimError> {
    let mut rng = StdRng::seed_from_u64(8);
    let secret = LinkSecretKey::generate(&mut rng);
    let mut v = Vec::new();
    for _ in 0..e.batches.max(1) {
        let t = Clock::start();
        for _ in 0..e.handshakes.max(1) {
            let err = |err| SimError::Setup(format!("calibration: link: {err}"));
            let (init, f1) = LinkInitiator::new(&mut rng, [1; 32], secret.public()).map_err(err)?;
            let resp = LinkResponder::new(&mut rng, [1; 32], &secret).map_err(err)?;
            let (_r, f2) = resp.read_frame(&f1[2..]).map_err(err)?;
            init.read_frame(&f2[2..]).map_err(err)?;
        }
        v.push(Clock::elapsed(&t).as_nanos() as f64 / e.handshakes.max(1) as f64);
    }
    Ok(median(v) / 2.0)
}

/// Half the cost of one cell through a real channel on loopback TCP, both ends on one thread:
/// (lone cells, ping-pong; cells in batches of 64).
fn link_cell(e: Effort) -> Result<(f64, f64), SimError> {
    let err = |what: &str, x: &dyn std::fmt::Display| {
        SimError::Setup(format!("calibration: channel: {what}: {x}"))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|x| err("runtime", &x))?;
    rt.block_on(async {
        let mut rng = StdRng::seed_from_u64(9);
        let secret = LinkSecretKey::generate(&mut rng);
        let public = secret.public();
        let identity = [4u8; 32];
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|x| err("bind", &x))?;
        let addr = listener.local_addr().map_err(|x| err("bind", &x))?;
        let cfg = ChannelConfig::default();
        let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<IncomingCreate>(4);
        let acfg = cfg.clone();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await?;
            onionvpn_chan::accept(sock, identity, &secret, &acfg, in_tx)
                .await
                .map_err(std::io::Error::other)
        });
        let client = onionvpn_chan::connect(addr, identity, public, &cfg)
            .await
            .map_err(|x| err("connect", &x))?;
        let _server_chan = server
            .await
            .map_err(|x| err("accept", &x))?
            .map_err(|x| err("accept", &x))?;
        let (id, _rx) = client.open_circuit().await.map_err(|x| err("open", &x))?;
        client
            .send(Cell::new(id, ChanCmd::Create))
            .await
            .map_err(|x| err("send", &x))?;
        let mut incoming = in_rx
            .recv()
            .await
            .ok_or_else(|| err("create", &"no CREATE arrived"))?;
        let body = [5u8; CELL_BODY_LEN];
        // Lone cells: one there, and (on the same channel, the other way) one back.
        let (back_id, mut back_rx) = (id, _rx);
        let server_chan = incoming.channel.clone();
        let server_id = incoming
            .cell
            .circ_id()
            .ok_or_else(|| err("create", &"no circuit id"))?;
        let mut lone = Vec::new();
        for round in 0..=e.batches.max(1) {
            let n = (e.handshakes * 10).max(10);
            let t = Clock::start();
            for _ in 0..n {
                client
                    .send(Cell::with_body(back_id, ChanCmd::Relay, &body))
                    .await
                    .map_err(|x| err("send", &x))?;
                incoming
                    .rx
                    .recv()
                    .await
                    .ok_or_else(|| err("receive", &"channel closed"))?;
                server_chan
                    .send(Cell::with_body(server_id, ChanCmd::Relay, &body))
                    .await
                    .map_err(|x| err("send", &x))?;
                back_rx
                    .recv()
                    .await
                    .ok_or_else(|| err("receive", &"channel closed"))?;
            }
            if round > 0 {
                // Two cells per round, each paid at both ends.
                lone.push(Clock::elapsed(&t).as_nanos() as f64 / (4 * n) as f64);
            }
        }
        let mut v = Vec::new();
        for round in 0..=e.batches.max(1) {
            let n = e.cells.max(64);
            let t = Clock::start();
            let sender = {
                let client = client.clone();
                async move {
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(64);
                        let cells = vec![Cell::with_body(id, ChanCmd::Relay, &body); k];
                        client.send_batch(cells).await?;
                        left -= k;
                    }
                    Ok::<_, onionvpn_chan::ChanError>(())
                }
            };
            let receiver = async {
                let mut got = 0usize;
                while got < n {
                    match incoming.rx.recv().await {
                        Some(_) => got += 1,
                        None => return false,
                    }
                }
                true
            };
            let (sent, received) = tokio::join!(sender, receiver);
            sent.map_err(|x| err("send", &x))?;
            if !received {
                return Err(err("receive", &"channel closed"));
            }
            if round > 0 {
                v.push(Clock::elapsed(&t).as_nanos() as f64 / n as f64);
            }
        }
        let _ = CELL_LEN;
        Ok((median(lone), median(v) / 2.0))
    })
}

fn payment(e: Effort) -> f64 {
    let terms = PaymentTerms {
        msat_per_mib: 1000,
        msat_per_min: 10,
        grace_kib: 512,
        token: PaymentToken([1; 16]),
    };
    let now = Instant::now();
    let mut acct = Account::new(terms, now);
    per_op(e.batches, e.cells, |n| {
        let t = Clock::start();
        for _ in 0..n {
            acct.credit(std::hint::black_box(1));
            std::hint::black_box(acct.check(now));
        }
        Clock::elapsed(&t)
    })
}

/// Measures every cost of the CPU model on this machine now.
pub fn measure(e: Effort) -> Result<CpuCosts, SimError> {
    let layer_ns = layer(e)?;
    let (client_create_ns, relay_accept_ns, client_finish_ns) = handshakes(e)?;
    let link_handshake_ns = link_handshake(e)?;
    let (link_msg_ns, link_cell_ns) = link_cell(e)?;
    Ok(CpuCosts {
        layer_ns,
        link_msg_ns,
        link_cell_ns,
        client_create_ns,
        relay_accept_ns,
        client_finish_ns,
        link_handshake_ns,
        payment_ns: payment(e),
        stack_cell_ns: 0.0,
        stack_msg_ns: 0.0,
    })
}

/// Whole real operations on a loopback network (all nodes in one process), as process CPU
/// time with the network's idle CPU (DHT polling, timers) subtracted.
#[derive(Debug, Clone, Copy)]
pub struct Whole {
    /// Hops of the circuits measured.
    pub hops: usize,
    /// CPU ns per DATA cell of a download through `hops` hops (the transfer's CPU over its
    /// bytes / 486): every node's work, the HTTP server and the downloading application.
    pub cell_ns: f64,
    /// CPU ns per circuit build of `hops` hops (a burst of builds, kept open: teardowns
    /// are not counted).
    pub build_ns: f64,
}

impl Whole {
    /// Link sides one cell of a stream crosses: each of `hops` links, both ends.
    pub fn cell_sides(&self) -> f64 {
        2.0 * self.hops as f64
    }

    /// Link sides of a build's lone messages: hop k's handshake crosses k links out and k
    /// back (CREATE or EXTEND, CREATED or EXTENDED), each at both ends.
    pub fn msg_sides(&self) -> f64 {
        let h = self.hops as f64;
        2.0 * h * (h + 1.0)
    }

    /// The model's CPU per cell with `c`'s costs, without the stack terms: one layer per hop
    /// at the client and one at each relay, and every link side.
    pub fn model_cell_ns(&self, c: &CpuCosts) -> f64 {
        2.0 * self.hops as f64 * c.layer_ns + self.cell_sides() * c.link_cell_ns
    }

    /// Relay-crypto layers of a build: hop k's EXTEND is wrapped by the client in k − 1
    /// layers and unwrapped by k − 1 relays, its EXTENDED the same way back, so
    /// 4 (k − 1) per hop.
    pub fn build_layers(&self) -> f64 {
        let h = self.hops as f64;
        2.0 * h * (h - 1.0).max(0.0)
    }

    /// The model's CPU per build with `c`'s costs, without the stack terms.
    pub fn model_build_ns(&self, c: &CpuCosts) -> f64 {
        let h = self.hops as f64;
        h * (c.client_create_ns + c.relay_accept_ns + c.client_finish_ns)
            + self.msg_sides() * c.link_msg_ns
            + self.build_layers() * c.layer_ns
    }
}

/// `micro` (micro-operation costs, [`measure`]) with the stack terms that make the model's
/// CPU per cell and per build equal the real network's ([`Whole`]): what is left after the
/// micro-operations, spread evenly over the link sides (never negative).
pub fn with_stack(micro: &CpuCosts, whole: &Whole) -> CpuCosts {
    let cell = (whole.cell_ns - whole.model_cell_ns(micro)) / whole.cell_sides().max(1.0);
    let msg = (whole.build_ns - whole.model_build_ns(micro)) / whole.msg_sides().max(1.0);
    CpuCosts {
        stack_cell_ns: cell.max(0.0),
        stack_msg_ns: msg.max(0.0),
        ..*micro
    }
}

/// A scenario on the topology the agreement test compares with the real loopback network
/// (simnet/scenarios/loopback.toml): 6 relays, all exits, `bandwidth_mbit` on every link, no
/// propagation delay, one client downloading `bytes` over a new 3-hop circuit each time, back
/// to back, for `duration_s`. Its `[cpu]` section is `host` (the `cores` and
/// `shared_host_*` lines) followed by `costs`.
pub fn loopback_scenario(
    duration_s: u64,
    bytes: u64,
    bandwidth_mbit: f64,
    host: &str,
    costs: &CpuCosts,
) -> Result<String, SimError> {
    let costs = toml::to_string(costs).map_err(|e| SimError::Setup(format!("CPU costs: {e}")))?;
    Ok(format!(
        r#"
name = "loopback"
seed = 1
duration_s = {duration_s}
[relays]
count = 6
exit_fraction = 1.0
bandwidth_mbit = [{bandwidth_mbit:?}, {bandwidth_mbit:?}]
[clients]
count = 1
hops = 3
bandwidth_mbit = {bandwidth_mbit:?}
think_s = [0.01, 0.01]
max_dirtiness_s = 0
[[traffic]]
name = "t"
weight = 1
bytes = [{bytes}, {bytes}]
timeout_s = 60.0
[topology]
regions = [1.0]
latency_ms = [[0.0]]
server_latency_ms = 0.0
[cpu]
{host}
{costs}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_terms_make_the_model_charge_the_real_cpu() {
        let micro = CpuCosts {
            layer_ns: 2000.0,
            link_msg_ns: 7000.0,
            link_cell_ns: 1300.0,
            client_create_ns: 120_000.0,
            relay_accept_ns: 210_000.0,
            client_finish_ns: 95_000.0,
            link_handshake_ns: 240_000.0,
            payment_ns: 14.0,
            stack_cell_ns: 0.0,
            stack_msg_ns: 0.0,
        };
        let whole = Whole {
            hops: 3,
            cell_ns: 40_000.0,
            build_ns: 2_000_000.0,
        };
        // 3 hops: 6 link sides per cell; 24 message sides per build.
        assert_eq!(whole.cell_sides(), 6.0);
        assert_eq!(whole.msg_sides(), 24.0);
        assert_eq!(whole.build_layers(), 12.0);
        let c = with_stack(&micro, &whole);
        let cell = whole.model_cell_ns(&c) + whole.cell_sides() * c.stack_cell_ns;
        let build = whole.model_build_ns(&c) + whole.msg_sides() * c.stack_msg_ns;
        assert!((cell - whole.cell_ns).abs() < 1e-6, "{cell}");
        assert!((build - whole.build_ns).abs() < 1e-6, "{build}");
        assert_eq!(c.layer_ns, micro.layer_ns);
        // A real network cheaper than the micro-operations never gives negative terms.
        let cheap = Whole {
            hops: 3,
            cell_ns: 1.0,
            build_ns: 1.0,
        };
        let c = with_stack(&micro, &cheap);
        assert_eq!((c.stack_cell_ns, c.stack_msg_ns), (0.0, 0.0));
    }

    /// simnet's build on an otherwise idle host with no propagation delay takes exactly the
    /// CPU the calibration charges per build (`model_build_ns` plus the stack terms): the
    /// build is one serial chain, every message side is charged once, as a whole message,
    /// and nothing else (the previous circuit's teardown) queues in front of it, on one
    /// host core or two. (Before: a relayed EXTENDED paid a stream cell's cost, and the
    /// teardown of the previous circuit ran beside the next build: +12 % on one core.)
    #[test]
    fn a_simulated_build_costs_the_cpu_the_model_charges() {
        let micro = CpuCosts {
            layer_ns: 2000.0,
            link_msg_ns: 7000.0,
            link_cell_ns: 1300.0,
            client_create_ns: 85_000.0,
            relay_accept_ns: 150_000.0,
            client_finish_ns: 65_000.0,
            link_handshake_ns: 200_000.0,
            payment_ns: 14.0,
            stack_cell_ns: 0.0,
            stack_msg_ns: 0.0,
        };
        let whole = Whole {
            hops: 3,
            cell_ns: 25_000.0,
            build_ns: 2_500_000.0,
        };
        let c = with_stack(&micro, &whole);
        for host in [1, 2] {
            let toml = loopback_scenario(
                1,
                1,
                10_000_000.0,
                &format!("cores = 2\nshared_host_cores = {host}"),
                &c,
            )
            .unwrap();
            let o = crate::run(&toml, None, |_| {}).unwrap().outputs;
            let builds: Vec<f64> = o.circuits.iter().filter_map(|c| c.build_ms).collect();
            assert!(builds.len() >= 20, "{} builds", builds.len());
            let want = whole.build_ns / 1e6;
            // A build over a pair of nodes not linked yet also pays their link handshake;
            // the others (most: six relays) take the charged CPU. Serialising a cell at
            // 10 Tbit/s costs 1 ns per node and message.
            let (min, med) = (
                builds.iter().copied().fold(f64::INFINITY, f64::min),
                median(builds.clone()),
            );
            assert!(
                (min - want).abs() < 0.001,
                "host {host}: fastest build {min} ms, charged {want} ms"
            );
            assert!(
                (med - want).abs() < 0.001,
                "host {host}: median build {med} ms, charged {want} ms"
            );
        }
    }
}
