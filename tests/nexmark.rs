//! Nexmark: each query of `benches/nexmark`, run as a stream over bounded
//! `nexmark` tables, gives the rows of its batch form (`benches/nexmark/batch`)
//! that DataFusion runs over the same generated events, written without window
//! TVFs (windows as integer arithmetic on the event time). Bounded inputs end with a
//! final watermark, so every window closes and the two sides see the same
//! windows. Updating results (q4) are applied as a changelog first.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_connectors::nexmark::{NexmarkConfig, NexmarkGenerator, NexmarkTable};
use sluice_connectors::table_printer::format_cells;
use sluice_connectors::{Shard, TableSpec};
use sluice_sql::{Session, StatementOutput};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Events in the stream (of all three kinds), and their rate in event time:
/// 100 s of event time, ten 10 s windows.
const EVENTS: u64 = 100_000;
const EVENTS_PER_SECOND: u64 = 1_000;

fn nexmark_file(name: &str) -> TestResult<String> {
    let path = format!("{}/benches/nexmark/{name}", env!("CARGO_MANIFEST_DIR"));
    Ok(std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?)
}

/// `text` with `from` replaced by `to`, which must occur `times` times.
fn replaced(text: &str, from: &str, to: &str, times: usize) -> TestResult<String> {
    let found = text.matches(from).count();
    if found != times {
        return Err(format!("expected {times} of \"{from}\", found {found}").into());
    }
    Ok(text.replace(from, to))
}

/// The DDL of `benches/nexmark/ddl.sql`, bounded to [`EVENTS`] at [`EVENTS_PER_SECOND`].
fn ddl() -> TestResult<String> {
    let text = nexmark_file("ddl.sql")?;
    let text = replaced(&text, "'nexmark.max-events' = '1000000'", &format!("'nexmark.max-events' = '{EVENTS}'"), 3)?;
    replaced(&text, "'nexmark.events-per-second' = '10000'", &format!("'nexmark.events-per-second' = '{EVENTS_PER_SECOND}'"), 3)
}

/// Query file `qN.sql` with its sink left out: the `CREATE TABLE nexmark_qN`
/// dropped and `INSERT INTO nexmark_qN` taken off, so its SELECT returns rows.
fn as_select(query: &str) -> TestResult<String> {
    let text = nexmark_file(&format!("{query}.sql"))?;
    let sink = format!("CREATE TABLE nexmark_{query} (");
    let start = text.find(&sink).ok_or_else(|| format!("{query}.sql: no {sink}"))?;
    let end = start + text[start..].find(");").ok_or("the sink's CREATE TABLE does not end")? + 2;
    let text = format!("{}{}", &text[..start], &text[end..]);
    replaced(&text, &format!("INSERT INTO nexmark_{query}"), "", 1)
}

