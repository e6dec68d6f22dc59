//! A file source restored from a checkpoint goes on after the rows it returned
//! before the barrier: nothing lost, nothing read twice, at the same
//! parallelism or another.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use sluice_engine::Source;

use super::position::positions_from;
use super::FileConnector;
use crate::registry::{Connector, Shard, TableSpec};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]))
}

fn source(path: &Path, format: &str, batch_size: usize, shard: Shard) -> TestResult<Box<dyn Source>> {
    let options = BTreeMap::from([
        ("path".to_string(), path.display().to_string()),
        ("format".to_string(), format.to_string()),
        ("batch.size".to_string(), batch_size.to_string()),
    ]);
    Ok(FileConnector.source(&TableSpec::new("t", schema(), "file", options), shard, "q")?)
}

/// Each row of `batches` as text, in order.
fn rows(batches: &[RecordBatch]) -> TestResult<Vec<String>> {
    let text = pretty_format_batches(batches)?.to_string();
    Ok(text.lines().filter(|l| l.starts_with("| ")).skip(1).map(String::from).collect())
}

/// Up to `n` batches (all, with `usize::MAX`).
async fn read(source: &mut dyn Source, n: usize) -> TestResult<Vec<RecordBatch>> {
    let mut out = Vec::new();
    while out.len() < n {
        match source.next_batch().await? {
            Some(b) => out.push(b),
            None => break,
        }
    }
    Ok(out)
}

/// Reads `before` batches, takes a checkpoint, reads one more (lost with the
/// crash that follows), and restores a new source from the checkpoint.
async fn interrupted(path: &Path, format: &str, batch_size: usize, before: usize) -> TestResult<Vec<String>> {
    let mut first = source(path, format, batch_size, Shard::ALL)?;
    let mut out = rows(&read(&mut *first, before).await?)?;
    first.on_barrier(1).await?;
    let position = first.position()?.ok_or("no position")?;
    read(&mut *first, 1).await?;
    let mut second = source(path, format, batch_size, Shard::ALL)?;
    second.restore(vec![position]).await?;
    out.extend(rows(&read(&mut *second, usize::MAX).await?)?);
    Ok(out)
}

fn json_lines(ids: std::ops::Range<i64>) -> String {
    ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n")).collect()
}

#[tokio::test]
async fn json_files_resume_after_the_rows_returned_before_the_barrier() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("a.json"), json_lines(0..5))?;
    std::fs::write(dir.path().join("b.json"), format!("\n{}", json_lines(5..10)))?;
    let whole = rows(&read(&mut *source(dir.path(), "json", 2, Shard::ALL)?, usize::MAX).await?)?;
    assert_eq!(whole.len(), 10);
    for before in 0..7 {
        assert_eq!(interrupted(dir.path(), "json", 2, before).await?, whole, "checkpoint after {before} batches");
    }
    Ok(())
}

#[tokio::test]
async fn the_position_names_finished_files_and_how_far_the_current_one_got() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("a.json"), json_lines(0..3))?;
    std::fs::write(dir.path().join("b.json"), json_lines(3..9))?;
    let mut s = source(dir.path(), "json", 3, Shard::ALL)?;
    assert!(s.resumable());
    read(&mut *s, 2).await?;
    s.on_barrier(7).await?;
    read(&mut *s, 1).await?;
    let positions = positions_from(&[s.position()?.ok_or("no position")?])?;
    let a = positions.get(&dir.path().join("a.json").display().to_string()).ok_or("no a.json")?;
    let b = positions.get(&dir.path().join("b.json").display().to_string()).ok_or("no b.json")?;
    assert!(a.done);
    assert!(!b.done);
    assert_eq!(b.line, 3);
    assert_eq!(b.offset, json_lines(3..6).len() as u64, "bytes of the records returned, as of the barrier");
    Ok(())
}

