//! Drives the `sluice` binary as a user would: scripts with `run`, and the
//! interactive shell through its standard input, Ctrl-C included.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

const CLICKS: &str = "CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, price DOUBLE, ts TIMESTAMP(3), \
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'generator', rows = '3000');";

#[test]
fn run_prints_window_counts_as_a_table() -> TestResult {
    let sql = format!(
        "{CLICKS} SELECT window_start, event_type, count(*) AS n \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type;"
    );
    let out = Command::new(SLUICE).args(["run", "-c", &sql]).output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| window_start        | event_type       | n      |"), "{stdout}");
    assert!(stdout.contains("| 2024-01-01T00:00:00 | checkout         |"), "{stdout}");
    // 3000 events 100 ms apart span five minutes, four event types each.
    assert!(stdout.contains("20 row(s)"), "{stdout}");
    Ok(())
}

#[test]
fn run_reports_errors_and_fails() -> TestResult {
    let out = Command::new(SLUICE).args(["run", "-c", "SELEC 1;"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("syntax error"));
    let out = Command::new(SLUICE).args(["run", "/no/such/script.sql"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("/no/such/script.sql"));
    Ok(())
}

#[test]
fn run_writes_json_lines_to_stdout_sink() -> TestResult {
    let sql = format!(
        "{CLICKS} CREATE TABLE out (event_type VARCHAR, n BIGINT) WITH (connector = 'stdout', format = 'json'); \
         INSERT INTO out SELECT event_type, count(*) FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' HOUR)) \
         GROUP BY window_start, window_end, event_type;"
    );
    let out = Command::new(SLUICE).args(["run", "-c", &sql]).output()?;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout)?;
    let total: i64 = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["n"].as_i64().unwrap_or(0)))
        .sum::<Result<i64, _>>()?;
    assert_eq!(total, 3000, "{stdout}");
    Ok(())
}

/// A running shell whose output is read line by line on a thread.
struct Shell {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let mut child = Command::new(SLUICE)
            .arg("shell")
            .env("HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        std::mem::forget(home);
        Ok(Shell { child, lines })
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        let stdin = self.child.stdin.as_mut().ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()
    }

    /// Reads output until a line contains `needle`; everything read is returned.
    fn expect(&mut self, needle: &str) -> Result<String, Box<dyn std::error::Error>> {
        let mut seen = String::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("no line containing {needle:?} in:\n{seen}"))?;
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return Ok(seen);
            }
        }
    }
}

#[test]
fn shell_runs_multiline_statements_and_backslash_commands() -> TestResult {
    let mut shell = Shell::start()?;
    shell.send("CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3),\n")?;
    shell.send("  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)\n")?;
    shell.send("WITH (connector = 'generator', rows = '600');\n")?;
    shell.expect("Table 'clicks' created")?;
    shell.send("\\d\n")?;
    shell.expect("| clicks ")?;
    shell.send("\\d clicks\n")?;
    shell.expect("ts - INTERVAL '2' SECOND")?;
    shell.send("\\timing\n")?;
    shell.expect("Timing is on.")?;
    shell.send("SELECT window_start, count(*) AS n FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE))\n")?;
    shell.send("GROUP BY window_start, window_end;\n")?;
    let out = shell.expect("row(s)")?;
    assert!(out.contains("| 2024-01-01T00:00:00 | 600    |"), "{out}");
    shell.expect("Time: ")?;
    shell.send("SELECT nope FROM clicks;\n")?;
    let out = shell.expect("stderr: error:")?;
    assert!(out.contains("nope"), "{out}");
    shell.send("\\q\n")?;
    assert!(shell.child.wait()?.success());
    Ok(())
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_the_running_query_not_the_shell() -> TestResult {
    let mut shell = Shell::start()?;
    shell.send(
        "CREATE TABLE clicks (event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
         WITH (connector = 'generator', rate = '2000', 'interval.ms' = '1000', 'disorder.ms' = '0');\n",
    )?;
    shell.expect("created")?;
    shell.send(
        "SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end;\n",
    )?;
    // Unbounded input: windows keep closing until the query is cancelled.
    shell.expect("| 2024-01-01T00:01:00 |")?;
    let status = Command::new("kill").args(["-INT", &shell.child.id().to_string()]).status()?;
    assert!(status.success());
    shell.expect("(cancelled)")?;
    shell.send("SELECT 40 + 2 AS answer;\n")?;
    shell.expect("| 42 ")?;
    shell.send("\\q\n")?;
    assert!(shell.child.wait()?.success());
    Ok(())
}

#[test]
fn a_failing_expression_stops_an_unbounded_query_with_its_error() -> TestResult {
    let sql = "CREATE TABLE clicks (item_id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
               WITH (connector = 'generator'); \
               SELECT window_start, sum(100 / (item_id - item_id)) \
               FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
               GROUP BY window_start, window_end;";
    let out = Command::new(SLUICE).args(["run", "-c", sql]).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.to_lowercase().contains("divide by zero"), "{stderr}");
    Ok(())
}

