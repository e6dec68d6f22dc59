//! UNION ALL of streams where arrival order matters: a window aggregate over a
//! union judges rows late against the union's watermark, the least of its
//! inputs'. The golden tests (tests/slt/windows/union.slt) cannot say how far
//! each input got when a row arrives, so here each input is a source the test
//! releases rows into one at a time, waiting on the query's output in between.
//! Also: a union of windowed branches checkpointed, stopped and resumed at
//! another parallelism gives the rows of an uninterrupted run, each once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_connectors::table_printer::format_cells;
use sluice_connectors::{Connector, ConnectorError, Shard, TableSpec};
use sluice_engine::{EngineError, Source, SourceEvent};
use sluice_sql::{QueryOutput, Session, StatementOutput};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the test hands a scripted source.
enum Script {
    /// One row: a user and an event time in seconds after 2024-01-01 00:00:00.
    Row(&'static str, i64),
    /// Nothing for a while: the source reports itself idle.
    Idle,
}

/// Tables whose rows the test sends (`connector = 'scripted'`): lane 0 of the
/// table reads what the test sends until the test drops its sender; other
/// lanes end at once.
#[derive(Default)]
struct Scripted {
    inputs: Mutex<HashMap<String, mpsc::UnboundedReceiver<Script>>>,
}

impl Scripted {
    fn table(&self, name: &str) -> mpsc::UnboundedSender<Script> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut inputs) = self.inputs.lock() {
            inputs.insert(name.to_string(), rx);
        }
        tx
    }
}

impl Connector for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn validate(&self, _table: &TableSpec) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn source(&self, table: &TableSpec, shard: Shard, _query_id: &str) -> Result<Box<dyn Source>, ConnectorError> {
        let script = match shard.index {
            0 => self.inputs.lock().ok().and_then(|mut inputs| inputs.remove(&table.name)),
            _ => None,
        };
        Ok(Box::new(ScriptedSource { schema: table.schema.clone(), script }))
    }
}

struct ScriptedSource {
    schema: SchemaRef,
    script: Option<mpsc::UnboundedReceiver<Script>>,
}

