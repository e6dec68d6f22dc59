//! Errors raised while configuring or running a connector.

use sluice_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A WITH option is missing, unknown or malformed.
    #[error("invalid option '{key}' for connector '{connector}': {reason}")]
    Option { connector: String, key: String, reason: String },
    /// The declared columns do not fit what the connector produces or accepts.
    #[error("table '{table}': {reason}")]
    Schema { table: String, reason: String },
    #[error("unknown connector '{0}' (available: {1})")]
    UnknownConnector(String, String),
    /// The connector cannot play the role asked of it (e.g. `stdout` as a source).
    #[error("connector '{connector}' cannot be used as a {role}")]
    Role { connector: String, role: &'static str },
    /// The state a checkpoint holds for a source or sink is not what this
    /// table's connector writes (the table changed since the checkpoint).
    #[error("connector '{connector}': the checkpoint does not fit this table: {reason}")]
    Checkpoint { connector: String, reason: String },
    /// Reading or writing external data failed.
    #[error("{connector}: {message}")]
    External { connector: String, message: String },
}

impl From<ConnectorError> for EngineError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::External { connector, message } => EngineError::Connector { connector, message },
            other => EngineError::Plan(other.to_string()),
        }
    }
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
