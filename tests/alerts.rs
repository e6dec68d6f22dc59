//! The clickstream job of `examples/clickstream_alerts.sql`, end to end
//! against a real Kafka-protocol broker (tansu): a seeded stream of clicks,
//! produced by confluent-kafka a little out of order, gives exactly the cart
//! alerts, abandonment-rate alerts and funnel rows that this test computes on
//! its own from the same clicks. The alerts are read back by a plain
//! confluent-kafka consumer, the funnel by pyarrow. A second test reads the
//! topic without an end, kills the job with SIGKILL in the middle and
//! starts it again: every alert, change and funnel row still comes once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime};
use serde_json::{json, Value};

use common::broker::{consume_until_idle, start_broker, Broker};
use common::runs::{stderr_of, wait_for_checkpoints};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const EXAMPLE: &str = include_str!("../examples/clickstream_alerts.sql");
/// 2026-11-29T06:00:00Z, in seconds.
const BASE_S: i64 = 1_796_018_400;
const MINUTE: i64 = 60;
const SESSION_GAP: i64 = 30 * MINUTE;
const CATEGORIES: [&str; 3] = ["books", "games", "garden"];

/// One click.
#[derive(Debug, Clone)]
struct Click {
    user: i64,
    kind: &'static str,
    item: i64,
    cents: i64,
    category: &'static str,
    ts: i64,
}

/// A small seeded generator (the test must not depend on a crate's sequence).
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Sessions of 1 to 8 clicks per user, clicks 10 s to 10 min apart within a
/// session, sessions at least 40 minutes apart (so they never merge), over
/// about six hours; whole seconds, so the times print alike everywhere.
fn clicks(users: i64, seed: u64) -> Vec<Click> {
    let mut rng = Seeded(seed);
    let mut out = Vec::new();
    for user in 1..=users {
        let mut t = BASE_S + rng.below(60) as i64 * MINUTE;
        while t < BASE_S + 6 * 60 * MINUTE {
            for i in 0..1 + rng.below(8) {
                let kind = match (i, rng.below(20)) {
                    (0, _) | (_, 0..=10) => "page_view",
                    (_, 11..=16) => "add_to_cart",
                    _ => "checkout",
                };
                out.push(Click {
                    user,
                    kind,
                    item: 1 + rng.below(100) as i64,
                    cents: 100 + rng.below(9900) as i64,
                    category: CATEGORIES[rng.below(3) as usize],
                    ts: t,
                });
                t += 10 + rng.below(590) as i64;
            }
            t += 40 * MINUTE + rng.below(120) as i64 * MINUTE;
        }
    }
    // Produced in time order with up to 3 s of jitter: out of order, but
    // within the WATERMARK's 5 s, so no click is late.
    let mut keyed: Vec<(i64, Click)> = out.into_iter().map(|c| (c.ts * 1000 + rng.below(3000) as i64, c)).collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, c)| c).collect()
}

