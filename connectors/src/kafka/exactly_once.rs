//! Exactly-once output to Kafka without broker transactions: records wait in
//! the sink's checkpoints, and carry headers that say which they are.
//!
//! With checkpoints on, the sink produces nothing as results come. It encodes
//! each record (key, value, headers, and the partition it will go to, see
//! `partitioner`) and *stages* it: the records that came before the barrier of
//! checkpoint `c` belong to `c` and are numbered `0, 1, ...` in arrival order
//! (`seq`). The sink's part of each checkpoint is every staged record not yet
//! produced ([`Staging::snapshot`]), so the records survive a crash between
//! the checkpoint completing and their delivery. When checkpoint `c` completes
//! the sink produces the records of `c` and earlier, in order, waits until
//! each is acknowledged (idempotent producer, all replicas), and forgets them.
//!
//! Each produced record carries its identity in headers: `sluice.query` (the
//! statement's id), `sluice.run` (the run of the query that staged it: a new
//! one each time a query starts, so ids of an unrelated earlier run of the
//! same statement never count), `sluice.checkpoint` and `sluice.seq`. A query
//! restored from checkpoint `c` gets back the records `c` held: checkpoints
//! that completed, whose records may be in the topic wholly, partly or not at
//! all. Since records of one run go into each partition in `(checkpoint, seq)`
//! order, the last of them in a partition tells exactly which are there; the
//! restored sink finds it by reading the partition's tail (see `tail`) and
//! produces only the records after it. A reader sees each record once.
//!
//! Each staged record also keeps its *floor*: its partition's end offset when
//! the run that staged it began. No record of that run lies before it, so the
//! search for the last one stops there instead of at the partition's start.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, Int32Array, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::checkpoint_rows::{column, unfit};
use crate::error::Result;

/// The statement whose output the record is (its query id).
pub const QUERY_HEADER: &str = "sluice.query";
/// The run of the query that staged the record.
pub const RUN_HEADER: &str = "sluice.run";
/// The checkpoint the record belongs to (decimal).
pub const CHECKPOINT_HEADER: &str = "sluice.checkpoint";
/// The record's number within its checkpoint, from 0 (decimal).
pub const SEQ_HEADER: &str = "sluice.seq";

/// A record as it will be produced, its partition chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers of the result itself (the identity headers are added when
    /// producing).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Which staged record a produced one is: ordered as the records of one run
/// are produced into each partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub run: String,
    pub checkpoint: u64,
    pub seq: u64,
}

/// A record waiting for its checkpoint to complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub id: Identity,
    /// No record of `id.run` lies before this offset of the record's partition.
    pub floor: i64,
    pub record: Encoded,
}

/// The records of one run of a query while checkpoints are on.
#[derive(Debug)]
pub struct Staging {
    run: String,
    /// Per partition, its end when this run began.
    floors: BTreeMap<i32, i64>,
    /// Arrived since the last barrier: the next barrier's checkpoint's.
    unclaimed: Vec<Encoded>,
    /// Claimed by a checkpoint and not yet produced, in `(checkpoint, seq)` order.
    pending: Vec<Staged>,
}

impl Staging {
    /// Staging for run `run`, whose partitions ended at `floors` when it began.
    pub fn new(run: &str, floors: BTreeMap<i32, i64>) -> Self {
        Staging { run: run.to_string(), floors, unclaimed: Vec::new(), pending: Vec::new() }
    }

    /// A result record arrived.
    pub fn stage(&mut self, record: Encoded) {
        self.unclaimed.push(record);
    }

    /// The barrier of `checkpoint` (or the end) went out: the records staged
    /// since the last one are its, numbered in arrival order.
    pub fn claim(&mut self, checkpoint: u64) {
        for (seq, record) in self.unclaimed.drain(..).enumerate() {
            let floor = self.floors.get(&record.partition).copied().unwrap_or(0);
            let id = Identity { run: self.run.clone(), checkpoint, seq: seq as u64 };
            self.pending.push(Staged { id, floor, record });
        }
    }

    /// Takes the records of `checkpoint` and earlier, in order.
    pub fn due(&mut self, checkpoint: u64) -> Vec<Staged> {
        let split = self.pending.partition_point(|s| s.id.checkpoint <= checkpoint);
        let later = self.pending.split_off(split);
        std::mem::replace(&mut self.pending, later)
    }

