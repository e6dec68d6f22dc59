//! A Kafka source's positions, per partition: where it starts and (bounded)
//! stops, looked up from the broker when it is created; where it is; and what
//! it may commit to its consumer group: only positions whose records are
//! durable downstream.
//!
//! A record read is not yet safe: it may sit in a window, in a sink's open
//! file, or in a batch that was never returned. So the source tracks, per
//! partition, the offset after the last record it *returned*; a checkpoint
//! barrier remembers those positions, and they are committed only when the
//! checkpoint completes (the sink made everything before the barrier durable).
//! A query stopped or crashed then reads again from the last completed
//! checkpoint: nothing is lost, and a graceful stop duplicates nothing.
//!
//! With checkpoints on, the positions remembered at a barrier also go into the
//! checkpoint itself, as rows (see [`position_batch`]): a query restored from it
//! seeks there, whatever its consumer group holds.
//!
//! A bounded source (`scan.bounded.mode`) also has, per partition, the offset it
//! stops before ([`Stops`]), looked up when it starts. Those go into the
//! checkpoint too: a bounded query restored later stops where it would have
//! stopped, not at the end the topic has by then.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::source::is_transient;
use super::{kafka_error, BoundedMode, KafkaConfig, StartupMode};
use crate::checkpoint_rows::{column, unfit};
use crate::error::Result;

/// How long to wait for the cluster when looking offsets up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading on from the ends the broker reports may take (see
/// [`partition_ends`]); a partition still receiving records then ends after
/// the last one read.
const END_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Per partition, the next offset to read.
pub type Offsets = BTreeMap<i32, i64>;

/// A source's positions: returned, remembered at barriers, committed.
#[derive(Debug, Default)]
pub struct Positions {
    returned: Offsets,
    at_barrier: BTreeMap<u64, Offsets>,
    /// What the last barrier remembered, for the checkpoint.
    last_barrier: Offsets,
    committed: Offsets,
}

impl Positions {
    /// Records up to `next` (exclusive) of `partition` were returned.
    pub fn returned(&mut self, partition: i32, next: i64) {
        let at = self.returned.entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    /// A barrier for `checkpoint` goes out after everything returned so far.
    pub fn barrier(&mut self, checkpoint: u64) {
        self.at_barrier.insert(checkpoint, self.returned.clone());
        self.last_barrier = self.returned.clone();
    }

    /// The positions the last barrier remembered (empty before the first).
    pub fn at_last_barrier(&self) -> &Offsets {
        &self.last_barrier
    }

    /// `checkpoint` completed: the positions to commit (those that moved since
    /// the last commit), forgetting this checkpoint and earlier ones.
    pub fn complete(&mut self, checkpoint: u64) -> Offsets {
        let Some(at) = self.at_barrier.remove(&checkpoint) else { return Offsets::new() };
        self.at_barrier.retain(|c, _| *c > checkpoint);
        at.into_iter().filter(|(p, o)| self.committed.get(p) != Some(o)).collect()
    }

    /// `offsets` are in the consumer group now.
    pub fn committed(&mut self, offsets: &Offsets) {
        self.committed.extend(offsets);
    }
}

/// Where a bounded source stops reading each of its partitions, and which
/// partitions are done.
///
/// A partition is done when the next offset to read is at or past its stop,
/// when a record at or after the stop time arrives (`scan.bounded.mode =
/// 'timestamp'`: on brokers that cannot look offsets up by time, such as
/// tansu, this is what finds the stop), or when the broker says the partition
/// holds nothing more (its end, which is never short of a stop looked up
/// earlier: this ends partitions whose last offsets hold no record, as
/// compacted topics and transaction markers leave them).
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// Per partition, the offset reading stops before.
    at: Offsets,
    /// A record at or after this Kafka timestamp (epoch ms) ends its partition.
    time: Option<i64>,
    /// Per partition, the offset reading starts from, where known.
    from: Offsets,
    done: BTreeSet<i32>,
}

impl Stops {
    pub fn new(at: Offsets, time: Option<i64>) -> Self {
        Stops { at, time, from: Offsets::new(), done: BTreeSet::new() }
    }

    /// The offset each partition stops before.
    pub fn offsets(&self) -> &Offsets {
        &self.at
    }

    /// Stops a checkpoint holds replace those looked up (for the partitions it
    /// names), and decide again which partitions have nothing to read.
    pub fn restore(&mut self, stored: &Offsets) {
        for (p, stop) in stored {
            if let Some(at) = self.at.get_mut(p) {
                *at = *stop;
            }
        }
        for (p, next) in self.from.clone() {
            self.start_at(p, next);
        }
    }

