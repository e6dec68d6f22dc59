//! What the window aggregates share: the description of a windowed GROUP BY and
//! the evaluation of its keys and aggregate inputs on a batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{filter, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{EngineError, Result};

/// A windowed GROUP BY as planned by DataFusion: group expressions (two of which
/// are the window bounds), aggregate functions with optional FILTER clauses, and
/// the output schema (group columns, then aggregates).
#[derive(Clone)]
pub struct AggregateSpec {
    pub group_exprs: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// Index in `group_exprs` of `window_start`.
    pub window_start: usize,
    /// Index in `group_exprs` of `window_end`.
    pub window_end: usize,
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    pub output_schema: SchemaRef,
    /// The schema the group expressions are evaluated on (needed by operators
    /// that encode keys before seeing a batch).
    pub input_schema: Option<SchemaRef>,
}

/// A batch with the group keys and aggregate inputs evaluated.
pub(crate) struct EvaluatedBatch {
    pub groups: Vec<ArrayRef>,
    pub agg_inputs: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
    pub num_rows: usize,
}

impl AggregateSpec {
    pub(crate) fn evaluate(&self, batch: &RecordBatch) -> Result<EvaluatedBatch> {
        let n = batch.num_rows();
        let groups = self
            .group_exprs
            .iter()
            .map(|(e, _)| Ok(e.evaluate(batch)?.into_array(n)?))
            .collect::<Result<Vec<_>>>()?;
        let agg_inputs = self
            .aggregates
            .iter()
            .map(|a| {
                a.expressions()
                    .iter()
                    .map(|e| Ok(e.evaluate(batch)?.into_array(n)?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let filters = self
            .filters
            .iter()
            .map(|f| match f {
                None => Ok(None),
                Some(f) => {
                    let arr = f.evaluate(batch)?.into_array(n)?;
                    arr.as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| EngineError::Plan("FILTER clause must be boolean".into()))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EvaluatedBatch { groups, agg_inputs, filters, num_rows: n })
    }

    /// Indices of the group expressions that are not window bounds.
    pub(crate) fn key_indices(&self) -> Vec<usize> {
        (0..self.group_exprs.len())
            .filter(|i| *i != self.window_start && *i != self.window_end)
            .collect()
    }

    pub(crate) fn new_groups_accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggregates
            .iter()
            .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
                if a.groups_accumulator_supported() {
                    Ok(a.create_groups_accumulator()?)
                } else {
                    let a = Arc::clone(a);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || a.create_accumulator())))
                }
            })
            .collect()
    }

    /// Names of the group expressions and aggregates, for EXPLAIN.
    pub fn describe(&self) -> String {
        let keys: Vec<&str> = self.group_exprs.iter().map(|(_, n)| n.as_str()).collect();
        let aggs: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        format!("group by [{}], aggregates [{}]", keys.join(", "), aggs.join(", "))
    }
}

impl EvaluatedBatch {
    /// The inputs of aggregate `agg` for the rows `rows` (all rows when `None`),
    /// and its FILTER mask for them.
    pub(crate) fn agg_rows(
        &self,
        agg: usize,
        rows: Option<&UInt32Array>,
    ) -> Result<(Vec<ArrayRef>, Option<BooleanArray>)> {
        let values = match rows {
            None => self.agg_inputs[agg].clone(),
            Some(idx) => self.agg_inputs[agg]
                .iter()
                .map(|c| Ok(take(c.as_ref(), idx, None)?))
                .collect::<Result<Vec<_>>>()?,
        };
        let mask = match (&self.filters[agg], rows) {
            (None, _) => None,
            (Some(f), None) => Some(f.clone()),
            (Some(f), Some(idx)) => {
                let taken = take(f, idx, None)?;
                taken.as_any().downcast_ref::<BooleanArray>().cloned()
            }
        };
        Ok((values, mask))
    }

    /// Like [`Self::agg_rows`], with the FILTER already applied (for plain accumulators).
    pub(crate) fn filtered_agg_rows(&self, agg: usize, rows: Option<&UInt32Array>) -> Result<Vec<ArrayRef>> {
        let (values, mask) = self.agg_rows(agg, rows)?;
        filtered(values, mask.as_ref())
    }
}

/// An aggregate's input columns with its FILTER mask applied, as a plain
/// `Accumulator` takes them (a `GroupsAccumulator` takes the mask itself).
pub(crate) fn filtered(values: Vec<ArrayRef>, mask: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
    match mask {
        None => Ok(values),
        Some(m) => values.iter().map(|v| Ok(filter(v.as_ref(), m)?)).collect(),
    }
}
