//! A fast path for JSON records that are flat objects (JSON lines files,
//! Kafka values).
//!
//! arrow-json first builds a tape of every value of every record, then reads
//! the columns it wants off the tape. For a query that reads two of a
//! record's seven fields that is most of a file source's time (the
//! windows-vs-DuckDB benchmark). Here each record is scanned once: the keys
//! the query reads are found, every other value is skipped without being
//! parsed, and the values go straight into Arrow builders.
//!
//! The fast path decodes only what it decodes exactly as arrow-json does:
//! strings, integers, floats, booleans, timestamps and nulls, each in the
//! JSON form arrow-json reads for its column type. Values the query does not
//! read are skipped but still checked as arrow-json checks them (a nested one
//! must be valid JSON). At anything else (an escaped key, a repeated key, an
//! escape in a value not read, a nested value or a string where a read column
//! wants a number, a missing or null NOT NULL column, invalid JSON) it gives
//! the batch up, and arrow-json decodes it, or reports its error, as before.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{ArrayRef, BooleanBuilder, PrimitiveBuilder, StringBuilder, StringViewBuilder};
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef, TimeUnit,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;

/// Decodes batches of flat JSON records into `schema`'s columns, or gives up.
#[derive(Debug)]
pub(crate) struct FlatJsonDecoder {
    schema: SchemaRef,
    /// Per column, its key as it appears between quotes.
    keys: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
}

/// How a column's JSON values become Arrow values.
#[derive(Debug, Clone)]
enum Kind {
    Utf8,
    Utf8View,
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    /// The column's type, its unit and its zone (UTC without one).
    Timestamp(DataType, TimeUnit, Tz),
}

impl Kind {
    fn of(data_type: &DataType) -> Option<Kind> {
        Some(match data_type {
            DataType::Utf8 => Kind::Utf8,
            DataType::Utf8View => Kind::Utf8View,
            DataType::Boolean => Kind::Boolean,
            DataType::Int8 => Kind::Int8,
            DataType::Int16 => Kind::Int16,
            DataType::Int32 => Kind::Int32,
            DataType::Int64 => Kind::Int64,
            DataType::UInt8 => Kind::UInt8,
            DataType::UInt16 => Kind::UInt16,
            DataType::UInt32 => Kind::UInt32,
            DataType::UInt64 => Kind::UInt64,
            DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            // arrow-json reads zoneless timestamps as UTC.
            DataType::Timestamp(unit, tz) => Kind::Timestamp(data_type.clone(), *unit, tz.as_deref().unwrap_or("+00:00").parse().ok()?),
            _ => return None,
        })
    }
}

/// One value of a record, as it lies in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// The key is not in the record.
    Missing,
    Null,
    True,
    False,
    /// A number's text.
    Number(usize, usize),
    /// A string's text between its quotes, and whether it holds escapes.
    String(usize, usize, bool),
}

impl FlatJsonDecoder {
    /// A decoder into `schema`, if every column has a type it decodes.
    pub(crate) fn new(schema: SchemaRef) -> Option<Self> {
        let kinds = schema.fields().iter().map(|f| Kind::of(f.data_type())).collect::<Option<Vec<_>>>()?;
        let keys = schema.fields().iter().map(|f| f.name().as_bytes().to_vec()).collect();
        Some(FlatJsonDecoder { schema, keys, kinds })
    }

