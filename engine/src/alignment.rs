//! Watermark alignment: sources of one query that run ahead of the slowest in
//! event time wait for it, as Flink's `scan.watermark.alignment.max-drift`.
//!
//! Without it, a join whose one input is read faster than the other keeps the
//! fast side's rows until the slow side's watermark catches up: its state grows
//! with the distance between them, which only the channels' capacity bounds.
//! Each watermark assigner is a member of its query's group: after reporting a
//! watermark, a member more than `max_drift` ahead of the slowest active member
//! waits before taking its next batch, which holds its source back. Idle and
//! ended members do not hold anyone back.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, Default)]
struct Member {
    watermark: Option<i64>,
    active: bool,
}

/// The sources of one query that keep within `max_drift` of each other.
#[derive(Debug)]
pub struct AlignmentGroup {
    max_drift: i64,
    members: Mutex<Vec<Member>>,
    changed: Notify,
}

/// One source's place in an [`AlignmentGroup`]; leaving it (drop) stops it
/// holding the others back.
#[derive(Debug)]
pub struct AlignmentMember {
    group: Arc<AlignmentGroup>,
    index: usize,
}

impl AlignmentGroup {
    /// `max_drift` in nanoseconds of event time.
    pub fn new(max_drift: i64) -> Arc<Self> {
        Arc::new(AlignmentGroup { max_drift, members: Mutex::new(Vec::new()), changed: Notify::new() })
    }

    pub fn max_drift(&self) -> i64 {
        self.max_drift
    }

    pub fn join(self: &Arc<Self>) -> AlignmentMember {
        let index = match self.members.lock() {
            Ok(mut m) => {
                m.push(Member { watermark: None, active: true });
                m.len() - 1
            }
            Err(_) => usize::MAX,
        };
        AlignmentMember { group: Arc::clone(self), index }
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut Member)) {
        if let Ok(mut members) = self.members.lock() {
            if let Some(m) = members.get_mut(index) {
                f(m);
            }
        }
        self.changed.notify_waiters();
    }

    /// True if member `index` may go on: it is within the drift of every other
    /// active member (one without a watermark yet counts as the slowest).
    fn may_proceed(&self, index: usize) -> bool {
        let Ok(members) = self.members.lock() else { return true };
        let Some(me) = members.get(index).and_then(|m| m.watermark) else { return true };
        members
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != index && m.active)
            .all(|(_, m)| m.watermark.is_some_and(|w| me <= w.saturating_add(self.max_drift)))
    }
}

impl AlignmentMember {
    pub fn max_drift(&self) -> i64 {
        self.group.max_drift
    }

    /// Records this source's watermark.
    pub fn report(&self, watermark: i64) {
        self.group.update(self.index, |m| {
            m.watermark = Some(m.watermark.map_or(watermark, |w| w.max(watermark)));
            m.active = true;
        });
    }

    /// An idle source holds no one back; it counts again once it has rows.
    pub fn set_active(&self, active: bool) {
        self.group.update(self.index, |m| m.active = active);
    }

    /// Waits until this source is within the drift of the slowest active one.
    pub async fn wait_aligned(&self) {
        self.gate().wait_aligned().await
    }

    /// What the source's own task waits on before reading on.
    pub fn gate(&self) -> AlignmentGate {
        AlignmentGate { group: Arc::clone(&self.group), index: self.index }
    }
}

/// Holds a source back while it is too far ahead of the slowest. The source's
/// task waits on it before each read, not the watermark assigner after it, so
/// that barriers still pass while it waits (a barrier waiting behind held-back
/// rows would wait for the slow source, which may itself wait for the barrier
/// to be aligned downstream).
#[derive(Debug, Clone)]
pub struct AlignmentGate {
    group: Arc<AlignmentGroup>,
    index: usize,
}

impl AlignmentGate {
    /// Waits until the source is within the drift of the slowest active one
    /// (cancel-safe).
    pub async fn wait_aligned(&self) {
        loop {
            let changed = self.group.changed.notified();
            if self.group.may_proceed(self.index) {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for AlignmentMember {
    fn drop(&mut self) {
        self.set_active(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_fast_member_waits_for_the_slow_one_and_idle_ones_do_not_count() {
        let group = AlignmentGroup::new(10);
        let (fast, slow) = (group.join(), group.join());
        fast.report(100);
        slow.report(50);
        let waiting = tokio::time::timeout(Duration::from_millis(50), fast.wait_aligned()).await;
        assert!(waiting.is_err(), "100 is more than 10 ahead of 50");
        slow.report(95);
        tokio::time::timeout(Duration::from_secs(1), fast.wait_aligned()).await.expect("within the drift");
        fast.report(200);
        slow.set_active(false);
        tokio::time::timeout(Duration::from_secs(1), fast.wait_aligned()).await.expect("an idle member holds no one");
        slow.set_active(true);
        let task = tokio::spawn(async move { fast.wait_aligned().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished());
        drop(slow);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("a member that left holds no one").unwrap();
    }
}
