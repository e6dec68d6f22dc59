//! `connector = 'kafka'`: topics as sources and sinks, through librdkafka.
//!
//! Options:
//! - `bootstrap.servers`, `topic` (required).
//! - `scan.startup.mode`: `earliest`, `latest`, `group-offsets` (default: the
//!   group's committed offsets, else earliest) or `timestamp` (the first record at
//!   or after `scan.startup.timestamp-millis`, by Kafka record timestamp).
//! - `scan.bounded.mode` (source): where reading ends, as Flink's Kafka
//!   connector says it: `unbounded` (default: never), `latest-offset` (each
//!   partition's end when the source starts), `group-offsets` (the consumer
//!   group's committed offsets; a partition it has none for has nothing to read)
//!   or `timestamp` (the first record at or after
//!   `scan.bounded.timestamp-millis`, by Kafka record timestamp; that record and
//!   those after it are not read). A bounded source ends once every partition it
//!   reads has reached its stop, and the query then ends as over a file: a final
//!   watermark closes every window and the sink finishes. Such a table is
//!   bounded to the planner (see [`KafkaConnector::capabilities`]).
//! - `group.id` (or `properties.group.id`, as Flink names it): the consumer
//!   group whose offsets are committed. By default each query has its own,
//!   `sluice-<query id>` (the same for the same statement), and each `sluice
//!   ingest` job its own, `sluice-ingest-<lake table>`, so readers of one topic
//!   never move each other's offsets. Offsets are committed only once
//!   the rows read before them are durable in the sink (at each checkpoint
//!   barrier, every few seconds, and when the query stops gracefully); a query
//!   cancelled or crashed reads again from the last commit.
//! - `format`: `json` (default), `csv`, `raw` (one `VARBINARY`/`VARCHAR` column
//!   holding the value) or `avro-confluent` (Avro in Confluent's wire format, with
//!   `avro-confluent.url` naming the schema registry and, for sinks,
//!   `avro-confluent.subject`, default `<topic>-value`).
//! - `bad_data`: what a record that does not decode does: `fail` (default, the
//!   query fails naming topic, partition and offset), `drop` (counted, skipped) or
//!   `dead-letter` (its raw bytes go to `dead-letter.topic` with headers
//!   `sluice.topic`, `sluice.partition`, `sluice.offset`, `sluice.error`).
//! - `key.field` (sink): the column whose value becomes the record key.
//! - `sink.delivery-guarantee` (sink): `exactly-once` (default) or
//!   `at-least-once`. With checkpoints on, `exactly-once` holds each
//!   checkpoint's records back until the checkpoint completes, produces them
//!   then (each to the partition `properties.partitioner` picks for its key,
//!   with headers `sluice.query`, `sluice.run`, `sluice.checkpoint`,
//!   `sluice.seq`), and after a failure produces only those the topic lacks:
//!   a plain consumer reads each result once. Records appear a checkpoint
//!   interval later. `at-least-once` produces records as results come; a
//!   restored query produces again what came after its checkpoint. Without
//!   checkpoints both produce as results come.
//! - `sink.transactional-id-prefix` (sink, with `exactly-once`): also produce
//!   each checkpoint's records in one Kafka transaction, with the
//!   transactional id `<prefix>-<query id>` (stable across restarts). A
//!   `read_committed` consumer then never sees part of a checkpoint, and a
//!   restarted query fences the producer of the run it replaces (a zombie's
//!   later commits fail): the guarantee no longer rests on the old run being
//!   dead. The record identity headers and the tail read stay (a transaction
//!   open at the crash is aborted by the fencing, and its records are produced
//!   again). Needs a broker with transactions (Kafka 0.11 on); the test broker
//!   accepts them but shows aborted records to every consumer, so only the
//!   commit and fencing paths are tested here.
//! - `properties.*`: passed to librdkafka as they are (SASL, SSL, timeouts...).
//! - `batch.size` (source): records per batch at most (default 1024).
//! - `source.idle-timeout.ms`: a lane whose partitions deliver nothing for this
//!   long (default 5000) is idle: event time no longer waits for it.
//!
//! Metadata columns (`col TYPE METADATA [FROM 'key'] [VIRTUAL]`): `key` (BYTES or
//! VARCHAR), `topic`, `partition`, `offset`, `timestamp` (the record's Kafka
//! timestamp) and `headers` (a JSON object of strings, for `json_get`). Records
//! without a value (tombstones) hold no row and are skipped, unless the table has
//! a `PRIMARY KEY`: then it is an upsert table (as Flink's `upsert-kafka`), read as
//! a changelog: every record is `+U` for its key, a tombstone is `-D` for the key
//! in its record key (the key column's value, or a JSON object of the key
//! columns), at its Kafka timestamp. Such a table is the versioned table of a
//! temporal join, or is read as it is.
//!
//! Lanes split a topic's partitions between them (partition `p` goes to lane
//! `p % lanes`). A source is resumable: a checkpoint holds, per partition, the
//! next offset to read, and a query restored from it (at any parallelism) starts
//! there, whatever `scan.startup.mode` and the group's offsets say; partitions
//! the checkpoint does not name start as `scan.startup.mode` says (a `latest` or
//! `timestamp` start is looked up when the source is created, so it is a
//! position even before the first record). Sinks use an idempotent producer and wait for every delivery:
//! a failed delivery fails the query instead of losing the row.

