//! Flink's arithmetic functions that DataFusion spells differently.
//!
//! ```sql
//! SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0;  -- Nexmark q2
//! ```

use std::sync::Arc;

use datafusion::arrow::compute::kernels::numeric::rem;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};

/// `mod(a, b)`: the remainder of `a / b` for integers (as `a % b`: negative
/// only when `a` is), NULL when either is NULL; dividing by zero fails the query.
pub fn mod_function() -> ScalarUDF {
    create_udf(
        "mod",
        vec![DataType::Int64, DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let rows = args
                .iter()
                .find_map(|a| match a {
                    ColumnarValue::Array(arr) => Some(arr.len()),
                    ColumnarValue::Scalar(_) => None,
                })
                .unwrap_or(1);
            let [a, b] = args else {
                return datafusion::common::exec_err!("mod takes two arguments");
            };
            let out = rem(&a.to_array(rows)?, &b.to_array(rows)?)?;
            if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
            }
            Ok(ColumnarValue::Array(out))
        }),
    )
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn mod_keeps_the_sign_of_the_dividend_and_nulls() -> datafusion::error::Result<()> {
        let ctx = SessionContext::new();
        ctx.register_udf(mod_function());
        let sql = "SELECT mod(7, 3), MOD(-7, 3), mod(CAST(246 AS INT), 123), mod(NULL, 2), mod(a, 4) \
                   FROM (VALUES (10), (13)) t(a)";
        let batches = ctx.sql(sql).await?.collect().await?;
        let text = pretty_format_batches(&batches)?.to_string();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows, vec![vec!["1", "-1", "0", "", "2"], vec!["1", "-1", "0", "", "1"]]);
        assert!(ctx.sql("SELECT mod(1, 0)").await?.collect().await.is_err(), "dividing by zero fails");
        Ok(())
    }
}
