-- Nexmark q3: local item suggestion. Sellers in Oregon, Idaho or California
-- and their auctions in category 10: a regular (unwindowed) join, whose state
-- only a TTL bounds. Same query text as Flink's nexmark; the TTL is set here
-- (Flink's benchmark sets it in its cluster configuration).

SET 'table.exec.state.ttl' = '1 h';

CREATE TABLE nexmark_q3 (
  name  VARCHAR,
  city  VARCHAR,
  state  VARCHAR,
  id  BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q3
SELECT
    P.name, P.city, P.state, A.id
FROM
    auction AS A INNER JOIN person AS P on A.seller = P.id
WHERE
    A.category = 10 and (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