    /// `records` (one JSON object each) as one batch, or `None` where
    /// arrow-json has to decide.
    pub(crate) fn decode<'a>(&self, records: impl ExactSizeIterator<Item = &'a [u8]>) -> Option<RecordBatch> {
        let texts = records.map(|record| simdutf8::basic::from_utf8(record).ok()).collect::<Option<Vec<&str>>>()?;
        self.decode_texts(texts.into_iter())
    }

    /// The records at `spans` of `block`, as [`Self::decode`]; the block is
    /// checked to be UTF-8 once, not record by record.
    pub(crate) fn decode_block(&self, block: &[u8], spans: impl ExactSizeIterator<Item = Range<usize>>) -> Option<RecordBatch> {
        let block = simdutf8::basic::from_utf8(block).ok()?;
        let texts = spans.map(|span| block.get(span)).collect::<Option<Vec<&str>>>()?;
        self.decode_texts(texts.into_iter())
    }

    fn decode_texts<'a>(&self, records: impl ExactSizeIterator<Item = &'a str>) -> Option<RecordBatch> {
        let rows = records.len();
        let mut columns: Vec<Builder> = self.kinds.iter().map(|k| Builder::new(k, rows)).collect();
        let mut values = vec![Value::Missing; self.keys.len()];
        let mut shape = Shape::default();
        for text in records {
            let record = text.as_bytes();
            values.fill(Value::Missing);
            scan_record(record, record.len(), &self.keys, &mut shape, &mut values)?;
            for ((builder, value), field) in columns.iter_mut().zip(&values).zip(self.schema.fields()) {
                if matches!(value, Value::Missing | Value::Null) && !field.is_nullable() {
                    return None;
                }
                builder.append(text, *value)?;
            }
        }
        let arrays = columns.into_iter().map(Builder::finish).collect::<Option<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(Arc::clone(&self.schema), arrays).ok()
    }
}

