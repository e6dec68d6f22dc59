//! Tumbling and hopping window aggregation.
//!
//! Rows arrive with `window_start`/`window_end` already assigned (a hopping window
//! repeats a row once per window it falls in). State is one group table and one
//! set of DataFusion `GroupsAccumulator`s per open window; only accumulator state
//! is kept, never rows. A window is emitted, and its state freed, once the
//! watermark reaches its end. Rows for an already emitted window are late: they
//! are counted and dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::row::SortField;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use crate::error::Result;
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator};
use crate::time::as_epoch_nanos;

pub use super::window_groups::AggregateSpec;

/// Aggregates rows per (window, key) and emits each window once it is complete.
pub struct WindowAggregate {
    spec: AggregateSpec,
    converter: RowConverter,
    /// Open windows by (end, start), so the earliest to close comes first.
    windows: BTreeMap<(i64, i64), WindowGroups>,
    watermark: Option<i64>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
}

/// The groups of one open window.
struct WindowGroups {
    index: HashMap<Box<[u8]>, usize>,
    keys: Rows,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

impl WindowGroups {
    fn size(&self) -> usize {
        self.keys.size() + self.index.len() * 48 + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    fn group_of(&mut self, row: datafusion::arrow::row::Row<'_>) -> usize {
        if let Some(g) = self.index.get(row.as_ref()) {
            return *g;
        }
        let g = self.index.len();
        self.index.insert(row.as_ref().into(), g);
        self.keys.push(row);
        g
    }
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
        Ok(WindowAggregate { spec, converter, windows: BTreeMap::new(), watermark: None, metrics, state })
    }

    fn report_state(&mut self) {
        let bytes = self.windows.values().map(WindowGroups::size).sum();
        self.state.set(bytes);
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
        format!(
            "window aggregate: {}; state bounded by watermark (a window is freed when the watermark passes window_end)",
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
            if self.watermark.is_some_and(|w| window.0 <= w) {
                late += 1;
                continue;
            }
            let groups = match self.windows.entry(window) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(WindowGroups {
                    index: HashMap::new(),
                    keys: self.converter.empty_rows(0, 0),
                    accumulators: self.spec.new_groups_accumulators()?,
                }),
            };
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
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
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
}