pub(crate) mod avro;
pub mod decode;
mod exactly_once;
mod metadata;
mod partitioner;
mod positions;
mod quiet;
mod sink;
mod source;
mod tail;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use sluice_engine::{Sink, Source};

use crate::error::{ConnectorError, Result};
use crate::registry::{Connector, Shard, TableSpec};

/// Where a source starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMode {
    Earliest,
    Latest,
    GroupOffsets,
    /// The first record at or after this Kafka timestamp (epoch milliseconds).
    Timestamp(i64),
}

/// Where a source stops reading (`scan.bounded.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundedMode {
    /// It never ends.
    Unbounded,
    /// At each partition's end as of when the source starts.
    LatestOffset,
    /// At the consumer group's committed offsets.
    GroupOffsets,
    /// Before the first record at or after this Kafka timestamp (epoch milliseconds).
    Timestamp(i64),
}

impl BoundedMode {
    /// Whether the source ends.
    pub fn is_bounded(self) -> bool {
        self != BoundedMode::Unbounded
    }
}

/// Value encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaFormat {
    Json,
    Csv,
    Raw,
    /// Avro in Confluent's wire format, schemas in a schema registry.
    AvroConfluent,
}

/// Where Avro schemas live (`format = 'avro-confluent'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvroOptions {
    /// The schema registry's base URL (`avro-confluent.url`).
    pub registry_url: String,
    /// The subject a sink registers its schema under (default `<topic>-value`).
    pub subject: String,
}

/// What a sink promises once checkpoints are on (`sink.delivery-guarantee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Records wait for their checkpoint and are produced once it completes;
    /// after a failure, only those not yet in the topic (see the module docs).
    ExactlyOnce,
    /// Records are produced as results come; a restore produces again what
    /// came after its checkpoint.
    AtLeastOnce,
}

/// What to do with records that do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadData {
    Fail,
    Drop,
    DeadLetter(String),
}

/// Typed `kafka` options.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// `group.id` as given; `None`: each reader takes its own (see the module docs).
    pub group_id: Option<String>,
    pub startup: StartupMode,
    /// Where a source stops (`scan.bounded.mode`).
    pub bounded: BoundedMode,
    pub format: KafkaFormat,
    pub avro: Option<AvroOptions>,
    pub bad_data: BadData,
    pub key_field: Option<String>,
    /// The sink's guarantee with checkpoints on.
    pub delivery: DeliveryGuarantee,
    /// `sink.transactional-id-prefix`: exactly-once output also goes through
    /// Kafka transactions.
    pub transactional_id_prefix: Option<String>,
    pub batch_size: usize,
    /// After this long without records a lane reports itself idle.
    pub idle_timeout: std::time::Duration,
    /// `properties.*` with the prefix removed.
    pub properties: BTreeMap<String, String>,
    /// The table's PRIMARY KEY: with one, records are upserts by key and
    /// tombstones delete (see the source).
    pub primary_key: Vec<String>,
    /// The table's event-time column (a tombstone takes its Kafka timestamp).
    pub time_column: Option<String>,
}

