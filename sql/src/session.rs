//! A SQL session: runs statements against a shared catalog.
//!
//! All front ends (shell, `sluice run`, the REST server) go through here: DDL
//! changes the catalog, catalog statements answer with rows, and a query or
//! INSERT starts a pipeline whose results the front end consumes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::{collect, displayable};
use datafusion::sql::parser::Statement as DfStatement;
use sluice_engine::alignment::AlignmentGroup;
use sluice_engine::metrics::JobMetrics;
use sluice_engine::operators::WatermarkAssigner;
use sluice_engine::sink::ChannelSink;
use sluice_engine::time::format_nanos;
use sluice_connectors::{find_connector, registry, Connector};
use sluice_engine::{Flow, FlowInput, Job, JobHandle, JobOptions, JoinInput, Output, Pipeline, Sink, Stage, UnionInput};
use sqlparser::ast::helpers::stmt_create_table::CreateTableBuilder;
use sqlparser::ast::{CreateView, ObjectType, Query, Set, Statement, TableObject};
use tokio::sync::mpsc;

use crate::columns_read::columns_read;
use crate::catalog::{normalize_name, Catalog, FunctionBody, FunctionDef, TableDef, ViewDef, WatermarkDef};
use crate::create_table::CreateTable;
use crate::error::{plan_err, Result, SqlError};
use crate::lower::{lower, reads_stream, LoweredFlow, LoweredInput, LoweredStage, TableInfo};
use crate::planner::{plan_logical, plan_query, planning_context, watermark_expr, PlannedQuery};
use crate::options::{QueryOptions, RuntimeMode};
use crate::statement::{parse_statements, SluiceStatement};
use crate::table_reads::TableReads;

/// Result batches buffered between a query and its front end.
const RESULT_BUFFER: usize = 16;

/// A continuous query's live results.
pub struct QueryOutput {
    pub schema: SchemaRef,
    /// Result batches in arrival order; closes when the query ends.
    pub results: mpsc::Receiver<RecordBatch>,
    /// The running pipeline: wait on it for the final status, or cancel it.
    pub job: JobHandle,
    /// What the user should know as it starts (see [`start_warnings`]).
    pub warnings: Vec<String>,
}

/// What a statement produced.
pub enum StatementOutput {
    /// DDL took effect.
    Message(String),
    /// A complete, finite result.
    Rows { schema: SchemaRef, batches: Vec<RecordBatch> },
    /// A running continuous SELECT.
    Query(QueryOutput),
    /// A running `INSERT INTO` job, with what the user should know as it starts.
    Insert { target: String, job: JobHandle, warnings: Vec<String> },
    /// A running statement set: one job whose outputs are its INSERTs, into
    /// `targets` in order (see [`sluice_engine::metrics::JobMetrics::rows_per_sink`]).
    InsertSet { targets: Vec<String>, job: JobHandle, warnings: Vec<String> },
}

/// One statement planned as an output of a pipeline, or as a batch query (it
/// reads no stream).
pub(crate) enum PlannedOutput {
    Stream(Output),
    Batch(PlannedQuery),
}

/// A pipeline about to run, or the result of a query that reads no stream.
enum Compiled {
    /// A pipeline and the id of its statement.
    Pipeline(Pipeline, String),
    Batch(PlannedQuery),
}

/// Runs SQL against a catalog that may be shared with other sessions.
pub struct Session {
    catalog: Arc<RwLock<Catalog>>,
    last_metrics: Option<Arc<JobMetrics>>,
    /// Connectors tables may name: Sluice's own plus any an embedder adds.
    connectors: Vec<Arc<dyn Connector>>,
    /// What the next queries run with (changed by `SET`).
    options: QueryOptions,
    /// The `query` label of the next queries' exported metrics.
    metrics_label: Option<String>,
    /// Where checkpoints go without `state.checkpoints.dir`.
    checkpoint_dir: std::path::PathBuf,
    /// The name checkpoints go under without `pipeline.name`.
    default_pipeline_name: Option<String>,
    /// Counters the next pipeline reports into (a restarted query keeps its
    /// own); `None`: new ones.
    reuse_metrics: Option<Arc<JobMetrics>>,
}

/// The default number of lanes: one per core.
pub fn default_parallelism() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    cores.min(sluice_engine::key_group::KEY_GROUPS as usize)
}

impl Default for Session {
    fn default() -> Self {
        Session::new(Arc::new(RwLock::new(Catalog::default())))
    }
}

impl Session {
    pub fn new(catalog: Arc<RwLock<Catalog>>) -> Self {
        Session {
            catalog,
            last_metrics: None,
            connectors: registry(),
            options: QueryOptions::default(),
            metrics_label: None,
            checkpoint_dir: std::path::PathBuf::from(".sluice/checkpoints"),
            default_pipeline_name: None,
            reuse_metrics: None,
        }
    }

    /// What a connector needs to open the catalog table `name`.
    pub fn table_spec(&self, name: &str) -> Result<sluice_connectors::TableSpec> {
        let catalog = self.catalog()?;
        let table = catalog
            .table(&name.to_lowercase())
            .or_else(|| catalog.table(name))
            .ok_or_else(|| SqlError::Catalog(format!("table '{name}' does not exist")))?;
        Ok(table.spec())
    }

