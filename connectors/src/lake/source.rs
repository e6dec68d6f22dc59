//! Reads a lake back as a bounded source: its committed Parquet files, listed
//! when the query first reads, with the partition columns filled from the
//! `name=value` directories (see `crate::hive`).
//!
//! Only committed data is read: `.parquet` files whose path has no part
//! starting with `.` or `_`, so never a checkpointed writer's staged
//! `.part-….parquet.staged` files (nor `_SUCCESS` markers or `_temporary`
//! directories of other writers). Files written after the listing are not
//! read: the source ends with the files it found. Lanes share the files by
//! their place in the sorted listing, as the file source's lanes do, and a
//! checkpoint records how many rows of each file were returned (the file
//! source's position rows), so a restored query skips what it read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use sluice_engine::{EngineError, Source};

use super::LakeLocation;
use crate::conform::Conformer;
use crate::error::{ConnectorError, Result};
use crate::file::position::{position_batch, positions_from, FilePosition};
use crate::file_table::{is_data_file, relative_to};
use crate::hive::PartitionColumns;
use crate::registry::Shard;

/// Rows per batch read.
const BATCH_ROWS: usize = 8192;

/// The file being read.
struct Current {
    path: String,
    reader: ParquetRecordBatchReader,
    conformer: Conformer,
    values: Vec<ScalarValue>,
    /// Rows returned so far (a restored reader counts those it skipped).
    rows: u64,
}

/// What the first read lists.
struct Listing {
    /// This lane's files not yet opened, by store path.
    pending: VecDeque<StorePath>,
    partitions: PartitionColumns,
}

/// A bounded source over a lake's committed files.
pub struct LakeSource {
    table: String,
    location: LakeLocation,
    schema: SchemaRef,
    shard: Shard,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    listing: Option<Listing>,
    current: Option<Current>,
    /// Files of this lane read to their end (restored ones included).
    finished: Vec<FilePosition>,
    /// Positions a checkpoint holds, applied when the files are listed.
    restored: BTreeMap<String, FilePosition>,
    /// Files a restored source goes on reading from a row, by path.
    resume: BTreeMap<String, FilePosition>,
    /// The position at the last barrier, for the checkpoint.
    at_barrier: Option<RecordBatch>,
}

fn lake_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::connector("lake", e)
}

impl LakeSource {
    /// Shard `shard` of the lake at `location`, read into the declared `schema`.
    pub fn open(table: &str, location: LakeLocation, schema: SchemaRef, shard: Shard) -> Result<Self> {
        if let LakeLocation::Local(root) = &location {
            if !root.is_dir() {
                return Err(ConnectorError::Option {
                    connector: "lake".into(),
                    key: "path".into(),
                    reason: format!("'{}' does not exist: nothing has been written to this lake yet", root.display()),
                });
            }
        }
        let (store, prefix) = location.open()?;
        Ok(LakeSource {
            table: table.to_string(),
            location,
            schema,
            shard,
            store,
            prefix,
            listing: None,
            current: None,
            finished: Vec::new(),
            restored: BTreeMap::new(),
            resume: BTreeMap::new(),
            at_barrier: None,
        })
    }

    /// Lists the committed files; this lane keeps its share, less the files a
    /// restored checkpoint finished.
    async fn list(&mut self) -> sluice_engine::Result<Listing> {
        let mut files = Vec::new();
        let mut listing = self.store.list((!self.prefix.as_ref().is_empty()).then_some(&self.prefix));
        while let Some(meta) = listing.next().await {
            let location = meta.map_err(lake_error)?.location;
            let relative = relative_to(&self.prefix, &location);
            if is_data_file(&relative) {
                files.push((location, relative));
            }
        }
        drop(listing);
        files.sort();
        let partitions = PartitionColumns::discover(&self.schema, files.iter().map(|(_, r)| r.as_str()));
        let mut pending = VecDeque::new();
        for (i, (location, _)) in files.into_iter().enumerate() {
            if i % self.shard.count.max(1) != self.shard.index {
                continue;
            }
            match self.restored.remove(location.as_ref()) {
                Some(p) if p.done => self.finished.push(p),
                Some(p) => {
                    self.resume.insert(p.path.clone(), p);
                    pending.push_back(location);
                }
                None => pending.push_back(location),
            }
        }
        Ok(Listing { pending, partitions })
    }

