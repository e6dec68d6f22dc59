//! Checkpoints: consistent snapshots of a running query, so that it can resume
//! after a stop or a crash with nothing lost and nothing doubled.
//!
//! A checkpoint is cut by a barrier (see [`crate::message::Barrier`]). Every
//! step snapshots its state when the barrier has arrived on all its inputs
//! (barriers are aligned: an input that delivered one waits for the others), so
//! the snapshots of all steps describe the same point of the input: the
//! sources' positions when they sent the barrier. Sinks stage what they wrote
//! before the barrier; once every part of the checkpoint is stored and its
//! metadata written last, the checkpoint is complete and the sinks commit
//! (make visible) what they staged for it.
//!
//! State is stored as Arrow IPC, one file per step and lane. Keyed state carries
//! each row's key group (see [`crate::key_group`]), so a query restored at
//! another parallelism hands each lane the rows of the key groups it now owns.

mod coordinator;
mod crash;
mod metadata;
mod restore;
mod store;

pub use coordinator::{CheckpointConfig, CheckpointReport, CheckpointStats, DEFAULT_TIMEOUT};
pub use crash::{crash_point, CrashPoint};
pub(crate) use coordinator::{Ack, Collector};
pub use metadata::{CheckpointMetadata, Owner, PartRef};
pub use restore::RestoredState;
pub use store::{CheckpointStore, StoreError, DEFAULT_RETAINED};

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows of one step's state.
#[derive(Debug, Clone)]
pub struct StatePart {
    pub batch: RecordBatch,
    /// Per row, the key group it belongs to (`None`: state of the lane as a
    /// whole, which every lane of a restored query receives).
    pub key_groups: Option<UInt32Array>,
}

impl StatePart {
    /// Rows that belong to no key: every restored lane gets them.
    pub fn lane(batch: RecordBatch) -> Self {
        StatePart { batch, key_groups: None }
    }

    /// Rows with the key group of each.
    pub fn keyed(batch: RecordBatch, key_groups: UInt32Array) -> Self {
        StatePart { batch, key_groups: Some(key_groups) }
    }
}