fn time_text(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

fn record(c: &Click) -> Value {
    let value = json!({
        "user_id": c.user, "event_type": c.kind, "item_id": c.item, "price": c.cents as f64 / 100.0,
        "category": c.category, "ts": format!("{}.000", time_text(c.ts)),
    });
    json!({"key": c.user.to_string(), "value": value.to_string()})
}

/// A user's session as this test finds it.
struct Session {
    user: i64,
    start: i64,
    end: i64,
    items: Vec<i64>,
    cart_cents: i64,
    adds: usize,
    checkouts: usize,
}

impl Session {
    fn abandoned(&self) -> bool {
        self.adds > 0 && self.checkouts == 0
    }
}

/// Each user's sessions: a click 30 minutes or more after the last one starts
/// a new session, which ends 30 minutes after its last click.
fn sessions(clicks: &[Click]) -> Vec<Session> {
    let mut by_user: BTreeMap<i64, Vec<&Click>> = BTreeMap::new();
    for c in clicks {
        by_user.entry(c.user).or_default().push(c);
    }
    let mut out = Vec::new();
    for (user, mut mine) in by_user {
        mine.sort_by_key(|c| c.ts);
        let mut current: Option<Session> = None;
        for c in mine {
            if current.as_ref().is_some_and(|s| c.ts >= s.end) {
                out.extend(current.take());
            }
            let s = current.get_or_insert(Session { user, start: c.ts, end: c.ts, items: Vec::new(), cart_cents: 0, adds: 0, checkouts: 0 });
            s.end = c.ts + SESSION_GAP;
            match c.kind {
                "add_to_cart" => {
                    s.items.push(c.item);
                    s.cart_cents += c.cents;
                    s.adds += 1;
                }
                "checkout" => s.checkouts += 1,
                _ => {}
            }
        }
        out.extend(current);
    }
    out
}

/// `user|start|end|sorted items|cart value` of each abandoned session.
fn expected_cart_alerts(sessions: &[Session]) -> Vec<String> {
    let mut rows: Vec<String> = sessions
        .iter()
        .filter(|s| s.abandoned())
        .map(|s| {
            let mut items = s.items.clone();
            items.sort_unstable();
            format!("{}|{}|{}|{items:?}|{:.2}", s.user, time_text(s.start), time_text(s.end), s.cart_cents as f64 / 100.0)
        })
        .collect();
    rows.sort();
    rows
}

/// Per hour-long window sliding by 10 minutes (by start) that holds some
/// session's end: its abandoned sessions, and its sessions with a cart.
fn hop_windows(sessions: &[Session]) -> BTreeMap<i64, (usize, usize)> {
    let mut windows: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for s in sessions {
        let last_start = s.end.div_euclid(10 * MINUTE) * 10 * MINUTE;
        for start in (0..6).map(|k| last_start - k * 10 * MINUTE) {
            let w = windows.entry(start).or_default();
            w.0 += usize::from(s.abandoned());
            w.1 += usize::from(s.adds > 0);
        }
    }
    windows
}

/// `start|end|abandoned|carts` of each hop window (see [`hop_windows`]) that
/// holds the ends of 3 or more abandoned sessions.
fn expected_rate_alerts(sessions: &[Session]) -> Vec<String> {
    hop_windows(sessions)
        .into_iter()
        .filter(|(_, (abandoned, _))| *abandoned >= 3)
        .map(|(start, (abandoned, carts))| format!("{}|{}|{abandoned}|{carts}", time_text(start), time_text(start + 60 * MINUTE)))
        .collect()
}

/// `start|end|abandoned|status` of the windows where the rate alert changes:
/// FIRING at 3 or more abandoned carts after a window under 3 (or none), again
/// after an hour of firing, RESOLVED at the first window back under 3; windows
/// in end order (only windows holding some session's end exist).
fn expected_rate_changes(sessions: &[Session]) -> Vec<String> {
    let (mut firing_since, mut rows) = (None::<i64>, Vec::new());
    for (start, (abandoned, _)) in hop_windows(sessions) {
        let end = start + 60 * MINUTE;
        let status = match (abandoned >= 3, firing_since) {
            (true, None) => Some("FIRING"),
            (true, Some(last)) if end - last >= 60 * MINUTE => Some("FIRING"),
            (false, Some(_)) => Some("RESOLVED"),
            _ => None,
        };
        match status {
            Some("FIRING") => firing_since = Some(end),
            Some(_) => firing_since = None,
            None => {}
        }
        if let Some(status) = status {
            rows.push(format!("{}|{}|{abandoned}|{status}", time_text(start), time_text(end)));
        }
    }
    rows.sort();
    rows
}

/// `start|category|page views|add to carts|checkouts` per 10 minutes.
fn expected_funnel(clicks: &[Click]) -> Vec<String> {
    let mut counts: BTreeMap<(i64, &str), [usize; 3]> = BTreeMap::new();
    for c in clicks {
        let slot = ["page_view", "add_to_cart", "checkout"].iter().position(|k| *k == c.kind).unwrap_or(0);
        counts.entry((c.ts.div_euclid(10 * MINUTE) * 10 * MINUTE, c.category)).or_default()[slot] += 1;
    }
    counts.into_iter().map(|((start, cat), [v, a, k])| format!("{}|{cat}|{v}|{a}|{k}", time_text(start))).collect()
}

/// A timestamp as a JSON sink or pyarrow writes it, in this test's form.
fn normalized_time(v: &Value) -> String {
    let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let text = text.replace('T', " ");
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or(text)
}

/// The values of the records a plain consumer (confluent-kafka) reads from
/// `topic` after its group's last read, until nothing comes for `idle` s.
fn consume(broker: &Broker, topic: &str, idle: u32) -> TestResult<Vec<Value>> {
    let mut values = Vec::new();
    for record in consume_until_idle(&broker.addr, topic, 1_000_000, idle)? {
        let value: Value = serde_json::from_str(record["value"].as_str().ok_or("a record without a value")?)?;
        // The record key is the alert's id where the sink is keyed by it.
        if let Some(id) = value.get("alert_id") {
            assert_eq!(record["key"], *id, "cart alerts are keyed by alert_id");
        }
        values.push(value);
    }
    Ok(values)
}

/// Cart alerts in the form of [`expected_cart_alerts`]; checks each alert_id
/// is the md5 of the user and the session's start, as the example says.
fn cart_alert_rows(values: &[Value]) -> TestResult<Vec<String>> {
    let mut rows = Vec::new();
    for v in values {
        let start = normalized_time(&v["session_start"]);
        let mut items: Vec<i64> = v["items"].as_array().ok_or("items")?.iter().filter_map(Value::as_i64).collect();
        items.sort_unstable();
        let id = md5_hex(&format!("{}|{}", v["user_id"], start.replace(' ', "T")))?;
        assert_eq!(v["alert_id"].as_str(), Some(id.as_str()), "a deterministic alert_id: {v}");
        rows.push(format!(
            "{}|{start}|{}|{items:?}|{:.2}",
            v["user_id"],
            normalized_time(&v["session_end"]),
            v["cart_value"].as_f64().ok_or("cart_value")?
        ));
    }
    rows.sort();
    Ok(rows)
}

/// md5 as hex, by Python's hashlib (not by the code under test).
fn md5_hex(text: &str) -> TestResult<String> {
    let out = Command::new("python3").args(["-c", "import hashlib, sys; print(hashlib.md5(sys.argv[1].encode()).hexdigest())", text]).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn rate_alert_rows(values: &[Value]) -> Vec<String> {
    let mut rows: Vec<String> = values
        .iter()
        .map(|v| format!("{}|{}|{}|{}", normalized_time(&v["window_start"]), normalized_time(&v["window_end"]), v["abandoned"], v["carts"]))
        .collect();
    rows.sort();
    rows
}

fn rate_change_rows(values: &[Value]) -> Vec<String> {
    let mut rows: Vec<String> = values
        .iter()
        .map(|v| format!("{}|{}|{}|{}", normalized_time(&v["window_start"]), normalized_time(&v["window_end"]), v["abandoned"], v["status"].as_str().unwrap_or("?")))
        .collect();
    rows.sort();
    rows
}

/// The funnel lake as pyarrow reads it (the category from the Hive path).
fn funnel_rows(lake: &Path) -> TestResult<Vec<String>> {
    let script = r#"
import sys, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table()
for r in t.to_pylist():
    print(f"{r['window_start']}|{r['category']}|{r['page_views']}|{r['add_to_carts']}|{r['checkouts']}")
"#;
    let out = Command::new("python3").args(["-c", script, &lake.display().to_string()]).output()?;
    if !out.status.success() {
        return Err(format!("pyarrow: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let mut rows: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (time, rest) = l.split_once('|').unwrap_or((l, ""));
            format!("{}|{rest}", normalized_time(&Value::String(time.to_string())))
        })
        .collect();
    rows.sort();
    Ok(rows)
}

/// The example with this test's broker and lake.
fn example_for(broker: &Broker, lake: &Path) -> String {
    EXAMPLE
        .replace("localhost:9092", &broker.addr)
        .replace(".sluice/lake/funnel", &lake.display().to_string())
        .replace("'execution.checkpointing.interval' = '2 s'", "'execution.checkpointing.interval' = '500 ms'")
}

fn run(script: &Path, dir: &Path) -> std::io::Result<Child> {
    Command::new(SLUICE).arg("run").arg(script).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
}

fn broker_with_topics() -> TestResult<Broker> {
    let broker = start_broker()?;
    broker.create_topic("clicks", 2)?;
    for topic in ["cart_alerts", "rate_alerts", "rate_alert_changes"] {
        broker.create_topic(topic, 2)?;
    }
    Ok(broker)
}

#[test]
fn the_clickstream_job_gives_exactly_the_expected_alerts_and_funnel() -> TestResult {
    let broker = broker_with_topics()?;
    let clicks = clicks(40, 7);
    broker.produce_records("clicks", &clicks.iter().map(record).collect::<Vec<_>>())?;
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake/funnel");
    let script = dir.path().join("alerts.sql");
    std::fs::write(&script, example_for(&broker, &lake))?;

    let mut child = run(&script, dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            return Err("the example did not finish within 180 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr_of(&mut child)?;
    assert!(status.success(), "{stderr}");

    let sessions = sessions(&clicks);
    let expected = expected_cart_alerts(&sessions);
    assert!(expected.len() > 20, "the seed gives many abandoned carts: {}", expected.len());
    assert_eq!(cart_alert_rows(&consume(&broker, "cart_alerts", 5)?)?, expected, "cart alerts");
    let rates = expected_rate_alerts(&sessions);
    assert!(!rates.is_empty(), "some windows pass the threshold");
    assert_eq!(rate_alert_rows(&consume(&broker, "rate_alerts", 5)?), rates, "abandonment-rate alerts");
    let changes = expected_rate_changes(&sessions);
    assert!(changes.iter().any(|c| c.ends_with("RESOLVED")), "the seed resolves the alert at least once: {changes:?}");
    assert_eq!(rate_change_rows(&consume(&broker, "rate_alert_changes", 5)?), changes, "FIRING/RESOLVED changes of the rate alert");
    assert_eq!(funnel_rows(&lake)?, expected_funnel(&clicks), "the funnel");
    Ok(())
}

/// The whole job reading the topic without an end: killed with SIGKILL after
/// some alerts are out while clicks keep coming, then started again; clicks
/// far ahead close every session and window. Every alert, every change of
/// the rate alert and every funnel row comes once.
#[test]
fn the_job_stays_exactly_once_across_a_sigkill() -> TestResult {
    let broker = broker_with_topics()?;
    let clicks = clicks(40, 11);
    let records: Vec<Value> = clicks.iter().map(record).collect();
    let (first, rest) = records.split_at(records.len() / 2);
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake/funnel");
    let script = dir.path().join("job.sql");
    std::fs::write(&script, example_for(&broker, &lake).replace(", 'scan.bounded.mode' = 'latest-offset'", ""))?;
    let checkpoints = dir.path().join(".sluice/checkpoints/clickstream");

    broker.produce_records("clicks", first)?;
    let mut child = run(&script, dir.path())?;
    // Killed once some alerts are out and a checkpoint has completed since.
    let mut cart_alerts = Vec::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cart_alerts.is_empty() && Instant::now() < deadline {
        seen = wait_for_checkpoints(&mut child, &checkpoints, seen, 1)?;
        cart_alerts = consume(&broker, "cart_alerts", 5)?;
    }
    assert!(!cart_alerts.is_empty(), "the killed run had written alerts");
    wait_for_checkpoints(&mut child, &checkpoints, seen, 1)?;
    child.kill()?;
    child.wait()?;

    broker.produce_records("clicks", rest)?;
    // A click far ahead on each partition moves event time past every session.
    let far_ahead: Vec<Value> = (0..2)
        .map(|partition| {
            let click = Click { user: 9998 + partition, kind: "page_view", item: 1, cents: 100, category: "books", ts: BASE_S + 48 * 60 * MINUTE };
            let mut r = record(&click);
            r["partition"] = json!(partition);
            r
        })
        .collect();
    broker.produce_records("clicks", &far_ahead)?;
    let mut child = run(&script, dir.path())?;
    let sessions = sessions(&clicks);
    let expected = expected_cart_alerts(&sessions);
    let deadline = Instant::now() + Duration::from_secs(120);
    while cart_alerts.len() < expected.len() && Instant::now() < deadline {
        cart_alerts.extend(consume(&broker, "cart_alerts", 5)?);
    }
    // The other sinks commit at the same checkpoints: one more, and all is out.
    let latest = common::runs::latest_checkpoint(&checkpoints);
    wait_for_checkpoints(&mut child, &checkpoints, latest, 2)?;
    Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    let stderr = stderr_of(&mut child)?;
    assert!(status.success() && stderr.contains("resuming 'clickstream' from checkpoint"), "{status}: {stderr}");
    cart_alerts.extend(consume(&broker, "cart_alerts", 5)?);
    assert_eq!(cart_alert_rows(&cart_alerts)?, expected, "each cart alert once, across the kill");
    assert_eq!(rate_alert_rows(&consume(&broker, "rate_alerts", 5)?), expected_rate_alerts(&sessions), "rate alerts");
    assert_eq!(rate_change_rows(&consume(&broker, "rate_alert_changes", 5)?), expected_rate_changes(&sessions), "rate alert changes");
    assert_eq!(funnel_rows(&lake)?, expected_funnel(&clicks), "the funnel");
    Ok(())
}
