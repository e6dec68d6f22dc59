//! Writes result rows as JSON (or Avro) records, keyed by a chosen column;
//! updating results as upserts.
//!
//! Without checkpoints (or with `sink.delivery-guarantee = 'at-least-once'`)
//! records are produced as results come, and each batch waits for its
//! deliveries. With checkpoints on, records wait in the sink's checkpoints
//! and are produced once their checkpoint completes, each exactly once even
//! across failures (see `exactly_once`). With `sink.transactional-id-prefix`
//! each checkpoint's records are also one Kafka transaction, and a new run
//! fences the producer of the run it replaces.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_engine::changelog::{is_changelog_output, ChangeKind};
use sluice_engine::checkpoint::{crash_point, CrashPoint};
use sluice_engine::runtime::FINAL_CHECKPOINT;
use sluice_engine::{Barrier, EngineError, Sink};

use super::exactly_once::{self, identity_headers, Encoded, Staged, Staging};
use super::partitioner::Partitioner;
use super::{avro, kafka_error, tail, DeliveryGuarantee, KafkaConfig};
use crate::error::{ConnectorError, Result};
use crate::metadata::metadata_key;

/// How long one delivery may take before the query fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the topic's partitions when checkpoints begin.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an auto-created topic may take to show its partitions.
const TOPIC_WAIT: Duration = Duration::from_secs(30);
/// How long initialising, committing or aborting a transaction may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// An idempotent producer into the table's topic.
pub struct KafkaSink {
    cfg: KafkaConfig,
    producer: FutureProducer,
    key_column: Option<usize>,
    /// Updating results: the first column is the change kind, and records are
    /// upserts by key (`+I`/`+U` the row, `-D` a tombstone, `-U` nothing).
    upsert: bool,
    /// Columns written into the value (metadata columns are not).
    value_columns: Vec<usize>,
    /// With `format = 'avro-confluent'`.
    avro: Option<AvroWriter>,
    /// The statement whose results these are (`sluice.query` header).
    query_id: String,
    partitioner: Partitioner,
    /// With checkpoints on (exactly-once): the records waiting for their
    /// checkpoint, and the topic's partition count.
    staging: Option<(Staging, i32)>,
    /// With checkpoints on and `sink.transactional-id-prefix`: the producer's
    /// transactional id; each checkpoint's records are one transaction.
    transactional_id: Option<String>,
}

