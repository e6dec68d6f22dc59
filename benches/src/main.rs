//! `sluice-bench`: engine throughput of windowed queries over pre-generated events.
//!
//! Events are generated into Arrow batches before the clock starts and replayed
//! from memory by a `pregenerated` connector, so the numbers time the engine
//! (planning, exchange, window state, emission), not the generator.
//!
//! ```sh
//! cargo run --release -p sluice-benches -- [--events N] [--lanes 1,2,4] [--only NAME-PART]
//! ```
//!
//! `--checkpoints 1s` runs each query twice, side by side, without and with
//! checkpoints at that interval (into a temporary directory), and reports the
//! checkpoints taken and the largest one's size and duration. `--users N`
//! sets the distinct users (default 10,000; 1,000,000 makes the updating
//! aggregate hold a million groups and the regular join a million rows).
//! `--repeat N` runs each pair N times, alternating which goes first, and
//! reports the median of each side and the range of the pairs' ratios (this
//! machine's run-to-run noise is larger than the cost measured).
//!
//! `--rss 2000,125000` measures memory instead: windowed queries (tumbling,
//! sliced hopping, session, and a statement set of two INSERTs; `--only`
//! picks) over the `generator` connector with
//! 64-row batches run over each number of batches, each in a fresh process of
//! its own, which reports its peak resident set (`VmHWM`). A query that is left
//! running must not grow with the batches it has seen, so the peaks should be
//! about the same.
//!
//! `--write-json FILE --events N` writes the same events as JSON lines, and
//! `--json FILE` times three windowed queries over such a file in Sluice
//! streaming (one lane), Sluice batch mode and DataFusion batch, JSON decoding
//! included (see `json_vs_batch`; `benches/windows_vs_duckdb.py` adds DuckDB).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_connectors::conform::Conformer;
use sluice_connectors::generator::{clickstream_schema, ClickstreamGenerator, GeneratorConfig};
use sluice_connectors::{Connector, ConnectorError, Shard, TableSpec};
use sluice_engine::Source;
use sluice_sql::{Session, StatementOutput};

mod json_vs_batch;
mod lanes;

const QUERIES: [(&str, &str); 9] = [
    (
        "tumble 1 min, count+sum by event_type",
        "SELECT window_start, event_type, count(*), sum(price) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
    ),
    (
        "tumble 1 min, count(DISTINCT user_id) by event_type",
        "SELECT window_start, event_type, count(DISTINCT user_id) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
    ),
    (
        "hop 10 s / 1 min, count by item_id",
        "SELECT window_start, item_id, count(*) \
         FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND, INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, item_id",
    ),
    (
        "session 30 s gap, count+max by user_id",
        "SELECT user_id, window_start, count(*), max(price) \
         FROM TABLE(SESSION(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND)) \
         GROUP BY window_start, window_end, user_id",
    ),
    ("hop 1 min / 5 min, count by event_type", json_vs_batch::HOP_COUNT_SQL),
    ("session 30 min gap, count+sum by user_id", json_vs_batch::SESSION_COUNT_SUM_SQL),
    (
        "interval join: page_view then checkout by user within 30 s",
        "SELECT v.user_id, v.page, c.item_id FROM \
         (SELECT * FROM clicks WHERE event_type = 'page_view') v \
         JOIN (SELECT * FROM clicks WHERE event_type = 'checkout') c \
         ON v.user_id = c.user_id AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '30' SECOND",
    ),
    (
        "updating GROUP BY user_id: count+sum (changelog)",
        "SELECT user_id, count(*), sum(price) FROM clicks GROUP BY user_id",
    ),
    (
        "regular join: page_view x checkout by user_id (holds every row)",
        "SELECT v.user_id, v.page, c.item_id FROM \
         (SELECT user_id, page FROM clicks WHERE event_type = 'page_view') v \
         JOIN (SELECT user_id, item_id FROM clicks WHERE event_type = 'checkout') c ON v.user_id = c.user_id",
    ),
];

/// Replays batches generated up front; shard `i` of `n` gets every `n`-th batch.
struct PregeneratedConnector {
    batches: Arc<Vec<RecordBatch>>,
}

impl Connector for PregeneratedConnector {
    fn name(&self) -> &'static str {
        "pregenerated"
    }

    fn validate(&self, _table: &TableSpec) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn source(&self, table: &TableSpec, shard: Shard, _query_id: &str) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(Replay { batches: Arc::clone(&self.batches), next: shard.index, at_barrier: shard.index, step: shard.count, schema: table.schema.clone() }))
    }
}

