//! `connector = 'blackhole'`: a sink that takes every row and keeps none, as
//! Flink's, for measuring a query without the cost of writing its results.
//!
//! No options. Any columns may be declared; the rows are counted (the query's
//! rows out in `SHOW METRICS` and the REST metrics) and dropped. Updating
//! results are taken too, `op` column and all.

use async_trait::async_trait;
use arrow::record_batch::RecordBatch;
use sluice_engine::Sink;

use crate::error::Result;
use crate::registry::{Connector, TableSpec};

/// The `blackhole` connector (sink only).
pub struct BlackholeConnector;

impl Connector for BlackholeConnector {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        table.options().ensure_empty()
    }

    fn sink(&self, table: &TableSpec) -> Result<Box<dyn Sink>> {
        self.validate(table)?;
        Ok(Box::new(BlackholeSink::default()))
    }
}

/// Counts the rows it is given and drops them.
#[derive(Debug, Default)]
pub struct BlackholeSink {
    rows: u64,
}

impl BlackholeSink {
    /// Rows taken so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    fn describe(&self) -> String {
        "blackhole".to_string()
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        tracing::debug!(rows = self.rows, "blackhole finished");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[tokio::test]
    async fn takes_and_counts_every_row_and_refuses_options() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let table = TableSpec::new("sink", schema.clone(), "blackhole", BTreeMap::new());
        BlackholeConnector.validate(&table)?;
        let mut sink = BlackholeSink::default();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?;
        sink.write_batch(batch.clone()).await?;
        sink.write_batch(batch).await?;
        sink.finish().await?;
        assert_eq!(sink.rows(), 6);
        let with_option = TableSpec::new("sink", schema, "blackhole", BTreeMap::from([("path".to_string(), "x".to_string())]));
        let e = BlackholeConnector.sink(&with_option).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid option 'path' for connector 'blackhole': unknown option"), "{e}");
        Ok(())
    }
}
