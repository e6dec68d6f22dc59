//! Test support for operator checkpoints: runs an operator in lanes behind a
//! key exchange, snapshots it part way, hands the state out to fresh lanes as
//! the runtime does on restore (keyed rows by key group, lane rows to the same
//! lane or, at another parallelism, to every lane) and runs the rest, so a test
//! can compare the result with an uninterrupted run.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{filter, filter_record_batch};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::physical_plan::PhysicalExpr;

use crate::checkpoint::StatePart;
use crate::error::Result;
use crate::exchange::KeyPartitioner;
use crate::key_group::lane_of;
use crate::message::{Message, Watermark};
use crate::metrics::JobMetrics;
use crate::operator::{Emitter, Operator};

/// One input message of a test run.
#[derive(Clone)]
pub enum Step {
    Batch(RecordBatch),
    /// A batch of one input of a join (0 left, 1 right).
    BatchFrom(usize, RecordBatch),
    /// The merged watermark.
    Watermark(i64),
    /// One input's own watermark (before the merged one).
    InputWatermark(usize, i64),
    /// One input ended.
    InputEnd(usize),
}

/// What a run produced: every output row as text, sorted (lanes interleave),
/// and the late rows counted.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub rows: Vec<String>,
    pub late_rows: u64,
}

/// Operators in lanes behind an exchange on `keys` per input.
pub struct Lanes {
    ops: Vec<Box<dyn Operator>>,
    partitioners: Vec<KeyPartitioner>,
    rows: Vec<String>,
}

impl Lanes {
    pub fn new(ops: Vec<Box<dyn Operator>>, keys: &[Vec<Arc<dyn PhysicalExpr>>]) -> Self {
        let lanes = ops.len();
        let partitioners = keys.iter().map(|k| KeyPartitioner::new(k.clone(), lanes)).collect();
        Lanes { ops, partitioners, rows: Vec::new() }
    }

    /// Feeds `steps`: batches to the lanes that own their keys, watermarks to
    /// every lane (as the exchange broadcasts them).
    pub async fn feed(&mut self, steps: &[Step]) -> Result<()> {
        for step in steps {
            let mut out = Emitter::default();
            match step {
                Step::Batch(batch) => {
                    for (lane, rows) in self.partitioners[0].partition(batch)? {
                        self.ops[lane].on_batch(rows, &mut out).await?;
                    }
                }
                Step::BatchFrom(input, batch) => {
                    for (lane, rows) in self.partitioners[*input].partition(batch)? {
                        self.ops[lane].on_batch_from(*input, rows, &mut out).await?;
                    }
                }
                Step::Watermark(t) => {
                    for op in &mut self.ops {
                        op.on_watermark(Watermark::EventTime(*t), &mut out).await?;
                    }
                }
                Step::InputWatermark(input, t) => {
                    for op in &mut self.ops {
                        op.on_input_watermark(*input, Watermark::EventTime(*t), &mut out).await?;
                    }
                }
                Step::InputEnd(input) => {
                    for op in &mut self.ops {
                        op.on_input_end(*input, &mut out).await?;
                    }
                }
            }
            for message in out.drain() {
                if let Message::Batch(batch) = message {
                    self.rows.extend(row_strings(&batch));
                }
            }
        }
        Ok(())
    }

    /// Every lane's snapshot, by lane.
    pub fn snapshot(&mut self) -> Result<Vec<Vec<(usize, StatePart)>>> {
        self.ops.iter_mut().map(|op| op.snapshot()).collect()
    }

    pub fn into_rows(self) -> Vec<String> {
        self.rows
    }
}

