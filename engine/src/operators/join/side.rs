//! The rows one side of a join keeps so that later rows of the other side can
//! find them: stored batches, an index by join key, and what retires each row
//! (its expiry time under a watermark, or its age under a TTL).
//!
//! For a checkpoint a side's live rows are written as one table, keyed by the
//! join key (the exchange key of that input): the input's columns, then the
//! row's event time, its expiry (NULL: none), how many matches it found, and
//! when it was stored (wall-clock epoch milliseconds, for the TTL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::common::HashMap;
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{Row, Rows};
use smallvec::SmallVec;

use super::keys::JoinKeys;
use crate::checkpoint::StatePart;
use crate::error::Result;
use crate::operators::state_table::{as_type, concat_tables, corrupt, epoch_millis, int64_column, key_groups, table};

/// Identifies a stored batch; ids grow with insertion order.
pub type BatchId = u64;

/// One stored row: its batch and its position there.
pub type RowRef = (BatchId, u32);

/// A join key in the row format, inline when short (most keys: one or two
/// numbers), so indexing a row allocates nothing.
type IndexKey = SmallVec<[u8; 24]>;

/// The rows of one key, inline when there is one (most keys of a join that
/// rarely matches, such as Nexmark q7's prices).
type KeyRows = SmallVec<[RowRef; 1]>;

struct StoredBatch {
    columns: Vec<ArrayRef>,
    keys: Rows,
    /// Per row: whether its key has no NULL (only such rows are indexed).
    keyed: Vec<bool>,
    times: Vec<i64>,
    expiries: Option<Vec<i64>>,
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
    index: HashMap<IndexKey, KeyRows>,
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
        self.insert_stored_at(rows, Instant::now());
    }

    /// Like [`SideState::insert`], for rows stored at `stored_at` (restored
    /// rows keep their age under a TTL). Rows must come in the order they
    /// were stored.
    fn insert_stored_at(&mut self, rows: NewRows, stored_at: Instant) {
        let n = rows.times.len();
        if n == 0 {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for i in 0..n {
            if rows.keyed[i] {
                let key = rows.keys.row(i);
                match self.index.get_mut(key.as_ref()) {
                    Some(refs) => refs.push((id, i as u32)),
                    None => {
                        self.index.insert(IndexKey::from_slice(key.as_ref()), smallvec::smallvec![(id, i as u32)]);
                    }
                }
                self.index_entries += 1;
            }
        }
        // Rows mostly come in time order, many at the same instant: one map
        // update per run of equal times (and expiries), not per row.
        for run in rows.times.chunk_by(|a, b| a == b) {
            *self.times.entry(run[0]).or_default() += run.len();
        }
        if let Some(expiries) = &rows.expiries {
            let mut i = 0;
            for run in expiries.chunk_by(|a, b| a == b) {
                let refs = self.by_expiry.entry(run[0]).or_default();
                refs.extend((i..i + run.len()).map(|r| (id, r as u32)));
                i += run.len();
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
                expiries: rows.expiries,
                matches: rows.matches,
                alive: vec![true; n],
                alive_count: n,
                stored_at,
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
        // Rows retire mostly in time order, many at one instant: the count of
        // live rows per time is updated once per run of equal times.
        let mut run: Option<(i64, usize)> = None;
        for (id, row) in rows {
            let Some(b) = self.batches.get_mut(&id) else { continue };
            let r = row as usize;
            if !b.alive[r] {
                continue;
            }
            b.alive[r] = false;
            b.alive_count -= 1;
            self.alive -= 1;
            let time = b.times[r];
            if b.matches[r] == 0 {
                unmatched.push((id, row));
            }
            match &mut run {
                Some((t, n)) if *t == time => *n += 1,
                _ => {
                    if let Some((t, n)) = run.replace((time, 1)) {
                        self.forget_times(t, n);
                    }
                }
            }
        }
        if let Some((time, n)) = run {
            self.forget_times(time, n);
        }
        unmatched
    }

    /// Counts `n` live rows at `time` fewer.
    fn forget_times(&mut self, time: i64, n: usize) {
        if let Some(count) = self.times.get_mut(&time) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.times.remove(&time);
            }
        }
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
                        self.index.entry(IndexKey::from_slice(b.keys.row(r).as_ref())).or_default().push((*id, r as u32));
                        self.index_entries += 1;
                    }
                }
            }
        }
    }
}

