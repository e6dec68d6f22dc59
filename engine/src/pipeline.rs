//! A compiled continuous query: a tree of flows between split sources and a
//! sink, or several such trees run as one job (a statement set).
//!
//! A pipeline runs in P lanes. A [`Flow`] is a chain of stages over an input:
//! the P shards of one source, a join of two flows, or a `UNION ALL` of several.
//! Each lane runs its own copy of every operator. Stages are separated by
//! exchanges that hash-partition rows by the next stateful operator's key, so
//! each lane owns a disjoint set of keys; a join's two inputs are both
//! partitioned by the join key, while a union's lane reads the same lane of
//! every input (it keeps no state). After the last stage every lane feeds the
//! flow's sink.
//!
//! A statement set's INSERTs are one pipeline with one [`Output`] each. A table
//! several of them read is one [`SharedSource`]: read once, each lane's rows
//! go to every flow that reads it ([`FlowInput::Shared`]), as Flink reuses a
//! source between the statements of a set.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::PhysicalExpr;

use crate::metrics::JobMetrics;
use crate::operator::{Operator, StateBound};
use crate::sink::Sink;
use crate::source::Source;

/// A key to hash-partition rows by, evaluated on the rows that cross it.
pub type ExchangeKey = Vec<Arc<dyn PhysicalExpr>>;

/// One stage: the same operators in every lane, optionally behind an exchange.
pub struct Stage {
    /// `None`: the stage runs in the lane its input arrives in.
    pub exchange: Option<ExchangeKey>,
    /// Per lane, the stage's operators in order.
    pub lanes: Vec<Vec<Box<dyn Operator>>>,
}

/// Where a flow's rows come from.
pub enum FlowInput {
    /// One source shard per lane.
    Sources(Vec<Box<dyn Source>>),
    /// Two flows joined by a two-input operator (one per lane).
    Join(Box<JoinInput>),
    /// Several flows whose rows one operator per lane passes on together.
    Union(Box<UnionInput>),
    /// The lanes of [`Pipeline::shared_sources`]`[source]`, which other flows
    /// read too.
    Shared { source: usize, lanes: usize },
}

/// A source read by several flows of a pipeline: one shard per lane, whose
/// rows each of those flows receives.
pub struct SharedSource {
    pub lanes: Vec<Box<dyn Source>>,
}

/// One flow and the sink its rows go to.
pub struct Output {
    pub flow: Flow,
    pub sink: Box<dyn Sink>,
    /// Schema of the batches the sink receives.
    pub schema: SchemaRef,
}

/// Two flows partitioned by their join keys into one two-input operator per lane
/// (input 0 is the left flow, input 1 the right).
pub struct JoinInput {
    pub left: Flow,
    pub right: Flow,
    pub left_key: ExchangeKey,
    pub right_key: ExchangeKey,
    pub lanes: Vec<Box<dyn Operator>>,
}

/// Several flows (at least two) read by one operator per lane, a `UNION ALL`:
/// lane `i` of the union reads lane `i` of every input, so every input runs in
/// as many lanes as the union. The operator hears which input a batch came from
/// (`on_batch_from`, inputs numbered in order); the runtime merges the inputs'
/// watermarks and aligns their barriers, as for a join.
pub struct UnionInput {
    pub inputs: Vec<Flow>,
    pub lanes: Vec<Box<dyn Operator>>,
}

/// A chain of stages over an input.
pub struct Flow {
    pub input: FlowInput,
    pub stages: Vec<Stage>,
}

/// How a query runs, beyond its plan: the settings the runtime enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// Fail the query once its operators hold more state than this many bytes.
    pub memory_limit: Option<u64>,
    /// Send a checkpoint barrier this often. Without one, barriers go every
    /// [`crate::runtime::DEFAULT_COMMIT_INTERVAL`] when a source has positions to
    /// commit (a Kafka consumer group), and never otherwise.
    pub checkpoint_interval: Option<std::time::Duration>,
}

/// Everything needed to run one continuous query, or the queries of a
/// statement set together. Built by the planner, run by
/// [`crate::runtime::Job::start`].
pub struct Pipeline {
    /// At least one; several for a statement set (in its order).
    pub outputs: Vec<Output>,
    /// The sources several flows read ([`FlowInput::Shared`]).
    pub shared_sources: Vec<SharedSource>,
    /// Counters shared with operators that report into them (late rows).
    pub metrics: Arc<JobMetrics>,
    pub options: JobOptions,
    /// Where and how the query is checkpointed; `None`: checkpoints are off.
    pub checkpoints: Option<crate::checkpoint::CheckpointConfig>,
}

impl FlowInput {
    /// The flows this input reads, in the order the runtime numbers their steps.
    pub(crate) fn flows(&self) -> Vec<&Flow> {
        match self {
            FlowInput::Sources(_) | FlowInput::Shared { .. } => Vec::new(),
            FlowInput::Join(join) => vec![&join.left, &join.right],
            FlowInput::Union(union) => union.inputs.iter().collect(),
        }
    }

