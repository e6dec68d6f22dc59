//! The server's state directory: what must survive a restart.
//!
//! - `catalog.jsonl`: every statement that changed the catalog or the server's
//!   settings (`SET`), in order, replayed at start-up;
//! - `queries.json`: the submitted queries with their settings, state and error;
//!   those still running when the server stopped are started again;
//! - `lock`: held (an advisory file lock) while a server uses the directory, so
//!   a second server on the same directory refuses to start instead of running
//!   every query twice.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_sql::QueryOptions;

use super::queries::{Column, QueryState};

/// A submitted query as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredQuery {
    pub id: String,
    pub name: Option<String>,
    pub sql: String,
    /// The settings it was submitted with; absent in files written before
    /// settings were kept (the server's defaults then apply).
    #[serde(default)]
    pub settings: Option<QueryOptions>,
    /// Where it was when last saved: RUNNING queries are started again.
    /// Absent in files written before states were kept: see `running`.
    #[serde(default)]
    pub state: Option<QueryState>,
    /// How files written before states were kept said whether it ran.
    #[serde(default, skip_serializing)]
    pub running: Option<bool>,
    #[serde(default)]
    pub error: Option<String>,
    /// Submitted to preview results: never started again.
    #[serde(default)]
    pub preview: bool,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Its output columns, shown while it is listed.
    #[serde(default)]
    pub schema: Vec<Column>,
}

impl StoredQuery {
    /// Where it was when last saved, in files of any version.
    pub fn state(&self) -> QueryState {
        match (self.state, self.running) {
            (Some(state), _) => state,
            (None, Some(false)) => QueryState::Stopped,
            (None, _) => QueryState::Running,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogEntry {
    sql: String,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another sluice server is using the state directory {0} (its lock file is held)")]
    Locked(PathBuf),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Files in the state directory, locked for this process while any clone lives.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    _lock: Arc<File>,
}

impl Store {
    /// Creates the directory if needed and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.to_path_buf())),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        Ok(Store { dir: dir.to_path_buf(), _lock: Arc::new(lock) })
    }

    /// Catalog statements in the order they were run.
    /// Where queries keep their checkpoints unless they say otherwise.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    pub fn catalog_statements(&self) -> std::io::Result<Vec<String>> {
        let path = self.dir.join("catalog.jsonl");
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<CatalogEntry>(l).ok())
            .map(|e| e.sql)
            .collect())
    }

    pub fn append_catalog_statement(&self, sql: &str) -> std::io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(self.dir.join("catalog.jsonl"))?;
        let line = serde_json::to_string(&CatalogEntry { sql: sql.to_string() })?;
        writeln!(file, "{line}")?;
        file.sync_data()
    }

    pub fn queries(&self) -> std::io::Result<Vec<StoredQuery>> {
        let path = self.dir.join("queries.json");
        if !path.exists() {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// Replaces the stored queries atomically: a temporary file of this write's
    /// own, synced, renamed over `queries.json`, and the rename synced. Callers
    /// serialise their writes (see `QueryManager::persist`).
    pub fn save_queries(&self, queries: &[StoredQuery]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".queries.json.{}.{:016x}.tmp", std::process::id(), rand::random::<u64>()));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(queries)?)?;
            file.sync_all()?;
            std::fs::rename(&tmp, self.dir.join("queries.json"))?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}