    /// Makes a connector of the embedding program's available to this session.
    pub fn add_connector(&mut self, connector: Arc<dyn Connector>) {
        self.connectors.push(connector);
    }

    fn connector(&self, name: &str) -> Result<Arc<dyn Connector>> {
        Ok(find_connector(&self.connectors, name)?)
    }

    /// Sets how many lanes the next queries run in (at least 1).
    pub fn set_parallelism(&mut self, lanes: usize) {
        self.options.parallelism = lanes.max(1);
    }

    /// The settings the next queries run with.
    pub fn options(&self) -> &QueryOptions {
        &self.options
    }

    /// Replaces the settings the next queries run with.
    pub fn set_options(&mut self, options: QueryOptions) {
        self.options = options;
    }

    /// Where queries keep their checkpoints when `state.checkpoints.dir` is not set.
    pub fn set_checkpoint_dir(&mut self, dir: impl Into<std::path::PathBuf>) {
        self.checkpoint_dir = dir.into();
    }

    /// The name queries' checkpoints are kept under when `pipeline.name` is not
    /// set (the server names them after its query ids); `None`: a hash of the
    /// statement.
    pub fn set_default_pipeline_name(&mut self, name: Option<String>) {
        self.default_pipeline_name = name;
    }

    async fn prepare_checkpoints(&self, pipeline: &mut Pipeline, query_id: &str) -> Result<Vec<String>> {
        if self.options.runtime_mode == RuntimeMode::Batch {
            // A batch query is run again, not resumed.
            return Ok(Vec::new());
        }
        let name = self.default_pipeline_name.as_deref().unwrap_or(query_id);
        crate::checkpoints::prepare(pipeline, &self.options, &self.checkpoint_dir, name).await
    }

    /// Labels the exported metrics of the next queries `query="<label>"`.
    pub fn set_metrics_label(&mut self, label: Option<String>) {
        self.metrics_label = label;
    }

    /// Parses a script into statements (see [`parse_statements`]).
    pub fn parse(&self, sql: &str) -> Result<Vec<SluiceStatement>> {
        Ok(parse_statements(sql)?)
    }

    pub(crate) fn catalog(&self) -> Result<Catalog> {
        self.catalog
            .read()
            .map(|c| c.clone())
            .map_err(|_| SqlError::Catalog("catalog lock poisoned".into()))
    }

    fn with_catalog<T>(&self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        let mut guard = self
            .catalog
            .write()
            .map_err(|_| SqlError::Catalog("catalog lock poisoned".into()))?;
        f(&mut guard)
    }

    /// Runs one statement. Queries and INSERTs return while their pipeline runs.
    pub async fn execute(&mut self, statement: SluiceStatement) -> Result<StatementOutput> {
        match statement {
            SluiceStatement::CreateTable(create) => self.create_table(*create).await,
            SluiceStatement::ShowMetrics => self.show_metrics(),
            SluiceStatement::CreateNativeFunction { name, or_replace, language, path } => {
                self.create_native_function(&normalize_name(&name), or_replace, &language, path)
            }
            SluiceStatement::Sql(statement) => self.execute_sql(*statement).await,
            SluiceStatement::StatementSet(inserts) => self.run_statement_set(inserts).await,
            SluiceStatement::ExplainStatementSet(inserts) => {
                let set = self.compile_set(&inserts).await?;
                let rows = set.pipeline.describe().into_iter().enumerate().map(|(i, l)| [i.to_string(), l]).collect();
                string_rows(&["step", "operator"], rows)
            }
        }
    }

    /// Starts a statement set as one job (see [`crate::statement_set`]).
    async fn run_statement_set(&mut self, inserts: Vec<Statement>) -> Result<StatementOutput> {
        let crate::statement_set::CompiledSet { mut pipeline, targets, id } = self.compile_set(&inserts).await?;
        self.last_metrics = Some(Arc::clone(&pipeline.metrics));
        let mut warnings = self.prepare_checkpoints(&mut pipeline, &id).await?;
        warnings.extend(start_warnings(&pipeline));
        let job = self.start(pipeline, Restartable::Set(inserts));
        Ok(StatementOutput::InsertSet { targets, job, warnings })
    }

    /// Parses and runs every statement of `sql`, returning the last output.
    pub async fn execute_script(&mut self, sql: &str) -> Result<Vec<StatementOutput>> {
        let mut outputs = Vec::new();
        for statement in self.parse(sql)? {
            outputs.push(self.execute(statement).await?);
        }
        Ok(outputs)
    }

