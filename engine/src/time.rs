//! Event-time helpers: every timestamp column is read as nanoseconds since the epoch.

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use crate::error::{EngineError, Result};

/// Reads a timestamp (or date) array as epoch nanoseconds; nulls stay null.
pub fn as_epoch_nanos(array: &ArrayRef) -> Result<Int64Array> {
    match array.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {}
        other => {
            return Err(EngineError::Plan(format!(
                "event time must be a TIMESTAMP, found {other}"
            )))
        }
    }
    let nanos = cast(array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    let ints = cast(&nanos, &DataType::Int64)?;
    ints.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| EngineError::Internal("timestamp cast did not yield Int64".into()))
}

/// Builds an array of `data_type` (a timestamp type) from epoch nanoseconds.
pub fn from_epoch_nanos(values: Vec<i64>, data_type: &DataType) -> Result<ArrayRef> {
    let ints: ArrayRef = std::sync::Arc::new(Int64Array::from(values));
    let nanos = cast(&ints, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    Ok(cast(&nanos, data_type)?)
}

/// Formats epoch nanoseconds the way Arrow prints timestamps.
pub fn format_nanos(nanos: i64) -> String {
    if nanos == i64::MAX {
        return "+inf".to_string();
    }
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    match chrono::DateTime::from_timestamp(secs, sub) {
        Some(t) => t.naive_utc().to_string(),
        None => nanos.to_string(),
    }
}

/// A span of event time, the way people write it (`30s`, `5m`, `250ms`).
pub fn format_duration_nanos(nanos: i64) -> String {
    let ms = nanos / 1_000_000;
    match ms {
        ms if ms % 3_600_000 == 0 && ms != 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms != 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 && ms != 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}