    /// One lane's operator that reads those flows.
    fn operator(&self) -> Option<&dyn Operator> {
        match self {
            FlowInput::Sources(_) | FlowInput::Shared { .. } => None,
            FlowInput::Join(join) => join.lanes.first().map(|op| op.as_ref()),
            FlowInput::Union(union) => union.lanes.first().map(|op| op.as_ref()),
        }
    }
}

/// A walk over a pipeline's flows in the order the runtime numbers their
/// steps; a shared source counts once, where it is first read.
struct Walk<'a> {
    shared: &'a [SharedSource],
    seen: Vec<bool>,
}

impl<'a> Walk<'a> {
    fn new(shared: &'a [SharedSource]) -> Self {
        Walk { shared, seen: vec![false; shared.len()] }
    }

    /// The lanes of the flow's sources, if it reads them directly; a shared
    /// source's only where it is first read.
    fn sources(&mut self, flow: &'a Flow) -> Option<&'a [Box<dyn Source>]> {
        match &flow.input {
            FlowInput::Sources(sources) => Some(sources),
            FlowInput::Shared { source, .. } => {
                let first = !std::mem::replace(self.seen.get_mut(*source)?, true);
                first.then(|| self.shared.get(*source).map(|s| s.lanes.as_slice())).flatten()
            }
            _ => None,
        }
    }
}

impl Flow {
    /// The number of lanes the flow runs in.
    pub fn lanes(&self) -> usize {
        match &self.input {
            FlowInput::Sources(s) => s.len(),
            FlowInput::Join(j) => j.lanes.len(),
            FlowInput::Union(u) => u.lanes.len(),
            FlowInput::Shared { lanes, .. } => *lanes,
        }
    }

    /// Whether any source of the flow satisfies `test` (shared ones included).
    fn any_source(&self, shared: &[SharedSource], test: &dyn Fn(&dyn Source) -> bool) -> bool {
        match &self.input {
            FlowInput::Sources(sources) => sources.iter().any(|s| test(s.as_ref())),
            FlowInput::Shared { source, .. } => shared.get(*source).is_some_and(|s| s.lanes.iter().any(|s| test(s.as_ref()))),
            input => input.flows().iter().any(|f| f.any_source(shared, test)),
        }
    }

    fn describe_into<'a>(&'a self, depth: usize, walk: &mut Walk<'a>, lines: &mut Vec<String>) {
        let indent = "  ".repeat(depth);
        let p = self.lanes();
        let exchange_line = |key: &ExchangeKey| {
            let keys: Vec<String> = key.iter().map(|k| k.to_string()).collect();
            match (p, keys.is_empty()) {
                (1, _) => None,
                (_, true) => Some("exchange: all rows to one lane".to_string()),
                (_, false) => Some(format!("exchange: hash by [{}] across {p} lanes", keys.join(", "))),
            }
        };
        let lanes = format!("{p} lane{}", if p == 1 { "" } else { "s" });
        match &self.input {
            FlowInput::Sources(sources) => {
                if let Some(s) = sources.first() {
                    lines.push(format!("{indent}source: {} ({lanes})", s.describe()));
                }
            }
            FlowInput::Shared { source, .. } => {
                let first = walk.sources(self).is_some();
                if let Some(s) = walk.shared.get(*source).and_then(|s| s.lanes.first()) {
                    let read = if first { "read once for every statement that reads it" } else { "the same read as above" };
                    lines.push(format!("{indent}source: {} ({lanes}, {read})", s.describe()));
                }
            }
            FlowInput::Join(join) => {
                for (side, flow, key) in [("left", &join.left, &join.left_key), ("right", &join.right, &join.right_key)] {
                    lines.push(format!("{indent}  {side} input:"));
                    if let Some(line) = exchange_line(key) {
                        lines.push(format!("{indent}    {line}"));
                    }
                    flow.describe_into(depth + 2, walk, lines);
                }
            }
            FlowInput::Union(union) => {
                for (i, flow) in union.inputs.iter().enumerate() {
                    lines.push(format!("{indent}  input {}:", i + 1));
                    flow.describe_into(depth + 2, walk, lines);
                }
            }
        }
        if let Some(op) = self.input.operator() {
            lines.push(format!("{indent}{}", op.describe()));
        }
        // Stages are listed from the input up, after it.
        let mut after = Vec::new();
        for stage in &self.stages {
            if let Some(line) = stage.exchange.as_ref().and_then(exchange_line) {
                after.push(format!("{indent}{line}"));
            }
            if let Some(ops) = stage.lanes.first() {
                after.extend(ops.iter().map(|o| format!("{indent}{}", o.describe())));
            }
        }
        lines.extend(after);
    }

    /// One lane's operators, in the order the runtime numbers them.
    fn operators(&self) -> Vec<&dyn Operator> {
        let mut ops = Vec::new();
        self.operators_into(&mut ops);
        ops
    }

