//! RTT-based congestion control in the style of Tor's Vegas (docs/spec.md, "Flow and congestion control").
//!
//! Sans-IO: the caller passes the current [`Instant`] in (the simulator passes virtual ones).
//!
//! Per circuit and direction, between the client and the hop that ends its streams:
//!
//! - the **sender** ([`Vegas`]) counts DATA cells in flight and may send while
//!   `inflight < cwnd`; every `sendme_inc`-th DATA cell it sends is a *triggering* cell whose
//!   send time it notes ([`Vegas::on_data_sent`] returns `true`; the caller notes the cell's tag);
//! - the **receiver** ([`SendmeSchedule`]) answers every `sendme_inc`-th DATA cell it receives
//!   with a circuit-level SENDME carrying that cell's tag;
//! - each SENDME acknowledges `sendme_inc` cells and yields one RTT sample (triggering cell sent
//!   → SENDME received), from which the sender keeps the minimum (`BASE_RTT`) and an EWMA, and
//!   estimates `BDP = cwnd × min_rtt / ewma_rtt` and `queue_use = cwnd − BDP`: the cells it
//!   keeps queued somewhere on the path. Vegas steers `queue_use` into `[alpha, beta]`.
//!
//! Stream flow control is separate and per stream: [`XoffMonitor`] on the receiving edge
//! says when to send XOFF/XON, [`StreamFlow`] on the sending edge says whether to read more
//! from the stream's source.
//!
//! There is no fixed window per stream: a stream is limited only by the circuit's `cwnd` and
//! by its peer's XOFF.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::consts::RELAY_BODY_MAX;

/// Default number of DATA cells acknowledged by one SENDME (Tor's `cc_sendme_inc`).
pub const DEFAULT_SENDME_INC: u8 = 31;
/// Tor's `OUTBUF_CELLS`: the unit of the Vegas queue thresholds.
pub const OUTBUF_CELLS: u64 = 62;
/// Default XOFF threshold of a stream's edge output buffer: 500 cells' worth of DATA.
pub const DEFAULT_XOFF_BYTES: usize = 500 * RELAY_BODY_MAX;

/// Errors of congestion and flow control. Each is a protocol violation by the peer: the
/// circuit is torn down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CcError {
    /// A SENDME arrived while no triggering cell was awaiting one (more SENDMEs than
    /// `sendme_inc`-blocks of DATA sent): forged or duplicated acknowledgements.
    #[error("unexpected SENDME: no acknowledgement outstanding ({inflight} cells in flight)")]
    UnexpectedSendme {
        /// Cells in flight when it arrived.
        inflight: u64,
    },
    /// A second XOFF on a stream already paused by XOFF.
    #[error("duplicate XOFF on a stream already paused")]
    DuplicateXoff,
    /// Parameters that cannot work together (from [`VegasParams::validate`]).
    #[error("invalid congestion control parameters: {reason}")]
    InvalidParams {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Parameters of [`Vegas`]; the defaults are Tor's for exits (proposal 324, tor's source).
