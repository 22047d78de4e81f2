//! Adversarial relays: what the shipped adversary scenarios show, asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use onionvpn_simnet::output::Outputs;

fn run(text: &str) -> Outputs {
    onionvpn_simnet::run(text, None, |_| {}).unwrap().outputs
}

fn adversaries(o: &Outputs) -> BTreeSet<u32> {
    o.relays
        .iter()
        .filter(|r| !r.adversary.is_empty())
        .map(|r| r.relay)
        .collect()
}

fn path(p: &str) -> Vec<u32> {
    p.split('-').map(|x| x.parse().unwrap()).collect()
}

/// A relay that asks more than it advertises fails the build it is on (at its own hop);
/// the client then never builds through it again, and nobody ever pays it.
#[test]
fn overcharging_relay_is_avoided_once_detected() {
    let o = run(include_str!("../scenarios/adv-overcharge.toml"));
    let adv = adversaries(&o);
    assert_eq!(adv.len(), 5);
    let mut detected: BTreeSet<(u32, u32)> = BTreeSet::new();
    for c in &o.circuits {
        let p = path(&c.path);
        for r in p.iter().filter(|r| adv.contains(r)) {
            assert!(
                !detected.contains(&(c.client, *r)),
                "client {} built through overcharging relay {r} again after detecting it: {c:?}",
                c.client
            );
            assert!(
                c.build_ms.is_none(),
                "a circuit through an overcharger was built: {c:?}"
            );
        }
        // "build failed at hop N: ...": the hop that refused is the one detected.
        if let Some(rest) = c.outcome.strip_prefix("build failed at hop ") {
            let hop: usize = rest.split(':').next().unwrap().parse().unwrap();
            if adv.contains(&p[hop]) {
                detected.insert((c.client, p[hop]));
            }
        }
    }
    assert!(
        detected.len() > 10,
        "the scenario never exercised the adversary"
    );
    let mut refused = 0;
    for r in o.relays.iter().filter(|r| adv.contains(&r.relay)) {
        assert_eq!(r.earnings_msat, 0);
        refused += r.refused;
    }
    assert!(refused > 0);
}

/// A relay that takes payment and stops relaying costs each client at most one chunk (issue
/// 6): the client pays ahead by one chunk (onionvpn-pay's payer), the relay stops, and the
/// client avoids every hop of that circuit, whether it sees the circuit stall or the circuit
/// ends first for another reason while a stream on it was still waiting for data
/// (onionvpn-client's `StallWatch`; the argument is in docs/simnet.md). So no client pays a
/// stopper on a second circuit, and no circuit pays it more than one chunk.
#[test]
fn take_payment_and_stop_costs_at_most_one_chunk() {
    let text = include_str!("../scenarios/adv-take-payment.toml");
    at_most_one_chunk_each(&run(text));
    assert!(text.contains("failure = 0.01"));
    // With 5 % of payments failing, circuits through a stopper often end for that reason
    // before their stall shows (the client's circuit is closed for the failed payment to
    // another hop): the case `StallWatch::blame_on_end` is for. Without it (and without the
    // stall deadline), 1 of 19 victims paid a stopper a second chunk here.
    at_most_one_chunk_each(&run(&text.replace("failure = 0.01", "failure = 0.05")));
}

