//! The HTTP API: handlers, request and response bodies, and the OpenAPI document.

use std::convert::Infallible;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sluice_sql::{SluiceStatement, StatementOutput};
use tokio::sync::broadcast;
use utoipa::{OpenApi, ToSchema};

use super::auth::{require, Role};
use super::queries::{QueryError, QueryInfo, QueryMetrics, QueryState, SourceMetrics};
use super::AppState;

/// An error answer: `{"error": "..."}` with a status code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    pub error: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { status, error: error.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match e {
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::Sql(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// `POST /api/v1/queries` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitQuery {
    /// One SELECT or INSERT INTO statement.
    pub sql: String,
    pub name: Option<String>,
}

/// `GET /api/v1/queries` filter.
#[derive(Debug, Deserialize)]
pub struct ListFilter {
    pub state: Option<String>,
}

/// `POST /api/v1/statements` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StatementRequest {
    /// One DDL or catalog statement: CREATE/DROP TABLE, VIEW, FUNCTION; SHOW; DESCRIBE; EXPLAIN.
    pub sql: String,
}

/// A statement's answer: a message, or columns and rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementResult {
    pub message: Option<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Continuous SQL over event streams"),
    paths(submit_query, list_queries, get_query, query_metrics, stop_query, delete_query, query_results, run_statement),
    components(schemas(SubmitQuery, StatementRequest, StatementResult, QueryInfo, QueryMetrics, SourceMetrics, QueryState, ApiError)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Submit a continuous query.
#[utoipa::path(post, path = "/api/v1/queries", request_body = SubmitQuery,
    responses((status = 201, body = QueryInfo), (status = 400, body = ApiError), (status = 401), (status = 403)))]
pub async fn submit_query(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    Json(body): Json<SubmitQuery>,
) -> Result<(StatusCode, Json<QueryInfo>), ApiError> {
    require(role, Role::Editor)?;
    let info = state.queries.submit(&body.sql, body.name, None).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// List queries, optionally by state (CREATED, RUNNING, STOPPED, FAILED).
#[utoipa::path(get, path = "/api/v1/queries", params(("state" = Option<String>, Query)),
    responses((status = 200, body = Vec<QueryInfo>)))]
pub async fn list_queries(
    State(state): State<AppState>,
    Query(filter): Query<ListFilter>,
) -> Result<Json<Vec<QueryInfo>>, ApiError> {
    let wanted = match filter.state.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None => None,
        Some("CREATED") => Some(QueryState::Created),
        Some("RUNNING") => Some(QueryState::Running),
        Some("STOPPED") => Some(QueryState::Stopped),
        Some("FAILED") => Some(QueryState::Failed),
        Some(other) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("unknown state '{other}'"))),
    };
    Ok(Json(state.queries.list(wanted)))
}

