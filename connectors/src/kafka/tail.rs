//! Finding which restored records a failed run already produced, by reading
//! the end of their partitions.
//!
//! A restored Kafka sink holds records of completed checkpoints (see
//! `exactly_once`); a run that failed may have produced some of them. Records
//! of one run go into each partition in `(checkpoint, seq)` order, so the last
//! one of that run in the partition is the highest produced: the records above
//! it are the ones still to produce. To find it, a plain consumer reads a
//! window at the partition's end, and windows twice as long before it, until
//! one holds a record of the run, or the search reaches the run's *floor*
//! (the partition's end when the run began: nothing of it lies before).
//!
//! The end of a window at the tail is not the partition's high watermark:
//! tansu, the test broker, answers the last *batch's* first offset + 1 there,
//! short of the true end when records were produced in batches. So the tail
//! is read until the consumer has passed the high watermark and then heard
//! nothing for a while: records already in the partition come without delay,
//! and nothing new comes (the run that would write them is gone).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_engine::EngineError;

use super::exactly_once::{identity_of, Identity, Staged};

/// Records read at a partition's end first; each step back reads twice as many.
const FIRST_WINDOW: i64 = 1000;
/// Nothing heard for this long (past the high watermark): the tail is read.
const QUIET: Duration = Duration::from_secs(1);
/// The whole search fails after this long (the broker is out of reach).
const DEADLINE: Duration = Duration::from_secs(120);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The search in one partition.
#[derive(Debug)]
struct Search {
    partition: i32,
    /// The runs whose last record is sought.
    runs: BTreeSet<String>,
    /// No record of those runs lies before this offset.
    floor: i64,
    /// The partition's high watermark when the search began.
    high: i64,
    /// The window read next: `[from, to)`, or from `from` to the end.
    from: i64,
    to: Option<i64>,
    window: i64,
}

/// Per partition and run, the last record of `restored`'s runs that is in
/// `topic` already (absent: none is). Blocking: run it off the async threads.
pub fn last_produced(
    client: &ClientConfig,
    topic: &str,
    query: &str,
    restored: &[Staged],
) -> sluice_engine::Result<BTreeMap<(i32, String), Identity>> {
    let mut config = client.clone();
    config
        .set("group.id", format!("sluice-sink-recovery-{query}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        // Whatever the table's properties say: records of an aborted
        // transaction were not produced, and must be produced again.
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().map_err(kafka)?;
    let mut wanted: BTreeMap<i32, (BTreeSet<String>, i64)> = BTreeMap::new();
    for staged in restored {
        let entry = wanted.entry(staged.record.partition).or_insert_with(|| (BTreeSet::new(), i64::MAX));
        entry.0.insert(staged.id.run.clone());
        entry.1 = entry.1.min(staged.floor);
    }
    let mut searches = Vec::new();
    for (partition, (runs, floor)) in wanted {
        let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT).map_err(kafka)?;
        // A floor past the end: the topic was recreated since; search it all.
        let floor = if floor > high { low } else { floor.max(low) };
        let from = floor.max(high - FIRST_WINDOW);
        searches.push(Search { partition, runs, floor, high, from, to: None, window: FIRST_WINDOW });
    }
    let deadline = Instant::now() + DEADLINE;
    let mut found = BTreeMap::new();
    while !searches.is_empty() {
        read_windows(&consumer, topic, query, &searches, &mut found, deadline)?;
        searches.retain_mut(|s| {
            let all_found = s.runs.iter().all(|r| found.contains_key(&(s.partition, r.clone())));
            if all_found || s.from <= s.floor {
                return false;
            }
            s.to = Some(s.from);
            s.window = s.window.saturating_mul(2);
            s.from = s.floor.max(s.from.saturating_sub(s.window));
            true
        });
    }
    Ok(found)
}

/// Reads each search's window, keeping the highest record of each sought run.
fn read_windows(
    consumer: &BaseConsumer,
    topic: &str,
    query: &str,
    searches: &[Search],
    found: &mut BTreeMap<(i32, String), Identity>,
    deadline: Instant,
) -> sluice_engine::Result<()> {
    let mut assignment = TopicPartitionList::new();
    for s in searches {
        assignment.add_partition_offset(topic, s.partition, Offset::Offset(s.from)).map_err(kafka)?;
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let by_partition: BTreeMap<i32, &Search> = searches.iter().map(|s| (s.partition, s)).collect();
    // Per partition, the offset after the last record read.
    let mut position: BTreeMap<i32, i64> = searches.iter().map(|s| (s.partition, s.from)).collect();
    let mut heard = Instant::now();
    let mut last_error = None;
    loop {
        let windows_read = searches.iter().all(|s| {
            let at = position.get(&s.partition).copied().unwrap_or(s.from);
            match s.to {
                Some(to) => at >= to,
                None => at >= s.high,
            }
        });
        let tails = searches.iter().any(|s| s.to.is_none());
        if windows_read && (!tails || heard.elapsed() >= QUIET) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let why = last_error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(EngineError::connector(
                "kafka",
                format!("topic {topic}: could not read back what an earlier run produced within {} s{why}", DEADLINE.as_secs()),
            ));
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => {
                // Past transaction markers (control records, never delivered),
                // only the consumer's own position shows progress.
                advance_to_consumer_position(consumer, topic, &mut position);
                continue;
            }
            Some(Err(e)) => {
                last_error = Some(e);
                continue;
            }
            Some(Ok(m)) => m,
        };
        let Some(search) = by_partition.get(&message.partition()) else { continue };
        heard = Instant::now();
        let at = position.entry(search.partition).or_insert(search.from);
        *at = (*at).max(message.offset() + 1);
        let Some(headers) = message.headers() else { continue };
        let Some(id) = identity_of(query, headers.iter().map(|h| (h.key, h.value))) else { continue };
        if search.runs.contains(&id.run) {
            let last = found.entry((search.partition, id.run.clone())).or_insert_with(|| id.clone());
            if id > *last {
                *last = id;
            }
        }
    }
}

/// Raises each partition's read position to where the consumer stands.
fn advance_to_consumer_position(consumer: &BaseConsumer, topic: &str, position: &mut BTreeMap<i32, i64>) {
    let Ok(list) = consumer.position() else { return };
    for element in list.elements_for_topic(topic) {
        if let (Some(at), Offset::Offset(next)) = (position.get_mut(&element.partition()), element.offset()) {
            *at = (*at).max(next);
        }
    }
}

fn kafka(e: impl std::fmt::Display) -> EngineError {
    EngineError::connector("kafka", e)
}
