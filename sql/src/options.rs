//! The settings a query runs with: what `SET` changes in a session and what a
//! REST submission may override.
//!
//! Settings belong to the query, not to the front end that started it: the shell,
//! `sluice run` and the REST server all plan with a [`QueryOptions`], the server
//! shows and persists the one each query was submitted with, and a restarted
//! query runs with the same settings. Keys are Flink's where Flink has one.
//! Every value is parsed here, once: [`QueryOptions::set`] serves `SET`, REST
//! overrides and the persisted form alike.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Lanes each query runs in.
pub const PARALLELISM: &str = "parallelism";
/// How long updating aggregates and regular joins keep idle state.
pub const STATE_TTL: &str = "table.exec.state.ttl";
/// How far in event time a query's sources may run ahead of its slowest.
pub const MAX_DRIFT: &str = "scan.watermark.alignment.max-drift";
/// The most state a query may hold before it fails.
pub const MEMORY_LIMIT: &str = "sluice.memory.limit";
/// How often a query takes a checkpoint; none: checkpoints are off.
pub const CHECKPOINT_INTERVAL: &str = "execution.checkpointing.interval";
/// Where checkpoints are kept (a directory, `file://` or `s3://` URL).
pub const CHECKPOINT_DIR: &str = "state.checkpoints.dir";
/// The name a query's checkpoints are kept under.
pub const PIPELINE_NAME: &str = "pipeline.name";
/// A checkpoint (its directory) to start the next query from.
pub const SAVEPOINT_PATH: &str = "execution.savepoint.path";
/// How long a checkpoint may take before it is given up.
pub const CHECKPOINT_TIMEOUT: &str = "execution.checkpointing.timeout";
/// How many completed checkpoints are kept.
pub const CHECKPOINTS_RETAINED: &str = "state.checkpoints.num-retained";
/// The S3 settings of a checkpoint directory on S3 (Flink's `s3.*` keys).
pub const S3_SETTINGS: [&str; 5] = ["s3.endpoint", "s3.region", "s3.access-key-id", "s3.secret-access-key", "s3.allow-http"];
/// What happens when a query fails: `none` or `fixed-delay`.
pub const RESTART_STRATEGY: &str = "restart-strategy.type";
/// With `fixed-delay`: how many times a failed query is started again.
pub const RESTART_ATTEMPTS: &str = "restart-strategy.fixed-delay.attempts";
/// With `fixed-delay`: how long after a failure it is started again.
pub const RESTART_DELAY: &str = "restart-strategy.fixed-delay.delay";
/// `streaming` (the default) or `batch`: how a query over bounded tables runs.
pub const RUNTIME_MODE: &str = "execution.runtime-mode";

/// How queries run (Flink's `execution.runtime-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeMode {
    /// A continuous query: results as they change (a changelog for updating
    /// queries), windows closed by watermarks.
    #[default]
    Streaming,
    /// One DataFusion batch query over bounded tables: the final rows once.
    Batch,
}

/// A setting that could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("unknown setting '{0}' (settings: {PARALLELISM}, '{STATE_TTL}', '{MAX_DRIFT}', '{MEMORY_LIMIT}', '{CHECKPOINT_INTERVAL}', '{CHECKPOINT_DIR}', '{PIPELINE_NAME}', '{SAVEPOINT_PATH}', '{CHECKPOINT_TIMEOUT}', '{CHECKPOINTS_RETAINED}', '{RESTART_STRATEGY}', '{RESTART_ATTEMPTS}', '{RESTART_DELAY}', '{RUNTIME_MODE}')")]
    Unknown(String),
    #[error("SET {key}: '{value}' {expected}")]
    Invalid { key: String, value: String, expected: &'static str },
}