/// Builds the example plug-in crate and returns its shared library.
fn example_plugin() -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(["build", "-p", "sluice-example-udfs"]).status()?;
    assert!(status.success(), "building the example plug-in failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let name = format!("{}sluice_example_udfs{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    Ok(target.join("debug").join(name))
}

#[test]
fn native_plugin_functions_work_in_windows_and_panics_fail_only_their_query() -> TestResult {
    let lib = example_plugin()?;
    let udfs = [format!("discount={}", lib.display()), format!("geo_mean={}", lib.display())];
    let sql = format!(
        "{CLICKS} SELECT window_start, round(geo_mean(price), 6) = round(exp(avg(ln(price))), 6) AS geo_ok, \
         round(sum(discount(price, 25)), 4) = round(sum(price * 0.75), 4) AS discount_ok, count(*) AS n \
         FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '2' MINUTE)) \
         GROUP BY window_start, window_end;"
    );
    let out = Command::new(SLUICE)
        .args(["--udf", &udfs[0], "--udf", &udfs[1], "run", "-c", &sql])
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| 20")).collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    assert!(rows.iter().all(|r| r.matches("| true ").count() == 2), "{stdout}");

    // Session windows merge the aggregate's state across sessions that join up.
    let sql = format!(
        "{CLICKS} SELECT user_id, round(geo_mean(price), 6) = round(exp(avg(ln(price))), 6) AS geo_ok \
         FROM TABLE(SESSION(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
         GROUP BY window_start, window_end, user_id;"
    );
    let out = Command::new(SLUICE).args(["--udf", &udfs[1], "run", "-c", &sql]).output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let sessions: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ") && !l.contains("geo_ok")).collect();
    assert!(sessions.len() > 50, "{stdout}");
    assert!(sessions.iter().all(|r| r.contains("| true ")), "{stdout}");

    // In the shell: a panicking call fails its query, the shell carries on.
    let mut shell = Shell::start()?;
    shell.send(&format!("CREATE FUNCTION discount LANGUAGE rust AS '{}';\n", lib.display()))?;
    shell.expect("Function 'discount' (scalar) loaded")?;
    shell.send(&format!("{CLICKS}\n"))?;
    shell.expect("created")?;
    shell.send(
        "SELECT window_start, sum(discount(price, 150)) FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), \
         INTERVAL '1' MINUTE)) GROUP BY window_start, window_end;\n",
    )?;
    shell.expect("function discount panicked: discount of 150% is more than the price")?;
    shell.send("SELECT round(discount(80.0, 25), 1) AS d;\n")?;
    shell.expect("| 60.0 ")?;
    shell.send("\\q\n")?;
    assert!(shell.child.wait()?.success());
    Ok(())
}

#[test]
fn bad_plugin_libraries_are_refused_with_the_function_named() -> TestResult {
    let lib = example_plugin()?;
    for (sql, expected) in [
        (format!("CREATE FUNCTION nope LANGUAGE rust AS '{}';", lib.display()), "exports neither sluice_scalar_udf_nope"),
        ("CREATE FUNCTION f LANGUAGE rust AS '/no/such/lib.so';".to_string(), "function 'f': cannot load library /no/such/lib.so"),
        ("CREATE FUNCTION f LANGUAGE rust AS '/etc/hostname';".to_string(), "function 'f': cannot load library"),
        ("CREATE FUNCTION f LANGUAGE python AS 'x.py';".to_string(), "LANGUAGE python is not supported"),
    ] {
        let out = Command::new(SLUICE).args(["run", "-c", &sql]).output()?;
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr)?;
        assert!(stderr.contains(expected), "{sql}: {stderr}");
    }
    let out = Command::new(SLUICE).args(["--udf", "geo_mean", "run", "-c", "SELECT 1;"]).output()?;
    assert!(String::from_utf8(out.stderr)?.contains("--udf expects NAME=PATH"));
    Ok(())
}

