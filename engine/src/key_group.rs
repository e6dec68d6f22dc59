//! Key groups: which lane owns a key, in a way that outlives the process.
//!
//! State will be checkpointed per key group and restored at another
//! parallelism, and later split across processes, so the owner of a key must
//! not depend on a dependency's hash seed or on the CPU (DataFusion's hashes are
//! ahash, whose output changes with versions and with AES support). A key is
//! hashed by [`KeyHasher`]: xxHash64 over a canonical encoding of each value,
//! defined here and fixed across Sluice versions. The hash picks one of
//! [`KEY_GROUPS`] key groups, and lanes own contiguous ranges of key groups (as
//! Flink assigns them), so changing the parallelism moves whole key groups.
//!
//! The encoding: a NULL is the byte 0; any other value is the byte 1 followed by
//! its bytes: integers (signed, unsigned, dates, times, timestamps, durations)
//! as their value in 16 little-endian bytes (so `5` is the same key whatever the
//! integer width), floats as the `f64` bits of the value (-0.0 as 0.0, every NaN
//! alike), decimals as their unscaled `i128`, booleans as one byte, strings and
//! binaries as their length (8 bytes) and bytes; other types as their display
//! text. The columns of a key are hashed in order, each seeded by the previous.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::*;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use std::hash::Hasher;

use twox_hash::XxHash64;

use crate::error::Result;

/// How many key groups keys are spread over: the most lanes a query can have.
pub const KEY_GROUPS: u32 = 128;

/// The seed of the first key column.
const SEED: u64 = 0x5_11ce;

/// The key group of a key hash.
pub fn key_group(hash: u64) -> u32 {
    (hash % u64::from(KEY_GROUPS)) as u32
}

/// The lane that owns key group `group` when a query runs in `lanes` lanes:
/// lane `i` owns the contiguous range `[i * G / lanes, (i + 1) * G / lanes)`.
pub fn lane_of(group: u32, lanes: usize) -> usize {
    let lanes = lanes.clamp(1, KEY_GROUPS as usize);
    (group as usize * lanes) / KEY_GROUPS as usize
}

/// Hashes the rows of key columns (see the module docs for the encoding).
pub struct KeyHasher;

impl KeyHasher {
    /// One hash per row of `columns` (all of the same length).
    pub fn hash_rows(columns: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
        let mut hashes = vec![SEED; rows];
        for column in columns {
            hash_column(column.as_ref(), &mut hashes)?;
        }
        Ok(hashes)
    }
}

fn mix(hash: &mut u64, bytes: &[u8]) {
    *hash = XxHash64::oneshot(*hash, bytes);
}

/// Mixes a present value: the marker 1, then `parts` (streamed: the same hash
/// as of their concatenation, without copying them).
fn mix_parts(hash: &mut u64, parts: &[&[u8]]) {
    let mut hasher = XxHash64::with_seed(*hash);
    hasher.write(&[1]);
    for part in parts {
        hasher.write(part);
    }
    *hash = hasher.finish();
}

fn mix_value(hash: &mut u64, bytes: &[u8]) {
    mix_parts(hash, &[bytes]);
}

fn mix_int(hash: &mut u64, value: i128) {
    mix_parts(hash, &[&value.to_le_bytes()]);
}

fn mix_float(hash: &mut u64, value: f64) {
    let canonical = if value.is_nan() {
        f64::NAN.to_bits()
    } else if value == 0.0 {
        0f64.to_bits()
    } else {
        value.to_bits()
    };
    mix_parts(hash, &[&canonical.to_le_bytes()]);
}

fn mix_bytes(hash: &mut u64, bytes: &[u8]) {
    mix_parts(hash, &[&(bytes.len() as u64).to_le_bytes(), bytes]);
}

/// Mixes each row's value of `column` into `hashes`.
fn hash_column(column: &dyn Array, hashes: &mut [u64]) -> Result<()> {
    macro_rules! ints {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) { mix(h, &[0]) } else { mix_int(h, a.value(i) as i128) }
            }
        }};
    }
    macro_rules! floats {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) { mix(h, &[0]) } else { mix_float(h, f64::from(a.value(i))) }
            }
        }};
    }
    macro_rules! bytes {
        ($a:expr) => {{
            let a = $a;
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) { mix(h, &[0]) } else { mix_bytes(h, AsRef::<[u8]>::as_ref(a.value(i))) }
            }
        }};
    }
    match column.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Date32 => ints!(Date32Type),
        DataType::Date64 => ints!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => ints!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => ints!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => ints!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => ints!(TimestampNanosecondType),
        DataType::Time32(TimeUnit::Second) => ints!(Time32SecondType),
        DataType::Time32(TimeUnit::Millisecond) => ints!(Time32MillisecondType),
        DataType::Time64(TimeUnit::Microsecond) => ints!(Time64MicrosecondType),
        DataType::Time64(TimeUnit::Nanosecond) => ints!(Time64NanosecondType),
        DataType::Duration(TimeUnit::Second) => ints!(DurationSecondType),
        DataType::Duration(TimeUnit::Millisecond) => ints!(DurationMillisecondType),
        DataType::Duration(TimeUnit::Microsecond) => ints!(DurationMicrosecondType),
        DataType::Duration(TimeUnit::Nanosecond) => ints!(DurationNanosecondType),
        DataType::Decimal128(_, _) => ints!(Decimal128Type),
        DataType::Float32 => floats!(Float32Type),
        DataType::Float64 => floats!(Float64Type),
        DataType::Boolean => {
            let a = column.as_boolean();
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) { mix(h, &[0]) } else { mix_value(h, &[u8::from(a.value(i))]) }
            }
        }
        DataType::Utf8 => bytes!(column.as_string::<i32>()),
        DataType::LargeUtf8 => bytes!(column.as_string::<i64>()),
        DataType::Utf8View => bytes!(column.as_string_view()),
        DataType::Binary => bytes!(column.as_binary::<i32>()),
        DataType::LargeBinary => bytes!(column.as_binary::<i64>()),
        DataType::BinaryView => bytes!(column.as_binary_view()),
        DataType::Dictionary(_, _) => {
            // The values the keys stand for, not the dictionary's codes.
            let values = datafusion::arrow::compute::cast(column, &dictionary_value_type(column.data_type()))?;
            hash_column(values.as_ref(), hashes)?;
        }
        _ => {
            let formatter = ArrayFormatter::try_new(column, &FormatOptions::default())?;
            for (i, h) in hashes.iter_mut().enumerate() {
                if column.is_null(i) { mix(h, &[0]) } else { mix_bytes(h, formatter.value(i).to_string().as_bytes()) }
            }
        }
    }
    Ok(())
}

