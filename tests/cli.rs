//! Drives the `sluice` binary as a user would: scripts with `run`, and the
//! interactive shell through its standard input, Ctrl-C included.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod common;

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
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("| window_start        | event_type       | n      |"), "{stdout}");
    assert!(stdout.contains("| 2024-01-01T00:00:00 | checkout         |"), "{stdout}");
    // 3000 events 100 ms apart span five minutes, four event types each.
    assert!(stderr.contains("20 row(s)"), "{stderr}");
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

/// A running shell whose output is read line by line on a thread (stderr lines
/// prefixed `stderr: `).
struct Shell {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// The shell's HOME, where it keeps its history.
    home: tempfile::TempDir,
}

impl Shell {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with(&[])
    }

    /// Starts `sluice shell` with `args` after `shell`.
    fn start_with(args: &[&str]) -> Result<Self, Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let mut child = Command::new(SLUICE)
            .arg("shell")
            .args(args)
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
        Ok(Shell { child, lines, home })
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

    /// Reads output until every needle has been seen, in any order (stdout and
    /// stderr are read on two threads, so their lines may interleave either way).
    fn expect_all(&mut self, needles: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let mut seen = String::new();
        let mut missing: Vec<&str> = needles.to_vec();
        while !missing.is_empty() {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("no lines containing {missing:?} in:\n{seen}"))?;
            missing.retain(|n| !line.contains(n));
            seen.push_str(&line);
            seen.push('\n');
        }
        Ok(seen)
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
    shell.expect_all(&["| 2024-01-01T00:00:00 | 600    |", "stderr: 1 row(s)", "stderr: Time: "])?;
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
    shell.expect("(stopped)")?;
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
// Queries you can leave running, at the command line (issue 14, items 3, 4 and
// 20): interrupts while rows flow, a closed stdout, status lines on stderr,
// colour, the shell's statement ends and history, warnings at start.
// ---------------------------------------------------------------------------

/// An unbounded generator that produces as fast as it can.
const FAST: &str = "CREATE TABLE fast (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'generator');";

/// Sends `signal` (INT, TERM) to `child`.
#[cfg(unix)]
fn signal(child: &std::process::Child, signal: &str) -> TestResult {
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status()?;
    assert!(status.success(), "kill -{signal} failed");
    Ok(())
}

/// Waits up to `limit` for `child` to exit; kills it and fails if it does not.
fn exits_within(child: &mut std::process::Child, limit: Duration, what: &str) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not exit within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `sluice run -c sql` with stdout and stderr piped.
fn spawn_run(sql: &str) -> std::io::Result<std::process::Child> {
    Command::new(SLUICE).args(["run", "-c", sql]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
}

/// Reads `child`'s stdout to its end on a thread, counting table rows (lines
/// starting `| `, the header included); `flowing` gets a message once 1,000
/// lines have come.
fn count_table_lines(child: &mut std::process::Child) -> Result<(std::thread::JoinHandle<usize>, mpsc::Receiver<()>), Box<dyn std::error::Error>> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, flowing) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rows = 0;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("| ") {
                rows += 1;
            }
            if rows == 1_000 {
                let _ = tx.send(());
            }
        }
        rows
    });
    Ok((reader, flowing))
}

fn stderr_of(child: &mut std::process::Child) -> Result<String, Box<dyn std::error::Error>> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().ok_or("no stderr")?, &mut text)?;
    Ok(text)
}

/// One SIGINT stops `run` while rows pour out (a listener made anew for each
/// batch missed it), and the summary counts exactly the rows printed.
#[cfg(unix)]
#[test]
fn sigint_stops_run_while_rows_flow() -> TestResult {
    let mut child = spawn_run(&format!("{FAST} SELECT user_id, event_type FROM fast;"))?;
    let (reader, flowing) = count_table_lines(&mut child)?;
    flowing.recv_timeout(Duration::from_secs(60)).map_err(|_| "no rows came")?;
    signal(&child, "INT")?;
    let status = exits_within(&mut child, Duration::from_secs(30), "sluice run after one SIGINT")?;
    let printed = reader.join().map_err(|_| "reader panicked")? - 1; // less the header
    let stderr = stderr_of(&mut child)?;
    assert!(status.success(), "a stop is not a failure: {stderr}");
    assert!(stderr.contains(&format!("\n{printed} row(s) (stopped)")), "printed {printed} rows: {stderr}");
    Ok(())
}

