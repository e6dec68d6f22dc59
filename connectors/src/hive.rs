//! Hive-style partition directories on read: `day=2026-01-01/region=eu/part-0.parquet`.
//!
//! Hive, Spark, pyarrow and Sluice's own lake sink leave a partition column
//! out of the files and write its value into a directory name instead. A table
//! that declares a column some directory below its root names (`name=value`)
//! therefore reads that column from the path, not from the files: the value is
//! percent-decoded (pyarrow and Spark escape special characters),
//! `__HIVE_DEFAULT_PARTITION__` stands for NULL, and the text is cast to the
//! declared type, as DataFusion's listing tables do. A file whose path does
//! not name a partition column has NULL there. Directories naming no declared
//! column (the lake's `dt=` and `hour=`) are only directories.
//!
//! The file and lake sources and the batch table over their files
//! ([`crate::file_table`]) all fill partition columns here, so a query reads
//! the same rows in streaming and in batch mode.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::ScalarValue;

/// The directory name Hive writes for a NULL partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The `name=value` pairs of the directories in `relative` (a file's path
/// below the table's root, `/`-separated), outermost first; the file's own
/// name is not one. Values are percent-decoded.
pub fn directory_values(relative: &str) -> Vec<(String, String)> {
    let mut parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    parts.pop();
    parts
        .into_iter()
        .filter_map(|p| p.split_once('='))
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.to_string(), percent_decode(value)))
        .collect()
}

/// `%XX` escapes decoded; text that is not a valid escape, or decodes to
/// invalid UTF-8, is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// Which declared columns of a table its files' paths hold, and the columns
/// left for the files themselves.
#[derive(Debug, Clone)]
pub struct PartitionColumns {
    declared: SchemaRef,
    /// Indices into `declared` of the partition columns, in declared order.
    columns: Vec<usize>,
    /// `declared` without the partition columns.
    file_schema: SchemaRef,
}

impl PartitionColumns {
    /// The declared columns that a directory of one of the files (paths below
    /// the table's root) names.
    pub fn discover<'a>(declared: &SchemaRef, relative_paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut named = std::collections::HashSet::new();
        for path in relative_paths {
            named.extend(directory_values(path).into_iter().map(|(name, _)| name));
        }
        let columns = (0..declared.fields().len()).filter(|i| named.contains(declared.field(*i).name())).collect();
        Self::new(declared, columns)
    }

    fn new(declared: &SchemaRef, columns: Vec<usize>) -> Self {
        let kept: Vec<usize> = (0..declared.fields().len()).filter(|i| !columns.contains(i)).collect();
        let fields: Vec<FieldRef> = kept.iter().map(|i| Arc::clone(&declared.fields()[*i])).collect();
        let file_schema = Arc::new(Schema::new_with_metadata(fields, declared.metadata().clone()));
        PartitionColumns { declared: Arc::clone(declared), columns, file_schema }
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The declared columns the files hold.
    pub fn file_schema(&self) -> &SchemaRef {
        &self.file_schema
    }

    /// The partition columns, in declared order.
    pub fn fields(&self) -> Vec<FieldRef> {
        self.columns.iter().map(|i| Arc::clone(&self.declared.fields()[*i])).collect()
    }

    /// Where declared column `i` is among the file's columns followed by the
    /// partition columns (the order DataFusion's file scans produce).
    pub fn scan_index(&self, i: usize) -> usize {
        match self.columns.iter().position(|c| *c == i) {
            Some(p) => self.file_schema.fields().len() + p,
            None => i - self.columns.iter().filter(|c| **c < i).count(),
        }
    }

    /// The partition values of the file at `relative` (below the table's
    /// root), typed as declared; an error names the column and the value.
    pub fn values(&self, relative: &str) -> Result<Vec<ScalarValue>, String> {
        let found = directory_values(relative);
        self.columns
            .iter()
            .map(|i| {
                let field = self.declared.field(*i);
                let value = found.iter().rev().find(|(name, _)| name == field.name()).map(|(_, v)| v.as_str());
                match value {
                    None | Some(NULL_PARTITION) => ScalarValue::try_from(field.data_type()).map_err(|e| e.to_string()),
                    Some(text) => ScalarValue::try_from_string(text.to_string(), field.data_type()).map_err(|e| {
                        format!("partition directory {}={text} is not a {}: {e}", field.name(), field.data_type())
                    }),
                }
            })
            .collect()
    }

    /// `batch` (of [`Self::file_schema`]) with the partition columns put in
    /// their declared places, holding `values` on every row.
    pub fn fill(&self, batch: &RecordBatch, values: &[ScalarValue]) -> Result<RecordBatch, String> {
        if self.columns.is_empty() {
            return Ok(batch.clone());
        }
        let rows = batch.num_rows();
        let mut file_columns = batch.columns().iter();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.declared.fields().len());
        for i in 0..self.declared.fields().len() {
            match self.columns.iter().position(|c| *c == i) {
                Some(p) => {
                    let value = values.get(p).ok_or("internal: a partition value is missing")?;
                    arrays.push(value.to_array_of_size(rows).map_err(|e| e.to_string())?);
                }
                None => arrays.push(Arc::clone(file_columns.next().ok_or("internal: a file column is missing")?)),
            }
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.declared), arrays, &options).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Date32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("region", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn directories_name_values_and_files_do_not() {
        assert_eq!(
            directory_values("dt=2024-01-01/region=a%2Fb/part=0.parquet"),
            [("dt".to_string(), "2024-01-01".to_string()), ("region".to_string(), "a/b".to_string())]
        );
        assert!(directory_values("part-0.parquet").is_empty());
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn declared_columns_named_by_directories_come_from_the_path() -> TestResult {
        let p = PartitionColumns::discover(&declared(), ["dt=x/day=2024-01-02/a.json", "day=__HIVE_DEFAULT_PARTITION__/b.json"]);
        assert_eq!(p.file_schema().fields().len(), 3);
        assert_eq!((p.scan_index(0), p.scan_index(1), p.scan_index(2), p.scan_index(3)), (0, 3, 1, 2));
        let file = RecordBatch::try_new(
            Arc::clone(p.file_schema()),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec![Some("eu"), None])),
            ],
        )?;
        let filled = p.fill(&file, &p.values("dt=x/day=2024-01-02/a.json")?)?;
        assert_eq!(filled.schema(), declared());
        let days = filled.column(1).as_any().downcast_ref::<Date32Array>().ok_or("not dates")?;
        assert_eq!(days.value_as_date(1).map(|d| d.to_string()), Some("2024-01-02".to_string()));
        let nulls = p.fill(&file, &p.values("day=__HIVE_DEFAULT_PARTITION__/b.json")?)?;
        assert_eq!(nulls.column(1).null_count(), 2);
        let e = p.values("day=soon/c.json").err().unwrap_or_default();
        assert!(e.contains("day=soon is not a Date32"), "{e}");
        Ok(())
    }
}
