//! The symmetric hash join behind interval, window, lookup and regular joins.
//!
//! Checkpointed state: tables [`LEFT_TABLE`] and [`RIGHT_TABLE`] hold each
//! side's kept rows, keyed by that side's join key (see [`super::side`]);
//! [`HELD_TABLE`] the stream rows a lookup join holds until its table is
//! complete, keyed likewise; [`LANE_TABLE`] the lane's watermarks (merged and
//! per input), which inputs have ended and a held-back watermark.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::output::{passes, OutputBuilder, Pick};
use super::keys::JoinKeys;
use super::side::{side_rows, NewRows, RowRef, SideState};
use super::{JoinKind, JoinMode, JoinSpec};
use crate::changelog::ChangeKind;
use crate::checkpoint::StatePart;
use crate::operators::state_table::{concat_tables, corrupt, int64_column, key_groups, table};
use crate::error::{EngineError, Result};
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator};

/// The checkpoint table of the left input's kept rows (keyed).
pub const LEFT_TABLE: usize = 0;
/// The checkpoint table of the right input's kept rows (keyed).
pub const RIGHT_TABLE: usize = 1;
/// The checkpoint table of the lane's watermarks and ended inputs.
pub const LANE_TABLE: usize = 2;
/// The checkpoint table of a lookup join's held stream rows (keyed).
pub const HELD_TABLE: usize = 3;

/// Joins two inputs by key, keeping each side's rows while the other side can
/// still bring partners for them (see [`JoinMode`]).
pub struct StreamJoin {
    kind: JoinKind,
    /// The two inputs' schemas.
    schemas: [SchemaRef; 2],
    keys: JoinKeys,
    mode: JoinMode,
    description: String,
    out: OutputBuilder,
    sides: [SideState; 2],
    ended: [bool; 2],
    watermark: Option<i64>,
    /// Each input's own watermark: a row below its input's watermark is late,
    /// whatever the other input's progress (so lateness does not depend on how
    /// the two inputs interleave).
    input_watermarks: [Option<i64>; 2],
    /// Lookup joins: batches of the streaming input that arrived before the
    /// table was complete, and the watermark held back with them.
    held: Vec<RecordBatch>,
    held_watermark: Option<Watermark>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
}

/// One arriving batch, reduced to the rows that are not late.
struct Arrival {
    batch: RecordBatch,
    times: Vec<i64>,
    expiries: Option<Vec<i64>>,
}

impl StreamJoin {
    pub fn try_new(spec: JoinSpec, mode: JoinMode, metrics: Arc<JobMetrics>) -> Result<Self> {
        if let JoinMode::Lookup { table } = mode {
            if spec.kind.keeps_unmatched(table) {
                return Err(EngineError::Plan(
                    "a lookup join can keep unmatched rows of the stream only (use the stream on the outer side)"
                        .into(),
                ));
            }
        }
        let changelog = matches!(mode, JoinMode::Regular { .. }) && spec.kind != JoinKind::Inner;
        let out = OutputBuilder::new(&spec, changelog);
        let state = metrics.state_reporter();
        Ok(StreamJoin {
            kind: spec.kind,
            schemas: spec.schemas.clone(),
            keys: JoinKeys::try_new(spec.keys, &spec.schemas)?,
            mode,
            description: spec.description,
            out,
            sides: [SideState::default(), SideState::default()],
            ended: [false, false],
            watermark: None,
            input_watermarks: [None, None],
            held: Vec::new(),
            held_watermark: None,
            metrics,
            state,
        })
    }

    /// The schema of the join's output (with the change-kind column if the join
    /// emits a changelog).
    pub fn output_schema(&self) -> SchemaRef {
        self.out.schema()
    }

