//! The clickstream model: users browse products in visits, add and remove items
//! from their carts and sometimes check out.
//!
//! Event `n` is a pure function of the seed and `n` (its random draws come from
//! stream `n` of a ChaCha generator), so shards of the stream can be generated
//! independently and together give exactly the events of the unsharded stream,
//! and a shard restored from a checkpoint goes on exactly where it stopped (see
//! `cursor`).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cursor::{Cursor, Progression};
use super::GeneratorConfig;
use crate::registry::Shard;

/// Columns of a clickstream event, in order.
pub fn clickstream_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("session_id", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]))
}

const EVENT_TYPES: [(&str, f64); 4] =
    [("page_view", 0.60), ("add_to_cart", 0.80), ("remove_from_cart", 0.88), ("checkout", 1.0)];
const REFERRERS: [&str; 4] = ["search", "email", "social", "direct"];
/// A user's visit (session_id) changes every this many milliseconds of event time.
const VISIT_MS: i64 = 15 * 60 * 1000;

/// A deterministic clickstream shard: the same config and shard give the same events.
pub struct ClickstreamGenerator {
    cfg: GeneratorConfig,
    shard: Shard,
    base: ChaCha8Rng,
    /// Which events of the stream this shard emitted, and which come next.
    cursor: Cursor,
    /// Events this generator produced (since it was created or restored).
    produced: u64,
}

impl ClickstreamGenerator {
    pub fn new(cfg: GeneratorConfig, shard: Shard) -> Self {
        let base = ChaCha8Rng::seed_from_u64(cfg.seed);
        ClickstreamGenerator { cfg, shard, base, cursor: Cursor::new(shard), produced: 0 }
    }

    /// Goes on after `progressions` (from a checkpoint, see `cursor`) instead
    /// of from the start.
    pub(crate) fn restore(&mut self, progressions: &[Progression]) {
        self.cursor = Cursor::restore(self.shard, progressions);
    }

    /// Where this shard is, for a checkpoint.
    pub(crate) fn progressions(&self) -> Vec<Progression> {
        self.cursor.progressions()
    }

    /// Events this generator produced (since it was created or restored).
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Events of this shard still to produce, if bounded (after a restore at
    /// another parallelism, at most this many).
    pub fn remaining(&self) -> Option<u64> {
        Some(self.cursor.left_below(self.cfg.rows?))
    }

    /// Up to `max_rows` more events, or `None` once all of this shard's events
    /// (of `rows` in total) have been produced.
    pub fn next_batch(&mut self, max_rows: usize) -> arrow::error::Result<Option<RecordBatch>> {
        let mut user_ids = Int64Builder::with_capacity(max_rows);
        let mut session_ids = Int64Builder::with_capacity(max_rows);
        let mut event_types = StringBuilder::with_capacity(max_rows, max_rows * 10);
        let mut pages = StringBuilder::with_capacity(max_rows, max_rows * 48);
        let mut item_ids = Int64Builder::with_capacity(max_rows);
        let mut prices = Float64Builder::with_capacity(max_rows);
        let mut times = TimestampMillisecondBuilder::with_capacity(max_rows);
        let mut n = 0;
        while n < max_rows {
            let seq = self.cursor.peek();
            if self.cfg.rows.is_some_and(|rows| seq >= rows) {
                break;
            }
            self.cursor.advance();
            self.produced += 1;
            n += 1;
            let mut rng = self.base.clone();
            rng.set_stream(seq);
            let user = rng.random_range(0..self.cfg.users) as i64 + 1;
            let roll = rng.random::<f64>();
            let event = EVENT_TYPES.iter().find(|(_, p)| roll < *p).map_or("page_view", |(e, _)| e);
            let item = rng.random_range(1..=self.cfg.items) as i64;
            let referrer = REFERRERS[rng.random_range(0..REFERRERS.len())];
            let base_ts = self.cfg.start_ms + seq as i64 * self.cfg.interval_ms;
            let mut ts = base_ts;
            if self.cfg.disorder_ms > 0 {
                // Out of order, but never before the configured start.
                ts = (ts - rng.random_range(0..=self.cfg.disorder_ms)).max(self.cfg.start_ms);
            }
            if self.cfg.late_ratio > 0.0 && rng.random::<f64>() < self.cfg.late_ratio {
                ts -= self.cfg.late_ms;
            }
            user_ids.append_value(user);
            session_ids.append_value(user * 100_000 + (base_ts - self.cfg.start_ms) / VISIT_MS);
            event_types.append_value(event);
            if event == "checkout" {
                pages.append_value(format!("https://shop.example.com/checkout?utm_source={referrer}"));
            } else {
                pages.append_value(format!("https://shop.example.com/products/{item}?utm_source={referrer}"));
            }
            item_ids.append_value(item);
            prices.append_value(((item * 7919) % 20_000) as f64 / 100.0 + 0.99);
            times.append_value(ts);
        }
        if n == 0 {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(user_ids.finish()),
            Arc::new(session_ids.finish()),
            Arc::new(event_types.finish()),
            Arc::new(pages.finish()),
            Arc::new(item_ids.finish()),
            Arc::new(prices.finish()),
            Arc::new(times.finish()),
        ];
        RecordBatch::try_new(clickstream_schema(), columns).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::util::pretty::pretty_format_batches;

    use super::*;
    use crate::registry::TableSpec;

    fn config(rows: u64) -> Result<GeneratorConfig, Box<dyn std::error::Error>> {
        let options = BTreeMap::from([("rows".to_string(), rows.to_string())]);
        let spec = TableSpec::new("t", clickstream_schema(), "generator", options);
        Ok(GeneratorConfig::from_table(&spec)?)
    }

    fn rows_of(mut g: ClickstreamGenerator) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut batches = Vec::new();
        while let Some(b) = g.next_batch(7)? {
            batches.push(b);
        }
        let text = pretty_format_batches(&batches)?.to_string();
        let mut rows: Vec<String> = text.lines().filter(|l| l.starts_with("| ")).skip(1).map(String::from).collect();
        rows.sort();
        Ok(rows)
    }

    /// Rows of `g` in batches of 7, at most `batches` of them.
    fn some_rows_of(g: &mut ClickstreamGenerator, batches: usize) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        for _ in 0..batches {
            let Some(b) = g.next_batch(7)? else { break };
            out.push(b);
        }
        if out.is_empty() {
            return Ok(Vec::new());
        }
        let text = pretty_format_batches(&out)?.to_string();
        Ok(text.lines().filter(|l| l.starts_with("| ")).skip(1).map(String::from).collect())
    }

