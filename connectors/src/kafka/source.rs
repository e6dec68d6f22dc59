//! Reads a topic's partitions assigned to one lane into batches.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::operators::watermark_assigner::{SPLITS_KEY, SPLIT_IDLE_MS_KEY, SPLIT_KEY};
use sluice_engine::{EngineError, Source, SourceEvent};

use super::avro;
use super::decode::RecordDecoder;
use super::metadata::{self, Record};
use crate::metadata::{has_metadata_columns, value_schema};
use super::{kafka_error, BadData, KafkaConfig, KafkaFormat, StartupMode};
use sluice_engine::changelog::{attach_ops, with_op_field, ChangeKind};
use crate::error::Result;
use crate::registry::Shard;

/// How long to wait for more records once one has arrived, to fill a batch.
const FILL_WAIT: Duration = Duration::from_millis(50);
/// How long to wait after a transient error before reading again.
const TRANSIENT_BACKOFF: Duration = Duration::from_millis(200);
/// How long to wait for the cluster when starting.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How an upsert table (one with a PRIMARY KEY) turns records into changes.
struct Upsert {
    key_columns: Vec<String>,
    time_column: Option<String>,
    /// Decodes the JSON built for a tombstone's key columns and time.
    key_decoder: RecordDecoder,
    /// The table's columns and the change kind.
    output_schema: SchemaRef,
}

/// A consumer assigned this lane's partitions of the topic.
pub struct KafkaSource {
    cfg: KafkaConfig,
    schema: SchemaRef,
    consumer: Option<StreamConsumer>,
    partitions: Vec<i32>,
    decoder: RecordDecoder,
    dead_letters: Option<FutureProducer>,
    dropped: u64,
    /// Whether the table declares metadata columns (filled from each record).
    with_metadata: bool,
    /// With `format = 'avro-confluent'`: where writer schemas are looked up.
    registry: Option<avro::SchemaRegistry>,
    /// With a PRIMARY KEY: records are upserts, tombstones deletes.
    upsert: Option<Upsert>,
    /// Batches split by partition, not yet returned.
    pending: std::collections::VecDeque<RecordBatch>,
    /// With a timestamp start: partitions that reached it. Brokers that cannot
    /// look offsets up by time (tansu answers 0) start earlier; the records
    /// before the first one at or after the timestamp are skipped here.
    reached_start: std::collections::HashSet<i32>,
}