    async fn execute_sql(&mut self, statement: Statement) -> Result<StatementOutput> {
        match statement {
            Statement::Query(query) => self.run_query(&query).await,
            Statement::Insert(insert) => {
                let (target, source) = insert_into(&insert)?;
                self.run_insert(&target, source).await
            }
            Statement::CreateView(view) => self.create_view(view).await,
            Statement::Drop { object_type, if_exists, names, .. } => self.drop(object_type, if_exists, &names),
            Statement::CreateFunction(f) => self.create_function(f).await,
            Statement::DropFunction(f) => {
                let mut dropped = Vec::new();
                for desc in &f.func_desc {
                    let name = normalize_name(&desc.name);
                    if !self.with_catalog(|c| Ok(c.drop_function(&name)))? && !f.if_exists {
                        return Err(SqlError::Catalog(format!("function '{name}' does not exist")));
                    }
                    dropped.push(name);
                }
                Ok(StatementOutput::Message(format!("Dropped: {}", dropped.join(", "))))
            }
            Statement::ShowTables { .. } => self.show_tables(),
            Statement::ShowFunctions { .. } => self.show_functions(),
            Statement::ShowCreate { obj_type, obj_name } => {
                let text = crate::show_create::show_create(&self.catalog()?, &obj_type, &normalize_name(&obj_name))?;
                string_rows(&["result"], vec![[text]])
            }
            Statement::ExplainTable { table_name, .. } => self.describe(&normalize_name(&table_name)),
            Statement::Explain { statement, .. } => self.explain(*statement).await,
            Statement::Set(Set::SingleAssignment { variable, values, .. }) => self.set(&variable, &values),
            other => plan_err(format!("unsupported statement: {other}")),
        }
    }

    fn set(&mut self, variable: &sqlparser::ast::ObjectName, values: &[sqlparser::ast::Expr]) -> Result<StatementOutput> {
        let name = normalize_name(variable);
        let value = match values {
            [v] => v.to_string().trim_matches('\'').to_string(),
            _ => return plan_err(format!("SET {name}: expected one value")),
        };
        let key = self.options.set(name.trim_matches('\''), &value).map_err(|e| SqlError::Plan(e.to_string()))?;
        let shown = self.options.get(key).unwrap_or(value);
        Ok(StatementOutput::Message(format!("{key} = {shown}")))
    }

    async fn create_table(&mut self, create: CreateTable) -> Result<StatementOutput> {
        let name = normalize_name(&create.name);
        if self.catalog()?.contains(&name) {
            if create.if_not_exists {
                return Ok(StatementOutput::Message(format!("table '{name}' already exists, skipped")));
            }
            return Err(SqlError::Catalog(format!("table '{name}' already exists")));
        }
        let ctx = planning_context();
        let mut schema = self.schema_of(&create.name, create.columns).await?;
        if !create.metadata.is_empty() {
            schema = with_metadata_columns(&name, &schema, &create.metadata)?;
        }
        let mut options: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in create.options {
            if options.insert(key.to_lowercase(), value).is_some() {
                return plan_err(format!("table '{name}': option '{key}' is given twice"));
            }
        }
        let known = self.connectors.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ");
        let connector = options
            .remove("connector")
            .ok_or_else(|| SqlError::Plan(format!("table '{name}': WITH (connector = ...) is required (one of {known})")))?;
        let watermark = create.watermark.map(|w| WatermarkDef { column: normalize_ident(&w.column), expr: w.expr });
        let primary_key: Vec<String> = create.primary_key.iter().map(normalize_ident).collect();
        if let Some(missing) = primary_key.iter().find(|k| schema.column_with_name(k).is_none()) {
            return plan_err(format!("table '{name}': PRIMARY KEY column {missing} is not a column"));
        }
        let virtual_columns = create.metadata.iter().filter(|m| m.is_virtual).map(|m| normalize_ident(&m.column)).collect();
        let mut table = TableDef {
            name: name.clone(),
            schema,
            watermark,
            connector,
            options,
            primary_key,
            virtual_columns,
            capabilities: Default::default(),
        };
        let connector = self.connector(&table.connector)?;
        table.capabilities = connector.capabilities(&table.spec());
        if sluice_connectors::metadata::has_metadata_columns(&table.schema) && !table.capabilities.metadata_columns {
            return plan_err(format!("table '{name}': connector '{}' has no METADATA columns", table.connector));
        }
        if let Some(wm) = &table.watermark {
            match table.schema.field_with_name(&wm.column).map(|f| f.data_type()) {
                Ok(DataType::Timestamp(_, _)) => {}
                Ok(other) => {
                    return plan_err(format!(
                        "table '{name}': WATERMARK FOR {}: the column is {other}, not a TIMESTAMP",
                        wm.column
                    ))
                }
                Err(_) => return plan_err(format!("table '{name}': WATERMARK FOR {}: no such column", wm.column)),
            }
            watermark_expr(&ctx, &table, &wm.expr)?;
        }
        connector.validate(&table.spec())?;
        self.with_catalog(|c| c.add_table(table))?;
        Ok(StatementOutput::Message(format!("Table '{name}' created")))
    }

    /// Arrow types of SQL column definitions, as DataFusion maps them.
    async fn schema_of(&self, name: &sqlparser::ast::ObjectName, columns: Vec<sqlparser::ast::ColumnDef>) -> Result<SchemaRef> {
        let ddl = Statement::CreateTable(CreateTableBuilder::new(name.clone()).columns(columns).build());
        match planning_context().state().statement_to_plan(DfStatement::Statement(Box::new(ddl))).await? {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => Ok(Arc::new(c.input.schema().as_arrow().clone())),
            other => plan_err(format!("internal: CREATE TABLE planned as {}", other.display())),
        }
    }

