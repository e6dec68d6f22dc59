//! Turns a source's rows into watermarks: `WATERMARK FOR ts AS <expr>`.
//!
//! A source that reads several splits in one lane (a Kafka consumer assigned
//! several partitions) sends each batch with a [`SplitTag`]: its split, the
//! lane's splits and their idle time. The watermark is then the minimum over
//! the splits, so a partition read ahead of another does not make the other's
//! rows late; a split without rows for the idle time stops holding the others
//! back, as in Flink.
//!
//! Checkpointed state (of the lane as a whole, not keyed): table
//! [`WATERMARK_TABLE`] holds the watermark and whether the source was idle;
//! table [`SPLITS_TABLE`] each split's highest event time. A lane restored at
//! another parallelism starts from the lowest of the old lanes' watermarks, and
//! takes the highest times of the splits it is then given. When a split last
//! had rows (for idleness) is not kept: a restored split starts as just seen.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::PhysicalExpr;

use super::state_table::{corrupt, int64_column, restored_watermark, table};
use crate::checkpoint::StatePart;
use crate::error::Result;
use crate::message::Watermark;
use crate::operator::{Emitter, Operator};
use crate::source::SplitTag;
use crate::time::as_epoch_nanos;

/// Evaluates the watermark expression on every batch and emits the running maximum
/// after the batch. Watermarks only move forward; the source's final maximal
/// watermark is forwarded as is.
pub struct WatermarkAssigner {
    expr: Arc<dyn PhysicalExpr>,
    expr_sql: String,
    current: Option<i64>,
    /// The source went idle: the next batch re-announces the current watermark.
    idle: bool,
    /// Per split of the lane: its highest candidate and when it last had rows.
    splits: HashMap<String, SplitState>,
    /// With watermark alignment: this source's place among the query's sources.
    alignment: Option<crate::alignment::AlignmentMember>,
    /// Splits' highest times from a checkpoint, taken when the lane learns it
    /// reads them.
    restored_splits: HashMap<String, i64>,
    /// The column the expression rises with, if it is that column plus or
    /// minus a constant (see [`rising_column`]).
    rising_with: Option<usize>,
}

/// The column a watermark expression rises with, when the expression is a
/// timestamp column itself or that column plus or minus a constant (`ts -
/// INTERVAL '5' SECOND`, the usual form): the batch's highest watermark is then
/// the expression at the column's highest row.
fn rising_column(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    use datafusion::logical_expr::Operator as Op;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
    if let Some(column) = expr.downcast_ref::<Column>() {
        return Some(column.index());
    }
    let binary = expr.downcast_ref::<BinaryExpr>()?;
    if !matches!(binary.op(), Op::Plus | Op::Minus) || binary.right().downcast_ref::<Literal>().is_none() {
        return None;
    }
    binary.left().downcast_ref::<Column>().map(|c| c.index())
}

/// The checkpoint table of the lane's watermark and idleness.
pub const WATERMARK_TABLE: usize = 0;
/// The checkpoint table of the splits' highest event times.
pub const SPLITS_TABLE: usize = 1;


struct SplitState {
    max: Option<i64>,
    seen: Instant,
}

impl WatermarkAssigner {
    /// `expr` is evaluated against the source schema and must yield a timestamp.
    pub fn new(expr: Arc<dyn PhysicalExpr>, expr_sql: impl Into<String>) -> Self {
        WatermarkAssigner {
            expr_sql: expr_sql.into(),
            current: None,
            idle: false,
            splits: HashMap::new(),
            alignment: None,
            restored_splits: HashMap::new(),
            rising_with: rising_column(&expr),
            expr,
        }
    }

    /// Keeps this source within the group's drift of the query's other sources.
    pub fn aligned(mut self, group: &Arc<crate::alignment::AlignmentGroup>) -> Self {
        self.alignment = Some(group.join());
        self
    }

    /// Records a split's batch; the lane's candidate is the minimum over its
    /// active splits (`None` while an active split has had no rows yet).
    fn split_candidate(&mut self, tag: SplitTag, max: Option<i64>) -> Option<i64> {
        let now = Instant::now();
        // The lane's splits are learnt from the first batch of each new split.
        if !self.splits.contains_key(&tag.split) {
            for s in tag.splits.iter() {
                if !self.splits.contains_key(s) {
                    let max = self.restored_splits.remove(s);
                    self.splits.insert(s.clone(), SplitState { max, seen: now });
                }
            }
        }
        if !self.splits.contains_key(&tag.split) {
            let max = self.restored_splits.remove(&tag.split);
            self.splits.insert(tag.split.clone(), SplitState { max, seen: now });
        }
        let state = self.splits.get_mut(&tag.split)?;
        state.seen = now;
        if let Some(m) = max {
            state.max = Some(state.max.map_or(m, |c| c.max(m)));
        }
        let idle = tag.idle_after;
        let mut candidate: Option<i64> = None;
        for s in self.splits.values() {
            if idle.is_some_and(|d| now.duration_since(s.seen) > d) {
                continue;
            }
            let m = s.max?;
            candidate = Some(candidate.map_or(m, |c| c.min(m)));
        }
        candidate
    }