/// SIGTERM stops an INSERT as gracefully as Ctrl-C: the JSON file holds exactly
/// the rows the summary reports.
#[cfg(unix)]
#[test]
fn sigterm_stops_an_insert_and_the_file_holds_what_it_reports() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("out.json");
    let sql = format!(
        "CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'generator', rate = '2000'); \
         CREATE TABLE out (user_id BIGINT, event_type VARCHAR) WITH (connector = 'file', path = '{}', format = 'json'); \
         INSERT INTO out SELECT user_id, event_type FROM clicks;",
        path.display()
    );
    let mut child = spawn_run(&sql)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Wait until some rows have reached the file: the stop has something to keep.
    while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
        if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            return Err(format!("no rows reached the file: {}", stderr_of(&mut child)?).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, "TERM")?;
    let status = exits_within(&mut child, Duration::from_secs(30), "sluice run after SIGTERM")?;
    let stderr = stderr_of(&mut child)?;
    assert!(status.success(), "a stop is not a failure: {stderr}");
    let summary = stderr.lines().find(|l| l.contains("written to 'out' (stopped)")).ok_or_else(|| format!("no summary: {stderr}"))?;
    let reported: usize = summary.split_whitespace().next().ok_or("empty summary")?.parse()?;
    let lines = std::fs::read_to_string(&path)?.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(reported > 0, "{stderr}");
    assert_eq!(lines, reported, "{stderr}");
    Ok(())
}

/// `sluice run ... | head -5`: once the reader closes the pipe the query ends,
/// quietly and successfully, whether rows go through the table printer or a
/// stdout sink.
#[test]
fn a_closed_stdout_ends_the_query_quietly() -> TestResult {
    for sql in [
        format!("{FAST} SELECT user_id, event_type FROM fast;"),
        format!(
            "{FAST} CREATE TABLE out (user_id BIGINT, event_type VARCHAR) WITH (connector = 'stdout', format = 'json'); \
             INSERT INTO out SELECT user_id, event_type FROM fast;"
        ),
    ] {
        let mut child = spawn_run(&sql)?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..5 {
            lines.next().ok_or("stdout ended early")??;
        }
        drop(lines);
        let status = exits_within(&mut child, Duration::from_secs(10), "sluice run writing to a closed pipe")?;
        let stderr = stderr_of(&mut child)?;
        assert!(status.success(), "{sql}: {stderr}");
        assert!(!stderr.contains("error"), "{sql}: {stderr}");
    }
    Ok(())
}

/// Result rows alone go to stdout; status lines and summaries go to stderr.
#[test]
fn stdout_holds_only_rows() -> TestResult {
    let sql = format!(
        "{CLICKS} CREATE TABLE out (event_type VARCHAR, n BIGINT) WITH (connector = 'stdout', format = 'json'); \
         INSERT INTO out SELECT event_type, count(*) FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' HOUR)) \
         GROUP BY window_start, window_end, event_type;"
    );
    let out = Command::new(SLUICE).args(["run", "--timing", "-c", &sql]).output()?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 4, "{stdout}");
    for status in ["Table 'clicks' created", "Inserting into 'out'", "4 row(s) written to 'out'", "Time: "] {
        assert!(stderr.contains(status), "{status:?} not in {stderr}");
    }
    Ok(())
}

/// A script may start with a comment (`--` is not an option).
#[test]
fn a_script_may_start_with_a_comment() -> TestResult {
    let out = Command::new(SLUICE).args(["run", "-c", "-- a note\nSELECT 41 + 1 AS answer;"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout)?.contains("| 42 "));
    Ok(())
}

