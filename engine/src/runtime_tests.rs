//! Runtime tests: barriers, graceful stop, commits and the memory limit, over
//! sources and sinks that record what the runtime asked of them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::Int64Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::*;
use crate::metrics::JobMetrics;
use crate::pipeline::{Flow, FlowInput, JobOptions, Output, Pipeline, SharedSource, Stage};
use crate::operator::StateBound;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// What a [`CountingSource`] was asked and did.
#[derive(Default, Debug)]
struct SourceLog {
    /// (checkpoint, rows returned before its barrier)
    barriers: Vec<(u64, u64)>,
    /// The positions committed, in order.
    committed: Vec<u64>,
}

/// Returns one-row batches, unbounded unless `limit` is set.
struct CountingSource {
    returned: u64,
    limit: Option<u64>,
    log: Arc<Mutex<SourceLog>>,
    commits: bool,
}

#[async_trait]
impl Source for CountingSource {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    fn describe(&self) -> String {
        "counting".into()
    }
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.limit.is_some_and(|l| self.returned >= l) {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.returned += 1;
        let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![self.returned as i64]))])?;
        Ok(Some(batch))
    }
    fn commits_positions(&self) -> bool {
        self.commits
    }
    async fn on_barrier(&mut self, checkpoint: u64) -> Result<()> {
        self.log.lock().unwrap().barriers.push((checkpoint, self.returned));
        Ok(())
    }
    async fn on_checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let mut log = self.log.lock().unwrap();
        if let Some((_, position)) = log.barriers.iter().find(|(id, _)| *id == checkpoint).copied() {
            log.committed.push(position);
        }
        Ok(())
    }
}

/// What a [`RecordingSink`] received, and what was durable at each barrier.
#[derive(Default, Debug)]
struct SinkLog {
    rows: u64,
    barriers: Vec<(Barrier, u64)>,
    finished: bool,
}

struct RecordingSink(Arc<Mutex<SinkLog>>);

/// A sink whose output is durable only once it has finished.
struct AtTheEndSink(RecordingSink);

#[async_trait]
impl Sink for AtTheEndSink {
    fn describe(&self) -> String {
        "at the end".into()
    }
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        self.0.write_batch(batch).await
    }
    async fn on_barrier(&mut self, barrier: Barrier) -> Result<()> {
        self.0.on_barrier(barrier).await
    }
    fn durable_at_barriers(&self) -> bool {
        false
    }
    async fn finish(&mut self) -> Result<()> {
        self.0.finish().await
    }
}

#[async_trait]
impl Sink for RecordingSink {
    fn describe(&self) -> String {
        "recording".into()
    }
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        self.0.lock().unwrap().rows += batch.num_rows() as u64;
        Ok(())
    }
    async fn on_barrier(&mut self, barrier: Barrier) -> Result<()> {
        let mut log = self.0.lock().unwrap();
        let rows = log.rows;
        log.barriers.push((barrier, rows));
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        self.0.lock().unwrap().finished = true;
        Ok(())
    }
}

struct Harness {
    sources: Vec<Arc<Mutex<SourceLog>>>,
    sink: Arc<Mutex<SinkLog>>,
    job: JobHandle,
}

