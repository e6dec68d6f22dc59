//! GROUP BY without a window: an aggregate whose results change as rows arrive.
//!
//! There is no point at which a group is complete, so after each batch the
//! operator sends what changed, as a changelog: `+I` for a new group, `-U`/`+U`
//! for a group whose result changed, `-D` for a group whose rows were all taken
//! back (only when the input is itself a changelog; its retractions go through
//! DataFusion's sliding accumulators). One accumulator set per group is kept for
//! ever, unless a TTL drops groups not updated for that long (as Flink's
//! `table.exec.state.ttl`): a later row for such a group starts it afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::window_groups::AggregateSpec;
use crate::changelog::{attach_ops, detach_ops, ChangeKind};
use crate::error::{EngineError, Result};
use crate::message::Watermark;
use crate::metrics::StateReporter;
use crate::operator::{Emitter, Operator};

struct Group {
    key: Vec<ScalarValue>,
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Rows added minus rows taken back.
    rows: i64,
    /// The result last sent, if any.
    sent: Option<Vec<ScalarValue>>,
    touched: Instant,
    size: usize,
}

/// A non-windowed GROUP BY emitting a changelog.
pub struct UpdatingAggregate {
    spec: AggregateSpec,
    changelog_input: bool,
    /// The output schema, change-kind column last.
    output_schema: SchemaRef,
    converter: Option<RowConverter>,
    groups: HashMap<Box<[u8]>, Group>,
    ttl: Option<Duration>,
    last_ttl_scan: Instant,
    state: StateReporter,
    state_bytes: usize,
}

/// Rows to send, column by column, with their change kinds.
#[derive(Default)]
struct Changes {
    rows: Vec<Vec<ScalarValue>>,
    kinds: Vec<ChangeKind>,
}

impl UpdatingAggregate {
    /// `spec.output_schema` must be the changelog schema (group columns,
    /// aggregates, change kind); `changelog_input` says whether the input
    /// carries a change-kind column.
    pub fn try_new(spec: AggregateSpec, changelog_input: bool, ttl: Option<Duration>, state: StateReporter) -> Result<Self> {
        let converter = match spec.group_exprs.is_empty() {
            true => None,
            false => {
                let input = spec.input_schema.clone().ok_or_else(|| EngineError::Internal("aggregate without input schema".into()))?;
                let fields = spec
                    .group_exprs
                    .iter()
                    .map(|(e, _)| Ok(SortField::new(e.data_type(&input)?)))
                    .collect::<Result<Vec<_>>>()?;
                Some(RowConverter::new(fields)?)
            }
        };
        Ok(UpdatingAggregate {
            output_schema: Arc::clone(&spec.output_schema),
            spec,
            changelog_input,
            converter,
            groups: HashMap::new(),
            ttl,
            last_ttl_scan: Instant::now(),
            state,
            state_bytes: 0,
        })
    }