/// Log lines carry no colour codes when stderr is not a terminal.
#[test]
fn no_colour_codes_in_a_pipe() -> TestResult {
    let out = Command::new(SLUICE).args(["run", "-c", "SELECT 1;"]).env("SLUICE_LOG", "debug").output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DEBUG"), "no log lines to check: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    Ok(())
}

/// An unbounded GROUP BY without a TTL is warned about when it starts; with a
/// TTL it is not.
#[test]
fn unbounded_state_is_warned_about_at_start() -> TestResult {
    let query = "SELECT event_type, count(*) AS n FROM clicks GROUP BY event_type;";
    let out = Command::new(SLUICE).args(["run", "-c", &format!("{CLICKS} {query}")]).output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{stderr}");
    let warning = stderr.lines().find(|l| l.starts_with("warning: ")).ok_or_else(|| format!("no warning: {stderr}"))?;
    assert!(warning.contains("UNBOUNDED") && warning.contains("table.exec.state.ttl"), "{warning}");
    let out = Command::new(SLUICE).args(["run", "-c", &format!("{CLICKS} SET 'table.exec.state.ttl' = '1 h'; {query}")]).output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    Ok(())
}

/// A `;` inside a string or comment does not end a statement; a comment after
/// the `;` does not keep it open.
#[test]
fn the_shell_ends_statements_at_a_real_semicolon() -> TestResult {
    let mut shell = Shell::start()?;
    shell.send("SELECT length('a;\nb') AS n1;\n")?;
    shell.expect("| 4 ")?;
    shell.send("SELECT 5 /* not the end;\n */ AS n2;\n")?;
    shell.expect("| 5 ")?;
    shell.send("SELECT 7 AS n3; -- a note\n")?;
    shell.expect("| 7 ")?;
    shell.send("\\q\n")?;
    assert!(shell.child.wait()?.success());
    Ok(())
}

/// History is saved after each entry, not only when the shell exits.
#[test]
fn the_shell_saves_history_as_it_goes() -> TestResult {
    let mut shell = Shell::start()?;
    shell.send("SELECT 40 + 2 AS answer;\n")?;
    shell.expect("| 42 ")?;
    shell.send("\\timing\n")?;
    shell.expect("Timing is on.")?;
    let history = std::fs::read_to_string(shell.home.path().join(".sluice_history"))?;
    assert!(history.contains("SELECT 40 + 2 AS answer;") && history.contains("\\timing"), "{history}");
    shell.child.kill()?;
    shell.child.wait()?;
    Ok(())
}

/// In the shell, local or on a server, one Ctrl-C stops a query whose rows
/// pour out, and the shell carries on.
#[cfg(unix)]
#[test]
fn sigint_stops_a_flowing_query_in_the_shell() -> TestResult {
    let mut shell = Shell::start()?;
    sigint_stops_a_flowing_query(&mut shell, "(stopped)", ("SELECT 40 + 2 AS answer;", "| 42 "))?;

    let server = Server::start()?;
    let mut shell = Shell::start_with(&["--server", &server.url, "--token", "cli-admin"])?;
    sigint_stops_a_flowing_query(&mut shell, "(stopped); query", ("\\d", "| fast "))
}

/// A `sluice serve` on a free port, with an `admin` token `cli-admin`; killed when dropped.
struct Server {
    url: String,
    _process: common::KillOnDrop,
    _state: tempfile::TempDir,
}

impl Server {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let state = tempfile::tempdir()?;
        let mut serve = Command::new(SLUICE)
            .args(["serve", "--listen", "127.0.0.1:0", "--token", "admin:cli-admin", "--state-dir"])
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(serve.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let process = common::KillOnDrop(serve);
        let addr = line.trim().strip_prefix("listening on ").ok_or_else(|| format!("unexpected: {line}"))?;
        Ok(Server { url: format!("http://{addr}"), _process: process, _state: state })
    }
}

