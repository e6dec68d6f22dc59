//! Writes result batches into partition directories, one Parquet file per
//! partition at a time, completed on size, age, a barrier (a checkpoint or a
//! stop) or the end of the input.
//!
//! Files are named `part-{query}-{run}-{n}.parquet`: `query` identifies the
//! statement (the same for a replay of it), `run` this run of it (a new one each
//! time the query starts) and `n` counts the partition's files. A file, once put,
//! is never overwritten: a restarted unbounded query adds files next to those of
//! its earlier runs. A bounded query that reaches the end of its input, having
//! read all of it from the beginning (files, the generator, Kafka from the
//! earliest offsets; not from a consumer group's offsets), has written its
//! whole result: it then deletes the files earlier runs of the same statement
//! left, so a replayed bounded query leaves exactly its rows, never twice. A
//! stopped run, or one that started where another left off, deletes nothing.
//!
//! With checkpoints on, completed files are staged and renamed to these names
//! only when their checkpoint completes (see `staging`), and a bounded query
//! at its end keeps the files of every run its checkpoints descend from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use sluice_engine::runtime::FINAL_CHECKPOINT;
use sluice_engine::{Barrier, BarrierKind, EngineError, Sink, Watermark};

use super::staging::{self, Staging};
use super::store::join;
use super::{LakeConfig, Partitioning};
use crate::error::Result;

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    rows: usize,
    opened: Instant,
}

/// A sink into a Hive-partitioned Parquet lake.
pub struct LakeSink {
    cfg: LakeConfig,
    partitioning: Partitioning,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    props: WriterProperties,
    open: BTreeMap<String, OpenFile>,
    /// Identifies the query: its files' names start with `part-{query_id}-`.
    query_id: String,
    /// Identifies this run of the query: its files start with `part-{query_id}-{run_id}-`.
    run_id: String,
    /// A stop barrier came: the input did not end, so earlier runs' files stay.
    stopped: bool,
    /// Every source reads its whole input from the beginning (see
    /// `Sink::set_whole_input`): only then may the end remove earlier runs' files.
    whole_input: bool,
    /// The input ended and this run has the whole result: once its final
    /// checkpoint is committed, earlier runs' files go.
    replaces_earlier_runs: bool,
    /// Files completed so far, per partition directory.
    files_written: BTreeMap<String, u64>,
    /// Every file this run has put.
    written: std::collections::HashSet<String>,
    /// With checkpoints on: the files staged and not yet committed.
    staging: Option<Staging>,
}

fn lake_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::connector("lake", e)
}

impl LakeSink {
    pub fn create(cfg: LakeConfig, partitioning: Partitioning, query_id: &str) -> Result<Self> {
        let (store, prefix) = cfg.location.open()?;
        let props = cfg.writer_properties();
        Ok(LakeSink {
            cfg,
            partitioning,
            store,
            prefix,
            props,
            open: BTreeMap::new(),
            query_id: query_id.to_string(),
            run_id: run_id(),
            stopped: false,
            whole_input: false,
            replaces_earlier_runs: false,
            files_written: BTreeMap::new(),
            written: Default::default(),
            staging: None,
        })
    }

    /// Completes the file of partition `dir` and puts it into the store.
    async fn complete(&mut self, dir: &str) -> sluice_engine::Result<()> {
        let Some(file) = self.open.remove(dir) else { return Ok(()) };
        let bytes = file.writer.into_inner().map_err(lake_error)?;
        let n = self.files_written.entry(dir.to_string()).or_default();
        *n += 1;
        let committed = join(&self.prefix, &staging::committed_name(dir, &self.query_id, &self.run_id, *n));
        let path = match &self.staging {
            None => committed.clone(),
            Some(_) => join(&self.prefix, &staging::staged_name(dir, &self.query_id, &self.run_id, *n)),
        };
        self.store.put(&path, PutPayload::from(bytes)).await.map_err(lake_error)?;
        self.written.insert(path.as_ref().to_string());
        if let Some(staging) = &mut self.staging {
            staging.staged(&self.run_id, path, committed);
        }
        Ok(())
    }

    /// Completes every open file.
    async fn complete_all(&mut self) -> sluice_engine::Result<()> {
        let dirs: Vec<String> = self.open.keys().cloned().collect();
        for dir in dirs {
            self.complete(&dir).await?;
        }
        Ok(())
    }

