//! Alert hygiene: from a stream of "is this key over its threshold" rows to
//! the records an on-call person wants: `FIRING` when a key starts firing,
//! `RESOLVED` when it is back under, and nothing for the windows between.
//!
//! Users write it as a window function over the rows of a windowed query:
//!
//! ```sql
//! SELECT * FROM (
//!   SELECT *, ALERT_STATUS(rate > 0.3, window_end, INTERVAL '1' HOUR)
//!               OVER (PARTITION BY category ORDER BY window_end) AS status
//!   FROM abandonment_rates)
//! WHERE status IS NOT NULL
//! ```
//!
//! `ALERT_STATUS(firing, at [, repeat_after])` numbers nothing and aggregates
//! nothing: per partition, in `at` order, it says `FIRING` for a row whose
//! `firing` is true after one that was not (or the first row), `RESOLVED` for
//! a row that is not firing after one that was, and NULL otherwise: repeats of
//! a firing key are suppressed. With `repeat_after`, a key that keeps firing is
//! announced again once that long has passed (by `at`) since its last `FIRING`,
//! as Alertmanager's repeat interval. A NULL `firing` counts as not firing.
//!
//! The same definition serves both ways a query runs, so they agree by
//! construction of [`AlertState`]: over bounded input DataFusion runs the
//! [`alert_status_udwf`] window function itself; on a stream the planner
//! lowers it to [`AlertChanges`], which holds rows until the watermark passes
//! their `at` and then takes them in `at` order (ties in arrival order), so
//! the outcome does not depend on how rows interleaved across lanes. `at`
//! must be the event time of the rows (for a windowed result, `window_end`);
//! rows that arrive after the watermark passed their `at` are late: counted
//! and dropped, as the window aggregate does.
//!
//! State: the rows waiting for the watermark, and per partition key only
//! whether it fires and when it last said so; a key that does not fire is
//! forgotten. Checkpointed as three tables: the waiting rows and the keys'
//! states (both keyed by the partition key), and the lane's watermark.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray, UInt64Array};
use datafusion::arrow::compute::{concat_batches, filter, filter_record_batch, lexsort_to_indices, not, take, take_record_batch, SortColumn};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, IntervalMonthDayNano, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl};
use datafusion::physical_plan::PhysicalExpr;

use super::state_table::{as_type, corrupt, int64_column, key_groups, restored_watermark, table, watermark_part};
use crate::checkpoint::StatePart;
use crate::error::{EngineError, Result};
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator, StateBound};
use crate::time::as_epoch_nanos;

/// The window function's name in SQL.
pub const ALERT_STATUS: &str = "alert_status";
/// Checkpoint table of the rows waiting for the watermark (keyed).
pub const WAITING_TABLE: usize = 0;
/// Checkpoint table of the lane's watermark.
pub const WATERMARK_TABLE: usize = 1;
/// Checkpoint table of the firing keys (keyed).
pub const KEYS_TABLE: usize = 2;

/// What a row says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "FIRING",
            AlertStatus::Resolved => "RESOLVED",
        }
    }
}

/// One key's alert: whether it fires, and when it last said `FIRING`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertState {
    pub firing: bool,
    /// `at` of the last `FIRING` (nanoseconds since the epoch).
    pub announced_at: Option<i64>,
}

impl AlertState {
    /// Takes the key's next row, at `at`; returns what it says, if anything.
    pub fn next(&mut self, firing: Option<bool>, at: i64, repeat_after: Option<i64>) -> Option<AlertStatus> {
        match firing.unwrap_or(false) {
            true => {
                let repeat = self.firing
                    && matches!((repeat_after, self.announced_at), (Some(every), Some(last)) if at.saturating_sub(last) >= every);
                if self.firing && !repeat {
                    return None;
                }
                *self = AlertState { firing: true, announced_at: Some(at) };
                Some(AlertStatus::Firing)
            }
            false if self.firing => {
                *self = AlertState::default();
                Some(AlertStatus::Resolved)
            }
            false => None,
        }
    }
}