/// The settings of one query. Serialised as a map from setting name to text
/// (`{"parallelism": "2", "table.exec.state.ttl": "1h"}`), the form `SET` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BTreeMap<String, String>", try_from = "BTreeMap<String, String>")]
pub struct QueryOptions {
    /// Lanes (at least 1); the cores by default.
    pub parallelism: usize,
    /// `None`: state is kept for ever.
    pub state_ttl: Option<Duration>,
    /// `None`: sources are not aligned.
    pub max_drift: Option<Duration>,
    /// Bytes of operator state at which the query fails; `None`: no limit.
    pub memory_limit: Option<u64>,
    /// `None`: checkpoints are off.
    pub checkpoint_interval: Option<Duration>,
    /// `None`: the front end's default directory.
    pub checkpoint_dir: Option<String>,
    /// `None`: a hash of the statement.
    pub pipeline_name: Option<String>,
    /// `None`: resume from the latest checkpoint under the query's name.
    pub savepoint_path: Option<String>,
    /// `None`: a failed query stays failed.
    pub restart: Option<sluice_engine::RestartPolicy>,
    /// How long a checkpoint may take.
    pub checkpoint_timeout: Duration,
    /// Completed checkpoints kept.
    pub checkpoints_retained: usize,
    /// `s3.*` settings of an S3 checkpoint directory, by their lake option
    /// names; what is not set comes from the `AWS_*` variables.
    pub s3: BTreeMap<String, String>,
    /// Streaming (the default) or batch.
    pub runtime_mode: RuntimeMode,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            parallelism: crate::session::default_parallelism(),
            state_ttl: None,
            max_drift: None,
            memory_limit: None,
            checkpoint_interval: None,
            checkpoint_dir: None,
            pipeline_name: None,
            savepoint_path: None,
            restart: None,
            checkpoint_timeout: sluice_engine::checkpoint::DEFAULT_TIMEOUT,
            checkpoints_retained: sluice_engine::checkpoint::DEFAULT_RETAINED,
            s3: BTreeMap::new(),
            runtime_mode: RuntimeMode::Streaming,
        }
    }
}

