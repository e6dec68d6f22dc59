//! Turns a query's checkpoint settings into the engine's [`CheckpointConfig`]:
//! where its checkpoints go, under which name, and which one it resumes from.
//!
//! A query with `execution.checkpointing.interval` set keeps its checkpoints
//! under `<state.checkpoints.dir>/<pipeline.name>`. When that directory holds
//! a completed checkpoint, the query resumes from the newest (or from
//! `execution.savepoint.path`), provided the plan is the one the checkpoint
//! was taken of; a checkpoint of a query that reached the end of its input is
//! not resumed: the query starts over.

use std::path::Path;
use std::sync::Arc;

use sluice_connectors::lake::LakeLocation;
use sluice_connectors::Options;
use sluice_engine::checkpoint::{CheckpointConfig, CheckpointMetadata, CheckpointStore, RestoredState};
use sluice_engine::metrics::format_bytes;
use sluice_engine::Pipeline;

use crate::error::{plan_err, Result, SqlError};
use crate::options::{QueryOptions, CHECKPOINT_DIR, CHECKPOINT_INTERVAL, PIPELINE_NAME, SAVEPOINT_PATH};

/// Sets up `pipeline`'s checkpoints from `options`; returns what the user
/// should hear (that it resumes, or starts over). `default_dir` is used without
/// `state.checkpoints.dir`, `default_name` without `pipeline.name`.
pub(crate) async fn prepare(pipeline: &mut Pipeline, options: &QueryOptions, default_dir: &Path, default_name: &str) -> Result<Vec<String>> {
    let Some(interval) = options.checkpoint_interval else { return Ok(Vec::new()) };
    let blockers = pipeline.checkpoint_blockers();
    if !blockers.is_empty() {
        return plan_err(format!(
            "checkpoints are on ('{CHECKPOINT_INTERVAL}'), but these steps cannot be checkpointed yet: {}. Turn checkpoints off with SET '{CHECKPOINT_INTERVAL}' = '0'",
            blockers.join("; ")
        ));
    }
    let name = options.pipeline_name.clone().unwrap_or_else(|| default_name.to_string());
    let dir = options.checkpoint_dir.clone().unwrap_or_else(|| default_dir.display().to_string());
    let store = open_store(&dir, &name, options)?.retaining(options.checkpoints_retained);
    let fingerprint = pipeline.fingerprint();
    let plan = pipeline.plan_steps();
    let mut notes = Vec::new();
    let chosen = match &options.savepoint_path {
        Some(path) => Some(savepoint(path, options).await?),
        None => latest(&store).await?.map(|meta| (store.clone(), meta)),
    };
    let restored = match chosen {
        Some((_, meta)) if meta.finished && options.savepoint_path.is_some() => {
            return plan_err(format!(
                "SET '{SAVEPOINT_PATH}': checkpoint {} of '{name}' was taken when the query reached the end of its input: there is nothing to resume",
                meta.id
            ));
        }
        Some((_, meta)) if meta.finished => {
            notes.push(format!("'{name}' reached the end of its input in an earlier run: starting over"));
            store.clear().await.map_err(|e| SqlError::Plan(e.to_string()))?;
            None
        }
        Some((from, meta)) => {
            if meta.fingerprint != fingerprint {
                return plan_err(format!(
                    "checkpoint {} of '{name}' in {} was taken of another plan ({}). Give the query a new name (SET '{PIPELINE_NAME}'), or delete that directory to start over",
                    meta.id,
                    from.location(),
                    plan_change(&meta.plan, &plan)
                ));
            }
            let state = RestoredState::load(&from, &meta).await.map_err(|e| SqlError::Plan(e.to_string()))?;
            notes.push(format!(
                "resuming '{name}' from checkpoint {} ({} of state, taken at {} with {} lane{}) in {}",
                meta.id,
                format_bytes(meta.bytes()),
                chrono_millis(meta.completed_ms),
                meta.parallelism,
                if meta.parallelism == 1 { "" } else { "s" },
                from.location()
            ));
            Some(Arc::new(state))
        }
        None => None,
    };
    pipeline.options.checkpoint_interval = Some(interval);
    // A run that starts over, or from an older checkpoint, numbers its
    // checkpoints after every one the directory holds.
    let last_id = store.last_id().await.map_err(|e| SqlError::Plan(e.to_string()))?;
    pipeline.checkpoints = Some(CheckpointConfig { store, pipeline: name, fingerprint, plan, restored, timeout: options.checkpoint_timeout, last_id });
    Ok(notes)
}

/// The checkpoints of query `name` under `dir` (a path, `file://` or `s3://`
/// URL; S3 settings from `SET 's3.*'`, else the `AWS_*` variables).
fn open_store(dir: &str, name: &str, options: &QueryOptions) -> Result<CheckpointStore> {
    let bad = |e: &dyn std::fmt::Display| SqlError::Plan(format!("SET '{CHECKPOINT_DIR}' = '{dir}': {e}"));
    let location = LakeLocation::parse(dir, &mut Options::new("checkpoints", options.s3.clone())).map_err(|e| bad(&e))?;
    let (store, prefix) = location.open().map_err(|e| bad(&e))?;
    let root = prefix.clone().join(name);
    Ok(CheckpointStore::new(store, root, format!("{}/{name}", dir.trim_end_matches('/'))))
}

async fn latest(store: &CheckpointStore) -> Result<Option<CheckpointMetadata>> {
    store.latest().await.map_err(|e| SqlError::Plan(e.to_string()))
}

/// The checkpoint `path` names: a checkpoint's directory (`.../chk-000...7`).
async fn savepoint(path: &str, options: &QueryOptions) -> Result<(CheckpointStore, CheckpointMetadata)> {
    let trimmed = path.trim_end_matches('/');
    let invalid = || SqlError::Plan(format!("SET '{SAVEPOINT_PATH}' = '{path}': not a checkpoint's directory (<dir>/<pipeline name>/chk-<id>)"));
    let (query_dir, checkpoint) = trimmed.rsplit_once('/').ok_or_else(invalid)?;
    let id: u64 = checkpoint.strip_prefix("chk-").and_then(|n| n.parse().ok()).ok_or_else(invalid)?;
    let (dir, name) = query_dir.rsplit_once('/').unwrap_or(("", query_dir));
    let store = open_store(if dir.is_empty() { "." } else { dir }, name, options)?;
    let meta = store
        .metadata(id)
        .await
        .map_err(|e| SqlError::Plan(e.to_string()))?
        .ok_or_else(|| SqlError::Plan(format!("SET '{SAVEPOINT_PATH}' = '{path}': that checkpoint never completed (it has no _metadata.json)")))?;
    Ok((store, meta))
}

/// What differs between the plan a checkpoint was taken of and the new one.
fn plan_change(old: &[String], new: &[String]) -> String {
    let gone: Vec<&String> = old.iter().filter(|l| !new.contains(l)).collect();
    let added: Vec<&String> = new.iter().filter(|l| !old.contains(l)).collect();
    let mut parts = Vec::new();
    if !gone.is_empty() {
        parts.push(format!("it had {}", gone.iter().map(|l| format!("'{}'", l.trim())).collect::<Vec<_>>().join(", ")));
    }
    if !added.is_empty() {
        parts.push(format!("the new plan has {}", added.iter().map(|l| format!("'{}'", l.trim())).collect::<Vec<_>>().join(", ")));
    }
    if parts.is_empty() {
        "the same steps in another order".to_string()
    } else {
        parts.join("; ")
    }
}

fn chrono_millis(ms: i64) -> String {
    sluice_engine::time::format_nanos(ms.saturating_mul(1_000_000))
}
