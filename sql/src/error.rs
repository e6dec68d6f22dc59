//! Errors of parsing, planning and running statements.

use datafusion::error::DataFusionError;
use sluice_connectors::ConnectorError;
use sluice_engine::EngineError;
use sqlparser::parser::ParserError;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The SQL text does not parse.
    #[error("syntax error: {0}")]
    Parse(#[from] ParserError),
    /// The statement parses but cannot be planned (unknown table, bad type, unsupported feature).
    #[error("{0}")]
    Plan(String),
    /// A table, view or other catalog object is missing or already exists.
    #[error("{0}")]
    Catalog(String),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    DataFusion(Box<DataFusionError>),
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        // Planning errors are the user's: show DataFusion's message without its wrapping.
        match e.find_root() {
            DataFusionError::Plan(m) => SqlError::Plan(m.clone()),
            root @ (DataFusionError::SchemaError(..)
            | DataFusionError::SQL(..)
            | DataFusionError::NotImplemented(_)) => SqlError::Plan(root.to_string()),
            _ => SqlError::DataFusion(Box::new(e)),
        }
    }
}

/// Shorthand for a planning error.
pub fn plan_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(SqlError::Plan(msg.into()))
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;
