//! Sluice connectors: where rows come from and where results go.
//!
//! A connector is named in DDL (`WITH (connector = 'generator', ...)`), parses its
//! WITH options into a typed config in one place, and builds engine
//! [`sluice_engine::Source`]s and [`sluice_engine::Sink`]s. Every connector is
//! listed in [`registry::registry`].

pub mod blackhole;
mod checkpoint_rows;
pub mod conform;
pub mod error;
pub mod file;
pub mod file_table;
mod flat_json;
pub mod generator;
pub mod hive;
pub mod ingest;
pub mod kafka;
pub mod lake;
pub mod metadata;
pub mod nexmark;
pub mod options;
pub mod output_format;
pub mod registry;
pub mod stdout;
pub mod table_printer;

pub use error::ConnectorError;
pub use options::Options;
pub use registry::{connector, find_connector, registry, Capabilities, Connector, Shard, TableSpec};
