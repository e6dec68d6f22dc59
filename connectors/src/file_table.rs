//! The files of a bounded table as one DataFusion table, for batch queries.
//!
//! A batch query over `file` and `lake` tables runs on DataFusion's own file
//! scans (the `DataSourceExec` of Parquet, JSON lines or CSV, the scan under
//! DataFusion's `ListingTable`), with two things of Sluice's: which files are
//! read (the `file` connector's listing, with its globs and skipped hidden
//! names; the lake's committed `.parquet` files, never the staged ones), and
//! the Hive partition columns, filled from the paths as the streaming sources
//! fill them (see [`crate::hive`]; a NULL partition, which `ListingTable`
//! cannot express, included).
//!
//! Files are listed when the query is planned. Filters that use only
//! partition columns prune files before any is opened: a file in a partition
//! the WHERE clause excludes is never read. Every filter is declared
//! `Inexact`, so DataFusion still applies each one to the rows.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::TableType;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore};

use crate::hive::PartitionColumns;

type DfResult<T> = datafusion::error::Result<T>;

/// Where a table's files are and how they are listed.
#[derive(Clone)]
pub enum FileListing {
    /// A `file` table's `path` (a file, a directory or a glob), listed as its
    /// streaming source lists it.
    Local(PathBuf),
    /// Every `.parquet` file under `prefix` in `store` whose path has no part
    /// starting with `.` or `_` (a lake: staged files are hidden).
    Store {
        /// What the store is registered as in the query's runtime.
        url: ObjectStoreUrl,
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
    },
}

/// A file found by a listing, with its path below the table's root.
struct Listed {
    meta: ObjectMeta,
    relative: String,
}

impl FileListing {
    fn url(&self) -> ObjectStoreUrl {
        match self {
            FileListing::Local(_) => ObjectStoreUrl::local_filesystem(),
            FileListing::Store { url, .. } => url.clone(),
        }
    }

    async fn list(&self) -> DfResult<Vec<Listed>> {
        let external = |e: &dyn std::fmt::Display| DataFusionError::Execution(e.to_string());
        match self {
            FileListing::Local(path) => {
                let root = crate::file::listing::root(path);
                let mut out = Vec::new();
                for file in crate::file::listing::list_files(path).map_err(|e| external(&e))? {
                    let meta = std::fs::metadata(&file).map_err(|e| external(&format!("{}: {e}", file.display())))?;
                    let absolute = std::fs::canonicalize(&file).map_err(|e| external(&format!("{}: {e}", file.display())))?;
                    let location = StorePath::from_absolute_path(&absolute).map_err(|e| external(&e))?;
                    let last_modified = meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
                    let meta = ObjectMeta { location, last_modified, size: meta.len(), e_tag: None, version: None };
                    out.push(Listed { meta, relative: crate::file::listing::relative(&root, &file) });
                }
                Ok(out)
            }
            FileListing::Store { store, prefix, .. } => {
                let mut out = Vec::new();
                let mut listing = store.list((!prefix.as_ref().is_empty()).then_some(prefix));
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| external(&e))?;
                    let relative = relative_to(prefix, &meta.location);
                    if is_data_file(&relative) {
                        out.push(Listed { meta, relative });
                    }
                }
                out.sort_by(|a, b| a.meta.location.cmp(&b.meta.location));
                Ok(out)
            }
        }
    }
}

/// `location` below `prefix`, `/`-separated.
pub(crate) fn relative_to(prefix: &StorePath, location: &StorePath) -> String {
    match location.prefix_match(prefix) {
        Some(parts) => parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"),
        None => location.as_ref().to_string(),
    }
}

/// Whether a lake file at `relative` holds committed data: a `.parquet` file
/// with no part of its path hidden (staged files start with `.`, markers and
/// temporary directories with `_`).
pub(crate) fn is_data_file(relative: &str) -> bool {
    relative.ends_with(".parquet") && !relative.split('/').any(|p| p.starts_with('.') || p.starts_with('_'))
}

/// A bounded table's files as a DataFusion table (see the module docs).
#[derive(Debug)]
pub struct FileTable {
    /// The declared columns.
    schema: SchemaRef,
    format: Arc<dyn FileFormat>,
    listing: FileListing,
}