fn dictionary_value_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array, StringArray, StringViewArray};

    use super::*;

    #[test]
    fn hashes_are_fixed_across_versions_and_machines() -> Result<()> {
        // These values are part of the checkpoint format: a change here moves
        // keys to other key groups and breaks restoring older checkpoints.
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(1), None, Some(42)])),
            Arc::new(StringArray::from(vec![Some("page_view"), Some("checkout"), None])),
        ];
        let hashes = KeyHasher::hash_rows(&columns, 3)?;
        let expected: Vec<u64> = {
            let mut h = vec![SEED; 3];
            mix_int(&mut h[0], 1);
            mix(&mut h[1], &[0]);
            mix_int(&mut h[2], 42);
            mix_bytes(&mut h[0], b"page_view");
            mix_bytes(&mut h[1], b"checkout");
            mix(&mut h[2], &[0]);
            h
        };
        assert_eq!(hashes, expected);
        // Pinned: the same keys must land in the same key groups in every release.
        assert_eq!(hashes, vec![0xedad_edb5_ab20_0952, 0xa0ca_45d4_293e_ecd0, 0x52e8_348f_b1c1_c419]);
        assert_eq!(hashes.iter().map(|h| key_group(*h)).collect::<Vec<_>>(), vec![82, 80, 25]);
        // xxHash64 itself, from its reference vectors: seed 0, empty input.
        assert_eq!(XxHash64::oneshot(0, b""), 0xef46_db37_51d8_e999);
        // Streamed parts hash as their concatenation.
        let mut streamed = 7;
        mix_parts(&mut streamed, &[b"ab", b"", b"cde"]);
        assert_eq!(streamed, XxHash64::oneshot(7, b"\x01abcde"));
        Ok(())
    }

    #[test]
    fn a_value_is_one_key_whatever_its_integer_width_or_string_layout() -> Result<()> {
        let narrow = KeyHasher::hash_rows(&[Arc::new(Int32Array::from(vec![5, -7])) as ArrayRef], 2)?;
        let wide = KeyHasher::hash_rows(&[Arc::new(Int64Array::from(vec![5, -7])) as ArrayRef], 2)?;
        assert_eq!(narrow, wide);
        let utf8 = KeyHasher::hash_rows(&[Arc::new(StringArray::from(vec!["a", "bc"])) as ArrayRef], 2)?;
        let view = KeyHasher::hash_rows(&[Arc::new(StringViewArray::from(vec!["a", "bc"])) as ArrayRef], 2)?;
        assert_eq!(utf8, view);
        let zeros = KeyHasher::hash_rows(&[Arc::new(Float64Array::from(vec![0.0, -0.0])) as ArrayRef], 2)?;
        assert_eq!(zeros[0], zeros[1]);
        Ok(())
    }

    #[test]
    fn column_boundaries_and_nulls_are_part_of_the_key() -> Result<()> {
        let ab_c: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(vec!["ab"])), Arc::new(StringArray::from(vec!["c"]))];
        let a_bc: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(vec!["a"])), Arc::new(StringArray::from(vec!["bc"]))];
        assert_ne!(KeyHasher::hash_rows(&ab_c, 1)?, KeyHasher::hash_rows(&a_bc, 1)?);
        let null_and_empty = KeyHasher::hash_rows(&[Arc::new(StringArray::from(vec![None, Some("")])) as ArrayRef], 2)?;
        assert_ne!(null_and_empty[0], null_and_empty[1]);
        Ok(())
    }

    #[test]
    fn lanes_own_contiguous_key_group_ranges_covering_all() {
        for lanes in [1, 2, 3, 7, 16, 128] {
            let owners: Vec<usize> = (0..KEY_GROUPS).map(|g| lane_of(g, lanes)).collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]), "contiguous for {lanes} lanes");
            assert_eq!(owners.first(), Some(&0));
            assert_eq!(owners.last(), Some(&(lanes - 1)), "every lane owns some key groups");
        }
    }
}
