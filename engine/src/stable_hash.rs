//! A hash for names and fingerprints that must stay the same across runs,
//! builds and versions (a query's id, a plan's fingerprint in checkpoints):
//! FNV-1a, 64 bits, fixed by Sluice rather than by a dependency's seed.

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
