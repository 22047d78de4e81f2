#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use onionvpn_relay::keys::{
    KeyError, KeyStore, RotationPolicy, IDENTITY_FILE, KEYS_DIR, LINK_FILE, ONION_FILE,
    ONION_PREV_FILE,
};

const T0: u64 = 1_800_000_000;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn fresh() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    (tmp, data)
}

#[test]
fn files_are_0600_and_dirs_0700() {
    let (_tmp, data) = fresh();
    let ks = KeyStore::load_or_create(&data, T0).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(KEYS_DIR)), 0o700);
    for f in [IDENTITY_FILE, LINK_FILE, ONION_FILE] {
        let p = data.join(KEYS_DIR).join(f);
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    assert!(!data.join(KEYS_DIR).join(ONION_PREV_FILE).exists());
    assert_eq!(ks.changes().created.len(), 3);
    // No temporary files left behind.
    let names: Vec<_> = fs::read_dir(data.join(KEYS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn reload_gives_same_public_keys() {
    let (_tmp, data) = fresh();
    let a = KeyStore::load_or_create(&data, T0).unwrap();
    let b = KeyStore::load_or_create(&data, T0 + 3600).unwrap();
    assert!(b.changes().created.is_empty());
    assert_eq!(a.identity_public(), b.identity_public());
    assert_eq!(a.link().public(), b.link().public());
    assert_eq!(
        a.onion().current().0.public(),
        b.onion().current().0.public()
    );
    assert_eq!(b.onion().current().1, T0);
    // A second data dir gets different keys.
    let (_tmp2, other) = fresh();
    let c = KeyStore::load_or_create(&other, T0).unwrap();
    assert_ne!(a.identity_public(), c.identity_public());
}

#[test]
fn group_readable_key_file_is_refused() {
    let (_tmp, data) = fresh();
    KeyStore::load_or_create(&data, T0).unwrap();
    let p = data.join(KEYS_DIR).join(LINK_FILE);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let err = KeyStore::load_or_create(&data, T0).unwrap_err();
    match &err {
        KeyError::InsecureFile { path, mode } => {
            assert_eq!(path, &p);
            assert_eq!(*mode, 0o644);
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(LINK_FILE) && msg.contains("0644"), "{msg}");
}

#[test]
fn insecure_directories_are_refused() {
    let (_tmp, data) = fresh();
    KeyStore::load_or_create(&data, T0).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        KeyStore::load_or_create(&data, T0),
        Err(KeyError::InsecureDir { mode: 0o777, .. })
    ));
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    // A readable data dir is fine; a readable key dir is not.
    KeyStore::load_or_create(&data, T0).unwrap();
    let keys = data.join(KEYS_DIR);
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o750)).unwrap();
    match KeyStore::load_or_create(&data, T0) {
        Err(KeyError::InsecureDir { path, mode }) => {
            assert_eq!(path, keys);
            assert_eq!(mode, 0o750);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn symlinked_key_file_is_refused() {
    let (tmp, data) = fresh();
    KeyStore::load_or_create(&data, T0).unwrap();
    let p = data.join(KEYS_DIR).join(IDENTITY_FILE);
    let elsewhere = tmp.path().join("id");
    fs::rename(&p, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
    assert!(matches!(
        KeyStore::load_or_create(&data, T0),
        Err(KeyError::NotAFile { path }) if path == p
    ));
}

#[test]
fn truncated_or_corrupt_key_file_gives_typed_error_naming_file() {
    let (_tmp, data) = fresh();
    KeyStore::load_or_create(&data, T0).unwrap();
    let dir = data.join(KEYS_DIR);

    // Truncated identity.
    let id = dir.join(IDENTITY_FILE);
    let good = fs::read(&id).unwrap();
    fs::write(&id, &good[..40]).unwrap();
    let err = KeyStore::load_or_create(&data, T0).unwrap_err();
    assert!(
        matches!(&err, KeyError::BadLength { path, len: 40, .. } if *path == id),
        "{err:?}"
    );
    assert!(err.to_string().contains(IDENTITY_FILE));
    fs::write(&id, &good).unwrap();

    // One flipped bit in the link secret.
    let link = dir.join(LINK_FILE);
    let mut bytes = fs::read(&link).unwrap();
    bytes[20] ^= 0x01;
    fs::write(&link, &bytes).unwrap();
    let err = KeyStore::load_or_create(&data, T0).unwrap_err();
    assert!(
        matches!(&err, KeyError::Corrupt { path, kind: "link" } if *path == link),
        "{err:?}"
    );

    // Onion key file holding another kind of key.
    fs::write(&link, &good).unwrap(); // an identity file, right length for link
    let err = KeyStore::load_or_create(&data, T0).unwrap_err();
    assert!(
        matches!(&err, KeyError::BadHeader { path, kind: "link" } if *path == link),
        "{err:?}"
    );
    // Nothing was overwritten by the failed loads.
    assert_eq!(fs::read(&id).unwrap(), good);
}

#[test]
fn rotation_keeps_previous_for_grace_then_drops_it() {
    let (_tmp, data) = fresh();
    let p = RotationPolicy::default();
    let first = KeyStore::load_or_create_with(&data, p, T0).unwrap();
    let k1 = first.onion().current().0.public();
    let id = first.identity_public();
    drop(first);

    // Just before the lifetime: nothing changes.
    let s = KeyStore::load_or_create_with(&data, p, T0 + p.lifetime_secs - 1).unwrap();
    assert!(!s.changes().rotated);
    assert_eq!(s.onion().secrets().len(), 1);

    // At the lifetime: a new current key, the old one kept as previous, on disk too.
    let t1 = T0 + p.lifetime_secs;
    let s = KeyStore::load_or_create_with(&data, p, t1).unwrap();
    assert!(s.changes().rotated);
    let k2 = s.onion().current().0.public();
    assert_ne!(k1, k2);
    assert_eq!(s.onion().previous().unwrap().0.public(), k1);
    assert_eq!(s.identity_public(), id, "identity never rotates");
    assert_eq!(s.descriptor_onion_keys().len(), 2);
    assert_eq!(
        mode(&data.join(KEYS_DIR).join(ONION_PREV_FILE)),
        0o600,
        "previous key file"
    );
    drop(s);

    // During the grace period a restart still has both.
    let s = KeyStore::load_or_create_with(&data, p, t1 + p.grace_secs - 1).unwrap();
    assert!(!s.changes().rotated && !s.changes().dropped_previous);
    assert_eq!(s.onion().current().0.public(), k2);
    assert_eq!(s.onion().previous().unwrap().0.public(), k1);
    drop(s);

    // After the grace period the previous key is gone, from memory and from disk.
    let s = KeyStore::load_or_create_with(&data, p, t1 + p.grace_secs).unwrap();
    assert!(s.changes().dropped_previous);
    assert!(s.onion().previous().is_none());
    assert_eq!(s.onion().current().0.public(), k2);
    assert!(!data.join(KEYS_DIR).join(ONION_PREV_FILE).exists());
}

#[test]
fn rotate_if_due_on_a_running_store() {
    let (_tmp, data) = fresh();
    let p = RotationPolicy {
        lifetime_secs: 100,
        grace_secs: 10,
    };
    let mut s = KeyStore::load_or_create_with(&data, p, T0).unwrap();
    let k1 = s.onion().current().0.public();
    assert!(s.rotate_if_due(T0 + 99).unwrap().is_noop());
    assert!(s.rotate_if_due(T0 + 100).unwrap().rotate);
    assert_eq!(s.onion().secrets()[1].public(), k1);
    assert!(s.rotate_if_due(T0 + 110).unwrap().drop_previous);
    assert_eq!(s.onion().secrets().len(), 1);
    // The file state matches memory after a reload.
    let r = KeyStore::load_or_create_with(&data, p, T0 + 111).unwrap();
    assert_eq!(
        r.onion().current().0.public(),
        s.onion().current().0.public()
    );
    assert!(r.onion().previous().is_none());
}

#[test]
fn leftover_temp_file_does_not_block_and_debug_hides_secrets() {
    let (_tmp, data) = fresh();
    fs::create_dir_all(data.join(KEYS_DIR)).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(data.join(KEYS_DIR), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(data.join(KEYS_DIR).join(".identity.key.tmp"), b"junk").unwrap();
    let s = KeyStore::load_or_create(&data, T0).unwrap();
    let secret = s.identity().to_bytes();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains(&format!("{:?}", secret)), "{dbg}");
    assert!(!dbg.contains(&format!("{:?}", *s.link().to_bytes())));
    assert!(dbg.contains(&s.identity_public().to_string()));
}