impl std::fmt::Debug for FileListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileListing::Local(path) => write!(f, "Local({})", path.display()),
            FileListing::Store { url, prefix, .. } => write!(f, "Store({}/{prefix})", url.as_str()),
        }
    }
}

impl FileTable {
    /// The table of `schema` (the declared columns) over the files `listing`
    /// finds, read as `format` says.
    pub fn new(schema: SchemaRef, format: Arc<dyn FileFormat>, listing: FileListing) -> Self {
        FileTable { schema, format, listing }
    }

    /// The files whose partition values pass every filter that only uses
    /// partition columns, each with those values.
    fn prune(
        &self,
        state: &dyn Session,
        partitions: &PartitionColumns,
        files: Vec<(Listed, Vec<ScalarValue>)>,
        filters: &[Expr],
    ) -> DfResult<Vec<(Listed, Vec<ScalarValue>)>> {
        let fields = partitions.fields();
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        let applicable: Vec<Expr> = filters
            .iter()
            .filter(|f| !f.is_volatile() && f.column_refs().iter().all(|c| names.contains(&c.name.as_str())))
            .cloned()
            .collect();
        let Some(predicate) = conjunction(applicable) else { return Ok(files) };
        if files.is_empty() {
            return Ok(files);
        }
        let schema = Arc::new(Schema::new(fields.clone()));
        let columns = (0..fields.len())
            .map(|i| ScalarValue::iter_to_array(files.iter().map(|(_, values)| values[i].clone())))
            .collect::<DfResult<Vec<_>>>()?;
        let values = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        let df_schema = DFSchema::try_from(schema)?;
        let predicate = state.create_physical_expr(predicate, &df_schema)?;
        let keep = predicate.evaluate(&values)?.into_array(values.num_rows())?;
        let keep = keep
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataFusionError::Internal("a partition filter is not a boolean".into()))?
            .clone();
        Ok(files.into_iter().enumerate().filter(|(i, _)| keep.is_valid(*i) && keep.value(*i)).map(|(_, f)| f).collect())
    }
}

#[async_trait]
impl TableProvider for FileTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter may prune files (those on partition columns do); all are
    /// still applied to the rows.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let listed = self.listing.list().await?;
        let partitions = PartitionColumns::discover(&self.schema, listed.iter().map(|l| l.relative.as_str()));
        let files = listed
            .into_iter()
            .map(|l| {
                let values = partitions
                    .values(&l.relative)
                    .map_err(|e| DataFusionError::Execution(format!("{}: {e}", l.meta.location)))?;
                Ok((l, values))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let files = self.prune(state, &partitions, files, filters)?;
        let declared: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(&declared)?))));
        }
        let lanes = state.config().target_partitions().max(1).min(files.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); lanes];
        for (i, (listed, values)) in files.into_iter().enumerate() {
            groups[i % lanes].push(PartitionedFile::from(listed.meta).with_partition_values(values));
        }
        let table_schema = TableSchema::builder(Arc::clone(partitions.file_schema()))
            .with_table_partition_cols(partitions.fields())
            .build();
        let source = self.format.file_source(table_schema);
        if let FileListing::Store { url, store, .. } = &self.listing {
            state.runtime_env().register_object_store(url.as_ref(), Arc::clone(store));
        }
        let indices = declared.iter().map(|i| partitions.scan_index(*i)).collect();
        let config = FileScanConfigBuilder::new(self.listing.url(), source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(indices))?
            .with_limit(limit)
            .build();
        self.format.create_physical_plan(state, config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_committed_parquet_files_are_data() {
        assert!(is_data_file("dt=2024-01-01/part-q-r-000001.parquet"));
        assert!(is_data_file("part-0.parquet"));
        assert!(!is_data_file("dt=2024-01-01/.part-q-r-000001.parquet.staged"));
        assert!(!is_data_file("dt=2024-01-01/.hidden.parquet"));
        assert!(!is_data_file("_temporary/part-0.parquet"));
        assert!(!is_data_file("_SUCCESS"));
        assert!(!is_data_file("notes.txt"));
    }
}
