-- Nexmark q5: hot items. The auctions with the most bids in each 10 s window
-- sliding by 2 s: two hopping-window aggregates, the second cascaded on the
-- first, joined per window.
--
-- Differs from Flink's text in one place: MaxBids' inner query keeps the names
-- window_start and window_end and renames them to starttime and endtime after
-- its GROUP BY, instead of before. Sluice takes a GROUP BY as a window
-- aggregation (closed by the watermark, appending) only when it groups by
-- columns named window_start and window_end. Grouped by the renamed columns,
-- as Flink writes it (Flink follows the window columns through renames), it
-- is an updating GROUP BY, whose changes a join refuses. The rows are the same.

CREATE TABLE nexmark_q5 (
  auction  BIGINT,
  num  BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q5
SELECT AuctionBids.auction, AuctionBids.num
 FROM (
   SELECT
     auction,
     count(*) AS num,
     window_start AS starttime,
     window_end AS endtime
     FROM TABLE(
             HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
     GROUP BY auction, window_start, window_end
 ) AS AuctionBids
 JOIN (
   SELECT
     max(CountBids.num) AS maxn,
     CountBids.window_start AS starttime,
     CountBids.window_end AS endtime
   FROM (
     SELECT
       count(*) AS num,
       window_start,
       window_end
     FROM TABLE(
                HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
     GROUP BY auction, window_start, window_end
     ) AS CountBids
   GROUP BY CountBids.window_start, CountBids.window_end
 ) AS MaxBids
 ON AuctionBids.starttime = MaxBids.starttime AND
    AuctionBids.endtime = MaxBids.endtime AND
    AuctionBids.num >= MaxBids.maxn;
