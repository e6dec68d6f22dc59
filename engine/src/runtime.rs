//! Runs a pipeline: one tokio task per step, joined by bounded channels.
//!
//! The runtime owns what every operator would otherwise repeat: forwarding only
//! watermarks that advance, counting rows, closing the chain in order at the end
//! of a bounded input, and turning a failure anywhere into one error for the
//! query's owner.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::{EngineError, Result};
use crate::message::{Message, Watermark};
use crate::metrics::{JobMetrics, MetricsSnapshot};
use crate::operator::{Emitter, Operator};
use crate::pipeline::Pipeline;
use crate::sink::Sink;
use crate::source::Source;

/// Messages buffered between two steps before the sender waits.
const CHANNEL_CAPACITY: usize = 16;

/// Starts pipelines.
pub struct Job;

/// A running pipeline. Dropping it does not stop the tasks; call [`JobHandle::cancel`].
pub struct JobHandle {
    tasks: JoinSet<Result<()>>,
    metrics: Arc<JobMetrics>,
}

impl Job {
    /// Spawns every step of `pipeline` on the current tokio runtime.
    pub fn start(pipeline: Pipeline) -> JobHandle {
        let Pipeline { source, operators, sink, metrics, .. } = pipeline;
        let mut tasks = JoinSet::new();
        let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
        tasks.spawn(run_source(source, tx, Arc::clone(&metrics)));
        for op in operators {
            let (tx, next_rx) = mpsc::channel(CHANNEL_CAPACITY);
            tasks.spawn(run_operator(op, rx, tx));
            rx = next_rx;
        }
        tasks.spawn(run_sink(sink, rx, Arc::clone(&metrics)));
        JobHandle { tasks, metrics }
    }
}

impl JobHandle {
    /// Waits until the pipeline ends: `Ok` once a bounded input has been fully
    /// processed and the sink finished, or the first error raised by any step.
    pub async fn wait(&mut self) -> Result<()> {
        let mut cancelled = false;
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(EngineError::Cancelled)) => cancelled = true,
                Ok(Err(e)) => {
                    self.tasks.abort_all();
                    return Err(e);
                }
                Err(e) if e.is_cancelled() => cancelled = true,
                Err(e) => {
                    self.tasks.abort_all();
                    return Err(EngineError::Internal(format!("a pipeline task panicked: {e}")));
                }
            }
        }
        if cancelled {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Stops every step now; results not yet delivered are discarded.
    pub fn cancel(&mut self) {
        self.tasks.abort_all();
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    pub fn metrics_handle(&self) -> Arc<JobMetrics> {
        Arc::clone(&self.metrics)
    }
}

async fn send(tx: &mpsc::Sender<Message>, msg: Message) -> Result<()> {
    tx.send(msg).await.map_err(|_| EngineError::Cancelled)
}

async fn run_source(mut source: Box<dyn Source>, tx: mpsc::Sender<Message>, metrics: Arc<JobMetrics>) -> Result<()> {
    while let Some(batch) = source.next_batch().await? {
        metrics.add_rows_in(batch.num_rows());
        send(&tx, Message::Batch(batch)).await?;
    }
    send(&tx, Message::Watermark(Watermark::MAX)).await?;
    send(&tx, Message::EndOfStream).await
}

/// Forwards an operator's output, dropping watermarks that do not advance.
struct Forwarder {
    tx: mpsc::Sender<Message>,
    last_watermark: Option<i64>,
}

impl Forwarder {
    async fn forward(&mut self, messages: Vec<Message>) -> Result<()> {
        for msg in messages {
            if let Message::Watermark(Watermark::EventTime(t)) = msg {
                if self.last_watermark.is_some_and(|l| t <= l) {
                    continue;
                }
                self.last_watermark = Some(t);
            }
            send(&self.tx, msg).await?;
        }
        Ok(())
    }
}

async fn run_operator(
    mut op: Box<dyn Operator>,
    mut rx: mpsc::Receiver<Message>,
    tx: mpsc::Sender<Message>,
) -> Result<()> {
    let mut out = Forwarder { tx, last_watermark: None };
    let mut emitter = Emitter::default();
    while let Some(msg) = rx.recv().await {
        match msg {
            Message::Batch(b) => op.on_batch(b, &mut emitter).await?,
            Message::Watermark(wm) => {
                if let Some(fwd) = op.on_watermark(wm, &mut emitter).await? {
                    emitter.emit_watermark(fwd);
                }
            }
            Message::EndOfStream => {
                op.on_end(&mut emitter).await?;
                out.forward(emitter.drain()).await?;
                return send(&out.tx, Message::EndOfStream).await;
            }
        }
        out.forward(emitter.drain()).await?;
    }
    // The upstream task ended without EndOfStream: it failed or was cancelled.
    Err(EngineError::Cancelled)
}

async fn run_sink(mut sink: Box<dyn Sink>, mut rx: mpsc::Receiver<Message>, metrics: Arc<JobMetrics>) -> Result<()> {
    while let Some(msg) = rx.recv().await {
        match msg {
            Message::Batch(b) => {
                metrics.add_rows_out(b.num_rows());
                sink.write_batch(b).await?;
            }
            Message::Watermark(wm) => {
                if let Watermark::EventTime(t) = wm {
                    metrics.set_watermark(t);
                }
                sink.on_watermark(wm).await?;
            }
            Message::EndOfStream => return sink.finish().await,
        }
    }
    Err(EngineError::Cancelled)
}
