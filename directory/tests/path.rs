#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Path selection: constraints over 10,000 seeded draws, bandwidth tracking, relaxation, guards.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use onionvpn_directory::descriptor::Prices;
use onionvpn_directory::path::{select_path, GuardSet, PathError, PathRequest, SoftConstraint};
use onionvpn_directory::{Descriptor, ExitPolicy, Network, Target};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// 40 relays in 20 /16s (pairs share one), 4 families of 3; 10 exits accepting 443, one of them
/// too expensive, others with varied bandwidth.
fn relays() -> Vec<Descriptor> {
    let n = Network::main();
    (0..40u32)
        .map(|i| {
            let mut b = body(i, &n, addr(20 + (i / 2) as u8, 7, i as u8, 9001), NOW);
            b.bandwidth = 1_000_000 * u64::from(i % 5 + 1);
            b.exit_policy = if i % 4 == 0 {
                ExitPolicy::accept_ports(&[(443, 443)])
            } else {
                ExitPolicy::reject_all()
            };
            if i < 12 {
                b.family = vec![family((i / 3) as u8)];
            }
            if i == 8 {
                b.prices = Prices {
                    msat_per_mib: 1_000_000,
                    msat_per_min: 100,
                };
            }
            checked(i, &b, &n, NOW)
        })
        .collect()
}

fn s16(d: &Descriptor) -> [u8; 2] {
    match d.body().addresses[0].ip() {
        IpAddr::V4(v) => [v.octets()[0], v.octets()[1]],
        IpAddr::V6(_) => unreachable!(),
    }
}

#[test]
fn ten_thousand_draws_never_break_constraints_and_track_bandwidth() {
    let rs = relays();
    let refs: Vec<&Descriptor> = rs.iter().collect();
    let target = Target::Ip("93.184.216.34".parse().unwrap());
    let cap = Prices {
        msat_per_mib: 10_000,
        msat_per_min: 1_000,
    };
    let req = PathRequest {
        hops: 3,
        target: Some((target, 443)),
        price_cap: Some(cap),
        use_guards: false,
    };
    let mut rng = StdRng::seed_from_u64(42);
    let mut exit_counts: BTreeMap<_, u64> = BTreeMap::new();
    const N: u64 = 10_000;
    for _ in 0..N {
        let mut g = GuardSet::default();
        let p = select_path(&refs, &req, &mut g, NOW, &mut rng).unwrap();
        assert!(p.relaxed.is_empty());
        assert_eq!(p.hops.len(), 3);
        let ids: BTreeSet<_> = p.hops.iter().map(|d| d.identity()).collect();
        assert_eq!(ids.len(), 3, "relay twice");
        let subnets: BTreeSet<_> = p.hops.iter().map(|d| s16(d)).collect();
        assert_eq!(subnets.len(), 3, "two hops in one /16");
        let fams: Vec<_> = p
            .hops
            .iter()
            .flat_map(|d| d.body().family.clone())
            .collect();
        assert_eq!(
            fams.iter().collect::<BTreeSet<_>>().len(),
            fams.len(),
            "family twice"
        );
        let exit = p.hops[2];
        assert!(exit.body().exit_policy.allows(&target, 443));
        for h in &p.hops {
            assert!(h.body().prices.msat_per_mib <= cap.msat_per_mib);
        }
        *exit_counts.entry(exit.identity()).or_default() += 1;
    }
    // Expected exit frequencies: bandwidth share among the allowed, affordable exits.
    let exits: Vec<&Descriptor> = rs
        .iter()
        .filter(|d| {
            d.body().exit_policy.is_exit() && d.body().prices.msat_per_mib <= cap.msat_per_mib
        })
        .collect();
    assert_eq!(exits.len(), 9);
    let total: u64 = exits.iter().map(|d| d.body().bandwidth).sum();
    // Tolerance: 0.015 absolute (3 standard deviations of a proportion at p = 0.5, n = 10,000).
    for d in exits {
        let p = d.body().bandwidth as f64 / total as f64;
        let obs = *exit_counts.get(&d.identity()).unwrap_or(&0) as f64 / N as f64;
        assert!((obs - p).abs() < 0.015, "exit freq {obs} vs weight {p}");
    }
    assert!(
        !exit_counts.contains_key(&rs[8].identity()),
        "over-priced exit chosen"
    );
}

