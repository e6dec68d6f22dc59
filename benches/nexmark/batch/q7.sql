WITH w AS (
  SELECT (CAST("dateTime" AS BIGINT) / 10000 + 1) * 10000 AS window_end, max(price) AS maxprice
  FROM bid GROUP BY 1)
SELECT b.auction, b.price, b.bidder, b."dateTime", b.extra
FROM bid b JOIN w ON b.price = w.maxprice
WHERE CAST(b."dateTime" AS BIGINT) BETWEEN w.window_end - 10000 AND w.window_end
