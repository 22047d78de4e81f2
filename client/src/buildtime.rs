//! The circuit build timeout, learned from observed build times (Tor's path-spec §2.4, in
//! small). Sans-IO: durations go in, the current timeout comes out.
//!
//! The estimator keeps the last [`BuildTimeConfig::window`] build times. Before it has
//! [`BuildTimeConfig::min_samples`] of them it answers [`BuildTimeConfig::initial`]; after,
//! the timeout is the [`BuildTimeConfig::quantile`] of the recent times multiplied by
//! [`BuildTimeConfig::multiplier_pct`], clamped to `[floor, ceiling]`. A build that timed out
//! is recorded as having taken the whole timeout, so a network that became slower raises the
//! timeout instead of failing every build: with a quantile below 1, it takes a run of
//! timeouts to move it, and a single slow outlier does not.

use std::collections::VecDeque;
use std::time::Duration;

/// Settings of the build-timeout estimator.
#[derive(Debug, Clone)]
pub struct BuildTimeConfig {
    /// Timeout before enough samples.
    pub initial: Duration,
    /// Samples needed before the learned timeout is used.
    pub min_samples: usize,
    /// Recent samples kept.
    pub window: usize,
    /// Quantile of recent build times, in percent (Tor uses the 80th percentile of a fit).
    pub quantile_pct: u8,
    /// The timeout is the quantile times this, in percent.
    pub multiplier_pct: u32,
    /// Lowest learned timeout (a loaded machine must not lose every build to scheduling).
    pub floor: Duration,
    /// Highest learned timeout.
    pub ceiling: Duration,
}

impl Default for BuildTimeConfig {
    fn default() -> Self {
        BuildTimeConfig {
            initial: Duration::from_secs(10),
            min_samples: 10,
            window: 100,
            quantile_pct: 90,
            multiplier_pct: 300,
            floor: Duration::from_millis(1500),
            ceiling: Duration::from_secs(60),
        }
    }
}

/// Learns the build timeout from recent build times.
#[derive(Debug, Clone)]
pub struct BuildTimeEstimator {
    cfg: BuildTimeConfig,
    samples: VecDeque<Duration>,
    timeouts: u64,
    builds: u64,
}

impl BuildTimeEstimator {
    /// An estimator with no samples.
    pub fn new(cfg: BuildTimeConfig) -> Self {
        BuildTimeEstimator {
            samples: VecDeque::with_capacity(cfg.window.max(1)),
            cfg,
            timeouts: 0,
            builds: 0,
        }
    }

    fn push(&mut self, d: Duration) {
        if self.samples.len() >= self.cfg.window.max(1) {
            self.samples.pop_front();
        }
        self.samples.push_back(d);
    }

    /// Records a circuit that was built in `took`.
    pub fn record_success(&mut self, took: Duration) {
        self.builds += 1;
        self.push(took);
    }

    /// Records a build abandoned after `timeout` (the timeout this estimator gave).
    pub fn record_timeout(&mut self, timeout: Duration) {
        self.timeouts += 1;
        self.push(timeout);
    }

    /// Samples currently held.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Builds recorded as successes, and as timeouts, since the start.
    pub fn counts(&self) -> (u64, u64) {
        (self.builds, self.timeouts)
    }

