//! A stop (SIGINT, as Ctrl-C sends) never loses what it reports as written:
//! `sluice run` of an unbounded INSERT is interrupted, and an independent reader
//! (pyarrow) finds exactly the reported rows in the lake or file.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// An unbounded generator: 2,000 events a second.
const CLICKS: &str = "CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, price DOUBLE, ts TIMESTAMP(3), \
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'generator', rate = '2000');";

/// Runs `sql` with `sluice run`, interrupts it after `running` (rows in flight,
/// files open), and returns the rows it reported written to `table` and all it
/// printed (stdout and stderr together) once it has exited.
fn run_and_interrupt(sql: &str, running: Duration, table: &str) -> Result<(u64, String), Box<dyn std::error::Error>> {
    let mut child = Command::new(SLUICE)
        .args(["run", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while started.elapsed() < running {
        if child.try_wait()?.is_some() {
            return Err("the query ended before it was interrupted".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("sluice run did not stop within 30 s of SIGINT".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child.stdout.take().ok_or("stdout")?.read_to_string(&mut out)?;
    child.stderr.take().ok_or("stderr")?.read_to_string(&mut out)?;
    assert!(exit.success(), "a stop is not a failure: {out}");
    Ok((reported_rows(&out, table)?, out))
}

/// The count in "N row(s) written to 'T'".
fn reported_rows(output: &str, table: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let line = output
        .lines()
        .find(|l| l.contains(&format!("written to '{table}'")))
        .ok_or_else(|| format!("no summary line in: {output}"))?;
    Ok(line.split_whitespace().next().ok_or("empty line")?.parse()?)
}

/// Rows in the Parquet files under `path` (a file or a Hive-partitioned
/// directory), counted by pyarrow; fails if a hidden or in-progress file is left.
fn pyarrow_rows(path: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let script = r#"
import sys, os, pyarrow.dataset as ds
path = sys.argv[1]
for root, _, files in os.walk(path) if os.path.isdir(path) else [(os.path.dirname(path), [], os.listdir(os.path.dirname(path)))]:
    for f in files:
        if f.startswith('.') or f.endswith('.inprogress'):
            sys.exit(f'left behind: {os.path.join(root, f)}')
print(ds.dataset(path, format='parquet', partitioning='hive').count_rows())
"#;
    let out = Command::new("python3").args(["-c", script, &path.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

#[test]
fn interrupting_an_insert_into_the_lake_keeps_every_reported_row() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let sql = format!(
        "{CLICKS} CREATE TABLE lake (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) \
         WITH (connector = 'lake', path = '{}', 'partition.by' = 'event_type'); \
         INSERT INTO lake SELECT user_id, event_type, ts FROM clicks WHERE price >= 0;",
        lake.display()
    );
    // Stop while rows are in flight and files are open: a stop must complete them.
    let (reported, output) = run_and_interrupt(&sql, Duration::from_secs(2), "lake")?;
    assert!(reported > 0, "{output}");
    assert_eq!(pyarrow_rows(&lake)?, reported, "{output}");
    Ok(())
}

#[test]
fn interrupting_a_windowed_insert_keeps_every_reported_window() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let sql = format!(
        "{CLICKS} CREATE TABLE lake (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT) \
         WITH (connector = 'lake', path = '{}'); \
         INSERT INTO lake SELECT window_start, event_type, count(*) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
         GROUP BY window_start, window_end, event_type;",
        lake.display()
    );
    // Windows of 100 events close about every 50 ms: stop once many closed.
    let (reported, output) = run_and_interrupt(&sql, Duration::from_secs(3), "lake")?;
    assert!(reported > 0, "{output}");
    assert_eq!(pyarrow_rows(&lake)?, reported, "{output}");
    Ok(())
}

#[test]
fn interrupting_an_insert_into_a_parquet_file_completes_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("out.parquet");
    let sql = format!(
        "{CLICKS} CREATE TABLE out (user_id BIGINT, price DOUBLE) \
         WITH (connector = 'file', path = '{}', format = 'parquet'); \
         INSERT INTO out SELECT user_id, price FROM clicks;",
        file.display()
    );
    let (reported, output) = run_and_interrupt(&sql, Duration::from_secs(2), "out")?;
    assert!(reported > 0, "{output}");
    assert_eq!(pyarrow_rows(&file)?, reported, "{output}");
    Ok(())
}

/// Lines of a JSON-lines file.
fn json_lines(path: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(std::fs::read_to_string(path)?.lines().filter(|l| l.starts_with('{')).count() as u64)
}

#[test]
fn a_restarted_query_adds_to_what_earlier_runs_wrote_and_overwrites_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let file = dir.path().join("out.jsonl");
    let lake_sql = format!(
        "{CLICKS} CREATE TABLE lake (user_id BIGINT, ts TIMESTAMP(3)) WITH (connector = 'lake', path = '{}'); \
         INSERT INTO lake SELECT user_id, ts FROM clicks;",
        lake.display()
    );
    let file_sql = format!(
        "{CLICKS} CREATE TABLE out (user_id BIGINT, ts TIMESTAMP(3)) WITH (connector = 'file', path = '{}', format = 'json'); \
         INSERT INTO out SELECT user_id, ts FROM clicks;",
        file.display()
    );
    let mut lake_rows = 0;
    let mut file_rows = 0;
    for _run in 0..2 {
        lake_rows += run_and_interrupt(&lake_sql, Duration::from_secs(1), "lake")?.0;
        file_rows += run_and_interrupt(&file_sql, Duration::from_secs(1), "out")?.0;
    }
    // Both runs' rows are there: the second run neither overwrote nor removed the first's.
    assert_eq!(pyarrow_rows(&lake)?, lake_rows);
    assert_eq!(json_lines(&file)?, file_rows);
    Ok(())
}
