//! Which columns of a table a query reads, so that a source can leave the
//! others undecoded (projection pushdown).
//!
//! DataFusion's plan already knows: each scan of a stream table is a
//! [`FeedExec`] with the projection the optimizer pushed into it. The columns a
//! query reads from a table are those of all its feeds (a table read twice,
//! as in a self-join, needs both), plus the columns the table's watermark
//! expression reads, which is evaluated on the source's rows before any feed.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use sluice_engine::feed::FeedExec;

use crate::catalog::TableDef;

/// The names of the columns of `table` that `plan` reads, with those
/// `watermark` reads, in table order; `None` when it reads every column.
pub fn columns_read(
    plan: &Arc<dyn ExecutionPlan>,
    table: &TableDef,
    watermark: Option<&Arc<dyn PhysicalExpr>>,
) -> Option<Vec<String>> {
    let mut read = BTreeSet::new();
    let mut nodes = vec![Arc::clone(plan)];
    while let Some(node) = nodes.pop() {
        if let Some(feed) = node.downcast_ref::<FeedExec>() {
            if feed.label() == table.name {
                // A feed without a projection reads every column.
                read.extend(feed.projection()?.iter().copied());
            }
        }
        nodes.extend(node.children().into_iter().cloned());
    }
    if let Some(expr) = watermark {
        read.extend(collect_columns(expr).iter().map(|c| c.index()));
    }
    let fields = table.schema.fields();
    if read.len() >= fields.len() {
        return None;
    }
    Some(read.into_iter().filter_map(|i| fields.get(i).map(|f| f.name().clone())).collect())
}
