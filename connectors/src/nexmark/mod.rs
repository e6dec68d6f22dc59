//! `connector = 'nexmark'`: the Nexmark benchmark's online auction, as three
//! tables (`person`, `auction`, `bid`), so that Flink's Nexmark queries run
//! with their text unchanged.
//!
//! ```sql
//! CREATE TABLE bid (
//!   auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
//!   `dateTime` TIMESTAMP(3), extra VARCHAR,
//!   WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
//! ) WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'nexmark.max-events' = '1000000');
//! ```
//!
//! Flink's nexmark declares one source table with a ROW column per kind of
//! event and three views over it; Sluice has no ROW columns or computed
//! columns, so each kind is a table of its own. The three tables are cuts of
//! one event stream: declared with the same options, they agree on ids and
//! event times (an auction's seller registered as a person, bids on auctions
//! that were opened), and each reads only its own events.
//!
//! Options (all but `nexmark.table` optional):
//! - `nexmark.table`: `person`, `auction` or `bid`.
//! - `nexmark.max-events`: events in the whole stream (all three kinds, as
//!   Flink's `events.num`); the table ends after its share of them. Unbounded
//!   when absent.
//! - `nexmark.events-per-second`: the stream's rate in event time (default
//!   10000, Flink's `first-event.rate`): event `n` happens at `base-time + n /
//!   rate`. 100 million events at 10 million a second span 10 s of event time,
//!   in which a 10 s window closes once; pick the rate for the windows you run.
//! - `nexmark.rate-limited`: `true` paces the rows in wall-clock time as in
//!   event time (from when the query starts; no row comes before its time, in
//!   batches of about a tenth of a second); default `false`, as fast as possible.
//! - `nexmark.seed`: the same seed gives the same events (default 42).
//! - `nexmark.base-time`: event time of the first event (default `2024-01-01 00:00:00`).
//! - `nexmark.batch.size`: rows per batch (default 8192).
//!
//! A table declares any subset of its columns (matched by name, ignoring
//! case): person `id, name, emailAddress, creditCard, city, state, dateTime,
//! extra`; auction `id, itemName, description, initialBid, reserve, dateTime,
//! expires, seller, category, extra`; bid `auction, bidder, price, channel,
//! url, dateTime, extra`. Within a lane rows come in event-time order, so a
//! WATERMARK of any delay makes none late.
//!
//! Resumable: a checkpoint holds how far each shard got, and a restored query,
//! at the same parallelism or another, produces exactly the rows an
//! uninterrupted run would have produced next.

mod generator;
pub mod model;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_engine::{EngineError, Source, SourceLag};

pub use generator::NexmarkGenerator;
pub use model::NexmarkTable;

use crate::conform::Conformer;
use crate::error::{ConnectorError, Result};
use crate::generator::cursor;
use crate::options::parse_bool;
use crate::registry::{Capabilities, Connector, Shard, TableSpec};

/// Typed `nexmark` options (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkConfig {
    pub table: NexmarkTable,
    pub max_events: Option<u64>,
    pub events_per_second: u64,
    pub rate_limited: bool,
    pub seed: u64,
    /// Event time of event 0, epoch milliseconds.
    pub base_time_ms: i64,
    pub batch_size: usize,
}

impl NexmarkConfig {
    /// The options of `table`, checked; unknown ones are refused by name.
    pub fn from_table(table: &TableSpec) -> Result<Self> {
        let mut o = table.options();
        let bad = |key: &str, reason: String| ConnectorError::Option { connector: "nexmark".into(), key: key.into(), reason };
        let kind = o.take_str("nexmark.table")?;
        let table_kind = NexmarkTable::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(kind.trim()))
            .ok_or_else(|| bad("nexmark.table", format!("'{kind}' is not one of person, auction, bid")))?;
        let base_time_ms = match o.take_opt("nexmark.base-time") {
            None => 1_704_067_200_000,
            Some(s) => crate::generator::parse_timestamp_ms(&s)
                .ok_or_else(|| bad("nexmark.base-time", format!("'{s}' is not a timestamp like '2024-01-01 00:00:00'")))?,
        };
        let rate_limited = parse_bool("nexmark", "nexmark.rate-limited", o.take_opt("nexmark.rate-limited"), false)?;
        let cfg = NexmarkConfig {
            table: table_kind,
            max_events: o.take_parsed("nexmark.max-events")?,
            events_per_second: o.take_parsed("nexmark.events-per-second")?.unwrap_or(10_000),
            rate_limited,
            seed: o.take_parsed("nexmark.seed")?.unwrap_or(42),
            base_time_ms,
            batch_size: o.take_parsed("nexmark.batch.size")?.unwrap_or(8192),
        };
        o.ensure_empty()?;
        if cfg.events_per_second == 0 {
            return Err(bad("nexmark.events-per-second", "must be positive".into()));
        }
        if cfg.batch_size == 0 {
            return Err(bad("nexmark.batch.size", "must be positive".into()));
        }
        Ok(cfg)
    }

    /// The table's rows per second of event time.
    fn rows_per_second(&self) -> f64 {
        let per_table = self.table.rows_below(model::TOTAL_PROPORTION) as f64 / model::TOTAL_PROPORTION as f64;
        self.events_per_second as f64 * per_table
    }
}

