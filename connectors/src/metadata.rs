//! Metadata columns: columns a connector fills from what it knows about a record
//! (its Kafka key, partition, offset, timestamp, headers) rather than from its
//! value, declared as in Flink: `ts TIMESTAMP(3) METADATA FROM 'timestamp'`.
//!
//! The catalog marks such a column in its Arrow field's metadata, so the mark
//! travels with the table's schema to whichever connector opens it.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

/// Field-metadata key holding the connector's name for the column's source.
pub const METADATA_FIELD_KEY: &str = "sluice.metadata";

/// The metadata key a column is filled from, if it is a metadata column.
pub fn metadata_key(field: &Field) -> Option<&str> {
    field.metadata().get(METADATA_FIELD_KEY).map(String::as_str)
}

/// `field` marked as filled from metadata `key`.
pub fn with_metadata_key(field: Field, key: &str) -> Field {
    let mut metadata = field.metadata().clone();
    metadata.insert(METADATA_FIELD_KEY.to_string(), key.to_string());
    field.with_metadata(metadata)
}

/// The columns that come from records' values: all but the metadata columns.
pub fn value_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().filter(|f| metadata_key(f).is_none()).map(|f| f.as_ref().clone()).collect::<Vec<_>>(),
    ))
}

/// True if any column is a metadata column.
pub fn has_metadata_columns(schema: &Schema) -> bool {
    schema.fields().iter().any(|f| metadata_key(f).is_some())
}
