//! Runs a pipeline: one tokio task per step and lane, joined by bounded channels.
//!
//! The runtime owns what every operator would otherwise repeat: merging the
//! watermarks of several inputs, forwarding only watermarks that advance,
//! partitioning rows between lanes, counting rows, closing the chain in order at
//! the end of a bounded input, and turning a failure anywhere into one error for
//! the query's owner.
//!
//! A coordinator task sends barriers into the sources (periodically, and once to
//! stop). A barrier that has passed the sink from every lane means everything the
//! sources read before it is durable: the coordinator then tells the sources,
//! which commit their positions (Kafka offsets) up to it. A stop is such a
//! barrier after which the sources end: the pipeline drains (open windows are
//! not emitted early), the sink flushes and commits, and only then does
//! [`JobHandle::stop`] return. A source that fails stops the query the same way,
//! so what it read before the failure reaches the sink, and the query then ends
//! with its error.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{EngineError, Result};
use crate::exchange::KeyPartitioner;
use crate::inbox::{Inbox, InboxEvent, Tagged};
use crate::message::{Barrier, BarrierKind, Message, Watermark};
use crate::metrics::{JobMetrics, MetricsSnapshot, SourceProgress};
use crate::operator::{Emitter, Operator};
use crate::pipeline::{ExchangeKey, Flow, FlowInput, JobOptions, JoinInput, Pipeline};
use crate::sink::Sink;
use crate::source::{Source, SourceEvent};

/// Messages buffered between two steps before the sender waits.
const CHANNEL_CAPACITY: usize = 16;

/// How often barriers go when a source has positions to commit and the query
/// set no checkpoint interval (Kafka's own auto-commit interval).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The id of the last checkpoint of a pipeline: it completes once the sink has
/// finished, after the end of a bounded input (a source that ends remembers its
/// final position under it).
pub const FINAL_CHECKPOINT: u64 = u64::MAX;

/// Starts pipelines.
pub struct Job;

/// A running pipeline. Dropping it does not stop the tasks; call
/// [`JobHandle::stop`] (graceful) or [`JobHandle::cancel`].
pub struct JobHandle {
    tasks: JoinSet<Result<()>>,
    metrics: Arc<JobMetrics>,
    control: mpsc::UnboundedSender<Control>,
}

/// What a job's owner asks of its coordinator.
#[derive(Debug)]
enum Control {
    Stop,
}

/// What the coordinator tells a source.
#[derive(Debug)]
enum SourceCommand {
    /// Send this barrier after what was read so far.
    Barrier(Barrier),
    /// Everything read before this checkpoint's barrier is durable.
    Complete(u64),
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
        let Pipeline { flow, sink, metrics, options, .. } = pipeline;
        let interval = options
            .checkpoint_interval
            .or_else(|| flow.commits_positions().then_some(DEFAULT_COMMIT_INTERVAL));
        let tasks = Tasks { set: JoinSet::new(), failed: CancellationToken::new() };
        let (control, control_rx) = mpsc::unbounded_channel();
        let mut builder =
            Builder { tasks, metrics: Arc::clone(&metrics), options, sources: Vec::new(), control: control.clone() };
        let heads = builder.flow(flow);
        let (tx, sink_inbox) = channel(heads.len());
        for (i, inbox) in heads.into_iter().enumerate() {
            builder.tasks.spawn(run_forward(inbox, Outbox { tx: tx.clone(), tag: i }));
        }
        let (completed_tx, completed_rx) = mpsc::unbounded_channel();
        builder.tasks.spawn(run_sink(sink, sink_inbox, Arc::clone(&metrics), completed_tx));
        let coordinator = Coordinator { sources: builder.sources, interval, last_id: 0 };
        builder.tasks.spawn(coordinator.run(control_rx, completed_rx));
        JobHandle { tasks: builder.tasks.set, metrics, control }
    }
}

/// Spawns the tasks of a flow tree, returning the inboxes its lanes end in.
struct Builder {
    tasks: Tasks,
    metrics: Arc<JobMetrics>,
    options: JobOptions,
    /// Per source spawned so far (its progress slot), where its commands go.
    sources: Vec<mpsc::UnboundedSender<SourceCommand>>,
    /// The coordinator's control channel.
    control: mpsc::UnboundedSender<Control>,
}

