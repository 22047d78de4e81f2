//! Path selection: exit first, then guard, then middles; weighted by advertised bandwidth;
//! deterministic for a given RNG; relaxes only soft constraints, and says which.
//!
//! Hard constraints (never relaxed): a relay appears at most once; every hop's descriptor is
//! valid at `now` (not expired, onion key valid); the exit's policy accepts the target; every
//! hop's prices are within the client's cap. Soft constraints, relaxed in this order when too
//! few relays qualify: no two hops in one IPv4 /16 ([`SoftConstraint::Subnet16`]), then no two
//! hops sharing a declared family id ([`SoftConstraint::Family`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use rand::{Rng, RngExt};

use crate::descriptor::{Descriptor, IdentityKey, Prices};
use crate::policy::Target;

/// Guards kept in the sample at most; the first usable one serves.
pub const MAX_GUARDS: usize = 8;
/// Shortest guard lifetime, seconds (30 days).
pub const GUARD_LIFETIME_MIN_SECS: u64 = 30 * 24 * 3600;
/// Longest guard lifetime, seconds (60 days); each guard draws uniformly in between.
pub const GUARD_LIFETIME_MAX_SECS: u64 = 60 * 24 * 3600;
/// Bandwidth weight cap per relay (bytes/s), bounding what one lying relay can attract.
pub const MAX_WEIGHT: u64 = 10 * 1024 * 1024 * 1024;

/// What the client asks for.
#[derive(Debug, Clone, Copy)]
pub struct PathRequest<'a> {
    /// Number of hops, 1..=`onionvpn_proto::consts::MAX_HOPS` (8).
    pub hops: usize,
    /// Destination the exit must accept (`None`: any exit).
    pub target: Option<(Target<'a>, u16)>,
    /// Highest acceptable prices per hop (`None`: no cap).
    pub price_cap: Option<Prices>,
    /// Use (and extend) the persistent guard set for the first hop.
    pub use_guards: bool,
}

/// Most hops a path may have (equals `onionvpn_proto::consts::MAX_HOPS`).
pub const MAX_PATH_HOPS: usize = 8;

/// A constraint that may be relaxed when too few relays qualify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SoftConstraint {
    /// No two hops in one IPv4 /16.
    Subnet16,
    /// No two hops sharing a declared family id.
    Family,
}

/// One persistent guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// The guard relay.
    pub identity: IdentityKey,
    /// When it was chosen, unix seconds.
    pub added: u64,
    /// When it is dropped, unix seconds.
    pub expires: u64,
}

/// The ordered guard sample (persisted by [`crate::cache::Cache`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardSet {
    /// Guards in order of preference.
    pub guards: Vec<Guard>,
}

impl GuardSet {
    /// Drops guards whose lifetime ended.
    pub fn expire(&mut self, now: u64) {
        self.guards.retain(|g| now < g.expires);
    }
}

/// A chosen path.
#[derive(Debug, Clone)]
pub struct Path<'a> {
    /// Hops from first (guard) to last (exit).
    pub hops: Vec<&'a Descriptor>,
    /// Soft constraints that had to be relaxed (empty in the normal case).
    pub relaxed: Vec<SoftConstraint>,
    /// Whether a guard was added to the guard set for this path.
    pub new_guard: bool,
}

/// Why no path could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `hops` outside 1..=8.
    #[error("path length {0} outside 1..=8")]
    BadHopCount(usize),
    /// No usable relay accepts the target within the price cap.
    #[error("no exit accepts the target within the price cap among {usable} usable relays")]
    NoExit {
        /// Relays usable at all (valid, within the price cap).
        usable: usize,
    },
    /// Even with every soft constraint relaxed, too few relays for the requested hops.
    #[error("not enough relays for {hops} hops: {usable} usable")]
    TooFewRelays {
        /// Hops asked for.
        hops: usize,
        /// Relays usable at all.
        usable: usize,
    },
}

fn within_cap(d: &Descriptor, cap: &Option<Prices>) -> bool {
    cap.is_none_or(|c| {
        let p = d.body().prices;
        p.msat_per_mib <= c.msat_per_mib && p.msat_per_min <= c.msat_per_min
    })
}

fn subnets16(d: &Descriptor) -> impl Iterator<Item = [u8; 2]> + '_ {
    d.body()
        .addresses
        .iter()
        .filter_map(|a: &SocketAddr| match a.ip() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Some([o[0], o[1]])
            }
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| {
                let o = v4.octets();
                [o[0], o[1]]
            }),
        })
}

/// Whether two distinct relays may share a path at the given relaxation.
pub fn compatible(a: &Descriptor, b: &Descriptor, relaxed: &[SoftConstraint]) -> bool {
    if a.identity() == b.identity() {
        return false;
    }
    if !relaxed.contains(&SoftConstraint::Subnet16) {
        let sa: BTreeSet<[u8; 2]> = subnets16(a).collect();
        if subnets16(b).any(|s| sa.contains(&s)) {
            return false;
        }
    }
    if !relaxed.contains(&SoftConstraint::Family) {
        let fa = &a.body().family;
        if b.body().family.iter().any(|f| fa.binary_search(f).is_ok()) {
            return false;
        }
    }
    true
}

fn weight(d: &Descriptor) -> u128 {
    u128::from(d.body().bandwidth.min(MAX_WEIGHT))
}

