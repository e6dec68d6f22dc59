//! `connector = 'generator'`: a built-in clickstream, so Sluice does something
//! useful with no external system at all.
//!
//! Options (all optional):
//! - `rows`: how many events to produce; unbounded when absent.
//! - `rate`: events per second of wall-clock time, shared by the lanes; as fast
//!   as possible when absent.
//! - `seed`: random seed (default 42); the same seed gives the same events.
//! - `users`: number of distinct users (default 50); `items`: catalogue size (default 500).
//! - `start`: event time of the first event (default `2024-01-01 00:00:00`).
//! - `interval.ms`: event-time step between consecutive events (default 100).
//! - `disorder.ms`: events are shuffled back in time by up to this much (default 1000),
//!   so input arrives out of order.
//! - `late.ratio`: fraction of events delayed by `late.ms` (default 0 and 60000):
//!   these arrive behind any reasonable watermark.
//! - `batch.size`: rows per batch (default 1024).
//!
//! Resumable: a checkpoint holds how far each shard got (see `cursor`), and a
//! restored query, at the same parallelism or another, produces exactly the
//! events an uninterrupted run would have produced after it.

mod clickstream;
pub(crate) mod cursor;

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use sluice_engine::{EngineError, Source, SourceLag};

pub use clickstream::{clickstream_schema, ClickstreamGenerator};

use crate::conform::Conformer;
use crate::error::{ConnectorError, Result};
use crate::registry::{Connector, Shard, TableSpec};

/// Typed `generator` options.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    pub rows: Option<u64>,
    pub rate: Option<f64>,
    pub seed: u64,
    pub users: u64,
    pub items: u64,
    /// Event time of the first event, epoch milliseconds.
    pub start_ms: i64,
    pub interval_ms: i64,
    pub disorder_ms: i64,
    pub late_ratio: f64,
    pub late_ms: i64,
    pub batch_size: usize,
}

impl GeneratorConfig {
    pub fn from_table(table: &TableSpec) -> Result<Self> {
        let mut o = table.options();
        let bad = |key: &str, reason: &str| ConnectorError::Option {
            connector: "generator".into(),
            key: key.into(),
            reason: reason.into(),
        };
        let start_ms = match o.take_opt("start") {
            None => 1_704_067_200_000,
            Some(s) => parse_timestamp_ms(&s).ok_or_else(|| bad("start", "expected a timestamp like '2024-01-01 00:00:00'"))?,
        };
        let cfg = GeneratorConfig {
            rows: o.take_parsed("rows")?,
            rate: o.take_parsed("rate")?,
            seed: o.take_parsed("seed")?.unwrap_or(42),
            users: o.take_parsed("users")?.unwrap_or(50),
            items: o.take_parsed("items")?.unwrap_or(500),
            start_ms,
            interval_ms: o.take_parsed("interval.ms")?.unwrap_or(100),
            disorder_ms: o.take_parsed("disorder.ms")?.unwrap_or(1000),
            late_ratio: o.take_parsed("late.ratio")?.unwrap_or(0.0),
            late_ms: o.take_parsed("late.ms")?.unwrap_or(60_000),
            batch_size: o.take_parsed("batch.size")?.unwrap_or(1024),
        };
        o.ensure_empty()?;
        if cfg.rate.is_some_and(|r| r <= 0.0 || r.is_nan()) {
            return Err(bad("rate", "must be positive"));
        }
        if cfg.users == 0 || cfg.items == 0 {
            return Err(bad("users", "users and items must be positive"));
        }
        if cfg.interval_ms < 0 || cfg.disorder_ms < 0 || cfg.late_ms < 0 {
            return Err(bad("interval.ms", "intervals must not be negative"));
        }
        if !(0.0..=1.0).contains(&cfg.late_ratio) {
            return Err(bad("late.ratio", "must be between 0 and 1"));
        }
        if cfg.batch_size == 0 {
            return Err(bad("batch.size", "must be positive"));
        }
        Ok(cfg)
    }
}

pub(crate) fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let s = s.trim().replace('T', " ");
    chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default()))
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// The `generator` connector.
pub struct GeneratorConnector;