fn at_most_one_chunk_each(o: &Outputs) {
    let adv = adversaries(o);
    let mut built: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for c in o.circuits.iter().filter(|c| c.build_ms.is_some()) {
        for r in path(&c.path) {
            *built.entry((c.client, r)).or_insert(0) += 1;
        }
    }
    let (mut victims, mut once) = (0, 0);
    for (client, lost) in o.lost_to.iter().enumerate() {
        for (relay, msat) in lost {
            assert!(adv.contains(relay));
            if *msat > 0 {
                victims += 1;
            }
            if *msat > 0 && *msat <= o.chunk_msat {
                once += 1;
            }
            let n = built.get(&(client as u32, *relay)).copied().unwrap_or(0);
            assert!(
                *msat <= o.chunk_msat * n,
                "client {client} lost {msat} msat to relay {relay} over {n} circuits, more \
                 than one chunk ({}) each",
                o.chunk_msat
            );
        }
    }
    // Every client loses at most one chunk to each adversary.
    assert_eq!(once, victims, "{once} of {victims} lost at most one chunk");
    assert!(victims > 10, "the scenario never exercised the adversary");
    // Honest relays were paid for real traffic.
    let honest: u64 = o
        .relays
        .iter()
        .filter(|r| !adv.contains(&r.relay))
        .map(|r| r.earnings_msat)
        .sum();
    assert!(honest > 0);
}

/// A relay that tags cells breaks the circuits it is on: no download through a tagging
/// middle or guard completes, because the next hop refuses the modified cell.
#[test]
fn tagged_cells_never_reach_the_exit() {
    let o = run(include_str!("../scenarios/adv-tag.toml"));
    let adv = adversaries(&o);
    let circuits: BTreeMap<u32, Vec<u32>> = o
        .circuits
        .iter()
        .map(|c| (c.circuit, path(&c.path)))
        .collect();
    let mut through = 0;
    for s in &o.streams {
        let Some(p) = circuits.get(&s.circuit) else {
            continue;
        };
        // A tagger forwards toward the exit only from a guard or middle position.
        if p[..p.len() - 1].iter().any(|r| adv.contains(r)) {
            through += 1;
            assert_ne!(
                s.outcome, "ok",
                "a download completed through a tagging relay"
            );
            assert_eq!(s.received, 0);
        }
    }
    assert!(through > 5, "the scenario never exercised the adversary");
    let detected: u64 = o.relays.iter().map(|r| r.protocol_errors).sum();
    assert!(detected > 0);
}

