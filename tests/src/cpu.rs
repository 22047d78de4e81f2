//! CPU time of this process per thread group, and of a child process, read from `/proc`
//! (Linux). Benchmarks on a shared machine use it to say where CPU goes: wall time there
//! depends on everything else that runs.
//!
//! Threads are grouped by name (`comm`, which the kernel cuts to 15 bytes): each tokio
//! runtime names its threads (`onionvpn-relay`, `onionvpn-ldk`, the default
//! `tokio-runtime-w`). Threads that exited between two snapshots are not in the second one;
//! [`CpuSnapshot::delta`] puts their CPU under [`EXITED`] (from the process total).

use std::collections::BTreeMap;
use std::time::Duration;

/// Group name, in a delta, for the CPU of threads that exited between the two snapshots.
pub const EXITED: &str = "(exited threads)";

/// Kernel clock ticks per second of `utime`/`stime` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// CPU used so far by every live thread of this process, by thread id, with its name.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    threads: BTreeMap<u32, (String, Duration)>,
    process: Duration,
}

/// `utime + stime` and `comm` of a `/proc/.../stat` line.
fn parse_stat(s: &str) -> Option<(String, Duration)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime(11) stime(12).
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let ticks = utime.saturating_add(stime);
    Some((comm, Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)))
}

impl CpuSnapshot {
    /// Reads every thread of this process (an empty snapshot where `/proc` is missing).
    pub fn now() -> CpuSnapshot {
        let mut threads = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(t) = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .as_deref()
                    .and_then(parse_stat)
                {
                    threads.insert(tid, t);
                }
            }
        }
        CpuSnapshot {
            threads,
            process: crate::process_cpu_time(),
        }
    }

    /// CPU used between `earlier` and this snapshot, by thread group (name), including
    /// [`EXITED`].
    pub fn delta(&self, earlier: &CpuSnapshot) -> BTreeMap<String, Duration> {
        let mut out: BTreeMap<String, Duration> = BTreeMap::new();
        let mut seen = Duration::ZERO;
        for (tid, (name, cpu)) in &self.threads {
            let before = earlier
                .threads
                .get(tid)
                .filter(|(n, _)| n == name)
                .map_or(Duration::ZERO, |(_, c)| *c);
            let d = cpu.saturating_sub(before);
            seen += d;
            *out.entry(name.clone()).or_default() += d;
        }
        // Tick-rounded per-thread figures against the exact process clock: only a
        // difference above the rounding counts as exited threads.
        let rest = self
            .process
            .saturating_sub(earlier.process)
            .saturating_sub(seen);
        let rounding = Duration::from_millis(10 * (self.threads.len() as u64 + 1));
        if rest > rounding {
            out.insert(EXITED.to_owned(), rest);
        }
        out.retain(|_, d| !d.is_zero());
        out
    }
}

/// CPU used so far by process `pid` (all its threads), if it exists.
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s).map(|(_, d)| d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        let (name, cpu) = parse_stat(line).unwrap();
        assert_eq!(name, "a (b) c");
        assert_eq!(cpu, Duration::from_secs(3));
        assert!(parse_stat("42 (x) S 1").is_none());
    }

    #[test]
    fn a_busy_thread_shows_in_its_group() {
        let before = CpuSnapshot::now();
        let (spun_tx, spun_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("cpu-test-busy".into())
            .spawn(move || {
                let end = std::time::Instant::now() + Duration::from_millis(300);
                let mut x = 0u64;
                while std::time::Instant::now() < end {
                    x = x.wrapping_mul(31).wrapping_add(1);
                }
                std::hint::black_box(x);
                spun_tx.send(()).unwrap();
                // Stay alive until the second snapshot is taken.
                let _ = end_rx.recv_timeout(Duration::from_secs(10));
            })
            .unwrap();
        spun_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let d = CpuSnapshot::now().delta(&before);
        end_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            d.get("cpu-test-busy").is_some_and(|c| !c.is_zero()),
            "{d:?}"
        );
    }
}
