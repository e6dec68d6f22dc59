//! Window Top-N: the first N rows of each (window, partition), numbered.
//!
//! Flink's Window Top-N (`ROW_NUMBER() OVER (PARTITION BY window_start,
//! window_end, ... ORDER BY ...)` filtered to `rn <= N`) and window
//! deduplication (`rn = 1`, ordered by the time attribute) over rows that carry
//! their window bounds: the rows of a window TVF, or of a windowed aggregate.
//! A window's rows cannot be numbered before all of them are in, so the
//! operator buffers, per window and partition, only the N rows that rank first
//! so far (a row that cannot make it is dropped on arrival), and emits them
//! with their numbers once the watermark passes the window's end. Rows for an
//! already emitted window are late: they are counted and dropped, as the window
//! aggregate does. Output is append-only.
//!
//! Ties (rows equal on every ORDER BY key) rank in arrival order, as in
//! Flink's Window Top-N: the earlier row gets the lower number, so `rn = 1`
//! ordered by time ascending keeps the first row to arrive at the earliest
//! time. Deduplication that keeps the last row (`rn = 1` ordered by the time
//! attribute descending) sets [`RankSpec::later_ties_first`], as Flink's window
//! deduplication keeps the last row to arrive at the latest time. Within a
//! partition (all of whose rows reach the same lane) arrival order is the order
//! the lane read them.
//!
//! Checkpointed state: table [`ROWS_TABLE`] holds the buffered rows (the input
//! columns), each partition's rows in rank order, keyed by the partition
//! columns (the exchange key); table [`WATERMARK_TABLE`] the lane's watermark.
//! A restore inserts the rows in the stored order, so ties keep their order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::PhysicalExpr;

use super::state_table::{as_type, corrupt, key_groups, keyed_with_watermark, split_keyed_with_watermark, table};
use crate::checkpoint::StatePart;
use crate::error::{EngineError, Result};
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator, StateBound};
use crate::time::as_epoch_nanos;

/// The checkpoint table of the buffered rows (keyed).
pub const ROWS_TABLE: usize = super::state_table::KEYED_TABLE;
/// The checkpoint table of the lane's watermark.
pub const WATERMARK_TABLE: usize = super::state_table::WATERMARK_TABLE;

/// What a window Top-N ranks, as planned.
#[derive(Clone)]
pub struct RankSpec {
    /// The rows that arrive (the exchange in front evaluates `partition_by`
    /// on them).
    pub input_schema: SchemaRef,
    /// PARTITION BY, the window bounds among them.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// Index in `partition_by` of `window_start`.
    pub window_start: usize,
    /// Index in `partition_by` of `window_end`.
    pub window_end: usize,
    /// ORDER BY, with each key's direction and NULL placement.
    pub order_by: Vec<PhysicalSortExpr>,
    /// How many rows of each partition are numbered and emitted.
    pub limit: usize,
    /// Among rows that tie, the later arrival ranks first (deduplication
    /// keeping the last row); otherwise the earlier one.
    pub later_ties_first: bool,
    /// The input columns, then the row number.
    pub output_schema: SchemaRef,
}

impl RankSpec {
    /// PARTITION BY, ORDER BY and N, for EXPLAIN.
    pub fn describe(&self) -> String {
        let partition: Vec<String> = self.partition_by.iter().map(|e| expr_name(e.as_ref())).collect();
        let order: Vec<String> = self
            .order_by
            .iter()
            .map(|s| format!("{} {}", expr_name(s.expr.as_ref()), if s.options.descending { "DESC" } else { "ASC" }))
            .collect();
        format!("row_number() partition by [{}] order by [{}], first {}", partition.join(", "), order.join(", "), self.limit)
    }
}

/// A column's name, or the expression as DataFusion writes it.
fn expr_name(e: &dyn PhysicalExpr) -> String {
    match e.downcast_ref::<datafusion::physical_expr::expressions::Column>() {
        Some(c) => c.name().to_string(),
        None => e.to_string(),
    }
}

/// A buffered row: its ORDER BY key (bytes that compare as the order does) and
/// its columns.
struct Ranked {
    order: Box<[u8]>,
    row: OwnedRow,
}

impl Ranked {
    fn size(&self) -> usize {
        self.order.len() + self.row.as_ref().len() + 48
    }
}

/// The partitions of one open window, each its first rows in rank order.
#[derive(Default)]
struct WindowRows {
    partitions: HashMap<Box<[u8]>, Vec<Ranked>>,
    bytes: usize,
}