fn start(lanes: usize, limit: Option<u64>, commits: bool, options: JobOptions, stages: Vec<Stage>) -> Harness {
    let logs: Vec<Arc<Mutex<SourceLog>>> = (0..lanes).map(|_| Arc::default()).collect();
    let sources = logs
        .iter()
        .map(|log| Box::new(CountingSource { returned: 0, limit, log: Arc::clone(log), commits }) as Box<dyn Source>)
        .collect();
    let sink: Arc<Mutex<SinkLog>> = Arc::default();
    let pipeline = Pipeline::new(
        Flow { input: FlowInput::Sources(sources), stages },
        Box::new(RecordingSink(Arc::clone(&sink))),
        schema(),
        JobMetrics::new(),
        options,
    );
    Harness { sources: logs, sink, job: Job::start(pipeline) }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_to_the_sink_finishes_it_and_commits_what_it_received() -> Result<()> {
    let mut h = start(2, None, true, JobOptions::default(), Vec::new());
    let sink = Arc::clone(&h.sink);
    until("rows to flow", || sink.lock().unwrap().rows > 20).await;
    h.job.stop().await?;
    let sink = h.sink.lock().unwrap();
    assert!(sink.finished, "a stop finishes the sink");
    let (stop, durable) = *sink.barriers.last().expect("the stop barrier reached the sink");
    assert_eq!(stop.kind, BarrierKind::Stop);
    assert_eq!(durable, sink.rows, "nothing reaches the sink after the stop barrier");
    assert_eq!(h.job.metrics().rows_out, sink.rows);
    // Each source committed the position of its stop barrier, and together
    // those positions are exactly the rows the sink has.
    let committed: u64 = h.sources.iter().map(|s| *s.lock().unwrap().committed.last().expect("a commit")).sum();
    assert_eq!(committed, sink.rows);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_barriers_commit_only_what_the_sink_made_durable() -> Result<()> {
    let options = JobOptions { checkpoint_interval: Some(Duration::from_millis(20)), ..Default::default() };
    let mut h = start(2, None, false, options, Vec::new());
    let logs = h.sources.clone();
    until("three commits per source", || logs.iter().all(|l| l.lock().unwrap().committed.len() >= 3)).await;
    h.job.stop().await?;
    let sink = h.sink.lock().unwrap();
    let checkpoints: Vec<u64> = sink.barriers.iter().map(|(b, _)| b.id).collect();
    assert!(checkpoints.windows(2).all(|w| w[0] < w[1]), "barriers reach the sink in order: {checkpoints:?}");
    for (barrier, durable) in &sink.barriers {
        let read: u64 = h
            .sources
            .iter()
            .map(|s| s.lock().unwrap().barriers.iter().find(|(id, _)| *id == barrier.id).map_or(0, |b| b.1))
            .sum();
        assert!(read <= *durable, "checkpoint {}: sources read {read} before it, the sink had {durable}", barrier.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_end_commits_the_final_position() -> Result<()> {
    let mut h = start(3, Some(7), false, JobOptions::default(), Vec::new());
    h.job.wait().await?;
    assert_eq!(h.sink.lock().unwrap().rows, 21);
    for log in &h.sources {
        let log = log.lock().unwrap();
        assert_eq!(log.barriers, vec![(FINAL_CHECKPOINT, 7)]);
        assert_eq!(log.committed, vec![7]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_query_that_ended_reports_how_it_ended() -> Result<()> {
    let mut h = start(1, Some(3), false, JobOptions::default(), Vec::new());
    let sink = Arc::clone(&h.sink);
    until("the end", || sink.lock().unwrap().finished).await;
    h.job.stop().await?;
    assert_eq!(h.sink.lock().unwrap().rows, 3);
    Ok(())
}

/// Holds every row it sees, reporting its size as state.
struct Hoarder {
    held: Vec<RecordBatch>,
    state: crate::metrics::StateReporter,
}

#[async_trait]
impl Operator for Hoarder {
    fn name(&self) -> &'static str {
        "hoarder"
    }
    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.held.push(batch);
        self.state.set(self.held.iter().map(|b| b.get_array_memory_size()).sum());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_memory_limit_fails_with_a_clear_error() -> Result<()> {
    let metrics = JobMetrics::new();
    let stage = Stage { exchange: None, lanes: vec![vec![Box::new(Hoarder { held: Vec::new(), state: metrics.state_reporter() })]] };
    let logs = Arc::new(Mutex::new(SourceLog::default()));
    let pipeline = Pipeline::new(
        Flow {
            input: FlowInput::Sources(vec![Box::new(CountingSource { returned: 0, limit: None, log: logs, commits: false })]),
            stages: vec![stage],
        },
        Box::new(RecordingSink(Arc::default())),
        schema(),
        metrics,
        JobOptions { memory_limit: Some(4096), ..Default::default() },
    );
    let mut job = Job::start(pipeline);
    let err = tokio::time::timeout(Duration::from_secs(20), job.wait()).await.expect("the query fails").unwrap_err();
    assert!(matches!(err, EngineError::MemoryLimit { limit: 4096, .. }), "{err}");
    assert!(err.to_string().contains("sluice.memory.limit"), "{err}");
    Ok(())
}

/// Returns `rows` one-row batches, then fails.
struct FailingSource {
    rows: u64,
}

#[async_trait]
impl Source for FailingSource {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    fn describe(&self) -> String {
        "failing".into()
    }
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Err(EngineError::connector("test", "bad record at line 4"));
        }
        self.rows -= 1;
        Ok(Some(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![1]))])?))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_stops_the_query_after_what_it_read_reached_the_sink() -> Result<()> {
    let sink: Arc<Mutex<SinkLog>> = Arc::default();
    let log = Arc::new(Mutex::new(SourceLog::default()));
    let pipeline = Pipeline::new(
        Flow {
            input: FlowInput::Sources(vec![
                Box::new(FailingSource { rows: 3 }),
                // Another lane that would run for ever: the failure stops it.
                Box::new(CountingSource { returned: 0, limit: None, log, commits: false }),
            ]),
            stages: Vec::new(),
        },
        Box::new(RecordingSink(Arc::clone(&sink))),
        schema(),
        JobMetrics::new(),
        JobOptions::default(),
    );
    let mut job = Job::start(pipeline);
    let err = tokio::time::timeout(Duration::from_secs(20), job.wait()).await.expect("the query ends").unwrap_err();
    assert!(err.to_string().contains("bad record at line 4"), "{err}");
    let sink = sink.lock().unwrap();
    assert!(sink.finished, "the sink made what it got durable");
    assert!(sink.rows >= 3, "the failing lane's rows reached the sink: {}", sink.rows);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_durable_only_at_its_end_lets_sources_commit_only_then() -> Result<()> {
    let sink: Arc<Mutex<SinkLog>> = Arc::default();
    let log = Arc::new(Mutex::new(SourceLog::default()));
    let pipeline = Pipeline::new(
        Flow {
            input: FlowInput::Sources(vec![Box::new(CountingSource { returned: 0, limit: None, log: Arc::clone(&log), commits: true })]),
            stages: Vec::new(),
        },
        Box::new(AtTheEndSink(RecordingSink(Arc::clone(&sink)))),
        schema(),
        JobMetrics::new(),
        JobOptions { checkpoint_interval: Some(Duration::from_millis(10)), ..Default::default() },
    );
    let mut job = Job::start(pipeline);
    let seen = Arc::clone(&sink);
    until("a periodic barrier at the sink", || !seen.lock().unwrap().barriers.is_empty()).await;
    job.stop().await?;
    let log = log.lock().unwrap();
    // Not the periodic checkpoint's position: only the stop's, once the sink finished.
    assert_eq!(log.committed.len(), 1, "{log:?}");
    assert_eq!(log.committed[0], sink.lock().unwrap().rows);
    Ok(())
}

/// A source of the numbers 1..=limit, one per batch, that can resume.
struct ResumableSource {
    returned: i64,
    at_barrier: i64,
    limit: i64,
}

#[async_trait]
impl Source for ResumableSource {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    fn describe(&self) -> String {
        "numbers".into()
    }
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.returned >= self.limit {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.returned += 1;
        Ok(Some(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![self.returned]))])?))
    }
    fn resumable(&self) -> bool {
        true
    }
    async fn on_barrier(&mut self, _checkpoint: u64) -> Result<()> {
        self.at_barrier = self.returned;
        Ok(())
    }
    fn position(&self) -> Result<Option<RecordBatch>> {
        Ok(Some(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![self.at_barrier]))])?))
    }
    async fn restore(&mut self, positions: Vec<RecordBatch>) -> Result<()> {
        use datafusion::arrow::array::AsArray;
        let batch = positions.first().ok_or_else(|| EngineError::Internal("no position".into()))?;
        self.returned = batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0);
        Ok(())
    }
}

