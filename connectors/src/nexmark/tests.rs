use std::collections::BTreeMap;

use arrow::array::{Array, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, TimeUnit};
use arrow::util::pretty::pretty_format_batches;

use super::*;

type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn spec(kind: &str, schema: SchemaRef, extra: &[(&str, &str)]) -> TableSpec {
    let mut options = BTreeMap::from([
        ("nexmark.table".to_string(), kind.to_string()),
        ("nexmark.max-events".to_string(), "3000".to_string()),
        ("nexmark.events-per-second".to_string(), "100".to_string()),
    ]);
    options.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TableSpec::new(kind, schema, "nexmark", options)
}

fn config(kind: NexmarkTable) -> TestResult<NexmarkConfig> {
    Ok(NexmarkConfig::from_table(&spec(kind.name(), kind.schema(), &[]))?)
}

/// Every row of `g`, in batches of 7, as printed lines.
fn lines(g: &mut NexmarkGenerator, batches: usize) -> TestResult<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..batches {
        let Some(b) = g.next_batch(7)? else { break };
        out.push(b);
    }
    if out.is_empty() {
        return Ok(Vec::new());
    }
    // Cells trimmed, so that rows printed in different batches compare equal.
    let text = pretty_format_batches(&out)?.to_string();
    let row = |l: &str| l.split('|').map(str::trim).collect::<Vec<_>>().join("|");
    Ok(text.lines().filter(|l| l.starts_with("| ")).skip(1).map(row).collect())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn each_table_gets_its_share_of_the_events() -> TestResult {
    let mut total = 0;
    for kind in NexmarkTable::ALL {
        let rows = lines(&mut NexmarkGenerator::new(&config(kind)?, Shard::ALL), usize::MAX)?;
        total += rows.len();
        let expected = match kind {
            NexmarkTable::Person => 60,
            NexmarkTable::Auction => 180,
            NexmarkTable::Bid => 2760,
        };
        assert_eq!(rows.len(), expected, "{kind:?}");
    }
    assert_eq!(total, 3000);
    Ok(())
}

#[test]
fn shards_together_produce_the_unsharded_table_in_time_order_each() -> TestResult {
    for kind in NexmarkTable::ALL {
        let cfg = config(kind)?;
        let whole = sorted(lines(&mut NexmarkGenerator::new(&cfg, Shard::ALL), usize::MAX)?);
        let mut sharded = Vec::new();
        for index in 0..3 {
            let mut g = NexmarkGenerator::new(&cfg, Shard { index, count: 3 });
            let mut last = i64::MIN;
            while let Some(b) = g.next_batch(50)? {
                let time = b.column_by_name("dateTime").ok_or("no dateTime")?;
                let time = time.as_any().downcast_ref::<TimestampMillisecondArray>().ok_or("not a timestamp")?;
                for t in time.values() {
                    assert!(*t >= last, "event time went back in a shard");
                    last = *t;
                }
            }
            sharded.extend(lines(&mut NexmarkGenerator::new(&cfg, Shard { index, count: 3 }), usize::MAX)?);
        }
        assert_eq!(sorted(sharded), whole, "{kind:?}");
    }
    Ok(())
}

#[test]
fn restored_at_another_parallelism_the_shards_produce_the_rest_of_the_table() -> TestResult {
    let cfg = config(NexmarkTable::Bid)?;
    let whole = sorted(lines(&mut NexmarkGenerator::new(&cfg, Shard::ALL), usize::MAX)?);
    let mut rows = Vec::new();
    let mut positions = Vec::new();
    for (index, batches) in [3, 9, 0].into_iter().enumerate() {
        let mut g = NexmarkGenerator::new(&cfg, Shard { index, count: 3 });
        rows.extend(lines(&mut g, batches)?);
        positions.extend(g.progressions());
    }
    for index in 0..2 {
        let mut g = NexmarkGenerator::new(&cfg, Shard { index, count: 2 });
        g.restore(&positions);
        rows.extend(lines(&mut g, usize::MAX)?);
    }
    assert_eq!(sorted(rows), whole);
    Ok(())
}

