//! From a SQL query to a DataFusion physical plan over stream placeholders.
//!
//! Every catalog table is registered in a DataFusion context as a
//! [`StreamTable`], whose scan is a [`FeedExec`] leaf: DataFusion plans and
//! optimises the query as if it were a batch query, and [`crate::lower`] turns the
//! result into a pipeline. The context plans with one partition (Sluice
//! parallelises by itself) and without the rule that splits `COUNT(DISTINCT x)`
//! into two aggregations, so each windowed aggregation stays one stateful step,
//! nor the one that turns inner joins into semi joins, which streams lack.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::TableType;
use datafusion::execution::context::SessionContext;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{cast, Expr as DfExpr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use sluice_engine::feed::FeedExec;
use sqlparser::ast::{Expr, ExprWithAlias, Query, Statement};

use crate::catalog::{Catalog, FunctionBody, TableDef};
use sluice_udf::NativeFunction;
use crate::error::{plan_err, Result};
use crate::session::sql_type_name;
use crate::sql_function::SqlFunction;
use crate::type_check::{check_plan, implicit_cast, signature_error};
use crate::window_tvf::{rewrite_query, WindowTvfs};

/// Optimizer rules whose rewrites streams cannot run: splitting one windowed
/// aggregation into several, and turning an inner join whose other side is
/// unique on the keys and unread (Nexmark q5, q8) into a semi join.
const DISABLED_RULES: [&str; 2] = ["single_distinct_aggregation_to_group_by", "eliminate_join"];

/// A planned query, ready to lower.
pub struct PlannedQuery {
    pub plan: Arc<dyn ExecutionPlan>,
    pub windows: WindowTvfs,
    pub ctx: SessionContext,
}

impl PlannedQuery {
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }
}

/// The DataFusion context queries are planned in.
pub fn planning_context() -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(1).with_batch_size(8192);
    let base = SessionContext::new_with_config(config).state();
    let mut rules: Vec<_> = base
        .optimizers()
        .iter()
        .filter(|r| !DISABLED_RULES.contains(&r.name()))
        .cloned()
        .collect();
    rules.push(Arc::new(crate::fixed_intervals::FixedIntervalsAsDurations));
    let mut state = SessionStateBuilder::new_from_existing(base).with_optimizer_rules(rules).build();
    if let Err(e) = sluice_udf::register_functions(&mut state) {
        tracing::error!("registering Sluice's functions failed: {e}");
    }
    if let Err(e) = datafusion::execution::FunctionRegistry::register_udwf(&mut state, Arc::new(sluice_engine::operators::alert_status::alert_status_udwf())) {
        tracing::error!("registering ALERT_STATUS failed: {e}");
    }
    SessionContext::new_with_state(state)
}

/// A catalog table as DataFusion sees it: a schema whose scan is a feed.
#[derive(Debug)]
pub struct StreamTable {
    name: String,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[DfExpr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(FeedExec::try_new(&self.name, self.schema.clone(), projection.cloned())?))
    }
}

/// A planning context holding every catalog table and SQL function.
pub fn context_with_catalog(catalog: &Catalog) -> Result<SessionContext> {
    let ctx = planning_context();
    for table in catalog.tables() {
        let provider = StreamTable { name: table.name.clone(), schema: table.schema.clone() };
        ctx.register_table(table.name.as_str(), Arc::new(provider))?;
    }
    for f in catalog.functions() {
        match &f.body {
            FunctionBody::Sql { params, return_type, body } => {
                let body = sql_function_body(&ctx, params, body)?;
                let udf = SqlFunction::new(f.name.clone(), params.clone(), return_type.clone(), body);
                ctx.register_udf(udf.into_udf());
            }
            FunctionBody::Native { function: NativeFunction::Scalar(udf), .. } => ctx.register_udf((**udf).clone()),
            FunctionBody::Native { function: NativeFunction::Aggregate(udaf), .. } => {
                ctx.register_udaf((**udaf).clone())
            }
        }
    }
    Ok(ctx)
}

/// Plans a SQL function's body over its parameters.
pub fn sql_function_body(ctx: &SessionContext, params: &[(String, DataType)], body: &Expr) -> Result<DfExpr> {
    let schema = Schema::new(params.iter().map(|(n, t)| Field::new(n, t.clone(), true)).collect::<Vec<_>>());
    let df_schema = DFSchema::try_from(schema)?;
    let expr = ctx
        .state()
        .create_logical_expr_from_sql_expr(ExprWithAlias { expr: body.clone(), alias: None }, &df_schema)?;
    // Coerced now: the body is inlined after the query's own type coercion ran.
    let simplifier = ExprSimplifier::new(SimplifyContext::builder().with_schema(Arc::new(df_schema.clone())).build());
    Ok(simplifier.coerce(expr, &df_schema)?)
}