impl KafkaSource {
    pub fn create(cfg: KafkaConfig, schema: SchemaRef, shard: Shard) -> Result<Self> {
        let mut client = cfg.client_config();
        client
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", if cfg.startup == StartupMode::Latest { "latest" } else { "earliest" });
        let consumer: StreamConsumer = client.create().map_err(kafka_error)?;
        let metadata = consumer
            .fetch_metadata(Some(&cfg.topic), METADATA_TIMEOUT)
            .map_err(|e| kafka_error(format!("cannot reach Kafka at {}: {e}", cfg.brokers)))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == cfg.topic)
            .filter(|t| !t.partitions().is_empty())
            .ok_or_else(|| kafka_error(format!("topic '{}' does not exist at {}", cfg.topic, cfg.brokers)))?;
        let count = shard.count.max(1) as i32;
        let partitions: Vec<i32> =
            topic.partitions().iter().map(|p| p.id()).filter(|p| p % count == shard.index as i32).collect();
        let consumer = if partitions.is_empty() {
            None
        } else {
            let mut tpl = TopicPartitionList::new();
            let offset = match cfg.startup {
                StartupMode::Earliest => Offset::Beginning,
                StartupMode::Latest => Offset::End,
                StartupMode::GroupOffsets => Offset::Stored,
                // offsets_for_times takes the timestamp in the offset field.
                StartupMode::Timestamp(ms) => Offset::Offset(ms),
            };
            for p in &partitions {
                tpl.add_partition_offset(&cfg.topic, *p, offset).map_err(kafka_error)?;
            }
            if let StartupMode::Timestamp(ms) = cfg.startup {
                tpl = consumer
                    .offsets_for_times(tpl, METADATA_TIMEOUT)
                    .map_err(|e| kafka_error(format!("looking up offsets for timestamp {ms}: {e}")))?;
            }
            consumer.assign(&tpl).map_err(kafka_error)?;
            Some(consumer)
        };
        let dead_letters = match &cfg.bad_data {
            BadData::DeadLetter(_) => Some(cfg.client_config().create::<FutureProducer>().map_err(kafka_error)?),
            _ => None,
        };
        let decoder = RecordDecoder::new(value_schema(&schema), cfg.format);
        let upsert = match cfg.primary_key.is_empty() {
            true => None,
            false => Some(Upsert {
                key_columns: cfg.primary_key.clone(),
                time_column: cfg.time_column.clone(),
                key_decoder: RecordDecoder::new(value_schema(&schema), KafkaFormat::Json),
                output_schema: with_op_field(&schema),
            }),
        };
        let cfg_avro = cfg.avro.clone();
        let with_metadata = has_metadata_columns(&schema);
        Ok(KafkaSource {
            cfg,
            schema,
            consumer,
            partitions,
            decoder,
            dead_letters,
            dropped: 0,
            with_metadata,
            pending: Default::default(),
            upsert,
            registry: cfg_avro.map(|a| avro::SchemaRegistry::new(&a.registry_url)),
            reached_start: Default::default(),
        })
    }

    /// The schema of the batches this source produces.
    fn output_schema(&self) -> SchemaRef {
        self.upsert.as_ref().map_or_else(|| Arc::clone(&self.schema), |u| Arc::clone(&u.output_schema))
    }

    /// The rows tombstones delete: the key columns from the record key, the
    /// event time from the Kafka timestamp, the other columns NULL.
    fn tombstone_rows(&self, upsert: &Upsert, tombstones: &[Record]) -> sluice_engine::Result<RecordBatch> {
        let mut lines = Vec::with_capacity(tombstones.len());
        for r in tombstones {
            let key_text = r.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let mut row = serde_json::Map::new();
            match upsert.key_columns.as_slice() {
                [only] => {
                    let value = serde_json::from_str(&key_text).unwrap_or(serde_json::Value::String(key_text.to_string()));
                    row.insert(only.clone(), value);
                }
                columns => {
                    let object: serde_json::Value = serde_json::from_str(&key_text).unwrap_or_default();
                    for c in columns {
                        row.insert(c.clone(), object.get(c).cloned().unwrap_or_default());
                    }
                }
            }
            if let (Some(column), Some(ms)) = (&upsert.time_column, r.timestamp) {
                row.insert(column.clone(), metadata::timestamp_text(ms).into());
            }
            lines.push(serde_json::Value::Object(row).to_string().into_bytes());
        }
        let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let decoded = upsert
            .key_decoder
            .decode(&values)
            .map_err(|e| EngineError::connector("kafka", format!("tombstone key: {e}")))?;
        let records: Vec<&Record> = tombstones.iter().collect();
        metadata::assemble(&self.schema, &self.cfg.topic, &decoded, &records)
            .map_err(|e| EngineError::connector("kafka", format!("tombstones: {e}")))
    }

    /// One batch per partition, each tagged with its partition and the lane's
    /// partitions, so event time is tracked per partition (see the watermark
    /// assigner).
    fn split_by_partition(&self, batch: &RecordBatch, partitions: &[i32]) -> sluice_engine::Result<Vec<RecordBatch>> {
        let mut rows: std::collections::BTreeMap<i32, Vec<u32>> = Default::default();
        for (i, p) in partitions.iter().enumerate() {
            rows.entry(*p).or_default().push(i as u32);
        }
        let all = self.partitions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let idle_ms = self.cfg.idle_timeout.as_millis().to_string();
        rows.into_iter()
            .map(|(p, indices)| {
                let metadata: std::collections::HashMap<String, String> = [
                    (SPLIT_KEY.to_string(), p.to_string()),
                    (SPLITS_KEY.to_string(), all.clone()),
                    (SPLIT_IDLE_MS_KEY.to_string(), idle_ms.clone()),
                ]
                .into_iter()
                .collect();
                let schema = Arc::new(arrow::datatypes::Schema::new_with_metadata(batch.schema().fields().clone(), metadata));
                let part = match indices.len() == batch.num_rows() {
                    true => batch.clone(),
                    false => arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(indices))?,
                };
                Ok(RecordBatch::try_new_with_options(
                    schema,
                    part.columns().to_vec(),
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(part.num_rows())),
                )?)
            })
            .collect()
    }

    async fn handle_bad(&mut self, record: &Record, error: &str) -> sluice_engine::Result<()> {
        let where_ = format!("topic {} partition {} offset {}", self.cfg.topic, record.partition, record.offset);
        match &self.cfg.bad_data {
            BadData::Fail => Err(EngineError::connector("kafka", format!("bad record at {where_}: {error} (set bad_data = 'drop' or 'dead-letter' to keep going)"))),
            BadData::Drop => {
                self.dropped += 1;
                metrics::counter!("sluice_bad_records_total").increment(1);
                tracing::warn!("dropped bad record at {where_}: {error}");
                Ok(())
            }
            BadData::DeadLetter(topic) => {
                let Some(producer) = &self.dead_letters else { return Ok(()) };
                metrics::counter!("sluice_bad_records_total").increment(1);
                let (partition, offset) = (record.partition.to_string(), record.offset.to_string());
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "sluice.topic", value: Some(self.cfg.topic.as_str()) })
                    .insert(Header { key: "sluice.partition", value: Some(partition.as_str()) })
                    .insert(Header { key: "sluice.offset", value: Some(offset.as_str()) })
                    .insert(Header { key: "sluice.error", value: Some(error) });
                let mut out = FutureRecord::<[u8], [u8]>::to(topic).payload(&record.value).headers(headers);
                if let Some(k) = &record.key {
                    out = out.key(k.as_slice());
                }
                producer
                    .send(out, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| EngineError::connector("kafka", format!("dead-letter topic {topic}: {e}")))?;
                Ok(())
            }
        }
    }
}


