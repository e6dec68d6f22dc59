//! How result rows are written as text, batch by batch as they arrive: a
//! growing table for people, CSV, a JSON array or JSON lines for programs.
//!
//! The names and meanings are datafusion-cli's (`--format table|csv|json|ndjson`):
//! `json` is one JSON array of row objects, `ndjson` one object per line. A
//! continuous query's output has no end known in advance, so the array is
//! written as rows come (`[` first, one row per line) and closed when the query
//! ends or is stopped; a reader that needs whole values while the query still
//! runs (`| jq -c`, `tail -f`) wants `ndjson`. An updating query's change kind
//! is its first column, `op` (`+I`, `-U`, `+U`, `-D`), so it is a CSV column and
//! a JSON field like any other. CSV starts with a header line (even when no row
//! comes) and writes NULL as an empty field; JSON writes it as `null`.

use std::fmt;
use std::str::FromStr;

use arrow::datatypes::SchemaRef;
use arrow::error::Result;
use arrow::record_batch::RecordBatch;

use crate::table_printer::TablePrinter;

/// A way of writing rows as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// A table growing as rows arrive (see [`TablePrinter`]).
    #[default]
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON array of row objects, closed when the output ends.
    Json,
    /// One JSON object per row, one per line.
    NdJson,
}

impl OutputFormat {
    /// The names [`FromStr`] takes, for messages.
    pub const NAMES: &'static str = "table, csv, json, ndjson";
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            // datafusion-cli spells it nd-json.
            "ndjson" | "nd-json" => Ok(OutputFormat::NdJson),
            other => Err(format!("unknown format '{other}' (one of {})", OutputFormat::NAMES)),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::NdJson => "ndjson",
        })
    }
}

/// Writes batches of one schema in one [`OutputFormat`]: call
/// [`ResultWriter::format_batch`] per batch as it arrives, then
/// [`ResultWriter::finish`] once, when the output ends.
pub struct ResultWriter {
    format: OutputFormat,
    schema: SchemaRef,
    table: TablePrinter,
    rows: usize,
    /// Whether anything was written: the CSV header, or a JSON array's `[`.
    started: bool,
}

impl ResultWriter {
    pub fn new(schema: SchemaRef, format: OutputFormat) -> Self {
        ResultWriter { format, table: TablePrinter::new(schema.clone()), schema, rows: 0, started: false }
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The text for `batch`.
    pub fn format_batch(&mut self, batch: &RecordBatch) -> Result<String> {
        match self.format {
            OutputFormat::Table => {
                let text = self.table.format_batch(batch)?;
                self.rows = self.table.rows();
                Ok(text)
            }
            OutputFormat::Csv => {
                let mut out = Vec::new();
                let mut writer = arrow_csv::WriterBuilder::new().with_header(!self.started).build(&mut out);
                writer.write(batch)?;
                drop(writer);
                self.started = true;
                self.rows += batch.num_rows();
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            OutputFormat::Json | OutputFormat::NdJson => {
                let objects = json_objects(batch)?;
                Ok(self.format_json_objects(&objects))
            }
        }
    }

    /// The text for rows that are already JSON objects, one per string, in
    /// column order (as a Sluice server streams them). Only for the JSON formats.
    pub fn format_json_objects(&mut self, objects: &[String]) -> String {
        self.rows += objects.len();
        let mut out = String::new();
        for object in objects {
            match self.format {
                OutputFormat::NdJson => {}
                // The separator goes before each row but the first: the last
                // row is not known to be last until the output ends.
                _ if self.started => out.push_str(",\n"),
                _ => out.push_str("[\n"),
            }
            self.started = true;
            out.push_str(object);
            if self.format == OutputFormat::NdJson {
                out.push('\n');
            }
        }
        out
    }

    /// What ends the output: the table's last line, a JSON array's `]`, a
    /// CSV header if no row came.
    pub fn finish(&mut self) -> String {
        match self.format {
            OutputFormat::Table => self.table.finish(),
            OutputFormat::Csv if !self.started => {
                self.started = true;
                let names: Vec<String> = self.schema.fields().iter().map(|f| csv_field(f.name())).collect();
                format!("{}\n", names.join(","))
            }
            OutputFormat::Json if self.started => "\n]\n".to_string(),
            OutputFormat::Json => "[]\n".to_string(),
            OutputFormat::Csv | OutputFormat::NdJson => String::new(),
        }
    }
}

/// Each row of `batch` as a JSON object (NULLs written as `null`, so every
/// object has every column).
fn json_objects(batch: &RecordBatch) -> Result<Vec<String>> {
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let text = String::from_utf8_lossy(&writer.into_inner()).into_owned();
    Ok(text.lines().map(str::to_string).collect())
}

/// A CSV field, quoted if it must be.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ops: &[&str], names: &[Option<&str>]) -> Result<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("op", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let n = Int64Array::from_iter_values(0..ops.len() as i64);
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ops.to_vec())), Arc::new(StringArray::from(names.to_vec())), Arc::new(n)])
    }

    fn write_all(format: OutputFormat, batches: &[RecordBatch]) -> Result<(String, usize)> {
        let mut w = ResultWriter::new(batches[0].schema(), format);
        let mut out = String::new();
        for b in batches {
            out.push_str(&w.format_batch(b)?);
        }
        out.push_str(&w.finish());
        Ok((out, w.rows()))
    }

    #[test]
    fn csv_has_one_header_and_quotes_what_it_must() -> Result<()> {
        let batches = [batch(&["+I"], &[Some("a,b")])?, batch(&["-U", "+U"], &[None, Some("say \"hi\"")])?];
        let (out, rows) = write_all(OutputFormat::Csv, &batches)?;
        assert_eq!(out, "op,name,n\n+I,\"a,b\",0\n-U,,0\n+U,\"say \"\"hi\"\"\",1\n");
        assert_eq!(rows, 3);
        let (empty, _) = write_all(OutputFormat::Csv, &[batch(&[], &[])?])?;
        assert_eq!(empty, "op,name,n\n", "an empty result still has its header");
        Ok(())
    }

    #[test]
    fn json_is_one_array_and_ndjson_one_object_per_line() -> Result<()> {
        let batches = [batch(&["+I"], &[Some("a")])?, batch(&["-D"], &[None])?];
        let (json, _) = write_all(OutputFormat::Json, &batches)?;
        assert_eq!(json, "[\n{\"op\":\"+I\",\"name\":\"a\",\"n\":0},\n{\"op\":\"-D\",\"name\":null,\"n\":0}\n]\n");
        let (ndjson, rows) = write_all(OutputFormat::NdJson, &batches)?;
        assert_eq!(ndjson, "{\"op\":\"+I\",\"name\":\"a\",\"n\":0}\n{\"op\":\"-D\",\"name\":null,\"n\":0}\n");
        assert_eq!(rows, 2);
        assert_eq!(write_all(OutputFormat::Json, &[batch(&[], &[])?])?.0, "[]\n");
        Ok(())
    }

    #[test]
    fn names_parse_as_datafusion_cli_spells_them() {
        for f in [OutputFormat::Table, OutputFormat::Csv, OutputFormat::Json, OutputFormat::NdJson] {
            assert_eq!(f.to_string().parse::<OutputFormat>(), Ok(f));
        }
        assert_eq!("ND-JSON".parse::<OutputFormat>(), Ok(OutputFormat::NdJson));
        assert!("xml".parse::<OutputFormat>().is_err_and(|e| e.contains("one of table, csv, json, ndjson")));
    }
}
