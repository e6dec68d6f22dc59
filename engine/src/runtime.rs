//! Runs a pipeline: one tokio task per step and lane, joined by bounded channels.
//!
//! The runtime owns what every operator would otherwise repeat: merging the
//! watermarks of several inputs, forwarding only watermarks that advance,
//! partitioning rows between lanes, counting rows, closing the chain in order at
//! the end of a bounded input, and turning a failure anywhere into one error for
//! the query's owner.

use std::sync::Arc;

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{EngineError, Result};
use crate::exchange::KeyPartitioner;
use crate::inbox::{Inbox, InboxEvent, Tagged};
use crate::message::{Message, Watermark};
use crate::metrics::{JobMetrics, MetricsSnapshot, SourceProgress};
use crate::operator::{Emitter, Operator};
use crate::pipeline::{ExchangeKey, Flow, FlowInput, JoinInput, Pipeline};
use crate::sink::Sink;
use crate::source::{Source, SourceEvent};

/// Messages buffered between two steps before the sender waits.
const CHANNEL_CAPACITY: usize = 16;

/// Starts pipelines.
pub struct Job;

/// A running pipeline. Dropping it does not stop the tasks; call [`JobHandle::cancel`].
pub struct JobHandle {
    tasks: JoinSet<Result<()>>,
    metrics: Arc<JobMetrics>,
}

/// The sending end of a channel, with the tag the receiver knows this sender by.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Tagged>,
    tag: usize,
}

impl Outbox {
    async fn send(&self, msg: Message) -> Result<()> {
        self.tx.send((self.tag, msg)).await.map_err(|_| EngineError::Cancelled)
    }
}

/// The tasks of one pipeline. When one fails, the others are stopped, so the
/// failure reaches the query's owner at once (its result channel closes) instead
/// of leaving the other lanes running with event time frozen.
struct Tasks {
    set: JoinSet<Result<()>>,
    failed: CancellationToken,
}

impl Tasks {
    fn spawn(&mut self, task: impl Future<Output = Result<()>> + Send + 'static) {
        let failed = self.failed.clone();
        self.set.spawn(async move {
            let result = tokio::select! {
                r = task => r,
                _ = failed.cancelled() => Err(EngineError::Cancelled),
            };
            if matches!(&result, Err(e) if !matches!(e, EngineError::Cancelled)) {
                failed.cancel();
            }
            result
        });
    }
}

fn channel(inputs: usize) -> (mpsc::Sender<Tagged>, Inbox) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    (tx, Inbox::new(rx, inputs))
}

impl Job {
    /// Spawns every step of every lane of `pipeline` on the current tokio runtime.
    pub fn start(pipeline: Pipeline) -> JobHandle {
        let Pipeline { flow, sink, metrics, .. } = pipeline;
        let tasks = Tasks { set: JoinSet::new(), failed: CancellationToken::new() };
        let mut builder = Builder { tasks, metrics: Arc::clone(&metrics), sources: 0 };
        let heads = builder.flow(flow);
        let (tx, sink_inbox) = channel(heads.len());
        for (i, inbox) in heads.into_iter().enumerate() {
            builder.tasks.spawn(run_forward(inbox, Outbox { tx: tx.clone(), tag: i }));
        }
        builder.tasks.spawn(run_sink(sink, sink_inbox, Arc::clone(&metrics)));
        JobHandle { tasks: builder.tasks.set, metrics }
    }
}

/// Spawns the tasks of a flow tree, returning the inboxes its lanes end in.
struct Builder {
    tasks: Tasks,
    metrics: Arc<JobMetrics>,
    /// Sources spawned so far: each gets its own progress slot.
    sources: usize,
}

impl Builder {
    fn flow(&mut self, flow: Flow) -> Vec<Inbox> {
        let mut heads = match flow.input {
            FlowInput::Sources(sources) => sources
                .into_iter()
                .map(|source| {
                    let (tx, inbox) = channel(1);
                    let slot = self.sources;
                    self.sources += 1;
                    self.tasks.spawn(run_source(source, slot, Outbox { tx, tag: 0 }, Arc::clone(&self.metrics)));
                    inbox
                })
                .collect(),
            FlowInput::Join(join) => self.join(*join),
        };
        for stage in flow.stages {
            if let Some(key) = stage.exchange {
                let p = stage.lanes.len();
                heads = self.exchange(vec![(heads, key)], p);
            }
            for (lane, ops) in stage.lanes.into_iter().enumerate() {
                for op in ops {
                    if let Some(head) = heads.get_mut(lane) {
                        let (tx, next) = channel(1);
                        let inbox = std::mem::replace(head, next);
                        self.tasks.spawn(run_operator(op, inbox, Outbox { tx, tag: 0 }));
                    }
                }
            }
        }
        heads
    }

    /// Repartitions each input's lanes by its key into `p` lanes whose inboxes
    /// tell the inputs apart.
    fn exchange(&mut self, inputs: Vec<(Vec<Inbox>, ExchangeKey)>, p: usize) -> Vec<Inbox> {
        let groups: Vec<usize> = inputs.iter().map(|(heads, _)| heads.len()).collect();
        let (txs, inboxes): (Vec<_>, Vec<_>) = (0..p)
            .map(|_| {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                (tx, Inbox::grouped(rx, groups.clone()))
            })
            .unzip();
        let mut tag = 0;
        for (heads, key) in inputs {
            let partitioner = Arc::new(KeyPartitioner::new(key, p));
            for inbox in heads {
                let outs = txs.iter().map(|tx| Outbox { tx: tx.clone(), tag }).collect();
                tag += 1;
                self.tasks.spawn(run_exchange(inbox, Arc::clone(&partitioner), outs));
            }
        }
        inboxes
    }

