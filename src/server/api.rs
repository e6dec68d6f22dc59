//! The HTTP API: handlers, request and response bodies, and the OpenAPI document.
//!
//! Every error, including a request body that cannot be read, answers with the
//! same JSON shape, `{"error": "..."}`, so clients parse one thing.

use std::collections::BTreeMap;
use std::convert::Infallible;

use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_sql::{SluiceStatement, StatementOutput};
use tokio::sync::broadcast;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::{require, Role};
use super::queries::{QueryError, QueryInfo, QueryCheckpoints, CheckpointInfo, QueryMetrics, QueryState, SourceMetrics, Submission, Subscription, Update};
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
            QueryError::Sql(_) | QueryError::Setting(_) => StatusCode::BAD_REQUEST,
            QueryError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A JSON request body; one that cannot be read (bad JSON, wrong content type,
/// too large) is answered with an [`ApiError`] of the rejection's status.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// A path or query-string extractor `E` (`Path`, `Query`) whose rejection
/// (bad percent-encoding, a field twice, a wrong type) is answered with an
/// [`ApiError`] of the rejection's status.
pub struct ApiParts<E>(pub E);

impl<E, S> FromRequestParts<S> for ApiParts<E>
where
    E: FromRequestParts<S>,
    E::Rejection: IntoResponse,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let response = match E::from_request_parts(parts, state).await {
            Ok(value) => return Ok(ApiParts(value)),
            Err(rejection) => rejection.into_response(),
        };
        let status = response.status();
        let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
        Err(ApiError::new(status, String::from_utf8_lossy(&text)))
    }
}

/// The answer to a path no route has.
pub async fn no_such_endpoint() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (the API is described at /api/v1/openapi.json)")
}

/// The answer to a method a route does not take (its `Allow` header lists those it does).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this endpoint does not take that method")
}

/// `POST /api/v1/queries` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitQuery {
    /// One SELECT or INSERT INTO statement, or one statement set.
    #[schema(min_length = 1)]
    pub sql: String,
    pub name: Option<String>,
    /// Settings for this query over the server's (those `SET` on
    /// `/api/v1/statements`), by name: `{"parallelism": 2, "table.exec.state.ttl": "1 h"}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Only to preview results: the query stops when its last results reader
    /// disconnects, and is not started again after a restart. Default false:
    /// it runs until stopped.
    #[serde(default)]
    pub preview: bool,
}

/// The `{id}` of a query's paths.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueryId {
    /// The query's id, as its submission answered.
    id: String,
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
    #[schema(min_length = 1)]
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
    paths(submit_query, list_queries, get_query, query_metrics, query_checkpoints, stop_query, delete_query, query_results, run_statement),
    components(schemas(SubmitQuery, StatementRequest, StatementResult, QueryInfo, QueryMetrics, QueryCheckpoints, CheckpointInfo, SourceMetrics, QueryState, ApiError)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Every operation takes a bearer token (`--token ROLE:TOKEN`) and answers
/// 401 without a valid one.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        let unauthorized = ResponseBuilder::new()
            .description("no valid bearer token")
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ApiError"))).build())
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options, &mut item.trace];
            for operation in operations.into_iter().flatten() {
                operation.responses.responses.entry("401".to_string()).or_insert_with(|| unauthorized.clone().into());
            }
        }
    }
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Submit a continuous query.
#[utoipa::path(post, path = "/api/v1/queries", request_body = SubmitQuery,
    responses((status = 201, body = QueryInfo), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 413, body = ApiError, description = "the body is over 1 MiB"),
        (status = 415, body = ApiError, description = "the body is not `application/json`"),
        (status = 422, body = ApiError, description = "the body is JSON, but not of this shape"),
        (status = 503, body = ApiError, description = "the server is shutting down")))]
pub async fn submit_query(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    ApiJson(body): ApiJson<SubmitQuery>,
) -> Result<(StatusCode, Json<QueryInfo>), ApiError> {
    require(role, Role::Editor)?;
    let mut settings = state.queries.defaults();
    for (key, value) in &body.settings {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        settings.set(key, &text).map_err(QueryError::from)?;
    }
    let submission = Submission { sql: body.sql, name: body.name, settings, preview: body.preview };
    let info = state.queries.submit(submission, None).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// List queries, optionally by state (CREATED, RUNNING, STOPPED, FAILED).
#[utoipa::path(get, path = "/api/v1/queries",
    params(("state" = Option<QueryState>, Query, description = "Only the queries in this state (any letter case)")),
    responses((status = 200, body = Vec<QueryInfo>), (status = 400, body = ApiError, description = "an unknown state")))]
