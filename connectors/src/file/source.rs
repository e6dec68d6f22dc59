//! Reads JSON lines, CSV or Parquet files into batches of the declared schema.
//!
//! JSON and CSV are read record by record (a CSV record may span lines inside
//! quotes), so that a record that does not decode is known by its file and line.
//! Records are decoded a batch at a time; only when a batch fails is each of its
//! records decoded alone, to tell the good rows from the bad. The good rows come
//! out in file order either way, and `bad_data` decides what a bad record does:
//! with `fail` the rows before it are still emitted, then the query fails with
//! `path:line: error`; `drop` skips it; `dead-letter` appends it to a file.
//!
//! Resumable: at each barrier the source remembers, per file of its lane, how
//! far it got (bytes for JSON and CSV, rows for Parquet; see `position`), and a
//! restored source skips finished files and seeks into the one it was reading.
//!
//! A JSON or CSV source told which columns its query reads decodes only those (and
//! the NOT NULL ones); the others come out NULL, as in DataFusion's and
//! Flink's scans with projection pushdown. A value that would not decode in a
//! column the query does not read is then not a bad record.
//!
//! A declared column that a directory below the table's root names
//! (`day=2024-01-01/`) is a Hive partition column: it is read from each file's
//! path, not from the file (see `crate::hive`).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatchReader;
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::{EngineError, Source, SourceLag};

use super::listing::{list_files, relative, root};
use super::position::{position_batch, positions_from, FilePosition};
use super::{io_error, BadData, FileConfig, FileFormat};
use crate::conform::Conformer;
use crate::flat_json::FlatJsonDecoder;
use crate::error::Result;
use crate::hive::PartitionColumns;
use crate::registry::Shard;

type BatchReader = Box<dyn Iterator<Item = arrow::error::Result<RecordBatch>> + Send>;

/// A bounded source over one file, or the files of a directory or glob
/// (see `listing`).
pub struct FileSource {
    cfg: FileConfig,
    schema: SchemaRef,
    /// The declared columns taken from directory names, and those the files hold.
    partitions: PartitionColumns,
    /// Where partition directories are counted from.
    root: PathBuf,
    pending: VecDeque<PathBuf>,
    current: Option<Reader>,
    /// The current file's partition values.
    current_values: Vec<datafusion::common::ScalarValue>,
    /// A `fail` record's error, returned after the rows before it.
    failed: Option<EngineError>,
    /// The dead-letter file, opened at the first bad record.
    dead_letters: Option<File>,
    /// Records dropped or dead-lettered as undecodable.
    bad_records: u64,
    /// Files of this lane read to their end (restored ones included).
    finished: Vec<FilePosition>,
    /// Files a restored source goes on reading from a position, by path.
    resume: BTreeMap<String, FilePosition>,
    /// The position at the last barrier, for the checkpoint.
    at_barrier: Option<RecordBatch>,
    /// The buffer text records are read into, kept between batches.
    block: RecordBlock,
    /// The columns text records are decoded into when the query reads fewer
    /// than the file's (see [`FileSource::reading`]).
    decoded: Option<SchemaRef>,
    /// Per column of the file, a NULL column of a batch's rows if the query
    /// does not read it: made once and sliced for every batch (making them
    /// anew cost more in page faults than decoding the columns did).
    unread: Vec<Option<arrow::array::ArrayRef>>,
    /// The decoder of text batches, kept between them.
    batch_decoder: Option<Box<dyn PushDecoder>>,
    /// JSON's fast path into the decoded columns, if it can decode their types.
    flat_json: Option<FlatJsonDecoder>,
}

/// The file being read.
enum Reader {
    Text(TextRecords),
    Parquet {
        path: PathBuf,
        reader: BatchReader,
        /// Rows returned so far (a restored reader counts those it skipped).
        rows: u64,
    },
}

impl Reader {
    /// How far it got.
    fn position(&self) -> FilePosition {
        match self {
            Reader::Text(t) => FilePosition { path: key(&t.path), offset: t.offset, line: t.line, done: false },
            Reader::Parquet { path, rows, .. } => FilePosition { path: key(path), offset: *rows, line: 0, done: false },
        }
    }
}