impl Builder {
    fn flow(&mut self, flow: Flow) -> Vec<Inbox> {
        let mut heads = match flow.input {
            FlowInput::Sources(sources) => sources
                .into_iter()
                .map(|source| {
                    let (tx, inbox) = channel(1);
                    let slot = self.sources.len();
                    let (commands_tx, commands) = mpsc::unbounded_channel();
                    self.sources.push(commands_tx);
                    let lane = SourceLane {
                        slot,
                        out: Outbox { tx, tag: 0 },
                        metrics: Arc::clone(&self.metrics),
                        commands,
                        control: self.control.clone(),
                        rows_read: 0,
                    };
                    self.tasks.spawn(lane.run(source));
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
                        let guard = self.guard();
                        self.tasks.spawn(run_operator(op, inbox, Outbox { tx, tag: 0 }, guard));
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
                let guard = self.guard();
                self.tasks.spawn(run_operator(op, inbox, Outbox { tx, tag: 0 }, guard));
                next
            })
            .collect()
    }

    fn guard(&self) -> MemoryGuard {
        MemoryGuard { metrics: Arc::clone(&self.metrics), limit: self.options.memory_limit }
    }
}

/// Fails a query whose operators hold more state than its memory limit.
struct MemoryGuard {
    metrics: Arc<JobMetrics>,
    limit: Option<u64>,
}

impl MemoryGuard {
    fn check(&self) -> Result<()> {
        let Some(limit) = self.limit else { return Ok(()) };
        let used = self.metrics.state_bytes();
        if used > limit {
            return Err(EngineError::MemoryLimit { used, limit });
        }
        Ok(())
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

    /// Stops the query gracefully and waits until it has: the sources stop after
    /// a stop barrier, what is in flight drains to the sink (open windows are not
    /// emitted early), the sink makes everything it received durable and the
    /// sources commit their positions. Afterwards [`JobHandle::metrics`]'s
    /// `rows_out` is what readers can read. A query that already ended reports
    /// how it ended. While it stops, keep reading a results channel (or drop it).
    pub async fn stop(&mut self) -> Result<()> {
        // A closed control channel means the coordinator is gone: the pipeline
        // already ended, and `wait` tells how.
        let _ = self.control.send(Control::Stop);
        self.wait().await
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

/// One source shard's task: reads events, counts them and sends them on, with
/// the barriers the coordinator asks for in between.
struct SourceLane {
    slot: usize,
    out: Outbox,
    metrics: Arc<JobMetrics>,
    commands: mpsc::UnboundedReceiver<SourceCommand>,
    /// To stop the whole query when this source fails.
    control: mpsc::UnboundedSender<Control>,
    /// Rows the source has returned so far.
    rows_read: u64,
}

impl SourceLane {
    /// Counts `rows` just read and reports the source's progress.
    fn read(&mut self, source: &dyn Source, rows: usize) {
        self.metrics.add_rows_in(rows);
        self.rows_read += rows as u64;
        let progress = SourceProgress { rows_read: self.rows_read, lag: source.lag(), bad_records: source.bad_records() };
        self.metrics.set_source_progress(self.slot, progress);
    }

    async fn run(mut self, mut source: Box<dyn Source>) -> Result<()> {
        // Why the source failed, once it has: the query then stops gracefully
        // (what was read before the failure still reaches the sink) and ends
        // with this error.
        let mut failure = None;
        let stopped = loop {
            // A waiting read is dropped when a command arrives (sources are
            // cancel-safe): a barrier must not wait for the next record.
            let event = tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(SourceCommand::Barrier(barrier)) => {
                        source.on_barrier(barrier.id).await?;
                        self.out.send(Message::Barrier(barrier)).await?;
                        if barrier.kind == BarrierKind::Stop {
                            break true;
                        }
                        continue;
                    }
                    Some(SourceCommand::Complete(id)) => {
                        source.on_checkpoint_complete(id).await?;
                        continue;
                    }
                    None => return Err(EngineError::Cancelled),
                },
                event = source.next_event() => match event {
                    Ok(event) => event,
                    Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
                    Err(e) => {
                        failure = Some(e);
                        let _ = self.control.send(Control::Stop);
                        break true;
                    }
                },
            };
            match event {
                SourceEvent::Batch(batch) => {
                    self.read(&*source, batch.num_rows());
                    self.out.send(Message::Batch(batch)).await?;
                }
                SourceEvent::SplitBatch(tag, batch) => {
                    self.read(&*source, batch.num_rows());
                    self.out.send(Message::SplitBatch(tag, batch)).await?;
                }
                SourceEvent::Idle => self.out.send(Message::Watermark(Watermark::Idle)).await?,
                SourceEvent::End => break false,
            }
        };
        // The lag and bad-record count as the source ends.
        self.read(&*source, 0);
        if !stopped {
            // The end of a bounded input: every open window closes, and the
            // final position is committed once the sink has finished.
            source.on_barrier(FINAL_CHECKPOINT).await?;
            self.out.send(Message::Watermark(Watermark::MAX)).await?;
        }
        self.out.send(Message::EndOfStream).await?;
        // Checkpoints this source took part in may complete after its end.
        while let Some(command) = self.commands.recv().await {
            if let SourceCommand::Complete(id) = command {
                source.on_checkpoint_complete(id).await?;
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Sends barriers into the sources and tells them when checkpoints complete.
struct Coordinator {
    sources: Vec<mpsc::UnboundedSender<SourceCommand>>,
    interval: Option<Duration>,
    last_id: u64,
}

impl Coordinator {
    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut completed: mpsc::UnboundedReceiver<u64>,
    ) -> Result<()> {
        let mut ticker = self.interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // At most one periodic barrier in flight: a slow sink delays the next.
        let mut in_flight: Option<u64> = None;
        let mut stopping = false;
        let mut owner_gone = false;
        loop {
            tokio::select! {
                _ = tick(&mut ticker), if !stopping && in_flight.is_none() => {
                    in_flight = Some(self.inject(BarrierKind::Checkpoint));
                }
                request = control.recv(), if !stopping && !owner_gone => match request {
                    Some(Control::Stop) => {
                        stopping = true;
                        self.inject(BarrierKind::Stop);
                    }
                    None => owner_gone = true,
                },
                done = completed.recv() => match done {
                    Some(id) => {
                        if in_flight == Some(id) {
                            in_flight = None;
                        }
                        for source in &self.sources {
                            let _ = source.send(SourceCommand::Complete(id));
                        }
                        if id == FINAL_CHECKPOINT {
                            return Ok(());
                        }
                    }
                    // The sink ended without finishing: the pipeline failed.
                    None => return Ok(()),
                },
            }
        }
    }

    /// Sends the next barrier to every source (those that ended ignore it).
    fn inject(&mut self, kind: BarrierKind) -> u64 {
        self.last_id += 1;
        let barrier = Barrier { id: self.last_id, kind };
        for source in &self.sources {
            let _ = source.send(SourceCommand::Barrier(barrier));
        }
        barrier.id
    }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
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

async fn run_operator(op: Box<dyn Operator>, inbox: Inbox, out: Outbox, memory: MemoryGuard) -> Result<()> {
    let name = op.name();
    operate(op, inbox, out, memory).await.map_err(|e| match e {
        // Errors of DataFusion or Arrow say what failed, not where.
        EngineError::DataFusion(_) | EngineError::Arrow(_) => EngineError::Operator { operator: name, source: Box::new(e) },
        other => other,
    })
}

async fn operate(mut op: Box<dyn Operator>, mut inbox: Inbox, out: Outbox, memory: MemoryGuard) -> Result<()> {
    let mut out = Forwarder { out, last_watermark: None, idle: false };
    let mut emitter = Emitter::default();
    while let Some(event) = inbox.next_event().await {
        match event {
            InboxEvent::Barrier(barrier) => {
                op.on_barrier(barrier, &mut emitter).await?;
                out.forward(emitter.drain()).await?;
                out.out.send(Message::Barrier(barrier)).await?;
                continue;
            }
            InboxEvent::Batch { input, batch } => op.on_batch_from(input, batch, &mut emitter).await?,
            InboxEvent::SplitBatch { tag, batch } => op.on_split_batch(tag, batch, &mut emitter).await?,
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
        memory.check()?;
        out.forward(emitter.drain()).await?;
    }
    // An upstream task ended without EndOfStream: it failed or was cancelled.
    Err(EngineError::Cancelled)
}

/// Routes each row to the lane owning its key; control messages go to every lane.
async fn run_exchange(mut inbox: Inbox, partitioner: Arc<KeyPartitioner>, outs: Vec<Outbox>) -> Result<()> {
    while let Some(msg) = inbox.next().await {
        match msg {
            Message::Batch(b) | Message::SplitBatch(_, b) => {
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

/// Writes into the sink, reporting each barrier (and the end) as a completed
/// checkpoint once the sink has made what came before it durable.
async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut inbox: Inbox,
    metrics: Arc<JobMetrics>,
    completed: mpsc::UnboundedSender<u64>,
) -> Result<()> {
    let mut deferred = None;
    while let Some(msg) = inbox.next().await {
        match msg {
            Message::Batch(b) | Message::SplitBatch(_, b) => {
                metrics.add_rows_out(b.num_rows());
                sink.write_batch(b).await?;
            }
            Message::Watermark(wm) => {
                if let Watermark::EventTime(t) = wm {
                    metrics.set_watermark(t);
                }
                sink.on_watermark(wm).await?;
            }
            Message::Barrier(barrier) => {
                sink.on_barrier(barrier).await?;
                if sink.durable_at_barriers() {
                    let _ = completed.send(barrier.id);
                } else {
                    // Complete only once the sink has finished (see below).
                    deferred = Some(barrier.id);
                }
            }
            Message::EndOfStream => {
                sink.finish().await?;
                // A sink durable only at its end makes the last barrier's
                // positions (a stop's) committable now.
                if let Some(id) = deferred {
                    let _ = completed.send(id);
                }
                let _ = completed.send(FINAL_CHECKPOINT);
                return Ok(());
            }
        }
    }
    Err(EngineError::Cancelled)
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
