//! Join state stays bounded: an interval join, or a window join of two window
//! TVFs, over ten times more input holds about as much state at its peak,
//! because the watermark retires kept rows.

use sluice_sql::{Session, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A view-to-checkout join by time: the checkout within 10 s after the view.
const INTERVAL_JOIN: &str = "SELECT v.user_id, p.item_id FROM (SELECT * FROM clicks WHERE event_type = 'page_view') v \
     JOIN (SELECT * FROM clicks WHERE event_type = 'checkout') p \
     ON v.user_id = p.user_id AND p.ts BETWEEN v.ts AND v.ts + INTERVAL '10' SECOND";

/// The same as Flink's window join of two TUMBLE TVFs: in the same 10 s window.
const WINDOW_JOIN: &str = "SELECT v.user_id, p.item_id \
     FROM (SELECT * FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) WHERE event_type = 'page_view') v \
     JOIN (SELECT * FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) WHERE event_type = 'checkout') p \
     ON v.window_start = p.window_start AND v.window_end = p.window_end AND v.user_id = p.user_id";

/// Runs the join `query` over `rows` generated clicks; returns the joined rows
/// and the peak state. The two sides' sources are aligned (within 5 s of event
/// time of each other): otherwise the side read faster waits in state for the
/// other's watermark, as far ahead as the channels between them let it run.
async fn join_peak_state(query: &str, rows: usize) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let mut session = Session::default();
    session.set_parallelism(2);
    session.execute_script("SET 'scan.watermark.alignment.max-drift' = '5 s'").await?;
    session
        .execute_script(&format!(
            "CREATE TABLE clicks (user_id BIGINT, session_id BIGINT, event_type VARCHAR, page VARCHAR, \
             item_id BIGINT, price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
             WITH (connector = 'generator', rows = '{rows}', seed = '3', users = '500', 'interval.ms' = '20', \
             'disorder.ms' = '1000', 'batch.size' = '256')"
        ))
        .await?;
    let mut outputs = session.execute_script(query).await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a continuous query".into()) };
    let mut joined = 0u64;
    while let Some(b) = q.results.recv().await {
        joined += b.num_rows() as u64;
    }
    q.job.wait().await?;
    let metrics = q.job.metrics();
    assert_eq!(metrics.state_bytes, 0, "every kept row is retired by the final watermark");
    Ok((joined, metrics.state_bytes_peak))
}

/// `query`'s peak state over 20k and 200k clicks is about the same.
async fn state_does_not_grow_with_input(query: &str) -> TestResult {
    let (small_rows, small_peak) = join_peak_state(query, 20_000).await?;
    let (large_rows, large_peak) = join_peak_state(query, 200_000).await?;
    eprintln!("peak join state: {small_peak} B for 20k rows, {large_peak} B for 200k rows");
    assert!(small_rows > 0 && large_rows > 5 * small_rows, "the larger input joins more rows: {small_rows} vs {large_rows}");
    assert!(small_peak > 0, "the join kept rows");
    assert!(
        large_peak < 3 * small_peak,
        "ten times the input must not need much more state (kept rows would grow tenfold): peak {small_peak} B for 20k rows, {large_peak} B for 200k"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_state_does_not_grow_with_input() -> TestResult {
    state_does_not_grow_with_input(INTERVAL_JOIN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_join_of_tvfs_state_does_not_grow_with_input() -> TestResult {
    state_does_not_grow_with_input(WINDOW_JOIN).await
}

/// Peak state of `query` over 3,000 clicks paced at 1,000 a second, nearly every
/// one from a user of its own, with the given TTL (`'0'`: none).
async fn peak_state_with_ttl(query: &str, ttl: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let mut session = Session::default();
    session.set_parallelism(1);
    session.execute_script(&format!("SET 'table.exec.state.ttl' = '{ttl}'")).await?;
    session
        .execute_script(
            "CREATE TABLE clicks (user_id BIGINT, event_type VARCHAR, item_id BIGINT, ts TIMESTAMP(3), \
             WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
             WITH (connector = 'generator', rows = '3000', rate = '1000', users = '1000000', 'batch.size' = '50')",
        )
        .await?;
    let mut outputs = session.execute_script(query).await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a continuous query".into()) };
    while q.results.recv().await.is_some() {}
    q.job.wait().await?;
    Ok(q.job.metrics().state_bytes_peak)
}

/// A TTL bounds the state of what nothing else bounds: a GROUP BY without a
/// window and a join without time bounds keep only recently updated keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_ttl_bounds_updating_aggregates_and_regular_joins() -> TestResult {
    for query in [
        "SELECT user_id, count(*) FROM clicks GROUP BY user_id",
        "SELECT a.user_id, b.item_id FROM clicks a JOIN clicks b ON a.user_id = b.user_id",
    ] {
        let unbounded = peak_state_with_ttl(query, "0").await?;
        let with_ttl = peak_state_with_ttl(query, "300 ms").await?;
        eprintln!("{query}: peak state {unbounded} B without a TTL, {with_ttl} B with 300 ms");
        assert!(with_ttl * 2 < unbounded, "{query}: a 300 ms TTL keeps a fraction of 3 s of keys ({with_ttl} B vs {unbounded} B)");
    }
    Ok(())
}