    /// A batch of the source, of one split of the lane if `split` says so.
    async fn on_rows(&mut self, split: Option<SplitTag>, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        if let Some(a) = &self.alignment {
            if self.idle {
                a.set_active(true);
            }
            // Ahead of the slowest source by more than the drift, the source
            // waits before reading on (see `source_gate`).
        }
        let mut max = self.batch_max(&batch)?;
        if let Some(split) = split {
            max = self.split_candidate(split, max);
        }
        out.emit(batch);
        match max.and_then(|m| self.advance(m)) {
            Some(wm) => out.emit_watermark(wm),
            None if self.idle => {
                if let Some(current) = self.current {
                    out.emit_watermark(Watermark::EventTime(current));
                }
            }
            None => {}
        }
        self.idle = false;
        Ok(())
    }


    /// The highest value of the watermark expression over the batch. When the
    /// expression rises with one column, it is evaluated at that column's
    /// highest row only.
    fn batch_max(&self, batch: &RecordBatch) -> Result<Option<i64>> {
        let batch = match self.rising_with {
            Some(column) => {
                let times = as_epoch_nanos(batch.column(column))?;
                let highest = times.iter().enumerate().filter_map(|(i, t)| Some((t?, i))).max();
                match highest {
                    Some((_, row)) => batch.slice(row, 1),
                    None => return Ok(None),
                }
            }
            None => batch.clone(),
        };
        let values = self.expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        Ok(datafusion::arrow::compute::max(&as_epoch_nanos(&values)?))
    }

    fn advance(&mut self, candidate: i64) -> Option<Watermark> {
        if self.current.is_none_or(|c| candidate > c) {
            self.current = Some(candidate);
            if let Some(a) = &self.alignment {
                a.report(candidate);
            }
            Some(Watermark::EventTime(candidate))
        } else {
            None
        }
    }
}

