//! Networks: the public overlay and private overlays named by a key file.
//!
//! A network fixes three derived values (docs/spec.md, "Networks"):
//! the 16-byte network id written in every descriptor, the BEP44 salt under which relays store
//! their descriptors, and the announce infohashes (one per shard). For a private network all
//! three come from a 32-byte secret, so outsiders can neither enumerate its relays nor mistake
//! them for their own.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::descriptor::IdentityKey;

/// Most announce shards a network may use.
pub const MAX_SHARDS: u16 = 256;
/// First line of a network key file.
pub const KEY_FILE_HEADER: &str = "onionvpn-network-key v1";
/// Salt of the public network's BEP44 items.
pub const PUBLIC_SALT: &[u8] = b"onionvpn/desc/v1";
/// Name of the default public network.
pub const PUBLIC_NETWORK_NAME: &str = "main";

/// 16-byte network id carried in descriptors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NetworkId(pub [u8; 16]);

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Errors reading or writing a network key file.
#[derive(Debug, thiserror::Error)]
pub enum NetworkKeyError {
    /// I/O on the key file.
    #[error("network key file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file does not follow the format.
    #[error("network key file line {line}: {what}")]
    Format {
        /// 1-based line number (0 for the whole file).
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Invalid name or shard count.
    #[error("invalid network parameter: {0}")]
    Invalid(&'static str),
}

/// A private network's key: a name (for humans and logs), a shard count and a 32-byte secret.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct NetworkKey {
    name: String,
    shards: u16,
    secret: [u8; 32],
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkKey")
            .field("name", &self.name)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

fn check_params(name: &str, shards: u16) -> Result<(), NetworkKeyError> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NetworkKeyError::Invalid(
            "name: 1..=64 printable ASCII bytes, no spaces",
        ));
    }
    if shards == 0 || shards > MAX_SHARDS {
        return Err(NetworkKeyError::Invalid("shards: 1..=256"));
    }
    Ok(())
}

impl NetworkKey {
    /// Makes a new key with a random secret.
    pub fn generate<R: rand::CryptoRng + ?Sized>(
        rng: &mut R,
        name: &str,
        shards: u16,
    ) -> Result<Self, NetworkKeyError> {
        check_params(name, shards)?;
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Ok(Self {
            name: name.to_owned(),
            shards,
            secret,
        })
    }

