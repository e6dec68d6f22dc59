//! The contract of a source: where a pipeline's rows come from.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;

/// Work a source knows is waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceLag {
    /// Records available (or due) but not yet read.
    Records(u64),
    /// Bytes of input not yet read.
    Bytes(u64),
}

/// Which split of its lane a batch's rows come from, for a source that reads
/// several splits in one lane (a Kafka consumer assigned several partitions).
/// The watermark of such a lane is the minimum over its splits, so a split
/// read ahead of another does not make the other's rows late; a split without
/// rows for `idle_after` stops holding the others back, as in Flink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTag {
    /// The split the rows come from.
    pub split: String,
    /// Every split the lane reads.
    pub splits: Arc<[String]>,
    /// How long a split may go without rows before it no longer holds the
    /// lane's watermark back; `None`: judge no split idle on this batch (the
    /// source knows its splits were cut off, not quiet).
    pub idle_after: Option<Duration>,
}

/// What a source has for the runtime.
#[derive(Debug)]
pub enum SourceEvent {
    Batch(RecordBatch),
    /// Rows of one split of the lane.
    SplitBatch(SplitTag, RecordBatch),
    /// Nothing arrived for a while: event time must not wait for this source.
    Idle,
    /// A bounded input is exhausted.
    End,
}

/// A stream of record batches with a fixed schema.
///
/// The runtime calls [`Source::next_batch`] until it returns `None` (a bounded source
/// is exhausted); it then sends a final maximal watermark so every open window
/// closes. An unbounded source never returns `None`; it is stopped by a stop
/// barrier (or by cancelling its pipeline). Batches must match [`Source::schema`]
/// exactly.
///
/// `next_event` must be cancel-safe: when a stop or barrier arrives while it
/// waits, the runtime drops the call, and a dropped call must not have moved the
/// position that [`Source::on_barrier`] records past rows it did not return.
#[async_trait]
pub trait Source: Send {
    /// The schema of every batch this source produces.
    fn schema(&self) -> SchemaRef;
    /// A one-line description for EXPLAIN.
    fn describe(&self) -> String;
    /// What identifies the source in a plan's fingerprint (checkpoints restore
    /// only into the same plan): the description without what belongs to one
    /// lane or to where the source runs (its partitions, a broker's address).
    fn identity(&self) -> String {
        self.describe()
    }
    /// The next batch, or `None` at the end of a bounded input.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;
    /// The next event; sources that can tell when they are idle override this.
    async fn next_event(&mut self) -> Result<SourceEvent> {
        Ok(match self.next_batch().await? {
            Some(b) => SourceEvent::Batch(b),
            None => SourceEvent::End,
        })
    }
    /// How far behind this source is, in its own unit (see [`SourceLag`]); `None`
    /// when it cannot tell.
    fn lag(&self) -> Option<SourceLag> {
        None
    }
    /// Records this source could not decode and dropped or dead-lettered
    /// (`bad_data`), so far.
    fn bad_records(&self) -> u64 {
        0
    }
    /// Whether this source has positions to commit once output is durable (a
    /// Kafka consumer group): the runtime then sends barriers periodically even
    /// when the query did not ask for checkpoints.
    fn commits_positions(&self) -> bool {
        false
    }
    /// A barrier for checkpoint `checkpoint` goes out now, after every batch this
    /// source has returned: remember the position reached (the next record to
    /// read), to commit it when the checkpoint completes. Called between two
    /// calls of `next_event`, never during one.
    async fn on_barrier(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }
    /// Everything this source returned before barrier `checkpoint` is durable in
    /// the sink: commit the position remembered for it (and forget earlier ones).
    /// May come after the source ended.
    async fn on_checkpoint_complete(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }
    /// Whether, started afresh (not from a checkpoint), it reads its whole
    /// input from the beginning (a file, the generator, Kafka from the earliest
    /// offsets), not from where an earlier run left off (a consumer group's
    /// offsets). Only then does the end of a bounded query mean its sink has
    /// received the query's whole result.
    fn reads_whole_input(&self) -> bool {
        false
    }
    /// Whether it can resume from a position ([`Source::position`],
    /// [`Source::restore`]). A query with checkpoints on refuses to start with
    /// a source that cannot.
    fn resumable(&self) -> bool {
        false
    }
    /// The position remembered by the last [`Source::on_barrier`], as rows
    /// (e.g. a Kafka partition and the next offset to read), for a checkpoint.
    fn position(&self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
    /// Before the first read: the positions a checkpoint holds for this source
    /// (its own lane's; every lane's when the parallelism changed, of which it
    /// takes the splits it reads). Reading resumes there.
    async fn restore(&mut self, _positions: Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }
}