/// A file's name in positions: its path as listed, which the same `path`
/// option lists the same way again (a single file: `path` itself).
fn key(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Where one JSON line or CSV record lies in a [`RecordBlock`], and the line
/// it starts on (from 1).
struct RecordSpan {
    line: u64,
    start: usize,
    /// Just past the record's line end.
    end: usize,
}

/// A batch's records, back to back in one buffer, each ended by one `\n`: the
/// decoder takes them in one call, and the buffer is reused batch after batch
/// (no allocation per record).
#[derive(Default)]
struct RecordBlock {
    bytes: Vec<u8>,
    records: Vec<RecordSpan>,
}

impl RecordBlock {
    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    fn text(&self, record: &RecordSpan) -> &[u8] {
        &self.bytes[record.start..record.end]
    }
}

/// The records of a JSON lines or CSV file; blank lines and a CSV header are skipped.
struct TextRecords {
    path: PathBuf,
    input: BufReader<File>,
    /// Lines read so far.
    line: u64,
    /// Bytes read so far: every record before them was returned.
    offset: u64,
    /// A CSV record ends only at a line end outside quotes.
    csv: bool,
    skip_header: bool,
}

/// `BufRead::read_until(b'\n', ..)`, finding line ends with the `memchr`
/// crate's vectorised search (lines are short, and the standard library's
/// search per line showed in profiles).
fn read_line(input: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let (done, used) = match memchr::memchr(b'\n', available) {
            Some(i) => {
                out.extend_from_slice(&available[..=i]);
                (true, i + 1)
            }
            None => {
                out.extend_from_slice(available);
                (available.is_empty(), available.len())
            }
        };
        input.consume(used);
        read += used;
        if done {
            return Ok(read);
        }
    }
}

impl TextRecords {
    /// Appends the next record to `block`; `false` at the end of the file.
    fn next_record(&mut self, block: &mut RecordBlock) -> Result<bool> {
        loop {
            let first = self.line + 1;
            let start = block.bytes.len();
            let mut in_quotes = false;
            loop {
                let n = read_line(&mut self.input, &mut block.bytes).map_err(|e| io_error(&self.path, e))?;
                if n == 0 {
                    break;
                }
                self.line += 1;
                self.offset += n as u64;
                if self.csv {
                    let quotes = block.bytes[block.bytes.len() - n..].iter().filter(|b| **b == b'"').count();
                    in_quotes ^= quotes % 2 == 1;
                }
                if !in_quotes {
                    break;
                }
            }
            if block.bytes.len() == start {
                return Ok(false);
            }
            while block.bytes.len() > start && matches!(block.bytes.last(), Some(b'\n' | b'\r')) {
                block.bytes.pop();
            }
            let blank = block.bytes[start..].iter().all(u8::is_ascii_whitespace);
            if blank || std::mem::take(&mut self.skip_header) {
                block.bytes.truncate(start);
                continue;
            }
            block.bytes.push(b'\n');
            block.records.push(RecordSpan { line: first, start, end: block.bytes.len() });
            return Ok(true);
        }
    }
}