impl KafkaSink {
    fn format(&self) -> &'static str {
        if self.avro.is_some() {
            "avro-confluent"
        } else {
            "json"
        }
    }

    pub fn create(cfg: KafkaConfig, schema: SchemaRef, query_id: &str) -> Result<Self> {
        let producer = producer(&cfg, ProducerMode::AsResultsCome)?;
        let partitioner = Partitioner::from_property(cfg.properties.get("partitioner").map(String::as_str))?;
        // The key: `key.field`, else a `METADATA FROM 'key'` column.
        let key_column = match &cfg.key_field {
            Some(k) => schema.column_with_name(k).map(|(i, _)| i),
            None => schema.fields().iter().position(|f| metadata_key(f).is_some_and(|m| m.eq_ignore_ascii_case("key"))),
        };
        let upsert = is_changelog_output(&schema);
        let value_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !(upsert && *i == 0) && metadata_key(schema.field(*i)).is_none())
            .collect();
        if upsert && key_column.is_none() {
            return Err(ConnectorError::Option {
                connector: "kafka".into(),
                key: "key.field".into(),
                reason: format!(
                    "topic {}: updating results (GROUP BY, outer joins) are written as upserts by key: name a column of the result",
                    cfg.topic
                ),
            });
        }
        let avro = match &cfg.avro {
            None => None,
            Some(options) => {
                let value_schema = schema.project(&value_columns).map_err(|e| kafka_error(e.to_string()))?;
                let schema = avro::avro_schema(&cfg.topic, &value_schema).map_err(|e| ConnectorError::Schema {
                    table: cfg.topic.clone(),
                    reason: format!("format 'avro-confluent': {e}"),
                })?;
                Some(AvroWriter {
                    registry: avro::SchemaRegistry::new(&options.registry_url),
                    subject: options.subject.clone(),
                    schema,
                    id: None,
                })
            }
        };
        let query_id = query_id.to_string();
        Ok(KafkaSink {
            cfg,
            producer,
            key_column,
            upsert,
            value_columns,
            avro,
            query_id,
            partitioner,
            staging: None,
            transactional_id: None,
        })
    }

    /// Each row's value, encoded in the sink's format.
    async fn values(&mut self, values: &RecordBatch) -> sluice_engine::Result<Vec<Vec<u8>>> {
        let Some(avro) = &mut self.avro else {
            let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
            writer.write(values)?;
            writer.finish()?;
            let text = writer.into_inner();
            return Ok(text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect());
        };
        let id = match avro.id {
            Some(id) => id,
            None => {
                let id = avro.registry.register(&avro.subject, &avro.schema).await.map_err(|e| EngineError::connector("kafka", e))?;
                avro.id = Some(id);
                id
            }
        };
        avro::encode(values, &avro.schema, id).map_err(|e| EngineError::connector("kafka", format!("Avro: {e}")))
    }

    /// The records a batch of results becomes, as `(key, value)`: a `-U`
    /// change none, a `-D` a tombstone (no value).
    async fn records(&mut self, batch: &RecordBatch) -> sluice_engine::Result<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>> {
        let kinds = match self.upsert {
            true => batch.column(0).as_any().downcast_ref::<arrow::array::StringArray>().map(|a| {
                (0..a.len()).map(|i| ChangeKind::parse(a.value(i)).unwrap_or(ChangeKind::Insert)).collect::<Vec<_>>()
            }),
            false => None,
        };
        let values = batch.project(&self.value_columns)?;
        let payloads = self.values(&values).await?;
        // A NULL key is a record without a key, not the key "".
        let keys: Option<Vec<Option<Vec<u8>>>> = match self.key_column {
            None => None,
            Some(i) => {
                let column = batch.column(i);
                let f = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
                Some((0..batch.num_rows()).map(|r| column.is_valid(r).then(|| f.value(r).to_string().into_bytes())).collect())
            }
        };
        let kind = |r: usize| kinds.as_ref().map_or(ChangeKind::Insert, |k| k[r]);
        Ok(payloads
            .into_iter()
            .enumerate()
            .filter(|(r, _)| kind(*r) != ChangeKind::UpdateBefore)
            .map(|(r, payload)| {
                let key = keys.as_ref().and_then(|k| k[r].clone());
                let value = (kind(r) != ChangeKind::Delete).then_some(payload);
                (key, value)
            })
            .collect())
    }

    /// Produces staged records in order, each to its partition with its
    /// identity headers, and waits until every one is delivered.
    async fn produce_staged(&self, records: &[Staged]) -> sluice_engine::Result<()> {
        let mut deliveries = Vec::with_capacity(records.len());
        for staged in records {
            let mut headers = OwnedHeaders::new_with_capacity(staged.record.headers.len() + 4);
            for (key, value) in &staged.record.headers {
                headers = headers.insert(Header { key: key.as_str(), value: value.as_deref() });
            }
            for (key, value) in identity_headers(&self.query_id, &staged.id) {
                headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.cfg.topic).partition(staged.record.partition).headers(headers);
            if let Some(key) = &staged.record.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &staged.record.value {
                record = record.payload(value.as_slice());
            }
            // Enqueued one after the other, so each partition gets them in order.
            let enqueued_by = Instant::now() + DELIVERY_TIMEOUT;
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if Instant::now() < enqueued_by => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(self.delivery_error(e)),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(self.delivery_error(e)),
                Err(_) => return Err(self.delivery_error("the producer went away")),
            }
        }
        Ok(())
    }

    fn delivery_error(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::connector("kafka", format!("delivery to {}: {e}", self.cfg.topic))
    }

    /// The topic's partition count, and each partition's end now (the floor
    /// of this run's records). Waits for an auto-created topic to appear.
    async fn partitions(&self) -> sluice_engine::Result<(i32, BTreeMap<i32, i64>)> {
        let producer = self.producer.clone();
        let topic = self.cfg.topic.clone();
        let lookup = move || -> sluice_engine::Result<(i32, BTreeMap<i32, i64>)> {
            let client = producer.client();
            let deadline = Instant::now() + TOPIC_WAIT;
            let count = loop {
                let metadata = client.fetch_metadata(Some(&topic), METADATA_TIMEOUT).map_err(|e| EngineError::connector("kafka", e))?;
                let found = metadata.topics().iter().find(|t| t.name() == topic).filter(|t| t.error().is_none());
                match found.map(|t| t.partitions().len()) {
                    Some(n) if n > 0 => break n as i32,
                    _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                    _ => return Err(EngineError::connector("kafka", format!("topic {topic} has no partitions (does it exist?)"))),
                }
            };
            let mut floors = BTreeMap::new();
            for partition in 0..count {
                let (_, high) = client.fetch_watermarks(&topic, partition, METADATA_TIMEOUT).map_err(|e| EngineError::connector("kafka", e))?;
                floors.insert(partition, high);
            }
            Ok((count, floors))
        };
        tokio::task::spawn_blocking(lookup).await.map_err(|e| EngineError::Internal(e.to_string()))?
    }

    /// Produces the restored records that are not in the topic yet.
    async fn recover(&self, restored: Vec<Staged>) -> sluice_engine::Result<()> {
        let client = self.cfg.client_config();
        let (topic, query) = (self.cfg.topic.clone(), self.query_id.clone());
        let (last, restored) = tokio::task::spawn_blocking(move || {
            let last = tail::last_produced(&client, &topic, &query, &restored);
            (last, restored)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        let last = last?;
        let total = restored.len();
        let missing: Vec<Staged> = restored
            .into_iter()
            .filter(|s| last.get(&(s.record.partition, s.id.run.clone())).is_none_or(|l| s.id > *l))
            .collect();
        tracing::info!(
            "kafka topic {}: {total} record(s) of completed checkpoints restored, {} already in the topic, producing {}",
            self.cfg.topic,
            total - missing.len(),
            missing.len()
        );
        if missing.is_empty() {
            return Ok(());
        }
        let produced = match self.begin_transaction() {
            Ok(()) => self.produce_staged(&missing).await,
            Err(e) => Err(e),
        };
        self.end_transaction(produced).await
    }

    /// Begins a transaction, when the sink uses them.
    fn begin_transaction(&self) -> sluice_engine::Result<()> {
        match &self.transactional_id {
            None => Ok(()),
            Some(_) => self.producer.begin_transaction().map_err(|e| self.transaction_error("begin", e)),
        }
    }

    /// Commits the open transaction if `produced` succeeded, else aborts it
    /// (when the sink uses transactions), and returns the first failure.
    async fn end_transaction(&self, produced: sluice_engine::Result<()>) -> sluice_engine::Result<()> {
        if self.transactional_id.is_none() {
            return produced;
        }
        // A fatal producer error (fencing) fails deliveries as purged: name the cause.
        if let (Err(_), Some((code, reason))) = (&produced, self.producer.client().fatal_error()) {
            return Err(self.transaction_failure("produce", Some(code), reason));
        }
        let producer = self.producer.clone();
        let commit = produced.is_ok();
        let ended = tokio::task::spawn_blocking(move || match commit {
            true => producer.commit_transaction(TRANSACTION_TIMEOUT),
            false => producer.abort_transaction(TRANSACTION_TIMEOUT),
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        produced?;
        ended.map_err(|e| self.transaction_error("commit", e))
    }

    /// A transaction step failed; fencing by a newer run is named as such.
    fn transaction_error(&self, step: &str, e: KafkaError) -> EngineError {
        self.transaction_failure(step, e.rdkafka_error_code(), e)
    }

    fn transaction_failure(&self, step: &str, code: Option<RDKafkaErrorCode>, e: impl std::fmt::Display) -> EngineError {
        let id = self.transactional_id.as_deref().unwrap_or_default();
        match code {
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced) => EngineError::connector(
                "kafka",
                format!("topic {}: this run was fenced: a newer run of the query took the transactional id '{id}' ({e})", self.cfg.topic),
            ),
            _ => EngineError::connector("kafka", format!("topic {}: transaction {step} ('{id}'): {e}", self.cfg.topic)),
        }
    }
}

/// How a producer delivers.
enum ProducerMode<'a> {
    /// Records as results come (checkpoints off, or at-least-once).
    AsResultsCome,
    /// Staged records once their checkpoint completes: a failed delivery
    /// followed by a successful one is fatal (a gap would hide a record from
    /// the search for what a failed run produced).
    Staged,
    /// Staged records, each checkpoint's in one transaction under this id.
    Transactional(&'a str),
}

/// The sink's producer: idempotent in every mode.
fn producer(cfg: &KafkaConfig, mode: ProducerMode) -> Result<FutureProducer> {
    let mut client = cfg.client_config();
    client.set("enable.idempotence", "true");
    match mode {
        ProducerMode::AsResultsCome => {}
        ProducerMode::Staged => {
            client.set("enable.gapless.guarantee", "true");
        }
        ProducerMode::Transactional(id) => {
            client.set("transactional.id", id);
        }
    }
    // A transactional producer's message timeout may not exceed its
    // transaction timeout: librdkafka then takes the latter.
    if client.get("message.timeout.ms").is_none() && client.get("transactional.id").is_none() {
        client.set("message.timeout.ms", "60000");
    }
    client.create().map_err(kafka_error)
}

/// Whether a recovery test asked for a crash in the middle of a commit
/// (`SLUICE_CRASH_AT=mid-commit:<checkpoint>`): commits then produce their
/// first half and wait for it before the rest, so that the crash leaves part
/// of the checkpoint in the topic (in one go, librdkafka would send it all in
/// one request).
fn crash_test_mid_commit() -> bool {
    std::env::var("SLUICE_CRASH_AT").is_ok_and(|v| v.trim_start().starts_with("mid-commit"))
}

/// A new run's id: its start time in milliseconds and a random part.
fn run_id() -> String {
    format!("{:011x}{:04x}", chrono::Utc::now().timestamp_millis().max(0), rand::random::<u16>())
}

/// Encodes values as Avro, registering the schema before the first record.
struct AvroWriter {
    registry: avro::SchemaRegistry,
    subject: String,
    schema: apache_avro::Schema,
    id: Option<u32>,
}

#[async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka topic {} at {} ({})", self.cfg.topic, self.cfg.brokers, self.format())
    }

    fn identity(&self) -> String {
        format!("kafka topic {} ({})", self.cfg.topic, self.format())
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let records = self.records(&batch).await?;
        if let Some((staging, partitions)) = &mut self.staging {
            for (key, value) in records {
                let partition = self.partitioner.partition(key.as_deref(), *partitions);
                staging.stage(Encoded { partition, key, value, headers: Vec::new() });
            }
            return Ok(());
        }
        let sends = records.iter().map(|(key, value)| {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.cfg.topic);
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            self.producer.send(record, DELIVERY_TIMEOUT)
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.map_err(|(e, _)| self.delivery_error(e))?;
        }
        Ok(())
    }

    /// Records staged since the last barrier become this checkpoint's.
    async fn on_barrier(&mut self, barrier: Barrier) -> sluice_engine::Result<()> {
        if let Some((staging, _)) = &mut self.staging {
            staging.claim(barrier.id);
        }
        Ok(())
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        if let Some((staging, _)) = &mut self.staging {
            staging.claim(FINAL_CHECKPOINT);
        }
        Ok(())
    }

    fn exactly_once(&self) -> bool {
        self.cfg.delivery == DeliveryGuarantee::ExactlyOnce
    }

    /// From now on records are staged; the restored ones not yet in the
    /// topic are produced first.
    async fn begin_checkpoints(&mut self, restored: Option<RecordBatch>) -> sluice_engine::Result<()> {
        if self.cfg.delivery != DeliveryGuarantee::ExactlyOnce {
            return Ok(());
        }
        self.transactional_id = self.cfg.transactional_id_prefix.as_ref().map(|prefix| format!("{prefix}-{}", self.query_id));
        self.producer = match &self.transactional_id {
            None => producer(&self.cfg, ProducerMode::Staged)?,
            Some(id) => {
                // Fences the run this one replaces, and aborts its open transaction.
                let producer = producer(&self.cfg, ProducerMode::Transactional(id))?;
                let initialising = producer.clone();
                tokio::task::spawn_blocking(move || initialising.init_transactions(TRANSACTION_TIMEOUT))
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))?
                    .map_err(|e| self.transaction_error("init", e))?;
                producer
            }
        };
        let (partitions, floors) = self.partitions().await?;
        let restored = match &restored {
            Some(batch) => exactly_once::from_snapshot(batch)?,
            None => Vec::new(),
        };
        if !restored.is_empty() {
            self.recover(restored).await?;
        }
        self.staging = Some((Staging::new(&run_id(), floors), partitions));
        Ok(())
    }

    /// Rows of `exactly_once::snapshot_schema`: the staged records not yet produced.
    fn snapshot(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        match &self.staging {
            Some((staging, _)) => Ok(Some(staging.snapshot()?)),
            None => Ok(None),
        }
    }

    /// Produces the records of `checkpoint` and earlier; without staging
    /// (checkpoints off, or at-least-once) records were produced already.
    async fn commit(&mut self, checkpoint: u64) -> sluice_engine::Result<()> {
        let Some((staging, _)) = &mut self.staging else { return Ok(()) };
        let due = staging.due(checkpoint);
        if due.is_empty() {
            return Ok(());
        }
        let produced = match (self.begin_transaction(), crash_test_mid_commit()) {
            (Err(e), _) => Err(e),
            (Ok(()), false) => self.produce_staged(&due).await,
            (Ok(()), true) => {
                let (first, rest) = due.split_at(due.len().div_ceil(2));
                match self.produce_staged(first).await {
                    Ok(()) => {
                        crash_point(CrashPoint::MidCommit, checkpoint);
                        self.produce_staged(rest).await
                    }
                    failed => failed,
                }
            }
        };
        let result = self.end_transaction(produced).await;
        if result.is_err() {
            if let Some((staging, _)) = &mut self.staging {
                staging.undo(due);
            }
        }
        result
    }
}
