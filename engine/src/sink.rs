//! The contract of a sink: where a pipeline's results go.

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::message::Watermark;

/// Receives a pipeline's output in arrival order.
///
/// `write_batch` is called for every result batch, `on_watermark` whenever event
/// time advances, and `finish` once at the end of a bounded input (not when the
/// pipeline is cancelled). Errors stop the pipeline.
#[async_trait]
pub trait Sink: Send {
    /// A one-line description for EXPLAIN.
    fn describe(&self) -> String;
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()>;
    async fn on_watermark(&mut self, _watermark: Watermark) -> Result<()> {
        Ok(())
    }
    async fn finish(&mut self) -> Result<()>;
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
