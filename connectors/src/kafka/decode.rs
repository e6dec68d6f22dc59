//! Turns record values into Arrow rows, many records per batch, and finds the
//! records that do not decode.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::KafkaFormat;
use crate::flat_json::FlatJsonDecoder;

/// Decodes values of one format into batches of one schema.
pub struct RecordDecoder {
    schema: SchemaRef,
    format: KafkaFormat,
    /// JSON's fast path, if it decodes the schema's types.
    flat_json: Option<FlatJsonDecoder>,
}

impl RecordDecoder {
    pub fn new(schema: SchemaRef, format: KafkaFormat) -> Self {
        let flat_json = match format {
            KafkaFormat::Json | KafkaFormat::AvroConfluent => FlatJsonDecoder::new(Arc::clone(&schema)),
            KafkaFormat::Csv | KafkaFormat::Raw => None,
        };
        RecordDecoder { schema, format, flat_json }
    }

    /// The schema values decode into.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// All values as one batch, or the first error.
    pub fn decode(&self, values: &[&[u8]]) -> Result<RecordBatch, String> {
        match self.format {
            // Avro values reach the decoder already turned into JSON.
            KafkaFormat::Json | KafkaFormat::AvroConfluent => {
                if let Some(batch) = self.flat_json.as_ref().and_then(|flat| flat.decode(values.iter().copied())) {
                    return Ok(batch);
                }
                let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(&self.schema))
                    .with_batch_size(values.len().max(1))
                    .build_decoder()
                    .map_err(|e| e.to_string())?;
                for v in values {
                    decoder.decode(v).map_err(|e| e.to_string())?;
                    decoder.decode(b"\n").map_err(|e| e.to_string())?;
                }
                let batch = decoder.flush().map_err(|e| e.to_string())?;
                Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema))))
            }
            KafkaFormat::Csv => {
                let mut decoder = arrow_csv::ReaderBuilder::new(Arc::clone(&self.schema))
                    .with_header(false)
                    .with_batch_size(values.len().max(1))
                    .build_decoder();
                for v in values {
                    let line = [*v, b"\n"].concat();
                    let mut rest: &[u8] = &line;
                    while !rest.is_empty() {
                        let used = decoder.decode(rest).map_err(|e| e.to_string())?;
                        if used == 0 {
                            break;
                        }
                        rest = &rest[used..];
                    }
                }
                let batch = decoder.flush().map_err(|e| e.to_string())?;
                Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema))))
            }
            KafkaFormat::Raw => {
                let field = self.schema.field(0);
                let column: ArrayRef = match field.data_type() {
                    DataType::Binary => Arc::new(BinaryArray::from_iter_values(values.iter())),
                    _ => {
                        let strings = values
                            .iter()
                            .map(|v| std::str::from_utf8(v).map_err(|e| format!("not UTF-8: {e}")))
                            .collect::<Result<Vec<_>, _>>()?;
                        let utf8: ArrayRef = Arc::new(StringArray::from(strings));
                        arrow::compute::cast(&utf8, field.data_type()).map_err(|e| e.to_string())?
                    }
                };
                RecordBatch::try_new(Arc::clone(&self.schema), vec![column]).map_err(|e| e.to_string())
            }
        }
    }

    /// Each value on its own: the good rows as one batch, and the index and
    /// error of every value that does not decode.
    pub fn decode_each(&self, values: &[&[u8]]) -> (Vec<RecordBatch>, Vec<(usize, String)>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match self.decode(&[v]) {
                Ok(b) if b.num_rows() == 1 => good.push(b),
                Ok(b) => bad.push((i, format!("decoded into {} rows, expected 1", b.num_rows()))),
                Err(e) => bad.push((i, e)),
            }
        }
        (good, bad)
    }
}