///
/// All window sizes and thresholds are in cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VegasParams {
    /// DATA cells per SENDME; must equal the receiver's (negotiated in the circuit handshake).
    pub sendme_inc: u8,
    /// Initial congestion window (4 × 31).
    pub cwnd_init: u64,
    /// Smallest congestion window.
    pub cwnd_min: u64,
    /// Steady-state step: cwnd grows or shrinks by this much per update.
    pub cwnd_inc: u64,
    /// Steady-state updates per congestion window of acknowledgements (Tor's `cc_cwnd_inc_rate`).
    pub cwnd_inc_rate: u64,
    /// Slow start ends at the latest when cwnd reaches this (Tor's `cc_ss_max`).
    pub ss_max: u64,
    /// Largest congestion window (Tor's `cc_cwnd_max`). On a paid circuit the client asks
    /// the exit for one ([`crate::ext::WindowLimit`]): what the exit may send past the last
    /// acknowledged cell bounds how far a download overruns what the client has paid.
    pub cwnd_max: u64,
    /// Above this cwnd, slow start is "limited" (RFC 3742): it grows by at most
    /// `limited_ss_cap / 2` cells per round trip instead of doubling.
    pub limited_ss_cap: u64,
    /// Steady state: grow while `queue_use < alpha`.
    pub alpha: u64,
    /// Steady state: shrink while `queue_use > beta`.
    pub beta: u64,
    /// Slow start ends when `queue_use ≥ gamma`; cwnd is then set to `BDP + gamma`.
    pub gamma: u64,
    /// Steady state: when `queue_use > delta`, cwnd drops at once to `BDP + delta − cwnd_inc`.
    pub delta: u64,
    /// The RTT EWMA spans this percentage of a cwnd's SENDMEs (`N`, clamped to `[2, ewma_max]`).
    pub ewma_cwnd_pct: u64,
    /// Upper bound of the EWMA's `N`.
    pub ewma_max: u64,
    /// When cwnd sits at `cwnd_min` outside slow start, `min_rtt` moves this percentage of
    /// the way to the EWMA (recovers from a longer new base RTT, e.g. a route change).
    pub rtt_reset_pct: u64,
    /// cwnd counts as "full" (allowed to grow) when `inflight + cwnd_full_gap × sendme_inc ≥ cwnd`.
    pub cwnd_full_gap: u64,
    /// … and stops counting as full at a cwnd update if `inflight < cwnd_full_minpct % × cwnd`.
    pub cwnd_full_minpct: u64,
}

impl Default for VegasParams {
    fn default() -> Self {
        Self {
            sendme_inc: DEFAULT_SENDME_INC,
            cwnd_init: 124,
            cwnd_min: 31,
            cwnd_inc: 31,
            cwnd_inc_rate: 1,
            ss_max: 5000,
            cwnd_max: u64::from(u32::MAX),
            limited_ss_cap: 600,
            alpha: 2 * OUTBUF_CELLS,
            beta: 4 * OUTBUF_CELLS,
            gamma: 3 * OUTBUF_CELLS,
            delta: 6 * OUTBUF_CELLS,
            ewma_cwnd_pct: 50,
            ewma_max: 10,
            rtt_reset_pct: 100,
            cwnd_full_gap: 4,
            cwnd_full_minpct: 25,
        }
    }
}

impl VegasParams {
    /// Checks that the parameters make sense together.
    pub fn validate(&self) -> Result<(), CcError> {
        let bad = |reason| Err(CcError::InvalidParams { reason });
        if self.sendme_inc == 0 {
            return bad("sendme_inc is 0");
        }
        if self.cwnd_min < u64::from(self.sendme_inc) {
            return bad("cwnd_min below sendme_inc");
        }
        if self.cwnd_init < self.cwnd_min || self.ss_max < self.cwnd_init {
            return bad("need cwnd_min ≤ cwnd_init ≤ ss_max");
        }
        if self.cwnd_max < self.cwnd_init {
            return bad("need cwnd_init ≤ cwnd_max");
        }
        if self.cwnd_inc == 0 || self.cwnd_inc_rate == 0 {
            return bad("cwnd_inc and cwnd_inc_rate must be positive");
        }
        if !(self.alpha <= self.beta && self.beta <= self.delta) {
            return bad("need alpha ≤ beta ≤ delta");
        }
        if self.rtt_reset_pct > 100 || self.cwnd_full_minpct > 100 {
            return bad("percentages above 100");
        }
        Ok(())
    }

    /// The nearest parameters that pass [`VegasParams::validate`].
    fn normalized(mut self) -> Self {
        self.sendme_inc = self.sendme_inc.max(1);
        let inc = u64::from(self.sendme_inc);
        self.cwnd_min = self.cwnd_min.max(inc);
        self.cwnd_max = self.cwnd_max.max(self.cwnd_min);
        self.cwnd_init = self.cwnd_init.clamp(self.cwnd_min, self.cwnd_max);
        self.ss_max = self.ss_max.max(self.cwnd_init);
        self.cwnd_inc = self.cwnd_inc.max(1);
        self.cwnd_inc_rate = self.cwnd_inc_rate.max(1);
        self.beta = self.beta.max(self.alpha);
        self.delta = self.delta.max(self.beta);
        self.ewma_max = self.ewma_max.max(2);
        self.rtt_reset_pct = self.rtt_reset_pct.min(100);
        self.cwnd_full_minpct = self.cwnd_full_minpct.min(100);
        self
    }
}

