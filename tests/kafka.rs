//! Kafka source and sink against a real Kafka-protocol broker (tansu), with
//! records produced and read by a foreign client (Python confluent-kafka).
//! `.ci/run` installs both; `TANSU` names the broker binary if it is not on PATH.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_sql::{QueryOutput, Session, StatementOutput};

use common::broker::{consume_until_idle, spawn_broker, start_broker, Broker};
use common::{free_port, wait_listening, KillOnDrop};

type TestResult = Result<(), Box<dyn std::error::Error>>;

impl Broker {
    fn produce(&self, topic: &str, lines: &[String]) -> TestResult {
        self.produce_at(topic, lines, None)
    }

    /// Produces JSON objects as Avro of `schema`, with confluent-kafka's
    /// AvroSerializer and the registry at `registry` (`{"raw": ...}`: as is).
    fn produce_avro(&self, topic: &str, registry: &str, schema: &str, lines: &[String]) -> TestResult {
        let mut child = Command::new("python3")
            .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_client.py"), "produce-avro", &self.addr, topic, registry, schema])
            .stdin(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or("stdin")?.write_all(lines.join("\n").as_bytes())?;
        assert!(child.wait()?.success(), "producing Avro failed");
        Ok(())
    }

    /// Produces with the given Kafka record timestamp (epoch ms), if any.
    fn produce_at(&self, topic: &str, lines: &[String], timestamp_ms: Option<i64>) -> TestResult {
        let ts = timestamp_ms.map(|t| t.to_string()).unwrap_or_default();
        let mut args = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_client.py"), "produce", &self.addr, topic];
        if timestamp_ms.is_some() {
            args.push(&ts);
        }
        let mut child = Command::new("python3")
            .args(args)
            .stdin(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or("stdin")?.write_all(lines.join("\n").as_bytes())?;
        assert!(child.wait()?.success(), "producing failed");
        Ok(())
    }

    fn consume(&self, topic: &str, count: usize) -> Result<Vec<Value>, String> {
        consume(&self.addr, topic, count)
    }
}

/// Reads `count` records of `topic` with the foreign client.
fn consume(addr: &str, topic: &str, count: usize) -> Result<Vec<Value>, String> {
    consume_until_idle(addr, topic, count, 60)
}

/// The rows (as text) of a running query's results until at least `count`
/// have come, each within 30 s.
async fn rows_at_least(q: &mut QueryOutput, count: usize) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    while rows.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(30), q.results.recv()).await?.ok_or("query ended")?;
        rows.extend(sluice_connectors::table_printer::format_cells(&batch)?);
    }
    Ok(rows)
}

/// Events 00:00:00 .. 00:02:59 one second apart, three users, plus malformed
/// records; the last event (00:05:00) moves the watermark past every window.
fn events() -> (Vec<String>, Vec<(String, String, i64)>) {
    let mut lines = Vec::new();
    let mut expected: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for s in 0..180 {
        let user = ["ann", "bob", "cy"][s % 3];
        lines.push(format!(
            "{user}\t{{\"user\": \"{user}\", \"amount\": {}, \"ts\": \"2024-01-01T00:{:02}:{:02}\"}}",
            s % 7,
            s / 60,
            s % 60
        ));
        *expected.entry((format!("2024-01-01T00:{:02}:00", s / 60), user.to_string())).or_default() += (s % 7) as i64;
        if s == 50 {
            lines.push("bob\t{\"user\": \"bob\", \"amount\": oops}".to_string());
        }
    }
    lines.push("ann\t{\"user\": \"ann\", \"amount\": 0, \"ts\": \"2024-01-01T00:05:00\"}".to_string());
    (lines, expected.into_iter().map(|((w, u), a)| (w, u, a)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_query_from_kafka_with_dead_letters_and_a_kafka_sink() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("orders", 3)?;
    broker.create_topic("dlq", 1)?;
    broker.create_topic("totals", 2)?;
    let (lines, expected) = events();
    broker.produce("orders", &lines)?;

    let mut session = Session::default();
    session.set_parallelism(2);
    let b = &broker.addr;
    session
        .execute_script(&format!(
            "CREATE TABLE orders (user VARCHAR, amount BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = 'orders', 'bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest', \
                   bad_data = 'dead-letter', 'dead-letter.topic' = 'dlq', 'source.idle-timeout.ms' = '300'); \
             CREATE TABLE totals (window_start TIMESTAMP(3), user VARCHAR, total BIGINT) \
             WITH (connector = 'kafka', topic = 'totals', 'bootstrap.servers' = '{b}', 'key.field' = 'user');"
        ))
        .await?;
    let mut outputs = session
        .execute_script(
            "INSERT INTO totals SELECT window_start, user, sum(amount) \
             FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, user",
        )
        .await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };

    // Read what the sink wrote with the foreign client: one record per (window, user).
    let (addr, n) = (broker.addr.clone(), expected.len());
    let records = tokio::task::spawn_blocking(move || consume(&addr, "totals", n)).await??;
    job.cancel();
    let mut got: Vec<(String, String, i64)> = Vec::new();
    for r in &records {
        let v: Value = serde_json::from_str(r["value"].as_str().unwrap_or_default())?;
        assert_eq!(r["key"], v["user"], "records are keyed by user");
        got.push((
            v["window_start"].as_str().unwrap_or_default().to_string(),
            v["user"].as_str().unwrap_or_default().to_string(),
            v["total"].as_i64().unwrap_or(-1),
        ));
    }
    got.sort();
    assert_eq!(got, expected);

    let dead = broker.consume("dlq", 1)?;
    assert_eq!(dead[0]["value"], "{\"user\": \"bob\", \"amount\": oops}");
    assert_eq!(dead[0]["key"], "bob");
    assert_eq!(dead[0]["headers"]["sluice.topic"], "orders");
    assert!(dead[0]["headers"]["sluice.offset"].as_str().is_some_and(|o| o.parse::<i64>().is_ok()));
    assert!(!dead[0]["headers"]["sluice.error"].as_str().unwrap_or_default().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_fail_the_query_by_default_and_dead_brokers_are_named() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("raw", 1)?;
    broker.produce("raw", &["{\"n\": 1}".to_string(), "not json".to_string()])?;
    let mut session = Session::default();
    session.set_parallelism(1);
    session
        .execute_script(&format!(
            "CREATE TABLE raw (n BIGINT) WITH (connector = 'kafka', topic = 'raw', 'bootstrap.servers' = '{}', \
             'scan.startup.mode' = 'earliest')",
            broker.addr
        ))
        .await?;
    let mut outputs = session.execute_script("SELECT n FROM raw").await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    while q.results.recv().await.is_some() {}
    let err = q.job.wait().await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("bad record at topic raw partition 0 offset 1"), "{err}");

    let dead_port = free_port()?;
    session
        .execute_script(&format!(
            "CREATE TABLE nowhere (n BIGINT) WITH (connector = 'kafka', topic = 'x', 'bootstrap.servers' = '127.0.0.1:{dead_port}', \
             'properties.socket.connection.setup.timeout.ms' = '1000')"
        ))
        .await?;
    let err = session.execute_script("SELECT n FROM nowhere").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(&format!("cannot reach Kafka at 127.0.0.1:{dead_port}")), "{err}");
    Ok(())
}