    /// Records taken by [`Staging::due`] that were not all delivered: they
    /// stay in the snapshot until a later commit (or a restore) produces them.
    pub fn undo(&mut self, mut records: Vec<Staged>) {
        records.append(&mut self.pending);
        self.pending = records;
    }

    /// The sink's part of a checkpoint: every claimed record not yet produced.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        snapshot_batch(&self.pending)
    }
}

/// The schema of a Kafka sink's snapshot: one row per staged record.
pub fn snapshot_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run", DataType::Utf8, false),
        Field::new("checkpoint", DataType::UInt64, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("floor", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        // The result's own headers, encoded (see `encode_headers`); NULL: none.
        Field::new("headers", DataType::Binary, true),
    ]))
}

/// `records` as rows of [`snapshot_schema`].
pub fn snapshot_batch(records: &[Staged]) -> Result<RecordBatch> {
    let headers: Vec<Option<Vec<u8>>> =
        records.iter().map(|s| (!s.record.headers.is_empty()).then(|| encode_headers(&s.record.headers))).collect();
    RecordBatch::try_new(
        snapshot_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(records.iter().map(|s| s.id.run.as_str()))),
            Arc::new(UInt64Array::from_iter_values(records.iter().map(|s| s.id.checkpoint))),
            Arc::new(UInt64Array::from_iter_values(records.iter().map(|s| s.id.seq))),
            Arc::new(Int32Array::from_iter_values(records.iter().map(|s| s.record.partition))),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|s| s.floor))),
            Arc::new(records.iter().map(|s| s.record.key.as_deref()).collect::<BinaryArray>()),
            Arc::new(records.iter().map(|s| s.record.value.as_deref()).collect::<BinaryArray>()),
            Arc::new(headers.iter().map(|h| h.as_deref()).collect::<BinaryArray>()),
        ],
    )
    .map_err(|e| unfit("kafka", e.to_string()))
}

/// The staged records a snapshot holds, in `(run, checkpoint, seq)` order.
pub fn from_snapshot(batch: &RecordBatch) -> Result<Vec<Staged>> {
    let runs = column::<StringArray>("kafka", batch, "run", true)?;
    let checkpoints = column::<UInt64Array>("kafka", batch, "checkpoint", true)?;
    let seqs = column::<UInt64Array>("kafka", batch, "seq", true)?;
    let partitions = column::<Int32Array>("kafka", batch, "partition", true)?;
    let floors = column::<Int64Array>("kafka", batch, "floor", true)?;
    let keys = column::<BinaryArray>("kafka", batch, "key", false)?;
    let values = column::<BinaryArray>("kafka", batch, "value", false)?;
    let headers = column::<BinaryArray>("kafka", batch, "headers", false)?;
    let mut records = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let partition = partitions.value(i);
        if partition < 0 {
            return Err(unfit("kafka", format!("staged record in partition {partition}")));
        }
        let record = Encoded {
            partition,
            key: keys.is_valid(i).then(|| keys.value(i).to_vec()),
            value: values.is_valid(i).then(|| values.value(i).to_vec()),
            headers: match headers.is_valid(i) {
                true => decode_headers(headers.value(i)).ok_or_else(|| unfit("kafka", "staged record with malformed headers"))?,
                false => Vec::new(),
            },
        };
        let id = Identity { run: runs.value(i).to_string(), checkpoint: checkpoints.value(i), seq: seqs.value(i) };
        records.push(Staged { id, floor: floors.value(i), record });
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}

/// The identity headers of a record of `query`, as produced.
pub fn identity_headers(query: &str, id: &Identity) -> [(&'static str, String); 4] {
    [
        (QUERY_HEADER, query.to_string()),
        (RUN_HEADER, id.run.clone()),
        (CHECKPOINT_HEADER, id.checkpoint.to_string()),
        (SEQ_HEADER, id.seq.to_string()),
    ]
}

/// The identity a produced record's headers give, if it is a record of
/// `query` (headers as `(name, value)` pairs, in any order).
pub fn identity_of<'a>(query: &str, headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Option<Identity> {
    let (mut of_query, mut run, mut checkpoint, mut seq) = (false, None, None, None);
    for (name, value) in headers {
        let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else { continue };
        match name {
            QUERY_HEADER => of_query = text == query,
            RUN_HEADER => run = Some(text.to_string()),
            CHECKPOINT_HEADER => checkpoint = text.parse().ok(),
            SEQ_HEADER => seq = text.parse().ok(),
            _ => {}
        }
    }
    match of_query {
        true => Some(Identity { run: run?, checkpoint: checkpoint?, seq: seq? }),
        false => None,
    }
}

