//! What a Kafka source may commit to its consumer group: only positions whose
//! records are durable downstream.
//!
//! A record read is not yet safe: it may sit in a window, in a sink's open
//! file, or in a batch that was never returned. So the source tracks, per
//! partition, the offset after the last record it *returned*; a checkpoint
//! barrier remembers those positions, and they are committed only when the
//! checkpoint completes (the sink made everything before the barrier durable).
//! A query stopped or crashed then reads again from the last completed
//! checkpoint: nothing is lost, and a graceful stop duplicates nothing.

use std::collections::BTreeMap;

/// Per partition, the next offset to read.
pub type Offsets = BTreeMap<i32, i64>;

/// A source's positions: returned, remembered at barriers, committed.
#[derive(Debug, Default)]
pub struct Positions {
    returned: Offsets,
    at_barrier: BTreeMap<u64, Offsets>,
    committed: Offsets,
}

impl Positions {
    /// Records up to `next` (exclusive) of `partition` were returned.
    pub fn returned(&mut self, partition: i32, next: i64) {
        let at = self.returned.entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    /// A barrier for `checkpoint` goes out after everything returned so far.
    pub fn barrier(&mut self, checkpoint: u64) {
        self.at_barrier.insert(checkpoint, self.returned.clone());
    }

    /// `checkpoint` completed: the positions to commit (those that moved since
    /// the last commit), forgetting this checkpoint and earlier ones.
    pub fn complete(&mut self, checkpoint: u64) -> Offsets {
        let Some(at) = self.at_barrier.remove(&checkpoint) else { return Offsets::new() };
        self.at_barrier.retain(|c, _| *c > checkpoint);
        at.into_iter().filter(|(p, o)| self.committed.get(p) != Some(o)).collect()
    }

    /// `offsets` are in the consumer group now.
    pub fn committed(&mut self, offsets: &Offsets) {
        self.committed.extend(offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_commits_what_was_returned_before_its_barrier() {
        let mut p = Positions::default();
        p.returned(0, 10);
        p.returned(1, 4);
        p.barrier(1);
        p.returned(0, 20);
        p.barrier(2);
        assert_eq!(p.complete(1), Offsets::from([(0, 10), (1, 4)]));
        p.committed(&Offsets::from([(0, 10), (1, 4)]));
        assert_eq!(p.complete(2), Offsets::from([(0, 20)]), "only what moved");
        assert_eq!(p.complete(2), Offsets::new(), "each checkpoint once");
    }

    #[test]
    fn completing_a_checkpoint_forgets_earlier_ones() {
        let mut p = Positions::default();
        p.returned(0, 5);
        p.barrier(1);
        p.returned(0, 7);
        p.barrier(2);
        assert_eq!(p.complete(2), Offsets::from([(0, 7)]));
        assert_eq!(p.complete(1), Offsets::new(), "an older checkpoint never moves a commit back");
    }
}