impl SideState {
    /// The live rows as a checkpoint table (see the module docs), keyed by
    /// `keys` of input `side`, whose schema is `schema`; `None` when none.
    pub fn snapshot(&self, keys: &JoinKeys, side: usize, schema: &SchemaRef) -> Result<Option<StatePart>> {
        let now = Instant::now();
        let wall = epoch_millis();
        let mut pieces = Vec::new();
        for b in self.batches.values().filter(|b| b.alive_count > 0) {
            let live: Vec<u32> = (0..b.alive.len() as u32).filter(|r| b.alive[*r as usize]).collect();
            let pick = |v: &[i64]| live.iter().map(|r| v[*r as usize]).collect::<Vec<_>>();
            let idx = UInt32Array::from(live.clone());
            let mut columns = schema
                .fields()
                .iter()
                .zip(&b.columns)
                .map(|(f, c)| Ok((f.name().clone(), take(c.as_ref(), &idx, None)?)))
                .collect::<Result<Vec<(String, ArrayRef)>>>()?;
            let age = i64::try_from(now.duration_since(b.stored_at).as_millis()).unwrap_or(i64::MAX);
            let expiries: Vec<Option<i64>> = match &b.expiries {
                Some(e) => pick(e).into_iter().map(Some).collect(),
                None => vec![None; live.len()],
            };
            let matches: Vec<i64> = live.iter().map(|r| i64::from(b.matches[*r as usize])).collect();
            columns.push(("__time".into(), Arc::new(Int64Array::from(pick(&b.times)))));
            columns.push(("__expiry".into(), Arc::new(Int64Array::from(expiries))));
            columns.push(("__matches".into(), Arc::new(Int64Array::from(matches))));
            columns.push(("__stored_at_ms".into(), Arc::new(Int64Array::from(vec![wall.saturating_sub(age); live.len()]))));
            pieces.push(table(columns, live.len())?);
        }
        let Some(batch) = concat_tables(&pieces)? else { return Ok(None) };
        let rows = side_rows(&batch, schema)?;
        let evaluated = keys.evaluate(side, &rows)?;
        let groups = key_groups(&evaluated.columns, batch.num_rows())?;
        Ok(Some(StatePart::keyed(batch, groups)))
    }

    /// Adds the rows of a table written by [`SideState::snapshot`]; rows whose
    /// `ttl` ran out since are dropped.
    pub fn restore(
        &mut self,
        batch: &RecordBatch,
        keys: &JoinKeys,
        side: usize,
        schema: &SchemaRef,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let width = schema.fields().len();
        if batch.num_columns() != width + 4 {
            return Err(corrupt("a join side's table has other columns"));
        }
        let times = int64_column(batch, width)?;
        let expiries = int64_column(batch, width + 1)?;
        let matches = int64_column(batch, width + 2)?;
        let stored = int64_column(batch, width + 3)?;
        let wall = epoch_millis();
        // Restored rows keep the order they were stored in (a TTL retires the
        // oldest batches first): one batch per time of storing.
        let mut by_time: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            by_time.entry(stored.value(i)).or_default().push(i as u32);
        }
        let rows = side_rows(batch, schema)?;
        for (stored_ms, ids) in by_time {
            let age = Duration::from_millis(u64::try_from(wall.saturating_sub(stored_ms)).unwrap_or(0));
            if ttl.is_some_and(|ttl| age > ttl) {
                continue;
            }
            let idx = UInt32Array::from(ids.clone());
            let taken = datafusion::arrow::compute::take_record_batch(&rows, &idx)?;
            let evaluated = keys.evaluate(side, &taken)?;
            let has_expiry = ids.iter().all(|i| expiries.is_valid(*i as usize));
            self.insert_stored_at(
                NewRows {
                    columns: taken.columns().to_vec(),
                    keys: evaluated.rows,
                    keyed: evaluated.keyed,
                    times: ids.iter().map(|i| times.value(*i as usize)).collect(),
                    expiries: has_expiry.then(|| ids.iter().map(|i| expiries.value(*i as usize)).collect()),
                    matches: ids.iter().map(|i| u32::try_from(matches.value(*i as usize)).unwrap_or(u32::MAX)).collect(),
                },
                Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            );
        }
        Ok(())
    }
}

/// The input's columns of a side's table, as a batch of the input's schema.
pub fn side_rows(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = (0..schema.fields().len())
        .map(|i| as_type(batch.column(i), schema.field(i).data_type()))
        .collect::<Result<Vec<_>>>()?;
    let fields: Vec<_> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}


impl super::output::StoredColumns for SideState {
    fn columns(&self, id: BatchId) -> Option<&[ArrayRef]> {
        self.batches.get(&id).map(|b| b.columns.as_slice())
    }
}