pub async fn list_queries(
    State(state): State<AppState>,
    ApiParts(Query(filter)): ApiParts<Query<ListFilter>>,
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
#[utoipa::path(get, path = "/api/v1/queries/{id}", params(QueryId), responses((status = 200, body = QueryInfo), (status = 404, body = ApiError)))]
pub async fn get_query(State(state): State<AppState>, ApiParts(Path(QueryId { id })): ApiParts<Path<QueryId>>) -> Result<Json<QueryInfo>, ApiError> {
    Ok(Json(state.queries.get(&id)?))
}

/// A query's counters: rows in and out, late rows, watermark.
#[utoipa::path(get, path = "/api/v1/queries/{id}/metrics", params(QueryId), responses((status = 200, body = QueryMetrics), (status = 404, body = ApiError)))]
pub async fn query_metrics(State(state): State<AppState>, ApiParts(Path(QueryId { id })): ApiParts<Path<QueryId>>) -> Result<Json<QueryMetrics>, ApiError> {
    Ok(Json(state.queries.metrics(&id)?))
}

/// A query's checkpoints: how many completed, the last one's id, duration,
/// size and alignment time, and the one it resumed from.
#[utoipa::path(get, path = "/api/v1/queries/{id}/checkpoints", params(QueryId), responses((status = 200, body = QueryCheckpoints), (status = 404, body = ApiError)))]
pub async fn query_checkpoints(State(state): State<AppState>, ApiParts(Path(QueryId { id })): ApiParts<Path<QueryId>>) -> Result<Json<QueryCheckpoints>, ApiError> {
    Ok(Json(state.queries.checkpoints(&id)?))
}

/// Stop a query gracefully (it stays listed as STOPPED); answers once its sink
/// has made its rows durable.
#[utoipa::path(post, path = "/api/v1/queries/{id}/stop", params(QueryId), responses((status = 200, body = QueryInfo), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn stop_query(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    ApiParts(Path(QueryId { id })): ApiParts<Path<QueryId>>,
) -> Result<Json<QueryInfo>, ApiError> {
    require(role, Role::Editor)?;
    Ok(Json(state.queries.stop(&id).await?))
}

/// Stop and forget a query.
#[utoipa::path(delete, path = "/api/v1/queries/{id}", params(QueryId), responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn delete_query(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    ApiParts(Path(QueryId { id })): ApiParts<Path<QueryId>>,
) -> Result<StatusCode, ApiError> {
    require(role, Role::Editor)?;
    state.queries.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn json_rows(batch: &RecordBatch) -> Vec<String> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    if writer.write(batch).and_then(|_| writer.finish()).is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&writer.into_inner()).lines().map(str::to_string).collect()
}

/// One item of a results stream.
enum Out {
    /// A row, as a JSON object.
    Row(String),
    /// The reader fell behind and missed rows.
    Warning(String),
    /// The query ended normally.
    End,
    /// The query failed.
    Error(String),
}

fn end_of(outcome: Result<(), String>) -> Out {
    match outcome {
        Ok(()) => Out::End,
        Err(e) => Out::Error(e),
    }
}

/// Recent rows, then live ones as they are produced, then how the query ended.
/// The subscription's reader is held until the stream is dropped.
fn updates(subscription: Subscription) -> impl Stream<Item = Out> {
    let Subscription { recent, live, ended, reader } = subscription;
    let replay = futures::stream::iter(recent.into_iter().flat_map(|b| json_rows(&b)).map(Out::Row));
    let tail = match (live, ended) {
        (Some(rx), _) => live_updates(rx).boxed(),
        (None, Some(outcome)) => futures::stream::iter([end_of(outcome)]).boxed(),
        (None, None) => futures::stream::iter([Out::End]).boxed(),
    };
    replay.chain(tail).map(move |out| {
        let _reading = &reader;
        out
    })
}

