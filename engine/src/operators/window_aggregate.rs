//! Tumbling and hopping window aggregation.
//!
//! Rows arrive with `window_start`/`window_end` already assigned (a hopping
//! window either repeats a row once per window it falls in, or, when planned as
//! slices, assigns it the one slice it falls in: see [`super::hop_slices`]).
//! State is one group table and one
//! set of DataFusion `GroupsAccumulator`s per open window; only accumulator state
//! is kept, never rows. A window is emitted, and its state freed, once the
//! watermark reaches its end. Rows for an already emitted window are late: they
//! are counted and dropped.
//!
//! Checkpointed state: table [`GROUPS_TABLE`] holds one row per group of an
//! open window, keyed by the group columns other than the window bounds (the
//! exchange key): the group columns, window bounds included, then each
//! aggregate's state columns. Table [`WATERMARK_TABLE`] holds the lane's
//! watermark.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::HashMap;
use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::SortField;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::hop_slices::HopSlices;
use super::state_table::{
    as_type, concat_tables, corrupt, groups_accumulator_widths, key_groups, keyed_with_watermark, split_keyed_with_watermark,
    state_column_names, table,
};
use crate::checkpoint::StatePart;
use crate::error::Result;
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator};
use crate::time::as_epoch_nanos;

pub use super::window_groups::AggregateSpec;

/// The checkpoint table of the open windows' groups (keyed).
pub const GROUPS_TABLE: usize = super::state_table::KEYED_TABLE;
/// The checkpoint table of the lane's watermark.
pub const WATERMARK_TABLE: usize = super::state_table::WATERMARK_TABLE;

/// Aggregates rows per (window, key) and emits each window once it is complete.
pub struct WindowAggregate {
    spec: AggregateSpec,
    converter: RowConverter,
    /// Open windows by (end, start), so the earliest to close comes first.
    windows: BTreeMap<(i64, i64), WindowGroups>,
    watermark: Option<i64>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
    /// Rows come in slices of a hopping window, which `windows` then holds.
    hop: Option<HopSlices>,
}

/// The groups of one open window (or slice).
pub(crate) struct WindowGroups {
    pub(crate) index: HashMap<Box<[u8]>, usize>,
    pub(crate) keys: Rows,
    pub(crate) accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

impl WindowGroups {
    fn size(&self) -> usize {
        self.keys.size() + self.index.len() * 48 + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    fn group_of(&mut self, row: datafusion::arrow::row::Row<'_>) -> usize {
        group_of(&mut self.index, &mut self.keys, row)
    }
}

/// The group of `row` among the groups `keys` indexed by `index`, added if new.
pub(crate) fn group_of(index: &mut HashMap<Box<[u8]>, usize>, keys: &mut Rows, row: datafusion::arrow::row::Row<'_>) -> usize {
    if let Some(g) = index.get(row.as_ref()) {
        return *g;
    }
    let g = index.len();
    index.insert(row.as_ref().into(), g);
    keys.push(row);
    g
}

impl WindowAggregate {
    pub fn try_new(spec: AggregateSpec, metrics: Arc<JobMetrics>) -> Result<Self> {
        let input_types = spec
            .output_schema
            .fields()
            .iter()
            .take(spec.group_exprs.len())
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let converter = RowConverter::new(input_types)?;
        let state = metrics.state_reporter();
        Ok(WindowAggregate { spec, converter, windows: BTreeMap::new(), watermark: None, metrics, state, hop: None })
    }

    /// A hopping window aggregation over rows assigned to slices of `slide`
    /// (their `window_start`/`window_end` are the slice's), emitting windows
    /// of `size`; both in nanoseconds.
    pub fn sliced(spec: AggregateSpec, slide: i64, size: i64, metrics: Arc<JobMetrics>) -> Result<Self> {
        let hop = HopSlices::try_new(&spec, slide, size)?;
        Ok(WindowAggregate { hop: Some(hop), ..Self::try_new(spec, metrics)? })
    }

    fn report_state(&mut self) {
        let frozen = self.hop.as_ref().map_or(0, HopSlices::size_in_bytes);
        let bytes = self.windows.values().map(WindowGroups::size).sum::<usize>() + frozen;
        self.state.set(bytes);
    }

    fn new_window(&self) -> Result<WindowGroups> {
        Ok(WindowGroups {
            index: HashMap::new(),
            keys: self.converter.empty_rows(0, 0),
            accumulators: self.spec.new_groups_accumulators()?,
        })
    }

