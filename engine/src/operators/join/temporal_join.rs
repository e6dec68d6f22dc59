//! Event-time temporal join: each row of a stream joined with the version of a
//! keyed (versioned) table that was valid at the row's event time, as Flink's
//! `JOIN t FOR SYSTEM_TIME AS OF s.ts`.
//!
//! Every row of the table input is a new version of the row with its key
//! (an upsert). A stream row waits until the watermark passes its time, so every
//! version up to that time has arrived, then takes the latest version at or
//! before it. Versions older than the latest one below the watermark are freed.
//!
//! Checkpointed state: table [`VERSIONS_TABLE`] holds every kept version,
//! keyed by the join key (the exchange key of the table input): the table's
//! columns (NULL for a deletion), the key columns, the version time and whether
//! the key was deleted then. [`PENDING_TABLE`] holds the stream rows waiting
//! for the watermark, keyed by their join key: the stream's columns and the
//! row's time. [`LANE_TABLE`] holds the lane's watermarks.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::HashMap;
use datafusion::arrow::array::{new_null_array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, interleave, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::array::Array;

use super::output::{passes, OutputBuilder, Pick, StoredColumns};
use super::keys::JoinKeys;
use super::side::{side_rows, BatchId, RowRef};
use super::{EventTime, JoinKind, JoinSpec};
use crate::changelog::{detach_ops, ChangeKind};
use crate::checkpoint::StatePart;
use crate::operators::state_table::{concat_tables, corrupt, int64_column, key_groups, restored_watermark, table};
use crate::error::{EngineError, Result};
use crate::message::Watermark;
use crate::metrics::{JobMetrics, StateReporter};
use crate::operator::{Emitter, Operator};

/// The versions of the table input, by key and version time.
#[derive(Default)]
struct Versions {
    /// Per key, its versions by time; `None`: the key was deleted then.
    by_key: HashMap<Box<[u8]>, BTreeMap<i64, Option<RowRef>>>,
    /// Stored batches and how many versions still point into each.
    batches: HashMap<BatchId, (Vec<ArrayRef>, usize, usize)>,
    next_id: BatchId,
    bytes: usize,
}

impl StoredColumns for Versions {
    fn columns(&self, id: BatchId) -> Option<&[ArrayRef]> {
        self.batches.get(&id).map(|(c, _, _)| c.as_slice())
    }
}

impl Versions {
    fn release(&mut self, (id, _): RowRef) {
        if let Some(entry) = self.batches.get_mut(&id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.bytes -= entry.2;
                self.batches.remove(&id);
            }
        }
    }

    /// Frees, per key, the versions older than the latest one before `watermark`.
    fn compact(&mut self, watermark: i64) {
        let mut freed = Vec::new();
        for versions in self.by_key.values_mut() {
            let older: Vec<i64> = versions.range(..watermark).map(|(t, _)| *t).collect();
            for t in older.iter().take(older.len().saturating_sub(1)) {
                if let Some(Some(r)) = versions.remove(t) {
                    freed.push(r);
                }
            }
        }
        for r in freed {
            self.release(r);
        }
    }
}

/// The checkpoint table of the versions (keyed).
pub const VERSIONS_TABLE: usize = 0;
/// The checkpoint table of the stream rows waiting for the watermark (keyed).
pub const PENDING_TABLE: usize = 1;
/// The checkpoint table of the lane's watermark and the stream's own.
pub const LANE_TABLE: usize = 2;

/// Joins stream rows with the versions of a table valid at their event time.
pub struct TemporalJoin {
    kind: JoinKind,
    /// The two inputs' schemas (the table's without a change-kind column).
    schemas: [SchemaRef; 2],
    /// The input that holds the versioned table (the other is the stream).
    table: usize,
    keys: JoinKeys,
    /// The stream row's lookup time (its event time, the `AS OF` column).
    stream_time: EventTime,
    /// The version time of a table row (its event time).
    version_time: EventTime,
    description: String,
    /// The table input is a changelog (an upsert table): `-D` rows delete.
    table_changes: bool,
    out: OutputBuilder,
    versions: Versions,
    /// Stream rows waiting for the watermark to pass their time.
    pending: Vec<(RecordBatch, Vec<i64>)>,
    watermark: Option<i64>,
    /// The stream input's own watermark: stream rows below it are late.
    stream_watermark: Option<i64>,
    metrics: Arc<JobMetrics>,
    state: StateReporter,
}