struct Replay {
    batches: Arc<Vec<RecordBatch>>,
    next: usize,
    /// `next` at the last barrier: the replay's position in a checkpoint.
    at_barrier: usize,
    step: usize,
    schema: SchemaRef,
}

#[async_trait]
impl Source for Replay {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        "pre-generated batches".into()
    }

    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        let batch = self.batches.get(self.next).cloned();
        self.next += self.step;
        Ok(batch)
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn on_barrier(&mut self, _checkpoint: u64) -> sluice_engine::Result<()> {
        self.at_barrier = self.next;
        Ok(())
    }

    fn position(&self) -> sluice_engine::Result<Option<RecordBatch>> {
        let next: arrow::array::ArrayRef = Arc::new(arrow::array::UInt64Array::from(vec![self.at_barrier as u64]));
        Ok(Some(RecordBatch::try_from_iter([("next", next)])?))
    }
}

/// The clickstream generator of every run: `events` events of `users` users,
/// 5,000 items, 10 ms of event time apart and up to 500 ms out of order (the
/// tables declare a watermark 1 s behind, so no event is late).
fn generator(events: u64, users: u64) -> anyhow::Result<ClickstreamGenerator> {
    let options = BTreeMap::from([
        ("rows".to_string(), events.to_string()),
        ("users".to_string(), users.to_string()),
        ("items".to_string(), "5000".to_string()),
        ("interval.ms".to_string(), "10".to_string()),
        ("disorder.ms".to_string(), "500".to_string()),
    ]);
    let spec = TableSpec::new("clicks", clickstream_schema(), "generator", options);
    Ok(ClickstreamGenerator::new(GeneratorConfig::from_table(&spec)?, Shard::ALL))
}

fn pregenerate(events: u64, users: u64) -> anyhow::Result<Vec<RecordBatch>> {
    let mut generator = generator(events, users)?;
    // The columns as the DDL below declares them (VARCHAR is Utf8View), cast up front.
    let declared = Arc::new(Schema::new(
        clickstream_schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => Field::new(f.name(), DataType::Utf8View, true),
                other => Field::new(f.name(), other.clone(), true),
            })
            .collect::<Vec<_>>(),
    ));
    let conformer = Conformer::try_new("clicks", &clickstream_schema(), &declared)?;
    let mut batches = Vec::new();
    while let Some(b) = generator.next_batch(8192)? {
        batches.push(conformer.apply(&b)?);
    }
    Ok(batches)
}

/// What a run measured.
struct Run {
    seconds: f64,
    rows: u64,
    checkpoints: sluice_engine::checkpoint::CheckpointStats,
}

async fn run_once(batches: &Arc<Vec<RecordBatch>>, sql: &str, lanes: usize, checkpoints: Option<&str>) -> anyhow::Result<Run> {
    let mut session = Session::default();
    session.add_connector(Arc::new(PregeneratedConnector { batches: Arc::clone(batches) }));
    session.set_parallelism(lanes);
    let dir = tempfile::tempdir()?;
    if let Some(interval) = checkpoints {
        session
            .execute_script(&format!(
                "SET 'execution.checkpointing.interval' = '{interval}'; SET 'state.checkpoints.dir' = '{}';",
                dir.path().display()
            ))
            .await?;
    }
    session
        .execute_script(
            "CREATE TABLE clicks (user_id BIGINT, session_id BIGINT, event_type VARCHAR, page VARCHAR, item_id BIGINT, \
             price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'pregenerated')",
        )
        .await?;
    let started = Instant::now();
    let mut outputs = session.execute_script(sql).await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { bail!("not a continuous query") };
    let metrics = q.job.metrics_handle();
    let mut rows = 0u64;
    while let Some(b) = q.results.recv().await {
        rows += b.num_rows() as u64;
    }
    q.job.wait().await?;
    Ok(Run { seconds: started.elapsed().as_secs_f64(), rows, checkpoints: metrics.checkpoints() })
}

/// Rows per batch of the memory benchmark: small batches, so that per-batch
/// costs dominate.
const RSS_BATCH_ROWS: u64 = 64;

/// The memory benchmark's queries, each a stateless projection (the window
/// columns) feeding a window aggregate whose state the watermark bounds: a
/// tumbling window, hopping windows merged from slices, sessions per user; and
/// a statement set, one pipeline reading the table once for a tumbling window
/// and a filter, each into a blackhole sink.
const RSS_QUERIES: [(&str, &str); 4] = [
    (
        "tumble 1 min",
        "SELECT window_start, event_type, count(*), sum(price) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
    ),
    (
        "hop 1 min / 5 min (sliced)",
        "SELECT window_start, event_type, count(*), sum(price) \
         FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
    ),
    (
        "session 30 s by user",
        "SELECT user_id, window_start, count(*), max(price) \
         FROM TABLE(SESSION(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND)) \
         GROUP BY window_start, window_end, user_id",
    ),
    (
        "statement set: tumble 1 min + filter",
        "EXECUTE STATEMENT SET BEGIN \
         INSERT INTO per_minute SELECT window_start, event_type, count(*), sum(price) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type; \
         INSERT INTO checkouts SELECT user_id, price FROM clicks WHERE event_type = 'checkout'; \
         END;",
    ),
];

