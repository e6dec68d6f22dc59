//! Batch mode (`SET 'execution.runtime-mode' = 'batch'`, as in Flink): a query
//! over bounded tables runs as one DataFusion batch query and yields its final
//! rows once, not the changelog a continuous query emits while its input
//! arrives.
//!
//! Every table the query reads must be bounded (a file or lake table, Kafka
//! with `scan.bounded.mode`, a generator given `rows`); an unbounded one is an
//! error naming it. Each is registered as its connector's batch table (files
//! and lakes: DataFusion's file scans, pruned by partition) or else as its
//! sources read to their end, so the rows are those streaming mode reads.
//! Window TVFs are rewritten as in streaming mode (SESSION by window functions,
//! see [`crate::window_tvf`]), so a window query gives the rows a streaming
//! run over the same input gives, except that no row is late: a batch query
//! has no watermarks.
//!
//! The result is an ordinary pipeline, one source (the DataFusion plan, run in
//! `parallelism` partitions) into the query's sink, so the front ends print it,
//! `INSERT INTO` writes it (final rows, no `op` column) and ends, and a stop
//! stops it. It holds no state and takes no checkpoints.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{displayable, execute_stream, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;
use sluice_connectors::{Connector, Shard, TableSpec};
use sluice_engine::{Flow, FlowInput, Output, Sink, Source};
use sqlparser::ast::{Query, Statement};

use crate::catalog::{Catalog, TableDef};
use crate::error::{plan_err, Result, SqlError};
use crate::options::QueryOptions;
use crate::planner::{cast_to_table, context_with_catalog, PlannedQuery};
use crate::type_check::{check_plan, signature_error};
use crate::window_tvf::rewrite_batch_query;

/// Plans `query` as a batch query over the bounded tables it reads; with
/// `target`, its columns are cast to the target's (INSERT INTO).
pub async fn plan_batch(
    catalog: &Catalog,
    connectors: &[Arc<dyn Connector>],
    query: &Query,
    target: Option<&TableDef>,
    options: &QueryOptions,
    query_id: &str,
) -> Result<PlannedQuery> {
    let mut query = Box::new(query.clone());
    let windows = rewrite_batch_query(&mut query, catalog)?;
    if let Some(table) = windows.temporal_tables.first() {
        return plan_err(format!(
            "batch mode: the temporal join on '{table}' (FOR SYSTEM_TIME AS OF) is not supported; \
             SET 'execution.runtime-mode' = 'streaming' to run it"
        ));
    }
    let ctx = batch_context(catalog, options)?;
    let statement = DfStatement::Statement(Box::new(Statement::Query(query.clone())));
    // Planned once over the catalog's stream tables to learn which tables the
    // query reads, then again over their batch tables.
    let first = plan_statement(&ctx, &statement, &query).await?;
    for name in tables_read(&first)? {
        let table = catalog.table(&name).ok_or_else(|| SqlError::Catalog(format!("table '{name}' does not exist")))?;
        let provider = batch_table(connectors, table, options.parallelism, query_id)?;
        ctx.deregister_table(name.as_str())?;
        ctx.register_table(name.as_str(), provider)?;
    }
    let mut logical = plan_statement(&ctx, &statement, &query).await?;
    check_plan(&logical)?;
    if windows.has_session() && !logical.exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(_))))? {
        return plan_err(
            "a SESSION window must be aggregated: GROUP BY window_start, window_end and the session's key columns",
        );
    }
    if let Some(target) = target {
        logical = cast_to_table(logical, target)?;
    }
    let plan = ctx.state().create_physical_plan(&logical).await?;
    Ok(PlannedQuery { plan, windows, ctx })
}

/// The pipeline output that runs a planned batch query into `sink`.
pub fn batch_output(planned: &PlannedQuery, sink: Box<dyn Sink>) -> Output {
    let source = PlanSource {
        plan: Arc::clone(&planned.plan),
        task_ctx: planned.ctx.task_ctx(),
        stream: None,
    };
    let flow = Flow { input: FlowInput::Sources(vec![Box::new(source)]), stages: Vec::new() };
    Output { flow, sink, schema: planned.schema() }
}

/// What EXPLAIN shows of a batch query: DataFusion's physical plan.
pub fn explain_lines(planned: &PlannedQuery) -> Vec<String> {
    let plan = displayable(planned.plan.as_ref()).indent(false).to_string();
    let mut lines = vec!["batch query (execution.runtime-mode = batch):".to_string()];
    lines.extend(plan.lines().map(|l| l.to_string()));
    lines
}

