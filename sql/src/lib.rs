//! Sluice SQL: the dialect, the catalog, and the planner that compiles a continuous
//! query into an engine pipeline.
//!
//! Parsing uses sqlparser with [`dialect::SluiceDialect`] (Flink-style `TABLE t`
//! arguments of window TVFs) plus Sluice's own `CREATE TABLE` (watermarks, WITH
//! options). Planning rewrites window TVFs into ordinary SQL, lets DataFusion plan
//! and optimise the query, and lowers the physical plan into engine operators:
//! stateless parts stay DataFusion plans, windowed aggregates become stateful
//! operators driven by watermarks.

pub mod batch;
pub mod catalog;
mod checkpoints;
mod columns_read;
pub mod create_table;
pub mod dialect;
pub mod error;
pub mod interval;
mod fixed_intervals;
mod join_bounds;
pub mod lower;
pub mod options;
mod lower_alert;
mod lower_join;
mod lower_rank;
mod lower_union;
pub mod planner;
pub mod session;
pub mod show_create;
pub mod sql_function;
pub mod statement;
pub mod type_check;
mod statement_set;
mod table_reads;
pub mod window_tvf;
mod window_columns;
mod window_time;

pub use catalog::{Catalog, TableDef, ViewDef};
pub use error::{Result, SqlError};
pub use options::QueryOptions;
pub use session::{default_parallelism, QueryOutput, Session, StatementOutput};
pub use statement::{parse_statements, SluiceStatement};
