//! The Nexmark auction model: people register, open auctions and bid on them.
//!
//! The event stream follows the Nexmark generator of Beam and Flink's nexmark
//! benchmark: of every 50 events, 1 is a person, 3 are auctions and 46 are bids;
//! event `n` has the event time `base + n / events-per-second`; ids are
//! sequential (persons and auctions from 1000), and bids and auctions mostly
//! refer to recent ("hot") auctions and people, so joins find matches even on
//! small runs. Values are drawn the way Flink's generator draws them (names,
//! cities, states, prices `round(10^(6u) * 100)`, padding in `extra` up to an
//! average row size of 200, 500 and 100 bytes).
//!
//! Unlike Flink's generator (which draws from an unseeded random source), event
//! `n` is a pure function of the seed and `n`: its draws come from a SplitMix64
//! sequence keyed by both, written here so that it never changes with a
//! dependency. So the three tables, read separately, agree on ids and times,
//! shards of a table together give exactly the unsharded table, and a shard
//! restored from a checkpoint goes on with the events it would have produced.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Of every [`TOTAL_PROPORTION`] events, this many are persons (first), then auctions, then bids.
pub const PERSON_PROPORTION: u64 = 1;
pub const AUCTION_PROPORTION: u64 = 3;
pub const BID_PROPORTION: u64 = 46;
pub const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

/// Ids start here, so small runs still find matches (as in Nexmark).
pub const FIRST_PERSON_ID: i64 = 1000;
pub const FIRST_AUCTION_ID: i64 = 1000;
pub const FIRST_CATEGORY_ID: i64 = 10;

const NUM_CATEGORIES: u64 = 5;
/// Auctions a bid may pick from: the last this many, plus a few not yet opened.
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const AUCTION_ID_LEAD: i64 = 10;
/// People a bid or auction may pick from: the last this many, plus a few not yet registered.
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const PERSON_ID_LEAD: i64 = 10;
/// One in this many auctions is by a random seller; the rest by a "hot" one.
const HOT_SELLERS_RATIO: u64 = 4;
/// One in this many bids is on a random auction / by a random bidder.
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDERS_RATIO: u64 = 4;
/// Hot sellers, bidders and auctions are the first of each batch of this many.
const HOT_BATCH: i64 = 100;
const CHANNELS: u64 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const FIRST_NAMES: [&str; 11] = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];

/// Keys of the draw sequences that are not one event's.
const HOT_URL_KEY: u64 = 1 << 62;
const CHANNEL_URL_KEY: u64 = (1 << 62) + (1 << 61);

/// One of the three Nexmark tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkTable {
    Person,
    Auction,
    Bid,
}

impl NexmarkTable {
    pub const ALL: [NexmarkTable; 3] = [NexmarkTable::Person, NexmarkTable::Auction, NexmarkTable::Bid];

    pub fn name(self) -> &'static str {
        match self {
            NexmarkTable::Person => "person",
            NexmarkTable::Auction => "auction",
            NexmarkTable::Bid => "bid",
        }
    }

    /// Columns of the table's rows, as Flink's nexmark names them.
    pub fn schema(self) -> SchemaRef {
        let time = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let fields = match self {
            NexmarkTable::Person => vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8View, false),
                Field::new("emailAddress", DataType::Utf8View, false),
                Field::new("creditCard", DataType::Utf8View, false),
                Field::new("city", DataType::Utf8View, false),
                Field::new("state", DataType::Utf8View, false),
                Field::new("dateTime", time(), false),
                Field::new("extra", DataType::Utf8View, false),
            ],
            NexmarkTable::Auction => vec![
                Field::new("id", DataType::Int64, false),
                Field::new("itemName", DataType::Utf8View, false),
                Field::new("description", DataType::Utf8View, false),
                Field::new("initialBid", DataType::Int64, false),
                Field::new("reserve", DataType::Int64, false),
                Field::new("dateTime", time(), false),
                Field::new("expires", time(), false),
                Field::new("seller", DataType::Int64, false),
                Field::new("category", DataType::Int64, false),
                Field::new("extra", DataType::Utf8View, false),
            ],
            NexmarkTable::Bid => vec![
                Field::new("auction", DataType::Int64, false),
                Field::new("bidder", DataType::Int64, false),
                Field::new("price", DataType::Int64, false),
                Field::new("channel", DataType::Utf8View, false),
                Field::new("url", DataType::Utf8View, false),
                Field::new("dateTime", time(), false),
                Field::new("extra", DataType::Utf8View, false),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// Where this table's events sit in each group of [`TOTAL_PROPORTION`]:
    /// the first offset and how many.
    fn slots(self) -> (u64, u64) {
        match self {
            NexmarkTable::Person => (0, PERSON_PROPORTION),
            NexmarkTable::Auction => (PERSON_PROPORTION, AUCTION_PROPORTION),
            NexmarkTable::Bid => (PERSON_PROPORTION + AUCTION_PROPORTION, BID_PROPORTION),
        }
    }

    /// The event number of this table's `k`-th row (from 0).
    pub fn event_number(self, k: u64) -> u64 {
        let (first, per_group) = self.slots();
        (k / per_group) * TOTAL_PROPORTION + first + k % per_group
    }

    /// How many of this table's rows are among the first `events` events.
    pub fn rows_below(self, events: u64) -> u64 {
        let (first, per_group) = self.slots();
        let in_last = (events % TOTAL_PROPORTION).saturating_sub(first).min(per_group);
        (events / TOTAL_PROPORTION) * per_group + in_last
    }
}