async fn lake_ids(dir: &std::path::Path) -> Result<(i64, i64), Box<dyn std::error::Error>> {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingOptions;
    use datafusion::prelude::SessionContext;
    let has_files = walk_files(dir).iter().any(|p| p.extension().is_some_and(|e| e == "parquet"));
    if !has_files {
        return Ok((0, 0));
    }
    let ctx = SessionContext::new();
    let options = ListingOptions::new(std::sync::Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("dt".to_string(), DataType::Utf8), ("hour".to_string(), DataType::Utf8)]);
    ctx.register_listing_table("lake", dir.display().to_string(), options, None, None).await?;
    let batches = ctx.sql("SELECT count(*), count(DISTINCT id) FROM lake").await?.collect().await?;
    let col = |i: usize| batches[0].column(i).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)).unwrap_or(-1);
    Ok((col(0), col(1)))
}

/// An ingest job's files in a temporary directory: the SQL declaring a Kafka
/// table `clicks (id, user, ts)` with `kafka_options` and a `lake` table
/// partitioned by day and hour; returns the directory, the lake and the SQL file.
fn ingest_job(
    kafka_options: &str,
) -> Result<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let sql = dir.path().join("ingest.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE clicks (id BIGINT, user VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'kafka', {kafka_options}); \
             CREATE TABLE lake (id BIGINT, user VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'lake', path = '{}', \
               'partition.by' = 'dt,hour', 'partition.time-column' = 'ts');",
            lake.display()
        ),
    )?;
    Ok((dir, lake, sql))
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_survives_sigkill_without_loss_or_duplicates() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("clicks", 2)?;
    let lines: Vec<String> = (0..3000)
        .map(|i| format!("u{}\t{{\"id\": {i}, \"user\": \"u{}\", \"ts\": \"2024-01-01T{:02}:{:02}:00\"}}", i % 5, i % 5, i / 1500, (i / 25) % 60))
        .collect();
    let (dir, lake, sql) =
        ingest_job(&format!("topic = 'clicks', 'bootstrap.servers' = '{}', 'group.id' = 'ingest-test'", broker.addr))?;
    let ingest = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ingest", "--sql"])
            .arg(&sql)
            .args(["--from", "clicks", "--to", "lake", "--round-rows", "150", "--round-ms", "200"])
            // Its checkpoints (under .sluice/checkpoints) are this test's own.
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // First run: killed without warning once some rows are in the lake, while
    // more records arrive (the job lands what it reads at each checkpoint).
    broker.produce("clicks", &lines[..1000])?;
    let mut first = ingest()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while lake_ids(&lake).await?.0 == 0 {
        assert!(Instant::now() < deadline, "no rows landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.produce("clicks", &lines[1000..2000])?;
    first.kill()?;
    first.wait()?;
    let (rows_before, _) = lake_ids(&lake).await?;
    assert!(rows_before > 0 && rows_before < 3000, "killed too late to test anything: {rows_before}");

    // Second run: resumes from the newest checkpoint.
    broker.produce("clicks", &lines[2000..])?;
    let second = ingest()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, _) = lake_ids(&lake).await?;
        if rows >= 3000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {rows} rows landed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = second.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status()?.success());
    let out = second.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ingest stopped"));
    assert_eq!(lake_ids(&lake).await?, (3000, 3000), "every record exactly once");
    // Files the killed run had staged but not committed are gone.
    let names: Vec<String> = walk_files(&lake).iter().filter_map(|f| Some(f.file_name()?.to_string_lossy().to_string())).collect();
    assert!(names.iter().all(|n| n.starts_with("part-") && n.ends_with(".parquet")), "{names:?}");
    Ok(())
}

/// The ids in the lake under `dir` as pyarrow reads it (a reader that is
/// not Sluice's, and skips hidden files as every Parquet reader does).
fn pyarrow_ids(dir: &std::path::Path) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    if walk_files(dir).iter().all(|f| f.extension().is_none_or(|e| e != "parquet")) {
        return Ok(Vec::new());
    }
    let script = r#"