#[tokio::test]
async fn csv_resumes_without_its_header_and_names_lines_as_before() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.csv");
    std::fs::write(&path, "id,name\n1,a\n2,b\n3,c\n4,d\n5,e\n")?;
    let whole = rows(&read(&mut *source(&path, "csv", 2, Shard::ALL)?, usize::MAX).await?)?;
    assert_eq!(whole.len(), 5);
    for before in 0..4 {
        assert_eq!(interrupted(&path, "csv", 2, before).await?, whole, "checkpoint after {before} batches");
    }
    // A bad record after the restore is named by its line in the file.
    std::fs::write(&path, "id,name\n1,a\n2,b\nthree,c\n")?;
    let mut first = source(&path, "csv", 2, Shard::ALL)?;
    read(&mut *first, 1).await?;
    first.on_barrier(1).await?;
    let mut second = source(&path, "csv", 2, Shard::ALL)?;
    second.restore(vec![first.position()?.ok_or("no position")?]).await?;
    let e = read(&mut *second, usize::MAX).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("t.csv:4"), "{e}");
    Ok(())
}

#[tokio::test]
async fn parquet_resumes_after_the_rows_returned() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.parquet");
    let ids = Int64Array::from_iter_values(0..10);
    let names = StringArray::from_iter_values((0..10).map(|i| format!("n{i}")));
    let batch = RecordBatch::try_new(schema(), vec![Arc::new(ids), Arc::new(names)])?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path)?, schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    let whole = rows(&[batch])?;
    for before in 0..5 {
        assert_eq!(interrupted(&path, "parquet", 3, before).await?, whole, "checkpoint after {before} batches");
    }
    Ok(())
}

#[tokio::test]
async fn restored_at_another_parallelism_the_lanes_read_the_rest_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    for f in 0..5 {
        std::fs::write(dir.path().join(format!("f{f}.json")), json_lines(f * 10..f * 10 + 5))?;
    }
    let mut whole = rows(&read(&mut *source(dir.path(), "json", 2, Shard::ALL)?, usize::MAX).await?)?;
    whole.sort();
    let mut out = Vec::new();
    let mut positions = Vec::new();
    for (index, before) in [4, 1].into_iter().enumerate() {
        let mut lane = source(dir.path(), "json", 2, Shard { index, count: 2 })?;
        out.extend(rows(&read(&mut *lane, before).await?)?);
        lane.on_barrier(1).await?;
        positions.extend(lane.position()?);
    }
    for index in 0..3 {
        let mut lane = source(dir.path(), "json", 2, Shard { index, count: 3 })?;
        lane.restore(positions.clone()).await?;
        out.extend(rows(&read(&mut *lane, usize::MAX).await?)?);
    }
    out.sort();
    assert_eq!(out, whole);
    Ok(())
}

#[tokio::test]
async fn a_glob_reads_its_matches_in_path_order_and_resumes_by_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("2024/02"))?;
    std::fs::create_dir_all(dir.path().join("2024/01"))?;
    std::fs::write(dir.path().join("2024/02/b.json"), json_lines(6..9))?;
    std::fs::write(dir.path().join("2024/01/a.json"), json_lines(0..3))?;
    std::fs::write(dir.path().join("2024/01/c.json"), json_lines(3..6))?;
    std::fs::write(dir.path().join("2024/01/notes.txt"), "not json\n")?;
    std::fs::write(dir.path().join("2024/01/.c.json.inprogress"), "not json\n")?;
    let glob = dir.path().join("2024/*/*.json");
    let whole = rows(&read(&mut *source(&glob, "json", 2, Shard::ALL)?, usize::MAX).await?)?;
    let ids: Vec<String> = whole.iter().map(|r| r.split('|').nth(1).unwrap_or_default().trim().to_string()).collect();
    assert_eq!(ids, (0..9).map(|i| i.to_string()).collect::<Vec<_>>(), "files in path order, each in file order");
    for before in 0..6 {
        assert_eq!(interrupted(&glob, "json", 2, before).await?, whole, "checkpoint after {before} batches");
    }
    // The position names each file by its path, and how far it got.
    let mut s = source(&glob, "json", 2, Shard::ALL)?;
    read(&mut *s, 3).await?;
    s.on_barrier(1).await?;
    let positions = positions_from(&[s.position()?.ok_or("no position")?])?;
    let a = positions.get(&dir.path().join("2024/01/a.json").display().to_string()).ok_or("no a.json")?;
    let c = positions.get(&dir.path().join("2024/01/c.json").display().to_string()).ok_or("no c.json")?;
    assert!(a.done && !c.done);
    assert_eq!((c.line, c.offset), (2, json_lines(3..5).len() as u64));
    Ok(())
}

