#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::needless_range_loop)]
//! Descriptor encoding, checks, typed rejections with counters, and PEX integrity.

mod common;
use common::*;

use onionvpn_directory::descriptor::{FamilyId, OnionKey, MAX_DESCRIPTOR_LEN};
use onionvpn_directory::pex::{build_pex, verify_pex};
use onionvpn_directory::relays::{Offered, RelaySet, Source};
use onionvpn_directory::{
    DescriptorError, IdentityKey, Network, RejectReason, RejectionCounters, UncheckedDescriptor,
};
use proptest::prelude::*;

fn net() -> Network {
    Network::main()
}

#[test]
fn round_trip_is_canonical_and_within_limit() {
    let mut b = body(1, &net(), addr(10, 1, 0, 9001), NOW);
    b.family = vec![family(1), family(2)];
    let bytes = signed(1, &b);
    assert!(bytes.len() <= MAX_DESCRIPTOR_LEN);
    let u = UncheckedDescriptor::parse(&bytes).unwrap();
    let d = u.check(Some(&b.identity), &net().id(), NOW).unwrap();
    assert_eq!(d.body(), &b);
    assert_eq!(d.raw(), &bytes[..]);
    assert_eq!(d.body().sign(&key(1)).unwrap(), bytes);
}

#[test]
fn building_an_oversized_descriptor_is_a_clear_error() {
    let mut b = body(1, &net(), addr(10, 1, 0, 9001), NOW);
    b.family = (0..32u8).map(family).collect();
    b.onion_keys = vec![
        OnionKey {
            key: [1; 32],
            valid_after: 0,
            valid_until: NOW + 10
        };
        4
    ];
    match b.sign(&key(1)) {
        Err(DescriptorError::Oversized { len, max }) => {
            assert!(len > max);
            assert_eq!(max, MAX_DESCRIPTOR_LEN);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
}

/// Each bad kind is rejected with its typed error and counted under its reason.
#[test]
fn each_bad_descriptor_kind_is_rejected_typed_and_counted() {
    let n = net();
    let a = addr(10, 1, 0, 9001);
    let mut set = RelaySet::new(n.clone());
    let good = body(1, &n, a, NOW);
    let good_bytes = signed(1, &good);

    // Forged: signed by another key (identity field still relay 1).
    let mut forged = good_bytes.clone();
    let sig = ed25519_dalek::Signer::sign(&key(2), b"x").to_bytes();
    let l = forged.len();
    forged[l - 64..].copy_from_slice(&sig);
    let e = set.offer_bytes(&forged, Source::Pex, NOW).unwrap_err();
    assert!(matches!(e, DescriptorError::BadSignature { .. }), "{e:?}");

    // Altered content with the original signature.
    let mut altered = good_bytes.clone();
    altered[120] ^= 1; // inside the bandwidth field
    let e = set.offer_bytes(&altered, Source::Pex, NOW).unwrap_err();
    assert!(matches!(e, DescriptorError::BadSignature { .. }), "{e:?}");

    // Wrong key: a valid descriptor of relay 1 returned for a lookup under relay 3's key.
    let k3 = IdentityKey::from_signing_key(&key(3));
    let e = set
        .offer_bytes(
            &good_bytes,
            Source::Dht {
                key: k3,
                seq: NOW as i64,
            },
            NOW,
        )
        .unwrap_err();
    assert!(matches!(e, DescriptorError::WrongKey { .. }), "{e:?}");

    // Expired.
    let e = set
        .offer_bytes(&good_bytes, Source::Pex, NOW + 24 * 3600)
        .unwrap_err();
    assert!(matches!(e, DescriptorError::Expired { .. }), "{e:?}");

    // Oversized input.
    let mut big = good_bytes.clone();
    big.resize(MAX_DESCRIPTOR_LEN + 1, 0);
    let e = set.offer_bytes(&big, Source::Pex, NOW).unwrap_err();
    assert!(matches!(e, DescriptorError::Oversized { .. }), "{e:?}");

    // Malformed: truncated, and trailing garbage.
    let e = set
        .offer_bytes(&good_bytes[..100], Source::Pex, NOW)
        .unwrap_err();
    assert!(matches!(e, DescriptorError::Malformed { .. }), "{e:?}");
    let mut trailing = good_bytes.clone();
    trailing.push(0);
    let e = set.offer_bytes(&trailing, Source::Pex, NOW).unwrap_err();
    assert!(matches!(e, DescriptorError::Malformed { .. }), "{e:?}");

    // Stale seq: newer accepted, then the older one refused.
    let mut newer = good.clone();
    newer.seq = NOW + 60;
    newer.published = NOW + 60;
    assert_eq!(
        set.offer_bytes(&signed(1, &newer), Source::Pex, NOW + 60)
            .unwrap(),
        Offered::New
    );
    let e = set
        .offer_bytes(&good_bytes, Source::Pex, NOW + 60)
        .unwrap_err();
    assert!(
        matches!(e, DescriptorError::StaleSeq { known, got, .. } if known == NOW + 60 && got == NOW),
        "{e:?}"
    );
    // Same seq, other content: also stale.
    let mut same_seq = newer.clone();
    same_seq.bandwidth += 1;
    let e = set
        .offer_bytes(&signed(1, &same_seq), Source::Pex, NOW + 60)
        .unwrap_err();
    assert!(matches!(e, DescriptorError::StaleSeq { .. }), "{e:?}");

    // Served from an address it does not list.
    let b4 = body(4, &n, a, NOW);
    let e = set
        .offer_bytes(&signed(4, &b4), Source::Relay(addr(10, 9, 0, 9001)), NOW)
        .unwrap_err();
    assert!(
        matches!(e, DescriptorError::AddressMismatch { .. }),
        "{e:?}"
    );

    // Seq mismatch between BEP44 and descriptor.
    let k4 = IdentityKey::from_signing_key(&key(4));
    let e = set
        .offer_bytes(&signed(4, &b4), Source::Dht { key: k4, seq: 5 }, NOW)
        .unwrap_err();
    assert!(matches!(e, DescriptorError::SeqMismatch { .. }), "{e:?}");

    let c = set.counters();
    assert_eq!(c.get(RejectReason::BadSignature), 2);
    assert_eq!(c.get(RejectReason::WrongKey), 1);
    assert_eq!(c.get(RejectReason::Expired), 1);
    assert_eq!(c.get(RejectReason::Oversized), 1);
    assert_eq!(c.get(RejectReason::Malformed), 2);
    assert_eq!(c.get(RejectReason::StaleSeq), 2);
    assert_eq!(c.get(RejectReason::AddressMismatch), 1);
    assert_eq!(c.get(RejectReason::SeqMismatch), 1);
    assert_eq!(c.total(), 11);
    assert_eq!(set.len(), 1);
}

#[test]
fn other_network_and_future_descriptors_are_rejected() {
    let other = Network::public("lab", 1).unwrap();
    let b = body(1, &other, addr(10, 1, 0, 9001), NOW);
    let e = UncheckedDescriptor::parse(&signed(1, &b))
        .unwrap()
        .check(None, &net().id(), NOW)
        .unwrap_err();
    assert!(matches!(e, DescriptorError::WrongNetwork { .. }));
    let mut f = body(1, &net(), addr(10, 1, 0, 9001), NOW + 3600);
    f.seq = NOW;
    let e = UncheckedDescriptor::parse(&signed(1, &f))
        .unwrap()
        .check(None, &net().id(), NOW)
        .unwrap_err();
    assert!(matches!(e, DescriptorError::NotYetValid { .. }));
}

/// A relay serving other relays' descriptors through PEX cannot alter any of them: flipping any
/// single bit of any entry makes exactly that entry fail, the others pass.
#[test]
fn pex_cannot_alter_served_descriptors() {
    let n = net();
    let ds: Vec<_> = (0..3)
        .map(|i| checked(i, &body(i, &n, addr(10, i as u8, 0, 9001), NOW), &n, NOW))
        .collect();
    let batch = build_pex(ds.iter()).unwrap();
    let mut c = RejectionCounters::default();
    let ok = verify_pex(&batch, &n.id(), NOW, &mut c).unwrap();
    assert_eq!(ok.accepted, ds);
    let entry_len = ds[0].raw().len();
    let mut tested = 0;
    for entry in 0..3 {
        let start = 6 + entry * (entry_len + 2) + 2;
        for off in (0..entry_len).step_by(7) {
            for bit in [0u8, 5] {
                let mut m = batch.clone();
                m[start + off] ^= 1 << bit;
                let out = verify_pex(&m, &n.id(), NOW, &mut c).unwrap();
                assert_eq!(out.accepted.len(), 2, "entry {entry} byte {off}");
                assert_eq!(out.rejected.len(), 1);
                assert_eq!(out.rejected[0].0, entry);
                assert!(!out
                    .accepted
                    .iter()
                    .any(|d| d.identity() == ds[entry].identity()));
                tested += 1;
            }
        }
    }
    assert_eq!(c.total(), tested);
    // Substituting another relay's bytes under a shifted frame breaks the frame, not the check.
    assert!(verify_pex(&batch[..batch.len() - 1], &n.id(), NOW, &mut c).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn parse_encode_round_trip(i in 0u32..1000, bw in any::<u64>(), fam in proptest::collection::btree_set(any::<[u8; 32]>(), 0..8),
                               port in 1u16.., mib in any::<u64>(), seq in 0u64..(i64::MAX as u64)) {
        let n = net();
        let mut b = body(i, &n, addr(10, 2, 3, port), NOW);
        b.bandwidth = bw;
        b.family = fam.into_iter().map(FamilyId).collect();
        b.prices.msat_per_mib = mib;
        b.seq = seq;
        let bytes = signed(i, &b);
        let u = UncheckedDescriptor::parse(&bytes).unwrap();
        let d = u.check(None, &n.id(), NOW).unwrap();
        prop_assert_eq!(d.body(), &b);
        prop_assert_eq!(d.raw(), &bytes[..]);
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let _ = UncheckedDescriptor::parse(&bytes);
    }
}