/// Emits the running sum of its lane's input: its output depends on its state.
struct RunningSum {
    sum: i64,
}

#[async_trait]
impl Operator for RunningSum {
    fn name(&self) -> &'static str {
        "running sum"
    }
    fn state_bound(&self) -> StateBound {
        StateBound::Unbounded
    }
    fn checkpointable(&self) -> bool {
        true
    }
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        use datafusion::arrow::array::AsArray;
        let values = batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let sums: Vec<i64> = values.values().iter().map(|v| {
            self.sum += v;
            self.sum
        }).collect();
        out.emit(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(sums))])?);
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<(usize, StatePart)>> {
        let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![self.sum]))])?;
        Ok(vec![(0, StatePart::lane(batch))])
    }
    fn restore(&mut self, parts: Vec<(usize, StatePart)>) -> Result<()> {
        use datafusion::arrow::array::AsArray;
        for (_, part) in parts {
            self.sum = part.batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0);
        }
        Ok(())
    }
}

/// What readers of a [`StagingSink`]'s output see.
#[derive(Default, Debug)]
struct Visible {
    rows: Vec<i64>,
    /// The newest checkpoint whose rows were made visible.
    committed_through: u64,
}

/// Stages rows per barrier and makes them visible when their checkpoint
/// completes; what it had staged is lost when the query is cancelled.
struct StagingSink {
    current: Vec<i64>,
    staged: Vec<(u64, i64)>,
    visible: Arc<Mutex<Visible>>,
}

fn staged_batch(rows: &[(u64, i64)]) -> Result<RecordBatch> {
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id as i64).collect();
    let values: Vec<i64> = rows.iter().map(|(_, v)| *v).collect();
    Ok(RecordBatch::try_from_iter([
        ("checkpoint", Arc::new(Int64Array::from(ids)) as datafusion::arrow::array::ArrayRef),
        ("value", Arc::new(Int64Array::from(values)) as datafusion::arrow::array::ArrayRef),
    ])?)
}