/// Circuit id → path, and the set of circuits with a relay of `adv` in a position where it
/// forwards toward the exit (guard or middle).
fn through(o: &Outputs, adv: &BTreeSet<u32>, forwarding_only: bool) -> BTreeSet<u32> {
    o.circuits
        .iter()
        .filter(|c| {
            let p = path(&c.path);
            let n = if forwarding_only {
                p.len() - 1
            } else {
                p.len()
            };
            p[..n].iter().any(|r| adv.contains(r))
        })
        .map(|c| c.circuit)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A relay that drops 1 % of the cells it forwards breaks the circuits it is on (relay
/// cells are chained: the next hop cannot decrypt the cell after a gap and destroys the
/// circuit), so downloads through it fail far more often than the others.
#[test]
fn dropping_relay_breaks_its_circuits() {
    let o = run(include_str!("../scenarios/adv-drop.toml"));
    let adv = adversaries(&o);
    assert_eq!(adv.len(), 5);
    let bad = through(&o, &adv, true);
    let (mut n_bad, mut fail_bad, mut n_ok, mut fail_ok) = (0u32, 0u32, 0u32, 0u32);
    // Failed payments (the rail fails 1 % of them, whoever the relay) are not the drops.
    for s in o
        .streams
        .iter()
        .filter(|s| s.circuit != 0 && s.outcome != "payments failed")
    {
        let failed = s.outcome != "ok";
        if bad.contains(&s.circuit) {
            n_bad += 1;
            fail_bad += u32::from(failed);
        } else {
            n_ok += 1;
            fail_ok += u32::from(failed);
        }
    }
    assert!(n_bad > 20, "the scenario never exercised the adversary");
    let (fb, fo) = (
        f64::from(fail_bad) / f64::from(n_bad),
        f64::from(fail_ok) / f64::from(n_ok),
    );
    assert!(
        fb > 0.02 && fb > 10.0 * fo,
        "downloads through droppers fail {fb:.3}, others {fo:.3}"
    );
    // The hops after a dropper saw the broken chain.
    let errors: u64 = o
        .relays
        .iter()
        .filter(|r| !adv.contains(&r.relay))
        .map(|r| r.protocol_errors)
        .sum();
    assert!(errors > 0);
}

/// A relay that holds every cell 300 ms slows what crosses it: circuits through it build
/// at least 300 ms slower (a CREATE to the hop beyond it and the answer cross it) and their
/// first byte comes at least 600 ms later (BEGIN and the request cross it both ways).
#[test]
fn delaying_relay_slows_builds_and_first_bytes() {
    let o = run(include_str!("../scenarios/adv-delay.toml"));
    let adv = adversaries(&o);
    let slow = through(&o, &adv, false);
    let (mut b_slow, mut b_fast) = (Vec::new(), Vec::new());
    for c in &o.circuits {
        if let Some(b) = c.build_ms {
            if slow.contains(&c.circuit) {
                b_slow.push(b);
            } else {
                b_fast.push(b);
            }
        }
    }
    let (mut t_slow, mut t_fast) = (Vec::new(), Vec::new());
    for s in o.streams.iter().filter(|s| s.outcome == "ok") {
        if let Some(t) = s.ttfb_ms {
            if slow.contains(&s.circuit) {
                t_slow.push(t);
            } else {
                t_fast.push(t);
            }
        }
    }
    assert!(
        b_slow.len() > 5 && t_slow.len() > 5,
        "adversary not exercised: {} builds, {} downloads",
        b_slow.len(),
        t_slow.len()
    );
    let (bs, bf) = (median(b_slow), median(b_fast));
    let (ts, tf) = (median(t_slow), median(t_fast));
    assert!(bs >= bf + 300.0, "build median {bs:.0} ms vs {bf:.0} ms");
    assert!(ts >= tf + 600.0, "TTFB median {ts:.0} ms vs {tf:.0} ms");
}

const CHURN: &str = r#"
name = "churn"
seed = 3
duration_s = 240
[relays]
count = 30
exit_fraction = 0.3
bandwidth_mbit = [10.0, 200.0]
[clients]
count = 100
start_spread_s = 20.0
hops = 3
bandwidth_mbit = 50.0
think_s = [5.0, 20.0]
max_dirtiness_s = 60
avoid_s = 600
[[traffic]]
name = "web"
weight = 1
bytes = [20_000, 600_000]
timeout_s = 30.0
[topology]
regions = [0.6, 0.4]
latency_ms = [[10.0, 45.0], [45.0, 15.0]]
server_latency_ms = 10.0
[churn]
mean_up_s = 90.0
mean_down_s = 45.0
"#;

/// Churn: relays go down and come back. No circuit is built through a relay that was down
/// during its build; circuits it carried die with it; a client whose build stalls at a down relay
/// avoids it and builds elsewhere, and most downloads still complete.
#[test]
fn churn_kills_circuits_and_clients_rebuild_elsewhere() {
    let o = run(CHURN);
    // Down intervals per relay, from the churn log.
    let end = 240_000.0;
    let mut down: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    let mut since: BTreeMap<u32, f64> = BTreeMap::new();
    for &(t, r, up) in &o.churn {
        if up {
            let s = since.remove(&r).unwrap();
            down.entry(r).or_default().push((s, t));
        } else {
            since.insert(r, t);
        }
    }
    for (r, s) in since {
        down.entry(r).or_default().push((s, end));
    }
    assert!(down.len() > 10, "churn took too few relays down");
    let down_throughout = |r: u32, a: f64, b: f64| {
        down.get(&r)
            .is_some_and(|v| v.iter().any(|&(s, e)| s <= a && b <= e))
    };
    let mut built = 0;
    for c in &o.circuits {
        if let Some(b) = c.build_ms {
            built += 1;
            // A down relay answers nothing, and its circuits die with it; cells already past
            // it when it went down still arrive (within a link latency or two, ≤ 90 ms
            // here). So no relay of the path was down throughout the build's last 300 ms.
            let end = c.start_ms + b;
            for r in path(&c.path) {
                assert!(
                    !down_throughout(r, end - 300.0, end),
                    "circuit {c:?} built through relay {r} while it was down"
                );
            }
        }
    }
    assert!(built > 200);
    let killed = o
        .circuits
        .iter()
        .filter(|c| c.outcome.starts_with("closed: destroyed"))
        .count();
    assert!(killed > 5, "churn killed {killed} live circuits");
    // A build that timed out at a hop blames that relay; the client's later builds avoid it.
    let mut stalled = 0;
    for (i, c) in o.circuits.iter().enumerate() {
        let Some(rest) = c.outcome.strip_prefix("build timeout at hop ") else {
            continue;
        };
        let hop: usize = rest.parse().unwrap();
        let blamed = path(&c.path)[hop];
        stalled += 1;
        for later in o.circuits[i + 1..].iter().filter(|l| l.client == c.client) {
            assert!(
                later.start_ms > c.start_ms + 600_000.0 || !path(&later.path).contains(&blamed),
                "client {} built through relay {blamed} again after it stalled a build",
                c.client
            );
        }
    }
    assert!(stalled > 5, "no build stalled at a down relay");
    let ok = o.streams.iter().filter(|s| s.outcome == "ok").count();
    assert!(
        ok * 10 >= o.streams.len() * 8,
        "{ok} of {} downloads completed under churn",
        o.streams.len()
    );
}

const EXIT_POLICY: &str = r#"
name = "exit-policy"
seed = 4
duration_s = 120
[relays]
count = 20
exit_fraction = 0.5
bandwidth_mbit = [50.0, 200.0]
exit_ports = [[443, 443]]
[clients]
count = 40
start_spread_s = 10.0
hops = 3
bandwidth_mbit = 50.0
think_s = [2.0, 8.0]
ignore_exit_policy = IGNORE
[[traffic]]
name = "https"
weight = 1
bytes = [20_000, 200_000]
timeout_s = 30.0
[[traffic]]
name = "http"
weight = 1
bytes = [20_000, 200_000]
timeout_s = 30.0
port = 80
[topology]
regions = [1.0]
latency_ms = [[20.0]]
"#;

/// Exits enforce their exit policy on BEGIN with the real relay's check: exits that accept
/// only port 443 refuse every stream to port 80 that a client ignoring exit policies sends
/// them (END ExitPolicy, no byte delivered), and serve port 443. A client that respects the
/// policies never reaches an exit for port 80 (path selection finds none).
#[test]
fn exits_refuse_streams_their_policy_does_not_allow() {
    let o = run(&EXIT_POLICY.replace("IGNORE", "true"));
    let (mut refused, mut https_ok, mut https) = (0u64, 0, 0);
    for s in &o.streams {
        match s.class.as_str() {
            "http" => {
                assert_ne!(s.outcome, "ok", "a port-80 download completed: {s:?}");
                assert_eq!(s.received, 0);
                if s.outcome == "end: ExitPolicy" {
                    refused += 1;
                }
            }
            _ => {
                https += 1;
                https_ok += usize::from(s.outcome == "ok");
            }
        }
    }
    assert!(refused > 20, "exits refused only {refused} port-80 streams");
    let counted: u64 = o.relays.iter().map(|r| r.refused_streams).sum();
    assert_eq!(counted, refused);
    assert!(https_ok * 10 >= https * 9, "{https_ok} of {https} https ok");

    let o = run(&EXIT_POLICY.replace("IGNORE", "false"));
    assert_eq!(o.relays.iter().map(|r| r.refused_streams).sum::<u64>(), 0);
    let http: Vec<_> = o.streams.iter().filter(|s| s.class == "http").collect();
    assert!(!http.is_empty());
    for s in http {
        assert!(s.outcome.starts_with("path"), "{s:?}");
    }
}
