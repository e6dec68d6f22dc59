//! Lowers `UNION ALL` of streams: a `UnionExec` becomes a flow that reads one
//! flow per branch, through a stateless [`UnionAll`] step per lane.
//!
//! Each branch is lowered on its own, as any query would be (a branch may be
//! windowed, aggregated or a join, with its own exchanges and state), and keeps
//! its steps' identities: the runtime numbers a union's branches in order, then
//! the union. The union's rows have an event time only when every branch
//! carries its time in the same column (at the same offset), so that a join
//! above can still bound its state by it; a window aggregate above needs no
//! such column: it counts rows late against the union's watermark, which is
//! the least of its branches'.
//!
//! DataFusion runs a union as one partition per branch, so an aggregation over
//! one is planned in two phases, a partial one per partition and a final one
//! over their merge. A stream aggregates in one step per lane (its exchange
//! brings each key's rows together), so [`single_phase_aggregates`] folds such
//! pairs back into one aggregation before lowering.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::changelog::with_op_field;
use sluice_engine::operators::UnionAll;

use crate::error::{plan_err, Result};
use crate::lower::{reads_stream, Chain, LoweredInput, LoweredUnion, Lowering};

/// Plan nodes that only move rows between a batch plan's partitions; in a
/// stream, the union's flow merges its branches already.
pub(crate) const PARTITION_MOVES: [&str; 2] = ["CoalescePartitionsExec", "RepartitionExec"];

impl Lowering<'_> {
    pub(crate) fn lower_union(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Chain> {
        let mut branches = Vec::new();
        for (i, child) in plan.children().into_iter().enumerate() {
            if !reads_stream(child) {
                return plan_err(format!(
                    "UNION ALL of streams: every branch must read a table (branch {} reads none)",
                    i + 1
                ));
            }
            branches.push(self.lower(child)?);
        }
        let changelog = branches.iter().any(|b| b.changelog);
        let schema = match changelog {
            true => with_op_field(&plan.schema()),
            false => plan.schema(),
        };
        let inputs: Vec<_> = branches.iter().map(|b| Arc::clone(&b.schema)).collect();
        let operator = UnionAll::try_new(Arc::clone(&schema), &inputs)?;
        // A time shared by every branch (the same column, the same offset).
        let first = branches.first().and_then(|b| b.time);
        let time = first.filter(|t| branches.iter().all(|b| b.time.is_some_and(|u| u.column == t.column && u.offset == t.offset)));
        let upsert = branches.iter().any(|b| b.upsert);
        let aggregates = branches.iter().map(|b| b.aggregates).max().unwrap_or(0);
        let tables = branches.iter().flat_map(|b| b.tables.iter().cloned()).collect();
        let inputs = branches.into_iter().map(|b| self.finish(b)).collect();
        let input = LoweredInput::Union(Box::new(LoweredUnion { inputs, operator: Box::new(operator) }));
        let mut chain = Chain::joined(input, schema, time, changelog, tables);
        chain.upsert = upsert;
        chain.aggregates = aggregates;
        Ok(chain)
    }
}

/// Folds each final aggregation over the partial ones of a union's partitions
/// (and the nodes that merge those) into one single-phase aggregation of the
/// partial phase's input. Aggregations of grouping sets are left as they are
/// (their lowering pairs the phases itself).
pub(crate) fn single_phase_aggregates(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let folded = Arc::clone(plan).transform_up(|node| {
        let Some(last) = node.downcast_ref::<AggregateExec>() else { return Ok(Transformed::no(node)) };
        if !matches!(last.mode(), AggregateMode::Final | AggregateMode::FinalPartitioned) {
            return Ok(Transformed::no(node));
        }
        let mut input = Arc::clone(last.input());
        while PARTITION_MOVES.contains(&input.name()) || matches!(input.name(), "CoalesceBatchesExec" | "CooperativeExec") {
            let Some(child) = input.children().into_iter().next().cloned() else { break };
            input = child;
        }
        let Some(partial) = input.downcast_ref::<AggregateExec>() else { return Ok(Transformed::no(node)) };
        if !matches!(partial.mode(), AggregateMode::Partial) || !partial.group_expr().is_single() {
            return Ok(Transformed::no(node));
        }
        let single = AggregateExec::try_new(
            AggregateMode::Single,
            partial.group_expr().clone(),
            partial.aggr_expr().to_vec(),
            partial.filter_expr().to_vec(),
            Arc::clone(partial.input()),
            partial.input_schema(),
        )?;
        // The final phase's names are the ones the plan above refers to.
        if single.schema().fields().len() != node.schema().fields().len() {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(Arc::new(single) as Arc<dyn ExecutionPlan>))
    })?;
    Ok(folded.data)
}
