//! Differential tests: a windowed streaming query over a bounded, out-of-order
//! input must give exactly the rows of the equivalent batch query that DataFusion
//! runs over the same data, written independently of Sluice's window rewrite.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_connectors::generator::{clickstream_schema, ClickstreamGenerator, GeneratorConfig};
use sluice_connectors::table_printer::format_cells;
use sluice_connectors::{Shard, TableSpec};
use sluice_sql::{Session, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Out-of-order by up to 1.5 s, under a 2 s watermark delay: no row is late.
const OPTIONS: [(&str, &str); 5] =
    [("rows", "20000"), ("seed", "7"), ("users", "200"), ("interval.ms", "50"), ("disorder.ms", "1500")];

const DDL: &str = "CREATE TABLE clicks (user_id BIGINT, session_id BIGINT, event_type VARCHAR, page VARCHAR, \
    item_id BIGINT, price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
    WITH (connector = 'generator', rows = '20000', seed = '7', users = '200', 'interval.ms' = '50', 'disorder.ms' = '1500')";

/// SQL functions the streaming queries may use; batch queries write their bodies out.
const FUNCTIONS: &str = "CREATE FUNCTION with_tax(p DOUBLE) RETURNS DOUBLE AS 'p * 1.19'; \
    CREATE FUNCTION referrer(page VARCHAR) RETURNS VARCHAR AS 'url_query_param(page, ''utm_source'')'";

fn sorted_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for b in batches {
        rows.extend(format_cells(b)?);
    }
    rows.sort();
    Ok(rows)
}

async fn streaming(sql: &str, lanes: usize) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let mut session = Session::default();
    session.set_parallelism(lanes);
    session.execute_script(DDL).await?;
    session.execute_script(FUNCTIONS).await?;
    let mut outputs = session.execute_script(sql).await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a continuous query".into()) };
    let mut batches = Vec::new();
    while let Some(b) = q.results.recv().await {
        batches.push(b);
    }
    q.job.wait().await?;
    assert_eq!(q.job.metrics().late_rows, 0, "the input was generated without late rows");
    sorted_rows(&batches)
}

async fn batch(sql: &str) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let options: BTreeMap<String, String> = OPTIONS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let spec = TableSpec::new("clicks", clickstream_schema(), "generator", options);
    let mut generator = ClickstreamGenerator::new(GeneratorConfig::from_table(&spec)?, Shard::ALL);
    let mut data = Vec::new();
    while let Some(b) = generator.next_batch(4096)? {
        data.push(b);
    }
    let ctx = SessionContext::new();
    ctx.register_table("clicks", Arc::new(MemTable::try_new(clickstream_schema(), vec![data])?))?;
    let batches = ctx.sql(sql).await?.collect().await?;
    sorted_rows(&batches)
}