/// An interval as nanoseconds, for `repeat_after`: days and smaller units
/// (a month has no fixed length).
pub fn interval_nanos(value: &ScalarValue) -> datafusion::error::Result<i64> {
    const DAY: i64 = 86_400_000_000_000;
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months: 0, days, nanoseconds })) => {
            i64::from(*days).saturating_mul(DAY).saturating_add(*nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days).saturating_mul(DAY).saturating_add(i64::from(v.milliseconds) * 1_000_000),
        ScalarValue::IntervalYearMonth(_) | ScalarValue::IntervalMonthDayNano(Some(_)) => {
            return plan_err!("{ALERT_STATUS}: repeat_after cannot be in months or years (they have no fixed length)")
        }
        other => return plan_err!("{ALERT_STATUS}: repeat_after must be an INTERVAL, not {other}"),
    };
    match nanos > 0 {
        true => Ok(nanos),
        false => plan_err!("{ALERT_STATUS}: repeat_after must be longer than zero"),
    }
}

/// `ALERT_STATUS(firing, at [, repeat_after])` as a DataFusion window function
/// (what a bounded query runs).
pub fn alert_status_udwf() -> WindowUDF {
    WindowUDF::new_from_impl(AlertStatusFunction { signature: Signature::variadic_any(Volatility::Immutable) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AlertStatusFunction {
    signature: Signature,
}

impl WindowUDFImpl for AlertStatusFunction {
    fn name(&self) -> &str {
        ALERT_STATUS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, args: PartitionEvaluatorArgs) -> datafusion::error::Result<Box<dyn PartitionEvaluator>> {
        let exprs = args.input_exprs();
        check_argument_types(&args.input_fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>())?;
        let repeat_after = match exprs.get(2) {
            None => None,
            Some(e) => match e.downcast_ref::<datafusion::physical_expr::expressions::Literal>() {
                Some(literal) => Some(interval_nanos(literal.value())?),
                None => return plan_err!("{ALERT_STATUS}: repeat_after must be a constant INTERVAL"),
            },
        };
        Ok(Box::new(AlertStatusEvaluator { repeat_after }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> datafusion::error::Result<FieldRef> {
        check_argument_types(&field_args.input_fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>())?;
        Ok(Arc::new(Field::new(field_args.name(), DataType::Utf8, true)))
    }
}

/// `firing` is BOOLEAN, `at` a TIMESTAMP, `repeat_after` (optional) an INTERVAL.
pub fn check_argument_types(types: &[DataType]) -> datafusion::error::Result<()> {
    let usage = "ALERT_STATUS(firing BOOLEAN, at TIMESTAMP [, repeat_after INTERVAL]) OVER (PARTITION BY key ORDER BY at)";
    match types {
        [DataType::Boolean, DataType::Timestamp(_, _)] => Ok(()),
        [DataType::Boolean, DataType::Timestamp(_, _), DataType::Interval(_)] => Ok(()),
        _ => {
            let given: Vec<String> = types.iter().map(|t| t.to_string()).collect();
            plan_err!("{usage}: called with ({})", given.join(", "))
        }
    }
}

/// One partition, rows in ORDER BY order.
#[derive(Debug)]
struct AlertStatusEvaluator {
    repeat_after: Option<i64>,
}

impl PartitionEvaluator for AlertStatusEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> datafusion::error::Result<ArrayRef> {
        let (Some(firing), Some(at)) = (values.first(), values.get(1)) else {
            return exec_err!("{ALERT_STATUS} takes firing and at");
        };
        let Some(firing) = firing.as_any().downcast_ref::<BooleanArray>() else {
            return exec_err!("{ALERT_STATUS}: firing must be BOOLEAN");
        };
        let at = as_epoch_nanos(at).map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let mut state = AlertState::default();
        let statuses: StringArray = (0..num_rows)
            .map(|i| {
                // A row without a time says nothing and changes nothing.
                if at.is_null(i) {
                    return None;
                }
                let fires = firing.is_valid(i).then(|| firing.value(i));
                state.next(fires, at.value(i), self.repeat_after).map(AlertStatus::as_str)
            })
            .collect();
        Ok(Arc::new(statuses))
    }
}

/// What an `ALERT_STATUS(...) OVER (...)` on a stream computes, as planned.
#[derive(Clone)]
pub struct AlertSpec {
    /// The rows that arrive (the exchange in front evaluates `partition_by`).
    pub input_schema: SchemaRef,
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    pub firing: Arc<dyn PhysicalExpr>,
    /// The rows' event time (the ORDER BY).
    pub at: Arc<dyn PhysicalExpr>,
    /// What to add to `at` for the row's event time as the watermark counts
    /// it (-1 ns for `window_end`: a window's rows belong just before its end).
    pub at_offset: i64,
    /// Nanoseconds.
    pub repeat_after: Option<i64>,
    /// The input columns, then the status.
    pub output_schema: SchemaRef,
}

/// The streaming `ALERT_STATUS` (see the module docs).
pub struct AlertChanges {
    spec: AlertSpec,
    /// What keys the state: PARTITION BY, or one constant when there is none
    /// (rows of no columns cannot be told apart, or counted).
    state_keys: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
    /// Rows whose `at` the watermark has not passed.
    waiting: Vec<RecordBatch>,
    /// Keys that fire (the others are in their initial state).
    keys: HashMap<OwnedRow, AlertState>,
    watermark: Option<i64>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
}

impl AlertChanges {
    pub fn try_new(spec: AlertSpec, metrics: Arc<JobMetrics>) -> Result<Self> {
        let state_keys = match spec.partition_by.is_empty() {
            true => vec![datafusion::physical_expr::expressions::lit(true)],
            false => spec.partition_by.clone(),
        };
        let fields = state_keys
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(&spec.input_schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let converter = RowConverter::new(fields)?;
        Ok(AlertChanges {
            spec,
            state_keys,
            converter,
            waiting: Vec::new(),
            keys: HashMap::new(),
            watermark: None,
            state: metrics.state_reporter(),
            metrics,
        })
    }

    fn report_state(&mut self) {
        let rows: usize = self.waiting.iter().map(RecordBatch::get_array_memory_size).sum();
        self.state.set(rows + self.keys.len() * 64);
    }

    fn evaluate(&self, expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
        Ok(expr.evaluate(batch)?.into_array(batch.num_rows())?)
    }

    fn times(&self, batch: &RecordBatch) -> Result<Int64Array> {
        as_epoch_nanos(&self.evaluate(&self.spec.at, batch)?)
    }

    fn partition_keys(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.spec.partition_by.iter().map(|e| self.evaluate(e, batch)).collect()
    }

    /// Takes the waiting rows at or before `t` in time order, with what each says.
    fn release(&mut self, t: i64) -> Result<Option<RecordBatch>> {
        if self.waiting.is_empty() {
            return Ok(None);
        }
        let all = concat_batches(&self.spec.input_schema, &self.waiting)?;
        self.waiting.clear();
        let times = self.times(&all)?;
        // A row's turn comes once no row before it can still come: when the
        // watermark is past its time.
        let offset = self.spec.at_offset;
        let due: BooleanArray = times.iter().map(|at| Some(at.is_some_and(|at| at.saturating_add(offset) < t))).collect();
        let later = filter_record_batch(&all, &not(&due)?)?;
        if later.num_rows() > 0 {
            self.waiting.push(later);
        }
        let due_times = filter(&times, &due)?;
        let due = filter_record_batch(&all, &due)?;
        if due.num_rows() == 0 {
            return Ok(None);
        }
        // By time, then arrival.
        let arrival: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..due.num_rows() as u64));
        let order = lexsort_to_indices(
            &[SortColumn { values: Arc::clone(&due_times), options: None }, SortColumn { values: arrival, options: None }],
            None,
        )?;
        let due = take_record_batch(&due, &order)?;
        let times = take(&due_times, &order, None)?;
        let times = times
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| EngineError::Internal("event times are not Int64".into()))?;
        let firing = self.evaluate(&self.spec.firing, &due)?;
        let firing = firing
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| EngineError::Plan(format!("{ALERT_STATUS}: firing must be BOOLEAN")))?;
        let state_keys = self.state_keys.iter().map(|e| self.evaluate(e, &due)).collect::<Result<Vec<_>>>()?;
        let keys = self.converter.convert_columns(&state_keys)?;
        let mut statuses = Vec::with_capacity(due.num_rows());
        for i in 0..due.num_rows() {
            let key = keys.row(i).owned();
            let mut state = self.keys.get(&key).copied().unwrap_or_default();
            let fires = firing.is_valid(i).then(|| firing.value(i));
            statuses.push(state.next(fires, times.value(i), self.spec.repeat_after).map(AlertStatus::as_str));
            match state.firing {
                true => {
                    self.keys.insert(key, state);
                }
                false => {
                    self.keys.remove(&key);
                }
            }
        }
        let mut columns = due.columns().to_vec();
        columns.push(Arc::new(StringArray::from(statuses)));
        Ok(Some(RecordBatch::try_new(Arc::clone(&self.spec.output_schema), columns)?))
    }

    fn snapshot_waiting(&self) -> Result<Option<StatePart>> {
        if self.waiting.is_empty() {
            return Ok(None);
        }
        let all = concat_batches(&self.spec.input_schema, &self.waiting)?;
        let groups = key_groups(&self.partition_keys(&all)?, all.num_rows())?;
        Ok(Some(StatePart::keyed(all, groups)))
    }

    /// The firing keys: the partition columns, then `announced_at`.
    fn snapshot_keys(&self) -> Result<Option<StatePart>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let rows = self.keys.len();
        let key_columns = self.converter.convert_rows(self.keys.keys().map(|k| k.row()))?;
        let announced: Int64Array = self.keys.values().map(|s| s.announced_at).collect();
        // Owned by the lane the exchange sends the key to (without PARTITION BY, lane 0).
        let exchanged = match self.spec.partition_by.is_empty() {
            true => &key_columns[..0],
            false => &key_columns[..],
        };
        let groups = key_groups(exchanged, rows)?;
        let mut columns: Vec<(String, ArrayRef)> =
            key_columns.into_iter().enumerate().map(|(i, c)| (format!("key{i}"), c)).collect();
        columns.push(("announced_at".into(), Arc::new(announced)));
        Ok(Some(StatePart::keyed(table(columns, rows)?, groups)))
    }

    fn restore_keys(&mut self, stored: &RecordBatch) -> Result<()> {
        let width = self.state_keys.len();
        if stored.num_columns() != width + 1 {
            return Err(corrupt("the alert's keys table has other columns"));
        }
        let key_columns = self
            .state_keys
            .iter()
            .enumerate()
            .map(|(i, e)| as_type(stored.column(i), &e.data_type(&self.spec.input_schema)?))
            .collect::<Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&key_columns)?;
        let announced = int64_column(stored, width)?;
        for i in 0..stored.num_rows() {
            let announced_at = announced.is_valid(i).then(|| announced.value(i));
            self.keys.insert(rows.row(i).owned(), AlertState { firing: true, announced_at });
        }
        Ok(())
    }

    fn restore_waiting(&mut self, stored: &RecordBatch) -> Result<()> {
        let columns = self
            .spec
            .input_schema
            .fields()
            .iter()
            .zip(stored.columns())
            .map(|(f, c)| as_type(c, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        if columns.len() != self.spec.input_schema.fields().len() {
            return Err(corrupt("the alert's waiting rows have other columns"));
        }
        self.waiting.push(RecordBatch::try_new(Arc::clone(&self.spec.input_schema), columns)?);
        Ok(())
    }
}

#[async_trait]
impl Operator for AlertChanges {
    fn name(&self) -> &'static str {
        "alert status"
    }

    fn state_bound(&self) -> StateBound {
        StateBound::Watermark
    }

    fn describe(&self) -> String {
        let repeat = match self.spec.repeat_after {
            Some(n) => format!("repeated every {} s while firing", n / 1_000_000_000),
            None => "repeats suppressed".into(),
        };
        format!(
            "alert status: FIRING/RESOLVED per key ({} key column(s)), {repeat}; state bounded by watermark (rows wait until it passes their time) and by the keys that fire",
            self.spec.partition_by.len()
        )
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let times = self.times(&batch)?;
        // Rows without a time pass at once, saying nothing (as in a batch).
        if times.null_count() > 0 {
            let timeless: BooleanArray = times.iter().map(|at| Some(at.is_none())).collect();
            let passing = filter_record_batch(&batch, &timeless)?;
            let mut columns = passing.columns().to_vec();
            columns.push(Arc::new(StringArray::new_null(passing.num_rows())));
            out.emit(RecordBatch::try_new(Arc::clone(&self.spec.output_schema), columns)?);
        }
        // Late: the watermark has passed the row's time.
        let (watermark, offset) = (self.watermark, self.spec.at_offset);
        let on_time: BooleanArray = times
            .iter()
            .map(|at| Some(at.is_some_and(|at| watermark.is_none_or(|w| at.saturating_add(offset) >= w))))
            .collect();
        let late = times.len() - times.null_count() - on_time.true_count();
        if late > 0 {
            self.metrics.add_late_rows(late);
        }
        let batch = filter_record_batch(&batch, &on_time)?;
        if batch.num_rows() > 0 {
            self.waiting.push(batch);
        }
        self.report_state();
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else { return Ok(Some(wm)) };
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        if let Some(batch) = self.release(t)? {
            out.emit(batch);
        }
        self.report_state();
        Ok(Some(wm))
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let mut parts = vec![(WATERMARK_TABLE, watermark_part(self.watermark)?)];
        parts.extend(self.snapshot_waiting()?.map(|p| (WAITING_TABLE, p)));
        parts.extend(self.snapshot_keys()?.map(|p| (KEYS_TABLE, p)));
        Ok(parts)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        if let Some(w) = restored_watermark(parts.iter().filter(|(t, _)| *t == WATERMARK_TABLE).map(|(_, p)| p))? {
            self.watermark = w;
        }
        for (t, part) in &parts {
            match *t {
                WATERMARK_TABLE => {}
                WAITING_TABLE => self.restore_waiting(&part.batch)?,
                KEYS_TABLE => self.restore_keys(&part.batch)?,
                other => return Err(corrupt(&format!("the alert status has no table {other}"))),
            }
        }
        self.report_state();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000_000;

    /// Feeds `(firing, minute)` rows of one key; returns what each says.
    fn statuses(rows: &[(Option<bool>, i64)], repeat_after: Option<i64>) -> Vec<Option<&'static str>> {
        let mut state = AlertState::default();
        rows.iter().map(|(f, m)| state.next(*f, m * MINUTE, repeat_after).map(AlertStatus::as_str)).collect()
    }

    #[test]
    fn a_key_fires_once_until_it_resolves() {
        let rows = [(Some(false), 0), (Some(true), 1), (Some(true), 2), (None, 3), (Some(false), 4), (Some(true), 5)];
        assert_eq!(statuses(&rows, None), vec![None, Some("FIRING"), None, Some("RESOLVED"), None, Some("FIRING")]);
    }

    #[test]
    fn a_key_that_keeps_firing_is_announced_again_after_repeat_after() {
        let rows = [(Some(true), 0), (Some(true), 10), (Some(true), 30), (Some(true), 59), (Some(true), 60), (Some(false), 61)];
        assert_eq!(
            statuses(&rows, Some(30 * MINUTE)),
            vec![Some("FIRING"), None, Some("FIRING"), None, Some("FIRING"), Some("RESOLVED")]
        );
    }

    #[test]
    fn repeat_after_takes_days_and_smaller_units_only() {
        let hour = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months: 0, days: 1, nanoseconds: 60 * MINUTE }));
        assert_eq!(interval_nanos(&hour).ok(), Some(25 * 60 * MINUTE));
        let month = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months: 1, days: 0, nanoseconds: 0 }));
        assert!(interval_nanos(&month).is_err());
        assert!(interval_nanos(&ScalarValue::Int64(Some(5))).is_err());
    }

    mod checkpoints {
        use super::super::*;
        use crate::operators::checkpoint_testing::{check_resumes, input_schema, input_steps, PARALLELISMS, SEC};
        use datafusion::logical_expr::Operator as BinaryOperator;
        use datafusion::physical_expr::expressions::{binary, col, lit};

        fn spec(repeat_after: Option<i64>, keyed: bool) -> AlertSpec {
            let input = input_schema();
            let firing = binary(col("v", &input).expect("v"), BinaryOperator::Gt, lit(12i64), &input).expect("v > 12");
            let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("status", DataType::Utf8, true));
            AlertSpec {
                partition_by: if keyed { vec![col("k", &input).expect("k")] } else { Vec::new() },
                firing,
                at: col("ts", &input).expect("ts"),
                at_offset: 0,
                repeat_after,
                output_schema: Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                input_schema: input,
            }
        }

        #[tokio::test]
        async fn alert_changes_resume_at_any_parallelism() -> Result<()> {
            for (repeat_after, keyed) in [(None, true), (Some(10 * SEC), true), (None, false), (Some(10 * SEC), false)] {
                let spec = spec(repeat_after, keyed);
                let make = |m: &Arc<JobMetrics>| -> Box<dyn Operator> {
                    Box::new(AlertChanges::try_new(spec.clone(), Arc::clone(m)).expect("operator"))
                };
                let outcome = check_resumes(&make, &spec.partition_by, &input_steps(keyed), PARALLELISMS).await?;
                let said = |s: &str| outcome.rows.iter().filter(|r| r.ends_with(&format!("|{s}"))).count();
                assert!(said("FIRING") > 0 && said("RESOLVED") > 0, "{:?}", outcome.rows);
                assert!(outcome.late_rows > 0, "some rows are late");
            }
            Ok(())
        }
    }
}
