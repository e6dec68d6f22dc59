//! Lowers a `HashJoinExec` into a join of two flows, picking the join operator
//! from what the query says about time:
//! - one side is a versioned table read `FOR SYSTEM_TIME AS OF`: a temporal join;
//! - one side is a static table (a file without event time): a lookup join;
//! - the condition bounds the two sides' event times (an interval join, or a
//!   window join on `window_end`, of windowed aggregates or of window TVFs):
//!   a join whose state the watermark expires;
//! - otherwise a regular join, whose state only a TTL bounds (EXPLAIN warns).

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use sluice_engine::operators::join::JoinMode;
use sluice_engine::operators::updating_aggregate::humantime;
use sluice_engine::operators::{EventTime, JoinKind, JoinSpec, SideTimes, StreamJoin, TemporalJoin};
use sluice_engine::Operator;

use crate::error::{plan_err, Result};
use crate::join_bounds::{time_bounds, EquiKeys};
use crate::lower::{Chain, LoweredInput, LoweredJoin, Lowering};
use crate::window_columns::WindowColumns;

impl Lowering<'_> {
    pub(crate) fn lower_join(&self, plan: &Arc<dyn ExecutionPlan>, join: &HashJoinExec) -> Result<Chain> {
        let kind = match join.join_type() {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            other => return plan_err(format!("{other} joins (IN / EXISTS subqueries) are not supported on streams yet")),
        };
        let left = self.lower(join.left())?;
        let right = self.lower(join.right())?;
        let versioned = |c: &Chain| c.tables.iter().any(|t| self.windows.temporal_tables.contains(t));
        // Only a temporal join's versioned table may be an upsert table's changes.
        let acceptable = |c: &Chain| !c.changelog || (c.upsert && versioned(c));
        if !acceptable(&left) || !acceptable(&right) {
            return plan_err(
                "joining updating results (a GROUP BY, an outer join without time bounds, or an upsert table \
                 outside FOR SYSTEM_TIME AS OF) is not supported",
            );
        }
        let on = join.on();
        let left_key: Vec<Arc<dyn PhysicalExpr>> = on.iter().map(|(l, _)| Arc::clone(l)).collect();
        let right_key: Vec<Arc<dyn PhysicalExpr>> = on.iter().map(|(_, r)| Arc::clone(r)).collect();
        let keys_text = on.iter().map(|(l, r)| format!("{l} = {r}")).collect::<Vec<_>>().join(", ");
        let times = [left.time, right.time];
        let left_width = join.left().schema().fields().len();
        let projection = join.projection.as_ref().map(|p| p.to_vec());
        let output_time = |side: usize, t: EventTime| -> Option<EventTime> {
            let all = if side == 0 { t.column } else { left_width + t.column };
            let column = match &projection {
                None => Some(all),
                Some(p) => p.iter().position(|i| *i == all),
            };
            column.map(|column| EventTime { column, offset: t.offset })
        };
        let sides = [&left, &right];
        let temporal_side = sides.iter().position(|c| versioned(c));
        let static_side = sides.iter().position(|c| {
            c.time.is_none()
                && !c.tables.is_empty()
                && c.tables.iter().all(|t| self.tables.get(t).is_some_and(|i| i.is_static))
        });
        let spec = |description: String| JoinSpec {
            kind,
            // DataFusion's input schemas: without the change kind an upsert
            // table's rows carry (the temporal join takes it off).
            schemas: [join.left().schema(), join.right().schema()],
            keys: [left_key.clone(), right_key.clone()],
            filter: join.filter().cloned(),
            projection: projection.clone(),
            output_schema: plan.schema(),
            description,
        };
        let metrics = Arc::clone(&self.metrics);
        let kind_text = kind.as_str();
        let (operator, schema, time, changelog): (Box<dyn Operator>, _, _, _) = if let Some(table) = temporal_side {
            let stream = 1 - table;
            let (Some(stream_time), Some(version_time)) = (times[stream], times[table]) else {
                return plan_err(
                    "a temporal join (FOR SYSTEM_TIME AS OF) needs event time (a WATERMARK) on the stream and on the versioned table",
                );
            };
            let description = format!(
                "temporal join ({kind_text}) on [{keys_text}] as of the stream's event time; state: versions per key \
                 and rows waiting for the watermark, older versions freed as it passes (bounded by watermark)"
            );
            let table_changes = sides[table].changelog;
            let op = TemporalJoin::try_new(spec(description), table, stream_time, version_time, table_changes, metrics)?;
            let schema = op.output_schema();
            (Box::new(op), schema, output_time(stream, stream_time), false)
        } else if let Some(table) = static_side {
            let name = sides[table].tables.join(", ");
            let description = format!(
                "lookup join ({kind_text}) on [{keys_text}] against static table {name}; state: the table, loaded \
                 whole before stream rows are joined (stream rows are not kept)"
            );
            let op = StreamJoin::try_new(spec(description), JoinMode::Lookup { table }, metrics)?;
            let schema = op.output_schema();
            let time = times[1 - table].and_then(|t| output_time(1 - table, t));
            (Box::new(op), schema, time, false)
        } else if let Some(((lower, upper), [lt, rt])) = bounded_by_time(on, join.filter(), times, [&left.windows, &right.windows]) {
            if lower > upper {
                return plan_err("the join condition's time bounds leave no room for a match");
            }
            let what = if lower == 0 && upper == 0 { "window join" } else { "interval join" };
            let description = format!(
                "{what} ({kind_text}) on [{keys_text}], right time - left time in [{}, {}]; state: rows kept \
                 until the watermark passes their time + bound (bounded by watermark)",
                signed(lower),
                signed(upper)
            );
            let mode = JoinMode::TimeBounded([
                SideTimes { time: lt, expiry_offset: upper },
                SideTimes { time: rt, expiry_offset: lower.saturating_neg() },
            ]);
            let op = StreamJoin::try_new(spec(description), mode, metrics)?;
            let schema = op.output_schema();
            let time = output_time(0, lt).or_else(|| output_time(1, rt));
            (Box::new(op), schema, time, false)
        } else {
            let bound = match self.ttl {
                Some(ttl) => format!("state: rows expire {} after they arrive (TTL)", humantime(ttl)),
                None => "state: every row of both sides, UNBOUNDED (warning: bound the join by time, e.g. \
                         b.ts BETWEEN a.ts - INTERVAL '1' HOUR AND a.ts, or SET 'table.exec.state.ttl')"
                    .to_string(),
            };
            let changes = if kind == JoinKind::Inner { "" } else { ", changelog +I/-D" };
            let description = format!("regular join ({kind_text}{changes}) on [{keys_text}]; {bound}");
            let op = StreamJoin::try_new(spec(description), JoinMode::Regular { ttl: self.ttl }, metrics)?;
            let schema = op.output_schema();
            (Box::new(op), schema, None, kind != JoinKind::Inner)
        };
        let tables = left.tables.iter().chain(&right.tables).cloned().collect();
        let input = LoweredInput::Join(Box::new(LoweredJoin {
            left: self.finish(left),
            right: self.finish(right),
            left_key,
            right_key,
            operator,
        }));
        Ok(Chain::joined(input, schema, time, changelog, tables))
    }
}

