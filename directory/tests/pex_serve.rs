#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! What a relay serves through PEX (confirmed, live, valid, not itself, at most N) and when it
//! runs its discovery passes.

mod common;

use std::time::Duration;

use common::{addr, body, signed, NOW};
use onionvpn_directory::pex::{
    build_pex, select_pex, verify_pex, PexSchedule, PEX_MIN_REMAINING_SECS, PEX_SERVE_ENTRIES,
};
use onionvpn_directory::{Network, RelaySet, Source};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn served_by_itself(set: &mut RelaySet, i: u32, now: u64) {
    let a = addr(10, i as u8, 0, 9001);
    let b = body(i, set.network(), a, NOW);
    set.offer_bytes(&signed(i, &b), Source::Relay(a), now)
        .unwrap();
}

#[test]
fn confirmation_follows_the_copy_its_relay_served() {
    let net = Network::main();
    let mut set = RelaySet::new(net.clone());
    served_by_itself(&mut set, 1, NOW + 5);
    let a2 = addr(10, 2, 0, 9001);
    set.offer_bytes(&signed(2, &body(2, &net, a2, NOW)), Source::Pex, NOW)
        .unwrap();
    let id1 = set.iter().next().unwrap().identity();
    assert_eq!(set.confirmed_at(&id1), Some(NOW + 5));
    // Only the PEX-learned relay (and relays confirmed before `since`) need a lookup by key.
    assert_eq!(set.unconfirmed_since(NOW + 5).len(), 1);
    assert_eq!(set.unconfirmed_since(NOW + 6).len(), 2);
    // A newer copy from elsewhere is not what the relay confirmed.
    let mut newer = body(1, &net, addr(10, 1, 0, 9001), NOW);
    newer.seq += 1;
    set.offer_bytes(
        &signed(1, &newer),
        Source::Dht {
            key: id1,
            seq: i64::try_from(newer.seq).unwrap(),
        },
        NOW + 6,
    )
    .unwrap();
    assert_eq!(set.confirmed_at(&id1), None);
    assert_eq!(set.unconfirmed_since(0).len(), 2);
    assert_eq!(set.forget_unconfirmed(0), 2);
    assert!(set.is_empty());
}

#[test]
fn a_relay_serves_only_live_valid_other_relays_at_most_n() {
    let net = Network::main();
    let mut set = RelaySet::new(net.clone());
    for i in 0..50 {
        served_by_itself(&mut set, i, NOW + u64::from(i));
    }
    // One learned only through PEX: never served.
    set.offer_bytes(
        &signed(99, &body(99, &net, addr(10, 99, 0, 1), NOW)),
        Source::Pex,
        NOW,
    )
    .unwrap();
    let own = body(0, &net, addr(10, 0, 0, 9001), NOW).identity;
    let mut rng = StdRng::seed_from_u64(1);
    // Live since NOW + 10: relays 10..50 qualify, 40 > N.
    let sel = select_pex(&set, &own, NOW + 10, NOW + 60, PEX_SERVE_ENTRIES, &mut rng);
    assert_eq!(sel.len(), PEX_SERVE_ENTRIES);
    for d in &sel {
        assert!(set.confirmed_at(&d.identity()).unwrap() >= NOW + 10);
    }
    // Live since NOW: 49 others (not itself, not the PEX-only one), capped.
    let sel = select_pex(&set, &own, NOW, NOW + 60, 100, &mut rng);
    assert_eq!(sel.len(), 49.min(onionvpn_directory::pex::MAX_PEX_ENTRIES));
    assert!(sel.iter().all(|d| d.identity() != own));
    // Different draws serve different parts of the network.
    let a: Vec<_> = select_pex(&set, &own, NOW, NOW, 8, &mut rng)
        .iter()
        .map(|d| d.identity())
        .collect();
    let b: Vec<_> = select_pex(&set, &own, NOW, NOW, 8, &mut rng)
        .iter()
        .map(|d| d.identity())
        .collect();
    assert_ne!(a, b);
    // Descriptors expiring within PEX_MIN_REMAINING_SECS are not served.
    let late = NOW + 24 * 3600 - PEX_MIN_REMAINING_SECS + 1;
    assert!(select_pex(&set, &own, NOW, late, 100, &mut rng).is_empty());
    // A full batch fits the frame and every entry verifies.
    let sel = select_pex(&set, &own, NOW, NOW + 60, PEX_SERVE_ENTRIES, &mut rng);
    let batch = build_pex(sel).unwrap();
    let mut c = Default::default();
    let out = verify_pex(&batch, &net.id(), NOW + 60, &mut c).unwrap();
    assert_eq!(out.accepted.len(), PEX_SERVE_ENTRIES);
    assert!(out.rejected.is_empty());
}

#[test]
fn schedule_backs_off_when_quiet_and_resets_on_news() {
    let min = Duration::from_secs(30);
    let max = Duration::from_secs(600);
    let mut s = PexSchedule::new(min, max);
    let mut rng = StdRng::seed_from_u64(3);
    let within = |d: Duration, base: Duration| d >= base * 4 / 5 && d <= base * 6 / 5;
    assert!(within(s.first(&mut rng), min));
    let mut last = Duration::ZERO;
    for _ in 0..8 {
        let d = s.after_pass(false, &mut rng);
        assert!(within(d, s.current()));
        assert!(s.current() >= last);
        last = s.current();
    }
    assert_eq!(s.current(), max);
    let d = s.after_pass(true, &mut rng);
    assert_eq!(s.current(), min);
    assert!(within(d, min));
    assert_eq!(s.live_window(), max * 3);
}