fn skip_ws(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// The low seven bits of every byte of a word.
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of each byte of `word` that is not zero (exact: no carry
/// runs from one byte into the next).
fn nonzero_bytes(word: u64) -> u64 {
    (((word & LOW7) + LOW7) | word) & !LOW7
}

/// The high bit of each byte of `word` that equals `byte`.
fn bytes_equal(word: u64, byte: u8) -> u64 {
    !nonzero_bytes(word ^ (0x0101_0101_0101_0101 * u64::from(byte))) & !LOW7
}

/// The high bit of each byte of `word` that is not an ASCII digit (whose
/// high nibble is 3 and low nibble at most 9).
fn non_digit_bytes(word: u64) -> u64 {
    let high = (word & 0xf0f0_f0f0_f0f0_f0f0) ^ 0x3030_3030_3030_3030;
    let low = ((word & 0x0f0f_0f0f_0f0f_0f0f) + 0x0606_0606_0606_0606) & 0xf0f0_f0f0_f0f0_f0f0;
    nonzero_bytes(high | low)
}

/// The eight bytes at `i`, if they lie before `end`.
fn word_at(b: &[u8], i: usize, end: usize) -> Option<u64> {
    let bytes: &[u8; 8] = b.get(i..i + 8).filter(|_| i + 8 <= end)?.try_into().ok()?;
    Some(u64::from_le_bytes(*bytes))
}

/// Just past the run of ASCII digits at `i`.
fn digits_end(b: &[u8], mut i: usize, end: usize) -> usize {
    while let Some(word) = word_at(b, i, end) {
        let stops = non_digit_bytes(word);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < end && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// Whether `b[i..]` starts with `prefix`, compared a word at a time (a
/// call of `memcmp` per key costs more than the comparison).
fn starts_with_at(b: &[u8], i: usize, prefix: &[u8]) -> bool {
    let Some(text) = b.get(i..i + prefix.len()) else { return false };
    let mut k = 0;
    while let (Some(x), Some(y)) = (word_at(text, k, text.len()), word_at(prefix, k, prefix.len())) {
        if x != y {
            return false;
        }
        k += 8;
    }
    text[k..].iter().zip(&prefix[k..]).all(|(x, y)| x == y)
}

/// The index of the quote that closes the string whose text starts at `i`,
/// and whether the string holds escapes.
fn string_end(b: &[u8], mut i: usize, end: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    // Eight bytes at a time (most strings are keys and short values: a
    // vectorised search costs more to set up than it saves).
    while let Some(word) = word_at(b, i, end) {
        let hits = bytes_equal(word, b'"') | bytes_equal(word, b'\\');
        if hits == 0 {
            i += 8;
            continue;
        }
        let j = i + (hits.trailing_zeros() / 8) as usize;
        if b[j] == b'"' {
            return Some((j, escaped));
        }
        escaped = true;
        i = j + 2;
    }
    while i < end {
        match b[i] {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Just past the nested object or array that starts at `i` (strings inside
/// it skipped whole); `None` as well if a string inside holds an escape.
fn nested_end(b: &[u8], mut i: usize, end: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < end {
        match b[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'"' => match string_end(b, i + 1, end)? {
                (close, false) => i = close,
                (_, true) => return None,
            },
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether `b[i]` ends a bare word or number (or `i` is the end).
fn ends_word(b: &[u8], i: usize, end: usize) -> bool {
    i >= end || matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
}

/// Just past the JSON number that starts at `i`
/// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`) if it ends a word there.
fn number_end(b: &[u8], mut i: usize, end: usize) -> Option<usize> {
    let digits = |i: usize| digits_end(b, i, end);
    if i < end && b[i] == b'-' {
        i += 1;
    }
    match b.get(i).filter(|_| i < end) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i + 1),
        _ => return None,
    }
    if i < end && b[i] == b'.' {
        let after = digits(i + 1);
        if after == i + 1 {
            return None;
        }
        i = after;
    }
    if i < end && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < end && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let after = digits(i);
        if after == i {
            return None;
        }
        i = after;
    }
    ends_word(b, i, end).then_some(i)
}

/// Just past the literal `word` at `i`, if it is there and ends a word.
fn literal_end(b: &[u8], i: usize, end: usize, word: &[u8]) -> Option<usize> {
    let after = i + word.len();
    (after <= end && b.get(i..after) == Some(word) && ends_word(b, after, end)).then_some(after)
}

/// The keys of the last record scanned, in order, each with the column it
/// is (if one is): records of a file or topic mostly have the same keys in
/// the same order, and a key found where expected costs a comparison
/// instead of a scan and a lookup.
#[derive(Default)]
struct Shape {
    keys: Vec<(Vec<u8>, Option<usize>)>,
}

impl Shape {
    /// The end of the key whose opening quote is at `i`, as the `n`-th key
    /// of its record, and its column; `None` if it is not a plain key.
    fn key(&mut self, b: &[u8], i: usize, end: usize, n: usize, keys: &[Vec<u8>]) -> Option<(usize, Option<usize>)> {
        // An expected key holds no quote or backslash (it was scanned
        // without escapes): its bytes then a quote are the whole string.
        if let Some((key, slot)) = self.keys.get(n) {
            let close = i + 1 + key.len();
            if close < end && b[close] == b'"' && starts_with_at(b, i + 1, key) {
                return Some((close, *slot));
            }
        }
        let (close, escaped) = string_end(b, i + 1, end)?;
        if escaped {
            return None;
        }
        let key = &b[i + 1..close];
        let slot = keys.iter().position(|k| k.len() == key.len() && k.first() == key.first() && k.as_slice() == key);
        self.keys.truncate(n);
        self.keys.push((key.to_vec(), slot));
        Some((close, slot))
    }
}

/// Scans the object in `b[..end]`, setting `values[k]` to the value of
/// `keys[k]`; `None` if it is not one flat-enough object.
fn scan_record(b: &[u8], end: usize, keys: &[Vec<u8>], shape: &mut Shape, values: &mut [Value]) -> Option<()> {
    let mut i = skip_ws(b, 0, end);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1, end);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1, end) == end).then_some(());
    }
    let mut n = 0;
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, slot) = shape.key(b, i, end, n, keys)?;
        n += 1;
        i = skip_ws(b, key_end + 1, end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1, end);
        let value = match *b.get(i)? {
            b'"' => {
                let (close, escaped) = string_end(b, i + 1, end)?;
                // An escape in a value not read is not checked here:
                // arrow-json checks it.
                if escaped && slot.is_none() {
                    return None;
                }
                let value = Value::String(i + 1, close, escaped);
                i = close + 1;
                value
            }
            b'{' | b'[' if slot.is_none() => {
                // Skipped, but still valid JSON, as arrow-json requires (its
                // escapes are left to arrow-json).
                let nested = nested_end(b, i, end)?;
                serde_json::from_slice::<serde::de::IgnoredAny>(&b[i..nested]).ok()?;
                i = nested;
                Value::Missing
            }
            b'{' | b'[' => return None,
            b'n' => {
                i = literal_end(b, i, end, b"null")?;
                Value::Null
            }
            b't' => {
                i = literal_end(b, i, end, b"true")?;
                Value::True
            }
            b'f' => {
                i = literal_end(b, i, end, b"false")?;
                Value::False
            }
            _ => {
                let number_end = number_end(b, i, end)?;
                let value = Value::Number(i, number_end);
                i = number_end;
                value
            }
        };
        if let Some(k) = slot {
            if values[k] != Value::Missing {
                return None;
            }
            values[k] = value;
        }
        i = skip_ws(b, i, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1, end),
            b'}' => return (skip_ws(b, i + 1, end) == end).then_some(()),
            _ => return None,
        }
    }
}

/// A plain integer's text (no fraction, no exponent).
fn is_integer(s: &str) -> bool {
    !s.bytes().any(|c| matches!(c, b'.' | b'e' | b'E'))
}

/// A string value's text, unescaped as JSON does; `None` for any other value.
fn json_string(text: &str, value: Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s, e, false) => Some(std::borrow::Cow::Borrowed(&text[s..e])),
        // The quotes are around the text: JSON's own unescaping.
        Value::String(s, e, true) => serde_json::from_str::<String>(&text[s - 1..e + 1]).ok().map(std::borrow::Cow::Owned),
        _ => None,
    }
}

