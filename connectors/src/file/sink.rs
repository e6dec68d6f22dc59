//! Writes results into one file: JSON lines or CSV as they arrive, or Parquet
//! made visible only once complete.
//!
//! JSON lines and CSV are appended to an existing file, never truncated: a
//! restarted query (a server restart, a resumed consumer group) adds to what
//! readers may already have read. Each barrier (checkpoint or stop) flushes and
//! syncs them. A Parquet file cannot grow once written: it is written whole
//! under a hidden name and renamed over `path` when the query ends or stops.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sluice_engine::{Barrier, Sink};

use super::{io_error, FileConfig, FileFormat};
use crate::error::Result;

enum Writer {
    Json(arrow_json::LineDelimitedWriter<BufWriter<File>>),
    /// The file, and how each batch is written into it (with a header while
    /// `header` is set: only at the top of a new file).
    Csv { file: BufWriter<File>, header: bool, delimiter: u8 },
    /// Writes into a hidden staging file, renamed to `path` on finish.
    Parquet { writer: ArrowWriter<File>, staging: PathBuf },
}

/// A sink into a local file.
pub struct FileSink {
    path: PathBuf,
    writer: Option<Writer>,
}

impl FileSink {
    pub fn create(cfg: FileConfig, schema: SchemaRef) -> Result<Self> {
        let path = cfg.path.clone();
        if super::listing::is_pattern(&path) {
            return Err(crate::error::ConnectorError::Option {
                connector: "file".into(),
                key: "path".into(),
                reason: format!("'{}' is a glob: a file sink writes one file", path.display()),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        let append = || std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_error(&path, e));
        let writer = match cfg.format {
            FileFormat::Json => Writer::Json(arrow_json::LineDelimitedWriter::new(BufWriter::new(append()?))),
            FileFormat::Csv => {
                let f = append()?;
                // A header only at the top of a new file.
                let empty = f.metadata().map_err(|e| io_error(&path, e))?.len() == 0;
                Writer::Csv { file: BufWriter::new(f), header: cfg.csv_header && empty, delimiter: cfg.csv_delimiter }
            }
            FileFormat::Parquet => {
                let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let staging = path.with_file_name(format!(".{name}.inprogress"));
                let f = File::create(&staging).map_err(|e| io_error(&staging, e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer = ArrowWriter::try_new(f, schema.clone(), Some(props)).map_err(|e| io_error(&path, e))?;
                Writer::Parquet { writer, staging }
            }
        };
        Ok(FileSink { path, writer: Some(writer) })
    }
}

#[async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let path = &self.path;
        match &mut self.writer {
            Some(Writer::Json(w)) => {
                w.write(&batch).map_err(|e| io_error(path, e))?;
                w.get_mut().flush().map_err(|e| io_error(path, e))?;
            }
            Some(Writer::Csv { file, header, delimiter }) => {
                let mut w = arrow_csv::WriterBuilder::new().with_header(*header).with_delimiter(*delimiter).build(&mut *file);
                w.write(&batch).map_err(|e| io_error(path, e))?;
                *header = false;
            }
            Some(Writer::Parquet { writer, .. }) => writer.write(&batch).map_err(|e| io_error(path, e))?,
            None => {}
        }
        Ok(())
    }

    /// A Parquet file is durable only once written whole, when the query ends.
    fn durable_at_barriers(&self) -> bool {
        !matches!(self.writer, Some(Writer::Parquet { .. }))
    }

    async fn on_barrier(&mut self, _barrier: Barrier) -> sluice_engine::Result<()> {
        match &mut self.writer {
            Some(Writer::Json(w)) => sync(w.get_mut(), &self.path),
            Some(Writer::Csv { file, .. }) => sync(file, &self.path),
            // Written whole at the end (see the module docs).
            Some(Writer::Parquet { .. }) | None => Ok(()),
        }
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        let path = self.path.clone();
        match self.writer.take() {
            Some(Writer::Json(mut w)) => {
                w.finish().map_err(|e| io_error(&path, e))?;
                sync(&mut w.into_inner(), &path)?;
            }
            Some(Writer::Csv { mut file, .. }) => sync(&mut file, &path)?,
            Some(Writer::Parquet { writer, staging }) => {
                writer.close().map_err(|e| io_error(&path, e))?;
                std::fs::rename(&staging, &path).map_err(|e| io_error(&path, e))?;
            }
            None => {}
        }
        Ok(())
    }
}

/// Flushes a written file and waits until its data is on disk.
fn sync(file: &mut BufWriter<File>, path: &std::path::Path) -> sluice_engine::Result<()> {
    file.flush().map_err(|e| io_error(path, e))?;
    file.get_ref().sync_data().map_err(|e| io_error(path, e))?;
    Ok(())
}