/// Headers as bytes: per header, the name's length (u32, big-endian) and
/// bytes, then the value's length (i32, -1 for none) and bytes.
pub fn encode_headers(headers: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out
}

/// The headers [`encode_headers`] wrote; `None` if the bytes are not such.
pub fn decode_headers(mut bytes: &[u8]) -> Option<Vec<(String, Option<Vec<u8>>)>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn length(bytes: &mut &[u8]) -> Option<i32> {
        Some(i32::from_be_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = usize::try_from(length(&mut bytes)?).ok()?;
        let name = String::from_utf8(take(&mut bytes, name_len)?.to_vec()).ok()?;
        let value = match length(&mut bytes)? {
            -1 => None,
            n => Some(take(&mut bytes, usize::try_from(n).ok()?)?.to_vec()),
        };
        headers.push((name, value));
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, value: &str) -> Encoded {
        Encoded { partition, key: Some(value.as_bytes().to_vec()), value: Some(value.as_bytes().to_vec()), headers: Vec::new() }
    }

    #[test]
    fn records_belong_to_the_next_barrier_and_are_numbered_per_checkpoint() {
        let mut s = Staging::new("r1", BTreeMap::from([(0, 7)]));
        s.stage(record(0, "a"));
        s.stage(record(1, "b"));
        s.claim(1);
        s.stage(record(0, "c"));
        s.claim(2);
        s.stage(record(0, "d")); // after the last barrier: in no checkpoint
        let ids: Vec<(u64, u64, i64)> = s.pending.iter().map(|r| (r.id.checkpoint, r.id.seq, r.floor)).collect();
        assert_eq!(ids, vec![(1, 0, 7), (1, 1, 0), (2, 0, 7)]);
        let due = s.due(1);
        assert_eq!(due.len(), 2);
        assert_eq!(s.pending.len(), 1, "checkpoint 2 waits");
        s.undo(due);
        assert_eq!(s.pending.first().map(|r| r.id.checkpoint), Some(1), "undone records go first again");
        assert_eq!(s.due(u64::MAX).len(), 3);
    }

    #[test]
    fn a_snapshot_round_trips_records_with_tombstones_and_headers() -> Result<(), Box<dyn std::error::Error>> {
        let mut s = Staging::new("r1", BTreeMap::new());
        s.stage(Encoded { partition: 2, key: None, value: Some(b"{}".to_vec()), headers: vec![("h".into(), None), ("i".into(), Some(b"x".to_vec()))] });
        s.stage(Encoded { partition: 0, key: Some(b"k".to_vec()), value: None, headers: Vec::new() });
        s.claim(5);
        let batch = s.snapshot()?;
        assert_eq!(batch.schema(), snapshot_schema());
        assert_eq!(from_snapshot(&batch)?, s.pending);
        Ok(())
    }

    #[test]
    fn headers_tell_a_record_s_identity_only_for_its_query() {
        let id = Identity { run: "r9".into(), checkpoint: 12, seq: 3 };
        let produced = identity_headers("q1", &id);
        let pairs = || produced.iter().map(|(n, v)| (*n, Some(v.as_bytes())));
        assert_eq!(identity_of("q1", pairs()), Some(id));
        assert_eq!(identity_of("q2", pairs()), None);
        assert_eq!(identity_of("q1", pairs().filter(|(n, _)| *n != SEQ_HEADER)), None, "incomplete");
    }

    #[test]
    fn malformed_header_bytes_are_refused() {
        let headers = vec![("a".to_string(), Some(b"1".to_vec()))];
        let bytes = encode_headers(&headers);
        assert_eq!(decode_headers(&bytes), Some(headers));
        assert_eq!(decode_headers(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_headers(&[0, 0, 0, 9, b'a']), None);
    }
}