/// A column being built.
enum Builder {
    Utf8(StringBuilder),
    Utf8View(StringViewBuilder),
    Boolean(BooleanBuilder),
    Int8(PrimitiveBuilder<Int8Type>),
    Int16(PrimitiveBuilder<Int16Type>),
    Int32(PrimitiveBuilder<Int32Type>),
    Int64(PrimitiveBuilder<Int64Type>),
    UInt8(PrimitiveBuilder<UInt8Type>),
    UInt16(PrimitiveBuilder<UInt16Type>),
    UInt32(PrimitiveBuilder<UInt32Type>),
    UInt64(PrimitiveBuilder<UInt64Type>),
    Float32(PrimitiveBuilder<Float32Type>),
    Float64(PrimitiveBuilder<Float64Type>),
    Timestamp(TimestampColumn),
}

/// A timestamp column, with the last string parsed (consecutive records
/// often carry the same time).
struct TimestampColumn {
    values: PrimitiveBuilder<Int64Type>,
    data_type: DataType,
    unit: TimeUnit,
    tz: Tz,
    /// The zone is UTC: plain times are read directly ([`plain_utc`]).
    utc: bool,
    /// The last string read and its value.
    last: Option<(String, i64)>,
    /// The last plain date read (`YYYY-MM-DD`) and its midnight in epoch
    /// seconds: times of one day mostly follow each other.
    day: Option<([u8; 10], i64)>,
}

/// A time in the plain form `YYYY-MM-DD[T ]HH:MM:SS[.fraction]` (no zone) as
/// UTC, read directly; `None` for any other form (or an invalid date), which
/// `string_to_datetime` then reads (it reads this form the same).
#[cfg(test)]
fn plain_utc(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let (seconds, nanos) = plain_time_of_day(s)?;
    let midnight = plain_midnight(s)?;
    chrono::DateTime::from_timestamp(midnight + i64::from(seconds), nanos)
}

/// The value of `digits`, all ASCII digits (at most nine of them).
fn decimal(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
}

/// The time of day of a plain time (see [`plain_utc`]), in seconds and
/// nanoseconds, if the text has the plain form (its date is not checked).
fn plain_time_of_day(s: &str) -> Option<(u32, u32)> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let number = |from: usize, to: usize| decimal(&b[from..to]);
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => number(20, b.len())? * 10u32.pow(9 - digits.len() as u32),
        _ => return None,
    };
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    // A leap second (`:60`) is left to `string_to_datetime`.
    (hour < 24 && minute < 60 && second < 60).then_some((hour * 3600 + minute * 60 + second, nanos))
}

