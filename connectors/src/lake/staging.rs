//! Two-phase commit of lake files, so a query with checkpoints writes each row
//! exactly once even across failures and restores.
//!
//! With checkpoints on, a completed file is put under a *staged* name in its
//! partition directory, `.part-{query}-{run}-{n}.parquet.staged`, that readers
//! of the lake skip: DuckDB's and DataFusion's `*.parquet` globs do not match
//! it, and pyarrow ignores names starting with `.`. When the checkpoint whose
//! barrier staged it completes, it is renamed to its final name,
//! `part-{query}-{run}-{n}.parquet`. A query restored from a checkpoint commits
//! the files that checkpoint lists (they belong to it, whether or not the run
//! that staged them got to rename them), and deletes the other staged files of
//! the query: a failed run staged them after the checkpoint, and their rows will
//! be read and written again.
//!
//! The snapshot also lists the query's *lineage*: the runs whose committed
//! files make up its output so far (those of the checkpoints it was restored
//! from, and the current one). A bounded query that reaches its end keeps their
//! files and deletes only those of other runs of the statement.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use sluice_engine::EngineError;

use crate::checkpoint_rows::{column, unfit};
use crate::error::Result;

/// A file put under its staged name, waiting for its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// The run that wrote it.
    pub run: String,
    pub staged: StorePath,
    pub committed: StorePath,
    /// The checkpoint whose barrier (or the end) staged it.
    pub checkpoint: u64,
}

/// The files of one query's run while checkpoints are on.
#[derive(Debug, Default)]
pub struct Staging {
    /// Completed since the last barrier: the next barrier stages them for its checkpoint.
    unclaimed: Vec<StagedFile>,
    /// Staged for a checkpoint, not yet committed.
    pending: Vec<StagedFile>,
    /// The runs whose committed files are this query's output.
    lineage: BTreeSet<String>,
    /// The lineage's first run read the whole input from its beginning, so
    /// at the end of the input the lineage holds the query's whole result.
    whole: bool,
}

/// The final name of file `n` of partition `dir` (`""` or ending with `/`).
pub fn committed_name(dir: &str, query: &str, run: &str, n: u64) -> String {
    format!("{dir}part-{query}-{run}-{n:06}.parquet")
}

/// The staged name of the same file.
pub fn staged_name(dir: &str, query: &str, run: &str, n: u64) -> String {
    format!("{dir}.part-{query}-{run}-{n:06}.parquet.staged")
}

/// The run that wrote a file of `query` called `name` (final or staged), or
/// `None` if it is not one of the query's files. Run ids hold no `-`.
pub fn run_of<'a>(name: &'a str, query: &str) -> Option<&'a str> {
    let rest = name.strip_prefix('.').unwrap_or(name);
    let rest = rest.strip_prefix("part-")?.strip_prefix(query)?.strip_prefix('-')?;
    rest.split_once('-').map(|(run, _)| run).filter(|run| !run.is_empty())
}

/// Whether `name` is a staged file's.
pub fn is_staged(name: &str) -> bool {
    name.starts_with(".part-") && name.ends_with(".parquet.staged")
}

impl Staging {
    /// Staging for run `run`, with the lineage of the checkpoint it resumes
    /// from and whether that lineage reads the whole input.
    pub fn new(run: &str, restored_lineage: BTreeSet<String>, whole: bool) -> Self {
        let mut lineage = restored_lineage;
        lineage.insert(run.to_string());
        Staging { unclaimed: Vec::new(), pending: Vec::new(), lineage, whole }
    }

    /// Whether the lineage reads the whole input (see the field).
    pub fn whole(&self) -> bool {
        self.whole
    }

    /// A file was put under its staged name.
    pub fn staged(&mut self, run: &str, staged: StorePath, committed: StorePath) {
        self.unclaimed.push(StagedFile { run: run.to_string(), staged, committed, checkpoint: 0 });
    }