    fn join(&mut self, join: JoinInput) -> Vec<Inbox> {
        let JoinInput { left, right, left_key, right_key, lanes } = join;
        let left = self.flow(left);
        let right = self.flow(right);
        let inboxes = self.exchange(vec![(left, left_key), (right, right_key)], lanes.len());
        inboxes
            .into_iter()
            .zip(lanes)
            .map(|(inbox, op)| {
                let (tx, next) = channel(1);
                self.tasks.spawn(run_operator(op, inbox, Outbox { tx, tag: 0 }));
                next
            })
            .collect()
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

async fn run_source(mut source: Box<dyn Source>, slot: usize, out: Outbox, metrics: Arc<JobMetrics>) -> Result<()> {
    let mut rows_read = 0u64;
    loop {
        match source.next_event().await? {
            SourceEvent::Batch(batch) => {
                metrics.add_rows_in(batch.num_rows());
                rows_read += batch.num_rows() as u64;
                metrics.set_source_progress(slot, SourceProgress { rows_read, lag: source.lag() });
                out.send(Message::Batch(batch)).await?;
            }
            SourceEvent::Idle => out.send(Message::Watermark(Watermark::Idle)).await?,
            SourceEvent::End => break,
        }
    }
    metrics.set_source_progress(slot, SourceProgress { rows_read, lag: source.lag() });
    out.send(Message::Watermark(Watermark::MAX)).await?;
    out.send(Message::EndOfStream).await
}

/// Sends an operator's output, dropping watermarks that do not advance.
struct Forwarder {
    out: Outbox,
    last_watermark: Option<i64>,
    /// An `Idle` went out since the last event-time watermark: the next one
    /// re-announces this input's time even if it did not advance.
    idle: bool,
}

impl Forwarder {
    async fn forward(&mut self, messages: Vec<Message>) -> Result<()> {
        for msg in messages {
            match msg {
                Message::Watermark(Watermark::EventTime(t)) => {
                    if !self.idle && self.last_watermark.is_some_and(|l| t <= l) {
                        continue;
                    }
                    self.last_watermark = Some(self.last_watermark.map_or(t, |l| l.max(t)));
                    self.idle = false;
                }
                Message::Watermark(Watermark::Idle) => self.idle = true,
                _ => {}
            }
            self.out.send(msg).await?;
        }
        Ok(())
    }
}

async fn run_operator(mut op: Box<dyn Operator>, mut inbox: Inbox, out: Outbox) -> Result<()> {
    let mut out = Forwarder { out, last_watermark: None, idle: false };
    let mut emitter = Emitter::default();
    while let Some(event) = inbox.next_event().await {
        match event {
            InboxEvent::Batch { input, batch } => op.on_batch_from(input, batch, &mut emitter).await?,
            InboxEvent::Watermark(wm) => {
                if let Some(fwd) = op.on_watermark(wm, &mut emitter).await? {
                    emitter.emit_watermark(fwd);
                }
            }
            InboxEvent::InputEnded(input) => op.on_input_end(input, &mut emitter).await?,
            InboxEvent::InputWatermark(input, wm) => op.on_input_watermark(input, wm, &mut emitter).await?,
            InboxEvent::End => {
                op.on_end(&mut emitter).await?;
                out.forward(emitter.drain()).await?;
                return out.out.send(Message::EndOfStream).await;
            }
        }
        out.forward(emitter.drain()).await?;
    }
    // An upstream task ended without EndOfStream: it failed or was cancelled.
    Err(EngineError::Cancelled)
}

/// Routes each row to the lane owning its key; control messages go to every lane.
async fn run_exchange(mut inbox: Inbox, partitioner: Arc<KeyPartitioner>, outs: Vec<Outbox>) -> Result<()> {
    while let Some(msg) = inbox.next().await {
        match msg {
            Message::Batch(b) => {
                for (lane, part) in partitioner.partition(&b)? {
                    outs[lane].send(Message::Batch(part)).await?;
                }
            }
            Message::EndOfStream => {
                for out in &outs {
                    out.send(Message::EndOfStream).await?;
                }
                return Ok(());
            }
            other => {
                for out in &outs {
                    out.send(other.clone()).await?;
                }
            }
        }
    }
    Err(EngineError::Cancelled)
}

/// Hands a lane's results to the shared sink channel.
async fn run_forward(mut inbox: Inbox, out: Outbox) -> Result<()> {
    while let Some(msg) = inbox.next().await {
        let end = matches!(msg, Message::EndOfStream);
        out.send(msg).await?;
        if end {
            return Ok(());
        }
    }
    Err(EngineError::Cancelled)
}

async fn run_sink(mut sink: Box<dyn Sink>, mut inbox: Inbox, metrics: Arc<JobMetrics>) -> Result<()> {
    while let Some(msg) = inbox.next().await {
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