/// Midnight of a plain time's date, in epoch seconds, if it is a date.
fn plain_midnight(s: &str) -> Option<i64> {
    let b = s.as_bytes().get(..10)?;
    let number = |from: usize, to: usize| decimal(&b[from..to]);
    let date = chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
}

impl TimestampColumn {
    /// As arrow-json's timestamp decoder: a string in the column's zone
    /// (UTC without one), or a number of the column's unit.
    fn append(&mut self, text: &str, value: Value) -> Option<()> {
        let v = match value {
            Value::Missing | Value::Null => {
                self.values.append_null();
                return Some(());
            }
            Value::String(a, b, false) => {
                let s = &text[a..b];
                match &mut self.last {
                    Some((last, v)) if last == s => *v,
                    _ => {
                        let v = match self.utc.then(|| self.plain(s)).flatten() {
                            Some(v) => v,
                            None => {
                                let date = string_to_datetime(&self.tz, s).ok()?.with_timezone(&chrono::Utc);
                                match self.unit {
                                    TimeUnit::Second => date.timestamp(),
                                    TimeUnit::Millisecond => date.timestamp_millis(),
                                    TimeUnit::Microsecond => date.timestamp_micros(),
                                    TimeUnit::Nanosecond => date.timestamp_nanos_opt()?,
                                }
                            }
                        };
                        let (last, value) = self.last.get_or_insert_with(Default::default);
                        last.clear();
                        last.push_str(s);
                        *value = v;
                        v
                    }
                }
            }
            Value::Number(a, b) if is_integer(&text[a..b]) => text[a..b].parse().ok()?,
            _ => return None,
        };
        self.values.append_value(v);
        Some(())
    }

    /// A plain time (see [`plain_utc`]) in the column's unit, the date's
    /// midnight taken from the last one read when the date is the same;
    /// `None` for any other form, or a value out of range.
    fn plain(&mut self, s: &str) -> Option<i64> {
        let (seconds, nanos) = plain_time_of_day(s)?;
        let date: [u8; 10] = s.as_bytes().get(..10)?.try_into().ok()?;
        let midnight = match self.day {
            Some((day, midnight)) if day == date => midnight,
            _ => {
                let midnight = plain_midnight(s)?;
                self.day = Some((date, midnight));
                midnight
            }
        };
        let seconds = midnight.checked_add(i64::from(seconds))?;
        let (per_second, nanos_per_unit) = match self.unit {
            TimeUnit::Second => (1, 1_000_000_000),
            TimeUnit::Millisecond => (1_000, 1_000_000),
            TimeUnit::Microsecond => (1_000_000, 1_000),
            TimeUnit::Nanosecond => (1_000_000_000, 1),
        };
        seconds.checked_mul(per_second)?.checked_add(i64::from(nanos / nanos_per_unit))
    }

    /// The values as the column's timestamp type (the same buffers).
    fn finish(mut self) -> Option<ArrayRef> {
        arrow::compute::cast(&self.values.finish(), &self.data_type).ok()
    }
}

/// Appends an integer column's value: a plain integer that fits, or null.
fn append_integer<T>(builder: &mut PrimitiveBuilder<T>, text: &str, value: Value) -> Option<()>
where
    T: ArrowPrimitiveType,
    T::Native: std::str::FromStr,
{
    match value {
        Value::Missing | Value::Null => builder.append_null(),
        Value::Number(a, b) if is_integer(&text[a..b]) => builder.append_value(text[a..b].parse().ok()?),
        _ => return None,
    }
    Some(())
}

/// Appends a float column's value: any JSON number (correctly rounded, as
/// arrow-json's parser) that stays finite, or null.
fn append_float<T>(builder: &mut PrimitiveBuilder<T>, text: &str, value: Value, finite: fn(&T::Native) -> bool) -> Option<()>
where
    T: ArrowPrimitiveType,
    T::Native: std::str::FromStr,
{
    match value {
        Value::Missing | Value::Null => builder.append_null(),
        Value::Number(a, b) => builder.append_value(text[a..b].parse().ok().filter(finite)?),
        _ => return None,
    }
    Some(())
}