impl KafkaConfig {
    pub fn from_table(table: &TableSpec) -> Result<Self> {
        let mut o = table.options();
        let bad = |key: &str, reason: String| ConnectorError::Option { connector: "kafka".into(), key: key.into(), reason };
        let brokers = o.take_str("bootstrap.servers")?;
        let topic = o.take_str("topic")?;
        let group_id = o.take_opt("group.id");
        let startup = match o.take_opt("scan.startup.mode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None | Some("group-offsets") => StartupMode::GroupOffsets,
            Some("earliest") | Some("earliest-offset") => StartupMode::Earliest,
            Some("latest") | Some("latest-offset") => StartupMode::Latest,
            Some("timestamp") => match o.take_parsed::<i64>("scan.startup.timestamp-millis")? {
                Some(ms) => StartupMode::Timestamp(ms),
                None => return Err(bad("scan.startup.mode", "'timestamp' needs 'scan.startup.timestamp-millis'".into())),
            },
            Some(other) => {
                return Err(bad("scan.startup.mode", format!("'{other}' is not one of earliest, latest, group-offsets, timestamp")))
            }
        };
        let bounded = match o.take_opt("scan.bounded.mode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None | Some("unbounded") => BoundedMode::Unbounded,
            Some("latest-offset") => BoundedMode::LatestOffset,
            Some("group-offsets") => BoundedMode::GroupOffsets,
            Some("timestamp") => match o.take_parsed::<i64>("scan.bounded.timestamp-millis")? {
                Some(ms) => BoundedMode::Timestamp(ms),
                None => return Err(bad("scan.bounded.mode", "'timestamp' needs 'scan.bounded.timestamp-millis'".into())),
            },
            Some(other) => {
                return Err(bad(
                    "scan.bounded.mode",
                    format!("'{other}' is not one of unbounded, latest-offset, group-offsets, timestamp"),
                ))
            }
        };
        if o.take_opt("scan.bounded.timestamp-millis").is_some() {
            return Err(bad("scan.bounded.timestamp-millis", "only for 'scan.bounded.mode' = 'timestamp'".into()));
        }
        let format = match o.take_opt("format").map(|f| f.to_ascii_lowercase()).as_deref() {
            None | Some("json") => KafkaFormat::Json,
            Some("csv") => KafkaFormat::Csv,
            Some("raw") => KafkaFormat::Raw,
            Some("avro-confluent") | Some("avro") => KafkaFormat::AvroConfluent,
            Some(other) => return Err(bad("format", format!("'{other}' is not one of json, csv, raw, avro-confluent"))),
        };
        let registry_url = o.take_opt("avro-confluent.url");
        let subject = o.take_opt("avro-confluent.subject");
        let avro = match (format, registry_url) {
            (KafkaFormat::AvroConfluent, Some(registry_url)) => {
                Some(AvroOptions { registry_url, subject: subject.unwrap_or_else(|| format!("{topic}-value")) })
            }
            (KafkaFormat::AvroConfluent, None) => {
                return Err(bad("format", "'avro-confluent' needs the schema registry: 'avro-confluent.url'".into()))
            }
            (_, Some(_)) => return Err(bad("avro-confluent.url", "only for format = 'avro-confluent'".into())),
            (_, None) => None,
        };
        let dead_letter = o.take_opt("dead-letter.topic");
        let bad_data = match o.take_opt("bad_data").map(|b| b.to_ascii_lowercase()).as_deref() {
            None | Some("fail") => BadData::Fail,
            Some("drop") => BadData::Drop,
            Some("dead-letter") => match dead_letter {
                Some(t) => BadData::DeadLetter(t),
                None => return Err(bad("bad_data", "'dead-letter' needs 'dead-letter.topic'".into())),
            },
            Some(other) => return Err(bad("bad_data", format!("'{other}' is not one of fail, drop, dead-letter"))),
        };
        let key_field = o.take_opt("key.field");
        if let Some(k) = &key_field {
            if table.schema.column_with_name(k).is_none() {
                return Err(bad("key.field", format!("no column '{k}'")));
            }
        }
        let delivery = match o.take_opt("sink.delivery-guarantee").map(|d| d.to_ascii_lowercase()).as_deref() {
            None | Some("exactly-once") => DeliveryGuarantee::ExactlyOnce,
            Some("at-least-once") => DeliveryGuarantee::AtLeastOnce,
            Some(other) => return Err(bad("sink.delivery-guarantee", format!("'{other}' is not one of exactly-once, at-least-once"))),
        };
        let transactional_id_prefix = o.take_opt("sink.transactional-id-prefix");
        if transactional_id_prefix.is_some() && delivery != DeliveryGuarantee::ExactlyOnce {
            return Err(bad(
                "sink.transactional-id-prefix",
                "transactions are for 'sink.delivery-guarantee' = 'exactly-once'; 'at-least-once' produces records as results come".into(),
            ));
        }
        if transactional_id_prefix.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(bad("sink.transactional-id-prefix", "is empty".into()));
        }
        let batch_size = o.take_parsed("batch.size")?.unwrap_or(1024);
        let idle_timeout = std::time::Duration::from_millis(o.take_parsed("source.idle-timeout.ms")?.unwrap_or(5000));
        let mut properties = o.take_prefixed("properties.");
        o.ensure_empty()?;
        // Flink names the group `properties.group.id`: one group, whichever way it is given.
        let group_id = match (group_id, properties.remove("group.id")) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad("properties.group.id", format!("'{b}' differs from 'group.id' = '{a}': give one of them")))
            }
            (given, from_properties) => given.or(from_properties),
        };
        if format == KafkaFormat::Raw && crate::metadata::value_schema(&table.schema).fields().len() != 1 {
            return Err(bad("format", "'raw' tables have exactly one column".into()));
        }
        let (primary_key, time_column) = (table.primary_key.clone(), table.time_column.clone());
        Ok(KafkaConfig {
            primary_key,
            time_column,
            brokers,
            topic,
            group_id,
            startup,
            bounded,
            format,
            avro,
            bad_data,
            key_field,
            delivery,
            transactional_id_prefix,
            batch_size,
            idle_timeout,
            properties,
        })
    }

    /// librdkafka settings shared by consumers and producers.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// The `kafka` connector.