/// Starts a fast query in `shell`, interrupts it once rows come, expects
/// `stopped`, then that the shell still answers (`then`: input, expected output).
#[cfg(unix)]
fn sigint_stops_a_flowing_query(shell: &mut Shell, stopped: &str, then: (&str, &str)) -> TestResult {
    shell.send(&format!("{FAST}\n"))?;
    shell.expect("created")?;
    shell.send("SELECT user_id, event_type FROM fast;\n")?;
    shell.expect("| event_type ")?;
    signal(&shell.child, "INT")?;
    shell.expect(stopped)?;
    shell.send(&format!("{}\n", then.0))?;
    shell.expect(then.1)?;
    shell.send("\\q\n")?;
    let status = exits_within(&mut shell.child, Duration::from_secs(30), "the shell after \\q")?;
    assert!(status.success());
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

/// With Flink's fixed-delay restart strategy a failed query runs again, as many
/// times as it says, then fails for good (each run emits the rows before the
/// bad line again: without checkpoints a restart starts from the beginning).
#[test]
fn a_failed_query_restarts_as_many_times_as_the_strategy_says() -> TestResult {
    let out = run_in_repo(
        "SET 'restart-strategy.type' = 'fixed-delay'; \
         SET 'restart-strategy.fixed-delay.attempts' = '2'; \
         SET 'restart-strategy.fixed-delay.delay' = '100 ms'; \
         CREATE TABLE orders (user_id VARCHAR, amount BIGINT, ts TIMESTAMP(3)) \
         WITH (connector = 'file', path = 'tests/data/bad/orders.jsonl', 'batch.size' = '1'); \
         CREATE TABLE out (user_id VARCHAR, amount BIGINT) WITH (connector = 'stdout', format = 'json'); \
         INSERT INTO out SELECT user_id, amount FROM orders;",
    )?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    assert!(!out.status.success(), "it fails once the attempts are used: {stdout}");
    assert!(stderr.contains("tests/data/bad/orders.jsonl:3: "), "{stderr}");
    let rows = stdout.lines().filter(|l| l.starts_with('{')).count();
    assert_eq!(rows, 6, "the two rows before the bad line, in the first run and two restarts: {stdout}");
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

/// `sluice ingest` checks its tables and settings before it connects to
/// anything, and names what is wrong: the table it was pointed at, the
/// option, or the checkpoint interval it cannot do without.
#[test]
fn ingest_names_what_is_wrong_before_it_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sql = dir.path().join("ingest.sql");
    let lake = dir.path().join("lake");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE clicks (id BIGINT) WITH (connector = 'kafka', topic = 'clicks', 'bootstrap.servers' = '127.0.0.1:1', \
               'scan.bounded.mode' = 'latest-offset'); \
             CREATE TABLE stream (id BIGINT) WITH (connector = 'kafka', topic = 'clicks', 'bootstrap.servers' = '127.0.0.1:1'); \
             CREATE TABLE events (id BIGINT) WITH (connector = 'file', path = '{events}', format = 'json'); \
             CREATE TABLE lake (id BIGINT) WITH (connector = 'lake', path = '{lake}');",
            events = dir.path().join("events.jsonl").display(),
            lake = lake.display()
        ),
    )?;
    let ingest = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let out = Command::new(SLUICE).arg("ingest").arg("--sql").arg(&sql).args(args).current_dir(dir.path()).output()?;
        assert!(!out.status.success(), "{args:?} must fail");
        Ok(String::from_utf8(out.stderr)?)
    };
    let err = ingest(&["--from", "events", "--to", "lake"])?;
    assert!(err.contains("'file'") && err.contains("--from"), "{err}");
    let err = ingest(&["--from", "clicks", "--to", "events"])?;
    assert!(err.contains("--to"), "{err}");
    // Bounded, from the group's offsets: a run would replace the last one's files.
    let err = ingest(&["--from", "clicks", "--to", "lake"])?;
    assert!(err.contains("scan.bounded.mode") && err.contains("scan.startup.mode"), "{err}");
    let err = ingest(&["--from", "stream", "--to", "lake", "--checkpoint-interval", "0"])?;
    assert!(err.contains("checkpointing.interval"), "{err}");
    let err = ingest(&["--from", "stream", "--to", "lake", "--checkpoint-interval", "often"])?;
    assert!(err.contains("--checkpoint-interval") && err.contains("often"), "{err}");
    assert!(!dir.path().join(".sluice").exists(), "nothing started, no checkpoint written");
    Ok(())
}

