//! Session window aggregation: per key, rows closer than the gap form one session.
//!
//! Each incoming row opens the window `[ts, ts + gap)`; windows of the same key
//! that touch or overlap merge (as in Flink). A session is emitted, and freed,
//! once the watermark passes its end (a row at exactly the end would still
//! extend it). Rows that form a session of their own that is already behind
//! the watermark, merging with no open session, are late.
//!
//! Accumulator state lives in numbered slots ([`SessionSlots`]), a slot per
//! session: for the common aggregates one DataFusion `GroupsAccumulator`
//! holds every slot, so a batch costs one `update_batch` per aggregate
//! however many sessions it touches. Rows are never kept. A session that
//! merges others takes over their slots, and its state is all its slots'
//! merged, when it closes or is checkpointed. A watermark visits only the
//! keys whose sessions it closes (a heap of each key's earliest end).
//!
//! Checkpointed state: table [`SESSIONS_TABLE`] holds one row per open
//! session, keyed by the group columns other than the window bounds (the
//! exchange key): those columns, the session's start and end (epoch
//! nanoseconds), then each aggregate's state columns. Table
//! [`WATERMARK_TABLE`] holds the lane's watermark.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::SortField;
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows};
use datafusion::common::hash_map::EntryRef;
use datafusion::common::HashMap;

use super::session_slots::{Regrouping, SessionSlots};
use super::state_table::{
    as_type, corrupt, groups_accumulator_widths, int64_column, key_groups, keyed_with_watermark,
    split_keyed_with_watermark, state_column_names, table,
};
use super::window_groups::AggregateSpec;
use crate::checkpoint::StatePart;
use crate::error::Result;
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator};
use crate::time::{as_epoch_nanos, format_nanos, from_epoch_nanos};

/// The checkpoint table of the open sessions (keyed).
pub const SESSIONS_TABLE: usize = super::state_table::KEYED_TABLE;
/// The checkpoint table of the lane's watermark.
pub const WATERMARK_TABLE: usize = super::state_table::WATERMARK_TABLE;

/// Aggregates rows into per-key sessions separated by gaps of inactivity.
pub struct SessionAggregate {
    spec: AggregateSpec,
    gap: i64,
    /// Group expressions other than the window bounds.
    key_indices: Vec<usize>,
    converter: RowConverter,
    /// Each key's place in `keys`.
    index: HashMap<Vec<u8>, usize>,
    /// The keys' sessions. A key whose sessions all closed keeps its place
    /// (rows of it often come again) until more than half the keys are
    /// empty: then the empty ones are freed for reuse ([`Self::free_empty_keys`]).
    keys: Vec<KeySessions>,
    /// Places in `keys` free for reuse.
    free_keys: Vec<usize>,
    /// Keys in `index` without sessions.
    empty_keys: usize,
    /// The accumulator state of every open session.
    slots: SessionSlots,
    /// When each key (its place in `keys`) has its earliest session end,
    /// earliest first: a watermark visits only the keys whose sessions it
    /// closes. An entry whose end is not its key's `scheduled` is stale (the
    /// session grew, or the key's sessions closed), and skipped.
    ends: BinaryHeap<Reverse<Due>>,
    watermark: Option<i64>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
    /// Sessions currently open, for the state size estimate.
    open_sessions: usize,
}

/// A key (its place in [`SessionAggregate::keys`]) in
/// [`SessionAggregate::ends`]: ordered by end alone (keys that end together
/// need no order among them).
struct Due {
    end: i64,
    key: usize,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.end == other.end
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.end.cmp(&other.end)
    }
}

struct KeySessions {
    /// `None` when the GROUP BY has no key besides the window.
    key: Option<OwnedRow>,
    /// Disjoint sessions ordered by start.
    sessions: Vec<Session>,
    /// The end under which the key is in [`SessionAggregate::ends`]: at or
    /// before its earliest session's end (`i64::MAX` without sessions).
    scheduled: i64,
}