    fn new_group(&self, key: Vec<ScalarValue>) -> Result<Group> {
        let accumulators = self
            .spec
            .aggregates
            .iter()
            .map(|a| Ok(if self.changelog_input { a.create_sliding_accumulator()? } else { a.create_accumulator()? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Group { key, accumulators, rows: 0, sent: None, touched: Instant::now(), size: 0 })
    }

    fn expire_by_ttl(&mut self) {
        let Some(ttl) = self.ttl else { return };
        if self.last_ttl_scan.elapsed() < (ttl / 4).min(Duration::from_secs(1)) {
            return;
        }
        self.last_ttl_scan = Instant::now();
        let before = self.groups.len();
        let mut freed = 0;
        self.groups.retain(|_, g| {
            let keep = g.touched.elapsed() <= ttl;
            if !keep {
                freed += g.size;
            }
            keep
        });
        if self.groups.len() != before {
            self.state_bytes -= freed;
            self.state.set(self.state_bytes);
        }
    }

    fn build(&self, changes: Changes) -> Result<RecordBatch> {
        let fields = self.output_schema.fields();
        let width = fields.len() - 1;
        let columns = (0..width)
            .map(|c| {
                let values = changes.rows.iter().map(|r| r[c].clone());
                let array = ScalarValue::iter_to_array(values)?;
                let wanted = fields[c].data_type();
                Ok(if array.data_type() == wanted { array } else { cast(&array, wanted)? })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows_schema = Arc::new(self.output_schema.project(&(0..width).collect::<Vec<_>>())?);
        let rows = RecordBatch::try_new_with_options(
            rows_schema,
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(changes.kinds.len())),
        )?;
        attach_ops(&self.output_schema, &rows, &changes.kinds)
    }
}

#[async_trait]
impl Operator for UpdatingAggregate {
    fn name(&self) -> &'static str {
        "updating aggregate"
    }

    fn state_bound(&self) -> crate::operator::StateBound {
        match self.ttl {
            Some(_) => crate::operator::StateBound::Ttl,
            None => crate::operator::StateBound::Unbounded,
        }
    }

    fn describe(&self) -> String {
        let bound = match self.ttl {
            Some(ttl) => format!("state: groups expire {} after their last update (TTL)", humantime(ttl)),
            None => "state: one entry per group, UNBOUNDED (warning: SET 'table.exec.state.ttl' to bound it)".into(),
        };
        format!("updating aggregate (changelog +I/-U/+U/-D): {}; {bound}", self.spec.describe())
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.expire_by_ttl();
        let (batch, kinds) = match self.changelog_input {
            true => {
                let (rows, kinds) = detach_ops(&batch)?;
                (rows, Some(kinds))
            }
            false => (batch, None),
        };
        let evaluated = self.spec.evaluate(&batch)?;
        let keys = match &self.converter {
            Some(c) => Some(c.convert_columns(&evaluated.groups)?),
            None => None,
        };
        // Rows per group, in order of first appearance: (added, taken back).
        // The batch's groups in order of first appearance, with their rows
        // (added, taken back); keys are borrowed from the encoded rows.
        let mut touched: Vec<(&[u8], Vec<u32>, Vec<u32>)> = Vec::new();
        let mut slot_of: HashMap<&[u8], usize> = HashMap::new();
        for i in 0..evaluated.num_rows {
            let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(i).data());
            let slot = match slot_of.get(key) {
                Some(slot) => *slot,
                None => {
                    if !self.groups.contains_key(key) {
                        let values = evaluated
                            .groups
                            .iter()
                            .map(|g| Ok(ScalarValue::try_from_array(g, i)?))
                            .collect::<Result<Vec<_>>>()?;
                        let group = self.new_group(values)?;
                        self.groups.insert(key.into(), group);
                    }
                    touched.push((key, Vec::new(), Vec::new()));
                    slot_of.insert(key, touched.len() - 1);
                    touched.len() - 1
                }
            };
            match kinds.as_ref().is_some_and(|k| k[i].is_retraction()) {
                true => touched[slot].2.push(i as u32),
                false => touched[slot].1.push(i as u32),
            }
        }
        let mut changes = Changes::default();
        for (key, added, taken) in touched {
            let Some(group) = self.groups.get_mut(key) else { continue };
            let (added_rows, taken_rows) = (added.len() as i64, taken.len() as i64);
            let (added, taken) = (UInt32Array::from(added), UInt32Array::from(taken));
            for (a, acc) in group.accumulators.iter_mut().enumerate() {
                if added_rows > 0 {
                    acc.update_batch(&evaluated.filtered_agg_rows(a, Some(&added))?)?;
                }
                if taken_rows > 0 {
                    acc.retract_batch(&evaluated.filtered_agg_rows(a, Some(&taken))?)?;
                }
            }
            group.rows += added_rows - taken_rows;
            group.touched = Instant::now();
            let now = match group.rows > 0 {
                true => Some(group.accumulators.iter_mut().map(|a| a.evaluate()).collect::<datafusion::error::Result<Vec<_>>>()?),
                false => None,
            };
            let row = |values: &Vec<ScalarValue>| group.key.iter().chain(values).cloned().collect::<Vec<_>>();
            match (&group.sent, &now) {
                (None, Some(new)) => {
                    changes.rows.push(row(new));
                    changes.kinds.push(ChangeKind::Insert);
                }
                (Some(old), Some(new)) if old != new => {
                    changes.rows.push(row(old));
                    changes.kinds.push(ChangeKind::UpdateBefore);
                    changes.rows.push(row(new));
                    changes.kinds.push(ChangeKind::UpdateAfter);
                }
                (Some(old), None) => {
                    changes.rows.push(row(old));
                    changes.kinds.push(ChangeKind::Delete);
                }
                _ => {}
            }
            let gone = now.is_none();
            group.sent = now;
            let size = key.len() + 96 + group.accumulators.iter().map(|a| a.size()).sum::<usize>();
            self.state_bytes = self.state_bytes + size - group.size;
            group.size = size;
            if gone {
                self.state_bytes -= group.size;
                self.groups.remove(key);
            }
        }
        self.state.set(self.state_bytes);
        if !changes.kinds.is_empty() {
            out.emit(self.build(changes)?);
        }
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark, _out: &mut Emitter) -> Result<Option<Watermark>> {
        self.expire_by_ttl();
        Ok(Some(wm))
    }
}

/// A duration as people write it (`90s`, `5m`, `1h`).
pub fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
