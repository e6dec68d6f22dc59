//! Reads JSON lines or CSV files into batches of the declared schema.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_engine::Source;

use super::{io_error, FileConfig, FileFormat};
use crate::error::{ConnectorError, Result};

type BatchReader = Box<dyn Iterator<Item = arrow::error::Result<RecordBatch>> + Send>;

/// A bounded source over one file or the files of a directory.
pub struct FileSource {
    cfg: FileConfig,
    schema: SchemaRef,
    pending: VecDeque<PathBuf>,
    current: Option<(PathBuf, BatchReader)>,
}

impl FileSource {
    pub fn open(cfg: FileConfig, schema: SchemaRef) -> Result<Self> {
        if cfg.format == FileFormat::Parquet {
            return Err(ConnectorError::Option {
                connector: "file".into(),
                key: "format".into(),
                reason: "parquet is supported for file sinks only; read json or csv".into(),
            });
        }
        let meta = std::fs::metadata(&cfg.path).map_err(|e| io_error(&cfg.path, e))?;
        let pending: VecDeque<PathBuf> = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&cfg.path).map_err(|e| io_error(&cfg.path, e))? {
                let entry = entry.map_err(|e| io_error(&cfg.path, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with('.') && !name.starts_with('_') && entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            files.into()
        } else {
            VecDeque::from([cfg.path.clone()])
        };
        Ok(FileSource { cfg, schema, pending, current: None })
    }

    fn reader(&self, path: &PathBuf) -> Result<BatchReader> {
        let file = BufReader::new(File::open(path).map_err(|e| io_error(path, e))?);
        let reader: BatchReader = match self.cfg.format {
            FileFormat::Json => Box::new(
                arrow_json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(self.cfg.batch_size)
                    .build(file)
                    .map_err(|e| io_error(path, e))?,
            ),
            FileFormat::Csv => Box::new(
                arrow_csv::ReaderBuilder::new(self.schema.clone())
                    .with_header(self.cfg.csv_header)
                    .with_delimiter(self.cfg.csv_delimiter)
                    .with_batch_size(self.cfg.batch_size)
                    .build(file)
                    .map_err(|e| io_error(path, e))?,
            ),
            FileFormat::Parquet => return Err(io_error(path, "parquet input is not supported")),
        };
        Ok(reader)
    }
}

#[async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        format!("file {} ({:?})", self.cfg.path.display(), self.cfg.format).to_lowercase()
    }

    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        loop {
            if let Some((path, reader)) = &mut self.current {
                match reader.next() {
                    Some(Ok(batch)) => return Ok(Some(batch)),
                    Some(Err(e)) => return Err(io_error(path, format!("bad record: {e}")).into()),
                    None => self.current = None,
                }
            }
            let Some(path) = self.pending.pop_front() else { return Ok(None) };
            let reader = self.reader(&path)?;
            self.current = Some((path, reader));
        }
    }
}
