//! The `--lanes 1,2,4` option both benchmark binaries take.

/// One lane count, at least 1 (clap's value parser for `--lanes`).
pub fn parse_lanes(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(lanes) if lanes > 0 => Ok(lanes),
        _ => Err(format!("takes lane counts of at least 1, not {value}")),
    }
}

/// The lane counts given, or 1 and this machine's parallelism; repeats dropped.
pub fn or_default(mut lanes: Vec<usize>) -> Vec<usize> {
    if lanes.is_empty() {
        lanes = vec![1, sluice_sql::default_parallelism()];
    }
    lanes.dedup();
    lanes
}
