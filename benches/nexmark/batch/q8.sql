WITH p AS (SELECT DISTINCT id, name, CAST("dateTime" AS BIGINT) / 10000 AS w FROM person),
a AS (SELECT DISTINCT seller, CAST("dateTime" AS BIGINT) / 10000 AS w FROM auction)
SELECT p.id, p.name, to_timestamp_millis(p.w * 10000)
FROM p JOIN a ON p.id = a.seller AND p.w = a.w