impl Connector for GeneratorConnector {
    fn name(&self) -> &'static str {
        "generator"
    }

    /// Bounded when given a number of rows.
    fn capabilities(&self, table: &TableSpec) -> crate::registry::Capabilities {
        crate::registry::Capabilities { bounded: table.options.contains_key("rows"), ..Default::default() }
    }

    fn validate(&self, table: &TableSpec) -> Result<()> {
        GeneratorConfig::from_table(table)?;
        Conformer::try_new(&table.name, &clickstream_schema(), &table.schema)?;
        Ok(())
    }

    fn source(&self, table: &TableSpec, shard: Shard, _query_id: &str) -> Result<Box<dyn Source>> {
        let cfg = GeneratorConfig::from_table(table)?;
        let conformer = Conformer::try_new(&table.name, &clickstream_schema(), &table.schema)?;
        Ok(Box::new(GeneratorSource {
            generator: ClickstreamGenerator::new(cfg.clone(), shard),
            rate: cfg.rate.map(|r| r / shard.count.max(1) as f64),
            cfg,
            conformer,
            schema: table.schema.clone(),
            started: None,
            at_barrier: None,
        }))
    }
}

/// Paces a [`ClickstreamGenerator`] and fits its batches to the declared columns.
struct GeneratorSource {
    generator: ClickstreamGenerator,
    cfg: GeneratorConfig,
    /// This shard's share of the configured rate.
    rate: Option<f64>,
    conformer: Conformer,
    schema: SchemaRef,
    started: Option<tokio::time::Instant>,
    /// The position at the last barrier, for the checkpoint.
    at_barrier: Option<RecordBatch>,
}

#[async_trait]
impl Source for GeneratorSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn reads_whole_input(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let rows = self.cfg.rows.map_or("unbounded".to_string(), |r| format!("{r} rows"));
        let rate = self.cfg.rate.map_or(String::new(), |r| format!(", {r} rows/s"));
        format!("generator (clickstream, {rows}{rate}, seed {})", self.cfg.seed)
    }

    /// Rows due by the configured rate but not yet produced; without a rate, rows
    /// still to produce (bounded) or nothing known (unbounded).
    fn lag(&self) -> Option<SourceLag> {
        let produced = self.generator.produced();
        match (self.rate, self.started, self.generator.remaining()) {
            (Some(rate), Some(started), remaining) => {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                Some(SourceLag::Records(due.saturating_sub(produced).min(remaining.unwrap_or(u64::MAX))))
            }
            (None, _, Some(remaining)) => Some(SourceLag::Records(remaining)),
            _ => None,
        }
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn on_barrier(&mut self, _checkpoint: u64) -> sluice_engine::Result<()> {
        self.at_barrier = Some(cursor::position_batch(&self.generator.progressions())?);
        Ok(())
    }

    /// Rows of `cursor::position_schema`: this shard's progression, and those
    /// of an earlier parallelism's lanes it has not caught up with.
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
        if let Some(rate) = self.rate {
            // Ten batches a second at most, so paced output flows smoothly.
            size = size.min(((rate / 10.0).ceil() as usize).max(1));
            let started = *self.started.get_or_insert_with(tokio::time::Instant::now);
            let due = started + Duration::from_secs_f64(self.generator.produced() as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        match self.generator.next_batch(size).map_err(EngineError::from)? {
            None => Ok(None),
            Some(batch) => Ok(Some(self.conformer.apply(&batch)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn source(shard: Shard) -> TestResult<Box<dyn Source>> {
        let options = BTreeMap::from([("rows".to_string(), "60".to_string()), ("batch.size".to_string(), "7".to_string())]);
        let table = TableSpec::new("clicks", clickstream_schema(), "generator", options);
        Ok(GeneratorConnector.source(&table, shard, "q")?)
    }

    async fn rows(source: &mut dyn Source, batches: usize) -> TestResult<Vec<String>> {
        let mut out = Vec::new();
        while out.len() < batches {
            match source.next_batch().await? {
                Some(b) => out.push(b),
                None => break,
            }
        }
        let text = pretty_format_batches(&out)?.to_string();
        Ok(text.lines().filter(|l| l.starts_with("| ")).skip(1).map(String::from).collect())
    }

    #[tokio::test]
    async fn a_restored_source_goes_on_from_the_barrier_not_from_later_reads() -> TestResult {
        let shard = Shard { index: 0, count: 2 };
        let whole = rows(&mut *source(shard)?, usize::MAX).await?;
        let mut first = source(shard)?;
        assert!(first.resumable());
        assert!(first.position()?.is_none(), "no barrier yet");
        let mut out = rows(&mut *first, 2).await?;
        first.on_barrier(1).await?;
        rows(&mut *first, 1).await?;
        let position = first.position()?.ok_or("no position")?;
        assert_eq!(position.schema(), cursor::position_schema());
        let mut second = source(shard)?;
        second.restore(vec![position]).await?;
        out.extend(rows(&mut *second, usize::MAX).await?);
        assert_eq!(out, whole);
        Ok(())
    }
}