/// Plans `query` to a logical plan in a context holding every catalog table.
pub async fn plan_logical(catalog: &Catalog, query: &Query) -> Result<(LogicalPlan, WindowTvfs, SessionContext)> {
    let mut query = Box::new(query.clone());
    let windows = rewrite_query(&mut query, catalog)?;
    let ctx = context_with_catalog(catalog)?;
    let statement = DfStatement::Statement(Box::new(Statement::Query(query.clone())));
    let plan = match ctx.state().statement_to_plan(statement).await {
        Ok(plan) => plan,
        Err(e) => return Err(signature_error(&e, &query).unwrap_or_else(|| e.into())),
    };
    refuse_union(&plan)?;
    check_plan(&plan)?;
    Ok((plan, windows, ctx))
}

/// Refuses `UNION` (without ALL) of streams with a reason, before DataFusion's
/// plan for it (an aggregation split in two phases) reaches the lowering.
/// `UNION ALL` is lowered as a union of flows. Table-less queries are answered
/// as batch queries and keep both.
fn refuse_union(plan: &LogicalPlan) -> Result<()> {
    let reads_table = plan.exists(|n| Ok(matches!(n, LogicalPlan::TableScan(_))))?;
    if !reads_table {
        return Ok(());
    }
    let distinct = plan.exists(|n| {
        Ok(matches!(n, LogicalPlan::Distinct(d) if matches!(d.input().as_ref(), LogicalPlan::Union(_))))
    })?;
    if distinct {
        return plan_err(
            "UNION (without ALL) is not supported on streams: removing duplicate rows would mean remembering \
             every row forever. Write UNION ALL to keep duplicates, or GROUP BY the columns over the UNION ALL \
             (an updating aggregate) to remove them",
        );
    }
    Ok(())
}

/// Plans `query`; with `target`, its columns are cast to the target's by position.
pub async fn plan_query(catalog: &Catalog, query: &Query, target: Option<&TableDef>) -> Result<PlannedQuery> {
    let (mut logical, windows, ctx) = plan_logical(catalog, query).await?;
    if let Some(target) = target {
        logical = cast_to_table(logical, target)?;
    }
    let plan = ctx.state().create_physical_plan(&logical).await?;
    Ok(PlannedQuery { plan, windows, ctx })
}

/// Projects `plan`'s columns onto `table`'s columns (INSERT INTO semantics).
pub(crate) fn cast_to_table(plan: LogicalPlan, table: &TableDef) -> Result<LogicalPlan> {
    let produced = plan.schema().clone();
    let wanted = table.schema.fields();
    if produced.fields().len() != wanted.len() {
        return plan_err(format!(
            "INSERT INTO {}: the query produces {} columns but the table has {}",
            table.name,
            produced.fields().len(),
            wanted.len()
        ));
    }
    let mut exprs = Vec::with_capacity(wanted.len());
    for (i, field) in wanted.iter().enumerate() {
        let (qualifier, source) = produced.qualified_field(i);
        // A literal is cast once, now; a column only if no value can fail the cast.
        let literal = matches!(&plan, LogicalPlan::Projection(p)
            if matches!(p.expr.get(i).map(|e| e.clone().unalias_nested().data), Some(DfExpr::Literal(..))));
        let castable = match literal {
            true => datafusion::arrow::compute::can_cast_types(source.data_type(), field.data_type()),
            false => implicit_cast(source.data_type(), field.data_type()),
        };
        if !castable {
            let (from, to) = (sql_type_name(source.data_type()), sql_type_name(field.data_type()));
            return plan_err(format!(
                "INSERT INTO {}: column {} ('{}') is {from} but the table's '{}' is {to}; \
                 write CAST({} AS {to}) if every value converts",
                table.name,
                i + 1,
                source.name(),
                field.name(),
                source.name(),
            ));
        }
        let column = DfExpr::Column(Column::new(qualifier.cloned(), source.name()));
        exprs.push(cast(column, field.data_type().clone()).alias(field.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Compiles a table's watermark expression against its columns; it must yield a
/// timestamp.
pub fn watermark_expr(ctx: &SessionContext, table: &TableDef, expr: &Expr) -> Result<Arc<dyn PhysicalExpr>> {
    let df_schema = DFSchema::try_from(table.schema.as_ref().clone())?;
    let state = ctx.state();
    let logical = state
        .create_logical_expr_from_sql_expr(ExprWithAlias { expr: expr.clone(), alias: None }, &df_schema)?;
    let physical = state.create_physical_expr(logical, &df_schema)?;
    match physical.data_type(table.schema.as_ref())? {
        DataType::Timestamp(_, _) => Ok(physical),
        other => plan_err(format!("table '{}': WATERMARK expression {expr} is {other}, not a TIMESTAMP", table.name)),
    }
}
