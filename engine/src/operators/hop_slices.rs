//! Hopping windows as shared slices (Flink's window slicing).
//!
//! A hopping window of `size` every `slide` holds `size / slide` slices of one
//! slide each, and each slice belongs to that many windows. Copying every row
//! into each of its windows multiplies the work of every row by that number;
//! here a row updates the one slice it falls in, and a window is merged from
//! its slices' accumulator states when the watermark passes its end.
//!
//! The aggregate keeps its slices where a tumbling aggregate keeps its
//! windows (keyed by bounds, the same checkpoint table); this module adds what
//! differs:
//! - when a window fires, each of its slices is frozen: its accumulators give
//!   up their state once, as arrays, which every later window holding the
//!   slice merges from. Rows that come for a frozen slice (late for its first
//!   windows, on time for later ones) start a new live part, frozen in turn;
//! - a row is late only when the last window holding its slice has fired, and
//!   the late-row count counts one per fired window the row falls in, as when
//!   rows were copied into each window;
//! - a slice is freed once the last window holding it has fired.
//!
//! Every DataFusion aggregate can merge states (that is how DataFusion
//! combines partial aggregates), so every aggregate can be sliced.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::HashMap;
use datafusion::arrow::array::{Array, ArrayRef, TimestampNanosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::logical_expr::EmitTo;

use super::state_table::{groups_accumulator_widths, state_column_names, table};
use super::window_aggregate::{group_of, WindowGroups};
use super::window_groups::AggregateSpec;
use crate::error::{EngineError, Result};

/// Bounds of a slice or window: (end, start), so the earliest end sorts first.
pub(crate) type Bounds = (i64, i64);

/// The state of one slice given up by its accumulators: what windows merge.
struct Frozen {
    /// The groups' keys without the window bounds (empty for a keyless aggregate).
    keys: Option<Rows>,
    groups: usize,
    /// Every aggregate's state columns, in order.
    states: Vec<ArrayRef>,
}

impl Frozen {
    fn size(&self) -> usize {
        self.keys.as_ref().map_or(0, Rows::size) + self.states.iter().map(|s| s.get_array_memory_size()).sum::<usize>()
    }
}

/// Slices of a hopping window aggregation, frozen for merging.
pub(crate) struct HopSlices {
    slide: i64,
    size: i64,
    /// Converts the group keys other than the window bounds; `None` when there are none.
    keys: Option<RowConverter>,
    /// The frozen parts of slices some of whose windows have fired.
    frozen: BTreeMap<Bounds, Vec<Frozen>>,
    /// The number of state columns of each aggregate.
    widths: Vec<usize>,
}

impl HopSlices {
    pub(crate) fn try_new(spec: &AggregateSpec, slide: i64, size: i64) -> Result<Self> {
        if slide <= 0 || size <= 0 || size % slide != 0 {
            return Err(EngineError::Plan(format!("a hopping window's size ({size} ns) must be a whole multiple of its slide ({slide} ns)")));
        }
        let fields: Vec<SortField> = spec
            .key_indices()
            .iter()
            .map(|i| SortField::new(spec.output_schema.field(*i).data_type().clone()))
            .collect();
        let keys = match fields.is_empty() {
            true => None,
            false => Some(RowConverter::new(fields)?),
        };
        let widths = groups_accumulator_widths(&spec.aggregates)?;
        Ok(HopSlices { slide, size, keys, frozen: BTreeMap::new(), widths })
    }

    pub(crate) fn describe(&self) -> String {
        format!("hopping windows of {} ms every {} ms, merged from slices of one slide", self.size / 1_000_000, self.slide / 1_000_000)
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.frozen.values().flatten().map(Frozen::size).sum()
    }

    /// For a row in `slice` at watermark `watermark`: how many of its windows
    /// have fired, and whether all have (the row is dropped).
    pub(crate) fn late(&self, slice: Bounds, watermark: Option<i64>) -> (usize, bool) {
        let Some(w) = watermark else { return (0, false) };
        let (end, start) = slice;
        let windows = (self.size / self.slide) as usize;
        if w < end {
            return (0, false);
        }
        let fired = (((w - end) / self.slide) as usize + 1).min(windows);
        (fired, start + self.size <= w)
    }

    /// Fires, in order, every window ending after `from` and at or before `to`
    /// that holds a slice, merging it from `live` slices (frozen on the way)
    /// and frozen ones; frees the slices whose last window fired.
    pub(crate) fn fire(
        &mut self,
        live: &mut BTreeMap<Bounds, WindowGroups>,
        spec: &AggregateSpec,
        converter: &RowConverter,
        from: Option<i64>,
        to: i64,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut fired = from;
        loop {
            // The earliest slice has the earliest unfired window: slices whose
            // windows have all fired are freed below.
            let first = [live.keys().next(), self.frozen.keys().next()].into_iter().flatten().min().copied();
            let Some((first_end, _)) = first else { break };
            let next_aligned = fired.map_or(i64::MIN, |f| (f.div_euclid(self.slide) + 1) * self.slide);
            let end = first_end.max(next_aligned);
            if end > to {
                break;
            }
            let in_window = |b: &Bounds| b.0 > end - self.size && b.0 <= end;
            let slices: Vec<Bounds> = live.keys().copied().filter(in_window).collect();
            for slice in slices {
                if let Some(groups) = live.remove(&slice) {
                    let part = self.freeze(groups, spec, converter)?;
                    self.frozen.entry(slice).or_default().push(part);
                }
            }
            out.push(self.merge_window(spec, end)?);
            fired = Some(end);
            // Slices whose last window (the one starting at their start) ended.
            self.frozen.retain(|&(_, start), _| start + self.size > end);
            live.retain(|&(_, start), _| start + self.size > end);
        }
        Ok(out)
    }

    /// Takes a live slice's accumulator states, keyed without the window bounds.
    fn freeze(&self, mut groups: WindowGroups, spec: &AggregateSpec, converter: &RowConverter) -> Result<Frozen> {
        let n = groups.index.len();
        let keys = match &self.keys {
            None => None,
            Some(keys) => {
                let columns = converter.convert_rows(groups.keys.iter())?;
                let key_columns: Vec<ArrayRef> = spec.key_indices().iter().map(|i| Arc::clone(&columns[*i])).collect();
                Some(keys.convert_columns(&key_columns)?)
            }
        };
        let mut states = Vec::new();
        for acc in groups.accumulators.iter_mut() {
            states.extend(acc.state(EmitTo::All)?);
        }
        Ok(Frozen { keys, groups: n, states })
    }

    /// The window ending at `end`, from the frozen slices it holds.
    fn merge_window(&self, spec: &AggregateSpec, end: i64) -> Result<RecordBatch> {
        let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
        let mut keys = self.keys.as_ref().map(|k| k.empty_rows(0, 0));
        let mut accumulators = spec.new_groups_accumulators()?;
        let mut total = 0;
        for parts in self.frozen.range((end - self.size + 1, i64::MIN)..=(end, i64::MAX)).map(|(_, p)| p) {
            for part in parts {
                let ids: Vec<usize> = match (&part.keys, &mut keys) {
                    (Some(rows), Some(merged)) => rows.iter().map(|row| group_of(&mut index, merged, row)).collect(),
                    // Keyless: the window's one group, once a slice has it.
                    _ => vec![0; part.groups],
                };
                total = match &keys {
                    Some(merged) => merged.num_rows(),
                    None => total.max(part.groups),
                };
                let mut column = 0;
                for (acc, width) in accumulators.iter_mut().zip(&self.widths) {
                    acc.merge_batch(&part.states[column..column + width], &ids, total)?;
                    column += width;
                }
            }
        }
        let key_columns = match (&self.keys, &keys) {
            (Some(converter), Some(rows)) => converter.convert_rows(rows.iter())?,
            _ => Vec::new(),
        };
        let mut columns = group_columns(spec, key_columns, (end, end - self.size), total)?;
        for acc in accumulators.iter_mut() {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&spec.output_schema), columns)?)
    }

    /// The frozen parts as checkpoint tables in the layout of live slices:
    /// group columns (slice bounds included), then each aggregate's state.
    pub(crate) fn snapshot_tables(&self, spec: &AggregateSpec) -> Result<Vec<RecordBatch>> {
        let state_names = state_column_names(&self.widths);
        let schema: SchemaRef = Arc::clone(&spec.output_schema);
        let mut tables = Vec::new();
        for (bounds, parts) in &self.frozen {
            for part in parts.iter().filter(|p| p.groups > 0) {
                let key_columns = match (&self.keys, &part.keys) {
                    (Some(converter), Some(rows)) => converter.convert_rows(rows.iter())?,
                    _ => Vec::new(),
                };
                let groups = group_columns(spec, key_columns, *bounds, part.groups)?;
                let names = schema.fields().iter().take(groups.len()).map(|f| f.name().clone());
                let mut columns: Vec<(String, ArrayRef)> = names.zip(groups).collect();
                columns.extend(state_names.iter().cloned().zip(part.states.iter().cloned()));
                tables.push(table(columns, part.groups)?);
            }
        }
        Ok(tables)
    }
}

/// The group columns in the aggregate's order: the keys, and the window bounds
/// as constants of the output's type.
fn group_columns(spec: &AggregateSpec, keys: Vec<ArrayRef>, (end, start): Bounds, rows: usize) -> Result<Vec<ArrayRef>> {
    let mut keys = keys.into_iter();
    (0..spec.group_exprs.len())
        .map(|i| {
            let bound = match i {
                i if i == spec.window_start => start,
                i if i == spec.window_end => end,
                _ => return keys.next().ok_or_else(|| EngineError::Internal("a hopping window's key is missing".into())),
            };
            let nanos: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![bound; rows]));
            let target = spec.output_schema.field(i).data_type();
            Ok(match target {
                DataType::Timestamp(TimeUnit::Nanosecond, None) => nanos,
                other => cast(&nanos, other)?,
            })
        })
        .collect()
}
