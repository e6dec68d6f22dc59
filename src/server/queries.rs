//! The queries a server runs: submission with their settings, state, live
//! results, graceful stop and delete, and what of them survives a restart.
//!
//! A query is submitted either to keep running (an `INSERT INTO` job, a
//! dashboard's query) or only to preview its results (`preview`, as the remote
//! shell does). A preview query ends when its last reader leaves and is never
//! started again after a restart, so a client that goes away leaves nothing
//! running. Every stop (REST stop or delete, preview readers gone, server
//! shutdown) is graceful: the query's sink has made its rows durable before the
//! query is shown as STOPPED.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sluice_engine::metrics::JobMetrics;
use sluice_engine::{EngineError, JobHandle};
use sluice_sql::{Catalog, QueryOptions, Session, SluiceStatement, StatementOutput};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::store::{Store, StoredQuery};

/// Result batches kept for subscribers that fall behind before they miss some,
/// and replayed to every new subscriber (so a short query's results can still be
/// read after it ended).
const RESULT_BACKLOG: usize = 1024;

/// How long a graceful stop may take before the query is cancelled.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A preview query that no reader has subscribed to by then is stopped (its
/// client went away between submitting and reading).
const PREVIEW_FIRST_READER: Duration = Duration::from_secs(60);

/// What a results reader receives, in order.
#[derive(Debug, Clone)]
pub enum Update {
    Batch(Arc<RecordBatch>),
    /// The query ended: `Err` holds its error. Always the last update.
    End(Result<(), String>),
}

/// What a new subscriber reads: recent batches, then live updates while the
/// query runs, or how it ended.
pub struct Subscription {
    pub recent: Vec<Arc<RecordBatch>>,
    pub live: Option<broadcast::Receiver<Update>>,
    /// How the query ended, when it already has.
    pub ended: Option<Result<(), String>>,
    /// Keep it while reading: a preview query stops once no reader holds one.
    pub reader: Reader,
}

/// The latest results of a query, replayed to new subscribers.
type Backlog = Arc<Mutex<VecDeque<Arc<RecordBatch>>>>;

/// Where a query is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum QueryState {
    Created,
    Running,
    Stopped,
    Failed,
}

/// A column of a query's output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// What the API shows of a query.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryInfo {
    pub id: String,
    pub name: Option<String>,
    pub sql: String,
    pub state: QueryState,
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    pub schema: Vec<Column>,
    /// The settings it runs with, by name (`parallelism`, `table.exec.state.ttl`, ...).
    pub settings: BTreeMap<String, String>,
    /// Submitted only to preview results: it stops when its last reader leaves.
    pub preview: bool,
    /// What the user should know about it, found when it started (state that
    /// nothing bounds, for one).
    pub warnings: Vec<String>,
}

/// One source shard's progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SourceMetrics {
    pub lane: usize,
    pub rows_read: u64,
    /// Work waiting at the source: `lag_records` due or available but not read,
    /// or `lag_bytes` of input not yet read; absent when the source cannot tell.
    pub lag_records: Option<u64>,
    pub lag_bytes: Option<u64>,
    /// Records this lane's source dropped or dead-lettered as undecodable.
    pub bad_records: u64,
}

/// A query's counters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryMetrics {
    pub sources: Vec<SourceMetrics>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows_dropped: u64,
    /// Records the sources dropped or dead-lettered as undecodable (`bad_data`).
    pub bad_records: u64,
    /// Bytes of window state held (accumulators and group keys, all lanes).
    pub state_bytes: u64,
    /// Current watermark (output side), RFC 3339, if any.
    pub watermark: Option<String>,
    /// Times it was restarted after a failure ('restart-strategy.type').
    pub restarts: u64,
    /// The failure that caused the last restart.
    pub last_failure: Option<String>,
}

/// One completed checkpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckpointInfo {
    pub id: u64,
    /// From its barrier to its metadata being written.
    pub duration_ms: u64,
    /// Bytes of state stored.
    pub bytes: u64,
    /// Time steps waited for barriers to align, summed over steps.
    pub alignment_ms: u64,
    /// RFC 3339.
    pub completed_at: String,
    /// `periodic`, `stop` or `final` (at the end of the input).
    pub kind: String,
}