    async fn create_function(&mut self, f: sqlparser::ast::CreateFunction) -> Result<StatementOutput> {
        use sqlparser::ast::{ColumnDef, CreateFunctionBody, FunctionReturnType, Ident, Value};
        let name = normalize_name(&f.name);
        if let Some(lang) = &f.language {
            return plan_err(format!(
                "CREATE FUNCTION {name}: LANGUAGE {lang} takes no argument list or RETURNS: \
                 CREATE FUNCTION {name} LANGUAGE rust AS 'path/to/lib.so'"
            ));
        }
        let Some(FunctionReturnType::DataType(return_type)) = &f.return_type else {
            return plan_err(format!("CREATE FUNCTION {name}: RETURNS <type> is required"));
        };
        let body = match &f.function_body {
            Some(CreateFunctionBody::AsBeforeOptions { body, .. } | CreateFunctionBody::AsAfterOptions(body) | CreateFunctionBody::Return(body)) => body.clone(),
            _ => return plan_err(format!("CREATE FUNCTION {name}: expected AS 'expression'")),
        };
        // The body may be quoted text (AS 'price * 1.2') or a bare expression (RETURN price * 1.2).
        let body = match &body {
            sqlparser::ast::Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(text) => sqlparser::parser::Parser::new(&crate::dialect::SluiceDialect)
                    .try_with_sql(text)?
                    .parse_expr()?,
                _ => body,
            },
            _ => body,
        };
        let mut columns: Vec<ColumnDef> = Vec::new();
        for (i, arg) in f.args.iter().flatten().enumerate() {
            let arg_name = arg.name.clone().unwrap_or_else(|| Ident::new(format!("${}", i + 1)));
            columns.push(ColumnDef { name: arg_name, data_type: arg.data_type.clone(), options: vec![] });
        }
        columns.push(ColumnDef { name: Ident::new("__return"), data_type: return_type.clone(), options: vec![] });
        let schema = self.schema_of(&f.name, columns).await?;
        let fields = schema.fields();
        let params: Vec<(String, DataType)> =
            fields.iter().take(fields.len() - 1).map(|f| (f.name().clone(), f.data_type().clone())).collect();
        let return_type = fields[fields.len() - 1].data_type().clone();
        // Check the body now: it must plan over the parameters alone.
        let body_expr = crate::planner::sql_function_body(&planning_context(), &params, &body)
            .map_err(|e| SqlError::Plan(format!("CREATE FUNCTION {name}: {e}")))?;
        let df_schema = datafusion::common::DFSchema::try_from(Schema::new(
            params.iter().map(|(n, t)| Field::new(n, t.clone(), true)).collect::<Vec<_>>(),
        ))?;
        let produced = datafusion::logical_expr::ExprSchemable::get_type(&body_expr, &df_schema)?;
        if !datafusion::arrow::compute::can_cast_types(&produced, &return_type) {
            return plan_err(format!("CREATE FUNCTION {name}: the body is {produced}, which cannot become {return_type}"));
        }
        let def = FunctionDef { name: name.clone(), body: FunctionBody::Sql { params, return_type, body: Box::new(body) } };
        self.with_catalog(|c| c.add_function(def, f.or_replace))?;
        Ok(StatementOutput::Message(format!("Function '{name}' created")))
    }

    fn create_native_function(&mut self, name: &str, replace: bool, language: &str, path: String) -> Result<StatementOutput> {
        if !language.eq_ignore_ascii_case("rust") {
            return plan_err(format!("CREATE FUNCTION {name}: LANGUAGE {language} is not supported (use rust)"));
        }
        let function = sluice_udf::load_native_function(std::path::Path::new(&path), name)
            .map_err(|e| SqlError::Plan(e.to_string()))?;
        let kind = match function {
            sluice_udf::NativeFunction::Scalar(_) => "scalar",
            sluice_udf::NativeFunction::Aggregate(_) => "aggregate",
        };
        let def = FunctionDef { name: name.to_string(), body: FunctionBody::Native { path, function } };
        self.with_catalog(|c| c.add_function(def, replace))?;
        Ok(StatementOutput::Message(format!("Function '{name}' ({kind}) loaded")))
    }

    async fn create_view(&mut self, view: CreateView) -> Result<StatementOutput> {
        let name = normalize_name(&view.name);
        let catalog = self.catalog()?;
        if catalog.contains(&name) && view.if_not_exists {
            return Ok(StatementOutput::Message(format!("view '{name}' already exists, skipped")));
        }
        plan_logical(&catalog, &view.query).await?;
        self.with_catalog(|c| c.add_view(ViewDef { name: name.clone(), query: view.query }, view.or_replace))?;
        Ok(StatementOutput::Message(format!("View '{name}' created")))
    }

    fn drop(&mut self, kind: ObjectType, if_exists: bool, names: &[sqlparser::ast::ObjectName]) -> Result<StatementOutput> {
        let mut dropped = Vec::new();
        for name in names.iter().map(normalize_name) {
            let existed = self.with_catalog(|c| match kind {
                ObjectType::Table => c.drop_table(&name),
                ObjectType::View => c.drop_view(&name),
                other => plan_err(format!("DROP {other} is not supported")),
            })?;
            if !existed && !if_exists {
                return Err(SqlError::Catalog(format!("{} '{name}' does not exist", kind.to_string().to_lowercase())));
            }
            if existed {
                dropped.push(name);
            }
        }
        Ok(StatementOutput::Message(format!("Dropped: {}", dropped.join(", "))))
    }

    fn show_tables(&self) -> Result<StatementOutput> {
        let catalog = self.catalog()?;
        let mut rows: Vec<[String; 3]> = catalog
            .tables()
            .map(|t| [t.name.clone(), "table".to_string(), t.connector.clone()])
            .chain(catalog.views().map(|v| [v.name.clone(), "view".to_string(), String::new()]))
            .collect();
        rows.sort();
        string_rows(&["name", "kind", "connector"], rows)
    }

    fn show_functions(&self) -> Result<StatementOutput> {
        let rows = sluice_udf::list_functions(&crate::planner::context_with_catalog(&self.catalog()?)?)
            .into_iter()
            .map(|(name, kind)| [name, kind.to_string()])
            .collect();
        string_rows(&["name", "kind"], rows)
    }

    fn describe(&self, name: &str) -> Result<StatementOutput> {
        let catalog = self.catalog()?;
        let (schema, watermark) = match (catalog.table(name), catalog.view(name)) {
            (Some(t), _) => (t.schema.clone(), t.watermark.clone()),
            (None, Some(_)) => return plan_err(format!("'{name}' is a view; DESCRIBE shows tables")),
            (None, None) => return Err(SqlError::Catalog(format!("table '{name}' does not exist"))),
        };
        let rows = schema
            .fields()
            .iter()
            .map(|f| {
                let wm = match &watermark {
                    Some(w) if &w.column == f.name() => w.expr.to_string(),
                    _ => String::new(),
                };
                [f.name().clone(), sql_type_name(f.data_type()), if f.is_nullable() { "YES" } else { "NO" }.to_string(), wm]
            })
            .collect();
        string_rows(&["column", "type", "nullable", "watermark"], rows)
    }

    fn show_metrics(&self) -> Result<StatementOutput> {
        let Some(metrics) = &self.last_metrics else {
            return plan_err("SHOW METRICS: no query has run in this session yet");
        };
        let m = metrics.snapshot();
        let rows = vec![
            ["rows_in".to_string(), m.rows_in.to_string()],
            ["rows_out".to_string(), m.rows_out.to_string()],
            ["late_rows_dropped".to_string(), m.late_rows.to_string()],
            ["bad_records".to_string(), m.bad_records.to_string()],
            ["state_bytes".to_string(), m.state_bytes.to_string()],
            ["watermark".to_string(), m.watermark.map(format_nanos).unwrap_or_else(|| "none".into())],
        ];
        let checkpoints = metrics.checkpoints();
        let mut rows = rows;
        // Checkpoint rows only for a query that takes checkpoints.
        if checkpoints.completed + checkpoints.failed > 0 || checkpoints.restored_from.is_some() {
            rows.push(["checkpoints_completed".to_string(), checkpoints.completed.to_string()]);
            rows.push(["checkpoints_failed".to_string(), checkpoints.failed.to_string()]);
        }
        let (restarts, last_failure) = metrics.restarts();
        if restarts > 0 {
            rows.push(["restarts".to_string(), restarts.to_string()]);
            rows.push(["last_failure".to_string(), last_failure.unwrap_or_default()]);
        }
        if let Some(id) = checkpoints.restored_from {
            rows.push(["checkpoint_restored_from".to_string(), id.to_string()]);
        }
        if let Some(last) = checkpoints.last() {
            rows.push(["last_checkpoint_id".to_string(), last.id.to_string()]);
            rows.push(["last_checkpoint_duration_ms".to_string(), last.duration_ms.to_string()]);
            rows.push(["last_checkpoint_bytes".to_string(), last.bytes.to_string()]);
            rows.push(["last_checkpoint_alignment_ms".to_string(), last.alignment_ms.to_string()]);
        }
        string_rows(&["metric", "value"], rows)
    }

    async fn explain(&mut self, statement: Statement) -> Result<StatementOutput> {
        let lines = match statement {
            Statement::Query(query) if self.options.runtime_mode == RuntimeMode::Batch => {
                let catalog = self.catalog()?;
                let id = query_id(None, &query);
                crate::batch::explain_lines(&crate::batch::plan_batch(&catalog, &self.connectors, &query, None, &self.options, &id).await?)
            }
            Statement::Query(query) => match self.compile(&query, None).await? {
                Compiled::Pipeline(p, _) => p.describe(),
                Compiled::Batch(planned) => batch_lines(&planned),
            },
            Statement::Insert(insert) => {
                let (TableObject::TableName(name), Some(source)) = (&insert.table, &insert.source) else {
                    return plan_err("EXPLAIN INSERT needs INSERT INTO <table> SELECT ...");
                };
                match self.compile(source, Some(&normalize_name(name))).await? {
                    Compiled::Pipeline(p, _) => p.describe(),
                    Compiled::Batch(planned) => batch_lines(&planned),
                }
            }
            other => return plan_err(format!("EXPLAIN supports queries and INSERT, not {other}")),
        };
        let rows = lines.into_iter().enumerate().map(|(i, l)| [i.to_string(), l]).collect();
        string_rows(&["step", "operator"], rows)
    }

    /// Plans a query into a pipeline (with a results channel unless `target` names
    /// a sink table).
    async fn compile(&mut self, query: &Query, target: Option<&str>) -> Result<Compiled> {
        let (sink, _) = ChannelSink::new(1);
        self.compile_with_sink(query, target, Box::new(sink)).await
    }

    async fn compile_with_sink(&mut self, query: &Query, target: Option<&str>, results: Box<dyn Sink>) -> Result<Compiled> {
        let catalog = self.catalog()?;
        let target_table = match target {
            None => None,
            Some(name) => Some(
                catalog
                    .table(name)
                    .ok_or_else(|| SqlError::Catalog(format!("INSERT INTO {name}: no such table")))?,
            ),
        };
        let query_id = query_id(target_table, query);
        let metrics = self.new_metrics();
        let mut reads = TableReads::Own { query_id: query_id.clone() };
        let output = match self.plan_output(&catalog, query, target_table, results, &metrics, &mut reads, &query_id).await? {
            PlannedOutput::Batch(planned) => return Ok(Compiled::Batch(planned)),
            PlannedOutput::Stream(output) => output,
        };
        let pipeline = Pipeline { outputs: vec![output], shared_sources: Vec::new(), metrics, options: self.job_options(), checkpoints: None };
        Ok(Compiled::Pipeline(pipeline, query_id))
    }

    /// What the runtime enforces for the next pipeline (from `SET`).
    pub(crate) fn job_options(&self) -> JobOptions {
        JobOptions { memory_limit: self.options.memory_limit, ..Default::default() }
    }

    /// Counters for the next pipeline (a restarted one keeps its own).
    pub(crate) fn new_metrics(&self) -> Arc<JobMetrics> {
        match &self.reuse_metrics {
            Some(m) => Arc::clone(m),
            None => JobMetrics::with_label(self.metrics_label.clone()),
        }
    }

    /// Plans `query` (into `target_table`, else into `results`) as one output
    /// of a pipeline, its tables read as `reads` says; a query that reads no
    /// stream is planned as a batch query. `query_id` is the statement's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn plan_output(
        &self,
        catalog: &Catalog,
        query: &Query,
        target_table: Option<&TableDef>,
        results: Box<dyn Sink>,
        metrics: &Arc<JobMetrics>,
        reads: &mut TableReads,
        query_id: &str,
    ) -> Result<PlannedOutput> {
        if self.options.runtime_mode == RuntimeMode::Batch {
            let planned = crate::batch::plan_batch(catalog, &self.connectors, query, target_table, &self.options, query_id).await?;
            let sink = match target_table {
                None => results,
                Some(t) => self.connector(&t.connector)?.sink_for_query(&t.spec(), query_id)?,
            };
            return Ok(PlannedOutput::Stream(crate::batch::batch_output(&planned, sink)));
        }
        let planned = plan_query(catalog, query, target_table).await?;
        if !reads_stream(&planned.plan) {
            return Ok(PlannedOutput::Batch(planned));
        }
        let tables: HashMap<String, TableInfo> = catalog
            .tables()
            .map(|t| {
                let info = TableInfo {
                    time_column: t.watermark.as_ref().map(|w| w.column.clone()),
                    is_static: t.watermark.is_none() && t.capabilities.bounded,
                    is_upsert: !t.primary_key.is_empty() && t.capabilities.upsert,
                };
                (t.name.clone(), info)
            })
            .collect();
        let mut lanes = Vec::with_capacity(self.options.parallelism);
        for _ in 0..self.options.parallelism {
            let task_ctx = planned.ctx.task_ctx();
            lanes.push(lower(&planned.plan, &planned.windows, &tables, task_ctx, Arc::clone(metrics), self.options.state_ttl)?);
        }
        let Some(first) = lanes.first() else { return plan_err("internal: no lanes") };
        let (output_schema, changelog) = (Arc::clone(&first.output_schema), first.changelog);
        let flows = lanes.into_iter().map(|l| l.flow).collect();
        let alignment = self.options.max_drift.map(|d| AlignmentGroup::new(d.as_nanos().min(i64::MAX as u128) as i64));
        let flow = self.flow(catalog, &planned, flows, alignment.as_ref(), reads)?;
        let sink = match target_table {
            None => results,
            Some(t) => {
                let mut spec = t.spec();
                if changelog {
                    // The sink writes what it gets: the change kind, then the row.
                    spec.schema = Arc::clone(&output_schema);
                }
                self.connector(&t.connector)?.sink_for_query(&spec, query_id)?
            }
        };
        Ok(PlannedOutput::Stream(Output { flow, sink, schema: output_schema }))
    }

    /// Zips the lanes of a lowered query (each lowered on its own) into one flow,
    /// opening a source shard per lane and table read.
    fn flow(
        &self,
        catalog: &Catalog,
        planned: &PlannedQuery,
        lanes: Vec<LoweredFlow>,
        alignment: Option<&Arc<AlignmentGroup>>,
        reads: &mut TableReads,
    ) -> Result<Flow> {
        let count = lanes.len();
        let mut inputs = Vec::with_capacity(count);
        let mut stage_lanes: Vec<Vec<LoweredStage>> = Vec::with_capacity(count);
        for lane in lanes {
            inputs.push(lane.input);
            stage_lanes.push(lane.stages);
        }
        let mut stages: Vec<Stage> = Vec::new();
        let mut by_stage: Vec<std::vec::IntoIter<LoweredStage>> = stage_lanes.into_iter().map(|s| s.into_iter()).collect();
        loop {
            let next: Vec<Option<LoweredStage>> = by_stage.iter_mut().map(|s| s.next()).collect();
            if next.iter().any(Option::is_none) {
                break;
            }
            let mut exchange = None;
            let mut ops = Vec::with_capacity(count);
            for stage in next.into_iter().flatten() {
                exchange = stage.exchange;
                ops.push(stage.operators);
            }
            stages.push(Stage { exchange, lanes: ops });
        }
        let input = match inputs.first() {
            Some(LoweredInput::Table(name)) => {
                let name = name.clone();
                let table = catalog
                    .table(&name)
                    .ok_or_else(|| SqlError::Catalog(format!("table '{name}' does not exist")))?;
                let connector = self.connector(&table.connector)?;
                let watermark = table.watermark.as_ref().map(|wm| watermark_expr(&planned.ctx, table, &wm.expr)).transpose()?;
                let spec = table.spec().reading(columns_read(&planned.plan, table, watermark.as_ref()));
                let input = reads.read(connector, spec, count)?;
                if let (Some(wm), Some(expr), Some(first)) = (&table.watermark, &watermark, stages.first_mut()) {
                    for ops in &mut first.lanes {
                        let expr = Arc::clone(expr);
                        let mut assigner = WatermarkAssigner::new(expr, format!("{} AS {}", wm.column, wm.expr));
                        if let Some(group) = alignment {
                            assigner = assigner.aligned(group);
                        }
                        ops.insert(0, Box::new(assigner));
                    }
                }
                input
            }
            Some(LoweredInput::Union(_)) => {
                // Per branch, its lanes; per lane, the union's step.
                let mut branches: Vec<Vec<LoweredFlow>> = Vec::new();
                let mut ops = Vec::with_capacity(count);
                for input in inputs {
                    let LoweredInput::Union(union) = input else { return plan_err("internal: lanes differ in shape") };
                    let union = *union;
                    branches.resize_with(union.inputs.len(), Vec::new);
                    for (branch, flow) in branches.iter_mut().zip(union.inputs) {
                        branch.push(flow);
                    }
                    ops.push(union.operator);
                }
                let inputs = branches
                    .into_iter()
                    .map(|lanes| self.flow(catalog, planned, lanes, alignment, reads))
                    .collect::<Result<Vec<_>>>()?;
                FlowInput::Union(Box::new(UnionInput { inputs, lanes: ops }))
            }
            _ => {
                let (mut left, mut right, mut left_key, mut right_key, mut ops) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for input in inputs {
                    let LoweredInput::Join(join) = input else { return plan_err("internal: lanes differ in shape") };
                    let join = *join;
                    left.push(join.left);
                    right.push(join.right);
                    left_key = join.left_key;
                    right_key = join.right_key;
                    ops.push(join.operator);
                }
                FlowInput::Join(Box::new(JoinInput {
                    left: self.flow(catalog, planned, left, alignment, reads)?,
                    right: self.flow(catalog, planned, right, alignment, reads)?,
                    left_key,
                    right_key,
                    lanes: ops,
                }))
            }
        };
        Ok(Flow { input, stages })
    }

    async fn run_query(&mut self, query: &Query) -> Result<StatementOutput> {
        let (results_tx, results) = mpsc::channel(RESULT_BUFFER);
        let sink = ChannelSink::to(results_tx.clone());
        match self.compile_with_sink(query, None, Box::new(sink)).await? {
            Compiled::Batch(planned) => {
                let schema = planned.schema();
                let batches = collect(Arc::clone(&planned.plan), planned.ctx.task_ctx()).await?;
                Ok(StatementOutput::Rows { schema, batches })
            }
            Compiled::Pipeline(mut pipeline, query_id) => {
                let schema = pipeline.output_schema().unwrap_or_else(|| Arc::new(Schema::empty()));
                self.last_metrics = Some(Arc::clone(&pipeline.metrics));
                let mut warnings = self.prepare_checkpoints(&mut pipeline, &query_id).await?;
                warnings.extend(start_warnings(&pipeline));
                let job = self.start(pipeline, Restartable::Query { query: Box::new(query.clone()), target: None, results: Some(results_tx) });
                Ok(StatementOutput::Query(QueryOutput { schema, results, job, warnings }))
            }
        }
    }

    async fn run_insert(&mut self, target: &str, query: &Query) -> Result<StatementOutput> {
        match self.compile(query, Some(target)).await? {
            Compiled::Batch(_) => plan_err(format!("INSERT INTO {target}: the query must read from a table")),
            Compiled::Pipeline(mut pipeline, query_id) => {
                self.last_metrics = Some(Arc::clone(&pipeline.metrics));
                let mut warnings = self.prepare_checkpoints(&mut pipeline, &query_id).await?;
                warnings.extend(start_warnings(&pipeline));
                let job = self.start(pipeline, Restartable::Query { query: Box::new(query.clone()), target: Some(target.to_string()), results: None });
                Ok(StatementOutput::Insert { target: target.to_string(), job, warnings })
            }
        }
    }
}

