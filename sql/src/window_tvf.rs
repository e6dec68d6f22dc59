//! Rewrites window table-valued functions and views into plain SQL DataFusion plans.
//!
//! `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))` becomes a derived table with two
//! more columns, `window_start` and `window_end`:
//! - TUMBLE: `date_bin(size, ts)` and that plus `size`;
//! - HOP (size a multiple of slide, as in Flink): one row per window the event falls
//!   in, by unnesting the series of window starts. When every window TVF of the
//!   query is a HOP of one slide and size, each read directly by a plain
//!   windowed GROUP BY (window bounds used only as keys and in what is computed
//!   from them after the aggregation), a row's window bounds are instead those
//!   of its slice, the tumbling window of one slide, and the aggregate merges
//!   slices into windows (recorded in [`WindowTvf::hop`]);
//! - CUMULATE (size a multiple of step, as in Flink): windows that all start where
//!   the tumbling window of `size` starts and end one step apart; a row falls in
//!   every one that ends after it, one row each, by unnesting the series of ends;
//! - SESSION: `ts` and `ts + gap`, a per-row placeholder the session aggregate
//!   merges into real sessions (its gap, and its `PARTITION BY` columns, are
//!   recorded in [`WindowTvfs`]). In batch mode ([`rewrite_batch_query`]) there
//!   is no session aggregate: the sessions are computed by window functions over
//!   the rows sorted by time per key (the `PARTITION BY` columns, else the
//!   GROUP BY keys of the aggregation over the TVF), a row starting a new one
//!   when it comes more than the gap after the one before, so the aggregation
//!   groups by real session bounds.
//!
//! Views are inlined as derived tables, so a TVF over a view works too. The
//! rewrite happens on the AST (sqlparser `VisitorMut`), never on SQL text typed by
//! the user.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArgOperator, FunctionArguments, GroupByExpr, Ident, ObjectName, Query,
    Statement, TableAlias, TableFactor, TableVersion, VisitMut, VisitorMut, BinaryOperator, JoinConstraint,
    JoinOperator, SetExpr, visit_relations,
};
use sqlparser::parser::Parser;

use crate::catalog::{normalize_name, Catalog};
use crate::dialect::{as_table_arg, SluiceDialect, TableArg};
use crate::error::{plan_err, Result, SqlError};
use crate::interval::{interval_nanos, interval_sql};

/// Views may reference views, up to this depth (guards against cycles).
const MAX_VIEW_DEPTH: usize = 16;

/// One window TVF of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTvf {
    /// How deeply nested in views and subqueries it is: the innermost TVF is
    /// applied to the source first.
    pub depth: usize,
    /// A SESSION window; `None` for TUMBLE, HOP and CUMULATE.
    pub session: Option<SessionWindow>,
    /// A HOP whose rows carry the bounds of their slice, for the aggregate
    /// over it to merge into windows.
    pub hop: Option<HopSlices>,
}

/// A hopping window planned as slices: in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopSlices {
    pub slide: i64,
    pub size: i64,
}

/// What the session aggregate needs of a SESSION window TVF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionWindow {
    /// The inactivity that ends a session, in nanoseconds.
    pub gap: i64,
    /// `TABLE t PARTITION BY k1, k2`: the columns sessions are kept per, as
    /// DataFusion names them (unquoted names in lower case). Empty without the
    /// clause: then sessions are kept per GROUP BY key.
    pub partition_by: Vec<String>,
}

/// What the rewrite found: the window TVFs of a query.
#[derive(Debug, Default, Clone)]
pub struct WindowTvfs {
    pub windows: Vec<WindowTvf>,
    /// Tables read `FOR SYSTEM_TIME AS OF` (versioned tables of temporal joins).
    pub temporal_tables: Vec<String>,
}

impl WindowTvfs {
    /// The session window the first aggregation over the source computes, if
    /// that is a session. SESSION is supported as the innermost window TVF only
    /// (later windows may aggregate its results).
    pub fn innermost_session(&self) -> Result<Option<&SessionWindow>> {
        let Some(deepest) = self.windows.iter().map(|w| w.depth).max() else { return Ok(None) };
        let innermost: Vec<&WindowTvf> = self.windows.iter().filter(|w| w.depth == deepest).collect();
        let sessions = self.windows.iter().filter(|w| w.session.is_some()).count();
        match innermost.as_slice() {
            [only] if only.session.is_some() && sessions == 1 => Ok(only.session.as_ref()),
            _ if sessions == 0 => Ok(None),
            _ => plan_err("SESSION is supported only as the single, innermost window table function of a query"),
        }
    }