impl QueryOptions {
    /// Takes one setting by name (Flink's, or a short alias) from its text.
    /// Returns the canonical name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<&'static str, SettingError> {
        let invalid = |expected| SettingError::Invalid { key: key.to_string(), value: value.to_string(), expected };
        match key.trim().to_ascii_lowercase().as_str() {
            "parallelism" | "parallelism.default" | "table.exec.resource.default-parallelism" => {
                self.parallelism = match value.trim().parse::<usize>() {
                    // Keys are spread over the key groups: more lanes would get none.
                    Ok(n) if (1..=sluice_engine::key_group::KEY_GROUPS as usize).contains(&n) => n,
                    _ => return Err(invalid("is not a positive whole number of at most 128 (the key groups a query's keys are spread over)")),
                };
                Ok(PARALLELISM)
            }
            "table.exec.state.ttl" | "state.ttl" | "state_ttl" => {
                let ttl = parse_duration(value).ok_or_else(|| invalid("is not a duration (e.g. '1 h', '30 min', '0' for none)"))?;
                self.state_ttl = (!ttl.is_zero()).then_some(ttl);
                Ok(STATE_TTL)
            }
            "scan.watermark.alignment.max-drift" | "watermark.alignment.max-drift" => {
                let drift = parse_duration(value).ok_or_else(|| invalid("is not a duration (e.g. '30 s', '0' for none)"))?;
                self.max_drift = (!drift.is_zero()).then_some(drift);
                Ok(MAX_DRIFT)
            }
            "sluice.memory.limit" | "memory.limit" => {
                let bytes = parse_bytes(value).ok_or_else(|| invalid("is not a size (e.g. '2 GB', '512 MB', '0' for none)"))?;
                self.memory_limit = (bytes != 0).then_some(bytes);
                Ok(MEMORY_LIMIT)
            }
            "execution.checkpointing.interval" | "checkpoint.interval" => {
                let every = parse_duration(value).ok_or_else(|| invalid("is not a duration (e.g. '10 s', '1 min', '0' for none)"))?;
                if !every.is_zero() && every < Duration::from_millis(10) {
                    return Err(invalid("is too short: checkpoints can be at most 100 a second"));
                }
                self.checkpoint_interval = (!every.is_zero()).then_some(every);
                Ok(CHECKPOINT_INTERVAL)
            }
            "state.checkpoints.dir" | "execution.checkpointing.dir" => {
                self.checkpoint_dir = non_empty(value);
                Ok(CHECKPOINT_DIR)
            }
            "pipeline.name" => {
                let name = value.trim();
                let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && !name.starts_with('.');
                if !valid {
                    return Err(invalid("is not a name of letters, digits, '-', '_' and '.' (it names a directory)"));
                }
                self.pipeline_name = non_empty(name);
                Ok(PIPELINE_NAME)
            }
            "execution.savepoint.path" | "execution.state-recovery.path" => {
                self.savepoint_path = non_empty(value);
                Ok(SAVEPOINT_PATH)
            }
            "execution.checkpointing.timeout" | "checkpoint.timeout" => {
                self.checkpoint_timeout = parse_duration(value)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| invalid("is not a duration above zero (e.g. '10 min')"))?;
                Ok(CHECKPOINT_TIMEOUT)
            }
            "state.checkpoints.num-retained" | "execution.checkpointing.num-retained" => {
                self.checkpoints_retained = match value.trim().parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(invalid("is not a whole number of at least 1")),
                };
                Ok(CHECKPOINTS_RETAINED)
            }
            "s3.endpoint" | "s3.region" | "s3.access-key-id" | "s3.access-key" | "s3.secret-access-key" | "s3.secret-key"
            | "s3.allow-http" => {
                // Flink's short names for the credentials.
                let name = match key.trim().to_ascii_lowercase().as_str() {
                    "s3.access-key" | "s3.access-key-id" => "s3.access-key-id",
                    "s3.secret-key" | "s3.secret-access-key" => "s3.secret-access-key",
                    "s3.endpoint" => "s3.endpoint",
                    "s3.region" => "s3.region",
                    _ => "s3.allow-http",
                };
                match non_empty(value) {
                    Some(v) => self.s3.insert(name.to_string(), v),
                    None => self.s3.remove(name),
                };
                Ok(name)
            }
            "restart-strategy.type" | "restart-strategy" => {
                self.restart = match value.trim().to_ascii_lowercase().as_str() {
                    "none" | "off" | "disable" => None,
                    "fixed-delay" | "fixeddelay" | "fixed_delay" => Some(self.restart.unwrap_or(DEFAULT_RESTART)),
                    _ => return Err(invalid("is not a restart strategy ('none' or 'fixed-delay')")),
                };
                Ok(RESTART_STRATEGY)
            }
            "restart-strategy.fixed-delay.attempts" => {
                let attempts = value.trim().parse::<u32>().map_err(|_| invalid("is not a whole number of attempts"))?;
                let policy = self.restart.get_or_insert(DEFAULT_RESTART);
                policy.attempts = attempts;
                Ok(RESTART_ATTEMPTS)
            }
            "restart-strategy.fixed-delay.delay" => {
                let delay = parse_duration(value).ok_or_else(|| invalid("is not a duration (e.g. '10 s')"))?;
                let policy = self.restart.get_or_insert(DEFAULT_RESTART);
                policy.delay = delay;
                Ok(RESTART_DELAY)
            }
            "execution.runtime-mode" | "runtime-mode" => {
                self.runtime_mode = match value.trim().to_ascii_lowercase().as_str() {
                    "streaming" => RuntimeMode::Streaming,
                    "batch" => RuntimeMode::Batch,
                    _ => return Err(invalid("is not a runtime mode ('streaming' or 'batch')")),
                };
                Ok(RUNTIME_MODE)
            }
            other => Err(SettingError::Unknown(other.to_string())),
        }
    }

    /// Every setting as `SET` would take it back, by canonical name.
    pub fn to_settings(&self) -> BTreeMap<String, String> {
        let duration = |d: Option<Duration>| d.map_or_else(|| "0".to_string(), format_duration);
        let mut settings = BTreeMap::from([
            (PARALLELISM.to_string(), self.parallelism.to_string()),
            (STATE_TTL.to_string(), duration(self.state_ttl)),
            (MAX_DRIFT.to_string(), duration(self.max_drift)),
            (MEMORY_LIMIT.to_string(), self.memory_limit.map_or_else(|| "0".to_string(), format_bytes)),
            (CHECKPOINT_INTERVAL.to_string(), duration(self.checkpoint_interval)),
            (CHECKPOINT_TIMEOUT.to_string(), format_duration(self.checkpoint_timeout)),
            (CHECKPOINTS_RETAINED.to_string(), self.checkpoints_retained.to_string()),
        ]);
        if let Some(policy) = self.restart {
            settings.insert(RESTART_STRATEGY.to_string(), "fixed-delay".to_string());
            settings.insert(RESTART_ATTEMPTS.to_string(), policy.attempts.to_string());
            settings.insert(RESTART_DELAY.to_string(), format_duration(policy.delay));
        }
        settings.extend(self.s3.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Only when not the default, so settings saved before it existed compare equal.
        if self.runtime_mode == RuntimeMode::Batch {
            settings.insert(RUNTIME_MODE.to_string(), "batch".to_string());
        }
        for (key, value) in [
            (CHECKPOINT_DIR, &self.checkpoint_dir),
            (PIPELINE_NAME, &self.pipeline_name),
            (SAVEPOINT_PATH, &self.savepoint_path),
        ] {
            if let Some(v) = value {
                settings.insert(key.to_string(), v.clone());
            }
        }
        settings
    }

    /// The text of one setting as [`QueryOptions::to_settings`] writes it.
    pub fn get(&self, canonical: &str) -> Option<String> {
        self.to_settings().remove(canonical)
    }
}

impl From<QueryOptions> for BTreeMap<String, String> {
    fn from(o: QueryOptions) -> Self {
        o.to_settings()
    }
}

impl TryFrom<BTreeMap<String, String>> for QueryOptions {
    type Error = SettingError;