impl Session {
    /// Starts a pipeline, to be restarted after a failure as the query's
    /// restart strategy says (re-planned from the catalog as it is then).
    fn start(&self, pipeline: Pipeline, statement: Restartable) -> JobHandle {
        let job = Job::start(pipeline);
        let Some(policy) = self.options.restart else { return job };
        let session = Session {
            catalog: Arc::clone(&self.catalog),
            last_metrics: None,
            connectors: self.connectors.clone(),
            options: self.options.clone(),
            metrics_label: self.metrics_label.clone(),
            checkpoint_dir: self.checkpoint_dir.clone(),
            default_pipeline_name: self.default_pipeline_name.clone(),
            reuse_metrics: None,
        };
        job.restart_with(Box::new(Restarter { session, statement }), policy)
    }
}

/// What a restarted pipeline runs.
enum Restartable {
    /// A query, into `target` or its results channel (which its reader keeps
    /// reading across restarts).
    Query { query: Box<Query>, target: Option<String>, results: Option<mpsc::Sender<RecordBatch>> },
    /// A statement set's INSERTs.
    Set(Vec<Statement>),
}

/// Plans a failed query again, from its latest checkpoint, to restart it.
struct Restarter {
    session: Session,
    statement: Restartable,
}

#[async_trait::async_trait]
impl sluice_engine::PipelineFactory for Restarter {
    async fn rebuild(&mut self, metrics: Arc<JobMetrics>) -> sluice_engine::Result<Pipeline> {
        let to_engine = |e: SqlError| sluice_engine::EngineError::Plan(format!("restarting the query: {e}"));
        self.session.reuse_metrics = Some(metrics);
        let (mut pipeline, id) = match &self.statement {
            Restartable::Query { query, target, results } => {
                let sink: Box<dyn Sink> = match results {
                    Some(tx) => Box::new(ChannelSink::to(tx.clone())),
                    None => Box::new(ChannelSink::new(1).0),
                };
                match self.session.compile_with_sink(query, target.as_deref(), sink).await.map_err(to_engine)? {
                    Compiled::Pipeline(pipeline, id) => (pipeline, id),
                    Compiled::Batch(_) => return Err(sluice_engine::EngineError::Plan("restarting the query: it no longer reads a stream".into())),
                }
            }
            Restartable::Set(inserts) => {
                let set = self.session.compile_set(inserts).await.map_err(to_engine)?;
                (set.pipeline, set.id)
            }
        };
        self.session.prepare_checkpoints(&mut pipeline, &id).await.map_err(to_engine)?;
        Ok(pipeline)
    }
}

