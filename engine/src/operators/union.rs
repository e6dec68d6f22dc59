//! `UNION ALL` of streams: the rows of several inputs, passed on as one stream.
//!
//! Each lane of a union reads the same lane of every input (no exchange: the
//! union keeps no state, so it does not matter which lane a row is in; the next
//! stateful step repartitions by its own key). The runtime merges the inputs'
//! watermarks (the minimum of those still active: an idle input does not hold
//! time back, nor one that ended) and aligns their checkpoint barriers, as for
//! a join; the union forwards the merged watermark as it is. A row that is
//! late for the merged watermark is judged so by the step that cares (a window
//! aggregate above counts and drops it), not here: a row behind its own
//! input's watermark may well be on time for the union's.
//!
//! DataFusion has coerced the inputs to one type per column already; the
//! union still rebuilds each batch with its own schema (the first input's
//! names, nullable where any input is), casting a column whose type differs.
//! When any input is a changelog (an `op` column last), the union's rows are
//! one too: an append-only input's rows become inserts (`+I`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::changelog::{is_changelog, ChangeKind};
use crate::error::{EngineError, Result};
use crate::operator::{Emitter, Operator};

/// Passes on the batches of several inputs (`on_batch_from`'s input index) in
/// the union's schema. Stateless; the merged watermark passes straight through.
pub struct UnionAll {
    schema: SchemaRef,
    /// Per input, whether its rows need a `+I` change kind appended.
    add_insert: Vec<bool>,
}

impl UnionAll {
    /// A union of inputs with these schemas into rows of `schema` (with the
    /// change-kind column last if any input is a changelog).
    pub fn try_new(schema: SchemaRef, inputs: &[SchemaRef]) -> Result<Self> {
        if inputs.len() < 2 {
            return Err(EngineError::Internal(format!("a union of {} inputs", inputs.len())));
        }
        let changelog = is_changelog(&schema);
        let mut add_insert = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let missing_op = changelog && !is_changelog(input);
            let width = input.fields().len() + usize::from(missing_op);
            if width != schema.fields().len() {
                return Err(EngineError::Plan(format!(
                    "UNION ALL: input {} has {} columns, the union {}",
                    i + 1,
                    input.fields().len(),
                    schema.fields().len() - usize::from(changelog)
                )));
            }
            for (from, to) in input.fields().iter().zip(schema.fields()) {
                if from.data_type() != to.data_type() && !can_cast_types(from.data_type(), to.data_type()) {
                    return Err(EngineError::Plan(format!(
                        "UNION ALL: column '{}' of input {} is {} but the union's '{}' is {}",
                        from.name(),
                        i + 1,
                        from.data_type(),
                        to.name(),
                        to.data_type()
                    )));
                }
            }
            add_insert.push(missing_op);
        }
        Ok(UnionAll { schema, add_insert })
    }

    /// The schema of the rows it emits.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// `batch` of input `input` in the union's schema.
    fn conform(&self, input: usize, batch: &RecordBatch) -> Result<RecordBatch> {
        let add_insert = *self
            .add_insert
            .get(input)
            .ok_or_else(|| EngineError::Internal(format!("a batch from input {input} of a union of {}", self.add_insert.len())))?;
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            let column: ArrayRef = match column.data_type() == field.data_type() {
                true => Arc::clone(column),
                false => cast(column, field.data_type())?,
            };
            columns.push(column);
        }
        if add_insert {
            let insert = ChangeKind::Insert.as_str();
            columns.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(insert, batch.num_rows()))));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

#[async_trait]
impl Operator for UnionAll {
    fn name(&self) -> &'static str {
        "union all"
    }

    fn describe(&self) -> String {
        format!(
            "union all of {} inputs; watermark: the least of the active inputs' (idle and ended inputs do not hold it back); state: none",
            self.add_insert.len()
        )
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.on_batch_from(0, batch, out).await
    }

    async fn on_batch_from(&mut self, input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        out.emit(self.conform(input, &batch)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::{with_op_field, OP_COLUMN};
    use crate::message::Message;
    use datafusion::arrow::array::{AsArray, Int32Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
        Arc::new(Schema::new(fields.iter().map(|(n, t, null)| Field::new(*n, t.clone(), *null)).collect::<Vec<_>>()))
    }

    fn batches(out: &mut Emitter) -> Vec<RecordBatch> {
        out.drain()
            .into_iter()
            .filter_map(|m| match m {
                Message::Batch(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn rows_of_each_input_come_out_in_the_unions_schema() -> Result<()> {
        let union = schema(&[("n", DataType::Int64, true)]);
        let left = schema(&[("n", DataType::Int64, false)]);
        let right = schema(&[("m", DataType::Int32, true)]);
        let mut op = UnionAll::try_new(Arc::clone(&union), &[Arc::clone(&left), Arc::clone(&right)])?;
        let mut out = Emitter::default();
        op.on_batch_from(0, RecordBatch::try_new(left, vec![Arc::new(Int64Array::from(vec![1, 2]))])?, &mut out).await?;
        op.on_batch_from(1, RecordBatch::try_new(right, vec![Arc::new(Int32Array::from(vec![Some(3), None]))])?, &mut out)
            .await?;
        let got = batches(&mut out);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|b| b.schema() == union));
        let values: Vec<Option<i64>> = got.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().iter()).collect();
        assert_eq!(values, vec![Some(1), Some(2), Some(3), None]);
        Ok(())
    }

    #[tokio::test]
    async fn an_append_only_input_of_a_changelog_union_sends_inserts() -> Result<()> {
        let rows = Schema::new(vec![Field::new("n", DataType::Int64, true)]);
        let union = with_op_field(&rows);
        let mut op = UnionAll::try_new(Arc::clone(&union), &[Arc::new(rows.clone()), Arc::clone(&union)])?;
        let mut out = Emitter::default();
        let plain = RecordBatch::try_new(Arc::new(rows), vec![Arc::new(Int64Array::from(vec![7]))])?;
        op.on_batch_from(0, plain, &mut out).await?;
        let changes = RecordBatch::try_new(
            Arc::clone(&union),
            vec![Arc::new(Int64Array::from(vec![8])), Arc::new(StringArray::from(vec!["-D"]))],
        )?;
        op.on_batch_from(1, changes, &mut out).await?;
        let got = batches(&mut out);
        let ops: Vec<&str> = got.iter().map(|b| b.column_by_name(OP_COLUMN).map_or("", |c| c.as_string::<i32>().value(0))).collect();
        assert_eq!(ops, vec!["+I", "-D"]);
        Ok(())
    }

    #[test]
    fn inputs_of_other_widths_are_refused() {
        let union = schema(&[("a", DataType::Int64, true), ("b", DataType::Int64, true)]);
        let narrow = schema(&[("a", DataType::Int64, true)]);
        let e = UnionAll::try_new(Arc::clone(&union), &[Arc::clone(&union), narrow]).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("UNION ALL: input 2 has 1 columns, the union 2"));
    }
}