impl From<&sluice_engine::checkpoint::CheckpointReport> for CheckpointInfo {
    fn from(r: &sluice_engine::checkpoint::CheckpointReport) -> Self {
        let completed_at = chrono::DateTime::from_timestamp_millis(r.completed_ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        CheckpointInfo { id: r.id, duration_ms: r.duration_ms, bytes: r.bytes, alignment_ms: r.alignment_ms, completed_at, kind: r.kind.clone() }
    }
}

/// A query's checkpoints.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryCheckpoints {
    /// `execution.checkpointing.interval`; absent: checkpoints are off.
    pub interval_ms: Option<u64>,
    pub completed: u64,
    pub failed: u64,
    /// The checkpoint this run of the query resumed from.
    pub restored_from: Option<u64>,
    pub last: Option<CheckpointInfo>,
    /// The latest (at most ten), oldest first.
    pub recent: Vec<CheckpointInfo>,
}

/// What a submission asks for.
#[derive(Debug, Clone)]
pub struct Submission {
    pub sql: String,
    pub name: Option<String>,
    /// The settings it runs with.
    pub settings: QueryOptions,
    pub preview: bool,
}

/// Counts a preview query's readers; the last one to leave stops it.
#[derive(Debug)]
struct Readers {
    count: AtomicUsize,
    ever: AtomicBool,
    preview: bool,
    stop: CancellationToken,
}

/// One reader of a query's results (see [`Subscription::reader`]).
#[derive(Debug)]
pub struct Reader(Arc<Readers>);

impl Reader {
    fn new(readers: &Arc<Readers>) -> Self {
        readers.count.fetch_add(1, Ordering::SeqCst);
        readers.ever.store(true, Ordering::SeqCst);
        Reader(Arc::clone(readers))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.preview {
            self.0.stop.cancel();
        }
    }
}

struct Entry {
    info: QueryInfo,
    options: QueryOptions,
    metrics: Option<Arc<JobMetrics>>,
    results: Option<broadcast::Sender<Update>>,
    backlog: Backlog,
    ended: Option<Result<(), String>>,
    readers: Arc<Readers>,
    /// Becomes true once the query has ended and its state is final.
    done: watch::Receiver<bool>,
    /// Stopped by the server's shutdown: saved as RUNNING, to start again.
    resume: bool,
}

impl Entry {
    /// A query that is not running: restored from the store, or never started.
    fn listed(info: QueryInfo, options: QueryOptions, ended: Option<Result<(), String>>) -> Self {
        let (_, done) = watch::channel(true);
        let readers = Arc::new(Readers {
            count: AtomicUsize::new(0),
            ever: AtomicBool::new(false),
            preview: false,
            stop: CancellationToken::new(),
        });
        Entry { info, options, metrics: None, results: None, backlog: Arc::default(), ended, readers, done, resume: false }
    }
}