/// When events happen: event `n` at `base_ms + n * 1000 / events_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventClock {
    pub base_ms: i64,
    pub events_per_second: u64,
}

impl EventClock {
    /// Event time of event `n`, epoch milliseconds.
    pub fn timestamp(&self, n: u64) -> i64 {
        let offset = (n as u128 * 1000) / self.events_per_second.max(1) as u128;
        self.base_ms.saturating_add(offset.min(i64::MAX as u128) as i64)
    }
}

/// A SplitMix64 sequence: small, fast, and fixed here for good.
#[derive(Debug, Clone)]
pub(crate) struct Draws(u64);

impl Draws {
    /// The draws of sequence `key` under `seed` (sequences of different keys are unrelated).
    pub(crate) fn new(seed: u64, key: u64) -> Self {
        let mut d = Draws(seed ^ 0x5851_F42D_4C95_7F2D);
        let mixed = d.next_u64() ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Draws(mixed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn pick<'a>(&mut self, values: &[&'a str]) -> &'a str {
        values[self.below(values.len() as u64) as usize]
    }

    /// Nexmark's prices: cents, log-uniform from 1 to a million dollars.
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }

    /// Lowercase letters and spaces, 3 to `max_len - 1` long, trimmed.
    fn string(&mut self, max_len: u64, space: char, out: &mut String) {
        let start = out.len();
        let len = 3 + self.below(max_len - 3);
        for _ in 0..len {
            if self.below(13) == 0 {
                out.push(space);
            } else {
                out.push((b'a' + self.below(26) as u8) as char);
            }
        }
        if space == ' ' {
            let trimmed = out[start..].trim().to_string();
            out.truncate(start);
            out.push_str(&trimmed);
        }
    }

    /// Padding so that a row of `current` bytes is `average` bytes long on average.
    fn extra(&mut self, current: usize, average: usize, out: &mut String) {
        if current > average {
            return;
        }
        let wanted = average - current;
        let delta = (wanted as f64 * 0.2).round() as u64;
        let size = wanted as u64 - delta + if delta == 0 { 0 } else { self.below(2 * delta) };
        let mut left = size;
        while left > 0 {
            // Twelve letters from each draw (26^12 < 2^64).
            let mut bits = self.next_u64();
            for _ in 0..left.min(12) {
                out.push((b'a' + (bits % 26) as u8) as char);
                bits /= 26;
            }
            left -= left.min(12);
        }
    }
}

/// The last person id (from 0) registered at or before event `n`.
fn last_base0_person_id(n: u64) -> i64 {
    let epoch = (n / TOTAL_PROPORTION) as i64;
    // An auction or bid: back to the last person of its group.
    let offset = match n % TOTAL_PROPORTION {
        offset if offset < PERSON_PROPORTION => offset,
        _ => PERSON_PROPORTION - 1,
    };
    epoch * PERSON_PROPORTION as i64 + offset as i64
}

/// The last auction id (from 0) opened at or before event `n` (-1 before the first).
fn last_base0_auction_id(n: u64) -> i64 {
    let mut epoch = (n / TOTAL_PROPORTION) as i64;
    let mut offset = (n % TOTAL_PROPORTION) as i64;
    let (p, a) = (PERSON_PROPORTION as i64, AUCTION_PROPORTION as i64);
    if offset < p {
        epoch -= 1;
        offset = a - 1;
    } else if offset >= p + a {
        offset = a - 1;
    } else {
        offset -= p;
    }
    epoch * a + offset
}