/// The target table of an `INSERT INTO <table> SELECT ...` (normalized) and
/// its query; the forms Sluice does not run are refused.
pub(crate) fn insert_into(insert: &sqlparser::ast::Insert) -> Result<(String, &Query)> {
    let TableObject::TableName(name) = &insert.table else { return plan_err("INSERT INTO needs a table name") };
    let target = normalize_name(name);
    let Some(query) = &insert.source else { return plan_err(format!("INSERT INTO {target} needs a SELECT")) };
    if !insert.columns.is_empty() {
        return plan_err("INSERT INTO with a column list is not supported: select the columns in table order");
    }
    Ok((target, query))
}

/// The id of the statement running `query` (into `target`): the same
/// statement replayed gets the same id (sources keep their positions per
/// query, sinks may name their output after it).
pub(crate) fn query_id(target: Option<&crate::catalog::TableDef>, query: &Query) -> String {
    let text = format!("{}\n{query}", target.map_or("", |t| t.name.as_str()));
    format!("{:016x}", sluice_engine::stable_hash::fnv1a(text.as_bytes()))
}

/// Warnings for a query about to start: each step whose state nothing bounds
/// grows for as long as the query runs.
fn start_warnings(pipeline: &Pipeline) -> Vec<String> {
    pipeline
        .unbounded_operators()
        .iter()
        .map(|op| format!("this query's state grows without limit: {}", op.trim()))
        .collect()
}

