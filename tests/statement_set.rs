//! `EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END`, as a user runs
//! it with `sluice run`: the INSERTs run together and end together, reading
//! their table once; a stop stops them all with what each reports written in
//! its file; a statement that cannot start starts none; and a set crashed
//! after checkpoints resumes from its one checkpoint with each lake holding
//! the rows of an uninterrupted run (read by pyarrow).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Two file sinks in `dir`: every click, and the checkouts.
fn tables(dir: &Path, clicks_with: &str) -> String {
    format!(
        "CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, price DOUBLE, ts TIMESTAMP(3), \
           WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'generator', {clicks_with}); \
         CREATE TABLE all_clicks (user_id BIGINT, event_type VARCHAR) WITH (connector = 'file', path = '{}', format = 'json'); \
         CREATE TABLE checkouts (user_id BIGINT, price DOUBLE) WITH (connector = 'file', path = '{}', format = 'json');",
        dir.join("all.json").display(),
        dir.join("checkouts.json").display()
    )
}

const SET: &str = "EXECUTE STATEMENT SET BEGIN \
      INSERT INTO all_clicks SELECT user_id, event_type FROM clicks; \
      INSERT INTO checkouts SELECT user_id, price FROM clicks WHERE event_type = 'checkout'; \
    END;";

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn run(sql: &str, dir: &Path) -> std::io::Result<Output> {
    Command::new(SLUICE).args(["run", "-c", sql]).current_dir(dir).output()
}

/// The number before "row(s) to '<target>'" in the summary line.
fn reported(stderr: &str, target: &str) -> Option<usize> {
    let summary = stderr.lines().find(|l| l.starts_with("written: "))?;
    let at = summary.find(&format!(" row(s) to '{target}'"))?;
    summary[..at].rsplit([' ', ',']).next()?.parse().ok()
}

#[test]
fn the_inserts_of_a_set_run_together_and_each_writes_its_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = run(&format!("{} {SET}", tables(dir.path(), "rows = '3000'")), dir.path())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Inserting into 'all_clicks', 'checkouts'"), "{stderr}");
    let all = lines(&dir.path().join("all.json"));
    let checkouts = lines(&dir.path().join("checkouts.json"));
    assert_eq!(all.len(), 3000);
    let expected = all.iter().filter(|r| r["event_type"] == "checkout").count();
    assert!(expected > 0);
    assert_eq!(checkouts.len(), expected, "the second INSERT saw the same clicks");
    assert_eq!(reported(&stderr, "all_clicks"), Some(3000), "{stderr}");
    assert_eq!(reported(&stderr, "checkouts"), Some(expected), "{stderr}");
    Ok(())
}

#[test]
fn a_stop_stops_every_insert_and_each_file_holds_what_it_reports() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sql = format!("{} {SET}", tables(dir.path(), "rate = '2000'"));
    let mut child = Command::new(SLUICE).args(["run", "-c", &sql]).current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&dir.path().join("checkouts.json")).is_empty() {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            return Err("no checkout reached its file".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a stop is not a failure: {stderr}");
    assert!(stderr.contains("(stopped)"), "{stderr}");
    for (target, file) in [("all_clicks", "all.json"), ("checkouts", "checkouts.json")] {
        let written = lines(&dir.path().join(file)).len();
        assert!(written > 0);
        assert_eq!(reported(&stderr, target), Some(written), "{target}: {stderr}");
    }
    Ok(())
}

#[test]
fn a_set_whose_insert_cannot_start_starts_none() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sql = format!(
        "{} EXECUTE STATEMENT SET BEGIN INSERT INTO all_clicks SELECT user_id, event_type FROM clicks; \
           INSERT INTO nowhere SELECT user_id FROM clicks; END;",
        tables(dir.path(), "rate = '2000'")
    );
    let out = run(&sql, dir.path())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("nowhere"), "the error names the table: {stderr}");
    let refused = run("EXECUTE STATEMENT SET BEGIN SELECT 1; END;", dir.path())?;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only INSERT INTO"));
    Ok(())
}

