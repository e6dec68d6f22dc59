//! `sluice serve` over real HTTP on loopback: authentication and roles, submitting,
//! streaming results (NDJSON and SSE), stopping, bad requests, many concurrent
//! queries, and state surviving a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use common::KillOnDrop;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const ADMIN: &str = "admin-token";
const EDITOR: &str = "editor-token";
const VIEWER: &str = "viewer-token";

struct Server {
    _child: KillOnDrop,
    base: String,
}

fn start(state_dir: &std::path::Path) -> Result<Server, Box<dyn std::error::Error>> {
    let mut child = Command::new(SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state_dir)
        .args(["--token", &format!("admin:{ADMIN}"), "--token", &format!("editor:{EDITOR}")])
        .env("SLUICE_TOKENS", format!("viewer:{VIEWER}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on ").ok_or_else(|| format!("unexpected: {line}"))?;
    Ok(Server { _child: KillOnDrop(child), base: format!("http://{addr}") })
}

async fn call(client: &Client, token: Option<&str>, method: &str, url: &str, body: Option<Value>) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
    let mut req = client.request(method.parse()?, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

const CLICKS: &str = "CREATE TABLE clicks (event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
    WITH (connector = 'generator', rate = '2000', 'interval.ms' = '1000', 'disorder.ms' = '0')";
const COUNTS: &str = "SELECT window_start, event_type, count(*) AS n \
    FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, event_type";

async fn wait_for_state(client: &Client, base: &str, id: &str, state: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, q) = call(client, Some(VIEWER), "GET", &format!("{base}/api/v1/queries/{id}"), None).await?;
        if q["state"] == state {
            return Ok(q);
        }
        if Instant::now() > deadline {
            return Err(format!("query {id} never reached {state}: {q}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_roles_and_bad_requests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let (b, c) = (&server.base, Client::new());
    assert_eq!(c.get(format!("{b}/healthz")).send().await?.status(), StatusCode::OK);
    for token in [None, Some("wrong")] {
        let (status, body) = call(&c, token, "GET", &format!("{b}/api/v1/queries"), None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["error"].as_str().unwrap_or_default().contains("bearer token"));
    }
    let (status, _) = call(&c, None, "GET", &format!("{b}/metrics"), None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let ddl = json!({ "sql": CLICKS });
    let (status, body) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/statements"), Some(ddl.clone())).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(ddl)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&c, Some(VIEWER), "POST", &format!("{b}/api/v1/statements"), Some(json!({"sql": "SHOW TABLES"}))).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rows"][0][0], "clicks");
    let (status, _) = call(&c, Some(VIEWER), "POST", &format!("{b}/api/v1/queries"), Some(json!({"sql": COUNTS}))).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Malformed JSON, SQL errors, unknown ids, oversized bodies: 4xx with a message.
    let resp = c.post(format!("{b}/api/v1/queries")).bearer_auth(EDITOR).header("content-type", "application/json").body("{not json").send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, body) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({"sql": "SELEC x"}))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap_or_default().contains("syntax error"), "{body}");
    let (status, body) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({"sql": "SELECT nope FROM clicks"}))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({"sql": "DROP TABLE clicks"}))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/nope"), None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The server answers 413 as soon as the body passes 1 MiB; the client may
    // still be sending and see the connection closed instead of the answer.
    let huge = json!({ "sql": "x".repeat(2 * 1024 * 1024) });
    // A client of its own, so no later request reuses the connection the server closes.
    match call(&Client::new(), Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(huge)).await {
        Ok((status, _)) => assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(e.to_string().contains("error sending request"), "{e}"),
    }
    let (_, queries) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries"), None).await?;
    assert_eq!(queries.as_array().map(Vec::len), Some(0), "the oversized query was not taken");
    let (status, doc) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/openapi.json"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/queries/{id}/results"].is_object(), "{doc}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_stop_and_resume_after_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let (b, c) = (server.base.clone(), Client::new());
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": CLICKS }))).await?;
    let (status, q) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({"sql": COUNTS, "name": "counts"}))).await?;
    assert_eq!(status, StatusCode::CREATED, "{q}");
    assert_eq!(q["state"], "RUNNING");
    assert_eq!(q["schema"][2]["name"], "n");
    let id = q["id"].as_str().ok_or("no id")?.to_string();

    // NDJSON: rows as they are produced.
    let resp = c.get(format!("{b}/api/v1/queries/{id}/results")).bearer_auth(VIEWER).send().await?;
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while text.lines().count() < 3 {
        let chunk = stream.next().await.ok_or("results ended")??;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let row: Value = serde_json::from_str(text.lines().next().ok_or("no row")?)?;
    assert!(row["n"].as_i64().unwrap_or(0) > 0 && row["window_start"].is_string(), "{row}");
    drop(stream);

    // Server-Sent Events on request.
    let resp = c.get(format!("{b}/api/v1/queries/{id}/results")).bearer_auth(VIEWER).header("accept", "text/event-stream").send().await?;
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("data: {") {
        let chunk = stream.next().await.ok_or("events ended")??;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);

    let (_, m) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?;
    assert!(m["rows_in"].as_u64().unwrap_or(0) > 0 && m["watermark"].is_string(), "{m}");
    assert!(m["state_bytes"].as_u64().unwrap_or(0) > 0, "an open window holds state: {m}");
    let lanes = m["sources"].as_array().ok_or("no sources")?;
    assert!(!lanes.is_empty() && lanes.iter().all(|s| s["lag_records"].is_u64() && s["rows_read"].is_u64()), "{m}");

    // A second query, stopped by its owner; the first keeps running across a restart.
    let (_, q2) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({"sql": COUNTS}))).await?;
    let id2 = q2["id"].as_str().ok_or("no id")?.to_string();
    let (status, _) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries/{id2}/stop"), None).await?;
    assert_eq!(status, StatusCode::OK);
    wait_for_state(&c, &b, &id2, "STOPPED").await?;
    let (_, running) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries?state=running"), None).await?;
    assert_eq!(running.as_array().map(Vec::len), Some(1));

    drop(server);
    let server = start(dir.path())?;
    let b = server.base.clone();
    let resumed = wait_for_state(&c, &b, &id, "RUNNING").await?;
    assert_eq!(resumed["name"], "counts");
    let (_, stopped) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries?state=running"), None).await?;
    assert_eq!(stopped.as_array().map(Vec::len), Some(1), "the stopped query stays stopped");
    let (_, tables) = call(&c, Some(VIEWER), "POST", &format!("{b}/api/v1/statements"), Some(json!({"sql": "SHOW TABLES"}))).await?;
    assert_eq!(tables["rows"][0][0], "clicks");

    let (status, _) = call(&c, Some(EDITOR), "DELETE", &format!("{b}/api/v1/queries/{id}"), None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}"), None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_queries_on_one_server() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let (b, c) = (server.base.clone(), Client::new());
    let ddl = "CREATE TABLE small (event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
               WITH (connector = 'generator', rows = '2000')";
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": ddl }))).await?;
    let submissions = (0..50).map(|i| {
        let (c, b) = (c.clone(), b.clone());
        async move {
            let sql = format!(
                "SELECT window_start, count(*) + {i} AS n FROM TABLE(TUMBLE(TABLE small, DESCRIPTOR(ts), INTERVAL '10' MINUTE)) \
                 GROUP BY window_start, window_end"
            );
            call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({ "sql": sql }))).await
        }
    });
    let results = futures::future::join_all(submissions).await;
    let mut ids = Vec::new();
    for r in results {
        let (status, q) = r?;
        assert_eq!(status, StatusCode::CREATED, "{q}");
        ids.push(q["id"].as_str().ok_or("no id")?.to_string());
    }
    for id in &ids {
        wait_for_state(&c, &b, id, "STOPPED").await?;
        let (_, m) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?;
        assert_eq!(m["rows_in"], 2000, "{m}");
    }
    let (_, all) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries"), None).await?;
    assert_eq!(all.as_array().map(Vec::len), Some(50));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_as_a_client_of_the_server() -> TestResult {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let home = tempfile::tempdir()?;
    let mut shell = Command::new(SLUICE)
        .args(["shell", "--server", &server.base])
        .env("SLUICE_TOKEN", ADMIN)
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = shell.stdin.take().ok_or("no stdin")?;
    stdin.write_all(
        b"CREATE TABLE small (event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH (connector = 'generator', rows = '600');\n\
          \\d\n\
          SELECT window_start, count(*) AS n FROM TABLE(TUMBLE(TABLE small, DESCRIPTOR(ts), INTERVAL '1' HOUR)) GROUP BY window_start, window_end;\n\
          SELECT nope FROM small;\n\
          \\q\n",
    )?;
    drop(stdin);
    let status = tokio::task::spawn_blocking(move || shell.wait_with_output()).await??;
    let (mut out, mut err) = (String::new(), String::new());
    status.stdout.as_slice().read_to_string(&mut out)?;
    status.stderr.as_slice().read_to_string(&mut err)?;
    assert!(out.contains("Table 'small' created"), "{out}\n{err}");
    assert!(out.contains("| small "), "{out}");
    assert!(out.contains("| 2024-01-01T00:00:00 | 600 "), "{out}");
    assert!(err.contains("error:") && err.contains("nope"), "{err}");
    // The table lives in the server's catalog.
    let (_, tables) = call(&Client::new(), Some(VIEWER), "POST", &format!("{}/api/v1/statements", server.base), Some(json!({"sql": "SHOW TABLES"}))).await?;
    assert_eq!(tables["rows"][0][0], "small");
    Ok(())
}