impl TemporalJoin {
    pub fn try_new(
        spec: JoinSpec,
        table: usize,
        stream_time: EventTime,
        version_time: EventTime,
        table_changes: bool,
        metrics: Arc<JobMetrics>,
    ) -> Result<Self> {
        if spec.kind.keeps_unmatched(table) {
            return Err(EngineError::Plan(
                "a temporal join keeps unmatched rows of the stream only (INNER or LEFT JOIN ... FOR SYSTEM_TIME AS OF)"
                    .into(),
            ));
        }
        let out = OutputBuilder::new(&spec, false);
        let state = metrics.state_reporter();
        Ok(TemporalJoin {
            kind: spec.kind,
            schemas: spec.schemas.clone(),
            table,
            keys: JoinKeys::try_new(spec.keys, &spec.schemas)?,
            stream_time,
            version_time,
            description: spec.description,
            table_changes,
            out,
            versions: Versions::default(),
            pending: Vec::new(),
            watermark: None,
            stream_watermark: None,
            metrics,
            state,
        })
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.out.schema()
    }

    fn add_versions(&mut self, batch: RecordBatch) -> Result<()> {
        let (batch, deletes) = match self.table_changes {
            true => {
                let (rows, kinds) = detach_ops(&batch)?;
                (rows, kinds.iter().map(|k| *k == ChangeKind::Delete).collect())
            }
            false => (batch, Vec::new()),
        };
        let times = self.version_time.evaluate(&batch)?;
        let keys = self.keys.evaluate(self.table, &batch)?;
        let id = self.versions.next_id;
        self.versions.next_id += 1;
        let mut used = 0;
        let mut replaced = Vec::new();
        for (i, has_key) in keys.keyed.iter().enumerate() {
            if !has_key || !times.is_valid(i) {
                continue;
            }
            let versions = self.versions.by_key.entry(keys.rows.row(i).as_ref().into()).or_default();
            let version = match deletes.get(i) {
                Some(true) => None,
                _ => {
                    used += 1;
                    Some((id, i as u32))
                }
            };
            if let Some(Some(old)) = versions.insert(times.value(i), version) {
                replaced.push(old);
            }
        }
        if used > 0 {
            let bytes = batch.get_array_memory_size();
            self.versions.bytes += bytes;
            self.versions.batches.insert(id, (batch.columns().to_vec(), used, bytes));
        }
        for r in replaced {
            self.versions.release(r);
        }
        Ok(())
    }

    /// Joins the pending stream rows whose time is below `watermark`.
    fn emit_ready(&mut self, watermark: i64, out: &mut Emitter) -> Result<()> {
        let mut still = Vec::new();
        for (batch, times) in std::mem::take(&mut self.pending) {
            let ready: Vec<bool> = times.iter().map(|t| *t < watermark).collect();
            if ready.iter().all(|r| !*r) {
                still.push((batch, times));
                continue;
            }
            let mask = BooleanArray::from(ready.clone());
            let now = filter_record_batch(&batch, &mask)?;
            let now_times: Vec<i64> = times.iter().zip(&ready).filter(|(_, r)| **r).map(|(t, _)| *t).collect();
            self.join_rows(&now, &now_times, out)?;
            if ready.iter().any(|r| !*r) {
                let rest = BooleanArray::from(ready.iter().map(|r| !*r).collect::<Vec<_>>());
                let later: Vec<i64> = times.iter().zip(&ready).filter(|(_, r)| !**r).map(|(t, _)| *t).collect();
                still.push((filter_record_batch(&batch, &rest)?, later));
            }
        }
        self.pending = still;
        Ok(())
    }

