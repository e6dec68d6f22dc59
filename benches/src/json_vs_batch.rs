//! Windowed queries over a JSON-lines file, Sluice streaming against batch engines.
//!
//! Issue #16 asks how far a streaming run is from a batch engine that sees the
//! whole input at once, when both have to decode the same JSON: a streaming
//! engine pays for watermarks, window state and emission that a batch engine
//! does not, and the question is what that costs on one core. This module
//! writes the clickstream events (the generator `sluice-bench` replays) as a
//! JSON-lines file, then times each query end to end, JSON decoding included:
//!
//! - Sluice streaming, one lane, reading the file through the `file` connector
//!   with a watermark one second behind (the events are at most 500 ms out of
//!   order, so no row is late and every engine sees the same rows);
//! - Sluice batch mode (`SET 'execution.runtime-mode' = 'batch'`, one partition),
//!   the same SQL as one DataFusion query with the window TVFs rewritten;
//! - plain DataFusion (`SessionContext` with one target partition) over the same
//!   file, the windows written out by hand as a batch user would.
//!
//! DuckDB runs in `benches/windows_vs_duckdb.py`, which drives this mode under
//! `taskset -c 0`. Each run prints one JSON object per line on stdout (what the
//! script reads) and a table of medians on stderr.
//!
//! A run's rows are compared by an order-independent checksum (see
//! [`checksum`]), which the Python script computes the same way for DuckDB.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::{JsonReadOptions, SessionConfig, SessionContext};
use sluice_sql::{Session, StatementOutput};

/// One query of the comparison, in each engine's SQL.
pub struct JsonQuery {
    /// A short key (`--only` matches it, the Python script names DuckDB's SQL by it).
    pub key: &'static str,
    pub name: &'static str,
    /// Sluice's SQL, run in streaming and in batch mode.
    pub sluice: &'static str,
    /// The same rows in DataFusion's SQL, without window TVFs.
    pub datafusion: &'static str,
}

/// Tumbling windows of a minute, events per type.
pub const TUMBLE_COUNT_SQL: &str = "SELECT window_start, event_type, count(*) \
     FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
     GROUP BY window_start, window_end, event_type";

/// Hopping windows of five minutes every minute, events per type.
pub const HOP_COUNT_SQL: &str = "SELECT window_start, event_type, count(*) \
     FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)) \
     GROUP BY window_start, window_end, event_type";

/// Sessions of each user closed by 30 minutes without events, with the events
/// and the money they hold.
pub const SESSION_COUNT_SUM_SQL: &str = "SELECT user_id, window_start, window_end, count(*), sum(price) \
     FROM TABLE(SESSION(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' MINUTE)) \
     GROUP BY window_start, window_end, user_id";

/// The three queries of issue #16, then two scans that return nothing, to tell
/// the cost of reading the JSON from that of the windows: one that needs one
/// column (batch engines decode only that one, Sluice's streaming source every
/// declared column) and one that needs them all. The DataFusion forms
/// follow the batch rewrite of window TVFs (`sql/src/window_tvf.rs`); the
/// session's is the usual lag / running-sum numbering of sessions, then one
/// GROUP BY.
pub const JSON_QUERIES: [JsonQuery; 5] = [
    JsonQuery {
        key: "tumble",
        name: "tumble 1 min, count by event_type",
        sluice: TUMBLE_COUNT_SQL,
        datafusion: "SELECT window_start, event_type, count(*) FROM \
             (SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start, event_type FROM clicks) \
             GROUP BY window_start, event_type",
    },
    JsonQuery {
        key: "hop",
        name: "hop 1 min / 5 min, count by event_type",
        sluice: HOP_COUNT_SQL,
        datafusion: "SELECT window_start, event_type, count(*) FROM \
             (SELECT event_type, unnest(generate_series( \
                date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') - INTERVAL '4 minutes', \
                date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00'), INTERVAL '1 minute')) AS window_start \
              FROM clicks) \
             GROUP BY window_start, event_type",
    },
    JsonQuery {
        key: "session",
        name: "session 30 min gap by user_id, count+sum(price)",
        sluice: SESSION_COUNT_SUM_SQL,
        datafusion: "SELECT user_id, min(ts) AS window_start, max(ts) + INTERVAL '30 minutes' AS window_end, count(*), sum(price) FROM \
             (SELECT *, sum(starts) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS session FROM \
              (SELECT user_id, ts, price, \
                CASE WHEN ts <= lag(ts) OVER (PARTITION BY user_id ORDER BY ts) + INTERVAL '30 minutes' THEN 0 ELSE 1 END AS starts \
               FROM clicks)) \
             GROUP BY user_id, session",
    },
    JsonQuery {
        key: "scan",
        name: "scan only: WHERE user_id < 0 (no rows)",
        sluice: "SELECT user_id FROM clicks WHERE user_id < 0",
        datafusion: "SELECT user_id FROM clicks WHERE user_id < 0",
    },
    JsonQuery {
        key: "scan-all",
        name: "scan only, every column: SELECT * WHERE user_id < 0 (no rows)",
        sluice: "SELECT * FROM clicks WHERE user_id < 0",
        datafusion: "SELECT * FROM clicks WHERE user_id < 0",
    },
];

