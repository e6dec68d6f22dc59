//! The engine's error type, split by who has to act on it.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Everything that can go wrong while building or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The user's query or configuration is wrong.
    #[error("{0}")]
    Plan(String),
    /// A source or sink failed to talk to the outside world.
    #[error("{connector}: {message}")]
    Connector { connector: String, message: String },
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The query's operators hold more state than its memory limit allows.
    #[error(
        "the query holds {} of state, over its limit of {} ('sluice.memory.limit'): bound its state with a window or a TTL (SET 'table.exec.state.ttl'), or raise the limit",
        crate::metrics::format_bytes(*used),
        crate::metrics::format_bytes(*limit)
    )]
    MemoryLimit { used: u64, limit: u64 },
    /// An operator failed: which one, and why.
    #[error("{operator}: {source}")]
    Operator { operator: &'static str, source: Box<EngineError> },
    /// A checkpoint could not be stored or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The query was cancelled by its owner.
    #[error("query cancelled")]
    Cancelled,
    /// A bug in Sluice.
    #[error("internal: {0}")]
    Internal(String),
}

impl EngineError {
    /// An error raised by a connector, naming it.
    pub fn connector(connector: impl Into<String>, message: impl ToString) -> Self {
        EngineError::Connector { connector: connector.into(), message: message.to_string() }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
