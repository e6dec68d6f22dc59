//! Checkpoints and recovery, end to end: a windowed query reads a 4-partition
//! Kafka topic (tansu) and writes a Hive-partitioned lake with checkpoints
//! every second. `sluice run` is killed with SIGKILL while events keep
//! arriving, and crashes itself (`SLUICE_CRASH_AT`) while a step stores its
//! snapshot, between a checkpoint's completion and the sink's commit, and in
//! the middle of the commit; it is started again each time and resumes from
//! its latest checkpoint. The lake, read by pyarrow, then holds exactly the rows of the
//! same query run as a batch (DuckDB) over every event: nothing lost, nothing
//! twice.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::broker::start_broker;
use common::runs::{latest_checkpoint, stderr_of, wait_for_checkpoints};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const USERS: u64 = 7;
const PARTITIONS: u64 = 4;
/// Event time of event 0: 2026-01-01T00:00:00Z, in milliseconds.
const BASE_MS: i64 = 1_767_225_600_000;

/// Event `i`: user `i % USERS` on partition `user % PARTITIONS`, 100 ms of
/// event time after event `i - 1` (in order within each partition, so no
/// row is late and the result does not depend on how the runs were cut).
fn event(i: u64) -> Value {
    let user = i % USERS;
    let ts = chrono::DateTime::from_timestamp_millis(BASE_MS + i as i64 * 100).expect("a time");
    json!({
        "key": format!("u{user}"),
        "value": json!({"user_id": format!("u{user}"), "amount": i % 13, "ts": ts.format("%Y-%m-%d %H:%M:%S%.3f").to_string()}).to_string(),
        "partition": user % PARTITIONS,
    })
}

fn events(range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(event).collect()
}

fn start_run(script: &Path) -> std::io::Result<Child> {
    Command::new(SLUICE).args(["run"]).arg(script).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
}