/// The state each of `lanes` new lanes gets from the snapshots of the old
/// lanes, as the runtime hands it out (see `checkpoint::RestoredState`).
pub fn redistribute(old: Vec<Vec<(usize, StatePart)>>, lanes: usize) -> Result<Vec<Vec<(usize, StatePart)>>> {
    let old_lanes = old.len();
    let old = old
        .into_iter()
        .map(|parts| parts.into_iter().map(|(t, p)| Ok((t, through_ipc(p)?))).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let mut new: Vec<Vec<(usize, StatePart)>> = (0..lanes).map(|_| Vec::new()).collect();
    for (old_lane, parts) in old.into_iter().enumerate() {
        for (table, part) in parts {
            match &part.key_groups {
                None => {
                    for (lane, state) in new.iter_mut().enumerate() {
                        if lanes != old_lanes || lane == old_lane {
                            state.push((table, part.clone()));
                        }
                    }
                }
                Some(groups) => {
                    for (lane, state) in new.iter_mut().enumerate() {
                        let mine: BooleanArray =
                            groups.iter().map(|g| Some(g.is_some_and(|g| lane_of(g, lanes) == lane))).collect();
                        if mine.true_count() == 0 {
                            continue;
                        }
                        let batch = filter_record_batch(&part.batch, &mine)?;
                        let groups = filter(groups, &mine)?;
                        let groups = groups.as_any().downcast_ref::<UInt32Array>().cloned().expect("UInt32 groups");
                        state.push((table, StatePart::keyed(batch, groups)));
                    }
                }
            }
        }
    }
    Ok(new)
}

/// The part as a checkpoint stores and reads it back: as Arrow IPC.
fn through_ipc(part: StatePart) -> Result<StatePart> {
    use datafusion::arrow::ipc::reader::FileReader;
    use datafusion::arrow::ipc::writer::FileWriter;
    let mut bytes = Vec::new();
    let mut writer = FileWriter::try_new(&mut bytes, &part.batch.schema())?;
    writer.write(&part.batch)?;
    writer.finish()?;
    drop(writer);
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let batch = datafusion::arrow::compute::concat_batches(&part.batch.schema(), &batches)?;
    Ok(StatePart { batch, key_groups: part.key_groups })
}

/// Runs `steps` through one uninterrupted operator.
pub async fn uninterrupted(
    make: &dyn Fn(&Arc<JobMetrics>) -> Box<dyn Operator>,
    keys: &[Vec<Arc<dyn PhysicalExpr>>],
    steps: &[Step],
) -> Result<Outcome> {
    let metrics = JobMetrics::new();
    let mut lanes = Lanes::new(vec![make(&metrics)], keys);
    lanes.feed(steps).await?;
    Ok(outcome(lanes.into_rows(), &metrics))
}

/// Runs the first `cut` steps in `from` lanes, snapshots them, restores the
/// state into `to` fresh lanes and runs the rest there.
pub async fn resumed(
    make: &dyn Fn(&Arc<JobMetrics>) -> Box<dyn Operator>,
    keys: &[Vec<Arc<dyn PhysicalExpr>>],
    steps: &[Step],
    cut: usize,
    from: usize,
    to: usize,
) -> Result<Outcome> {
    let metrics = JobMetrics::new();
    let mut before = Lanes::new((0..from).map(|_| make(&metrics)).collect(), keys);
    before.feed(&steps[..cut]).await?;
    let state = redistribute(before.snapshot()?, to)?;
    let mut rows = before.into_rows();
    let mut after_ops = Vec::new();
    for parts in state {
        let mut op = make(&metrics);
        op.restore(parts)?;
        after_ops.push(op);
    }
    let mut after = Lanes::new(after_ops, keys);
    after.feed(&steps[cut..]).await?;
    rows.extend(after.into_rows());
    Ok(outcome(rows, &metrics))
}

/// Checks that cutting `steps` anywhere, at each pair of parallelisms, gives
/// what one uninterrupted operator gives; returns that.
pub async fn check_resumes(
    make: &dyn Fn(&Arc<JobMetrics>) -> Box<dyn Operator>,
    keys: &[Arc<dyn PhysicalExpr>],
    steps: &[Step],
    parallelisms: &[(usize, usize)],
) -> Result<Outcome> {
    check_join_resumes(make, &[keys.to_vec()], steps, parallelisms).await
}

/// [`check_resumes`] for an operator of several inputs, exchanged on `keys`
/// (one key per input).
pub async fn check_join_resumes(
    make: &dyn Fn(&Arc<JobMetrics>) -> Box<dyn Operator>,
    keys: &[Vec<Arc<dyn PhysicalExpr>>],
    steps: &[Step],
    parallelisms: &[(usize, usize)],
) -> Result<Outcome> {
    let expected = uninterrupted(make, keys, steps).await?;
    for &(from, to) in parallelisms {
        for cut in 0..=steps.len() {
            let got = resumed(make, keys, steps, cut, from, to).await?;
            assert_eq!(got, expected, "cut after {cut} steps, {from} lanes then {to}");
        }
    }
    Ok(expected)
}

fn outcome(mut rows: Vec<String>, metrics: &JobMetrics) -> Outcome {
    rows.sort();
    Outcome { rows, late_rows: metrics.snapshot().late_rows }
}

/// Each row of `batch` as `a|b|c`.
pub fn row_strings(batch: &RecordBatch) -> Vec<String> {
    (0..batch.num_rows())
        .map(|i| {
            batch
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, i).unwrap_or_else(|e| format!("<{e}>")))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// Seconds, in nanoseconds.
pub const SEC: i64 = 1_000_000_000;

/// The input of the aggregate tests: a key, a value (also as a float), an
/// event time and its 10 s tumbling window.
pub fn input_schema() -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("x", DataType::Float64, true),
        Field::new("ts", ts.clone(), false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
    ]))
}