impl KeySessions {
    /// The end of its earliest session (they are disjoint and ordered by
    /// start, so the first ends first).
    fn first_end(&self) -> Option<i64> {
        self.sessions.first().map(|s| s.end)
    }

    /// Adds `session`, which overlaps none of the key's, in its place by start.
    fn insert(&mut self, session: Session) {
        let pos = self.sessions.partition_point(|s| s.start < session.start);
        self.sessions.insert(pos, session);
    }
}

struct Session {
    start: i64,
    end: i64,
    /// The slot of [`SessionAggregate::slots`] its rows go to.
    slot: usize,
    /// The slots of the sessions it merged with since the slots were last
    /// packed: its state is all its slots' merged.
    merged: Vec<usize>,
}

impl Session {
    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.slot).chain(self.merged.iter().copied())
    }
}

impl SessionAggregate {
    /// `gap_nanos`: the inactivity that ends a session. In `spec`, `window_start`
    /// evaluates to the row's event time.
    pub fn try_new(spec: AggregateSpec, gap_nanos: i64, metrics: Arc<JobMetrics>) -> Result<Self> {
        let key_indices = spec.key_indices();
        let fields = key_indices
            .iter()
            .map(|i| SortField::new(spec.output_schema.field(*i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        Ok(SessionAggregate {
            slots: SessionSlots::new(&spec)?,
            spec,
            gap: gap_nanos,
            key_indices,
            converter,
            ends: BinaryHeap::new(),
            index: HashMap::new(),
            keys: Vec::new(),
            free_keys: Vec::new(),
            empty_keys: 0,
            watermark: None,
            state: metrics.state_reporter(),
            metrics,
            open_sessions: 0,
        })
    }

    fn report_state(&mut self) {
        self.state.set(self.slots.size() + self.index.len() * 64 + self.open_sessions * 48);
    }

    /// A slot for rows `rows` (in the batch's key order `order`) of a new
    /// session, or for rows added to a session: `slot_of_row` records it.
    fn assign(order: &[u32], rows: Range<usize>, slot: usize, slot_of_row: &mut [usize]) {
        for r in &order[rows] {
            slot_of_row[*r as usize] = slot;
        }
    }

    /// One key's rows, ordered by time and starting at `first` in the batch's
    /// order, as runs of rows within a gap of each other: (start, end, the
    /// run's rows in that order).
    fn runs_of(&self, times: &[i64], first: usize, runs: &mut Vec<(i64, i64, Range<usize>)>) {
        runs.clear();
        for (i, &ts) in times.iter().enumerate() {
            let end = ts.saturating_add(self.gap);
            match runs.last_mut() {
                Some(run) if ts <= run.1 => {
                    run.1 = run.1.max(end);
                    run.2.end = first + i + 1;
                }
                _ => runs.push((ts, end, first + i..first + i + 1)),
            }
        }
    }

    /// Every open session's slots, one group per session in the order of
    /// `self.keys`.
    fn open_groups(&self) -> Regrouping {
        let mut groups = Regrouping::default();
        for state in &self.keys {
            for session in &state.sessions {
                groups.push(session.slots());
            }
        }
        groups
    }

    /// Packs the open sessions' slots (see [`SessionSlots::renumber`]).
    fn renumber_slots(&mut self) -> Result<()> {
        let groups = self.open_groups();
        self.slots.renumber(&groups)?;
        let mut slot = 0;
        for state in self.keys.iter_mut() {
            for session in state.sessions.iter_mut() {
                session.slot = slot;
                session.merged = Vec::new();
                slot += 1;
            }
        }
        Ok(())
    }

    /// The place in `keys` of the key `bytes` (of row `row` of `rows`),
    /// made if it has none.
    fn key_place(&mut self, bytes: &[u8], rows: Option<&Rows>, row: usize) -> usize {
        match self.index.entry_ref(bytes) {
            EntryRef::Occupied(o) => *o.get(),
            EntryRef::Vacant(v) => {
                let key = rows.map(|r| r.row(row).owned());
                let place = match self.free_keys.pop() {
                    // A freed place has no sessions; its vector is kept for
                    // the new key's.
                    Some(place) => {
                        let state = &mut self.keys[place];
                        state.key = key;
                        state.scheduled = i64::MAX;
                        place
                    }
                    None => {
                        self.keys.push(KeySessions { key, sessions: Vec::new(), scheduled: i64::MAX });
                        self.keys.len() - 1
                    }
                };
                self.empty_keys += 1;
                *v.insert_entry(place).get()
            }
        }
    }

    /// Puts the key at `place` in [`Self::ends`] under its earliest session's
    /// end, if that is before the end it is there under.
    fn schedule(&mut self, place: usize) {
        let state = &mut self.keys[place];
        if let Some(end) = state.first_end().filter(|end| *end < state.scheduled) {
            state.scheduled = end;
            self.ends.push(Reverse(Due { end, key: place }));
        }
    }

    /// Takes out the sessions that end before `t`, each with its key's place.
    fn close_sessions(&mut self, t: i64) -> Vec<(usize, Session)> {
        let mut closed = Vec::new();
        while self.ends.peek().is_some_and(|Reverse(due)| due.end < t) {
            let Some(Reverse(Due { end, key })) = self.ends.pop() else { break };
            let state = &mut self.keys[key];
            if state.scheduled != end {
                continue;
            }
            let ended = state.sessions.partition_point(|s| s.end < t);
            closed.extend(state.sessions.drain(..ended).map(|session| (key, session)));
            match state.first_end() {
                Some(next) => {
                    state.scheduled = next;
                    self.ends.push(Reverse(Due { end: next, key }));
                }
                None => {
                    state.scheduled = i64::MAX;
                    self.empty_keys += 1;
                }
            }
        }
        self.open_sessions -= closed.len();
        closed
    }

    /// Frees the places of keys without sessions once they are more than
    /// half the keys (each costs a visit of every key, so they are freed in
    /// bulk).
    fn free_empty_keys(&mut self) {
        if self.empty_keys <= 1024 || self.empty_keys * 2 <= self.index.len() {
            return;
        }
        let keys = &mut self.keys;
        let free = &mut self.free_keys;
        self.index.retain(|_, place| {
            let state = &mut keys[*place];
            if !state.sessions.is_empty() {
                return true;
            }
            state.key = None;
            free.push(*place);
            false
        });
        self.empty_keys = 0;
    }

    /// Every open session as one table (see the module docs); `None` when none
    /// is open.
    fn snapshot_sessions(&mut self) -> Result<Option<StatePart>> {
        if self.open_sessions == 0 {
            return Ok(None);
        }
        // Row i of the states is the i-th session visited below.
        let groups = self.open_groups();
        let states = self.slots.states(&groups)?;
        let widths = groups_accumulator_widths(&self.spec.aggregates)?;
        let mut keys = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for KeySessions { key, sessions, .. } in &self.keys {
            for session in sessions {
                keys.extend(key.as_ref().map(|k| k.row()));
                starts.push(session.start);
                ends.push(session.end);
            }
        }
        let rows = starts.len();
        let key_columns = match self.key_indices.is_empty() {
            true => Vec::new(),
            false => self.converter.convert_rows(keys)?,
        };
        let groups = key_groups(&key_columns, rows)?;
        let key_names = self.key_indices.iter().map(|i| self.spec.output_schema.field(*i).name().clone());
        let mut columns: Vec<(String, ArrayRef)> = key_names.zip(key_columns).collect();
        columns.push(("session_start".into(), Arc::new(datafusion::arrow::array::Int64Array::from(starts))));
        columns.push(("session_end".into(), Arc::new(datafusion::arrow::array::Int64Array::from(ends))));
        columns.extend(state_column_names(&widths).into_iter().zip(states));
        Ok(Some(StatePart::keyed(table(columns, rows)?, groups)))
    }

    /// Adds the sessions of a table written by [`Self::snapshot_sessions`].
    fn restore_sessions(&mut self, batch: &RecordBatch) -> Result<()> {
        let width = self.key_indices.len();
        let widths = groups_accumulator_widths(&self.spec.aggregates)?;
        if batch.num_columns() != width + 2 + widths.iter().sum::<usize>() {
            return Err(corrupt("the session aggregate's sessions table has other columns"));
        }
        let key_columns = self
            .key_indices
            .iter()
            .enumerate()
            .map(|(c, i)| as_type(batch.column(c), self.spec.output_schema.field(*i).data_type()))
            .collect::<Result<Vec<_>>>()?;
        let key_rows = if key_columns.is_empty() { None } else { Some(self.converter.convert_columns(&key_columns)?) };
        let starts = int64_column(batch, width)?;
        let ends = int64_column(batch, width + 1)?;
        if starts.null_count() > 0 || ends.null_count() > 0 {
            return Err(corrupt("a session without bounds"));
        }
        let first_slot = self.slots.restore(&batch.columns()[width + 2..], &widths, batch.num_rows())?;
        for i in 0..batch.num_rows() {
            let session = Session { start: starts.value(i), end: ends.value(i), slot: first_slot + i, merged: Vec::new() };
            let key: &[u8] = key_rows.as_ref().map_or(&[], |r| r.row(i).data());
            let place = self.key_place(key, key_rows.as_ref(), i);
            let state = &mut self.keys[place];
            if state.sessions.is_empty() {
                self.empty_keys -= 1;
            }
            state.insert(session);
            self.schedule(place);
            self.open_sessions += 1;
        }
        Ok(())
    }

    /// The output rows of the `closed` sessions (each with its key's place),
    /// whose aggregates' values are `values` (a column per aggregate, in the
    /// same order).
    fn closed_sessions_batch(&self, closed: &[(usize, Session)], values: Vec<ArrayRef>) -> Result<RecordBatch> {
        let schema = Arc::clone(&self.spec.output_schema);
        let key_columns = if self.key_indices.is_empty() {
            Vec::new()
        } else {
            self.converter.convert_rows(closed.iter().filter_map(|(place, _)| self.keys[*place].key.as_ref().map(|k| k.row())))?
        };
        let starts: Vec<i64> = closed.iter().map(|(_, s)| s.start).collect();
        let ends: Vec<i64> = closed.iter().map(|(_, s)| s.end).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let mut keys = key_columns.into_iter();
        for i in 0..self.spec.group_exprs.len() {
            let column = if i == self.spec.window_start {
                from_epoch_nanos(starts.clone(), schema.field(i).data_type())?
            } else if i == self.spec.window_end {
                from_epoch_nanos(ends.clone(), schema.field(i).data_type())?
            } else {
                keys.next().ok_or_else(|| crate::EngineError::Internal("missing key column".into()))?
            };
            columns.push(column);
        }
        columns.extend(values);
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

#[async_trait]
impl Operator for SessionAggregate {
    fn name(&self) -> &'static str {
        "session aggregate"
    }

    fn state_bound(&self) -> crate::operator::StateBound {
        crate::operator::StateBound::Watermark
    }

    fn describe(&self) -> String {
        format!(
            "session aggregate: gap {}s, {}; state bounded by watermark (a session is freed when the watermark passes its end)",
            self.gap as f64 / 1e9,
            self.spec.describe()
        )
    }

    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        let ev = self.spec.evaluate(&batch)?;
        let key_arrays: Vec<ArrayRef> = self.key_indices.iter().map(|i| Arc::clone(&ev.groups[*i])).collect();
        // Without keys (one global session stream) every row has the empty key.
        let key_rows = if key_arrays.is_empty() { None } else { Some(self.converter.convert_columns(&key_arrays)?) };
        let key_of = |i: usize| -> &[u8] { key_rows.as_ref().map_or(&[], |r| r.row(i).data()) };
        let ts = as_epoch_nanos(&ev.groups[self.spec.window_start])?;

        // The batch's keys, numbered in order of first appearance, and each
        // row's key number (rows without a time are late).
        let mut numbers: HashMap<&[u8], u32> = HashMap::new();
        let mut key_number: Vec<u32> = Vec::with_capacity(ev.num_rows);
        let mut key_rows_count: Vec<usize> = Vec::new();
        let mut key_first_row: Vec<usize> = Vec::new();
        let mut late = 0;
        for i in 0..ev.num_rows {
            if ts.is_null(i) {
                late += 1;
                key_number.push(u32::MAX);
                continue;
            }
            let next = key_rows_count.len() as u32;
            let number = *numbers.entry(key_of(i)).or_insert(next);
            if number == next {
                key_rows_count.push(0);
                key_first_row.push(i);
            }
            key_rows_count[number as usize] += 1;
            key_number.push(number);
        }
        drop(numbers);
        // Rows in order of key (counting sort), then time within a key.
        let mut key_offset: Vec<usize> = Vec::with_capacity(key_rows_count.len() + 1);
        let mut total = 0;
        for count in &key_rows_count {
            key_offset.push(total);
            total += count;
        }
        key_offset.push(total);
        let mut order = vec![0u32; total];
        let mut fill = key_offset.clone();
        for (i, number) in key_number.iter().enumerate() {
            if *number != u32::MAX {
                order[fill[*number as usize]] = i as u32;
                fill[*number as usize] += 1;
            }
        }
        let ts_values = ts.values();
        for k in 0..key_rows_count.len() {
            let rows = &mut order[key_offset[k]..key_offset[k + 1]];
            if !rows.is_sorted_by_key(|r| ts_values[*r as usize]) {
                rows.sort_by_key(|r| ts_values[*r as usize]);
            }
        }
        let times: Vec<i64> = order.iter().map(|r| ts_values[*r as usize]).collect();
        // Each row's slot, and whether it went into a session (late rows and
        // rows without a time did not).
        let mut slot_of_row = vec![0usize; ev.num_rows];
        let mut in_session: Vec<bool> = key_number.iter().map(|n| *n != u32::MAX).collect();

        let mut runs = Vec::new();
        for (k, &first_row) in key_first_row.iter().enumerate() {
            let (from, to) = (key_offset[k], key_offset[k + 1]);
            self.runs_of(&times[from..to], from, &mut runs);
            let place = self.key_place(key_of(first_row), key_rows.as_ref(), first_row);
            let state = &mut self.keys[place];
            let count = state.sessions.len();
            for (start, end, ids) in runs.drain(..) {
                let overlaps = |s: &Session| s.start <= end && s.end >= start;
                let mut overlapping = state.sessions.iter().enumerate().filter(|(_, s)| overlaps(s)).map(|(i, _)| i);
                match (overlapping.next(), overlapping.next()) {
                    // The common case, a session going on: it takes the rows
                    // itself (the run overlaps no other session, so neither
                    // does the session grown by it, which keeps its place).
                    (Some(i), None) => {
                        let session = &mut state.sessions[i];
                        session.start = session.start.min(start);
                        session.end = session.end.max(end);
                        Self::assign(&order, ids, session.slot, &mut slot_of_row);
                    }
                    // Open sessions all end at or after the watermark, so a run that
                    // overlaps none and ends before it closed in the past: late.
                    (None, _) if self.watermark.is_some_and(|w| end < w) => {
                        late += ids.len();
                        for r in &order[ids] {
                            in_session[*r as usize] = false;
                        }
                    }
                    // A new session, which takes in every session it overlaps
                    // (their slots join its own).
                    _ => {
                        let mut session = Session { start, end, slot: self.slots.allocate(), merged: Vec::new() };
                        Self::assign(&order, ids, session.slot, &mut slot_of_row);
                        state.sessions.retain(|existing| {
                            if !overlaps(existing) {
                                return true;
                            }
                            session.start = session.start.min(existing.start);
                            session.end = session.end.max(existing.end);
                            session.merged.extend(existing.slots());
                            false
                        });
                        state.insert(session);
                    }
                }
            }
            self.open_sessions = self.open_sessions + state.sessions.len() - count;
            if count == 0 && !state.sessions.is_empty() {
                self.empty_keys -= 1;
            }
            self.schedule(place);
        }
        // Rows outside sessions are masked out (and, with none in a session,
        // there may be no slot to name).
        if late < ev.num_rows {
            let valid = (late > 0).then(|| BooleanArray::from(in_session));
            self.slots.update(&ev, &slot_of_row, valid.as_ref())?;
        }
        if late > 0 {
            self.metrics.add_late_rows(late);
        }
        self.report_state();
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else { return Ok(Some(wm)) };
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        let mut closed = self.close_sessions(t);
        if !closed.is_empty() {
            closed.sort_by_key(|(_, s)| (s.end, s.start));
            let mut groups = Regrouping::default();
            for (_, session) in &closed {
                groups.push(session.slots());
            }
            let values = self.slots.close(&groups)?;
            out.emit(self.closed_sessions_batch(&closed, values)?);
            if self.slots.sparse() {
                self.renumber_slots()?;
            }
            self.free_empty_keys();
        }
        self.report_state();
        // Sessions still open (every one ending before `t` just closed), or
        // opened later by rows at or after `t`, end at or after `t` and leave
        // later: the forwarded watermark stays strictly below their ends, so
        // a window aggregate downstream does not find them late.
        if t == i64::MAX && self.open_sessions == 0 {
            return Ok(Some(wm));
        }
        Ok(Some(Watermark::EventTime(t.saturating_sub(1))))
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let keyed = self.snapshot_sessions()?;
        self.report_state();
        keyed_with_watermark(self.watermark, keyed)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        let (watermark, keyed) = split_keyed_with_watermark(parts, "session aggregate")?;
        if let Some(w) = watermark {
            self.watermark = w;
        }
        for batch in &keyed {
            self.restore_sessions(batch)?;
        }
        self.report_state();
        Ok(())
    }
}

impl std::fmt::Debug for SessionAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionAggregate(gap={}, watermark={})", self.gap, self.watermark.map(format_nanos).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::checkpoint_testing::{aggregate_spec, check_resumes, exchange_key, input_steps, PARALLELISMS, SEC};

    fn session_aggregate(keyed: bool) -> impl Fn(&Arc<JobMetrics>) -> Box<dyn Operator> {
        let bounds = [("ts", "window_start"), ("window_end", "window_end")];
        let group: Vec<(&str, &str)> = if keyed { [("k", "k")].into_iter().chain(bounds).collect() } else { bounds.to_vec() };
        let aggregates =
            [("sum", "v", false), ("count", "v", false), ("max", "v", false), ("avg", "x", false), ("count", "v", true)];
        let spec = aggregate_spec(&group, &aggregates, false);
        move |metrics| Box::new(SessionAggregate::try_new(spec.clone(), 3 * SEC, Arc::clone(metrics)).expect("an aggregate"))
    }

    #[tokio::test]
    async fn resumes_from_a_snapshot_at_any_parallelism() -> Result<()> {
        let make = session_aggregate(true);
        let outcome = check_resumes(&make, &exchange_key(&["k"]), &input_steps(true), PARALLELISMS).await?;
        assert!(outcome.rows.len() > 20, "sessions of many keys: {}", outcome.rows.len());
        assert!(outcome.late_rows > 0, "some rows are late");
        Ok(())
    }

    #[tokio::test]
    async fn resumes_a_keyless_aggregate_in_lane_0() -> Result<()> {
        let make = session_aggregate(false);
        let outcome = check_resumes(&make, &[], &input_steps(false), PARALLELISMS).await?;
        assert!(!outcome.rows.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_row_between_sessions_merges_them_and_one_after_a_session_extends_it() -> Result<()> {
        use crate::operators::checkpoint_testing::{input_rows, Step};
        let make = session_aggregate(false);
        // Gap 3 s: sessions [0, 3) and [20, 23), then [10, 13) apart from both;
        // rows at 3, 6 and 9 s, one run ([3, 12)), bridge [0, 3) and [10, 13),
        // merging the three into [0, 13); the row at 18 s runs into [20, 23)
        // alone, which grows to [18, 23).
        let rows = |secs: &[i64]| Step::Batch(input_rows(&secs.iter().map(|s| (None, *s, *s)).collect::<Vec<_>>()));
        let steps = [rows(&[0, 20]), rows(&[10]), rows(&[9, 3, 6]), rows(&[18]), Step::Watermark(i64::MAX)];
        // Resumed after every step too: a snapshot right after the merge
        // holds the merged sessions' slots as one session.
        let outcome = check_resumes(&make, &[], &steps, PARALLELISMS).await?;
        let sessions: Vec<String> = outcome.rows.iter().map(|r| r.split('|').take(3).collect::<Vec<_>>().join("|")).collect();
        assert_eq!(
            sessions,
            vec!["1970-01-01T00:00:00|1970-01-01T00:00:13|28", "1970-01-01T00:00:18|1970-01-01T00:00:23|38"],
            "{:?}",
            outcome.rows
        );
        assert_eq!(outcome.late_rows, 0);
        Ok(())
    }

    #[tokio::test]
    async fn freed_slots_and_keys_are_reused_when_most_are_free() -> Result<()> {
        use crate::operators::checkpoint_testing::{input_rows, Step};
        let make = session_aggregate(true);
        // Gap 3 s. 6,000 keys open a session at 0 s; the first 1,000 go on
        // at 2 s. The watermark at 4 s closes the other 5,000 (most slots
        // free: they are packed); then the 1,000 go on at 4 s and 1,000 new
        // keys open sessions in the packed slots, and in the places of keys
        // freed then; 100 of the closed keys come back with a new session.
        let first: Vec<(Option<i64>, i64, i64)> =
            (0..6000).map(|k| (Some(k), 1, 0)).chain((0..1000).map(|k| (Some(k), 2, 2))).collect();
        let second: Vec<(Option<i64>, i64, i64)> =
            (0..1000).map(|k| (Some(k), 3, 4)).chain((6000..7000).map(|k| (Some(k), 5, 4))).chain((5000..5100).map(|k| (Some(k), 7, 4))).collect();
        let steps = [
            Step::Batch(input_rows(&first)),
            Step::Watermark(4 * SEC),
            Step::Batch(input_rows(&second)),
            Step::Watermark(i64::MAX),
        ];
        let outcome = check_resumes(&make, &exchange_key(&["k"]), &steps, &[(1, 1), (1, 3)]).await?;
        assert_eq!(outcome.rows.len(), 7100);
        for row in &outcome.rows {
            let fields: Vec<&str> = row.split('|').collect();
            let key: i64 = fields[0].parse().expect("a key");
            // (sum, count, max) of v.
            let second_session = fields[1].ends_with("00:00:04");
            let expected = match key {
                0..1000 => ("6", "3", "3"),
                5000..5100 if second_session => ("7", "1", "7"),
                1000..6000 => ("1", "1", "1"),
                _ => ("5", "1", "5"),
            };
            assert_eq!((fields[3], fields[4], fields[5]), expected, "{row}");
        }
        assert_eq!(outcome.late_rows, 0);
        Ok(())
    }
}
