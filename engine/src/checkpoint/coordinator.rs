//! Collects the parts of each checkpoint from the steps of a query and
//! completes it once every step still running has stored its part.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::metadata::{CheckpointMetadata, Owner, PartRef};
use super::restore::RestoredState;
use super::store::{CheckpointStore, StoreError};

/// How a query is checkpointed: where, under which name, of which plan, and
/// the checkpoint it resumes from.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub store: CheckpointStore,
    /// The query's name (`pipeline.name`).
    pub pipeline: String,
    /// A hash of the plan.
    pub fingerprint: String,
    /// The plan as EXPLAIN shows it.
    pub plan: Vec<String>,
    /// The checkpoint the query resumes from.
    pub restored: Option<Arc<RestoredState>>,
    /// A checkpoint not complete this long after its barrier went out is
    /// given up (the next one is taken as usual).
    pub timeout: std::time::Duration,
    /// The highest checkpoint id the store already holds: new checkpoints are
    /// numbered after it (and after the restored one), so a query resumed
    /// from an older checkpoint never reuses the id of a newer one.
    pub last_id: u64,
}

/// How long a checkpoint may take by default (Flink's 10 minutes).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// One completed checkpoint, as metrics and REST show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointReport {
    pub id: u64,
    /// From the barrier's injection to the metadata's write.
    pub duration_ms: u64,
    pub bytes: u64,
    /// Time steps spent aligning barriers for it, summed.
    pub alignment_ms: u64,
    pub completed_ms: i64,
    /// It was taken at a stop, or at the end of the input.
    pub kind: String,
}

/// The checkpoints of a running query so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointStats {
    pub completed: u64,
    pub failed: u64,
    /// The checkpoint the query resumed from.
    pub restored_from: Option<u64>,
    /// The newest completed checkpoints, oldest first (at most ten).
    pub recent: Vec<CheckpointReport>,
}

impl CheckpointStats {
    pub fn last(&self) -> Option<&CheckpointReport> {
        self.recent.last()
    }
}

/// What a step tells the collector.
#[derive(Debug)]
pub(crate) enum Ack {
    /// A step stored its part of a checkpoint (no files when it has no state).
    Part { checkpoint: u64, owner: Owner, lane: usize, parts: Vec<PartRef>, alignment_nanos: u64 },
    /// A step ended: it takes part in no later checkpoint.
    Finished { owner: Owner, lane: usize },
    /// A step could not store its part of a checkpoint.
    Failed { checkpoint: u64, error: StoreError },
}

struct Pending {
    started: Instant,
    acked: BTreeSet<(Owner, usize)>,
    parts: Vec<PartRef>,
    alignment_nanos: u64,
    kind: &'static str,
}

/// Tracks which steps have stored their part of each checkpoint in flight.
pub(crate) struct Collector {
    config: Option<CheckpointConfig>,
    parallelism: usize,
    running: BTreeSet<(Owner, usize)>,
    /// The pipeline's sinks.
    sinks: usize,
    /// The sinks that reached the end of their input, with their part of
    /// the final checkpoint: it stands for their part of every later
    /// checkpoint (their flow has ended, so they see no more barriers), and
    /// a sink commits its final output once such a checkpoint completes.
    sinks_at_end: BTreeMap<usize, Vec<PartRef>>,
    pending: BTreeMap<u64, Pending>,
    /// The newest checkpoint completed: parts of it or older ones that come
    /// late are ignored.
    completed: u64,
    /// Checkpoints given up: their parts are ignored.
    aborted: BTreeSet<u64>,
}

impl Collector {
    /// Without a config only the sink takes part (its part says its output is
    /// durable), and nothing is stored.
    pub fn new(config: Option<CheckpointConfig>, participants: impl IntoIterator<Item = (Owner, usize)>, sinks: usize, parallelism: usize) -> Self {
        let completed = config.as_ref().and_then(|c| c.restored.as_ref()).map_or(0, |r| r.checkpoint);
        Collector {
            config,
            parallelism,
            running: participants.into_iter().collect(),
            sinks,
            sinks_at_end: BTreeMap::new(),
            pending: BTreeMap::new(),
            completed,
            aborted: BTreeSet::new(),
        }
    }

