-- Nexmark q1: currency conversion. Every bid with its price in euros. Same
-- query text as Flink's nexmark; `0.908 * price` is a DOUBLE here (DataFusion
-- reads 0.908 as a DOUBLE literal, Flink as DECIMAL(4, 3)), so the sink column
-- is DOUBLE where Flink's is DECIMAL(23, 3).

CREATE TABLE nexmark_q1 (
  auction  BIGINT,
  bidder  BIGINT,
  price  DOUBLE,
  `dateTime`  TIMESTAMP(3),
  extra  VARCHAR
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q1
SELECT
    auction,
    bidder,
    0.908 * price as price, -- convert dollar to euro
    `dateTime`,
    extra
FROM bid;