import sys, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table(columns=['id'])
print("\n".join(str(i) for i in t.column('id').to_pylist()))
"#;
    let out = Command::new("python3").args(["-c", script, &dir.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let mut ids: Vec<i64> = String::from_utf8(out.stdout)?.lines().filter(|l| !l.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// Whether the lake holds a file staged for a checkpoint that has not
/// completed yet (renamed into place when it does).
fn has_staged_files(lake: &std::path::Path) -> bool {
    walk_files(lake).iter().any(|f| f.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".staged")))
}

/// `sluice ingest` killed with SIGKILL twice, each time while files it wrote
/// wait for their checkpoint to complete, and started again: each run resumes
/// from the newest completed checkpoint, so pyarrow finds every record in the
/// lake exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_while_files_are_staged_resumes_and_lands_each_record_once() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("clicks", 3)?;
    let record = |i: usize| format!("u{}\t{{\"id\": {i}, \"user\": \"u{}\", \"ts\": \"2024-01-01T00:{:02}:00\"}}", i % 4, i % 4, (i / 40) % 60);
    let (dir, lake, sql) =
        ingest_job(&format!("topic = 'clicks', 'bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest'", broker.addr))?;
    let ingest = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["ingest", "--sql"])
            .arg(&sql)
            .args(["--from", "clicks", "--to", "lake", "--checkpoint-interval", "300 ms", "--round-rows", "50"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut produced = 0;
    let produce_more = |produced: &mut usize, count: usize| -> TestResult {
        let lines: Vec<String> = (*produced..*produced + count).map(record).collect();
        *produced += count;
        broker.produce("clicks", &lines)
    };
    for run in 0..2 {
        let mut job = ingest()?;
        // Some rows landed (a checkpoint completed) ...
        produce_more(&mut produced, 200)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while pyarrow_ids(&lake)?.len() <= run * 200 {
            assert!(Instant::now() < deadline, "run {run}: nothing landed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ... then more arrive, and the job is killed while their files wait
        // for the next checkpoint.
        let staged = loop {
            produce_more(&mut produced, 100)?;
            let deadline = Instant::now() + Duration::from_secs(1);
            while !has_staged_files(&lake) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if has_staged_files(&lake) {
                break true;
            }
            if produced > 3000 {
                break false;
            }
        };
        job.kill()?;
        job.wait()?;
        assert!(staged, "run {run}: never caught a file staged");
        let landed = pyarrow_ids(&lake)?;
        let mut unique = landed.clone();
        unique.dedup();
        assert_eq!(unique.len(), landed.len(), "run {run}: nothing twice");
        assert!(landed.len() < produced, "run {run}: killed too late to test anything");
    }

    // The last run resumes, reads the rest and is stopped gracefully.
    produce_more(&mut produced, 150)?;
    let job = ingest()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pyarrow_ids(&lake)?.len() < produced {
        assert!(Instant::now() < deadline, "only {} of {produced} records landed", pyarrow_ids(&lake)?.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Command::new("kill").args(["-INT", &job.id().to_string()]).status()?.success());
    let out = job.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming 'ingest-lake' from checkpoint"), "{stderr}");
    assert!(dir.path().join(".sluice/checkpoints/ingest-lake").is_dir(), "checkpoints under .sluice/checkpoints/ingest-<lake>");
    assert_eq!(pyarrow_ids(&lake)?, (0..produced as i64).collect::<Vec<_>>(), "every record once");
    assert!(!has_staged_files(&lake), "no staged file is left");
    Ok(())
}

/// A bounded Kafka table makes `sluice ingest` a backfill: it lands what the
/// topic held when it started (records produced in batches, so tansu reports
/// the partitions' ends short) and exits by itself. Run again, it reads the
/// topic again and its run replaces the last one's files: each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_ingest_is_a_backfill_that_ends_by_itself() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("clicks", 3)?;
    let record = |i: i64| format!("{{\"id\": {i}, \"user\": \"u{}\", \"ts\": \"2024-01-01T0{}:00:00\"}}", i % 3, i % 4);
    broker.produce("clicks", &(0..500).map(record).collect::<Vec<_>>())?;
    let (dir, lake, sql) = ingest_job(&format!(
        "topic = 'clicks', 'bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest', 'scan.bounded.mode' = 'latest-offset'",
        broker.addr
    ))?;
    let mut expected: Vec<i64> = (0..500).collect();
    for run in 0..2 {
        let out = tokio::task::spawn_blocking({
            let (sql, dir) = (sql.clone(), dir.path().to_path_buf());
            move || {
                Command::new(env!("CARGO_BIN_EXE_sluice"))
                    .args(["ingest", "--sql"])
                    .arg(&sql)
                    .args(["--from", "clicks", "--to", "lake", "--checkpoint-interval", "1 s"])
                    .current_dir(dir)
                    .output()
            }
        });
        let out = tokio::time::timeout(Duration::from_secs(60), out).await.map_err(|_| format!("run {run} did not end"))???;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "run {run}: {}", String::from_utf8_lossy(&out.stderr));
        let rows = expected.len();
        assert!(stdout.contains(&format!("ingest finished: {rows} rows read, {rows} written")), "run {run}: {stdout}");
        assert_eq!(pyarrow_ids(&lake)?, expected, "run {run}: every record once");
        // Produced after this run ended: the next one reads it too.
        broker.produce("clicks", &[record(10_000 + run)])?;
        expected.push(10_000 + run);
    }
    Ok(())
}

/// Every row of a query that is meant to end, until it does (within 60 s).
async fn rows_to_end(q: &mut QueryOutput) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, q.results.recv()).await.map_err(|_| format!("the query did not end: {rows:?}"))?;
        match next {
            Some(batch) => rows.extend(sluice_connectors::table_printer::format_cells(&batch)?),
            None => break,
        }
    }
    q.job.wait().await?;
    rows.sort();
    Ok(rows)
}