/// The planning context with the catalog's functions, DataFusion's own
/// parallelism (`parallelism` partitions) and `sluice.memory.limit` as the
/// memory pool of its operators.
fn batch_context(catalog: &Catalog, options: &QueryOptions) -> Result<SessionContext> {
    let ctx = context_with_catalog(catalog)?;
    let state = ctx.state();
    let mut config = state.config().clone();
    config.options_mut().execution.target_partitions = options.parallelism.max(1);
    let mut builder = SessionStateBuilder::new_from_existing(state).with_config(config);
    if let Some(limit) = options.memory_limit {
        let runtime = RuntimeEnvBuilder::new().with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX), 1.0).build()?;
        builder = builder.with_runtime_env(Arc::new(runtime));
    }
    Ok(SessionContext::new_with_state(builder.build()))
}

async fn plan_statement(ctx: &SessionContext, statement: &DfStatement, query: &Query) -> Result<LogicalPlan> {
    match ctx.state().statement_to_plan(statement.clone()).await {
        Ok(plan) => Ok(plan),
        Err(e) => Err(signature_error(&e, query).unwrap_or_else(|| e.into())),
    }
}

/// The names of the tables `plan` (subqueries included) reads.
fn tables_read(plan: &LogicalPlan) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            names.insert(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(names)
}

/// `table` as a DataFusion table read whole: its connector's batch table, or
/// its `lanes` source shards read to their end. Unbounded tables are refused.
fn batch_table(connectors: &[Arc<dyn Connector>], table: &TableDef, lanes: usize, query_id: &str) -> Result<Arc<dyn TableProvider>> {
    if !table.capabilities.bounded {
        return plan_err(format!(
            "batch mode reads only bounded tables, and table '{}' (connector '{}') is unbounded: \
             a file or lake table, Kafka with 'scan.bounded.mode', or a generator with 'rows' is bounded \
             (or SET 'execution.runtime-mode' = 'streaming')",
            table.name, table.connector
        ));
    }
    if !table.primary_key.is_empty() && table.capabilities.upsert {
        return plan_err(format!(
            "batch mode does not read table '{}' yet: it is read as upserts by its PRIMARY KEY",
            table.name
        ));
    }
    let connector = sluice_connectors::find_connector(connectors, &table.connector)?;
    let spec = table.spec();
    if let Some(provider) = connector.batch_table(&spec)? {
        return Ok(provider);
    }
    let count = lanes.max(1);
    let partitions: Vec<Arc<dyn PartitionStream>> = (0..count)
        .map(|index| {
            let shard = SourceShard {
                connector: Arc::clone(&connector),
                spec: spec.clone(),
                shard: Shard { index, count },
                query_id: query_id.to_string(),
            };
            Arc::new(shard) as Arc<dyn PartitionStream>
        })
        .collect();
    Ok(Arc::new(StreamingTable::try_new(Arc::clone(&table.schema), partitions)?))
}

/// One shard of a table's source, read to its end as a DataFusion partition.
struct SourceShard {
    connector: Arc<dyn Connector>,
    spec: TableSpec,
    shard: Shard,
    query_id: String,
}

impl std::fmt::Debug for SourceShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceShard({} {}/{})", self.spec.name, self.shard.index, self.shard.count)
    }
}

impl PartitionStream for SourceShard {
    fn schema(&self) -> &SchemaRef {
        &self.spec.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let external = |e: Box<dyn std::error::Error + Send + Sync>| DataFusionError::External(e);
        let source = self.connector.source(&self.spec, self.shard, &self.query_id).map_err(|e| external(Box::new(e)));
        let batches = futures::stream::unfold(Some(source), move |state| async move {
            match state? {
                Err(e) => Some((Err(e), None)),
                Ok(mut source) => match source.next_batch().await {
                    Ok(Some(batch)) => Some((Ok(batch), Some(Ok(source)))),
                    Ok(None) => None,
                    Err(e) => Some((Err(external(Box::new(e))), None)),
                },
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.spec.schema), batches))
    }
}

/// A planned batch query as the one source of its pipeline: the plan's
/// partitions merged into one stream, started at the first read.
struct PlanSource {
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
    stream: Option<SendableRecordBatchStream>,
}

#[async_trait]
impl Source for PlanSource {
    fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    fn describe(&self) -> String {
        "batch query (execution.runtime-mode = batch)".to_string()
    }

    fn reads_whole_input(&self) -> bool {
        true
    }

    /// Cancel-safe: a dropped call loses no batch (the stream keeps it).
    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        if self.stream.is_none() {
            self.stream = Some(execute_stream(Arc::clone(&self.plan), Arc::clone(&self.task_ctx))?);
        }
        let Some(stream) = &mut self.stream else { return Ok(None) };
        match stream.next().await {
            Some(batch) => Ok(Some(batch?)),
            None => Ok(None),
        }
    }
}
