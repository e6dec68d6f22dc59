//! How far a file source got, per file, so a restored query skips what it read.
//!
//! Files are a file source's splits: lane `i` of `c` reads the files at
//! positions `i, i + c, ...` of the sorted listing. A position therefore names
//! each file the lane has started (finished ones too, or a restored lane would
//! read them again) with how far it got. Restored at another parallelism, a lane
//! takes every lane's rows and keeps those of the files it reads now.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::checkpoint_rows::{column, unfit};
use crate::error::Result;

/// How far one file was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePosition {
    /// The file's path as listed from the table's `path`.
    pub path: String,
    /// JSON and CSV: bytes read (every record before them was returned).
    /// Parquet: rows returned.
    pub offset: u64,
    /// JSON and CSV: lines read, so errors name the right line after a restore.
    pub line: u64,
    /// Read to its end.
    pub done: bool,
}

/// The schema of a file source's position in a checkpoint: one row per
/// [`FilePosition`].
pub fn position_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("line", DataType::UInt64, false),
        Field::new("done", DataType::Boolean, false),
    ]))
}

/// `positions` as rows of [`position_schema`].
pub fn position_batch(positions: &[FilePosition]) -> Result<RecordBatch> {
    let paths = StringArray::from_iter_values(positions.iter().map(|p| p.path.as_str()));
    let offsets = UInt64Array::from_iter_values(positions.iter().map(|p| p.offset));
    let lines = UInt64Array::from_iter_values(positions.iter().map(|p| p.line));
    let done = BooleanArray::from(positions.iter().map(|p| p.done).collect::<Vec<_>>());
    RecordBatch::try_new(position_schema(), vec![Arc::new(paths), Arc::new(offsets), Arc::new(lines), Arc::new(done)])
        .map_err(|e| unfit("file", e.to_string()))
}

/// The positions held by rows of one lane, or of every lane, by path. A file
/// found twice keeps the furthest position.
pub fn positions_from(batches: &[RecordBatch]) -> Result<BTreeMap<String, FilePosition>> {
    let mut out: BTreeMap<String, FilePosition> = BTreeMap::new();
    for batch in batches {
        let paths = column::<StringArray>("file", batch, "path", true)?;
        let offsets = column::<UInt64Array>("file", batch, "offset", true)?;
        let lines = column::<UInt64Array>("file", batch, "line", true)?;
        let done = column::<BooleanArray>("file", batch, "done", true)?;
        for i in 0..batch.num_rows() {
            let p = FilePosition {
                path: paths.value(i).to_string(),
                offset: offsets.value(i),
                line: lines.value(i),
                done: done.value(i),
            };
            match out.get(&p.path) {
                Some(seen) if (seen.done, seen.offset) >= (p.done, p.offset) => {}
                _ => {
                    out.insert(p.path.clone(), p);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str, offset: u64, done: bool) -> FilePosition {
        FilePosition { path: path.into(), offset, line: offset / 10, done }
    }

    #[test]
    fn positions_survive_a_round_trip_and_the_furthest_wins() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let lane_a = position_batch(&[at("d/a.json", 120, true), at("d/c.json", 30, false)])?;
        let lane_b = position_batch(&[at("d/b.json", 0, false), at("d/c.json", 10, false)])?;
        let all = positions_from(&[lane_a, lane_b])?;
        assert_eq!(all.len(), 3);
        assert_eq!(all.get("d/a.json"), Some(&at("d/a.json", 120, true)));
        assert_eq!(all.get("d/c.json"), Some(&at("d/c.json", 30, false)));
        Ok(())
    }

    #[test]
    fn rows_of_another_source_are_refused() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let schema = Arc::new(Schema::new(vec![Field::new("partition", DataType::UInt64, false)]));
        let other = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![1]))])?;
        let e = positions_from(&[other]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no column 'path'"), "{e}");
        Ok(())
    }
}