/// Checks the streaming query in one lane and in several (rows exchanged by key).
async fn assert_same(streaming_sql: &str, batch_sql: &str) -> TestResult {
    let expected = batch(batch_sql).await?;
    assert!(!expected.is_empty(), "the batch query found no rows");
    for lanes in [1, 3] {
        let actual = streaming(streaming_sql, lanes).await?;
        assert_eq!(actual.len(), expected.len(), "row counts differ with {lanes} lane(s)");
        assert_eq!(actual, expected, "rows differ with {lanes} lane(s)");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_window_matches_batch_group_by() -> TestResult {
    assert_same(
        "SELECT window_start, window_end, event_type, count(*), sum(item_id), round(avg(price), 4), \
         min(price), max(price), count(DISTINCT user_id), approx_distinct(session_id) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
        "SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, \
         date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') + INTERVAL '1 minute' AS we, \
         event_type, count(*), sum(item_id), round(avg(price), 4), min(price), max(price), \
         count(DISTINCT user_id), approx_distinct(session_id) \
         FROM clicks GROUP BY 1, 2, 3",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_functions_in_window_keys_and_aggregates_match_written_out_batch() -> TestResult {
    assert_same(
        "SELECT window_start, referrer(page), count(*), round(sum(with_tax(price)), 2) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '2' MINUTE)) \
         GROUP BY window_start, window_end, referrer(page)",
        "SELECT date_bin(INTERVAL '2 minutes', ts, TIMESTAMP '1970-01-01 00:00:00'), \
         substr(page, strpos(page, 'utm_source=') + 11), count(*), round(sum(price * 1.19), 2) \
         FROM clicks GROUP BY 1, 2",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_window_matches_batch_join_on_window_list() -> TestResult {
    assert_same(
        "SELECT window_start, window_end, count(*), round(sum(price), 2) \
         FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND, INTERVAL '2' MINUTE)) \
         WHERE event_type <> 'page_view' \
         GROUP BY window_start, window_end",
        "SELECT w.ws, w.ws + INTERVAL '2 minutes', count(*), round(sum(price), 2) \
         FROM clicks JOIN (SELECT unnest(generate_series(TIMESTAMP '2023-12-31 23:50:00', \
                 TIMESTAMP '2024-01-01 01:00:00', INTERVAL '30 seconds')) AS ws) w \
           ON clicks.ts >= w.ws AND clicks.ts < w.ws + INTERVAL '2 minutes' \
         WHERE event_type <> 'page_view' \
         GROUP BY w.ws",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_window_matches_batch_gaps_and_islands() -> TestResult {
    assert_same(
        "SELECT user_id, window_start, window_end, count(*), round(sum(price), 2), max(item_id) \
         FROM TABLE(SESSION(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND)) \
         GROUP BY window_start, window_end, user_id",
        "WITH marked AS ( \
           SELECT user_id, ts, price, item_id, \
             CASE WHEN lag(ts) OVER (PARTITION BY user_id ORDER BY ts) IS NULL \
                    OR ts > lag(ts) OVER (PARTITION BY user_id ORDER BY ts) + INTERVAL '5 seconds' \
                  THEN 1 ELSE 0 END AS new_session \
           FROM clicks), \
         numbered AS ( \
           SELECT *, sum(new_session) OVER (PARTITION BY user_id ORDER BY ts \
             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM marked) \
         SELECT user_id, min(ts), max(ts) + INTERVAL '5 seconds', count(*), round(sum(price), 2), max(item_id) \
         FROM numbered GROUP BY user_id, sid",
    )
    .await
}

/// Cumulative windows as a batch join on their list: every block of 5 minutes
/// with each end a minute apart up to the block's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulate_window_matches_batch_join_on_window_list() -> TestResult {
    assert_same(
        "SELECT window_start, window_end, event_type, count(*), round(sum(price), 2), max(item_id) \
         FROM TABLE(CUMULATE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)) \
         WHERE event_type <> 'page_view' \
         GROUP BY window_start, window_end, event_type",
        "SELECT w.ws, w.we, event_type, count(*), round(sum(price), 2), max(item_id) \
         FROM clicks JOIN ( \
             SELECT ws, we FROM \
               (SELECT unnest(generate_series(TIMESTAMP '2023-12-31 23:50:00', \
                   TIMESTAMP '2024-01-01 01:00:00', INTERVAL '5 minutes')) AS ws) starts \
             JOIN (SELECT unnest(generate_series(TIMESTAMP '2023-12-31 23:51:00', \
                   TIMESTAMP '2024-01-01 01:00:00', INTERVAL '1 minute')) AS we) ends \
             ON we > ws AND we <= ws + INTERVAL '5 minutes') w \
           ON clicks.ts >= w.ws AND clicks.ts < w.we \
         WHERE event_type <> 'page_view' \
         GROUP BY w.ws, w.we, event_type",
    )
    .await
}

/// Sessions per partition (user and event type), with Flink's `PARTITION BY`,
/// against gaps and islands computed per the same partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_session_window_matches_batch_gaps_and_islands() -> TestResult {
    assert_same(
        "SELECT user_id, event_type, window_start, window_end, count(*), round(sum(price), 2) \
         FROM TABLE(SESSION(TABLE clicks PARTITION BY (user_id, event_type), DESCRIPTOR(ts), INTERVAL '20' SECOND)) \
         GROUP BY window_start, window_end, event_type, user_id",
        "WITH marked AS ( \
           SELECT user_id, event_type, ts, price, \
             CASE WHEN lag(ts) OVER (PARTITION BY user_id, event_type ORDER BY ts) IS NULL \
                    OR ts > lag(ts) OVER (PARTITION BY user_id, event_type ORDER BY ts) + INTERVAL '20 seconds' \
                  THEN 1 ELSE 0 END AS new_session \
           FROM clicks), \
         numbered AS ( \
           SELECT *, sum(new_session) OVER (PARTITION BY user_id, event_type ORDER BY ts \
             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM marked) \
         SELECT user_id, event_type, min(ts), max(ts) + INTERVAL '20 seconds', count(*), round(sum(price), 2) \
         FROM numbered GROUP BY user_id, event_type, sid",
    )
    .await
}

/// Window Top-N over a windowed aggregation (the three users with most clicks
/// per minute) against the same ROW_NUMBER query run as a batch; the ORDER BY
/// ends with the user, so no two rows tie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_top_n_over_aggregation_matches_batch_row_number() -> TestResult {
    assert_same(
        "SELECT * FROM ( \
           SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY n DESC, user_id) AS rn \
           FROM (SELECT window_start, window_end, user_id, count(*) AS n, round(sum(price), 2) AS spent \
                 FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
                 GROUP BY window_start, window_end, user_id)) \
         WHERE rn <= 3",
        "SELECT * FROM ( \
           SELECT *, ROW_NUMBER() OVER (PARTITION BY ws, we ORDER BY n DESC, user_id) AS rn \
           FROM (SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, \
                   date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') + INTERVAL '1 minute' AS we, \
                   user_id, count(*) AS n, round(sum(price), 2) AS spent \
                 FROM clicks GROUP BY 1, 2, 3)) \
         WHERE rn <= 3",
    )
    .await
}

/// Window Top-N directly over the window TVF, with a key besides the window
/// (each event type's two most expensive clicks per 30 s), and window
/// deduplication (each user's first and last click per minute, rn left out),
/// against the same ROW_NUMBER queries as batches; the ORDER BY ends with keys
/// that leave no ties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_top_n_and_deduplication_over_tvf_match_batch_row_number() -> TestResult {
    let tvf = |size: &str| format!("TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '{size}' SECOND))");
    let bins = |size: &str| {
        format!(
            "SELECT *, date_bin(INTERVAL '{size} seconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start, \
             date_bin(INTERVAL '{size} seconds', ts, TIMESTAMP '1970-01-01 00:00:00') + INTERVAL '{size} seconds' \
             AS window_end FROM clicks"
        )
    };
    let top = "SELECT window_start, window_end, event_type, user_id, price, ts, rn FROM ( \
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, event_type \
                   ORDER BY price DESC, ts, user_id, session_id) AS rn FROM {input}) \
               WHERE rn <= 2";
    assert_same(&top.replace("{input}", &tvf("30")), &top.replace("{input}", &format!("({})", bins("30")))).await?;
    for direction in ["ASC", "DESC"] {
        let dedup = format!(
            "SELECT window_start, user_id, event_type, page, ts FROM ( \
               SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, user_id \
                 ORDER BY ts {direction}, session_id, event_type, page, item_id) AS rn FROM {{input}}) \
             WHERE rn = 1"
        );
        assert_same(&dedup.replace("{input}", &tvf("60")), &dedup.replace("{input}", &format!("({})", bins("60"))))
            .await?;
    }
    Ok(())
}

/// GROUPING SETS, ROLLUP and CUBE in a window aggregation against the same
/// grouping of the batch query, GROUPING() telling rolled-up keys from NULLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_grouping_sets_rollup_and_cube_match_batch() -> TestResult {
    let bin = "date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00')";
    for (keys, sets) in [
        ("event_type, user_id", "GROUPING SETS ((event_type), (user_id), ())"),
        ("event_type, user_id", "ROLLUP (event_type, user_id)"),
        ("event_type, item_id % 3", "CUBE (event_type, item_id % 3)"),
    ] {
        // Order-independent aggregates: rows reach a group in an order that varies
        // with the lanes, and a float sum would round differently.
        let select = format!("{keys}, count(*), sum(item_id), max(price), min(user_id), GROUPING(event_type)");
        assert_same(
            &format!(
                "SELECT window_start, window_end, {select} \
                 FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
                 GROUP BY window_start, window_end, {sets}"
            ),
            &format!(
                "SELECT ws, ws + INTERVAL '1 minute', {select} \
                 FROM (SELECT *, {bin} AS ws FROM clicks) GROUP BY ws, {sets}"
            ),
        )
        .await?;
    }
    Ok(())
}

/// Declares the generator table and `sink_ddl`, runs `insert` in two lanes to completion.
async fn run_insert(sink_ddl: &str, insert: &str) -> TestResult {
    let mut session = Session::default();
    session.set_parallelism(2);
    session.execute_script(DDL).await?;
    session.execute_script(sink_ddl).await?;
    let mut outputs = session.execute_script(insert).await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    job.wait().await?;
    Ok(())
}

/// The Parquet a file sink writes, read back by DataFusion's own Parquet reader,
/// holds exactly the rows of the batch query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_output_read_by_datafusion_matches_batch() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("counts.parquet");
    let sink_ddl = format!(
        "CREATE TABLE counts (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT, revenue DOUBLE) \
         WITH (connector = 'file', format = 'parquet', path = '{}')",
        path.display()
    );
    run_insert(
        &sink_ddl,
        "INSERT INTO counts SELECT window_start, event_type, count(*), round(sum(price), 2) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
    )
    .await?;

    let reader = SessionContext::new();
    let written = reader.read_parquet(path.display().to_string(), Default::default()).await?.collect().await?;
    let expected = batch(
        "SELECT date_bin(INTERVAL '5 minutes', ts, TIMESTAMP '1970-01-01 00:00:00'), event_type, count(*), \
         round(sum(price), 2) FROM clicks GROUP BY 1, 2",
    )
    .await?;
    assert_eq!(sorted_rows(&written)?, expected);
    assert!(!dir.path().join(".counts.parquet.inprogress").exists());
    Ok(())
}

