#![allow(dead_code)]
//! Shared helpers: relays with deterministic keys.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ed25519_dalek::SigningKey;
use onionvpn_directory::descriptor::{
    DescriptorBody, FamilyId, IdentityKey, LinkKey, LnNodeId, OnionKey, Prices, ProtoVersion,
};
use onionvpn_directory::{Descriptor, ExitPolicy, Network, UncheckedDescriptor};

pub const NOW: u64 = 1_800_000_000;

pub fn key(i: u32) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    seed[31] = 0x5a;
    SigningKey::from_bytes(&seed)
}

pub fn body(i: u32, net: &Network, addr: SocketAddr, now: u64) -> DescriptorBody {
    let sk = key(i);
    DescriptorBody {
        network: net.id(),
        identity: IdentityKey::from_signing_key(&sk),
        seq: now,
        published: now,
        expires: now + 24 * 3600,
        link_key: LinkKey([i as u8; 32]),
        bandwidth: 1_000_000 * u64::from(i % 7 + 1),
        prices: Prices {
            msat_per_mib: 1000,
            msat_per_min: 100,
        },
        ln_node_id: LnNodeId([2; 33]),
        onion_keys: vec![OnionKey {
            key: [9; 32],
            valid_after: now - 10,
            valid_until: now + 7 * 24 * 3600,
        }],
        addresses: vec![addr],
        protocols: vec![
            ProtoVersion { id: 1, version: 1 },
            ProtoVersion { id: 2, version: 1 },
        ],
        family: vec![],
        exit_policy: ExitPolicy::accept_all(),
    }
}

pub fn addr(a: u8, b: u8, c: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, 1)), port)
}

pub fn signed(i: u32, b: &DescriptorBody) -> Vec<u8> {
    b.sign(&key(i)).unwrap()
}

pub fn checked(i: u32, b: &DescriptorBody, net: &Network, now: u64) -> Descriptor {
    UncheckedDescriptor::parse(&signed(i, b))
        .unwrap()
        .check(None, &net.id(), now)
        .unwrap()
}

pub fn family(x: u8) -> FamilyId {
    FamilyId([x; 32])
}
