//! Fits a connector's natural output to the columns a table declares.

use std::sync::Arc;

use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{ConnectorError, Result};

/// Maps declared columns onto a produced schema by name, with casts.
#[derive(Debug, Clone)]
pub struct Conformer {
    declared: SchemaRef,
    columns: Vec<usize>,
}

impl Conformer {
    /// Checks that every declared column exists in `produced` with a castable type.
    pub fn try_new(table: &str, produced: &SchemaRef, declared: &SchemaRef) -> Result<Self> {
        let mut columns = Vec::with_capacity(declared.fields().len());
        for field in declared.fields() {
            let (idx, source) = produced.column_with_name(field.name()).ok_or_else(|| ConnectorError::Schema {
                table: table.to_string(),
                reason: format!(
                    "column '{}' is not produced by this connector (it produces: {})",
                    field.name(),
                    produced.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                ),
            })?;
            if !can_cast_types(source.data_type(), field.data_type()) {
                return Err(ConnectorError::Schema {
                    table: table.to_string(),
                    reason: format!(
                        "column '{}' is {} here but declared {}",
                        field.name(),
                        source.data_type(),
                        field.data_type()
                    ),
                });
            }
            columns.push(idx);
        }
        Ok(Conformer { declared: Arc::clone(declared), columns })
    }

    pub fn apply(&self, batch: &RecordBatch) -> arrow::error::Result<RecordBatch> {
        let arrays = self
            .columns
            .iter()
            .zip(self.declared.fields())
            .map(|(i, f)| cast(batch.column(*i), f.data_type()))
            .collect::<arrow::error::Result<Vec<_>>>()?;
        RecordBatch::try_new(Arc::clone(&self.declared), arrays)
    }
}
