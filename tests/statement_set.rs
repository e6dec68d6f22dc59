//! `EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END`, as a user runs
//! it with `sluice run`: the INSERTs run together and end together, a stop
//! stops them all with what each reports written in its file, a statement
//! that cannot start starts none, and each keeps checkpoints of its own.

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

/// Under `pipeline.name`, each INSERT's checkpoints go under the name and its
/// target, so each resumes from its own.
#[test]
fn each_insert_of_a_set_keeps_and_resumes_its_own_checkpoints() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sql = format!(
        "SET 'execution.checkpointing.interval' = '200 ms'; SET 'pipeline.name' = 'both'; {} {SET}",
        tables(dir.path(), "rows = '3000'")
    );
    let first = run(&sql, dir.path())?;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for name in ["both-all_clicks", "both-checkouts"] {
        let kept = dir.path().join(".sluice/checkpoints").join(name);
        assert!(std::fs::read_dir(&kept).map(|d| d.count()).unwrap_or(0) > 0, "no checkpoints under {}", kept.display());
    }
    Ok(())
}