/// Numbers the first rows of each (window, partition) and emits them once the
/// window closes.
pub struct WindowRank {
    spec: RankSpec,
    /// Encodes whole input rows (what is buffered).
    rows: RowConverter,
    partition_keys: RowConverter,
    order_keys: RowConverter,
    /// Open windows by (end, start), so the earliest to close comes first.
    windows: BTreeMap<(i64, i64), WindowRows>,
    watermark: Option<i64>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
}

impl WindowRank {
    pub fn try_new(spec: RankSpec, metrics: Arc<JobMetrics>) -> Result<Self> {
        let schema = Arc::clone(&spec.input_schema);
        let row_fields: Vec<SortField> = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        if !RowConverter::supports_fields(&row_fields) {
            let types: Vec<String> = schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
            return Err(EngineError::Plan(format!(
                "Window Top-N cannot buffer rows of these columns ({}): select fewer columns below ROW_NUMBER()",
                types.join(", ")
            )));
        }
        let partition_fields = spec
            .partition_by
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(&schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let order_fields = spec
            .order_by
            .iter()
            .map(|s| Ok(SortField::new_with_options(s.expr.data_type(&schema)?, s.options)))
            .collect::<Result<Vec<_>>>()?;
        Ok(WindowRank {
            rows: RowConverter::new(row_fields)?,
            partition_keys: RowConverter::new(partition_fields)?,
            order_keys: RowConverter::new(order_fields)?,
            spec,
            windows: BTreeMap::new(),
            watermark: None,
            state: metrics.state_reporter(),
            metrics,
        })
    }

    fn report_state(&mut self) {
        let bytes = self.windows.values().map(|w| w.bytes + w.partitions.len() * 64).sum();
        self.state.set(bytes);
    }

    /// Adds each row of `batch` (of the input schema) to its window's
    /// partition, if it ranks among the first N there. Arriving rows of
    /// windows the watermark has passed are counted late and dropped; restored
    /// rows come in rank order and keep it.
    fn insert(&mut self, batch: &RecordBatch, arriving: bool) -> Result<()> {
        let n = batch.num_rows();
        let evaluate = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> { Ok(e.evaluate(batch)?.into_array(n)?) };
        let partition = self.spec.partition_by.iter().map(evaluate).collect::<Result<Vec<_>>>()?;
        let order = self.spec.order_by.iter().map(|s| evaluate(&s.expr)).collect::<Result<Vec<_>>>()?;
        let starts = as_epoch_nanos(&partition[self.spec.window_start])?;
        let ends = as_epoch_nanos(&partition[self.spec.window_end])?;
        let partition_rows = self.partition_keys.convert_columns(&partition)?;
        let order_rows = self.order_keys.convert_columns(&order)?;
        let rows = self.rows.convert_columns(batch.columns())?;
        let limit = self.spec.limit;
        let mut late = 0;
        for i in 0..n {
            if starts.is_null(i) || ends.is_null(i) {
                late += 1;
                continue;
            }
            let window = (ends.value(i), starts.value(i));
            if arriving && self.watermark.is_some_and(|w| window.0 <= w) {
                late += 1;
                continue;
            }
            if limit == 0 {
                continue;
            }
            let order = order_rows.row(i);
            let open = self.windows.entry(window).or_default();
            let ranked = open.partitions.entry(partition_rows.row(i).as_ref().into()).or_default();
            let pos = match arriving && self.spec.later_ties_first {
                true => ranked.partition_point(|r| r.order.as_ref() < order.as_ref()),
                false => ranked.partition_point(|r| r.order.as_ref() <= order.as_ref()),
            };
            if pos >= limit {
                continue;
            }
            let new = Ranked { order: order.as_ref().into(), row: rows.row(i).owned() };
            open.bytes += new.size();
            ranked.insert(pos, new);
            if ranked.len() > limit {
                if let Some(dropped) = ranked.pop() {
                    open.bytes -= dropped.size();
                }
            }
        }
        if late > 0 {
            self.metrics.add_late_rows(late);
        }
        Ok(())
    }

    /// `ranked` rows as a batch of the input schema.
    fn input_batch<'a>(&self, ranked: impl Iterator<Item = &'a Ranked>) -> Result<RecordBatch> {
        let columns = self.rows.convert_rows(ranked.map(|r| r.row.row()))?;
        Ok(RecordBatch::try_new(Arc::clone(&self.spec.input_schema), columns)?)
    }

