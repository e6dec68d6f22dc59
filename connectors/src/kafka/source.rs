//! Reads a topic's partitions assigned to one lane into batches.
//!
//! Records keep their order within a partition (an upsert's tombstone stays
//! between the values around it), reading is cancel-safe (records read by a
//! call that was dropped stay in the source and come out with the next call),
//! and offsets go to the consumer group only once a checkpoint made the rows
//! before them durable (see `positions`). A lane cut off from its broker is not
//! idle (see `quiet`).
//!
//! The consumer is assigned its partitions at the first read, not when it is
//! created, so that a query restored from a checkpoint starts each partition at
//! the checkpoint's offset (`Source::restore`) instead of where
//! `scan.startup.mode` or the consumer group would have it.
//!
//! A bounded source (`scan.bounded.mode`) looks its stops up when it is
//! created, and ends once every partition is done (see `positions::Stops`).
//! A partition's end is not taken from the broker's word alone: tansu answers
//! the last record *batch*'s base offset + 1, short of the end when a producer
//! sent records in batches, so the source reads on from there until the
//! broker says the partition holds no more (see `positions::partition_ends`).
//! The consumer of a bounded source has librdkafka say when it has read a
//! partition to its end, which ends partitions whose last offsets hold no
//! record (a transaction's commit marker, compacted records).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::UInt32Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::{EngineError, Source, SourceEvent, SplitTag};

use super::avro;
use super::decode::RecordDecoder;
use super::metadata::{self, Record};
use super::positions::{offsets_from, position_batch, start_offsets, stops, stops_from, Offsets, Positions, Stops};
use super::quiet::Quiet;
use crate::metadata::{has_metadata_columns, value_schema};
use super::{kafka_error, BadData, BoundedMode, KafkaConfig, KafkaFormat, StartupMode};
use sluice_engine::changelog::{attach_ops, with_op_field, ChangeKind};
use crate::error::Result;
use crate::registry::Shard;

/// How long to wait for more records once one has arrived, to fill a batch.
const FILL_WAIT: Duration = Duration::from_millis(50);
/// How long to wait after a transient error before reading again.
const TRANSIENT_BACKOFF: Duration = Duration::from_millis(200);
/// How long to wait for the cluster when asking whether it is back, or
/// committing offsets.
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

/// A batch ready to return, and the positions it takes its partitions to.
struct Ready {
    batch: RecordBatch,
    /// The partition the rows come from, when the lane reads several.
    split: Option<SplitTag>,
    positions: Vec<(i32, i64)>,
}

/// Records read and not yet returned. They live in the source, not in a call
/// of `next_event`, so a call dropped midway (a barrier or a stop arriving)
/// loses none: the next call goes on where it stopped.
#[derive(Default)]
struct Fetch {
    /// Records that make rows (values, and tombstones of an upsert table), in
    /// the order read.
    records: Vec<Record>,
    /// Per partition: the offset after the last record read, rows or not.
    upto: Offsets,
    /// Records read, rows or not.
    read: usize,
    /// Reading is over: the records are being decoded.
    full: bool,
    /// With Avro: how many records were converted to JSON.
    converted: usize,
    /// Records that do not decode: index in `records`, error.
    bad: Vec<(usize, String)>,
    /// How many of `bad` were dropped or dead-lettered.
    handled: usize,
    /// The decoded values and the index in `records` of each row.
    decoded: Option<(RecordBatch, Vec<usize>)>,
}

