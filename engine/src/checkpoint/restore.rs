//! A checkpoint read back, handed out to the steps of the query resuming from it.
//!
//! Keyed state goes to the lane that now owns each row's key group, so a query
//! may resume at another parallelism; state of a lane as a whole (a source's
//! positions, a watermark) goes to the same lane when the parallelism is
//! unchanged, and to every lane otherwise (each takes what concerns it).

use std::collections::HashMap;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::{filter, filter_record_batch};

use super::metadata::{CheckpointMetadata, Owner};
use super::store::{CheckpointStore, StoreError};
use super::StatePart;
use crate::key_group::lane_of;

/// The state of a checkpoint, by step.
#[derive(Debug, Default)]
pub struct RestoredState {
    /// The checkpoint's id; the resumed query numbers its checkpoints after it.
    pub checkpoint: u64,
    /// Lanes the checkpoint was taken with.
    pub parallelism: usize,
    /// Per step, per old lane, its tables.
    parts: HashMap<Owner, Vec<(usize, usize, StatePart)>>,
}

impl RestoredState {
    /// Reads every part of checkpoint `meta` from `store`.
    pub async fn load(store: &CheckpointStore, meta: &CheckpointMetadata) -> Result<Self, StoreError> {
        let mut parts: HashMap<Owner, Vec<(usize, usize, StatePart)>> = HashMap::new();
        for part in &meta.parts {
            if let Some(state) = store.read_part(meta.id, part).await? {
                parts.entry(part.owner).or_default().push((part.lane, part.table, state));
            }
        }
        Ok(RestoredState { checkpoint: meta.id, parallelism: meta.parallelism, parts })
    }

    /// The state step `owner` gets in `lane` of `lanes`: keyed rows of the key
    /// groups the lane owns, and lane state as described in the module docs.
    /// Each part keeps its table number.
    pub fn for_lane(&self, owner: Owner, lane: usize, lanes: usize) -> crate::Result<Vec<(usize, StatePart)>> {
        let mut out = Vec::new();
        for (old_lane, table, part) in self.parts.get(&owner).into_iter().flatten() {
            match &part.key_groups {
                None => {
                    if lanes != self.parallelism || *old_lane == lane {
                        out.push((*table, part.clone()));
                    }
                }
                Some(groups) => {
                    let mine: BooleanArray = groups.iter().map(|g| Some(g.is_some_and(|g| lane_of(g, lanes) == lane))).collect();
                    if mine.true_count() == 0 {
                        continue;
                    }
                    let batch = filter_record_batch(&part.batch, &mine)?;
                    let groups = filter(groups, &mine)?;
                    let groups = groups
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::UInt32Array>()
                        .cloned()
                        .ok_or_else(|| crate::EngineError::Internal("key groups changed type".into()))?;
                    out.push((*table, StatePart::keyed(batch, groups)));
                }
            }
        }
        Ok(out)
    }
}