    /// The `pct` percentile of the recent samples (nearest rank), if any.
    pub fn quantile(&self, pct: u8) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = self.samples.iter().copied().collect();
        v.sort_unstable();
        let pct = usize::from(pct.min(100));
        // Nearest rank: ceil(pct/100 × n), 1-based.
        let rank = (pct * v.len()).div_ceil(100).max(1);
        v.get(rank - 1).copied()
    }

    /// The timeout to give the next build.
    pub fn timeout(&self) -> Duration {
        if self.samples.len() < self.cfg.min_samples {
            return self.cfg.initial;
        }
        let q = self
            .quantile(self.cfg.quantile_pct)
            .unwrap_or(self.cfg.initial);
        let t = q
            .checked_mul(self.cfg.multiplier_pct)
            .map_or(self.cfg.ceiling, |x| x / 100);
        t.clamp(self.cfg.floor, self.cfg.ceiling.max(self.cfg.floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn initial_until_enough_samples() {
        let mut e = BuildTimeEstimator::new(BuildTimeConfig::default());
        for _ in 0..9 {
            e.record_success(ms(2));
            assert_eq!(e.timeout(), Duration::from_secs(10));
        }
        e.record_success(ms(2));
        // Learned: 2 ms × 3 is below the floor.
        assert_eq!(e.timeout(), ms(1500));
    }

    #[test]
    fn learns_a_high_quantile() {
        let cfg = BuildTimeConfig {
            floor: ms(1),
            ..BuildTimeConfig::default()
        };
        let mut e = BuildTimeEstimator::new(cfg);
        for i in 1..=100 {
            e.record_success(ms(i * 10));
        }
        assert_eq!(e.quantile(90), Some(ms(900)));
        assert_eq!(e.quantile(50), Some(ms(500)));
        assert_eq!(e.quantile(100), Some(ms(1000)));
        assert_eq!(e.timeout(), ms(2700));
        // One slow outlier does not move the 90th percentile much.
        e.record_success(Duration::from_secs(30));
        assert!(e.timeout() < ms(3000));
    }

    #[test]
    fn window_forgets_old_samples_and_timeouts_raise_it() {
        let cfg = BuildTimeConfig {
            window: 20,
            min_samples: 5,
            floor: ms(1),
            ..BuildTimeConfig::default()
        };
        let mut e = BuildTimeEstimator::new(cfg);
        for _ in 0..20 {
            e.record_success(ms(1000));
        }
        assert_eq!(e.timeout(), ms(3000));
        for _ in 0..20 {
            e.record_success(ms(10));
        }
        assert_eq!(e.samples(), 20);
        assert_eq!(e.timeout(), ms(30));
        // The network got slow: every build times out; the timeout grows until builds fit.
        let mut t = e.timeout();
        for _ in 0..20 {
            e.record_timeout(t);
            t = e.timeout();
        }
        assert!(t > ms(1000), "{t:?}");
        assert_eq!(e.counts(), (40, 20));
    }

    #[test]
    fn clamped_to_ceiling() {
        let mut e = BuildTimeEstimator::new(BuildTimeConfig::default());
        for _ in 0..10 {
            e.record_success(Duration::from_secs(100));
        }
        assert_eq!(e.timeout(), Duration::from_secs(60));
    }

    proptest::proptest! {
        /// Whatever was observed: the initial timeout until `min_samples`, then
        /// quantile × multiplier of the last `window` samples, within [floor, ceiling].
        #[test]
        fn timeout_follows_the_recent_observations(
            obs in proptest::collection::vec((0u64..20_000, proptest::bool::ANY), 0..60),
            window in 1usize..30,
            min_samples in 1usize..10,
        ) {
            let cfg = BuildTimeConfig {
                window,
                min_samples,
                floor: ms(50),
                ceiling: ms(30_000),
                ..BuildTimeConfig::default()
            };
            let mut e = BuildTimeEstimator::new(cfg.clone());
            let mut recent = std::collections::VecDeque::new();
            for (m, timed_out) in obs {
                if timed_out {
                    let t = e.timeout();
                    e.record_timeout(t);
                    recent.push_back(t);
                } else {
                    e.record_success(ms(m));
                    recent.push_back(ms(m));
                }
                if recent.len() > window {
                    recent.pop_front();
                }
                let t = e.timeout();
                proptest::prop_assert!(t >= cfg.floor && t <= cfg.ceiling.max(cfg.initial));
                if recent.len() < min_samples {
                    proptest::prop_assert_eq!(t, cfg.initial);
                } else {
                    let mut v: Vec<Duration> = recent.iter().copied().collect();
                    v.sort_unstable();
                    let q = v[(90 * v.len()).div_ceil(100).max(1) - 1];
                    proptest::prop_assert_eq!(t, (q * 3).clamp(cfg.floor, cfg.ceiling));
                }
            }
        }
    }
}
