//! What a checkpoint holds, written last (so a checkpoint without it never
//! completed): which step's state is in which file, and the plan it was taken
//! of.

use serde::{Deserialize, Serialize};

/// The step a part of a checkpoint belongs to. Steps are numbered in the order
/// the plan lists them, so the same plan gives the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "StoredOwner")]
pub enum Owner {
    /// The `n`th source of the plan (all of its lanes).
    Source(usize),
    /// The `n`th operator of the plan (all of its lanes).
    Operator(usize),
    /// The `n`th sink of the plan (a statement set has several; a query one).
    Sink(usize),
}

/// An [`Owner`] as checkpoints store it, including those taken before a
/// pipeline could have several sinks (the sink was `"sink"`, now sink 0).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredOwner {
    Current(CurrentOwner),
    OnlySink(OnlySink),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum CurrentOwner {
    Source(usize),
    Operator(usize),
    Sink(usize),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnlySink {
    Sink,
}

impl From<StoredOwner> for Owner {
    fn from(stored: StoredOwner) -> Self {
        match stored {
            StoredOwner::Current(CurrentOwner::Source(n)) => Owner::Source(n),
            StoredOwner::Current(CurrentOwner::Operator(n)) => Owner::Operator(n),
            StoredOwner::Current(CurrentOwner::Sink(n)) => Owner::Sink(n),
            StoredOwner::OnlySink(OnlySink::Sink) => Owner::Sink(0),
        }
    }
}

/// One file of a checkpoint: one table of one step's state in one lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub owner: Owner,
    pub lane: usize,
    /// Which of the step's tables (an operator may keep several).
    pub table: usize,
    /// The file, relative to the checkpoint's directory.
    pub file: String,
    pub rows: usize,
    pub bytes: u64,
    /// Whether rows carry their key group.
    pub keyed: bool,
}

/// The description of a completed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub id: u64,
    /// The query's name (`pipeline.name`).
    pub pipeline: String,
    /// A hash of the plan; a restore into a plan with another fingerprint is refused.
    pub fingerprint: String,
    /// The plan as EXPLAIN shows it, to say what changed when a restore is refused.
    pub plan: Vec<String>,
    /// Lanes the query ran in.
    pub parallelism: usize,
    /// When it completed, milliseconds since the Unix epoch.
    pub completed_ms: i64,
    /// The query had reached the end of its input: a new run starts over.
    pub finished: bool,
    pub parts: Vec<PartRef>,
}

impl CheckpointMetadata {
    /// Bytes of state the checkpoint holds.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_read_back_as_written_and_an_older_checkpoints_sink_is_sink_0() -> serde_json::Result<()> {
        for owner in [Owner::Source(2), Owner::Operator(5), Owner::Sink(0), Owner::Sink(3)] {
            assert_eq!(serde_json::from_str::<Owner>(&serde_json::to_string(&owner)?)?, owner);
        }
        assert_eq!(serde_json::from_str::<Owner>("\"sink\"")?, Owner::Sink(0));
        Ok(())
    }
}