    /// Opens `location`, from the row a restored position says (if any).
    async fn open_file(&mut self, location: &StorePath, partitions: &PartitionColumns) -> sluice_engine::Result<Current> {
        let path = location.as_ref().to_string();
        let described = self.describe_file(&path);
        let in_file = |e: &dyn std::fmt::Display| lake_error(format!("{described}: {e}"));
        let bytes = self.store.get(location).await.map_err(|e| in_file(&e))?.bytes().await.map_err(|e| in_file(&e))?;
        let skip = self.resume.remove(&path).map_or(0, |p| p.offset);
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| in_file(&e))?;
        let conformer = Conformer::try_new(&self.table, builder.schema(), partitions.file_schema())?;
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .with_offset(usize::try_from(skip).unwrap_or(usize::MAX))
            .build()
            .map_err(|e| in_file(&e))?;
        let values = partitions.values(&relative_to(&self.prefix, location)).map_err(|e| in_file(&e))?;
        Ok(Current { path, reader, conformer, values, rows: skip })
    }

    fn describe_file(&self, path: &str) -> String {
        match &self.location {
            LakeLocation::Local(root) => root.join(path.strip_prefix(self.prefix.as_ref()).unwrap_or(path)).display().to_string(),
            LakeLocation::S3 { bucket, .. } => format!("s3://{bucket}/{path}"),
        }
    }

    fn position_of(current: &Current) -> FilePosition {
        FilePosition { path: current.path.clone(), offset: current.rows, line: 0, done: false }
    }
}

#[async_trait]
impl Source for LakeSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn describe(&self) -> String {
        format!("lake {} (parquet, committed files)", self.location)
    }

    fn reads_whole_input(&self) -> bool {
        true
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn on_barrier(&mut self, _checkpoint: u64) -> sluice_engine::Result<()> {
        let mut positions = self.finished.clone();
        positions.extend(self.current.as_ref().map(Self::position_of));
        // Listed files this lane had not opened yet are absent: read whole on restore.
        self.at_barrier = Some(position_batch(&positions)?);
        Ok(())
    }

    /// Rows of the file source's position schema: this lane's files started so far.
    fn position(&self) -> sluice_engine::Result<Option<RecordBatch>> {
        Ok(self.at_barrier.clone())
    }

    async fn restore(&mut self, positions: Vec<RecordBatch>) -> sluice_engine::Result<()> {
        self.restored = positions_from(&positions)?;
        Ok(())
    }

    /// Cancel-safe: a file leaves the pending list only once it is open, so a
    /// call dropped while listing or fetching moves nothing.
    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        loop {
            if let Some(current) = &mut self.current {
                match current.reader.next() {
                    Some(Ok(batch)) => {
                        current.rows += batch.num_rows() as u64;
                        let conformed = current.conformer.apply(&batch).map_err(|e| lake_error(format!("{}: {e}", current.path)))?;
                        let Some(listing) = &self.listing else { return Err(lake_error("internal: no listing")) };
                        let filled = listing.partitions.fill(&conformed, &current.values).map_err(lake_error)?;
                        return Ok(Some(filled));
                    }
                    Some(Err(e)) => {
                        let path = current.path.clone();
                        return Err(lake_error(format!("{}: {e}", self.describe_file(&path))));
                    }
                    None => {
                        let position = Self::position_of(current);
                        self.finished.push(FilePosition { done: true, ..position });
                        self.current = None;
                    }
                }
                continue;
            }
            if self.listing.is_none() {
                self.listing = Some(self.list().await?);
            }
            let Some(listing) = self.listing.take() else { return Ok(None) };
            let Some(next) = listing.pending.front().cloned() else {
                self.listing = Some(listing);
                return Ok(None);
            };
            // Put back before waiting, so a dropped call keeps the listing.
            let partitions = listing.partitions.clone();
            self.listing = Some(listing);
            let current = self.open_file(&next, &partitions).await?;
            if let Some(listing) = &mut self.listing {
                listing.pending.pop_front();
            }
            self.current = Some(current);
        }
    }
}