/// Maps the declared columns onto the table's own, by name ignoring case
/// (`dateTime` may be declared unquoted, which makes it `datetime`).
fn conformer(table: &TableSpec, kind: NexmarkTable) -> Result<Conformer> {
    let natural = kind.schema();
    let renamed: Vec<_> = natural
        .fields()
        .iter()
        .map(|f| match table.schema.fields().iter().find(|d| d.name().eq_ignore_ascii_case(f.name())) {
            Some(declared) => f.as_ref().clone().with_name(declared.name()),
            None => f.as_ref().clone(),
        })
        .collect();
    Conformer::try_new(&table.name, &Arc::new(Schema::new(renamed)), &table.schema)
}

/// The `nexmark` connector (source only).
pub struct NexmarkConnector;

impl Connector for NexmarkConnector {
    fn name(&self) -> &'static str {
        "nexmark"
    }

    /// Bounded when given `nexmark.max-events`.
    fn capabilities(&self, table: &TableSpec) -> Capabilities {
        Capabilities { bounded: table.options.contains_key("nexmark.max-events"), ..Default::default() }
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        let cfg = NexmarkConfig::from_table(table)?;
        conformer(table, cfg.table)?;
        Ok(())
    }

    fn source(&self, table: &TableSpec, shard: Shard, _query_id: &str) -> Result<Box<dyn Source>> {
        let cfg = NexmarkConfig::from_table(table)?;
        let conformer = conformer(table, cfg.table)?;
        Ok(Box::new(NexmarkSource {
            generator: NexmarkGenerator::new(&cfg, shard),
            lanes: shard.count.max(1),
            cfg,
            conformer,
            schema: table.schema.clone(),
            started: None,
            at_barrier: None,
        }))
    }
}

/// Reads one shard of a Nexmark table.
struct NexmarkSource {
    cfg: NexmarkConfig,
    generator: NexmarkGenerator,
    lanes: usize,
    conformer: Conformer,
    schema: SchemaRef,
    /// When the first batch was asked for (rate-limited only).
    started: Option<tokio::time::Instant>,
    /// The position at the last barrier, for the checkpoint.
    at_barrier: Option<RecordBatch>,
}

#[async_trait]
impl Source for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn reads_whole_input(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let events = self.cfg.max_events.map_or("unbounded".to_string(), |n| format!("{n} events"));
        let paced = if self.cfg.rate_limited { ", rate-limited" } else { "" };
        format!(
            "nexmark ({}, {events}, {} events/s of event time{paced}, seed {})",
            self.cfg.table.name(),
            self.cfg.events_per_second,
            self.cfg.seed
        )
    }

    /// Rows due by event time but not yet produced (rate-limited); otherwise
    /// rows still to produce (bounded) or nothing known (unbounded).
    fn lag(&self) -> Option<SourceLag> {
        let remaining = self.generator.remaining();
        match (self.cfg.rate_limited, self.started) {
            (true, Some(started)) => {
                let due = (started.elapsed().as_secs_f64() * self.cfg.rows_per_second() / self.lanes as f64) as u64;
                let behind = due.saturating_sub(self.generator.produced());
                Some(SourceLag::Records(behind.min(remaining.unwrap_or(u64::MAX))))
            }
            _ => remaining.map(SourceLag::Records),
        }
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn on_barrier(&mut self, _checkpoint: u64) -> sluice_engine::Result<()> {
        self.at_barrier = Some(cursor::position_batch(&self.generator.progressions())?);
        Ok(())
    }

    /// Rows of the generator's position schema: this shard's progression over
    /// the table's rows, and those of an earlier parallelism's lanes it has
    /// not caught up with.
    fn position(&self) -> sluice_engine::Result<Option<RecordBatch>> {
        Ok(self.at_barrier.clone())
    }

    async fn restore(&mut self, positions: Vec<RecordBatch>) -> sluice_engine::Result<()> {
        self.generator.restore(&cursor::progressions_from(&positions)?);
        Ok(())
    }

    /// Cancel-safe: a dropped call was waiting for its rows to be due, and
    /// had produced none.
    async fn next_batch(&mut self) -> sluice_engine::Result<Option<RecordBatch>> {
        let mut size = self.cfg.batch_size;
        if self.cfg.rate_limited && self.generator.remaining() != Some(0) {
            // About a tenth of a second of rows at a time, so paced rows flow smoothly.
            let per_lane = self.cfg.rows_per_second() / self.lanes as f64;
            size = size.min(((per_lane / 10.0).ceil() as usize).max(1));
            let started = *self.started.get_or_insert_with(tokio::time::Instant::now);
            // The batch goes out when its last row is due: no row comes before its time.
            let offset = (self.generator.time_of_next(size) - self.cfg.base_time_ms).max(0) as u64;
            tokio::time::sleep_until(started + Duration::from_millis(offset)).await;
        }
        match self.generator.next_batch(size).map_err(EngineError::from)? {
            None => Ok(None),
            Some(batch) => Ok(Some(self.conformer.apply(&batch)?)),
        }
    }
}

#[cfg(test)]
mod tests;
