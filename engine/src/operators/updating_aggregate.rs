//! GROUP BY without a window: an aggregate whose results change as rows arrive.
//!
//! There is no point at which a group is complete, so after each batch the
//! operator sends what changed, as a changelog: `+I` for a new group, `-U`/`+U`
//! for a group whose result changed, `-D` for a group whose rows were all taken
//! back (only when the input is itself a changelog; its retractions go through
//! DataFusion's sliding accumulators). One accumulator set per group is kept for
//! ever, unless a TTL drops groups not updated for that long (as Flink's
//! `table.exec.state.ttl`): a later row for such a group starts it afresh.
//!
//! Checkpointed state: table [`GROUPS_TABLE`] holds one row per group, keyed by
//! the group columns (the exchange key): those columns, the group's row count,
//! when it was last updated (wall-clock epoch milliseconds, for the TTL), then
//! each aggregate's state columns. The result last sent is not stored: it is
//! what the accumulators evaluate to. Over a changelog, a sliding accumulator's
//! state must keep what later retractions need; for those that keep only a
//! summary (MIN/MAX, DISTINCT) the operator is not checkpointable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{HashMap, ScalarValue};
use datafusion::logical_expr::Accumulator;

use super::state_table::{
    accumulator_widths, as_type, corrupt, epoch_millis, int64_column, key_groups, merged_accumulators,
    state_column_names, states_are_kept, table, take_accumulator_states,
};
use super::window_groups::AggregateSpec;
use crate::changelog::{attach_ops, detach_ops, ChangeKind};
use crate::checkpoint::StatePart;
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

/// The checkpoint table of the groups (keyed).
pub const GROUPS_TABLE: usize = 0;

/// Aggregates whose sliding accumulator's state holds all that retractions
/// need later (a running sum and count, or every value), when not DISTINCT.
const RESTORABLE_WITH_RETRACTIONS: &[&str] =
    &["sum", "count", "avg", "median", "var", "var_pop", "stddev", "stddev_pop"];

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

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        new_accumulators(&self.spec, self.changelog_input)
    }

    fn new_group(&self, key: Vec<ScalarValue>) -> Result<Group> {
        Ok(Group { key, accumulators: self.new_accumulators()?, rows: 0, sent: None, touched: Instant::now(), size: 0 })
    }

    /// Every group as one table (see the module docs); `None` when there is none.
    fn snapshot_groups(&mut self) -> Result<Option<StatePart>> {
        if self.groups.is_empty() {
            return Ok(None);
        }
        let widths = accumulator_widths(&mut self.new_accumulators()?)?;
        let now = epoch_millis();
        let rows = self.groups.len();
        let mut keys: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(rows); self.spec.group_exprs.len()];
        let mut counts = Vec::with_capacity(rows);
        let mut touched = Vec::with_capacity(rows);
        let mut sets = Vec::with_capacity(rows);
        for group in self.groups.values_mut() {
            for (column, value) in keys.iter_mut().zip(&group.key) {
                column.push(value.clone());
            }
            counts.push(group.rows);
            touched.push(now.saturating_sub(i64::try_from(group.touched.elapsed().as_millis()).unwrap_or(i64::MAX)));
            sets.push(&mut group.accumulators);
        }
        let (spec, changelog_input) = (&self.spec, self.changelog_input);
        let kept = states_are_kept(&spec.aggregates);
        let states = take_accumulator_states(sets, &widths, kept, &|| new_accumulators(spec, changelog_input))?;
        // Rebuilt accumulators are what a restored operator has: send changes
        // against what they evaluate to, as it will.
        if !kept {
            for group in self.groups.values_mut() {
                let now = group.accumulators.iter_mut().map(|a| a.evaluate()).collect::<datafusion::error::Result<Vec<_>>>()?;
                group.sent = Some(now);
            }
        }
        let key_columns = keys.into_iter().map(|c| Ok(ScalarValue::iter_to_array(c)?)).collect::<Result<Vec<ArrayRef>>>()?;
        let groups = key_groups(&key_columns, rows)?;
        let names = self.spec.group_exprs.iter().map(|(_, name)| name.clone());
        let mut columns: Vec<(String, ArrayRef)> = names.zip(key_columns).collect();
        columns.push(("rows".into(), Arc::new(datafusion::arrow::array::Int64Array::from(counts))));
        columns.push(("updated_at_ms".into(), Arc::new(datafusion::arrow::array::Int64Array::from(touched))));
        columns.extend(state_column_names(&widths).into_iter().zip(states));
        Ok(Some(StatePart::keyed(table(columns, rows)?, groups)))
    }

    /// Adds the groups of a table written by [`Self::snapshot_groups`]; groups
    /// whose TTL ran out since are dropped.
    fn restore_groups(&mut self, batch: &RecordBatch) -> Result<()> {
        let width = self.spec.group_exprs.len();
        let widths = accumulator_widths(&mut self.new_accumulators()?)?;
        if batch.num_columns() != width + 2 + widths.iter().sum::<usize>() {
            return Err(corrupt("the updating aggregate's groups table has other columns"));
        }
        let key_columns = match &self.spec.input_schema {
            Some(input) => self
                .spec
                .group_exprs
                .iter()
                .enumerate()
                .map(|(c, (e, _))| as_type(batch.column(c), &e.data_type(input)?))
                .collect::<Result<Vec<_>>>()?,
            None => batch.columns()[..width].to_vec(),
        };
        let key_rows = match &self.converter {
            Some(c) => Some(c.convert_columns(&key_columns)?),
            None => None,
        };
        let counts = int64_column(batch, width)?;
        let touched = int64_column(batch, width + 1)?;
        let states = &batch.columns()[width + 2..];
        let now = epoch_millis();
        for i in 0..batch.num_rows() {
            let age = Duration::from_millis(u64::try_from(now.saturating_sub(touched.value(i))).unwrap_or(0));
            if self.ttl.is_some_and(|ttl| age > ttl) {
                continue;
            }
            let key: Box<[u8]> = key_rows.as_ref().map_or_else(Box::default, |r| r.row(i).as_ref().into());
            let values = key_columns.iter().map(|c| Ok(ScalarValue::try_from_array(c, i)?)).collect::<Result<Vec<_>>>()?;
            let mut accumulators = merged_accumulators(self.new_accumulators()?, states, i, &widths)?;
            let sent = accumulators.iter_mut().map(|a| a.evaluate()).collect::<datafusion::error::Result<Vec<_>>>()?;
            let size = key.len() + 96 + accumulators.iter().map(|a| a.size()).sum::<usize>();
            let group = Group {
                key: values,
                accumulators,
                rows: counts.value(i),
                sent: Some(sent),
                touched: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                size,
            };
            if let Some(old) = self.groups.insert(key, group) {
                self.state_bytes -= old.size;
            }
            self.state_bytes += size;
        }
        self.state.set(self.state_bytes);
        Ok(())
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

    fn checkpointable(&self) -> bool {
        !self.changelog_input
            || self
                .spec
                .aggregates
                .iter()
                .all(|a| !a.is_distinct() && RESTORABLE_WITH_RETRACTIONS.contains(&a.fun().name()))
    }

    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        Ok(self.snapshot_groups()?.map(|p| (GROUPS_TABLE, p)).into_iter().collect())
    }

    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        for (t, part) in &parts {
            match *t {
                GROUPS_TABLE => self.restore_groups(&part.batch)?,
                other => return Err(corrupt(&format!("the updating aggregate has no table {other}"))),
            }
        }
        Ok(())
    }
}