/// Rows `(key, value, seconds)` of [`input_schema`].
pub fn input_rows(rows: &[(Option<i64>, i64, i64)]) -> RecordBatch {
    use datafusion::arrow::array::{Float64Array, Int64Array, TimestampNanosecondArray};
    let starts: Vec<i64> = rows.iter().map(|r| r.2.div_euclid(10) * 10 * SEC).collect();
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.1 as f64 / 4.0).collect::<Vec<_>>())),
            Arc::new(TimestampNanosecondArray::from(rows.iter().map(|r| r.2 * SEC).collect::<Vec<_>>())),
            Arc::new(TimestampNanosecondArray::from(starts.clone())),
            Arc::new(TimestampNanosecondArray::from(starts.iter().map(|s| s + 10 * SEC).collect::<Vec<_>>())),
        ],
    )
    .expect("test rows")
}

/// A stream of batches of many keys, with watermarks in between, some rows
/// late, and a last maximal watermark.
pub fn input_steps(keyed: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    for b in 0..8i64 {
        let rows: Vec<(Option<i64>, i64, i64)> = (0..14i64)
            .map(|i| {
                let key = (i * 7 + b) % 11;
                let key = match (keyed, key) {
                    (false, _) => None,
                    (true, 10) => None,
                    (true, k) => Some(k),
                };
                // The last row of each batch straggles (late from time to time).
                let secs = if i == 13 { b * 6 - 14 } else { b * 6 + (i % 9) - 3 };
                (key, i * 3 + b, secs)
            })
            .collect();
        steps.push(Step::Batch(input_rows(&rows)));
        steps.push(Step::Watermark((b * 6 - 2) * SEC));
    }
    steps.push(Step::Watermark(i64::MAX));
    steps
}

/// `name(column)` (DISTINCT if `distinct`) over `input`.
pub fn aggregate(
    input: &datafusion::arrow::datatypes::SchemaRef,
    name: &str,
    column: &str,
    distinct: bool,
) -> Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr> {
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    let udf = datafusion::functions_aggregate::all_default_aggregate_functions()
        .into_iter()
        .find(|f| f.name() == name)
        .expect("a built-in aggregate");
    let arg = datafusion::physical_expr::expressions::col(column, input).expect("a column");
    let alias = format!("{name}({}{column})", if distinct { "DISTINCT " } else { "" });
    Arc::new(
        AggregateExprBuilder::new(udf, vec![arg])
            .schema(Arc::clone(input))
            .alias(alias)
            .with_distinct(distinct)
            .build()
            .expect("an aggregate"),
    )
}

/// A GROUP BY of `group` (column of [`input_schema`], name) computing
/// `aggregates` (name, column, distinct); the output gets the change-kind
/// column if `changelog`.
pub fn aggregate_spec(
    group: &[(&str, &str)],
    aggregates: &[(&str, &str, bool)],
    changelog: bool,
) -> super::window_groups::AggregateSpec {
    use datafusion::arrow::datatypes::{Field, Schema};
    let input = input_schema();
    let group_exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = group
        .iter()
        .map(|(c, name)| (datafusion::physical_expr::expressions::col(c, &input).expect("a column"), name.to_string()))
        .collect();
    let aggregates: Vec<_> = aggregates.iter().map(|(n, c, d)| aggregate(&input, n, c, *d)).collect();
    let mut fields: Vec<Field> = group
        .iter()
        .map(|(c, name)| input.field_with_name(c).expect("a column").clone().with_name(*name))
        .collect();
    fields.extend(aggregates.iter().map(|a| a.field().as_ref().clone()));
    let output = Arc::new(Schema::new(fields));
    let output_schema = match changelog {
        true => crate::changelog::with_op_field(&output),
        false => output,
    };
    let position = |c: &str| group.iter().position(|(_, name)| *name == c).unwrap_or(usize::MAX);
    super::window_groups::AggregateSpec {
        window_start: position("window_start"),
        window_end: position("window_end"),
        filters: vec![None; aggregates.len()],
        group_exprs,
        aggregates,
        output_schema,
        input_schema: Some(input),
    }
}

/// The exchange key on columns `names` of [`input_schema`].
pub fn exchange_key(names: &[&str]) -> Vec<Arc<dyn PhysicalExpr>> {
    let input = input_schema();
    names.iter().map(|c| datafusion::physical_expr::expressions::col(c, &input).expect("a column")).collect()
}

/// The cuts tested: the same parallelism, and from 1 lane to 3 and back.
pub const PARALLELISMS: &[(usize, usize)] = &[(1, 1), (3, 3), (1, 3), (3, 1)];
