//! The Sluice runtime: everything between a source and a sink.
//!
//! A continuous query runs as a [`pipeline::Pipeline`]: a source, a chain of
//! [`operator::Operator`]s and a sink, each in its own tokio task, joined by bounded
//! channels that carry [`message::Message`]s (Arrow batches interleaved with
//! watermarks). Bounded channels give backpressure; watermarks drive event time.
//! This crate knows nothing about SQL: the `sql` crate compiles queries into the
//! operators defined here.

pub mod alignment;
pub mod changelog;
pub mod checkpoint;
pub mod error;
pub mod exchange;
pub mod feed;
pub mod inbox;
pub mod key_group;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod operators;
pub mod pipeline;
pub mod row_error;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod stable_hash;
pub mod time;

pub use error::{EngineError, Result};
pub use message::{Barrier, BarrierKind, Message, Watermark};
pub use operator::{Emitter, Operator, StateBound};
pub use pipeline::{ExchangeKey, Flow, FlowInput, JobOptions, JoinInput, Output, Pipeline, SharedSource, Stage, UnionInput};
pub use runtime::{Job, JobHandle, PipelineFactory, RestartPolicy};
pub use sink::Sink;
pub use source::{Source, SourceEvent, SourceLag, SplitTag};