    /// Builds a key from its parts.
    pub fn from_parts(name: &str, shards: u16, secret: [u8; 32]) -> Result<Self, NetworkKeyError> {
        check_params(name, shards)?;
        Ok(Self {
            name: name.to_owned(),
            shards,
            secret,
        })
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serialises to the key file format:
    /// `onionvpn-network-key v1\nname <name>\nshards <n>\nsecret <64 lowercase hex>\n`.
    pub fn to_file_string(&self) -> String {
        let mut hex = String::with_capacity(64);
        for b in &self.secret {
            hex.push_str(&format!("{b:02x}"));
        }
        format!(
            "{KEY_FILE_HEADER}\nname {}\nshards {}\nsecret {hex}\n",
            self.name, self.shards
        )
    }

    /// Parses the key file format (exactly the four lines, in order).
    pub fn parse_file_string(s: &str) -> Result<Self, NetworkKeyError> {
        let fmt_err = |line, what| NetworkKeyError::Format { line, what };
        let lines: Vec<&str> = s.lines().collect();
        if lines.len() != 4 {
            return Err(fmt_err(0, "expected 4 lines"));
        }
        if lines[0] != KEY_FILE_HEADER {
            return Err(fmt_err(1, "header"));
        }
        let name = lines[1]
            .strip_prefix("name ")
            .ok_or(fmt_err(2, "expected `name <name>`"))?;
        let shards: u16 = lines[2]
            .strip_prefix("shards ")
            .and_then(|v| v.parse().ok())
            .ok_or(fmt_err(3, "expected `shards <1..=256>`"))?;
        let hex = lines[3]
            .strip_prefix("secret ")
            .ok_or(fmt_err(4, "expected `secret <hex>`"))?;
        let hb = hex.as_bytes();
        if hb.len() != 64 {
            return Err(fmt_err(4, "secret must be 64 hex digits"));
        }
        let mut secret = [0u8; 32];
        for (i, pair) in hb.chunks(2).enumerate() {
            let d = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
            match (d(pair[0]), d(pair[1])) {
                (Some(h), Some(l)) => secret[i] = (h * 16 + l) as u8,
                _ => return Err(fmt_err(4, "secret must be lowercase hex")),
            }
        }
        let key = Self::from_parts(name, shards, secret);
        secret.zeroize();
        key
    }

    /// Writes the key file, creating it with mode 0600 on Unix; refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), NetworkKeyError> {
        use std::io::Write;
        let io = |source| NetworkKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(self.to_file_string().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<Self, NetworkKeyError> {
        let s = std::fs::read_to_string(path).map_err(|source| NetworkKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_file_string(&s)
    }
}

/// The derived parameters of one network. Cheap to clone; holds no secret.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Network {
    name: String,
    id: NetworkId,
    salt: Vec<u8>,
    announce_base: [u8; 32],
    shards: u16,
}

fn h(parts: &[&[u8]]) -> [u8; 32] {
    let mut d = Sha256::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

fn first16(x: [u8; 32]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o.copy_from_slice(&x[..16]);
    o
}

impl Network {
    /// The public network called `name` (normally [`PUBLIC_NETWORK_NAME`]) with `shards` shards.
    pub fn public(name: &str, shards: u16) -> Result<Self, NetworkKeyError> {
        check_params(name, shards)?;
        let n = name.as_bytes();
        Ok(Self {
            name: name.to_owned(),
            id: NetworkId(first16(h(&[b"onionvpn/network-id/v1/public\0", n]))),
            salt: if name == PUBLIC_NETWORK_NAME {
                PUBLIC_SALT.to_vec()
            } else {
                let mut s = PUBLIC_SALT.to_vec();
                s.push(b'/');
                s.extend_from_slice(n);
                s
            },
            announce_base: h(&[b"onionvpn/announce/v1/public\0", n]),
            shards,
        })
    }

    /// The default public network (one shard).
    pub fn main() -> Self {
        Self {
            name: PUBLIC_NETWORK_NAME.to_owned(),
            id: NetworkId(first16(h(&[
                b"onionvpn/network-id/v1/public\0",
                PUBLIC_NETWORK_NAME.as_bytes(),
            ]))),
            salt: PUBLIC_SALT.to_vec(),
            announce_base: h(&[
                b"onionvpn/announce/v1/public\0",
                PUBLIC_NETWORK_NAME.as_bytes(),
            ]),
            shards: 1,
        }
    }

    /// The private network of a key.
    pub fn private(key: &NetworkKey) -> Self {
        let s = &key.secret[..];
        let mut salt = b"ovd1p/".to_vec();
        salt.extend_from_slice(&first16(h(&[b"onionvpn/salt/v1/private\0", s])));
        Self {
            name: key.name.clone(),
            id: NetworkId(first16(h(&[b"onionvpn/network-id/v1/private\0", s]))),
            salt,
            announce_base: h(&[b"onionvpn/announce/v1/private\0", s]),
            shards: key.shards,
        }
    }

    /// Human-readable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Network id written into descriptors.
    pub fn id(&self) -> NetworkId {
        self.id
    }

    /// BEP44 salt for descriptors of this network (≤ 64 bytes).
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Number of announce shards.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Announce infohash of shard `shard`: first 20 bytes of
    /// `SHA-256(announce_base ‖ u16be(shard))`.
    pub fn infohash(&self, shard: u16) -> [u8; 20] {
        let x = h(&[&self.announce_base, &shard.to_be_bytes()]);
        let mut o = [0u8; 20];
        o.copy_from_slice(&x[..20]);
        o
    }

    /// The shard a relay announces in: `u16be(SHA-256("onionvpn/shard/v1\0" ‖ identity)[0..2]) mod shards`.
    pub fn shard_of(&self, identity: &IdentityKey) -> u16 {
        let x = h(&[b"onionvpn/shard/v1\0", &identity.0]);
        u16::from_be_bytes([x[0], x[1]]) % self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn key_file_round_trip_and_private_derivation_differs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let k = NetworkKey::generate(&mut rng, "lab", 4).unwrap();
        let s = k.to_file_string();
        let back = NetworkKey::parse_file_string(&s).unwrap();
        assert_eq!(back, k);
        let a = Network::private(&k);
        let k2 = NetworkKey::generate(&mut rng, "lab", 4).unwrap();
        let b = Network::private(&k2);
        assert_ne!(a.id(), b.id());
        assert_ne!(a.infohash(0), b.infohash(0));
        assert_ne!(a.salt(), b.salt());
        assert_ne!(a.id(), Network::main().id());
        assert!(a.salt().len() <= 64);
        assert_eq!(Network::public("main", 1).unwrap(), Network::main());
        assert!(NetworkKey::parse_file_string(&s.replace("secret ", "secret X")).is_err());
        assert!(NetworkKey::parse_file_string(&s.to_uppercase()).is_err());
    }

    #[test]
    fn shards_cover_all_and_are_stable() {
        let n = Network::public("main", 8).unwrap();
        let mut seen = [false; 8];
        for i in 0..200u8 {
            let s = n.shard_of(&IdentityKey([i; 32]));
            assert!(s < 8);
            seen[usize::from(s)] = true;
            assert_eq!(s, n.shard_of(&IdentityKey([i; 32])));
        }
        assert!(seen.iter().all(|x| *x));
        let hs: std::collections::HashSet<_> = (0..8).map(|s| n.infohash(s)).collect();
        assert_eq!(hs.len(), 8);
    }
}
