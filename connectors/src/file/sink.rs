//! Writes results into one file: JSON lines as they arrive, or Parquet made
//! visible only once complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sluice_engine::Sink;

use super::{io_error, FileConfig, FileFormat};
use crate::error::Result;

enum Writer {
    Json(arrow_json::LineDelimitedWriter<BufWriter<File>>),
    Csv(arrow_csv::Writer<BufWriter<File>>),
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
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        let writer = match cfg.format {
            FileFormat::Json => {
                let f = File::create(&path).map_err(|e| io_error(&path, e))?;
                Writer::Json(arrow_json::LineDelimitedWriter::new(BufWriter::new(f)))
            }
            FileFormat::Csv => {
                let f = File::create(&path).map_err(|e| io_error(&path, e))?;
                let w = arrow_csv::WriterBuilder::new()
                    .with_header(cfg.csv_header)
                    .with_delimiter(cfg.csv_delimiter)
                    .build(BufWriter::new(f));
                Writer::Csv(w)
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
            Some(Writer::Csv(w)) => w.write(&batch).map_err(|e| io_error(path, e))?,
            Some(Writer::Parquet { writer, .. }) => writer.write(&batch).map_err(|e| io_error(path, e))?,
            None => {}
        }
        Ok(())
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        let path = self.path.clone();
        match self.writer.take() {
            Some(Writer::Json(mut w)) => {
                w.finish().map_err(|e| io_error(&path, e))?;
                w.into_inner().flush().map_err(|e| io_error(&path, e))?;
            }
            Some(Writer::Csv(w)) => {
                w.into_inner().flush().map_err(|e| io_error(&path, e))?;
            }
            Some(Writer::Parquet { writer, staging }) => {
                writer.close().map_err(|e| io_error(&path, e))?;
                std::fs::rename(&staging, &path).map_err(|e| io_error(&path, e))?;
            }
            None => {}
        }
        Ok(())
    }
}
