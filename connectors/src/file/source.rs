//! Reads JSON lines, CSV or Parquet files into batches of the declared schema.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use arrow::array::RecordBatchReader;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::{Source, SourceLag};

use super::{io_error, FileConfig, FileFormat};
use crate::conform::Conformer;
use crate::error::Result;
use crate::registry::Shard;

type BatchReader = Box<dyn Iterator<Item = arrow::error::Result<RecordBatch>> + Send>;

/// A bounded source over one file or the files of a directory.
pub struct FileSource {
    cfg: FileConfig,
    schema: SchemaRef,
    pending: VecDeque<PathBuf>,
    current: Option<(PathBuf, BatchReader)>,
}

impl FileSource {
    pub fn open(cfg: FileConfig, schema: SchemaRef, shard: Shard) -> Result<Self> {
        let meta = std::fs::metadata(&cfg.path).map_err(|e| io_error(&cfg.path, e))?;
        let pending: Vec<PathBuf> = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&cfg.path).map_err(|e| io_error(&cfg.path, e))? {
                let entry = entry.map_err(|e| io_error(&cfg.path, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with('.') && !name.starts_with('_') && entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            files
        } else {
            vec![cfg.path.clone()]
        };
        let pending = pending
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % shard.count.max(1) == shard.index)
            .map(|(_, f)| f)
            .collect();
        Ok(FileSource { cfg, schema, pending, current: None })
    }

    fn buffered(path: &PathBuf) -> Result<BufReader<File>> {
        Ok(BufReader::new(File::open(path).map_err(|e| io_error(path, e))?))
    }

    fn reader(&self, path: &PathBuf) -> Result<BatchReader> {
        let reader: BatchReader = match self.cfg.format {
            FileFormat::Json => Box::new(
                arrow_json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(self.cfg.batch_size)
                    .build(Self::buffered(path)?)
                    .map_err(|e| io_error(path, e))?,
            ),
            FileFormat::Csv => Box::new(
                arrow_csv::ReaderBuilder::new(self.schema.clone())
                    .with_header(self.cfg.csv_header)
                    .with_delimiter(self.cfg.csv_delimiter)
                    .with_batch_size(self.cfg.batch_size)
                    .build(Self::buffered(path)?)
                    .map_err(|e| io_error(path, e))?,
            ),
            FileFormat::Parquet => {
                let file = File::open(path).map_err(|e| io_error(path, e))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(self.cfg.batch_size).build())
                    .map_err(|e| io_error(path, e))?;
                let conformer = Conformer::try_new(&path.display().to_string(), &reader.schema(), &self.schema)?;
                Box::new(reader.map(move |b| b.and_then(|b| conformer.apply(&b))))
            }
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

    /// Bytes of the files not yet opened.
    fn lag(&self) -> Option<SourceLag> {
        let bytes = self.pending.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        Some(SourceLag::Bytes(bytes))
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
