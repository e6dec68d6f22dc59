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

use crate::alignment::AlignmentGate;
use crate::checkpoint::{Ack, CheckpointStore, Collector, Owner, PartRef, RestoredState, StatePart};
use crate::error::{EngineError, Result};
use crate::exchange::KeyPartitioner;
use crate::inbox::{edges, grouped_edges, Inbox, InboxEvent};
use crate::message::{Barrier, BarrierKind, Message, Watermark};
use crate::metrics::{JobMetrics, MetricsSnapshot, SourceProgress};
use crate::operator::{Emitter, Operator};
use crate::pipeline::{ExchangeKey, Flow, FlowInput, JobOptions, JoinInput, Output, Pipeline, UnionInput};
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
    /// How a failed pipeline is started again, if it is.
    restart: Option<Restart>,
    /// The owner asked it to stop: a failure now is not restarted.
    stopping: bool,
    /// The failure being restarted after, while no pipeline runs (kept here so
    /// that a `wait` dropped during the restart's delay loses nothing: the
    /// next `wait` resumes the restart, a `stop` ends with this failure).
    restarting: Option<EngineError>,
}

/// Flink's fixed-delay restart strategy: a failed query is started again (from
/// its latest checkpoint) up to `attempts` times, `delay` after each failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub attempts: u32,
    pub delay: Duration,
}

/// Builds a query's pipeline again, to restart it after a failure: from its
/// latest checkpoint when checkpoints are on, reporting into `metrics`.
#[async_trait::async_trait]
pub trait PipelineFactory: Send {
    async fn rebuild(&mut self, metrics: Arc<JobMetrics>) -> Result<Pipeline>;
}

struct Restart {
    factory: Box<dyn PipelineFactory>,
    policy: RestartPolicy,
    used: u32,
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

/// The sending end of one edge.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Message>,
}

impl Outbox {
    async fn send(&self, msg: Message) -> Result<()> {
        self.tx.send(msg).await.map_err(|_| EngineError::Cancelled)
    }
}

/// What a step needs to take part in checkpoints: who it is, where its state
/// goes and whom to tell.
///
/// A step's state is taken when its barrier passes (the step waits for that),
/// and written to the store by a task of its own while the step goes on, as
/// Flink's asynchronous snapshot phase: encoding and uploading the state does
/// not hold the data back. Writes report in the order their checkpoints were
/// taken, and the step's end is reported only after its last write, so a
/// checkpoint never completes without the part of a step still writing it. A
/// write that fails fails the query, as a failed step would.
struct Participant {
    owner: Owner,
    lane: usize,
    acks: mpsc::UnboundedSender<Ack>,
    /// `None`: checkpoints are off (only the sink reports its barriers).
    store: Option<CheckpointStore>,
    /// The last write still under way.
    writing: Option<tokio::task::JoinHandle<()>>,
}

impl Participant {
    /// Stores this step's state for checkpoint `id` in the background and
    /// reports it once written. At most one write is under way per step: the
    /// step waits for its previous write first, so a slow store holds the step
    /// back instead of piling up copies of its state.
    async fn store_part(&mut self, id: u64, tables: Vec<(usize, StatePart)>, alignment_nanos: u64) {
        let Some(store) = self.store.clone() else { return };
        if let Some(previous) = self.writing.take() {
            let _ = previous.await;
        }
        let mut by_table: std::collections::BTreeMap<usize, Vec<StatePart>> = Default::default();
        for (table, part) in tables {
            by_table.entry(table).or_default().push(part);
        }
        let (owner, lane, acks) = (self.owner, self.lane, self.acks.clone());
        let write = async move {
            let mut parts: Vec<PartRef> = Vec::new();
            for (table, rows) in by_table {
                parts.push(store.write_part(id, owner, lane, table, &rows).await?);
                crate::checkpoint::crash_point(crate::checkpoint::CrashPoint::Snapshot, id);
            }
            Ok::<_, crate::checkpoint::StoreError>(parts)
        };
        let writer = tokio::spawn(write);
        self.writing = Some(tokio::spawn(async move {
            // A write that panicked fails the checkpoint like one that erred.
            let ack = match writer.await {
                Ok(Ok(parts)) => Ack::Part { checkpoint: id, owner, lane, parts, alignment_nanos },
                Ok(Err(error)) => Ack::Failed { checkpoint: id, error },
                Err(e) => Ack::Failed {
                    checkpoint: id,
                    error: crate::checkpoint::StoreError::Io { location: format!("{owner:?} lane {lane}"), message: format!("the write failed: {e}") },
                },
            };
            let _ = acks.send(ack);
        }));
    }

