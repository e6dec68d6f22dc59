//! Join state stays bounded: an interval join over ten times more input holds
//! about as much state at its peak, because the watermark retires kept rows.

use sluice_sql::{Session, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs a view-to-checkout interval join over `rows` generated clicks; returns
/// the joined rows and the peak state. The two sides' sources are aligned
/// (within 5 s of event time of each other): otherwise the side read faster
/// waits in state for the other's watermark, as far ahead as the channels
/// between them let it run.
async fn interval_join_peak_state(rows: usize) -> Result<(u64, u64), Box<dyn std::error::Error>> {
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
    let mut outputs = session
        .execute_script(
            "SELECT v.user_id, p.item_id FROM (SELECT * FROM clicks WHERE event_type = 'page_view') v \
             JOIN (SELECT * FROM clicks WHERE event_type = 'checkout') p \
             ON v.user_id = p.user_id AND p.ts BETWEEN v.ts AND v.ts + INTERVAL '10' SECOND",
        )
        .await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_state_does_not_grow_with_input() -> TestResult {
    let (small_rows, small_peak) = interval_join_peak_state(20_000).await?;
    let (large_rows, large_peak) = interval_join_peak_state(200_000).await?;
    eprintln!("peak join state: {small_peak} B for 20k rows, {large_peak} B for 200k rows");
    assert!(small_rows > 0 && large_rows > 5 * small_rows, "the larger input joins more rows: {small_rows} vs {large_rows}");
    assert!(small_peak > 0, "the join kept rows");
    assert!(
        large_peak < 3 * small_peak,
        "ten times the input must not need much more state (kept rows would grow tenfold): peak {small_peak} B for 20k rows, {large_peak} B for 200k"
    );
    Ok(())
}