/// With `scan.bounded.mode = 'latest-offset'` a windowed query over a topic
/// (records produced in batches by the foreign client, so tansu reports each
/// partition's end short) reads what the topic held when it started and ends
/// by itself: the final watermark closes every window, the last one included,
/// and the rows are those a batch computation over the same records gives.
/// Without a WATERMARK the bounded table's windows close at its end too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_query_over_a_bounded_topic_ends_with_the_batch_result() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("orders", 3)?;
    let (lines, mut expected) = events();
    broker.produce("orders", &lines)?;
    // The last event (ann, amount 0 at 00:05:00) is alone in its window, which
    // an unbounded query would keep open.
    expected.push(("2024-01-01T00:05:00".to_string(), "ann".to_string(), 0));
    let expected: Vec<Vec<String>> = {
        let mut rows: Vec<Vec<String>> = expected.into_iter().map(|(w, u, a)| vec![w, u, a.to_string()]).collect();
        rows.sort();
        rows
    };

    let mut session = Session::default();
    session.set_parallelism(2);
    let options = format!(
        "connector = 'kafka', topic = 'orders', 'bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest', \
         'scan.bounded.mode' = 'latest-offset', bad_data = 'drop'",
        broker.addr
    );
    session
        .execute_script(&format!(
            "CREATE TABLE orders (user VARCHAR, amount BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH ({options}); \
             CREATE TABLE orders_no_watermark (user VARCHAR, amount BIGINT, ts TIMESTAMP(3)) WITH ({options});"
        ))
        .await?;
    for (run, table) in ["orders", "orders_no_watermark"].into_iter().enumerate() {
        let mut outputs = session
            .execute_script(&format!(
                "SELECT window_start, user, sum(amount) FROM TABLE(TUMBLE(TABLE {table}, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
                 GROUP BY window_start, window_end, user"
            ))
            .await?;
        let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
        // Produced once the query runs: past its stops.
        broker.produce("orders", &["ann\t{\"user\": \"ann\", \"amount\": 100, \"ts\": \"2024-01-01T00:00:30\"}".to_string()])?;
        let rows = rows_to_end(&mut q).await?;
        // The second query started after the first one's extra record.
        let mut expected = expected.clone();
        assert_eq!(expected[0][..2], ["2024-01-01T00:00:00", "ann"]);
        expected[0][2] = (expected[0][2].parse::<usize>()? + 100 * run).to_string();
        assert_eq!(rows, expected, "{table}");
        assert_eq!(q.job.metrics().late_rows, 0, "{table}");
    }

    // An unbounded table without a WATERMARK is refused, as before.
    session
        .execute_script(&format!(
            "CREATE TABLE endless (user VARCHAR, amount BIGINT, ts TIMESTAMP(3)) \
             WITH (connector = 'kafka', topic = 'orders', 'bootstrap.servers' = '{}')",
            broker.addr
        ))
        .await?;
    let err = session
        .execute_script("SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE endless, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start")
        .await
        .err()
        .ok_or("windows over an unbounded table without a WATERMARK must be refused")?;
    assert!(err.to_string().contains("no WATERMARK"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_from_a_timestamp_skips_older_records() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("ticks", 1)?;
    let old: Vec<String> = (0..5).map(|i| format!("{{\"n\": {i}}}")).collect();
    let new: Vec<String> = (100..103).map(|i| format!("{{\"n\": {i}}}")).collect();
    broker.produce_at("ticks", &old, Some(1_700_000_000_000))?;
    broker.produce_at("ticks", &new, Some(1_800_000_000_000))?;
    let mut session = Session::default();
    session.set_parallelism(1);
    session
        .execute_script(&format!(
            "CREATE TABLE ticks (n BIGINT) WITH (connector = 'kafka', topic = 'ticks', 'bootstrap.servers' = '{}', \
             'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '1750000000000')",
            broker.addr
        ))
        .await?;
    let mut outputs = session.execute_script("SELECT n FROM ticks").await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    let seen: Vec<String> = rows_at_least(&mut q, 3).await?.into_iter().map(|r| r[0].clone()).collect();
    q.job.cancel();
    assert_eq!(seen, vec!["100", "101", "102"]);
    Ok(())
}

/// Updating results into Kafka are upserts by key: the last record of each key
/// is its final value, and a key whose group went away ends with a tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_results_are_upserted_by_key_with_tombstones() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("orders", 3)?;
    broker.create_topic("per_user", 2)?;
    broker.create_topic("histogram", 2)?;
    let (lines, _) = events();
    broker.produce("orders", &lines)?;

    let mut session = Session::default();
    session.set_parallelism(2);
    let b = &broker.addr;
    session
        .execute_script(&format!(
            "CREATE TABLE orders (user VARCHAR, amount BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = 'orders', 'bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest', \
                   bad_data = 'drop', 'batch.size' = '5'); \
             CREATE TABLE per_user (user VARCHAR, n BIGINT, total BIGINT) \
             WITH (connector = 'kafka', topic = 'per_user', 'bootstrap.servers' = '{b}', 'key.field' = 'user'); \
             CREATE TABLE histogram (n BIGINT, users BIGINT) \
             WITH (connector = 'kafka', topic = 'histogram', 'bootstrap.servers' = '{b}', 'key.field' = 'n'); \
             CREATE TABLE no_key (n BIGINT, users BIGINT) \
             WITH (connector = 'kafka', topic = 'histogram', 'bootstrap.servers' = '{b}');"
        ))
        .await?;
    let err = session
        .execute_script("INSERT INTO no_key SELECT n, count(*) FROM (SELECT user, count(*) AS n FROM orders GROUP BY user) GROUP BY n")
        .await
        .err()
        .ok_or("an updating query into Kafka without a key must be refused")?;
    assert!(err.to_string().contains("key.field"), "{err}");

    let mut jobs = Vec::new();
    for insert in [
        "INSERT INTO per_user SELECT user, count(*), sum(amount) FROM orders GROUP BY user",
        "INSERT INTO histogram SELECT n, count(*) FROM (SELECT user, count(*) AS n FROM orders GROUP BY user) GROUP BY n",
    ] {
        let mut outputs = session.execute_script(insert).await?;
        let Some(StatementOutput::Insert { job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
        jobs.push(job);
    }
    let last_by_key = |records: Vec<Value>| -> std::collections::BTreeMap<String, Option<Value>> {
        let mut last = std::collections::BTreeMap::new();
        for r in records {
            let value = r["value"].as_str().and_then(|v| serde_json::from_str::<Value>(v).ok());
            last.insert(r["key"].as_str().unwrap_or_default().to_string(), value);
        }
        last
    };
    let addr = broker.addr.clone();
    let per_user = tokio::task::spawn_blocking(move || consume_until_idle(&addr, "per_user", 100_000, 8)).await??;
    let addr = broker.addr.clone();
    let histogram = tokio::task::spawn_blocking(move || consume_until_idle(&addr, "histogram", 100_000, 8)).await??;
    for mut job in jobs {
        job.cancel();
    }

    // 180 events, one per user in turn (a malformed extra one dropped), ann's extra last.
    let per_user = last_by_key(per_user);
    let n_of = |u: &str| per_user.get(u).and_then(|v| v.as_ref()).and_then(|v| v["n"].as_i64());
    assert_eq!((n_of("ann"), n_of("bob"), n_of("cy")), (Some(61), Some(60), Some(60)));

    let histogram = last_by_key(histogram);
    let standing: std::collections::BTreeMap<String, i64> = histogram
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v["users"].as_i64().unwrap_or(-1))))
        .collect();
    let expected: std::collections::BTreeMap<String, i64> =
        [("60".to_string(), 2), ("61".to_string(), 1)].into_iter().collect();
    assert_eq!(standing, expected, "keys other than the final counts end with a tombstone");
    assert!(histogram.values().any(|v| v.is_none()), "groups that went away were deleted: {histogram:?}");
    Ok(())
}

/// Metadata columns carry each record's key, partition, offset, Kafka timestamp
/// and headers; tombstones hold no row; unknown metadata keys are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_columns_carry_key_partition_offset_timestamp_and_headers() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("events", 1)?;
    broker.produce_records(
        "events",
        &[
            serde_json::json!({"key": "k1", "value": "{\"n\": 1}", "headers": {"source": "web"}, "timestamp": 1_700_000_000_000i64}),
            serde_json::json!({"key": "k1", "value": null}),
            serde_json::json!({"key": "k2", "value": "{\"n\": 2}", "timestamp": 1_700_000_001_000i64}),
        ],
    )?;
    let mut session = Session::default();
    session.set_parallelism(1);
    let b = &broker.addr;
    let err = session
        .execute_script(&format!(
            "CREATE TABLE bad (n BIGINT, x VARCHAR METADATA FROM 'leader') \
             WITH (connector = 'kafka', topic = 'events', 'bootstrap.servers' = '{b}')"
        ))
        .await
        .err()
        .ok_or("an unknown metadata key must be refused")?;
    assert!(err.to_string().contains("unknown Kafka metadata 'leader'"), "{err}");
    session
        .execute_script(&format!(
            "CREATE TABLE events (n BIGINT, k VARCHAR METADATA FROM 'key', p INT METADATA FROM 'partition' VIRTUAL, \
               \"offset\" BIGINT METADATA VIRTUAL, kafka_ts TIMESTAMP(3) METADATA FROM 'timestamp', \
               headers VARCHAR METADATA) \
             WITH (connector = 'kafka', topic = 'events', 'bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest')"
        ))
        .await?;
    let mut outputs = session
        .execute_script("SELECT n, k, p, \"offset\", kafka_ts, json_get_str(headers, 'source') FROM events")
        .await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    let rows = rows_at_least(&mut q, 2).await?;
    q.job.cancel();
    assert_eq!(
        rows,
        vec![
            vec!["1", "k1", "0", "0", "2023-11-14T22:13:20", "web"],
            vec!["2", "k2", "0", "2", "2023-11-14T22:13:21", "NULL"],
        ]
    );
    Ok(())
}