    pub fn has_session(&self) -> bool {
        self.windows.iter().any(|w| w.session.is_some())
    }

    /// The HOP whose slices the first aggregation over a source merges, if
    /// HOPs were planned so: only when every window TVF of the query is such a
    /// HOP, all of one slide and size, so that the first windowed aggregation
    /// over any source is one over sliced rows.
    pub fn sliced_hop(&self) -> Option<HopSlices> {
        let first = self.windows.first()?.hop?;
        self.windows.iter().all(|w| w.hop == Some(first)).then_some(first)
    }
}

/// Rewrites `query` in place: views inlined, window TVFs expanded.
pub fn rewrite_query(query: &mut Query, catalog: &Catalog) -> Result<WindowTvfs> {
    let original = query.clone();
    let mut found = WindowTvfs::default();
    rewrite(query, catalog, &mut found, 0, Mode::Streaming { slices: true })?;
    if found.sliced_hop().is_none() && found.windows.iter().any(|w| w.hop.is_some()) {
        // Slices are merged by the first aggregation over a source, which is
        // then known to read a sliced HOP only if every window TVF is one
        // (with the same slide and size): otherwise rows are copied.
        *query = original;
        found = WindowTvfs::default();
        rewrite(query, catalog, &mut found, 0, Mode::Streaming { slices: false })?;
    }
    Ok(found)
}

/// What a query is rewritten for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A continuous query; `slices`: a HOP may be planned as slices.
    Streaming { slices: bool },
    /// A batch query.
    Batch,
}

/// [`rewrite_query`] for a batch query: SESSION windows become real session
/// bounds computed over the whole input (see the module docs), and tables
/// without a WATERMARK are not refused (a batch query needs none).
pub fn rewrite_batch_query(query: &mut Query, catalog: &Catalog) -> Result<WindowTvfs> {
    let mut found = WindowTvfs::default();
    rewrite(query, catalog, &mut found, 0, Mode::Batch)?;
    Ok(found)
}

fn rewrite(query: &mut Query, catalog: &Catalog, found: &mut WindowTvfs, depth: usize, mode: Mode) -> Result<()> {
    if depth > MAX_VIEW_DEPTH {
        return plan_err("views nested too deeply (is a view referencing itself?)");
    }
    let batch = mode == Mode::Batch;
    let slices = mode == Mode::Streaming { slices: true };
    let mut rewriter = Rewriter { catalog, found, depth, batch, slices, mode, group_keys: Vec::new(), sliceable: Vec::new() };
    match query.visit(&mut rewriter) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Rewriter<'a> {
    catalog: &'a Catalog,
    found: &'a mut WindowTvfs,
    depth: usize,
    /// Rewriting for a batch query.
    batch: bool,
    /// A HOP may be planned as slices.
    slices: bool,
    mode: Mode,
    /// Per query being visited, outermost first: whether it is a plain
    /// windowed GROUP BY directly over a HOP (see [`hop_sliceable`]).
    sliceable: Vec<bool>,
    /// Per query being visited, outermost first: its GROUP BY keys other than
    /// the window bounds, the keys a SESSION in its FROM is kept per in batch
    /// mode when it has no PARTITION BY.
    group_keys: Vec<Vec<Expr>>,
}

