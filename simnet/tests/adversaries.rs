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

/// A relay that takes payment and stops relaying gets at most one chunk from each client
/// beyond what it had carried: the client pays ahead by one chunk (onionvpn-pay's payer),
/// the circuit stalls, and the client never pays that relay again.
#[test]
fn take_payment_and_stop_costs_at_most_one_chunk() {
    let o = run(include_str!("../scenarios/adv-take-payment.toml"));
    let adv = adversaries(&o);
    let mut victims = 0;
    for (client, lost) in o.lost_to.iter().enumerate() {
        for (relay, msat) in lost {
            assert!(adv.contains(relay));
            if *msat > 0 {
                victims += 1;
            }
            assert!(
                *msat <= o.chunk_msat,
                "client {client} lost {msat} msat to relay {relay}, more than one chunk ({})",
                o.chunk_msat
            );
        }
    }
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