/// Runs `script` with `SLUICE_CRASH_AT=<point>:<checkpoint>`, calls `meanwhile`
/// (events arriving while it runs, so later checkpoints have output to commit)
/// and waits for the process to crash itself there.
fn crash_run(script: &Path, point: &str, checkpoint: u64, meanwhile: impl FnOnce() -> TestResult) -> TestResult {
    let mut child = Command::new(SLUICE)
        .args(["run"])
        .arg(script)
        .env("SLUICE_CRASH_AT", format!("{point}:{checkpoint}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    meanwhile()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            return Err(format!("no crash at {point} of checkpoint {checkpoint} within 60 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = stderr_of(&mut child)?;
    assert!(!status.success() && stderr.contains("SLUICE_CRASH_AT: crashing at"), "{point}:{checkpoint}: {status}: {stderr}");
    Ok(())
}

/// `(window_start, user_id, n, total)` rows, sorted, as pyarrow reads the lake;
/// fails if a staged file would be visible to a reader that lists everything.
fn lake_rows(lake: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let script = r#"
import sys, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table()
rows = sorted(f"{r['window_start']}|{r['user_id']}|{r['n']}|{r['total']}" for r in t.to_pylist())
print("\n".join(rows))
"#;
    let out = Command::new("python3").args(["-c", script, &lake.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.lines().filter(|l| !l.is_empty()).map(String::from).collect())
}

/// The same rows computed by pyarrow as a batch over events `0..count`,
/// for the windows that close before event time `close_ms`.
fn expected_rows(count: u64, close_ms: i64) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let script = r#"
import sys, datetime, collections
count, base, close = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
users, window = int(sys.argv[4]), 10_000
groups = collections.defaultdict(lambda: [0, 0])
for i in range(count):
    ts = base + i * 100
    start = ts - ts % window
    if start + window > close:
        continue
    g = groups[(start, f"u{i % users}")]
    g[0] += 1
    g[1] += i % 13
rows = []
for (start, user), (n, total) in groups.items():
    ws = datetime.datetime.fromtimestamp(start / 1000, datetime.timezone.utc).replace(tzinfo=None)
    rows.append(f"{ws}|{user}|{n}|{total}")
print("\n".join(sorted(rows)))
"#;
    let args = [count.to_string(), BASE_MS.to_string(), close_ms.to_string(), USERS.to_string()];
    let out = Command::new("python3").args(["-c", script]).args(&args).output()?;
    if !out.status.success() {
        return Err(format!("python: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.lines().filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Events produced in all: the last run reads them to the end.
const TOTAL_EVENTS: u64 = 3000;

/// Writes the crash tests' script (the windowed query into `totals`, declared
/// `WITH (<totals_with>)`), and the same at 3 lanes: its state is spread over
/// the lanes by key group, so it resumes there too.
fn crash_scripts(dir: &Path, addr: &str, name: &str, totals_with: &str) -> Result<(std::path::PathBuf, std::path::PathBuf), Box<dyn std::error::Error>> {
    let script = dir.join("job.sql");
    std::fs::write(
        &script,
        format!(
            "SET 'execution.checkpointing.interval' = '1 s';
             SET 'state.checkpoints.dir' = '{checkpoints}';
             SET 'pipeline.name' = '{name}';
             SET 'parallelism' = '2';
             CREATE TABLE events (user_id VARCHAR, amount BIGINT, ts TIMESTAMP(3),
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'kafka', topic = 'events', 'bootstrap.servers' = '{addr}', format = 'json',
               'scan.startup.mode' = 'earliest');
             CREATE TABLE totals (window_start TIMESTAMP(3), user_id VARCHAR, n BIGINT, total BIGINT)
             WITH ({totals_with});
             INSERT INTO totals
             SELECT window_start, user_id, count(*) AS n, sum(amount) AS total
             FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, user_id;",
            checkpoints = dir.join("checkpoints").display(),
        ),
    )?;
    let rescaled = dir.join("job-3-lanes.sql");
    std::fs::write(&rescaled, std::fs::read_to_string(&script)?.replace("SET 'parallelism' = '2';", "SET 'parallelism' = '3';"))?;
    Ok((script, rescaled))
}

/// Runs the query through the crashes while events keep arriving: killed
/// after checkpoints; crashed inside a snapshot, between a checkpoint and its
/// commit, and in the middle of a commit; killed mid-stream at 3 lanes. Then
/// starts the last run (at 2 lanes) with every event produced, and returns it
/// with the rows a crash-free run gives.
fn crash_sequence(
    broker: &common::broker::Broker,
    (script, rescaled): &(std::path::PathBuf, std::path::PathBuf),
    checkpoints: &Path,
) -> Result<(Child, Vec<String>), Box<dyn std::error::Error>> {
    broker.produce_records("events", &events(0..600))?;
    let mut run = start_run(script)?;
    let seen = wait_for_checkpoints(&mut run, checkpoints, 0, 2)?;
    broker.produce_records("events", &events(600..1200))?;
    wait_for_checkpoints(&mut run, checkpoints, seen, 1)?;
    run.kill()?;
    run.wait()?;

    // A commit without output has no middle: the mid-commit crash is asked
    // for from the first checkpoint on (it comes at the first that commits).
    let mut produced = 1200;
    for (point, ahead) in [("snapshot", 2), ("before-commit", 2), ("mid-commit", 1)] {
        let batch = events(produced..produced + 200);
        produced += 200;
        crash_run(script, point, latest_checkpoint(checkpoints) + ahead, || {
            std::thread::sleep(Duration::from_millis(300));
            broker.produce_records("events", &batch)
        })?;
    }

    let mut run = start_run(rescaled)?;
    wait_for_checkpoints(&mut run, checkpoints, latest_checkpoint(checkpoints), 2)?;
    broker.produce_records("events", &events(produced..2400))?;
    std::thread::sleep(Duration::from_millis(700));
    run.kill()?;
    run.wait()?;

    broker.produce_records("events", &events(2400..TOTAL_EVENTS))?;
    let run = start_run(script)?;
    // Event time reaches the last event's on every partition, so windows
    // ending up to a second before it close.
    let close_ms = BASE_MS + (TOTAL_EVENTS as i64 - 1) * 100 - 1000;
    Ok((run, expected_rows(TOTAL_EVENTS, close_ms)?))
}

/// Stops the last run (SIGINT) and checks that it said it resumed `name`.
fn stop_resumed(mut run: Child, name: &str) -> TestResult {
    Command::new("kill").args(["-INT", &run.id().to_string()]).status()?;
    let status = run.wait()?;
    let stderr = stderr_of(&mut run)?;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains(&format!("resuming '{name}' from checkpoint")), "a resumed run says so: {stderr}");
    Ok(())
}

/// Asserts that `rows` are exactly `expected`, each once.
fn assert_each_once(mut rows: Vec<String>, expected: &[String], place: &str) {
    rows.sort();
    let missing: Vec<&String> = expected.iter().filter(|r| !rows.contains(r)).collect();
    let unexpected: Vec<&String> = rows.iter().filter(|r| !expected.contains(r)).collect();
    let twice: Vec<&String> = rows.windows(2).filter(|w| w[0] == w[1]).map(|w| &w[0]).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && twice.is_empty(),
        "missing from {place}: {missing:?}; not expected: {unexpected:?}; more than once: {twice:?}"
    );
    assert_eq!(rows.len(), expected.len(), "each window's row once in {place}");
}

#[test]
fn a_windowed_query_killed_and_crashed_resumes_and_the_lake_holds_each_row_once() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("events", PARTITIONS as u32)?;
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let scripts = crash_scripts(dir.path(), &broker.addr, "events-to-lake", &format!("connector = 'lake', path = '{}', 'partition.by' = 'user_id'", lake.display()))?;
    let (mut run, expected) = crash_sequence(&broker, &scripts, &dir.path().join("checkpoints/events-to-lake"))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while lake_rows(&lake)?.len() < expected.len() && Instant::now() < deadline {
        wait_for_checkpoints(&mut run, &dir.path().join("checkpoints/events-to-lake"), 0, 1)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_resumed(run, "events-to-lake")?;
    assert_each_once(lake_rows(&lake)?, &expected, "the lake");
    Ok(())
}

#[test]
fn a_changed_query_is_refused_with_what_changed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let checkpoints = dir.path().join("checkpoints");
    let script = |aggregate: &str, name: &str| {
        format!(
            "SET 'execution.checkpointing.interval' = '200 ms'; SET 'state.checkpoints.dir' = '{}'; SET 'pipeline.name' = '{name}';
             CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, price DOUBLE, ts TIMESTAMP(3),
               WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'generator', rate = '500');
             CREATE TABLE out (window_start TIMESTAMP(3), event_type VARCHAR, v DOUBLE)
               WITH (connector = 'lake', path = '{}');
             INSERT INTO out SELECT window_start, event_type, {aggregate} AS v
             FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, event_type;",
            checkpoints.display(),
            dir.path().join("lake").display()
        )
    };
    // Checkpoints of the first version, then a stop (SIGINT) keeps them.
    let mut first = Command::new(SLUICE).args(["run", "-c", &script("sum(price)", "prices")]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    wait_for_checkpoints(&mut first, &checkpoints.join("prices"), 0, 2)?;
    Command::new("kill").args(["-INT", &first.id().to_string()]).status()?;
    assert!(first.wait()?.success());

    let changed = Command::new(SLUICE).args(["run", "-c", &script("max(price)", "prices")]).output()?;
    let stderr = String::from_utf8(changed.stderr)?;
    assert!(!changed.status.success(), "a changed plan must not resume: {stderr}");
    assert!(stderr.contains("was taken of another plan") && stderr.contains("sum(") && stderr.contains("max("), "names what changed: {stderr}");
    assert!(stderr.contains("pipeline.name"), "says how to start over: {stderr}");

    // The first version starts from a chosen checkpoint (the older of the two kept).
    let older = std::fs::read_dir(checkpoints.join("prices"))?
        .flatten()
        .filter(|e| e.path().join("_metadata.json").exists())
        .map(|e| e.path())
        .min()
        .ok_or("no checkpoint kept")?;
    let chosen = older.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("chk-")).ok_or("a checkpoint's name")?.parse::<u64>()?;
    let from_savepoint = format!("SET 'execution.savepoint.path' = '{}'; {}", older.display(), script("sum(price)", "prices"));
    let mut again = Command::new(SLUICE).args(["run", "-c", &from_savepoint]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    Command::new("kill").args(["-INT", &again.id().to_string()]).status()?;
    assert!(again.wait()?.success());
    let stderr = stderr_of(&mut again)?;
    assert!(stderr.contains(&format!("resuming 'prices' from checkpoint {chosen} ")), "{stderr}");

    // Under a new name it starts from scratch, and says nothing of resuming.
    let mut renamed = Command::new(SLUICE).args(["run", "-c", &script("max(price)", "max-prices")]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    wait_for_checkpoints(&mut renamed, &checkpoints.join("max-prices"), 0, 1)?;
    Command::new("kill").args(["-INT", &renamed.id().to_string()]).status()?;
    assert!(renamed.wait()?.success());
    assert!(!stderr_of(&mut renamed)?.contains("resuming"));
    Ok(())
}

/// The `(window_start, user_id, n, total)` rows a plain consumer (confluent-
/// kafka, tests/kafka_client.py, a client this project did not write) reads
/// from `topic` as consumer group `test-reader`: those after the group's last
/// read, until nothing came for `idle` seconds. Fails on a record that does
/// not carry the sink's identity headers.
fn kafka_rows(broker: &common::broker::Broker, topic: &str, idle: u32) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for record in common::broker::consume_until_idle(&broker.addr, topic, 1_000_000, idle)? {
        for header in ["sluice.query", "sluice.run", "sluice.checkpoint", "sluice.seq"] {
            assert!(record["headers"][header].is_string(), "no {header} header: {record}");
        }
        let value: Value = serde_json::from_str(record["value"].as_str().ok_or("a record without a value")?)?;
        let start = value["window_start"].as_str().ok_or("no window_start")?.replace('T', " ");
        rows.push(format!("{start}|{}|{}|{}", value["user_id"].as_str().unwrap_or("?"), value["n"], value["total"]));
    }
    Ok(rows)
}

/// The crashes of the lake test with the results going to a Kafka topic: the
/// sink holds each checkpoint's records back until the checkpoint completes,
/// and a restored run produces only those the topic lacks (it reads the tail
/// of each partition for the headers `sluice.*`), so a plain consumer reads
/// each window's row once, however the runs were cut.
#[test]
fn a_windowed_query_killed_and_crashed_writes_each_row_once_to_kafka() -> TestResult {
    crash_into_kafka("events-to-kafka", "")
}

/// The same with Kafka transactions (`sink.transactional-id-prefix`): each
/// run fences the one before, each checkpoint's records are one transaction,
/// and the result is the same.
#[test]
fn a_windowed_query_killed_and_crashed_writes_each_row_once_to_kafka_in_transactions() -> TestResult {
    crash_into_kafka("events-to-kafka-tx", ", 'sink.transactional-id-prefix' = 'totals'")
}

fn crash_into_kafka(name: &str, more_options: &str) -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("events", PARTITIONS as u32)?;
    broker.create_topic("totals", 3)?;
    let dir = tempfile::tempdir()?;
    let totals = format!(
        "connector = 'kafka', topic = 'totals', 'bootstrap.servers' = '{}', format = 'json', 'key.field' = 'user_id'{more_options}",
        broker.addr
    );
    let scripts = crash_scripts(dir.path(), &broker.addr, name, &totals)?;
    let (run, expected) = crash_sequence(&broker, &scripts, &dir.path().join("checkpoints").join(name))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rows = Vec::new();
    while rows.len() < expected.len() && Instant::now() < deadline {
        rows.extend(kafka_rows(&broker, "totals", 8)?);
    }
    stop_resumed(run, name)?;
    // Whatever the stop produced after the last read.
    rows.extend(kafka_rows(&broker, "totals", 8)?);
    assert_each_once(rows, &expected, "the topic");
    Ok(())
}
