//! Hash-partitions rows across lanes by a key, so each lane of a stateful
//! operator owns a disjoint set of keys: the key's group (see
//! [`crate::key_group`]) decides its lane.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::PhysicalExpr;

use crate::error::Result;
use crate::key_group::{key_group, lane_of, KeyHasher};

/// Splits batches by the hash of `keys`, evaluated on each batch.
pub struct KeyPartitioner {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    lanes: usize,
}

impl KeyPartitioner {
    /// With no keys every row goes to lane 0 (a global aggregate has one owner).
    pub fn new(keys: Vec<Arc<dyn PhysicalExpr>>, lanes: usize) -> Self {
        KeyPartitioner { keys, lanes: lanes.clamp(1, crate::key_group::KEY_GROUPS as usize) }
    }

    pub fn keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.keys
    }

    /// The rows of `batch` for each lane that gets any.
    pub fn partition(&self, batch: &RecordBatch) -> Result<Vec<(usize, RecordBatch)>> {
        if self.lanes == 1 || self.keys.is_empty() {
            return Ok(vec![(0, batch.clone())]);
        }
        let n = batch.num_rows();
        let columns = self
            .keys
            .iter()
            .map(|k| Ok(k.evaluate(batch)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let hashes = KeyHasher::hash_rows(&columns, n)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.lanes];
        for (i, h) in hashes.iter().enumerate() {
            rows[lane_of(key_group(*h), self.lanes)].push(i as u32);
        }
        let mut out = Vec::new();
        for (lane, idx) in rows.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            if idx.len() == n {
                return Ok(vec![(lane, batch.clone())]);
            }
            out.push((lane, take_record_batch(batch, &UInt32Array::from(idx))?));
        }
        Ok(out)
    }
}