    /// The closed windows' rows, numbered, partitions in key order (so a run's
    /// output does not depend on hashing).
    fn emit_windows(&self, closed: Vec<WindowRows>) -> Result<RecordBatch> {
        let mut rows: Vec<&Ranked> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        for window in &closed {
            let mut partitions: Vec<(&Box<[u8]>, &Vec<Ranked>)> = window.partitions.iter().collect();
            partitions.sort_unstable_by_key(|(key, _)| *key);
            for (_, ranked) in partitions {
                rows.extend(ranked.iter());
                numbers.extend(1..=ranked.len() as u64);
            }
        }
        let mut columns = self.input_batch(rows.into_iter())?.columns().to_vec();
        let rn_type = self.spec.output_schema.fields().last().map(|f| f.data_type().clone());
        let rn: ArrayRef = Arc::new(UInt64Array::from(numbers));
        columns.push(match rn_type {
            Some(t) if &t != rn.data_type() => cast(&rn, &t)?,
            _ => rn,
        });
        Ok(RecordBatch::try_new(Arc::clone(&self.spec.output_schema), columns)?)
    }

    /// Every buffered row as one table (see the module docs); `None` when no
    /// row is buffered.
    fn snapshot_rows(&self) -> Result<Option<StatePart>> {
        let ranked = self.windows.values().flat_map(|w| w.partitions.values()).flatten();
        let batch = self.input_batch(ranked)?;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let keys = self
            .spec
            .partition_by
            .iter()
            .map(|e| Ok(e.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<Vec<_>>>()?;
        let groups = key_groups(&keys, n)?;
        let columns = self.spec.input_schema.fields().iter().map(|f| f.name().clone()).zip(batch.columns().iter().cloned());
        Ok(Some(StatePart::keyed(table(columns.collect(), n)?, groups)))
    }

    /// Buffers the rows of a table written by [`Self::snapshot_rows`].
    fn restore_rows(&mut self, stored: &RecordBatch) -> Result<()> {
        let schema = Arc::clone(&self.spec.input_schema);
        if stored.num_columns() != schema.fields().len() {
            return Err(corrupt("the window Top-N's rows table has other columns"));
        }
        let columns = schema
            .fields()
            .iter()
            .zip(stored.columns())
            .map(|(f, c)| as_type(c, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(schema, columns).map_err(|e| corrupt(&format!("the window Top-N's rows: {e}")))?;
        self.insert(&batch, false)
    }
}

#[async_trait]
impl Operator for WindowRank {
    fn name(&self) -> &'static str {
        "window top-n"
    }

    fn state_bound(&self) -> StateBound {
        StateBound::Watermark
    }

    fn describe(&self) -> String {
        format!(
            "window top-n: {}; state bounded by watermark (at most {} rows per window and partition, freed when the watermark passes window_end)",
            self.spec.describe(),
            self.spec.limit
        )
    }

    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.insert(&batch, true)?;
        self.report_state();
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else { return Ok(Some(wm)) };
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        let mut closed = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().0 > t {
                break;
            }
            closed.push(entry.remove());
        }
        if !closed.is_empty() {
            out.emit(self.emit_windows(closed)?);
        }
        self.report_state();
        Ok(Some(wm))
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        keyed_with_watermark(self.watermark, self.snapshot_rows()?)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        let (watermark, keyed) = split_keyed_with_watermark(parts, "window top-n")?;
        if let Some(w) = watermark {
            self.watermark = w;
        }
        for batch in &keyed {
            self.restore_rows(batch)?;
        }
        self.report_state();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::col;

    use crate::operators::checkpoint_testing::{
        check_resumes, exchange_key, input_rows, input_schema, input_steps, uninterrupted, Step, PARALLELISMS, SEC,
    };

    /// ROW_NUMBER() OVER (PARTITION BY window_start, window_end[, k] ORDER BY
    /// `order` (column, descending)) keeping `limit`.
    fn spec(keyed: bool, order: &[(&str, bool)], limit: usize) -> (RankSpec, Vec<&'static str>) {
        spec_with_ties(keyed, order, limit, false)
    }

    fn spec_with_ties(
        keyed: bool,
        order: &[(&str, bool)],
        limit: usize,
        later_ties_first: bool,
    ) -> (RankSpec, Vec<&'static str>) {
        let input = input_schema();
        let partition: Vec<&'static str> = match keyed {
            true => vec!["window_start", "window_end", "k"],
            false => vec!["window_start", "window_end"],
        };
        let order_by = order
            .iter()
            .map(|(c, descending)| PhysicalSortExpr {
                expr: col(c, &input).expect("a column"),
                options: SortOptions { descending: *descending, nulls_first: *descending },
            })
            .collect();
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("rn", DataType::UInt64, false));
        let spec = RankSpec {
            partition_by: exchange_key(&partition),
            window_start: 0,
            window_end: 1,
            order_by,
            limit,
            later_ties_first,
            output_schema: Arc::new(Schema::new(fields)),
            input_schema: input,
        };
        (spec, partition)
    }

    fn window_rank(spec: RankSpec) -> impl Fn(&Arc<JobMetrics>) -> Box<dyn Operator> {
        move |metrics| Box::new(WindowRank::try_new(spec.clone(), Arc::clone(metrics)).expect("a window top-n"))
    }

