//! The lake sink's two-phase commit against a local directory: files hidden
//! until their checkpoint completes, restores that commit what the checkpoint
//! holds and drop what failed runs staged after it, and unchanged behaviour
//! without checkpoints.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_engine::runtime::FINAL_CHECKPOINT;
use sluice_engine::{Barrier, BarrierKind, Sink};

use super::LakeConnector;
use crate::registry::{Connector, TableSpec};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("p", DataType::Utf8, false)]))
}

fn sink(root: &Path, partitioned: bool) -> TestResult<Box<dyn Sink>> {
    let mut options = BTreeMap::from([("path".to_string(), root.display().to_string())]);
    if partitioned {
        options.insert("partition.by".into(), "p".into());
    }
    let mut sink = LakeConnector.sink_for_query(&TableSpec::new("lake", schema(), "lake", options), "q1")?;
    // As the runtime says of a query whose sources read from the beginning.
    sink.set_whole_input(true);
    Ok(sink)
}

/// Rows `ids`, spread over partitions `p=a` and `p=b`.
fn batch(ids: std::ops::Range<i64>) -> TestResult<RecordBatch> {
    let p = StringArray::from_iter_values(ids.clone().map(|i| if i % 2 == 0 { "a" } else { "b" }));
    Ok(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(p)])?)
}

fn checkpoint(id: u64) -> Barrier {
    Barrier { id, kind: BarrierKind::Checkpoint }
}

/// Every file under `root`, relative, sorted.
fn files(root: &Path) -> TestResult<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.display().to_string());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The files readers see: `*.parquet`, not hidden.
fn visible(root: &Path) -> TestResult<Vec<String>> {
    Ok(files(root)?.into_iter().filter(|f| f.ends_with(".parquet") && !file_name(f).starts_with(['.', '_'])).collect())
}

/// This query's staged files.
fn staged(root: &Path) -> TestResult<Vec<String>> {
    Ok(files(root)?.into_iter().filter(|f| f.ends_with(".staged") && file_name(f).starts_with(".part-q1-")).collect())
}

/// Rows DataFusion reads from the lake (as a listing table of `.parquet` files).
async fn rows_read(root: &Path) -> TestResult<usize> {
    let ctx = SessionContext::new();
    Ok(ctx.read_parquet(root.display().to_string(), ParquetReadOptions::default()).await?.count().await?)
}

#[tokio::test]
async fn without_checkpoints_files_are_final_when_completed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut s = sink(dir.path(), false)?;
    assert!(s.exactly_once());
    s.write_batch(batch(0..4)?).await?;
    s.on_barrier(checkpoint(1)).await?;
    assert_eq!(visible(dir.path())?.len(), 1);
    assert!(file_name(&visible(dir.path())?[0]).starts_with("part-q1-"));
    assert!(staged(dir.path())?.is_empty());
    s.commit(1).await?;
    assert!(s.snapshot()?.is_none());
    s.finish().await?;
    assert_eq!(rows_read(dir.path()).await?, 4);
    Ok(())
}

/// A bounded run that started where an earlier one left off (a consumer
/// group's offsets) has only part of the result: its end removes nothing.
#[tokio::test]
async fn a_run_that_did_not_read_its_whole_input_keeps_earlier_runs_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut first = sink(dir.path(), false)?;
    first.write_batch(batch(0..4)?).await?;
    first.finish().await?;
    for whole in [false, true] {
        let mut next = sink(dir.path(), false)?;
        next.set_whole_input(whole);
        next.write_batch(batch(4..6)?).await?;
        next.finish().await?;
    }
    assert_eq!(rows_read(dir.path()).await?, 2, "only the last run, which read everything, is left");
    let mut partial = sink(dir.path(), false)?;
    partial.set_whole_input(false);
    partial.write_batch(batch(6..7)?).await?;
    partial.finish().await?;
    assert_eq!(rows_read(dir.path()).await?, 3, "a partial run adds to the lake and removes nothing");
    Ok(())
}

#[tokio::test]
async fn a_staged_file_is_hidden_until_its_checkpoint_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut s = sink(dir.path(), true)?;
    s.begin_checkpoints(None).await?;
    s.write_batch(batch(0..4)?).await?;
    s.on_barrier(checkpoint(1)).await?;
    s.write_batch(batch(4..5)?).await?;
    s.on_barrier(checkpoint(2)).await?;
    assert_eq!(staged(dir.path())?.len(), 3, "{:?}", files(dir.path())?);
    assert!(visible(dir.path())?.is_empty());
    for f in staged(dir.path())? {
        assert!(f.starts_with("p=a/.part-q1-") || f.starts_with("p=b/.part-q1-"), "{f}");
    }
    let snapshot = s.snapshot()?.ok_or("no snapshot")?;
    assert_eq!(snapshot.schema(), super::staging::snapshot_schema());
    assert_eq!(snapshot.num_rows(), 3 + 1, "three files and the run");

    s.commit(1).await?;
    assert_eq!(visible(dir.path())?.len(), 2);
    assert_eq!(rows_read(dir.path()).await?, 4, "the second checkpoint's row is not visible yet");
    s.commit(2).await?;
    assert!(staged(dir.path())?.is_empty());
    assert_eq!(rows_read(dir.path()).await?, 5);
    assert_eq!(s.snapshot()?.ok_or("no snapshot")?.num_rows(), 1, "only the run is left");
    Ok(())
}

