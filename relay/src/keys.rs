//! The relay's long-term keys on disk: identity (ed25519), link (x25519, Noise static) and
//! onion keys (x25519, circuit handshake) with rotation.
//!
//! Layout: `<data_dir>/keys/` (mode 0700) holds one file per key, each mode 0600:
//!
//! | file | key |
//! |---|---|
//! | `identity.key` | ed25519 identity, also the DHT (BEP44) signing key |
//! | `link.key` | x25519 static key of the Noise link handshake |
//! | `onion.key` | current x25519 onion key |
//! | `onion.prev.key` | previous onion key, kept for a grace period after rotation |
//!
//! Every file is [`HEADER_LEN`] + 32 + 32 (+ 8) bytes: the 16-byte magic [`MAGIC`], one kind
//! byte (1 identity, 2 link, 3 onion), the 32-byte secret, the 32-byte public key derived from
//! it (checked on load: a flipped bit in either is reported as corruption), and for onion keys
//! the creation time as a big-endian u64 of unix seconds.
//!
//! Files are written atomically (temporary file created `0600` with `create_new`, fsync,
//! rename, fsync of the directory) and refused on load when group or others may read them, or
//! when they are not regular files (fs-mistrust style). Secrets are zeroized on drop and never
//! printed by `Debug`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use onionvpn_directory::descriptor::{IdentityKey, OnionKey};
use onionvpn_proto::crypto::handshake::OnionSecretKey;
use onionvpn_proto::link::LinkSecretKey;
use thiserror::Error;
use zeroize::Zeroizing;

/// Name of the key directory inside the data directory.
pub const KEYS_DIR: &str = "keys";
/// Identity key file.
pub const IDENTITY_FILE: &str = "identity.key";
/// Link key file.
pub const LINK_FILE: &str = "link.key";
/// Current onion key file.
pub const ONION_FILE: &str = "onion.key";
/// Previous onion key file.
pub const ONION_PREV_FILE: &str = "onion.prev.key";
/// First 16 bytes of every key file.
pub const MAGIC: &[u8; 16] = b"onionvpn-key-v1\n";
/// Magic plus the kind byte.
pub const HEADER_LEN: usize = 17;

const DAY: u64 = 24 * 3600;

/// What kind of key a file holds (the byte after the magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ed25519 identity key.
    Identity = 1,
    /// x25519 link key.
    Link = 2,
    /// x25519 onion key (with creation time).
    Onion = 3,
}

impl KeyKind {
    fn file_len(self) -> usize {
        match self {
            KeyKind::Identity | KeyKind::Link => HEADER_LEN + 64,
            KeyKind::Onion => HEADER_LEN + 64 + 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Identity => "identity",
            KeyKind::Link => "link",
            KeyKind::Onion => "onion",
        }
    }
}

/// Errors of the key store; each names the file or directory concerned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A filesystem operation failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What was attempted ("read", "create", "rename", ...).
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A key file that group or others may access.
    #[error(
        "{}: key file has mode {mode:04o}, readable by group or others; \
         run `chmod 600 {}` (and consider the key compromised if others could read it)",
        path.display(), path.display()
    )]
    InsecureFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key or data directory that others may write (or, for the key directory, read).
    #[error("{}: directory has mode {mode:04o}; run `chmod 700 {}`", path.display(), path.display())]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file (a symlink, a directory, a device...).
    #[error("{}: not a regular file; key files must not be symlinks", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Wrong length: truncated, or not a key file.
    #[error("{}: {kind} key file is {len} bytes, expected {expected} (truncated or not a key file)", path.display())]
    BadLength {
        /// The key file.
        path: PathBuf,
        /// Expected kind of key.
        kind: &'static str,
        /// Its length.
        len: u64,
        /// The length it must have.
        expected: usize,
    },
    /// Wrong magic or kind byte.
    #[error("{}: not an onionvpn {kind} key file (bad header)", path.display())]
    BadHeader {
        /// The key file.
        path: PathBuf,
        /// Expected kind of key.
        kind: &'static str,
    },
    /// The stored public key does not match the secret: the file is damaged.
    #[error("{}: {kind} key file is corrupt (secret and public key do not match); restore it from a backup", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// Kind of key.
        kind: &'static str,
    },
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// When onion keys rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Lifetime of the current onion key before a new one replaces it (default 28 days).
    pub lifetime_secs: u64,
    /// How long the previous key stays usable after it was replaced (default 7 days), so that
    /// clients holding an older descriptor can still build circuits.
    pub grace_secs: u64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            lifetime_secs: 28 * DAY,
            grace_secs: 7 * DAY,
        }
    }
}

