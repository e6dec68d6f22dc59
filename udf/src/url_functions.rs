//! URL parsing for clickstream pages: host, path and one query parameter.
//!
//! ```sql
//! SELECT url_host(page), url_path(page), url_query_param(page, 'utm_source') FROM clicks;
//! ```
//! A value that is not an absolute URL yields NULL, never an error.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use url::Url;

fn as_strings(value: &ColumnarValue, rows: usize) -> Result<StringArray> {
    let array = value.clone().into_array(rows)?;
    let utf8 = cast(&array, &DataType::Utf8)?;
    match utf8.as_any().downcast_ref::<StringArray>() {
        Some(s) => Ok(s.clone()),
        None => exec_err!("expected text"),
    }
}

fn rows_of(args: &[ColumnarValue]) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(arr) => Some(arr.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1)
}

/// Builds a string function of `arity` text arguments from a per-row function.
fn url_udf(name: &str, arity: usize, f: fn(&Url, &[&str]) -> Option<String>) -> ScalarUDF {
    let all_scalar = move |args: &[ColumnarValue]| args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    create_udf(
        name,
        vec![DataType::Utf8; arity],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let rows = rows_of(args);
            let columns = args.iter().map(|a| as_strings(a, rows)).collect::<Result<Vec<_>>>()?;
            let out: StringArray = (0..rows)
                .map(|i| {
                    if columns.iter().any(|c| c.is_null(i)) {
                        return None;
                    }
                    let url = Url::parse(columns[0].value(i)).ok()?;
                    let rest: Vec<&str> = columns[1..].iter().map(|c| c.value(i)).collect();
                    f(&url, &rest)
                })
                .collect();
            if all_scalar(args) {
                return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
            }
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    )
}

/// `url_host`, `url_path` and `url_query_param`.
pub fn url_functions() -> Vec<ScalarUDF> {
    vec![
        url_udf("url_host", 1, |u, _| u.host_str().map(str::to_string)),
        url_udf("url_path", 1, |u, _| Some(u.path().to_string())),
        url_udf("url_query_param", 2, |u, rest| {
            let name = rest.first()?;
            u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
        }),
    ]
}