    /// `partition` is read from `next` on: it is done at once if that is at or
    /// past its stop (nothing to read), and not done otherwise.
    pub fn start_at(&mut self, partition: i32, next: i64) {
        self.from.insert(partition, next);
        match self.at.get(&partition).is_some_and(|stop| next >= *stop) {
            true => self.done.insert(partition),
            false => self.done.remove(&partition),
        };
    }

    /// A record of `partition` at `offset` (with its Kafka timestamp) was read:
    /// whether it comes before the stop, to be kept. One at or past the stop is
    /// not kept and ends its partition; so does the last one before it, kept.
    pub fn admit(&mut self, partition: i32, offset: i64, timestamp: Option<i64>) -> bool {
        if self.done.contains(&partition) {
            return false;
        }
        let stop = self.at.get(&partition).copied().unwrap_or(i64::MAX);
        let past_time = self.time.zip(timestamp).is_some_and(|(at, t)| t >= at);
        if offset >= stop || past_time {
            self.done.insert(partition);
            return false;
        }
        if offset + 1 >= stop {
            self.done.insert(partition);
        }
        true
    }

    /// The broker holds nothing more of `partition` for now: it is done.
    pub fn reached_end(&mut self, partition: i32) {
        self.done.insert(partition);
    }

    pub fn is_done(&self, partition: i32) -> bool {
        self.done.contains(&partition)
    }

    /// Whether every one of `partitions` is done.
    pub fn all_done(&self, partitions: &[i32]) -> bool {
        partitions.iter().all(|p| self.done.contains(p))
    }
}

/// The schema of a Kafka source's position in a checkpoint: one row per
/// partition of the lane read from so far (or, for a bounded source, with a
/// stop), with the next offset to read (NULL: not read yet) and where a
/// bounded source stops (NULL: unbounded). Checkpoints taken before stops
/// existed have no `stop_offset` column.
pub fn position_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("next_offset", DataType::Int64, true),
        Field::new("stop_offset", DataType::Int64, true),
    ]))
}

/// `offsets` and `stops` as rows of [`position_schema`], one per partition
/// found in either.
pub fn position_batch(offsets: &Offsets, stops: Option<&Offsets>) -> Result<RecordBatch> {
    let no_stops = Offsets::new();
    let stops = stops.unwrap_or(&no_stops);
    let partitions: BTreeSet<i32> = offsets.keys().chain(stops.keys()).copied().collect();
    let next = Int64Array::from_iter(partitions.iter().map(|p| offsets.get(p).copied()));
    let stop = Int64Array::from_iter(partitions.iter().map(|p| stops.get(p).copied()));
    let partitions = Int32Array::from_iter_values(partitions);
    RecordBatch::try_new(position_schema(), vec![Arc::new(partitions), Arc::new(next), Arc::new(stop)])
        .map_err(|e| unfit("kafka", e.to_string()))
}

/// The offsets held by position rows (of one lane, or of every lane when the
/// parallelism changed). A partition found twice keeps its larger offset.
pub fn offsets_from(batches: &[RecordBatch]) -> Result<Offsets> {
    offsets_in(batches, "next_offset")
}

/// The stops held by position rows (none in a checkpoint of an unbounded
/// source, or of one taken before stops were kept).
pub fn stops_from(batches: &[RecordBatch]) -> Result<Offsets> {
    let with_stops: Vec<RecordBatch> = batches.iter().filter(|b| b.column_by_name("stop_offset").is_some()).cloned().collect();
    offsets_in(&with_stops, "stop_offset")
}

/// The non-NULL values of column `name` by partition, the larger one for a
/// partition found twice.
fn offsets_in(batches: &[RecordBatch], name: &str) -> Result<Offsets> {
    let mut offsets = Offsets::new();
    for batch in batches {
        let partitions = column::<Int32Array>("kafka", batch, "partition", true)?;
        let values = column::<Int64Array>("kafka", batch, name, false)?;
        for (p, o) in partitions.values().iter().zip(values.iter()) {
            let Some(o) = o else { continue };
            if o < 0 {
                return Err(unfit("kafka", format!("partition {p} has negative {name} {o}")));
            }
            let at = offsets.entry(*p).or_insert(o);
            *at = (*at).max(o);
        }
    }
    Ok(offsets)
}

