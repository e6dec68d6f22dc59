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
    #[error("{}", user_text(&.0.to_string()))]
    DataFusion(Box<DataFusionError>),
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        // Planning errors are the user's: show DataFusion's message without its wrapping.
        match e.find_root() {
            DataFusionError::Plan(m) => SqlError::Plan(user_text(m)),
            root @ (DataFusionError::SchemaError(..)
            | DataFusionError::SQL(..)
            | DataFusionError::NotImplemented(_)) => SqlError::Plan(user_text(&root.to_string())),
            _ => SqlError::DataFusion(Box::new(e)),
        }
    }
}

/// DataFusion's catalog and schema, which every table name it prints carries:
/// Sluice has one namespace, so users never wrote them.
const INTERNAL_PREFIX: &str = "datafusion.public.";

/// A DataFusion message in the user's terms: table names as the user wrote
/// them, and a missing table said plainly.
fn user_text(message: &str) -> String {
    let text = message.replace(INTERNAL_PREFIX, "");
    match text.strip_prefix("table '").and_then(|rest| rest.strip_suffix("' not found")) {
        Some(name) => format!("table '{name}' does not exist (SHOW TABLES lists them)"),
        None => text,
    }
}

/// Shorthand for a planning error.
pub fn plan_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(SqlError::Plan(msg.into()))
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_tables_as_written() {
        let missing = SqlError::from(DataFusionError::Plan("table 'datafusion.public.clickz' not found".into()));
        assert_eq!(missing.to_string(), "table 'clickz' does not exist (SHOW TABLES lists them)");
        let other = SqlError::from(DataFusionError::Execution("reading datafusion.public.t failed".into()));
        assert_eq!(other.to_string(), "Execution error: reading t failed");
    }
}
