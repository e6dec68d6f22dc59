//! A compiled continuous query: a tree of flows between split sources and one sink.
//!
//! A pipeline runs in P lanes. A [`Flow`] is a chain of stages over an input:
//! either the P shards of one source, or a join of two flows. Each lane runs its
//! own copy of every operator. Stages are separated by exchanges that
//! hash-partition rows by the next stateful operator's key, so each lane owns a
//! disjoint set of keys; a join's two inputs are both partitioned by the join
//! key. After the last stage every lane feeds the one sink.

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

/// Everything needed to run one continuous query. Built by the planner, run by
/// [`crate::runtime::Job::start`].
pub struct Pipeline {
    pub flow: Flow,
    pub sink: Box<dyn Sink>,
    /// Schema of the batches the sink receives.
    pub output_schema: SchemaRef,
    /// Counters shared with operators that report into them (late rows).
    pub metrics: Arc<JobMetrics>,
    pub options: JobOptions,
    /// Where and how the query is checkpointed; `None`: checkpoints are off.
    pub checkpoints: Option<crate::checkpoint::CheckpointConfig>,
}

impl Flow {
    /// Whether any source of the flow has positions to commit.
    pub fn commits_positions(&self) -> bool {
        match &self.input {
            FlowInput::Sources(sources) => sources.iter().any(|s| s.commits_positions()),
            FlowInput::Join(join) => join.left.commits_positions() || join.right.commits_positions(),
        }
    }

    /// The number of lanes the flow runs in.
    pub fn lanes(&self) -> usize {
        match &self.input {
            FlowInput::Sources(s) => s.len(),
            FlowInput::Join(j) => j.lanes.len(),
        }
    }

    fn describe_into(&self, depth: usize, lines: &mut Vec<String>) {
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
        match &self.input {
            FlowInput::Sources(sources) => {
                if let Some(s) = sources.first() {
                    lines.push(format!("{indent}source: {} ({p} lane{})", s.describe(), if p == 1 { "" } else { "s" }));
                }
            }
            FlowInput::Join(join) => {
                for (side, flow, key) in [("left", &join.left, &join.left_key), ("right", &join.right, &join.right_key)] {
                    lines.push(format!("{indent}  {side} input:"));
                    if let Some(line) = exchange_line(key) {
                        lines.push(format!("{indent}    {line}"));
                    }
                    flow.describe_into(depth + 2, lines);
                }
                if let Some(op) = join.lanes.first() {
                    lines.push(format!("{indent}{}", op.describe()));
                }
            }
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
}

impl Flow {
    /// The descriptions of the operators (one lane's) whose state nothing bounds.
    fn unbounded_into(&self, found: &mut Vec<String>) {
        if let FlowInput::Join(join) = &self.input {
            join.left.unbounded_into(found);
            join.right.unbounded_into(found);
            found.extend(join.lanes.first().filter(|op| op.state_bound() == StateBound::Unbounded).map(|op| op.describe()));
        }
        for stage in &self.stages {
            let ops = stage.lanes.first().into_iter().flatten();
            found.extend(ops.filter(|op| op.state_bound() == StateBound::Unbounded).map(|op| op.describe()));
        }
    }
}

impl Flow {
    /// Whether every source reads its whole input from the beginning.
    pub fn reads_whole_input(&self) -> bool {
        match &self.input {
            FlowInput::Sources(sources) => sources.iter().all(|s| s.reads_whole_input()),
            FlowInput::Join(join) => join.left.reads_whole_input() && join.right.reads_whole_input(),
        }
    }

    /// The sources and operators in the order the runtime numbers them.
    fn steps_into(&self, steps: &mut Vec<String>) {
        match &self.input {
            FlowInput::Sources(sources) => steps.extend(sources.first().map(|s| format!("source: {}", s.identity()))),
            FlowInput::Join(join) => {
                join.left.steps_into(steps);
                join.right.steps_into(steps);
                steps.extend(join.lanes.first().map(|op| op.describe()));
            }
        }
        for stage in &self.stages {
            steps.extend(stage.lanes.first().into_iter().flatten().map(|op| op.describe()));
        }
    }

    /// What keeps the flow from being checkpointed: sources that cannot
    /// resume and operators whose state cannot be stored (one lane's).
    fn checkpoint_blockers_into(&self, found: &mut Vec<String>) {
        match &self.input {
            FlowInput::Sources(sources) => {
                found.extend(sources.first().filter(|s| !s.resumable()).map(|s| format!("source {}", s.describe())));
            }
            FlowInput::Join(join) => {
                join.left.checkpoint_blockers_into(found);
                join.right.checkpoint_blockers_into(found);
                found.extend(join.lanes.first().filter(|op| !op.checkpointable()).map(|op| op.describe()));
            }
        }
        for stage in &self.stages {
            let ops = stage.lanes.first().into_iter().flatten();
            found.extend(ops.filter(|op| !op.checkpointable()).map(|op| op.describe()));
        }
    }
}

impl Pipeline {
    /// The steps that cannot take part in checkpoints, as EXPLAIN describes
    /// them; a query with checkpoints on is refused while any remain.
    pub fn checkpoint_blockers(&self) -> Vec<String> {
        let mut found = Vec::new();
        self.flow.checkpoint_blockers_into(&mut found);
        if !self.sink.exactly_once() && !self.sink.durable_at_barriers() {
            found.push(format!("sink {} (it writes its output only at the end)", self.sink.describe()));
        }
        found
    }

    /// The steps of the plan in the order checkpoints number them, without
    /// what depends on the parallelism (lanes, exchanges).
    pub fn plan_steps(&self) -> Vec<String> {
        let mut steps = Vec::new();
        self.flow.steps_into(&mut steps);
        steps.push(format!("sink: {}", self.sink.identity()));
        steps
    }

    /// A hash of [`Pipeline::plan_steps`]: a checkpoint restores only into a
    /// plan with the same fingerprint (at any parallelism).
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", crate::stable_hash::fnv1a(self.plan_steps().join("\n").as_bytes()))
    }

    /// The operators whose state nothing bounds, as EXPLAIN describes them.
    pub fn unbounded_operators(&self) -> Vec<String> {
        let mut found = Vec::new();
        self.flow.unbounded_into(&mut found);
        found
    }

    /// One line per step, inputs first, for EXPLAIN.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        self.flow.describe_into(0, &mut lines);
        lines.push(format!("sink: {}", self.sink.describe()));
        lines
    }
}