    fn operators_into<'a>(&'a self, ops: &mut Vec<&'a dyn Operator>) {
        for flow in self.input.flows() {
            flow.operators_into(ops);
        }
        ops.extend(self.input.operator());
        for stage in &self.stages {
            ops.extend(stage.lanes.first().into_iter().flatten().map(|op| op.as_ref()));
        }
    }

    /// The sources and operators in the order the runtime numbers them: a
    /// join's or union's inputs first, in order, then its operator.
    fn steps_into<'a>(&'a self, walk: &mut Walk<'a>, steps: &mut Vec<String>) {
        if let Some(sources) = walk.sources(self) {
            steps.extend(sources.first().map(|s| format!("source: {}", s.identity())));
        }
        for flow in self.input.flows() {
            flow.steps_into(walk, steps);
        }
        steps.extend(self.input.operator().map(|op| op.describe()));
        for stage in &self.stages {
            steps.extend(stage.lanes.first().into_iter().flatten().map(|op| op.describe()));
        }
    }

    /// What keeps the flow from being checkpointed: sources that cannot
    /// resume and operators whose state cannot be stored (one lane's).
    fn checkpoint_blockers_into<'a>(&'a self, walk: &mut Walk<'a>, found: &mut Vec<String>) {
        if let Some(sources) = walk.sources(self) {
            found.extend(sources.first().filter(|s| !s.resumable()).map(|s| format!("source {}", s.describe())));
        }
        for flow in self.input.flows() {
            flow.checkpoint_blockers_into(walk, found);
        }
        found.extend(self.input.operator().filter(|op| !op.checkpointable()).map(|op| op.describe()));
        for stage in &self.stages {
            let ops = stage.lanes.first().into_iter().flatten();
            found.extend(ops.filter(|op| !op.checkpointable()).map(|op| op.describe()));
        }
    }
}

impl Pipeline {
    /// A pipeline of one flow into one sink.
    pub fn new(flow: Flow, sink: Box<dyn Sink>, output_schema: SchemaRef, metrics: Arc<JobMetrics>, options: JobOptions) -> Self {
        Pipeline {
            outputs: vec![Output { flow, sink, schema: output_schema }],
            shared_sources: Vec::new(),
            metrics,
            options,
            checkpoints: None,
        }
    }

    /// The schema of the first output's rows (a query's only one).
    pub fn output_schema(&self) -> Option<SchemaRef> {
        self.outputs.first().map(|o| Arc::clone(&o.schema))
    }

    /// The number of lanes the pipeline runs in.
    pub fn lanes(&self) -> usize {
        self.outputs.iter().map(|o| o.flow.lanes()).max().unwrap_or(1)
    }

    /// Whether any source has positions to commit (a Kafka consumer group).
    pub fn commits_positions(&self) -> bool {
        self.outputs.iter().any(|o| o.flow.any_source(&self.shared_sources, &|s| s.commits_positions()))
    }

    /// Whether every source `flow` reads reads its whole input from the beginning.
    pub fn reads_whole_input(&self, flow: &Flow) -> bool {
        !flow.any_source(&self.shared_sources, &|s| !s.reads_whole_input())
    }

    /// The steps that cannot take part in checkpoints, as EXPLAIN describes
    /// them; a query with checkpoints on is refused while any remain.
    pub fn checkpoint_blockers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut walk = Walk::new(&self.shared_sources);
        for output in &self.outputs {
            output.flow.checkpoint_blockers_into(&mut walk, &mut found);
            if !output.sink.exactly_once() && !output.sink.durable_at_barriers() {
                found.push(format!("sink {} (it writes its output only at the end)", output.sink.describe()));
            }
        }
        found
    }

    /// The steps of the plan in the order checkpoints number them, without
    /// what depends on the parallelism (lanes, exchanges).
    pub fn plan_steps(&self) -> Vec<String> {
        let mut steps = Vec::new();
        let mut walk = Walk::new(&self.shared_sources);
        for output in &self.outputs {
            output.flow.steps_into(&mut walk, &mut steps);
            steps.push(format!("sink: {}", output.sink.identity()));
        }
        steps
    }

    /// A hash of [`Pipeline::plan_steps`]: a checkpoint restores only into a
    /// plan with the same fingerprint (at any parallelism).
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", crate::stable_hash::fnv1a(self.plan_steps().join("\n").as_bytes()))
    }

    /// The operators whose state nothing bounds, as EXPLAIN describes them.
    pub fn unbounded_operators(&self) -> Vec<String> {
        let ops = self.outputs.iter().flat_map(|o| o.flow.operators());
        ops.filter(|op| op.state_bound() == StateBound::Unbounded).map(|op| op.describe()).collect()
    }

    /// One line per step, inputs first, for EXPLAIN; a statement set's
    /// outputs one after the other.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut walk = Walk::new(&self.shared_sources);
        for output in &self.outputs {
            output.flow.describe_into(0, &mut walk, &mut lines);
            lines.push(format!("sink: {}", output.sink.describe()));
        }
        lines
    }
}
