//! The queries a server runs: submission, state, live results, stop and delete.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use arrow::record_batch::RecordBatch;
use chrono::Utc;
use serde::Serialize;
use sluice_engine::metrics::JobMetrics;
use sluice_engine::EngineError;
use sluice_sql::{Catalog, Session, SluiceStatement, StatementOutput};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::store::{Store, StoredQuery};

/// Result batches kept for subscribers that fall behind before they miss some,
/// and replayed to every new subscriber (so a short query's results can still be
/// read after it ended).
const RESULT_BACKLOG: usize = 1024;

/// What a new subscriber reads: recent batches, then live ones while the query runs.
pub type Subscription = (Vec<Arc<RecordBatch>>, Option<broadcast::Receiver<Arc<RecordBatch>>>);

/// The latest results of a query, replayed to new subscribers.
type Backlog = Arc<Mutex<std::collections::VecDeque<Arc<RecordBatch>>>>;

/// Where a query is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum QueryState {
    Created,
    Running,
    Stopped,
    Failed,
}

/// A column of a query's output.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
}

/// A query's counters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryMetrics {
    pub sources: Vec<SourceMetrics>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows_dropped: u64,
    /// Bytes of window state held (accumulators and group keys, all lanes).
    pub state_bytes: u64,
    /// Current watermark (output side), RFC 3339, if any.
    pub watermark: Option<String>,
}

struct Entry {
    info: QueryInfo,
    metrics: Option<Arc<JobMetrics>>,
    results: Option<broadcast::Sender<Arc<RecordBatch>>>,
    backlog: Backlog,
    stop: CancellationToken,
}

/// Why a query could not be submitted or found.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    #[error("no query with id '{0}'")]
    NotFound(String),
}

/// All queries of the server, sharing one catalog.
pub struct QueryManager {
    catalog: Arc<RwLock<Catalog>>,
    entries: Mutex<BTreeMap<String, Entry>>,
    store: Option<Store>,
}

fn new_id() -> String {
    format!("q{:016x}", rand::random::<u64>())
}

impl QueryManager {
    pub fn new(catalog: Arc<RwLock<Catalog>>, store: Option<Store>) -> Arc<Self> {
        Arc::new(QueryManager { catalog, entries: Mutex::new(BTreeMap::new()), store })
    }