/// A consumer assigned this lane's partitions of the topic.
pub struct KafkaSource {
    cfg: KafkaConfig,
    schema: SchemaRef,
    /// Shared with the blocking calls (commits, probes) made off the runtime.
    consumer: Option<Arc<StreamConsumer>>,
    partitions: Vec<i32>,
    /// The lane's partitions as the splits its batches are tagged with.
    splits: Arc<[String]>,
    decoder: RecordDecoder,
    dead_letters: Option<FutureProducer>,
    /// Whether the table declares metadata columns (filled from each record).
    with_metadata: bool,
    /// With `format = 'avro-confluent'`: where writer schemas are looked up.
    registry: Option<avro::SchemaRegistry>,
    /// With a PRIMARY KEY: records are upserts, tombstones deletes.
    upsert: Option<Upsert>,
    /// Records read, not yet made into batches.
    fetch: Fetch,
    /// Records dropped or dead-lettered as undecodable.
    bad_records: u64,
    /// Batches (split by partition) not yet returned.
    pending: VecDeque<Ready>,
    /// Positions returned, remembered at barriers and committed.
    positions: Positions,
    /// Whether the lane is quiet or cut off from its broker.
    quiet: Quiet,
    /// Where each partition of the lane starts: from `scan.startup.mode`, or
    /// from the checkpoint the query is restored from.
    start: Vec<(i32, Offset)>,
    /// Whether the consumer has been assigned `start` (at the first read).
    assigned: bool,
    /// With a timestamp start: partitions that reached it. Brokers that cannot
    /// look offsets up by time (tansu answers 0) start earlier; the records
    /// before the first one at or after the timestamp are skipped here.
    reached_start: HashSet<i32>,
    /// With `scan.bounded.mode`: where each partition stops, and which are done.
    stops: Option<Stops>,
}

impl KafkaSource {
    /// A consumer of `shard`'s partitions in the group `cfg.group_id` (set by
    /// the connector: the table's or the query's).
    pub fn create(cfg: KafkaConfig, schema: SchemaRef, shard: Shard) -> Result<Self> {
        let mut client = cfg.client_config();
        if let Some(group) = &cfg.group_id {
            client.set("group.id", group);
        }
        client
            // Offsets are committed when checkpoints complete, never on read.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A bounded source is told when it has read a partition to its end.
            .set("enable.partition.eof", if cfg.bounded.is_bounded() { "true" } else { "false" })
            .set("auto.offset.reset", if cfg.startup == StartupMode::Latest { "latest" } else { "earliest" });
        if client.get("fetch.queue.backoff.ms").is_none() {
            // Once its queue holds queued.min.messages, librdkafka waits this
            // long before fetching again: by default 1 s, in which a consumer
            // keeping up drains its queue and idles (half the time, measured
            // with Nexmark from a topic). A table's properties may set it.
            client.set("fetch.queue.backoff.ms", "10");
        }
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
        let start = match partitions.is_empty() {
            true => Vec::new(),
            false => start_offsets(&consumer, &cfg, &partitions)?,
        };
        let stops = match (cfg.bounded.is_bounded(), partitions.is_empty()) {
            (true, false) => Some(stops(&consumer, &cfg, &partitions, &start)?),
            _ => None,
        };
        let consumer = (!partitions.is_empty()).then(|| Arc::new(consumer));
        let mut positions = Positions::default();
        // A start resolved to an offset is a position already: a checkpoint
        // taken before the partition's first record must not restart it at
        // "latest" again, skipping what arrived in between.
        if matches!(cfg.startup, StartupMode::Latest | StartupMode::Timestamp(_)) {
            for (p, offset) in &start {
                if let Offset::Offset(next) = offset {
                    positions.returned(*p, *next);
                }
            }
        }
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
        let quiet = Quiet::new(cfg.idle_timeout, Instant::now());
        Ok(KafkaSource {
            cfg,
            schema,
            consumer,
            splits: partitions.iter().map(|p| p.to_string()).collect(),
            partitions,
            decoder,
            dead_letters,
            with_metadata,
            upsert,
            registry: cfg_avro.map(|a| avro::SchemaRegistry::new(&a.registry_url)),
            fetch: Fetch::default(),
            bad_records: 0,
            pending: VecDeque::new(),
            positions,
            quiet,
            start,
            assigned: false,
            reached_start: HashSet::new(),
            stops,
        })
    }