/// A recently registered person (or one about to register), from 0.
fn next_base0_person_id(n: u64, d: &mut Draws) -> i64 {
    let people = last_base0_person_id(n) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + d.below((active + PERSON_ID_LEAD) as u64) as i64
}

/// An auction likely still open (or about to open), from 0.
fn next_base0_auction_id(n: u64, d: &mut Draws) -> i64 {
    let max = last_base0_auction_id(n);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + d.below((max - min + 1 + AUCTION_ID_LEAD).max(1) as u64) as i64
}

/// A person row.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    pub date_time: i64,
    pub extra: String,
}

/// An auction row.
#[derive(Debug, Clone, PartialEq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

/// A bid row.
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// Builds events from their numbers.
#[derive(Debug, Clone)]
pub struct EventModel {
    pub seed: u64,
    pub clock: EventClock,
    hot_urls: [String; 4],
}

impl EventModel {
    pub fn new(seed: u64, clock: EventClock) -> Self {
        let hot_urls = std::array::from_fn(|i| base_url(&mut Draws::new(seed, HOT_URL_KEY + i as u64)));
        EventModel { seed, clock, hot_urls }
    }

    /// Event `n`, which must be a person.
    pub fn person(&self, n: u64) -> Person {
        let mut d = Draws::new(self.seed, n);
        let name = format!("{} {}", d.pick(&FIRST_NAMES), d.pick(&LAST_NAMES));
        let mut email_address = String::with_capacity(16);
        d.string(7, ' ', &mut email_address);
        email_address.push('@');
        d.string(5, ' ', &mut email_address);
        email_address.push_str(".com");
        let mut credit_card = String::with_capacity(19);
        for i in 0..4 {
            if i > 0 {
                credit_card.push(' ');
            }
            let _ = write!(credit_card, "{:04}", d.below(10_000));
        }
        let city = d.pick(&US_CITIES);
        let state = d.pick(&US_STATES);
        let current = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        let mut extra = String::new();
        d.extra(current, AVG_PERSON_BYTES, &mut extra);
        Person {
            id: last_base0_person_id(n) + FIRST_PERSON_ID,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: self.clock.timestamp(n),
            extra,
        }
    }

    /// Event `n`, which must be an auction.
    pub fn auction(&self, n: u64) -> Auction {
        let mut d = Draws::new(self.seed, n);
        let seller = if d.below(HOT_SELLERS_RATIO) > 0 {
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            next_base0_person_id(n, &mut d)
        };
        let category = FIRST_CATEGORY_ID + d.below(NUM_CATEGORIES) as i64;
        let initial_bid = d.price();
        let date_time = self.clock.timestamp(n);
        // Auctions last on average until the auction NUM_IN_FLIGHT_AUCTIONS
        // later opens (as in Nexmark), so about that many are open at a time.
        let events_until_then = (NUM_IN_FLIGHT_AUCTIONS as u64 * TOTAL_PROPORTION) / AUCTION_PROPORTION;
        let horizon = self.clock.timestamp(n + events_until_then) - date_time;
        let expires = date_time + 1 + d.below((horizon * 2).max(1) as u64) as i64;
        let mut item_name = String::with_capacity(20);
        d.string(20, ' ', &mut item_name);
        let mut description = String::with_capacity(100);
        d.string(100, ' ', &mut description);
        let reserve = initial_bid + d.price();
        let mut extra = String::new();
        d.extra(8 + item_name.len() + description.len() + 40, AVG_AUCTION_BYTES, &mut extra);
        Auction {
            id: last_base0_auction_id(n) + FIRST_AUCTION_ID,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time,
            expires,
            seller: seller + FIRST_PERSON_ID,
            category,
            extra,
        }
    }

