//! `connector = 'lake'`: results landed as a Hive-partitioned Parquet data lake on
//! object storage (the local filesystem by default), and read back.
//!
//! As a source, a lake table is bounded: a query reads the files committed
//! when it starts (never staged ones; see `source`), with each declared column
//! that a `name=value` directory names taken from the path, cast to its
//! declared type (a lake Sluice wrote, partitioned by a column, or one
//! pyarrow, Spark or Hive wrote). A batch query reads it through DataFusion's
//! Parquet scan and skips the partitions its WHERE clause excludes (see
//! `crate::file_table`).
//!
//! Options:
//! - `path` (required): the lake's root: a local path, `file:///...`, or
//!   `s3://bucket/prefix` with `s3.endpoint`, `s3.region`, `s3.access-key-id`,
//!   `s3.secret-access-key`, `s3.allow-http` (or the usual `AWS_*` variables).
//! - `partition.by`: partition levels, outermost first, separated by commas: `dt`
//!   (`dt=YYYY-MM-DD`) and `hour` (`hour=HH`) from `partition.time-column`, or any
//!   column name (`name=value`; the column is then left out of the files).
//! - `partition.time-column`: the TIMESTAMP column `dt` and `hour` derive from.
//! - `rollover.rows` (default 1,000,000), `rollover.bytes` (default 128 MiB),
//!   `rollover.interval.ms` (default 60,000): a file is completed when it reaches
//!   either size, or has been open that long (checked as event time advances).
//! - `row-group.rows`: rows per Parquet row group (default 65,536).
//! - `compression`: `zstd` (default), `snappy` or `none`.
//!
//! A file is built in memory and put to the store in one operation when
//! complete, so no reader ever sees a half-written `.parquet` file. With
//! checkpoints on, it is put under a hidden staged name and renamed when its
//! checkpoint completes, so readers see each row exactly once.

mod partition;
mod sink;
mod source;
mod staging;
pub mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::object_store::ObjectStoreUrl;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sluice_engine::{Sink, Source};

pub use partition::{PartitionLevel, Partitioning};
pub use store::LakeLocation;

use crate::error::{ConnectorError, Result};
use crate::file_table::{FileListing, FileTable};
use crate::registry::{Capabilities, Connector, Shard, TableSpec};

/// Typed `lake` options.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    pub location: LakeLocation,
    pub partition_by: Option<String>,
    pub time_column: Option<String>,
    pub rollover_rows: usize,
    pub rollover_bytes: usize,
    pub rollover_interval_ms: u64,
    pub row_group_rows: usize,
    pub compression: Compression,
}

impl LakeConfig {
    pub fn from_table(table: &TableSpec) -> Result<Self> {
        let mut o = table.options();
        let bad = |key: &str, reason: String| ConnectorError::Option { connector: "lake".into(), key: key.into(), reason };
        let path = o.take_str("path")?;
        let location = LakeLocation::parse(&path, &mut o)?;
        let compression = match o.take_opt("compression").map(|c| c.to_ascii_lowercase()).as_deref() {
            None | Some("zstd") => Compression::ZSTD(ZstdLevel::default()),
            Some("snappy") => Compression::SNAPPY,
            Some("none") => Compression::UNCOMPRESSED,
            Some(other) => return Err(bad("compression", format!("'{other}' is not one of zstd, snappy, none"))),
        };
        let cfg = LakeConfig {
            location,
            partition_by: o.take_opt("partition.by"),
            time_column: o.take_opt("partition.time-column"),
            rollover_rows: o.take_parsed("rollover.rows")?.unwrap_or(1_000_000),
            rollover_bytes: o.take_parsed("rollover.bytes")?.unwrap_or(128 * 1024 * 1024),
            rollover_interval_ms: o.take_parsed("rollover.interval.ms")?.unwrap_or(60_000),
            row_group_rows: o.take_parsed("row-group.rows")?.unwrap_or(65_536),
            compression,
        };
        o.ensure_empty()?;
        if cfg.rollover_rows == 0 || cfg.rollover_bytes == 0 || cfg.row_group_rows == 0 {
            return Err(bad("rollover.rows", "sizes must be positive".into()));
        }
        Ok(cfg)
    }
}

impl LakeConfig {
    /// How every Parquet file of the lake is written.
    pub fn writer_properties(&self) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(self.compression)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .build()
    }
}

/// The `lake` connector: a sink, and a bounded source of what it committed.
pub struct LakeConnector;

impl Connector for LakeConnector {
    fn name(&self) -> &'static str {
        "lake"
    }

    fn capabilities(&self, _table: &TableSpec) -> Capabilities {
        Capabilities { bounded: true, ..Default::default() }
    }

    fn source(&self, table: &TableSpec, shard: Shard, _query_id: &str) -> Result<Box<dyn Source>> {
        let cfg = LakeConfig::from_table(table)?;
        Ok(Box::new(source::LakeSource::open(&table.name, cfg.location, table.schema.clone(), shard)?))
    }

    /// DataFusion's Parquet scan over the committed files, pruned by partition.
    fn batch_table(&self, table: &TableSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        let cfg = LakeConfig::from_table(table)?;
        if let LakeLocation::Local(root) = &cfg.location {
            if !root.is_dir() {
                return Err(ConnectorError::Option {
                    connector: "lake".into(),
                    key: "path".into(),
                    reason: format!("'{}' does not exist: nothing has been written to this lake yet", root.display()),
                });
            }
        }
        let (store, prefix) = cfg.location.open()?;
        // One URL per lake, under which the query's runtime finds its store.
        let id = sluice_engine::stable_hash::fnv1a(cfg.location.to_string().as_bytes());
        let url = ObjectStoreUrl::parse(format!("sluice-lake-{id:016x}://lake"))
            .map_err(|e| ConnectorError::External { connector: "lake".into(), message: e.to_string() })?;
        let listing = FileListing::Store { url, store, prefix };
        Ok(Some(Arc::new(FileTable::new(table.schema.clone(), Arc::new(ParquetFormat::default()), listing))))
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        let cfg = LakeConfig::from_table(table)?;
        Partitioning::try_new(&table.name, &table.schema, cfg.partition_by.as_deref(), cfg.time_column.as_deref())?;
        Ok(())
    }

    fn sink(&self, table: &TableSpec) -> Result<Box<dyn Sink>> {
        // No statement to name the files after: each sink is a query of its own.
        self.sink_for_query(table, &sink::run_id())
    }

    fn sink_for_query(&self, table: &TableSpec, query_id: &str) -> Result<Box<dyn Sink>> {
        let cfg = LakeConfig::from_table(table)?;
        let partitioning =
            Partitioning::try_new(&table.name, &table.schema, cfg.partition_by.as_deref(), cfg.time_column.as_deref())?;
        Ok(Box::new(sink::LakeSink::create(cfg, partitioning, query_id)?))
    }
}
