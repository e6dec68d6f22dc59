//! Which partition a record goes to, decided by Sluice instead of librdkafka.
//!
//! With checkpoints on, the Kafka sink stages records in its checkpoints and
//! may have to produce them again after a failure (see `exactly_once`). To
//! tell which of them are in the topic already it reads back the partition
//! each went to, so a record must go to the same partition every time: the
//! sink picks it when the record is staged, stores it with the record, and
//! produces to it explicitly. The choice is librdkafka's own for the
//! configured `partitioner` (its hashes, reimplemented here, with the same
//! results), so a keyed record lands where it would without checkpoints and
//! where other librdkafka producers put the same key. Records that librdkafka
//! would spread at random (no key) get a random partition, once.

use crate::error::{ConnectorError, Result};

/// librdkafka's built-in partitioners (`properties.partitioner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// Any partition.
    Random,
    /// CRC32 of the key; no key or an empty one hashes as empty.
    Consistent,
    /// CRC32 of the key; no key or an empty one: random (librdkafka's default).
    ConsistentRandom,
    /// Java's default: murmur2 of the key; no key hashes as empty.
    Murmur2,
    /// murmur2 of the key; no key: random.
    Murmur2Random,
    /// FNV-1a of the key (as Sarama); no key hashes as empty.
    Fnv1a,
    /// FNV-1a of the key; no key: random.
    Fnv1aRandom,
}

impl Partitioner {
    /// The partitioner librdkafka would use given `properties.partitioner`.
    pub fn from_property(value: Option<&str>) -> Result<Self> {
        Ok(match value {
            None | Some("consistent_random") => Partitioner::ConsistentRandom,
            Some("random") => Partitioner::Random,
            Some("consistent") => Partitioner::Consistent,
            Some("murmur2") => Partitioner::Murmur2,
            Some("murmur2_random") => Partitioner::Murmur2Random,
            Some("fnv1a") => Partitioner::Fnv1a,
            Some("fnv1a_random") => Partitioner::Fnv1aRandom,
            Some(other) => {
                return Err(ConnectorError::Option {
                    connector: "kafka".into(),
                    key: "properties.partitioner".into(),
                    reason: format!(
                        "'{other}' is not one of random, consistent, consistent_random, murmur2, murmur2_random, fnv1a, fnv1a_random"
                    ),
                })
            }
        })
    }

    /// The partition, of `partitions` (at least 1), for a record with `key`.
    pub fn partition(self, key: Option<&[u8]>, partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let random = || rand::random::<u32>() % n;
        let p = match self {
            Partitioner::Random => random(),
            Partitioner::Consistent => crc32(key.unwrap_or_default()) % n,
            Partitioner::ConsistentRandom => match key {
                Some(k) if !k.is_empty() => crc32(k) % n,
                _ => random(),
            },
            Partitioner::Murmur2 => (murmur2(key.unwrap_or_default()) & 0x7fff_ffff) % n,
            Partitioner::Murmur2Random => match key {
                Some(k) => (murmur2(k) & 0x7fff_ffff) % n,
                None => random(),
            },
            Partitioner::Fnv1a => fnv1a(key.unwrap_or_default()) % n,
            Partitioner::Fnv1aRandom => match key {
                Some(k) => fnv1a(k) % n,
                None => random(),
            },
        };
        p as i32
    }
}

/// CRC-32 (IEEE, as zlib), librdkafka's `rd_crc32`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// MurmurHash2 with Kafka's seed, librdkafka's `rd_murmur2` (Java's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// 32-bit FNV-1a, made non-negative as Sarama does: librdkafka's `rd_fnv1a`.
pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h = 0x811c_9dc5u32 as i32;
    for byte in data {
        h ^= i32::from(*byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.wrapping_abs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 6] = ["kafka", "giberish123456789", "1234", "234", "PreAmbleWillBeRemoved,ThePrePartThatIs", ""];

    #[test]
    fn murmur2_matches_java_and_librdkafka() {
        // librdkafka's unit test values (taken from Java's Utils.murmur2).
        let expected: [u32; 6] = [0xd067cf64, 0x8f552b0c, 0x9fc97b14, 0xe7c009ca, 0x78424f1c, 0x106e08d9];
        for (key, want) in KEYS.iter().zip(expected) {
            assert_eq!(murmur2(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn fnv1a_matches_librdkafka() {
        let expected: [u32; 6] = [0x0d33c4e1, 0x77a58295, 0x023bdd03, 0x2dea3cd2, 0x65cbd69c, 0x7ee3623b];
        for (key, want) in KEYS.iter().zip(expected) {
            assert_eq!(fnv1a(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn crc32_is_zlib_s() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf43926);
        assert_eq!(crc32(b"kafka"), 0x5bbc7517, "as Python's zlib.crc32");
    }

    #[test]
    fn a_key_always_goes_to_the_same_partition() -> Result<()> {
        for name in ["consistent_random", "murmur2_random", "fnv1a"] {
            let p = Partitioner::from_property(Some(name))?;
            let first = p.partition(Some(b"user-7"), 12);
            assert!((0..12).contains(&first));
            assert!((0..50).all(|_| p.partition(Some(b"user-7"), 12) == first), "{name}");
        }
        assert_eq!(Partitioner::Consistent.partition(None, 5), 0, "no key hashes as empty");
        let spread: std::collections::BTreeSet<i32> = (0..200).map(|_| Partitioner::ConsistentRandom.partition(None, 4)).collect();
        assert_eq!(spread.len(), 4, "no key: any partition");
        assert!(Partitioner::from_property(Some("sticky")).is_err());
        Ok(())
    }
}
