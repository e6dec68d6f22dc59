-- "Cart abandoned" alerts: an add_to_cart with no checkout by the same user
-- within 2 minutes. A left outer interval join emits each cart row once the
-- watermark shows no checkout can match it any more; those padded with NULLs
-- are the abandoned carts. With a Kafka sink table instead of the SELECT, they
-- become alert events (see README, Connectors).
CREATE TABLE clicks (
  user_id BIGINT,
  event_type VARCHAR,
  item_id BIGINT,
  price DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'generator', rate = '200', 'interval.ms' = '100', users = '1000');

CREATE VIEW carts AS SELECT user_id, item_id, price, ts FROM clicks WHERE event_type = 'add_to_cart';
CREATE VIEW checkouts AS SELECT user_id, ts FROM clicks WHERE event_type = 'checkout';

SELECT a.user_id, a.item_id, round(a.price, 2) AS price, a.ts AS added_at
FROM carts a LEFT JOIN checkouts c
  ON a.user_id = c.user_id AND c.ts BETWEEN a.ts AND a.ts + INTERVAL '2' MINUTE
WHERE c.user_id IS NULL;
