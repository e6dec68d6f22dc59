//! Updating results: rows that insert, retract or replace rows sent before.
//!
//! A plain GROUP BY or an outer join without time bounds cannot wait for its
//! results to be final, so it sends changes: `+I` (insert), `-U` / `+U` (the old
//! and new version of an updated row) and `-D` (delete), as Flink does. A
//! changelog batch carries the change kind in one extra column, [`OP_COLUMN`],
//! the last one while it flows between operators; sinks get it first, so a
//! reader of a file or lake sees `op` then the row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{EngineError, Result};

/// The name of the change-kind column.
pub const OP_COLUMN: &str = "op";

/// What one changelog row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Insert,
    UpdateBefore,
    UpdateAfter,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "+I",
            ChangeKind::UpdateBefore => "-U",
            ChangeKind::UpdateAfter => "+U",
            ChangeKind::Delete => "-D",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "+I" => ChangeKind::Insert,
            "-U" => ChangeKind::UpdateBefore,
            "+U" => ChangeKind::UpdateAfter,
            "-D" => ChangeKind::Delete,
            _ => return None,
        })
    }

    /// True for the kinds that take a row back (`-U`, `-D`).
    pub fn is_retraction(self) -> bool {
        matches!(self, ChangeKind::UpdateBefore | ChangeKind::Delete)
    }
}

/// Field metadata marking the change-kind column (a plain column may be named `op`).
pub const OP_MARKER: &str = "sluice.change_kind";

/// The change-kind column's field.
pub fn op_field() -> Field {
    Field::new(OP_COLUMN, DataType::Utf8, false)
        .with_metadata([(OP_MARKER.to_string(), "true".to_string())].into_iter().collect())
}

/// True if a sink's schema is a changelog's: the marked change-kind column first.
pub fn is_changelog_output(schema: &Schema) -> bool {
    schema.fields().first().is_some_and(|f| f.name() == OP_COLUMN && f.metadata().contains_key(OP_MARKER))
}

/// `schema` with the change-kind column appended.
pub fn with_op_field(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(op_field());
    Arc::new(Schema::new(fields))
}

/// True if the schema's last column is the change-kind column.
pub fn is_changelog(schema: &Schema) -> bool {
    schema.fields().last().is_some_and(|f| f.name() == OP_COLUMN && f.data_type() == &DataType::Utf8)
}

/// The change-kind column for `kinds`.
pub fn op_array(kinds: &[ChangeKind]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(kinds.iter().map(|k| k.as_str())))
}

/// Appends the change-kind column to `rows` (whose schema is `schema` minus it).
pub fn attach_ops(schema: &SchemaRef, rows: &RecordBatch, kinds: &[ChangeKind]) -> Result<RecordBatch> {
    let mut columns = rows.columns().to_vec();
    columns.push(op_array(kinds));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// Splits a changelog batch into its rows (without the change-kind column) and
/// their kinds.
pub fn detach_ops(batch: &RecordBatch) -> Result<(RecordBatch, Vec<ChangeKind>)> {
    let last = batch.num_columns().checked_sub(1).ok_or_else(|| internal("a changelog batch has no columns"))?;
    let ops = batch
        .column(last)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| internal("the change-kind column is not a string column"))?;
    let kinds = (0..ops.len())
        .map(|i| match ops.is_valid(i) {
            true => ChangeKind::parse(ops.value(i)).ok_or_else(|| internal(&format!("unknown change kind {}", ops.value(i)))),
            false => Err(internal("a change kind is NULL")),
        })
        .collect::<Result<Vec<_>>>()?;
    let rows = batch.project(&(0..last).collect::<Vec<_>>())?;
    Ok((rows, kinds))
}

/// Moves the change-kind column from last to first, as sinks present it.
pub fn op_first(batch: &RecordBatch) -> Result<RecordBatch> {
    let n = batch.num_columns();
    if n == 0 {
        return Ok(batch.clone());
    }
    let columns: Vec<ArrayRef> = std::iter::once(n - 1).chain(0..n - 1).map(|i| Arc::clone(batch.column(i))).collect();
    Ok(RecordBatch::try_new(op_first_schema(&batch.schema()), columns)?)
}

/// The schema [`op_first`] produces.
pub fn op_first_schema(schema: &Schema) -> SchemaRef {
    let n = schema.fields().len();
    let rest = schema.fields().iter().take(n.saturating_sub(1)).map(|f| f.as_ref().clone());
    Arc::new(Schema::new(std::iter::once(op_field()).chain(rest).collect::<Vec<_>>()))
}

/// The last step of an updating query: puts the change kind first, the way
/// sinks and clients present it.
pub struct OpFirst;

#[async_trait::async_trait]
impl crate::operator::Operator for OpFirst {
    fn name(&self) -> &'static str {
        "changelog"
    }

    fn describe(&self) -> String {
        "changelog: op column (+I/-U/+U/-D) first".into()
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut crate::operator::Emitter) -> Result<()> {
        out.emit(op_first(&batch)?);
        Ok(())
    }
}

fn internal(msg: &str) -> EngineError {
    EngineError::Internal(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn attaches_detaches_and_moves_the_op_column() {
        let schema = Schema::new(vec![Field::new("n", DataType::Int64, false)]);
        let rows = RecordBatch::try_new(Arc::new(schema.clone()), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let full = with_op_field(&schema);
        assert!(is_changelog(&full));
        let batch = attach_ops(&full, &rows, &[ChangeKind::UpdateBefore, ChangeKind::UpdateAfter]).unwrap();
        let (back, kinds) = detach_ops(&batch).unwrap();
        assert_eq!(back, rows);
        assert_eq!(kinds, vec![ChangeKind::UpdateBefore, ChangeKind::UpdateAfter]);
        let first = op_first(&batch).unwrap();
        assert_eq!(first.schema(), op_first_schema(&full));
        assert_eq!(first.schema().field(0).name(), OP_COLUMN);
        assert!(is_changelog_output(&first.schema()));
    }
}