/// One accumulator per aggregate; sliding ones (that can take rows back) over
/// a changelog.
fn new_accumulators(spec: &AggregateSpec, changelog_input: bool) -> Result<Vec<Box<dyn Accumulator>>> {
    spec.aggregates
        .iter()
        .map(|a| Ok(if changelog_input { a.create_sliding_accumulator()? } else { a.create_accumulator()? }))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::with_op_field;
    use crate::metrics::JobMetrics;
    use crate::operators::checkpoint_testing::{
        aggregate_spec, check_resumes, exchange_key, input_schema, input_steps, Step, PARALLELISMS,
    };

    const AGGREGATES: &[(&str, &str, bool)] = &[("sum", "v", false), ("count", "v", false), ("avg", "x", false)];

    fn updating_aggregate(
        group: &[(&str, &str)],
        aggregates: &[(&str, &str, bool)],
        changelog_input: bool,
    ) -> impl Fn(&Arc<JobMetrics>) -> Box<dyn Operator> {
        let spec = aggregate_spec(group, aggregates, true);
        move |metrics| {
            let op = UpdatingAggregate::try_new(spec.clone(), changelog_input, None, metrics.state_reporter());
            Box::new(op.expect("an aggregate"))
        }
    }

    /// [`input_steps`] as a changelog: each batch inserts its rows and takes
    /// back the first four rows of the batch before; a last batch takes back
    /// every row of keys 2 and 5.
    fn changelog_steps() -> Result<Vec<Step>> {
        let schema = with_op_field(&input_schema());
        let concat = |batches: &[RecordBatch]| datafusion::arrow::compute::concat_batches(&input_schema(), batches);
        let mut previous: Option<RecordBatch> = None;
        let mut kept = Vec::new();
        let mut steps = Vec::new();
        for step in input_steps(true) {
            let Step::Batch(batch) = step else { continue };
            let mut kinds = vec![ChangeKind::Insert; batch.num_rows()];
            let rows = match &previous {
                Some(p) => {
                    kinds.extend([ChangeKind::Delete; 4]);
                    kept.push(p.slice(4, p.num_rows() - 4));
                    concat(&[batch.clone(), p.slice(0, 4)])?
                }
                None => batch.clone(),
            };
            steps.push(Step::Batch(attach_ops(&schema, &rows, &kinds)?));
            previous = Some(batch);
        }
        kept.extend(previous);
        let kept = concat(&kept)?;
        let keys = kept.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().expect("keys");
        let taken: datafusion::arrow::array::BooleanArray = keys.iter().map(|k| Some(matches!(k, Some(2 | 5)))).collect();
        let taken = datafusion::arrow::compute::filter_record_batch(&kept, &taken)?;
        steps.push(Step::Batch(attach_ops(&schema, &taken, &vec![ChangeKind::Delete; taken.num_rows()])?));
        Ok(steps)
    }

    #[tokio::test]
    async fn resumes_from_a_snapshot_at_any_parallelism() -> Result<()> {
        let aggregates = [AGGREGATES, &[("max", "v", false), ("count", "v", true)]].concat();
        let make = updating_aggregate(&[("k", "k")], &aggregates, false);
        assert!(make(&JobMetrics::new()).checkpointable());
        let outcome = check_resumes(&make, &exchange_key(&["k"]), &input_steps(true), PARALLELISMS).await?;
        assert!(outcome.rows.iter().any(|r| r.ends_with("|-U")), "groups update: {:?}", outcome.rows);
        Ok(())
    }

    #[tokio::test]
    async fn resumes_a_global_aggregate_in_lane_0() -> Result<()> {
        let make = updating_aggregate(&[], AGGREGATES, false);
        let outcome = check_resumes(&make, &[], &input_steps(true), PARALLELISMS).await?;
        assert!(outcome.rows.iter().any(|r| r.ends_with("|+U")));
        Ok(())
    }

    #[tokio::test]
    async fn resumes_over_a_changelog_with_retractions() -> Result<()> {
        let make = updating_aggregate(&[("k", "k")], AGGREGATES, true);
        assert!(make(&JobMetrics::new()).checkpointable());
        let outcome = check_resumes(&make, &exchange_key(&["k"]), &changelog_steps()?, PARALLELISMS).await?;
        assert!(outcome.rows.iter().any(|r| r.ends_with("|-D")), "some groups are emptied: {:?}", outcome.rows);
        Ok(())
    }

    #[test]
    fn retractions_the_state_cannot_restore_make_it_not_checkpointable() {
        for refused in [("max", "v", false), ("min", "v", false), ("count", "v", true)] {
            let make = updating_aggregate(&[("k", "k")], &[("sum", "v", false), refused], true);
            assert!(!make(&JobMetrics::new()).checkpointable(), "{refused:?} over a changelog");
            let make = updating_aggregate(&[("k", "k")], &[("sum", "v", false), refused], false);
            assert!(make(&JobMetrics::new()).checkpointable(), "{refused:?} over appends");
        }
    }

    #[tokio::test]
    async fn a_group_keeps_its_ttl_clock_and_expired_groups_are_not_restored() -> Result<()> {
        let spec = aggregate_spec(&[("k", "k")], AGGREGATES, true);
        let ttl = Duration::from_secs(60);
        let mut op = UpdatingAggregate::try_new(spec.clone(), false, Some(ttl), JobMetrics::new().state_reporter())?;
        let Step::Batch(batch) = &input_steps(true)[0] else { unreachable!("a batch first") };
        op.on_batch(batch.clone(), &mut Emitter::default()).await?;
        let groups = op.groups.len();
        let mut parts = op.snapshot()?;
        let mut restored = UpdatingAggregate::try_new(spec.clone(), false, Some(ttl), JobMetrics::new().state_reporter())?;
        restored.restore(parts.clone())?;
        assert_eq!(restored.groups.len(), groups);
        assert!(restored.groups.values().all(|g| g.touched.elapsed() < Duration::from_secs(5)));
        // Stored two minutes ago: expired while the query was stopped.
        let touched = parts[0].1.batch.schema().index_of("updated_at_ms")?;
        let mut columns = parts[0].1.batch.columns().to_vec();
        let earlier = datafusion::arrow::array::Int64Array::from(vec![epoch_millis() - 120_000; columns[touched].len()]);
        columns[touched] = Arc::new(earlier);
        parts[0].1.batch = RecordBatch::try_new(parts[0].1.batch.schema(), columns)?;
        let mut expired = UpdatingAggregate::try_new(spec, false, Some(ttl), JobMetrics::new().state_reporter())?;
        expired.restore(parts)?;
        assert!(expired.groups.is_empty());
        Ok(())
    }
}