fn batch_lines(planned: &PlannedQuery) -> Vec<String> {
    let plan = displayable(planned.plan.as_ref()).indent(false).to_string();
    let mut lines = vec!["batch query (reads no stream):".to_string()];
    lines.extend(plan.lines().map(|l| l.to_string()));
    lines
}

fn normalize_ident(id: &sqlparser::ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// A finite result of text columns.
fn string_rows<const N: usize>(names: &[&str; N], rows: Vec<[String; N]>) -> Result<StatementOutput> {
    let schema = Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>()));
    let columns: Vec<ArrayRef> = (0..N)
        .map(|i| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[i].as_str()))) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(sluice_engine::EngineError::from)?;
    Ok(StatementOutput::Rows { schema, batches: vec![batch] })
}

/// How a column type is written in SQL.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Timestamp(unit, tz) => {
            let precision = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            match tz {
                None => format!("TIMESTAMP({precision})"),
                Some(tz) => format!("TIMESTAMP({precision}) WITH TIME ZONE '{tz}'"),
            }
        }
        other => other.to_string(),
    }
}

/// Marks the columns declared `METADATA` in `schema`.
fn with_metadata_columns(
    table: &str,
    schema: &SchemaRef,
    columns: &[crate::create_table::MetadataColumn],
) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for m in columns {
        let name = normalize_ident(&m.column);
        let Some(field) = fields.iter_mut().find(|f| f.name() == &name) else {
            return plan_err(format!("table '{table}': METADATA column {name} is not a column"));
        };
        let key = m.key.clone().unwrap_or_else(|| name.clone());
        *field = sluice_connectors::metadata::with_metadata_key(field.clone(), &key);
    }
    Ok(Arc::new(Schema::new(fields)))
}