/// The sinks of the memory benchmark's statement set.
const RSS_SINKS: &str = "CREATE TABLE per_minute (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT, total DOUBLE) \
     WITH (connector = 'blackhole'); \
     CREATE TABLE checkouts (user_id BIGINT, price DOUBLE) WITH (connector = 'blackhole');";

/// Runs the `query`th of [`RSS_QUERIES`] over `batches` generated batches in
/// this process; returns the result rows.
async fn run_rss_query(batches: u64, query: usize) -> anyhow::Result<u64> {
    let (_, sql) = RSS_QUERIES.get(query).with_context(|| format!("no memory benchmark query {query}"))?;
    let mut session = Session::default();
    let rows = batches * RSS_BATCH_ROWS;
    session
        .execute_script(&format!(
            "CREATE TABLE clicks (user_id BIGINT, session_id BIGINT, event_type VARCHAR, page VARCHAR, item_id BIGINT, \
             price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH (connector = 'generator', rows = '{rows}', 'batch.size' = '{RSS_BATCH_ROWS}'); {RSS_SINKS}"
        ))
        .await?;
    let mut outputs = session.execute_script(sql).await?;
    match outputs.pop() {
        Some(StatementOutput::Query(mut q)) => {
            let mut result_rows = 0u64;
            while let Some(b) = q.results.recv().await {
                result_rows += b.num_rows() as u64;
            }
            q.job.wait().await?;
            Ok(result_rows)
        }
        // A statement set: the rows its sinks took.
        Some(StatementOutput::InsertSet { mut job, .. }) => {
            job.wait().await?;
            Ok(job.metrics_handle().rows_per_sink().iter().sum())
        }
        _ => bail!("not a continuous query or statement set"),
    }
}

/// This process's peak resident set, in KiB (`VmHWM` of /proc/self/status).
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    let kib = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim();
    Ok(kib.parse()?)
}