    fn join_rows(&self, batch: &RecordBatch, times: &[i64], out: &mut Emitter) -> Result<()> {
        let stream = 1 - self.table;
        let keys = self.keys.evaluate(stream, batch)?;
        let found: Vec<Option<RowRef>> = (0..batch.num_rows())
            .map(|i| {
                keys.keyed[i]
                    .then(|| self.versions.by_key.get(keys.rows.row(i).as_ref()))
                    .flatten()
                    .and_then(|v| v.range(..=times[i]).next_back().and_then(|(_, r)| *r))
            })
            .collect();
        let columns = batch.columns();
        let gather = |stream_picks: &[Pick], table_picks: &[Pick]| -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
            let s = self.out.gather(stream, stream_picks, Some(columns), &self.versions)?;
            let t = self.out.gather(self.table, table_picks, None, &self.versions)?;
            Ok(if stream == 0 { (s, t) } else { (t, s) })
        };
        // Candidates first, through the rest of the ON condition.
        let candidates: Vec<usize> = (0..found.len()).filter(|i| found[*i].is_some()).collect();
        let stream_picks: Vec<Pick> = candidates.iter().map(|i| Pick::Probe(*i as u32)).collect();
        let table_picks: Vec<Pick> = candidates.iter().filter_map(|i| found[*i].map(Pick::Stored)).collect();
        let (left, right) = gather(&stream_picks, &table_picks)?;
        let mask = self.out.filter_mask(&left, &right, candidates.len())?;
        let mut matched: Vec<Option<RowRef>> = vec![None; found.len()];
        for (k, i) in candidates.iter().enumerate() {
            if passes(mask.as_ref(), k) {
                matched[*i] = found[*i];
            }
        }
        let keep_unmatched = self.kind.keeps_unmatched(stream);
        let rows: Vec<usize> = (0..found.len()).filter(|i| matched[*i].is_some() || keep_unmatched).collect();
        if rows.is_empty() {
            return Ok(());
        }
        let stream_picks: Vec<Pick> = rows.iter().map(|i| Pick::Probe(*i as u32)).collect();
        let table_picks: Vec<Pick> = rows.iter().map(|i| matched[*i].map_or(Pick::Null, Pick::Stored)).collect();
        let (left, right) = gather(&stream_picks, &table_picks)?;
        out.emit(self.out.build(left, right, rows.len(), ChangeKind::Insert)?);
        Ok(())
    }

    /// Every kept version as one table (see the module docs).
    fn versions_part(&self) -> Result<Option<StatePart>> {
        let schema = &self.schemas[self.table];
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut times = Vec::new();
        let mut deleted = Vec::new();
        // Sources for `interleave`: one NULL row, then the stored batches.
        let mut sources: Vec<&[ArrayRef]> = Vec::new();
        let mut source_of: HashMap<BatchId, usize> = HashMap::new();
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let nulls: Vec<ArrayRef> = schema.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
        sources.push(&nulls);
        for (key, versions) in &self.versions.by_key {
            for (time, version) in versions {
                keys.push(key);
                times.push(*time);
                deleted.push(version.is_none());
                picks.push(match version {
                    None => (0, 0),
                    Some((id, row)) => {
                        let source = match source_of.get(id) {
                            Some(s) => *s,
                            None => {
                                let columns = self.versions.columns(*id).ok_or_else(|| corrupt("a version was freed"))?;
                                sources.push(columns);
                                source_of.insert(*id, sources.len() - 1);
                                sources.len() - 1
                            }
                        };
                        (source, *row as usize)
                    }
                });
            }
        }
        let rows = times.len();
        if rows == 0 {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(schema.fields().len() + self.keys.width() + 2);
        for (c, field) in schema.fields().iter().enumerate() {
            // Stored columns may differ in encoding from the planned type: NULLs follow them.
            let wanted = sources.get(1).map_or(field.data_type().clone(), |s| s[c].data_type().clone());
            let null = crate::operators::state_table::as_type(&sources[0][c], &wanted)?;
            let arrays: Vec<&dyn datafusion::arrow::array::Array> =
                std::iter::once(null.as_ref()).chain(sources[1..].iter().map(|s| s[c].as_ref())).collect();
            columns.push((field.name().clone(), interleave(&arrays, &picks)?));
        }
        let key_columns = self.keys.decode(keys)?;
        let groups = key_groups(&key_columns, rows)?;
        columns.extend(key_columns.into_iter().enumerate().map(|(i, c)| (format!("__key{i}"), c)));
        columns.push(("__version_time".into(), Arc::new(Int64Array::from(times))));
        columns.push(("__deleted".into(), Arc::new(BooleanArray::from(deleted))));
        Ok(Some(StatePart::keyed(table(columns, rows)?, groups)))
    }

    /// Adds the versions of a table written by [`Self::versions_part`].
    fn restore_versions(&mut self, batch: &RecordBatch) -> Result<()> {
        let schema = Arc::clone(&self.schemas[self.table]);
        let width = schema.fields().len();
        let key_width = self.keys.width();
        if batch.num_columns() != width + key_width + 2 {
            return Err(corrupt("the temporal join's versions table has other columns"));
        }
        let keys = self.keys.encode(batch.columns()[width..width + key_width].to_vec(), batch.num_rows())?;
        let times = int64_column(batch, width + key_width)?;
        let deleted = batch.column(width + key_width + 1);
        let deleted = deleted
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| corrupt("the versions' deletion flags are not booleans"))?;
        let live: Vec<u32> = (0..batch.num_rows() as u32).filter(|i| !deleted.value(*i as usize)).collect();
        let id = self.versions.next_id;
        self.versions.next_id += 1;
        let mut position = 0u32;
        for i in 0..batch.num_rows() {
            let version = match deleted.value(i) {
                true => None,
                false => {
                    position += 1;
                    Some((id, position - 1))
                }
            };
            let versions = self.versions.by_key.entry(keys.rows.row(i).as_ref().into()).or_default();
            if let Some(Some(old)) = versions.insert(times.value(i), version) {
                self.versions.release(old);
            }
        }
        if !live.is_empty() {
            let rows = take_record_batch(&side_rows(batch, &schema)?, &UInt32Array::from(live.clone()))?;
            let bytes = rows.get_array_memory_size();
            self.versions.bytes += bytes;
            self.versions.batches.insert(id, (rows.columns().to_vec(), live.len(), bytes));
        }
        Ok(())
    }

    /// The stream rows waiting for the watermark as one table.
    fn pending_part(&self) -> Result<Option<StatePart>> {
        let stream = 1 - self.table;
        let tables = self
            .pending
            .iter()
            .map(|(batch, times)| {
                let mut columns: Vec<(String, ArrayRef)> = self.schemas[stream]
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| (f.name().clone(), Arc::clone(c)))
                    .collect();
                columns.push(("__time".into(), Arc::new(Int64Array::from(times.clone()))));
                table(columns, batch.num_rows())
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(batch) = concat_tables(&tables)? else { return Ok(None) };
        let keys = self.keys.evaluate(stream, &side_rows(&batch, &self.schemas[stream])?)?;
        let groups = key_groups(&keys.columns, batch.num_rows())?;
        Ok(Some(StatePart::keyed(batch, groups)))
    }

    fn restore_pending(&mut self, batch: &RecordBatch) -> Result<()> {
        let stream = 1 - self.table;
        let width = self.schemas[stream].fields().len();
        if batch.num_columns() != width + 1 {
            return Err(corrupt("the temporal join's pending table has other columns"));
        }
        let times = int64_column(batch, width)?;
        self.pending.push((side_rows(batch, &self.schemas[stream])?, times.values().to_vec()));
        Ok(())
    }

    fn report_state(&mut self) {
        let pending: usize = self.pending.iter().map(|(b, t)| b.get_array_memory_size() + t.len() * 8).sum();
        let keys = self.versions.by_key.len() * 64;
        self.state.set(self.versions.bytes + pending + keys);
    }
}