impl Builder {
    fn new(kind: &Kind, rows: usize) -> Self {
        match kind {
            Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            Kind::Utf8View => Builder::Utf8View(StringViewBuilder::with_capacity(rows)),
            Kind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(rows)),
            Kind::Int8 => Builder::Int8(PrimitiveBuilder::with_capacity(rows)),
            Kind::Int16 => Builder::Int16(PrimitiveBuilder::with_capacity(rows)),
            Kind::Int32 => Builder::Int32(PrimitiveBuilder::with_capacity(rows)),
            Kind::Int64 => Builder::Int64(PrimitiveBuilder::with_capacity(rows)),
            Kind::UInt8 => Builder::UInt8(PrimitiveBuilder::with_capacity(rows)),
            Kind::UInt16 => Builder::UInt16(PrimitiveBuilder::with_capacity(rows)),
            Kind::UInt32 => Builder::UInt32(PrimitiveBuilder::with_capacity(rows)),
            Kind::UInt64 => Builder::UInt64(PrimitiveBuilder::with_capacity(rows)),
            Kind::Float32 => Builder::Float32(PrimitiveBuilder::with_capacity(rows)),
            Kind::Float64 => Builder::Float64(PrimitiveBuilder::with_capacity(rows)),
            Kind::Timestamp(data_type, unit, tz) => Builder::Timestamp(TimestampColumn {
                values: PrimitiveBuilder::with_capacity(rows),
                data_type: data_type.clone(),
                unit: *unit,
                tz: *tz,
                utc: matches!(data_type, DataType::Timestamp(_, None)) || matches!(data_type, DataType::Timestamp(_, Some(z)) if matches!(z.as_ref(), "+00:00" | "UTC")),
                last: None,
                day: None,
            }),
        }
    }

    fn append(&mut self, text: &str, value: Value) -> Option<()> {
        match self {
            Builder::Utf8(b) => match value {
                Value::Missing | Value::Null => b.append_null(),
                value => b.append_value(json_string(text, value)?.as_ref()),
            },
            Builder::Utf8View(b) => match value {
                Value::Missing | Value::Null => b.append_null(),
                value => b.append_value(json_string(text, value)?.as_ref()),
            },
            Builder::Boolean(b) => match value {
                Value::Missing | Value::Null => b.append_null(),
                Value::True => b.append_value(true),
                Value::False => b.append_value(false),
                _ => return None,
            },
            Builder::Int8(b) => return append_integer(b, text, value),
            Builder::Int16(b) => return append_integer(b, text, value),
            Builder::Int32(b) => return append_integer(b, text, value),
            Builder::Int64(b) => return append_integer(b, text, value),
            Builder::UInt8(b) => return append_integer(b, text, value),
            Builder::UInt16(b) => return append_integer(b, text, value),
            Builder::UInt32(b) => return append_integer(b, text, value),
            Builder::UInt64(b) => return append_integer(b, text, value),
            Builder::Float32(b) => return append_float(b, text, value, |v| v.is_finite()),
            Builder::Float64(b) => return append_float(b, text, value, |v| v.is_finite()),
            Builder::Timestamp(t) => return t.append(text, value),
        }
        Some(())
    }

    fn finish(self) -> Option<ArrayRef> {
        Some(match self {
            Builder::Utf8(mut b) => Arc::new(b.finish()),
            Builder::Utf8View(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
            Builder::Int8(mut b) => Arc::new(b.finish()),
            Builder::Int16(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::UInt8(mut b) => Arc::new(b.finish()),
            Builder::UInt16(mut b) => Arc::new(b.finish()),
            Builder::UInt32(mut b) => Arc::new(b.finish()),
            Builder::UInt64(mut b) => Arc::new(b.finish()),
            Builder::Float32(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(t) => return t.finish(),
        })
    }
}

#[cfg(test)]
#[path = "flat_json_tests.rs"]
mod tests;