    /// Assigns the consumer its partitions, each at its start (a bounded
    /// source's partitions with nothing to read are left out).
    fn assign(&mut self, consumer: &StreamConsumer) -> sluice_engine::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &self.start {
            if self.stops.as_ref().is_some_and(|s| s.is_done(*p)) {
                continue;
            }
            tpl.add_partition_offset(&self.cfg.topic, *p, *offset).map_err(|e| EngineError::connector("kafka", e))?;
        }
        consumer.assign(&tpl).map_err(|e| EngineError::connector("kafka", e))?;
        self.assigned = true;
        Ok(())
    }

    /// The schema of the batches this source produces.
    fn output_schema(&self) -> SchemaRef {
        self.upsert.as_ref().map_or_else(|| Arc::clone(&self.schema), |u| Arc::clone(&u.output_schema))
    }

    /// The rows tombstones delete: the key columns from the record key, the
    /// event time from the Kafka timestamp, the other columns NULL.
    fn tombstone_rows(&self, upsert: &Upsert, tombstones: &[&Record]) -> sluice_engine::Result<RecordBatch> {
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
        metadata::assemble(&self.schema, &self.cfg.topic, &decoded, tombstones)
            .map_err(|e| EngineError::connector("kafka", format!("tombstones: {e}")))
    }

    /// The tag of a batch of `partition`'s rows, so event time is tracked per
    /// partition (see the watermark assigner). Without `idle_after`, the
    /// assigner judges no partition idle on this batch.
    fn split_tag(&self, partition: i32, idle_after: bool) -> SplitTag {
        SplitTag {
            split: partition.to_string(),
            splits: Arc::clone(&self.splits),
            idle_after: idle_after.then_some(self.cfg.idle_timeout),
        }
    }

    /// One batch per partition (`partitions` gives each row's).
    fn split_by_partition(&self, batch: &RecordBatch, partitions: &[i32]) -> sluice_engine::Result<Vec<(i32, RecordBatch)>> {
        let mut rows: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (i, p) in partitions.iter().enumerate() {
            rows.entry(*p).or_default().push(i as u32);
        }
        rows.into_iter()
            .map(|(p, indices)| {
                let part = match indices.len() == batch.num_rows() {
                    true => batch.clone(),
                    false => arrow::compute::take_record_batch(batch, &UInt32Array::from(indices))?,
                };
                Ok((p, part))
            })
            .collect()
    }

    /// The broker answers again after errors: every partition of the lane gets
    /// an empty batch first, so none counts as quiet for the time it was cut
    /// off (the watermark assigner's per-partition idleness starts over). These
    /// batches carry no idle time: while the first ones arrive, the others'
    /// partitions still look quiet, and must not be judged so.
    fn back_from_errors(&mut self) -> sluice_engine::Result<()> {
        if self.partitions.len() < 2 {
            return Ok(());
        }
        let empty = RecordBatch::new_empty(self.output_schema());
        for p in self.partitions.clone().into_iter().rev() {
            let split = Some(self.split_tag(p, false));
            self.pending.push_front(Ready { batch: empty.clone(), split, positions: Vec::new() });
        }
        Ok(())
    }

    /// Returns a ready batch, moving its partitions' positions.
    fn hand_out(&mut self, ready: Ready) -> SourceEvent {
        for (p, next) in ready.positions {
            self.positions.returned(p, next);
        }
        match ready.split {
            Some(tag) => SourceEvent::SplitBatch(tag, ready.batch),
            None => SourceEvent::Batch(ready.batch),
        }
    }

    /// Keeps one record read (or skips it: before the start timestamp, or a
    /// tombstone of a table without a key; or leaves it unread: past a bounded
    /// source's stop).
    fn take(&mut self, m: &BorrowedMessage<'_>) {
        if let Some(stops) = &mut self.stops {
            let was_done = stops.is_done(m.partition());
            let keep = stops.admit(m.partition(), m.offset(), m.timestamp().to_millis());
            if !was_done && stops.is_done(m.partition()) {
                self.done_with(m.partition());
            }
            if !keep {
                return;
            }
        }
        let fetch = &mut self.fetch;
        fetch.read += 1;
        fetch.upto.insert(m.partition(), m.offset() + 1);
        if let StartupMode::Timestamp(start) = self.cfg.startup {
            if !self.reached_start.contains(&m.partition()) {
                if m.timestamp().to_millis().is_some_and(|t| t < start) {
                    return;
                }
                self.reached_start.insert(m.partition());
            }
        }
        // A tombstone (no value) deletes its key in a compacted topic: a row
        // only in an upsert table.
        let tombstone = m.payload().is_none();
        if tombstone && self.upsert.is_none() {
            return;
        }
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        fetch.records.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            timestamp: m.timestamp().to_millis(),
            headers,
            tombstone,
        });
    }

    /// Whether a bounded source has read everything before its stops (and
    /// returned it all): it ends.
    fn finished(&self) -> bool {
        self.stops.as_ref().is_some_and(|s| s.all_done(&self.partitions)) && self.fetch.read == 0 && self.pending.is_empty()
    }

    /// Whether every partition of a bounded source is done (its last records
    /// may still be in the fetch).
    fn all_done(&self) -> bool {
        self.stops.as_ref().is_some_and(|s| s.all_done(&self.partitions))
    }

    /// A bounded source's `partition` is done: stop fetching it. Records
    /// already fetched are dropped as they come (see `take`).
    fn done_with(&self, partition: i32) {
        let Some(consumer) = &self.consumer else { return };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.cfg.topic, partition);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::debug!("kafka topic {}: pausing finished partition {partition}: {e}", self.cfg.topic);
        }
    }

    /// librdkafka says the consumer reached `partition`'s end: for a bounded
    /// source, the partition is done.
    fn reached_end(&mut self, partition: i32) {
        if let Some(stops) = &mut self.stops {
            if !stops.is_done(partition) {
                stops.reached_end(partition);
                self.done_with(partition);
            }
        }
    }

    /// Whether the broker answers a metadata request (asked off the runtime).
    async fn broker_answers(&self, consumer: &Arc<StreamConsumer>) -> bool {
        let (consumer, topic) = (Arc::clone(consumer), self.cfg.topic.clone());
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), Duration::from_secs(2)).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Reads until a batch is full, or until no more records come for a moment.
    /// `None`: no record came, and the lane is idle (or a batch for the broker
    /// being back is ready, or a bounded source is done). Cancel-safe: what was
    /// read stays in `self.fetch`.
    async fn read(&mut self, consumer: &Arc<StreamConsumer>) -> sluice_engine::Result<Option<()>> {
        while self.fetch.read == 0 {
            let now = Instant::now();
            if self.all_done() || self.quiet.idle(now) {
                return Ok(None);
            }
            match tokio::time::timeout(self.quiet.wait(now), consumer.recv()).await {
                Ok(Ok(m)) => {
                    if self.quiet.heard(Instant::now()) {
                        self.back_from_errors()?;
                    }
                    self.take(&m);
                }
                Ok(Err(KafkaError::PartitionEOF(p))) => self.reached_end(p),
                // A broker restarting or out of reach for a while: librdkafka
                // reconnects by itself; the lane is not idle meanwhile.
                Ok(Err(e)) if is_transient(&e) => {
                    tracing::warn!("kafka topic {}: {e} (retrying)", self.cfg.topic);
                    metrics::counter!("sluice_kafka_transient_errors_total").increment(1);
                    self.quiet.failed(Instant::now());
                    tokio::time::sleep(TRANSIENT_BACKOFF).await;
                }
                Ok(Err(e)) => return Err(EngineError::connector("kafka", e)),
                Err(_) if self.quiet.failing() => {
                    if self.broker_answers(consumer).await && self.quiet.heard(Instant::now()) {
                        self.back_from_errors()?;
                        if !self.pending.is_empty() {
                            return Ok(None);
                        }
                    }
                }
                Err(_) => {}
            }
        }
        while self.fetch.read < self.cfg.batch_size && !self.all_done() {
            match tokio::time::timeout(FILL_WAIT, consumer.recv()).await {
                Ok(Ok(m)) => {
                    self.quiet.heard(Instant::now());
                    self.take(&m);
                }
                Ok(Err(KafkaError::PartitionEOF(p))) => self.reached_end(p),
                Ok(Err(e)) if is_transient(&e) => {
                    self.quiet.failed(Instant::now());
                    break;
                }
                Ok(Err(e)) => return Err(EngineError::connector("kafka", e)),
                Err(_) => break,
            }
        }
        self.fetch.full = true;
        Ok(Some(()))
    }

    /// Decodes the records read, handling those that do not decode (dropped,
    /// dead-lettered, or failing the query). Cancel-safe: it goes on where a
    /// dropped call stopped.
    async fn decode(&mut self) -> sluice_engine::Result<()> {
        let fetch = &mut self.fetch;
        if let Some(registry) = &mut self.registry {
            while fetch.converted < fetch.records.len() {
                let i = fetch.converted;
                if !fetch.records[i].tombstone {
                    match avro::to_json(registry, &fetch.records[i].value).await {
                        Ok(json) => fetch.records[i].value = json,
                        Err(e) => fetch.bad.push((i, e)),
                    }
                }
                fetch.converted += 1;
            }
        }
        if fetch.decoded.is_none() {
            let not_avro: HashSet<usize> = fetch.bad.iter().map(|(i, _)| *i).collect();
            let rows: Vec<usize> =
                (0..fetch.records.len()).filter(|i| !fetch.records[*i].tombstone && !not_avro.contains(i)).collect();
            let values: Vec<&[u8]> = rows.iter().map(|i| fetch.records[*i].value.as_slice()).collect();
            let decoded = match self.decoder.decode(&values) {
                Ok(batch) => (batch, rows),
                Err(_) => {
                    let (good, bad) = self.decoder.decode_each(&values);
                    let bad_rows: HashSet<usize> = bad.iter().map(|(k, _)| *k).collect();
                    fetch.bad.extend(bad.into_iter().map(|(k, e)| (rows[k], e)));
                    let batch = arrow::compute::concat_batches(&self.decoder.schema(), &good)?;
                    let rows = rows.into_iter().enumerate().filter(|(k, _)| !bad_rows.contains(k)).map(|(_, i)| i).collect();
                    (batch, rows)
                }
            };
            fetch.decoded = Some(decoded);
        }
        while fetch.handled < fetch.bad.len() {
            let (i, error) = &fetch.bad[fetch.handled];
            handle_bad(&self.cfg, self.dead_letters.as_ref(), &fetch.records[*i], error).await?;
            fetch.handled += 1;
            self.bad_records += 1;
        }
        Ok(())
    }

    /// Makes the decoded records into batches, in the order read, one per
    /// partition when the lane reads several, each taking its partition's
    /// position with it.
    fn assemble(&mut self) -> sluice_engine::Result<()> {
        let fetch = std::mem::take(&mut self.fetch);
        let Fetch { records, mut upto, decoded, .. } = fetch;
        let (values, value_rows) = decoded.unwrap_or_else(|| (RecordBatch::new_empty(self.decoder.schema()), Vec::new()));
        let good: Vec<&Record> = value_rows.iter().map(|i| &records[*i]).collect();
        let mut batch = match self.with_metadata {
            false => values,
            true => metadata::assemble(&self.schema, &self.cfg.topic, &values, &good)
                .map_err(|e| EngineError::connector("kafka", format!("metadata columns: {e}")))?,
        };
        let mut row_records = value_rows;
        if let Some(upsert) = &self.upsert {
            let tombstone_rows: Vec<usize> = (0..records.len()).filter(|i| records[*i].tombstone).collect();
            let tombstones: Vec<&Record> = tombstone_rows.iter().map(|i| &records[*i]).collect();
            let deletes = self.tombstone_rows(upsert, &tombstones)?;
            let rows = arrow::compute::concat_batches(&self.schema, [&batch, &deletes])?;
            // Back in the order read: `+U a, -D, +U b` for one key must end
            // with b, not with the key deleted.
            let mut order: Vec<(usize, u32)> =
                row_records.iter().chain(&tombstone_rows).enumerate().map(|(row, record)| (*record, row as u32)).collect();
            order.sort_unstable();
            let rows = arrow::compute::take_record_batch(&rows, &UInt32Array::from_iter_values(order.iter().map(|(_, row)| *row)))?;
            let kinds: Vec<ChangeKind> = order
                .iter()
                .map(|(record, _)| if records[*record].tombstone { ChangeKind::Delete } else { ChangeKind::UpdateAfter })
                .collect();
            batch = attach_ops(&upsert.output_schema, &rows, &kinds)?;
            row_records = order.into_iter().map(|(record, _)| record).collect();
        }
        if self.partitions.len() < 2 {
            self.pending.push_back(Ready { batch, split: None, positions: upto.into_iter().collect() });
            return Ok(());
        }
        let partitions: Vec<i32> = row_records.iter().map(|i| records[*i].partition).collect();
        let first = self.pending.len();
        for (p, part) in self.split_by_partition(&batch, &partitions)? {
            let positions = upto.remove(&p).map(|next| (p, next)).into_iter().collect();
            let split = Some(self.split_tag(p, true));
            self.pending.push_back(Ready { batch: part, split, positions });
        }
        // Partitions read without rows (records skipped or bad) move with the first batch.
        match self.pending.get_mut(first) {
            Some(ready) => ready.positions.extend(upto),
            None => self.pending.push_back(Ready {
                batch: RecordBatch::new_empty(self.output_schema()),
                split: None,
                positions: upto.into_iter().collect(),
            }),
        }
        Ok(())
    }

    /// Commits `offsets` to the consumer group, waiting for the broker (off the
    /// runtime).
    async fn commit(&mut self, offsets: Offsets) -> sluice_engine::Result<()> {
        let Some(consumer) = &self.consumer else { return Ok(()) };
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &offsets {
            tpl.add_partition_offset(&self.cfg.topic, *p, Offset::Offset(*next))
                .map_err(|e| EngineError::connector("kafka", e))?;
        }
        let consumer = Arc::clone(consumer);
        let committed = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| EngineError::connector("kafka", format!("committing offsets: {e}")))?;
        committed.map_err(|e| EngineError::connector("kafka", format!("committing offsets of topic {}: {e}", self.cfg.topic)))?;
        self.positions.committed(&offsets);
        Ok(())
    }
}

