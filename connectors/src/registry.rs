//! The list of connectors and the contract each one fulfils.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use sluice_engine::{Sink, Source};

use crate::error::{ConnectorError, Result};
use crate::options::Options;

/// A table as declared in DDL: its columns and its WITH options (connector removed).
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    pub schema: SchemaRef,
    pub connector: String,
    pub options: BTreeMap<String, String>,
    /// `PRIMARY KEY (...)`: a Kafka table with one is read as upserts by key
    /// (a tombstone deletes its key).
    pub primary_key: Vec<String>,
    /// The column its WATERMARK is declared for.
    pub time_column: Option<String>,
    /// The columns the query reads (`None`: all). A source may leave the
    /// others NULL instead of decoding them; nullable ones only.
    pub read_columns: Option<Vec<String>>,
}

impl TableSpec {
    /// A table of `connector` with these columns and options (no key, no event time).
    pub fn new(name: impl Into<String>, schema: SchemaRef, connector: impl Into<String>, options: BTreeMap<String, String>) -> Self {
        TableSpec {
            name: name.into(),
            schema,
            connector: connector.into(),
            options,
            primary_key: Vec::new(),
            time_column: None,
            read_columns: None,
        }
    }

    /// The table as read by a query that reads only `columns` (`None`: all).
    pub fn reading(mut self, columns: Option<Vec<String>>) -> Self {
        self.read_columns = columns;
        self
    }

    pub fn options(&self) -> Options {
        Options::new(self.connector.clone(), self.options.clone())
    }
}

/// Which share of a source one lane reads: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole source.
    pub const ALL: Shard = Shard { index: 0, count: 1 };
}

/// What the tables of a connector can do, as the planner needs to know it:
/// typed values, so no one checks a connector's name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Its input ends (a file, a generator given `rows`): windows close at the
    /// end even without a WATERMARK, and without one the table is static (the
    /// side of a lookup join read whole first).
    pub bounded: bool,
    /// With a PRIMARY KEY it reads changes by key: upserts, and deletes.
    pub upsert: bool,
    /// It fills `METADATA` columns.
    pub metadata_columns: bool,
}

/// A kind of external system a table can live in.
pub trait Connector: Send + Sync {
    fn name(&self) -> &'static str;
    /// Other names `WITH (connector = ...)` takes for it (another engine's,
    /// so that its DDL runs unchanged).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// What `table` (declared with this connector) can do.
    fn capabilities(&self, table: &TableSpec) -> Capabilities {
        let _ = table;
        Capabilities::default()
    }
    /// Checks the options and columns when the table is created, opening nothing.
    fn validate(&self, table: &TableSpec) -> Result<()>;
    /// A source reading one shard of the table (each call starts from the
    /// beginning). The shards of one table together produce every row once.
    /// `query_id` identifies the reading query (the same for a replay of the
    /// same statement): sources that keep a position outside Sluice (a Kafka
    /// consumer group) keep one per query, so queries never move each other's.
    fn source(&self, table: &TableSpec, shard: Shard, query_id: &str) -> Result<Box<dyn Source>> {
        let _ = (table, shard, query_id);
        Err(ConnectorError::Role { connector: self.name().to_string(), role: "source" })
    }
    /// The whole of a bounded table as a DataFusion table, for batch queries
    /// (`execution.runtime-mode = 'batch'`), when the connector reads it
    /// better than through its sources (files: DataFusion's own file scans,
    /// pruned by partition). `None`: a batch query reads the table's sources
    /// to their end. Rows are those the sources would produce.
    fn batch_table(&self, table: &TableSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        let _ = table;
        Ok(None)
    }
    /// A sink writing into the table.
    fn sink(&self, table: &TableSpec) -> Result<Box<dyn Sink>> {
        let _ = table;
        Err(ConnectorError::Role { connector: self.name().to_string(), role: "sink" })
    }
    /// A sink writing the results of the query identified by `query_id` (the same
    /// for a replay of the same statement): sinks that name their output after
    /// it make a replay overwrite what an earlier run wrote.
    fn sink_for_query(&self, table: &TableSpec, query_id: &str) -> Result<Box<dyn Sink>> {
        let _ = query_id;
        self.sink(table)
    }
}

/// Every connector Sluice knows.
pub fn registry() -> Vec<Arc<dyn Connector>> {
    vec![
        Arc::new(crate::generator::GeneratorConnector),
        Arc::new(crate::file::FileConnector),
        Arc::new(crate::stdout::StdoutConnector),
        Arc::new(crate::lake::LakeConnector),
        Arc::new(crate::kafka::KafkaConnector),
        Arc::new(crate::nexmark::NexmarkConnector),
        Arc::new(crate::blackhole::BlackholeConnector),
    ]
}

/// The connector called `name` among Sluice's own.
pub fn connector(name: &str) -> Result<Arc<dyn Connector>> {
    find_connector(&registry(), name)
}

/// The connector called `name`, or with `name` as an alias, in `connectors`
/// (names are case-insensitive).
pub fn find_connector(connectors: &[Arc<dyn Connector>], name: &str) -> Result<Arc<dyn Connector>> {
    let called = |c: &&Arc<dyn Connector>| c.name().eq_ignore_ascii_case(name) || c.aliases().iter().any(|a| a.eq_ignore_ascii_case(name));
    connectors.iter().find(called).cloned().ok_or_else(|| {
        let known: Vec<&str> = connectors.iter().map(|c| c.name()).collect();
        ConnectorError::UnknownConnector(name.to_string(), known.join(", "))
    })
}