/// The Hive-partitioned lake, read back by DataFusion's own listing table with
/// the partition columns taken from the paths, holds exactly the batch rows, every
/// row in the directory its values name, in completed files only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_partitions_read_back_by_datafusion_match_batch() -> TestResult {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingOptions;

    let dir = tempfile::tempdir()?;
    let sink_ddl = format!(
        "CREATE TABLE lake (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT, revenue DOUBLE) \
         WITH (connector = 'lake', path = '{}', 'partition.by' = 'dt,hour,event_type', \
               'partition.time-column' = 'window_start', 'rollover.rows' = '7')",
        dir.path().display()
    );
    run_insert(
        &sink_ddl,
        "INSERT INTO lake SELECT window_start, event_type, count(*), round(sum(price), 2) \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, event_type",
    )
    .await?;

    let reader = SessionContext::new();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            ("dt".to_string(), DataType::Utf8),
            ("hour".to_string(), DataType::Utf8),
            ("event_type".to_string(), DataType::Utf8),
        ]);
    reader.register_listing_table("lake", dir.path().display().to_string(), options, None, None).await?;
    let written = reader.sql("SELECT window_start, event_type, n, revenue FROM lake").await?.collect().await?;
    let expected = batch(
        "SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00'), event_type, count(*), \
         round(sum(price), 2) FROM clicks GROUP BY 1, 2",
    )
    .await?;
    assert_eq!(sorted_rows(&written)?, expected);
    let misplaced = reader
        .sql("SELECT count(*) FROM lake WHERE dt <> to_char(window_start, '%Y-%m-%d') OR hour <> to_char(window_start, '%H')")
        .await?
        .collect()
        .await?;
    assert_eq!(sorted_rows(&misplaced)?, vec![vec!["0".to_string()]]);
    // Files roll over at 7 rows: every partition holds complete files only.
    let mut files = 0;
    for entry in walk(dir.path())? {
        let name = entry.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        assert!(name.starts_with("part-") && name.ends_with(".parquet"), "unexpected file {}", entry.display());
        files += 1;
    }
    assert!(files > expected.len() / 7, "{files} files");
    Ok(())
}

