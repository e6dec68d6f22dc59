-- The clickstream job: cart-abandonment alerts and abandonment-rate alerts (as
-- they come, and as FIRING/RESOLVED changes) to Kafka, a purchase funnel to the
-- lake. Sluice's flagship example; tests/alerts.rs runs it against a real
-- broker and checks every record it writes.
--
--   sluice run examples/clickstream_alerts.sql
--
-- Clicks are JSON records in the Kafka topic `clicks`:
--   {"user_id": 7, "event_type": "add_to_cart", "item_id": 42, "price": 9.5,
--    "category": "books", "ts": "2026-11-29 10:00:00.000"}
-- event_type is page_view, add_to_cart or checkout.
--
-- The four INSERTs at the end run as one job (a statement set). Reading ends
-- at the topic's end as it is when the job starts ('scan.bounded.mode' =
-- 'latest-offset'): a backfill. Remove that option to keep the job running as
-- clicks come. With checkpoints on, a job that is stopped or killed resumes
-- where its last checkpoint was, and its alerts stay exactly once.

SET 'execution.checkpointing.interval' = '2 s';
SET 'pipeline.name' = 'clickstream';

CREATE TABLE clicks (
  user_id BIGINT,
  event_type VARCHAR,
  item_id BIGINT,
  price DOUBLE,
  category VARCHAR,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  connector = 'kafka', topic = 'clicks', 'bootstrap.servers' = 'localhost:9092', format = 'json',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset'
);

-- One row per user session: a session ends after 30 minutes without a click
-- (change the gap here). The cart is what was added during the session.
CREATE VIEW sessions AS
SELECT user_id,
       window_start AS session_start,
       window_end AS session_end,
       array_agg(item_id) FILTER (WHERE event_type = 'add_to_cart') AS items,
       sum(price) FILTER (WHERE event_type = 'add_to_cart') AS cart_value,
       count(*) FILTER (WHERE event_type = 'add_to_cart') AS adds,
       count(*) FILTER (WHERE event_type = 'checkout') AS checkouts
FROM TABLE(SESSION(TABLE clicks PARTITION BY user_id, DESCRIPTOR(ts), INTERVAL '30' MINUTE))
GROUP BY window_start, window_end, user_id;

-- 1. Cart abandoned: a session with an add-to-cart and no checkout gives one
--    alert. alert_id is a hash of the user and the session's start, the same
--    on every run, so a consumer can deduplicate (Sluice already writes each
--    alert once, even across a crash).
CREATE TABLE cart_alerts (
  alert_id VARCHAR,
  user_id BIGINT,
  items ARRAY<BIGINT>,
  cart_value DOUBLE,
  session_start TIMESTAMP(3),
  session_end TIMESTAMP(3)
) WITH (connector = 'kafka', topic = 'cart_alerts', 'bootstrap.servers' = 'localhost:9092', format = 'json',
        'key.field' = 'alert_id');

-- 2. Abandonment rate: sessions that ended in each hour (sliding every 10
--    minutes), cascaded over the session results; one alert per window in
--    which 3 or more carts were abandoned.
CREATE VIEW abandonment AS
SELECT window_start, window_end,
       count(*) FILTER (WHERE adds > 0 AND checkouts = 0) AS abandoned,
       count(*) FILTER (WHERE adds > 0) AS carts
FROM TABLE(HOP(TABLE sessions, DESCRIPTOR(session_end), INTERVAL '10' MINUTE, INTERVAL '1' HOUR))
GROUP BY window_start, window_end;

CREATE TABLE rate_alerts (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  abandoned BIGINT,
  carts BIGINT
) WITH (connector = 'kafka', topic = 'rate_alerts', 'bootstrap.servers' = 'localhost:9092', format = 'json');

-- 3. The funnel: page views, add-to-carts and checkouts per 10 minutes and
--    category, into the lake, one Hive partition per category.
CREATE TABLE funnel (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  category VARCHAR,
  page_views BIGINT,
  add_to_carts BIGINT,
  checkouts BIGINT
) WITH (connector = 'lake', path = '.sluice/lake/funnel', 'partition.by' = 'category');

-- 4. Alert hygiene: the same rate as an alert that says FIRING when the
--    abandoned carts first reach 3 in a window, nothing while they stay there
--    (a reminder after an hour of firing), and RESOLVED at the first later
--    window back under 3. ALERT_STATUS(firing, at [, repeat_after]) OVER
--    (PARTITION BY key ORDER BY at) does this per key (here there is one,
--    the whole shop); a batch query over the same rows gives the same records.
CREATE TABLE rate_alert_changes (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  abandoned BIGINT,
  status VARCHAR
) WITH (connector = 'kafka', topic = 'rate_alert_changes', 'bootstrap.servers' = 'localhost:9092', format = 'json');

-- The job: cart alerts, rate alerts, their FIRING/RESOLVED changes, the funnel.
-- One pipeline: the clicks topic is read once for all four INSERTs, and
-- their checkpoints are one, under clickstream.
EXECUTE STATEMENT SET BEGIN
  INSERT INTO cart_alerts
  SELECT md5(concat(CAST(user_id AS VARCHAR), '|', CAST(session_start AS VARCHAR))) AS alert_id,
         user_id, items, round(cart_value, 2) AS cart_value, session_start, session_end
  FROM sessions
  WHERE adds > 0 AND checkouts = 0;

  INSERT INTO rate_alerts
  SELECT window_start, window_end, abandoned, carts FROM abandonment WHERE abandoned >= 3;

  INSERT INTO rate_alert_changes
  SELECT window_start, window_end, abandoned, status
  FROM (
    SELECT window_start, window_end, abandoned,
           ALERT_STATUS(abandoned >= 3, window_end, INTERVAL '1' HOUR) OVER (ORDER BY window_end) AS status
    FROM abandonment)
  WHERE status IS NOT NULL;

  INSERT INTO funnel
  SELECT window_start, window_end, category,
         count(*) FILTER (WHERE event_type = 'page_view') AS page_views,
         count(*) FILTER (WHERE event_type = 'add_to_cart') AS add_to_carts,
         count(*) FILTER (WHERE event_type = 'checkout') AS checkouts
  FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' MINUTE))
  GROUP BY window_start, window_end, category;
END;
