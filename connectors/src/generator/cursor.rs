//! How far a generator shard got, kept so that a restored query goes on with
//! exactly the events an uninterrupted run would have produced next.
//!
//! Event `n` is a pure function of the seed and `n`, and shard `i` of `c`
//! produces the events `n ≡ i (mod c)` in increasing order. So a shard's
//! progress is one [`Progression`]: every event of its residue class below
//! `next` was emitted. Restored at the same parallelism, a shard simply goes on
//! from its own progression. Restored at another one, shard `j` of `c'` takes
//! every lane's progressions and emits the events of its class that none of them
//! covers: it starts at the first event some old lane had not reached (below it,
//! the old lanes together emitted everything) and skips, one by one, the events
//! above it that an old lane ran ahead to. The old progressions that still cover
//! events ahead of it stay in its position, so a second change of parallelism
//! before it catches up loses nothing either.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::UInt64Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::checkpoint_rows::{column, unfit};
use crate::error::Result;
use crate::registry::Shard;

/// Every event `n` with `n % stride == residue` and `n < next` was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Progression {
    pub residue: u64,
    pub stride: u64,
    pub next: u64,
}

impl Progression {
    /// Whether event `n` is one this progression says was emitted.
    fn covers(&self, n: u64) -> bool {
        n < self.next && n % self.stride == self.residue
    }

    /// Whether it can cover any event of the class `residue` mod `stride`
    /// (two residue classes meet iff they agree modulo the gcd of the strides).
    fn meets(&self, residue: u64, stride: u64) -> bool {
        let g = gcd(self.stride, stride);
        self.residue % g == residue % g
    }
}

/// Which events one shard has emitted, and which it emits next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// This shard's class: `residue` = shard index, `stride` = shard count.
    residue: u64,
    stride: u64,
    /// Every event of the class below this was emitted; the next one to
    /// consider (emitted unless `inherited` covers it).
    next: u64,
    /// Progressions of lanes of an earlier parallelism that cover events of
    /// this class at or above `next`.
    inherited: Vec<Progression>,
}

impl Cursor {
    /// A shard that emitted nothing yet.
    pub fn new(shard: Shard) -> Self {
        let stride = shard.count.max(1) as u64;
        Cursor { residue: shard.index as u64 % stride, stride, next: shard.index as u64 % stride, inherited: Vec::new() }
    }

    /// A shard that goes on after the progressions a checkpoint holds (its own
    /// lane's, or every lane's when the parallelism changed).
    pub fn restore(shard: Shard, progressions: &[Progression]) -> Self {
        let mut cursor = Cursor::new(shard);
        let own = progressions.iter().filter(|p| p.stride == cursor.stride && p.residue == cursor.residue);
        let mut next = own.map(|p| p.next).max().unwrap_or(0).max(floor(progressions));
        next = first_of_class_from(cursor.residue, cursor.stride, next);
        cursor.next = next;
        cursor.inherited = progressions
            .iter()
            .filter(|p| !(p.stride == cursor.stride && p.residue == cursor.residue))
            .copied()
            .collect();
        cursor.prune();
        cursor
    }

    /// The next event to emit (skipping those an earlier lane emitted);
    /// [`Cursor::advance`] moves past it once it is.
    pub fn peek(&mut self) -> u64 {
        while self.inherited.iter().any(|p| p.covers(self.next)) {
            self.next += self.stride;
        }
        if !self.inherited.is_empty() && self.inherited.iter().all(|p| p.next <= self.next) {
            self.inherited.clear();
        }
        self.next
    }

    /// The event [`Cursor::peek`] returned was emitted.
    pub fn advance(&mut self) {
        self.next = self.peek() + self.stride;
    }

    /// Events of this class from the next on, below `end` (covered ones included).
    pub fn left_below(&self, end: u64) -> u64 {
        end.saturating_sub(self.next).div_ceil(self.stride)
    }

    /// What a checkpoint must hold to go on from here: this shard's
    /// progression and the inherited ones still ahead of it.
    pub fn progressions(&self) -> Vec<Progression> {
        let own = Progression { residue: self.residue, stride: self.stride, next: self.next };
        std::iter::once(own).chain(self.inherited.iter().copied().filter(|p| p.next > self.next)).collect()
    }

    /// Forgets inherited progressions that cover nothing of this class at or
    /// above `next`, and duplicates.
    fn prune(&mut self) {
        let (residue, stride, next) = (self.residue, self.stride, self.next);
        self.inherited.retain(|p| p.next > next && p.meets(residue, stride));
        self.inherited.sort_unstable();
        self.inherited.dedup();
    }
}

/// An event below which the progressions together cover everything: the
/// largest such bound over the parallelisms whose every lane is present.
fn floor(progressions: &[Progression]) -> u64 {
    let mut by_stride: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for p in progressions {
        let next = by_stride.entry(p.stride).or_default().entry(p.residue).or_insert(p.next);
        *next = (*next).max(p.next);
    }
    by_stride
        .into_iter()
        .filter(|(stride, lanes)| lanes.len() as u64 == *stride)
        .filter_map(|(stride, lanes)| lanes.into_iter().map(|(r, next)| first_of_class_from(r, stride, next)).min())
        .max()
        .unwrap_or(0)
}

/// The first event `n >= from` with `n % stride == residue`.
fn first_of_class_from(residue: u64, stride: u64, from: u64) -> u64 {
    if from <= residue {
        return residue;
    }
    residue + (from - residue).div_ceil(stride) * stride
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// The schema of a generator shard's position in a checkpoint: one row per
/// [`Progression`] (`shard_index` = residue, `shard_count` = stride,
/// `next_event` = next).
pub fn position_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard_index", DataType::UInt64, false),
        Field::new("shard_count", DataType::UInt64, false),
        Field::new("next_event", DataType::UInt64, false),
    ]))
}