/// Reads at least `count` values of column `n` from a running `SELECT n FROM t`,
/// then whatever else comes within 1.5 s; the query is left running.
async fn read_n(session: &mut Session, count: usize) -> Result<(Vec<String>, QueryOutput), Box<dyn std::error::Error>> {
    let mut outputs = session.execute_script("SELECT n FROM t").await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    let mut seen: Vec<String> = rows_at_least(&mut q, count).await?.into_iter().map(|r| r[0].clone()).collect();
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(1500), q.results.recv()).await {
        seen.extend(sluice_connectors::table_printer::format_cells(&batch)?.into_iter().map(|r| r[0].clone()));
    }
    Ok((seen, q))
}

/// With `scan.startup.mode = 'group-offsets'`, a query started again resumes
/// where the consumer group left off: a graceful stop commits what it read, so
/// the next run reads the new records, not the old; a cancelled run (as a
/// crash) committed nothing past its last checkpoint, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_query_resumes_from_its_consumer_group_offsets() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("numbers", 2)?;
    let first: Vec<String> = (0..10).map(|i| format!("{{\"n\": {i}}}")).collect();
    broker.produce("numbers", &first)?;
    let ddl = format!(
        "CREATE TABLE t (n BIGINT) WITH (connector = 'kafka', topic = 'numbers', 'bootstrap.servers' = '{}', \
         'group.id' = 'resume-test', 'scan.startup.mode' = 'group-offsets')",
        broker.addr
    );
    let mut session = Session::default();
    session.set_parallelism(2);
    session.execute_script(&ddl).await?;
    let (mut seen, mut q) = read_n(&mut session, 10).await?;
    seen.sort_by_key(|n| n.parse::<i64>().unwrap_or(-1));
    assert_eq!(seen, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    q.job.stop().await?;

    let second: Vec<String> = (10..15).map(|i| format!("{{\"n\": {i}}}")).collect();
    broker.produce("numbers", &second)?;
    let (mut resumed, mut q) = read_n(&mut session, 5).await?;
    // Cancelled, as a crash: what it read since its last commit is read again.
    q.job.cancel();
    resumed.sort_by_key(|n| n.parse::<i64>().unwrap_or(-1));
    assert_eq!(resumed, (10..15).map(|i| i.to_string()).collect::<Vec<_>>(), "only the new records are read again");

    let third: Vec<String> = (15..20).map(|i| format!("{{\"n\": {i}}}")).collect();
    broker.produce("numbers", &third)?;
    let (again, mut q) = read_n(&mut session, 5).await?;
    q.job.stop().await?;
    let again: Vec<i64> = again.iter().filter_map(|n| n.parse().ok()).collect();
    assert!(
        (15..20).all(|i| again.contains(&i)) && again.iter().all(|n| *n >= 10),
        "after a crash, from its last checkpoint on (never before the stop's commit): {again:?}"
    );
    Ok(())
}

/// One lane reads two partitions; partition 1's records (same event times) come
/// only after partition 0 has been read to its end. The watermark is tracked per
/// partition, so partition 1's rows are not late, and every window is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_read_behind_another_does_not_make_its_rows_late() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("clicks2", 2)?;
    let records = |partition: i32, seconds: std::ops::Range<i64>| -> Vec<Value> {
        seconds
            .map(|s| {
                serde_json::json!({
                    "partition": partition,
                    "value": format!("{{\"n\": 1, \"ts\": \"2024-01-01T00:{:02}:{:02}\"}}", s / 60, s % 60),
                })
            })
            .collect()
    };
    let mut session = Session::default();
    session.set_parallelism(1);
    session
        .execute_script(&format!(
            "CREATE TABLE clicks2 (n BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH (connector = 'kafka', topic = 'clicks2', 'bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest', \
                   'source.idle-timeout.ms' = '10000')",
            broker.addr
        ))
        .await?;
    let mut outputs = session
        .execute_script(
            "SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE clicks2, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
             GROUP BY window_start, window_end",
        )
        .await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    broker.produce_records("clicks2", &records(0, 0..120))?;
    broker.produce_records("clicks2", &records(0, 600..601))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.produce_records("clicks2", &records(1, 0..120))?;
    broker.produce_records("clicks2", &records(1, 600..601))?;
    let rows = rows_at_least(&mut q, 2).await?;
    let late = q.job.metrics().late_rows;
    q.job.cancel();
    assert_eq!(late, 0, "no row is late");
    assert_eq!(
        rows,
        vec![vec!["2024-01-01T00:00:00", "120"], vec!["2024-01-01T00:01:00", "120"]],
        "both partitions' rows in every window"
    );
    Ok(())
}

/// A schema registry for the Avro test (Confluent's is not installable here; the
/// test client serves its REST subset), stopped when dropped.
struct Registry {
    _child: KillOnDrop,
    url: String,
}

fn start_registry() -> Result<Registry, Box<dyn std::error::Error>> {
    let port = free_port()?;
    let child = Command::new("python3")
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_client.py"), "registry", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let registry = Registry { _child: KillOnDrop(child), url: format!("http://127.0.0.1:{port}") };
    wait_listening(&format!("127.0.0.1:{port}"), "the schema registry did not start")?;
    Ok(registry)
}