    #[test]
    fn a_restored_shard_goes_on_with_the_rows_an_uninterrupted_one_produces() -> Result<(), Box<dyn std::error::Error>> {
        let shard = Shard { index: 1, count: 2 };
        let uninterrupted = some_rows_of(&mut ClickstreamGenerator::new(config(100)?, shard), 100)?;
        let mut first = ClickstreamGenerator::new(config(100)?, shard);
        let mut rows = some_rows_of(&mut first, 3)?;
        let mut second = ClickstreamGenerator::new(config(100)?, shard);
        second.restore(&first.progressions());
        assert_eq!(second.remaining(), Some(50 - 21));
        rows.extend(some_rows_of(&mut second, 100)?);
        assert_eq!(rows, uninterrupted, "same rows, same order");
        assert_eq!(second.remaining(), Some(0));
        Ok(())
    }

    #[test]
    fn restored_at_another_parallelism_the_shards_produce_the_rest_of_the_stream() -> Result<(), Box<dyn std::error::Error>> {
        let whole = rows_of(ClickstreamGenerator::new(config(100)?, Shard::ALL))?;
        let mut rows = Vec::new();
        let mut positions = Vec::new();
        for (index, batches) in [2, 5, 0].into_iter().enumerate() {
            let mut g = ClickstreamGenerator::new(config(100)?, Shard { index, count: 3 });
            rows.extend(some_rows_of(&mut g, batches)?);
            positions.extend(g.progressions());
        }
        for index in 0..2 {
            let mut g = ClickstreamGenerator::new(config(100)?, Shard { index, count: 2 });
            g.restore(&positions);
            rows.extend(rows_of(g)?);
        }
        rows.sort();
        assert_eq!(rows, whole);
        Ok(())
    }

    #[test]
    fn shards_together_produce_the_unsharded_stream() -> Result<(), Box<dyn std::error::Error>> {
        let whole = rows_of(ClickstreamGenerator::new(config(100)?, Shard::ALL))?;
        let mut sharded = Vec::new();
        for index in 0..3 {
            sharded.extend(rows_of(ClickstreamGenerator::new(config(100)?, Shard { index, count: 3 }))?);
        }
        sharded.sort();
        assert_eq!(whole.len(), 100);
        assert_eq!(sharded, whole);
        let distinct: std::collections::BTreeSet<&String> = whole.iter().collect();
        assert!(distinct.len() > 90, "events must differ from each other");
        Ok(())
    }
}