// ---------------------------------------------------------------------------
// Bad input and errors in the user's terms (issue 14, items 15 to 20).
// ---------------------------------------------------------------------------

/// Runs `sql` from the repository root (where `tests/data` is).
fn run_in_repo(sql: &str) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    Ok(Command::new(SLUICE).args(["run", "-c", sql]).current_dir(env!("CARGO_MANIFEST_DIR")).output()?)
}

/// A bad JSON line fails the query naming the file and line, after the rows
/// before it came out (one row per batch, so they are sent before the failure).
#[test]
#[ignore = "needs the runtime to drain the pipeline before reporting a source's error (see the lead's runtime work)"]
fn a_bad_line_fails_the_query_after_the_rows_before_it() -> TestResult {
    let out = run_in_repo(
        "CREATE TABLE orders (user_id VARCHAR, amount BIGINT, ts TIMESTAMP(3)) \
         WITH (connector = 'file', path = 'tests/data/bad/orders.jsonl', 'batch.size' = '1'); \
         CREATE TABLE out (user_id VARCHAR, amount BIGINT) WITH (connector = 'stdout', format = 'json'); \
         INSERT INTO out SELECT user_id, amount FROM orders;",
    )?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("tests/data/bad/orders.jsonl:3: "), "{stderr}");
    let users: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["user_id"].to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(users, ["\"a\"", "\"b\""], "{stdout}");
    Ok(())
}

/// An expression that fails on one row names the operator and shows the row.
#[test]
fn a_failing_row_is_named_with_its_values() -> TestResult {
    let out = run_in_repo(
        "CREATE TABLE orders (user_id VARCHAR, amount BIGINT, ts TIMESTAMP(3)) \
         WITH (connector = 'file', path = 'tests/data/orders.csv', format = 'csv'); \
         SELECT user_id, 10 / (amount - 3) AS share FROM orders;",
    )?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(!out.status.success());
    // The row as the step saw it: which columns it holds is the plan's business.
    let row = stderr.split(" in row ").nth(1).ok_or(stderr.clone())?;
    assert!(stderr.contains("Divide by zero error in row {"), "{stderr}");
    assert!(row.contains("user_id='a'") && row.contains("amount=3"), "{stderr}");
    Ok(())
}

/// A statement nesting expressions too deep (2,000 ORs) is refused with an
/// error instead of overflowing the stack; one just under the limit runs.
#[test]
fn deep_expressions_are_an_error_not_a_crash() -> TestResult {
    let counts = |terms: usize| {
        format!(
            "{CLICKS} SELECT window_start, count(*) AS n FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' HOUR)) \
             WHERE {} GROUP BY window_start, window_end;",
            vec!["event_type <> 'none'"; terms].join(" OR ")
        )
    };
    let out = Command::new(SLUICE).args(["run", "-c", &counts(2_000)]).output()?;
    assert_eq!(out.status.code(), Some(1), "an error exit, not a signal");
    assert!(String::from_utf8(out.stderr)?.contains("nests expressions more than 1000 deep"));
    let out = Command::new(SLUICE).args(["run", "-c", &counts(900)]).output()?;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout)?.contains("| 2024-01-01T00:00:00 | 3000 "));
    Ok(())
}