/// Picks one of `cands` with probability proportional to bandwidth (uniform if all are 0).
pub fn weighted_choice<'a, R: Rng + ?Sized>(
    cands: &[&'a Descriptor],
    rng: &mut R,
) -> Option<&'a Descriptor> {
    if cands.is_empty() {
        return None;
    }
    let total: u128 = cands.iter().map(|d| weight(d)).sum();
    if total == 0 {
        return cands.get(rng.random_range(0..cands.len())).copied();
    }
    let mut x = rng.random_range(0..total);
    for d in cands {
        let w = weight(d);
        if x < w {
            return Some(d);
        }
        x -= w;
    }
    cands.last().copied()
}

/// Chooses a path among `relays` (any order; they are sorted by identity first so the result
/// depends only on the set, the request, the guard set and the RNG).
pub fn select_path<'a, R: Rng + ?Sized>(
    relays: &[&'a Descriptor],
    req: &PathRequest<'_>,
    guards: &mut GuardSet,
    now: u64,
    rng: &mut R,
) -> Result<Path<'a>, PathError> {
    if req.hops == 0 || req.hops > MAX_PATH_HOPS {
        return Err(PathError::BadHopCount(req.hops));
    }
    let mut usable: Vec<&'a Descriptor> = relays
        .iter()
        .copied()
        .filter(|d| d.is_valid_at(now) && within_cap(d, &req.price_cap))
        .collect();
    usable.sort_by_key(|d| d.identity());
    usable.dedup_by_key(|d| d.identity());
    let exits: Vec<&'a Descriptor> = usable
        .iter()
        .copied()
        .filter(|d| match &req.target {
            Some((t, port)) => d.body().exit_policy.allows(t, *port),
            None => d.body().exit_policy.is_exit(),
        })
        .collect();
    guards.expire(now);
    // Keep the primary guard out of the exit position when another exit qualifies, so that a
    // path does not push the client onto a new guard just because its guard was drawn as exit.
    let primary = guards
        .guards
        .iter()
        .find(|g| usable.iter().any(|d| d.identity() == g.identity))
        .map(|g| g.identity);
    let exits = match primary {
        Some(p) if req.use_guards && req.hops > 1 && exits.iter().any(|d| d.identity() != p) => {
            exits.into_iter().filter(|d| d.identity() != p).collect()
        }
        _ => exits,
    };
    let exit = weighted_choice(&exits, rng).ok_or(PathError::NoExit {
        usable: usable.len(),
    })?;
    if req.hops == 1 {
        return Ok(Path {
            hops: vec![exit],
            relaxed: Vec::new(),
            new_guard: false,
        });
    }
    let levels: [&[SoftConstraint]; 3] = [
        &[],
        &[SoftConstraint::Subnet16],
        &[SoftConstraint::Subnet16, SoftConstraint::Family],
    ];
    for relaxed in levels {
        if let Some((hops, new_guard)) = fill(&usable, exit, req, guards, relaxed, now, rng) {
            return Ok(Path {
                hops,
                relaxed: relaxed.to_vec(),
                new_guard,
            });
        }
    }
    Err(PathError::TooFewRelays {
        hops: req.hops,
        usable: usable.len(),
    })
}

fn fill<'a, R: Rng + ?Sized>(
    usable: &[&'a Descriptor],
    exit: &'a Descriptor,
    req: &PathRequest<'_>,
    guards: &mut GuardSet,
    relaxed: &[SoftConstraint],
    now: u64,
    rng: &mut R,
) -> Option<(Vec<&'a Descriptor>, bool)> {
    let ok_with =
        |d: &Descriptor, chosen: &[&Descriptor]| chosen.iter().all(|c| compatible(d, c, relaxed));
    // Middles need to exist before we commit to a guard; check there are enough candidates.
    let compatible_with_exit: Vec<&'a Descriptor> = usable
        .iter()
        .copied()
        .filter(|d| ok_with(d, &[exit]))
        .collect();
    if compatible_with_exit.len() < req.hops - 1 {
        return None;
    }
    let mut new_guard = false;
    let guard = if req.use_guards {
        let existing = guards.guards.iter().find_map(|g| {
            compatible_with_exit
                .iter()
                .copied()
                .find(|d| d.identity() == g.identity)
        });
        match existing {
            Some(g) => g,
            None => {
                if guards.guards.len() >= MAX_GUARDS {
                    return None;
                }
                let g = weighted_choice(&compatible_with_exit, rng)?;
                let life = rng.random_range(GUARD_LIFETIME_MIN_SECS..=GUARD_LIFETIME_MAX_SECS);
                guards.guards.push(Guard {
                    identity: g.identity(),
                    added: now,
                    expires: now.saturating_add(life),
                });
                new_guard = true;
                g
            }
        }
    } else {
        weighted_choice(&compatible_with_exit, rng)?
    };
    let mut chosen = vec![guard, exit];
    for _ in 0..req.hops - 2 {
        let cands: Vec<&'a Descriptor> = compatible_with_exit
            .iter()
            .copied()
            .filter(|d| ok_with(d, &chosen))
            .collect();
        match weighted_choice(&cands, rng) {
            Some(m) => chosen.insert(chosen.len() - 1, m),
            None => {
                if new_guard {
                    guards.guards.pop();
                }
                return None;
            }
        }
    }
    Some((chosen, new_guard))
}
