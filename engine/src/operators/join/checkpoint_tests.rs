//! Checkpoints of the joins: a join snapshotted part way and restored into
//! fresh lanes (at the same parallelism, or from 1 lane to 3 and back) gives
//! what an uninterrupted join gives, late rows included.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;

use super::{EventTime, JoinKind, JoinMode, JoinSpec, SideTimes, StreamJoin};
use crate::error::Result;
use crate::metrics::JobMetrics;
use crate::operator::Operator;
use crate::operators::checkpoint_testing::{check_join_resumes, Step, PARALLELISMS, SEC};

/// An input of a join: a key (named `name`) and an event time.
fn schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(name, DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]))
}

fn rows(schema: &SchemaRef, rows: &[(Option<i64>, i64)]) -> RecordBatch {
    let keys = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let ts = TimestampNanosecondArray::from(rows.iter().map(|r| r.1 * SEC).collect::<Vec<_>>());
    RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(keys), Arc::new(ts)]).expect("rows")
}

fn keys() -> [Vec<Arc<dyn PhysicalExpr>>; 2] {
    [vec![Arc::new(Column::new("a", 0))], vec![Arc::new(Column::new("b", 0))]]
}

fn spec(kind: JoinKind) -> JoinSpec {
    let (l, r) = (schema("a"), schema("b"));
    let output = Arc::new(Schema::new(
        l.fields().iter().chain(r.fields().iter()).map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ));
    JoinSpec {
        kind,
        schemas: [l, r],
        keys: keys(),
        filter: None,
        projection: None,
        output_schema: output,
        description: "test".into(),
    }
}

/// Left rows of batch `b`: keys 0..6 and some NULL keys; the last one
/// straggles (late by the left input's watermark, not by the merged one).
fn left(b: i64) -> RecordBatch {
    let rows_: Vec<(Option<i64>, i64)> = (0..6)
        .map(|i| (Some((i * 5 + b) % 7).filter(|k| *k != 6), if i == 5 { b * 4 - 4 } else { b * 4 + i % 5 }))
        .collect();
    rows(&schema("a"), &rows_)
}

/// Right rows of batch `b`; the last one straggles (late from the second batch).
fn right(b: i64) -> RecordBatch {
    let rows_: Vec<(Option<i64>, i64)> =
        (0..5).map(|i| (Some((i * 3 + b) % 7), if i == 4 { b * 4 - 8 } else { b * 4 + i % 4 - 1 })).collect();
    rows(&schema("b"), &rows_)
}

/// Both inputs, with their own and merged watermarks, then the end of time.
fn steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for b in 0..6 {
        steps.push(Step::BatchFrom(0, left(b)));
        steps.push(Step::BatchFrom(1, right(b)));
        steps.push(Step::InputWatermark(0, (b * 4 + 1) * SEC));
        steps.push(Step::InputWatermark(1, (b * 4 - 2) * SEC));
        steps.push(Step::Watermark((b * 4 - 2) * SEC));
    }
    steps.extend([Step::InputWatermark(0, i64::MAX), Step::InputWatermark(1, i64::MAX), Step::Watermark(i64::MAX)]);
    steps
}

fn stream_join(kind: JoinKind, mode: impl Fn() -> JoinMode) -> impl Fn(&Arc<JobMetrics>) -> Box<dyn Operator> {
    move |metrics| Box::new(StreamJoin::try_new(spec(kind), mode(), Arc::clone(metrics)).expect("a join"))
}

#[tokio::test]
async fn an_interval_join_resumes_at_any_parallelism() -> Result<()> {
    let time = EventTime { column: 1, offset: 0 };
    let mode =
        || JoinMode::TimeBounded([SideTimes { time, expiry_offset: 5 * SEC }, SideTimes { time, expiry_offset: 0 }]);
    let make = stream_join(JoinKind::Left, mode);
    assert!(make(&JobMetrics::new()).checkpointable());
    let outcome = check_join_resumes(&make, &keys(), &steps(), PARALLELISMS).await?;
    assert!(outcome.rows.iter().any(|r| r.ends_with("||")), "unmatched left rows: {:?}", outcome.rows);
    assert!(outcome.rows.iter().any(|r| !r.ends_with("||")), "matches: {:?}", outcome.rows);
    assert!(outcome.late_rows > 0);
    Ok(())
}

