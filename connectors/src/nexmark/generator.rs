//! One shard of one Nexmark table, as Arrow batches.
//!
//! Shard `i` of `c` produces the table's rows `k ≡ i (mod c)` in increasing
//! order (row `k` is event [`NexmarkTable::event_number`]`(k)`), so within a
//! shard event time never goes back; its progress is a generator
//! [`Cursor`](crate::generator::cursor::Cursor) over row numbers and is
//! checkpointed and restored, at the same parallelism or another, as the
//! clickstream generator's is.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringViewBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::model::{EventClock, EventModel, NexmarkTable};
use super::NexmarkConfig;
use crate::generator::cursor::{Cursor, Progression};
use crate::registry::Shard;

/// A deterministic shard of a Nexmark table: the same config and shard give the same rows.
pub struct NexmarkGenerator {
    table: NexmarkTable,
    model: EventModel,
    /// Rows of the table below this are in the stream (`None`: unbounded).
    rows: Option<u64>,
    shard: Shard,
    cursor: Cursor,
    /// Rows this generator produced (since it was created or restored).
    produced: u64,
}

impl NexmarkGenerator {
    pub fn new(cfg: &NexmarkConfig, shard: Shard) -> Self {
        let clock = EventClock { base_ms: cfg.base_time_ms, events_per_second: cfg.events_per_second };
        NexmarkGenerator {
            table: cfg.table,
            model: EventModel::new(cfg.seed, clock),
            rows: cfg.max_events.map(|n| cfg.table.rows_below(n)),
            shard,
            cursor: Cursor::new(shard),
            produced: 0,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    /// Goes on after `progressions` (from a checkpoint) instead of from the start.
    pub(crate) fn restore(&mut self, progressions: &[Progression]) {
        self.cursor = Cursor::restore(self.shard, progressions);
    }

    /// Where this shard is, for a checkpoint.
    pub(crate) fn progressions(&self) -> Vec<Progression> {
        self.cursor.progressions()
    }

    /// Rows this generator produced (since it was created or restored).
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Rows of this shard still to produce, if bounded (after a restore at
    /// another parallelism, at most this many).
    pub fn remaining(&self) -> Option<u64> {
        Some(self.cursor.left_below(self.rows?))
    }

    /// The event time of the last row of the next `rows` this shard produces
    /// (of the rows it has left), epoch milliseconds. After a restore at
    /// another parallelism, rows an earlier lane emitted are counted too, so
    /// the time may be a little early.
    pub fn time_of_next(&mut self, rows: usize) -> i64 {
        let first = self.cursor.peek();
        let mut last = first + (rows.max(1) as u64 - 1) * self.shard.count.max(1) as u64;
        if let Some(end) = self.rows.filter(|end| last >= *end && first < *end) {
            last = first + (end - 1 - first) / self.shard.count.max(1) as u64 * self.shard.count.max(1) as u64;
        }
        self.model.clock.timestamp(self.table.event_number(last))
    }

    /// Up to `max_rows` more rows, or `None` once the shard has produced all of its rows.
    pub fn next_batch(&mut self, max_rows: usize) -> arrow::error::Result<Option<RecordBatch>> {
        let mut events = Vec::with_capacity(max_rows);
        while events.len() < max_rows {
            let k = self.cursor.peek();
            if self.rows.is_some_and(|rows| k >= rows) {
                break;
            }
            self.cursor.advance();
            events.push(self.table.event_number(k));
        }
        if events.is_empty() {
            return Ok(None);
        }
        self.produced += events.len() as u64;
        let columns = match self.table {
            NexmarkTable::Person => self.persons(&events),
            NexmarkTable::Auction => self.auctions(&events),
            NexmarkTable::Bid => self.bids(&events),
        };
        RecordBatch::try_new(self.table.schema(), columns).map(Some)
    }

    fn persons(&self, events: &[u64]) -> Vec<ArrayRef> {
        let n = events.len();
        let mut id = Int64Builder::with_capacity(n);
        let mut name = StringViewBuilder::with_capacity(n);
        let mut email = StringViewBuilder::with_capacity(n);
        let mut card = StringViewBuilder::with_capacity(n);
        let mut city = StringViewBuilder::with_capacity(n);
        let mut state = StringViewBuilder::with_capacity(n);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut extra = StringViewBuilder::with_capacity(n);
        for &e in events {
            let p = self.model.person(e);
            id.append_value(p.id);
            name.append_value(&p.name);
            email.append_value(&p.email_address);
            card.append_value(&p.credit_card);
            city.append_value(p.city);
            state.append_value(p.state);
            time.append_value(p.date_time);
            extra.append_value(&p.extra);
        }
        vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(email.finish()),
            Arc::new(card.finish()),
            Arc::new(city.finish()),
            Arc::new(state.finish()),
            Arc::new(time.finish()),
            Arc::new(extra.finish()),
        ]
    }

    fn auctions(&self, events: &[u64]) -> Vec<ArrayRef> {
        let n = events.len();
        let mut id = Int64Builder::with_capacity(n);
        let mut item = StringViewBuilder::with_capacity(n);
        let mut description = StringViewBuilder::with_capacity(n);
        let mut initial = Int64Builder::with_capacity(n);
        let mut reserve = Int64Builder::with_capacity(n);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut expires = TimestampMillisecondBuilder::with_capacity(n);
        let mut seller = Int64Builder::with_capacity(n);
        let mut category = Int64Builder::with_capacity(n);
        let mut extra = StringViewBuilder::with_capacity(n);
        for &e in events {
            let a = self.model.auction(e);
            id.append_value(a.id);
            item.append_value(&a.item_name);
            description.append_value(&a.description);
            initial.append_value(a.initial_bid);
            reserve.append_value(a.reserve);
            time.append_value(a.date_time);
            expires.append_value(a.expires);
            seller.append_value(a.seller);
            category.append_value(a.category);
            extra.append_value(&a.extra);
        }
        vec![
            Arc::new(id.finish()),
            Arc::new(item.finish()),
            Arc::new(description.finish()),
            Arc::new(initial.finish()),
            Arc::new(reserve.finish()),
            Arc::new(time.finish()),
            Arc::new(expires.finish()),
            Arc::new(seller.finish()),
            Arc::new(category.finish()),
            Arc::new(extra.finish()),
        ]
    }

    fn bids(&self, events: &[u64]) -> Vec<ArrayRef> {
        let n = events.len();
        let mut auction = Int64Builder::with_capacity(n);
        let mut bidder = Int64Builder::with_capacity(n);
        let mut price = Int64Builder::with_capacity(n);
        let mut channel = StringViewBuilder::with_capacity(n);
        let mut url = StringViewBuilder::with_capacity(n);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut extra = StringViewBuilder::with_capacity(n);
        for &e in events {
            let b = self.model.bid(e);
            auction.append_value(b.auction);
            bidder.append_value(b.bidder);
            price.append_value(b.price);
            channel.append_value(&b.channel);
            url.append_value(&b.url);
            time.append_value(b.date_time);
            extra.append_value(&b.extra);
        }
        vec![
            Arc::new(auction.finish()),
            Arc::new(bidder.finish()),
            Arc::new(price.finish()),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(time.finish()),
            Arc::new(extra.finish()),
        ]
    }
}