/// The sending side of congestion control on one circuit direction (Tor-Vegas).
#[derive(Debug, Clone)]
pub struct Vegas {
    p: VegasParams,
    cwnd: u64,
    inflight: u64,
    in_slow_start: bool,
    /// DATA cells sent so far (modulo sendme_inc: which one triggers a SENDME).
    sent_in_block: u64,
    /// Send times of triggering cells still awaiting their SENDME, oldest first.
    awaiting: VecDeque<Instant>,
    min_rtt: Option<Duration>,
    ewma_rtt: Option<Duration>,
    last_rtt: Option<Duration>,
    /// SENDMEs until the next steady-state cwnd update.
    next_cc_event: u64,
    /// SENDMEs until the next re-evaluation of `cwnd_full`.
    next_cwnd_event: u64,
    cwnd_full: bool,
    /// The last estimates, for inspection.
    bdp: Option<u64>,
    queue_use: Option<u64>,
}

impl Vegas {
    /// A sender in slow start with `cwnd = cwnd_init`. Inconsistent parameters are first
    /// corrected to the nearest valid ones (see [`VegasParams::validate`]).
    pub fn new(params: VegasParams) -> Self {
        let p = params.normalized();
        let mut v = Self {
            cwnd: p.cwnd_init,
            p,
            inflight: 0,
            in_slow_start: true,
            sent_in_block: 0,
            awaiting: VecDeque::new(),
            min_rtt: None,
            ewma_rtt: None,
            last_rtt: None,
            next_cc_event: 0,
            next_cwnd_event: 0,
            cwnd_full: false,
            bdp: None,
            queue_use: None,
        };
        v.next_cc_event = v.cc_update_period();
        v.next_cwnd_event = v.sendmes_per_cwnd();
        v
    }

    fn inc(&self) -> u64 {
        u64::from(self.p.sendme_inc)
    }

    /// SENDMEs per congestion window (rounded, at least 1).
    fn sendmes_per_cwnd(&self) -> u64 {
        ((self.cwnd + self.inc() / 2) / self.inc()).max(1)
    }

    /// SENDMEs between steady-state updates: a cwnd's worth divided by `cwnd_inc_rate`.
    fn cc_update_period(&self) -> u64 {
        let per = self.inc() * self.p.cwnd_inc_rate;
        ((self.cwnd + per / 2) / per).max(1)
    }

    /// The parameters in use.
    pub fn params(&self) -> &VegasParams {
        &self.p
    }

    /// Whether a DATA cell may be sent now: `inflight < cwnd`.
    pub fn can_send(&self) -> bool {
        self.inflight < self.cwnd
    }

    /// Records that a DATA cell was sent at `now`. Returns `true` when this cell is a
    /// triggering cell (every `sendme_inc`-th): the receiver will answer it with a SENDME
    /// carrying its tag, so the caller must note the tag to check that SENDME.
    ///
    /// Call only when [`Vegas::can_send`] is true.
    pub fn on_data_sent(&mut self, now: Instant) -> bool {
        self.inflight = self.inflight.saturating_add(1);
        if self.inflight + self.p.cwnd_full_gap * self.inc() >= self.cwnd {
            self.cwnd_full = true;
        }
        self.sent_in_block += 1;
        if self.sent_in_block == self.inc() {
            self.sent_in_block = 0;
            self.awaiting.push_back(now);
            true
        } else {
            false
        }
    }