    fn report(&self, checkpoint: u64, parts: Vec<PartRef>, alignment_nanos: u64) {
        let _ = self.acks.send(Ack::Part { checkpoint, owner: self.owner, lane: self.lane, parts, alignment_nanos });
    }

    /// Reports the step's end, after its last write.
    fn finished(&mut self) {
        let (owner, lane, acks) = (self.owner, self.lane, self.acks.clone());
        match self.writing.take() {
            None => {
                let _ = acks.send(Ack::Finished { owner, lane });
            }
            Some(write) => {
                tokio::spawn(async move {
                    let _ = write.await;
                    let _ = acks.send(Ack::Finished { owner, lane });
                });
            }
        }
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

/// One edge: a bounded channel and the inbox of its receiving step.
fn channel() -> (Outbox, Inbox) {
    let (mut txs, inbox) = edges(1, CHANNEL_CAPACITY);
    (Outbox { tx: txs.remove(0) }, inbox)
}

/// Messages buffered per edge into a step with `inputs` edges: together about
/// as many as one edge holds, and at least two each.
fn edge_capacity(inputs: usize) -> usize {
    (CHANNEL_CAPACITY / inputs.max(1)).max(2)
}

impl Job {
    /// Spawns every step of every lane of `pipeline` on the current tokio runtime.
    pub fn start(pipeline: Pipeline) -> JobHandle {
        let interval = pipeline
            .options
            .checkpoint_interval
            .or_else(|| pipeline.commits_positions().then_some(DEFAULT_COMMIT_INTERVAL));
        let parallelism = pipeline.lanes();
        let whole_inputs: Vec<bool> = pipeline.outputs.iter().map(|o| pipeline.reads_whole_input(&o.flow)).collect();
        let readers = shared_readers(&pipeline);
        let Pipeline { outputs, shared_sources, metrics, options, checkpoints } = pipeline;
        let tasks = Tasks { set: JoinSet::new(), failed: CancellationToken::new() };
        let (control, control_rx) = mpsc::unbounded_channel();
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let restored = checkpoints.as_ref().and_then(|c| c.restored.clone());
        let mut builder = Builder {
            tasks,
            metrics: Arc::clone(&metrics),
            options,
            sources: Vec::new(),
            control: control.clone(),
            acks,
            store: checkpoints.as_ref().map(|c| c.store.clone()),
            restored: restored.clone(),
            participants: Vec::new(),
            next_source: 0,
            next_operator: 0,
            shared: shared_sources.into_iter().zip(readers).map(|(s, readers)| SharedRead::Unread { lanes: s.lanes, readers }).collect(),
        };
        let sinks = outputs.len();
        let mut commits = Vec::with_capacity(sinks);
        for (index, (output, whole_input)) in outputs.into_iter().zip(whole_inputs).enumerate() {
            let Output { flow, mut sink, .. } = output;
            sink.set_whole_input(whole_input);
            let heads = builder.flow(flow);
            let (txs, sink_inbox) = edges(heads.len(), edge_capacity(heads.len()));
            for (inbox, tx) in heads.into_iter().zip(txs) {
                builder.tasks.spawn(run_forward(inbox, Outbox { tx }));
            }
            let (commits_tx, commits_rx) = mpsc::unbounded_channel();
            commits.push(commits_tx);
            let owner = Owner::Sink(index);
            let participant = builder.participant(owner, 0);
            let sink_state = match &restored {
                Some(r) => r.for_lane(owner, 0, 1).map(|parts| parts.into_iter().next().map(|(_, p)| p.batch)),
                None => Ok(None),
            };
            let sink_task = SinkTask { sink, index, metrics: Arc::clone(&metrics), participant, commits: commits_rx, committed: 0, reported: None };
            builder.tasks.spawn(sink_task.run(sink_inbox, sink_state));
        }
        let last_stored = checkpoints.as_ref().map_or(0, |c| c.last_id);
        let collector = Collector::new(checkpoints, builder.participants.clone(), sinks, parallelism);
        if let Some(r) = &restored {
            metrics.checkpoint_restored(r.checkpoint);
        }
        let coordinator = Coordinator {
            sources: builder.sources,
            sinks: commits,
            sinks_running: sinks,
            interval,
            last_id: restored.as_ref().map_or(0, |r| r.checkpoint).max(last_stored),
            collector,
            metrics: Arc::clone(&metrics),
        };
        builder.tasks.spawn(coordinator.run(control_rx, acks_rx));
        JobHandle { tasks: builder.tasks.set, metrics, control, restart: None, stopping: false, restarting: None }
    }
}

/// Who reads a shared source: how many flows, and per lane the watermark
/// alignment gates of their first steps (the source waits on all of them).
#[derive(Default)]
struct SharedReaders {
    count: usize,
    gates: Vec<Vec<AlignmentGate>>,
}

/// Per shared source, who reads it.
fn shared_readers(pipeline: &Pipeline) -> Vec<SharedReaders> {
    fn visit(flow: &Flow, readers: &mut [SharedReaders]) {
        if let FlowInput::Shared { source, .. } = &flow.input {
            if let Some(r) = readers.get_mut(*source) {
                r.count += 1;
                for (lane, gate) in first_step_gates(flow).into_iter().enumerate() {
                    if r.gates.len() <= lane {
                        r.gates.resize_with(lane + 1, Vec::new);
                    }
                    r.gates[lane].extend(gate);
                }
            }
        }
        for input in flow.input.flows() {
            visit(input, readers);
        }
    }
    let mut readers: Vec<SharedReaders> = (0..pipeline.shared_sources.len()).map(|_| SharedReaders::default()).collect();
    for output in &pipeline.outputs {
        visit(&output.flow, &mut readers);
    }
    readers
}

/// Per lane, what a flow's source waits on before reading (watermark alignment).
fn first_step_gates(flow: &Flow) -> Vec<Option<AlignmentGate>> {
    match flow.stages.first() {
        Some(stage) => stage.lanes.iter().map(|ops| ops.iter().find_map(|op| op.source_gate())).collect(),
        None => Vec::new(),
    }
}

/// A shared source, started where the first flow that reads it is built.
enum SharedRead {
    Unread { lanes: Vec<Box<dyn Source>>, readers: SharedReaders },
    /// Per reader not yet built, the inboxes of its lanes.
    Started(std::vec::IntoIter<Vec<Inbox>>),
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
    acks: mpsc::UnboundedSender<Ack>,
    store: Option<CheckpointStore>,
    restored: Option<Arc<RestoredState>>,
    /// Every step that stores a part of each checkpoint.
    participants: Vec<(Owner, usize)>,
    next_source: usize,
    next_operator: usize,
    shared: Vec<SharedRead>,
}

impl Builder {
    /// A step's place in checkpoints; only the sink takes part when they are off.
    fn participant(&mut self, owner: Owner, lane: usize) -> Participant {
        if self.store.is_some() || matches!(owner, Owner::Sink(_)) {
            self.participants.push((owner, lane));
        }
        Participant { owner, lane, acks: self.acks.clone(), store: self.store.clone(), writing: None }
    }

    /// The state a restored checkpoint holds for a step in `lane` of `lanes`.
    fn restored_state(&self, owner: Owner, lane: usize, lanes: usize) -> Result<Vec<(usize, StatePart)>> {
        match &self.restored {
            Some(r) => r.for_lane(owner, lane, lanes),
            None => Ok(Vec::new()),
        }
    }

    fn operator(&mut self, op: Box<dyn Operator>, inbox: Inbox, lane: usize, lanes: usize, id: usize) -> Inbox {
        let (out, next) = channel();
        let guard = self.guard();
        let owner = Owner::Operator(id);
        let state = self.restored_state(owner, lane, lanes);
        let participant = self.participant(owner, lane);
        self.tasks.spawn(run_operator(op, inbox, out, guard, participant, state));
        next
    }

    fn flow(&mut self, flow: Flow) -> Vec<Inbox> {
        let gates: Vec<Vec<AlignmentGate>> = first_step_gates(&flow).into_iter().map(|g| g.into_iter().collect()).collect();
        let mut heads = match flow.input {
            FlowInput::Sources(sources) => self.sources(sources, gates),
            FlowInput::Shared { source, .. } => self.shared(source),
            FlowInput::Join(join) => self.join(*join),
            FlowInput::Union(union) => self.union(*union),
        };
        for stage in flow.stages {
            if let Some(key) = stage.exchange {
                let p = stage.lanes.len();
                heads = self.exchange(vec![(heads, key)], p);
            }
            let lanes = stage.lanes.len();
            let ops_per_lane = stage.lanes.first().map_or(0, Vec::len);
            let first_id = self.next_operator;
            self.next_operator += ops_per_lane;
            heads = heads
                .into_iter()
                .zip(stage.lanes)
                .enumerate()
                .map(|(lane, (inbox, ops))| {
                    ops.into_iter().enumerate().fold(inbox, |inbox, (i, op)| self.operator(op, inbox, lane, lanes, first_id + i))
                })
                .collect();
        }
        heads
    }

    /// Spawns one lane per source shard; returns their inboxes.
    fn sources(&mut self, sources: Vec<Box<dyn Source>>, gates: Vec<Vec<AlignmentGate>>) -> Vec<Inbox> {
        let id = self.next_source;
        self.next_source += 1;
        let lanes = sources.len();
        sources
            .into_iter()
            .enumerate()
            .map(|(lane, source)| {
                let (out, inbox) = channel();
                let slot = self.sources.len();
                let (commands_tx, commands) = mpsc::unbounded_channel();
                self.sources.push(commands_tx);
                let owner = Owner::Source(id);
                let positions = self.restored_state(owner, lane, lanes);
                let participant = self.participant(owner, lane);
                let source_lane = SourceLane {
                    slot,
                    out,
                    metrics: Arc::clone(&self.metrics),
                    commands,
                    control: self.control.clone(),
                    rows_read: 0,
                    participant,
                    gates: gates.get(lane).cloned().unwrap_or_default(),
                };
                self.tasks.spawn(source_lane.run(source, positions));
                inbox
            })
            .collect()
    }

    /// The lanes of shared source `index` for the next flow that reads it.
    /// The first reader starts it (aligned as every reader's watermarks
    /// ask), and a tee per lane hands every message to each reader.
    fn shared(&mut self, index: usize) -> Vec<Inbox> {
        let unread = match self.shared.get_mut(index) {
            Some(read @ SharedRead::Unread { .. }) => std::mem::replace(read, SharedRead::Started(Vec::new().into_iter())),
            _ => SharedRead::Started(Vec::new().into_iter()),
        };
        if let SharedRead::Unread { lanes, readers } = unread {
            let SharedReaders { count: readers, gates } = readers;
            let heads = self.sources(lanes, gates);
            let mut per_reader: Vec<Vec<Inbox>> = (0..readers).map(|_| Vec::with_capacity(heads.len())).collect();
            for inbox in heads {
                if readers == 1 {
                    per_reader[0].push(inbox);
                    continue;
                }
                let mut outs = Vec::with_capacity(readers);
                for lanes in &mut per_reader {
                    let (out, next) = channel();
                    outs.push(out);
                    lanes.push(next);
                }
                self.tasks.spawn(run_tee(inbox, outs));
            }
            self.shared[index] = SharedRead::Started(per_reader.into_iter());
        }
        match self.shared.get_mut(index) {
            Some(SharedRead::Started(readers)) => readers.next().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Repartitions each input's lanes by its key into `p` lanes whose inboxes
    /// tell the inputs apart (one edge per upstream lane and downstream lane).
    fn exchange(&mut self, inputs: Vec<(Vec<Inbox>, ExchangeKey)>, p: usize) -> Vec<Inbox> {
        let groups: Vec<usize> = inputs.iter().map(|(heads, _)| heads.len()).collect();
        let upstream: usize = groups.iter().sum();
        // Per downstream lane, one sender per upstream lane.
        let mut senders: Vec<std::vec::IntoIter<mpsc::Sender<Message>>> = Vec::with_capacity(p);
        let mut inboxes = Vec::with_capacity(p);
        for _ in 0..p {
            let (txs, inbox) = grouped_edges(groups.clone(), edge_capacity(upstream));
            senders.push(txs.into_iter());
            inboxes.push(inbox);
        }
        for (heads, key) in inputs {
            let partitioner = Arc::new(KeyPartitioner::new(key, p));
            for inbox in heads {
                let outs = senders.iter_mut().filter_map(|s| s.next()).map(|tx| Outbox { tx }).collect();
                self.tasks.spawn(run_exchange(inbox, Arc::clone(&partitioner), outs));
            }
        }
        inboxes
    }

    fn join(&mut self, join: JoinInput) -> Vec<Inbox> {
        let JoinInput { left, right, left_key, right_key, lanes } = join;
        let left = self.flow(left);
        let right = self.flow(right);
        let p = lanes.len();
        let inboxes = self.exchange(vec![(left, left_key), (right, right_key)], p);
        self.step_over(inboxes, lanes)
    }

    /// Lane `i` of every input feeds lane `i` of the union, one edge each, so
    /// the union's inbox merges their watermarks and aligns their barriers.
    fn union(&mut self, union: UnionInput) -> Vec<Inbox> {
        let UnionInput { inputs, lanes } = union;
        let heads: Vec<Vec<Inbox>> = inputs.into_iter().map(|flow| self.flow(flow)).collect();
        let p = lanes.len();
        let mut senders: Vec<std::vec::IntoIter<mpsc::Sender<Message>>> = Vec::with_capacity(p);
        let mut inboxes = Vec::with_capacity(p);
        for _ in 0..p {
            let (txs, inbox) = grouped_edges(vec![1; heads.len()], edge_capacity(heads.len()));
            senders.push(txs.into_iter());
            inboxes.push(inbox);
        }
        for input in heads {
            for (inbox, lane) in input.into_iter().zip(senders.iter_mut()) {
                if let Some(tx) = lane.next() {
                    self.tasks.spawn(run_forward(inbox, Outbox { tx }));
                }
            }
        }
        self.step_over(inboxes, lanes)
    }

    /// One step (one identity) of `lanes` operators, lane `i` reading inbox `i`.
    fn step_over(&mut self, inboxes: Vec<Inbox>, lanes: Vec<Box<dyn Operator>>) -> Vec<Inbox> {
        let p = lanes.len();
        let id = self.next_operator;
        self.next_operator += 1;
        inboxes
            .into_iter()
            .zip(lanes)
            .enumerate()
            .map(|(lane, (inbox, op))| self.operator(op, inbox, lane, p, id))
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
    /// Restarts the pipeline after a failure as `policy` says, with pipelines
    /// `factory` builds.
    pub fn restart_with(mut self, factory: Box<dyn PipelineFactory>, policy: RestartPolicy) -> Self {
        self.restart = Some(Restart { factory, policy, used: 0 });
        self
    }

    /// Waits until the pipeline ends: `Ok` once a bounded input has been fully
    /// processed and the sink finished, or the first error raised by any step
    /// (once the restart policy, if any, gave up).
    pub async fn wait(&mut self) -> Result<()> {
        loop {
            if self.restarting.is_none() {
                let failure = match self.wait_tasks().await {
                    Err(e) if !matches!(e, EngineError::Cancelled) && !self.stopping => e,
                    other => return other,
                };
                let Some(restart) = self.restart.as_mut().filter(|r| r.used < r.policy.attempts) else { return Err(failure) };
                restart.used += 1;
                self.metrics.query_restarted(&failure.to_string());
                tracing::warn!("query failed ({failure}); restarting in {:?} (attempt {} of {})", restart.policy.delay, restart.used, restart.policy.attempts);
                self.restarting = Some(failure);
            }
            if self.stopping {
                // Stopped while no pipeline ran: it ends with its failure.
                return Err(self.restarting.take().unwrap_or(EngineError::Cancelled));
            }
            let Some(restart) = self.restart.as_mut() else { return Err(self.restarting.take().unwrap_or(EngineError::Cancelled)) };
            tokio::time::sleep(restart.policy.delay).await;
            let rebuilt = restart.factory.rebuild(Arc::clone(&self.metrics)).await;
            self.restarting = None;
            match rebuilt {
                Ok(pipeline) => {
                    let started = Job::start(pipeline);
                    self.tasks = started.tasks;
                    self.control = started.control;
                }
                // Nothing runs: the next turn reports this failure, or
                // restarts again.
                Err(e) => {
                    self.tasks.spawn(async move { Err(e) });
                }
            }
        }
    }

    /// Waits for the current pipeline's tasks.
    async fn wait_tasks(&mut self) -> Result<()> {
        let mut cancelled = false;
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(EngineError::Cancelled)) => cancelled = true,
                Ok(Err(e)) => {
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    return Err(e);
                }
                Err(e) if e.is_cancelled() => cancelled = true,
                Err(e) => {
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
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
        self.stopping = true;
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
    participant: Participant,
    /// Watermark alignment: wait on it before each read.
    /// What the source waits on before reading (watermark alignment).
    gates: Vec<AlignmentGate>,
}

impl SourceLane {
    /// Counts `rows` just read and reports the source's progress.
    fn read(&mut self, source: &dyn Source, rows: usize) {
        self.metrics.add_rows_in(rows);
        self.rows_read += rows as u64;
        let progress = SourceProgress { rows_read: self.rows_read, lag: source.lag(), bad_records: source.bad_records() };
        self.metrics.set_source_progress(self.slot, progress);
    }

    /// Remembers the position reached for checkpoint `id` and stores it.
    async fn checkpoint(&mut self, source: &mut dyn Source, id: u64) -> Result<()> {
        source.on_barrier(id).await?;
        if self.participant.store.is_some() {
            let parts = source.position()?.map(|b| (0, StatePart::lane(b))).into_iter().collect();
            self.participant.store_part(id, parts, 0).await;
        }
        Ok(())
    }

    async fn run(mut self, mut source: Box<dyn Source>, positions: Result<Vec<(usize, StatePart)>>) -> Result<()> {
        let positions: Vec<_> = positions?.into_iter().map(|(_, p)| p.batch).collect();
        if !positions.is_empty() {
            source.restore(positions).await?;
        }
        // Why the source failed, once it has: the query then stops gracefully
        // (what was read before the failure still reaches the sink) and ends
        // with this error.
        let mut failure = None;
        let stopped = loop {
            // A waiting read is dropped when a command arrives (sources are
            // cancel-safe): a barrier must not wait for the next record.
            // Once the source failed it is not read again: it waits for the
            // stop barrier it asked for and sends it on, so the sink ends as
            // after a stop (not as at the end of the input).
            let event = tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(SourceCommand::Barrier(barrier)) => {
                        let checkpointed = self.checkpoint(&mut *source, barrier.id).await;
                        if failure.is_none() {
                            checkpointed?;
                        }
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
                    None => return Err(failure.unwrap_or(EngineError::Cancelled)),
                },
                event = read_aligned(&self.gates, &mut *source), if failure.is_none() => match event {
                    Ok(event) => event,
                    Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
                    Err(e) => {
                        failure = Some(e);
                        let _ = self.control.send(Control::Stop);
                        continue;
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
            self.checkpoint(&mut *source, FINAL_CHECKPOINT).await?;
            self.out.send(Message::Watermark(Watermark::MAX)).await?;
        }
        self.out.send(Message::EndOfStream).await?;
        // Checkpoints after its end still hold its (final) position, and
        // those it took part in may complete after its end.
        while let Some(command) = self.commands.recv().await {
            let done = match command {
                SourceCommand::Complete(id) => source.on_checkpoint_complete(id).await,
                SourceCommand::Barrier(barrier) => self.checkpoint(&mut *source, barrier.id).await,
            };
            // A failed source's own error is the one to report.
            if failure.is_none() {
                done?;
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// The source's next event, once it is not too far ahead of the others.
async fn read_aligned(gates: &[AlignmentGate], source: &mut dyn Source) -> Result<SourceEvent> {
    for gate in gates {
        gate.wait_aligned().await;
    }
    source.next_event().await
}

/// Sends barriers into the sources, collects the checkpoints' parts and tells
/// the sources and the sink when checkpoints complete.
struct Coordinator {
    sources: Vec<mpsc::UnboundedSender<SourceCommand>>,
    /// Per sink, where completed checkpoints go for it to commit.
    sinks: Vec<mpsc::UnboundedSender<u64>>,
    /// The sinks that have not finished.
    sinks_running: usize,
    interval: Option<Duration>,
    last_id: u64,
    collector: Collector,
    metrics: Arc<JobMetrics>,
}

impl Coordinator {
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>, mut acks: mpsc::UnboundedReceiver<Ack>) -> Result<()> {
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
                _ = tick(&mut ticker), if !stopping => match in_flight {
                    None => in_flight = Some(self.inject(BarrierKind::Checkpoint)),
                    // A checkpoint that takes too long is given up, and the
                    // next one goes out.
                    Some(id) if self.collector.abort_if_late(id) => {
                        tracing::warn!("checkpoint {id} did not complete in time and was given up");
                        self.metrics.checkpoint_failed();
                        in_flight = Some(self.inject(BarrierKind::Checkpoint));
                    }
                    Some(_) => {}
                },
                request = control.recv(), if !stopping && !owner_gone => match request {
                    Some(Control::Stop) => {
                        stopping = true;
                        self.inject(BarrierKind::Stop);
                    }
                    None => owner_gone = true,
                },
                ack = acks.recv() => {
                    let Some(ack) = ack else { return Ok(()) };
                    // The sinks are the last steps to end: once they have,
                    // every checkpoint that could complete has.
                    if matches!(ack, Ack::Finished { owner: Owner::Sink(_), .. }) {
                        self.sinks_running = self.sinks_running.saturating_sub(1);
                    }
                    let sinks_done = self.sinks_running == 0;
                    let reports = match self.collector.ack(ack).await {
                        Ok(reports) => reports,
                        Err(e) => {
                            self.metrics.checkpoint_failed();
                            return Err(EngineError::Checkpoint(e.to_string()));
                        }
                    };
                    for report in reports {
                        let id = report.id;
                        if in_flight == Some(id) {
                            in_flight = None;
                        }
                        if self.collector.config().is_some() {
                            self.metrics.checkpoint_completed(report);
                            crate::checkpoint::crash_point(crate::checkpoint::CrashPoint::BeforeCommit, id);
                        }
                        for source in &self.sources {
                            let _ = source.send(SourceCommand::Complete(id));
                        }
                        for sink in &self.sinks {
                            let _ = sink.send(id);
                        }
                    }
                    if sinks_done {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends the next barrier to every source (those that ended report their
    /// final position for it).
    fn inject(&mut self, kind: BarrierKind) -> u64 {
        self.last_id += 1;
        let barrier = Barrier { id: self.last_id, kind };
        self.collector.begin(barrier.id, if kind == BarrierKind::Stop { "stop" } else { "periodic" });
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

async fn run_operator(
    op: Box<dyn Operator>,
    inbox: Inbox,
    out: Outbox,
    memory: MemoryGuard,
    participant: Participant,
    state: Result<Vec<(usize, StatePart)>>,
) -> Result<()> {
    let name = op.name();
    operate(op, inbox, out, memory, participant, state).await.map_err(|e| match e {
        // Errors of DataFusion or Arrow say what failed, not where.
        EngineError::DataFusion(_) | EngineError::Arrow(_) => EngineError::Operator { operator: name, source: Box::new(e) },
        other => other,
    })
}

async fn operate(
    mut op: Box<dyn Operator>,
    mut inbox: Inbox,
    out: Outbox,
    memory: MemoryGuard,
    mut participant: Participant,
    state: Result<Vec<(usize, StatePart)>>,
) -> Result<()> {
    let state = state?;
    if !state.is_empty() {
        op.restore(state)?;
    }
    let mut out = Forwarder { out, last_watermark: None, idle: false };
    let mut emitter = Emitter::default();
    let mut aligned = Duration::ZERO;
    while let Some(event) = inbox.next_event().await {
        match event {
            InboxEvent::Barrier(barrier) => {
                op.on_barrier(barrier, &mut emitter).await?;
                out.forward(emitter.drain()).await?;
                if participant.store.is_some() {
                    let alignment = inbox.alignment_time() - aligned;
                    aligned = inbox.alignment_time();
                    participant.store_part(barrier.id, op.snapshot()?, alignment.as_nanos() as u64).await;
                }
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
                participant.finished();
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

/// Hands each message of a shared source's lane to every flow that reads it
/// (a batch keeps the split it came from, for the readers' first steps).
async fn run_tee(mut inbox: Inbox, outs: Vec<Outbox>) -> Result<()> {
    while let Some(event) = inbox.next_event().await {
        let msg = match event {
            InboxEvent::Batch { batch, .. } => Message::Batch(batch),
            InboxEvent::SplitBatch { tag, batch } => Message::SplitBatch(tag, batch),
            InboxEvent::Watermark(wm) => Message::Watermark(wm),
            InboxEvent::Barrier(b) => Message::Barrier(b),
            InboxEvent::InputEnded(_) | InboxEvent::InputWatermark(..) => continue,
            InboxEvent::End => Message::EndOfStream,
        };
        let end = matches!(msg, Message::EndOfStream);
        for out in &outs {
            out.send(msg.clone()).await?;
        }
        if end {
            return Ok(());
        }
    }
    Err(EngineError::Cancelled)
}

/// Hands a lane's results on to one edge of the next step (the sink's, a union's).
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

/// Writes into the sink and reports each barrier (and the end) as its part of
/// a checkpoint once the sink has made what came before it durable (staged,
/// with checkpoints on); commits what checkpoints completed.
struct SinkTask {
    sink: Box<dyn Sink>,
    /// Which of the pipeline's outputs it writes.
    index: usize,
    metrics: Arc<JobMetrics>,
    participant: Participant,
    /// Completed checkpoints, in order.
    commits: mpsc::UnboundedReceiver<u64>,
    /// The newest checkpoint committed.
    committed: u64,
    /// The last barrier it reported its part of.
    reported: Option<u64>,
}

impl SinkTask {
    /// Checkpoints are on: the sink stages its output and its state goes into them.
    fn checkpoints_on(&self) -> bool {
        self.participant.store.is_some()
    }

    /// Reports the sink's part of checkpoint `id`.
    async fn report(&mut self, id: u64) -> Result<()> {
        if id != FINAL_CHECKPOINT {
            self.reported = Some(id);
        }
        match self.checkpoints_on() {
            true => {
                let state = self.sink.snapshot()?.map(|b| (0, StatePart::lane(b))).into_iter().collect();
                self.participant.store_part(id, state, 0).await;
                Ok(())
            }
            false => {
                self.participant.report(id, Vec::new(), 0);
                Ok(())
            }
        }
    }

    /// Commits completed checkpoints until `id` is (it may already be);
    /// `false` if the coordinator went away first.
    async fn commit_through(&mut self, id: u64) -> Result<bool> {
        while self.committed < id {
            let Some(done) = self.commits.recv().await else { return Ok(false) };
            self.commit(done).await?;
        }
        Ok(true)
    }

    /// Commits the output of the end of the input once a checkpoint holding
    /// it completes: the final one, or one of the other sinks' (of a
    /// statement set) that came after this sink's last barrier, for which
    /// its final part stood in. `false` if the coordinator went away first.
    async fn commit_final(&mut self) -> Result<bool> {
        while self.committed < FINAL_CHECKPOINT {
            let Some(done) = self.commits.recv().await else { return Ok(false) };
            let holds_final = done == FINAL_CHECKPOINT || self.reported.is_none_or(|last| done > last);
            self.commit(if holds_final { FINAL_CHECKPOINT } else { done }).await?;
        }
        Ok(true)
    }

    async fn commit(&mut self, id: u64) -> Result<()> {
        self.sink.commit(id).await?;
        self.committed = self.committed.max(id);
        Ok(())
    }

    async fn run(mut self, mut inbox: Inbox, restored: Result<Option<datafusion::arrow::record_batch::RecordBatch>>) -> Result<()> {
        if self.checkpoints_on() {
            self.sink.begin_checkpoints(restored?).await?;
        }
        // The last barrier reported, and one whose report waits for the end
        // (a sink durable only once finished).
        let mut reported = None;
        let mut deferred = None;
        let mut stopped = false;
        loop {
            let msg = tokio::select! {
                biased;
                done = self.commits.recv() => match done {
                    Some(id) => {
                        self.commit(id).await?;
                        continue;
                    }
                    None => return Err(EngineError::Cancelled),
                },
                msg = inbox.next() => match msg {
                    Some(msg) => msg,
                    None => return Err(EngineError::Cancelled),
                },
            };
            match msg {
                Message::Batch(b) | Message::SplitBatch(_, b) => {
                    self.metrics.add_sink_rows(self.index, b.num_rows());
                    self.sink.write_batch(b).await?;
                }
                Message::Watermark(wm) => {
                    if let Watermark::EventTime(t) = wm {
                        self.metrics.set_watermark(t);
                    }
                    self.sink.on_watermark(wm).await?;
                }
                Message::Barrier(barrier) => {
                    stopped |= barrier.kind == BarrierKind::Stop;
                    self.sink.on_barrier(barrier).await?;
                    if self.sink.durable_at_barriers() {
                        self.report(barrier.id).await?;
                        reported = Some(barrier.id);
                    } else {
                        deferred = Some(barrier.id);
                    }
                }
                Message::EndOfStream => break,
            }
        }
        // After a stop, the stop's checkpoint is committed before the sink
        // finishes, and is the last; at the end of the input, the final
        // checkpoint covers what finishing makes durable.
        if let (Some(id), true) = (reported, stopped) {
            if !self.commit_through(id).await? {
                return Err(EngineError::Cancelled);
            }
        }
        self.sink.finish().await?;
        if let Some(id) = deferred {
            // A sink durable only once finished makes the last barrier's
            // positions (a stop's) committable now.
            self.report(id).await?;
            self.commit_through(id).await?;
        }
        if !stopped {
            self.report(FINAL_CHECKPOINT).await?;
            self.commit_final().await?;
        }
        self.participant.finished();
        Ok(())
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
