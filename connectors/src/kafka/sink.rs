//! Writes result rows as JSON records, keyed by a chosen column.

use std::time::Duration;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_engine::changelog::{is_changelog_output, ChangeKind};

use crate::metadata::metadata_key;
use sluice_engine::{EngineError, Sink};

use super::{kafka_error, KafkaConfig};
use crate::error::{ConnectorError, Result};

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
        Ok(KafkaSink { cfg, producer, key_column, upsert, value_columns })
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka topic {} at {} (json)", self.cfg.topic, self.cfg.brokers)
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let kinds = match self.upsert {
            true => batch.column(0).as_any().downcast_ref::<arrow::array::StringArray>().map(|a| {
                (0..a.len()).map(|i| ChangeKind::parse(a.value(i)).unwrap_or(ChangeKind::Insert)).collect::<Vec<_>>()
            }),
            false => None,
        };
        let values = batch.project(&self.value_columns)?;
        let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
        writer.write(&values)?;
        writer.finish()?;
        let text = String::from_utf8_lossy(&writer.into_inner()).to_string();
        let keys: Option<Vec<String>> = match self.key_column {
            None => None,
            Some(i) => {
                let f = ArrayFormatter::try_new(batch.column(i).as_ref(), &FormatOptions::default())?;
                Some((0..batch.num_rows()).map(|r| f.value(r).to_string()).collect())
            }
        };
        let kind = |r: usize| kinds.as_ref().map_or(ChangeKind::Insert, |k| k[r]);
        let sends = text.lines().enumerate().filter(|(r, _)| kind(*r) != ChangeKind::UpdateBefore).map(|(r, line)| {
            let mut record = FutureRecord::<str, str>::to(&self.cfg.topic);
            if kind(r) != ChangeKind::Delete {
                record = record.payload(line);
            }
            if let Some(keys) = &keys {
                record = record.key(keys[r].as_str());
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