    /// Deletes files an earlier run of this query wrote (with checkpoints on,
    /// a run outside the lineage of the checkpoints this one resumed from).
    async fn remove_stale(&mut self) -> sluice_engine::Result<()> {
        use futures::StreamExt;
        let mine = format!("part-{}-", self.query_id);
        let base = self.prefix.as_ref().to_string();
        let mut stale = Vec::new();
        let mut listing = self.store.list(if base.is_empty() { None } else { Some(&self.prefix) });
        while let Some(meta) = listing.next().await {
            let location = meta.map_err(lake_error)?.location;
            let name = location.filename().unwrap_or_default();
            if !name.starts_with(&mine) || self.written.contains(location.as_ref()) {
                continue;
            }
            let ours = match (&self.staging, staging::run_of(name, &self.query_id)) {
                (Some(staging), Some(run)) => staging.in_lineage(run),
                _ => false,
            };
            if !ours {
                stale.push(location);
            }
        }
        drop(listing);
        for location in stale {
            self.store.delete(&location).await.map_err(lake_error)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for LakeSink {
    fn describe(&self) -> String {
        let levels: Vec<String> = self.partitioning.levels.iter().map(|l| format!("{l:?}").to_lowercase()).collect();
        format!("lake {} (parquet, partitioned by [{}])", self.cfg.location, levels.join(", "))
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let mut full = Vec::new();
        for (dir, part) in self.partitioning.split(&batch)? {
            let file = match self.open.entry(dir.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let writer = ArrowWriter::try_new(Vec::new(), Arc::clone(self.partitioning.file_schema()), Some(self.props.clone()))
                        .map_err(lake_error)?;
                    v.insert(OpenFile { writer, rows: 0, opened: Instant::now() })
                }
            };
            file.writer.write(&part).map_err(lake_error)?;
            file.rows += part.num_rows();
            let bytes = file.writer.bytes_written() + file.writer.in_progress_size();
            if file.rows >= self.cfg.rollover_rows || bytes >= self.cfg.rollover_bytes {
                full.push(dir);
            }
        }
        for dir in full {
            self.complete(&dir).await?;
        }
        Ok(())
    }

    async fn on_watermark(&mut self, _watermark: Watermark) -> sluice_engine::Result<()> {
        let max_age = std::time::Duration::from_millis(self.cfg.rollover_interval_ms);
        let old: Vec<String> = self.open.iter().filter(|(_, f)| f.opened.elapsed() >= max_age).map(|(d, _)| d.clone()).collect();
        for dir in old {
            self.complete(&dir).await?;
        }
        Ok(())
    }

    async fn on_barrier(&mut self, barrier: Barrier) -> sluice_engine::Result<()> {
        self.stopped |= barrier.kind == BarrierKind::Stop;
        self.complete_all().await?;
        if let Some(staging) = &mut self.staging {
            staging.claim(barrier.id);
        }
        Ok(())
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        self.complete_all().await?;
        if let Some(staging) = &mut self.staging {
            staging.claim(FINAL_CHECKPOINT);
        }
        // Only a run (or lineage of runs) that read the whole input has the
        // whole result: one that started where an earlier run left off must
        // not remove that run's files.
        let whole = self.staging.as_ref().map_or(self.whole_input, Staging::whole);
        if self.stopped || !whole {
            return Ok(());
        }
        match self.staging {
            // With checkpoints, earlier runs' files go only once this run's
            // last files are committed (see `commit`).
            Some(_) => {
                self.replaces_earlier_runs = true;
                Ok(())
            }
            None => self.remove_stale().await,
        }
    }

    fn exactly_once(&self) -> bool {
        true
    }

    fn set_whole_input(&mut self, whole: bool) {
        self.whole_input = whole;
    }

    /// Commits the files the restored checkpoint staged, then deletes the
    /// query's other staged files (left by runs that failed after it).
    async fn begin_checkpoints(&mut self, restored: Option<RecordBatch>) -> sluice_engine::Result<()> {
        let (files, mut lineage, whole) = match &restored {
            Some(batch) => staging::from_snapshot(batch)?,
            None => (Vec::new(), Default::default(), self.whole_input),
        };
        for file in &files {
            staging::commit_file(self.store.as_ref(), &file.staged, &file.committed).await?;
            lineage.insert(file.run.clone());
        }
        let orphans = staging::delete_orphans(self.store.as_ref(), &self.prefix, &self.query_id, &self.run_id).await?;
        if !files.is_empty() || orphans > 0 {
            tracing::info!("lake {}: committed {} restored file(s), deleted {orphans} orphaned staged file(s)", self.cfg.location, files.len());
        }
        self.staging = Some(Staging::new(&self.run_id, lineage, whole));
        Ok(())
    }

    /// Rows of `staging::snapshot_schema`: staged files not yet committed, and
    /// the runs of the lineage.
    fn snapshot(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        match &self.staging {
            Some(staging) => Ok(Some(staging.snapshot()?)),
            None => Ok(None),
        }
    }

    /// Renames the files staged for `checkpoint` and before to their final
    /// names; without checkpoints, files are final already.
    async fn commit(&mut self, checkpoint: u64) -> sluice_engine::Result<()> {
        let Some(staging) = &mut self.staging else { return Ok(()) };
        staging.commit(self.store.as_ref(), checkpoint).await?;
        if checkpoint == FINAL_CHECKPOINT && self.replaces_earlier_runs {
            self.remove_stale().await?;
        }
        Ok(())
    }
}

/// A new run's id: its start time in milliseconds and a random part, so that two
/// runs never share file names and names sort by run.
pub(super) fn run_id() -> String {
    format!("{:011x}{:04x}", chrono::Utc::now().timestamp_millis().max(0), rand::random::<u16>())
}
