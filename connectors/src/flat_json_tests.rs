//! The fast path against arrow-json: every batch it decodes, arrow-json
//! decodes the same; what it gives up on is what arrow-json must decide.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::{Rng, SeedableRng};

use super::*;
use arrow::array::timezone::Tz;

fn columns(nullable: bool) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("s", DataType::Utf8, nullable),
        Field::new("v", DataType::Utf8View, true),
        Field::new("i", DataType::Int64, true),
        Field::new("small", DataType::Int16, true),
        Field::new("u", DataType::UInt64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("g", DataType::Float32, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("zoned", DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Amsterdam".into())), true),
    ]))
}

/// `lines` as one block of records ended by `\n`, and the records as the
/// file source hands them over (each with its line end).
fn block(lines: &[String]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let records: Vec<Vec<u8>> = lines.iter().map(|l| format!("{l}\n").into_bytes()).collect();
    (records.concat(), records)
}

fn arrow_json(schema: &SchemaRef, text: &[u8]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema)).with_batch_size(1 << 16).build_decoder()?;
    let mut rest = text;
    while !rest.is_empty() {
        let used = decoder.decode(rest)?;
        if used == 0 {
            break;
        }
        rest = &rest[used..];
    }
    Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema))))
}

/// Decodes `lines` both ways; returns whether the fast path took them. Where
/// it did, arrow-json must give the same batch.
fn compare(schema: &SchemaRef, lines: &[String]) -> bool {
    let (text, records) = block(lines);
    let decoder = FlatJsonDecoder::new(Arc::clone(schema)).expect("supported types");
    let fast = decoder.decode(records.iter().map(Vec::as_slice));
    // The same records as spans of the one block, as a file source hands them.
    let mut start = 0;
    let spans: Vec<std::ops::Range<usize>> = records
        .iter()
        .map(|r| {
            start += r.len();
            start - r.len()..start
        })
        .collect();
    assert_eq!(decoder.decode_block(&text, spans.into_iter()), fast, "{lines:?}");
    let Some(fast) = fast else { return false };
    match arrow_json(schema, &text) {
        Ok(expected) => assert_eq!(fast, expected, "{lines:?}"),
        Err(e) => panic!("the fast path decoded what arrow-json refuses ({e}): {lines:?}"),
    }
    true
}

#[test]
fn plain_records_are_decoded_as_arrow_json_does() {
    let schema = columns(true);
    let lines: Vec<String> = vec![
        r#"{"s":"a","v":"a string longer than twelve bytes","i":1,"small":-3,"u":18446744073709551615,"f":1.5,"g":0.1,"b":true,"ts":"2024-01-01T00:00:00","zoned":"2024-03-31T01:30:00"}"#.into(),
        r#"{ "ts" : "2024-01-01 00:00:01.250" , "s" : "b c", "f": 2e3, "g": -1.25E-2, "b": false, "i": -0, "zoned": 1700000000000000 }"#.into(),
        r#"{"s":null,"i":null,"ts":null,"extra":{"nested":[1,{"x":"}"}],"y":"]"},"list":[1,2,[3]],"str":"x y"}"#.into(),
        r#"{}"#.into(),
        r#"{"s":"tab\tnew\nline \u00e9 \ud83d\ude00 \\ \/","v":"short \"q\"","ts":"2024-06-30T23:59:59.999Z","zoned":"2024-06-30T23:59:59+02:00"}"#.into(),
        r#"{"i":9223372036854775807,"small":32767,"f":-0.0,"g":3.4028235e38,"ts":1704067200000}"#.into(),
        "  {\"s\":\"ütf-8 ✓\",\"i\":42}\r".into(),
    ];
    for line in &lines {
        assert!(compare(&schema, std::slice::from_ref(line)), "the fast path takes {line}");
    }
    assert!(compare(&schema, &lines), "the fast path takes plain records");
}

