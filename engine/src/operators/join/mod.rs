//! Joins of two streams, and of a stream with a table.
//!
//! [`StreamJoin`] is a symmetric hash join: each side keeps its rows, indexed by
//! the join key, for the rows of the other side still to come. What retires a
//! kept row decides the kind of join: the watermark passing the last time the
//! row could match (interval and window joins), the end of a bounded other side
//! (a lookup join against a table read from a file), or a TTL (a regular join;
//! without one its state grows without bound). [`TemporalJoin`] joins each row
//! with the version of a keyed table valid at the row's event time.

#[cfg(test)]
mod checkpoint_tests;
mod keys;
mod output;
mod side;
mod stream_join;
mod temporal_join;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::arrow::array::Int64Array;
use datafusion::physical_plan::PhysicalExpr;

pub use stream_join::StreamJoin;
pub use temporal_join::TemporalJoin;

/// Which unmatched rows a join keeps (padded with NULLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

impl JoinKind {
    /// True if unmatched rows of input `side` (0 left, 1 right) are emitted.
    pub fn keeps_unmatched(self, side: usize) -> bool {
        matches!((self, side), (JoinKind::Left, 0) | (JoinKind::Right, 1) | (JoinKind::Full, _))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JoinKind::Inner => "inner",
            JoinKind::Left => "left outer",
            JoinKind::Right => "right outer",
            JoinKind::Full => "full outer",
        }
    }
}

/// A row's event time: a timestamp column plus a fixed offset (a window's
/// rows have the time `window_end - 1ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTime {
    pub column: usize,
    pub offset: i64,
}

impl EventTime {
    /// Every row's event time in epoch nanoseconds (NULL stays NULL).
    pub fn evaluate(&self, batch: &datafusion::arrow::record_batch::RecordBatch) -> crate::Result<Int64Array> {
        if self.column >= batch.num_columns() {
            return Err(crate::EngineError::Internal("event-time column out of range".into()));
        }
        let nanos = crate::time::as_epoch_nanos(batch.column(self.column))?;
        Ok(nanos.unary(|t| t.saturating_add(self.offset)))
    }
}

/// Per input of a time-bounded join: the row's event time, and how long after
/// it the row can still match (its expiry is `time + expiry_offset`).
#[derive(Debug, Clone, Copy)]
pub struct SideTimes {
    pub time: EventTime,
    pub expiry_offset: i64,
}

/// What retires the rows a [`StreamJoin`] keeps.
pub enum JoinMode {
    /// Interval and window joins: a row is kept until the watermark passes its
    /// expiry; rows already below the watermark on arrival are late.
    TimeBounded([SideTimes; 2]),
    /// A join without time bounds: rows are kept until `ttl` (if any) or the
    /// other input ends. Outer results change as matches arrive (a changelog).
    Regular { ttl: Option<Duration> },
    /// Input `table` is a bounded table: it is read completely first, and the
    /// other input is then looked up against it, row by row.
    Lookup { table: usize },
}

/// The shape of a join, as DataFusion planned it.
pub struct JoinSpec {
    pub kind: JoinKind,
    /// The schemas of the left and right inputs.
    pub schemas: [SchemaRef; 2],
    /// Equi-join keys evaluated on the left and right input.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// The rest of the ON condition, over DataFusion's intermediate schema.
    pub filter: Option<JoinFilter>,
    /// Columns of (left ++ right) the join outputs; `None`: all.
    pub projection: Option<Vec<usize>>,
    /// The output schema, without the change-kind column.
    pub output_schema: SchemaRef,
    /// One line for EXPLAIN, saying what bounds the join's state.
    pub description: String,
}