/// What a record that does not decode does: fail the query, or be counted and
/// dropped, or go to the dead-letter topic.
async fn handle_bad(cfg: &KafkaConfig, dead_letters: Option<&FutureProducer>, record: &Record, error: &str) -> sluice_engine::Result<()> {
    let where_ = format!("topic {} partition {} offset {}", cfg.topic, record.partition, record.offset);
    match &cfg.bad_data {
        BadData::Fail => Err(EngineError::connector("kafka", format!("bad record at {where_}: {error} (set bad_data = 'drop' or 'dead-letter' to keep going)"))),
        BadData::Drop => {
            metrics::counter!("sluice_bad_records_total").increment(1);
            tracing::warn!("dropped bad record at {where_}: {error}");
            Ok(())
        }
        BadData::DeadLetter(topic) => {
            let Some(producer) = dead_letters else { return Ok(()) };
            metrics::counter!("sluice_bad_records_total").increment(1);
            let (partition, offset) = (record.partition.to_string(), record.offset.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header { key: "sluice.topic", value: Some(cfg.topic.as_str()) })
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

#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.output_schema()
    }

    fn bad_records(&self) -> u64 {
        self.bad_records
    }

    fn reads_whole_input(&self) -> bool {
        self.cfg.startup == StartupMode::Earliest
    }

    fn identity(&self) -> String {
        format!("kafka topic {} ({:?})", self.cfg.topic, self.cfg.format).to_lowercase()
    }

    fn describe(&self) -> String {
        let until = match self.cfg.bounded {
            BoundedMode::Unbounded => String::new(),
            BoundedMode::LatestOffset => ", until the latest offsets at its start".to_string(),
            BoundedMode::GroupOffsets => ", until the group's offsets".to_string(),
            BoundedMode::Timestamp(ms) => format!(", until timestamp {ms}"),
        };
        format!("kafka topic {} at {}, partitions {:?} ({:?}){until}", self.cfg.topic, self.cfg.brokers, self.partitions, self.cfg.format)
            .to_lowercase()
    }

    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        loop {
            match self.next_event().await? {
                SourceEvent::Batch(b) | SourceEvent::SplitBatch(_, b) => return Ok(Some(b)),
                SourceEvent::Idle => continue,
                SourceEvent::End => return Ok(None),
            }
        }
    }

    async fn next_event(&mut self) -> sluice_engine::Result<SourceEvent> {
        if let Some(ready) = self.pending.pop_front() {
            return Ok(self.hand_out(ready));
        }
        let Some(consumer) = self.consumer.clone() else {
            // No partition for this lane: end at once, holding no one's time back.
            return Ok(SourceEvent::End);
        };
        if self.finished() {
            return Ok(SourceEvent::End);
        }
        if !self.assigned {
            self.assign(&consumer)?;
        }
        if !self.fetch.full && self.read(&consumer).await?.is_none() {
            return Ok(match self.pending.pop_front() {
                Some(ready) => self.hand_out(ready),
                None if self.finished() => SourceEvent::End,
                None => SourceEvent::Idle,
            });
        }
        self.decode().await?;
        self.assemble()?;
        match self.pending.pop_front() {
            Some(ready) => Ok(self.hand_out(ready)),
            None => Ok(SourceEvent::Batch(RecordBatch::new_empty(self.output_schema()))),
        }
    }

    fn commits_positions(&self) -> bool {
        self.consumer.is_some()
    }

    async fn on_barrier(&mut self, checkpoint: u64) -> sluice_engine::Result<()> {
        self.positions.barrier(checkpoint);
        Ok(())
    }

    fn resumable(&self) -> bool {
        true
    }

    /// The lane's partitions read from so far (or whose start is an offset),
    /// with the next offset to read, as of the last barrier, and where a
    /// bounded source stops; `None` when there is neither.
    fn position(&self) -> sluice_engine::Result<Option<RecordBatch>> {
        let offsets = self.positions.at_last_barrier();
        let stops = self.stops.as_ref().map(Stops::offsets);
        match offsets.is_empty() && stops.is_none_or(|s| s.is_empty()) {
            true => Ok(None),
            false => Ok(Some(position_batch(offsets, stops)?)),
        }
    }

    /// Starts each of the lane's partitions found in `positions` at its stored
    /// offset; the others start as `scan.startup.mode` says. Rows of
    /// partitions other lanes read (the parallelism changed) are left to them.
    async fn restore(&mut self, positions: Vec<RecordBatch>) -> sluice_engine::Result<()> {
        let stored = offsets_from(&positions)?;
        // A bounded source stops where it stopped before the restore, not at
        // the ends the topic has now.
        if let Some(stops) = &mut self.stops {
            stops.restore(&stops_from(&positions)?);
            for p in &self.partitions {
                if let Some(next) = stored.get(p) {
                    stops.start_at(*p, *next);
                }
            }
        }
        for (p, offset) in &mut self.start {
            let Some(next) = stored.get(p) else { continue };
            // Records before the start timestamp were skipped up to the
            // looked-up offset; past it the partition had reached the start.
            if let (StartupMode::Timestamp(_), Offset::Offset(first)) = (self.cfg.startup, *offset) {
                if *next > first {
                    self.reached_start.insert(*p);
                }
            }
            *offset = Offset::Offset(*next);
            // Still the position if nothing more is read before the next barrier.
            self.positions.returned(*p, *next);
        }
        let restored: Vec<String> =
            self.start.iter().filter(|(p, _)| stored.contains_key(p)).map(|(p, o)| format!("{p}@{o:?}")).collect();
        tracing::info!("kafka topic {}: restored partitions {}", self.cfg.topic, restored.join(", "));
        if let (true, Some(consumer)) = (self.assigned, self.consumer.clone()) {
            self.assign(&consumer)?;
        }
        Ok(())
    }

    async fn on_checkpoint_complete(&mut self, checkpoint: u64) -> sluice_engine::Result<()> {
        let offsets = self.positions.complete(checkpoint);
        match self.commit(offsets).await {
            Ok(()) => Ok(()),
            // The final commit (a stop, or the end of a bounded read) must not
            // fail silently: the next run would read those rows again.
            Err(e) if checkpoint == u64::MAX => Err(e),
            // A periodic one is retried by the next checkpoint.
            Err(e) => {
                tracing::warn!("{e} (retried at the next checkpoint)");
                Ok(())
            }
        }
    }
}

/// Errors librdkafka recovers from by itself (reconnecting, retrying); a
/// consumer that reports them keeps its position and goes on once they pass.
pub(super) fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
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
