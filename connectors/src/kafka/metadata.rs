//! Kafka's metadata columns: what a record carries besides its value (key,
//! topic, partition, offset, timestamp, headers), for columns declared
//! `METADATA FROM '...'`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::{ConnectorError, Result};
use crate::metadata::metadata_key;

/// The metadata keys the Kafka connector knows.
pub const KEYS: &str = "key, topic, partition, offset, timestamp, headers";

/// One record as read, before decoding.
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Kafka timestamp, epoch milliseconds.
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// No value: in an upsert table, the key's deletion.
    pub tombstone: bool,
}

/// A metadata column's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Key,
    Topic,
    Partition,
    Offset,
    Timestamp,
    Headers,
}

impl Meta {
    fn parse(key: &str) -> Option<Self> {
        Some(match key.to_ascii_lowercase().as_str() {
            "key" => Meta::Key,
            "topic" => Meta::Topic,
            "partition" => Meta::Partition,
            "offset" => Meta::Offset,
            "timestamp" => Meta::Timestamp,
            "headers" => Meta::Headers,
            _ => return None,
        })
    }

    /// The type the value comes in (cast to the declared type).
    fn natural_type(self) -> DataType {
        match self {
            Meta::Key => DataType::Binary,
            Meta::Topic | Meta::Headers => DataType::Utf8,
            Meta::Partition => DataType::Int32,
            Meta::Offset => DataType::Int64,
            Meta::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
        }
    }

    fn column(self, topic: &str, records: &[&Record]) -> ArrayRef {
        match self {
            Meta::Key => Arc::new(records.iter().map(|r| r.key.as_deref()).collect::<BinaryArray>()),
            Meta::Topic => Arc::new(StringArray::from_iter_values(records.iter().map(|_| topic))),
            Meta::Partition => Arc::new(Int32Array::from_iter_values(records.iter().map(|r| r.partition))),
            Meta::Offset => Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset))),
            Meta::Timestamp => Arc::new(records.iter().map(|r| r.timestamp).collect::<TimestampMillisecondArray>()),
            Meta::Headers => Arc::new(StringArray::from_iter_values(records.iter().map(|r| headers_json(&r.headers)))),
        }
    }
}

/// Headers as a JSON object of strings (NULL for a header without a value).
fn headers_json(headers: &[(String, Option<Vec<u8>>)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            let value = v.as_ref().map_or(serde_json::Value::Null, |v| String::from_utf8_lossy(v).into_owned().into());
            (k.clone(), value)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Checks the table's metadata columns: known keys, castable types.
pub fn check(table: &str, schema: &Schema) -> Result<()> {
    for field in schema.fields() {
        let Some(key) = metadata_key(field) else { continue };
        let Some(meta) = Meta::parse(key) else {
            return Err(ConnectorError::Schema {
                table: table.to_string(),
                reason: format!("column {}: unknown Kafka metadata '{key}' (known: {KEYS})", field.name()),
            });
        };
        let wanted = field.data_type();
        let natural = meta.natural_type();
        let fits = match (meta, wanted) {
            (Meta::Key, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => true,
            (Meta::Timestamp, DataType::Timestamp(_, _)) => true,
            _ => can_cast_types(&natural, wanted),
        };
        if !fits {
            return Err(ConnectorError::Schema {
                table: table.to_string(),
                reason: format!("column {}: Kafka metadata '{key}' is {natural}, which does not fit {wanted}", field.name()),
            });
        }
    }
    Ok(())
}

/// The table's rows: value columns from `values` (decoded from `records`, in
/// order), metadata columns from the records themselves.
pub fn assemble(schema: &arrow::datatypes::SchemaRef, topic: &str, values: &RecordBatch, records: &[&Record]) -> Result<RecordBatch, String> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match metadata_key(field).and_then(Meta::parse) {
            Some(meta) => {
                let natural = meta.column(topic, records);
                let natural = match (meta, field.data_type()) {
                    // Keys are text as often as bytes: read them as UTF-8.
                    (Meta::Key, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                        Arc::new(records.iter().map(|r| r.key.as_deref().map(String::from_utf8_lossy)).collect::<StringArray>())
                    }
                    _ => natural,
                };
                cast(&natural, field.data_type()).map_err(|e| e.to_string())
            }
            None => values.column_by_name(field.name()).cloned().ok_or_else(|| format!("column {} not decoded", field.name())),
        })
        .collect::<Result<Vec<_>, String>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(records.len())),
    )
    .map_err(|e| e.to_string())
}

/// Epoch milliseconds as the timestamp text the JSON decoder reads.
pub fn timestamp_text(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}
