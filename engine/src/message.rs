//! What flows between operators: data and control on one channel.
//!
//! Arrival order is the contract: a watermark promises that no row sent after it
//! has an event time below it (rows that break the promise are late), and
//! `EndOfStream` is the last message a channel carries.

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

/// One item on a channel between two tasks of a pipeline.
#[derive(Debug, Clone)]
pub enum Message {
    Batch(RecordBatch),
    Watermark(Watermark),
    EndOfStream,
}
