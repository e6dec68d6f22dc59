//! `connector = 'file'`: bounded input from local files, and output into one.
//! Parquet input is matched to the declared columns by name.
//!
//! Options:
//! - `path` (required): a file; for a source also a directory (every file under
//!   it, at any depth) or a glob such as `data/*.json` or `data/**/part-*.csv`
//!   (see `listing`). A declared column that a directory below it names
//!   (`day=2024-01-01/`) is a Hive partition column, read from each file's path
//!   (see `crate::hive`). Files are read in path order, names starting with `.` or
//!   `_` are skipped, and lanes share the files. A glob that matches nothing, or
//!   a directory without files, is an error when the table is created; a path
//!   that names nothing, when a query reading it is planned.
//! - `format`: `json` (JSON lines, the default), `csv` or `parquet`.
//! - `csv.header`: whether CSV has a header line (default true).
//! - `csv.delimiter`: one character (default `,`).
//! - `batch.size`: rows per batch when reading (default 1024).
//! - `bad_data` (JSON and CSV sources): what a line that does not decode does:
//!   `fail` (default: the rows before it come out, then the query fails naming
//!   `file:line`), `drop` (counted, logged, skipped) or `dead-letter` (appended to
//!   the JSON lines file `dead-letter.path` as `{"file", "line", "error",
//!   "record"}`, where `record` is the line's text).
//!
//! A source is resumable: a checkpoint holds how far each file was read, by
//! its path (a single file's position is named by `path` itself, as before).

pub(crate) mod listing;
pub(crate) mod position;
mod sink;
mod source;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat as DfFileFormat;
use sluice_engine::{Sink, Source};

use crate::error::{ConnectorError, Result};
use crate::file_table::{FileListing, FileTable};
use crate::options::parse_bool;
use crate::registry::{Connector, Shard, TableSpec};

/// The encodings the file connector reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    Csv,
    Parquet,
}

/// What a source does with a record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadData {
    /// Emit the rows before it, then fail the query naming the file and line.
    Fail,
    /// Skip it, counted in `sluice_bad_records_total` and logged.
    Drop,
    /// Append it, with its file, line and error, to this JSON lines file.
    DeadLetter(PathBuf),
}

/// Typed `file` options.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    pub format: FileFormat,
    pub csv_header: bool,
    pub csv_delimiter: u8,
    pub batch_size: usize,
    /// What a JSON or CSV source does with a line that does not decode.
    pub bad_data: BadData,
}

impl FileConfig {
    pub fn from_table(table: &TableSpec) -> Result<Self> {
        let mut o = table.options();
        let bad = |key: &str, reason: String| ConnectorError::Option {
            connector: "file".into(),
            key: key.into(),
            reason,
        };
        let path = PathBuf::from(o.take_str("path")?);
        let format = match o.take_opt("format").map(|f| f.to_ascii_lowercase()).as_deref() {
            None | Some("json") => FileFormat::Json,
            Some("csv") => FileFormat::Csv,
            Some("parquet") => FileFormat::Parquet,
            Some(other) => return Err(bad("format", format!("'{other}' is not one of json, csv, parquet"))),
        };
        let csv_header = parse_bool("file", "csv.header", o.take_opt("csv.header"), true)?;
        let csv_delimiter = match o.take_opt("csv.delimiter") {
            None => b',',
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some(d) => return Err(bad("csv.delimiter", format!("'{d}' is not a single character"))),
        };
        let batch_size = o.take_parsed("batch.size")?.unwrap_or(1024);
        let dead_letter = o.take_opt("dead-letter.path");
        let bad_data = match (o.take_opt("bad_data").map(|b| b.to_ascii_lowercase()).as_deref(), dead_letter) {
            (None | Some("fail"), None) => BadData::Fail,
            (Some("drop"), None) => BadData::Drop,
            (Some("dead-letter"), Some(p)) => BadData::DeadLetter(PathBuf::from(p)),
            (Some("dead-letter"), None) => return Err(bad("bad_data", "'dead-letter' needs 'dead-letter.path'".into())),
            (None | Some("fail") | Some("drop"), Some(_)) => {
                return Err(bad("dead-letter.path", "only used with bad_data = 'dead-letter'".into()))
            }
            (Some(other), _) => return Err(bad("bad_data", format!("'{other}' is not one of fail, drop, dead-letter"))),
        };
        if format == FileFormat::Parquet && bad_data != BadData::Fail {
            return Err(bad("bad_data", "only for format = 'json' or 'csv'".into()));
        }
        o.ensure_empty()?;
        Ok(FileConfig { path, format, csv_header, csv_delimiter, batch_size, bad_data })
    }
}

/// The `file` connector.
pub struct FileConnector;

impl Connector for FileConnector {
    fn name(&self) -> &'static str {
        "file"
    }

    /// Flink's name for it.
    fn aliases(&self) -> &'static [&'static str] {
        &["filesystem"]
    }

    fn capabilities(&self, _table: &TableSpec) -> crate::registry::Capabilities {
        crate::registry::Capabilities { bounded: true, ..Default::default() }
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        let cfg = FileConfig::from_table(table)?;
        listing::check_path(&cfg.path)
    }

    fn source(&self, table: &TableSpec, shard: Shard, _query_id: &str) -> Result<Box<dyn Source>> {
        let cfg = FileConfig::from_table(table)?;
        let source = source::FileSource::open(cfg, table.schema.clone(), shard)?;
        Ok(Box::new(source.reading(table.read_columns.as_deref())))
    }

    fn sink(&self, table: &TableSpec) -> Result<Box<dyn Sink>> {
        let cfg = FileConfig::from_table(table)?;
        Ok(Box::new(sink::FileSink::create(cfg, table.schema.clone())?))
    }

    /// DataFusion's scan of the format over the listed files; a table with
    /// `bad_data` other than `fail` is read by its source, which handles bad
    /// records as it says.
    fn batch_table(&self, table: &TableSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        let cfg = FileConfig::from_table(table)?;
        if cfg.bad_data != BadData::Fail {
            return Ok(None);
        }
        // Planned now: a path that names nothing is an error before the query runs.
        listing::list_files(&cfg.path)?;
        let format: Arc<dyn DfFileFormat> = match cfg.format {
            FileFormat::Json => Arc::new(JsonFormat::default()),
            FileFormat::Csv => Arc::new(CsvFormat::default().with_has_header(cfg.csv_header).with_delimiter(cfg.csv_delimiter)),
            FileFormat::Parquet => Arc::new(ParquetFormat::default()),
        };
        Ok(Some(Arc::new(FileTable::new(table.schema.clone(), format, FileListing::Local(cfg.path)))))
    }
}

pub(crate) fn io_error(path: &std::path::Path, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::External { connector: "file".into(), message: format!("{}: {e}", path.display()) }
}