/// Why a query could not be submitted or found.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    #[error("{0}")]
    Setting(#[from] sluice_sql::options::SettingError),
    #[error("no query with id '{0}'")]
    NotFound(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// All queries of the server, sharing one catalog.
pub struct QueryManager {
    catalog: Arc<RwLock<Catalog>>,
    entries: Mutex<BTreeMap<String, Entry>>,
    store: Option<Store>,
    /// Settings of submissions that bring none of their own: the server's,
    /// changed by `SET` on the statements endpoint.
    defaults: Mutex<QueryOptions>,
    /// Held from taking a snapshot of the entries until it is saved, so saves
    /// land in order and the last one on disk is the newest.
    persisting: Mutex<()>,
    shutting_down: AtomicBool,
}

fn new_id() -> String {
    format!("q{:016x}", rand::random::<u64>())
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_query(statement: &SluiceStatement) -> bool {
    matches!(statement, SluiceStatement::Sql(s) if matches!(**s, sqlparser::ast::Statement::Query(_) | sqlparser::ast::Statement::Insert(_)))
        || matches!(statement, SluiceStatement::StatementSet(_))
}

impl QueryManager {
    pub fn new(catalog: Arc<RwLock<Catalog>>, store: Option<Store>) -> Arc<Self> {
        Arc::new(QueryManager {
            catalog,
            entries: Mutex::new(BTreeMap::new()),
            store,
            defaults: Mutex::new(QueryOptions::default()),
            persisting: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// A session over the server's catalog, with the server's settings.
    pub fn session(&self) -> Session {
        let mut session = Session::new(Arc::clone(&self.catalog));
        session.set_options(self.defaults());
        if let Some(store) = &self.store {
            session.set_checkpoint_dir(store.checkpoint_dir());
        }
        session
    }

    /// The settings of submissions that bring none of their own.
    pub fn defaults(&self) -> QueryOptions {
        locked(&self.defaults).clone()
    }

    pub fn set_defaults(&self, options: QueryOptions) {
        *locked(&self.defaults) = options;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        locked(&self.entries)
    }

    /// Starts a continuous query (a SELECT or INSERT INTO); `restored` is the
    /// id and creation time of a query started again after a restart.
    pub async fn submit(self: &Arc<Self>, submission: Submission, restored: Option<(String, String)>) -> Result<QueryInfo, QueryError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(QueryError::ShuttingDown);
        }
        let Submission { sql, name, settings, preview } = submission;
        let now = Utc::now().to_rfc3339();
        let (id, created_at) = restored.unwrap_or_else(|| (new_id(), now.clone()));
        let mut session = self.session();
        session.set_options(settings.clone());
        session.set_metrics_label(Some(id.clone()));
        // A query's checkpoints are kept under its id, so it resumes from
        // them when the server starts it again.
        session.set_default_pipeline_name(Some(format!("query-{id}")));
        let mut statements = session.parse(&sql).map_err(|e| QueryError::Sql(e.to_string()))?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(s), true) => s,
            _ => return Err(QueryError::Sql("submit exactly one SELECT, INSERT or statement set".into())),
        };
        if !is_query(&statement) {
            return Err(QueryError::Sql("a query is a SELECT or INSERT INTO; use /api/v1/statements for DDL".into()));
        }
        let output = session.execute(statement).await.map_err(|e| QueryError::Sql(e.to_string()))?;
        let (schema, results, job, warnings) = match output {
            StatementOutput::Query(q) => (q.schema, Some(q.results), q.job, q.warnings),
            StatementOutput::Insert { job, warnings, .. } | StatementOutput::InsertSet { job, warnings, .. } => {
                (Arc::new(arrow::datatypes::Schema::empty()), None, job, warnings)
            }
            _ => return Err(QueryError::Sql("the statement did not start a query".into())),
        };
        let info = QueryInfo {
            id: id.clone(),
            name,
            sql,
            state: QueryState::Running,
            error: None,
            created_at,
            started_at: Some(now),
            schema: schema
                .fields()
                .iter()
                .map(|f| Column { name: f.name().clone(), data_type: sluice_sql::session::sql_type_name(f.data_type()) })
                .collect(),
            settings: settings.to_settings(),
            preview,
            warnings,
        };
        let (tx, _) = broadcast::channel(RESULT_BACKLOG);
        let stop = CancellationToken::new();
        let (done_tx, done) = watch::channel(false);
        let readers = Arc::new(Readers { count: AtomicUsize::new(0), ever: AtomicBool::new(false), preview, stop: stop.clone() });
        let backlog: Backlog = Arc::default();
        self.lock().insert(
            id.clone(),
            Entry {
                info: info.clone(),
                options: settings,
                metrics: Some(job.metrics_handle()),
                results: Some(tx.clone()),
                backlog: Arc::clone(&backlog),
                ended: None,
                readers: Arc::clone(&readers),
                done,
                resume: false,
            },
        );
        self.persist();
        if preview {
            tokio::spawn(async move {
                tokio::time::sleep(PREVIEW_FIRST_READER).await;
                if !readers.ever.load(Ordering::SeqCst) {
                    readers.stop.cancel();
                }
            });
        }
        let forwarder = results.map(|results| tokio::spawn(forward(results, backlog, tx)));
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let status = run_until_stopped(job, stop).await;
            // The sink is gone once the job has ended: the forwarder drains what it sent.
            if let Some(f) = forwarder {
                let _ = f.await;
            }
            manager.finish(&id, status);
            let _ = done_tx.send(true);
        });
        Ok(info)
    }

    fn finish(&self, id: &str, status: Result<(), EngineError>) {
        {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(id) else { return };
            let outcome = match status {
                Ok(()) | Err(EngineError::Cancelled) => {
                    entry.info.state = QueryState::Stopped;
                    Ok(())
                }
                Err(e) => {
                    entry.info.state = QueryState::Failed;
                    entry.info.error = Some(e.to_string());
                    Err(e.to_string())
                }
            };
            if let Some(tx) = entry.results.take() {
                let _ = tx.send(Update::End(outcome.clone()));
            }
            entry.ended = Some(outcome);
        }
        self.persist();
    }

    /// Saves every query's submission, settings, state and error.
    fn persist(&self) {
        let Some(store) = &self.store else { return };
        let _in_order = locked(&self.persisting);
        let stored: Vec<StoredQuery> = self
            .lock()
            .values()
            .map(|e| StoredQuery {
                id: e.info.id.clone(),
                name: e.info.name.clone(),
                sql: e.info.sql.clone(),
                settings: Some(e.options.clone()),
                state: Some(if e.resume { QueryState::Running } else { e.info.state }),
                running: None,
                error: e.info.error.clone(),
                preview: e.info.preview,
                created_at: Some(e.info.created_at.clone()),
                schema: e.info.schema.clone(),
            })
            .collect();
        if let Err(e) = store.save_queries(&stored) {
            tracing::error!("saving queries: {e}");
        }
    }

    pub fn list(&self, state: Option<QueryState>) -> Vec<QueryInfo> {
        self.lock().values().filter(|e| state.is_none_or(|s| e.info.state == s)).map(|e| e.info.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Result<QueryInfo, QueryError> {
        self.lock().get(id).map(|e| e.info.clone()).ok_or_else(|| QueryError::NotFound(id.to_string()))
    }

    /// A query's checkpoints so far (none while checkpoints are off).
    pub fn checkpoints(&self, id: &str) -> Result<QueryCheckpoints, QueryError> {
        let entries = self.lock();
        let entry = entries.get(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        let stats = entry.metrics.as_ref().map(|m| m.checkpoints()).unwrap_or_default();
        let interval = entry.options.checkpoint_interval.map(|d| d.as_millis() as u64);
        Ok(QueryCheckpoints {
            interval_ms: interval,
            completed: stats.completed,
            failed: stats.failed,
            restored_from: stats.restored_from,
            last: stats.last().map(CheckpointInfo::from),
            recent: stats.recent.iter().map(CheckpointInfo::from).collect(),
        })
    }

    pub fn metrics(&self, id: &str) -> Result<QueryMetrics, QueryError> {
        let entries = self.lock();
        let entry = entries.get(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        let m = entry.metrics.as_ref().map(|m| m.snapshot());
        let sources = entry
            .metrics
            .as_ref()
            .map(|m| m.sources())
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(lane, p)| SourceMetrics {
                lane,
                rows_read: p.rows_read,
                lag_records: match p.lag {
                    Some(sluice_engine::SourceLag::Records(n)) => Some(n),
                    _ => None,
                },
                lag_bytes: match p.lag {
                    Some(sluice_engine::SourceLag::Bytes(n)) => Some(n),
                    _ => None,
                },
                bad_records: p.bad_records,
            })
            .collect();
        let (restarts, last_failure) = entry.metrics.as_ref().map(|m| m.restarts()).unwrap_or_default();
        Ok(QueryMetrics {
            restarts,
            last_failure,
            sources,
            rows_in: m.map_or(0, |m| m.rows_in),
            rows_out: m.map_or(0, |m| m.rows_out),
            late_rows_dropped: m.map_or(0, |m| m.late_rows),
            bad_records: m.map_or(0, |m| m.bad_records),
            state_bytes: m.map_or(0, |m| m.state_bytes),
            watermark: m.and_then(|m| m.watermark).map(sluice_engine::time::format_nanos),
        })
    }

    /// The recent results, then (while the query runs) the live ones.
    pub fn subscribe(&self, id: &str) -> Result<Subscription, QueryError> {
        let entries = self.lock();
        let entry = entries.get(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        let backlog = locked(&entry.backlog);
        Ok(Subscription {
            recent: backlog.iter().cloned().collect(),
            live: entry.results.as_ref().map(|tx| tx.subscribe()),
            ended: entry.ended.clone(),
            reader: Reader::new(&entry.readers),
        })
    }

    /// Stops a query gracefully and returns it once it has stopped (its sink
    /// flushed), or as it is after the stop timeout.
    pub async fn stop(&self, id: &str) -> Result<QueryInfo, QueryError> {
        let mut done = {
            let entries = self.lock();
            let entry = entries.get(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
            entry.readers.stop.cancel();
            entry.done.clone()
        };
        let _ = tokio::time::timeout(STOP_TIMEOUT + Duration::from_secs(5), done.wait_for(|d| *d)).await;
        self.get(id)
    }

    /// Stops a query gracefully, then forgets it.
    pub async fn delete(&self, id: &str) -> Result<(), QueryError> {
        self.stop(id).await?;
        self.lock().remove(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        self.persist();
        Ok(())
    }

    /// Stops every query gracefully and waits for them. Queries submitted to
    /// keep running are saved as RUNNING, to start again with the server.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let running: Vec<watch::Receiver<bool>> = {
            let mut entries = self.lock();
            entries
                .values_mut()
                .filter(|e| e.info.state == QueryState::Running)
                .map(|e| {
                    e.resume = !e.info.preview;
                    e.readers.stop.cancel();
                    e.done.clone()
                })
                .collect()
        };
        futures::future::join_all(running.into_iter().map(|mut done| async move {
            let _ = done.wait_for(|d| *d).await;
        }))
        .await;
        self.persist();
    }

    /// Lists the stored queries again, and starts those that were running when
    /// the server last stopped (preview queries excepted), with their settings.
    pub async fn resume(self: &Arc<Self>) {
        let Some(store) = &self.store else { return };
        let stored = match store.queries() {
            Ok(q) => q,
            Err(e) => {
                tracing::error!("reading stored queries: {e}");
                return;
            }
        };
        for q in stored {
            let state = q.state();
            let settings = q.settings.clone().unwrap_or_else(|| self.defaults());
            let created_at = q.created_at.clone().unwrap_or_else(|| Utc::now().to_rfc3339());
            let mut info = QueryInfo {
                id: q.id.clone(),
                name: q.name.clone(),
                sql: q.sql.clone(),
                state,
                error: q.error.clone(),
                created_at,
                started_at: None,
                schema: q.schema.clone(),
                settings: settings.to_settings(),
                preview: q.preview,
                warnings: Vec::new(),
            };
            if state == QueryState::Running {
                if q.preview {
                    info.state = QueryState::Stopped;
                } else {
                    let submission = Submission { sql: q.sql, name: q.name, settings: settings.clone(), preview: false };
                    match self.submit(submission, Some((q.id.clone(), info.created_at.clone()))).await {
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::error!("resuming query {}: {e}", q.id);
                            info.state = QueryState::Failed;
                            info.error = Some(format!("could not be started again after a restart: {e}"));
                        }
                    }
                }
            }
            let ended = match &info.error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
            self.lock().insert(q.id, Entry::listed(info, settings, Some(ended)));
        }
        self.persist();
    }
}

/// Runs a job until it ends or `stop` is cancelled, then stops it gracefully
/// (cancelling it if that takes longer than [`STOP_TIMEOUT`]).
async fn run_until_stopped(mut job: JobHandle, stop: CancellationToken) -> Result<(), EngineError> {
    let ended = tokio::select! {
        r = job.wait() => Some(r),
        _ = stop.cancelled() => None,
    };
    if let Some(status) = ended {
        return status;
    }
    match tokio::time::timeout(STOP_TIMEOUT, job.stop()).await {
        Ok(status) => status,
        Err(_) => {
            job.cancel();
            Err(EngineError::Internal(format!("the query did not stop within {} s and was cancelled", STOP_TIMEOUT.as_secs())))
        }
    }
}

/// Moves result batches into the backlog and to live readers until the query's
/// results channel closes.
async fn forward(mut results: mpsc::Receiver<RecordBatch>, backlog: Backlog, tx: broadcast::Sender<Update>) {
    while let Some(batch) = results.recv().await {
        // Under the backlog lock, so a subscriber sees each batch once.
        let batch = Arc::new(batch);
        let mut backlog = locked(&backlog);
        if backlog.len() == RESULT_BACKLOG {
            backlog.pop_front();
        }
        backlog.push_back(Arc::clone(&batch));
        let _ = tx.send(Update::Batch(batch));
    }
}