/// Avro in Confluent's wire format both ways: confluent-kafka's AvroSerializer
/// writes the input, Sluice reads it through the registry, aggregates, writes
/// Avro that confluent-kafka's AvroDeserializer reads back; a value not in the
/// wire format goes to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_with_a_schema_registry_in_and_out() -> TestResult {
    let broker = start_broker()?;
    let registry = start_registry()?;
    broker.create_topic("orders_avro", 2)?;
    broker.create_topic("totals_avro", 1)?;
    broker.create_topic("avro_dlq", 1)?;
    let schema = r#"{"type": "record", "name": "Order", "fields": [
        {"name": "user", "type": "string"}, {"name": "amount", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
    let base = 1_704_067_200_000i64; // 2024-01-01T00:00:00Z
    let mut lines: Vec<String> = (0..120)
        .map(|s| {
            let user = ["ann", "bob"][s % 2];
            serde_json::json!({"user": user, "amount": s % 5, "note": null, "ts": base + s as i64 * 1000}).to_string()
        })
        .collect();
    lines.insert(7, serde_json::json!({"raw": "{\"not\": \"avro\"}"}).to_string());
    lines.push(serde_json::json!({"user": "ann", "amount": 0, "note": "closes", "ts": base + 600_000}).to_string());
    broker.produce_avro("orders_avro", &registry.url, schema, &lines)?;

    let mut session = Session::default();
    session.set_parallelism(2);
    let (b, r) = (&broker.addr, &registry.url);
    session
        .execute_script(&format!(
            "CREATE TABLE orders_avro (user VARCHAR, amount BIGINT, note VARCHAR, ts TIMESTAMP(3), \
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = 'orders_avro', 'bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest', \
                   format = 'avro-confluent', 'avro-confluent.url' = '{r}', bad_data = 'dead-letter', \
                   'dead-letter.topic' = 'avro_dlq', 'source.idle-timeout.ms' = '300'); \
             CREATE TABLE totals_avro (window_start TIMESTAMP(3), user VARCHAR, total BIGINT, orders BIGINT) \
             WITH (connector = 'kafka', topic = 'totals_avro', 'bootstrap.servers' = '{b}', 'key.field' = 'user', \
                   format = 'avro-confluent', 'avro-confluent.url' = '{r}');"
        ))
        .await?;
    let mut outputs = session
        .execute_script(
            "INSERT INTO totals_avro SELECT window_start, user, sum(amount), count(*) \
             FROM TABLE(TUMBLE(TABLE orders_avro, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, user",
        )
        .await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    let (addr, url) = (broker.addr.clone(), registry.url.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_client.py"), "consume-avro", &addr, "totals_avro", "4", &url])
            .output()
    })
    .await??;
    job.cancel();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut got: Vec<(String, String, i64, i64)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line)?;
        got.push((
            v["window_start"].as_str().unwrap_or_default().to_string(),
            v["user"].as_str().unwrap_or_default().to_string(),
            v["total"].as_i64().unwrap_or(-1),
            v["orders"].as_i64().unwrap_or(-1),
        ));
    }
    got.sort();
    let expected_total = |user: usize, minute: usize| -> i64 {
        (minute * 60..minute * 60 + 60).filter(|s| s % 2 == user).map(|s| (s % 5) as i64).sum()
    };
    let expected: Vec<(String, String, i64, i64)> = vec![
        ("2024-01-01 00:00:00+00:00".into(), "ann".into(), expected_total(0, 0), 30),
        ("2024-01-01 00:00:00+00:00".into(), "bob".into(), expected_total(1, 0), 30),
        ("2024-01-01 00:01:00+00:00".into(), "ann".into(), expected_total(0, 1), 30),
        ("2024-01-01 00:01:00+00:00".into(), "bob".into(), expected_total(1, 1), 30),
    ];
    assert_eq!(got, expected);
    let dead = broker.consume("avro_dlq", 1)?;
    assert_eq!(dead[0]["value"], "{\"not\": \"avro\"}");
    assert!(dead[0]["headers"]["sluice.error"].as_str().unwrap_or_default().contains("wire format"));
    Ok(())
}

/// A tansu that keeps its data in SQLite under `dir`, listening on `port`.
fn start_durable_broker(dir: &std::path::Path, port: u16) -> Result<Broker, Box<dyn std::error::Error>> {
    let tansu = std::env::var("TANSU_DURABLE")
        .map_err(|_| "TANSU_DURABLE is not set: scripts/test.sh builds a tansu with SQLite storage")?;
    // tansu reads the SQLite path relative to its working directory.
    std::fs::create_dir_all(dir.join("data"))?;
    spawn_broker(tansu, port, "sqlite://data/tansu.db", Some(dir))
}

/// The broker is killed and started again (same port, same storage) while a
/// query copies one topic into another: the query keeps running, and every
/// record produced before and after the restart comes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_survives_a_broker_restart_without_loss_or_duplicates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let broker = start_durable_broker(dir.path(), port)?;
    broker.create_topic("ids_in", 2)?;
    broker.create_topic("ids_out", 1)?;
    let batch = |range: std::ops::Range<i64>| range.map(|i| format!("{{\"id\": {i}}}")).collect::<Vec<_>>();
    broker.produce("ids_in", &batch(0..100))?;

    let mut session = Session::default();
    session.set_parallelism(2);
    let b = &broker.addr;
    session
        .execute_script(&format!(
            "CREATE TABLE ids_in (id BIGINT) WITH (connector = 'kafka', topic = 'ids_in', 'bootstrap.servers' = '{b}', \
               'scan.startup.mode' = 'earliest'); \
             CREATE TABLE ids_out (id BIGINT, doubled BIGINT) WITH (connector = 'kafka', topic = 'ids_out', \
               'bootstrap.servers' = '{b}', 'key.field' = 'id');"
        ))
        .await?;
    let mut outputs = session.execute_script("INSERT INTO ids_out SELECT id, id * 2 FROM ids_in").await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    let addr = broker.addr.clone();
    let before = tokio::task::spawn_blocking(move || consume_until_idle(&addr, "ids_out", 100, 30)).await??;
    assert_eq!(before.len(), 100, "the first records came through");

    // Kill the broker, start it again on the same port and storage.
    drop(broker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker = start_durable_broker(dir.path(), port)?;
    broker.produce("ids_in", &batch(100..200))?;
    let addr = broker.addr.clone();
    // The reader's group resumes after what it read before the restart.
    let after = tokio::task::spawn_blocking(move || consume_until_idle(&addr, "ids_out", 100_000, 15)).await??;
    let all: Vec<Value> = before.into_iter().chain(after).collect();
    if let Ok(ended) = tokio::time::timeout(Duration::from_millis(100), job.wait()).await {
        return Err(format!("the query ended after the broker restart: {ended:?}").into());
    }
    job.cancel();
    let mut ids: Vec<i64> = all
        .iter()
        .filter_map(|r| r["value"].as_str().and_then(|v| serde_json::from_str::<Value>(v).ok()))
        .filter_map(|v| v["id"].as_i64())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..200).collect::<Vec<_>>(), "every record once, before and after the restart");
    Ok(())
}