/// A changelog (`op` first, then key and count) replayed into what it leaves:
/// per key, its last `+I`/`+U` count, unless a `-D` removed it.
fn replay(changes: impl IntoIterator<Item = (String, i64, i64)>) -> Result<std::collections::BTreeMap<i64, i64>, String> {
    let mut rows = std::collections::BTreeMap::new();
    for (op, k, n) in changes {
        match op.as_str() {
            "+I" | "+U" => {
                rows.insert(k, n);
            }
            "-U" | "-D" if rows.get(&k) == Some(&n) => {
                rows.remove(&k);
            }
            other => return Err(format!("{other} {k} {n} retracts a row that is not there")),
        }
    }
    Ok(rows)
}

/// `sluice run --format` prints an updating query's changes so that a CSV or
/// JSON parser reads them back: `op` is a column (a field), the rest as typed.
#[test]
fn run_formats_keep_a_changelog_parsable() -> TestResult {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    let sql = format!("{CLICKS} SELECT user_id % 5 AS k, count(*) AS n FROM clicks GROUP BY user_id % 5;");
    let run = |format: &str| -> Result<String, Box<dyn std::error::Error>> {
        let out = Command::new(SLUICE).args(["run", "--format", format, "-c", &sql]).output()?;
        assert!(out.status.success(), "--format {format}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let field = |v: &serde_json::Value, name: &str| v[name].as_i64().ok_or(format!("no {name} in {v}"));
    let from_json = |rows: Vec<serde_json::Value>| -> Result<Vec<(String, i64, i64)>, String> {
        rows.iter().map(|v| Ok((v["op"].as_str().ok_or(format!("no op in {v}"))?.to_string(), field(v, "k")?, field(v, "n")?))).collect()
    };

    let csv = run("csv")?;
    assert!(csv.starts_with("op,k,n\n"), "{csv}");
    let schema = Arc::new(Schema::new(vec![
        Field::new("op", DataType::Utf8, false),
        Field::new("k", DataType::Int64, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let mut changes = Vec::new();
    for batch in arrow::csv::ReaderBuilder::new(schema).with_header(true).build(std::io::Cursor::new(csv.as_bytes()))? {
        let batch = batch?;
        let (op, k, n) = (batch.column(0).as_string::<i32>(), batch.column(1).as_primitive::<Int64Type>(), batch.column(2).as_primitive::<Int64Type>());
        changes.extend((0..batch.num_rows()).map(|i| (op.value(i).to_string(), k.value(i), n.value(i))));
    }
    let ndjson = run("ndjson")?;
    let lines: Vec<serde_json::Value> = ndjson.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let json: Vec<serde_json::Value> = serde_json::from_str(&run("json")?)?;
    for (format, changes) in [("csv", changes), ("ndjson", from_json(lines)?), ("json", from_json(json)?)] {
        assert!(changes.iter().any(|(op, ..)| op == "-U"), "{format}: an updating query retracts");
        let rows = replay(changes)?;
        assert_eq!(rows.len(), 5, "{format}: one row per key");
        assert_eq!(rows.values().sum::<i64>(), 3000, "{format}: every click counted once");
    }
    Ok(())
}

/// The stdout connector's `format = 'csv'`: a header, then the changes.
#[test]
fn stdout_sink_writes_csv() -> TestResult {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    let sql = format!(
        "{CLICKS} CREATE TABLE out (event_type VARCHAR, n BIGINT) WITH (connector = 'stdout', format = 'csv'); \
         INSERT INTO out SELECT event_type, count(*) FROM clicks GROUP BY event_type;"
    );
    let out = Command::new(SLUICE).args(["run", "-c", &sql]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(stdout.starts_with("op,event_type,n\n"), "{stdout}");
    let schema = Arc::new(Schema::new(vec![
        Field::new("op", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let mut last = std::collections::BTreeMap::new();
    for batch in arrow::csv::ReaderBuilder::new(schema).with_header(true).build(std::io::Cursor::new(stdout.as_bytes()))? {
        let batch = batch?;
        let (op, kind, n) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>(), batch.column(2).as_primitive::<Int64Type>());
        for i in (0..batch.num_rows()).filter(|i| op.value(*i).starts_with('+')) {
            last.insert(kind.value(i).to_string(), n.value(i));
        }
    }
    assert_eq!(last.len(), 4, "{stdout}");
    assert_eq!(last.values().sum::<i64>(), 3000, "{stdout}");
    Ok(())
}

/// The shell takes `--format`, and `\pset format` (psql's and datafusion-cli's
/// command) changes it.
#[test]
fn the_shell_prints_in_the_format_asked_for() -> TestResult {
    let mut shell = Shell::start_with(&["--format", "ndjson"])?;
    shell.send("SELECT 40 + 2 AS answer, 'a,b' AS s, NULL AS nothing;\n")?;
    let line = shell.expect("answer")?;
    let row: serde_json::Value = serde_json::from_str(line.lines().find(|l| l.starts_with('{')).ok_or("no row")?)?;
    assert_eq!(row, serde_json::json!({"answer": 42, "s": "a,b", "nothing": null}));
    shell.send("\\pset format csv\n")?;
    shell.expect("Output format is csv.")?;
    shell.send("SELECT 40 + 2 AS answer, 'a,b' AS s;\n")?;
    shell.expect_all(&["answer,s", "42,\"a,b\""])?;
    shell.send("\\format json\n")?;
    shell.expect("Output format is json.")?;
    shell.send("\\pset format xml\n")?;
    shell.expect("unknown format 'xml' (one of table, csv, json, ndjson)")?;
    shell.send("\\q\n")?;
    assert!(shell.child.wait()?.success());
    Ok(())
}

/// The shell on a server prints rows in its format as a local one does: JSON
/// rows with every column in order (NULLs too), CSV with a header.
#[test]
fn the_remote_shell_prints_in_the_format_asked_for() -> TestResult {
    let server = Server::start()?;
    let mut shell = Shell::start_with(&["--server", &server.url, "--token", "cli-admin", "--format", "ndjson"])?;
    shell.send("CREATE TABLE few (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'generator', rows = '300');\n")?;
    shell.expect("created")?;
    shell.send("SELECT user_id % 3 AS k, count(*) AS n, CAST(NULL AS VARCHAR) AS nothing FROM few GROUP BY user_id % 3;\n")?;
    // The summary may overtake the last rows (stdout and stderr are read apart).
    let mut out = shell.expect("row(s)")?;
    let summary = out.lines().find(|l| l.contains("row(s)")).unwrap_or_default();
    let count: usize = summary.trim_start_matches("stderr: ").split(' ').next().unwrap_or_default().parse()?;
    while out.lines().filter(|l| l.starts_with('{')).count() < count {
        out.push_str(&shell.expect("{")?);
    }
    let rows: Vec<serde_json::Value> = out.lines().filter(|l| l.starts_with('{')).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let keys: Vec<Vec<&String>> = rows.iter().filter_map(|r| r.as_object()).map(|o| o.keys().collect()).collect();
    assert!(keys.iter().all(|k| k.len() == 4 && k.iter().any(|k| *k == "nothing")), "{out}");
    let field = |v: &serde_json::Value, name: &str| v[name].as_i64().ok_or(format!("no {name} in {v}"));
    let changes = rows.iter().map(|v| Ok((v["op"].as_str().ok_or("no op")?.to_string(), field(v, "k")?, field(v, "n")?)));
    let state = replay(changes.collect::<Result<Vec<_>, String>>()?)?;
    assert_eq!(state.values().sum::<i64>(), 300, "{out}");
    shell.send("\\pset format csv\n")?;
    shell.expect("Output format is csv.")?;
    shell.send("SHOW TABLES;\n")?;
    shell.expect_all(&["name,kind,connector", "few,table,generator"])?;
    shell.send("\\q\n")?;
    assert!(shell.child.wait()?.success());
    Ok(())
}

/// `--format json` on a query that never ends: the array is closed when
/// Ctrl-C stops it, so what was printed parses, and holds the rows counted.
#[cfg(unix)]
#[test]
fn a_stopped_query_leaves_a_whole_json_array() -> TestResult {
    let sql = format!("{FAST} SELECT user_id, event_type FROM fast;");
    let mut child = Command::new(SLUICE).args(["run", "--format", "json", "-c", &sql]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut text = String::new();
    while text.lines().count() < 100 {
        if stdout.read_line(&mut text)? == 0 {
            return Err(format!("the query ended by itself: {text}").into());
        }
    }
    signal(&child, "INT")?;
    std::io::Read::read_to_string(&mut stdout, &mut text)?;
    let status = exits_within(&mut child, Duration::from_secs(30), "sluice run after one SIGINT")?;
    let stderr = stderr_of(&mut child)?;
    assert!(status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    assert!(stderr.contains(&format!("\n{} row(s) (stopped)", rows.len())), "{} rows parsed: {stderr}", rows.len());
    assert!(rows.iter().all(|r| r["user_id"].is_i64() && r["event_type"].is_string()));
    Ok(())
}

/// Batch mode: `count(*)` over a Parquet directory prints its one final row,
/// where streaming mode prints the changelog of the count growing.
#[test]
fn batch_mode_prints_final_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let write = format!(
        "{CLICKS} CREATE TABLE lake (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) \
         WITH (connector = 'lake', path = '{}', 'partition.by' = 'event_type', 'rollover.rows' = '100'); \
         INSERT INTO lake SELECT user_id, event_type, ts FROM clicks;",
        lake.display()
    );
    let out = Command::new(SLUICE).args(["run", "-c", &write]).output()?;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let table = format!(
        "CREATE TABLE pq (user_id BIGINT, ts TIMESTAMP(3)) \
         WITH (connector = 'file', path = '{}', format = 'parquet', 'batch.size' = '100');",
        lake.display()
    );
    let count = |mode: &str| -> Result<(String, String), Box<dyn std::error::Error>> {
        let sql = format!("SET 'execution.runtime-mode' = '{mode}'; {table} SELECT count(*) AS n FROM pq;");
        let out = Command::new(SLUICE).args(["run", "--format", "csv", "-c", &sql]).output()?;
        let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
        assert!(out.status.success(), "stderr: {stderr}");
        Ok((stdout, stderr))
    };
    let (stdout, stderr) = count("batch")?;
    assert_eq!(stdout, "n\n3000\n", "{stderr}");
    assert!(stderr.contains("1 row(s)"), "{stderr}");
    let (stdout, _) = count("streaming")?;
    assert!(stdout.starts_with("op,n\n+I,"), "{stdout}");
    assert!(stdout.lines().count() > 3 && stdout.ends_with("+U,3000\n"), "{stdout}");
    // An unbounded table is refused by name.
    let sql = "SET 'execution.runtime-mode' = 'batch'; \
               CREATE TABLE endless (user_id BIGINT, ts TIMESTAMP(3)) WITH (connector = 'generator'); \
               SELECT count(*) FROM endless;";
    let out = Command::new(SLUICE).args(["run", "-c", sql]).output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(!out.status.success());
    assert!(stderr.contains("table 'endless' (connector 'generator') is unbounded"), "{stderr}");
    Ok(())
}
