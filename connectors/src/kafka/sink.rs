//! Writes result rows as JSON (or Avro) records, keyed by a chosen column;
//! updating results as upserts.

use std::time::Duration;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_engine::changelog::{is_changelog_output, ChangeKind};
use sluice_engine::{EngineError, Sink};

use super::{avro, kafka_error, KafkaConfig};
use crate::error::{ConnectorError, Result};
use crate::metadata::metadata_key;

/// How long one delivery may take before the query fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

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
}

impl KafkaSink {
    pub fn create(cfg: KafkaConfig, schema: SchemaRef) -> Result<Self> {
        let mut client = cfg.client_config();
        client.set("enable.idempotence", "true");
        if client.get("message.timeout.ms").is_none() {
            client.set("message.timeout.ms", "60000");
        }
        let producer: FutureProducer = client.create().map_err(kafka_error)?;
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
        Ok(KafkaSink { cfg, producer, key_column, upsert, value_columns, avro })
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
        let format = if self.avro.is_some() { "avro-confluent" } else { "json" };
        format!("kafka topic {} at {} ({format})", self.cfg.topic, self.cfg.brokers)
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let kinds = match self.upsert {
            true => batch.column(0).as_any().downcast_ref::<arrow::array::StringArray>().map(|a| {
                (0..a.len()).map(|i| ChangeKind::parse(a.value(i)).unwrap_or(ChangeKind::Insert)).collect::<Vec<_>>()
            }),
            false => None,
        };
        let values = batch.project(&self.value_columns)?;
        let payloads = self.values(&values).await?;
        // A NULL key is a record without a key, not the key "".
        let keys: Option<Vec<Option<String>>> = match self.key_column {
            None => None,
            Some(i) => {
                let column = batch.column(i);
                let f = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
                Some((0..batch.num_rows()).map(|r| column.is_valid(r).then(|| f.value(r).to_string())).collect())
            }
        };
        let kind = |r: usize| kinds.as_ref().map_or(ChangeKind::Insert, |k| k[r]);
        let sends = payloads.iter().enumerate().filter(|(r, _)| kind(*r) != ChangeKind::UpdateBefore).map(|(r, payload)| {
            let mut record = FutureRecord::<str, [u8]>::to(&self.cfg.topic);
            if kind(r) != ChangeKind::Delete {
                record = record.payload(payload.as_slice());
            }
            if let Some(Some(key)) = keys.as_ref().map(|k| &k[r]) {
                record = record.key(key.as_str());
            }
            self.producer.send(record, DELIVERY_TIMEOUT)
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.map_err(|(e, _)| EngineError::connector("kafka", format!("delivery to {}: {e}", self.cfg.topic)))?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        Ok(())
    }
}