    #[tokio::test]
    async fn resumes_from_a_snapshot_at_any_parallelism() -> Result<()> {
        let (spec, partition) = spec(true, &[("v", true)], 2);
        let make = window_rank(spec);
        let outcome = check_resumes(&make, &exchange_key(&partition), &input_steps(true), PARALLELISMS).await?;
        assert!(outcome.rows.len() > 20, "the first rows of many partitions: {}", outcome.rows.len());
        assert!(outcome.late_rows > 0, "some rows are late");
        Ok(())
    }

    #[tokio::test]
    async fn deduplication_resumes_at_any_parallelism() -> Result<()> {
        // Keep the first row by time of each window (ties: the first to arrive).
        let (spec, partition) = spec(false, &[("ts", false)], 1);
        let make = window_rank(spec);
        let outcome = check_resumes(&make, &exchange_key(&partition), &input_steps(false), PARALLELISMS).await?;
        assert!(outcome.rows.len() > 3);
        assert!(outcome.rows.iter().all(|r| r.ends_with("|1")), "{:?}", outcome.rows);
        Ok(())
    }

    #[tokio::test]
    async fn keeping_the_last_row_resumes_at_any_parallelism() -> Result<()> {
        // The last row by time of each window and key; of rows at the same
        // time, the last to arrive.
        let (spec, partition) = spec_with_ties(true, &[("ts", true)], 1, true);
        let make = window_rank(spec);
        let outcome = check_resumes(&make, &exchange_key(&partition), &input_steps(true), PARALLELISMS).await?;
        assert!(outcome.rows.len() > 20);
        let steps = [Step::Batch(input_rows(&[(Some(1), 5, 3), (Some(1), 6, 3), (Some(1), 7, 2)])), Step::Watermark(i64::MAX)];
        let outcome = uninterrupted(&make, &[exchange_key(&partition)], &steps).await?;
        assert_eq!(outcome.rows.len(), 1);
        assert!(outcome.rows[0].starts_with("1|6|"), "{:?}", outcome.rows);
        Ok(())
    }

    #[tokio::test]
    async fn numbers_the_first_rows_at_the_window_end_and_drops_late_ones() -> Result<()> {
        let (spec, partition) = spec(true, &[("v", true)], 2);
        let make = window_rank(spec);
        let steps = [
            // k 1: values 5, 9, 9 (a tie: the first to arrive ranks first), 1.
            Step::Batch(input_rows(&[(Some(1), 5, 1), (Some(1), 9, 2), (Some(2), 6, 3)])),
            Step::Batch(input_rows(&[(Some(1), 9, 4), (Some(1), 1, 5), (Some(1), 7, 12)])),
            Step::Watermark(10 * SEC),
            // Late: its window [0 s, 10 s) is out.
            Step::Batch(input_rows(&[(Some(1), 99, 8)])),
            Step::Watermark(i64::MAX),
        ];
        let outcome = uninterrupted(&make, &[exchange_key(&partition)], &steps).await?;
        let t = |s: i64| format!("1970-01-01T00:00:{s:02}");
        let row = |k: i64, v: i64, ts: i64, start: i64, rn: u64| {
            format!("{k}|{v}|{}|{}|{}|{}|{rn}", v as f64 / 4.0, t(ts), t(start), t(start + 10))
        };
        let mut expected = vec![row(1, 9, 2, 0, 1), row(1, 9, 4, 0, 2), row(2, 6, 3, 0, 1), row(1, 7, 12, 10, 1)];
        expected.sort();
        assert_eq!(outcome.rows, expected);
        assert_eq!(outcome.late_rows, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_snapshot_keys_rows_by_the_partition() -> Result<()> {
        let (spec, partition) = spec(true, &[("v", true)], 2);
        let mut op = WindowRank::try_new(spec, JobMetrics::new())?;
        let mut out = Emitter::default();
        op.on_batch(input_rows(&[(Some(1), 5, 1), (Some(2), 4, 3), (Some(1), 6, 2), (Some(1), 7, 4)]), &mut out).await?;
        let parts = op.snapshot()?;
        let rows = parts.iter().find(|(t, _)| *t == ROWS_TABLE).map(|(_, p)| p).expect("buffered rows");
        assert_eq!(rows.batch.num_rows(), 3, "k 1 keeps its first two rows only");
        let keys = exchange_key(&partition)
            .iter()
            .map(|e| Ok(e.evaluate(&rows.batch)?.into_array(3)?))
            .collect::<Result<Vec<_>>>()?;
        assert_eq!(rows.key_groups.as_ref(), Some(&key_groups(&keys, 3)?));
        Ok(())
    }
}
