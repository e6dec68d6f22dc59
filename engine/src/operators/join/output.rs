//! Assembles a join's output rows from arriving rows, stored rows and NULLs,
//! and applies the part of the ON condition that is not an equality of keys.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatchOptions};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::JoinSide;
use datafusion::physical_plan::joins::utils::JoinFilter;

use super::side::{BatchId, RowRef};
use super::JoinSpec;
use crate::changelog::{op_array, with_op_field, ChangeKind};
use crate::error::{EngineError, Result};

/// Where one side of an output row comes from.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// A row of the batch being joined now.
    Probe(u32),
    /// A row kept by this side.
    Stored(RowRef),
    /// NULLs (the row of an outer join that found no partner).
    Null,
}

/// Where stored rows' columns are read from.
pub trait StoredColumns {
    fn columns(&self, id: BatchId) -> Option<&[ArrayRef]>;
}

pub struct OutputBuilder {
    /// A one-row all-NULL column set per side.
    nulls: [Vec<ArrayRef>; 2],
    filter: Option<JoinFilter>,
    projection: Option<Vec<usize>>,
    rows_schema: SchemaRef,
    /// With the change-kind column, if the join emits a changelog.
    changelog_schema: Option<SchemaRef>,
}

impl OutputBuilder {
    pub fn new(spec: &JoinSpec, changelog: bool) -> Self {
        let nulls = |s: &SchemaRef| s.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
        OutputBuilder {
            nulls: [nulls(&spec.schemas[0]), nulls(&spec.schemas[1])],
            filter: spec.filter.clone(),
            projection: spec.projection.clone(),
            rows_schema: Arc::clone(&spec.output_schema),
            changelog_schema: changelog.then(|| with_op_field(&spec.output_schema)),
        }
    }

    /// The schema of what [`OutputBuilder::build`] returns.
    pub fn schema(&self) -> SchemaRef {
        self.changelog_schema.clone().unwrap_or_else(|| Arc::clone(&self.rows_schema))
    }

    pub fn is_changelog(&self) -> bool {
        self.changelog_schema.is_some()
    }

    /// The columns of `side` for each pick.
    pub fn gather(
        &self,
        side: usize,
        picks: &[Pick],
        probe: Option<&[ArrayRef]>,
        stored: &dyn StoredColumns,
    ) -> Result<Vec<ArrayRef>> {
        let nulls = &self.nulls[side];
        let mut sources: Vec<&[ArrayRef]> = vec![nulls.as_slice()];
        let probe_source = probe.map(|p| {
            sources.push(p);
            sources.len() - 1
        });
        let mut stored_sources: HashMap<u64, usize> = HashMap::new();
        let mut indices = Vec::with_capacity(picks.len());
        for pick in picks {
            indices.push(match *pick {
                Pick::Null => (0, 0),
                Pick::Probe(row) => {
                    let source = probe_source.ok_or_else(|| internal("a probe row without a probe batch"))?;
                    (source, row as usize)
                }
                Pick::Stored((id, row)) => {
                    let source = match stored_sources.get(&id) {
                        Some(s) => *s,
                        None => {
                            let columns = stored.columns(id).ok_or_else(|| internal("a stored row was freed"))?;
                            sources.push(columns);
                            stored_sources.insert(id, sources.len() - 1);
                            sources.len() - 1
                        }
                    };
                    (source, row as usize)
                }
            });
        }
        (0..nulls.len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = sources.iter().map(|s| s[c].as_ref()).collect();
                Ok(interleave(&arrays, &indices)?)
            })
            .collect()
    }

    /// Which pairs pass the non-key part of the ON condition (`None`: all).
    pub fn filter_mask(&self, left: &[ArrayRef], right: &[ArrayRef], rows: usize) -> Result<Option<BooleanArray>> {
        let Some(filter) = &self.filter else { return Ok(None) };
        let columns = filter
            .column_indices()
            .iter()
            .map(|ci| match ci.side {
                JoinSide::Left => left.get(ci.index).cloned(),
                JoinSide::Right => right.get(ci.index).cloned(),
                JoinSide::None => None,
            }
            .ok_or_else(|| internal("a join filter column is missing")))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(filter.schema()),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let result = filter.expression().evaluate(&batch)?.into_array(rows)?;
        let mask = result
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| internal("a join filter did not yield booleans"))?;
        Ok(Some(mask))
    }

    /// One output batch from the two sides' columns.
    pub fn build(&self, left: Vec<ArrayRef>, right: Vec<ArrayRef>, rows: usize, kind: ChangeKind) -> Result<RecordBatch> {
        let all: Vec<ArrayRef> = left.into_iter().chain(right).collect();
        let mut columns = match &self.projection {
            Some(p) => p.iter().map(|i| all.get(*i).cloned().ok_or_else(|| internal("join projection out of range"))).collect::<Result<Vec<_>>>()?,
            None => all,
        };
        let schema = match &self.changelog_schema {
            Some(s) => {
                columns.push(op_array(&vec![kind; rows]));
                Arc::clone(s)
            }
            None => Arc::clone(&self.rows_schema),
        };
        Ok(RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
    }
}

/// True at `i` if the mask keeps row `i` (NULL counts as false).
pub fn passes(mask: Option<&BooleanArray>, i: usize) -> bool {
    mask.is_none_or(|m| m.is_valid(i) && m.value(i))
}

fn internal(msg: &str) -> EngineError {
    EngineError::Internal(msg.to_string())
}