fn walk(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// The rows a changelog leaves standing once applied: `+I`/`+U` add a row,
/// `-U`/`-D` take one back (the change kind is the first column).
async fn streaming_changelog_final(sql: &str, lanes: usize) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let mut standing: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for mut row in streaming(sql, lanes).await? {
        let op = row.remove(0);
        let delta = match op.as_str() {
            "+I" | "+U" => 1,
            "-U" | "-D" => -1,
            other => return Err(format!("unexpected change kind {other}").into()),
        };
        *standing.entry(row).or_default() += delta;
    }
    let mut rows = Vec::new();
    for (row, count) in standing {
        assert!(count >= 0, "row {row:?} taken back more often than sent");
        rows.extend(std::iter::repeat_n(row, count as usize));
    }
    Ok(rows)
}

/// Like [`assert_same`] for updating queries: the applied changelog must equal
/// the batch result.
async fn assert_same_when_applied(streaming_sql: &str, batch_sql: &str) -> TestResult {
    let expected = batch(batch_sql).await?;
    assert!(!expected.is_empty(), "the batch query found no rows");
    for lanes in [1, 3] {
        let actual = streaming_changelog_final(streaming_sql, lanes).await?;
        assert_eq!(actual.len(), expected.len(), "row counts differ with {lanes} lane(s)");
        assert_eq!(actual, expected, "rows differ with {lanes} lane(s)");
    }
    Ok(())
}