#[async_trait]
impl Operator for TemporalJoin {
    fn name(&self) -> &'static str {
        "temporal join"
    }

    fn state_bound(&self) -> crate::operator::StateBound {
        crate::operator::StateBound::Watermark
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.on_batch_from(0, batch, out).await
    }

    async fn on_batch_from(&mut self, input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        if input.min(1) == self.table {
            self.add_versions(batch)?;
        } else {
            let times: Int64Array = self.stream_time.evaluate(&batch)?;
            let w = self.stream_watermark.or(self.watermark).unwrap_or(i64::MIN);
            let keep: Vec<bool> = (0..batch.num_rows()).map(|i| times.is_valid(i) && times.value(i) >= w).collect();
            let kept: Vec<i64> = keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| times.value(i)).collect();
            self.metrics.add_late_rows(batch.num_rows() - kept.len());
            if !kept.is_empty() {
                let batch = filter_record_batch(&batch, &BooleanArray::from(keep))?;
                self.pending.push((batch, kept));
            }
        }
        self.report_state();
        Ok(())
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let watermarks: Vec<ArrayRef> =
            vec![Arc::new(Int64Array::from(vec![self.watermark])), Arc::new(Int64Array::from(vec![self.stream_watermark]))];
        let names = ["watermark".to_string(), "stream_watermark".to_string()];
        let mut parts = vec![(LANE_TABLE, StatePart::lane(table(names.into_iter().zip(watermarks).collect(), 1)?))];
        if let Some(p) = self.versions_part()? {
            parts.push((VERSIONS_TABLE, p));
        }
        if let Some(p) = self.pending_part()? {
            parts.push((PENDING_TABLE, p));
        }
        Ok(parts)
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        let lanes: Vec<&StatePart> = parts.iter().filter(|(t, _)| *t == LANE_TABLE).map(|(_, p)| p).collect();
        if let Some(w) = restored_watermark(lanes.iter().copied())? {
            self.watermark = w;
        }
        // The stream's own watermark: the lowest, like the merged one.
        let mut stream: Option<Option<i64>> = None;
        for part in &lanes {
            let c = int64_column(&part.batch, 1)?;
            for i in 0..c.len() {
                let w = c.is_valid(i).then(|| c.value(i));
                stream = Some(stream.map_or(w, |s| s.min(w)));
            }
        }
        if let Some(w) = stream {
            self.stream_watermark = w;
        }
        for (t, part) in &parts {
            match *t {
                VERSIONS_TABLE => self.restore_versions(&part.batch)?,
                PENDING_TABLE => self.restore_pending(&part.batch)?,
                LANE_TABLE => {}
                other => return Err(corrupt(&format!("the temporal join has no table {other}"))),
            }
        }
        self.report_state();
        Ok(())
    }

    async fn on_input_watermark(&mut self, input: usize, wm: Watermark, _out: &mut Emitter) -> Result<()> {
        if let (Watermark::EventTime(t), true) = (wm, input.min(1) != self.table) {
            self.stream_watermark = Some(self.stream_watermark.map_or(t, |w| w.max(t)));
        }
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else { return Ok(Some(wm)) };
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        self.emit_ready(t, out)?;
        self.versions.compact(t);
        self.report_state();
        Ok(Some(wm))
    }
}