#[test]
fn same_seed_same_paths() {
    let rs = relays();
    let refs: Vec<&Descriptor> = rs.iter().collect();
    let req = PathRequest {
        hops: 3,
        target: None,
        price_cap: None,
        use_guards: true,
    };
    let run = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut g = GuardSet::default();
        (0..50)
            .map(|_| {
                select_path(&refs, &req, &mut g, NOW, &mut rng)
                    .unwrap()
                    .hops
                    .iter()
                    .map(|d| d.identity())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn guards_persist_and_expire() {
    let rs = relays();
    let refs: Vec<&Descriptor> = rs.iter().collect();
    let req = PathRequest {
        hops: 3,
        target: None,
        price_cap: None,
        use_guards: true,
    };
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = GuardSet::default();
    let first = select_path(&refs, &req, &mut g, NOW, &mut rng).unwrap();
    assert!(first.new_guard);
    let guard = g.guards[0];
    assert!(guard.expires >= NOW + 30 * 24 * 3600 && guard.expires <= NOW + 60 * 24 * 3600);
    let mut used_primary = 0;
    for _ in 0..200 {
        let p = select_path(&refs, &req, &mut g, NOW, &mut rng).unwrap();
        if p.hops[0].identity() == guard.identity {
            used_primary += 1;
        }
        assert!(g.guards.len() <= onionvpn_directory::path::MAX_GUARDS);
        assert!(
            g.guards.iter().any(|x| x.identity == p.hops[0].identity()),
            "first hop not a guard"
        );
    }
    // The primary guard serves every path whose exit it is compatible with.
    assert!(used_primary > 150, "{used_primary}");
    g.expire(guard.expires);
    assert!(!g.guards.iter().any(|x| x.identity == guard.identity));
}

#[test]
fn relaxes_only_soft_constraints_and_reports_them() {
    let n = Network::main();
    // Five relays all in one /16: /16 must be relaxed; two share a family, which stays enforced.
    let rs: Vec<Descriptor> = (0..5u32)
        .map(|i| {
            let mut b = body(i, &n, addr(30, 1, i as u8, 9001), NOW);
            if i < 2 {
                b.family = vec![family(9)];
            }
            checked(i, &b, &n, NOW)
        })
        .collect();
    let refs: Vec<&Descriptor> = rs.iter().collect();
    let req = PathRequest {
        hops: 3,
        target: None,
        price_cap: None,
        use_guards: false,
    };
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..200 {
        let p = select_path(&refs, &req, &mut GuardSet::default(), NOW, &mut rng).unwrap();
        assert_eq!(p.relaxed, vec![SoftConstraint::Subnet16]);
        let fam_hops = p
            .hops
            .iter()
            .filter(|d| !d.body().family.is_empty())
            .count();
        assert!(fam_hops <= 1, "family relaxed without need");
    }
    // Four hops over 3 families-distinct relays: family must be relaxed too.
    let req4 = PathRequest { hops: 5, ..req };
    let p = select_path(&refs, &req4, &mut GuardSet::default(), NOW, &mut rng).unwrap();
    assert_eq!(
        p.relaxed,
        vec![SoftConstraint::Subnet16, SoftConstraint::Family]
    );
    // Hard constraints are never relaxed.
    let req6 = PathRequest { hops: 6, ..req };
    assert!(matches!(
        select_path(&refs, &req6, &mut GuardSet::default(), NOW, &mut rng),
        Err(PathError::TooFewRelays { .. })
    ));
    let cheap = PathRequest {
        price_cap: Some(Prices {
            msat_per_mib: 1,
            msat_per_min: 1,
        }),
        ..req
    };
    assert!(matches!(
        select_path(&refs, &cheap, &mut GuardSet::default(), NOW, &mut rng),
        Err(PathError::NoExit { .. })
    ));
    let private = PathRequest {
        target: Some((Target::Ip("10.0.0.1".parse().unwrap()), 80)),
        ..req
    };
    assert!(matches!(
        select_path(&refs, &private, &mut GuardSet::default(), NOW, &mut rng),
        Err(PathError::NoExit { .. })
    ));
}