#[test]
fn sellers_and_bidders_are_mostly_people_already_registered() -> TestResult {
    let ids = |kind: NexmarkTable, column: &str| -> TestResult<Vec<i64>> {
        let mut g = NexmarkGenerator::new(&config(kind)?, Shard::ALL);
        let mut out = Vec::new();
        while let Some(b) = g.next_batch(1000)? {
            let c = b.column_by_name(column).ok_or("no column")?;
            out.extend(c.as_any().downcast_ref::<Int64Array>().ok_or("not BIGINT")?.values().iter().copied());
        }
        Ok(out)
    };
    let people: std::collections::BTreeSet<i64> = ids(NexmarkTable::Person, "id")?.into_iter().collect();
    let auctions: std::collections::BTreeSet<i64> = ids(NexmarkTable::Auction, "id")?.into_iter().collect();
    let sellers = ids(NexmarkTable::Auction, "seller")?;
    let known = sellers.iter().filter(|s| people.contains(s)).count();
    assert!(known * 10 > sellers.len() * 9, "{known} of {} sellers registered", sellers.len());
    let bid_auctions = ids(NexmarkTable::Bid, "auction")?;
    let open = bid_auctions.iter().filter(|a| auctions.contains(a)).count();
    assert!(open * 10 > bid_auctions.len() * 9, "{open} of {} bids on opened auctions", bid_auctions.len());
    Ok(())
}

#[test]
fn options_are_checked_by_name() -> TestResult {
    let err = |kind: &str, extra: &[(&str, &str)]| {
        NexmarkConfig::from_table(&spec(kind, NexmarkTable::Bid.schema(), extra)).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(err("bids", &[]).contains("'bids' is not one of person, auction, bid"), "{}", err("bids", &[]));
    assert!(err("bid", &[("rows", "5")]).contains("invalid option 'rows' for connector 'nexmark': unknown option"));
    assert!(err("bid", &[("nexmark.events-per-second", "0")]).contains("must be positive"));
    assert!(err("bid", &[("nexmark.rate-limited", "yes")]).contains("not true or false"));
    assert!(err("bid", &[("nexmark.base-time", "soon")]).contains("not a timestamp"));
    let cfg = NexmarkConfig::from_table(&spec("BID", NexmarkTable::Bid.schema(), &[("nexmark.base-time", "2020-01-01")]))?;
    assert_eq!((cfg.table, cfg.base_time_ms, cfg.seed), (NexmarkTable::Bid, 1_577_836_800_000, 42));
    Ok(())
}

#[tokio::test]
async fn a_table_declares_some_columns_in_any_case() -> TestResult {
    let declared = Arc::new(Schema::new(vec![
        Field::new("datetime", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
    ]));
    let table = spec("bid", declared.clone(), &[]);
    NexmarkConnector.validate(&table)?;
    let mut source = NexmarkConnector.source(&table, Shard::ALL, "q")?;
    let batch = source.next_batch().await?.ok_or("no rows")?;
    assert_eq!(batch.schema(), declared);
    let unknown = spec("bid", Arc::new(Schema::new(vec![Field::new("seller", DataType::Int64, true)])), &[]);
    let e = NexmarkConnector.validate(&unknown).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("column 'seller' is not produced by this connector"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_restored_source_goes_on_from_the_barrier_not_from_later_reads() -> TestResult {
    let table = spec("auction", NexmarkTable::Auction.schema(), &[("nexmark.batch.size", "7")]);
    let shard = Shard { index: 1, count: 2 };
    let all = |source: Box<dyn Source>| async move {
        let mut source = source;
        let mut out = Vec::new();
        while let Some(b) = source.next_batch().await? {
            out.push(b);
        }
        Ok::<_, EngineError>(out)
    };
    let whole = all(NexmarkConnector.source(&table, shard, "q")?).await?;
    let mut first = NexmarkConnector.source(&table, shard, "q")?;
    assert!(first.resumable());
    let mut out = vec![first.next_batch().await?.ok_or("no rows")?, first.next_batch().await?.ok_or("no rows")?];
    first.on_barrier(1).await?;
    first.next_batch().await?;
    let position = first.position()?.ok_or("no position")?;
    let mut second = NexmarkConnector.source(&table, shard, "q")?;
    second.restore(vec![position]).await?;
    out.extend(all(second).await?);
    assert_eq!(pretty_format_batches(&out)?.to_string(), pretty_format_batches(&whole)?.to_string());
    Ok(())
}

#[tokio::test]
async fn rate_limited_rows_come_no_sooner_than_their_event_time() -> TestResult {
    let options = [("nexmark.rate-limited", "true"), ("nexmark.max-events", "100"), ("nexmark.events-per-second", "1000")];
    let table = spec("bid", NexmarkTable::Bid.schema(), &options);
    let mut source = NexmarkConnector.source(&table, Shard::ALL, "q")?;
    let started = std::time::Instant::now();
    let mut rows = 0;
    while let Some(b) = source.next_batch().await? {
        rows += b.num_rows();
    }
    assert_eq!(rows, 92);
    // 100 events at 1000 a second: the last bid (event 99) is due at 99 ms.
    assert!(started.elapsed() >= std::time::Duration::from_millis(99), "{:?}", started.elapsed());
    Ok(())
}