#[async_trait]
impl Sink for StagingSink {
    fn describe(&self) -> String {
        "staging".into()
    }
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        use datafusion::arrow::array::AsArray;
        self.current.extend(batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().values().iter());
        Ok(())
    }
    async fn on_barrier(&mut self, barrier: Barrier) -> Result<()> {
        self.staged.extend(self.current.drain(..).map(|v| (barrier.id, v)));
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        self.staged.extend(self.current.drain(..).map(|v| (FINAL_CHECKPOINT, v)));
        Ok(())
    }
    fn exactly_once(&self) -> bool {
        true
    }
    async fn begin_checkpoints(&mut self, restored: Option<RecordBatch>) -> Result<()> {
        use datafusion::arrow::array::AsArray;
        if let Some(batch) = restored {
            let ids = batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let values = batch.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            // The restored checkpoint completed, but may not have been
            // committed: its rows staged after the last commit are not visible.
            let mut visible = self.visible.lock().unwrap();
            let through = visible.committed_through;
            for (id, v) in ids.values().iter().zip(values.values().iter()) {
                if *id as u64 > through {
                    visible.rows.push(*v);
                }
            }
        }
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        Ok(Some(staged_batch(&self.staged)?))
    }
    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let (done, later): (Vec<_>, Vec<_>) = self.staged.drain(..).partition(|(id, _)| *id <= checkpoint);
        self.staged = later;
        let mut visible = self.visible.lock().unwrap();
        visible.rows.extend(done.into_iter().map(|(_, v)| v));
        visible.committed_through = visible.committed_through.max(checkpoint);
        Ok(())
    }
}

/// A checkpoint store under `prefix` in a temporary directory (kept while
/// the directory is).
fn temp_store(prefix: &str, name: &str) -> Result<(tempfile::TempDir, crate::checkpoint::CheckpointStore)> {
    let dir = tempfile::tempdir()?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).map_err(|e| EngineError::Internal(e.to_string()))?;
    Ok((dir, crate::checkpoint::CheckpointStore::new(Arc::new(fs), object_store::path::Path::from(prefix), name)))
}

/// The numbers 1..=`limit` through a running sum.
fn summed_numbers(limit: i64) -> Flow {
    Flow {
        input: FlowInput::Sources(vec![Box::new(ResumableSource { returned: 0, at_barrier: 0, limit })]),
        stages: vec![Stage { exchange: None, lanes: vec![vec![Box::new(RunningSum { sum: 0 })]] }],
    }
}

/// A staging sink whose committed rows go to `visible`.
fn staging(visible: &Arc<Mutex<Visible>>) -> Box<dyn Sink> {
    Box::new(StagingSink { current: Vec::new(), staged: Vec::new(), visible: Arc::clone(visible) })
}

/// Runs `pipeline` until three more checkpoints completed, then cancels it
/// (no stop, nothing flushed); returns the latest checkpoint.
async fn crash_after_three_checkpoints(pipeline: Pipeline, store: &crate::checkpoint::CheckpointStore) -> Result<crate::checkpoint::CheckpointMetadata> {
    let mut job = Job::start(pipeline);
    let metrics = job.metrics_handle();
    let after = metrics.checkpoints().completed + 3;
    until("three checkpoints", || metrics.checkpoints().completed >= after).await;
    job.cancel();
    let _ = job.wait().await;
    store.latest().await.map_err(|e| EngineError::Internal(e.to_string()))?.ok_or_else(|| EngineError::Internal("no checkpoint".into()))
}

/// A set's pipeline of `outputs` over `shared_sources`, with barriers every 15 ms.
fn checkpointed_set_of(outputs: Vec<Output>, shared_sources: Vec<SharedSource>) -> Pipeline {
    let options = JobOptions { checkpoint_interval: Some(Duration::from_millis(15)), ..Default::default() };
    Pipeline { outputs, shared_sources, metrics: JobMetrics::new(), options, checkpoints: None }
}

/// `p` checkpointed under `name` into `store`, restored from `restored`.
fn checkpointed_as(mut p: Pipeline, name: &str, store: &crate::checkpoint::CheckpointStore, restored: Option<Arc<RestoredState>>) -> Pipeline {
    p.checkpoints = Some(crate::checkpoint::CheckpointConfig {
        store: store.clone(),
        pipeline: name.into(),
        fingerprint: p.fingerprint(),
        plan: p.plan_steps(),
        restored,
        timeout: crate::checkpoint::DEFAULT_TIMEOUT,
        last_id: 0,
    });
    p
}

