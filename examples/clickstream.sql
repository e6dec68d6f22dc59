-- Tumbling one-minute counts per event type over the built-in clickstream.
-- Event time runs 10x faster than the wall clock, so a window closes every 6 s.
CREATE TABLE clicks (
  user_id BIGINT,
  event_type VARCHAR,
  item_id BIGINT,
  price DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'generator', rate = '100', 'interval.ms' = '100');

SELECT window_start, window_end, event_type, count(*) AS events, round(sum(price), 2) AS revenue
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, event_type;
