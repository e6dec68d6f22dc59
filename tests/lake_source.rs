//! Lakes and Hive-partitioned directories read by Sluice: one pyarrow wrote
//! (`write_dataset(..., partitioning_flavor='hive')`), read in streaming and in
//! batch mode with its partition columns typed as declared; staged and hidden
//! files never read; and in batch mode, files in partitions a filter excludes
//! never opened.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_connectors::table_printer::format_cells;
use sluice_sql::{Session, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `sql` (statements separated by `;`) and returns the last one's rows,
/// each as its cells joined by spaces, sorted.
async fn rows(session: &mut Session, sql: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut last = Vec::new();
    for statement in session.parse(sql)? {
        let batches = match session.execute(statement).await? {
            StatementOutput::Rows { batches, .. } => batches,
            StatementOutput::Query(mut q) => {
                let mut batches = Vec::new();
                let collect = async {
                    while let Some(b) = q.results.recv().await {
                        batches.push(b);
                    }
                    q.job.wait().await
                };
                tokio::time::timeout(Duration::from_secs(60), collect).await??;
                batches
            }
            StatementOutput::Insert { mut job, .. } => {
                tokio::time::timeout(Duration::from_secs(60), job.wait()).await??;
                Vec::new()
            }
            StatementOutput::InsertSet { mut job, .. } => {
                tokio::time::timeout(Duration::from_secs(60), job.wait()).await??;
                Vec::new()
            }
            StatementOutput::Message(_) => Vec::new(),
        };
        last.clear();
        for batch in &batches {
            last.extend(format_cells(batch)?.into_iter().map(|cells| cells.join(" ")));
        }
    }
    last.sort();
    Ok(last)
}

fn pyarrow_lake(dir: &Path) -> TestResult {
    let script = r#"
import sys
import pyarrow as pa, pyarrow.dataset as ds
t = pa.table({
    'id': pa.array([1, 2, 3, 4, 5], pa.int32()),
    'amount': [1.5, 2.5, 3.5, 4.5, 5.5],
    'day': ['2024-01-01', '2024-01-01', '2024-01-02', '2024-01-02', '2024-01-03'],
    'region': ['eu', 'us', 'eu', 'ap', 'eu'],
})
ds.write_dataset(t, sys.argv[1], format='parquet', partitioning=['day', 'region'], partitioning_flavor='hive')
"#;
    let out = Command::new("python3").args(["-c", script, &dir.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> TestResult {
    std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    std::fs::write(path, text)?;
    Ok(())
}

#[tokio::test]
async fn a_lake_pyarrow_wrote_reads_with_typed_partition_columns() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("sales");
    pyarrow_lake(&lake)?;
    // Never read: a checkpointed writer's staged file, hidden files and directories.
    write(&lake.join("day=2024-01-01/region=eu/.part-q-r-000001.parquet.staged"), "not parquet")?;
    write(&lake.join("_temporary/part-0.parquet"), "not parquet")?;
    write(&lake.join("_SUCCESS"), "")?;
    let mut session = Session::default();
    let create = format!(
        "CREATE TABLE sales (id BIGINT, amount DOUBLE, day DATE, region VARCHAR) \
         WITH (connector = 'lake', path = '{}', 'partition.by' = 'day, region');",
        lake.display()
    );
    rows(&mut session, &create).await?;
    let all = ["1 1.5 2024-01-01 eu", "2 2.5 2024-01-01 us", "3 3.5 2024-01-02 eu", "4 4.5 2024-01-02 ap", "5 5.5 2024-01-03 eu"];
    assert_eq!(rows(&mut session, "SELECT id, amount, day, region FROM sales").await?, all);
    let per_region = "SELECT region, count(*), sum(amount) FROM sales WHERE day >= DATE '2024-01-02' GROUP BY region";
    let streaming = rows(&mut session, per_region).await?;
    assert!(streaming.contains(&"+U eu 2 9.0".to_string()), "a changelog: {streaming:?}");
    rows(&mut session, "SET 'execution.runtime-mode' = 'batch'").await?;
    assert_eq!(rows(&mut session, "SELECT id, amount, day, region FROM sales").await?, all);
    assert_eq!(rows(&mut session, per_region).await?, ["ap 1 4.5", "eu 2 9.0"]);
    assert_eq!(rows(&mut session, "SELECT day + INTERVAL '1' DAY FROM sales WHERE id = 5").await?, ["2024-01-04"]);
    Ok(())
}

#[tokio::test]
async fn batch_queries_do_not_open_files_of_excluded_partitions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("sales");
    pyarrow_lake(&lake)?;
    // A broken file in a partition: only a query that reads it fails.
    write(&lake.join("day=2024-01-09/region=eu/part-0.parquet"), "not parquet")?;
    let files = dir.path().join("orders");
    write(&files.join("day=2024-01-01/part-0.jsonl"), "{\"id\": 1}\n{\"id\": 2}\n")?;
    write(&files.join("day=2024-01-02/part-0.jsonl"), "{\"id\": 3}\n")?;
    write(&files.join("day=2024-01-09/part-0.jsonl"), "not json\n")?;
    let mut session = Session::default();
    let create = format!(
        "CREATE TABLE sales (id BIGINT, amount DOUBLE, day DATE, region VARCHAR) WITH (connector = 'lake', path = '{}'); \
         CREATE TABLE orders (id BIGINT, day DATE) WITH (connector = 'file', path = '{}'); \
         SET 'execution.runtime-mode' = 'batch';",
        lake.display(),
        files.display()
    );
    rows(&mut session, &create).await?;
    assert_eq!(rows(&mut session, "SELECT count(*) FROM sales WHERE day < DATE '2024-01-09'").await?, ["5"]);
    assert_eq!(rows(&mut session, "SELECT count(*) FROM sales WHERE region = 'us' OR day = DATE '2024-01-02'").await?, ["3"]);
    assert_eq!(rows(&mut session, "SELECT sum(id) FROM orders WHERE day IN (DATE '2024-01-01', DATE '2024-01-02')").await?, ["6"]);
    let plan = rows(&mut session, "EXPLAIN SELECT count(*) FROM sales WHERE day = DATE '2024-01-02'").await?.join("\n");
    assert!(plan.contains("batch query") && plan.contains("DataSourceExec"), "{plan}");
    assert!(plan.contains("day=2024-01-02") && !plan.contains("day=2024-01-01"), "only the partition's files: {plan}");
    let error = rows(&mut session, "SELECT count(*) FROM sales").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("day=2024-01-09"), "the broken file is read without a filter: {error}");
    let error = rows(&mut session, "SELECT count(*) FROM orders").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!error.is_empty(), "the broken JSON is read without a filter");
    Ok(())
}
