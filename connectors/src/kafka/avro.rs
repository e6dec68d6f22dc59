//! Avro values in Confluent's wire format (a zero byte, the 4-byte big-endian
//! schema id, then the Avro binary datum), with schemas kept in a
//! Confluent-compatible schema registry (`format = 'avro-confluent'`).
//!
//! Reading, a record's writer schema is fetched by id (and cached) and its datum
//! turned into the JSON the JSON decoder reads, so Avro tables get the same
//! coercions and bad-record handling as JSON ones. Writing, the table's Arrow
//! schema becomes an Avro record schema, registered under the subject
//! (`<topic>-value` by default) before the first record.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::Schema as AvroSchema;
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, Schema, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value as Json};

/// A client of a Confluent-compatible schema registry.
pub struct SchemaRegistry {
    url: String,
    http: reqwest::Client,
    by_id: HashMap<u32, Arc<AvroSchema>>,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl SchemaRegistry {
    pub fn new(url: &str) -> Self {
        SchemaRegistry { url: url.trim_end_matches('/').to_string(), http: reqwest::Client::new(), by_id: HashMap::new() }
    }

    /// The schema registered under `id`.
    pub async fn schema(&mut self, id: u32) -> Result<Arc<AvroSchema>, String> {
        if let Some(s) = self.by_id.get(&id) {
            return Ok(Arc::clone(s));
        }
        let url = format!("{}/schemas/ids/{id}", self.url);
        let response = self.http.get(&url).send().await.map_err(|e| format!("schema registry {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("schema registry {url}: {}", response.status()));
        }
        let body: Json = response.json().await.map_err(|e| format!("schema registry {url}: {e}"))?;
        let text = body["schema"].as_str().ok_or_else(|| format!("schema registry {url}: no schema in the answer"))?;
        let schema = Arc::new(AvroSchema::parse_str(text).map_err(|e| format!("schema {id}: {e}"))?);
        self.by_id.insert(id, Arc::clone(&schema));
        Ok(schema)
    }

    /// Registers `schema` under `subject` (or finds it there); returns its id.
    pub async fn register(&self, subject: &str, schema: &AvroSchema) -> Result<u32, String> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        // The full form: the canonical one drops logical types (timestamps).
        let text = serde_json::to_string(schema).map_err(|e| e.to_string())?;
        let body = json!({ "schema": text });
        let response = self
            .http
            .post(&url)
            .header("Content-Type", CONTENT_TYPE)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("schema registry {url}: {e}"))?;
        let status = response.status();
        let answer: Json = response.json().await.unwrap_or(Json::Null);
        if !status.is_success() {
            return Err(format!("schema registry {url}: {status} {answer}"));
        }
        answer["id"].as_u64().map(|id| id as u32).ok_or_else(|| format!("schema registry {url}: no id in {answer}"))
    }
}

/// A wire-format value as a JSON object.
pub async fn to_json(registry: &mut SchemaRegistry, value: &[u8]) -> Result<Vec<u8>, String> {
    if value.len() < 5 || value[0] != 0 {
        return Err("not in Confluent's Avro wire format (a zero byte and a schema id first)".into());
    }
    let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    let schema = registry.schema(id).await?;
    let mut datum = &value[5..];
    let avro = apache_avro::from_avro_datum(&schema, &mut datum, None).map_err(|e| format!("Avro datum (schema {id}): {e}"))?;
    serde_json::to_vec(&avro_to_json(avro)).map_err(|e| e.to_string())
}

fn timestamp(nanos: i64) -> Json {
    let t = chrono::DateTime::from_timestamp_nanos(nanos);
    Json::String(t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string())
}