#[tokio::test]
async fn a_regular_outer_join_resumes_at_any_parallelism() -> Result<()> {
    let make = stream_join(JoinKind::Full, || JoinMode::Regular { ttl: None });
    let mut steps = steps();
    steps.push(Step::InputEnd(1));
    steps.push(Step::BatchFrom(0, left(7)));
    let outcome = check_join_resumes(&make, &keys(), &steps, PARALLELISMS).await?;
    assert!(outcome.rows.iter().any(|r| r.ends_with("|-D")), "padded rows taken back: {:?}", outcome.rows);
    Ok(())
}

#[tokio::test]
async fn a_lookup_join_resumes_with_its_table_and_held_rows() -> Result<()> {
    let make = stream_join(JoinKind::Left, || JoinMode::Lookup { table: 1 });
    let mut steps = Vec::new();
    for b in 0..3 {
        steps.extend([Step::BatchFrom(0, left(b)), Step::BatchFrom(1, right(b)), Step::Watermark(b * 4 * SEC)]);
    }
    steps.push(Step::InputEnd(1));
    for b in 3..6 {
        steps.extend([Step::BatchFrom(0, left(b)), Step::Watermark(b * 4 * SEC)]);
    }
    let outcome = check_join_resumes(&make, &keys(), &steps, PARALLELISMS).await?;
    assert!(outcome.rows.len() > 20);
    Ok(())
}

fn temporal_join(table_changes: bool) -> impl Fn(&Arc<JobMetrics>) -> Box<dyn Operator> {
    move |metrics| {
        let time = EventTime { column: 1, offset: 0 };
        let join = super::TemporalJoin::try_new(spec(JoinKind::Left), 1, time, time, table_changes, Arc::clone(metrics));
        Box::new(join.expect("a temporal join"))
    }
}

/// Stream rows and versions (of an upsert table, with deletions, if
/// `table_changes`), with watermarks, then the end of time.
fn temporal_steps(table_changes: bool) -> Result<Vec<Step>> {
    let changelog = crate::changelog::with_op_field(&schema("b"));
    let mut steps = Vec::new();
    for b in 0..6 {
        steps.push(Step::BatchFrom(0, left(b)));
        let versions = right(b);
        let versions = match table_changes {
            true => {
                use crate::changelog::ChangeKind::{Delete, Insert};
                let kinds: Vec<_> = (0..versions.num_rows()).map(|i| if i == 2 { Delete } else { Insert }).collect();
                crate::changelog::attach_ops(&changelog, &versions, &kinds)?
            }
            false => versions,
        };
        steps.push(Step::BatchFrom(1, versions));
        steps.push(Step::InputWatermark(0, (b * 4 + 1) * SEC));
        steps.push(Step::Watermark((b * 4 - 2) * SEC));
    }
    steps.extend([Step::InputWatermark(0, i64::MAX), Step::Watermark(i64::MAX)]);
    Ok(steps)
}

#[tokio::test]
async fn a_temporal_join_resumes_with_its_versions_and_waiting_rows() -> Result<()> {
    for table_changes in [false, true] {
        let make = temporal_join(table_changes);
        assert!(make(&JobMetrics::new()).checkpointable());
        let outcome = check_join_resumes(&make, &keys(), &temporal_steps(table_changes)?, PARALLELISMS).await?;
        assert!(outcome.rows.iter().any(|r| r.ends_with("||")), "rows without a version: {:?}", outcome.rows);
        assert!(outcome.rows.iter().any(|r| !r.ends_with("||")), "rows with a version: {:?}", outcome.rows);
        assert!(outcome.late_rows > 0);
    }
    Ok(())
}