/// The engines this binary runs, in the order each round runs them.
#[derive(Clone, Copy)]
enum Engine {
    SluiceStreaming,
    SluiceBatch,
    DataFusion,
}

impl Engine {
    const ALL: [Engine; 3] = [Engine::SluiceStreaming, Engine::SluiceBatch, Engine::DataFusion];

    /// The name the Python script knows it by.
    fn name(self) -> &'static str {
        match self {
            Engine::SluiceStreaming => "sluice",
            Engine::SluiceBatch => "sluice-batch",
            Engine::DataFusion => "datafusion",
        }
    }

    async fn run(self, path: &Path, query: &JsonQuery) -> anyhow::Result<Measured> {
        match self {
            Engine::SluiceStreaming => run_sluice(path, query.sluice, false).await,
            Engine::SluiceBatch => run_sluice(path, query.sluice, true).await,
            Engine::DataFusion => run_datafusion(path, query.datafusion).await,
        }
    }
}

/// Writes `events` clickstream events (the generator's, out of order by up to
/// 500 ms) to `path` as JSON lines; `ts` is written as an ISO timestamp.
pub fn write_json(path: &Path, events: u64, users: u64) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = arrow::json::LineDelimitedWriter::new(BufWriter::new(file));
    let mut generator = crate::generator(events, users)?;
    while let Some(batch) = generator.next_batch(8192)? {
        writer.write(&batch)?;
    }
    writer.finish()?;
    Ok(())
}

/// One query's runs in one engine: the seconds of each, the last one's rows
/// and checksum.
#[derive(Default)]
struct Tally {
    seconds: Vec<f64>,
    rows: u64,
    checksum: u64,
}

/// What one run of one query in one engine measured.
struct Measured {
    seconds: f64,
    rows: u64,
    checksum: u64,
}

/// The table's DDL: the file connector, 8,192-row batches (DataFusion's batch
/// size), a watermark one second behind the latest event.
fn clicks_ddl(path: &Path) -> String {
    format!(
        "CREATE TABLE clicks (user_id BIGINT, session_id BIGINT, event_type VARCHAR, page VARCHAR, item_id BIGINT, \
         price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'file', path = '{}', format = 'json', 'batch.size' = '8192')",
        path.display().to_string().replace('\'', "''")
    )
}

/// Runs `sql` in Sluice with one lane, streaming or in batch mode, collecting
/// every result row; the clock covers planning, reading and the pipeline.
async fn run_sluice(path: &Path, sql: &str, batch_mode: bool) -> anyhow::Result<Measured> {
    let mut session = Session::default();
    session.set_parallelism(1);
    if batch_mode {
        session.execute_script("SET 'execution.runtime-mode' = 'batch'").await?;
    }
    session.execute_script(&clicks_ddl(path)).await?;
    let started = Instant::now();
    let mut outputs = session.execute_script(sql).await?;
    let mut batches = Vec::new();
    match outputs.pop() {
        Some(StatementOutput::Query(mut q)) => {
            while let Some(b) = q.results.recv().await {
                batches.push(b);
            }
            q.job.wait().await?;
        }
        Some(StatementOutput::Rows { batches: rows, .. }) => batches = rows,
        _ => bail!("'{sql}' returned no rows"),
    }
    let seconds = started.elapsed().as_secs_f64();
    measured(seconds, &batches)
}