impl FileSource {
    pub fn open(cfg: FileConfig, schema: SchemaRef, shard: Shard) -> Result<Self> {
        let pending = list_files(&cfg.path)?;
        let root = root(&cfg.path);
        let relatives: Vec<String> = pending.iter().map(|f| relative(&root, f)).collect();
        let partitions = PartitionColumns::discover(&schema, relatives.iter().map(String::as_str));
        let pending = pending
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % shard.count.max(1) == shard.index)
            .map(|(_, f)| f)
            .collect();
        Ok(FileSource {
            cfg,
            schema,
            partitions,
            root,
            pending,
            current: None,
            current_values: Vec::new(),
            failed: None,
            dead_letters: None,
            bad_records: 0,
            finished: Vec::new(),
            resume: BTreeMap::new(),
            at_barrier: None,
            block: RecordBlock::default(),
            decoded: None,
            unread: Vec::new(),
            batch_decoder: None,
            flat_json: None,
        }
        .with_flat_json())
    }

    /// Sets up JSON's fast path for the columns decoded.
    fn with_flat_json(mut self) -> Self {
        let decoded = Arc::clone(self.decoded.as_ref().unwrap_or(self.partitions.file_schema()));
        self.flat_json = match self.cfg.format {
            FileFormat::Json => FlatJsonDecoder::new(decoded),
            FileFormat::Csv | FileFormat::Parquet => None,
        };
        self
    }

    /// A JSON or CSV source for a query that reads only `columns` (`None`:
    /// all) decodes only those and the NOT NULL ones; the others are NULL.
    pub fn reading(mut self, columns: Option<&[String]>) -> Self {
        let (Some(columns), FileFormat::Json | FileFormat::Csv) = (columns, &self.cfg.format) else { return self };
        let file_schema = self.partitions.file_schema();
        let kept: Vec<FieldRef> = file_schema
            .fields()
            .iter()
            .filter(|f| !f.is_nullable() || columns.iter().any(|c| c == f.name()))
            .cloned()
            .collect();
        if kept.len() < file_schema.fields().len() {
            let rows = self.cfg.batch_size.max(1);
            self.unread = file_schema
                .fields()
                .iter()
                .map(|f| (!kept.contains(f)).then(|| arrow::array::new_null_array(f.data_type(), rows)))
                .collect();
            self.decoded = Some(Arc::new(Schema::new(kept)));
        }
        self.with_flat_json()
    }

    /// A batch decoded into the read columns, with the unread ones added as NULL.
    fn widened(&self, batch: RecordBatch) -> std::result::Result<RecordBatch, ArrowError> {
        if self.decoded.is_none() {
            return Ok(batch);
        }
        let schema = self.partitions.file_schema();
        let rows = batch.num_rows();
        let mut read = batch.columns().iter();
        let columns = schema
            .fields()
            .iter()
            .zip(&self.unread)
            .map(|(f, unread)| match unread {
                None => read.next().cloned().ok_or_else(|| ArrowError::SchemaError(format!("column {} was not decoded", f.name()))),
                Some(nulls) if nulls.len() >= rows => Ok(nulls.slice(0, rows)),
                Some(_) => Ok(arrow::array::new_null_array(f.data_type(), rows)),
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        RecordBatch::try_new(Arc::clone(schema), columns)
    }

    /// A reader of `path`, from where a restored position says (if any).
    fn reader(&mut self, path: &Path) -> Result<Reader> {
        let from = self.resume.remove(&key(path));
        let (offset, line) = from.map_or((0, 0), |p| (p.offset, p.line));
        let text = |csv: bool| -> Result<Reader> {
            let mut file = File::open(path).map_err(|e| io_error(path, e))?;
            if offset > 0 {
                file.seek(SeekFrom::Start(offset)).map_err(|e| io_error(path, e))?;
            }
            // A CSV header is the first record: read before any position past 0.
            let skip_header = csv && self.cfg.csv_header && offset == 0;
            // Large reads: a file is read front to back, and 8 KiB reads cost a
            // system call per few dozen records.
            let input = BufReader::with_capacity(1 << 20, file);
            Ok(Reader::Text(TextRecords { path: path.to_path_buf(), input, line, offset, csv, skip_header }))
        };
        match self.cfg.format {
            FileFormat::Json => text(false),
            FileFormat::Csv => text(true),
            FileFormat::Parquet => {
                let file = File::open(path).map_err(|e| io_error(path, e))?;
                let skip = usize::try_from(offset).map_err(|e| io_error(path, e))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(self.cfg.batch_size).with_offset(skip).build())
                    .map_err(|e| io_error(path, e))?;
                let conformer =
                    Conformer::try_new(&path.display().to_string(), &reader.schema(), self.partitions.file_schema())?;
                let reader = Box::new(reader.map(move |b| b.and_then(|b| conformer.apply(&b))));
                Ok(Reader::Parquet { path: path.to_path_buf(), reader, rows: offset })
            }
        }
    }

    /// The current file was read to its end.
    fn close_current(&mut self) {
        if let Some(reader) = self.current.take() {
            self.finished.push(FilePosition { done: true, ..reader.position() });
        }
    }

    /// A decoder of the file's format into the decoded columns, `size` records
    /// a batch.
    fn decoder(&self, size: usize) -> std::result::Result<Box<dyn PushDecoder>, String> {
        let schema = self.partitions.file_schema();
        Ok(match self.cfg.format {
            FileFormat::Json => Box::new(
                arrow_json::ReaderBuilder::new(Arc::clone(self.decoded.as_ref().unwrap_or(schema)))
                    .with_batch_size(size)
                    .build_decoder()
                    .map_err(|e| e.to_string())?,
            ),
            FileFormat::Csv | FileFormat::Parquet => {
                let mut builder = arrow_csv::ReaderBuilder::new(Arc::clone(schema))
                    .with_header(false)
                    .with_delimiter(self.cfg.csv_delimiter)
                    .with_batch_size(size);
                if self.decoded.is_some() {
                    let read = self.unread.iter().enumerate().filter(|(_, u)| u.is_none()).map(|(i, _)| i).collect();
                    builder = builder.with_projection(read);
                }
                Box::new(builder.build_decoder())
            }
        })
    }

    /// `text`, holding `records` records each ended by a line end, as one
    /// batch, or the first error.
    fn decode(&self, text: &[u8], records: usize) -> std::result::Result<RecordBatch, String> {
        self.decode_with(&mut *self.decoder(records.max(1))?, text)
    }

    /// Like [`FileSource::decode`], through `decoder`, which is left empty
    /// when it succeeds (and can decode the next batch).
    fn decode_with(&self, decoder: &mut dyn PushDecoder, text: &[u8]) -> std::result::Result<RecordBatch, String> {
        let batches = feed(decoder, text).map_err(|e| e.to_string())?;
        let decoded = self.decoded.as_ref().unwrap_or(self.partitions.file_schema());
        let batch = arrow::compute::concat_batches(decoded, &batches).map_err(|e| e.to_string())?;
        self.widened(batch).map_err(|e| e.to_string())
    }

    /// The good rows of the block's records, in order, each bad record
    /// handled as `bad_data` says (with `fail`, the rows after it are not
    /// returned).
    fn salvage(&mut self, path: &Path, block: &RecordBlock) -> sluice_engine::Result<RecordBatch> {
        let mut good = Vec::new();
        let mut dead = Vec::new();
        for record in &block.records {
            let text = block.text(record);
            let error = match self.decode(text, 1) {
                Ok(batch) => {
                    good.push(batch);
                    continue;
                }
                Err(e) => e,
            };
            let place = format!("{}:{}", path.display(), record.line);
            metrics::counter!("sluice_bad_records_total").increment(1);
            match &self.cfg.bad_data {
                BadData::Fail => {
                    self.failed = Some(EngineError::connector(
                        "file",
                        format!("{place}: {error} (set bad_data = 'drop' or 'dead-letter' to keep going)"),
                    ));
                    break;
                }
                BadData::Drop => {
                    self.bad_records += 1;
                    tracing::warn!("dropped bad record at {place}: {error}");
                }
                BadData::DeadLetter(_) => {
                    self.bad_records += 1;
                    let letter = serde_json::json!({
                        "file": path.display().to_string(),
                        "line": record.line,
                        "error": error,
                        "record": String::from_utf8_lossy(text.strip_suffix(b"\n").unwrap_or(text)),
                    });
                    dead.extend_from_slice(letter.to_string().as_bytes());
                    dead.push(b'\n');
                }
            }
        }
        self.write_dead_letters(&dead)?;
        Ok(arrow::compute::concat_batches(self.partitions.file_schema(), &good)?)
    }

    /// Appends whole dead-letter lines in one write, so lanes sharing the file
    /// do not interleave within a line.
    fn write_dead_letters(&mut self, lines: &[u8]) -> sluice_engine::Result<()> {
        let BadData::DeadLetter(target) = &self.cfg.bad_data else { return Ok(()) };
        if lines.is_empty() {
            return Ok(());
        }
        if self.dead_letters.is_none() {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(target).map_err(|e| io_error(target, e))?;
            self.dead_letters = Some(file);
        }
        if let Some(file) = &mut self.dead_letters {
            file.write_all(lines).and_then(|()| file.flush()).map_err(|e| io_error(target, e))?;
        }
        Ok(())
    }

    /// The next batch of the current text file, `None` at its end.
    fn next_text_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        let Some(Reader::Text(text)) = &mut self.current else { return Ok(None) };
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        while block.records.len() < self.cfg.batch_size.max(1) && text.next_record(&mut block)? {}
        if block.records.is_empty() {
            self.block = block;
            return Ok(None);
        }
        let path = text.path.clone();
        let spans = block.records.iter().map(|r| r.start..r.end);
        if let Some(batch) = self.flat_json.as_ref().and_then(|flat| flat.decode_block(&block.bytes, spans)) {
            self.block = block;
            return Ok(Some(self.widened(batch).map_err(|e| io_error(&path, e))?));
        }
        // One decoder for the batches of the source, so that its buffers
        // keep the size they grew to (built per batch, its tape grew anew from
        // an estimate each time); one that failed is dropped.
        let mut decoder = match self.batch_decoder.take() {
            Some(decoder) => decoder,
            None => self.decoder(self.cfg.batch_size.max(1)).map_err(|e| io_error(&path, e))?,
        };
        let batch = match self.decode_with(&mut *decoder, &block.bytes) {
            Ok(batch) => {
                self.batch_decoder = Some(decoder);
                Ok(Some(batch))
            }
            Err(_) => self.salvage(&path, &block).map(Some),
        };
        self.block = block;
        batch
    }
}