/// Where each of `partitions` starts by `scan.startup.mode`: a logical offset
/// (beginning, the group's), or an offset looked up now (latest, or the first
/// record at the start timestamp).
pub fn start_offsets(consumer: &StreamConsumer, cfg: &KafkaConfig, partitions: &[i32]) -> Result<Vec<(i32, Offset)>> {
    match cfg.startup {
        StartupMode::Earliest => Ok(partitions.iter().map(|p| (*p, Offset::Beginning)).collect()),
        StartupMode::GroupOffsets => Ok(partitions.iter().map(|p| (*p, Offset::Stored)).collect()),
        // The same end a `latest-offset` bound stops at: a latest start reads
        // none of the records produced before it, even where the broker
        // reports the end short (see `partition_ends`).
        StartupMode::Latest => Ok(partition_ends(consumer, cfg, partitions)?.into_iter().map(|(p, end)| (p, Offset::Offset(end))).collect()),
        StartupMode::Timestamp(ms) => {
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                // offsets_for_times takes the timestamp in the offset field.
                tpl.add_partition_offset(&cfg.topic, *p, Offset::Offset(ms)).map_err(kafka_error)?;
            }
            let found = consumer
                .offsets_for_times(tpl, METADATA_TIMEOUT)
                .map_err(|e| kafka_error(format!("looking up offsets for timestamp {ms}: {e}")))?;
            Ok(found.elements().iter().map(|e| (e.partition(), e.offset())).collect())
        }
    }
}

/// Where each of `partitions` stops by `scan.bounded.mode`, and which have
/// nothing to read from where they start (`start`).
pub fn stops(consumer: &StreamConsumer, cfg: &KafkaConfig, partitions: &[i32], start: &[(i32, Offset)]) -> Result<Stops> {
    let (at, time) = match cfg.bounded {
        BoundedMode::Unbounded => (Offsets::new(), None),
        BoundedMode::LatestOffset => (partition_ends(consumer, cfg, partitions)?, None),
        // A partition the group has no offset for has nothing to read: the
        // group has read none of it.
        BoundedMode::GroupOffsets => {
            let committed = committed_offsets(consumer, cfg, partitions)?;
            (partitions.iter().map(|p| (*p, committed.get(p).copied().unwrap_or(0))).collect(), None)
        }
        BoundedMode::Timestamp(ms) => {
            let mut at = partition_ends(consumer, cfg, partitions)?;
            // A broker that looks offsets up by time narrows the stops down at
            // once; one that cannot (tansu answers 0 for every time) leaves it
            // to the records' timestamps, which find the same offset.
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                tpl.add_partition_offset(&cfg.topic, *p, Offset::Offset(ms)).map_err(kafka_error)?;
            }
            let found = consumer
                .offsets_for_times(tpl, METADATA_TIMEOUT)
                .map_err(|e| kafka_error(format!("looking up offsets for 'scan.bounded.timestamp-millis' = {ms}: {e}")))?;
            for e in found.elements() {
                if let (Offset::Offset(o), Some(end)) = (e.offset(), at.get_mut(&e.partition())) {
                    if o > 0 {
                        *end = (*end).min(o);
                    }
                }
            }
            (at, Some(ms))
        }
    };
    let mut stops = Stops::new(at, time);
    for (p, first) in first_offsets(consumer, cfg, start) {
        stops.start_at(p, first);
    }
    Ok(stops)
}

/// The offsets `start` begins at, where they can be told now (the beginning
/// and the group's offsets looked up); a partition whose first offset cannot be
/// told is left out: reading finds out.
fn first_offsets(consumer: &StreamConsumer, cfg: &KafkaConfig, start: &[(i32, Offset)]) -> Offsets {
    let partitions: Vec<i32> = start.iter().map(|(p, _)| *p).collect();
    let committed = match start.iter().any(|(_, o)| *o == Offset::Stored) {
        true => committed_offsets(consumer, cfg, &partitions).unwrap_or_default(),
        false => Offsets::new(),
    };
    let low = |p: i32| consumer.fetch_watermarks(&cfg.topic, p, METADATA_TIMEOUT).ok().map(|(low, _)| low);
    start
        .iter()
        .filter_map(|(p, offset)| {
            let first = match offset {
                Offset::Offset(o) => Some(*o),
                Offset::Beginning => low(*p),
                // Without a committed offset the consumer starts at the beginning.
                Offset::Stored => committed.get(p).copied().or_else(|| low(*p)),
                _ => None,
            };
            first.map(|o| (*p, o))
        })
        .collect()
}