    /// A session over the server's catalog.
    pub fn session(&self) -> Session {
        Session::new(Arc::clone(&self.catalog))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a continuous query (a SELECT or INSERT INTO).
    pub async fn submit(self: &Arc<Self>, sql: &str, name: Option<String>, id: Option<String>) -> Result<QueryInfo, QueryError> {
        let mut session = self.session();
        let mut statements = session.parse(sql).map_err(|e| QueryError::Sql(e.to_string()))?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(s), true) => s,
            _ => return Err(QueryError::Sql("submit exactly one SELECT or INSERT statement".into())),
        };
        if !matches!(&statement, SluiceStatement::Sql(s) if matches!(**s, sqlparser::ast::Statement::Query(_) | sqlparser::ast::Statement::Insert(_)))
        {
            return Err(QueryError::Sql("a query is a SELECT or INSERT INTO; use /api/v1/statements for DDL".into()));
        }
        let id = id.unwrap_or_else(new_id);
        let now = Utc::now().to_rfc3339();
        let output = session.execute(statement).await.map_err(|e| QueryError::Sql(e.to_string()))?;
        let (schema, results, mut job) = match output {
            StatementOutput::Query(q) => (q.schema, Some(q.results), q.job),
            StatementOutput::Insert { job, .. } => (Arc::new(arrow::datatypes::Schema::empty()), None, job),
            _ => return Err(QueryError::Sql("the statement did not start a query".into())),
        };
        let (tx, _) = broadcast::channel(RESULT_BACKLOG);
        let stop = CancellationToken::new();
        let info = QueryInfo {
            id: id.clone(),
            name,
            sql: sql.to_string(),
            state: QueryState::Running,
            error: None,
            created_at: now.clone(),
            started_at: Some(now),
            schema: schema
                .fields()
                .iter()
                .map(|f| Column { name: f.name().clone(), data_type: sluice_sql::session::sql_type_name(f.data_type()) })
                .collect(),
        };
        let metrics = job.metrics_handle();
        let backlog: Backlog = Arc::default();
        self.lock().insert(
            id.clone(),
            Entry {
                info: info.clone(),
                metrics: Some(metrics),
                results: Some(tx.clone()),
                backlog: Arc::clone(&backlog),
                stop: stop.clone(),
            },
        );
        self.persist();
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let status = match results {
                Some(mut results) => {
                    loop {
                        tokio::select! {
                            batch = results.recv() => match batch {
                                Some(b) => {
                                    // Under the backlog lock, so a subscriber sees each batch once.
                                    let b = Arc::new(b);
                                    let mut backlog = backlog.lock().unwrap_or_else(|p| p.into_inner());
                                    if backlog.len() == RESULT_BACKLOG {
                                        backlog.pop_front();
                                    }
                                    backlog.push_back(Arc::clone(&b));
                                    let _ = tx.send(b);
                                }
                                None => break,
                            },
                            _ = stop.cancelled() => break,
                        }
                    }
                    if stop.is_cancelled() {
                        job.cancel();
                        Ok(())
                    } else {
                        job.wait().await
                    }
                }
                None => {
                    let ended = tokio::select! {
                        r = job.wait() => Some(r),
                        _ = stop.cancelled() => None,
                    };
                    ended.unwrap_or_else(|| {
                        job.cancel();
                        Ok(())
                    })
                }
            };
            drop(tx);
            manager.finish(&id, status);
        });
        Ok(info)
    }

    fn finish(&self, id: &str, status: Result<(), EngineError>) {
        {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(id) else { return };
            entry.results = None;
            match status {
                Ok(()) | Err(EngineError::Cancelled) => entry.info.state = QueryState::Stopped,
                Err(e) => {
                    entry.info.state = QueryState::Failed;
                    entry.info.error = Some(e.to_string());
                }
            }
        }
        self.persist();
    }

    fn persist(&self) {
        let Some(store) = &self.store else { return };
        let stored: Vec<StoredQuery> = self
            .lock()
            .values()
            .map(|e| StoredQuery {
                id: e.info.id.clone(),
                name: e.info.name.clone(),
                sql: e.info.sql.clone(),
                running: e.info.state == QueryState::Running,
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
            })
            .collect();
        Ok(QueryMetrics {
            sources,
            rows_in: m.map_or(0, |m| m.rows_in),
            rows_out: m.map_or(0, |m| m.rows_out),
            late_rows_dropped: m.map_or(0, |m| m.late_rows),
            state_bytes: m.map_or(0, |m| m.state_bytes),
            watermark: m.and_then(|m| m.watermark).map(sluice_engine::time::format_nanos),
        })
    }

    /// The recent results, then (while the query runs) the live ones.
    pub fn subscribe(&self, id: &str) -> Result<Subscription, QueryError> {
        let entries = self.lock();
        let entry = entries.get(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        let backlog = entry.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let live = entry.results.as_ref().map(|tx| tx.subscribe());
        Ok((backlog.iter().cloned().collect(), live))
    }

    pub fn stop(&self, id: &str) -> Result<QueryInfo, QueryError> {
        let entries = self.lock();
        let entry = entries.get(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        entry.stop.cancel();
        Ok(entry.info.clone())
    }

    pub fn delete(&self, id: &str) -> Result<(), QueryError> {
        let removed = self.lock().remove(id).ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        removed.stop.cancel();
        self.persist();
        Ok(())
    }

    /// Starts again the queries that were running when the server last stopped.
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
            if !q.running {
                continue;
            }
            if let Err(e) = self.submit(&q.sql, q.name.clone(), Some(q.id.clone())).await {
                tracing::error!("resuming query {}: {e}", q.id);
            }
        }
    }
}