    /// Processes a SENDME received at `now` (its tag already checked by the caller): frees
    /// `sendme_inc` cells, takes an RTT sample and updates `cwnd`.
    ///
    /// A SENDME with no triggering cell awaiting one is [`CcError::UnexpectedSendme`]; the
    /// state is left unchanged and the circuit must be torn down.
    pub fn on_sendme(&mut self, now: Instant) -> Result<(), CcError> {
        let sent = self.awaiting.pop_front().ok_or(CcError::UnexpectedSendme {
            inflight: self.inflight,
        })?;
        self.inflight = self.inflight.saturating_sub(self.inc());
        self.update_rtt(now.saturating_duration_since(sent));

        self.next_cc_event = self.next_cc_event.saturating_sub(1);
        self.next_cwnd_event = self.next_cwnd_event.saturating_sub(1);
        self.update_cwnd();

        if self.next_cwnd_event == 0 {
            // Keep counting as full only if the window is still well used.
            if self.inflight * 100 < self.cwnd * self.p.cwnd_full_minpct {
                self.cwnd_full = false;
            }
            self.next_cwnd_event = self.sendmes_per_cwnd();
        }
        if self.next_cc_event == 0 {
            self.next_cc_event = self.cc_update_period();
        }
        Ok(())
    }

    fn update_rtt(&mut self, rtt: Duration) {
        // A zero sample (timer granularity, or a zero-latency simulated path) carries no
        // information about queueing; keep the previous estimates.
        if rtt.is_zero() {
            return;
        }
        self.last_rtt = Some(rtt);
        let n = (self.cwnd * self.p.ewma_cwnd_pct / 100 / self.inc()).clamp(2, self.p.ewma_max);
        self.ewma_rtt = Some(match self.ewma_rtt {
            None => rtt,
            Some(prev) => {
                let (r, e) = (rtt.as_nanos(), prev.as_nanos());
                nanos((2 * r + u128::from(n - 1) * e) / u128::from(n + 1))
            }
        });
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        if !self.in_slow_start && self.cwnd <= self.p.cwnd_min {
            if let (Some(min), Some(ewma)) = (self.min_rtt, self.ewma_rtt) {
                let pct = u128::from(self.p.rtt_reset_pct);
                self.min_rtt = Some(nanos(
                    (min.as_nanos() * (100 - pct) + ewma.as_nanos() * pct) / 100,
                ));
            }
        }
    }

    fn update_cwnd(&mut self) {
        let (Some(min), Some(ewma)) = (self.min_rtt, self.ewma_rtt) else {
            return; // no RTT estimate yet
        };
        let bdp = if ewma.is_zero() {
            self.cwnd
        } else {
            let b = u128::from(self.cwnd) * min.as_nanos() / ewma.as_nanos();
            u64::try_from(b).unwrap_or(u64::MAX).min(self.cwnd)
        };
        let queue_use = self.cwnd - bdp;
        self.bdp = Some(bdp);
        self.queue_use = Some(queue_use);

        if self.in_slow_start {
            if queue_use < self.p.gamma {
                if self.cwnd_full {
                    self.cwnd += self.slow_start_inc();
                    if self.cwnd >= self.p.ss_max {
                        self.cwnd = self.p.ss_max;
                        self.in_slow_start = false;
                    }
                }
            } else {
                self.cwnd = bdp + self.p.gamma;
                self.in_slow_start = false;
            }
        } else if self.next_cc_event == 0 {
            if queue_use > self.p.delta {
                self.cwnd = (bdp + self.p.delta).saturating_sub(self.p.cwnd_inc);
            } else if queue_use > self.p.beta {
                self.cwnd = self.cwnd.saturating_sub(self.p.cwnd_inc);
            } else if self.cwnd_full && queue_use < self.p.alpha {
                self.cwnd += self.p.cwnd_inc;
            }
        }
        self.cwnd = self.cwnd.clamp(self.p.cwnd_min, self.p.cwnd_max);
    }

    /// Growth per SENDME in slow start: one SENDME's cells (doubling per round trip), or
    /// RFC 3742's limited increment above `limited_ss_cap` (at most `limited_ss_cap / 2`
    /// cells per round trip).
    fn slow_start_inc(&self) -> u64 {
        if self.cwnd <= self.p.limited_ss_cap {
            self.inc()
        } else {
            (self.p.limited_ss_cap / 2 * self.inc() / self.cwnd).max(1)
        }
    }