/// Bounds on `right time - left time` and the two sides' times they are
/// bounds of: from the condition on the sides' event times, or else, for a
/// window join of two window TVFs (equal window ends), from the window ends,
/// as rows' times (just before the end, as a windowed aggregate's rows), so
/// that a row is kept until its window closes, and late once it has.
fn bounded_by_time(
    on: &EquiKeys,
    filter: Option<&JoinFilter>,
    times: [Option<EventTime>; 2],
    windows: [&WindowColumns; 2],
) -> Option<((i64, i64), [EventTime; 2])> {
    if let (Some(bounds), [Some(lt), Some(rt)]) = (time_bounds(on, filter, times).both(), times) {
        return Some((bounds, [lt, rt]));
    }
    let column = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Column>().map(Column::index);
    let (l, r) = on.iter().find_map(|(l, r)| {
        let (l, r) = (column(l)?, column(r)?);
        (windows[0].is_end(l) && windows[1].is_end(r)).then_some((l, r))
    })?;
    let ends = [EventTime { column: l, offset: -1 }, EventTime { column: r, offset: -1 }];
    Some((time_bounds(on, filter, ends.map(Some)).both()?, ends))
}

/// A duration in nanoseconds, signed, the way people write it.
fn signed(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "+" };
    let d = std::time::Duration::from_nanos(nanos.unsigned_abs());
    format!("{sign}{}", humantime(d))
}