    /// Event `n`, which must be a bid.
    pub fn bid(&self, n: u64) -> Bid {
        let mut d = Draws::new(self.seed, n);
        let auction = if d.below(HOT_AUCTION_RATIO) > 0 {
            (last_base0_auction_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            next_base0_auction_id(n, &mut d)
        };
        let bidder = if d.below(HOT_BIDDERS_RATIO) > 0 {
            // The second of the batch, so hot bidders are not hot sellers.
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH + 1
        } else {
            next_base0_person_id(n, &mut d)
        };
        let price = d.price();
        let (channel, url) = if d.below(2) > 0 {
            let i = d.below(HOT_CHANNELS.len() as u64) as usize;
            (HOT_CHANNELS[i].to_string(), self.hot_urls[i].clone())
        } else {
            let c = d.below(CHANNELS);
            (format!("channel-{c}"), channel_url(self.seed, c))
        };
        let mut extra = String::new();
        d.extra(32, AVG_BID_BYTES, &mut extra);
        Bid {
            auction: auction + FIRST_AUCTION_ID,
            bidder: bidder + FIRST_PERSON_ID,
            price,
            channel,
            url,
            date_time: self.clock.timestamp(n),
            extra,
        }
    }
}

fn base_url(d: &mut Draws) -> String {
    let mut url = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        d.string(5, '_', &mut url);
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    url
}

/// The URL of channel `c` (nine in ten carry the channel's id, as in Nexmark).
fn channel_url(seed: u64, c: u64) -> String {
    let mut d = Draws::new(seed, CHANNEL_URL_KEY + c);
    let mut url = base_url(&mut d);
    if d.below(10) > 0 {
        let _ = write!(url, "&channel_id={}", (c as i32).reverse_bits().unsigned_abs());
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_table_map_to_its_event_numbers() {
        for table in NexmarkTable::ALL {
            let numbers: Vec<u64> = (0..200).map(|k| table.event_number(k)).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]));
            for (k, n) in numbers.iter().enumerate() {
                assert_eq!(table.rows_below(*n), k as u64, "{table:?} row {k}");
                assert_eq!(table.rows_below(n + 1), k as u64 + 1);
            }
        }
        assert_eq!(NexmarkTable::Person.event_number(2), 100);
        assert_eq!(NexmarkTable::Auction.event_number(3), 51);
        assert_eq!(NexmarkTable::Bid.event_number(46), 54);
        let total: u64 = NexmarkTable::ALL.iter().map(|t| t.rows_below(1234)).sum();
        assert_eq!(total, 1234);
    }

    #[test]
    fn ids_are_sequential_and_bids_name_opened_auctions_and_registered_people() {
        let model = EventModel::new(7, EventClock { base_ms: 0, events_per_second: 1000 });
        let people: Vec<i64> = (0..20).map(|k| model.person(NexmarkTable::Person.event_number(k)).id).collect();
        assert_eq!(people, (1000..1020).collect::<Vec<_>>());
        let auctions: Vec<i64> = (0..30).map(|k| model.auction(NexmarkTable::Auction.event_number(k)).id).collect();
        assert_eq!(auctions, (1000..1030).collect::<Vec<_>>());
        for k in 0..2000 {
            let n = NexmarkTable::Bid.event_number(k);
            let bid = model.bid(n);
            assert!(bid.auction >= FIRST_AUCTION_ID && bid.auction <= last_base0_auction_id(n) + FIRST_AUCTION_ID + AUCTION_ID_LEAD);
            assert!(bid.bidder >= FIRST_PERSON_ID && bid.bidder <= last_base0_person_id(n) + FIRST_PERSON_ID + PERSON_ID_LEAD + 1);
            assert!(bid.price >= 100 && bid.price <= 100_000_000, "{}", bid.price);
            assert_eq!(bid.date_time, n as i64);
        }
    }

    #[test]
    fn an_event_depends_on_the_seed_and_its_number_only() {
        let clock = EventClock { base_ms: 1_000, events_per_second: 10 };
        let a = EventModel::new(1, clock);
        let b = EventModel::new(1, clock);
        let c = EventModel::new(2, clock);
        assert_eq!(a.bid(77), b.bid(77));
        assert_ne!(a.bid(77), c.bid(77));
        assert_ne!(a.bid(77), a.bid(78));
        assert_eq!(a.auction(51).date_time, 1_000 + 5_100);
        let auction = a.auction(51);
        assert!(auction.expires > auction.date_time);
        assert!((10..15).contains(&auction.category));
        let person = a.person(100);
        assert!(US_STATES.contains(&person.state));
        assert_eq!(person.credit_card.len(), 19);
        assert!(person.email_address.ends_with(".com"));
    }

    #[test]
    fn rows_are_about_as_large_as_nexmark_says() {
        let model = EventModel::new(3, EventClock { base_ms: 0, events_per_second: 1000 });
        let bids: usize = (0..1000).map(|k| model.bid(NexmarkTable::Bid.event_number(k)).extra.len() + 32).sum();
        assert!((90_000..110_000).contains(&bids), "{bids}");
    }
}