    /// Settings missing from the map keep their defaults.
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        let mut options = QueryOptions::default();
        for (key, value) in &map {
            options.set(key, value)?;
        }
        Ok(options)
    }
}

/// Flink's fixed-delay defaults: one attempt, one second after the failure.
const DEFAULT_RESTART: sluice_engine::RestartPolicy = sluice_engine::RestartPolicy { attempts: 1, delay: Duration::from_secs(1) };

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// A duration as Flink settings write it: `90 s`, `30 min`, `1h`, `2 days`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(text)?;
    let seconds = match unit.as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 0.001,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * seconds).ok()
}

/// A size as Flink's `MemorySize` writes it: `512 MB`, `2gb`, `1.5 GiB`, `4096`
/// (bytes). `KB`, `MB`, `GB` and `TB` are powers of 1024, as in Flink.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(text)?;
    let scale: u64 = match unit.as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" | "kibibytes" => 1 << 10,
        "m" | "mb" | "mib" | "mebibytes" => 1 << 20,
        "g" | "gb" | "gib" | "gibibytes" => 1 << 30,
        "t" | "tb" | "tib" | "tebibytes" => 1 << 40,
        _ => return None,
    };
    let bytes = n * scale as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

fn number_and_unit(text: &str) -> Option<(f64, String)> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.trim().parse().ok()?;
    (n >= 0.0).then(|| (n, unit.trim().to_ascii_lowercase()))
}

fn format_duration(d: Duration) -> String {
    sluice_engine::time::format_duration_nanos(d.as_nanos().min(i64::MAX as u128) as i64)
}

fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "TB"), (1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")];
    UNITS
        .iter()
        .find(|(scale, _)| bytes.is_multiple_of(*scale))
        .map_or_else(|| bytes.to_string(), |(scale, unit)| format!("{} {unit}", bytes / scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_and_print_back() -> Result<(), SettingError> {
        let mut o = QueryOptions::default();
        o.set("sluice.memory.limit", "2 GB")?;
        assert_eq!(o.memory_limit, Some(2 << 30));
        o.set("memory.limit", "512mb")?;
        assert_eq!(o.memory_limit, Some(512 << 20));
        o.set("table.exec.state.ttl", "90 min")?;
        o.set("parallelism.default", "3")?;
        let settings = o.to_settings();
        assert_eq!(settings[MEMORY_LIMIT], "512 MB");
        assert_eq!(settings[STATE_TTL], "90m");
        assert_eq!(QueryOptions::try_from(settings)?, o);
        o.set("sluice.memory.limit", "0")?;
        assert_eq!(o.memory_limit, None);
        Ok(())
    }

    #[test]
    fn checkpoint_settings_print_back_under_their_canonical_names() -> Result<(), SettingError> {
        let mut o = QueryOptions::default();
        o.set("execution.checkpointing.interval", "10 s")?;
        o.set("s3.access-key", "key")?;
        o.set("restart-strategy.type", "fixed-delay")?;
        o.set("restart-strategy.fixed-delay.attempts", "3")?;
        let settings = o.to_settings();
        assert_eq!(settings["s3.access-key-id"], "key");
        assert_eq!(settings[RESTART_ATTEMPTS], "3");
        assert_eq!(QueryOptions::try_from(settings)?, o);
        o.set("s3.access-key-id", "")?;
        assert!(o.s3.is_empty());
        Ok(())
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut o = QueryOptions::default();
        let e = o.set("sluice.memory.limit", "lots").map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("sluice.memory.limit") && e.to_string().contains("'lots'"), "{e}");
        assert!(o.set("parallelism", "0").is_err());
        assert!(o.set("parallelism", "129").is_err(), "more lanes than key groups");
        assert!(o.set("parallelism", "128").is_ok());
        assert!(matches!(o.set("nope", "1"), Err(SettingError::Unknown(_))));
        assert_eq!(parse_bytes("-1 GB"), None);
        let e = o.set("execution.runtime-mode", "bulk").map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("'streaming' or 'batch'"), "{e}");
    }

    #[test]
    fn the_runtime_mode_switches_and_prints_back() -> Result<(), SettingError> {
        let mut o = QueryOptions::default();
        assert_eq!(o.set("execution.runtime-mode", "BATCH")?, RUNTIME_MODE);
        assert_eq!(o.runtime_mode, RuntimeMode::Batch);
        assert_eq!(o.get(RUNTIME_MODE).as_deref(), Some("batch"));
        assert_eq!(QueryOptions::try_from(o.to_settings())?, o);
        o.set("execution.runtime-mode", "streaming")?;
        assert_eq!(o, QueryOptions::default());
        Ok(())
    }
}