pub struct KafkaConnector;

impl Connector for KafkaConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }

    /// A table with a bounded `scan.bounded.mode` is bounded: windows over it
    /// close at its end even without a WATERMARK, and without one it can be
    /// the static side of a lookup join. With a WATERMARK it is still read as a
    /// stream, its event time driving the windows until the end.
    fn capabilities(&self, table: &TableSpec) -> crate::registry::Capabilities {
        let bounded = KafkaConfig::from_table(table).is_ok_and(|c| c.bounded.is_bounded());
        crate::registry::Capabilities { bounded, upsert: true, metadata_columns: true }
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        metadata::check(&table.name, &table.schema)?;
        KafkaConfig::from_table(table).map(|_| ())
    }

    fn source(&self, table: &TableSpec, shard: Shard, query_id: &str) -> Result<Box<dyn Source>> {
        let mut cfg = KafkaConfig::from_table(table)?;
        cfg.group_id.get_or_insert_with(|| format!("sluice-{query_id}"));
        Ok(Box::new(source::KafkaSource::create(cfg, table.schema.clone(), shard)?))
    }

    /// A sink outside a query (no statement to name its records after): a
    /// random query id.
    fn sink(&self, table: &TableSpec) -> Result<Box<dyn Sink>> {
        self.sink_for_query(table, &format!("{:016x}", rand::random::<u64>()))
    }

    /// A sink whose records carry `query_id` (header `sluice.query`) with
    /// checkpoints on, so a restored run recognises what it produced before.
    fn sink_for_query(&self, table: &TableSpec, query_id: &str) -> Result<Box<dyn Sink>> {
        let cfg = KafkaConfig::from_table(table)?;
        Ok(Box::new(sink::KafkaSink::create(cfg, table.schema.clone(), query_id)?))
    }
}

pub(crate) fn kafka_error(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::External { connector: "kafka".into(), message: e.to_string() }
}