/// One query: state, output schema, error, start time.
#[utoipa::path(get, path = "/api/v1/queries/{id}", responses((status = 200, body = QueryInfo), (status = 404, body = ApiError)))]
pub async fn get_query(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<QueryInfo>, ApiError> {
    Ok(Json(state.queries.get(&id)?))
}

/// A query's counters: rows in and out, late rows, watermark.
#[utoipa::path(get, path = "/api/v1/queries/{id}/metrics", responses((status = 200, body = QueryMetrics), (status = 404)))]
pub async fn query_metrics(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<QueryMetrics>, ApiError> {
    Ok(Json(state.queries.metrics(&id)?))
}

/// Stop a query (it stays listed as STOPPED).
#[utoipa::path(post, path = "/api/v1/queries/{id}/stop", responses((status = 200, body = QueryInfo), (status = 404)))]
pub async fn stop_query(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
) -> Result<Json<QueryInfo>, ApiError> {
    require(role, Role::Editor)?;
    Ok(Json(state.queries.stop(&id)?))
}

/// Stop and forget a query.
#[utoipa::path(delete, path = "/api/v1/queries/{id}", responses((status = 204), (status = 404)))]
pub async fn delete_query(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(role, Role::Editor)?;
    state.queries.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

fn json_rows(batch: &RecordBatch) -> Vec<String> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    if writer.write(batch).and_then(|_| writer.finish()).is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&writer.into_inner()).lines().map(str::to_string).collect()
}

/// Rows as they are produced, one JSON object each; a lagging reader is told how
/// many batches it missed.
fn row_stream(
    recent: Vec<Arc<RecordBatch>>,
    live: Option<broadcast::Receiver<Arc<RecordBatch>>>,
) -> impl Stream<Item = Result<String, String>> {
    let replay = futures::stream::iter(recent.into_iter().flat_map(|b| json_rows(&b)).map(Ok));
    let live = futures::stream::iter(live).flat_map(live_rows);
    replay.chain(live)
}

fn live_rows(rx: broadcast::Receiver<Arc<RecordBatch>>) -> impl Stream<Item = Result<String, String>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(batch) => Some((futures::stream::iter(json_rows(&batch).into_iter().map(Ok)).boxed(), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Some((futures::stream::iter([Err(format!("skipped {n} batches: reading too slowly"))]).boxed(), rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .flatten()
}

/// Results: the most recent ones first, then live rows as they are produced (the
/// stream ends with the query). Server-Sent Events with `Accept: text/event-stream`,
/// NDJSON otherwise.
#[utoipa::path(get, path = "/api/v1/queries/{id}/results",
    responses((status = 200, description = "rows as NDJSON or SSE events, as produced"), (status = 404)))]
pub async fn query_results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (recent, live) = state.queries.subscribe(&id)?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let rows = row_stream(recent, live);
    if wants_sse {
        let events = rows.map(|r| {
            Ok::<_, Infallible>(match r {
                Ok(row) => Event::default().data(row),
                Err(warning) => Event::default().event("warning").data(warning),
            })
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let lines = rows.map(|r| {
        let line = match r {
            Ok(row) => row,
            Err(warning) => serde_json::json!({ "warning": warning }).to_string(),
        };
        Ok::<_, Infallible>(Bytes::from(line + "\n"))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

fn changes_catalog(statement: &SluiceStatement) -> bool {
    use sqlparser::ast::Statement as S;
    match statement {
        SluiceStatement::CreateTable(_) | SluiceStatement::CreateNativeFunction { .. } => true,
        SluiceStatement::Sql(s) => matches!(
            **s,
            S::CreateView(_) | S::Drop { .. } | S::CreateFunction(_) | S::DropFunction(_)
        ),
        SluiceStatement::ShowMetrics => false,
    }
}

/// Run a DDL or catalog statement against the shared catalog.
#[utoipa::path(post, path = "/api/v1/statements", request_body = StatementRequest,
    responses((status = 200, body = StatementResult), (status = 400, body = ApiError), (status = 403)))]
pub async fn run_statement(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    Json(body): Json<StatementRequest>,
) -> Result<Json<StatementResult>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let mut session = state.queries.session();
    let mut statements = session.parse(&body.sql).map_err(|e| bad(e.to_string()))?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        _ => return Err(bad("send exactly one statement".into())),
    };
    let catalog_change = changes_catalog(&statement);
    require(role, if catalog_change { Role::Admin } else { Role::Viewer })?;
    if matches!(&statement, SluiceStatement::Sql(s) if matches!(**s, sqlparser::ast::Statement::Query(_) | sqlparser::ast::Statement::Insert(_)))
    {
        return Err(bad("continuous queries go to POST /api/v1/queries".into()));
    }
    let _guard = state.catalog_writes.lock().await;
    match session.execute(statement).await.map_err(|e| bad(e.to_string()))? {
        StatementOutput::Message(message) => {
            if catalog_change {
                if let Some(store) = &state.store {
                    store
                        .append_catalog_statement(&body.sql)
                        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("saving the catalog: {e}")))?;
                }
            }
            Ok(Json(StatementResult { message: Some(message), columns: vec![], rows: vec![] }))
        }
        StatementOutput::Rows { schema, batches } => {
            let mut rows = Vec::new();
            for b in &batches {
                rows.extend(
                    sluice_connectors::table_printer::format_cells(b)
                        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
                );
            }
            let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
            Ok(Json(StatementResult { message: None, columns, rows }))
        }
        _ => Err(bad("continuous queries go to POST /api/v1/queries".into())),
    }
}
