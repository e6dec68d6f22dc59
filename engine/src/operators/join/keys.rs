//! A join's equi-keys: evaluated on either input and encoded as rows that
//! compare equal exactly when the keys do (a NULL key matches nothing).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{EngineError, Result};

/// The key expressions of both inputs and one encoder for both.
pub struct JoinKeys {
    exprs: [Vec<Arc<dyn PhysicalExpr>>; 2],
    converter: RowConverter,
}

/// One batch's keys.
pub struct EvaluatedKeys {
    pub columns: Vec<ArrayRef>,
    pub rows: Rows,
    /// Per row: whether its key has no NULL (only such rows can match).
    pub keyed: Vec<bool>,
}

impl JoinKeys {
    /// Fails if the two inputs' keys differ in type (they would never match).
    pub fn try_new(exprs: [Vec<Arc<dyn PhysicalExpr>>; 2], schemas: &[SchemaRef; 2]) -> Result<Self> {
        let types = |side: usize| -> Result<Vec<DataType>> {
            exprs[side].iter().map(|k| Ok(k.data_type(&schemas[side])?)).collect()
        };
        let (left, right) = (types(0)?, types(1)?);
        if left != right {
            return Err(EngineError::Plan(format!(
                "join keys have different types on the two sides: {left:?} and {right:?}; cast one side"
            )));
        }
        let converter = RowConverter::new(left.into_iter().map(SortField::new).collect())?;
        Ok(JoinKeys { exprs, converter })
    }

    /// The keys of a batch of input `side`.
    pub fn evaluate(&self, side: usize, batch: &RecordBatch) -> Result<EvaluatedKeys> {
        let columns = self.exprs[side]
            .iter()
            .map(|k| Ok(k.evaluate(batch)?.into_array(batch.num_rows())?))
            .collect::<Result<Vec<_>>>()?;
        self.encode(columns, batch.num_rows())
    }

    /// How many key columns there are.
    pub fn width(&self) -> usize {
        self.exprs[0].len()
    }

    /// The key columns of encoded keys (as kept in an index), e.g. to store
    /// keys whose rows are gone.
    pub fn decode<'a>(&self, encoded: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let rows: Vec<&[u8]> = encoded.into_iter().collect();
        Ok(self.converter.convert_rows(rows.iter().map(|r| parser.parse(r)))?)
    }

    /// Keys already evaluated for `num_rows` rows (e.g. a subset of a batch's).
    pub fn encode(&self, columns: Vec<ArrayRef>, num_rows: usize) -> Result<EvaluatedKeys> {
        let rows = self.converter.convert_columns(&columns)?;
        let keyed = (0..num_rows).map(|i| columns.iter().all(|k| k.is_valid(i))).collect();
        Ok(EvaluatedKeys { columns, rows, keyed })
    }
}
