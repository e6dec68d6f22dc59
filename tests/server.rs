//! `sluice serve` over real HTTP on loopback: authentication and roles, submitting,
//! streaming results (NDJSON and SSE), stopping, bad requests, many concurrent
//! queries, state surviving a restart, settings, the state directory's lock,
//! preview queries, graceful stops and queries too deep to plan.

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

/// A server on `state_dir` with the `clicks` table created, its base URL and a client.
async fn start_with_clicks(state_dir: &std::path::Path) -> Result<(Server, String, Client), Box<dyn std::error::Error>> {
    let server = start(state_dir)?;
    let (b, c) = (server.base.clone(), Client::new());
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": CLICKS }))).await?;
    Ok((server, b, c))
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
    let url = format!("{base}/api/v1/queries/{id}");
    poll(client, &url, |q| q["state"] == state).await.map_err(|q| format!("query {id} never reached {state}: {q}").into())
}

/// GETs `url` until its answer satisfies `done` (for up to 60 s); the last
/// answer as the error otherwise.
async fn poll(client: &Client, url: &str, done: impl Fn(&Value) -> bool) -> Result<Value, Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = call(client, Some(VIEWER), "GET", url, None).await.map_err(|e| Value::String(e.to_string()))?.1;
        if done(&answer) {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            return Err(answer);
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
    // Unreadable bodies get the API's JSON error shape too.
    let resp = c.post(format!("{b}/api/v1/queries")).bearer_auth(EDITOR).header("content-type", "application/json").body("{not json").send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await?;
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    let resp = c.post(format!("{b}/api/v1/statements")).bearer_auth(ADMIN).header("content-type", "text/plain").body("SHOW TABLES").send().await?;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = resp.json().await?;
    assert!(body["error"].as_str().unwrap_or_default().contains("application/json"), "{body}");
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
    // The document declares what a generated client needs: every `{param}` of
    // a path as a parameter, the bearer token, and 401 on every operation.
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    for (path, item) in paths {
        for (method, operation) in item.as_object().ok_or("a path item")? {
            let declared: Vec<&str> = operation["parameters"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
            for param in path.split('{').skip(1).filter_map(|rest| rest.split('}').next()) {
                assert!(declared.contains(&param), "{method} {path} does not declare {param}: {operation}");
            }
            assert!(operation["responses"]["401"].is_object(), "{method} {path} does not say it answers 401");
        }
    }
    assert_eq!(doc["security"][0]["bearer"], json!([]), "{}", doc["security"]);
    assert_eq!(doc["paths"]["/api/v1/queries"]["get"]["parameters"][0]["schema"]["$ref"], "#/components/schemas/QueryState");

    // Every other error has the JSON error shape too: an unknown path, a
    // method a path does not take (with Allow), a query string or an id that
    // cannot be read.
    let (status, body) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/nope"), None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap_or_default().contains("no such endpoint"), "{body}");
    let resp = c.put(format!("{b}/api/v1/queries")).bearer_auth(EDITOR).send().await?;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST,GET,HEAD");
    let body: Value = resp.json().await?;
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries?state=RUNNING&state=FAILED"), None).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap_or_default().contains("duplicate field"), "{body}");
    let (status, body) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/%FF"), None).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap_or_default().contains("UTF-8"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_stop_and_resume_after_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, b, c) = start_with_clicks(dir.path()).await?;
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
    assert!(text.contains("id: 1\n"), "events carry ids: {text}");
    drop(stream);

    // The sink takes the watermark that follows a result batch just after the
    // client has the rows: wait (boundedly) for it to be counted.
    let mut m = Value::Null;
    for _ in 0..100 {
        m = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?.1;
        if m["watermark"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    assert_eq!(resumed["created_at"], q["created_at"], "still the query submitted before");
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
    // Status lines may go to either stream; rows go to stdout.
    assert!(format!("{out}{err}").contains("Table 'small' created"), "{out}\n{err}");
    assert!(out.contains("| small "), "{out}");
    assert!(out.contains("| 2024-01-01T00:00:00 | 600 "), "{out}");
    assert!(err.contains("error:") && err.contains("nope"), "{err}");
    // The table lives in the server's catalog.
    let (_, tables) = call(&Client::new(), Some(VIEWER), "POST", &format!("{}/api/v1/statements", server.base), Some(json!({"sql": "SHOW TABLES"}))).await?;
    assert_eq!(tables["rows"][0][0], "small");
    Ok(())
}

async fn submit(client: &Client, base: &str, body: Value) -> Result<String, Box<dyn std::error::Error>> {
    let (status, q) = call(client, Some(EDITOR), "POST", &format!("{base}/api/v1/queries"), Some(body)).await?;
    if status != StatusCode::CREATED {
        return Err(format!("submit answered {status}: {q}").into());
    }
    Ok(q["id"].as_str().ok_or("no id")?.to_string())
}

/// The whole results stream of a query that ends, as text.
async fn read_to_end(client: &Client, base: &str, id: &str, sse: bool) -> Result<String, Box<dyn std::error::Error>> {
    let mut req = client.get(format!("{base}/api/v1/queries/{id}/results")).bearer_auth(VIEWER);
    if sse {
        req = req.header("accept", "text/event-stream");
    }
    let text = tokio::time::timeout(Duration::from_secs(60), async { req.send().await?.text().await }).await??;
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_queries_are_refused_and_the_server_lives() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let (b, c) = (server.base.clone(), Client::new());
    let ddl = "CREATE TABLE small (event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
               WITH (connector = 'generator', rows = '600')";
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": ddl }))).await?;
    let counted = |terms: usize| {
        format!(
            "SELECT window_start, count(*) AS n FROM TABLE(TUMBLE(TABLE small, DESCRIPTOR(ts), INTERVAL '1' HOUR)) \
             WHERE {} GROUP BY window_start, window_end",
            vec!["event_type <> 'none'"; terms].join(" OR ")
        )
    };
    // 2,000 ORs (about 40 KB) and 40,000: refused with a 400, not a crash.
    for terms in [2_000, 40_000] {
        for endpoint in ["queries", "statements"] {
            let sql = if endpoint == "queries" { counted(terms) } else { format!("EXPLAIN {}", counted(terms)) };
            let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/{endpoint}"), Some(json!({ "sql": sql }))).await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{terms} ORs to {endpoint}: {body}");
            assert!(body["error"].as_str().unwrap_or_default().contains("nests expressions more than"), "{body}");
        }
    }
    // 20,000 UNIONs (planned recursively, a crash even on a large stack): refused too.
    let unions = format!("SELECT 1 AS x {}", vec!["UNION ALL SELECT 1"; 20_000].join(" "));
    let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": unions }))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("at most 1000 UNION"), "{body}");
    // Just under the limit, the query is planned and runs (on Sluice's large stacks).
    let id = submit(&c, &b, json!({ "sql": counted(900) })).await?;
    let rows = read_to_end(&c, &b, &id, false).await?;
    let row: Value = serde_json::from_str(rows.lines().next().ok_or("no rows")?)?;
    assert_eq!(row["n"], 600, "{rows}");
    assert_eq!(c.get(format!("{b}/healthz")).send().await?.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reach_rest_queries_and_survive_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, b, c) = start_with_clicks(dir.path()).await?;
    // The server's settings: SET on the statements endpoint (an admin's change).
    let set = |sql: &str| json!({ "sql": sql });
    let (status, _) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/statements"), Some(set("SET parallelism = 1"))).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for sql in ["SET parallelism = 1", "SET 'table.exec.state.ttl' = '1 h'"] {
        let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(set(sql))).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let plain = submit(&c, &b, json!({ "sql": COUNTS })).await?;
    // A query whose state nothing bounds (the server's TTL overridden) says so when it starts.
    let grouped = json!({ "sql": "SELECT event_type, count(*) AS n FROM clicks GROUP BY event_type", "settings": { "table.exec.state.ttl": "0" } });
    let (status, grouped) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(grouped)).await?;
    assert_eq!(status, StatusCode::CREATED, "{grouped}");
    assert!(grouped["warnings"][0].as_str().unwrap_or_default().contains("grows without limit"), "{grouped}");
    assert_eq!(warning_count(&c, &b, &plain).await?, 0, "a windowed query is bounded");
    // Overridden per submission, by Flink's names.
    let tuned = submit(&c, &b, json!({ "sql": COUNTS, "settings": { "parallelism": 3, "sluice.memory.limit": "512 MB" } })).await?;
    let (status, body) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries"), Some(json!({ "sql": COUNTS, "settings": { "sluice.memory.limit": "lots" } }))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap_or_default().contains("sluice.memory.limit"), "{body}");

    let check = |b: String, c: Client, plain: String, tuned: String| async move {
        let (_, p) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{plain}"), None).await?;
        assert_eq!(p["settings"]["parallelism"], "1", "{p}");
        assert_eq!(p["settings"]["table.exec.state.ttl"], "1h", "{p}");
        let (_, t) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{tuned}"), None).await?;
        assert_eq!(t["settings"]["parallelism"], "3", "{t}");
        assert_eq!(t["settings"]["table.exec.state.ttl"], "1h", "{t}");
        assert_eq!(t["settings"]["sluice.memory.limit"], "512 MB", "{t}");
        // The settings took effect: one source lane per unit of parallelism.
        for (id, lanes) in [(&plain, 1), (&tuned, 3)] {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, m) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?;
                if m["sources"].as_array().map(Vec::len) == Some(lanes) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("query {id} never showed {lanes} lanes: {m}").into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    check(b.clone(), c.clone(), plain.clone(), tuned.clone()).await?;

    drop(server);
    let server = start(dir.path())?;
    let b = server.base.clone();
    wait_for_state(&c, &b, &tuned, "RUNNING").await?;
    check(b.clone(), c.clone(), plain, tuned).await?;
    // The server's SETs survived too.
    let again = submit(&c, &b, json!({ "sql": COUNTS })).await?;
    let (_, q) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{again}"), None).await?;
    assert_eq!(q["settings"]["table.exec.state.ttl"], "1h", "{q}");
    assert_eq!(q["settings"]["parallelism"], "1", "{q}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_state_dir_refuses_to_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = start(dir.path())?;
    let second = Command::new(SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path())
        .args(["--token", &format!("admin:{ADMIN}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = tokio::task::spawn_blocking(move || second.wait_with_output()).await??;
    assert!(!out.status.success(), "the second server started: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another sluice server is using the state directory"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "it never listened");
    // The first one is unaffected, and once it is gone the directory is free.
    assert_eq!(Client::new().get(format!("{}/healthz", first.base)).send().await?.status(), StatusCode::OK);
    drop(first);
    let again = start(dir.path())?;
    assert_eq!(Client::new().get(format!("{}/healthz", again.base)).send().await?.status(), StatusCode::OK);
    Ok(())
}

/// A query that fails on its first row: integer division by zero at run time.
const FAILS: &str = "SELECT char_length(event_type) / (char_length(event_type) - char_length(event_type)) AS x FROM clicks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_failed_queries_stay_listed_and_streams_end_with_the_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, b, c) = start_with_clicks(dir.path()).await?;
    let stopped = submit(&c, &b, json!({ "sql": COUNTS, "name": "stopped" })).await?;
    let failed = submit(&c, &b, json!({ "sql": FAILS, "name": "failed" })).await?;
    let running = submit(&c, &b, json!({ "sql": COUNTS, "name": "running" })).await?;
    let (status, s) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries/{stopped}/stop"), None).await?;
    assert_eq!((status, s["state"].as_str()), (StatusCode::OK, Some("STOPPED")), "the stop answers once stopped: {s}");
    let f = wait_for_state(&c, &b, &failed, "FAILED").await?;
    let error = f["error"].as_str().ok_or("no error")?.to_string();
    assert!(error.to_lowercase().contains("divide by zero"), "{f}");

    // The results of a failed query end with its error, in both encodings.
    let ndjson = read_to_end(&c, &b, &failed, false).await?;
    let last: Value = serde_json::from_str(ndjson.lines().last().ok_or("empty results")?)?;
    assert_eq!(last["error"], error.as_str(), "{ndjson}");
    let sse = read_to_end(&c, &b, &failed, true).await?;
    assert!(sse.contains("event: error\ndata: "), "{sse}");
    let sse = read_to_end(&c, &b, &stopped, true).await?;
    assert!(sse.trim_end().ends_with("event: end\ndata: {}"), "{sse}");

    drop(server);
    let server = start(dir.path())?;
    let b = server.base.clone();
    wait_for_state(&c, &b, &running, "RUNNING").await?;
    let (_, all) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries"), None).await?;
    let by_id = |id: &str| all.as_array().into_iter().flatten().find(|q| q["id"] == id).cloned().unwrap_or(Value::Null);
    assert_eq!(by_id(&stopped)["state"], "STOPPED", "{all}");
    assert_eq!(by_id(&stopped)["name"], "stopped", "{all}");
    assert_eq!(by_id(&failed)["state"], "FAILED", "{all}");
    assert_eq!(by_id(&failed)["error"], error.as_str(), "{all}");
    assert_eq!(by_id(&failed)["schema"][0]["name"], "x", "{all}");
    let (_, running_now) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries?state=running"), None).await?;
    assert_eq!(running_now.as_array().map(Vec::len), Some(1), "neither is started again: {running_now}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_query_ends_with_its_last_reader() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, b, c) = start_with_clicks(dir.path()).await?;
    let select = "SELECT event_type FROM clicks";
    let preview = submit(&c, &b, json!({ "sql": select, "preview": true })).await?;
    let kept = submit(&c, &b, json!({ "sql": select })).await?;
    for id in [&preview, &kept] {
        // Two readers: the query lives until the last one leaves.
        let mut streams = Vec::new();
        for _ in 0..2 {
            let resp = c.get(format!("{b}/api/v1/queries/{id}/results")).bearer_auth(VIEWER).send().await?;
            let mut stream = resp.bytes_stream();
            stream.next().await.ok_or("no rows")??;
            streams.push(stream);
        }
        drop(streams.pop());
        let (_, q) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}"), None).await?;
        assert_eq!(q["state"], "RUNNING", "one reader is still there: {q}");
        drop(streams);
    }
    let q = wait_for_state(&c, &b, &preview, "STOPPED").await?;
    assert_eq!(q["preview"], true);
    // The query submitted to keep running still runs without readers.
    let (_, k) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{kept}"), None).await?;
    assert_eq!(k["state"], "RUNNING", "{k}");

    // A preview query running when the server goes down is not started again.
    let unread = submit(&c, &b, json!({ "sql": select, "preview": true })).await?;
    drop(server);
    let server = start(dir.path())?;
    let b = server.base.clone();
    wait_for_state(&c, &b, &kept, "RUNNING").await?;
    let (_, u) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{unread}"), None).await?;
    assert_eq!(u["state"], "STOPPED", "{u}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_flush_the_sink_and_metrics_are_per_query() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let (_server, b, c) = start_with_clicks(dir.path()).await?;
    let path = out.path().join("events.jsonl");
    let sink = format!(
        "CREATE TABLE landed (event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'file', path = '{}', format = 'json')",
        path.display()
    );
    let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": sink }))).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = submit(&c, &b, json!({ "sql": "INSERT INTO landed SELECT event_type, ts FROM clicks" })).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?;
        if m["rows_out"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no rows out: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counters in /metrics carry the query's id.
    let (_, text) = call(&c, Some(VIEWER), "GET", &format!("{b}/metrics"), None).await?;
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(text.contains(&format!("sluice_rows_out_total{{query=\"{id}\"}}")), "{text}");

    let (status, q) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries/{id}/stop"), None).await?;
    assert_eq!((status, q["state"].as_str()), (StatusCode::OK, Some("STOPPED")), "{q}");
    let (_, m) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?;
    let lines = std::fs::read_to_string(&path)?;
    for line in lines.lines() {
        serde_json::from_str::<Value>(line)?;
    }
    assert_eq!(Some(lines.lines().count() as u64), m["rows_out"].as_u64(), "the file holds what the API reports");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_queries_gracefully_and_they_resume() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let mut server = start(dir.path())?;
    let (b, c) = (server.base.clone(), Client::new());
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": CLICKS }))).await?;
    let path = out.path().join("events.jsonl");
    let sink = format!(
        "CREATE TABLE landed (event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'file', path = '{}', format = 'json')",
        path.display()
    );
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": sink }))).await?;
    let id = submit(&c, &b, json!({ "sql": "INSERT INTO landed SELECT event_type, ts FROM clicks" })).await?;
    // A reader of a running query must not hold the shutdown open.
    let counts = submit(&c, &b, json!({ "sql": COUNTS })).await?;
    let resp = c.get(format!("{b}/api/v1/queries/{counts}/results")).bearer_auth(VIEWER).send().await?;
    let reading = tokio::spawn(async move { resp.text().await });
    wait_for_state(&c, &b, &id, "RUNNING").await?;
    while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server._child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status()?.success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = server._child.0.wait();
        (server, status)
    });
    let (server, status) = tokio::time::timeout(Duration::from_secs(60), exited).await??;
    assert!(status?.success(), "sluice serve exits cleanly on SIGTERM");
    tokio::time::timeout(Duration::from_secs(10), reading).await???;
    drop(server);
    let lines = std::fs::read_to_string(&path)?;
    assert!(lines.ends_with('\n'), "no partial line");
    let server = start(dir.path())?;
    wait_for_state(&c, &server.base, &id, "RUNNING").await?;
    wait_for_state(&c, &server.base, &counts, "RUNNING").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_from_a_remote_shell_ends_when_the_shell_goes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_server, b, c) = start_with_clicks(dir.path()).await?;
    let home = tempfile::tempdir()?;
    let mut shell = Command::new(SLUICE)
        .args(["shell", "--server", &b])
        .env("SLUICE_TOKEN", EDITOR)
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    use std::io::Write;
    let mut stdin = shell.stdin.take().ok_or("no stdin")?;
    stdin.write_all(b"SELECT event_type FROM clicks;\n")?;
    let stdout = shell.stdout.take().ok_or("no stdout")?;
    let mut shell = KillOnDrop(shell);
    // Rows arrive: the query runs on the server, previewed by the shell. The
    // shell's output is drained to the end, so a full pipe never holds it
    // (and with it its reading of the results) back.
    let (first_row_tx, first_row) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut first_row_tx = Some(first_row_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("| page_view") || line.contains("| checkout") {
                if let Some(tx) = first_row_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), first_row).await?.map_err(|_| "no rows")?;
    let (_, running) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries?state=running"), None).await?;
    let id = running[0]["id"].as_str().ok_or_else(|| format!("no running query: {running}"))?.to_string();
    assert_eq!(running[0]["preview"], true, "{running}");
    // The shell dies without stopping the query; the server notices its reader left.
    shell.0.kill()?;
    shell.0.wait()?;
    drop(stdin);
    wait_for_state(&c, &b, &id, "STOPPED").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_saved_by_an_older_version_keep_their_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("queries.json"),
        r#"[{"id": "qold", "name": "old", "sql": "SELECT 1", "running": false}]"#,
    )?;
    let server = start(dir.path())?;
    let (_, q) = call(&Client::new(), Some(VIEWER), "GET", &format!("{}/api/v1/queries/qold", server.base), None).await?;
    assert_eq!(q["state"], "STOPPED", "a stopped query is not started again: {q}");
    Ok(())
}

async fn warning_count(client: &Client, base: &str, id: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let (_, q) = call(client, Some(VIEWER), "GET", &format!("{base}/api/v1/queries/{id}"), None).await?;
    Ok(q["warnings"].as_array().map_or(usize::MAX, Vec::len))
}

/// Each window's `(event_type, n)` counts in the lake, read by pyarrow, as
/// `window_start -> (rows, sum of n)`.
fn lake_windows(lake: &std::path::Path) -> Result<std::collections::BTreeMap<String, (u64, i64)>, Box<dyn std::error::Error>> {
    let script = r#"
import sys, json, collections, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table()
w = collections.defaultdict(lambda: [0, 0])
for r in t.to_pylist():
    w[str(r['window_start'])][0] += 1
    w[str(r['window_start'])][1] += r['n']
print(json.dumps(w))
"#;
    let out = Command::new("python3").args(["-c", script, &lake.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let windows: std::collections::BTreeMap<String, (u64, i64)> = serde_json::from_slice(&out.stdout)?;
    Ok(windows)
}

/// Waits until `done` holds for the query's checkpoints.
async fn wait_for_checkpoints(client: &Client, base: &str, id: &str, done: impl Fn(&Value) -> bool) -> Result<Value, Box<dyn std::error::Error>> {
    let url = format!("{base}/api/v1/queries/{id}/checkpoints");
    poll(client, &url, done).await.map_err(|c| format!("checkpoints of {id} never got there: {c}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_query_resumes_from_its_checkpoint_and_its_output_stays_exact() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let lake = out.path().join("lake");
    let (mut server, b, c) = start_with_clicks(dir.path()).await?;
    let table = format!(
        "CREATE TABLE per_minute (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT) \
         WITH (connector = 'lake', path = '{}', 'partition.by' = 'event_type')",
        lake.display()
    );
    call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": table }))).await?;
    let sql = format!("INSERT INTO per_minute {COUNTS}");
    let id = submit(&c, &b, json!({ "sql": sql, "settings": { "execution.checkpointing.interval": "300 ms", "parallelism": 2 } })).await?;
    wait_for_checkpoints(&c, &b, &id, |cp| cp["completed"].as_u64().unwrap_or(0) >= 3).await?;

    // kill -9: nothing is flushed or committed beyond the last checkpoint.
    server._child.0.kill()?;
    server._child.0.wait()?;
    drop(server);
    let server = start(dir.path())?;
    let b = server.base.clone();
    wait_for_state(&c, &b, &id, "RUNNING").await?;
    let resumed = wait_for_checkpoints(&c, &b, &id, |cp| cp["restored_from"].is_u64() && cp["completed"].as_u64().unwrap_or(0) >= 2).await?;
    assert!(resumed["last"]["bytes"].as_u64().unwrap_or(0) > 0, "open windows are in the checkpoint: {resumed}");
    let (status, _) = call(&c, Some(EDITOR), "POST", &format!("{b}/api/v1/queries/{id}/stop"), None).await?;
    assert_eq!(status, StatusCode::OK);

    // One event per second of event time: every closed 1-minute window holds
    // 60 events, once, whatever the crash cut.
    let windows = lake_windows(&lake)?;
    assert!(windows.len() >= 3, "windows were written: {windows:?}");
    let wrong: Vec<_> = windows.iter().filter(|(_, (_, n))| *n != 60).collect();
    assert!(wrong.is_empty(), "windows with other than 60 events (lost or doubled rows): {wrong:?}");
    Ok(())
}

/// A statement set goes to `POST /api/v1/queries` as one query: its INSERTs
/// read their table once and each writes its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_set_runs_as_one_query() -> TestResult {
    let state = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let server = start(state.path())?;
    let (b, c) = (server.base.clone(), Client::new());
    let tables = [
        "CREATE TABLE few (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) WITH (connector = 'generator', rows = '500')".to_string(),
        format!("CREATE TABLE every_click (user_id BIGINT, event_type VARCHAR) WITH (connector = 'file', path = '{}', format = 'json')", out.path().join("all.json").display()),
        format!("CREATE TABLE checkouts (user_id BIGINT) WITH (connector = 'file', path = '{}', format = 'json')", out.path().join("checkouts.json").display()),
    ];
    for sql in tables {
        let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": sql }))).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let set = "EXECUTE STATEMENT SET BEGIN INSERT INTO every_click SELECT user_id, event_type FROM few; \
               INSERT INTO checkouts SELECT user_id FROM few WHERE event_type = 'checkout'; END;";
    let (status, body) = call(&c, Some(ADMIN), "POST", &format!("{b}/api/v1/statements"), Some(json!({ "sql": set }))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("/api/v1/queries"), "{body}");
    let id = submit(&c, &b, json!({ "sql": set })).await?;
    wait_for_state(&c, &b, &id, "STOPPED").await?;
    let (_, metrics) = call(&c, Some(VIEWER), "GET", &format!("{b}/api/v1/queries/{id}/metrics"), None).await?;
    assert_eq!(metrics["rows_in"], 500, "the table is read once: {metrics}");
    let lines = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default().lines().count();
    let checkouts = std::fs::read_to_string(out.path().join("all.json"))?.lines().filter(|l| l.contains("\"checkout\"")).count();
    assert_eq!(lines("all.json"), 500);
    assert!(checkouts > 0);
    assert_eq!(lines("checkouts.json"), checkouts);
    assert_eq!(metrics["rows_out"], 500 + checkouts as u64, "{metrics}");
    Ok(())
}