#[async_trait]
impl Source for ScriptedSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        "scripted".into()
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, EngineError> {
        match self.next_event().await? {
            SourceEvent::Batch(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    async fn next_event(&mut self) -> Result<SourceEvent, EngineError> {
        let Some(script) = self.script.as_mut() else { return Ok(SourceEvent::End) };
        match script.recv().await {
            None => Ok(SourceEvent::End),
            Some(Script::Idle) => Ok(SourceEvent::Idle),
            Some(Script::Row(user, seconds)) => {
                let ts = 1_704_067_200_000 + seconds * 1000;
                let values: [ArrayRef; 2] =
                    [Arc::new(StringArray::from(vec![user])), Arc::new(TimestampMillisecondArray::from(vec![ts]))];
                // In the declared types (VARCHAR is a string view).
                let columns = values
                    .iter()
                    .zip(self.schema.fields())
                    .map(|(v, f)| cast(v, f.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(SourceEvent::Batch(RecordBatch::try_new(self.schema.clone(), columns)?))
            }
        }
    }
}

/// A session reading scripted tables `a` and `b` (watermarks 2 s behind) in
/// one lane, the query over their union, and the senders of both.
async fn scripted_union(
    query: &str,
) -> Result<(QueryOutput, mpsc::UnboundedSender<Script>, mpsc::UnboundedSender<Script>), Box<dyn std::error::Error>> {
    let connector = Arc::new(Scripted::default());
    let (a, b) = (connector.table("a"), connector.table("b"));
    let mut session = Session::default();
    session.add_connector(connector);
    session.set_parallelism(1);
    for table in ["a", "b"] {
        session
            .execute_script(&format!(
                "CREATE TABLE {table} (user_id VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
                 WITH (connector = 'scripted')"
            ))
            .await?;
    }
    session.execute_script("CREATE VIEW ab AS SELECT user_id, ts FROM a UNION ALL SELECT user_id, ts FROM b").await?;
    let mut outputs = session.execute_script(query).await?;
    let Some(StatementOutput::Query(q)) = outputs.pop() else { return Err("not a continuous query".into()) };
    Ok((q, a, b))
}

const TUMBLE_COUNT: &str = "SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE ab, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
    GROUP BY window_start, window_end";

/// The next result rows, as text.
async fn next_rows(q: &mut QueryOutput) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let Some(batch) = tokio::time::timeout(Duration::from_secs(30), q.results.recv()).await? else {
        return Err(format!("the query ended: {:?}", q.job.wait().await).into());
    };
    Ok(format_cells(&batch)?.into_iter().map(|r| r.join(" ")).collect())
}

/// Every result row until the query ends, as text, sorted.
async fn remaining_rows(q: &mut QueryOutput) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(30), q.results.recv()).await? {
        rows.extend(format_cells(&batch)?.into_iter().map(|r| r.join(" ")));
    }
    tokio::time::timeout(Duration::from_secs(30), q.job.wait()).await??;
    rows.sort();
    Ok(rows)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) -> TestResult {
    for _ in 0..3000 {
        if done() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_over_a_union_counts_rows_late_for_the_unions_watermark() -> TestResult {
    let (mut q, a, b) = scripted_union(TUMBLE_COUNT).await?;
    // a reaches 10 s, b 13 s: the union's watermark is 10 s, closing [0 s, 10 s).
    for (input, user, t) in [(&a, "x", 1), (&a, "x", 12), (&b, "y", 3), (&b, "y", 15)] {
        input.send(Script::Row(user, t))?;
    }
    assert_eq!(next_rows(&mut q).await?, vec!["2024-01-01T00:00:00 2"]);
    // Late for b's watermark and for the union's: counted and dropped.
    b.send(Script::Row("y", 5))?;
    let metrics = q.job.metrics_handle();
    until("the late row", || metrics.snapshot().late_rows == 1).await?;
    // a moves to 28 s, but b holds the union at 13 s: a's row at 16 s is behind
    // a's own watermark, yet on time for the union's, and counts.
    // A row late for the union follows, so that once it is counted the row at
    // 16 s has been through too, before b's end lets the union's time move.
    a.send(Script::Row("x", 30))?;
    a.send(Script::Row("x", 16))?;
    a.send(Script::Row("x", 4))?;
    until("a's late row", || metrics.snapshot().late_rows == 2).await?;
    drop((a, b));
    let rows = remaining_rows(&mut q).await?;
    assert_eq!(rows, vec!["2024-01-01T00:00:10 3", "2024-01-01T00:00:30 1"]);
    assert_eq!(q.job.metrics().late_rows, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_ended_inputs_do_not_hold_the_unions_watermark_back() -> TestResult {
    // b goes idle without a row: a alone moves the union's time.
    let (mut q, a, b) = scripted_union(TUMBLE_COUNT).await?;
    b.send(Script::Idle)?;
    a.send(Script::Row("x", 1))?;
    a.send(Script::Row("x", 12))?;
    assert_eq!(next_rows(&mut q).await?, vec!["2024-01-01T00:00:00 1"]);
    // a moves on alone while b is still idle.
    a.send(Script::Row("x", 25))?;
    assert_eq!(next_rows(&mut q).await?, vec!["2024-01-01T00:00:10 1"]);
    // a goes idle and b comes back with a row: b alone moves the union's time
    // (in either order: while a is active it holds the union at 23 s). The
    // union was at 23 s, so b's row is on time.
    a.send(Script::Idle)?;
    b.send(Script::Row("y", 33))?;
    assert_eq!(next_rows(&mut q).await?, vec!["2024-01-01T00:00:20 1"]);
    drop((a, b));
    assert_eq!(remaining_rows(&mut q).await?, vec!["2024-01-01T00:00:30 1"]);
    assert_eq!(q.job.metrics().late_rows, 0);

    // b ends at once (its final watermark, then its end): a alone moves time.
    let (mut q, a, b) = scripted_union(TUMBLE_COUNT).await?;
    drop(b);
    a.send(Script::Row("x", 1))?;
    a.send(Script::Row("x", 12))?;
    assert_eq!(next_rows(&mut q).await?, vec!["2024-01-01T00:00:00 1"]);
    drop(a);
    assert_eq!(remaining_rows(&mut q).await?, vec!["2024-01-01T00:00:10 1"]);
    assert_eq!(q.job.metrics().late_rows, 0);
    Ok(())
}

/// Two generator tables, each windowed, their union added up by a window
/// aggregate: state in both branches and above the union.
const CHECKPOINTED: &str = "\
    CREATE TABLE web (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
      WITH (connector = 'generator', rows = '3000', rate = '1000', seed = '1', 'interval.ms' = '100', 'disorder.ms' = '1000'); \
    CREATE TABLE app (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
      WITH (connector = 'generator', rows = '3000', rate = '1000', seed = '2', 'interval.ms' = '100', 'disorder.ms' = '1000'); \
    SELECT window_start, window_end, event_type, sum(n), count(*) FROM ( \
      SELECT window_start, window_end, event_type, count(*) AS n \
      FROM TABLE(TUMBLE(TABLE web, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, event_type \
      UNION ALL \
      SELECT window_start, window_end, event_type, count(*) AS n \
      FROM TABLE(TUMBLE(TABLE app, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, event_type) \
    GROUP BY window_start, window_end, event_type";

async fn run_checkpointed(dir: Option<&std::path::Path>, lanes: usize) -> Result<QueryOutput, Box<dyn std::error::Error>> {
    let mut session = Session::default();
    session.set_parallelism(lanes);
    if let Some(dir) = dir {
        session.set_checkpoint_dir(dir);
        session
            .execute_script("SET 'execution.checkpointing.interval' = '100 ms'; SET 'pipeline.name' = 'union'")
            .await?;
    }
    let mut outputs = session.execute_script(CHECKPOINTED).await?;
    let Some(StatementOutput::Query(q)) = outputs.pop() else { return Err("not a continuous query".into()) };
    Ok(q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_of_windowed_branches_resumes_from_its_checkpoint_at_another_parallelism() -> TestResult {
    let mut whole = run_checkpointed(None, 2).await?;
    let expected = remaining_rows(&mut whole).await?;
    assert!(!expected.is_empty());

    let dir = tempfile::tempdir()?;
    let QueryOutput { mut results, mut job, .. } = run_checkpointed(Some(dir.path()), 2).await?;
    let metrics = job.metrics_handle();
    let mut rows = Vec::new();
    // Stopped part way (the inputs take about 3 s), after two checkpoints.
    while metrics.checkpoints().completed < 2 {
        match tokio::time::timeout(Duration::from_millis(20), results.recv()).await {
            Ok(Some(batch)) => rows.extend(format_cells(&batch)?.into_iter().map(|r| r.join(" "))),
            Ok(None) => return Err("the first run ended before it was stopped".into()),
            Err(_) => {}
        }
    }
    let drain = async {
        let mut drained = Vec::new();
        while let Some(batch) = results.recv().await {
            drained.push(batch);
        }
        drained
    };
    let (stopped, drained) = tokio::join!(job.stop(), drain);
    stopped?;
    for batch in drained {
        rows.extend(format_cells(&batch)?.into_iter().map(|r| r.join(" ")));
    }
    assert!(rows.len() < expected.len(), "stopped before the end");

    let mut resumed = run_checkpointed(Some(dir.path()), 3).await?;
    assert!(resumed.warnings.iter().any(|w| w.contains("resuming 'union' from checkpoint")), "{:?}", resumed.warnings);
    rows.extend(remaining_rows(&mut resumed).await?);
    rows.sort();
    assert_eq!(rows, expected, "the rows of an uninterrupted run, each once");
    Ok(())
}