#[async_trait]
impl Operator for WatermarkAssigner {
    fn name(&self) -> &'static str {
        "watermark"
    }

    fn describe(&self) -> String {
        match &self.alignment {
            None => format!("watermark: {}", self.expr_sql),
            Some(a) => format!(
                "watermark: {} (aligned: at most {} ahead of the query's slowest source)",
                self.expr_sql,
                crate::time::format_duration_nanos(a.max_drift())
            ),
        }
    }

    async fn on_end(&mut self, _out: &mut Emitter) -> Result<()> {
        if let Some(a) = &self.alignment {
            a.set_active(false);
        }
        Ok(())
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.on_rows(None, batch, out).await
    }

    async fn on_split_batch(&mut self, split: SplitTag, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.on_rows(Some(split), batch, out).await
    }

    fn source_gate(&self) -> Option<crate::alignment::AlignmentGate> {
        self.alignment.as_ref().map(|a| a.gate())
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let watermark: ArrayRef = Arc::new(Int64Array::from(vec![self.current]));
        let idle: ArrayRef = Arc::new(BooleanArray::from(vec![self.idle]));
        let mut parts =
            vec![(WATERMARK_TABLE, StatePart::lane(table(vec![("watermark".into(), watermark), ("idle".into(), idle)], 1)?))];
        // Splits not read since a restore keep their restored times.
        let splits: Vec<(&String, Option<i64>)> = self
            .splits
            .iter()
            .map(|(name, s)| (name, s.max))
            .chain(self.restored_splits.iter().map(|(name, max)| (name, Some(*max))))
            .collect();
        if !splits.is_empty() {
            let names: ArrayRef = Arc::new(StringArray::from(splits.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()));
            let maxima: ArrayRef = Arc::new(Int64Array::from(splits.iter().map(|(_, m)| *m).collect::<Vec<_>>()));
            let rows = splits.len();
            parts.push((SPLITS_TABLE, StatePart::lane(table(vec![("split".into(), names), ("max".into(), maxima)], rows)?)));
        }
        Ok(parts)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        let lanes: Vec<&StatePart> = parts.iter().filter(|(t, _)| *t == WATERMARK_TABLE).map(|(_, p)| p).collect();
        if let Some(current) = restored_watermark(lanes.iter().copied())? {
            self.current = current;
            // Idle only if every lane it takes over was.
            self.idle = lanes.iter().all(|p| {
                p.batch.column_by_name("idle").is_some_and(|c| {
                    let idle = c.as_boolean();
                    (0..idle.len()).all(|i| idle.is_valid(i) && idle.value(i))
                })
            });
            if let (Some(a), Some(c)) = (&self.alignment, self.current) {
                a.report(c);
            }
        }
        for (t, part) in &parts {
            match *t {
                WATERMARK_TABLE => {}
                SPLITS_TABLE => {
                    let names = part.batch.columns().first().ok_or_else(|| corrupt("the splits table is empty"))?;
                    let names = datafusion::arrow::compute::cast(names, &datafusion::arrow::datatypes::DataType::Utf8)?;
                    let names = names.as_string::<i32>();
                    let maxima = int64_column(&part.batch, 1)?;
                    for i in 0..names.len() {
                        if names.is_valid(i) && maxima.is_valid(i) {
                            let max = self.restored_splits.entry(names.value(i).to_string()).or_insert(maxima.value(i));
                            *max = (*max).max(maxima.value(i));
                        }
                    }
                }
                other => return Err(corrupt(&format!("the watermark assigner has no table {other}"))),
            }
        }
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        match wm {
            Watermark::EventTime(t) => Ok(self.advance(t)),
            Watermark::Idle => {
                // Every split is quiet: none holds the others back any more,
                // so time moves to what the furthest one has seen.
                let restored = self.restored_splits.values().copied();
                let furthest = self.splits.values().filter_map(|s| s.max).chain(restored).max();
                if let Some(wm) = furthest.and_then(|m| self.advance(m)) {
                    out.emit_watermark(wm);
                }
                self.idle = true;
                if let Some(a) = &self.alignment {
                    a.set_active(false);
                }
                Ok(Some(Watermark::Idle))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::message::Message;
    use crate::operators::checkpoint_testing::{redistribute, SEC};

    /// Rows of one split, or the source going idle.
    #[derive(Clone)]
    enum Step {
        Rows(&'static str, Vec<i64>),
        Idle,
    }

    fn steps() -> Vec<Step> {
        use Step::*;
        vec![
            Rows("a", vec![5, 3]),
            Rows("b", vec![2]),
            Rows("a", vec![9]),
            Rows("c", vec![4, 1]),
            Rows("b", vec![8]),
            Idle,
            Rows("c", vec![12]),
            Rows("a", vec![11]),
            Rows("b", vec![15, 7]),
            Rows("c", vec![20]),
        ]
    }

    fn assigner() -> WatermarkAssigner {
        WatermarkAssigner::new(Arc::new(Column::new("ts", 0)), "ts")
    }

    fn batch(secs: &[i64]) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false)]);
        let ts = TimestampNanosecondArray::from(secs.iter().map(|s| s * SEC).collect::<Vec<_>>());
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).expect("a batch")
    }

    /// `ts - INTERVAL '5' SECOND`, and the same through a cast that is not a
    /// constant offset (evaluated on every row).
    fn delayed_by_five_seconds() -> Result<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)> {
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::Operator as Op;
        use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Literal};
        let ts: Arc<dyn PhysicalExpr> = Arc::new(Column::new("ts", 0));
        let five = || Arc::new(Literal::new(ScalarValue::new_interval_mdn(0, 0, 5 * SEC)));
        let rising = Arc::new(BinaryExpr::new(Arc::clone(&ts), Op::Minus, five()));
        let cast = Arc::new(CastExpr::new(ts, DataType::Timestamp(TimeUnit::Millisecond, None), None));
        Ok((rising, Arc::new(BinaryExpr::new(cast, Op::Minus, five()))))
    }

    #[tokio::test]
    async fn a_constant_offset_is_applied_at_the_batchs_latest_row() -> Result<()> {
        let (rising, other) = delayed_by_five_seconds()?;
        assert_eq!(rising_column(&rising), Some(0));
        assert_eq!(rising_column(&other), None);
        let mut marks = Vec::new();
        for expr in [rising, other] {
            let mut op = WatermarkAssigner::new(expr, "ts - INTERVAL '5' SECOND");
            let mut out = Emitter::default();
            for secs in [&[30, 90, 60][..], &[70, 20]] {
                op.on_batch(batch(secs), &mut out).await?;
            }
            let found: Vec<_> = out
                .drain()
                .into_iter()
                .filter_map(|m| match m {
                    Message::Watermark(Watermark::EventTime(t)) => Some(t / SEC),
                    _ => None,
                })
                .collect();
            marks.push(found);
        }
        assert_eq!(marks, vec![vec![85], vec![85]]);
        Ok(())
    }

    /// Source lanes reading the splits `assignment` gives each.
    struct Lanes {
        ops: Vec<WatermarkAssigner>,
        assignment: Vec<Vec<&'static str>>,
        /// Lanes that have had rows.
        active: Vec<bool>,
        /// How many steps passed before every lane had rows.
        settled_after: Option<usize>,
    }

    impl Lanes {
        fn new(assignment: Vec<Vec<&'static str>>) -> Self {
            let active = vec![false; assignment.len()];
            Lanes { ops: assignment.iter().map(|_| assigner()).collect(), assignment, active, settled_after: None }
        }

        /// Feeds `steps`; returns what each emitted (watermarks in seconds,
        /// batches as their row counts) and the lanes' lowest watermark after each.
        async fn feed(&mut self, steps: &[Step]) -> Result<(Vec<String>, Vec<Option<i64>>)> {
            let mut emitted = Vec::new();
            let mut lowest = Vec::new();
            for (n, step) in steps.iter().enumerate() {
                let mut out = Emitter::default();
                match step {
                    Step::Rows(split, secs) => {
                        let lane = self.assignment.iter().position(|s| s.contains(split)).expect("a lane reads it");
                        let splits: Arc<[String]> = self.assignment[lane].iter().map(|s| s.to_string()).collect();
                        let tag = SplitTag { split: split.to_string(), splits, idle_after: None };
                        self.ops[lane].on_split_batch(tag, batch(secs), &mut out).await?;
                        self.active[lane] = true;
                        if self.settled_after.is_none() && self.active.iter().all(|a| *a) {
                            self.settled_after = Some(n);
                        }
                    }
                    Step::Idle => {
                        for op in &mut self.ops {
                            if let Some(wm) = op.on_watermark(Watermark::Idle, &mut out).await? {
                                out.emit_watermark(wm);
                            }
                        }
                    }
                }
                for message in out.drain() {
                    emitted.push(match message {
                        Message::Batch(b) => format!("{} rows", b.num_rows()),
                        Message::Watermark(Watermark::EventTime(t)) => format!("watermark {}", t / SEC),
                        Message::Watermark(Watermark::Idle) => "idle".into(),
                        _ => "other".into(),
                    });
                }
                let currents: Option<Vec<i64>> = self.ops.iter().map(|op| op.current).collect();
                lowest.push(currents.and_then(|c| c.into_iter().min()));
            }
            Ok((emitted, lowest))
        }

        fn resumed(&mut self, assignment: Vec<Vec<&'static str>>) -> Result<Lanes> {
            let parts = self.ops.iter_mut().map(|op| op.snapshot()).collect::<Result<Vec<_>>>()?;
            let mut after = Lanes::new(assignment);
            for (op, parts) in after.ops.iter_mut().zip(redistribute(parts, after.assignment.len())?) {
                op.restore(parts)?;
            }
            Ok(after)
        }
    }

    #[tokio::test]
    async fn a_restored_lane_emits_what_the_uninterrupted_one_does() -> Result<()> {
        let lane = || vec![vec!["a", "b", "c"]];
        let steps = steps();
        let (expected, _) = Lanes::new(lane()).feed(&steps).await?;
        assert!(expected.iter().filter(|m| m.starts_with("watermark")).count() > 3, "{expected:?}");
        for cut in 0..=steps.len() {
            let mut before = Lanes::new(lane());
            let (mut got, _) = before.feed(&steps[..cut]).await?;
            got.extend(before.resumed(lane())?.feed(&steps[cut..]).await?.0);
            assert_eq!(got, expected, "cut after {cut} steps");
        }
        Ok(())
    }

    #[tokio::test]
    async fn splits_keep_their_times_when_lanes_take_over_other_splits() -> Result<()> {
        let one = || vec![vec!["a", "b", "c"]];
        let three = || vec![vec!["a"], vec!["b"], vec!["c"]];
        // Without idleness, which each lane judges of its own splits.
        let steps: Vec<Step> = steps().into_iter().filter(|s| !matches!(s, Step::Idle)).collect();
        // Event time downstream is the lowest lane's watermark.
        let (_, expected) = Lanes::new(one()).feed(&steps).await?;
        let (_, spread) = Lanes::new(three()).feed(&steps).await?;
        assert_eq!(spread, expected, "one lane or three: the same event time");
        for (from, to) in [(one(), three()), (three(), one())] {
            for cut in 0..=steps.len() {
                let mut before = Lanes::new(from.clone());
                let (_, mut got) = before.feed(&steps[..cut]).await?;
                let mut after = before.resumed(to.clone())?;
                got.extend(after.feed(&steps[cut..]).await?.1);
                // A restored lane learns which splits it reads from its first
                // rows: until then its watermark may lag, never lead.
                let settled = cut + after.settled_after.unwrap_or(steps.len() - cut);
                let context = format!("cut after {cut} steps, from {from:?} to {to:?}: {got:?}");
                assert!(got.iter().zip(&expected).all(|(g, e)| g <= e), "ahead: {context}");
                assert_eq!(got[settled..], expected[settled..], "{context}");
            }
        }
        Ok(())
    }
}