/// Runs the memory benchmark for each number of batches, each in a child
/// process (this binary with `--rss-child N`), so that one peak does not hide
/// another.
fn rss_table(sizes: &[u64], only: Option<&str>) -> anyhow::Result<()> {
    println!("| query | batches of {RSS_BATCH_ROWS} rows | events | seconds | result rows | peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    let queries = RSS_QUERIES.iter().enumerate().filter(|(_, (name, _))| only.is_none_or(|o| name.contains(o)));
    for (query, (name, _)) in queries {
        for &batches in sizes {
            rss_row(&exe, name, query, batches)?;
        }
    }
    Ok(())
}

/// One run of the memory benchmark, in a child process.
fn rss_row(exe: &std::path::Path, name: &str, query: usize, batches: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let child = format!("{batches},{query}");
    let output = std::process::Command::new(exe).args(["--rss-child", &child]).output()?;
    if !output.status.success() {
        bail!("the run over {batches} batches failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8(output.stdout)?;
    let (rows, kib) = stdout.trim().split_once(' ').with_context(|| format!("unexpected child output '{stdout}'"))?;
    let mib = kib.parse::<f64>()? / 1024.0;
    let secs = started.elapsed().as_secs_f64();
    println!("| {name} | {batches} | {} | {secs:.1} | {rows} | {mib:.1} |", batches * RSS_BATCH_ROWS);
    Ok(())
}

/// Engine throughput of windowed queries over pre-generated events (see the
/// module docs, and benches/RESULTS.md for results).
#[derive(Debug, Parser)]
#[command(name = "sluice-bench")]
struct Args {
    /// Events per query.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Distinct users in the events.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Also run each query with checkpoints at this interval (`1s`), side by side.
    #[arg(long, value_name = "INTERVAL")]
    checkpoints: Option<String>,
    /// Rounds: of each pair with --checkpoints, of each engine with --json (medians reported).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Lane counts to run each query at [default: 1 and this machine's parallelism].
    #[arg(long, value_delimiter = ',', value_parser = lanes::parse_lanes)]
    lanes: Vec<usize>,
    /// Only the queries whose name contains this.
    #[arg(long, value_name = "NAME-PART")]
    only: Option<String>,
    /// Measure peak memory instead, over each of these numbers of batches.
    #[arg(long, value_delimiter = ',', value_name = "BATCHES")]
    rss: Option<Vec<u64>>,
    /// Internal: run one memory benchmark query (BATCHES,QUERY) in this process.
    #[arg(long, hide = true, value_parser = parse_rss_child)]
    rss_child: Option<(u64, usize)>,
    /// Write the events as JSON lines to this file, and stop.
    #[arg(long, value_name = "FILE")]
    write_json: Option<PathBuf>,
    /// Time windowed queries over this JSON-lines file against batch engines.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_rss_child(value: &str) -> Result<(u64, usize), String> {
    let (batches, query) = value.split_once(',').ok_or("takes BATCHES,QUERY")?;
    Ok((batches.parse().map_err(|e| format!("{batches}: {e}"))?, query.parse().map_err(|e| format!("{query}: {e}"))?))
}

fn main() -> anyhow::Result<()> {
    let Args { events, users, checkpoints, repeat, lanes, only, rss, rss_child, write_json, json } = Args::parse();
    let repeat = repeat as usize;
    let lanes = lanes::or_default(lanes);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(path) = write_json {
        let started = Instant::now();
        json_vs_batch::write_json(&path, events, users)?;
        eprintln!("wrote {events} events ({users} users) to {} in {:.1}s", path.display(), started.elapsed().as_secs_f64());
        return Ok(());
    }
    if let Some(path) = json {
        return json_vs_batch::json_table(&runtime, &path, repeat, only.as_deref());
    }
    if let Some((batches, query)) = rss_child {
        let rows = runtime.block_on(run_rss_query(batches, query))?;
        println!("{rows} {}", peak_rss_kib()?);
        return Ok(());
    }
    if let Some(sizes) = rss {
        return rss_table(&sizes, only.as_deref());
    }
    let generated = Instant::now();
    let batches = Arc::new(pregenerate(events, users)?);
    eprintln!("generated {events} events ({users} users) in {:.1}s (not timed below)", generated.elapsed().as_secs_f64());
    let selected = || QUERIES.iter().filter(|(n, _)| only.as_ref().is_none_or(|o| n.contains(o.as_str())));
    match &checkpoints {
        None => {
            println!("| query | lanes | seconds | events/s | result rows |");
            println!("|---|---|---|---|---|");
            for (name, sql) in selected() {
                for &p in &lanes {
                    let run = runtime.block_on(run_once(&batches, sql, p, None))?;
                    println!("| {name} | {p} | {:.2} | {:.0} | {} |", run.seconds, events as f64 / run.seconds, run.rows);
                }
            }
        }
        Some(interval) => {
            println!("| query | lanes | runs | events/s without (median) | events/s with checkpoints every {interval} (median) | ratio of medians | pairs' ratios | checkpoints | largest (bytes) | its duration (ms) | its alignment (ms) |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            for (name, sql) in selected() {
                for &p in &lanes {
                    let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
                    let mut last_on = None;
                    for round in 0..repeat {
                        // Alternate which side runs first, so drift favours neither.
                        let (off, on) = match round % 2 {
                            0 => {
                                let off = runtime.block_on(run_once(&batches, sql, p, None))?;
                                (off, runtime.block_on(run_once(&batches, sql, p, Some(interval)))?)
                            }
                            _ => {
                                let on = runtime.block_on(run_once(&batches, sql, p, Some(interval)))?;
                                (runtime.block_on(run_once(&batches, sql, p, None))?, on)
                            }
                        };
                        if off.rows != on.rows {
                            bail!("{name}: {} result rows without checkpoints, {} with", off.rows, on.rows);
                        }
                        offs.push(events as f64 / off.seconds);
                        ons.push(events as f64 / on.seconds);
                        ratios.push(off.seconds / on.seconds);
                        last_on = Some(on);
                    }
                    let Some(on) = last_on else { continue };
                    let largest = on.checkpoints.recent.iter().max_by_key(|c| c.bytes);
                    let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
                    let (off_median, on_median) = (median(&mut offs), median(&mut ons));
                    println!(
                        "| {name} | {p} | {repeat} | {off_median:.0} | {on_median:.0} | {:.2} | {low:.2}–{high:.2} | {} | {} | {} | {} |",
                        on_median / off_median,
                        on.checkpoints.completed,
                        largest.map_or(0, |c| c.bytes),
                        largest.map_or(0, |c| c.duration_ms),
                        largest.map_or(0, |c| c.alignment_ms),
                    );
                }
            }
        }
    }
    Ok(())
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