/// What [`OnionKeyRing::plan`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationPlan {
    /// Make a new current key; the current one becomes the previous one.
    pub rotate: bool,
    /// Drop the previous key (its grace period is over, or a rotation replaces it).
    pub drop_previous: bool,
}

impl RotationPlan {
    /// Whether anything changes.
    pub fn is_noop(&self) -> bool {
        !self.rotate && !self.drop_previous
    }
}

/// The onion keys in use: the current one and, during its grace period, the previous one.
///
/// [`secrets`](Self::secrets) lists the current key first. Rotation is a pure function of the
/// creation times, the policy and `now` (unix seconds): see [`plan`](Self::plan).
#[derive(Clone)]
pub struct OnionKeyRing {
    /// `[current]` or `[current, previous]`.
    secrets: Vec<OnionSecretKey>,
    /// Creation times, same order.
    created: Vec<u64>,
}

impl std::fmt::Debug for OnionKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionKeyRing")
            .field("secrets", &self.secrets) // OnionSecretKey's Debug prints the public key only
            .field("created", &self.created)
            .finish()
    }
}

impl OnionKeyRing {
    /// A ring with only a current key created at `created`.
    pub fn new(current: OnionSecretKey, created: u64) -> Self {
        Self {
            secrets: vec![current],
            created: vec![created],
        }
    }

    /// A ring with a current and a previous key.
    pub fn with_previous(
        current: OnionSecretKey,
        created: u64,
        previous: OnionSecretKey,
        previous_created: u64,
    ) -> Self {
        Self {
            secrets: vec![current, previous],
            created: vec![created, previous_created],
        }
    }

    /// The keys a relay accepts handshakes for: current first, then previous.
    pub fn secrets(&self) -> &[OnionSecretKey] {
        &self.secrets
    }

    /// The current key and its creation time.
    pub fn current(&self) -> (&OnionSecretKey, u64) {
        (&self.secrets[0], self.created[0])
    }

    /// The previous key and its creation time, if still kept.
    pub fn previous(&self) -> Option<(&OnionSecretKey, u64)> {
        match (self.secrets.get(1), self.created.get(1)) {
            (Some(k), Some(c)) => Some((k, *c)),
            _ => None,
        }
    }

    /// What to do at `now`: rotate when the current key is `lifetime` old (or dated absurdly in
    /// the future, after a clock jump); drop the previous key `grace` after the current one was
    /// created (i.e. after the previous one was replaced).
    pub fn plan(&self, now: u64, policy: &RotationPolicy) -> RotationPlan {
        let created = self.created[0];
        let rotate = now >= created.saturating_add(policy.lifetime_secs)
            || created > now.saturating_add(policy.lifetime_secs);
        let drop_previous =
            self.secrets.len() > 1 && (rotate || now >= created.saturating_add(policy.grace_secs));
        RotationPlan {
            rotate,
            drop_previous,
        }
    }

    /// Applies a plan: `fresh` is the new current key when the plan rotates.
    pub fn apply(&mut self, plan: RotationPlan, now: u64, fresh: Option<OnionSecretKey>) {
        if plan.drop_previous {
            self.secrets.truncate(1);
            self.created.truncate(1);
        }
        if plan.rotate {
            if let Some(key) = fresh {
                self.secrets.truncate(1);
                self.created.truncate(1);
                self.secrets.insert(0, key);
                self.created.insert(0, now);
            }
        }
    }

    /// The next unix second at which [`plan`](Self::plan) changes something (when to wake up).
    pub fn next_event(&self, policy: &RotationPolicy) -> u64 {
        let created = self.created[0];
        let rotate_at = created.saturating_add(policy.lifetime_secs);
        if self.secrets.len() > 1 {
            rotate_at.min(created.saturating_add(policy.grace_secs))
        } else {
            rotate_at
        }
    }

    /// The onion keys to publish in the descriptor, with their validity windows: the current key
    /// until its replacement's grace ends, the previous one until its own grace ends.
    pub fn descriptor_keys(&self, policy: &RotationPolicy) -> Vec<OnionKey> {
        let cur_created = self.created[0];
        let mut out = vec![OnionKey {
            key: self.secrets[0].public().to_bytes(),
            valid_after: cur_created,
            valid_until: cur_created
                .saturating_add(policy.lifetime_secs)
                .saturating_add(policy.grace_secs),
        }];
        if let Some((prev, prev_created)) = self.previous() {
            out.push(OnionKey {
                key: prev.public().to_bytes(),
                valid_after: prev_created,
                valid_until: cur_created.saturating_add(policy.grace_secs),
            });
        }
        out
    }
}