impl FileSource {
    /// A batch of the file's columns with the current file's partition columns added.
    fn with_partitions(&self, batch: RecordBatch) -> sluice_engine::Result<RecordBatch> {
        let path = self.current.as_ref().map(|r| r.position().path).unwrap_or_default();
        Ok(self.partitions.fill(&batch, &self.current_values).map_err(|e| io_error(Path::new(&path), e))?)
    }
}

/// The push decoders of arrow's JSON and CSV readers.
trait PushDecoder: Send {
    /// Decodes from `bytes`, returning how many it used (0 when the batch is full).
    fn decode(&mut self, bytes: &[u8]) -> Result<usize, ArrowError>;
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError>;
}

impl PushDecoder for arrow_json::reader::Decoder {
    fn decode(&mut self, bytes: &[u8]) -> Result<usize, ArrowError> {
        arrow_json::reader::Decoder::decode(self, bytes)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        arrow_json::reader::Decoder::flush(self)
    }
}

impl PushDecoder for arrow_csv::reader::Decoder {
    fn decode(&mut self, bytes: &[u8]) -> Result<usize, ArrowError> {
        arrow_csv::reader::Decoder::decode(self, bytes)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        arrow_csv::reader::Decoder::flush(self)
    }
}

/// Records, each ended by a line end, through `decoder`.
fn feed(decoder: &mut dyn PushDecoder, mut rest: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut batches = Vec::new();
    while !rest.is_empty() {
        let used = decoder.decode(rest)?;
        if used == 0 {
            // The batch is full: a line held several JSON values.
            batches.extend(decoder.flush()?);
        }
        rest = &rest[used..];
    }
    batches.extend(decoder.flush()?);
    Ok(batches)
}