fn avro_to_json(value: Avro) -> Json {
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => b.into(),
        Avro::Int(i) | Avro::TimeMillis(i) => i.into(),
        Avro::Long(l) | Avro::TimeMicros(l) => l.into(),
        Avro::Float(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        Avro::Double(d) => serde_json::Number::from_f64(d).map_or(Json::Null, Json::Number),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Json::String(String::from_utf8_lossy(&b).into_owned()),
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s),
        Avro::Union(_, inner) => avro_to_json(*inner),
        Avro::Array(items) => Json::Array(items.into_iter().map(avro_to_json).collect()),
        Avro::Map(map) => Json::Object(map.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        Avro::Record(fields) => Json::Object(fields.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        Avro::Date(days) => chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
            .map_or(Json::Null, |d| Json::String(d.to_string())),
        Avro::TimestampMillis(ms) | Avro::LocalTimestampMillis(ms) => timestamp(ms.saturating_mul(1_000_000)),
        Avro::TimestampMicros(us) | Avro::LocalTimestampMicros(us) => timestamp(us.saturating_mul(1_000)),
        Avro::TimestampNanos(ns) | Avro::LocalTimestampNanos(ns) => timestamp(ns),
        Avro::Uuid(u) => Json::String(u.to_string()),
        other => Json::String(format!("{other:?}")),
    }
}

/// The Avro type a column is written as, and the Arrow type it is cast to first.
fn avro_type(data_type: &DataType) -> Option<(Json, DataType)> {
    Some(match data_type {
        DataType::Boolean => (json!("boolean"), DataType::Boolean),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            (json!("int"), DataType::Int32)
        }
        DataType::Int64 | DataType::UInt32 => (json!("long"), DataType::Int64),
        DataType::Float32 => (json!("float"), DataType::Float32),
        DataType::Float64 | DataType::Decimal128(_, _) => (json!("double"), DataType::Float64),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (json!("string"), DataType::Utf8),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => (json!("bytes"), DataType::Binary),
        DataType::Timestamp(_, _) => (
            json!({"type": "long", "logicalType": "timestamp-millis"}),
            DataType::Timestamp(TimeUnit::Millisecond, None),
        ),
        DataType::Date32 | DataType::Date64 => (json!({"type": "int", "logicalType": "date"}), DataType::Date32),
        _ => return None,
    })
}

/// An Avro record schema for `schema`'s columns (nullable ones as unions with null).
pub fn avro_schema(name: &str, schema: &Schema) -> Result<AvroSchema, String> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let (t, _) = avro_type(f.data_type()).ok_or_else(|| format!("column {} ({}) has no Avro type here", f.name(), f.data_type()))?;
            Ok(match f.is_nullable() {
                true => json!({"name": f.name(), "type": ["null", t], "default": null}),
                false => json!({"name": f.name(), "type": t}),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let record_name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let record = json!({"type": "record", "name": record_name, "fields": fields});
    AvroSchema::parse_str(&record.to_string()).map_err(|e| e.to_string())
}

/// Each row of `batch` as a wire-format value of schema `id` (a record schema
/// from [`avro_schema`], whose unions say which columns are nullable).
pub fn encode(batch: &RecordBatch, schema: &AvroSchema, id: u32) -> Result<Vec<Vec<u8>>, String> {
    let AvroSchema::Record(record) = schema else { return Err("the Avro schema is not a record".into()) };
    if record.fields.len() != batch.num_columns() {
        return Err(format!("{} columns for an Avro record of {} fields", batch.num_columns(), record.fields.len()));
    }
    let columns: Vec<(String, bool, ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .zip(&record.fields)
        .map(|((f, c), avro_field)| {
            let (_, target) = avro_type(f.data_type()).ok_or_else(|| format!("column {} has no Avro type", f.name()))?;
            let nullable = matches!(avro_field.schema, AvroSchema::Union(_));
            Ok((avro_field.name.clone(), nullable, cast(c, &target).map_err(|e| e.to_string())?))
        })
        .collect::<Result<_, String>>()?;
    (0..batch.num_rows())
        .map(|row| {
            let fields = columns
                .iter()
                .map(|(name, nullable, array)| {
                    let value = cell(array, row);
                    let value = match (nullable, value) {
                        (true, Avro::Null) => Avro::Union(0, Box::new(Avro::Null)),
                        (true, v) => Avro::Union(1, Box::new(v)),
                        (false, v) => v,
                    };
                    (name.clone(), value)
                })
                .collect();
            let datum = apache_avro::to_avro_datum(schema, Avro::Record(fields)).map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(datum.len() + 5);
            out.push(0);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&datum);
            Ok(out)
        })
        .collect()
}

fn cell(array: &ArrayRef, row: usize) -> Avro {
    if array.is_null(row) {
        return Avro::Null;
    }
    match array.data_type() {
        DataType::Boolean => Avro::Boolean(array.as_boolean().value(row)),
        DataType::Int32 => Avro::Int(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Avro::Long(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => Avro::Float(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => Avro::Double(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Avro::String(array.as_string::<i32>().value(row).to_string()),
        DataType::Binary => Avro::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::Timestamp(_, _) => Avro::TimestampMillis(array.as_primitive::<TimestampMillisecondType>().value(row)),
        DataType::Date32 => Avro::Date(array.as_primitive::<Date32Type>().value(row)),
        _ => Avro::Null,
    }
}