/// A compacted topic as the versioned table of a temporal join: with a PRIMARY
/// KEY the Kafka table is read as upserts, and a tombstone deletes its key from
/// its Kafka timestamp on (until the key's next record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporal_join_against_an_upsert_topic_honours_tombstones() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("rates_kv", 1)?;
    let at = |s: i64| 1_704_067_200_000i64 + s * 1000; // 2024-01-01T00:00:00Z + s
    let rate = |currency: &str, rate: f64, s: i64| {
        serde_json::json!({
            "key": currency,
            "value": format!("{{\"currency\": \"{currency}\", \"rate\": {rate}, \"ts\": \"2024-01-01T00:00:{s:02}\"}}"),
            "timestamp": at(s),
        })
    };
    broker.produce_records(
        "rates_kv",
        &[
            rate("EUR", 1.1, 0),
            rate("USD", 1.0, 0),
            serde_json::json!({"key": "EUR", "value": null, "timestamp": at(8)}),
            rate("EUR", 1.3, 20),
            rate("USD", 0.8, 30),
        ],
    )?;
    let mut session = Session::default();
    session.set_parallelism(2);
    session
        .execute_script(&format!(
            "CREATE TABLE orders (order_id BIGINT, user_id VARCHAR, amount BIGINT, currency VARCHAR, ts TIMESTAMP(3), \
               WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
             WITH (connector = 'file', path = '{}/tests/data/joins/orders.jsonl', format = 'json'); \
             CREATE TABLE rates_kv (currency VARCHAR, rate DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts, \
               PRIMARY KEY (currency) NOT ENFORCED) \
             WITH (connector = 'kafka', topic = 'rates_kv', 'bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest', \
                   'source.idle-timeout.ms' = '3000');",
            env!("CARGO_MANIFEST_DIR"),
            broker.addr
        ))
        .await?;
    let err = session
        .execute_script("SELECT currency, count(*) FROM rates_kv GROUP BY currency")
        .await
        .err()
        .ok_or("aggregating an upsert table must be refused")?;
    assert!(err.to_string().contains("upsert table"), "{err}");
    let mut outputs = session
        .execute_script(
            "SELECT o.order_id, o.currency, o.amount * r.rate FROM orders o \
             LEFT JOIN rates_kv FOR SYSTEM_TIME AS OF o.ts AS r ON o.currency = r.currency",
        )
        .await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    let mut rows = rows_at_least(&mut q, 8).await?;
    q.job.cancel();
    rows.sort_by_key(|r| r[0].parse::<i64>().unwrap_or(-1));
    let expected: Vec<Vec<&str>> = vec![
        vec!["1", "EUR", "11.0"],
        vec!["2", "USD", "20.0"],
        vec!["3", "EUR", "33.0"],
        vec!["4", "USD", "40.0"],
        vec!["5", "EUR", "NULL"], // EUR deleted at 00:00:08 ...
        vec!["6", "GBP", "NULL"],
        vec!["7", "EUR", "NULL"], // ... until 00:00:20
        vec!["8", "USD", "80.0"],
    ];
    assert_eq!(rows, expected);
    Ok(())
}

/// `sluice ingest` reads Avro through the registry into the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_reads_avro_into_the_lake() -> TestResult {
    let broker = start_broker()?;
    let registry = start_registry()?;
    broker.create_topic("clicks_avro", 2)?;
    let schema = r#"{"type": "record", "name": "Click", "fields": [
        {"name": "id", "type": "long"}, {"name": "user", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
    let base = 1_704_067_200_000i64;
    let lines: Vec<String> = (0..500)
        .map(|i| serde_json::json!({"id": i, "user": format!("u{}", i % 7), "ts": base + i * 10_000}).to_string())
        .collect();
    broker.produce_avro("clicks_avro", &registry.url, schema, &lines)?;
    let (_dir, lake, sql) = ingest_job(&format!(
        "topic = 'clicks_avro', 'bootstrap.servers' = '{}', 'group.id' = 'ingest-avro', \
         format = 'avro-confluent', 'avro-confluent.url' = '{}'",
        broker.addr, registry.url
    ))?;
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ingest", "--sql"])
        .arg(&sql)
        .args(["--from", "clicks", "--to", "lake", "--round-rows", "100", "--round-ms", "200"])
        .current_dir(_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, _) = if lake.exists() { lake_ids(&lake).await? } else { (0, 0) };
        if rows >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "only {rows} rows landed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status()?.success());
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lake_ids(&lake).await?, (500, 500), "every Avro record once");
    Ok(())
}

/// A `sluice run` or `sluice ingest` process, killed if the test fails.
struct SluiceProcess(KillOnDrop);

impl SluiceProcess {
    fn start(args: &[&str]) -> Result<Self, Box<dyn std::error::Error>> {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(SluiceProcess(KillOnDrop(child)))
    }

    /// Stops it as Ctrl-C does (a graceful stop) and waits for it to exit.
    fn interrupt(mut self) -> Result<String, Box<dyn std::error::Error>> {
        let child = &mut self.0 .0;
        assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status()?.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                return Err("no exit within 60 s of SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().ok_or("stdout")?, &mut out)?;
        std::io::Read::read_to_string(&mut child.stderr.take().ok_or("stderr")?, &mut out)?;
        assert!(status.success(), "a stop is not a failure: {out}");
        Ok(out)
    }
}

/// The `id`s in a JSON-lines file (none if it does not exist yet).
fn ids_in(path: &std::path::Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["id"].as_i64())
        .collect()
}

