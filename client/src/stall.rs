//! Stall detection for one circuit (issue 6: a relay that takes payment and stops relaying).
//! Sans-IO: the shell reports what happens on the circuit with the current time; the watch
//! answers when the circuit counts as stalled and whether a circuit that ended should be
//! blamed as one.
//!
//! - A circuit is **stalled** when at least one of its streams is waiting for data and
//!   nothing has arrived on the circuit for [`StallWatch::timeout`]. What "waiting" means is
//!   the shell's call: the client counts a BEGIN not yet answered (the exit answers every
//!   BEGIN, CONNECTED or END, within its own connect timeout); the simulator, whose
//!   application knows how many bytes it asked for, counts a download not yet complete.
//! - The client cannot tell which hop stopped, so a stalled circuit's hops are all avoided.
//! - A circuit that **ends for another reason** (a hop destroyed it, the channel closed, a
//!   payment to another hop failed) while a stream was waiting and after its hops were paid
//!   is blamed the same way ([`StallWatch::blame_on_end`]): a relay that took the payment
//!   and stopped may be on it, and the circuit died before the stall could show. Without
//!   this, that relay would be paid again on the client's next circuit through it.

use std::time::{Duration, Instant};

/// Settings of stall detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallConfig {
    /// The stall timeout never goes below this. It must exceed the time an honest exit can
    /// take to answer a BEGIN (its DNS and connect timeouts, 10 s each by default, then a
    /// round trip), or a slow destination looks like a stalled circuit.
    pub min_timeout: Duration,
    /// The stall timeout is at least this many times the circuit's build time (a slow
    /// circuit gets longer).
    pub build_multiple: u32,
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig {
            min_timeout: Duration::from_secs(15),
            build_multiple: 4,
        }
    }
}

impl StallConfig {
    /// The stall timeout of a circuit that took `build` to build.
    pub fn timeout(&self, build: Duration) -> Duration {
        build
            .saturating_mul(self.build_multiple)
            .max(self.min_timeout)
    }
}

/// Watches one circuit for stalls.
#[derive(Debug, Clone)]
pub struct StallWatch {
    timeout: Duration,
    /// Streams waiting for data.
    waiting: usize,
    /// Since when the circuit has been silent while a stream waits (`None`: none waits).
    since: Option<Instant>,
    /// Whether the circuit's hops have been paid.
    paid: bool,
}

impl StallWatch {
    /// A watch with no stream waiting, declaring a stall after `timeout` of silence.
    pub fn new(timeout: Duration) -> Self {
        StallWatch {
            timeout,
            waiting: 0,
            since: None,
            paid: false,
        }
    }

    /// The stall timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A stream starts waiting for data at `now`.
    pub fn wait(&mut self, now: Instant) {
        if self.waiting == 0 {
            self.since = Some(now);
        }
        self.waiting += 1;
    }

    /// A stream stopped waiting (it got its answer, finished, or was closed).
    pub fn stop_waiting(&mut self) {
        self.waiting = self.waiting.saturating_sub(1);
        if self.waiting == 0 {
            self.since = None;
        }
    }

    /// Something arrived on the circuit at `now`: it is alive.
    pub fn received(&mut self, now: Instant) {
        if self.since.is_some() {
            self.since = Some(now);
        }
    }

    /// The circuit's hops have been paid (a payment went out to one of them).
    pub fn paid(&mut self) {
        self.paid = true;
    }

    /// Whether a stream is waiting for data.
    pub fn is_waiting(&self) -> bool {
        self.waiting > 0
    }

    /// When the circuit counts as stalled if nothing arrives before (`None`: no stream
    /// waits, no deadline).
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.timeout)
    }

    /// Whether the circuit is stalled at `now`.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// The circuit ended (not closed by the client): whether to avoid its hops as for a
    /// stall. True when a stream was waiting for data and the hops had been paid.
    pub fn blame_on_end(&self) -> bool {
        self.waiting > 0 && self.paid
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_timeout_follows_the_build_time_above_the_minimum() {
        let c = StallConfig::default();
        assert_eq!(c.timeout(Duration::from_millis(300)), c.min_timeout);
        assert_eq!(c.timeout(10 * S), 40 * S);
        let c = StallConfig {
            min_timeout: 2 * S,
            build_multiple: 3,
        };
        assert_eq!(c.timeout(Duration::from_millis(500)), 2 * S);
        assert_eq!(c.timeout(S), 3 * S);
    }

    #[test]
    fn silence_while_a_stream_waits_is_a_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(10 * S);
        // Nobody waits: silence is no stall.
        assert_eq!(w.deadline(), None);
        assert!(!w.is_stalled(t0 + 100 * S));
        w.wait(t0);
        assert_eq!(w.deadline(), Some(t0 + 10 * S));
        assert!(!w.is_stalled(t0 + 9 * S));
        // A cell moves the deadline.
        w.received(t0 + 5 * S);
        assert!(!w.is_stalled(t0 + 14 * S));
        assert!(w.is_stalled(t0 + 15 * S));
        // A second stream starting to wait does not restart the clock.
        w.wait(t0 + 12 * S);
        assert_eq!(w.deadline(), Some(t0 + 15 * S));
        // Both answered: no deadline; a cell then does not arm one.
        w.stop_waiting();
        assert!(w.is_waiting());
        w.stop_waiting();
        assert!(!w.is_waiting());
        assert_eq!(w.deadline(), None);
        w.received(t0 + 20 * S);
        assert_eq!(w.deadline(), None);
        // More answers than waits do not underflow.
        w.stop_waiting();
        w.wait(t0 + 30 * S);
        assert_eq!(w.deadline(), Some(t0 + 40 * S));
    }

    #[test]
    fn an_end_is_blamed_only_with_a_waiting_stream_on_a_paid_circuit() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(10 * S);
        w.wait(t0);
        // Not paid: the relays took nothing, there is nothing to protect.
        assert!(!w.blame_on_end());
        w.paid();
        assert!(w.blame_on_end());
        // Data arriving does not clear the blame while the stream still waits: the data may
        // have crossed the stopping relay before its payment arrived.
        w.received(t0 + S);
        assert!(w.blame_on_end());
        // Nothing waits: an end then says nothing about the hops.
        w.stop_waiting();
        assert!(!w.blame_on_end());
    }
}