/// The columns of the file as a batch user declares them.
fn json_schema() -> Schema {
    Schema::new(vec![
        Field::new("user_id", DataType::Int64, true),
        Field::new("session_id", DataType::Int64, true),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("page", DataType::Utf8, true),
        Field::new("item_id", DataType::Int64, true),
        Field::new("price", DataType::Float64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ])
}

/// Runs `sql` in plain DataFusion with one partition over the file.
async fn run_datafusion(path: &Path, sql: &str) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let schema = json_schema();
    // DataFusion lists only files with the extension it is told, even for one file.
    let extension = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let location = path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
    ctx.register_json("clicks", location, JsonReadOptions::default().schema(&schema).file_extension(&extension)).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    let seconds = started.elapsed().as_secs_f64();
    measured(seconds, &batches)
}

fn measured(seconds: f64, batches: &[RecordBatch]) -> anyhow::Result<Measured> {
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    Ok(Measured { seconds, rows, checksum: checksum(batches)? })
}

/// An order-independent checksum of rows: the wrapping sum of the FNV-1a hash
/// of each row's text, its values joined by `|` in column order, timestamps as
/// epoch milliseconds, floats as hundredths rounded (sums of prices in cents,
/// so that summation order does not matter), integers and strings as they are.
/// `benches/windows_vs_duckdb.py` computes it the same way.
pub fn checksum(batches: &[RecordBatch]) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for batch in batches {
        let columns = batch.columns().iter().map(|c| canonical(c.as_ref())).collect::<anyhow::Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            let text = columns.iter().map(|c| c.value(row)).collect::<Vec<_>>().join("|");
            total = total.wrapping_add(fnv1a(text.as_bytes()));
        }
    }
    Ok(total)
}

/// A column cast to the form its values are written in for [`checksum`].
enum Canonical {
    Integer(arrow::array::Int64Array),
    Cents(arrow::array::Float64Array),
    Text(arrow::array::StringArray),
}

impl Canonical {
    fn value(&self, row: usize) -> String {
        match self {
            Canonical::Integer(a) if a.is_valid(row) => a.value(row).to_string(),
            Canonical::Cents(a) if a.is_valid(row) => format!("{}", (a.value(row) * 100.0).round() as i64),
            Canonical::Text(a) if a.is_valid(row) => a.value(row).to_string(),
            _ => "NULL".to_string(),
        }
    }
}

fn canonical(column: &dyn Array) -> anyhow::Result<Canonical> {
    Ok(match column.data_type() {
        DataType::Timestamp(_, _) => {
            let millis = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            let raw = millis.as_primitive::<TimestampMillisecondType>().reinterpret_cast::<Int64Type>();
            Canonical::Integer(raw)
        }
        DataType::Float32 | DataType::Float64 => {
            Canonical::Cents(cast(column, &DataType::Float64)?.as_primitive::<Float64Type>().clone())
        }
        t if t.is_integer() => Canonical::Integer(cast(column, &DataType::Int64)?.as_primitive::<Int64Type>().clone()),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            Canonical::Text(cast(column, &DataType::Utf8)?.as_string::<i32>().clone())
        }
        other => bail!("no checksum form for a {other} column"),
    })
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Lines of `path`: the events it holds.
fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut lines = 0u64;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(lines);
        }
        lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        let n = buf.len();
        input.consume(n);
    }
}