fn checkpointed(limit: i64, store: &crate::checkpoint::CheckpointStore, restored: Option<Arc<RestoredState>>, visible: &Arc<Mutex<Visible>>) -> Pipeline {
    let p = Pipeline::new(
        summed_numbers(limit),
        staging(visible),
        schema(),
        JobMetrics::new(),
        JobOptions { checkpoint_interval: Some(Duration::from_millis(15)), ..Default::default() },
    );
    checkpointed_as(p, "test", store, restored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cancelled_after_checkpoints_resumes_with_nothing_lost_or_doubled() -> Result<()> {
    let (_dir, store) = temp_store("q", "test")?;
    let limit = 400;
    let visible: Arc<Mutex<Visible>> = Arc::default();

    // Crash twice: cancel (no stop, nothing flushed) after a few checkpoints.
    let mut restored = None;
    for crash in 0..2 {
        let latest = crash_after_three_checkpoints(checkpointed(limit, &store, restored.clone(), &visible), &store).await?;
        assert!(!latest.finished, "crash {crash} came before the end");
        restored = Some(Arc::new(RestoredState::load(&store, &latest).await.map_err(|e| EngineError::Internal(e.to_string()))?));
    }
    let mut job = Job::start(checkpointed(limit, &store, restored, &visible));
    job.wait().await?;
    assert!(job.metrics_handle().checkpoints().restored_from.is_some());

    let mut rows = visible.lock().unwrap().rows.clone();
    rows.sort_unstable();
    let expected: Vec<i64> = (1..=limit).map(|n| n * (n + 1) / 2).collect();
    assert_eq!(rows, expected, "running sums of 1..={limit}, each once");
    let last = store.latest().await.map_err(|e| EngineError::Internal(e.to_string()))?.expect("the final checkpoint");
    assert!(last.finished);
    Ok(())
}

/// Builds pipelines whose source fails after three rows, `failing` times,
/// then ones that end after three rows.
struct Flaky {
    failing: u32,
    built: Arc<Mutex<u32>>,
    sink: Arc<Mutex<SinkLog>>,
}

impl Flaky {
    fn pipeline(&mut self, metrics: Arc<JobMetrics>) -> Pipeline {
        let mut built = self.built.lock().unwrap();
        *built += 1;
        let source: Box<dyn Source> = if *built <= self.failing {
            Box::new(FailingSource { rows: 3 })
        } else {
            Box::new(CountingSource { returned: 0, limit: Some(3), log: Arc::default(), commits: false })
        };
        Pipeline::new(
            Flow { input: FlowInput::Sources(vec![source]), stages: Vec::new() },
            Box::new(RecordingSink(Arc::clone(&self.sink))),
            schema(),
            metrics,
            JobOptions::default(),
        )
    }
}

#[async_trait]
impl PipelineFactory for Flaky {
    async fn rebuild(&mut self, metrics: Arc<JobMetrics>) -> Result<Pipeline> {
        Ok(self.pipeline(metrics))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_is_restarted_as_its_policy_says_and_then_given_up() -> Result<()> {
    let policy = RestartPolicy { attempts: 2, delay: Duration::from_millis(10) };
    // Fails twice, then succeeds: two restarts, and it ends well.
    let mut flaky = Flaky { failing: 2, built: Arc::default(), sink: Arc::default() };
    let metrics = JobMetrics::new();
    let first = flaky.pipeline(Arc::clone(&metrics));
    let mut job = Job::start(first).restart_with(Box::new(Flaky { failing: 2, built: Arc::clone(&flaky.built), sink: Arc::clone(&flaky.sink) }), policy);
    tokio::time::timeout(Duration::from_secs(20), job.wait()).await.expect("the query ends")?;
    let (restarts, last) = metrics.restarts();
    assert_eq!(restarts, 2);
    assert!(last.is_some_and(|e| e.contains("bad record at line 4")));
    assert!(flaky.sink.lock().unwrap().finished);

    // Fails three times: the policy gives up after two restarts.
    let mut flaky = Flaky { failing: 3, built: Arc::default(), sink: Arc::default() };
    let metrics = JobMetrics::new();
    let first = flaky.pipeline(Arc::clone(&metrics));
    let mut job = Job::start(first).restart_with(Box::new(Flaky { failing: 3, built: Arc::clone(&flaky.built), sink: Arc::clone(&flaky.sink) }), policy);
    let err = tokio::time::timeout(Duration::from_secs(20), job.wait()).await.expect("the query ends").unwrap_err();
    assert!(err.to_string().contains("bad record at line 4"), "{err}");
    assert_eq!(metrics.restarts().0, 2);
    Ok(())
}

/// A [`StagingSink`] whose first barrier takes `stall`.
struct StallingSink {
    inner: StagingSink,
    stall: Option<Duration>,
}

#[async_trait]
impl Sink for StallingSink {
    fn describe(&self) -> String {
        "stalling".into()
    }
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        self.inner.write_batch(batch).await
    }
    async fn on_barrier(&mut self, barrier: Barrier) -> Result<()> {
        if let Some(stall) = self.stall.take() {
            tokio::time::sleep(stall).await;
        }
        self.inner.on_barrier(barrier).await
    }
    async fn finish(&mut self) -> Result<()> {
        self.inner.finish().await
    }
    fn exactly_once(&self) -> bool {
        true
    }
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        self.inner.snapshot()
    }
    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        self.inner.commit(checkpoint).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_takes_too_long_is_given_up_and_the_next_completes() -> Result<()> {
    let (_dir, store) = temp_store("q", "test")?;
    let visible: Arc<Mutex<Visible>> = Arc::default();
    let mut pipeline = checkpointed(i64::MAX, &store, None, &visible);
    pipeline.outputs[0].sink = Box::new(StallingSink {
        inner: StagingSink { current: Vec::new(), staged: Vec::new(), visible: Arc::clone(&visible) },
        stall: Some(Duration::from_millis(400)),
    });
    if let Some(config) = pipeline.checkpoints.as_mut() {
        config.timeout = Duration::from_millis(100);
    }
    let mut job = Job::start(pipeline);
    let metrics = job.metrics_handle();
    until("a checkpoint after the stalled one", || metrics.checkpoints().completed >= 1).await;
    job.stop().await?;
    let stats = metrics.checkpoints();
    assert!(stats.failed >= 1, "the stalled checkpoint was given up: {stats:?}");
    assert!(stats.recent.iter().all(|c| c.id != 1), "checkpoint 1 never completes: {stats:?}");
    assert!(!visible.lock().unwrap().rows.is_empty(), "later checkpoints commit what was staged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_alone_still_ends_its_sink_as_a_stop_not_as_the_end_of_its_input() -> Result<()> {
    let sink: Arc<Mutex<SinkLog>> = Arc::default();
    let pipeline = Pipeline::new(
        Flow { input: FlowInput::Sources(vec![Box::new(FailingSource { rows: 3 })]), stages: Vec::new() },
        Box::new(RecordingSink(Arc::clone(&sink))),
        schema(),
        JobMetrics::new(),
        JobOptions::default(),
    );
    let mut job = Job::start(pipeline);
    let err = tokio::time::timeout(Duration::from_secs(20), job.wait()).await.expect("the query ends").unwrap_err();
    assert!(err.to_string().contains("bad record at line 4"), "{err}");
    let sink = sink.lock().unwrap();
    assert!(sink.finished);
    // A sink that saw no stop barrier would take the end as the input's end
    // (and a lake would replace earlier runs' files with this partial run's).
    assert_eq!(sink.barriers.last().map(|(b, _)| b.kind), Some(BarrierKind::Stop), "{:?}", sink.barriers);
    Ok(())
}

/// State is written in the background (the step goes on); a write that fails
/// still fails the query, naming the checkpoint store, instead of letting a
/// checkpoint complete without that state or the query run on unprotected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_write_that_fails_fails_the_query() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The store's root is a file: no checkpoint directory can be made under it.
    let root = dir.path().join("not-a-directory");
    std::fs::write(&root, b"")?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&root).map_err(|e| EngineError::Internal(e.to_string()))?;
    let store = crate::checkpoint::CheckpointStore::new(Arc::new(fs), object_store::path::Path::from("q"), "test-store");
    let visible: Arc<Mutex<Visible>> = Arc::default();
    let mut job = Job::start(checkpointed(i64::MAX, &store, None, &visible));
    let failed = tokio::time::timeout(Duration::from_secs(30), job.wait()).await.map_err(|_| EngineError::Internal("the query did not fail".into()))?;
    let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("test-store"), "the failure names the store: {message}");
    assert_eq!(job.metrics_handle().checkpoints().completed, 0);
    assert!(visible.lock().unwrap().rows.is_empty(), "nothing was committed");
    Ok(())
}

/// A union of two flows, each a resumable source with a running sum of its
/// own (state in both branches), into a staging sink.
fn checkpointed_union(limits: [i64; 2], store: &crate::checkpoint::CheckpointStore, restored: Option<Arc<RestoredState>>, visible: &Arc<Mutex<Visible>>) -> Result<Pipeline> {
    let branch = |limit| Flow {
        input: FlowInput::Sources(vec![Box::new(ResumableSource { returned: 0, at_barrier: 0, limit })]),
        stages: vec![Stage { exchange: None, lanes: vec![vec![Box::new(RunningSum { sum: 0 })]] }],
    };
    let union = crate::operators::UnionAll::try_new(schema(), &[schema(), schema()])?;
    let p = Pipeline::new(
        Flow {
            input: FlowInput::Union(Box::new(crate::pipeline::UnionInput {
                inputs: limits.into_iter().map(branch).collect(),
                lanes: vec![Box::new(union)],
            })),
            stages: Vec::new(),
        },
        staging(visible),
        schema(),
        JobMetrics::new(),
        JobOptions { checkpoint_interval: Some(Duration::from_millis(15)), ..Default::default() },
    );
    Ok(checkpointed_as(p, "union", store, restored))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_cancelled_after_checkpoints_resumes_each_branch_with_its_own_state() -> Result<()> {
    let (_dir, store) = temp_store("q", "test")?;
    // Branches of different lengths: state restored into the wrong branch
    // would give other sums.
    let limits = [300, 200];
    let visible: Arc<Mutex<Visible>> = Arc::default();
    let first = checkpointed_union(limits, &store, None, &visible)?;
    // Each branch's steps, in order, then the union's.
    let steps = first.plan_steps();
    assert_eq!(steps[..4], ["source: numbers", "running sum", "source: numbers", "running sum"]);
    assert!(steps[4].starts_with("union all of 2 inputs") && steps[5] == "sink: staging", "{steps:?}");

    let mut job = Job::start(first);
    let metrics = job.metrics_handle();
    until("three checkpoints", || metrics.checkpoints().completed >= 3).await;
    job.cancel();
    let _ = job.wait().await;
    let latest = store.latest().await.map_err(|e| EngineError::Internal(e.to_string()))?.expect("a checkpoint");
    assert!(!latest.finished, "the crash came before the end");
    let restored = Some(Arc::new(RestoredState::load(&store, &latest).await.map_err(|e| EngineError::Internal(e.to_string()))?));
    let mut job = Job::start(checkpointed_union(limits, &store, restored, &visible)?);
    job.wait().await?;

    let mut rows = visible.lock().unwrap().rows.clone();
    rows.sort_unstable();
    let mut expected: Vec<i64> = limits.iter().flat_map(|l| (1..=*l).map(|n| n * (n + 1) / 2)).collect();
    expected.sort_unstable();
    assert_eq!(rows, expected, "each branch's running sums, each once");
    Ok(())
}

/// A statement set's pipeline: two outputs over one shared source, each
/// keeping a running sum into a staging sink.
fn checkpointed_set(limit: i64, store: &crate::checkpoint::CheckpointStore, restored: Option<Arc<RestoredState>>, visible: [&Arc<Mutex<Visible>>; 2]) -> Pipeline {
    let output = |visible: &Arc<Mutex<Visible>>| Output {
        flow: Flow {
            input: FlowInput::Shared { source: 0, lanes: 1 },
            stages: vec![Stage { exchange: None, lanes: vec![vec![Box::new(RunningSum { sum: 0 })]] }],
        },
        sink: staging(visible),
        schema: schema(),
    };
    let p = checkpointed_set_of(visible.into_iter().map(output).collect(), vec![SharedSource { lanes: vec![Box::new(ResumableSource { returned: 0, at_barrier: 0, limit })] }]);
    checkpointed_as(p, "set", store, restored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_source_is_read_once_and_every_output_gets_each_row() -> Result<()> {
    let logs: Vec<Arc<Mutex<SourceLog>>> = (0..2).map(|_| Arc::default()).collect();
    let sources = logs
        .iter()
        .map(|log| Box::new(CountingSource { returned: 0, limit: Some(40), log: Arc::clone(log), commits: false }) as Box<dyn Source>)
        .collect();
    let sinks: Vec<Arc<Mutex<SinkLog>>> = (0..3).map(|_| Arc::default()).collect();
    let shared = |stages| Flow { input: FlowInput::Shared { source: 0, lanes: 2 }, stages };
    let lanes = |n: usize| (0..n).map(|_| vec![Box::new(RunningSum { sum: 0 }) as Box<dyn Operator>]).collect();
    let flows = [
        shared(Vec::new()),
        shared(vec![Stage { exchange: None, lanes: lanes(2) }]),
        // A flow with a source of its own, next to the shared one.
        Flow { input: FlowInput::Sources((0..2).map(|_| Box::new(CountingSource { returned: 0, limit: Some(5), log: Arc::default(), commits: false }) as Box<dyn Source>).collect()), stages: Vec::new() },
    ];
    let metrics = JobMetrics::new();
    let pipeline = Pipeline {
        outputs: flows.into_iter().zip(&sinks).map(|(flow, log)| Output { flow, sink: Box::new(RecordingSink(Arc::clone(log))), schema: schema() }).collect(),
        shared_sources: vec![SharedSource { lanes: sources }],
        metrics: Arc::clone(&metrics),
        options: JobOptions::default(),
        checkpoints: None,
    };
    let steps = pipeline.plan_steps();
    assert_eq!(steps.iter().filter(|s| s.starts_with("source:")).count(), 2, "the shared source is one step: {steps:?}");
    let described = pipeline.describe().join("\n");
    assert!(described.contains("read once for every statement") && described.contains("the same read as above"), "{described}");
    let mut job = Job::start(pipeline);
    tokio::time::timeout(Duration::from_secs(20), job.wait()).await.expect("the set ends")?;
    for log in &logs {
        assert_eq!(log.lock().unwrap().barriers, vec![(FINAL_CHECKPOINT, 40)], "each lane read its 40 rows once");
    }
    assert_eq!(metrics.snapshot().rows_in, 2 * 40 + 2 * 5, "each source row is read once");
    assert_eq!(metrics.rows_per_sink(), vec![80, 80, 10]);
    for sink in &sinks {
        assert!(sink.lock().unwrap().finished);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_cancelled_after_checkpoints_resumes_every_output_with_nothing_lost_or_doubled() -> Result<()> {
    let (_dir, store) = temp_store("set", "set")?;
    let limit = 300;
    let visible: [Arc<Mutex<Visible>>; 2] = Default::default();
    let mut restored = None;
    for _ in 0..2 {
        let latest = crash_after_three_checkpoints(checkpointed_set(limit, &store, restored.clone(), [&visible[0], &visible[1]]), &store).await?;
        assert!(latest.parts.iter().any(|p| p.owner == Owner::Sink(1)), "the second sink's part is in the checkpoint");
        restored = Some(Arc::new(RestoredState::load(&store, &latest).await.map_err(|e| EngineError::Internal(e.to_string()))?));
    }
    let mut job = Job::start(checkpointed_set(limit, &store, restored, [&visible[0], &visible[1]]));
    job.wait().await?;
    let expected: Vec<i64> = (1..=limit).map(|n| n * (n + 1) / 2).collect();
    for (i, visible) in visible.iter().enumerate() {
        let mut rows = visible.lock().unwrap().rows.clone();
        rows.sort_unstable();
        assert_eq!(rows, expected, "output {i}: running sums of 1..={limit}, each once");
    }
    Ok(())
}

/// A set of a short and a long INSERT, each from its own numbers into a
/// staging sink through a running sum.
fn short_and_long(store: &crate::checkpoint::CheckpointStore, restored: Option<Arc<RestoredState>>, visible: [&Arc<Mutex<Visible>>; 2]) -> Pipeline {
    let output = |(limit, visible): (i64, &Arc<Mutex<Visible>>)| Output {
        flow: summed_numbers(limit),
        sink: staging(visible),
        schema: schema(),
    };
    let p = checkpointed_set_of([20, 1500].into_iter().zip(visible).map(output).collect(), Vec::new());
    checkpointed_as(p, "short-and-long", store, restored)
}

/// One INSERT of a set reaches its end long before the other: its output is
/// committed with the next checkpoint (its final part standing in for its
/// part of it), checkpoints go on, a stop returns, and a restore from the
/// stop's checkpoint finishes both with each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_short_insert_ended_goes_on_checkpointing_and_stops() -> Result<()> {
    let (_dir, store) = temp_store("set", "set")?;
    let visible: [Arc<Mutex<Visible>>; 2] = Default::default();
    let mut job = Job::start(short_and_long(&store, None, [&visible[0], &visible[1]]));
    let metrics = job.metrics_handle();
    until("the short INSERT's rows committed", || visible[0].lock().unwrap().rows.len() == 20).await;
    let after = metrics.checkpoints().completed + 2;
    until("two more checkpoints", || metrics.checkpoints().completed >= after).await;
    tokio::time::timeout(Duration::from_secs(20), job.stop()).await.expect("the stop returns")?;
    let latest = store.latest().await.map_err(|e| EngineError::Internal(e.to_string()))?.expect("the stop's checkpoint");
    assert!(!latest.finished);
    let short_sink: Vec<_> = latest.parts.iter().filter(|p| p.owner == Owner::Sink(0)).collect();
    assert!(!short_sink.is_empty() && short_sink.iter().all(|p| p.rows > 0), "the short sink's final part is in {}: {:?}", latest.id, latest.parts);
    let long_rows = visible[1].lock().unwrap().rows.len();
    assert!(long_rows < 1500, "stopped before the long INSERT's end ({long_rows} rows)");

    let restored = Arc::new(RestoredState::load(&store, &latest).await.map_err(|e| EngineError::Internal(e.to_string()))?);
    let mut job = Job::start(short_and_long(&store, Some(restored), [&visible[0], &visible[1]]));
    tokio::time::timeout(Duration::from_secs(30), job.wait()).await.expect("the set ends")?;
    for (i, limit) in [20i64, 1500].into_iter().enumerate() {
        let mut rows = visible[i].lock().unwrap().rows.clone();
        rows.sort_unstable();
        let expected: Vec<i64> = (1..=limit).map(|n| n * (n + 1) / 2).collect();
        assert_eq!(rows, expected, "output {i}: running sums of 1..={limit}, each once");
    }
    Ok(())
}
