//! `connector = 'stdout'`: results printed to standard output.
//!
//! Options: `format` = `table` (default: a table growing as rows arrive), `csv`
//! (a header line, then a line per row), or `json` (one JSON object per line,
//! as Flink's `json` format writes records; `ndjson` is the same). An updating
//! query's `op` column is a CSV column and a JSON field like the others, so
//! what is printed parses as the changelog it is (see `output_format`).

use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_engine::{EngineError, Sink};

use crate::error::{ConnectorError, Result};
use crate::output_format::{OutputFormat, ResultWriter};
use crate::registry::{Connector, TableSpec};

/// How rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutFormat {
    Table,
    Csv,
    /// One JSON object per line.
    Json,
}

impl StdoutFormat {
    fn output(self) -> OutputFormat {
        match self {
            StdoutFormat::Table => OutputFormat::Table,
            StdoutFormat::Csv => OutputFormat::Csv,
            StdoutFormat::Json => OutputFormat::NdJson,
        }
    }
}

fn parse_config(table: &TableSpec) -> Result<StdoutFormat> {
    let mut o = table.options();
    let format = match o.take_opt("format").map(|f| f.to_ascii_lowercase()).as_deref() {
        None | Some("table") => StdoutFormat::Table,
        Some("csv") => StdoutFormat::Csv,
        Some("json") | Some("ndjson") => StdoutFormat::Json,
        Some(other) => {
            return Err(ConnectorError::Option {
                connector: "stdout".into(),
                key: "format".into(),
                reason: format!("'{other}' is not one of table, csv, json"),
            })
        }
    };
    o.ensure_empty()?;
    Ok(format)
}

/// The `stdout` connector (sink only).
pub struct StdoutConnector;

impl Connector for StdoutConnector {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        parse_config(table).map(|_| ())
    }

    fn sink(&self, table: &TableSpec) -> Result<Box<dyn sluice_engine::Sink>> {
        let format = parse_config(table)?;
        Ok(Box::new(StdoutSink::new(table.schema.clone(), format)))
    }
}

/// Prints batches to standard output as they arrive.
pub struct StdoutSink {
    format: StdoutFormat,
    writer: ResultWriter,
}

impl StdoutSink {
    pub fn new(schema: SchemaRef, format: StdoutFormat) -> Self {
        StdoutSink { format, writer: ResultWriter::new(schema, format.output()) }
    }
}

/// A closed stdout (`sluice run ... | head`) stays an I/O error of kind
/// `BrokenPipe`, so the front end can end the query quietly: nobody reads on.
fn stdout_error(e: std::io::Error) -> EngineError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => EngineError::Io(e),
        _ => EngineError::connector("stdout", e),
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn describe(&self) -> String {
        format!("stdout ({:?})", self.format).to_lowercase()
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> sluice_engine::Result<()> {
        let text = self.writer.format_batch(&batch)?;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).map_err(stdout_error)?;
        out.flush().map_err(stdout_error)
    }

    async fn finish(&mut self) -> sluice_engine::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(self.writer.finish().as_bytes()).map_err(stdout_error)?;
        out.flush().map_err(stdout_error)
    }
}
