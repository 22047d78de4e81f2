//! Runs a test body inside fresh network, PID and mount namespaces, for tests that create
//! TUN interfaces, routes and mounts: nothing they make outlives them (the anonymous
//! namespaces vanish when the re-executed test process exits, and the PID namespace kills
//! every process it started, even after a crash).
//!
//! The test re-executes its own binary under `unshare --net --pid --fork --mount
//! --mount-proc`, running only itself, with [`INNER_ENV`] naming it. Requirements: root (or
//! CAP_SYS_ADMIN + CAP_NET_ADMIN), `/dev/net/tun`, util-linux `unshare`, iproute2 `ip`.
//!
//! Skip or fail: without them the test prints a loud `SKIPPED` line and passes, unless
//! `ONIONVPN_REQUIRE_TUN=1` is set, which makes it fail (CI runs as root, where they exist,
//! so there the tests always run).

// Test-harness helpers: a failure here must fail the calling test loudly.
#![allow(clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to the test's name) in the re-executed process.
pub const INNER_ENV: &str = "ONIONVPN_NETNS_INNER";
/// Set to 1 to fail rather than skip when TUN tests cannot run.
pub const REQUIRE_ENV: &str = "ONIONVPN_REQUIRE_TUN";

/// What is missing for namespace tests, if anything.
pub fn missing_requirements() -> Option<String> {
    // The effective uid from /proc: `geteuid` would need unsafe code, which is forbidden.
    let uid_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !uid_root {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist".into());
    }
    for tool in ["unshare", "ip", "mount"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Whether this process is the re-executed copy for test `name` (then run the body).
/// Otherwise re-executes the test binary for `name` inside new namespaces, waits (at most
/// `limit`), asserts it passed, and returns false. Panics if the child failed or timed out.
pub fn run_inside(name: &str, limit: Duration) -> bool {
    if std::env::var(INNER_ENV).is_ok_and(|v| v == name) {
        return true;
    }
    if let Some(why) = missing_requirements() {
        let require = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
        eprintln!(
            "\n*** {name}: SKIPPED: {why}; TUN tests need root and /dev/net/tun \
             (set {REQUIRE_ENV}=1 to make this a failure) ***\n"
        );
        assert!(!require, "{name}: {why} and {REQUIRE_ENV}=1");
        return false;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut child = Command::new("unshare")
        .args(["--net", "--pid", "--fork", "--mount", "--mount-proc", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INNER_ENV, name)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run unshare: {e}"));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > limit => {
                // Killing `unshare` (PID 1's parent) tears the whole namespace down.
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: timed out after {limit:?} inside the namespace");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{name}: waiting for the namespace: {e}"),
        }
    };
    assert!(
        status.success(),
        "{name} failed inside its namespace: {status}"
    );
    false
}

/// Runs a command and returns its stdout; panics with its stderr on failure.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