/// What a call changed on disk (for `init`'s report and the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Key files written for the first time.
    pub created: Vec<PathBuf>,
    /// Whether the onion key rotated.
    pub rotated: bool,
    /// Whether the previous onion key was dropped.
    pub dropped_previous: bool,
}

/// All long-term keys of a relay, loaded from (and kept in sync with) its key directory.
pub struct KeyStore {
    dir: PathBuf,
    identity: SigningKey,
    link: LinkSecretKey,
    onion: OnionKeyRing,
    policy: RotationPolicy,
    changes: KeyChanges,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("identity", &format_args!("{}", self.identity_public()))
            .field("link_public", &self.link.public())
            .field("onion", &self.onion)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Loads the keys under `data_dir`, creating whatever is missing, with the default rotation
    /// policy; rotates the onion key if due at `now` (unix seconds).
    pub fn load_or_create(data_dir: &Path, now: u64) -> Result<Self, KeyError> {
        Self::load_or_create_with(data_dir, RotationPolicy::default(), now)
    }

    /// [`load_or_create`](Self::load_or_create) with a rotation policy.
    ///
    /// Creates `data_dir` and `data_dir/keys` with mode 0700 when absent. Refuses a data
    /// directory writable by group or others, a key directory accessible by them, and any key
    /// file readable by them.
    pub fn load_or_create_with(
        data_dir: &Path,
        policy: RotationPolicy,
        now: u64,
    ) -> Result<Self, KeyError> {
        ensure_dir(data_dir, 0o022)?;
        let dir = data_dir.join(KEYS_DIR);
        ensure_dir(&dir, 0o077)?;
        let mut changes = KeyChanges::default();
        let mut rng = rand::rng();

        let identity = match read_key(&dir, IDENTITY_FILE, KeyKind::Identity)? {
            Some(k) => SigningKey::from_bytes(&k.secret),
            None => {
                let mut secret = Zeroizing::new([0u8; 32]);
                rand::Rng::fill_bytes(&mut rng, secret.as_mut_slice());
                let sk = SigningKey::from_bytes(&secret);
                write_key(
                    &dir,
                    IDENTITY_FILE,
                    KeyKind::Identity,
                    &secret,
                    &sk.verifying_key().to_bytes(),
                    None,
                )?;
                changes.created.push(dir.join(IDENTITY_FILE));
                sk
            }
        };

        let link = match read_key(&dir, LINK_FILE, KeyKind::Link)? {
            Some(k) => LinkSecretKey::from_bytes(*k.secret),
            None => {
                let k = LinkSecretKey::generate(&mut rng);
                write_key(
                    &dir,
                    LINK_FILE,
                    KeyKind::Link,
                    &k.to_bytes(),
                    &k.public(),
                    None,
                )?;
                changes.created.push(dir.join(LINK_FILE));
                k
            }
        };

        let onion = match read_key(&dir, ONION_FILE, KeyKind::Onion)? {
            Some(cur) => {
                let current = OnionSecretKey::from_bytes(&cur.secret);
                match read_key(&dir, ONION_PREV_FILE, KeyKind::Onion)? {
                    // A crash between the two renames of a rotation can leave the same key in
                    // both files: keep it once.
                    Some(prev) if *prev.secret != *cur.secret => OnionKeyRing::with_previous(
                        current,
                        cur.created,
                        OnionSecretKey::from_bytes(&prev.secret),
                        prev.created,
                    ),
                    _ => OnionKeyRing::new(current, cur.created),
                }
            }
            None => {
                let k = OnionSecretKey::generate(&mut rng);
                write_key(
                    &dir,
                    ONION_FILE,
                    KeyKind::Onion,
                    &k.to_bytes(),
                    &k.public().to_bytes(),
                    Some(now),
                )?;
                remove_if_exists(&dir.join(ONION_PREV_FILE))?;
                changes.created.push(dir.join(ONION_FILE));
                OnionKeyRing::new(k, now)
            }
        };

        let mut store = KeyStore {
            dir,
            identity,
            link,
            onion,
            policy,
            changes,
        };
        // Also brings the files in line with the ring (e.g. removes a duplicate previous file).
        store.rotate_if_due(now)?;
        if store.onion.previous().is_none() {
            remove_if_exists(&store.dir.join(ONION_PREV_FILE))?;
        }
        Ok(store)
    }

