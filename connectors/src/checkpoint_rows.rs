//! Connector positions and sink snapshots travel in checkpoints as Arrow rows.
//!
//! The engine stores them without looking inside, so each connector reads its
//! own rows back; this module does the part they share: finding a column by
//! name and type, and refusing rows that do not fit (a checkpoint taken when
//! the table was declared differently) with a typed error instead of a panic.

use arrow::array::{Array, RecordBatch};

use crate::error::{ConnectorError, Result};

/// The error for state in a checkpoint that `connector` cannot read.
pub(crate) fn unfit(connector: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::Checkpoint { connector: connector.to_string(), reason: reason.into() }
}

/// Column `name` of `batch` as an array of type `T`; with `required`, it must
/// hold no NULL.
pub(crate) fn column<'a, T: Array + 'static>(
    connector: &str,
    batch: &'a RecordBatch,
    name: &str,
    required: bool,
) -> Result<&'a T> {
    let array = batch.column_by_name(name).ok_or_else(|| unfit(connector, format!("no column '{name}'")))?;
    let typed = array.as_any().downcast_ref::<T>().ok_or_else(|| {
        unfit(connector, format!("column '{name}' is {}, not {}", array.data_type(), std::any::type_name::<T>()))
    })?;
    if required && typed.null_count() > 0 {
        return Err(unfit(connector, format!("column '{name}' holds NULL")));
    }
    Ok(typed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_missing_mistyped_or_null_column_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let schema = Schema::new(vec![Field::new("a", DataType::Int32, true)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int32Array::from(vec![Some(1), None]))])?;
        assert_eq!(column::<Int32Array>("x", &batch, "a", false)?.len(), 2);
        let missing = column::<Int32Array>("x", &batch, "b", false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(missing.contains("no column 'b'"), "{missing}");
        let mistyped = column::<Int64Array>("x", &batch, "a", false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(mistyped.contains("column 'a' is Int32"), "{mistyped}");
        let null = column::<Int32Array>("x", &batch, "a", true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(null.contains("holds NULL"), "{null}");
        Ok(())
    }
}