fn live_updates(rx: broadcast::Receiver<Update>) -> impl Stream<Item = Out> {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let items: Vec<Out> = match rx.recv().await {
            Ok(Update::Batch(batch)) => json_rows(&batch).into_iter().map(Out::Row).collect(),
            Ok(Update::End(outcome)) => return Some((futures::stream::iter(vec![end_of(outcome)]), None)),
            Err(broadcast::error::RecvError::Lagged(n)) => vec![Out::Warning(format!("skipped {n} batches: reading too slowly"))],
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((futures::stream::iter(items), Some(rx)))
    })
    .flatten()
}

/// Results: the most recent ones first, then live rows as they are produced;
/// the stream ends with the query, with its error if it failed. Server-Sent
/// Events with `Accept: text/event-stream` (rows numbered by `id`, then an `end`
/// or `error` event), NDJSON otherwise (a failure ends it with `{"error": "..."}`).
#[utoipa::path(get, path = "/api/v1/queries/{id}/results", params(QueryId),
    responses((status = 200, description = "rows as NDJSON or SSE events, as produced"), (status = 404, body = ApiError)))]
pub async fn query_results(
    State(state): State<AppState>,
    ApiParts(Path(QueryId { id })): ApiParts<Path<QueryId>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let subscription = state.queries.subscribe(&id)?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let items = updates(subscription);
    if wants_sse {
        let mut row = 0u64;
        let events = items.map(move |item| {
            Ok::<_, Infallible>(match item {
                Out::Row(data) => {
                    row += 1;
                    Event::default().id(row.to_string()).data(data)
                }
                Out::Warning(warning) => Event::default().event("warning").data(warning),
                // Data, so that EventSource clients dispatch it.
                Out::End => Event::default().event("end").data("{}"),
                Out::Error(error) => Event::default().event("error").data(error),
            })
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let lines = items.filter_map(|item| async move {
        let line = match item {
            Out::Row(row) => row,
            Out::Warning(warning) => serde_json::json!({ "warning": warning }).to_string(),
            Out::End => return None,
            Out::Error(error) => serde_json::json!({ "error": error }).to_string(),
        };
        Some(Ok::<_, Infallible>(Bytes::from(line + "\n")))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

fn changes_catalog(statement: &SluiceStatement) -> bool {
    use sqlparser::ast::Statement as S;
    match statement {
        SluiceStatement::CreateTable(_) | SluiceStatement::CreateNativeFunction { .. } => true,
        SluiceStatement::Sql(s) => matches!(
            **s,
            S::CreateView(_) | S::Drop { .. } | S::CreateFunction(_) | S::DropFunction(_) | S::Set(_)
        ),
        SluiceStatement::ShowMetrics | SluiceStatement::StatementSet(_) | SluiceStatement::ExplainStatementSet(_) => false,
    }
}

/// Run a DDL or catalog statement against the shared catalog, or `SET` a
/// setting of the server's: queries submitted afterwards run with it unless
/// their submission overrides it. Both are kept across restarts.
#[utoipa::path(post, path = "/api/v1/statements", request_body = StatementRequest,
    responses((status = 200, body = StatementResult), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 413, body = ApiError, description = "the body is over 1 MiB"),
        (status = 415, body = ApiError, description = "the body is not `application/json`"),
        (status = 422, body = ApiError, description = "the body is JSON, but not of this shape")))]
pub async fn run_statement(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    ApiJson(body): ApiJson<StatementRequest>,
) -> Result<Json<StatementResult>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let mut session = state.queries.session();
    let mut statements = session.parse(&body.sql).map_err(|e| bad(e.to_string()))?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        _ => return Err(bad("send exactly one statement".into())),
    };
    let catalog_change = changes_catalog(&statement);
    let is_set = matches!(&statement, SluiceStatement::Sql(s) if matches!(**s, sqlparser::ast::Statement::Set(_)));
    require(role, if catalog_change { Role::Admin } else { Role::Viewer })?;
    if matches!(&statement, SluiceStatement::Sql(s) if matches!(**s, sqlparser::ast::Statement::Query(_) | sqlparser::ast::Statement::Insert(_)))
        || matches!(&statement, SluiceStatement::StatementSet(_))
    {
        return Err(bad("continuous queries (and statement sets) go to POST /api/v1/queries".into()));
    }
    let _guard = state.catalog_writes.lock().await;
    // Under the guard, so concurrent SETs each start from the other's result.
    session.set_options(state.queries.defaults());
    match session.execute(statement).await.map_err(|e| bad(e.to_string()))? {
        StatementOutput::Message(message) => {
            if is_set {
                state.queries.set_defaults(session.options().clone());
            }
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