/// A set into two lakes, checkpointed under `both` in `dir`.
fn lake_set(dir: &Path) -> String {
    format!(
        "SET 'execution.checkpointing.interval' = '200 ms'; SET 'pipeline.name' = 'both'; \
         SET 'state.checkpoints.dir' = '{checkpoints}'; SET 'parallelism' = '2'; \
         CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, price DOUBLE, ts TIMESTAMP(3), \
           WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'generator', rows = '6000', rate = '3000'); \
         CREATE TABLE all_clicks (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'lake', path = '{all}'); \
         CREATE TABLE checkouts (user_id BIGINT, price DOUBLE, ts TIMESTAMP(3)) WITH (connector = 'lake', path = '{checkouts}'); \
         EXECUTE STATEMENT SET BEGIN \
           INSERT INTO all_clicks SELECT user_id, event_type, ts FROM clicks; \
           INSERT INTO checkouts SELECT user_id, price, ts FROM clicks WHERE event_type = 'checkout'; \
         END; SHOW METRICS;",
        checkpoints = dir.join("checkpoints").display(),
        all = dir.join("all").display(),
        checkouts = dir.join("checkouts").display(),
    )
}

/// Every row of the lake at `path` as pyarrow reads it, sorted.
fn lake_rows(path: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let script = r#"
import sys, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format='parquet').to_table()
print("\n".join(sorted("|".join(str(v) for v in r.values()) for r in t.to_pylist())))
"#;
    let out = Command::new("python3").args(["-c", script, &path.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.lines().filter(|l| !l.is_empty()).map(String::from).collect())
}

#[test]
fn a_crashed_set_resumes_from_its_one_checkpoint_and_each_lake_holds_an_uninterrupted_runs_rows() -> TestResult {
    // The same set, uninterrupted: what each lake must hold.
    let reference = tempfile::tempdir()?;
    let out = run(&lake_set(reference.path()), reference.path())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let metrics = String::from_utf8_lossy(&out.stdout);
    let rows_in = metrics.lines().find(|l| l.contains("rows_in")).unwrap_or_default();
    assert!(rows_in.contains("6000") && !rows_in.contains("12000"), "the two INSERTs read the table once: {metrics}");
    let expected_all = lake_rows(&reference.path().join("all"))?;
    let expected_checkouts = lake_rows(&reference.path().join("checkouts"))?;
    assert_eq!(expected_all.len(), 6000);
    assert!(!expected_checkouts.is_empty());

    // Crashed between a checkpoint's completion and the sinks' commit, then
    // run again to the end.
    let dir = tempfile::tempdir()?;
    let crashed = Command::new(SLUICE).args(["run", "-c", &lake_set(dir.path())]).current_dir(dir.path()).env("SLUICE_CRASH_AT", "before-commit:4").output()?;
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(!crashed.status.success() && stderr.contains("SLUICE_CRASH_AT: crashing at"), "{stderr}");
    let kept: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(kept, vec!["both".to_string()], "one checkpoint for the set");
    assert!(common::runs::latest_checkpoint(&dir.path().join("checkpoints/both")) >= 4);
    let resumed = run(&lake_set(dir.path()), dir.path())?;
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming 'both' from checkpoint"), "{stderr}");
    assert_same_rows(lake_rows(&dir.path().join("all"))?, &expected_all, "all_clicks");
    assert_same_rows(lake_rows(&dir.path().join("checkouts"))?, &expected_checkouts, "checkouts");
    Ok(())
}

/// Asserts that sorted `rows` are `expected`, saying how many differ.
fn assert_same_rows(rows: Vec<String>, expected: &[String], lake: &str) {
    if rows != expected {
        let missing = expected.iter().filter(|r| !rows.contains(r)).count();
        let extra = rows.len() as i64 - (expected.len() as i64 - missing as i64);
        panic!("{lake}: {} rows, expected {}: {missing} missing, {extra} extra or repeated", rows.len(), expected.len());
    }
}

#[test]
fn explain_shows_one_read_of_a_table_for_the_whole_set() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sql = format!(
        "{} EXPLAIN STATEMENT SET BEGIN INSERT INTO all_clicks SELECT user_id, event_type FROM clicks; \
           INSERT INTO checkouts SELECT user_id, price FROM clicks WHERE event_type = 'checkout'; END;",
        tables(dir.path(), "rows = '10'")
    );
    let out = run(&sql, dir.path())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("source: generator").count(), 2, "{stdout}");
    assert!(stdout.contains("read once for every statement that reads it") && stdout.contains("the same read as above"), "{stdout}");
    assert_eq!(stdout.matches("sink: ").count(), 2, "{stdout}");
    Ok(())
}
