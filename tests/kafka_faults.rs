//! Fault injection with librdkafka's mock cluster: request errors and a broker
//! that goes down (and comes back), which a real broker cannot be made to do on
//! cue. (The real broker tests are in tests/kafka.rs.)

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sluice_sql::{Session, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ROWS: usize = 500;

/// Starts `INSERT INTO out SELECT ...` from a bounded generator into the mock
/// cluster; `properties` go to the sink's producer.
async fn insert_into_mock(bootstrap: &str, properties: &str) -> Result<sluice_engine::JobHandle, Box<dyn std::error::Error>> {
    let mut session = Session::default();
    session.set_parallelism(2);
    session
        .execute_script(&format!(
            "CREATE TABLE clicks (user_id BIGINT, session_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3)) \
             WITH (connector = 'generator', rows = '{ROWS}', seed = '5', 'interval.ms' = '10', 'disorder.ms' = '0'); \
             CREATE TABLE out (ts TIMESTAMP(3), user_id BIGINT, event_type VARCHAR) \
             WITH (connector = 'kafka', topic = 'out', 'bootstrap.servers' = '{bootstrap}', 'key.field' = 'user_id'{properties})"
        ))
        .await?;
    let mut outputs = session.execute_script("INSERT INTO out SELECT ts, user_id, event_type FROM clicks").await?;
    let Some(StatementOutput::Insert { job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    Ok(job)
}

/// Every record of the topic's one partition.
fn read_all(bootstrap: &str) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fault-test-reader")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut values = Vec::new();
    let mut idle = 0;
    while idle < 20 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                values.push(m.payload().unwrap_or_default().to_vec());
                idle = 0;
            }
            Some(Err(e)) => return Err(e.into()),
            None => idle += 1,
        }
    }
    Ok(values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_lose_and_duplicate_nothing() -> TestResult {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("out", 1, 1)?;
    // The first produce requests fail with errors a producer must retry.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let bootstrap = cluster.bootstrap_servers();
    let mut job = insert_into_mock(&bootstrap, "").await?;
    job.wait().await?;
    let values = read_all(&bootstrap)?;
    assert_eq!(values.len(), ROWS, "every row delivered once");
    let distinct: HashSet<&Vec<u8>> = values.iter().collect();
    assert_eq!(distinct.len(), ROWS, "no row twice (each has its own timestamp)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stays_down_fails_the_query_with_the_delivery_error() -> TestResult {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("out", 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    cluster.broker_down(1)?;
    let mut job = insert_into_mock(&bootstrap, ", 'properties.message.timeout.ms' = '2000'").await?;
    let err = tokio::time::timeout(Duration::from_secs(60), job.wait())
        .await?
        .err()
        .ok_or("the query must fail when its records cannot be delivered")?;
    assert!(err.to_string().contains("delivery to out"), "{err}");
    Ok(())
}

/// Records `{"n": 1, "ts": 2024-01-01 00:00:00 + s}` for each second `s`, into
/// one partition of `clicks`.
fn produce_seconds(bootstrap: &str, partition: i32, seconds: std::ops::Range<i64>) -> Result<(), Box<dyn std::error::Error>> {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    for s in seconds {
        let value = format!("{{\"n\": 1, \"ts\": \"2024-01-01T00:{:02}:{:02}\"}}", s / 60, s % 60);
        producer.send(BaseRecord::<(), str>::to("clicks").partition(partition).payload(&value)).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// One lane reads two partitions, partition 1 a minute and a half behind partition 0,
/// when the broker goes away for longer than the idle timeout. Cut off from
/// its broker the lane is not idle, so the watermark stays with partition 1,
/// and partition 1's rows that come after the broker is back are not late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_holds_the_watermark_for_the_lagging_partition() -> TestResult {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("clicks", 2, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let mut session = Session::default();
    session.set_parallelism(1);
    session
        .execute_script(&format!(
            "CREATE TABLE clicks (n BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH (connector = 'kafka', topic = 'clicks', 'bootstrap.servers' = '{bootstrap}', \
                   'scan.startup.mode' = 'earliest', 'source.idle-timeout.ms' = '3000', \
                   'properties.reconnect.backoff.max.ms' = '200')"
        ))
        .await?;
    let mut outputs = session
        .execute_script(
            "SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
             GROUP BY window_start, window_end",
        )
        .await?;
    let Some(StatementOutput::Query(mut q)) = outputs.pop() else { return Err("not a query".into()) };
    produce_seconds(&bootstrap, 0, 0..120)?;
    produce_seconds(&bootstrap, 1, 0..30)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while q.job.metrics().rows_in < 150 {
        assert!(std::time::Instant::now() < deadline, "the first records were not read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Down for longer than the idle timeout (an outage, not a quiet topic).
    cluster.broker_down(1)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.broker_up(1)?;
    produce_seconds(&bootstrap, 1, 30..120)?;
    produce_seconds(&bootstrap, 0, 600..601)?;
    produce_seconds(&bootstrap, 1, 600..601)?;
    let batch = tokio::time::timeout(Duration::from_secs(60), q.results.recv()).await?.ok_or("query ended")?;
    let rows = sluice_connectors::table_printer::format_cells(&batch)?;
    let late = q.job.metrics().late_rows;
    q.job.cancel();
    assert_eq!(late, 0, "no row of the lagging partition is late");
    assert_eq!(rows.first(), Some(&vec!["2024-01-01T00:00:00".to_string(), "120".to_string()]), "both partitions' rows");
    Ok(())
}
