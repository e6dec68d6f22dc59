//! The clickstream model: users browse products in sessions, add and remove items
//! from their carts and sometimes check out.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::GeneratorConfig;

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

/// A deterministic clickstream: the same config gives the same events.
pub struct ClickstreamGenerator {
    cfg: GeneratorConfig,
    rng: ChaCha8Rng,
    produced: u64,
    /// Current session number of every user.
    sessions: Vec<u64>,
}

impl ClickstreamGenerator {
    pub fn new(cfg: GeneratorConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let sessions = vec![0; cfg.users as usize];
        ClickstreamGenerator { cfg, rng, produced: 0, sessions }
    }

    /// Events produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Up to `max_rows` more events, or `None` once `rows` have been produced.
    pub fn next_batch(&mut self, max_rows: usize) -> arrow::error::Result<Option<RecordBatch>> {
        let remaining = self.cfg.rows.map_or(u64::MAX, |r| r.saturating_sub(self.produced));
        let n = (max_rows as u64).min(remaining) as usize;
        if n == 0 {
            return Ok(None);
        }
        let mut user_ids = Int64Builder::with_capacity(n);
        let mut session_ids = Int64Builder::with_capacity(n);
        let mut event_types = StringBuilder::with_capacity(n, n * 10);
        let mut pages = StringBuilder::with_capacity(n, n * 48);
        let mut item_ids = Int64Builder::with_capacity(n);
        let mut prices = Float64Builder::with_capacity(n);
        let mut times = TimestampMillisecondBuilder::with_capacity(n);
        for _ in 0..n {
            let seq = self.produced as i64;
            self.produced += 1;
            let user = self.rng.random_range(0..self.cfg.users);
            if self.rng.random::<f64>() < 0.05 {
                self.sessions[user as usize] += 1;
            }
            let roll = self.rng.random::<f64>();
            let event = EVENT_TYPES.iter().find(|(_, p)| roll < *p).map_or("page_view", |(e, _)| e);
            let item = self.rng.random_range(1..=self.cfg.items) as i64;
            let referrer = REFERRERS[self.rng.random_range(0..REFERRERS.len())];
            let mut ts = self.cfg.start_ms + seq * self.cfg.interval_ms;
            if self.cfg.disorder_ms > 0 {
                // Out of order, but never before the configured start.
                ts = (ts - self.rng.random_range(0..=self.cfg.disorder_ms)).max(self.cfg.start_ms);
            }
            if self.cfg.late_ratio > 0.0 && self.rng.random::<f64>() < self.cfg.late_ratio {
                ts -= self.cfg.late_ms;
            }
            user_ids.append_value(user as i64 + 1);
            session_ids.append_value((user as i64 + 1) * 10_000 + self.sessions[user as usize] as i64);
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