#[tokio::test]
async fn a_directory_is_read_recursively_and_nothing_to_read_is_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("user=1"))?;
    std::fs::create_dir_all(dir.path().join("user=2"))?;
    std::fs::write(dir.path().join("user=1/part-0.json"), json_lines(0..2))?;
    std::fs::write(dir.path().join("user=2/part-0.json"), json_lines(2..4))?;
    std::fs::write(dir.path().join("_SUCCESS"), "")?;
    let all = rows(&read(&mut *source(dir.path(), "json", 10, Shard::ALL)?, usize::MAX).await?)?;
    assert_eq!(all.len(), 4);
    let error = |path: &Path| source(path, "json", 10, Shard::ALL).err().map(|e| e.to_string()).unwrap_or_default();
    let e = error(&dir.path().join("*.csv"));
    assert!(e.contains("matches no files") && e.contains("'path'"), "{e}");
    assert!(error(&dir.path().join("nope.json")).contains("does not exist"));
    // At CREATE TABLE: a glob must match; a missing plain path may be a sink's output.
    let spec = |path: &Path| {
        let options = BTreeMap::from([("path".to_string(), path.display().to_string())]);
        TableSpec::new("t", schema(), "file", options)
    };
    assert!(FileConnector.validate(&spec(&dir.path().join("*.csv"))).is_err());
    assert!(FileConnector.validate(&spec(&dir.path().join("out.json"))).is_ok());
    Ok(())
}

/// A JSON or CSV table read by a query that needs only some columns: the file
/// has a nullable `score` that is text where a number is declared, which makes
/// every record bad for a query that reads it, and none for one that does not.
#[tokio::test]
async fn a_text_source_decodes_only_the_columns_its_query_reads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("t.json");
    std::fs::write(&json, "{\"id\": 1, \"name\": \"a\", \"score\": \"high\"}\n{\"id\": 2, \"name\": \"b\", \"score\": \"low\"}\n")?;
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "id,name,score\n1,a,high\n2,b,low\n")?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Int64, true),
    ]));
    for (path, format) in [(&json, "json"), (&csv, "csv")] {
        let options = BTreeMap::from([
            ("path".to_string(), path.display().to_string()),
            ("format".to_string(), format.to_string()),
            ("bad_data".to_string(), "drop".to_string()),
        ]);
        let spec = TableSpec::new("t", Arc::clone(&schema), "file", options);
        let read_by = |columns: Option<Vec<String>>| -> TestResult<Box<dyn Source>> {
            Ok(FileConnector.source(&spec.clone().reading(columns), Shard::ALL, "q")?)
        };
        // `id` is NOT NULL, so it is decoded even where the query does not name it.
        let mut narrow = read_by(Some(vec!["name".to_string()]))?;
        let batches = read(&mut *narrow, usize::MAX).await?;
        assert_eq!(batches.first().map(|b| b.schema()), Some(Arc::clone(&schema)), "{format}: the table's schema");
        assert_eq!(rows(&batches)?, vec!["| 1  | a    |       |", "| 2  | b    |       |"], "{format}");
        assert_eq!(narrow.bad_records(), 0, "{format}");
        let mut whole = read_by(None)?;
        assert_eq!(rows(&read(&mut *whole, usize::MAX).await?)?, Vec::<String>::new(), "{format}");
        assert_eq!(whole.bad_records(), 2, "{format}");
    }
    Ok(())
}
