-- Nexmark q4: average price per category. The winning (highest) bid of each
-- auction among the bids placed while it was open, averaged per category: a
-- regular join, an updating MAX per auction, and an updating AVG over its
-- changes. Same query text as Flink's nexmark; the TTL is set here (Flink's
-- benchmark sets it in its cluster configuration). AVG of a BIGINT is a
-- DOUBLE here (DataFusion), a BIGINT in Flink, so the sink column is DOUBLE.

SET 'table.exec.state.ttl' = '1 h';

CREATE TABLE nexmark_q4 (
  id BIGINT,
  final DOUBLE
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q4
SELECT
    Q.category,
    AVG(Q.final)
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