    /// The congestion window, in cells.
    pub fn cwnd(&self) -> u64 {
        self.cwnd
    }

    /// DATA cells sent and not yet acknowledged.
    pub fn inflight(&self) -> u64 {
        self.inflight
    }

    /// Whether the sender is still in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.in_slow_start
    }

    /// Triggering cells still awaiting their SENDME.
    pub fn sendmes_outstanding(&self) -> usize {
        self.awaiting.len()
    }

    /// The smallest RTT seen (`BASE_RTT`), once a SENDME arrived.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The EWMA of RTT samples.
    pub fn ewma_rtt(&self) -> Option<Duration> {
        self.ewma_rtt
    }

    /// The latest RTT sample.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// The latest bandwidth-delay product estimate `cwnd × min_rtt / ewma_rtt`, in cells.
    pub fn bdp(&self) -> Option<u64> {
        self.bdp
    }

    /// The latest queue estimate `cwnd − BDP`, in cells.
    pub fn queue_use(&self) -> Option<u64> {
        self.queue_use
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// The receiving side of congestion control: says which DATA cells to answer with a SENDME.
#[derive(Debug, Clone)]
pub struct SendmeSchedule {
    inc: u64,
    received_in_block: u64,
    received: u64,
}

impl SendmeSchedule {
    /// A schedule answering every `sendme_inc`-th DATA cell (0 is treated as 1).
    pub fn new(sendme_inc: u8) -> Self {
        Self {
            inc: u64::from(sendme_inc.max(1)),
            received_in_block: 0,
            received: 0,
        }
    }

    /// Records one received DATA cell. Returns `true` when a SENDME must be sent now,
    /// carrying the tag of this cell.
    pub fn on_data_received(&mut self) -> bool {
        self.received += 1;
        self.received_in_block += 1;
        if self.received_in_block == self.inc {
            self.received_in_block = 0;
            true
        } else {
            false
        }
    }

    /// DATA cells received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// What a stream's receiving edge must tell its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowSignal {
    /// Send XOFF: stop sending DATA on this stream.
    Xoff,
    /// Send XON: resume.
    Xon,
}

/// Receiving edge of a stream (the exit for downloads' reverse, the client for downloads):
/// watches the output buffer (bytes received on the circuit, not yet written to the local
/// socket) and says when to send XOFF and XON.
///
/// XOFF when the buffer exceeds the threshold; XON when, after an XOFF, it drains below
/// half of it. The hysteresis keeps the signals to two per fill-and-drain cycle.
#[derive(Debug, Clone)]
pub struct XoffMonitor {
    xoff_bytes: usize,
    xoff_sent: bool,
}

impl Default for XoffMonitor {
    fn default() -> Self {
        Self::new(DEFAULT_XOFF_BYTES)
    }
}

impl XoffMonitor {
    /// A monitor sending XOFF above `xoff_bytes` buffered and XON below `xoff_bytes / 2`.
    pub fn new(xoff_bytes: usize) -> Self {
        Self {
            xoff_bytes: xoff_bytes.max(1),
            xoff_sent: false,
        }
    }

    /// Call whenever the output buffer's length changes; returns the signal to send, if any.
    pub fn on_buffer_len(&mut self, buffered: usize) -> Option<FlowSignal> {
        if !self.xoff_sent && buffered > self.xoff_bytes {
            self.xoff_sent = true;
            Some(FlowSignal::Xoff)
        } else if self.xoff_sent && buffered < self.xoff_bytes / 2 {
            self.xoff_sent = false;
            Some(FlowSignal::Xon)
        } else {
            None
        }
    }

    /// Whether the peer has been told XOFF (and not yet XON).
    pub fn xoff_sent(&self) -> bool {
        self.xoff_sent
    }
}

/// Sending edge of a stream: whether to keep reading the stream's source (the local socket).
///
/// While paused by XOFF the edge stops reading its source, so the backlog stays in the
/// kernel's socket buffer and TCP pushes back on the application; circuit cells already
/// queued are still sent.
#[derive(Debug, Clone, Default)]
pub struct StreamFlow {
    paused: bool,
    rate_kib: Option<u32>,
}

impl StreamFlow {
    /// A stream that may send.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer sent XOFF. A second XOFF without XON in between is a protocol error.
    pub fn on_xoff(&mut self) -> Result<(), CcError> {
        if self.paused {
            return Err(CcError::DuplicateXoff);
        }
        self.paused = true;
        Ok(())
    }

    /// The peer sent XON with an advisory rate in KiB/s (0 = unlimited). XON while not
    /// paused only updates the rate.
    pub fn on_xon(&mut self, kib_per_sec: u32) {
        self.paused = false;
        self.rate_kib = (kib_per_sec != 0).then_some(kib_per_sec);
    }

    /// Whether to read more from the stream's source now.
    pub fn may_read_source(&self) -> bool {
        !self.paused
    }

    /// The rate the peer last advised, if any (KiB/s).
    pub fn advised_rate_kib(&self) -> Option<u32> {
        self.rate_kib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_tor_exit_values() {
        let p = VegasParams::default();
        p.validate().unwrap();
        assert_eq!((p.alpha, p.beta, p.gamma, p.delta), (124, 248, 186, 372));
        assert_eq!((p.cwnd_init, p.cwnd_min, p.sendme_inc), (124, 31, 31));
    }

    #[test]
    fn invalid_params_are_normalized() {
        let p = VegasParams {
            sendme_inc: 0,
            cwnd_min: 0,
            alpha: 10,
            beta: 5,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let v = Vegas::new(p);
        v.params().validate().unwrap();
        assert!(v.cwnd() >= v.params().cwnd_min);
    }

    /// A sender that keeps its window full on a path with a constant RTT grows its window
    /// (slow start) until `cwnd_max`, and never has more than that in flight.
    #[test]
    fn the_window_never_passes_cwnd_max() {
        let cap = 200;
        let mut v = Vegas::new(VegasParams {
            cwnd_max: cap,
            ..VegasParams::default()
        });
        let mut grew_to_cap = false;
        let mut t = Instant::now();
        for _round in 0..50 {
            let mut sent = 0;
            while v.can_send() {
                v.on_data_sent(t);
                sent += 1;
            }
            assert!(v.inflight() <= cap, "{} cells in flight", v.inflight());
            t += Duration::from_millis(10);
            for _ in 0..sent / u64::from(v.params().sendme_inc) {
                v.on_sendme(t).unwrap();
            }
            grew_to_cap |= v.cwnd() == cap;
            assert!(v.cwnd() <= cap);
        }
        // Without the cap the same path takes the window far beyond it.
        assert!(grew_to_cap, "the window never reached the cap");
        let mut free = Vegas::new(VegasParams::default());
        for _round in 0..50 {
            let mut sent = 0;
            while free.can_send() && sent < 100_000 {
                free.on_data_sent(t);
                sent += 1;
            }
            t += Duration::from_millis(10);
            for _ in 0..sent / u64::from(free.params().sendme_inc) {
                free.on_sendme(t).unwrap();
            }
        }
        assert!(free.cwnd() > 2 * cap, "uncapped window {}", free.cwnd());
    }

    #[test]
    fn a_cwnd_max_below_the_initial_window_lowers_it() {
        let v = Vegas::new(VegasParams {
            cwnd_max: 62,
            ..VegasParams::default()
        });
        assert_eq!(v.cwnd(), 62);
        v.params().validate().unwrap();
    }

    #[test]
    fn zero_rtt_samples_are_ignored() {
        let t = Instant::now();
        let mut v = Vegas::new(VegasParams::default());
        for _ in 0..31 {
            v.on_data_sent(t);
        }
        v.on_sendme(t).unwrap();
        assert_eq!(v.min_rtt(), None);
        assert_eq!(v.inflight(), 0);
        assert_eq!(v.cwnd(), 124);
    }
}
