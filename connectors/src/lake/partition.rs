//! Hive-style partition paths (`dt=2024-01-01/hour=07/`) computed row by row.

use arrow::array::{Array, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{ConnectorError, Result};

/// One level of a partition path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionLevel {
    /// `dt=YYYY-MM-DD` from the event-time column.
    Date,
    /// `hour=HH` from the event-time column.
    Hour,
    /// `name=value` from a column, which is then left out of the files (as Hive does).
    Column(String),
}

/// How rows are spread over partition directories.
#[derive(Debug, Clone)]
pub struct Partitioning {
    pub levels: Vec<PartitionLevel>,
    /// Index of the event-time column used by `dt` and `hour`.
    time_column: Option<usize>,
    /// Indices of the columns written into the files.
    kept: Vec<usize>,
    file_schema: SchemaRef,
}

impl Partitioning {
    /// `spec` lists levels separated by commas: `dt`, `hour`, or column names.
    pub fn try_new(table: &str, schema: &SchemaRef, spec: Option<&str>, time_column: Option<&str>) -> Result<Self> {
        let err = |reason: String| ConnectorError::Schema { table: table.to_string(), reason };
        let levels: Vec<PartitionLevel> = spec
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.to_ascii_lowercase().as_str() {
                "dt" => PartitionLevel::Date,
                "hour" => PartitionLevel::Hour,
                _ => PartitionLevel::Column(s.to_string()),
            })
            .collect();
        let needs_time = levels.iter().any(|l| matches!(l, PartitionLevel::Date | PartitionLevel::Hour));
        let time_column = match (needs_time, time_column) {
            (false, _) => None,
            (true, None) => return Err(err("partitioning by dt or hour needs 'partition.time-column'".into())),
            (true, Some(c)) => {
                let (i, f) = schema.column_with_name(c).ok_or_else(|| err(format!("no time column '{c}'")))?;
                if !matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(_, _)) {
                    return Err(err(format!("time column '{c}' is {}, not a TIMESTAMP", f.data_type())));
                }
                Some(i)
            }
        };
        let mut excluded = Vec::new();
        for level in &levels {
            if let PartitionLevel::Column(c) = level {
                let (i, _) = schema.column_with_name(c).ok_or_else(|| err(format!("no partition column '{c}'")))?;
                excluded.push(i);
            }
        }
        let kept: Vec<usize> = (0..schema.fields().len()).filter(|i| !excluded.contains(i)).collect();
        let file_schema = std::sync::Arc::new(schema.project(&kept).map_err(|e| err(e.to_string()))?);
        Ok(Partitioning { levels, time_column, kept, file_schema })
    }

    /// The schema of the Parquet files (partition columns left out).
    pub fn file_schema(&self) -> &SchemaRef {
        &self.file_schema
    }

    /// `batch` split by partition directory (`""` when unpartitioned), with the
    /// partition columns removed.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let paths = self.row_dirs(batch)?;
        let projected = self.file_columns(batch)?;
        let mut groups: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        for (r, p) in paths.iter().enumerate() {
            groups.entry(p.as_str()).or_default().push(r as u32);
        }
        if groups.len() == 1 {
            let path = paths.first().cloned().unwrap_or_default();
            return Ok(vec![(path, projected)]);
        }
        groups
            .into_iter()
            .map(|(p, rows)| Ok((p.to_string(), take_record_batch(&projected, &UInt32Array::from(rows)).map_err(arrow_err)?)))
            .collect()
    }

    /// The columns that go into the files.
    pub fn file_columns(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        batch.project(&self.kept).map_err(arrow_err)
    }

    /// The partition directory of every row of `batch`.
    pub fn row_dirs(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let to_err = arrow_err;
        let n = batch.num_rows();
        let mut paths: Vec<String> = vec![String::new(); n];
        let times = match self.time_column {
            Some(i) => Some(sluice_engine::time::as_epoch_nanos(batch.column(i)).map_err(|e| ConnectorError::External {
                connector: "lake".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let options = FormatOptions::default().with_null("__HIVE_DEFAULT_PARTITION__");
        for level in &self.levels {
            match level {
                PartitionLevel::Date | PartitionLevel::Hour => {
                    let Some(times) = &times else { continue };
                    for (r, path) in paths.iter_mut().enumerate() {
                        let part = if times.is_null(r) {
                            "__HIVE_DEFAULT_PARTITION__".to_string()
                        } else {
                            let t = chrono::DateTime::from_timestamp_nanos(times.value(r)).naive_utc();
                            match level {
                                PartitionLevel::Date => t.format("%Y-%m-%d").to_string(),
                                _ => t.format("%H").to_string(),
                            }
                        };
                        let key = if *level == PartitionLevel::Date { "dt" } else { "hour" };
                        path.push_str(&format!("{key}={part}/"));
                    }
                }
                PartitionLevel::Column(c) => {
                    let column = batch.column_by_name(c).ok_or_else(|| ConnectorError::External {
                        connector: "lake".into(),
                        message: format!("missing partition column '{c}'"),
                    })?;
                    let f = ArrayFormatter::try_new(column.as_ref(), &options).map_err(to_err)?;
                    for (r, path) in paths.iter_mut().enumerate() {
                        let value: String = f.value(r).to_string().chars().map(|ch| if ch == '/' || ch == '=' { '_' } else { ch }).collect();
                        path.push_str(&format!("{c}={value}/"));
                    }
                }
            }
        }
        Ok(paths)
    }
}

fn arrow_err(e: arrow::error::ArrowError) -> ConnectorError {
    ConnectorError::External { connector: "lake".into(), message: e.to_string() }
}
