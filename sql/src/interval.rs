//! Reads SQL interval literals (`INTERVAL '5' SECOND`, `INTERVAL '1 minute'`) as
//! fixed durations, for window sizes and gaps.

use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use sqlparser::ast::{Expr, Value};

use crate::error::{plan_err, Result};

/// The length of an interval literal in nanoseconds; months are rejected (they
/// have no fixed length) and so is anything not positive.
pub fn interval_nanos(expr: &Expr, what: &str) -> Result<i64> {
    let Expr::Interval(interval) = expr else {
        return plan_err(format!("{what} must be an INTERVAL literal, found {expr}"));
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => return plan_err(format!("{what}: unsupported interval value {other}")),
        },
        other => return plan_err(format!("{what}: unsupported interval value {other}")),
    };
    let text = match &interval.leading_field {
        Some(field) => format!("{text} {field}"),
        None => text,
    };
    let parsed = parse_interval_month_day_nano(&text)
        .map_err(|e| crate::SqlError::Plan(format!("{what}: {e}")))?;
    if parsed.months != 0 {
        return plan_err(format!("{what} must not be given in months or years ({expr})"));
    }
    let nanos = i64::from(parsed.days)
        .checked_mul(86_400_000_000_000)
        .and_then(|d| d.checked_add(parsed.nanoseconds));
    match nanos {
        Some(n) if n > 0 => Ok(n),
        _ => plan_err(format!("{what} must be positive ({expr})")),
    }
}

/// An interval literal DataFusion accepts for `nanos`.
pub fn interval_sql(nanos: i64) -> String {
    format!("INTERVAL '{nanos} nanoseconds'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::SluiceDialect;
    use sqlparser::parser::Parser;

    fn nanos(sql: &str) -> Result<i64> {
        let expr = Parser::new(&SluiceDialect).try_with_sql(sql)?.parse_expr()?;
        interval_nanos(&expr, "size")
    }

    #[test]
    fn reads_common_forms() -> Result<()> {
        assert_eq!(nanos("INTERVAL '5' SECOND")?, 5_000_000_000);
        assert_eq!(nanos("INTERVAL '1' MINUTE")?, 60_000_000_000);
        assert_eq!(nanos("INTERVAL '2 hours'")?, 7_200_000_000_000);
        assert_eq!(nanos("INTERVAL '1' DAY")?, 86_400_000_000_000);
        Ok(())
    }

    #[test]
    fn rejects_months_and_non_intervals() {
        assert!(nanos("INTERVAL '1' MONTH").is_err());
        assert!(nanos("5").is_err());
        assert!(nanos("INTERVAL '0' SECOND").is_err());
    }
}
