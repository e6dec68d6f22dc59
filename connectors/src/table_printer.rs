//! A table that grows as results arrive: header once, then rows batch by batch.
//!
//! Column widths are fixed from the header and the first batch (so rows line up
//! without waiting for the end of an unbounded query); a wider value later simply
//! widens its own row. A value of several lines (`SHOW CREATE TABLE`) takes as
//! many lines of the table, as psql prints it.

use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::Result;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Formats batches of one schema as rows of a text table.
pub struct TablePrinter {
    schema: SchemaRef,
    widths: Option<Vec<usize>>,
    rows: usize,
}

impl TablePrinter {
    pub fn new(schema: SchemaRef) -> Self {
        TablePrinter { schema, widths: None, rows: 0 }
    }

    /// Rows formatted so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The text for `batch`: the header first if this is the first batch.
    pub fn format_batch(&mut self, batch: &RecordBatch) -> Result<String> {
        let cells = format_cells(batch)?;
        let mut out = String::new();
        if self.widths.is_none() {
            let mut widths: Vec<usize> = self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().chars().count().max(min_width(f.data_type())))
                .collect();
            for row in &cells {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.lines().map(|l| l.chars().count()).max().unwrap_or(0));
                }
            }
            let names: Vec<String> = self.schema.fields().iter().map(|f| f.name().clone()).collect();
            out.push_str(&separator(&widths));
            out.push_str(&line(&names, &widths));
            out.push_str(&separator(&widths));
            self.widths = Some(widths);
        }
        if let Some(widths) = &self.widths {
            for row in &cells {
                out.push_str(&line(row, widths));
            }
        }
        self.rows += cells.len();
        Ok(out)
    }

    /// The closing line, or an empty table's header if no rows came.
    pub fn finish(&mut self) -> String {
        match &self.widths {
            Some(w) => separator(w),
            None => {
                let widths: Vec<usize> = self.schema.fields().iter().map(|f| f.name().chars().count()).collect();
                let names: Vec<String> = self.schema.fields().iter().map(|f| f.name().clone()).collect();
                format!("{}{}{}", separator(&widths), line(&names, &widths), separator(&widths))
            }
        }
    }
}

/// Every value of `batch` as display text, row by row (NULL for nulls).
pub fn format_cells(batch: &RecordBatch) -> Result<Vec<Vec<String>>> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..batch.num_rows())
        .map(|r| formatters.iter().map(|f| f.value(r).to_string()).collect())
        .collect())
}

/// Room left for values of a type whose width the first rows may not show.
fn min_width(t: &DataType) -> usize {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 16,
        DataType::Timestamp(_, _) => 19,
        DataType::Float32 | DataType::Float64 => 8,
        t if t.is_integer() => 6,
        _ => 0,
    }
}

fn separator(widths: &[usize]) -> String {
    let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    format!("+{}+\n", parts.join("+"))
}

/// One row: a line of the table per line of its tallest value.
fn line(cells: &[String], widths: &[usize]) -> String {
    let lines: Vec<Vec<&str>> = cells.iter().map(|c| c.lines().collect()).collect();
    let height = lines.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut out = String::new();
    for i in 0..height {
        let parts: Vec<String> = lines
            .iter()
            .zip(widths)
            .map(|(l, w)| format!(" {:<w$} ", l.get(i).copied().unwrap_or(""), w = *w))
            .collect();
        out.push_str(&format!("|{}|\n", parts.join("|")));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn header_once_then_rows() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_type", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![Some("checkout"), None])), Arc::new(Int64Array::from(vec![3, 12]))],
        )?;
        let mut p = TablePrinter::new(schema);
        let first = p.format_batch(&batch)?;
        let second = p.format_batch(&batch)?;
        assert_eq!(
            first,
            "+------------------+--------+\n\
             | event_type       | n      |\n\
             +------------------+--------+\n\
             | checkout         | 3      |\n\
             | NULL             | 12     |\n"
        );
        assert_eq!(second, "| checkout         | 3      |\n| NULL             | 12     |\n");
        assert_eq!(p.finish(), "+------------------+--------+\n");
        assert_eq!(p.rows(), 4);
        Ok(())
    }

    #[test]
    fn a_value_of_several_lines_takes_several_lines() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![Field::new("result", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["CREATE TABLE t (\n  a BIGINT\n)"]))])?;
        let mut p = TablePrinter::new(schema);
        assert_eq!(
            p.format_batch(&batch)?,
            "+------------------+\n\
             | result           |\n\
             +------------------+\n\
             | CREATE TABLE t ( |\n\
             |   a BIGINT       |\n\
             | )                |\n"
        );
        assert_eq!(p.rows(), 1);
        Ok(())
    }
}