/// Every cell as text; floating-point values to 12 significant digits, as a
/// stream may sum them in another order than a batch query.
fn cells(batches: &[RecordBatch]) -> TestResult<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for b in batches {
        let floats: Vec<bool> = b.schema().fields().iter().map(|f| f.data_type().is_floating()).collect();
        for row in format_cells(b)? {
            rows.push(
                row.into_iter()
                    .zip(&floats)
                    .map(|(cell, float)| match cell.parse::<f64>() {
                        Ok(v) if *float => format!("{v:.11e}"),
                        _ => cell,
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// The rows a changelog (`op` first) leaves: `+I`/`+U` add a row, `-U`/`-D` take it back.
fn apply_changelog(changes: Vec<Vec<String>>) -> TestResult<Vec<Vec<String>>> {
    let mut rows: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for change in changes {
        let (op, row) = change.split_first().ok_or("an empty change")?;
        let delta = match op.as_str() {
            "+I" | "+U" => 1,
            "-U" | "-D" => -1,
            other => return Err(format!("unknown change '{other}'").into()),
        };
        *rows.entry(row.to_vec()).or_default() += delta;
    }
    let mut out = Vec::new();
    for (row, n) in rows {
        if n < 0 {
            return Err(format!("row {row:?} taken back more often than added").into());
        }
        out.extend(std::iter::repeat_n(row, n as usize));
    }
    Ok(out)
}

async fn streaming(query: &str, lanes: usize) -> TestResult<Vec<Vec<String>>> {
    let mut session = Session::default();
    session.set_parallelism(lanes);
    session.execute_script(&ddl()?).await?;
    let mut outputs = session.execute_script(&as_select(query)?).await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a continuous query".into()) };
    let updating = q.schema.field(0).name() == "op";
    let mut batches = Vec::new();
    while let Some(b) = q.results.recv().await {
        batches.push(b);
    }
    q.job.wait().await?;
    assert_eq!(q.job.metrics().late_rows, 0, "{query}: rows within a lane come in event-time order");
    let mut rows = cells(&batches)?;
    if updating {
        rows = apply_changelog(rows)?;
    }
    rows.sort();
    Ok(rows)
}

/// Each table's rows.
type Tables = Vec<(NexmarkTable, Vec<RecordBatch>)>;

/// The three tables' rows, generated once.
fn generated() -> &'static Result<Tables, String> {
    static TABLES: OnceLock<Result<Tables, String>> = OnceLock::new();
    TABLES.get_or_init(|| {
        NexmarkTable::ALL
            .into_iter()
            .map(|table| {
                let options = BTreeMap::from([
                    ("nexmark.table".to_string(), table.name().to_string()),
                    ("nexmark.max-events".to_string(), EVENTS.to_string()),
                    ("nexmark.events-per-second".to_string(), EVENTS_PER_SECOND.to_string()),
                ]);
                let spec = TableSpec::new(table.name(), table.schema(), "nexmark", options);
                let cfg = NexmarkConfig::from_table(&spec).map_err(|e| e.to_string())?;
                let mut generator = NexmarkGenerator::new(&cfg, Shard::ALL);
                let mut batches = Vec::new();
                while let Some(b) = generator.next_batch(8192).map_err(|e| e.to_string())? {
                    batches.push(b);
                }
                Ok((table, batches))
            })
            .collect()
    })
}

async fn batch(sql: &str) -> TestResult<Vec<Vec<String>>> {
    let ctx = SessionContext::new();
    for (table, batches) in generated().as_ref().map_err(|e| e.clone())? {
        ctx.register_table(table.name(), Arc::new(MemTable::try_new(table.schema(), vec![batches.clone()])?))?;
    }
    let mut rows = cells(&ctx.sql(sql).await?.collect().await?)?;
    rows.sort();
    Ok(rows)
}

/// Checks query file `qN.sql` as a stream, in one lane and in three, against
/// its batch form `batch/qN.sql`.
async fn assert_same(query: &str) -> TestResult {
    let expected = batch(&nexmark_file(&format!("batch/{query}.sql"))?).await?;
    assert!(!expected.is_empty(), "{query}: the batch query found no rows");
    for lanes in [1, 3] {
        let actual = streaming(query, lanes).await?;
        assert_eq!(actual.len(), expected.len(), "{query}: row counts differ with {lanes} lane(s)");
        assert!(actual == expected, "{query}: rows differ with {lanes} lane(s)");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q0_pass_through() -> TestResult {
    assert_same("q0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q1_currency_conversion() -> TestResult {
    assert_same("q1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q2_selection() -> TestResult {
    assert_same("q2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q3_local_item_suggestion() -> TestResult {
    assert_same("q3").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q4_average_price_per_category() -> TestResult {
    assert_same("q4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q5_hot_items() -> TestResult {
    assert_same("q5").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q7_highest_bid() -> TestResult {
    assert_same("q7").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q8_monitor_new_users() -> TestResult {
    assert_same("q8").await
}

/// The files as written: DDL, then each query into its `blackhole` sink,
/// which takes as many rows as the query returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_files_run_into_blackholes() -> TestResult {
    for query in ["q0", "q2", "q5", "q8"] {
        let mut session = Session::default();
        session.execute_script(&ddl()?).await?;
        let mut outputs = session.execute_script(&nexmark_file(&format!("{query}.sql"))?).await?;
        let Some(StatementOutput::Insert { target, mut job, .. }) = outputs.pop() else {
            return Err(format!("{query}: not an INSERT").into());
        };
        assert_eq!(target, format!("nexmark_{query}"));
        job.wait().await?;
        let expected = streaming(query, 1).await?.len() as u64;
        assert_eq!(job.metrics().rows_out, expected, "{query}: rows into the blackhole");
    }
    Ok(())
}