impl VisitorMut for Rewriter<'_> {
    type Break = SqlError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<SqlError> {
        crate::window_time::window_time_from_end(query);
        self.group_keys.push(group_keys(query));
        self.sliceable.push(hop_sliceable(query));
        match self.temporal_joins(query) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<SqlError> {
        self.group_keys.pop();
        self.sliceable.pop();
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<SqlError> {
        if let TableFactor::Table { version: Some(version), .. } = factor {
            // Temporal joins took theirs off already (`pre_visit_query`).
            return ControlFlow::Break(SqlError::Plan(format!(
                "{version} is supported only on the table joined in a temporal join: \
                 ... JOIN t FOR SYSTEM_TIME AS OF s.event_time ON ..."
            )));
        }
        match self.replacement(factor) {
            Ok(Some(new)) => {
                *factor = new;
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

impl Rewriter<'_> {
    /// Turns `JOIN t FOR SYSTEM_TIME AS OF x ON c` into `JOIN t ON c AND t.time <= x`,
    /// recording `t` as a versioned table. The added condition holds for the
    /// version a temporal join picks, and keeps both event times in the plan.
    fn temporal_joins(&mut self, query: &mut Query) -> Result<()> {
        let SetExpr::Select(select) = query.body.as_mut() else { return Ok(()) };
        for from in &mut select.from {
            for join in &mut from.joins {
                let TableFactor::Table { name, alias, version, .. } = &mut join.relation else { continue };
                let Some(found) = version.take() else { continue };
                let TableVersion::ForSystemTimeAsOf(as_of) = found else {
                    return plan_err(format!("{found} is not supported: use FOR SYSTEM_TIME AS OF <event time>"));
                };
                let table_name = normalize_name(name);
                let Some(table) = self.catalog.table(&table_name) else {
                    return plan_err(format!("FOR SYSTEM_TIME AS OF: '{table_name}' is not a table"));
                };
                let Some(watermark) = &table.watermark else {
                    return plan_err(format!(
                        "'{table_name}' is read FOR SYSTEM_TIME AS OF but has no WATERMARK: a versioned table needs event time"
                    ));
                };
                let qualifier = alias.as_ref().map(|a| a.name.clone()).unwrap_or_else(|| alias_of(name).name);
                let version_time = Expr::CompoundIdentifier(vec![qualifier, Ident::new(watermark.column.clone())]);
                let implied = Expr::BinaryOp { left: Box::new(version_time), op: BinaryOperator::LtEq, right: Box::new(as_of) };
                let constraint = match &mut join.join_operator {
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::Left(c)
                    | JoinOperator::LeftOuter(c) => c,
                    _ => return plan_err("a temporal join is an INNER or LEFT JOIN ... FOR SYSTEM_TIME AS OF ... ON ..."),
                };
                let JoinConstraint::On(on) = constraint else {
                    return plan_err("a temporal join needs an ON condition on the versioned table's key");
                };
                *on = Expr::BinaryOp { left: Box::new(Expr::Nested(Box::new(on.clone()))), op: BinaryOperator::And, right: Box::new(implied) };
                self.found.temporal_tables.push(table_name);
            }
        }
        Ok(())
    }

    fn replacement(&mut self, factor: &TableFactor) -> Result<Option<TableFactor>> {
        match factor {
            TableFactor::Table { name, alias, args: None, .. } => {
                let Some(view) = self.catalog.view(&normalize_name(name)) else { return Ok(None) };
                let mut subquery = view.query.clone();
                rewrite(&mut subquery, self.catalog, self.found, self.depth + 1, self.mode)?;
                let alias = alias.clone().unwrap_or_else(|| alias_of(name));
                Ok(Some(derived(subquery, alias)))
            }
            TableFactor::TableFunction { expr: Expr::Function(f), alias } => {
                let kind = f.name.to_string().to_ascii_uppercase();
                if !WINDOW_TVFS.contains(&kind.as_str()) {
                    return plan_err(format!(
                        "unknown table function {}: expected TUMBLE, HOP, CUMULATE or SESSION",
                        f.name
                    ));
                }
                let args = tvf_args(&kind, &f.args)?;
                let TableArg { name: table, partition_by } = args
                    .first()
                    .and_then(as_table_arg)
                    .ok_or_else(|| SqlError::Plan(format!("{kind}: the first argument must be TABLE <name>")))?;
                if !partition_by.is_empty() && kind != "SESSION" {
                    return plan_err(format!(
                        "{kind}: PARTITION BY is only for SESSION (a {kind} window does not depend on other rows)"
                    ));
                }
                let time_col = descriptor_column(&kind, args.get(1))?;
                if !self.batch {
                    self.require_watermark(&kind, &table, &time_col)?;
                }
                let sliced = kind == "HOP" && self.slices && self.sliceable.last().copied().unwrap_or(false);
                let (mut sql, gap, hop) = match sliced {
                    true => {
                        let (sql, hop) = self.hop_slices_sql(&table, &time_col, &args[2..])?;
                        (sql, None, Some(hop))
                    }
                    false => {
                        let (sql, gap) = self.window_sql(&kind, &table, &time_col, &args[2..])?;
                        (sql, gap, None)
                    }
                };
                let partition_by = self.partition_columns(&table, partition_by)?;
                if let (Some(gap), true) = (gap, self.batch) {
                    sql = self.batch_session_sql(&table, &time_col, gap, &partition_by);
                }
                let session = gap.map(|gap| SessionWindow { gap, partition_by });
                self.found.windows.push(WindowTvf { depth: self.depth, session, hop });
                let mut subquery = parse_query(&sql)?;
                rewrite(&mut subquery, self.catalog, self.found, self.depth + 1, self.mode)?;
                let alias = alias.clone().unwrap_or_else(|| alias_of(&table));
                Ok(Some(derived(subquery, alias)))
            }
            _ => Ok(None),
        }
    }

    /// Refuses a window TVF over an unbounded table without a WATERMARK, as Flink
    /// does: nothing would ever close its windows, so the query would run without
    /// emitting. Over a bounded table the windows close when its input ends. A
    /// view's event time comes from the tables it reads (a `UNION ALL` view's
    /// watermark is the least of its branches'), so each of them must have one.
    fn require_watermark(&self, kind: &str, table: &ObjectName, ts: &Ident) -> Result<()> {
        let name = normalize_name(table);
        if self.catalog.view(&name).is_some() {
            let mut tables = Vec::new();
            self.view_tables(&name, 0, &mut tables);
            let unwatermarked = tables.iter().filter_map(|t| self.catalog.table(t)).find(|def| def.watermark.is_none() && !def.capabilities.bounded);
            return match unwatermarked {
                Some(def) => plan_err(format!(
                    "{kind} over view '{name}': it reads table '{}', which has no WATERMARK, so its windows would \
                     never close; declare one in that table's CREATE TABLE: WATERMARK FOR <time column> AS \
                     <time column> - INTERVAL '5' SECOND",
                    def.name
                )),
                None => Ok(()),
            };
        }
        match self.catalog.table(&name) {
            Some(def) if def.watermark.is_none() && !def.capabilities.bounded => plan_err(format!(
                "{kind} over table '{name}': it has no WATERMARK, so its windows would never close; \
                 declare one in its CREATE TABLE: WATERMARK FOR {ts} AS {ts} - INTERVAL '5' SECOND"
            )),
            _ => Ok(()),
        }
    }

    /// The tables view `name` reads, through the views it reads (window TVFs
    /// inside it check their own tables when it is inlined).
    fn view_tables(&self, name: &str, depth: usize, out: &mut Vec<String>) {
        let Some(view) = self.catalog.view(name).filter(|_| depth <= MAX_VIEW_DEPTH) else { return };
        let _ = visit_relations(&view.query, |relation| {
            let relation = normalize_name(relation);
            match self.catalog.view(&relation) {
                Some(_) => self.view_tables(&relation, depth + 1, out),
                None => out.push(relation),
            }
            ControlFlow::<()>::Continue(())
        });
    }

    /// The `PARTITION BY` columns as DataFusion names them, checked against the
    /// table's columns (a view's are checked once its GROUP BY is planned).
    fn partition_columns(&self, table: &ObjectName, keys: Vec<Ident>) -> Result<Vec<String>> {
        let name = normalize_name(table);
        let schema = self.catalog.table(&name).map(|t| &t.schema);
        keys.into_iter()
            .map(|k| {
                let column = normalize_name(&ObjectName::from(vec![k]));
                match schema {
                    Some(s) if s.index_of(&column).is_err() => {
                        plan_err(format!("SESSION: PARTITION BY {column}: table '{name}' has no such column"))
                    }
                    _ => Ok(column),
                }
            })
            .collect()
    }

    /// A SESSION window in batch mode: each row with the bounds of the session
    /// it falls in, per key (`partition_by`, else the GROUP BY keys of the
    /// query reading the TVF). A row opens a new session when it comes more
    /// than `gap` after the row before it (rows a gap apart touch and merge,
    /// as in the streaming session aggregate).
    fn batch_session_sql(&self, table: &ObjectName, ts: &Ident, gap: i64, partition_by: &[String]) -> String {
        let keys: Vec<String> = if partition_by.is_empty() {
            self.group_keys.last().map(|keys| keys.iter().map(ToString::to_string).collect()).unwrap_or_default()
        } else {
            partition_by.iter().map(|k| Ident::with_quote('"', k.as_str()).to_string()).collect()
        };
        let per_key = if keys.is_empty() { String::new() } else { format!("PARTITION BY {}", keys.join(", ")) };
        let per_session = keys.iter().cloned().chain(["__sluice_session".to_string()]).collect::<Vec<_>>().join(", ");
        let gap = interval_sql(gap);
        format!(
            "SELECT *, min({ts}) OVER (PARTITION BY {per_session}) AS window_start, \
             max({ts}) OVER (PARTITION BY {per_session}) + {gap} AS window_end FROM \
             (SELECT *, sum(__sluice_starts_session) OVER ({per_key} ORDER BY {ts} ROWS UNBOUNDED PRECEDING) AS __sluice_session FROM \
             (SELECT *, CASE WHEN {ts} <= lag({ts}) OVER ({per_key} ORDER BY {ts}) + {gap} THEN 0 ELSE 1 END \
             AS __sluice_starts_session FROM {table}))"
        )
    }

    /// A HOP as slices: each row with the bounds of the one slice it falls
    /// in, the tumbling window of one slide.
    fn hop_slices_sql(&mut self, table: &ObjectName, ts: &Ident, rest: &[Expr]) -> Result<(String, HopSlices)> {
        let [slide, size] = rest else { return plan_err("HOP(TABLE t, DESCRIPTOR(ts), slide, size) takes 4 arguments") };
        let (slide_ns, size_ns) = hop_nanos(slide, size)?;
        let (sql, _) = self.window_sql("TUMBLE", table, ts, std::slice::from_ref(slide))?;
        Ok((sql, HopSlices { slide: slide_ns, size: size_ns }))
    }

    /// The SQL of the derived table that replaces a window TVF, and a session's gap.
    fn window_sql(&mut self, kind: &str, table: &ObjectName, ts: &Ident, rest: &[Expr]) -> Result<(String, Option<i64>)> {
        let origin = "TIMESTAMP '1970-01-01 00:00:00'";
        match (kind, rest) {
            ("TUMBLE", [size]) => {
                let size = interval_sql(interval_nanos(size, "TUMBLE size")?);
                let sql = format!(
                    "SELECT *, date_bin({size}, {ts}, {origin}) AS window_start, \
                     date_bin({size}, {ts}, {origin}) + {size} AS window_end FROM {table}"
                );
                Ok((sql, None))
            }
            ("HOP", [slide, size]) => {
                let (slide_ns, size_ns) = hop_nanos(slide, size)?;
                let (slide, size, back) =
                    (interval_sql(slide_ns), interval_sql(size_ns), interval_sql(size_ns - slide_ns));
                let last = format!("date_bin({slide}, {ts}, {origin})");
                let sql = format!(
                    "SELECT *, window_start + {size} AS window_end FROM \
                     (SELECT *, unnest(generate_series({last} - {back}, {last}, {slide})) AS window_start FROM {table})"
                );
                Ok((sql, None))
            }
            ("CUMULATE", [step, size]) => {
                let step_ns = interval_nanos(step, "CUMULATE step")?;
                let size_ns = interval_nanos(size, "CUMULATE size")?;
                if size_ns % step_ns != 0 {
                    return plan_err(format!("CUMULATE size ({size}) must be a whole multiple of its step ({step})"));
                }
                let (step, size) = (interval_sql(step_ns), interval_sql(size_ns));
                // Steps tile sizes, so the row's step ends the first window holding it.
                let start = format!("date_bin({size}, {ts}, {origin})");
                let first_end = format!("date_bin({step}, {ts}, {origin}) + {step}");
                let sql = format!(
                    "SELECT *, {start} AS window_start, \
                     unnest(generate_series({first_end}, {start} + {size}, {step})) AS window_end FROM {table}"
                );
                Ok((sql, None))
            }
            ("SESSION", [gap]) => {
                let gap_ns = interval_nanos(gap, "SESSION gap")?;
                let gap = interval_sql(gap_ns);
                Ok((format!("SELECT *, {ts} AS window_start, {ts} + {gap} AS window_end FROM {table}"), Some(gap_ns)))
            }
            ("TUMBLE", _) => plan_err("TUMBLE(TABLE t, DESCRIPTOR(ts), size) takes 3 arguments"),
            ("HOP", _) => plan_err("HOP(TABLE t, DESCRIPTOR(ts), slide, size) takes 4 arguments"),
            ("CUMULATE", _) => plan_err("CUMULATE(TABLE t, DESCRIPTOR(ts), step, size) takes 4 arguments"),
            _ => plan_err("SESSION(TABLE t, DESCRIPTOR(ts), gap) takes 3 arguments"),
        }
    }
}

/// The arguments in positional order; Flink's named form (`DATA => TABLE t`,
/// `TIMECOL => DESCRIPTOR(ts)`, `SIZE`, `SLIDE`, `STEP`, `GAP`) is reordered.
fn tvf_args(kind: &str, args: &FunctionArguments) -> Result<Vec<Expr>> {
    let FunctionArguments::List(list) = args else {
        return plan_err(format!("{kind} needs arguments"));
    };
    let order: &[&str] = match kind {
        "TUMBLE" => &["DATA", "TIMECOL", "SIZE"],
        "HOP" => &["DATA", "TIMECOL", "SLIDE", "SIZE"],
        "CUMULATE" => &["DATA", "TIMECOL", "STEP", "SIZE"],
        _ => &["DATA", "TIMECOL", "GAP"],
    };
    let mut positional = Vec::new();
    let mut named: Vec<(String, Expr)> = Vec::new();
    for arg in &list.args {
        match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => positional.push(e.clone()),
            FunctionArg::Named { name, arg: FunctionArgExpr::Expr(e), operator: FunctionArgOperator::RightArrow | FunctionArgOperator::Assignment | FunctionArgOperator::Equals } => {
                named.push((name.value.to_ascii_uppercase(), e.clone()))
            }
            other => return plan_err(format!("{kind}: unsupported argument {other}")),
        }
    }
    if named.is_empty() {
        return Ok(positional);
    }
    if !positional.is_empty() {
        return plan_err(format!("{kind}: use either positional or named arguments, not both"));
    }
    if let Some((unknown, _)) = named.iter().find(|(n, _)| !order.contains(&n.as_str())) {
        return plan_err(format!("{kind}: unknown argument {unknown}; it takes {}", order.join(", ")));
    }
    order
        .iter()
        .map(|key| {
            named
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, e)| e.clone())
                .ok_or_else(|| SqlError::Plan(format!("{kind}: missing argument {key}")))
        })
        .collect()
}

/// A query's GROUP BY keys other than `window_start` and `window_end`, with
/// qualifiers dropped (inside a TVF's rewrite, the columns are the table's).
fn group_keys(query: &Query) -> Vec<Expr> {
    let SetExpr::Select(select) = query.body.as_ref() else { return Vec::new() };
    let GroupByExpr::Expressions(exprs, _) = &select.group_by else { return Vec::new() };
    exprs
        .iter()
        .map(|e| match e {
            Expr::CompoundIdentifier(parts) => parts.last().map_or_else(|| e.clone(), |last| Expr::Identifier(last.clone())),
            other => other.clone(),
        })
        .filter(|e| !matches!(e, Expr::Identifier(id) if ["window_start", "window_end"].contains(&id.value.to_ascii_lowercase().as_str())))
        .collect()
}

/// The window TVFs there are, by name.
const WINDOW_TVFS: [&str; 4] = ["TUMBLE", "HOP", "CUMULATE", "SESSION"];

/// `TUMBLE`, `HOP`, `CUMULATE` or `SESSION` if `factor` is that window TVF.
pub(crate) fn window_tvf_kind(factor: &TableFactor) -> Option<String> {
    let TableFactor::TableFunction { expr: Expr::Function(f), .. } = factor else { return None };
    let kind = f.name.to_string().to_ascii_uppercase();
    WINDOW_TVFS.contains(&kind.as_str()).then_some(kind)
}

/// A HOP's slide and size in nanoseconds, the size a whole multiple of the slide.
fn hop_nanos(slide: &Expr, size: &Expr) -> Result<(i64, i64)> {
    let slide_ns = interval_nanos(slide, "HOP slide")?;
    let size_ns = interval_nanos(size, "HOP size")?;
    if size_ns % slide_ns != 0 {
        return plan_err(format!("HOP size ({size}) must be a whole multiple of its slide ({slide})"));
    }
    Ok((slide_ns, size_ns))
}

/// Whether `query` is a windowed aggregation that can merge a HOP's slices:
/// a SELECT whose FROM is just a HOP, grouped by plain columns among which
/// `window_start` and `window_end`, where the window bounds appear neither in
/// the WHERE clause (evaluated per row, on slice bounds) nor inside a function
/// call of the select list or HAVING (an aggregate's argument would see slice
/// bounds; other functions are refused too, being told apart only by name).
fn hop_sliceable(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else { return false };
    let [from] = select.from.as_slice() else { return false };
    if window_tvf_kind(&from.relation).as_deref() != Some("HOP") || !from.joins.is_empty() {
        return false;
    }
    let GroupByExpr::Expressions(keys, modifiers) = &select.group_by else { return false };
    let names: Option<Vec<String>> = keys
        .iter()
        .map(|k| match k {
            Expr::Identifier(id) => Some(id.value.to_ascii_lowercase()),
            Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let Some(names) = names else { return false };
    if !modifiers.is_empty() || !names.iter().any(|n| n == "window_start") || !names.iter().any(|n| n == "window_end") {
        return false;
    }
    if select.selection.as_ref().is_some_and(mentions_window_bounds) {
        return false;
    }
    let mut computed = select.projection.iter().filter_map(|item| match item {
        sqlparser::ast::SelectItem::UnnamedExpr(e) | sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    });
    !computed.any(window_bounds_in_a_call) && !select.having.as_ref().is_some_and(window_bounds_in_a_call)
}

/// Whether `expr` names `window_start` or `window_end`.
fn mentions_window_bounds(expr: &Expr) -> bool {
    let is_bound = |id: &Ident| ["window_start", "window_end"].contains(&id.value.to_ascii_lowercase().as_str());
    sqlparser::ast::visit_expressions(expr, |e| match e {
        Expr::Identifier(id) if is_bound(id) => ControlFlow::Break(()),
        Expr::CompoundIdentifier(parts) if parts.last().is_some_and(is_bound) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Whether a function call inside `expr` takes the window bounds.
fn window_bounds_in_a_call(expr: &Expr) -> bool {
    sqlparser::ast::visit_expressions(expr, |e| match e {
        Expr::Function(_) if mentions_window_bounds(e) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn descriptor_column(kind: &str, arg: Option<&Expr>) -> Result<Ident> {
    let bad = || SqlError::Plan(format!("{kind}: the second argument must be DESCRIPTOR(<time column>)"));
    let Some(Expr::Function(f)) = arg else { return Err(bad()) };
    if !f.name.to_string().eq_ignore_ascii_case("DESCRIPTOR") {
        return Err(bad());
    }
    let FunctionArguments::List(list) = &f.args else { return Err(bad()) };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(id)))] => Ok(id.clone()),
        _ => Err(bad()),
    }
}


fn parse_query(sql: &str) -> Result<Box<Query>> {
    let statement = Parser::new(&SluiceDialect).try_with_sql(sql)?.parse_statement()?;
    match statement {
        Statement::Query(q) => Ok(q),
        _ => Err(SqlError::Plan(format!("internal: generated window SQL is not a query: {sql}"))),
    }
}

fn alias_of(name: &ObjectName) -> TableAlias {
    let last = name
        .0
        .last()
        .and_then(|p| p.as_ident().cloned())
        .unwrap_or_else(|| Ident::new("t"));
    TableAlias { explicit: true, name: last, columns: vec![], at: None }
}

fn derived(subquery: Box<Query>, alias: TableAlias) -> TableFactor {
    TableFactor::Derived { lateral: false, subquery, alias: Some(alias), sample: None }
}
