//! How a pipeline's flows get the tables they read.
//!
//! A query opens sources for each table it reads (one shard per lane). A
//! statement set reads each table once for all of its INSERTs, as Flink reuses
//! a source within a set: every read of a table becomes a
//! [`FlowInput::Shared`] of one [`SharedSource`], which decodes every column
//! any of its readers reads.

use std::collections::BTreeSet;
use std::sync::Arc;

use sluice_connectors::{Connector, Shard, TableSpec};
use sluice_engine::{FlowInput, SharedSource};

use crate::error::Result;

/// Opens the sources of a pipeline's table reads.
pub(crate) enum TableReads {
    /// Each read opens sources of its own, as the statement's id.
    Own { query_id: String },
    /// Reads of the same table share one read.
    Shared(Vec<SharedTable>),
}

/// A table some flows of a statement set read.
pub(crate) struct SharedTable {
    connector: Arc<dyn Connector>,
    spec: TableSpec,
    /// The columns its readers read together; `None`: all of them.
    columns: Option<BTreeSet<String>>,
    lanes: usize,
}

impl TableReads {
    /// Reads shared between the flows of one pipeline.
    pub(crate) fn shared() -> Self {
        TableReads::Shared(Vec::new())
    }

    /// The input of a flow that reads `spec` (narrowed to the columns it
    /// reads) in `lanes` lanes.
    pub(crate) fn read(&mut self, connector: Arc<dyn Connector>, spec: TableSpec, lanes: usize) -> Result<FlowInput> {
        match self {
            TableReads::Own { query_id } => {
                let sources = (0..lanes)
                    .map(|index| Ok(connector.source(&spec, Shard { index, count: lanes }, query_id)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(FlowInput::Sources(sources))
            }
            TableReads::Shared(tables) => {
                let columns = spec.read_columns.clone().map(|c| c.into_iter().collect::<BTreeSet<_>>());
                let source = match tables.iter().position(|t| t.spec.name == spec.name && t.lanes == lanes) {
                    Some(i) => {
                        let table = &mut tables[i];
                        table.columns = match (table.columns.take(), columns) {
                            (Some(mut read), Some(more)) => {
                                read.extend(more);
                                Some(read)
                            }
                            _ => None,
                        };
                        i
                    }
                    None => {
                        tables.push(SharedTable { connector, spec, columns, lanes });
                        tables.len() - 1
                    }
                };
                Ok(FlowInput::Shared { source, lanes })
            }
        }
    }

    /// Opens the shared reads, as statement `query_id` (a set's).
    pub(crate) fn open(self, query_id: &str) -> Result<Vec<SharedSource>> {
        let TableReads::Shared(tables) = self else { return Ok(Vec::new()) };
        tables
            .into_iter()
            .map(|table| {
                let spec = table.spec.reading(table.columns.map(|c| c.into_iter().collect()));
                let lanes = (0..table.lanes)
                    .map(|index| Ok(table.connector.source(&spec, Shard { index, count: table.lanes }, query_id)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(SharedSource { lanes })
            })
            .collect()
    }
}
