//! When a Kafka lane counts as idle.
//!
//! An idle lane stops holding event time back: the watermark moves on to what
//! the lane's other partitions (and the query's other lanes) have seen. That is
//! right when a partition is quiet, and wrong when the broker is out of reach:
//! the lagging partitions' records are still to come, and would all be late.
//! So only real quiet counts: a lane is idle after the idle timeout without
//! records *and without errors*, and once an error was reported it stays busy
//! until the broker answers again (a record arrives, or a metadata request
//! succeeds); from then the timeout starts over.

use std::time::{Duration, Instant};

/// How often a lane cut off from its broker asks whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A lane's idle clock (see the module docs).
#[derive(Debug, Clone)]
pub struct Quiet {
    timeout: Duration,
    /// Since when nothing arrived, nothing failed, and no idleness was reported.
    since: Instant,
    /// An error came since the broker last answered.
    failing: bool,
}

impl Quiet {
    /// A lane quiet since `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Quiet { timeout, since: now, failing: false }
    }

    /// A record arrived, or the broker answered: the lane is not cut off, and
    /// the quiet starts now. Returns whether it was cut off until now.
    pub fn heard(&mut self, now: Instant) -> bool {
        self.since = now;
        std::mem::replace(&mut self.failing, false)
    }

    /// The consumer reported an error: no idleness until the broker answers.
    pub fn failed(&mut self, now: Instant) {
        self.since = now;
        self.failing = true;
    }

    /// Whether an error came since the broker last answered.
    pub fn failing(&self) -> bool {
        self.failing
    }

    /// How long to wait for a record before deciding again: the rest of the
    /// timeout, or while cut off, until it is time to ask the broker.
    pub fn wait(&self, now: Instant) -> Duration {
        match self.failing {
            true => PROBE_EVERY.min(self.timeout.max(Duration::from_millis(1))),
            false => self.timeout.saturating_sub(now.saturating_duration_since(self.since)),
        }
    }

    /// Whether the lane is idle now; reporting it starts the clock over, so a
    /// quiet lane says so once per timeout.
    pub fn idle(&mut self, now: Instant) -> bool {
        if self.failing || now.saturating_duration_since(self.since) < self.timeout {
            return false;
        }
        self.since = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_quiet_lane_is_idle_after_the_timeout_and_once_per_timeout() {
        let t0 = Instant::now();
        let mut q = Quiet::new(TIMEOUT, t0);
        assert!(!q.idle(t0 + secs(4)));
        assert_eq!(q.wait(t0 + secs(4)), secs(1));
        assert!(q.idle(t0 + secs(5)));
        assert!(!q.idle(t0 + secs(6)), "said once, then the clock starts over");
        assert!(q.idle(t0 + secs(10)));
    }

    #[test]
    fn records_restart_the_quiet() {
        let t0 = Instant::now();
        let mut q = Quiet::new(TIMEOUT, t0);
        assert!(!q.heard(t0 + secs(4)));
        assert!(!q.idle(t0 + secs(8)));
        assert!(q.idle(t0 + secs(9)));
    }

    #[test]
    fn a_lane_getting_errors_is_never_idle() {
        let t0 = Instant::now();
        let mut q = Quiet::new(TIMEOUT, t0);
        q.failed(t0 + secs(1));
        assert!(q.failing());
        for s in [6, 60, 3600] {
            assert!(!q.idle(t0 + secs(s)), "cut off for {s} s is not quiet");
        }
        assert!(q.wait(t0 + secs(60)) <= PROBE_EVERY, "asks the broker while cut off");
    }

    #[test]
    fn after_the_broker_answers_again_only_a_full_timeout_of_quiet_counts() {
        let t0 = Instant::now();
        let mut q = Quiet::new(TIMEOUT, t0);
        q.failed(t0);
        assert!(q.heard(t0 + secs(30)), "was cut off");
        assert!(!q.failing());
        assert!(!q.idle(t0 + secs(34)));
        assert!(q.idle(t0 + secs(35)));
    }
}
