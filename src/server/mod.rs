//! `sluice serve`: a REST server running many continuous queries over one catalog.
//!
//! Routes live under `/api/v1` (see [`api`]); `/healthz` answers without a token,
//! `/metrics` serves Prometheus text (counters labelled by `query` id). The
//! catalog, the server's settings and the submitted queries are kept in a state
//! directory, locked while the server runs, and restored at start-up. Ctrl-C or
//! SIGTERM stops every query gracefully before the server exits.

pub mod api;
pub mod auth;
pub mod queries;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluice_sql::Catalog;

use auth::Tokens;
use queries::QueryManager;
use store::Store;

/// Request bodies larger than this are refused (413).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How `sluice serve` was configured.
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub tokens: Tokens,
    /// `NAME=PATH` plug-in functions loaded into every session.
    pub udfs: Vec<String>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub queries: Arc<QueryManager>,
    pub tokens: Arc<Tokens>,
    pub store: Option<Store>,
    /// Serialises catalog changes so `catalog.jsonl` keeps their order.
    pub catalog_writes: Arc<tokio::sync::Mutex<()>>,
    pub prometheus: Option<PrometheusHandle>,
}

/// The router, for a given state.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/queries", post(api::submit_query).get(api::list_queries))
        .route("/api/v1/queries/{id}", get(api::get_query).delete(api::delete_query))
        .route("/api/v1/queries/{id}/metrics", get(api::query_metrics))
        .route("/api/v1/queries/{id}/checkpoints", get(api::query_checkpoints))
        .route("/api/v1/queries/{id}/stop", post(api::stop_query))
        .route("/api/v1/queries/{id}/results", get(api::query_results))
        .route("/api/v1/statements", post(api::run_statement))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/metrics", get(prometheus_text))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .fallback(api::no_such_endpoint)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn prometheus_text(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    state.prometheus.as_ref().map(|h| h.render()).unwrap_or_default()
}

/// Restores the state directory, binds, prints `listening on ADDR`, and serves
/// until Ctrl-C.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    if config.tokens.is_empty() {
        tracing::warn!("no tokens configured (--token ROLE:TOKEN or SLUICE_TOKENS): every API call will get 401");
    }
    let prometheus = PrometheusBuilder::new().install_recorder().ok();
    let store = Store::open(&config.state_dir).with_context(|| format!("state directory {}", config.state_dir.display()))?;
    let catalog = Arc::new(RwLock::new(Catalog::default()));
    let queries = QueryManager::new(Arc::clone(&catalog), Some(store.clone()));
    let mut session = queries.session();
    for udf in &config.udfs {
        let (name, path) = udf.split_once('=').with_context(|| format!("--udf expects NAME=PATH, got '{udf}'"))?;
        let sql = format!("CREATE OR REPLACE FUNCTION {name} LANGUAGE rust AS '{}'", path.replace('\'', "''"));
        session.execute_script(&sql).await.with_context(|| format!("--udf {udf}"))?;
    }
    for sql in store.catalog_statements()? {
        if let Err(e) = session.execute_script(&sql).await {
            tracing::error!("restoring catalog statement {sql:?}: {e}");
        }
    }
    // The SETs replayed above are the server's settings.
    queries.set_defaults(session.options().clone());
    queries.resume().await;
    let stopping = Arc::clone(&queries);
    let state = AppState {
        queries,
        tokens: Arc::new(config.tokens),
        store: Some(store),
        catalog_writes: Arc::new(tokio::sync::Mutex::new(())),
        prometheus,
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    println!("listening on {}", listener.local_addr()?);
    // Queries stop before the server does: their result streams end with them,
    // so no reader holds the graceful shutdown open.
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("stopping every query");
            stopping.shutdown().await;
        })
        .await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