    /// The barrier of `checkpoint` (or the end, `FINAL_CHECKPOINT`) went out:
    /// the files completed since the last one are its.
    pub fn claim(&mut self, checkpoint: u64) {
        for mut file in self.unclaimed.drain(..) {
            file.checkpoint = checkpoint;
            self.pending.push(file);
        }
    }

    /// Whether a committed file of run `run` belongs to the query's output.
    pub fn in_lineage(&self, run: &str) -> bool {
        self.lineage.contains(run)
    }

    /// Renames every file staged for `checkpoint` or an earlier one.
    pub async fn commit(&mut self, store: &dyn ObjectStore, checkpoint: u64) -> sluice_engine::Result<()> {
        let (due, later): (Vec<StagedFile>, Vec<StagedFile>) =
            std::mem::take(&mut self.pending).into_iter().partition(|f| f.checkpoint <= checkpoint);
        self.pending = later;
        let mut due = due.into_iter();
        let mut renamed = 0;
        while let Some(file) = due.next() {
            if let Err(e) = commit_file(store, &file.staged, &file.committed).await {
                // Still pending: a later commit (or a restore) tries again.
                self.pending.push(file);
                self.pending.extend(due);
                return Err(e);
            }
            renamed += 1;
            if renamed == 1 {
                sluice_engine::checkpoint::crash_point(sluice_engine::checkpoint::CrashPoint::MidCommit, checkpoint);
            }
        }
        Ok(())
    }

    /// The snapshot: files staged and not committed, and the lineage.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let files = &self.pending;
        let rows = files.len() + self.lineage.len();
        let runs = files.iter().map(|f| Some(f.run.as_str())).chain(self.lineage.iter().map(|r| Some(r.as_str())));
        let staged = files.iter().map(|f| Some(f.staged.as_ref())).chain(self.lineage.iter().map(|_| None));
        let committed = files.iter().map(|f| Some(f.committed.as_ref())).chain(self.lineage.iter().map(|_| None));
        let checkpoints = files.iter().map(|f| Some(f.checkpoint)).chain(self.lineage.iter().map(|_| None));
        RecordBatch::try_new(
            snapshot_schema(),
            vec![
                Arc::new(runs.collect::<StringArray>()),
                Arc::new(staged.collect::<StringArray>()),
                Arc::new(committed.collect::<StringArray>()),
                Arc::new(checkpoints.collect::<UInt64Array>()),
                Arc::new(BooleanArray::from(vec![self.whole; rows])),
            ],
        )
        .map_err(|e| unfit("lake", e.to_string()))
    }
}

/// The schema of a lake sink's snapshot. A row with a `staged` path is a file
/// to commit on restore (`staged` renamed to `committed`; `checkpoint` is the
/// one that staged it); a row without one names a run of the lineage.
pub fn snapshot_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run", DataType::Utf8, false),
        Field::new("staged", DataType::Utf8, true),
        Field::new("committed", DataType::Utf8, true),
        Field::new("checkpoint", DataType::UInt64, true),
        Field::new("whole", DataType::Boolean, true),
    ]))
}

/// What a snapshot holds: the files to commit, the lineage, and whether the
/// lineage reads the whole input (not said: it does not).
pub fn from_snapshot(batch: &RecordBatch) -> Result<(Vec<StagedFile>, BTreeSet<String>, bool)> {
    let whole = batch
        .schema()
        .index_of("whole")
        .ok()
        .and_then(|i| batch.column(i).as_any().downcast_ref::<BooleanArray>().cloned())
        .is_some_and(|w| w.iter().all(|v| v == Some(true)) && !w.is_empty());
    let runs = column::<StringArray>("lake", batch, "run", true)?;
    let staged = column::<StringArray>("lake", batch, "staged", false)?;
    let committed = column::<StringArray>("lake", batch, "committed", false)?;
    let checkpoints = column::<UInt64Array>("lake", batch, "checkpoint", false)?;
    let (mut files, mut lineage) = (Vec::new(), BTreeSet::new());
    for i in 0..batch.num_rows() {
        let run = runs.value(i).to_string();
        if staged.is_null(i) {
            lineage.insert(run);
            continue;
        }
        if committed.is_null(i) {
            return Err(unfit("lake", format!("staged file {} has no final name", staged.value(i))));
        }
        let checkpoint = if checkpoints.is_null(i) { 0 } else { checkpoints.value(i) };
        files.push(StagedFile {
            run,
            staged: StorePath::from(staged.value(i)),
            committed: StorePath::from(committed.value(i)),
            checkpoint,
        });
    }
    Ok((files, lineage, whole))
}