    /// Every group of every open window as one table (see the module docs);
    /// `None` when no window is open.
    fn snapshot_groups(&mut self) -> Result<Option<StatePart>> {
        let widths = groups_accumulator_widths(&self.spec.aggregates)?;
        let state_names = state_column_names(&widths);
        let group_names: Vec<String> =
            self.spec.output_schema.fields().iter().take(self.spec.group_exprs.len()).map(|f| f.name().clone()).collect();
        let mut tables = Vec::with_capacity(self.windows.len());
        for groups in self.windows.values_mut() {
            let n = groups.index.len();
            if n == 0 {
                continue;
            }
            let keys = self.converter.convert_rows(groups.keys.iter())?;
            let mut columns: Vec<(String, ArrayRef)> = group_names.iter().cloned().zip(keys).collect();
            let ids: Vec<usize> = (0..n).collect();
            let mut rebuilt = self.spec.new_groups_accumulators()?;
            let mut states = Vec::with_capacity(state_names.len());
            for (acc, fresh) in groups.accumulators.iter_mut().zip(rebuilt.iter_mut()) {
                let state = acc.state(EmitTo::All)?;
                fresh.merge_batch(&state, &ids, n)?;
                states.extend(state);
            }
            groups.accumulators = rebuilt;
            if states.len() != state_names.len() {
                return Err(crate::EngineError::Internal("an aggregate's state changed shape".into()));
            }
            columns.extend(state_names.iter().cloned().zip(states));
            tables.push(table(columns, n)?);
        }
        if let Some(hop) = &self.hop {
            tables.extend(hop.snapshot_tables(&self.spec)?);
        }
        let Some(batch) = concat_tables(&tables)? else { return Ok(None) };
        let keys: Vec<ArrayRef> = self.spec.key_indices().iter().map(|i| Arc::clone(batch.column(*i))).collect();
        let groups = key_groups(&keys, batch.num_rows())?;
        Ok(Some(StatePart::keyed(batch, groups)))
    }

    /// Merges a table written by [`Self::snapshot_groups`] into the open windows.
    fn restore_groups(&mut self, batch: &RecordBatch) -> Result<()> {
        let width = self.spec.group_exprs.len();
        let widths = groups_accumulator_widths(&self.spec.aggregates)?;
        if batch.num_columns() != width + widths.iter().sum::<usize>() {
            return Err(corrupt("the window aggregate's groups table has other columns"));
        }
        let group_columns = (0..width)
            .map(|i| as_type(batch.column(i), self.spec.output_schema.field(i).data_type()))
            .collect::<Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&group_columns)?;
        let starts = as_epoch_nanos(&group_columns[self.spec.window_start])?;
        let ends = as_epoch_nanos(&group_columns[self.spec.window_end])?;
        let mut per_window: BTreeMap<(i64, i64), (Vec<u32>, Vec<usize>)> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            if starts.is_null(i) || ends.is_null(i) {
                return Err(corrupt("a window without bounds"));
            }
            let window = (ends.value(i), starts.value(i));
            if !self.windows.contains_key(&window) {
                let groups = self.new_window()?;
                self.windows.insert(window, groups);
            }
            let groups = self.windows.get_mut(&window).ok_or_else(|| corrupt("a window vanished"))?;
            let g = groups.group_of(rows.row(i));
            let entry = per_window.entry(window).or_default();
            entry.0.push(i as u32);
            entry.1.push(g);
        }
        for (window, (row_ids, group_ids)) in per_window {
            let Some(groups) = self.windows.get_mut(&window) else { continue };
            let idx = UInt32Array::from(row_ids);
            let states = batch.columns()[width..]
                .iter()
                .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            let total = groups.index.len();
            let mut start = 0;
            for (acc, w) in groups.accumulators.iter_mut().zip(&widths) {
                acc.merge_batch(&states[start..start + w], &group_ids, total)?;
                start += w;
            }
        }
        Ok(())
    }

    fn emit_window(&mut self, mut groups: WindowGroups) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = self.converter.convert_rows(groups.keys.iter())?;
        for acc in groups.accumulators.iter_mut() {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.spec.output_schema), columns)?)
    }
}

