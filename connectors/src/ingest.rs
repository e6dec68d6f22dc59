//! The ingestion job behind `sluice ingest`: a Kafka topic landed in a lake,
//! exactly once, on any broker.
//!
//! The job runs in rounds. A round reads up to `round_rows` records (or for
//! `round_ms`), decodes them per Kafka partition, writes one Parquet file per
//! (Kafka partition, lake directory) named after the partition and the offsets it
//! holds (`part-p{P}-o{FIRST}-{LAST}.parquet`), puts every file, and only then
//! commits the offsets. After a crash the job restarts from the committed
//! offsets and skips every record that an existing file of its partition and
//! directory already covers, so the lake ends with each record exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::{ConnectorError, Result};
use crate::kafka::{decode::RecordDecoder, kafka_error, BadData, KafkaConfig};
use crate::lake::store::join;
use crate::lake::{LakeConfig, Partitioning};

/// What one ingestion job reads and writes.
pub struct IngestConfig {
    pub kafka: KafkaConfig,
    /// The job's consumer group: its own, never a query's (a query reading
    /// ahead must not make the job skip records).
    pub group_id: String,
    pub schema: SchemaRef,
    pub lake: LakeConfig,
    pub partitioning: Partitioning,
    /// Records per round at most (files per round are at most this big).
    pub round_rows: usize,
    /// A round ends after this long even if smaller.
    pub round_ms: u64,
}

/// Progress after each round.
#[derive(Debug, Clone, Default)]
pub struct IngestProgress {
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
    pub skipped_as_already_written: u64,
    pub bad_records: u64,
    /// Per Kafka partition: records behind the end of the partition.
    pub lag: BTreeMap<i32, i64>,
}

/// Offset ranges already in the lake, per (Kafka partition, directory).
type Coverage = HashMap<(i32, String), Vec<(i64, i64)>>;

/// The files already in the lake (local or S3), by the ranges their names give.
async fn existing_files(store: &Arc<dyn ObjectStore>, prefix: &StorePath) -> Result<Coverage> {
    let mut coverage = Coverage::new();
    let base = prefix.as_ref().to_string();
    let mut listing = store.list(if base.is_empty() { None } else { Some(prefix) });
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(kafka_error)?;
        let full = meta.location.as_ref().to_string();
        let relative = full.strip_prefix(&base).unwrap_or(&full).trim_start_matches('/');
        let (dir, name) = match relative.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), relative),
        };
        let Some(rest) = name.strip_prefix("part-p").and_then(|r| r.strip_suffix(".parquet")) else { continue };
        let Some((p, range)) = rest.split_once("-o") else { continue };
        let Some((first, last)) = range.split_once('-') else { continue };
        let (Ok(p), Ok(first), Ok(last)) = (p.parse::<i32>(), first.parse::<i64>(), last.parse::<i64>()) else { continue };
        coverage.entry((p, dir)).or_default().push((first, last));
    }
    Ok(coverage)
}

fn covered(coverage: &Coverage, partition: i32, dir: &str, offset: i64) -> bool {
    coverage
        .get(&(partition, dir.to_string()))
        .is_some_and(|ranges| ranges.iter().any(|(a, b)| *a <= offset && offset <= *b))
}