    /// Rotates the onion key and drops the previous one when due at `now`, on disk first.
    ///
    /// Order on disk: the current key is written as the previous one, then the new key replaces
    /// the current one (each step atomic), so a crash at any point leaves a loadable pair.
    pub fn rotate_if_due(&mut self, now: u64) -> Result<RotationPlan, KeyError> {
        let plan = self.onion.plan(now, &self.policy);
        if plan.is_noop() {
            return Ok(plan);
        }
        if plan.rotate {
            let fresh = OnionSecretKey::generate(&mut rand::rng());
            let (cur, cur_created) = self.onion.current();
            write_key(
                &self.dir,
                ONION_PREV_FILE,
                KeyKind::Onion,
                &cur.to_bytes(),
                &cur.public().to_bytes(),
                Some(cur_created),
            )?;
            write_key(
                &self.dir,
                ONION_FILE,
                KeyKind::Onion,
                &fresh.to_bytes(),
                &fresh.public().to_bytes(),
                Some(now),
            )?;
            self.onion.apply(plan, now, Some(fresh));
            self.changes.rotated = true;
        } else if plan.drop_previous {
            remove_if_exists(&self.dir.join(ONION_PREV_FILE))?;
            self.onion.apply(plan, now, None);
            self.changes.dropped_previous = true;
        }
        Ok(plan)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rotation policy.
    pub fn policy(&self) -> &RotationPolicy {
        &self.policy
    }

    /// The ed25519 identity (signs descriptors; the DHT's BEP44 key).
    pub fn identity(&self) -> &SigningKey {
        &self.identity
    }

    /// The public identity, as in descriptors.
    pub fn identity_public(&self) -> IdentityKey {
        IdentityKey::from_signing_key(&self.identity)
    }

    /// The Noise static link key.
    pub fn link(&self) -> &LinkSecretKey {
        &self.link
    }

    /// The onion keys.
    pub fn onion(&self) -> &OnionKeyRing {
        &self.onion
    }

    /// The onion keys to publish, with validity windows.
    pub fn descriptor_onion_keys(&self) -> Vec<OnionKey> {
        self.onion.descriptor_keys(&self.policy)
    }

    /// What loading and rotating changed on disk since this store was opened.
    pub fn changes(&self) -> &KeyChanges {
        &self.changes
    }
}

/// A parsed key file.
struct KeyFile {
    secret: Zeroizing<[u8; 32]>,
    created: u64,
}

/// The relay's public identity and link keys, read from `data_dir/keys` without creating,
/// rotating or writing anything (for `onionvpn-relay check`, which may run beside the
/// relay). `None` when either key file is absent (run `init`).
pub fn read_public_keys(data_dir: &Path) -> Result<Option<(IdentityKey, [u8; 32])>, KeyError> {
    let dir = data_dir.join(KEYS_DIR);
    let Some(id) = read_key(&dir, IDENTITY_FILE, KeyKind::Identity)? else {
        return Ok(None);
    };
    let Some(link) = read_key(&dir, LINK_FILE, KeyKind::Link)? else {
        return Ok(None);
    };
    let identity = IdentityKey::from_signing_key(&SigningKey::from_bytes(&id.secret));
    Ok(Some((
        identity,
        LinkSecretKey::from_bytes(*link.secret).public(),
    )))
}

/// Creates `dir` (mode 0700, parents too) if absent; refuses it if `forbidden` mode bits are set.
fn ensure_dir(dir: &Path, forbidden: u32) -> Result<(), KeyError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir, "create directory"))?;
            // The umask may have removed bits but never added any; make it exactly 0700.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err(dir, "set permissions of"))?;
            Ok(())
        }
        Err(e) => Err(io_err(dir, "inspect")(e)),
        Ok(_) => {
            // Follow a symlinked data directory (common with mounted volumes), then check it.
            let meta = fs::metadata(dir).map_err(io_err(dir, "inspect"))?;
            if !meta.is_dir() {
                return Err(KeyError::Io {
                    path: dir.to_path_buf(),
                    action: "use as a directory",
                    source: io::Error::other("not a directory"),
                });
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & forbidden != 0 {
                return Err(KeyError::InsecureDir {
                    path: dir.to_path_buf(),
                    mode,
                });
            }
            Ok(())
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<(), KeyError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "remove")(e)),
    }
}