    /// Drops late rows and computes event times and expiries (time-bounded joins).
    fn admit(&self, side: usize, batch: RecordBatch) -> Result<Arrival> {
        let JoinMode::TimeBounded(times) = &self.mode else {
            let n = batch.num_rows();
            return Ok(Arrival { batch, times: vec![0; n], expiries: None });
        };
        let time = times[side].time.evaluate(&batch)?;
        let offset = times[side].expiry_offset;
        let expiry = time.unary::<_, datafusion::arrow::datatypes::Int64Type>(|t| t.saturating_add(offset));
        let w = self.input_watermarks[side].or(self.watermark).unwrap_or(i64::MIN);
        let keep: Vec<bool> = (0..batch.num_rows())
            .map(|i| time.is_valid(i) && expiry.is_valid(i) && time.value(i) >= w)
            .collect();
        let kept = keep.iter().filter(|k| **k).count();
        self.metrics.add_late_rows(batch.num_rows() - kept);
        let mask = datafusion::arrow::array::BooleanArray::from(keep.clone());
        let batch = if kept == batch.num_rows() { batch } else { filter_record_batch(&batch, &mask)? };
        let pick = |a: &datafusion::arrow::array::Int64Array| -> Vec<i64> {
            keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| a.value(i)).collect()
        };
        Ok(Arrival { batch, times: pick(&time), expiries: Some(pick(&expiry)) })
    }

    async fn arrive(&mut self, side: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.expire_by_ttl();
        if let JoinMode::Lookup { table } = self.mode {
            if side != table && !self.ended[table] {
                self.held.push(batch);
                self.report_state();
                return Ok(());
            }
        }
        let Arrival { batch, times, expiries } = self.admit(side, batch)?;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let other = 1 - side;
        let keys = self.keys.evaluate(side, &batch)?;
        let columns = batch.columns().to_vec();

        let mut matches = vec![0u32; n];
        let mut probe_rows = Vec::new();
        let mut stored_rows: Vec<RowRef> = Vec::new();
        for (i, is_keyed) in keys.keyed.iter().enumerate() {
            if *is_keyed {
                for r in self.sides[other].candidates(keys.rows.row(i)) {
                    probe_rows.push(i as u32);
                    stored_rows.push(r);
                }
            }
        }
        if !probe_rows.is_empty() {
            let probe: Vec<Pick> = probe_rows.iter().map(|i| Pick::Probe(*i)).collect();
            let stored: Vec<Pick> = stored_rows.iter().map(|r| Pick::Stored(*r)).collect();
            let picks = |s: usize| if s == side { &probe } else { &stored };
            let probe_of = |s: usize| (s == side).then_some(columns.as_slice());
            let left = self.out.gather(0, picks(0), probe_of(0), &self.sides[0])?;
            let right = self.out.gather(1, picks(1), probe_of(1), &self.sides[1])?;
            let mask = self.out.filter_mask(&left, &right, probe_rows.len())?;
            let passing: Vec<u32> =
                (0..probe_rows.len()).filter(|i| passes(mask.as_ref(), *i)).map(|i| i as u32).collect();
            let mut first_matches = Vec::new();
            for &k in &passing {
                matches[probe_rows[k as usize] as usize] += 1;
                let before = self.sides[other].add_match(stored_rows[k as usize]);
                if before == 0 && self.out.is_changelog() && self.kind.keeps_unmatched(other) {
                    first_matches.push(Pick::Stored(stored_rows[k as usize]));
                }
            }
            if !first_matches.is_empty() {
                // The NULL-padded rows sent for them before are taken back.
                self.emit_padded(other, &first_matches, None, ChangeKind::Delete, out)?;
            }
            if !passing.is_empty() {
                let indices = UInt32Array::from(passing.clone());
                let take_all = |cols: Vec<ArrayRef>| -> Result<Vec<ArrayRef>> {
                    cols.iter().map(|c| Ok(take(c.as_ref(), &indices, None)?)).collect()
                };
                let joined = self.out.build(take_all(left)?, take_all(right)?, passing.len(), ChangeKind::Insert)?;
                out.emit(joined);
            }
        }

        let w = self.watermark.unwrap_or(i64::MIN);
        let store: Vec<bool> = (0..n)
            .map(|i| match (&self.mode, &expiries) {
                // The table is kept whole: held stream rows still probe it.
                (JoinMode::Lookup { table }, _) => side == *table,
                (JoinMode::TimeBounded(_), Some(e)) => !self.ended[other] && e[i] >= w,
                _ => !self.ended[other],
            })
            .collect();
        if self.kind.keeps_unmatched(side) {
            let padded_now: Vec<Pick> = (0..n)
                .filter(|i| matches[*i] == 0 && (!store[*i] || self.out.is_changelog()))
                .map(|i| Pick::Probe(i as u32))
                .collect();
            if !padded_now.is_empty() {
                self.emit_padded(side, &padded_now, Some(&columns), ChangeKind::Insert, out)?;
            }
        }
        self.store(side, &batch, &store, &keys.columns, times, expiries, matches)?;
        self.report_state();
        Ok(())
    }

    /// Keeps the rows of `batch` marked in `store`.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        side: usize,
        batch: &RecordBatch,
        store: &[bool],
        key_columns: &[ArrayRef],
        times: Vec<i64>,
        expiries: Option<Vec<i64>>,
        matches: Vec<u32>,
    ) -> Result<()> {
        let kept: Vec<u32> = (0..store.len()).filter(|i| store[*i]).map(|i| i as u32).collect();
        if kept.is_empty() {
            return Ok(());
        }
        let select = |v: &[i64]| kept.iter().map(|i| v[*i as usize]).collect::<Vec<_>>();
        // Always copied: an arriving batch may be a slice of a much larger
        // buffer, which keeping it would keep whole.
        let indices = UInt32Array::from(kept.clone());
        let take_all = |cols: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
            cols.iter().map(|c| Ok(take(c.as_ref(), &indices, None)?)).collect()
        };
        let columns = take_all(batch.columns())?;
        let keys = self.keys.encode(take_all(key_columns)?, kept.len())?;
        self.sides[side].insert(NewRows {
            columns,
            keys: keys.rows,
            keyed: keys.keyed,
            times: select(&times),
            expiries: expiries.as_deref().map(select),
            matches: kept.iter().map(|i| matches[*i as usize]).collect(),
        });
        Ok(())
    }

    /// Emits rows of `side` with NULLs for the other side's columns.
    fn emit_padded(
        &self,
        side: usize,
        picks: &[Pick],
        probe: Option<&[ArrayRef]>,
        kind: ChangeKind,
        out: &mut Emitter,
    ) -> Result<()> {
        let nulls = vec![Pick::Null; picks.len()];
        let own = self.out.gather(side, picks, probe, &self.sides[side])?;
        let other = self.out.gather(1 - side, &nulls, None, &self.sides[1 - side])?;
        let (left, right) = if side == 0 { (own, other) } else { (other, own) };
        out.emit(self.out.build(left, right, picks.len(), kind)?);
        Ok(())
    }

    fn expire_by_ttl(&mut self) {
        if let JoinMode::Regular { ttl: Some(ttl) } = self.mode {
            for side in &mut self.sides {
                side.expire_older_than(ttl);
                side.sweep();
            }
        }
    }

    /// The lane's watermarks, ended inputs and held watermark as one row.
    fn lane_part(&self) -> Result<StatePart> {
        let int = |v: Option<i64>| -> ArrayRef { Arc::new(datafusion::arrow::array::Int64Array::from(vec![v])) };
        let flag = |v: bool| -> ArrayRef { Arc::new(datafusion::arrow::array::BooleanArray::from(vec![v])) };
        let held = match self.held_watermark {
            Some(Watermark::EventTime(t)) => Some(t),
            _ => None,
        };
        let columns = vec![
            ("watermark".to_string(), int(self.watermark)),
            ("left_watermark".to_string(), int(self.input_watermarks[0])),
            ("right_watermark".to_string(), int(self.input_watermarks[1])),
            ("left_ended".to_string(), flag(self.ended[0])),
            ("right_ended".to_string(), flag(self.ended[1])),
            ("held_watermark".to_string(), int(held)),
        ];
        Ok(StatePart::lane(table(columns, 1)?))
    }

    /// Takes the lane state of one lane, or of several (after a change of
    /// parallelism: the lowest watermarks; an input ended if it ended for all).
    fn restore_lanes(&mut self, parts: &[&StatePart]) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let lowest = |column: usize| -> Result<Option<i64>> {
            let mut lowest: Option<Option<i64>> = None;
            for p in parts {
                let c = int64_column(&p.batch, column)?;
                for i in 0..c.len() {
                    let v = c.is_valid(i).then(|| c.value(i));
                    lowest = Some(lowest.map_or(v, |l| l.min(v)));
                }
            }
            Ok(lowest.flatten())
        };
        let all = |column: usize| -> Result<bool> {
            let mut all = true;
            for p in parts {
                let c = p.batch.columns().get(column).ok_or_else(|| corrupt("the join's lane table lacks a column"))?;
                let c = c.as_any().downcast_ref::<datafusion::arrow::array::BooleanArray>();
                let c = c.ok_or_else(|| corrupt("the join's ended flags are not booleans"))?;
                all &= (0..c.len()).all(|i| c.is_valid(i) && c.value(i));
            }
            Ok(all)
        };
        self.watermark = lowest(0)?;
        self.input_watermarks = [lowest(1)?, lowest(2)?];
        self.ended = [all(3)?, all(4)?];
        // A held watermark: the lowest any lane held.
        let mut held: Option<i64> = None;
        for p in parts {
            let c = int64_column(&p.batch, 5)?;
            for i in (0..c.len()).filter(|i| c.is_valid(*i)) {
                held = Some(held.map_or(c.value(i), |h| h.min(c.value(i))));
            }
        }
        self.held_watermark = held.map(Watermark::EventTime);
        Ok(())
    }

    /// A lookup join's held stream rows as one table, keyed by their join key.
    fn held_part(&self) -> Result<Option<StatePart>> {
        let JoinMode::Lookup { table: t } = self.mode else { return Ok(None) };
        let stream = 1 - t;
        let named = self
            .held
            .iter()
            .map(|b| {
                let columns = self.schemas[stream].fields().iter().zip(b.columns()).map(|(f, c)| (f.name().clone(), Arc::clone(c)));
                table(columns.collect(), b.num_rows())
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(batch) = concat_tables(&named)? else { return Ok(None) };
        let keys = self.keys.evaluate(stream, &side_rows(&batch, &self.schemas[stream])?)?;
        let groups = key_groups(&keys.columns, batch.num_rows())?;
        Ok(Some(StatePart::keyed(batch, groups)))
    }

    fn ttl(&self) -> Option<std::time::Duration> {
        match self.mode {
            JoinMode::Regular { ttl } => ttl,
            _ => None,
        }
    }

    fn report_state(&mut self) {
        let held: usize = self.held.iter().map(|b| b.get_array_memory_size()).sum();
        self.state.set(self.sides[0].bytes() + self.sides[1].bytes() + held);
    }
}

#[async_trait]
impl Operator for StreamJoin {
    fn name(&self) -> &'static str {
        "join"
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn state_bound(&self) -> crate::operator::StateBound {
        use crate::operator::StateBound;
        match self.mode {
            JoinMode::TimeBounded(_) => StateBound::Watermark,
            JoinMode::Regular { ttl: Some(_) } => StateBound::Ttl,
            JoinMode::Regular { ttl: None } => StateBound::Unbounded,
            JoinMode::Lookup { .. } => StateBound::BoundedInput,
        }
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.arrive(0, batch, out).await
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let mut parts = vec![(LANE_TABLE, self.lane_part()?)];
        for (side, t) in [(0, LEFT_TABLE), (1, RIGHT_TABLE)] {
            if let Some(p) = self.sides[side].snapshot(&self.keys, side, &self.schemas[side])? {
                parts.push((t, p));
            }
        }
        if let Some(p) = self.held_part()? {
            parts.push((HELD_TABLE, p));
        }
        Ok(parts)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        let lanes: Vec<&StatePart> = parts.iter().filter(|(t, _)| *t == LANE_TABLE).map(|(_, p)| p).collect();
        self.restore_lanes(&lanes)?;
        // Each side's rows restored at once, so that they are stored in the
        // order they were first stored (a TTL retires the oldest first).
        for (side, t) in [(0, LEFT_TABLE), (1, RIGHT_TABLE)] {
            let tables: Vec<RecordBatch> = parts.iter().filter(|(n, _)| *n == t).map(|(_, p)| p.batch.clone()).collect();
            if let Some(batch) = concat_tables(&tables)? {
                self.sides[side].restore(&batch, &self.keys, side, &self.schemas[side], self.ttl())?;
            }
        }
        for (t, part) in &parts {
            match *t {
                LEFT_TABLE | RIGHT_TABLE => {}
                HELD_TABLE => {
                    let JoinMode::Lookup { table: t } = self.mode else {
                        return Err(corrupt("held rows for a join that holds none"));
                    };
                    self.held.push(side_rows(&part.batch, &self.schemas[1 - t])?);
                }
                LANE_TABLE => {}
                other => return Err(corrupt(&format!("the join has no table {other}"))),
            }
        }
        self.report_state();
        Ok(())
    }

    async fn on_batch_from(&mut self, input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.arrive(input.min(1), batch, out).await
    }

    async fn on_input_watermark(&mut self, input: usize, wm: Watermark, _out: &mut Emitter) -> Result<()> {
        if let (Watermark::EventTime(t), Some(w)) = (wm, self.input_watermarks.get_mut(input)) {
            *w = Some(w.map_or(t, |w| w.max(t)));
        }
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else { return Ok(Some(wm)) };
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        match self.mode {
            JoinMode::Lookup { table } if !self.ended[table] => {
                self.held_watermark = Some(wm);
                Ok(None)
            }
            JoinMode::TimeBounded(_) => {
                for side in 0..2 {
                    let unmatched = self.sides[side].expire_before(t);
                    if self.kind.keeps_unmatched(side) && !unmatched.is_empty() {
                        let picks: Vec<Pick> = unmatched.into_iter().map(Pick::Stored).collect();
                        self.emit_padded(side, &picks, None, ChangeKind::Insert, out)?;
                    }
                    self.sides[side].sweep();
                }
                self.report_state();
                // Kept rows may still be emitted: time does not pass the oldest.
                let oldest = self.sides.iter().filter_map(|s| s.min_time()).min();
                Ok(Some(Watermark::EventTime(oldest.map_or(t, |o| o.min(t)))))
            }
            _ => {
                self.expire_by_ttl();
                self.report_state();
                Ok(Some(wm))
            }
        }
    }

    async fn on_end(&mut self, out: &mut Emitter) -> Result<()> {
        // The inputs' last ends come with the end of everything.
        if let JoinMode::Lookup { table } = self.mode {
            if !self.ended[table] {
                self.on_input_end(table, out).await?;
            }
        }
        Ok(())
    }

    async fn on_input_end(&mut self, input: usize, out: &mut Emitter) -> Result<()> {
        let input = input.min(1);
        self.ended[input] = true;
        if let JoinMode::Lookup { table } = self.mode {
            if input == table {
                for batch in std::mem::take(&mut self.held) {
                    self.arrive(1 - table, batch, out).await?;
                }
                if let Some(wm) = self.held_watermark.take() {
                    out.emit_watermark(wm);
                }
            }
            self.report_state();
            return Ok(());
        }
        // Rows kept for partners from the ended input will find none.
        let other = 1 - input;
        let unmatched = self.sides[other].retire_all();
        if self.kind.keeps_unmatched(other) && !self.out.is_changelog() && !unmatched.is_empty() {
            let picks: Vec<Pick> = unmatched.into_iter().map(Pick::Stored).collect();
            self.emit_padded(other, &picks, None, ChangeKind::Insert, out)?;
        }
        self.sides[other].sweep();
        self.report_state();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::operators::join::{EventTime, SideTimes};
    use datafusion::arrow::array::{Int64Array, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::physical_expr::expressions::Column;

    const SEC: i64 = 1_000_000_000;

    fn schema(name: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(name, DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ]))
    }

    fn rows(schema: &SchemaRef, keys: &[i64], secs: &[i64]) -> RecordBatch {
        let ts: Vec<i64> = secs.iter().map(|s| s * SEC).collect();
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![Arc::new(Int64Array::from(keys.to_vec())), Arc::new(TimestampNanosecondArray::from(ts))],
        )
        .unwrap()
    }

    /// A left outer join where the right row may come up to 5 s after the left.
    fn interval_join(metrics: &Arc<JobMetrics>) -> (StreamJoin, SchemaRef, SchemaRef) {
        let (l, r) = (schema("a"), schema("b"));
        let output = Arc::new(Schema::new(
            l.fields().iter().chain(r.fields().iter()).map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let spec = JoinSpec {
            kind: JoinKind::Left,
            schemas: [Arc::clone(&l), Arc::clone(&r)],
            keys: [vec![Arc::new(Column::new("a", 0))], vec![Arc::new(Column::new("b", 0))]],
            filter: None,
            projection: None,
            output_schema: output,
            description: "test".into(),
        };
        let time = EventTime { column: 1, offset: 0 };
        let mode = JoinMode::TimeBounded([
            SideTimes { time, expiry_offset: 5 * SEC },
            SideTimes { time, expiry_offset: 0 },
        ]);
        (StreamJoin::try_new(spec, mode, Arc::clone(metrics)).unwrap(), l, r)
    }

    fn emitted(out: &mut Emitter) -> Vec<(Option<i64>, Option<i64>)> {
        let mut pairs = Vec::new();
        for m in out.drain() {
            if let Message::Batch(b) = m {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                let c = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                for i in 0..b.num_rows() {
                    pairs.push((a.is_valid(i).then(|| a.value(i)), c.is_valid(i).then(|| c.value(i))));
                }
            }
        }
        pairs
    }

    #[tokio::test]
    async fn late_rows_are_dropped_and_unmatched_rows_wait_for_the_watermark() {
        let metrics = JobMetrics::new();
        let (mut join, l, r) = interval_join(&metrics);
        let mut out = Emitter::default();
        join.on_batch_from(0, rows(&l, &[1, 2], &[10, 11]), &mut out).await.unwrap();
        join.on_batch_from(1, rows(&r, &[1], &[14]), &mut out).await.unwrap();
        assert_eq!(emitted(&mut out), vec![(Some(1), Some(1))]);
        // Time passes 16 s: left row 1 (10 s) and 2 (11 s) can still match up to 15 s and 16 s.
        let wm = join.on_watermark(Watermark::EventTime(16 * SEC), &mut out).await.unwrap();
        assert_eq!(emitted(&mut out), vec![], "row 2 may still find a partner at 16 s");
        assert_eq!(wm, Some(Watermark::EventTime(11 * SEC)), "held back to the oldest kept row");
        // A right row at 15 s is late (below the watermark): dropped and counted.
        join.on_batch_from(1, rows(&r, &[2], &[15]), &mut out).await.unwrap();
        assert_eq!(emitted(&mut out), vec![]);
        assert_eq!(metrics.snapshot().late_rows, 1);
        let wm = join.on_watermark(Watermark::EventTime(17 * SEC), &mut out).await.unwrap();
        assert_eq!(emitted(&mut out), vec![(Some(2), None)], "row 2 can no longer match: padded with NULLs");
        assert_eq!(wm, Some(Watermark::EventTime(17 * SEC)), "the right row (14 s) retired too: nothing kept");
        assert_eq!(metrics.snapshot().state_bytes, 0);
    }
}