#[tokio::test]
async fn a_restore_commits_the_checkpoint_s_files_and_deletes_those_staged_after_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let foreign = dir.path().join(".part-q2-00000000000ab-000001.parquet.staged");
    std::fs::write(&foreign, b"another query's")?;

    let mut failed = sink(dir.path(), false)?;
    failed.begin_checkpoints(None).await?;
    failed.write_batch(batch(0..3)?).await?;
    failed.on_barrier(checkpoint(1)).await?;
    let snapshot = failed.snapshot()?.ok_or("no snapshot")?;
    failed.write_batch(batch(3..6)?).await?;
    failed.on_barrier(checkpoint(2)).await?;
    drop(failed); // checkpoint 1 completed, but the run failed before committing it

    let mut restored = sink(dir.path(), false)?;
    restored.begin_checkpoints(Some(snapshot.clone())).await?;
    assert_eq!(visible(dir.path())?.len(), 1);
    assert!(staged(dir.path())?.is_empty(), "{:?}", files(dir.path())?);
    assert_eq!(rows_read(dir.path()).await?, 3);
    assert!(foreign.exists(), "another query's staged file stays");

    // Committed already: fine.
    sink(dir.path(), false)?.begin_checkpoints(Some(snapshot.clone())).await?;
    assert_eq!(rows_read(dir.path()).await?, 3);

    // Gone altogether: the error names it.
    let committed = visible(dir.path())?.remove(0);
    std::fs::remove_file(dir.path().join(&committed))?;
    let e = sink(dir.path(), false)?.begin_checkpoints(Some(snapshot)).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains(&committed), "{e}");
    Ok(())
}

#[tokio::test]
async fn at_its_end_a_restored_query_keeps_its_lineage_and_deletes_other_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut earlier = sink(dir.path(), false)?;
    earlier.write_batch(batch(100..110)?).await?;
    earlier.finish().await?;
    let earlier_file = visible(dir.path())?;
    assert_eq!(earlier_file.len(), 1);

    let mut first = sink(dir.path(), false)?;
    first.begin_checkpoints(None).await?;
    first.write_batch(batch(0..3)?).await?;
    first.on_barrier(checkpoint(1)).await?;
    let snapshot = first.snapshot()?.ok_or("no snapshot")?;
    first.commit(1).await?;
    drop(first);

    let mut second = sink(dir.path(), false)?;
    second.begin_checkpoints(Some(snapshot)).await?;
    second.write_batch(batch(3..5)?).await?;
    second.finish().await?;
    assert!(second.snapshot()?.is_some());
    second.commit(FINAL_CHECKPOINT).await?;

    let now = visible(dir.path())?;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&earlier_file[0]), "the earlier run's file is deleted");
    assert_eq!(rows_read(dir.path()).await?, 5);
    Ok(())
}

#[tokio::test]
async fn a_stop_commits_before_finishing_and_deletes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut earlier = sink(dir.path(), false)?;
    earlier.write_batch(batch(100..110)?).await?;
    earlier.finish().await?;

    let mut s = sink(dir.path(), false)?;
    s.begin_checkpoints(None).await?;
    s.write_batch(batch(0..3)?).await?;
    s.on_barrier(Barrier { id: 3, kind: BarrierKind::Stop }).await?;
    s.snapshot()?;
    s.commit(3).await?;
    s.finish().await?;
    assert_eq!(rows_read(dir.path()).await?, 13);
    assert!(staged(dir.path())?.is_empty());
    Ok(())
}

/// The ids (and their partition `p`) a source reads to its end, or the first
/// `n` batches of them.
async fn read_ids(source: &mut dyn sluice_engine::Source, n: usize) -> TestResult<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(batch) = source.next_batch().await? else { break };
        assert_eq!(batch.schema(), schema(), "the declared columns, the partition column filled");
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().ok_or("ids")?;
        let p = batch.column(1).as_any().downcast_ref::<StringArray>().ok_or("p")?;
        out.extend((0..batch.num_rows()).map(|i| (ids.value(i), p.value(i).to_string())));
    }
    Ok(out)
}

#[tokio::test]
async fn a_lake_reads_back_by_shard_and_resumes_from_a_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = BTreeMap::from([
        ("path".to_string(), dir.path().display().to_string()),
        ("partition.by".to_string(), "p".to_string()),
        ("rollover.rows".to_string(), "3".to_string()),
    ]);
    let spec = TableSpec::new("lake", schema(), "lake", options);
    let mut sink = LakeConnector.sink_for_query(&spec, "q1")?;
    for start in [0, 4, 8] {
        sink.write_batch(batch(start..start + 4)?).await?;
    }
    sink.finish().await?;
    // Staged output of a checkpointed writer is not read.
    std::fs::write(dir.path().join("p=a/.part-q2-r-000001.parquet.staged"), "not parquet")?;
    let mut all = Vec::new();
    for index in 0..2 {
        let shard = crate::registry::Shard { index, count: 2 };
        let mut first = LakeConnector.source(&spec, shard, "q")?;
        let mut read = read_ids(&mut *first, 1).await?;
        first.on_barrier(1).await?;
        let position = first.position()?.ok_or("no position")?;
        read_ids(&mut *first, 1).await?; // lost with the crash that follows
        let mut second = LakeConnector.source(&spec, shard, "q")?;
        second.restore(vec![position]).await?;
        read.extend(read_ids(&mut *second, usize::MAX).await?);
        all.extend(read);
    }
    all.sort();
    let expected: Vec<(i64, String)> = (0..12).map(|i| (i, if i % 2 == 0 { "a" } else { "b" }.to_string())).collect();
    assert_eq!(all, expected, "every row once, with its partition");
    Ok(())
}
