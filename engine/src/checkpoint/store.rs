//! Where checkpoints are kept: a directory per query name on an object store
//! (a local directory or S3), a subdirectory per checkpoint, Arrow IPC files
//! for state and `_metadata.json`, written last, for the checkpoint itself.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::metadata::{CheckpointMetadata, Owner, PartRef};
use super::StatePart;

/// The column a keyed part's file stores each row's key group in.
const KEY_GROUP_COLUMN: &str = "__sluice_key_group";
const METADATA_FILE: &str = "_metadata.json";
/// Completed checkpoints kept by default; older ones are deleted once a newer
/// completes.
pub const DEFAULT_RETAINED: usize = 2;

/// A checkpoint store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("checkpoint store {location}: {message}")]
    Io { location: String, message: String },
    #[error("checkpoint {location}: {message}")]
    Corrupt { location: String, message: String },
}

/// The checkpoints of one query.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// The query's directory.
    root: Path,
    /// How users name that directory (a URL), for messages.
    display: String,
    /// Completed checkpoints kept (at least one).
    retained: usize,
}

fn checkpoint_dir(id: u64) -> String {
    format!("chk-{id:020}")
}

impl CheckpointStore {
    /// The checkpoints under `root` of `store`; `display` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, display: impl Into<String>) -> Self {
        CheckpointStore { store, root, display: display.into(), retained: DEFAULT_RETAINED }
    }

    /// Keeps the newest `n` completed checkpoints (at least one).
    pub fn retaining(mut self, n: usize) -> Self {
        self.retained = n.max(1);
        self
    }

    /// Where the checkpoints are, as the user named it.
    pub fn location(&self) -> &str {
        &self.display
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { location: self.display.clone(), message: e.to_string() }
    }

    fn path(&self, id: u64, file: &str) -> Path {
        self.root.clone().join(checkpoint_dir(id)).join(file)
    }

    /// Writes one table of a step's state in one lane.
    pub async fn write_part(&self, id: u64, owner: Owner, lane: usize, table: usize, parts: &[StatePart]) -> Result<PartRef, StoreError> {
        let keyed = parts.iter().any(|p| p.key_groups.is_some());
        // A name no other write uses: a write of a run that failed may land
        // after a new run reused the checkpoint's id, and must not replace
        // the new run's part (the metadata names the files it stands for).
        let unique = unique_suffix();
        let file = match owner {
            Owner::Source(n) => format!("source-{n}-lane-{lane}-{table}-{unique}.arrow"),
            Owner::Operator(n) => format!("operator-{n}-lane-{lane}-{table}-{unique}.arrow"),
            Owner::Sink(n) => format!("sink-{n}-lane-{lane}-{table}-{unique}.arrow"),
        };
        let mut buffer = Vec::new();
        let mut rows = 0;
        if let Some(first) = parts.first() {
            let mut fields: Vec<Arc<Field>> = first.batch.schema().fields().iter().cloned().collect();
            if keyed {
                fields.push(Arc::new(Field::new(KEY_GROUP_COLUMN, DataType::UInt32, false)));
            }
            let schema = Arc::new(Schema::new(fields));
            let mut writer = FileWriter::try_new(&mut buffer, &schema).map_err(|e| self.io(e))?;
            for part in parts {
                let mut columns: Vec<ArrayRef> = part.batch.columns().to_vec();
                if keyed {
                    let groups = part
                        .key_groups
                        .clone()
                        .unwrap_or_else(|| UInt32Array::from(vec![0; part.batch.num_rows()]));
                    columns.push(Arc::new(groups));
                }
                let batch = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| self.io(e))?;
                rows += batch.num_rows();
                writer.write(&batch).map_err(|e| self.io(e))?;
            }
            writer.finish().map_err(|e| self.io(e))?;
        }
        let bytes = buffer.len() as u64;
        self.store.put(&self.path(id, &file), PutPayload::from(buffer)).await.map_err(|e| self.io(e))?;
        Ok(PartRef { owner, lane, table, file, rows, bytes, keyed })
    }

    /// The same part in checkpoint `to` as in checkpoint `from`.
    pub async fn copy_part(&self, from: u64, to: u64, part: &PartRef) -> Result<PartRef, StoreError> {
        self.store.copy(&self.path(from, &part.file), &self.path(to, &part.file)).await.map_err(|e| self.io(e))?;
        Ok(part.clone())
    }

    /// Reads a part back as one batch (`None` for an empty part).
    pub async fn read_part(&self, id: u64, part: &PartRef) -> Result<Option<StatePart>, StoreError> {
        let location = self.path(id, &part.file);
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt { location: format!("{}/{location}", self.display), message: e.to_string() };
        let bytes = self.store.get(&location).await.map_err(|e| self.io(e))?.bytes().await.map_err(|e| self.io(e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(|e| corrupt(&e))?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| corrupt(&e))?;
        let batch = concat_batches(&schema, &batches).map_err(|e| corrupt(&e))?;
        if !part.keyed {
            return Ok(Some(StatePart::lane(batch)));
        }
        let Ok(index) = schema.index_of(KEY_GROUP_COLUMN) else {
            return Err(corrupt(&"a keyed part without key groups"));
        };
        let groups = batch
            .column(index)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .cloned()
            .ok_or_else(|| corrupt(&"key groups are not UInt32"))?;
        let mut batch = batch;
        batch.remove_column(index);
        Ok(Some(StatePart::keyed(batch, groups)))
    }

    /// Completes checkpoint `meta.id` by writing its metadata, then deletes
    /// checkpoints older than those retained.
    pub async fn complete(&self, meta: &CheckpointMetadata) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(meta).map_err(|e| self.io(e))?;
        self.store.put(&self.path(meta.id, METADATA_FILE), PutPayload::from(json)).await.map_err(|e| self.io(e))?;
        let ids = self.checkpoint_ids().await?;
        let completed: Vec<u64> = {
            let mut done = Vec::new();
            for id in ids.iter().rev() {
                if self.exists(&self.path(*id, METADATA_FILE)).await? {
                    done.push(*id);
                }
            }
            done
        };
        // Keep the newest completed ones, and anything newer than them (in progress).
        if let Some(oldest_kept) = completed.get(self.retained - 1).or(completed.last()) {
            for id in ids.into_iter().filter(|id| id < oldest_kept) {
                self.delete_checkpoint(id).await?;
            }
        }
        Ok(())
    }

    async fn exists(&self, path: &Path) -> Result<bool, StoreError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Ids of every checkpoint directory, completed or not, ascending.
    async fn checkpoint_ids(&self) -> Result<Vec<u64>, StoreError> {
        let listing = self.store.list_with_delimiter(Some(&self.root)).await.map_err(|e| self.io(e))?;
        let mut ids: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix("chk-")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn delete_checkpoint(&self, id: u64) -> Result<(), StoreError> {
        let prefix = self.root.clone().join(checkpoint_dir(id));
        let files: Vec<_> = self.store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await.map_err(|e| self.io(e))?;
        for file in files {
            match self.store.delete(&file).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    /// The highest id of any periodic or stop checkpoint directory, completed
    /// or not (0: none; a finished run's final checkpoint does not count).
    pub async fn last_id(&self) -> Result<u64, StoreError> {
        let ids = self.checkpoint_ids().await?;
        Ok(ids.into_iter().filter(|id| *id != crate::runtime::FINAL_CHECKPOINT).max().unwrap_or(0))
    }

    /// The newest completed checkpoint, if any.
    pub async fn latest(&self) -> Result<Option<CheckpointMetadata>, StoreError> {
        for id in self.checkpoint_ids().await?.into_iter().rev() {
            if let Some(meta) = self.metadata(id).await? {
                return Ok(Some(meta));
            }
        }
        Ok(None)
    }

    /// The metadata of checkpoint `id`; `None` if it never completed.
    pub async fn metadata(&self, id: u64) -> Result<Option<CheckpointMetadata>, StoreError> {
        let path = self.path(id, METADATA_FILE);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| self.io(e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { location: format!("{}/{path}", self.display), message: e.to_string() })
    }

    /// Deletes every checkpoint of the query (to start it over).
    pub async fn clear(&self) -> Result<(), StoreError> {
        for id in self.checkpoint_ids().await? {
            self.delete_checkpoint(id).await?;
        }
        Ok(())
    }
}

/// A suffix no other part file gets: the process, the time, and a counter.
fn unique_suffix() -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}
