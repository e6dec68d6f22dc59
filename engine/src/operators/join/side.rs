//! The rows one side of a join keeps so that later rows of the other side can
//! find them: stored batches, an index by join key, and what retires each row
//! (its expiry time under a watermark, or its age under a TTL).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::row::{Row, Rows};

/// Identifies a stored batch; ids grow with insertion order.
pub type BatchId = u64;

/// One stored row: its batch and its position there.
pub type RowRef = (BatchId, u32);

struct StoredBatch {
    columns: Vec<ArrayRef>,
    keys: Rows,
    /// Per row: whether its key has no NULL (only such rows are indexed).
    keyed: Vec<bool>,
    times: Vec<i64>,
    matches: Vec<u32>,
    alive: Vec<bool>,
    alive_count: usize,
    stored_at: Instant,
    bytes: usize,
}

/// The rows of one join input that are still waiting for partners.
#[derive(Default)]
pub struct SideState {
    batches: BTreeMap<BatchId, StoredBatch>,
    next_id: BatchId,
    index: HashMap<Box<[u8]>, Vec<RowRef>>,
    /// Entries in `index`, dead ones included (they are swept lazily).
    index_entries: usize,
    /// Rows by the time after which they can no longer match.
    by_expiry: BTreeMap<i64, Vec<RowRef>>,
    /// Event times of the live rows, counted, for the output watermark.
    times: BTreeMap<i64, usize>,
    alive: usize,
    bytes: usize,
}

/// Rows to store: the columns, keys and per-row times of one batch (already
/// reduced to the rows worth keeping).
pub struct NewRows {
    pub columns: Vec<ArrayRef>,
    pub keys: Rows,
    pub keyed: Vec<bool>,
    pub times: Vec<i64>,
    /// Per row, when it stops being able to match; `None`: kept until the TTL or
    /// the other input's end.
    pub expiries: Option<Vec<i64>>,
    /// Matches each row found when it arrived.
    pub matches: Vec<u32>,
}

impl SideState {
    pub fn bytes(&self) -> usize {
        self.bytes + self.index_entries * 24
    }

    /// The earliest event time among live rows.
    pub fn min_time(&self) -> Option<i64> {
        self.times.keys().next().copied()
    }

    pub fn insert(&mut self, rows: NewRows) {
        let n = rows.times.len();
        if n == 0 {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for i in 0..n {
            if rows.keyed[i] {
                self.index.entry(rows.keys.row(i).as_ref().into()).or_default().push((id, i as u32));
                self.index_entries += 1;
            }
            *self.times.entry(rows.times[i]).or_default() += 1;
        }
        if let Some(expiries) = &rows.expiries {
            for (i, e) in expiries.iter().enumerate() {
                self.by_expiry.entry(*e).or_default().push((id, i as u32));
            }
        }
        let bytes = rows.columns.iter().map(|c| c.get_array_memory_size()).sum::<usize>() + rows.keys.size() + n * 24;
        self.bytes += bytes;
        self.alive += n;
        self.batches.insert(
            id,
            StoredBatch {
                columns: rows.columns,
                keys: rows.keys,
                keyed: rows.keyed,
                times: rows.times,
                matches: rows.matches,
                alive: vec![true; n],
                alive_count: n,
                stored_at: Instant::now(),
                bytes,
            },
        );
    }

    /// Live rows whose key equals `key`.
    pub fn candidates<'a>(&'a self, key: Row<'_>) -> impl Iterator<Item = RowRef> + 'a {
        self.index
            .get(key.as_ref())
            .into_iter()
            .flatten()
            .copied()
            .filter(|r| self.is_alive(*r))
    }

    fn is_alive(&self, (id, row): RowRef) -> bool {
        self.batches.get(&id).is_some_and(|b| b.alive[row as usize])
    }


    /// Counts a match for `row`; returns the count before.
    pub fn add_match(&mut self, (id, row): RowRef) -> u32 {
        match self.batches.get_mut(&id) {
            Some(b) => {
                let before = b.matches[row as usize];
                b.matches[row as usize] = before.saturating_add(1);
                before
            }
            None => 0,
        }
    }

    /// Retires the rows whose expiry is below `watermark`; returns those that
    /// never matched.
    pub fn expire_before(&mut self, watermark: i64) -> Vec<RowRef> {
        let mut retired = Vec::new();
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() >= watermark {
                break;
            }
            retired.extend(entry.remove());
        }
        self.retire(retired)
    }

    /// Retires the rows stored longer than `ttl` ago; returns those that never
    /// matched.
    pub fn expire_older_than(&mut self, ttl: Duration) -> Vec<RowRef> {
        let now = Instant::now();
        let old: Vec<RowRef> = self
            .batches
            .iter()
            .take_while(|(_, b)| now.duration_since(b.stored_at) > ttl)
            .flat_map(|(id, b)| (0..b.alive.len() as u32).map(move |r| (*id, r)))
            .collect();
        self.retire(old)
    }

    /// Retires every row; returns those that never matched.
    pub fn retire_all(&mut self) -> Vec<RowRef> {
        let all: Vec<RowRef> =
            self.batches.iter().flat_map(|(id, b)| (0..b.alive.len() as u32).map(move |r| (*id, r))).collect();
        self.by_expiry.clear();
        self.retire(all)
    }

    /// Marks rows dead (their batches stay readable until [`SideState::sweep`]);
    /// returns the unmatched ones.
    fn retire(&mut self, rows: Vec<RowRef>) -> Vec<RowRef> {
        let mut unmatched = Vec::new();
        for (id, row) in rows {
            let Some(b) = self.batches.get_mut(&id) else { continue };
            let r = row as usize;
            if !b.alive[r] {
                continue;
            }
            b.alive[r] = false;
            b.alive_count -= 1;
            self.alive -= 1;
            if let Some(count) = self.times.get_mut(&b.times[r]) {
                *count -= 1;
                if *count == 0 {
                    self.times.remove(&b.times[r]);
                }
            }
            if b.matches[r] == 0 {
                unmatched.push((id, row));
            }
        }
        unmatched
    }

    /// Frees batches with no live row left, and rebuilds the key index once most
    /// of its entries point at dead rows.
    pub fn sweep(&mut self) {
        let dead: Vec<BatchId> = self.batches.iter().filter(|(_, b)| b.alive_count == 0).map(|(id, _)| *id).collect();
        for id in dead {
            if let Some(b) = self.batches.remove(&id) {
                self.bytes -= b.bytes;
            }
        }
        if self.alive == 0 {
            self.index.clear();
            self.index_entries = 0;
        } else if self.index_entries > 1024 && self.index_entries > 2 * self.alive {
            self.index.clear();
            self.index_entries = 0;
            for (id, b) in &self.batches {
                for r in 0..b.alive.len() {
                    if b.alive[r] && b.keyed[r] {
                        self.index.entry(b.keys.row(r).as_ref().into()).or_default().push((*id, r as u32));
                        self.index_entries += 1;
                    }
                }
            }
        }
    }
}

impl super::output::StoredColumns for SideState {
    fn columns(&self, id: BatchId) -> Option<&[ArrayRef]> {
        self.batches.get(&id).map(|b| b.columns.as_slice())
    }
}