/// Reads and checks a key file; `None` if it does not exist.
fn read_key(dir: &Path, name: &str, kind: KeyKind) -> Result<Option<KeyFile>, KeyError> {
    let path = dir.join(name);
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, "inspect")(e)),
        Ok(m) if !m.file_type().is_file() => return Err(KeyError::NotAFile { path }),
        Ok(_) => {}
    }
    let mut f = File::open(&path).map_err(io_err(&path, "open"))?;
    let meta = f.metadata().map_err(io_err(&path, "inspect"))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecureFile { path, mode });
    }
    let expected = kind.file_len();
    if meta.len() != expected as u64 {
        return Err(KeyError::BadLength {
            path,
            kind: kind.name(),
            len: meta.len(),
            expected,
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(expected + 1));
    (&mut f)
        .take(expected as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(&path, "read"))?;
    if buf.len() != expected {
        return Err(KeyError::BadLength {
            path,
            kind: kind.name(),
            len: buf.len() as u64,
            expected,
        });
    }
    if &buf[..16] != MAGIC || buf[16] != kind as u8 {
        return Err(KeyError::BadHeader {
            path,
            kind: kind.name(),
        });
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + 32]);
    let stored_public = &buf[HEADER_LEN + 32..HEADER_LEN + 64];
    let public = match kind {
        KeyKind::Identity => SigningKey::from_bytes(&secret).verifying_key().to_bytes(),
        KeyKind::Link => LinkSecretKey::from_bytes(*secret).public(),
        KeyKind::Onion => OnionSecretKey::from_bytes(&secret).public().to_bytes(),
    };
    if public.as_slice() != stored_public {
        return Err(KeyError::Corrupt {
            path,
            kind: kind.name(),
        });
    }
    let created = if kind == KeyKind::Onion {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[HEADER_LEN + 64..HEADER_LEN + 72]);
        u64::from_be_bytes(b)
    } else {
        0
    };
    Ok(Some(KeyFile { secret, created }))
}

/// Writes a key file atomically with mode 0600.
fn write_key(
    dir: &Path,
    name: &str,
    kind: KeyKind,
    secret: &[u8; 32],
    public: &[u8; 32],
    created: Option<u64>,
) -> Result<(), KeyError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(kind.file_len()));
    buf.extend_from_slice(MAGIC);
    buf.push(kind as u8);
    buf.extend_from_slice(secret);
    buf.extend_from_slice(public);
    if let Some(c) = created {
        buf.extend_from_slice(&c.to_be_bytes());
    }
    write_atomic(dir, name, &buf)
}

/// Writes `bytes` to `dir/name` atomically: a `0600` temporary file created with `create_new`,
/// fsync, rename over the target, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    remove_if_exists(&tmp)?; // left over by a crash
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    f.write_all(bytes).map_err(io_err(&tmp, "write"))?;
    f.sync_all().map_err(io_err(&tmp, "sync"))?;
    drop(f);
    fs::rename(&tmp, &target).map_err(io_err(&target, "rename into place"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn key(b: u8) -> OnionSecretKey {
        OnionSecretKey::from_bytes(&[b; 32])
    }

    #[test]
    fn plan_rotates_after_lifetime_and_drops_after_grace() {
        let p = RotationPolicy::default();
        let t0 = 1_800_000_000;
        let mut ring = OnionKeyRing::new(key(1), t0);
        assert!(ring.plan(t0, &p).is_noop());
        assert!(ring.plan(t0 + p.lifetime_secs - 1, &p).is_noop());
        let t1 = t0 + p.lifetime_secs;
        let plan = ring.plan(t1, &p);
        assert!(plan.rotate && !plan.drop_previous);
        ring.apply(plan, t1, Some(key(2)));
        assert_eq!(ring.secrets().len(), 2);
        assert_eq!(ring.current().0.public(), key(2).public());
        assert_eq!(ring.previous().unwrap().0.public(), key(1).public());
        assert_eq!(ring.next_event(&p), t1 + p.grace_secs);
        assert!(ring.plan(t1 + p.grace_secs - 1, &p).is_noop());
        let plan = ring.plan(t1 + p.grace_secs, &p);
        assert_eq!(
            plan,
            RotationPlan {
                rotate: false,
                drop_previous: true
            }
        );
        ring.apply(plan, t1 + p.grace_secs, None);
        assert_eq!(ring.secrets().len(), 1);
        assert_eq!(ring.current().1, t1);
    }

    #[test]
    fn descriptor_windows_cover_grace() {
        let p = RotationPolicy::default();
        let ring = OnionKeyRing::with_previous(key(2), 1000, key(1), 10);
        let d = ring.descriptor_keys(&p);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].valid_after, 1000);
        assert_eq!(d[0].valid_until, 1000 + p.lifetime_secs + p.grace_secs);
        assert_eq!(d[1].valid_until, 1000 + p.grace_secs);
        assert_eq!(d[1].key, key(1).public().to_bytes());
    }

    #[test]
    fn clock_jump_back_forces_rotation() {
        let p = RotationPolicy::default();
        let ring = OnionKeyRing::new(key(1), 10 * p.lifetime_secs);
        assert!(ring.plan(p.lifetime_secs, &p).rotate);
    }
}
