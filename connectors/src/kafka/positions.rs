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
//!
//! With checkpoints on, the positions remembered at a barrier also go into the
//! checkpoint itself, as rows (see [`position_batch`]): a query restored from it
//! seeks there, whatever its consumer group holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::checkpoint_rows::{column, unfit};
use crate::error::Result;

/// Per partition, the next offset to read.
pub type Offsets = BTreeMap<i32, i64>;

/// A source's positions: returned, remembered at barriers, committed.
#[derive(Debug, Default)]
pub struct Positions {
    returned: Offsets,
    at_barrier: BTreeMap<u64, Offsets>,
    /// What the last barrier remembered, for the checkpoint.
    last_barrier: Offsets,
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
        self.last_barrier = self.returned.clone();
    }

    /// The positions the last barrier remembered (empty before the first).
    pub fn at_last_barrier(&self) -> &Offsets {
        &self.last_barrier
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

/// The schema of a Kafka source's position in a checkpoint: one row per
/// partition of the lane read from so far, with the next offset to read.
pub fn position_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("next_offset", DataType::Int64, false),
    ]))
}

/// `offsets` as rows of [`position_schema`].
pub fn position_batch(offsets: &Offsets) -> Result<RecordBatch> {
    let partitions = Int32Array::from_iter_values(offsets.keys().copied());
    let next = Int64Array::from_iter_values(offsets.values().copied());
    RecordBatch::try_new(position_schema(), vec![Arc::new(partitions), Arc::new(next)])
        .map_err(|e| unfit("kafka", e.to_string()))
}

/// The offsets held by position rows (of one lane, or of every lane when the
/// parallelism changed). A partition found twice keeps its larger offset.
pub fn offsets_from(batches: &[RecordBatch]) -> Result<Offsets> {
    let mut offsets = Offsets::new();
    for batch in batches {
        let partitions = column::<Int32Array>("kafka", batch, "partition", true)?;
        let next = column::<Int64Array>("kafka", batch, "next_offset", true)?;
        for (p, o) in partitions.values().iter().zip(next.values()) {
            if *o < 0 {
                return Err(unfit("kafka", format!("partition {p} has negative offset {o}")));
            }
            let at = offsets.entry(*p).or_insert(*o);
            *at = (*at).max(*o);
        }
    }
    Ok(offsets)
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

    #[test]
    fn the_last_barrier_s_positions_survive_a_round_trip_through_rows() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = Positions::default();
        assert!(p.at_last_barrier().is_empty());
        p.returned(3, 17);
        p.returned(0, 5);
        p.barrier(1);
        p.returned(3, 40);
        let batch = position_batch(p.at_last_barrier())?;
        assert_eq!(batch.schema(), position_schema());
        assert_eq!(offsets_from(&[batch])?, Offsets::from([(0, 5), (3, 17)]), "the barrier's, not what came after");
        p.complete(1);
        assert_eq!(p.at_last_barrier(), &Offsets::from([(0, 5), (3, 17)]), "completing does not forget it");
        Ok(())
    }

    #[test]
    fn rows_of_several_lanes_merge() -> Result<(), Box<dyn std::error::Error>> {
        let a = position_batch(&Offsets::from([(0, 10), (2, 7)]))?;
        let b = position_batch(&Offsets::from([(1, 3), (2, 9)]))?;
        assert_eq!(offsets_from(&[a, b])?, Offsets::from([(0, 10), (1, 3), (2, 9)]));
        Ok(())
    }

    #[test]
    fn rows_of_another_source_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let schema = Arc::new(Schema::new(vec![Field::new("partition", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))])?;
        let e = offsets_from(&[batch]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("checkpoint does not fit") && e.contains("partition"), "{e}");
        let negative = RecordBatch::try_new(position_schema(), vec![Arc::new(Int32Array::from(vec![0])), Arc::new(Int64Array::from(vec![-2]))])?;
        assert!(offsets_from(&[negative]).is_err());
        Ok(())
    }
}
