-- Windows of 10 s every 2 s: a bid at t ms is in the windows starting at t
-- rounded down to 2 s, and the four before.
WITH hop AS (
  SELECT auction, (CAST("dateTime" AS BIGINT) / 2000 - k.back) * 2000 AS starttime
  FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS k(back)),
counts AS (SELECT auction, starttime, count(*) AS num FROM hop GROUP BY auction, starttime),
maxes AS (SELECT starttime, max(num) AS maxn FROM counts GROUP BY starttime)
SELECT c.auction, c.num FROM counts c JOIN maxes m ON c.starttime = m.starttime AND c.num >= m.maxn