/// Renames `staged` to `committed`; done already (the staged file gone, the
/// final one there) is fine.
pub async fn commit_file(store: &dyn ObjectStore, staged: &StorePath, committed: &StorePath) -> sluice_engine::Result<()> {
    match store.rename(staged, committed).await {
        Ok(()) => Ok(()),
        Err(object_store::Error::NotFound { .. }) => match store.head(committed).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(EngineError::connector(
                "lake",
                format!("cannot commit {staged}: neither it nor {committed} exists (the checkpoint's output was deleted)"),
            )),
            Err(e) => Err(lake_error(e)),
        },
        Err(e) => Err(lake_error(e)),
    }
}

/// Deletes the staged files of `query` under `prefix` written by runs other
/// than `run`: output of failed runs that no checkpoint holds. Returns how many.
pub async fn delete_orphans(store: &dyn ObjectStore, prefix: &StorePath, query: &str, run: &str) -> sluice_engine::Result<usize> {
    let mut orphans = Vec::new();
    let mut listing = store.list((!prefix.as_ref().is_empty()).then_some(prefix));
    while let Some(meta) = listing.next().await {
        let location = meta.map_err(lake_error)?.location;
        let name = location.filename().unwrap_or_default();
        if is_staged(name) && run_of(name, query).is_some_and(|r| r != run) {
            orphans.push(location);
        }
    }
    drop(listing);
    for location in &orphans {
        match store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(lake_error(e)),
        }
    }
    Ok(orphans.len())
}

fn lake_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::connector("lake", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_their_run_and_whether_they_are_staged() {
        let staged = staged_name("dt=2024-01-01/", "q-1", "00abc", 3);
        let committed = committed_name("dt=2024-01-01/", "q-1", "00abc", 3);
        assert_eq!(staged, "dt=2024-01-01/.part-q-1-00abc-000003.parquet.staged");
        assert_eq!(committed, "dt=2024-01-01/part-q-1-00abc-000003.parquet");
        let file = |p: &str| p.rsplit('/').next().unwrap_or_default().to_string();
        assert_eq!(run_of(&file(&staged), "q-1"), Some("00abc"));
        assert_eq!(run_of(&file(&committed), "q-1"), Some("00abc"));
        assert!(is_staged(&file(&staged)) && !is_staged(&file(&committed)));
        assert_eq!(run_of("part-q-2-00abc-000001.parquet", "q-1"), None, "another query's");
        assert_eq!(run_of("part-q-1x-00abc-000001.parquet", "q-1"), None, "a query whose id extends this one's");
    }

    #[test]
    fn a_snapshot_round_trips_files_and_lineage() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let mut s = Staging::new("r2", BTreeSet::from(["r1".to_string()]), true);
        s.staged("r2", StorePath::from(".part-q-r2-000001.parquet.staged"), StorePath::from("part-q-r2-000001.parquet"));
        s.claim(4);
        s.staged("r2", StorePath::from(".part-q-r2-000002.parquet.staged"), StorePath::from("part-q-r2-000002.parquet"));
        let (files, lineage, whole) = from_snapshot(&s.snapshot()?)?;
        assert!(whole, "the lineage read the whole input");
        assert!(!from_snapshot(&Staging::new("r3", BTreeSet::new(), false).snapshot()?)?.2);
        assert_eq!(files.len(), 1, "only files claimed by a barrier");
        assert_eq!(files[0].checkpoint, 4);
        assert_eq!(files[0].committed.as_ref(), "part-q-r2-000001.parquet");
        assert_eq!(lineage, BTreeSet::from(["r1".to_string(), "r2".to_string()]));
        Ok(())
    }
}