/// Runs until `stop` is cancelled (finishing the round in progress), calling
/// `progress` after every round.
pub async fn run_ingest(
    cfg: IngestConfig,
    stop: CancellationToken,
    mut progress: impl FnMut(&IngestProgress),
) -> Result<IngestProgress> {
    let kafka = &cfg.kafka;
    let mut client = kafka.client_config();
    client
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = client.create().map_err(kafka_error)?;
    let metadata = consumer
        .fetch_metadata(Some(&kafka.topic), Duration::from_secs(10))
        .map_err(|e| kafka_error(format!("cannot reach Kafka at {}: {e}", kafka.brokers)))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(kafka_error(format!("topic '{}' does not exist at {}", kafka.topic, kafka.brokers)));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&kafka.topic, *p, Offset::Stored).map_err(kafka_error)?;
    }
    consumer.assign(&tpl).map_err(kafka_error)?;

    let (store, prefix) = cfg.lake.location.open()?;
    let mut coverage = existing_files(&store, &prefix).await?;
    let props = cfg.lake.writer_properties();
    let decoder = RecordDecoder::new(Arc::clone(&cfg.schema), kafka.format);
    let mut registry = kafka.avro.as_ref().map(|a| crate::kafka::avro::SchemaRegistry::new(&a.registry_url));
    let mut total = IngestProgress::default();

    while !stop.is_cancelled() {
        // Read one round.
        let started = Instant::now();
        let deadline = Duration::from_millis(cfg.round_ms);
        let mut round: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
        let mut count = 0;
        while count < cfg.round_rows {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                next = tokio::time::timeout(left, consumer.recv()) => match next {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(kafka_error(e)),
                    Ok(Ok(m)) => {
                        round.entry(m.partition()).or_default().push((m.offset(), m.payload().unwrap_or_default().to_vec()));
                        count += 1;
                    }
                }
            }
        }
        // Avro values become the JSON the decoder reads; one that cannot is left
        // as bytes the decoder rejects, so it is handled as a bad record.
        if let Some(registry) = &mut registry {
            for records in round.values_mut() {
                for (_, value) in records.iter_mut() {
                    *value = match crate::kafka::avro::to_json(registry, value).await {
                        Ok(json) => json,
                        Err(e) => format!("not Avro: {e}").into_bytes(),
                    };
                }
            }
        }
        // Write it: one file per (partition, directory), skipping what is already there.
        let mut commit = TopicPartitionList::new();
        for (partition, records) in &round {
            let values: Vec<&[u8]> = records.iter().map(|(_, v)| v.as_slice()).collect();
            let (batch, offsets) = match decoder.decode(&values) {
                Ok(b) => (b, records.iter().map(|(o, _)| *o).collect::<Vec<_>>()),
                Err(_) => {
                    let (good, bad) = decoder.decode_each(&values);
                    if let Some((i, e)) = bad.first() {
                        if kafka.bad_data == BadData::Fail {
                            return Err(kafka_error(format!(
                                "bad record at topic {} partition {partition} offset {}: {e}",
                                kafka.topic, records[*i].0
                            )));
                        }
                    }
                    total.bad_records += bad.len() as u64;
                    let bad_rows: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
                    let offsets = records.iter().enumerate().filter(|(i, _)| !bad_rows.contains(i)).map(|(_, r)| r.0).collect();
                    (arrow::compute::concat_batches(&cfg.schema, &good)?, offsets)
                }
            };
            let dirs = cfg.partitioning.row_dirs(&batch)?;
            let columns = cfg.partitioning.file_columns(&batch)?;
            let mut by_dir: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            for (row, dir) in dirs.iter().enumerate() {
                if covered(&coverage, *partition, dir, offsets[row]) {
                    total.skipped_as_already_written += 1;
                } else {
                    by_dir.entry(dir.as_str()).or_default().push(row as u32);
                }
            }
            for (dir, rows) in by_dir {
                let first = rows.iter().map(|r| offsets[*r as usize]).min().unwrap_or_default();
                let last = rows.iter().map(|r| offsets[*r as usize]).max().unwrap_or_default();
                let part = take_record_batch(&columns, &UInt32Array::from(rows.clone()))?;
                let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(cfg.partitioning.file_schema()), Some(props.clone()))
                    .map_err(kafka_error)?;
                writer.write(&part).map_err(kafka_error)?;
                let bytes = writer.into_inner().map_err(kafka_error)?;
                total.bytes += bytes.len() as u64;
                let path = join(&prefix, &format!("{dir}part-p{partition}-o{first:020}-{last:020}.parquet"));
                store.put(&path, PutPayload::from(bytes)).await.map_err(kafka_error)?;
                coverage.entry((*partition, dir.to_string())).or_default().push((first, last));
                total.rows += rows.len() as u64;
                total.files += 1;
            }
            let next = records.iter().map(|(o, _)| *o).max().unwrap_or_default() + 1;
            commit.add_partition_offset(&kafka.topic, *partition, Offset::Offset(next)).map_err(kafka_error)?;
        }
        // Only now are the files durable: commit what they cover.
        if commit.count() > 0 {
            consumer.commit(&commit, CommitMode::Sync).map_err(kafka_error)?;
        }
        for p in &partitions {
            let position = consumer
                .position()
                .ok()
                .and_then(|tpl| tpl.find_partition(&kafka.topic, *p).and_then(|e| e.offset().to_raw()));
            if let Ok((_, high)) = consumer.fetch_watermarks(&kafka.topic, *p, Duration::from_secs(5)) {
                total.lag.insert(*p, high - position.filter(|o| *o >= 0).unwrap_or(0));
            }
        }
        progress(&total);
    }
    Ok(total)
}

impl From<arrow::error::ArrowError> for ConnectorError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ConnectorError::External { connector: "ingest".into(), message: e.to_string() }
    }
}