#[async_trait]
impl Operator for WindowAggregate {
    fn name(&self) -> &'static str {
        "window aggregate"
    }

    fn state_bound(&self) -> crate::operator::StateBound {
        crate::operator::StateBound::Watermark
    }

    fn describe(&self) -> String {
        let hop = self.hop.as_ref().map(|h| format!("; {}", h.describe())).unwrap_or_default();
        format!(
            "window aggregate: {}{hop}; state bounded by watermark (a window is freed when the watermark passes window_end)",
            self.spec.describe()
        )
    }

    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        let ev = self.spec.evaluate(&batch)?;
        let rows = self.converter.convert_columns(&ev.groups)?;
        let starts = as_epoch_nanos(&ev.groups[self.spec.window_start])?;
        let ends = as_epoch_nanos(&ev.groups[self.spec.window_end])?;

        let mut per_window: HashMap<(i64, i64), (Vec<u32>, Vec<usize>)> = HashMap::new();
        let mut late = 0;
        for i in 0..ev.num_rows {
            if starts.is_null(i) || ends.is_null(i) {
                late += 1;
                continue;
            }
            let window = (ends.value(i), starts.value(i));
            match &self.hop {
                Some(hop) => {
                    let (fired, dropped) = hop.late(window, self.watermark);
                    late += fired;
                    if dropped {
                        continue;
                    }
                }
                None if self.watermark.is_some_and(|w| window.0 <= w) => {
                    late += 1;
                    continue;
                }
                None => {}
            }
            if !self.windows.contains_key(&window) {
                let groups = self.new_window()?;
                self.windows.insert(window, groups);
            }
            let Some(groups) = self.windows.get_mut(&window) else { continue };
            let g = groups.group_of(rows.row(i));
            let entry = per_window.entry(window).or_default();
            entry.0.push(i as u32);
            entry.1.push(g);
        }
        if late > 0 {
            self.metrics.add_late_rows(late);
        }

        let single = per_window.len() == 1;
        for (window, (row_ids, group_ids)) in per_window {
            let Some(groups) = self.windows.get_mut(&window) else { continue };
            let all_rows = single && row_ids.len() == ev.num_rows;
            let idx = UInt32Array::from(row_ids);
            let total = groups.index.len();
            for (a, acc) in groups.accumulators.iter_mut().enumerate() {
                let (values, mask) = ev.agg_rows(a, (!all_rows).then_some(&idx))?;
                acc.update_batch(&values, &group_ids, mask.as_ref(), total)?;
            }
        }
        self.report_state();
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else { return Ok(Some(wm)) };
        let before = self.watermark;
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        if let Some(hop) = &mut self.hop {
            for batch in hop.fire(&mut self.windows, &self.spec, &self.converter, before, t)? {
                out.emit(batch);
            }
            self.report_state();
            return Ok(Some(wm));
        }
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let groups = entry.remove();
            let batch = self.emit_window(groups)?;
            out.emit(batch);
        }
        self.report_state();
        Ok(Some(wm))
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let keyed = self.snapshot_groups()?;
        self.report_state();
        keyed_with_watermark(self.watermark, keyed)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        let (watermark, keyed) = split_keyed_with_watermark(parts, "window aggregate")?;
        if let Some(w) = watermark {
            self.watermark = w;
        }
        for batch in &keyed {
            self.restore_groups(batch)?;
        }
        self.report_state();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::checkpoint_testing::{
        aggregate_spec, check_resumes, exchange_key, input_steps, uninterrupted, Lanes, Step, PARALLELISMS, SEC,
    };

    fn window_aggregate(keyed: bool) -> impl Fn(&Arc<JobMetrics>) -> Box<dyn Operator> {
        let bounds = [("window_start", "window_start"), ("window_end", "window_end")];
        let group: Vec<(&str, &str)> = if keyed { [("k", "k")].into_iter().chain(bounds).collect() } else { bounds.to_vec() };
        let aggregates =
            [("sum", "v", false), ("count", "v", false), ("max", "v", false), ("avg", "x", false), ("count", "v", true)];
        let spec = aggregate_spec(&group, &aggregates, false);
        move |metrics| Box::new(WindowAggregate::try_new(spec.clone(), Arc::clone(metrics)).expect("an aggregate"))
    }

    #[tokio::test]
    async fn resumes_from_a_snapshot_at_any_parallelism() -> Result<()> {
        let make = window_aggregate(true);
        let outcome = check_resumes(&make, &exchange_key(&["k"]), &input_steps(true), PARALLELISMS).await?;
        assert!(outcome.rows.len() > 20, "windows of many keys: {}", outcome.rows.len());
        assert!(outcome.late_rows > 0, "some rows are late");
        Ok(())
    }

    #[tokio::test]
    async fn resumes_a_keyless_aggregate_in_lane_0() -> Result<()> {
        let make = window_aggregate(false);
        let outcome = check_resumes(&make, &[], &input_steps(false), PARALLELISMS).await?;
        assert!(outcome.rows.len() > 3);
        Ok(())
    }

    #[tokio::test]
    async fn a_snapshot_keys_groups_by_the_exchange_key_and_keeps_the_watermark() -> Result<()> {
        let metrics = JobMetrics::new();
        let make = window_aggregate(true);
        assert!(make(&metrics).checkpointable());
        let mut lanes = Lanes::new(vec![make(&metrics)], &[exchange_key(&["k"])]);
        lanes.feed(&input_steps(true)[..4]).await?;
        let parts = lanes.snapshot()?.remove(0);
        let groups = parts.iter().find(|(t, _)| *t == GROUPS_TABLE).map(|(_, p)| p).expect("open windows");
        let keys = [Arc::clone(groups.batch.column(0))];
        let expected = super::super::state_table::key_groups(&keys, groups.batch.num_rows())?;
        assert_eq!(groups.key_groups.as_ref(), Some(&expected));
        // k, window_start, window_end, then the state of each aggregate.
        assert_eq!(groups.batch.schema().field(0).name(), "k");
        let watermark = parts.iter().find(|(t, _)| *t == WATERMARK_TABLE).map(|(_, p)| p).expect("a watermark");
        assert!(watermark.key_groups.is_none());
        Ok(())
    }

    /// Each row of the steps' batches (in 10 s slices) copied into each of the
    /// three 30 s windows every 10 s it falls in, as the SQL rewrite of HOP
    /// without slices does.
    fn copied_into_windows(steps: &[Step]) -> Vec<Step> {
        use datafusion::arrow::array::{AsArray, TimestampNanosecondArray};
        use datafusion::arrow::datatypes::TimestampNanosecondType;
        steps
            .iter()
            .map(|step| match step {
                Step::Batch(batch) => {
                    let n = batch.num_rows() as u32;
                    let idx = UInt32Array::from((0..3 * n).map(|i| i % n).collect::<Vec<_>>());
                    let mut columns: Vec<ArrayRef> =
                        batch.columns().iter().map(|c| take(c.as_ref(), &idx, None).expect("take")).collect();
                    let starts = columns[4].as_primitive::<TimestampNanosecondType>().clone();
                    let starts: Vec<i64> =
                        (0..3 * n as usize).map(|i| starts.value(i) - (i / n as usize) as i64 * 10 * SEC).collect();
                    columns[4] = Arc::new(TimestampNanosecondArray::from(starts.clone()));
                    columns[5] = Arc::new(TimestampNanosecondArray::from(starts.iter().map(|s| s + 30 * SEC).collect::<Vec<_>>()));
                    Step::Batch(RecordBatch::try_new(batch.schema(), columns).expect("copied rows"))
                }
                other => other.clone(),
            })
            .collect()
    }

    fn hop_spec(keyed: bool) -> AggregateSpec {
        let bounds = [("window_start", "window_start"), ("window_end", "window_end")];
        let group: Vec<(&str, &str)> = if keyed { [("k", "k")].into_iter().chain(bounds).collect() } else { bounds.to_vec() };
        // approx_median has no groups accumulator of its own (it is adapted).
        let aggregates = [
            ("sum", "v", false),
            ("count", "v", false),
            ("max", "v", false),
            ("avg", "x", false),
            ("count", "v", true),
            ("approx_median", "x", false),
        ];
        aggregate_spec(&group, &aggregates, false)
    }

    #[tokio::test]
    async fn hopping_windows_merged_from_slices_give_the_rows_of_copied_rows() -> Result<()> {
        for keyed in [true, false] {
            let spec = hop_spec(keyed);
            let sliced = {
                let spec = spec.clone();
                move |m: &Arc<JobMetrics>| -> Box<dyn Operator> {
                    Box::new(WindowAggregate::sliced(spec.clone(), 10 * SEC, 30 * SEC, Arc::clone(m)).expect("an aggregate"))
                }
            };
            let copied = move |m: &Arc<JobMetrics>| -> Box<dyn Operator> {
                Box::new(WindowAggregate::try_new(spec.clone(), Arc::clone(m)).expect("an aggregate"))
            };
            let key = if keyed { exchange_key(&["k"]) } else { Vec::new() };
            let steps = input_steps(keyed);
            let expected = uninterrupted(&copied, std::slice::from_ref(&key), &copied_into_windows(&steps)).await?;
            let got = check_resumes(&sliced, &key, &steps, PARALLELISMS).await?;
            assert_eq!(got, expected, "keyed: {keyed}");
            assert!(expected.late_rows > 0 && expected.rows.len() > 5, "{expected:?}");
        }
        Ok(())
    }
}