    pub fn config(&self) -> Option<&CheckpointConfig> {
        self.config.as_ref()
    }

    /// Checkpoint `id` starts (its barrier goes out, or the input ended).
    pub fn begin(&mut self, id: u64, kind: &'static str) {
        if id <= self.completed || self.aborted.contains(&id) {
            return;
        }
        self.pending.entry(id).or_insert_with(|| Pending {
            started: Instant::now(),
            acked: BTreeSet::new(),
            parts: Vec::new(),
            alignment_nanos: 0,
            kind,
        });
    }

    /// Gives checkpoint `id` up if it has taken longer than the timeout;
    /// returns whether it did. Its files stay until retention deletes them.
    pub fn abort_if_late(&mut self, id: u64) -> bool {
        let timeout = self.config.as_ref().map_or(DEFAULT_TIMEOUT, |c| c.timeout);
        let late = self.pending.get(&id).is_some_and(|p| p.started.elapsed() > timeout);
        if late {
            self.pending.remove(&id);
            self.aborted.insert(id);
        }
        late
    }

    /// Records an ack; returns the checkpoints it completed (stored first).
    pub async fn ack(&mut self, ack: Ack) -> Result<Vec<CheckpointReport>, StoreError> {
        match ack {
            Ack::Part { checkpoint, owner, lane, parts, alignment_nanos } => {
                let kind = if checkpoint == crate::runtime::FINAL_CHECKPOINT { "final" } else { "periodic" };
                self.begin(checkpoint, kind);
                if let (Owner::Sink(n), crate::runtime::FINAL_CHECKPOINT) = (owner, checkpoint) {
                    self.sinks_at_end.insert(n, parts.clone());
                }
                if let Some(p) = self.pending.get_mut(&checkpoint) {
                    p.acked.insert((owner, lane));
                    p.parts.extend(parts);
                    p.alignment_nanos += alignment_nanos;
                }
            }
            Ack::Finished { owner, lane } => {
                self.running.remove(&(owner, lane));
            }
            Ack::Failed { checkpoint, error } => {
                self.pending.remove(&checkpoint);
                self.aborted.insert(checkpoint);
                return Err(error);
            }
        }
        let done: Vec<u64> = self
            .pending
            .iter()
            // Each sink's part is needed: a checkpoint a sink never reached
            // (it stopped first) does not complete, unless the sink reached
            // the end of its input (its final part stands in).
            .filter(|(_, p)| {
                let acked = |step: &(Owner, usize)| match step {
                    (Owner::Sink(n), _) => p.acked.contains(step) || self.sinks_at_end.contains_key(n),
                    _ => p.acked.contains(step),
                };
                (0..self.sinks).all(|n| acked(&(Owner::Sink(n), 0))) && self.running.iter().all(acked)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut reports = Vec::new();
        for id in done {
            let Some(mut p) = self.pending.remove(&id) else { continue };
            self.completed = self.completed.max(id);
            for (n, parts) in &self.sinks_at_end {
                if !p.acked.contains(&(Owner::Sink(*n), 0)) {
                    if let Some(config) = &self.config {
                        for part in parts {
                            p.parts.push(config.store.copy_part(crate::runtime::FINAL_CHECKPOINT, id, part).await?);
                        }
                    }
                }
            }
            // A checkpoint subsumes the older ones still pending.
            self.pending.retain(|older, _| *older > id);
            let completed_ms = chrono::Utc::now().timestamp_millis();
            let mut bytes = 0;
            if let Some(config) = &self.config {
                let meta = CheckpointMetadata {
                    id,
                    pipeline: config.pipeline.clone(),
                    fingerprint: config.fingerprint.clone(),
                    plan: config.plan.clone(),
                    parallelism: self.parallelism,
                    completed_ms,
                    finished: id == crate::runtime::FINAL_CHECKPOINT,
                    parts: p.parts,
                };
                bytes = meta.bytes();
                config.store.complete(&meta).await?;
            }
            reports.push(CheckpointReport {
                id,
                duration_ms: p.started.elapsed().as_millis() as u64,
                bytes,
                alignment_ms: p.alignment_nanos / 1_000_000,
                completed_ms,
                kind: p.kind.to_string(),
            });
        }
        Ok(reports)
    }
}