/// Times each selected query in every engine, `repeat` rounds (each round runs
/// every query in every engine, so drift over the run favours none); prints a
/// JSON object per run on stdout and a table of medians on stderr. Fails if the
/// engines disagree on a query's rows.
pub fn json_table(runtime: &tokio::runtime::Runtime, path: &Path, repeat: usize, only: Option<&str>) -> anyhow::Result<()> {
    let events = count_lines(path)?;
    let selected: Vec<&JsonQuery> =
        JSON_QUERIES.iter().filter(|q| only.is_none_or(|o| q.key.contains(o) || q.name.contains(o))).collect();
    // Per query, per engine (in `Engine::ALL` order).
    let mut tallies: Vec<Vec<Tally>> = selected.iter().map(|_| Engine::ALL.iter().map(|_| Tally::default()).collect()).collect();
    for round in 0..repeat {
        for (query, per_engine) in selected.iter().zip(&mut tallies) {
            for (engine, tally) in Engine::ALL.iter().zip(per_engine.iter_mut()) {
                let m = runtime.block_on(engine.run(path, query)).with_context(|| format!("{} in {}", query.name, engine.name()))?;
                // Keys and names are plain ASCII without quotes, so JSON needs no escaping here.
                println!(
                    "{{\"query\": \"{}\", \"name\": \"{}\", \"engine\": \"{}\", \"round\": {round}, \
                     \"seconds\": {}, \"rows\": {}, \"checksum\": \"{:016x}\", \"events\": {events}}}",
                    query.key,
                    query.name,
                    engine.name(),
                    m.seconds,
                    m.rows,
                    m.checksum
                );
                tally.seconds.push(m.seconds);
                (tally.rows, tally.checksum) = (m.rows, m.checksum);
            }
        }
    }
    eprintln!("| query | Sluice streaming s | Sluice batch s | DataFusion s | Sluice / DataFusion | Sluice events/s | rows | checksum |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    for (query, per_engine) in selected.iter().zip(&mut tallies) {
        let (rows, sum) = (per_engine[0].rows, per_engine[0].checksum);
        if let Some((engine, other)) = Engine::ALL.iter().zip(per_engine.iter()).find(|(_, t)| (t.rows, t.checksum) != (rows, sum)) {
            bail!(
                "{}: {} gave {} rows (checksum {:016x}), Sluice streaming {rows} ({sum:016x})",
                query.name,
                engine.name(),
                other.rows,
                other.checksum
            );
        }
        let medians: Vec<f64> = per_engine.iter_mut().map(|t| crate::median(&mut t.seconds)).collect();
        eprintln!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {rows} | {sum:016x} |",
            query.name,
            medians[0],
            medians[1],
            medians[2],
            medians[0] / medians[2],
            events as f64 / medians[0],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Streaming Sluice, Sluice batch mode and DataFusion agree on every query
    /// over a small file (the bench relies on it to compare like with like).
    #[test]
    fn every_engine_gives_the_same_rows() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("clicks.json");
        write_json(&path, 20_000, 100)?;
        assert_eq!(count_lines(&path)?, 20_000);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        for query in &JSON_QUERIES {
            let streaming = runtime.block_on(Engine::SluiceStreaming.run(&path, query))?;
            assert!(streaming.rows > 0 || query.key.starts_with("scan"), "{}", query.name);
            for engine in [Engine::SluiceBatch, Engine::DataFusion] {
                let other = runtime.block_on(engine.run(&path, query))?;
                let what = format!("{} in {}", query.name, engine.name());
                assert_eq!((streaming.rows, streaming.checksum), (other.rows, other.checksum), "{what}");
            }
        }
        Ok(())
    }

    #[test]
    fn the_checksum_does_not_depend_on_row_order() -> anyhow::Result<()> {
        let batch = |ids: Vec<i64>, names: Vec<&str>| -> anyhow::Result<RecordBatch> {
            Ok(RecordBatch::try_from_iter([
                ("id", Arc::new(arrow::array::Int64Array::from(ids)) as arrow::array::ArrayRef),
                ("name", Arc::new(arrow::array::StringArray::from(names)) as arrow::array::ArrayRef),
            ])?)
        };
        let forward = checksum(&[batch(vec![1, 2], vec!["a", "b"])?])?;
        let backward = checksum(&[batch(vec![2], vec!["b"])?, batch(vec![1], vec!["a"])?])?;
        assert_eq!(forward, backward);
        assert_ne!(forward, checksum(&[batch(vec![1, 2], vec!["b", "a"])?])?);
        // The text of row (1, "a") is "1|a".
        assert_eq!(checksum(&[batch(vec![1], vec!["a"])?])?, fnv1a(b"1|a"));
        Ok(())
    }
}