/// Views followed by purchases of the same user within 30 s; the same SQL runs
/// as a batch join in DataFusion.
const INTERVAL_JOIN: &str = "SELECT v.user_id, v.page, p.item_id, v.ts, p.ts \
    FROM (SELECT * FROM clicks WHERE event_type = 'page_view') v \
    JOIN (SELECT * FROM clicks WHERE event_type = 'checkout') p \
    ON v.user_id = p.user_id AND p.ts BETWEEN v.ts AND v.ts + INTERVAL '30' SECOND";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_matches_batch_join() -> TestResult {
    assert_same(INTERVAL_JOIN, INTERVAL_JOIN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_outer_interval_join_matches_batch_join() -> TestResult {
    let sql = "SELECT p.user_id, p.item_id, p.ts, c.ts \
        FROM (SELECT * FROM clicks WHERE event_type = 'checkout') p \
        LEFT JOIN (SELECT * FROM clicks WHERE event_type = 'add_to_cart') c \
        ON p.user_id = c.user_id AND p.item_id = c.item_id AND c.ts BETWEEN p.ts - INTERVAL '2' MINUTE AND p.ts";
    assert_same(sql, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_join_matches_batch_join_of_aggregates() -> TestResult {
    assert_same(
        "SELECT v.window_start, v.user_id, v.views, p.purchases FROM \
         (SELECT window_start, window_end, user_id, count(*) AS views \
          FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) WHERE event_type = 'page_view' \
          GROUP BY window_start, window_end, user_id) v \
         JOIN (SELECT window_start, window_end, user_id, count(*) AS purchases \
          FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) WHERE event_type = 'checkout' \
          GROUP BY window_start, window_end, user_id) p \
         ON v.window_start = p.window_start AND v.window_end = p.window_end AND v.user_id = p.user_id",
        "SELECT v.ws, v.user_id, v.views, p.purchases FROM \
         (SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, user_id, count(*) AS views \
          FROM clicks WHERE event_type = 'page_view' GROUP BY 1, 2) v \
         JOIN (SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, user_id, count(*) AS purchases \
          FROM clicks WHERE event_type = 'checkout' GROUP BY 1, 2) p \
         ON v.ws = p.ws AND v.user_id = p.user_id",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_aggregate_changelog_applies_to_batch_group_by() -> TestResult {
    let sql = "SELECT event_type, count(*), sum(item_id), min(price), max(price) FROM clicks GROUP BY event_type";
    assert_same_when_applied(sql, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_left_join_changelog_applies_to_batch_join() -> TestResult {
    let sql = "SELECT p.user_id, p.item_id, c.session_id \
        FROM (SELECT * FROM clicks WHERE event_type = 'checkout' AND user_id < 20) p \
        LEFT JOIN (SELECT * FROM clicks WHERE event_type = 'add_to_cart' AND user_id < 10) c \
        ON p.user_id = c.user_id AND p.item_id = c.item_id";
    assert_same_when_applied(sql, sql).await
}

/// An updating query into the lake: the files carry the `op` column first, and a
/// reader that applies it (DataFusion's listing table, partitioned by a column)
/// gets the batch GROUP BY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changelog_into_lake_applies_to_batch_group_by() -> TestResult {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingOptions;

    let dir = tempfile::tempdir()?;
    let sink_ddl = format!(
        "CREATE TABLE totals (event_type VARCHAR, n BIGINT, items BIGINT) \
         WITH (connector = 'lake', path = '{}', 'partition.by' = 'event_type')",
        dir.path().display()
    );
    run_insert(&sink_ddl, "INSERT INTO totals SELECT event_type, count(*), sum(item_id) FROM clicks GROUP BY event_type")
        .await?;
    let reader = SessionContext::new();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("event_type".to_string(), DataType::Utf8)]);
    reader.register_listing_table("totals", dir.path().display().to_string(), options, None, None).await?;
    let written = reader.sql("SELECT op, event_type, n, items FROM totals").await?.collect().await?;
    let mut standing: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for mut row in sorted_rows(&written)? {
        let op = row.remove(0);
        *standing.entry(row).or_default() += if op.starts_with('+') { 1 } else { -1 };
    }
    let applied: Vec<Vec<String>> = standing.into_iter().filter(|(_, c)| *c > 0).map(|(r, _)| r).collect();
    assert!(written.iter().map(|b| b.num_rows()).sum::<usize>() > applied.len(), "updates were written");
    assert_eq!(applied, batch("SELECT event_type, count(*), sum(item_id) FROM clicks GROUP BY event_type").await?);
    Ok(())
}

/// Running the same INSERT INTO a lake again replaces what the first run wrote:
/// file names come from the statement, and the replay deletes the first run's
/// files it did not rewrite (here the first run rolled files more often).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_insert_into_lake_overwrites_instead_of_duplicating() -> TestResult {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingOptions;

    let dir = tempfile::tempdir()?;
    let insert = "INSERT INTO counts SELECT window_start, event_type, count(*) \
        FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, event_type";
    let ddl = |rows: usize| {
        format!(
            "CREATE TABLE counts (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT) \
             WITH (connector = 'lake', path = '{}', 'partition.by' = 'event_type', 'rollover.rows' = '{rows}')",
            dir.path().display()
        )
    };
    run_insert(&ddl(3), insert).await?;
    let first_run = walk(dir.path())?.len();
    run_insert(&ddl(10), insert).await?;
    let files = walk(dir.path())?;
    assert!(files.len() < first_run, "the replay's fewer, larger files replaced the first run's");
    let reader = SessionContext::new();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("event_type".to_string(), DataType::Utf8)]);
    reader.register_listing_table("counts", dir.path().display().to_string(), options, None, None).await?;
    let written = reader.sql("SELECT window_start, event_type, n FROM counts").await?.collect().await?;
    let expected = batch(
        "SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00'), event_type, count(*) FROM clicks GROUP BY 1, 2",
    )
    .await?;
    assert_eq!(sorted_rows(&written)?, expected, "exactly the rows of one run");
    Ok(())
}

/// A second clickstream for UNION ALL: other users and items (another seed),
/// and a slower event time, so the union's watermark follows one input, then
/// (once that ends) the other.
const SECOND_OPTIONS: [(&str, &str); 5] =
    [("rows", "15000"), ("seed", "8"), ("users", "200"), ("interval.ms", "80"), ("disorder.ms", "1500")];

/// `clicks` and `clicks_b` (see [`SECOND_OPTIONS`]) as DataFusion tables; `sql` run over them.
async fn batch_of_two(sql: &str) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let ctx = SessionContext::new();
    for (name, options) in [("clicks", &OPTIONS), ("clicks_b", &SECOND_OPTIONS)] {
        let options: BTreeMap<String, String> = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let spec = TableSpec::new(name, clickstream_schema(), "generator", options);
        let mut generator = ClickstreamGenerator::new(GeneratorConfig::from_table(&spec)?, Shard::ALL);
        let mut data = Vec::new();
        while let Some(b) = generator.next_batch(4096)? {
            data.push(b);
        }
        ctx.register_table(name, Arc::new(MemTable::try_new(clickstream_schema(), vec![data])?))?;
    }
    let batches = ctx.sql(sql).await?.collect().await?;
    sorted_rows(&batches)
}

/// UNION ALL of two generator tables (a view), then a tumbling window count; and
/// a union of two windowed branches added up by a window aggregate over it.
/// Each input is out of order under its own watermark only, so no row is late
/// for the union's (the least of the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_all_of_two_streams_under_windows_matches_batch() -> TestResult {
    let options: Vec<String> = SECOND_OPTIONS.iter().map(|(k, v)| format!("'{k}' = '{v}'")).collect();
    let second = format!(
        "CREATE TABLE clicks_b (user_id BIGINT, session_id BIGINT, event_type VARCHAR, page VARCHAR, \
         item_id BIGINT, price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
         WITH (connector = 'generator', {}); \
         CREATE VIEW both_clicks AS SELECT user_id, event_type, price, ts FROM clicks \
         UNION ALL SELECT user_id + 1000, event_type, price, ts FROM clicks_b;",
        options.join(", ")
    );
    let both = "SELECT user_id, event_type, price, ts FROM clicks UNION ALL SELECT user_id + 1000, event_type, price, ts FROM clicks_b";
    let bin = "date_bin(INTERVAL '1 minute', ts, TIMESTAMP '1970-01-01 00:00:00')";
    let cases = [
        (
            "SELECT window_start, window_end, event_type, count(*), sum(user_id), min(price), max(price), count(DISTINCT user_id) \
             FROM TABLE(TUMBLE(TABLE both_clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
             GROUP BY window_start, window_end, event_type"
                .to_string(),
            format!(
                "SELECT {bin}, {bin} + INTERVAL '1 minute', event_type, count(*), sum(user_id), min(price), max(price), \
                 count(DISTINCT user_id) FROM ({both}) GROUP BY 1, 2, 3"
            ),
        ),
        (
            "SELECT window_start, window_end, sum(n), count(*) FROM ( \
               SELECT window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
               GROUP BY window_start, window_end \
               UNION ALL \
               SELECT window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE clicks_b, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
               GROUP BY window_start, window_end) \
             GROUP BY window_start, window_end"
                .to_string(),
            format!(
                "SELECT ws, ws + INTERVAL '1 minute', sum(n), count(*) FROM ( \
                   SELECT {bin} AS ws, count(*) AS n FROM clicks GROUP BY 1 \
                   UNION ALL SELECT {bin} AS ws, count(*) AS n FROM clicks_b GROUP BY 1) \
                 GROUP BY ws"
            ),
        ),
    ];
    for (streaming_sql, batch_sql) in cases {
        let expected = batch_of_two(&batch_sql).await?;
        assert!(!expected.is_empty(), "the batch query found no rows");
        for lanes in [1, 3] {
            let actual = streaming(&format!("{second} {streaming_sql}"), lanes).await?;
            assert_eq!(actual.len(), expected.len(), "row counts differ with {lanes} lane(s): {streaming_sql}");
            assert_eq!(actual, expected, "rows differ with {lanes} lane(s): {streaming_sql}");
        }
    }
    Ok(())
}
