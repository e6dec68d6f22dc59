//! The server's state directory: what must survive a restart.
//!
//! - `catalog.jsonl`: every statement that changed the catalog, in order, replayed
//!   at start-up;
//! - `queries.json`: the submitted queries; those still running when the server
//!   stopped are started again.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A submitted query as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredQuery {
    pub id: String,
    pub name: Option<String>,
    pub sql: String,
    /// Whether it should run after a restart.
    pub running: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogEntry {
    sql: String,
}

/// Files in the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// Catalog statements in the order they were run.
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
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("catalog.jsonl"))?;
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

    /// Replaces the stored queries (written to a temporary file, then renamed).
    pub fn save_queries(&self, queries: &[StoredQuery]) -> std::io::Result<()> {
        let tmp = self.dir.join(".queries.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(queries)?)?;
        std::fs::rename(tmp, self.dir.join("queries.json"))
    }
}