/// Waits (up to 60 s) until `done` holds, saying what was awaited if not.
async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Two queries (`sluice run` of INSERTs into JSON files) and a `sluice ingest`
/// job read one topic, each stopped (SIGINT) and started again at other times,
/// with records produced in between. Each has its own consumer group and
/// commits only what its sink holds, so each sees every record once: none
/// skipped because another reader ran ahead, none lost or repeated by a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_ingest_each_see_every_record_once_across_restarts() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("shared", 2)?;
    let records = |ids: std::ops::Range<i64>| -> Vec<String> {
        ids.map(|i| format!("u{}\t{{\"id\": {i}, \"user\": \"u{}\", \"ts\": \"2024-01-01T00:00:{:02}\"}}", i % 3, i % 3, i % 60))
            .collect()
    };
    let source = format!("topic = 'shared', 'bootstrap.servers' = '{}', 'scan.startup.mode' = 'group-offsets'", broker.addr);
    let (dir, lake, ingest_sql) = ingest_job(&source)?;
    // The same table name everywhere: a group per table would be shared by all three.
    let query = |out: &str, filter: &str| -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
        let sql = dir.path().join(format!("{out}.sql"));
        std::fs::write(
            &sql,
            format!(
                "CREATE TABLE clicks (id BIGINT, user VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'kafka', {source}); \
                 CREATE TABLE {out} (id BIGINT) WITH (connector = 'file', path = '{}', format = 'json'); \
                 INSERT INTO {out} SELECT id FROM clicks WHERE {filter};",
                dir.path().join(format!("{out}.jsonl")).display()
            ),
        )?;
        Ok(sql)
    };
    let (evens_sql, odds_sql) = (query("evens", "id % 2 = 0")?, query("odds", "id % 2 = 1")?);
    let (evens, odds) = (dir.path().join("evens.jsonl"), dir.path().join("odds.jsonl"));
    let run = |sql: &std::path::Path| SluiceProcess::start(&["run", &sql.display().to_string()]);
    let ingest = || {
        SluiceProcess::start(&[
            "ingest", "--sql", &ingest_sql.display().to_string(), "--from", "clicks", "--to", "lake",
            "--round-rows", "150", "--round-ms", "200", "--checkpoint-dir", &dir.path().join("checkpoints").display().to_string(),
        ])
    };
    let lake_rows = || async { lake_ids(&lake).await.map(|(rows, _)| rows).unwrap_or(0) };

    // The first query reads the first records and stops.
    broker.produce("shared", &records(0..100))?;
    let first = run(&evens_sql)?;
    wait_for("50 evens", || async { ids_in(&evens).len() >= 50 }).await?;
    first.interrupt()?;

    // The second query and the job start later, from the beginning of their own groups.
    broker.produce("shared", &records(100..200))?;
    let (second, job) = (run(&odds_sql)?, ingest()?);
    wait_for("100 odds", || async { ids_in(&odds).len() >= 100 }).await?;
    wait_for("200 rows in the lake", || async { lake_rows().await >= 200 }).await?;
    second.interrupt()?;
    job.interrupt()?;

    // All three again, each from where it stopped.
    broker.produce("shared", &records(200..300))?;
    let (first, second, job) = (run(&evens_sql)?, run(&odds_sql)?, ingest()?);
    wait_for("150 evens", || async { ids_in(&evens).len() >= 150 }).await?;
    wait_for("150 odds", || async { ids_in(&odds).len() >= 150 }).await?;
    wait_for("300 rows in the lake", || async { lake_rows().await >= 300 }).await?;
    for process in [first, second, job] {
        process.interrupt()?;
    }

    let sorted = |mut ids: Vec<i64>| {
        ids.sort();
        ids
    };
    assert_eq!(sorted(ids_in(&evens)), (0..300).filter(|i| i % 2 == 0).collect::<Vec<_>>(), "every even id once");
    assert_eq!(sorted(ids_in(&odds)), (0..300).filter(|i| i % 2 == 1).collect::<Vec<_>>(), "every odd id once");
    assert_eq!(lake_ids(&lake).await?, (300, 300), "every record in the lake once");
    Ok(())
}

/// An upsert table keeps the order of its records within a partition: a
/// tombstone between two values of a key deletes the first one only, and the
/// key ends with the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_tombstone_between_two_values_deletes_only_the_first() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("kv", 1)?;
    broker.create_topic("kv_out", 1)?;
    let value = |k: &str, v: &str| serde_json::json!({"key": k, "value": format!("{{\"k\": \"{k}\", \"v\": \"{v}\"}}")});
    broker.produce_records(
        "kv",
        &[value("a", "a1"), serde_json::json!({"key": "a", "value": null}), value("a", "a2"), value("b", "b1")],
    )?;
    let mut session = Session::default();
    session.set_parallelism(1);
    let b = &broker.addr;
    session
        .execute_script(&format!(
            "CREATE TABLE kv (k VARCHAR, v VARCHAR, PRIMARY KEY (k) NOT ENFORCED) \
             WITH (connector = 'kafka', topic = 'kv', 'bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest'); \
             CREATE TABLE kv_out (k VARCHAR, v VARCHAR) \
             WITH (connector = 'kafka', topic = 'kv_out', 'bootstrap.servers' = '{b}', 'key.field' = 'k');"
        ))
        .await?;
    let mut outputs = session.execute_script("INSERT INTO kv_out SELECT k, v FROM kv").await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    let addr = broker.addr.clone();
    let out = tokio::task::spawn_blocking(move || consume(&addr, "kv_out", 4)).await??;
    job.stop().await?;
    let of_key = |key: &str| -> Vec<Option<String>> {
        out.iter()
            .filter(|r| r["key"] == key)
            .map(|r| r["value"].as_str().and_then(|v| serde_json::from_str::<Value>(v).ok()).map(|v| v["v"].to_string()))
            .collect()
    };
    assert_eq!(of_key("a"), vec![Some("\"a1\"".to_string()), None, Some("\"a2\"".to_string())], "in the order produced");
    assert_eq!(of_key("b"), vec![Some("\"b1\"".to_string())]);
    Ok(())
}

/// A NULL in the key column is a record without a key, not the key "" (which
/// stays a key of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_key_column_makes_a_record_without_a_key() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("keys_in", 1)?;
    broker.create_topic("keys_out", 1)?;
    broker.produce("keys_in", &["{\"k\": \"a\", \"n\": 1}".into(), "{\"k\": null, \"n\": 2}".into(), "{\"k\": \"\", \"n\": 3}".into()])?;
    let mut session = Session::default();
    session.set_parallelism(1);
    let b = &broker.addr;
    session
        .execute_script(&format!(
            "CREATE TABLE keys_in (k VARCHAR, n BIGINT) \
             WITH (connector = 'kafka', topic = 'keys_in', 'bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest'); \
             CREATE TABLE keys_out (k VARCHAR, n BIGINT) \
             WITH (connector = 'kafka', topic = 'keys_out', 'bootstrap.servers' = '{b}', 'key.field' = 'k');"
        ))
        .await?;
    let mut outputs = session.execute_script("INSERT INTO keys_out SELECT k, n FROM keys_in").await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    let addr = broker.addr.clone();
    let out = tokio::task::spawn_blocking(move || consume(&addr, "keys_out", 3)).await??;
    job.stop().await?;
    let mut keys: Vec<(i64, Value)> = out
        .iter()
        .filter_map(|r| {
            let value: Value = serde_json::from_str(r["value"].as_str()?).ok()?;
            Some((value["n"].as_i64()?, r["key"].clone()))
        })
        .collect();
    keys.sort_by_key(|(n, _)| *n);
    assert_eq!(keys, vec![(1, Value::from("a")), (2, Value::Null), (3, Value::from(""))]);
    Ok(())
}