#[test]
fn what_arrow_json_must_decide_is_given_up() {
    let schema = columns(true);
    let not_taken = [
        r#"{"i":"12"}"#,                  // a string for a number
        r#"{"i":1.5}"#,                   // a fraction for an integer
        r#"{"i":1e3}"#,                   // an exponent for an integer
        r#"{"small":40000}"#,             // out of range
        r#"{"s":5}"#,                     // a number for a string
        r#"{"v":true}"#,                  // a word for a string
        r#"{"b":"true"}"#,                // a string for a boolean
        r#"{"s":{"a":1}}"#,               // a nested value in a read column
        r#"{"s":"a","s":"b"}"#,           // a repeated key
        r#"{"s\u0041":"a"}"#,             // an escaped key
        r#"{"f":1e400}"#,                 // not finite
        r#"{"ts":"yesterday"}"#,          // not a time
        r#"{"i":01}"#,                    // not a JSON number
        r#"{"i":tru}"#,                   // not a JSON word
        r#"{"s":"a"} {"s":"b"}"#,         // two records on a line
        r#"[1,2]"#,                       // not an object
        r#"{"s":"a""#,                    // cut short
        r#"{"s":"a",}"#,                  // a trailing comma
        r#"{"s":"\ud800"}"#,              // a lone surrogate
        r#"{"other":"\q"}"#,              // a bad escape in a value not read
        r#"{"other":"\ud800"}"#,          // a lone surrogate in a value not read
        r#"{"other":[1,,2]}"#,            // invalid JSON nested in a value not read
        r#"{"other":{"a":1]}"#,           // mismatched brackets in a value not read
        r#"{"other":{"a":"\ud800"}}"#,    // a lone surrogate nested in a value not read
    ];
    for line in not_taken {
        let lines = vec![r#"{"s":"fine"}"#.to_string(), line.to_string()];
        assert!(!compare(&schema, &lines), "the fast path gives up on {line}");
    }
    let strict = columns(false);
    assert!(!compare(&strict, &[r#"{"i":1}"#.to_string()]), "a missing NOT NULL column");
    assert!(!compare(&strict, &[r#"{"s":null}"#.to_string()]), "a null NOT NULL column");
    assert!(compare(&strict, &[r#"{"s":"here"}"#.to_string()]));
    let nested = Arc::new(Schema::new(vec![Field::new("l", DataType::List(Arc::new(Field::new("item", DataType::Int64, true))), true)]));
    assert!(FlatJsonDecoder::new(nested).is_none(), "a list column is arrow-json's");
}

/// Random records over a small alphabet of values, keys and spacing: every
/// batch the fast path takes matches arrow-json, and it takes most.
#[test]
fn random_records_agree_with_arrow_json() {
    let schema = columns(true);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let strings = [r#""a""#, r#""""#, r#""x\"y""#, r#""\u00fc""#, "null", "7"];
    let ints = ["0", "-12", "9007199254740993", "null", "1.0", r#""3""#];
    let floats = ["0.5", "-1e-7", "12", "null", "1E2", "true"];
    let times = [r#""2024-01-01T00:00:00""#, r#""2024-01-01 12:00:00.5""#, "1704067200000", "null", r#""2024-13-01""#];
    let mut taken = 0;
    for _ in 0..400 {
        let lines: Vec<String> = (0..rng.random_range(1..6))
            .map(|_| {
                let mut fields = Vec::new();
                for (key, pool) in [("s", &strings[..]), ("v", &strings[..]), ("i", &ints[..]), ("f", &floats[..]), ("ts", &times[..]), ("other", &strings[..])] {
                    if rng.random_bool(0.8) {
                        let value = pool[rng.random_range(0..pool.len())];
                        let space = if rng.random_bool(0.2) { " " } else { "" };
                        fields.push(format!("{space}\"{key}\"{space}:{space}{value}"));
                    }
                }
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        taken += usize::from(compare(&schema, &lines));
    }
    assert!(taken > 20, "the fast path took {taken} of 400 batches");
}

/// Plain times read directly are read as arrow's parser reads them.
#[test]
fn plain_times_are_read_as_arrow_reads_them() {
    let utc: Tz = "+00:00".parse().expect("a zone");
    let times = [
        "2024-01-01T00:00:00", "2024-02-29 23:59:59", "1969-12-31T23:59:59.999999999", "2024-06-30T12:00:00.5",
        "0001-01-01T00:00:00", "9999-12-31T23:59:59.123", "2023-02-29T00:00:00", "2024-01-01T24:00:00",
        "2024-01-01T23:59:60", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.", "2024-01-01T00:00:00.1234567890",
        "2024-1-01T00:00:00", "+2024-01-01T00:00:00", "2024-01-01T00:00",
    ];
    for time in times {
        match plain_utc(time) {
            Some(date) => assert_eq!(Some(date), string_to_datetime(&utc, time).ok().map(|d| d.with_timezone(&chrono::Utc)), "{time}"),
            None => assert!(
                !time.ends_with(|c: char| c.is_ascii_digit()) || time.len() < 19 || time.contains(['Z', '+']) || time.contains("-02-29T") || time.contains("T24") || time.contains(":60") || time.len() > 29,
                "{time} is plain and valid, but was not read"
            ),
        }
    }
    assert!(plain_utc("2024-01-01T00:00:00").is_some() && plain_utc("2024-06-30 12:00:00.5").is_some());
}

/// Strings of every length up to 40 bytes, with an escape at every place,
/// in a read column and in one not read: the scan eight bytes at a time finds
/// the same ends as arrow-json, wherever quotes and escapes fall.
#[test]
fn strings_agree_with_arrow_json_wherever_their_escapes_fall() {
    let schema = columns(true);
    let mut taken = 0;
    for len in 0..40usize {
        let plain = "a".repeat(len);
        let mut values = vec![plain.clone()];
        values.extend((0..len).map(|at| format!("{}\\\"{}", &plain[..at], &plain[at..])));
        values.extend((0..len).map(|at| format!("{}\\\\{}", &plain[..at], &plain[at..])));
        for value in values {
            let lines = vec![format!(r#"{{"s":"{value}","i":1}}"#), format!(r#"{{"other":"{value}","s":"x{value}"}}"#)];
            taken += usize::from(compare(&schema, &lines));
        }
    }
    assert!(taken >= 40, "the plain strings are taken: {taken}");
}

/// Bare words and numbers in a column not read are checked as arrow-json
/// checks them: valid ones are taken, anything else is given up.
#[test]
fn words_not_read_are_checked_as_arrow_json_checks_them() {
    let schema = columns(true);
    let valid = ["0", "-0", "12", "-1.25", "0.0e+5", "1E-2", "true", "false", "null"];
    let invalid = ["1.", "-", "1e", "1e+", "12abc", "nul", "truex", "falsey", "nullx", "+1", ".5", "00"];
    for word in valid {
        assert!(compare(&schema, &[format!(r#"{{"other":{word},"i":2}}"#)]), "{word} is taken");
        assert!(compare(&schema, &[format!(r#"{{"i":2,"other":{word}}}"#)]), "{word} last is taken");
    }
    for word in invalid {
        assert!(!compare(&schema, &[format!(r#"{{"other":{word},"i":2}}"#)]), "{word} is given up");
        assert!(!compare(&schema, &[format!(r#"{{"i":2,"other":{word}}}"#)]), "{word} last is given up");
    }
}

/// Keys are first looked for where the last record had them: records whose
/// keys change order, or hold a key that starts like an expected one, are
/// read as arrow-json reads them.
#[test]
fn records_whose_keys_move_agree_with_arrow_json() {
    let schema = columns(true);
    let lines: Vec<String> = [
        r#"{"s":"1","i":1,"f":0.5}"#,
        r#"{"i":2,"s":"2"}"#,
        r#"{"si":"x","s":"3","i":3}"#,
        r#"{"s":"4","s2":5,"i":4}"#,
        r#"{"s":"5","i":5,"f":1.5}"#,
        r#"{"s" : "6", "i":6}"#,
        r#"{"s":"7","i":7,"f":2.5,"other":"long enough to take more than one word"}"#,
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    assert!(compare(&schema, &lines));
    // A repeated key is still found repeated where it was expected once.
    let repeated = [r#"{"s":"1","i":1}"#.to_string(), r#"{"s":"2","s":"3"}"#.to_string()];
    assert!(!compare(&schema, &repeated));
}

/// A record that is not UTF-8 is arrow-json's to refuse, whether records come
/// one by one or as one block.
#[test]
fn records_that_are_not_utf8_are_given_up() {
    let decoder = FlatJsonDecoder::new(columns(true)).expect("supported types");
    let records: Vec<Vec<u8>> = vec![b"{\"s\":\"a\"}\n".to_vec(), b"{\"s\":\"\xff\"}\n".to_vec()];
    assert!(decoder.decode(records.iter().map(Vec::as_slice)).is_none());
    let block = records.concat();
    assert!(decoder.decode_block(&block, [0..records[0].len(), records[0].len()..block.len()].into_iter()).is_none());
    assert!(decoder.decode_block(&block, std::iter::once(0..records[0].len())).is_none(), "the whole block is checked");
}

/// Plain times read directly, with the date's midnight kept between them, in
/// every unit, before and after 1970 and across days, as arrow-json reads them.
#[test]
fn plain_times_in_every_unit_agree_with_arrow_json() {
    let schema: SchemaRef = Arc::new(Schema::new(
        [TimeUnit::Second, TimeUnit::Millisecond, TimeUnit::Microsecond, TimeUnit::Nanosecond]
            .into_iter()
            .enumerate()
            .map(|(i, unit)| Field::new(format!("t{i}"), DataType::Timestamp(unit, None), true))
            .collect::<Vec<_>>(),
    ));
    let times = [
        "2024-01-01T00:00:00", "2024-01-01T00:00:00.001", "2024-01-01 13:45:07.5", "2024-01-01T23:59:59.999999999",
        "2024-01-02T00:00:00", "2024-01-01T12:00:00", "1969-12-31T23:59:59.999", "1969-12-31T00:00:00.000001",
        "1970-01-01T00:00:00", "2262-04-11T23:47:16.854775807", "1677-09-21T00:12:43.145224192", "2024-02-29T08:00:00",
    ];
    let lines: Vec<String> = times.iter().map(|t| format!(r#"{{"t0":"{t}","t1":"{t}","t2":"{t}","t3":"{t}"}}"#)).collect();
    assert!(compare(&schema, &lines), "plain times are taken");
    // Beyond what nanoseconds hold, both give up alike (compare checks it).
    compare(&schema, &[r#"{"t3":"2300-01-01T00:00:00"}"#.to_string()]);
}

/// Well-formed records with bytes changed, dropped, repeated or cut off:
/// the fast path never panics, and every batch it takes, arrow-json decodes
/// the same (what it gives up is arrow-json's to decode or refuse).
#[test]
fn mutated_records_agree_with_arrow_json() {
    let iterations: usize = std::env::var("SLUICE_JSON_FUZZ").ok().and_then(|n| n.parse().ok()).unwrap_or(3000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let seeds = [
        r#"{"s":"abc","v":"x\"y","i":-42,"small":7,"u":18446744073709551615,"f":1.5e-3,"g":-0.25,"b":true,"ts":"2024-03-01T10:00:00.123","zoned":"2024-03-01 10:00:00+01:00","other":{"a":[1,2,{"b":null}]}}"#,
        r#"{ "ts" : 1704067200000 , "i" : 0 , "s" : "\u00fc\n" , "b" : false , "f" : 12 , "skip" : [true, false, null] }"#,
        r#"{"zoned":"2024-06-01T02:30:00","u":0,"small":-32768,"g":3.4e38,"v":"","s":null,"i":9223372036854775807}"#,
    ];
    let alphabet: &[&str] = &["\"", "\\", "{", "}", "[", "]", ",", ":", " ", "0", "9", "-", "+", ".", "e", "E", "n", "t", "f", "u", "l", "ü", "\t", "T", "Z"];
    let mut taken = 0;
    for round in 0..iterations {
        let lines: Vec<String> = (0..rng.random_range(1..4))
            .map(|_| {
                let mut text: Vec<char> = seeds[rng.random_range(0..seeds.len())].chars().collect();
                for _ in 0..rng.random_range(1..4) {
                    if text.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..text.len());
                    match rng.random_range(0..4) {
                        0 => text[at] = alphabet[rng.random_range(0..alphabet.len())].chars().next().unwrap_or(' '),
                        1 => {
                            text.remove(at);
                        }
                        2 => {
                            let end = (at + rng.random_range(1..8)).min(text.len());
                            let repeated: Vec<char> = text[at..end].to_vec();
                            text.splice(at..at, repeated);
                        }
                        _ => text.truncate(at),
                    }
                }
                text.into_iter().collect()
            })
            .collect();
        // Alternately with a NOT NULL column.
        taken += usize::from(compare(&columns(round % 2 == 0), &lines));
    }
    assert!(taken > iterations / 100, "the fast path took {taken} of {iterations} batches");
}