/// `progressions` as rows of [`position_schema`].
pub fn position_batch(progressions: &[Progression]) -> Result<RecordBatch> {
    let residues = UInt64Array::from_iter_values(progressions.iter().map(|p| p.residue));
    let strides = UInt64Array::from_iter_values(progressions.iter().map(|p| p.stride));
    let next = UInt64Array::from_iter_values(progressions.iter().map(|p| p.next));
    RecordBatch::try_new(position_schema(), vec![Arc::new(residues), Arc::new(strides), Arc::new(next)])
        .map_err(|e| unfit("generator", e.to_string()))
}

/// The progressions held by position rows.
pub fn progressions_from(batches: &[RecordBatch]) -> Result<Vec<Progression>> {
    let mut out = Vec::new();
    for batch in batches {
        let residues = column::<UInt64Array>("generator", batch, "shard_index", true)?;
        let strides = column::<UInt64Array>("generator", batch, "shard_count", true)?;
        let next = column::<UInt64Array>("generator", batch, "next_event", true)?;
        for i in 0..batch.num_rows() {
            let p = Progression { residue: residues.value(i), stride: strides.value(i), next: next.value(i) };
            if p.stride == 0 || p.residue >= p.stride {
                return Err(unfit("generator", format!("shard {} of {} does not exist", p.residue, p.stride)));
            }
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events a cursor emits below `end`.
    fn emit(cursor: &mut Cursor, end: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while cursor.peek() < end {
            out.push(cursor.peek());
            cursor.advance();
        }
        out
    }

    fn shard(index: usize, count: usize) -> Shard {
        Shard { index, count }
    }

    /// Runs `counts[0]` shards for `steps[0]` events each (different amounts per
    /// shard), restores at `counts[1]`, and so on; returns every event emitted.
    fn run_through(counts: &[usize], steps: &[&[u64]], end: u64) -> Vec<u64> {
        let mut emitted = Vec::new();
        let mut positions: Vec<Progression> = Vec::new();
        for (count, steps) in counts.iter().zip(steps) {
            let mut lanes = Vec::new();
            for i in 0..*count {
                let mut cursor = Cursor::restore(shard(i, *count), &positions);
                for _ in 0..steps[i % steps.len()] {
                    if cursor.peek() >= end {
                        break;
                    }
                    emitted.push(cursor.peek());
                    cursor.advance();
                }
                lanes.push(cursor);
            }
            positions = lanes.iter().flat_map(Cursor::progressions).collect();
        }
        let last = counts.len();
        for i in 0..counts[last - 1] {
            emitted.extend(emit(&mut Cursor::restore(shard(i, counts[last - 1]), &positions), end));
        }
        emitted.sort_unstable();
        emitted
    }

    #[test]
    fn a_fresh_shard_emits_its_class() {
        assert_eq!(emit(&mut Cursor::new(shard(1, 3)), 10), vec![1, 4, 7]);
    }

    #[test]
    fn restored_at_the_same_parallelism_a_shard_goes_on_after_its_own_position() {
        let mut c = Cursor::new(shard(2, 4));
        assert_eq!(emit(&mut c, 11), vec![2, 6, 10]);
        let mut restored = Cursor::restore(shard(2, 4), &c.progressions());
        assert_eq!(emit(&mut restored, 30), vec![14, 18, 22, 26]);
    }

    #[test]
    fn changing_the_parallelism_emits_every_event_exactly_once() {
        let all: Vec<u64> = (0..200).collect();
        assert_eq!(run_through(&[3, 2], &[&[5, 9, 1]], 200), all);
        assert_eq!(run_through(&[2, 3], &[&[7, 2]], 200), all);
        assert_eq!(run_through(&[4, 1], &[&[0, 3, 8, 1]], 200), all);
        assert_eq!(run_through(&[1, 5], &[&[13]], 200), all);
        // Twice before the new lanes catch up with the old ones' stragglers.
        assert_eq!(run_through(&[3, 2, 5], &[&[20, 1, 6], &[2, 0]], 200), all);
        assert_eq!(run_through(&[2, 4, 2, 3], &[&[30, 0], &[1, 5, 0, 2], &[3, 3]], 200), all);
    }

    #[test]
    fn a_lane_that_caught_up_forgets_what_it_inherited() {
        let old = [Progression { residue: 0, stride: 2, next: 10 }, Progression { residue: 1, stride: 2, next: 3 }];
        let mut c = Cursor::restore(shard(0, 1), &old);
        assert_eq!(c.peek(), 3, "everything below 3 was emitted");
        assert_eq!(c.progressions().len(), 2);
        assert_eq!(emit(&mut c, 11), vec![3, 5, 7, 9, 10]);
        assert_eq!(c.progressions(), vec![Progression { residue: 0, stride: 1, next: 11 }]);
    }

    #[test]
    fn positions_survive_a_round_trip_through_rows() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let ps = vec![Progression { residue: 1, stride: 3, next: 7 }, Progression { residue: 0, stride: 2, next: 40 }];
        assert_eq!(progressions_from(&[position_batch(&ps)?])?, ps);
        let bad = position_batch(&[Progression { residue: 3, stride: 3, next: 0 }])?;
        let e = progressions_from(&[bad]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("shard 3 of 3 does not exist"), "{e}");
        Ok(())
    }
}