/// The consumer group's committed offsets for `partitions` (those it has).
fn committed_offsets(consumer: &StreamConsumer, cfg: &KafkaConfig, partitions: &[i32]) -> Result<Offsets> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&cfg.topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .map_err(|e| kafka_error(format!("looking up the offsets of group {:?}: {e}", cfg.group_id.as_deref().unwrap_or(""))))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// The end of each of `partitions` now: the offset after its last record.
///
/// The broker's answer is where this starts, not what it returns: tansu answers
/// the last record batch's base offset + 1, short of the end when a producer
/// sent several records in one batch. So a probe (a consumer of its own, which
/// commits nothing) reads on from there until librdkafka says each partition
/// has no more, and a partition ends after the last record it saw. Records
/// produced while it reads (it gives up after [`END_PROBE_TIMEOUT`]) may be
/// counted in: reading a little more than the end at the start is safe,
/// missing records that were there is not.
fn partition_ends(consumer: &StreamConsumer, cfg: &KafkaConfig, partitions: &[i32]) -> Result<Offsets> {
    let mut ends = Offsets::new();
    for p in partitions {
        let (_, high) = consumer
            .fetch_watermarks(&cfg.topic, *p, METADATA_TIMEOUT)
            .map_err(|e| kafka_error(format!("looking up the end of partition {p}: {e}")))?;
        ends.insert(*p, high);
    }
    let mut client = cfg.client_config();
    client
        // It only assigns partitions, never joins the group or commits.
        .set("group.id", cfg.group_id.as_deref().unwrap_or("sluice-end-probe"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50");
    let probe: BaseConsumer = client.create().map_err(kafka_error)?;
    let mut tpl = TopicPartitionList::new();
    for (p, end) in &ends {
        tpl.add_partition_offset(&cfg.topic, *p, Offset::Offset(*end)).map_err(kafka_error)?;
    }
    probe.assign(&tpl).map_err(kafka_error)?;
    let mut open: HashSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + END_PROBE_TIMEOUT;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!("kafka topic {}: partitions {open:?} still receiving records; they end after the last one read", cfg.topic);
            break;
        }
        match probe.poll(left) {
            Some(Ok(m)) => {
                let end = ends.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) if is_transient(&e) => {}
            Some(Err(e)) => return Err(kafka_error(format!("reading to the end of topic {}: {e}", cfg.topic))),
            None => {}
        }
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_commits_what_was_returned_before_its_barrier() {
        let mut p = Positions::default();
        p.returned(0, 10);
        p.returned(1, 4);
        p.barrier(1);
        p.returned(0, 20);
        p.barrier(2);
        assert_eq!(p.complete(1), Offsets::from([(0, 10), (1, 4)]));
        p.committed(&Offsets::from([(0, 10), (1, 4)]));
        assert_eq!(p.complete(2), Offsets::from([(0, 20)]), "only what moved");
        assert_eq!(p.complete(2), Offsets::new(), "each checkpoint once");
    }

    #[test]
    fn completing_a_checkpoint_forgets_earlier_ones() {
        let mut p = Positions::default();
        p.returned(0, 5);
        p.barrier(1);
        p.returned(0, 7);
        p.barrier(2);
        assert_eq!(p.complete(2), Offsets::from([(0, 7)]));
        assert_eq!(p.complete(1), Offsets::new(), "an older checkpoint never moves a commit back");
    }

    #[test]
    fn the_last_barrier_s_positions_survive_a_round_trip_through_rows() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = Positions::default();
        assert!(p.at_last_barrier().is_empty());
        p.returned(3, 17);
        p.returned(0, 5);
        p.barrier(1);
        p.returned(3, 40);
        let batch = position_batch(p.at_last_barrier(), None)?;
        assert_eq!(batch.schema(), position_schema());
        assert_eq!(offsets_from(&[batch])?, Offsets::from([(0, 5), (3, 17)]), "the barrier's, not what came after");
        p.complete(1);
        assert_eq!(p.at_last_barrier(), &Offsets::from([(0, 5), (3, 17)]), "completing does not forget it");
        Ok(())
    }

    #[test]
    fn rows_of_several_lanes_merge() -> Result<(), Box<dyn std::error::Error>> {
        let a = position_batch(&Offsets::from([(0, 10), (2, 7)]), None)?;
        let b = position_batch(&Offsets::from([(1, 3), (2, 9)]), None)?;
        assert_eq!(offsets_from(&[a.clone(), b.clone()])?, Offsets::from([(0, 10), (1, 3), (2, 9)]));
        assert_eq!(stops_from(&[a, b])?, Offsets::new(), "an unbounded source has no stops");
        Ok(())
    }

    #[test]
    fn stops_travel_with_positions_even_for_partitions_not_read_yet() -> Result<(), Box<dyn std::error::Error>> {
        let batch = position_batch(&Offsets::from([(0, 4)]), Some(&Offsets::from([(0, 9), (1, 5)])))?;
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(offsets_from(std::slice::from_ref(&batch))?, Offsets::from([(0, 4)]), "partition 1 has no position");
        assert_eq!(stops_from(&[batch])?, Offsets::from([(0, 9), (1, 5)]));
        // A checkpoint from before stops were kept: positions only.
        let old_schema = Arc::new(Schema::new(vec![
            Field::new("partition", DataType::Int32, false),
            Field::new("next_offset", DataType::Int64, false),
        ]));
        let old = RecordBatch::try_new(old_schema, vec![Arc::new(Int32Array::from(vec![2])), Arc::new(Int64Array::from(vec![7]))])?;
        assert_eq!(offsets_from(std::slice::from_ref(&old))?, Offsets::from([(2, 7)]));
        assert_eq!(stops_from(&[old])?, Offsets::new());
        Ok(())
    }

    #[test]
    fn a_partition_is_done_at_its_stop_offset() {
        let mut s = Stops::new(Offsets::from([(0, 3), (1, 0)]), None);
        s.start_at(0, 0);
        s.start_at(1, 0);
        assert!(s.is_done(1) && !s.is_done(0), "start at the stop: nothing to read");
        assert!(s.admit(0, 0, None) && s.admit(0, 1, None));
        assert!(!s.all_done(&[0, 1]));
        assert!(s.admit(0, 2, None), "the last record before the stop is kept ...");
        assert!(s.all_done(&[0, 1]), "... and ends the partition");
        assert!(!s.admit(0, 3, None), "nothing after it");
    }

    #[test]
    fn a_record_past_the_stop_ends_its_partition_without_being_kept() {
        // Offsets 5 and 6 compacted away: the first record read is past the stop.
        let mut s = Stops::new(Offsets::from([(0, 6)]), None);
        s.start_at(0, 4);
        assert!(s.admit(0, 4, None));
        assert!(!s.admit(0, 7, None));
        assert!(s.is_done(0));
        // Or the broker says there is no more.
        let mut s = Stops::new(Offsets::from([(0, 6)]), None);
        s.start_at(0, 4);
        s.reached_end(0);
        assert!(s.all_done(&[0]));
    }

    #[test]
    fn with_a_stop_time_the_first_record_at_or_after_it_ends_its_partition() {
        let mut s = Stops::new(Offsets::from([(0, 100)]), Some(1_000));
        s.start_at(0, 0);
        assert!(s.admit(0, 0, Some(999)));
        assert!(s.admit(0, 1, None), "a record without a timestamp is judged by its offset");
        assert!(!s.admit(0, 2, Some(1_000)));
        assert!(!s.admit(0, 3, Some(5)), "records after it are not read, whatever their time");
        assert!(s.is_done(0));
    }

    #[test]
    fn restored_stops_replace_those_looked_up_and_decide_again_what_is_done() {
        let mut s = Stops::new(Offsets::from([(0, 50), (1, 50)]), None);
        s.start_at(0, 0);
        s.start_at(1, 60);
        assert!(s.is_done(1));
        s.restore(&Offsets::from([(0, 0), (1, 70), (9, 1)]));
        assert_eq!(s.offsets(), &Offsets::from([(0, 0), (1, 70)]), "partitions of other lanes are left out");
        assert!(s.is_done(0) && !s.is_done(1), "decided again from where each starts");
        s.start_at(0, 10);
        s.start_at(1, 60);
        assert!(s.is_done(0) && !s.is_done(1));
    }

    #[test]
    fn rows_of_another_source_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let schema = Arc::new(Schema::new(vec![Field::new("partition", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))])?;
        let e = offsets_from(&[batch]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("checkpoint does not fit") && e.contains("partition"), "{e}");
        let negative = position_batch(&Offsets::from([(0, -2)]), None)?;
        assert!(offsets_from(&[negative]).is_err());
        Ok(())
    }
}
