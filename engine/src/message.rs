//! What flows between operators: data and control on one channel.
//!
//! Arrival order is the contract: a watermark promises that no row sent after it
//! has an event time below it (rows that break the promise are late), and
//! `EndOfStream` is the last message a channel carries. Barriers cut the stream
//! into checkpoints (see [`Barrier`]).

use datafusion::arrow::record_batch::RecordBatch;

/// Event-time progress, in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// All rows still to come have an event time at or above this value.
    EventTime(i64),
    /// The sender has no data for now and must not hold back the others' time.
    Idle,
}

impl Watermark {
    /// The watermark a bounded source sends at its end: every open window closes.
    pub const MAX: Watermark = Watermark::EventTime(i64::MAX);
}

/// What a barrier asks of the steps it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierKind {
    /// A periodic cut: sinks make everything before it durable, then sources
    /// commit their positions up to it.
    Checkpoint,
    /// The query is being stopped: sources end after it (without the maximal
    /// watermark, so open windows are not emitted early), sinks flush and commit,
    /// and `EndOfStream` follows.
    Stop,
}

/// A cut across a query's streams. Sources send it after everything they emitted
/// before it; a step with several inputs forwards it once it has arrived from
/// every input that has not ended, after everything it emitted for the rows
/// before it. When the sink has seen it from every lane and made its output
/// durable, the checkpoint is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// Increases by one per barrier of a query, from 1.
    pub id: u64,
    pub kind: BarrierKind,
}

/// One item on a channel between two tasks of a pipeline.
#[derive(Debug, Clone)]
pub enum Message {
    Batch(RecordBatch),
    /// Rows of one split of a source's lane, on their way from the source to
    /// the watermark assigner (anywhere else they are plain batches).
    SplitBatch(crate::source::SplitTag, RecordBatch),
    Watermark(Watermark),
    Barrier(Barrier),
    EndOfStream,
}