#[async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        format!("file {} ({:?})", self.cfg.path.display(), self.cfg.format).to_lowercase()
    }

    fn reads_whole_input(&self) -> bool {
        true
    }

    fn bad_records(&self) -> u64 {
        self.bad_records
    }

    /// Bytes of the files not yet opened.
    fn lag(&self) -> Option<SourceLag> {
        let bytes = self.pending.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        Some(SourceLag::Bytes(bytes))
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn on_barrier(&mut self, _checkpoint: u64) -> sluice_engine::Result<()> {
        let mut positions = self.finished.clone();
        positions.extend(self.current.as_ref().map(Reader::position));
        self.at_barrier = Some(position_batch(&positions)?);
        Ok(())
    }

    /// Rows of `position::position_schema`: the lane's files started so far.
    fn position(&self) -> sluice_engine::Result<Option<RecordBatch>> {
        Ok(self.at_barrier.clone())
    }

    /// Skips the lane's files the checkpoint has finished, and goes on with
    /// the others from their positions; files it does not name are read whole.
    async fn restore(&mut self, positions: Vec<RecordBatch>) -> sluice_engine::Result<()> {
        let mut stored = positions_from(&positions)?;
        let mut pending = VecDeque::new();
        for path in std::mem::take(&mut self.pending) {
            match stored.remove(&key(&path)) {
                Some(p) if p.done => self.finished.push(p),
                Some(p) => {
                    self.resume.insert(p.path.clone(), p);
                    pending.push_back(path);
                }
                None => pending.push_back(path),
            }
        }
        self.pending = pending;
        Ok(())
    }

    /// Cancel-safe: it never waits, so a call is never dropped midway.
    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        loop {
            if let Some(e) = self.failed.take() {
                // Nothing after a failed record is read: the source ends here.
                self.pending.clear();
                self.current = None;
                return Err(e);
            }
            match &mut self.current {
                Some(Reader::Parquet { path, reader, rows }) => match reader.next() {
                    Some(Ok(batch)) => {
                        *rows += batch.num_rows() as u64;
                        return self.with_partitions(batch).map(Some);
                    }
                    Some(Err(e)) => return Err(io_error(path, format!("bad record: {e}")).into()),
                    None => self.close_current(),
                },
                Some(Reader::Text(_)) => match self.next_text_batch()? {
                    Some(batch) if batch.num_rows() > 0 => return self.with_partitions(batch).map(Some),
                    Some(_) => {}
                    None => self.close_current(),
                },
                None => {
                    let Some(path) = self.pending.pop_front() else { return Ok(None) };
                    self.current_values =
                        self.partitions.values(&relative(&self.root, &path)).map_err(|e| io_error(&path, e))?;
                    self.current = Some(self.reader(&path)?);
                }
            }
        }
    }
}