#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.output_schema()
    }

    fn describe(&self) -> String {
        format!("kafka topic {} at {}, partitions {:?} ({:?})", self.cfg.topic, self.cfg.brokers, self.partitions, self.cfg.format)
            .to_lowercase()
    }

    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        loop {
            match self.next_event().await? {
                SourceEvent::Batch(b) => return Ok(Some(b)),
                SourceEvent::Idle => continue,
                SourceEvent::End => return Ok(None),
            }
        }
    }

    async fn next_event(&mut self) -> sluice_engine::Result<SourceEvent> {
        if let Some(batch) = self.pending.pop_front() {
            return Ok(SourceEvent::Batch(batch));
        }
        let Some(consumer) = &self.consumer else {
            // No partition for this lane: end at once, holding no one's time back.
            return Ok(SourceEvent::End);
        };
        let mut records = Vec::with_capacity(self.cfg.batch_size);
        let first = match tokio::time::timeout(self.cfg.idle_timeout, consumer.recv()).await {
            Ok(Ok(m)) => m,
            // A broker restarting or out of reach for a while: librdkafka
            // reconnects by itself; the lane has nothing to read until then.
            Ok(Err(e)) if is_transient(&e) => {
                tracing::warn!("kafka topic {}: {e} (retrying)", self.cfg.topic);
                metrics::counter!("sluice_kafka_transient_errors_total").increment(1);
                tokio::time::sleep(TRANSIENT_BACKOFF).await;
                return Ok(SourceEvent::Idle);
            }
            Ok(Err(e)) => return Err(EngineError::connector("kafka", e)),
            Err(_) => return Ok(SourceEvent::Idle),
        };
        let start_ms = match self.cfg.startup {
            StartupMode::Timestamp(ms) => Some(ms),
            _ => None,
        };
        let reached = &mut self.reached_start;
        let upsert = self.upsert.is_some();
        let mut take = |m: &rdkafka::message::BorrowedMessage<'_>| {
            if let Some(start) = start_ms {
                if !reached.contains(&m.partition()) {
                    if m.timestamp().to_millis().is_some_and(|t| t < start) {
                        return;
                    }
                    reached.insert(m.partition());
                }
            }
            // A tombstone (no value) deletes its key in a compacted topic: a
            // row only in an upsert table.
            let tombstone = m.payload().is_none();
            if tombstone && !upsert {
                return;
            }
            let value = m.payload().unwrap_or_default();
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
                .unwrap_or_default();
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: value.to_vec(),
                timestamp: m.timestamp().to_millis(),
                headers,
                tombstone,
            });
        };
        take(&first);
        drop(first);
        let mut read = 1;
        while read < self.cfg.batch_size {
            match tokio::time::timeout(FILL_WAIT, consumer.recv()).await {
                Ok(Ok(m)) => take(&m),
                Ok(Err(e)) if is_transient(&e) => break,
                Ok(Err(e)) => return Err(EngineError::connector("kafka", e)),
                Err(_) => break,
            }
            read += 1;
        }
        let (records, tombstones): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| !r.tombstone);
        let mut records = records;
        if let Some(registry) = &mut self.registry {
            let mut kept = Vec::with_capacity(records.len());
            let mut failed = Vec::new();
            for mut record in records {
                match avro::to_json(registry, &record.value).await {
                    Ok(json) => {
                        record.value = json;
                        kept.push(record);
                    }
                    Err(e) => failed.push((record, e)),
                }
            }
            for (record, error) in failed {
                self.handle_bad(&record, &error).await?;
            }
            records = kept;
        }
        let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
        let (decoded, good): (RecordBatch, Vec<&Record>) = match self.decoder.decode(&values) {
            Ok(batch) => (batch, records.iter().collect()),
            Err(_) => {
                let (good, bad) = self.decoder.decode_each(&values);
                let bad_rows: std::collections::HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
                for (i, error) in bad {
                    self.handle_bad(&records[i], &error).await?;
                }
                let batch = arrow::compute::concat_batches(&self.decoder.schema(), &good)?;
                (batch, records.iter().enumerate().filter(|(i, _)| !bad_rows.contains(i)).map(|(_, r)| r).collect())
            }
        };
        let mut batch = match self.with_metadata {
            false => decoded,
            true => metadata::assemble(&self.schema, &self.cfg.topic, &decoded, &good)
                .map_err(|e| EngineError::connector("kafka", format!("metadata columns: {e}")))?,
        };
        let mut partitions: Vec<i32> = good.iter().map(|r| r.partition).collect();
        if let Some(upsert) = &self.upsert {
            let deletes = self.tombstone_rows(upsert, &tombstones)?;
            let kinds: Vec<ChangeKind> = std::iter::repeat_n(ChangeKind::UpdateAfter, batch.num_rows())
                .chain(std::iter::repeat_n(ChangeKind::Delete, deletes.num_rows()))
                .collect();
            let rows = arrow::compute::concat_batches(&self.schema, [&batch, &deletes])?;
            batch = attach_ops(&upsert.output_schema, &rows, &kinds)?;
            partitions.extend(tombstones.iter().map(|r| r.partition));
        }
        if self.partitions.len() < 2 {
            return Ok(SourceEvent::Batch(batch));
        }
        self.pending.extend(self.split_by_partition(&batch, &partitions)?);
        let batch = self.pending.pop_front().unwrap_or_else(|| RecordBatch::new_empty(self.output_schema()));
        Ok(SourceEvent::Batch(batch))
    }
}

/// Errors librdkafka recovers from by itself (reconnecting, retrying); a
/// consumer that reports them keeps its position and goes on once they pass.
fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let Some(code) = e.rdkafka_error_code() else { return false };
    matches!(
        code,
        Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::NetworkException
            | Code::RequestTimedOut
            | Code::OperationTimedOut
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::BrokerNotAvailable
            | Code::CoordinatorNotAvailable
            | Code::NotCoordinator
            | Code::CoordinatorLoadInProgress
            | Code::Resolve
            | Code::UnknownTopicOrPartition
    )
}

impl Drop for KafkaSource {
    /// Closing a consumer waits for the broker (offset commits, leaving the
    /// group); with the broker gone that can take long. Close it off the async
    /// runtime so stopping a query never blocks it.
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            std::thread::spawn(move || drop(consumer));
        }
    }
}
