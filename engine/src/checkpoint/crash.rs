//! Crash points for recovery tests: with `SLUICE_CRASH_AT=<point>:<checkpoint>`
//! in its environment, the process aborts (as `kill -9` would end it, nothing
//! flushed) at that point of that checkpoint, so tests can prove that a crash
//! there loses and doubles nothing. Points: `snapshot` (a step has stored part
//! of its state), `before-commit` (the checkpoint is complete, the sinks have
//! not committed it), `mid-commit` (a sink has committed part of it).

use std::sync::OnceLock;

/// Where in a checkpoint a test may crash the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    Snapshot,
    BeforeCommit,
    MidCommit,
}

impl CrashPoint {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "snapshot" => Some(CrashPoint::Snapshot),
            "before-commit" => Some(CrashPoint::BeforeCommit),
            "mid-commit" => Some(CrashPoint::MidCommit),
            _ => None,
        }
    }
}

fn configured() -> Option<(CrashPoint, u64)> {
    static AT: OnceLock<Option<(CrashPoint, u64)>> = OnceLock::new();
    *AT.get_or_init(|| {
        let value = std::env::var("SLUICE_CRASH_AT").ok()?;
        let (point, id) = value.split_once(':')?;
        Some((CrashPoint::parse(point.trim())?, id.trim().parse().ok()?))
    })
}

/// Aborts the process if the environment asks for a crash at `point` of
/// checkpoint `checkpoint` (or of the first checkpoint after it, for a query
/// that resumed past it).
pub fn crash_point(point: CrashPoint, checkpoint: u64) {
    if let Some((at, id)) = configured() {
        if at == point && checkpoint >= id && checkpoint != crate::runtime::FINAL_CHECKPOINT {
            eprintln!("SLUICE_CRASH_AT: crashing at {point:?} of checkpoint {checkpoint}");
            std::process::abort();
        }
    }
}
