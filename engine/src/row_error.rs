//! Names the row a stateless step failed on.
//!
//! An expression that fails on one row (an integer division by zero, a cast of a
//! string that is not a number) fails its whole batch, and the error says
//! nothing about which row it was. Someone whose query ran for hours needs that
//! row to find the bad input, so the step that failed evaluates halves of the
//! batch again until one row is left (about 2·log2(rows) evaluations, paid only
//! when a batch fails) and reports that row with its column values:
//! `filter: Divide by zero error in row {user_id=3, qty=0}`.

use std::fmt;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::EngineError;

/// Values longer than this are cut in a reported row.
const MAX_VALUE_CHARS: usize = 64;

/// An operator's expression failed on the query's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The step that failed, as EXPLAIN names it.
    pub operator: String,
    /// The expression's error.
    pub message: String,
    /// The first row that fails on its own, as `{col=value, ...}`; `None` when
    /// only several rows together fail.
    pub row: Option<String>,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.operator, self.message)?;
        match &self.row {
            Some(row) => write!(f, " in row {row}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for RowError {}

/// The query failed on the user's data: theirs to act on, like a plan error.
impl From<RowError> for EngineError {
    fn from(e: RowError) -> Self {
        EngineError::Plan(e.to_string())
    }
}

/// The error of `operator` evaluating `batch`, naming the first row that fails.
/// `eval` evaluates the step's expressions on a batch, as the step did when it
/// got `error`; it is called again on slices of `batch`, so it must not keep
/// state between calls.
pub fn locate<T, E: fmt::Display>(
    operator: &str,
    batch: &RecordBatch,
    error: E,
    eval: impl FnMut(&RecordBatch) -> Result<T, E>,
) -> RowError {
    match first_failing_row(batch, eval) {
        Some((row, e)) => RowError { operator: operator.to_string(), message: e.to_string(), row: Some(format_row(batch, row)) },
        None => RowError { operator: operator.to_string(), message: error.to_string(), row: None },
    }
}

/// The index of the first row of `batch` on which `eval` fails alone, with its
/// error, found by bisection; `None` when no single row fails alone.
pub fn first_failing_row<T, E>(batch: &RecordBatch, mut eval: impl FnMut(&RecordBatch) -> Result<T, E>) -> Option<(usize, E)> {
    let (mut lo, mut hi) = (0, batch.num_rows());
    let mut error = None;
    while hi > lo {
        if hi - lo == 1 {
            return match error {
                Some(e) => Some((lo, e)),
                None => eval(&batch.slice(lo, 1)).err().map(|e| (lo, e)),
            };
        }
        let mid = lo + (hi - lo) / 2;
        match eval(&batch.slice(lo, mid - lo)) {
            Err(e) => (hi, error) = (mid, Some(e)),
            Ok(_) => match eval(&batch.slice(mid, hi - mid)) {
                Err(e) => (lo, error) = (mid, Some(e)),
                Ok(_) => return None,
            },
        }
    }
    None
}

/// Row `row` of `batch` as `{col=value, ...}`: strings quoted, NULL for nulls.
pub fn format_row(batch: &RecordBatch, row: usize) -> String {
    let options = FormatOptions::default().with_null("NULL");
    let schema = batch.schema();
    let cells: Vec<String> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let value = match ArrayFormatter::try_new(column.as_ref(), &options) {
                Ok(f) => f.value(row).to_string(),
                Err(_) => "?".to_string(),
            };
            let value = cut(&value);
            let quoted = matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                && column.is_valid(row);
            match quoted {
                true => format!("{}='{value}'", field.name()),
                false => format!("{}={value}", field.name()),
            }
        })
        .collect();
    format!("{{{}}}", cells.join(", "))
}

fn cut(value: &str) -> String {
    match value.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::compute::kernels::numeric::div;
    use datafusion::arrow::error::ArrowError;

    use super::*;

    fn batch(qty: Vec<Option<i64>>) -> Result<RecordBatch, ArrowError> {
        let n = qty.len();
        let names: Vec<Option<String>> = (0..n).map(|i| (i % 2 == 0).then(|| format!("user{i}"))).collect();
        RecordBatch::try_from_iter(vec![
            ("user", Arc::new(StringArray::from(names)) as ArrayRef),
            ("amount", Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 10))) as ArrayRef),
            ("qty", Arc::new(Int64Array::from(qty)) as ArrayRef),
        ])
    }

    /// `amount / qty`, as a projection would evaluate it.
    fn per_unit(b: &RecordBatch) -> Result<ArrayRef, ArrowError> {
        div(b.column(1), b.column(2))
    }

    #[test]
    fn names_the_first_failing_row() -> Result<(), ArrowError> {
        for n in [1, 2, 3, 7, 64, 1000] {
            for bad in [0, n / 2, n - 1] {
                let mut qty: Vec<Option<i64>> = (0..n).map(|_| Some(1)).collect();
                qty[bad] = Some(0);
                if bad + 1 < n {
                    qty[n - 1] = Some(0);
                }
                let b = batch(qty)?;
                let Err(e) = per_unit(&b) else { panic!("the batch should fail") };
                let found = first_failing_row(&b, per_unit).map(|(row, _)| row);
                assert_eq!(found, Some(bad), "{n} rows, bad row {bad}");
                let err = locate("projection", &b, e, per_unit);
                assert_eq!(err.row, Some(format_row(&b, bad)));
            }
        }
        Ok(())
    }

    #[test]
    fn message_shows_the_operator_and_the_values() -> Result<(), ArrowError> {
        let b = batch(vec![Some(2), None, Some(0)])?;
        let Err(e) = per_unit(&b) else { panic!("the batch should fail") };
        let err = locate("projection", &b, e, per_unit);
        assert_eq!(err.to_string(), "projection: Divide by zero error in row {user='user2', amount=20, qty=0}");
        assert_eq!(format_row(&b, 1), "{user=NULL, amount=10, qty=NULL}");
        Ok(())
    }

    #[test]
    fn a_failure_of_several_rows_together_keeps_the_error() -> Result<(), ArrowError> {
        let b = batch(vec![Some(1), Some(1), Some(1), Some(1)])?;
        // Fails only on batches of more than one row: no single row is to blame.
        let together = |b: &RecordBatch| if b.num_rows() > 1 { Err("too many rows") } else { Ok(()) };
        let err = locate("sink", &b, "too many rows", together);
        assert_eq!(err.to_string(), "sink: too many rows");
        assert_eq!(err.row, None);
        Ok(())
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(100);
        assert_eq!(cut(&long).chars().count(), MAX_VALUE_CHARS + 1);
        assert_eq!(cut("short"), "short");
    }
}
