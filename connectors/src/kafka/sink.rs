//! Writes result rows as JSON records, keyed by a chosen column.

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_engine::{EngineError, Sink};

use super::{kafka_error, KafkaConfig};
use crate::error::Result;

/// How long one delivery may take before the query fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// An idempotent producer into the table's topic.
pub struct KafkaSink {
    cfg: KafkaConfig,
    producer: FutureProducer,
    key_column: Option<usize>,
}

impl KafkaSink {
    pub fn create(cfg: KafkaConfig, schema: SchemaRef) -> Result<Self> {
        let mut client = cfg.client_config();
        client.set("enable.idempotence", "true").set("message.timeout.ms", "60000");
        let producer: FutureProducer = client.create().map_err(kafka_error)?;
        let key_column = cfg.key_field.as_ref().and_then(|k| schema.column_with_name(k)).map(|(i, _)| i);
        Ok(KafkaSink { cfg, producer, key_column })
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka topic {} at {} (json)", self.cfg.topic, self.cfg.brokers)
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
        writer.write(&batch)?;
        writer.finish()?;
        let text = String::from_utf8_lossy(&writer.into_inner()).to_string();
        let keys: Option<Vec<String>> = match self.key_column {
            None => None,
            Some(i) => {
                let f = ArrayFormatter::try_new(batch.column(i).as_ref(), &FormatOptions::default())?;
                Some((0..batch.num_rows()).map(|r| f.value(r).to_string()).collect())
            }
        };
        let sends = text.lines().enumerate().map(|(r, line)| {
            let mut record = FutureRecord::<str, str>::to(&self.cfg.topic).payload(line);
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
