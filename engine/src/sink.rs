//! The contract of a sink: where a pipeline's results go.

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::message::{Barrier, Watermark};

/// Receives a pipeline's output in arrival order.
///
/// `write_batch` is called for every result batch, `on_watermark` whenever event
/// time advances, `on_barrier` when a barrier has arrived from every lane, and
/// `finish` once at the end: of a bounded input, or after a stop barrier (not
/// when the pipeline is cancelled or fails). Errors stop the pipeline.
///
/// After `on_barrier` returns, every row written before it must be durable and
/// visible to readers (files completed and put, Kafka deliveries confirmed):
/// the sources then commit their positions, and a stop reports those rows as
/// written.
#[async_trait]
pub trait Sink: Send {
    /// A one-line description for EXPLAIN.
    fn describe(&self) -> String;
    /// What identifies the sink in a plan's fingerprint: the description
    /// without where it runs (a broker's address).
    fn identity(&self) -> String {
        self.describe()
    }
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()>;
    async fn on_watermark(&mut self, _watermark: Watermark) -> Result<()> {
        Ok(())
    }
    /// Makes everything written so far durable and visible (see the trait docs).
    async fn on_barrier(&mut self, _barrier: Barrier) -> Result<()> {
        Ok(())
    }
    /// Whether `on_barrier` makes the output durable at every barrier. A sink
    /// that can only do so at the end (one Parquet file, written whole) says
    /// no: its checkpoints then complete only once it has finished, so sources
    /// commit nothing before the query stops or ends.
    fn durable_at_barriers(&self) -> bool {
        true
    }
    async fn finish(&mut self) -> Result<()>;
    /// Before the first batch: whether every source reads its whole input
    /// from the beginning (see [`crate::Source::reads_whole_input`]), so that
    /// the end of the input means this run wrote the query's whole result (a
    /// sink may then remove what earlier runs of the query wrote).
    fn set_whole_input(&mut self, _whole: bool) {}
    /// Whether it can take part in checkpoints: stage what it writes until its
    /// checkpoint completes ([`Sink::begin_checkpoints`]). Sinks that cannot
    /// still get every row at least once after a restore.
    fn exactly_once(&self) -> bool {
        false
    }
    /// Checkpoints are on (called once, before the first batch): from now on,
    /// what `on_barrier` makes durable is staged, not visible, until
    /// [`Sink::commit`]. `restored` is the sink's state in the checkpoint the
    /// query resumes from: commit what it lists (idempotently), and remove
    /// staged output of this query that it does not list.
    async fn begin_checkpoints(&mut self, _restored: Option<RecordBatch>) -> Result<()> {
        Ok(())
    }
    /// Its part of a checkpoint, after `on_barrier` (or `finish`): what it has
    /// staged and not yet committed.
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
    /// Checkpoint `checkpoint` is complete: make visible what was staged for it
    /// and before it.
    async fn commit(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }
}

/// Hands result batches to a front end (shell, tests) through a channel.
pub struct ChannelSink {
    tx: mpsc::Sender<RecordBatch>,
}

impl ChannelSink {
    /// A sink and the receiver its batches arrive on; the channel closes when the
    /// pipeline ends.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<RecordBatch>) {
        let (tx, rx) = mpsc::channel(capacity);
        (ChannelSink { tx }, rx)
    }

    /// A sink into an existing channel (a restarted query's, whose reader
    /// goes on reading).
    pub fn to(tx: mpsc::Sender<RecordBatch>) -> Self {
        ChannelSink { tx }
    }
}

#[async_trait]
impl Sink for ChannelSink {
    fn describe(&self) -> String {
        "results to client".to_string()
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        self.tx
            .send(batch)
            .await
            .map_err(|_| EngineError::Cancelled)
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
